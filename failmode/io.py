"""File helpers shared by every stage: atomic writes, canonical JSON, hashing, append-only JSONL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from failmode.errors import ValidationError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$FAILMODE_CACHE_DIR, else $XDG_CACHE_HOME/failmode, else ~/.cache/failmode (features, embeddings, LLM)."""
    if os.environ.get("FAILMODE_CACHE_DIR"):
        return Path(os.environ["FAILMODE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "failmode"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    Readers never see a half-written file: the final name appears only when the content is complete. The file gets
    the permissions the umask gives a new file (0644 under umask 022), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask: from /proc on Linux (thread-safe), else by setting it and putting it back."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj: Any) -> str:
    """Canonical JSON text (sorted keys, 2-space indent, trailing newline) so equal objects give equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as canonical JSON, atomically."""
    write_bytes_atomic(path, dumps_json(obj).encode("utf-8"))


def finite_json(x: Any) -> Any:
    """`x` (nested dicts and lists) with NaN and infinities replaced by None: JSON has neither."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_json(v) for v in x]
    return x


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing or malformed file raises a ValidationError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ValidationError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                              f"{e.start}); JSON files must be UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValidationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_tensors(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The tensors of a .safetensors, .npz or torch (.pt/.pth, weights only) file; a file that is none of these
    (a JSON file, a truncated download) is one ValidationError naming it and `what` it should hold."""
    import torch

    path = Path(path)
    head = path.open("rb").read(64).lstrip()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parser failure means the file is not what it should be
        if head[:1] in (b"{", b"["):
            raise ValidationError(f"{path}: a JSON file, not {what} (.safetensors, .npz or a torch state dict)") from None
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        if detail.startswith("Weights only load failed"):  # torch's long hint for a file that is no state dict
            detail = "not a torch state dict"
        raise ValidationError(f"{path}: not readable as {what} (.safetensors, .npz or a torch state dict: "
                              f"{detail})") from None
    if not isinstance(state, dict):
        raise ValidationError(f"{path}: holds a {type(state).__name__}, not {what} (a dict of tensors)")
    return state


def dumps_jsonl(record: dict[str, Any]) -> str:
    """One JSONL line: compact, sorted keys, newline-terminated."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def append_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records to a JSONL file, one compact line each, flushed and fsynced (append-only results).

    A torn last line (an append interrupted by a kill) is cut off first, so a new record is never glued to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            if not tail.endswith(b"\n"):
                keep = size - len(tail) + tail.rfind(b"\n") + 1
                log.warning("%s: cut a torn last line (%d bytes) left by an interrupted write", path, size - keep)
                f.truncate(keep)
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(dumps_jsonl(rec))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (an interrupted append) is ignored, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise ValidationError(f"{path}:{i}: invalid JSON line") from None
    return out


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike[str]) -> str:
    """Hex SHA-256 over a directory's relative file names and contents (order-independent of the walk)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Short hex digest of a JSON-serialisable object, used as a cache key."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())[:n]

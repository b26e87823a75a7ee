"""On-disk cache entries that carry their own check: the key they answer, their arrays' shapes and dtypes, and a
SHA-256 of their content, written atomically.

An entry that fails the check (unreadable, truncated, another key, another shape or row count, content that no longer
matches its checksum, NaN or infinite values) is never used: the reader logs one warning line and the caller computes
the value again, which overwrites the entry. Feature caches (`failmode.features`), image-embedding caches
(`failmode.mining.attribution`) and LLM responses (`failmode.vocab.llm`) are kept this way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from failmode.io import atomic_path, dumps_json, read_json, write_json

log = logging.getLogger(__name__)

_META = "__cache__"  # the entry's own record inside an .npz: key, arrays (shape, dtype), sha256
FORMAT = 1


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")  # no copy of the content
    return h.hexdigest()


def save_arrays(path: str | os.PathLike[str], key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz cache entry for `key`, with its own record (shapes, dtypes, SHA-256), atomically."""
    meta = {"format": FORMAT, "key": key, "sha256": arrays_digest(arrays),
            "arrays": {n: {"shape": list(a.shape), "dtype": a.dtype.str} for n, a in sorted(arrays.items())}}
    record = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, **{_META: record})


def load_arrays(path: str | os.PathLike[str], key: str, *, rows: int | None = None,
                what: str = "cache") -> dict[str, np.ndarray] | None:
    """The arrays of the cache entry at `path` when it exists and passes its check for `key` (and, when given, has
    `rows` rows in every array); else None, with one warning line when an entry was there but failed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if _META not in z.files:
                return _invalid(path, what, "written without its own check (an older or foreign file)")
            meta = json.loads(z[_META].tobytes().decode())
            arrays = {n: z[n] for n in meta["arrays"]}
    except Exception as e:  # a truncated zip, a foreign file, a damaged record: never a traceback, recompute
        return _invalid(path, what, f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
    reason = _problem(meta, arrays, key, rows)
    return _invalid(path, what, reason) if reason else arrays


def _problem(meta: dict[str, Any], arrays: dict[str, np.ndarray], key: str, rows: int | None) -> str:
    """Why an entry read back is not a valid answer for `key` ("" when it is)."""
    if meta.get("key") != key:
        return f"it answers another key ({str(meta.get('key'))[:32]})"
    for name, a in arrays.items():
        want = meta["arrays"][name]
        if list(a.shape) != want["shape"] or a.dtype.str != want["dtype"]:
            return f"{name} is {a.dtype.str}{list(a.shape)}, its record says {want['dtype']}{want['shape']}"
        if rows is not None and (a.ndim == 0 or a.shape[0] != rows):
            return f"{name} has {a.shape[0] if a.ndim else 0} rows, {rows} expected"
    if arrays_digest(arrays) != meta.get("sha256"):
        return "its content does not match its checksum"
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return f"{name} holds NaN or infinite values"
    return ""


def _invalid(path: Path, what: str, reason: str) -> None:
    log.warning("%s: ignoring the cache entry %s (%s); computing it again", what, path.name, reason)
    return None


def save_json(path: str | os.PathLike[str], key: str, entry: dict[str, Any]) -> None:
    """Write a JSON cache entry for `key` with a SHA-256 of its canonical content, atomically."""
    body = {**entry, "key": key}
    write_json(path, {**body, "sha256": hashlib.sha256(dumps_json(body).encode()).hexdigest()})


def load_json(path: str | os.PathLike[str], key: str, *, what: str = "cache") -> dict[str, Any] | None:
    """The JSON cache entry at `path` when it exists and passes its check for `key`, else None (one warning line
    when an entry was there but failed)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except Exception as e:  # torn or not JSON
        return _invalid(path, what, str(e).split(": ", 1)[-1][:80])
    if not isinstance(data, dict):
        return _invalid(path, what, "not a JSON object")
    body = {k: v for k, v in data.items() if k != "sha256"}
    if data.get("key") != key:
        return _invalid(path, what, "it answers another key")
    if hashlib.sha256(dumps_json(body).encode()).hexdigest() != data.get("sha256"):
        return _invalid(path, what, "its content does not match its checksum")
    return body

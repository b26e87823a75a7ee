"""Debug datasets as the evaluation reads them: from the Hub (a tagged revision), a local folder, or webdataset shards.

A failmode debug dataset folder holds `data/<config>/<split>-NNNNN-of-MMMMM.parquet` (columns image, label,
class_name, context, ...), `wds/<config>/` shards and a `failmode.json` manifest. A Hub id is fetched (only the
chosen config) into the Hugging Face cache and read as such a folder. Only a finalized folder is read: its manifest
must list the config, with images, and the config's shards must be exactly the listed ones with their hashes.
Configs are read lazily, image by image: parquet row groups in place (no Arrow copy), tars by offset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from failmode.data.sources import ImageSource, open_source
from failmode.data.spec import parse_spec
from failmode.dataset.layout import MANIFEST_NAME
from failmode.dataset.validate import check_config_files, load_finalized
from failmode.errors import ValidationError
from failmode.hub import load_from_hub_or_local
from failmode.io import read_json

log = logging.getLogger(__name__)

@dataclass
class DebugSet:
    """Debug images of one config, their labels in the model's class indices, and their contexts (if known)."""

    source: ImageSource
    labels: np.ndarray
    contexts: list[str] | None
    config: str
    revision: str | None


def _fetch_hub(repo: str, config: str, revision: str | None) -> Path:
    """Download one config (and the manifest) of a Hub dataset into the HF cache; return the snapshot folder."""

    def load(ident: str, local_only: bool) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ident, repo_type="dataset", revision=revision, local_files_only=local_only,
                                      allow_patterns=[f"data/{config}/*", MANIFEST_NAME]))

    what = f"the debug dataset {repo!r} (config {config}, revision {revision or 'main'})"
    return load_from_hub_or_local(repo, load, what=what, local_hint="pass a local copy as --debug-data /path/to/folder")


def _source_spec(spec: str, config: str, revision: str | None) -> tuple[str, Path | None]:
    """(open_source spec, dataset root folder or None) for a debug-data argument."""
    parsed = parse_spec(spec, hub_default=True)
    if parsed.kind == "wds":
        per_config = parsed.path / "wds" / config  # type: ignore[operator]
        return (f"wds:{per_config}" if (per_config / "_info.json").exists() else spec), None
    if parsed.kind == "local":
        root = parsed.path
    else:
        root = _fetch_hub(parsed.repo, config, parsed.revision or revision)  # type: ignore[arg-type]
    check_config_files(root, load_finalized(root), config)  # a finalized dataset, this config as its manifest says
    return f"{root}#{config}", root


def _contexts(source: ImageSource) -> list[str] | None:
    """The `context` column of a config (parquet), None where the source has none (tars)."""
    try:
        values = source.column("context")
    except ValidationError:
        return None
    return [str(v or "") for v in values] if len(values) == len(source) else None


def manifest_revision(root: Path | None) -> str | None:
    """The dataset version recorded in the folder's manifest (`version` or `revision`), if any."""
    if root is None or not (root / MANIFEST_NAME).exists():
        return None
    m = read_json(root / MANIFEST_NAME)
    return m.get("version") or m.get("revision") if isinstance(m, dict) else None


def align_labels(debug_names: list[str], model_names: list[str], where: str) -> np.ndarray:
    """Map debug-dataset class indices onto the model dataset's; names missing there fail in one line.

    Identical lists map one to one (ImageNet-1k names the bird and the machine both "crane"); otherwise every
    debug name must occur exactly once among the model's names.
    """
    if list(debug_names) == list(model_names):
        return np.arange(len(model_names), dtype=np.int64)
    pos = {n: i for i, n in enumerate(model_names)}
    ambiguous = sorted({n for n in debug_names if model_names.count(n) > 1})
    if ambiguous:
        raise ValidationError(f"{where}: class names {', '.join(map(repr, ambiguous[:5]))} occur more than once in "
                              "the model's dataset, so labels cannot be matched by name; use the same class list")
    unknown = [n for n in debug_names if n not in pos]
    if unknown or not debug_names:
        listed = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValidationError(f"{where}: class names do not match the model's dataset ({len(unknown)} of "
                              f"{len(debug_names)} unknown: {listed or 'no class names'}; expected e.g. "
                              f"{', '.join(repr(n) for n in model_names[:3])})")
    return np.asarray([pos[n] for n in debug_names], dtype=np.int64)


def open_debug_set(spec: str, config: str, model_names: list[str], *, revision: str | None = None,
                   split: str = "train") -> DebugSet:
    """Open config `config` of a debug dataset and map its labels onto `model_names`."""
    source_spec, root = _source_spec(spec, config, revision)
    source = open_source(source_spec, split=split)
    mapping = align_labels(source.class_names, model_names, f"debug dataset {spec} ({config})")
    contexts = _contexts(source) if root is not None else None
    log.info("debug set %s#%s: %d images", spec, config, len(source))
    return DebugSet(source, mapping[source.labels], contexts, config, revision or manifest_revision(root))


def top_k_mask(labels: np.ndarray, contexts: list[str], k: int) -> np.ndarray:
    """Rows whose context is among the first `k` failure modes of their class.

    A class's modes are ranked by the order in which its contexts first appear in the dataset: sample plans list
    each class's contexts in rank order and the writer keeps plan order.
    """
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        chosen = set(list(dict.fromkeys(contexts[i] for i in rows))[:k])
        keep[rows] = [contexts[i] in chosen for i in rows]
    return keep


def first_n_mask(labels: np.ndarray, contexts: list[str], n: int) -> np.ndarray:
    """Rows among the first `n` images of their (class, context): the images-per-mode sweep (plan order kept)."""
    seen: dict[tuple[int, str], int] = {}
    keep = np.zeros(len(labels), dtype=bool)
    for i, (y, ctx) in enumerate(zip(labels, contexts, strict=True)):
        j = seen.get((int(y), ctx), 0)
        keep[i], seen[(int(y), ctx)] = j < n, j + 1
    return keep

"""Cross-model overlap of failure sets: intersection over union of misclassified debug images, grouped by family.

IoU(A, B) = |A ∩ B| / |A ∪ B| over image ids; two empty sets have IoU 1. A model's family is looked up in a
user mapping (exact name, else the longest key that prefixes the name), else derived from the timm name: the
pretrained tag (after '.') and a weight-source prefix (`tf_`, `tv_`, ...) are dropped, and the family is the
leading letters of the first '_' token without a trailing version ('resnet50' -> 'resnet',
'mobilenetv3_large_100' -> 'mobilenet', 'vit_base_patch16_224.augreg_in21k' -> 'vit').
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from failmode.errors import UsageError, ValidationError
from failmode.io import write_bytes_atomic, write_json

log = logging.getLogger(__name__)

OVERLAP_FORMAT = "failmode-overlap/1"
#: weight-source prefixes of timm names that say where weights came from, not the architecture family
SOURCE_PREFIXES = ("tf_", "tv_", "gluon_", "legacy_", "ig_", "ssl_", "swsl_", "hf_")
_FAMILY_RE = re.compile(r"^([a-z]+?)(?:v?\d.*)?$")
#: which failures to compare: all, or one half
HALF_CHOICES = ("all", "seed", "heldout")


def model_family(name: str, families: Mapping[str, str] | None = None) -> str:
    """The family of model `name` (module docstring)."""
    if families:
        if name in families:
            return families[name]
        prefixes = [k for k in families if name.startswith(k)]
        if prefixes:
            return families[max(prefixes, key=len)]
    base = name.split("/")[-1].split(".")[0].lower()
    for p in SOURCE_PREFIXES:
        if base.startswith(p):
            base = base[len(p):]
            break
    token = base.split("_")[0]
    m = _FAMILY_RE.match(token)
    return m.group(1) if m else token


def iou_matrix(sets: Sequence[set[str]]) -> np.ndarray:
    """Pairwise intersection over union [N, N] of `sets`."""
    n = len(sets)
    out = np.ones((n, n), np.float64)
    for a in range(n):
        for b in range(a + 1, n):
            union = len(sets[a] | sets[b])
            out[a, b] = out[b, a] = len(sets[a] & sets[b]) / union if union else 1.0
    return out


def family_means(matrix: np.ndarray, fams: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Mean IoU between models of each pair of families (off-diagonal pairs only; None if there are none)."""
    names = sorted(set(fams))
    out: dict[str, dict[str, float | None]] = {}
    for fa in names:
        out[fa] = {}
        for fb in names:
            vals = [matrix[i, j] for i in range(len(fams)) for j in range(len(fams))
                    if i != j and fams[i] == fa and fams[j] == fb]
            out[fa][fb] = round(float(np.mean(vals)), 6) if vals else None
    return out


def _load_sets(failures: Mapping[str, str | os.PathLike[str]], half: str) -> dict[str, set[str]]:
    from failmode.mining.failures import read_failures

    if half not in HALF_CHOICES:
        raise UsageError(f"half must be one of {', '.join(HALF_CHOICES)}, not {half!r}")
    sets, ref = {}, None
    for name, path in failures.items():
        rows, meta = read_failures(path)
        key = {k: meta.get(k) for k in ("dataset", "source", "split_seed", "n_debug")}
        if ref is None:
            ref = (name, key)
        elif key != ref[1]:
            diff = next(k for k in key if key[k] != ref[1][k])
            raise ValidationError(f"{path}: mined on a different debug set than {ref[0]} ({diff} "
                                  f"{key[diff]!r} vs {ref[1][diff]!r}); overlap needs the same debug set")
        sets[name] = {r["image_id"] for r in rows if half == "all" or r["half"] == half}
    return sets


def name_failures(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Name each failures table by its model (its folder name too when two tables share a model)."""
    from failmode.mining.failures import read_failures

    metas = [(Path(p), read_failures(p)[1]) for p in paths]
    models = [m.get("model") or Path(p).stem for p, m in metas]
    out = {}
    for (p, _), model in zip(metas, models):
        folder = (p if p.is_dir() else p.parent).name
        name = model if models.count(model) == 1 else f"{model} ({folder})"
        if name in out:
            raise ValidationError(f"{p}: two failure tables are both named {name!r}")
        out[name] = p
    return out


def failure_overlap(
    failures: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str],
    families: Mapping[str, str] | None = None,
    half: str = "all",
) -> Path:
    """Compare failure sets by IoU; write overlap.csv, overlap.json and overlap.png; return the JSON path.

    `failures` is a list of failures.parquet paths (named by model) or a name -> path mapping. Models are
    ordered by family, then name, so families form blocks on the heatmap's diagonal.
    """
    named = dict(failures) if isinstance(failures, Mapping) else name_failures(failures)
    if len(named) < 2:
        raise UsageError("overlap needs failure tables of at least two models")
    sets = _load_sets(named, half)
    fam = {n: model_family(n, families) for n in sets}
    order = sorted(sets, key=lambda n: (fam[n], n))
    matrix = iou_matrix([sets[n] for n in order])
    out = Path(out_dir)
    write_bytes_atomic(out / "overlap.csv", matrix_csv(order, matrix).encode())
    write_json(out / "overlap.json", {
        "format": OVERLAP_FORMAT, "metric": "iou", "half": half, "models": order,
        "families": {n: fam[n] for n in order}, "n_failures": {n: len(sets[n]) for n in order},
        "matrix": [[round(float(v), 6) for v in row] for row in matrix],
        "family_mean": family_means(matrix, [fam[n] for n in order])})
    plot_heatmap(out / "overlap.png", order, [fam[n] for n in order], matrix)
    log.info("overlap of %d models -> %s", len(order), out)
    return out / "overlap.json"


def matrix_csv(names: Sequence[str], matrix: np.ndarray) -> str:
    """The IoU matrix as CSV: a header row of model names, then one row per model."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", *names])
    for name, row in zip(names, matrix):
        w.writerow([name, *(f"{v:.4f}" for v in row)])
    return buf.getvalue()


def plot_heatmap(path: Path, names: Sequence[str], fams: Sequence[str], matrix: np.ndarray) -> None:
    """A heatmap PNG of the IoU matrix with family blocks outlined and labelled (matplotlib, Agg)."""
    from matplotlib.patches import Rectangle

    from failmode.plots import save_figure, subplots

    n = len(names)
    side = max(4.0, 0.45 * n + 2.5)
    fig, ax = subplots(figsize=(side + 1.2, side))
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if matrix[i, j] > 0.6 else "white")
    start = 0
    for i in range(1, n + 1):
        if i == n or fams[i] != fams[start]:
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), i - start, i - start,
                                                      fill=False, edgecolor="red", linewidth=1.5))
            ax.text(n - 0.4, (start + i - 1) / 2, fams[start], va="center", fontsize=8, color="red")
            start = i
    ax.set_title("Failure overlap (IoU of misclassified debug images)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.12)
    fig.tight_layout()
    save_figure(fig, path)


def load_families(spec: str | os.PathLike[str] | None) -> dict[str, str] | None:
    """A name -> family mapping ({"resnet50": "cnn", "vit_": "transformer"}) given inline as JSON or as a JSON
    file, or None."""
    if spec is None:
        return None
    import json

    from failmode.io import read_json

    text = os.fspath(spec)
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValidationError(f"--families {text!r}: invalid JSON ({e.msg} at column {e.colno})") from None
        where = f"--families {text!r}"
    else:
        data, where = read_json(spec), str(spec)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        got = type(data).__name__ if not isinstance(data, dict) else "non-string family names"
        raise ValidationError(f"{where}: families map model names (or name prefixes) to family names, e.g. "
                              f'{{"vit_": "ViT"}} (got {got})')
    return data


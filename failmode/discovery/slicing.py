"""The `failmode slices` stage: tag a split, search minimal failure slices, check them on another split, report.

Generalisation: slices found on the *find* split are looked up on the *check* split with the same tag thresholds;
the report gives, over the slices with at least `min_check_size` images there, the Pearson and Spearman correlation
of their accuracy drops on the two splits, and how many still fall at least `d / 2` below their class.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import Attributor
from failmode.data.sources import ImageSource
from failmode.discovery.classify import Classifier
from failmode.discovery.outputs import DebugRender, write_debug_config
from failmode.discovery.tagging import (
    ContextVocabulary,
    TagScores,
    apply_thresholds,
    calibrate,
    score_tags,
    truth_matrix,
)
from failmode.errors import FailmodeError, UsageError
from failmode.generation.plan import ModeSet, prompted_modes
from failmode.io import finite_json, write_bytes_atomic, write_json
from failmode.mining.tables import write_table
from failmode.slices import Slice, SliceParams, find_slices, slice_members
from failmode.stats import pearson, spearman

log = logging.getLogger(__name__)

SLICES_FORMAT = "failmode-slices/1"


@dataclass
class TaggedSplit:
    """One split's images with their tags and whether the classifier got them right."""

    scores: TagScores
    tags: np.ndarray
    correct: np.ndarray


@dataclass
class Calibration:
    """How tag thresholds are set: a method of `failmode.discovery.tagging.CALIBRATIONS` and its options.

    `source`/`indices`/`contexts` name labelled calibration images (each image's true contexts) for "tag-precision";
    without them the thresholds are calibrated on the find split itself (fine for unsupervised methods).
    """

    method: str = "robust-z"
    options: dict[str, Any] = field(default_factory=dict)
    source: ImageSource | None = None
    indices: np.ndarray | None = None
    contexts: Sequence[Sequence[str]] | None = None


@dataclass
class SliceReport:
    """Everything `failmode slices` writes: ranked slices, their check-split figures, thresholds, correlations."""

    slices: list[Slice]
    thresholds: dict[str, float]
    params: SliceParams
    generalisation: dict[str, Any]
    meta: dict[str, Any]


def tag_split(attributor: Attributor, classifier: Classifier, source: ImageSource, indices: np.ndarray,
              vocabularies: Sequence[ContextVocabulary], thresholds: Mapping[str, float] | None = None,
              calibration: Calibration | None = None) -> tuple[TaggedSplit, dict[str, float]]:
    """Score, threshold (calibrating when `thresholds` is None) and predict one split."""
    scores = score_tags(attributor, source, vocabularies, indices)
    if thresholds is None:
        cal = calibration or Calibration()
        if cal.source is not None:
            cal_idx = np.arange(len(cal.source)) if cal.indices is None else np.asarray(cal.indices)
            cal_scores = score_tags(attributor, cal.source, vocabularies, cal_idx)
        else:
            cal_scores = scores
        truth = truth_matrix(cal_scores, cal.contexts) if cal.contexts is not None else None
        thresholds = calibrate(cal_scores, cal.method, truth=truth, **cal.options)
    correct = classifier.predict(source, scores.indices) == source.labels[scores.indices]
    return TaggedSplit(scores, apply_thresholds(scores, thresholds), correct), dict(thresholds)


def check_slices(slices: Sequence[Slice], split: TaggedSplit, params: SliceParams,
                 min_check_size: int = 5) -> dict[str, Any]:
    """Fill each slice's `extra` with its check-split size/accuracy/drop; return the correlation summary."""
    s = split.scores
    find_drops, check_drops = [], []
    for sl in slices:
        rows = np.flatnonzero(s.labels == sl.label)
        names = s.tag_names.get(sl.label, [])
        member = rows[slice_members(split.tags[rows][:, :len(names)], names, sl.tags)]
        class_acc = float(split.correct[rows].mean()) if len(rows) else math.nan
        acc = float(split.correct[member].mean()) if len(member) else math.nan
        sl.extra.update(check_size=int(len(member)), check_accuracy=acc, check_class_accuracy=class_acc,
                        check_drop=class_acc - acc if len(member) else math.nan)
        if len(member) >= min_check_size:
            find_drops.append(sl.drop)
            check_drops.append(class_acc - acc)
    held = sum(d >= params.min_drop / 2 for d in check_drops)
    return {"n_slices": len(slices), "n_compared": len(check_drops), "min_check_size": min_check_size,
            "pearson": pearson(find_drops, check_drops), "spearman": spearman(find_drops, check_drops),
            "mean_find_drop": float(np.mean(find_drops)) if find_drops else math.nan,
            "mean_check_drop": float(np.mean(check_drops)) if check_drops else math.nan,
            "n_check_drop_at_least_half_d": int(held)}


@dataclass(frozen=True)
class SliceRun:
    """A slice search's report and what rendering its top slices into a debug config takes: the classifier's
    ident (the config's source model), the class names, the dataset's name, each context's vocabulary kind, and the
    generator (None: nothing can be rendered)."""

    report: SliceReport
    classifier: str
    class_names: list[str]
    name: str
    kinds: dict[str, str]
    render: DebugRender | None = None


def vocabulary_kinds(vocabularies: Sequence[Any]) -> dict[str, str]:
    """Context phrase -> its vocabulary's kind (the context kind of rendered slice images)."""
    return {c: v.kind for v in vocabularies for cls in v.classes for c in cls.contexts}


def run_slices(attributor: Attributor, classifier: Classifier, vocabularies: Sequence[ContextVocabulary], *,
               find: tuple[ImageSource, np.ndarray | None], check: tuple[ImageSource, np.ndarray | None] | None = None,
               params: SliceParams = SliceParams(), calibration: Calibration | None = None,
               min_check_size: int = 5) -> SliceReport:
    """Tag the find split, search minimal slices, and (with `check`) measure how they generalise."""
    params.check()
    src, idx = find
    idx = np.arange(len(src)) if idx is None else np.asarray(idx, dtype=np.int64)
    split, thresholds = tag_split(attributor, classifier, src, idx, vocabularies, calibration=calibration)
    slices = find_slices(split.tags, split.scores.labels, split.correct, split.scores.column_names(),
                         src.class_names, params)
    generalisation: dict[str, Any] = {}
    if check is not None:
        csrc, cidx = check
        cidx = np.arange(len(csrc)) if cidx is None else np.asarray(cidx, dtype=np.int64)
        csplit, _ = tag_split(attributor, classifier, csrc, cidx, vocabularies, thresholds=thresholds)
        generalisation = check_slices(slices, csplit, params, min_check_size)
    cal = calibration or Calibration()
    meta = {"attributor": attributor.ident, "classifier": classifier.ident, "find_source": src.ident,
            "n_find": int(len(idx)), "find_accuracy": float(split.correct.mean()) if len(idx) else math.nan,
            "check_source": check[0].ident if check else None, "calibration": cal.method,
            "calibration_options": dict(cal.options), "calibration_source": cal.source.ident if cal.source else "find",
            "tags_per_image": float(split.tags.sum(1).mean()) if len(idx) else 0.0,
            "vocabulary_kinds": [v.kind for v in vocabularies]}
    log.info("%d minimal slices on %d images (%.2f tags per image)", len(slices), len(idx), meta["tags_per_image"])
    return SliceReport(slices, thresholds, params, generalisation, meta)


def slice_modes(slices: Sequence[Slice], *, per_slice: int, source_model: str,
                kinds: Mapping[str, str] | None = None, config: str = "slices") -> ModeSet:
    """The debug config of `slices` (rendered through the generation plan): per slice `per_slice` images of its
    description (the prompt), its tags in order as the context; the context kind is the tags' vocabulary kind when
    they share one, else "slice"."""
    tag_kinds = {(kinds or {}).get(t, "slice") for sl in slices for t in sl.tags}
    kind = tag_kinds.pop() if len(tag_kinds) == 1 else "slice"
    items = [(sl.label, sl.class_name, " ".join(sl.tags), sl.description, per_slice) for sl in slices]
    return prompted_modes(config, source_model, kind, items)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def report_markdown(report: SliceReport, top: int = 30) -> str:
    """The human-readable report: parameters, generalisation, the top slices in a table."""
    p, g, m = report.params, report.generalisation, report.meta
    lines = ["# Minimal failure slices", "",
             f"Attributor: `{m['attributor']}`; classifier: `{m['classifier']}`.",
             f"Find split: {m['n_find']} images (accuracy {_fmt(m['find_accuracy'])}), "
             f"{m['tags_per_image']:.2f} tags per image; thresholds: `{m['calibration']}` {m['calibration_options']}.",
             f"Search: s = {p.max_order} tags at most, m = {p.min_size} images at least, d = {p.min_drop} accuracy "
             f"drop at least; minimal = every one-tag-smaller group is at least {p.min_gain} more accurate.",
             "Ranking: class accuracy minus the upper 95 % Wilson bound of the slice's accuracy.", ""]
    if g:
        lines += ["## Generalisation", "",
                  f"On the check split (`{m['check_source']}`), {g['n_compared']} of {g['n_slices']} slices have at "
                  f"least {g['min_check_size']} images: drop correlation Pearson {_fmt(g['pearson'])}, Spearman "
                  f"{_fmt(g['spearman'])}; mean drop {_fmt(g['mean_find_drop'])} (find) vs "
                  f"{_fmt(g['mean_check_drop'])} (check); {g['n_check_drop_at_least_half_d']} keep a drop >= d/2.", ""]
    head = "| rank | class | slice | images | accuracy | class acc. | drop | check images | check drop |"
    lines += ["## Slices", "", head, "|" + "---|" * 9]
    for s in report.slices[:top]:
        lines.append(f"| {s.rank} | {s.class_name} | {s.description} | {s.size} | {_fmt(s.accuracy)} | "
                     f"{_fmt(s.class_accuracy)} | {_fmt(s.drop)} | {s.extra.get('check_size', '')} | "
                     f"{_fmt(s.extra.get('check_drop', ''))} |")
    if len(report.slices) > top:
        lines.append(f"\n({len(report.slices) - top} more in slices.parquet)")
    return "\n".join(lines) + "\n"


def write_slice_outputs(out_dir: str | Path, run: SliceRun, *, generate_top: int = 0,
                        images_per_slice: int = 10) -> dict[str, Path]:
    """The slice report (`write_slice_report`) and, with `generate_top`, the top slices' debug config rendered into
    out_dir/debug-dataset (a finalized dataset folder); returns the paths written."""
    paths = write_slice_report(out_dir, run.report)
    if generate_top:
        top = run.report.slices[:generate_top]
        if not top:
            raise FailmodeError("no slices to render: lower -m or -d, or raise -s")
        if run.render is None:
            raise UsageError("rendering the top slices needs a generator")
        modes = slice_modes(top, per_slice=images_per_slice, source_model=run.classifier, kinds=run.kinds)
        paths["debug"] = write_debug_config(Path(out_dir) / "debug-dataset", name=run.name, modes=modes,
                                            render=run.render, class_names=run.class_names,
                                            description="top minimal failure slices")
    return paths


def write_slice_report(out_dir: str | Path, report: SliceReport) -> dict[str, Path]:
    """Write slices.json (everything), slices.parquet (one row per slice) and report.md into `out_dir`."""
    out = Path(out_dir)
    rows = [s.to_row() for s in report.slices]
    doc = {"format": SLICES_FORMAT, "params": report.params.__dict__, "meta": report.meta,
           "generalisation": report.generalisation, "thresholds": report.thresholds, "slices": rows}
    paths = {"json": out / "slices.json", "parquet": out / "slices.parquet", "report": out / "report.md"}
    write_json(paths["json"], finite_json(doc))
    write_table(paths["parquet"], rows, {"format": SLICES_FORMAT})
    write_bytes_atomic(paths["report"], report_markdown(report).encode("utf-8"))
    return paths

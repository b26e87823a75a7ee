"""Slices on a real dataset: a mined run (the outputs of `failmode mine`) as the find and check splits.

`load_mined_run` reads OUT/failures.parquet (metadata: model, weights, dataset, split, head), splits.json and
predictions.npz, reopens the dataset and checks that it still holds the mined images. `run_mined_slices` tags
every debug image, takes correct / incorrect from the recorded predictions (no forward pass), searches the
slices, and checks them on a second split:
  - "test": the run's test split, predicted by the mined model (rebuilt from its name, weights and head);
  - "debug-half": the debug split halved per class (seeded): slices are found on one half, checked on the other;
  - "auto" (default): "test" when the run recorded a test split and its classifier can be rebuilt (its own
    logits or a head file; not a head trained in memory, nor weights changed since mining), else "debug-half";
  - "none": no check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import Attributor
from failmode.data.sources import ImageSource
from failmode.data.splits import Splits, stratified_take
from failmode.discovery.classify import Classifier, RecordedClassifier, TimmClassifier
from failmode.discovery.outputs import DebugRender
from failmode.discovery.slicing import Calibration, SliceReport, SliceRun, run_slices, vocabulary_kinds
from failmode.discovery.tagging import ContextVocabulary
from failmode.errors import LoadError, UsageError, ValidationError
from failmode.io import read_json
from failmode.mining.failures import Predictions, read_predictions
from failmode.options import FeatureOptions, ModelSpec
from failmode.slices import SliceParams

log = logging.getLogger(__name__)

CHECK_MODES = ("auto", "test", "debug-half", "none")
MINED_FILES = ("failures.parquet", "splits.json", "predictions.npz")
#: salt of the seeded per-class halving of the debug split (distinct from the split recipe's salts)
HALF_SALT = 4


@dataclass
class MinedRun:
    """A mined run: its folder, metadata, failure records, splits, debug predictions and the reopened dataset."""

    root: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    splits: Splits
    predictions: Predictions
    source: ImageSource

    @property
    def ident(self) -> str:
        """The classifier as the run describes it: model key and head."""
        return f"{self.meta.get('model_key', self.meta.get('model'))}+{self.meta.get('head', 'native')}"


def load_mined_run(path: str | os.PathLike[str]) -> MinedRun:
    """Read a `failmode mine` output folder and reopen its dataset; one-line errors for anything missing."""
    from failmode.data.sources import open_source
    from failmode.mining.attribution import check_same_images
    from failmode.mining.failures import read_failures

    root = Path(path)
    if not root.is_dir():
        raise LoadError(f"{root}: no such mined run (a folder written by 'failmode mine --out')")
    missing = [n for n in MINED_FILES if not (root / n).is_file()]
    if missing:
        raise LoadError(f"{root}: lacks {', '.join(missing)}; rerun 'failmode mine --out {root}'")
    rows, meta = read_failures(root)
    splits = Splits.from_json(read_json(root / "splits.json"))
    preds = read_predictions(root / "predictions.npz")
    if not np.array_equal(np.sort(preds.indices), np.sort(splits.debug)):
        raise ValidationError(f"{root}: predictions.npz does not cover the debug split of splits.json")
    source = open_source(meta["dataset"], meta.get("split"))
    check_same_images(rows, source, root / "failures.parquet")
    if len(source) <= int(splits.debug.max(initial=-1)) or not np.array_equal(source.labels[preds.indices],
                                                                           preds.labels):
        raise ValidationError(f"{root}: the labels of {source.ident} differ from the mined ones; "
                              "the dataset changed since mining")
    return MinedRun(root, meta, rows, splits, preds, source)


def check_vocabularies(run: MinedRun, vocabularies: Sequence[Any]) -> None:
    """Every vocabulary must be for a dataset with the run's class count and cover every debug class."""
    from failmode.mining.attribution import check_vocabulary
    from failmode.vocab.classnames import class_names, known_datasets

    n = len(run.source.class_names)
    labels = np.unique(run.predictions.labels).tolist()
    for v in vocabularies:
        where = getattr(v, "source", v.kind)
        dataset = getattr(v, "dataset", None)
        if dataset in known_datasets() and len(class_names(dataset)) != n:
            raise ValidationError(f"vocabulary {where} is for {dataset} ({len(class_names(dataset))} classes), "
                                  f"but the mined dataset has {n} classes")
        check_vocabulary(v, labels, run.source.class_names, str(where))


def live_classifier(run: MinedRun, extraction: FeatureOptions | None = None) -> tuple[TimmClassifier | None, str]:
    """The mined classifier rebuilt from the run's metadata (extracting with `extraction`), or (None, why it
    cannot be)."""
    from failmode.models.setup import model_key

    head = str(run.meta.get("head", "native"))
    head_file = None
    if head.startswith("file:"):
        head_file = head.removeprefix("file:")
        if not os.path.isfile(head_file):
            return None, f"its head file {head_file} is gone"
    elif head != "native":
        return None, f"its head ({head}) was not saved"
    model, weights = run.meta["model"], run.meta.get("weights")
    if model_key(model, weights) != run.meta.get("model_key"):
        return None, f"its weights {weights} changed since mining"
    spec = ModelSpec(model, weights, head_file, run.meta.get("image_size"), run.meta.get("crop_pct"))
    return TimmClassifier(spec, extraction=extraction), ""


def split_debug(run: MinedRun, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The debug split halved per class, seeded: (find indices, check indices) into the source."""
    debug = np.sort(run.splits.debug)
    first, second = stratified_take(run.source.labels[debug], 0.5, seed, salt=HALF_SALT)
    return debug[first], debug[second]


def resolve_check(run: MinedRun, check: str, extraction: FeatureOptions | None = None) -> tuple[str, Classifier | None]:
    """(check mode actually used, live classifier for the test split or None); see the module docstring."""
    if check not in CHECK_MODES:
        raise UsageError(f"unknown check {check!r} for a mined run (known: {', '.join(CHECK_MODES)})")
    if check in ("debug-half", "none"):
        return check, None
    if len(run.splits.test) == 0:
        if check == "test":
            raise UsageError(f"{run.root}: the mined run recorded no test split; use --check debug-half")
        log.info("no test split recorded: checking on the other half of the debug split")
        return "debug-half", None
    live, why = live_classifier(run, extraction)
    if live is None:
        if check == "test":
            raise UsageError(f"{run.root}: cannot predict the test split: {why}; use --check debug-half")
        log.info("cannot predict the test split (%s): checking on the other half of the debug split", why)
        return "debug-half", None
    return "test", live


def run_mined_slices(run: MinedRun, attributor: Attributor, vocabularies: Sequence[ContextVocabulary], *,
                     params: SliceParams | None = None, calibration: Calibration | None = None,
                     check: str = "auto", seed: int = 0, min_check_size: int = 5,
                     extraction: FeatureOptions | None = None) -> SliceReport:
    """Tag every debug image of a mined run, search minimal slices, check them (see the module docstring)."""
    check_vocabularies(run, vocabularies)
    mode, live = resolve_check(run, check, extraction)
    classifier = RecordedClassifier(run.predictions.indices, run.predictions.predictions,
                                    source_ident=run.source.ident, ident=run.ident, fallback=live)
    debug = np.sort(run.splits.debug)
    if mode == "debug-half":
        find_idx, check_idx = split_debug(run, seed)
    else:
        find_idx, check_idx = debug, (np.sort(run.splits.test) if mode == "test" else None)
    check_arg = None if check_idx is None else (run.source, check_idx)
    report = run_slices(attributor, classifier, vocabularies, find=(run.source, find_idx), check=check_arg,
                        params=params or SliceParams(), calibration=calibration, min_check_size=min_check_size)
    describe = getattr(vocabularies[0], "prompt", None)
    if callable(describe):  # the vocabulary's prompt name and template, by label ("crane" is two ImageNet classes)
        for sl in report.slices:
            sl.description = describe(sl.label, " ".join(sl.tags))
    report.meta.update(mined_run=str(run.root), model=run.meta.get("model"), dataset=run.meta.get("dataset"),
                       check_mode=mode, n_debug=len(debug),
                       n_check=0 if check_idx is None else len(check_idx),
                       n_tagged_debug=len(find_idx) + (len(check_idx) if mode == "debug-half" else 0))
    return report


def slice_mined_run(run: MinedRun, attributor: Attributor, vocabularies: Sequence[ContextVocabulary], *,
                    render: DebugRender | None = None, **options: Any) -> SliceRun:
    """`run_mined_slices` (its `options`: params, calibration, check, seed, min_check_size, extraction) as
    a `SliceRun` whose top slices `render` can draw into a debug config named after the run's dataset."""
    report = run_mined_slices(run, attributor, vocabularies, **options)
    return SliceRun(report, report.meta["classifier"], run.source.class_names,
                    f"{Path(str(run.meta.get('dataset'))).name}-slices", vocabulary_kinds(vocabularies), render)


class CachedAttributor(Attributor):
    """An attributor whose image embeddings are cached on disk (`failmode.mining.attribution`'s embedding cache,
    shared with `failmode attribute`); attributors without a `cache_key` are passed through uncached."""

    def __init__(self, inner: Attributor, cache_dir: str | os.PathLike[str] | None) -> None:
        self.inner, self.cache_dir = inner, cache_dir
        self.ident = inner.ident

    def encode_images(self, source: ImageSource, indices: Sequence[int]) -> np.ndarray:
        """Embeddings of `source[indices]`, computing only the ones not cached yet."""
        from failmode.mining.attribution import encode_images_cached

        return encode_images_cached(self.inner, source, list(indices), self.cache_dir)

    def encode_contexts(self, class_name: str, contexts: Sequence[str]) -> np.ndarray:
        """The wrapped attributor's context embeddings."""
        return self.inner.encode_contexts(class_name, contexts)

    def scores(self, image_emb: np.ndarray, context_emb: np.ndarray) -> np.ndarray:
        """The wrapped attributor's similarity logits."""
        return self.inner.scores(image_emb, context_emb)

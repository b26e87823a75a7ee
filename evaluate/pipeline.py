"""Evaluate a debug dataset on one model: frozen features once, then linear heads for each setting, results as JSONL.

Settings of one evaluation (one results line each):
  original  the model's own head, untouched (the "before" of every comparison)
  retrain   the head retrained on the original train subset only (lambda = 0): what retraining alone changes
  debug     the head retrained with L(original) + lambda * L(debug) on a config: the model's own config and the
            dataset's class-only baseline config
Accuracy is reported on the test split, and on the model's seed and heldout failures of the debug split.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from failmode import __version__
from failmode.data.sources import BadImages, ImageSource
from failmode.data.spec import parse_spec
from failmode.data.splits import Splits, resolve_recipe
from failmode.dataset.layout import MANIFEST_NAME, config_slug
from failmode.errors import UsageError, ValidationError
from failmode.evaluate.data import DebugSet, first_n_mask, open_debug_set, top_k_mask
from failmode.evaluate.results import METRICS, ResultsLog, clean_metric, result_key
from failmode.head import HeadParams, LinearHead, accuracy, train_dataset_head, train_head
from failmode.io import write_json
from failmode.mining.failures import HALVES, Predictions, failures_from_predictions, read_failures
from failmode.models.setup import head_ident, open_classifier
from failmode.options import FeatureOptions, ModelSpec, SplitSpec
from failmode.progress import bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebugSpec:
    """The debug data an evaluation scores and what it scores it on: the debug dataset (its configs, revision and
    split), the model's failures, and the evaluation split's group columns."""

    debug_data: str  # a Hub id, a local folder or wds:DIR
    config: str | None = None  # default: the model's config, config_slug(model)
    baseline_config: str | None = "baseline"  # the class-only config; None to skip
    random_config: str | None = "random-context"  # the random-context config; None to skip
    #: the model's sibling configs made under other budget policies (`<model>-evidence-weighted`), scored like its own
    policy_configs: tuple[str, ...] = ()
    revision: str | None = None
    debug_split: str = "train"
    failures: str | None = None  # a failures.parquet from `failmode mine`; None: recompute from predictions
    group_column: str | None = None  # a column of the evaluation split naming each image's group (e.g. context)
    common_column: str | None = None  # a boolean column: the image's group is its class's common one


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate: the model (`ModelSpec`), its dataset and splits (`SplitSpec`, `split` the evaluation split),
    the debug data (`DebugSpec`) and how features are extracted."""

    model: ModelSpec
    data: SplitSpec
    debug: DebugSpec
    extraction: FeatureOptions = field(default_factory=FeatureOptions)  # device, batch, precision, workers, cache
    on_bad_image: str = "error"  # an undecodable image: "error" or "skip" (failmode.data.sources.BadImages)

    @property
    def model_config(self) -> str:
        """The debug config made from this model's failures."""
        return self.debug.config or config_slug(self.model.id)

    def split_params(self) -> dict[str, Any]:
        """The split, failure and preprocessing parameters recorded in every result's `params`."""
        from failmode.images import resolve_decode
        from failmode.runtime import pick_device

        return {"split_seed": self.data.split_seed, **self.recipe(), "failures": self.debug.failures or "computed",
                "head": head_ident(self.model.head),
                "image_size": self.model.image_size, "crop_pct": self.model.crop_pct,
                "debug_split": self.debug.debug_split, "group_column": self.debug.group_column,
                "common_column": self.debug.common_column,
                "decode": resolve_decode(self.extraction.decode, pick_device(self.extraction.device))}

    def recipe(self) -> dict[str, float]:
        """Per-class counts of the train subset and debug split (the dataset's recipe unless overridden)."""
        return resolve_recipe(self.data.dataset, self.data.train_per_class, self.data.debug_per_class)


def recorded_splits(spec: EvalSpec) -> EvalSpec:
    """`spec` with the split recipe and split names recorded in a local debug dataset's manifest filled in, where
    `spec.data.dataset` is the dataset that debug dataset was mined on and `spec` leaves them unset (the same splits,
    so the same seed and heldout failures)."""
    from failmode.io import read_json

    data = spec.data
    parsed = parse_spec(spec.debug.debug_data, hub_default=True)
    if parsed.kind != "local" or not (parsed.path / MANIFEST_NAME).is_file():  # type: ignore[operator]
        return spec
    path = parsed.path / MANIFEST_NAME  # type: ignore[operator]
    mining = read_json(path).get("mining") or {}
    if mining.get("id") != data.dataset:
        return spec
    recipe = mining.get("recipe") or {}
    fill = {"split": mining.get("split"), "train_split": mining.get("train_split")}
    if data.train_per_class is None and data.debug_per_class is None:
        fill |= {"train_per_class": recipe.get("train_per_class"), "debug_per_class": recipe.get("debug_per_class")}
    fill = {k: v for k, v in fill.items() if v is not None and getattr(data, k) is None}
    if fill:
        log.info("%s: splits as recorded in %s: %s", data.dataset, path, fill)
    return dataclasses.replace(spec, data=dataclasses.replace(data, **fill))


@dataclass
class Labeled:
    """Features [N, D] and labels [N] of one evaluation set."""

    x: np.ndarray
    y: np.ndarray

    def subset(self, mask: np.ndarray) -> Labeled:
        """The rows where `mask` is true."""
        return Labeled(self.x[mask], self.y[mask])


@dataclass
class DebugFeatures:
    """Features of one debug config with labels in the model's classes, contexts and the dataset version."""

    config: str
    data: Labeled
    contexts: list[str] | None
    version: str | None


@dataclass
class ModelFeatures:
    """Everything a head needs for one model: train subset, test split, the seed and heldout halves of its
    failures, its own head."""

    spec: EvalSpec
    class_names: list[str]
    original: LinearHead
    train: Labeled
    test: Labeled
    seed_half: Labeled  # the model's failures of the seed half (accuracy `seed` in results)
    heldout_half: Labeled  # and of the heldout half (`heldout`)
    debug: dict[str, DebugFeatures] = field(default_factory=dict)
    debug_sets: dict[str, DebugSet] = field(default_factory=dict)
    test_groups: np.ndarray | None = None  # group of each test image (spec.group_column)
    test_common: np.ndarray | None = None  # whether each test image is in its class's common group
    extractor: Any = None  # the model's FeatureExtractor (debug configs are extracted on first use)
    bad: BadImages = field(default_factory=BadImages)  # images left out under --on-bad-image skip

    def evals(self) -> dict[str, Labeled]:
        """The evaluation sets by metric name."""
        return {"test": self.test, "seed": self.seed_half, "heldout": self.heldout_half}

    def debug_set(self, config: str) -> DebugFeatures:
        """Features of a debug config (extracted on first use, cached on disk)."""
        if config not in self.debug:
            self.debug[config] = _debug_features(self, config)
        return self.debug[config]


def _given_head(spec: EvalSpec, num_classes: int) -> LinearHead | None:
    """The head file of `spec.model.head` (read and checked before any model loads), else None."""
    given = spec.model.head
    if given is None or given == "train":
        return None
    head = LinearHead.load(given)
    if head.num_classes != num_classes:
        raise ValidationError(f"{given}: the head has {head.num_classes} classes but {spec.data.dataset} has "
                              f"{num_classes}")
    return head


def _halves(rows: Sequence[dict[str, Any]], splits: Splits, where: str) -> dict[str, np.ndarray]:
    """Eval-source indices of the seed and heldout failures in `rows`; all must lie in the debug split."""
    index = {h: np.asarray([r["index"] for r in rows if r["half"] == h], dtype=np.int64) for h in HALVES}
    outside = np.setdiff1d(np.concatenate(list(index.values())), splits.debug)
    if len(outside):
        raise ValidationError(f"{where}: {len(outside)} failure indices are not in the debug split "
                              f"(e.g. {outside[:3].tolist()}); mined on another dataset or split?")
    return index


def _read_halves(spec: EvalSpec, splits: Splits) -> dict[str, np.ndarray] | None:
    """Seed/heldout failures from the mining stage's failures.parquet (--failures), or None to recompute them."""
    failures = spec.debug.failures
    if not failures:
        return None
    rows, meta = read_failures(failures)
    for name, want in (("model", spec.model.id), ("split_seed", spec.data.split_seed)):
        if meta.get(name, want) != want:
            raise ValidationError(f"{failures}: mined with {name} {meta[name]!r}, not {want!r}")
    recorded = Path(failures).parent / "splits.json"
    if recorded.is_file() and splits.train_ids is not None:
        from failmode.io import read_json

        mined = read_json(recorded).get("train_ids")
        if mined is not None and list(mined) != list(splits.train_ids):
            raise ValidationError(f"{recorded}: mining's head was trained on other images than this evaluation takes "
                                  f"({len(mined)} recorded, {len(splits.train_ids)} here): use the dataset, split "
                                  "seed and recipe it was mined with")
    return _halves(rows, splits, failures)


def _predicted_halves(spec: EvalSpec, eval_src: ImageSource, splits: Splits,
                      logits: np.ndarray) -> dict[str, np.ndarray]:
    """Seed/heldout failures recomputed from the model's own logits on the debug split (the mining stage's rule)."""
    preds = Predictions(splits.debug, eval_src.labels[splits.debug], logits.argmax(1))
    return _halves(failures_from_predictions(eval_src, preds, seed=spec.data.split_seed), splits, "predicted failures")


def load_model_features(spec: EvalSpec, configs: Sequence[str] = ()) -> ModelFeatures:
    """Load the model, split the dataset, extract (or read cached) features of train, debug split and test.

    The debug `configs` (class names checked) and a --failures file are read first, before the model is loaded.
    """
    bad = BadImages(spec.on_bad_image)
    data = spec.data
    data = dataclasses.replace(data, split=data.split or parse_spec(data.dataset).default_split("eval"))
    setup = open_classifier(spec.model, data, spec.extraction, need_train=True)
    train_src, eval_src, splits = setup.train, setup.source, setup.splits
    assert train_src is not None and eval_src is not None and splits is not None
    names = eval_src.class_names
    debug = spec.debug
    debug_sets = {c: open_debug_set(debug.debug_data, c, names, revision=debug.revision, split=debug.debug_split)
                  for c in configs}
    halves = _read_halves(spec, splits)
    groups = _column(eval_src, debug.group_column, splits.test)  # columns checked before the model loads
    common = _column(eval_src, debug.common_column, splits.test)
    given = _given_head(spec, len(names))
    extractor = setup.extractor  # the model loads here, its classes checked against the dataset's
    net = setup.net
    native = spec.model.head is None

    def extract(name: str, src: ImageSource, idx: np.ndarray) -> Any:
        return bad.run(src, idx, lambda i: extractor(src, i, desc=f"{name} features", with_logits=native))[0]

    feats = {name: extract(name, src, idx) for name, src, idx in
             (("train", train_src, splits.train), ("debug", eval_src, splits.debug), ("test", eval_src, splits.test))}
    if bad.skipped:  # the images left out are not in any set: groups and failure halves follow what was read
        groups = _column(eval_src, debug.group_column, feats["test"].indices)
        common = _column(eval_src, debug.common_column, feats["test"].indices)
    if native:
        head = LinearHead.from_module(net.get_classifier())
    else:
        head = given or train_dataset_head(feats["train"].features, feats["train"].labels, len(names),
                                           device=spec.extraction.device)
        if head.dim != feats["train"].features.shape[1]:
            raise ValidationError(f"{spec.model.head}: the head takes {head.dim}-d features, {spec.model.id} gives "
                                  f"{feats['train'].features.shape[1]}-d")
    split = feats["debug"]
    logits = split.logits if native else head.logits(split.features)
    read = dataclasses.replace(splits, debug=split.indices) if bad.skipped else splits
    halves = halves if halves is not None else _predicted_halves(spec, eval_src, read, logits)
    pos = {int(i): j for j, i in enumerate(split.indices)}
    halves = {h: np.asarray([i for i in idx if int(i) in pos], dtype=np.int64) for h, idx in halves.items()}
    half = {h: Labeled(split.features[[pos[int(i)] for i in idx]], eval_src.labels[idx]) for h, idx in halves.items()}
    log.info("%s: %d train, %d test, %d seed and %d heldout failures", spec.model.id, len(splits.train),
             len(splits.test), len(half["seed"].y), len(half["heldout"].y))
    return ModelFeatures(spec, names, head,
                         Labeled(feats["train"].features, feats["train"].labels),
                         Labeled(feats["test"].features, feats["test"].labels), half["seed"], half["heldout"],
                         debug_sets=debug_sets, extractor=extractor, test_groups=groups,
                         test_common=None if common is None else common.astype(bool), bad=bad)


def _debug_features(mf: ModelFeatures, config: str) -> DebugFeatures:
    debug = mf.spec.debug
    if config not in mf.debug_sets:
        mf.debug_sets[config] = open_debug_set(debug.debug_data, config, mf.class_names, revision=debug.revision,
                                               split=debug.debug_split)
    ds = mf.debug_sets[config]
    f, idx = mf.bad.run(ds.source, np.arange(len(ds.source)), lambda i: mf.extractor(
        ds.source, i, desc=f"debug features ({config})", with_logits=False))
    contexts = None if ds.contexts is None else [ds.contexts[int(i)] for i in idx]
    return DebugFeatures(config, Labeled(f.features, ds.labels[idx]), contexts, ds.revision)


def _column(source: ImageSource, name: str | None, indices: np.ndarray) -> np.ndarray | None:
    """Values of a metadata column at `indices` (None when no column is asked for)."""
    if name is None:
        return None
    values = source.column(name)
    return np.asarray([values[int(i)] for i in indices])


def evaluate_head(head: LinearHead, mf: ModelFeatures) -> dict[str, Any]:
    """Accuracy of `head` on test, seed failures and heldout failures (None for an empty set); with a group column,
    per-group and worst-group test accuracy, and with a common column, test accuracy on common / uncommon groups."""
    out: dict[str, Any] = {m: clean_metric(accuracy(head, s.x, s.y)) for m, s in mf.evals().items()}
    if mf.test_groups is not None:
        right = head.predict(mf.test.x) == mf.test.y
        groups = {str(g): float(right[mf.test_groups == g].mean()) for g in sorted(set(mf.test_groups.tolist()))}
        out |= {"test_groups": groups, "worst_group": min(groups.values()) if groups else None,
                "worst_group_name": min(groups, key=groups.get) if groups else None}
    if mf.test_common is not None:
        out |= {f"test_{name}": clean_metric(accuracy(head, mf.test.x[m], mf.test.y[m]))
                for name, m in (("common", mf.test_common), ("uncommon", ~mf.test_common))}
    return out


def fit_head(mf: ModelFeatures, params: HeadParams, debug: Labeled | None = None) -> LinearHead:
    """Retrain the head on the train subset (+ lambda * the debug set when given), from the model's own head when
    `params.init` is "model"."""
    return train_head(mf.train.x, mf.train.y, params, debug_x=None if debug is None else debug.x,
                      debug_y=None if debug is None else debug.y, num_classes=len(mf.class_names), init=mf.original,
                      device=mf.spec.extraction.device)


def head_params_json(params: HeadParams, with_debug: bool) -> dict[str, Any]:
    """The recorded head parameters (lambda only where a debug set was used)."""
    d = dataclasses.asdict(params)
    if not with_debug:
        d["lam"] = None
    return d


class Setting(str, Enum):
    """The kinds of run, as results.jsonl names them in `setting`."""

    ORIGINAL = "original"  # the model's own head, untouched
    RETRAIN = "retrain"  # retrained on the train subset only
    DEBUG = "debug"  # retrained with a debug config (the model's, its siblings, the controls)
    LAMBDA_SWEEP = "lambda-sweep"
    K_SWEEP = "k-sweep"
    IMAGES_PER_MODE_SWEEP = "images-per-mode-sweep"
    COLLECTIVE_INDIVIDUAL = "collective-individual"
    COLLECTIVE_TYPE1 = "collective-type1"
    COLLECTIVE_TYPE2 = "collective-type2"


@dataclass(frozen=True)
class Run:
    """One planned run: a setting of one model, the debug config it trains with (None: none), the head's training
    (None: the model's own head, untouched) and the sweep point that subsets the config (`k`: each class's top-k
    failure modes; `images_per_mode`: the first n images of each mode)."""

    spec: EvalSpec
    setting: Setting
    config: str | None = None
    head: HeadParams | None = None
    k: int | None = None
    images_per_mode: int | None = None

    def fields(self) -> dict[str, Any]:
        """The identifying fields of its result (`failmode.evaluate.results.KEY_FIELDS`)."""
        params = {} if self.head is None else head_params_json(self.head, self.config is not None)
        points = {name: v for name, v in (("k", self.k), ("images_per_mode", self.images_per_mode)) if v is not None}
        spec = self.spec
        return {"model": spec.model.id, "weights": spec.model.weights, "dataset": spec.data.dataset,
                "debug_data": spec.debug.debug_data, "revision": spec.debug.revision, "config": self.config,
                "setting": self.setting.value, "params": {**spec.split_params(), **params, **points}}

    @property
    def key(self) -> str:
        """Its result's key in results.jsonl."""
        return result_key(self.fields())


def standard_runs(spec: EvalSpec, params: HeadParams) -> list[Run]:
    """The standard settings: original, retrain, debug (model config, its budget-policy siblings, class-only and
    random-context controls)."""
    runs = [Run(spec, Setting.ORIGINAL), Run(spec, Setting.RETRAIN, head=params)]
    d = spec.debug
    configs = (spec.model_config, *d.policy_configs, d.baseline_config, d.random_config)
    runs += [Run(spec, Setting.DEBUG, config, params) for config in dict.fromkeys(c for c in configs if c)]
    return runs


def _debug_data(mf: ModelFeatures, run: Run) -> tuple[DebugFeatures | None, Labeled | None]:
    """The debug config of `run` and the part of it the run trains with (its sweep point's subset)."""
    if run.config is None:
        return None, None
    debug = mf.debug_set(run.config)
    data = debug.data
    if run.k is not None or run.images_per_mode is not None:
        if debug.contexts is None:
            raise UsageError(f"config {debug.config} has no context column: k and images-per-mode sweeps need the "
                             "parquet folder")
        if run.k is not None:
            data = data.subset(top_k_mask(data.y, debug.contexts, run.k))
        if run.images_per_mode is not None:
            data = data.subset(first_n_mask(data.y, debug.contexts, run.images_per_mode))
    return debug, data


def run_one(mf: ModelFeatures, run: Run) -> tuple[dict[str, Any], LinearHead]:
    """Train (unless the run keeps the model's own head) and evaluate one planned run; returns the full record and
    the head."""
    debug, data = _debug_data(mf, run)
    head = mf.original if run.head is None else fit_head(mf, run.head, data)
    rec = {**run.fields(), **evaluate_head(head, mf), "n_train": len(mf.train.y), "n_test": len(mf.test.y),
           "n_seed": len(mf.seed_half.y), "n_heldout": len(mf.heldout_half.y),
           "n_debug": 0 if data is None else len(data.y),
           "dataset_version": debug.version if debug else None, "model_key": mf.extractor.model_key if mf.extractor else None,
           "bad_images_skipped": len(mf.bad.skipped),
           "failmode_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return rec, head


def per_class_gains(before: LinearHead, after: LinearHead, mf: ModelFeatures) -> dict[str, dict[str, Any]]:
    """Per class: accuracy before/after on test and heldout failures, and how many images each has."""
    out: dict[str, dict[str, Any]] = {}
    for metric in ("test", "heldout"):
        s = mf.evals()[metric]
        if len(s.y) == 0:
            continue
        right_b, right_a = before.predict(s.x) == s.y, after.predict(s.x) == s.y
        for c in np.unique(s.y):
            m = s.y == c
            row = out.setdefault(mf.class_names[c], {})
            row |= {f"{metric}_n": int(m.sum()), f"{metric}_before": float(right_b[m].mean()),
                    f"{metric}_after": float(right_a[m].mean()),
                    f"{metric}_gain": float(right_a[m].mean() - right_b[m].mean())}
    return out


def execute(spec: EvalSpec, runs: list[Run], results: ResultsLog, force: bool = False,
            out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run the planned `runs` of `spec`'s model not already in the log (all of them with `force`, each replacing its
    old line), writing each record as it finishes.

    The model and features are loaded only if some run is pending. Per-class gains of each `debug` run go to
    out_dir/per_class/. Returns the records written.
    """
    done = set() if force else results.done()
    pending = [r for r in runs if r.key not in done]
    model = spec.model.id
    log.info("%s: %d of %d runs to do (%d already in %s)", model, len(pending), len(runs),
             len(runs) - len(pending), results.path)
    written: list[dict[str, Any]] = []
    mf = None
    configs = list(dict.fromkeys(r.config for r in pending if r.config))
    with bar(f"{model} runs", total=len(pending), unit="run") as b:
        for run in pending:
            mf = mf or load_model_features(spec, configs)
            rec, head = run_one(mf, run)
            if out_dir is not None and run.setting is Setting.DEBUG:  # before its results line, which marks it done
                assert run.head is not None
                name = f"{config_slug(model)}__{run.config}__lam{run.head.lam}"
                write_json(out_dir / "per_class" / f"{name}.json", per_class_gains(mf.original, head, mf))
            written += results.append([rec])
            b.update(1)
            log.info("%s %s %s: %s", model, run.setting.value, run.config or "",
                     ", ".join(f"{m} {rec[m] if rec[m] is None else round(100 * rec[m], 2)}" for m in METRICS))
    return written

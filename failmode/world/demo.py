"""`failmode demo`: the whole method on the fashion-scenes world, end to end, through the production stages.

    world -> frozen features + linear head -> mine failures on the debug split (failmode.mining)
          -> attribute seed failures to contexts with the exemplar stand-in (failmode.mining) -> modes.json
          -> plan and render debug images with the composite stand-in, write the dataset (failmode.generation,
             failmode.dataset) -> retrain the head with lambda (failmode.head) -> results.json, report.md

Baselines rendered beside "ours" in the same dataset: `class-only` (the generation stage's class-only prompts; in
this world a plain class photo shows the class on its common scene) and `random-context` (each class's vocabulary
contexts in equal shares, +-1 image), both with as many images per class as `ours`. Every stage's output is cached
under the output folder, so a rerun is fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from failmode.errors import UsageError, ValidationError
from failmode.io import dumps_json, read_json, write_json
from failmode.progress import bar

if TYPE_CHECKING:
    from failmode.evaluate.pipeline import Labeled

log = logging.getLogger(__name__)

VOCABULARY = "fashion-scenes"
CONFIGS = ("ours", "class-only", "random-context")
STAGES = ("world", "features", "head", "mine", "attribute", "generate", "evaluate", "report")


@dataclass(frozen=True)
class DemoConfig:
    """Every parameter of a demo run (defaults: `failmode/world/data/demo.json`)."""

    world: str = "concentrated"
    seed: int = 0
    per_class: dict[str, int] | None = None
    image_size: int | None = None
    k: int = 3
    images_per_mode: int = 20
    images_per_mode_sweep: tuple[int, ...] = (5, 10, 20, 40)
    lam: float = 0.5
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    n_exemplars: int = 48
    head: dict[str, float] = field(default_factory=dict)
    shard_size: int = 1000
    batch_size: int = 64
    grid_examples: int = 4

    @classmethod
    def defaults(cls, **overrides: Any) -> DemoConfig:
        """The shipped defaults with `overrides` (None values are ignored) applied, checked."""
        doc = read_json(Path(str(resources.files("failmode.world") / "data" / "demo.json")))
        doc = {k: v for k, v in doc.items() if k not in ("format", "note")}
        doc.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown demo parameter(s): {', '.join(unknown)}")
        for key in ("images_per_mode_sweep", "lambdas"):
            doc[key] = tuple(doc[key])
        return cls(**doc).check()

    def check(self) -> DemoConfig:
        """Raise UsageError on impossible values; return self."""
        if self.k < 1 or self.images_per_mode < 1 or self.n_exemplars < 1:
            raise UsageError("k, images_per_mode and n_exemplars must be >= 1")
        if self.lam < 0 or any(x < 0 for x in self.lambdas):
            raise UsageError("lambda values must be >= 0")
        if any(n < 1 for n in self.images_per_mode_sweep):
            raise UsageError("images_per_mode_sweep values must be >= 1")
        return self

    @property
    def max_images_per_mode(self) -> int:
        """Images rendered per failure mode: enough for the main run and the sweep."""
        return max(self.images_per_mode, *self.images_per_mode_sweep)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recorded in results.json)."""
        return dataclasses.asdict(self)


@dataclass
class Run:
    """The state a demo run threads through its stages."""

    out: Path
    config: DemoConfig
    world: Any = None
    model: Any = None
    feats: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        """Feature, embedding and head caches of this output folder."""
        return self.out / "cache"

    @property
    def size(self) -> int:
        """The world's image size."""
        return int(self.world.preset.image_size)


@contextmanager
def _stage(run: Run, name: str, progress: Any) -> Iterator[None]:
    log.info("stage %d/%d: %s", STAGES.index(name) + 1, len(STAGES), name)
    t0 = time.perf_counter()
    yield
    run.timings[name] = round(time.perf_counter() - t0, 2)
    progress.set_postfix_str(f"{name} {run.timings[name]:.1f}s")
    progress.update(1)


def run_demo(out: str | Path, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into `out` (results.json, report.md, dataset/, mining/, plots/, cache/); return the results."""
    config = config or DemoConfig.defaults()
    run = Run(Path(out), config)
    run.out.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    t0 = time.perf_counter()
    with bar("demo", total=len(STAGES), unit="stage") as progress:
        with _stage(run, "world", progress):
            _build_world(run)
        with _stage(run, "features", progress):
            _features(run)
        with _stage(run, "head", progress):
            run.heads["before"] = _fit(run, "before", None, 0.0)
        with _stage(run, "mine", progress):
            rows, meta = _mine(run)
        with _stage(run, "attribute", progress):
            modes_path, records = _attribute(run, rows, meta)
        with _stage(run, "generate", progress):
            _generate(run, read_json(modes_path))
        with _stage(run, "evaluate", progress):
            evaluation = _evaluate(run, rows)
        with _stage(run, "report", progress):
            results = _results(run, rows, records, read_json(modes_path), evaluation)
            results["timings_s"] = {**run.timings, "total": round(time.perf_counter() - t0, 2)}
            results["machine"] = {**machine, "loadavg_end": _loadavg()}
            results = json.loads(dumps_json(results))  # plain JSON types: what results.json holds
            from failmode.world.report import write_report

            write_report(run.out, results, run.world, run.info["debug_source"], records, run.info["debug_sets"])
            write_json(run.out / "results.json", results)
    log.info("demo done in %.1f s: %s", time.perf_counter() - t0, run.out / "report.md")
    return results


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _machine() -> dict[str, Any]:
    """CPU count, torch threads and load average at the start (timings on a shared machine are noisy)."""
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_start": _loadavg()}


# --- stages -------------------------------------------------------------------------------------------------


def _build_world(run: Run) -> None:
    from failmode.world import build_world
    from failmode.world.backbone import load_backbone

    c = run.config
    run.world = build_world(c.world, c.seed, per_class=c.per_class, image_size=c.image_size)
    run.model = load_backbone()


def _features(run: Run) -> None:
    from failmode.world.backbone import encode

    for split in ("train", "debug", "test"):
        src = run.world.splits[split]
        run.feats[split] = encode(run.model, src, run.size, cache_dir=run.cache / "features",
                                  desc=f"{split} features", batch_size=run.config.batch_size)


def _hash_arrays(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:24]


def _fit(run: Run, name: str, debug: Labeled | None, lam: float) -> Any:
    """The head trained on train (+ lam * debug), from the cache when the same inputs were seen before."""
    from failmode.head import LinearHead, train_head

    hp = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 300, "retrain_epochs": 100, **run.config.head}
    train = run.feats["train"]
    init = run.heads.get("before")
    epochs = int(hp["epochs"] if init is None else hp["retrain_epochs"])
    key = _hash_arrays(train.features, train.labels, None if debug is None else debug.x,
                       None if debug is None else debug.y, np.asarray([lam, epochs, hp["lr"], hp["momentum"],
                                                                        hp["weight_decay"], run.config.seed]),
                       None if init is None else init.weight.numpy())
    path = run.cache / "heads" / f"{key}.safetensors"
    if path.exists():
        return LinearHead.load(path)
    head = train_head(train.features, train.labels, debug_x=None if debug is None else debug.x,
                      debug_y=None if debug is None else debug.y, lam=lam, lr=hp["lr"], momentum=hp["momentum"],
                      weight_decay=hp["weight_decay"], epochs=epochs, num_classes=len(run.world.class_names),
                      init=init, device="cpu", seed=run.config.seed)
    head.save(path, {"name": name, "lam": lam, "epochs": epochs})
    return head


def _mine(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from failmode.mining import failures_from_predictions, predict, write_failures
    from failmode.world.backbone import MODEL_KEY, WEIGHTS, backbone_transform

    src = run.world.splits["debug"]
    preds = predict(run.model, src, np.arange(len(src)), model_key=MODEL_KEY, head=run.heads["before"],
                    transform=backbone_transform(run.model, run.size), device="cpu", precision="fp32",
                    batch_size=run.config.batch_size, cache_dir=run.cache / "features")
    rows = failures_from_predictions(src, preds, seed=run.config.seed)
    meta = {"model": f"{MODEL_KEY}+head", "weights": WEIGHTS, "model_key": MODEL_KEY, "dataset": _dataset_name(run),
            "split": "debug", "source": src.ident, "class_names": src.class_names, "split_seed": run.config.seed,
            "head": f"linear head trained on {len(run.world.splits['train'])} train images (failmode.head)",
            "n_debug": len(src), "accuracy": preds.accuracy, "image_size": run.size}
    write_failures(run.out / "mining", rows, meta)
    run.info["debug_source"] = src
    return rows, meta


def _dataset_name(run: Run) -> str:
    return f"world:fashion-scenes/{run.world.preset.name}@seed{run.world.seed}"


def _attribute(run: Run, rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    from failmode.mining import attribute, write_attribution
    from failmode.vocab import load_vocabulary
    from failmode.world.backends import ExemplarAttributor

    vocab = load_vocabulary(VOCABULARY, "background")
    center = run.feats["train"].features.mean(axis=0).astype(np.float32)
    attributor = ExemplarAttributor(run.world, model=run.model, center=center, n_exemplars=run.config.n_exemplars,
                                    cache_dir=run.cache / "features")
    result = attribute(rows, run.world.splits["debug"], vocab, attributor, k=run.config.k, cache_dir=run.cache,
                       vocabulary_name=VOCABULARY)
    run.info.update(vocabulary=vocab, attributor=attributor.ident)
    return write_attribution(run.out / "mining", result, meta, rows, vocab), result.records


def _generate(run: Run, modes: dict[str, Any]) -> None:
    from failmode.generation import DatasetInfo, finalize_if_complete, generate_dataset, make_manifest
    from failmode.world.backends import CompositeGenerator

    generator = CompositeGenerator(run.world)
    settings, rows = _plan(run, modes, generator.ident)
    root = run.out / "dataset"
    generate_dataset(rows, root, generator, class_names=run.world.class_names, batch_size=run.config.batch_size,
                     encode_workers=2)
    vocab = run.info["vocabulary"]
    info = DatasetInfo(
        name="fashion-scenes-debug", version="1.0.0", class_names=run.world.class_names,
        pretty_name="fashion-scenes debug images (failmode demo)", source_dataset=_dataset_name(run),
        description=("Debug images of the failmode demo on the offline fashion-scenes world, rendered by the "
                     "composite stand-in for Stable Diffusion: config `ours` from the mined failure modes, "
                     "`class-only` and `random-context` baselines."),
        vocabulary={"dataset": vocab.dataset, "kind": vocab.kind, "version": vocab.version},
        attribution={"attributor": run.info["attributor"], "k": run.config.k}, tags=["failmode-demo", "stand-in"])
    manifest = make_manifest(rows, root, info, settings, generator_ident=generator.ident,
                             render={"renderer": "composite stand-in (no diffusion)"},
                             kinds={"ours": "model", "class-only": "baseline", "random-context": "baseline"})
    if not finalize_if_complete(rows, root, manifest):
        raise ValidationError(f"{root}: not every shard was written")
    run.info["generation"] = {"settings": settings.to_dict(), "generator": generator.ident, "n_planned": len(rows)}


def _plan(run: Run, modes: dict[str, Any], generator_id: str) -> tuple[Any, list[Any]]:
    """(settings, plan rows) of the three configs: ours (max images per mode), and class-only and random-context
    with, per class, as many images as ours has at the main images-per-mode."""
    from failmode.generation import GenerationSettings, ModeSet, baseline_modes, build_plan, modes_from_json
    from failmode.generation.plan import ClassModes

    c, names, vocab = run.config, run.world.class_names, run.info["vocabulary"]
    settings = GenerationSettings(generator="composite", scheduler="none", steps=1, guidance=0.0, size=run.size,
                                  images_per_mode=c.max_images_per_mode, k=c.k, base_seed=c.seed,
                                  shard_size=c.shard_size).check("demo generation settings")
    ours = modes_from_json(modes, config="ours", k=c.k, source_model=f"{modes.get('source_model')}")
    counts = {cm.label: len(cm.contexts) * c.images_per_mode for cm in ours.classes}
    rows = build_plan([ours], settings, generator_id=generator_id)
    class_only = build_plan([baseline_modes(names, config="class-only")], settings, generator_id=generator_id,
                            baseline_images_per_class=max(counts.values(), default=1))
    n_ctx = len(vocab.contexts(0))
    random_ctx = ModeSet("random-context", "baseline", "baseline", "background",
                         tuple(ClassModes(i, n, n, tuple(vocab.contexts(i))) for i, n in enumerate(names)))
    share = math.ceil(max(counts.values(), default=1) / n_ctx)
    random_rows = build_plan([random_ctx], dataclasses.replace(settings, k=n_ctx, images_per_mode=share),
                             generator_id=generator_id)
    rows += match_counts(class_only, counts, c.seed, c.shard_size)
    rows += match_counts(random_rows, counts, c.seed, c.shard_size)
    return settings, rows


def match_counts(rows: Sequence[Any], counts: dict[int, int], seed: int, shard_size: int) -> list[Any]:
    """Keep, per label, a seeded random subset of `counts[label]` rows of one config's plan (plan order kept), and
    renumber shards and positions. Seeds stay the derived ones; labels absent from `counts` are dropped."""
    rng = np.random.default_rng([seed, 7])
    keep: list[Any] = []
    for label in sorted(counts):
        mine = [r for r in rows if r.label == label]
        if counts[label] > len(mine):
            raise ValidationError(f"plan has {len(mine)} rows for label {label}, {counts[label]} needed")
        chosen = set(rng.choice(len(mine), counts[label], replace=False).tolist())
        keep += [r for j, r in enumerate(mine) if j in chosen]
    n_shards = max(1, math.ceil(len(keep) / shard_size))
    return [dataclasses.replace(r, shard_index=i // shard_size, num_shards=n_shards, position=i % shard_size)
            for i, r in enumerate(keep)]


# --- evaluation ---------------------------------------------------------------------------------------------


def _debug_sets(run: Run) -> dict[str, Any]:
    from failmode.evaluate.data import open_debug_set
    from failmode.evaluate.pipeline import Labeled
    from failmode.world.backbone import encode

    out = {}
    for config in CONFIGS:
        ds = open_debug_set(str(run.out / "dataset"), config, run.world.class_names)
        feats = encode(run.model, ds.source, run.size, cache_dir=run.cache / "features", desc=f"{config} features",
                       batch_size=run.config.batch_size)
        out[config] = {"set": ds, "data": Labeled(feats.features, ds.labels), "replica": _replicas(ds)}
    run.info["debug_sets"] = out
    return out


def _replicas(ds: Any) -> np.ndarray:
    """Replica number of each image within its (class, context): the writer keeps plan order."""
    seen: dict[tuple[int, str], int] = {}
    out = np.empty(len(ds.labels), dtype=np.int64)
    for i, (y, ctx) in enumerate(zip(ds.labels, ds.contexts or [""] * len(ds.labels))):
        out[i] = seen.get((int(y), ctx), 0)
        seen[(int(y), ctx)] = out[i] + 1
    return out


def _eval_sets(run: Run, rows: Sequence[dict[str, Any]]) -> dict[str, Labeled]:
    from failmode.evaluate.pipeline import Labeled

    debug, test = run.feats["debug"], run.feats["test"]
    test_src = run.world.splits["test"]
    sets = {"test": Labeled(test.features, test.labels),
            "test_common": Labeled(test.features, test.labels).subset(~test_src.is_uncommon()),
            "test_uncommon": Labeled(test.features, test.labels).subset(test_src.is_uncommon())}
    for half in ("seed", "heldout"):
        idx = np.asarray([r["index"] for r in rows if r["half"] == half], dtype=np.int64)
        sets[half] = Labeled(debug.features, debug.labels).subset(idx)
    return sets


def _scores(head: Any, sets: dict[str, Labeled]) -> dict[str, float | None]:
    from failmode.head import accuracy

    return {f"{name}_acc": (None if len(s.y) == 0 else round(accuracy(head, s.x, s.y), 4)) for name, s in sets.items()}


def _evaluate(run: Run, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    c = run.config
    sets = _eval_sets(run, rows)
    debug = _debug_sets(run)
    main = {"before": {**_scores(run.heads["before"], sets), "n_images": 0}}
    for config in CONFIGS:
        data = debug[config]["data"]
        if config == "ours":
            data = data.subset(debug[config]["replica"] < c.images_per_mode)
        main[config] = {**_scores(_fit(run, config, data, c.lam), sets), "n_images": int(len(data.y))}
    ours = debug["ours"]
    main_data = ours["data"].subset(ours["replica"] < c.images_per_mode)
    lam_sweep = [{"lam": lam, **_scores(_fit(run, f"ours-lam{lam}", main_data, lam), sets)} for lam in c.lambdas]
    n_sweep = []
    for n in sorted(set(c.images_per_mode_sweep)):
        data = ours["data"].subset(ours["replica"] < n)
        scores = _scores(_fit(run, f"ours-n{n}", data, c.lam), sets)
        n_sweep.append({"images_per_mode": n, "n_images": int(len(data.y)), **scores})
    return {"main": main, "lambda_sweep": lam_sweep, "images_per_mode_sweep": n_sweep,
            "n_eval": {k: int(len(v.y)) for k, v in sets.items()}}


# --- results ------------------------------------------------------------------------------------------------


def attribution_top1(records: Sequence[dict[str, Any]], world: Any) -> tuple[float | None, int]:
    """(accuracy, count) of attributed vs true context on seed failures whose true context is uncommon for their
    class (None when there are none)."""
    src = world.splits["debug"]
    truth, uncommon = src.contexts(), src.is_uncommon()
    hits = [r["context"] == truth[r["index"]] for r in records if r["half"] == "seed" and uncommon[r["index"]]]
    return (round(float(np.mean(hits)), 4) if hits else None), len(hits)


def _results(run: Run, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], modes: dict[str, Any],
             ev: dict[str, Any]) -> dict[str, Any]:
    from failmode.world.backbone import MODEL_KEY

    main, world = ev["main"], run.world
    top1, n_top1 = attribution_top1(records, world)
    per_class = []
    for cls in modes.get("classes", []):
        y = int(cls["label"])
        per_class.append({"label": y, "class_name": cls["class_name"], "n_seed_failures": cls["n_seed_failures"],
                          "modes": cls["modes"], "common_context": world.common_context(y),
                          "true_uncommon_contexts": [world.scenes[s].context for s in world.uncommon_scenes[y]]})
    return {
        "world": world.preset.name, "seed": run.config.seed,
        "test_acc_before": main["before"]["test_acc"], "test_acc_after": main["ours"]["test_acc"],
        "test_common_acc_before": main["before"]["test_common_acc"],
        "test_common_acc_after": main["ours"]["test_common_acc"],
        "heldout_acc_before": main["before"]["heldout_acc"], "heldout_acc_ours": main["ours"]["heldout_acc"],
        "heldout_acc_class_only": main["class-only"]["heldout_acc"],
        "heldout_acc_random_context": main["random-context"]["heldout_acc"],
        "seed_acc_ours": main["ours"]["seed_acc"],
        "attribution_top1": top1, "n_attribution_top1": n_top1,
        "n_failures_seed": sum(r["half"] == "seed" for r in rows),
        "n_failures_heldout": sum(r["half"] == "heldout" for r in rows),
        "methods": main, "lambda_sweep": ev["lambda_sweep"], "images_per_mode_sweep": ev["images_per_mode_sweep"],
        "n_eval": ev["n_eval"], "per_class_modes": per_class,
        "parameters": {"demo": run.config.to_dict(), "world_preset": world.preset.to_dict(),
                       "world_key": world.key, "scenes": [s.__dict__ for s in world.scenes],
                       "backbone": MODEL_KEY, "attributor": run.info["attributor"],
                       "generation": run.info["generation"],
                       "vocabulary": VOCABULARY},
        "stand_ins": {"generator": run.info["generation"]["generator"], "attributor": run.info["attributor"]},
    }

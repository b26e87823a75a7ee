"""`failmode demo`: the chain a user runs, on the offline fashion-scenes world.

    build the world -> export it as a local dataset (failmode.world.export)
        -> `failmode build fashion-scenes-debug` on it (failmode.generation.build: mine, attribute with the exemplar
           stand-in, render with the composite stand-in, the class-only and random-context controls, card)
        -> `failmode evaluate` (failmode.evaluate.suite: original, retrain, each config, lambda and images-per-mode
           sweeps, per-context group accuracy)
        -> results.json and report.md, made from evaluate's results lines and the build's outputs

This module only orchestrates and writes the world-specific report: the numbers are those of the library
functions the commands call, and the equivalent commands are logged (and written to commands.sh) so a user can
paste them and get the same numbers. Every stage's outputs are kept under the output folder, so a rerun is fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from failmode.errors import UsageError, ValidationError
from failmode.io import dumps_json, read_json, write_bytes_atomic, write_json
from failmode.progress import bar

log = logging.getLogger(__name__)

PRESET = "fashion-scenes-debug"
STAGES = ("world", "build", "evaluate", "report")
#: the demo's names of the configs evaluate compares, by their setting and config in the results lines ("ours": the
#: model's top-k config, the paper's rule; "evidence-weighted": its budget-policy sibling)
METHODS = ("before", "ours", "evidence-weighted", "class-only", "random-context")
#: the demo's name of each budget policy's config
POLICY_METHODS = {"top-k": "ours", "evidence-weighted": "evidence-weighted"}
#: the attributors the demo can use and their options besides `n_exemplars` (a world preset names its default)
ATTRIBUTOR_OPTIONS: dict[str, dict[str, Any]] = {"exemplar": {"center": "train"}, "pixels": {}}


@dataclass(frozen=True)
class DemoConfig:
    """Every parameter of a demo run (defaults: `failmode/world/data/demo.json`)."""

    world: str = "concentrated"
    seed: int = 0
    per_class: dict[str, int] | None = None
    image_size: int | None = None
    k: int = 3
    images_per_mode: int = 20
    images_per_mode_sweep: tuple[int, ...] = (5, 10, 20)
    lam: float = 0.5
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    n_exemplars: int = 48
    epochs: int = 100
    grid_examples: int = 4
    attributor: str | None = None  # None: the world preset's
    gap_probe_per_class: int = 80
    budget: tuple[str, ...] = ("top-k", "evidence-weighted")  # the model configs' budget policies (top-k first)

    @classmethod
    def defaults(cls, **overrides: Any) -> DemoConfig:
        """The shipped defaults with `overrides` (None values are ignored) applied, typed and checked
        (`typed.from_mapping`: unknown keys and wrong types are one line)."""
        from failmode.typed import from_mapping

        doc = read_json(Path(str(resources.files("failmode.world") / "data" / "demo.json")))
        doc = {k: v for k, v in doc.items() if k not in ("format", "note")}
        doc.update({k: v for k, v in overrides.items() if v is not None})
        try:
            config = from_mapping(cls, doc, "demo parameters")
        except ValidationError as e:
            raise UsageError(str(e)) from None
        return config.check()

    def check(self) -> DemoConfig:
        """Raise UsageError on impossible values; return self."""
        if self.k < 1 or self.images_per_mode < 1 or self.n_exemplars < 1 or self.epochs < 1:
            raise UsageError("k, images_per_mode, n_exemplars and epochs must be >= 1")
        if self.lam < 0 or any(x < 0 for x in self.lambdas):
            raise UsageError("lambda values must be >= 0")
        if any(not 1 <= n <= self.images_per_mode for n in self.images_per_mode_sweep):
            raise UsageError(f"images_per_mode_sweep values must lie in [1, images_per_mode = {self.images_per_mode}]")
        if self.attributor is not None and self.attributor not in ATTRIBUTOR_OPTIONS:
            raise UsageError(f"unknown demo attributor {self.attributor!r} (known: {', '.join(ATTRIBUTOR_OPTIONS)})")
        if self.gap_probe_per_class < 2:
            raise UsageError("gap_probe_per_class must be >= 2")
        if not self.budget or self.budget[0] != "top-k" or len(set(self.budget)) != len(self.budget) \
                or not set(self.budget) <= set(POLICY_METHODS):
            raise UsageError(f"demo budget must start with top-k (the paper's rule, compared against), then other "
                             f"policies of {', '.join(POLICY_METHODS)}; got {', '.join(self.budget) or 'none'}")
        from failmode.world.world import load_preset

        load_preset(self.world)  # a shipped name or a world JSON path, validated before anything runs
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recorded in results.json)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Paths:
    """The folders of one demo run under `out`, each a subfolder of its name: `world` (the exported world, a local
    dataset folder), `dataset` (the debug dataset `failmode build` writes), `work` (mining and attribution outputs,
    `failmode build --work`), `cache` (feature and embedding caches, `--cache-dir`) and `evaluate` (`failmode
    evaluate --out`: results.jsonl, tables.md, sweeps)."""

    out: Path
    world: Path = field(init=False)
    dataset: Path = field(init=False)
    work: Path = field(init=False)
    cache: Path = field(init=False)
    evaluate: Path = field(init=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not f.init:
                object.__setattr__(self, f.name, self.out / f.name)


@contextmanager
def _stage(timings: dict[str, float], name: str, progress: Any) -> Iterator[None]:
    log.info("stage %d/%d: %s", STAGES.index(name) + 1, len(STAGES), name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)
    progress.set_postfix_str(f"{name} {timings[name]:.1f}s")
    progress.update(1)


def demo_preset(config: DemoConfig, world: Any, paths: Paths) -> dict[str, Any]:
    """The shipped fashion-scenes-debug preset pointed at the exported world, with the demo's parameters, as the
    JSON document written to OUT/preset.json (what `failmode build` is run on)."""
    from failmode.generation.presets import PRESET_FORMAT, load_preset

    p, c = world.preset, config
    attributor = c.attributor or p.attributor
    preset = load_preset(PRESET)
    preset = preset.replace(
        dataset={"id": str(paths.world), "train_per_class": p.per_class["train"],
                 "debug_per_class": p.per_class["debug"], "split_seed": c.seed},
        generation={"images_per_mode": c.images_per_mode, "k": c.k, "base_seed": c.seed, "size": p.image_size,
                    "budget": list(c.budget)},
        baseline={"images_per_class": c.k * c.images_per_mode},
        attribution={"attributor": attributor,
                     "options": {**ATTRIBUTOR_OPTIONS[attributor], "n_exemplars": c.n_exemplars}})
    doc = {"format": PRESET_FORMAT, **{k: v for k, v in preset.record().items() if k != "source"}}
    doc["render"] = {k: v for k, v in doc["render"].items() if k not in ("device", "scheduler")}
    doc["models"] = [{**m, "image_size": p.image_size} for m in doc["models"]]
    return doc


def commands(paths: Paths, preset_path: Path, spec: Any, config: DemoConfig) -> list[list[str]]:
    """The `failmode build` and `failmode evaluate` command lines that give the demo's numbers."""
    build = ["failmode", "build", str(preset_path), "--out", str(paths.dataset), "--work", str(paths.work),
             "--cache-dir", str(paths.cache), "--device", "cpu"]
    m = spec.model
    evaluate = ["failmode", "evaluate", "--model", m.id, "--weights", str(m.weights), "--head", "train",
                "--image-size", str(m.image_size), "--crop-pct", str(m.crop_pct), "--dataset", spec.data.dataset,
                "--debug-data", spec.debug.debug_data, "--out", str(paths.evaluate), "--cache-dir", str(paths.cache),
                "--group-column", "context", "--common-column", "common", "--split-seed", str(config.seed),
                "--epochs", str(config.epochs), "--lam", str(config.lam),
                "--lambda-sweep", ",".join(map(str, config.lambdas)),
                "--images-per-mode-sweep", ",".join(map(str, config.images_per_mode_sweep)), "--device", "cpu"]
    return [build, evaluate]


def run_demo(out: str | Path, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into `out` (world/, dataset/, work/, evaluate/, results.json, report.md, plots/); return the
    results."""
    from failmode.evaluate.pipeline import DebugSpec, EvalSpec, recorded_splits
    from failmode.evaluate.suite import recorded_policy_configs, run_suite
    from failmode.generation.build import build
    from failmode.generation.presets import load_preset
    from failmode.generation.run import RunOptions
    from failmode.head import HeadParams
    from failmode.options import FeatureOptions, SplitSpec
    from failmode.world import build_world
    from failmode.world.export import export_world

    config = config or DemoConfig.defaults()
    paths = Paths(Path(out))
    paths.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    machine = _machine()
    t0 = time.perf_counter()
    c = config
    with bar("demo", total=len(STAGES), unit="stage") as progress:
        with _stage(timings, "world", progress):
            world = build_world(c.world, c.seed, per_class=c.per_class, image_size=c.image_size)
            export_world(world, paths.world)
            preset_path = paths.out / "preset.json"
            write_json(preset_path, demo_preset(c, world, paths))
            preset = load_preset(preset_path)
            spec = EvalSpec(dataclasses.replace(preset.models[0], head="train"),
                            SplitSpec(str(paths.world), split_seed=c.seed),
                            DebugSpec(str(paths.dataset), group_column="context", common_column="common"),
                            FeatureOptions(device="cpu", cache_dir=str(paths.cache)))
            lines = [shlex.join(cmd) for cmd in commands(paths, preset_path, spec, c)]
            write_bytes_atomic(paths.out / "commands.sh", ("\n".join(lines) + "\n").encode())
            log.info("the same numbers, as commands (after this world export):\n  %s", "\n  ".join(lines))
        with _stage(timings, "build", progress):
            build(preset, paths.dataset, work=paths.work, cache_dir=paths.cache, options=RunOptions(device="cpu"))
        with _stage(timings, "evaluate", progress):
            # the recipe, splits and budget-policy siblings the build recorded, as the command does
            spec = recorded_policy_configs(recorded_splits(spec))
            params = HeadParams(lam=c.lam, epochs=c.epochs)
            run_suite([spec], params, paths.evaluate, lambdas=c.lambdas, images_per_mode=c.images_per_mode_sweep)
        with _stage(timings, "report", progress):
            from failmode.world.gap import measure_gap

            gap = measure_gap(world, per_class=c.gap_probe_per_class, cache_dir=paths.cache / "features")
            results = collect_results(paths, c, world, spec, params, preset)
            results["gap_probe_acc"] = gap.gap_probe_acc
            results["gap_probe"] = gap.record()
            results["commands"] = lines
            results["timings_s"] = {**timings, "total": round(time.perf_counter() - t0, 2)}
            results["machine"] = {**machine, "loadavg_end": _loadavg()}
            results = json.loads(dumps_json(results))  # plain JSON types: what results.json holds
            from failmode.world.report import write_report

            write_report(paths.out, results, world, paths)
            write_json(paths.out / "results.json", results)
    log.info("demo done in %.1f s: %s", time.perf_counter() - t0, paths.out / "report.md")
    return results


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _machine() -> dict[str, Any]:
    """CPU count, torch threads and load average at the start (timings on a shared machine are noisy)."""
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_start": _loadavg()}


# --- results from evaluate's lines and the build's outputs ----------------------------------------------------


def _scores(record: dict[str, Any]) -> dict[str, Any]:
    """One results line's accuracies under the demo's names."""
    return {"test_acc": record.get("test"), "test_common_acc": record.get("test_common"),
            "test_uncommon_acc": record.get("test_uncommon"), "worst_group_acc": record.get("worst_group"),
            "seed_acc": record.get("seed"), "heldout_acc": record.get("heldout")}


def method_records(records: Sequence[dict[str, Any]], spec: Any, params: Any) -> dict[str, dict[str, Any]]:
    """The results lines of the demo's methods: the original head and the model, class-only and random-context
    configs at the demo's lambda."""
    from failmode.evaluate.pipeline import standard_runs
    from failmode.evaluate.sweeps import select
    from failmode.generation.plan import EVIDENCE_WEIGHTED

    runs = {(r.setting.value, r.config): r for r in standard_runs(spec, params)}
    wanted = {"before": ("original", None), "ours": ("debug", spec.model_config),
              "evidence-weighted": ("debug", f"{spec.model_config}-{EVIDENCE_WEIGHTED}"),
              "class-only": ("debug", spec.debug.baseline_config), "random-context": ("debug", spec.debug.random_config)}
    wanted = {name: key for name, key in wanted.items() if key in runs}
    out = {}
    for name, key in wanted.items():
        found = select(records, [runs[key]])
        if not found:
            raise UsageError(f"no results line for {name} ({key}) in the evaluation")
        out[name] = found[0]
    return out


def attribution_top1(records: Sequence[dict[str, Any]], truth: Sequence[str],
                     common: Sequence[bool]) -> tuple[float | None, int]:
    """(accuracy, count) of attributed vs true context on seed failures whose true context is uncommon for their
    class (None when there are none); `truth` and `common` are the evaluation split's columns."""
    hits = [r["context"] == truth[r["index"]] for r in records if r["half"] == "seed" and not common[r["index"]]]
    return (round(float(np.mean(hits)), 4) if hits else None), len(hits)


def _budget(manifest: dict[str, Any]) -> dict[str, Any]:
    """The budget policies and, per model config, each class's images per context, as the manifest records them."""
    return (manifest.get("attribution") or {}).get("budget") or {}


def collect_results(paths: Paths, config: DemoConfig, world: Any, spec: Any, params: Any,
                    preset: Any) -> dict[str, Any]:
    """results.json: the numbers of evaluate's results lines and of the build's mining and attribution outputs."""
    from failmode.data.sources import open_source
    from failmode.dataset import config_slug
    from failmode.evaluate.results import ResultsLog
    from failmode.evaluate.sweeps import images_per_mode_runs, lambda_runs, select
    from failmode.mining.failures import read_failures
    from failmode.mining.tables import read_table

    records = ResultsLog(paths.evaluate / "results.jsonl").read()
    methods = method_records(records, spec, params)
    main = {name: {**_scores(r), "n_images": int(r["n_debug"])} for name, r in methods.items()}
    lam_sweep = [{"lam": r["params"]["lam"], **_scores(r)} for r in select(records, lambda_runs(spec, params, config.lambdas))]
    n_sweep = [{"images_per_mode": r["params"]["images_per_mode"], "n_images": r["n_debug"], **_scores(r)}
               for r in select(records, images_per_mode_runs(spec, params, config.images_per_mode_sweep))]
    folder = paths.work / "models" / config_slug(spec.model.id)
    _, meta = read_failures(folder / "failures.parquet")
    attributions, _ = read_table(folder / "attributions.parquet")
    modes = read_json(folder / "modes.json")
    evaluation = open_source(spec.data.dataset, spec.data.split)
    top1, n_top1 = attribution_top1(attributions, evaluation.column("context"), evaluation.column("common"))
    per_class = [{"label": int(cls["label"]), "class_name": cls["class_name"], "n_seed_failures": cls["n_seed_failures"],
                  "modes": cls["modes"], "common_context": world.common_context(int(cls["label"])),
                  "true_uncommon_contexts": [world.scenes[s].context for s in world.uncommon_scenes[int(cls["label"])]]}
                 for cls in modes.get("classes", [])]
    before, ours = main["before"], main["ours"]
    manifest = read_json(paths.dataset / "failmode.json")
    return {
        "world": world.preset.name, "seed": config.seed,
        "test_acc_before": before["test_acc"], "test_acc_after": ours["test_acc"],
        "test_common_acc_before": before["test_common_acc"], "test_common_acc_after": ours["test_common_acc"],
        "worst_group_acc_before": before["worst_group_acc"], "worst_group_acc_after": ours["worst_group_acc"],
        "heldout_acc_before": before["heldout_acc"], "heldout_acc_ours": ours["heldout_acc"],
        "heldout_acc_class_only": main["class-only"]["heldout_acc"],
        "heldout_acc_random_context": main["random-context"]["heldout_acc"],
        "heldout_acc_evidence_weighted": main.get("evidence-weighted", {}).get("heldout_acc"),
        "budget": _budget(manifest),
        "seed_acc_ours": ours["seed_acc"],
        "attribution_top1": top1, "n_attribution_top1": n_top1,
        "n_failures_seed": meta["n_seed"], "n_failures_heldout": meta["n_heldout"],
        "methods": main, "lambda_sweep": lam_sweep, "images_per_mode_sweep": n_sweep,
        "n_eval": {"test": methods["before"]["n_test"], "seed": methods["before"]["n_seed"],
                   "heldout": methods["before"]["n_heldout"]},
        "per_class_modes": per_class,
        "configs": {name: r["config"] for name, r in methods.items()},
        "results_keys": {name: r["key"] for name, r in methods.items()},
        "parameters": {"demo": config.to_dict(), "world_preset": world.preset.to_dict(), "world_key": world.key,
                       "scenes": [s.__dict__ for s in world.scenes], "preset": preset.record(),
                       "head": {**dataclasses.asdict(params), "before": meta["head"]},
                       "backbone": f"{spec.model.id}@{spec.model.weights}", "attributor": modes.get("attributor"),
                       "generation": manifest["generation"], "vocabulary": preset.vocabulary.dataset},
        "attributor": preset.attribution.attributor,
        "stand_ins": {"generator": manifest["generator"]["ident"], "attributor": modes.get("attributor")},
    }

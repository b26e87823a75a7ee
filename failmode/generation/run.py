"""The generation stage as one call, `generate_dataset`: plan rows -> plan.parquet -> this task's rendered shards
-> (when every shard is written) manifest and card. Every failmode dataset is written through it: `failmode build`,
`failmode generate`, the debug configs of `slices` and `discover`, the demo and the test helpers."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.backends import ImageGenerator
from failmode.dataset import ConfigSpec, Manifest, finalize, layout
from failmode.dataset.finalize import derived_files_current, resume
from failmode.errors import FailmodeError, UsageError, ValidationError
from failmode.generation.coordinate import LOCK_NAME, STAGES, Coordinator, finalize_lock
from failmode.generation.environment import clip_revision, hub_revision
from failmode.generation.plan import (
    EVIDENCE_WEIGHTED,
    SEED_RULE,
    TOP_K,
    GenerationSettings,
    PlanRow,
    plan_path,
    read_plan,
    write_plan,
)
from failmode.generation.presets import QualitySection
from failmode.generation.quality import QualityScorer
from failmode.generation.shards import WRITES, ShardRun, gen_stats_path, shard_current, shard_jobs
from failmode.io import read_json, sha256_file, stable_hash
from failmode.options import DEFAULT_WAIT_TIMEOUT_S
from failmode.typed import to_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How this process takes part in writing a dataset folder (`failmode build`, `failmode generate`): its device,
    the write policy, its task of the job (`failmode.generation.shards.task_slot`), the build stage it runs, how
    long it waits for prepare, and its PNG encoding threads."""

    device: str | None = None
    #: WRITES: incremental (keep this build's shards, render the missing ones) or overwrite (a new build)
    write: str = "incremental"
    task: tuple[int, int] = (0, 1)  # (this task, tasks)
    stage: str = "all"  # failmode.options.BUILD_STAGES
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    encode_workers: int | None = None  # default: the CPU count minus 2, 2..8

    def __post_init__(self) -> None:
        if self.write not in WRITES:
            raise UsageError(f"unknown write policy {self.write!r} (known: {', '.join(WRITES)})")
        if self.stage not in STAGES:
            raise UsageError(f"unknown stage {self.stage!r} (known: {', '.join(STAGES)})")


def save_plan(rows: Sequence[PlanRow], root: str | os.PathLike[str], write: str = "incremental") -> str:
    """Write `generation/plan.parquet` (before any rendering); an existing different plan is an error unless
    `write` is "overwrite". Returns the plan's sha256."""
    path = plan_path(root)
    if path.exists() and write != "overwrite":
        if read_plan(path) != list(rows):
            raise ValidationError(f"{path} holds a different plan (settings or modes changed); rerun with "
                                  "--write overwrite or use another output folder")
        return sha256_file(path)
    if write == "overwrite":
        clear_stale(rows, root)
    return write_plan(rows, path)


def clear_stale(rows: Sequence[PlanRow], root: str | os.PathLike[str]) -> list[str]:
    """Before an overwrite: remove the old manifest, card and grids (the folder is no longer a finalized dataset
    until the new plan is finalized) and every shard file of a config, split or shard count the new plan does not
    have, so old and new shards never mix. Idempotent (tasks of one job may all call it). Returns what went."""
    root = Path(root)
    planned = {(j.config, layout.shard_stem(j.split, j.shard_index, j.num_shards)) for j in shard_jobs(rows)}
    tables = {m.parent.name for m in (root / "data").glob("*/*_stats.json") if read_json(m).get("kind") == "table"}
    gone = [root / layout.MANIFEST_NAME, root / layout.CARD_NAME, *sorted((root / "assets").glob("grid_*.png"))]
    for base, pattern in (("data", "*"), ("wds", "*"), ("generation/stats", "*.json")):
        for f in sorted((root / base).glob(f"*/{pattern}")):
            parsed = layout.parse_shard_name(f.name)
            if f.parent.name in tables:  # metadata tables written into the folder are not generation's to remove
                continue
            if parsed is not None and (f.parent.name, layout.shard_stem(*parsed[:3])) not in planned:
                gone.append(f)
            elif parsed is None and f.name == layout.INFO_NAME:
                gone.append(f)  # a config's wds _info.json: finalize writes it again
    removed = []
    for f in gone:
        if f.is_file():
            f.unlink(missing_ok=True)
            removed.append(f.relative_to(root).as_posix())
    if removed:
        log.info("overwrite: removed %d file(s) of the previous build (manifest, card, stale shards)", len(removed))
    return removed


def check_plan(rows: Sequence[PlanRow], root: str | os.PathLike[str]) -> None:
    """The plan file prepare wrote must be this plan (a renderer recomputes it from the same inputs)."""
    path = plan_path(root)
    if not path.is_file() or read_plan(path) != list(rows):
        raise ValidationError(f"{path} is not the plan these settings give: run prepare (--stage prepare) with the "
                              "same preset and options as the renderers")


def all_shards_done(rows: Sequence[PlanRow], root: str | os.PathLike[str], build: str = "") -> bool:
    """True when every shard of the plan is written (by build `build`, when given)."""
    return all(shard_current(root, j, build) for j in shard_jobs(rows))


def build_id(root: str | os.PathLike[str], record: dict[str, Any], image_format: str) -> str:
    """The id of a build: its plan file and everything else that decides its shards' bytes (not which device of
    its kind a task uses: ranks on cuda:0 and cuda:1 write one build)."""
    render = {k: v for k, v in record.items() if k != "device"}
    return stable_hash({"plan": sha256_file(plan_path(root)), "render": render, "image_format": image_format})


def quality_summary(rows: Sequence[PlanRow], root: str | os.PathLike[str]) -> dict[str, Any]:
    """Totals over the shards' generation stats: planned, written, dropped by the quality filter, flagged, unfilled."""
    total = {"planned": 0, "count": 0, "substituted": 0, "quality_dropped": 0, "unsafe_flagged": 0, "unfilled": 0}
    for j in shard_jobs(rows):
        path = gen_stats_path(root, j.config, j.split, j.shard_index, j.num_shards)
        if not path.exists():
            continue
        s = read_json(path)
        for key in ("planned", "count", "substituted"):
            total[key] += int(s[key])
        total["count"] -= int(s.get("rejected", 0))  # samples the writer refused are not in the shard
        for key, v in s["failures"].items():
            total[key] += int(v)
    return total


@dataclass
class DatasetInfo:
    """What the manifest says about the dataset besides its configs (name, version, provenance)."""

    name: str
    version: str
    class_names: list[str]
    image_format: str = "png"
    repo_id: str = ""
    pretty_name: str = ""
    description: str = ""
    source_dataset: str = ""
    vocabulary: dict[str, Any] = field(default_factory=dict)
    attribution: dict[str, Any] = field(default_factory=dict)
    mining: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    #: keyword arguments that rebuild a registered generator (e.g. the composite stand-in's world preset and seed)
    generator_options: dict[str, Any] = field(default_factory=dict)


def make_manifest(rows: Sequence[PlanRow], root: str | os.PathLike[str], info: DatasetInfo,
                  settings: GenerationSettings, *, generator_ident: str, render: dict[str, Any],
                  roles: dict[str, str] | None = None, build: str = "", license: str = "other",
                  license_note: str = "") -> Manifest:
    """The manifest of a generated dataset: configs and shard counts from the plan, pinned generation settings,
    the build's id, the device its shards were rendered on and the generator's resolved commit; `license` and
    `license_note` are the generator's (`ImageGenerator.license`); `roles` names each config's role (model,
    collective, baseline, random-context: the manifest's config `kind`)."""
    roles = roles or {}
    budgets = info.attribution.get("budget", {}).get("configs", {})
    configs: dict[str, ConfigSpec] = {}
    for r in rows:
        role = roles.get(r.config, _role_of(r.source_model))
        policy = budgets.get(r.config, {}).get("policy", TOP_K)
        spec = configs.setdefault(r.config, ConfigSpec(kind=role, splits={}, source_model=r.source_model,
                                                       description=describe_config(role, r.source_model, policy)))
        spec.splits[r.split] = r.num_shards
    generation = {**settings.to_dict(), **render, "quality": quality_summary(rows, root),
                  "plan": plan_path("").as_posix(), "build": build, **rendered_on(rows, root)}
    return Manifest(
        name=info.name, version=info.version, class_names=list(info.class_names), configs=configs,
        repo_id=info.repo_id, pretty_name=info.pretty_name, description=info.description,
        image_format=info.image_format, source_dataset=info.source_dataset, license=license,
        generator={"id": settings.generator, **({"revision": settings.revision} if settings.revision else {}),
                   "ident": generator_ident, **({"license_note": license_note} if license_note else {}),
                   "resolved_revision": (hub_revision(settings.generator, settings.revision)
                                         if generator_ident.startswith("diffusers:") else "registered"),
                   **({"options": dict(info.generator_options)} if info.generator_options else {})},
        vocabulary=dict(info.vocabulary), attribution=dict(info.attribution), mining=dict(info.mining),
        generation=generation,
        seeds={"base_seed": settings.base_seed, "rule": SEED_RULE}, plan_sha256=sha256_file(plan_path(root)),
        tags=list(info.tags),
    )


def rendered_on(rows: Sequence[PlanRow], root: str | os.PathLike[str]) -> dict[str, Any]:
    """The device kind and name and the CPU thread count the shards were rendered with (from their stats); a build
    whose shards disagree records every value seen, sorted, and says so in the log."""
    seen: dict[str, set[Any]] = {"device": set(), "device_name": set(), "threads": set()}
    for j in shard_jobs(rows):
        path = gen_stats_path(root, j.config, j.split, j.shard_index, j.num_shards)
        s = read_json(path) if path.exists() else {}
        for key, values in seen.items():
            if key in s:
                values.add(s[key])
    out: dict[str, Any] = {}
    for key, values in seen.items():
        if len(values) > 1:
            log.warning("shards were rendered with different %s values %s: pixels may differ between them",
                        key, sorted(map(str, values)))
        out[key] = next(iter(values)) if len(values) == 1 else sorted(values, key=str)
    return out


def describe_config(role: str, source_model: str, policy: str = TOP_K) -> str:
    """What a config of this role and budget policy is, in one sentence (the card's and manifest's config
    description)."""
    if role == "model" and policy == EVIDENCE_WEIGHTED:
        return (f"The failure modes of {source_model}: each class's images spread over its vocabulary by the "
                "attributed seed failures (the evidence-weighted budget).")
    return {
        "model": f"The failure modes of {source_model}: its top contexts per class, a few images each.",
        "collective": f"The failure modes of the {source_model.removeprefix('collective:')} family, counts pooled "
                      "over its models.",
        "baseline": "Class-only prompts with no context (the control).",
        "random-context": "As many images per class as the model configs, spread over all of the class's "
                          "vocabulary contexts in equal shares (the control for context diversity).",
    }.get(role, "")


def _role_of(source_model: str) -> str:
    if source_model in ("baseline", "random-context"):
        return source_model
    return "collective" if source_model.startswith("collective:") else "model"


@dataclass(frozen=True)
class GenerationResult:
    """What one task's `generate_dataset` did: the generation stats of the shards it wrote (timings included;
    none when every shard was already done) and whether the folder is now a finalized dataset."""

    stats: list[dict[str, Any]]
    finalized: bool


def generate_dataset(rows: Sequence[PlanRow], root: str | os.PathLike[str], generator: ImageGenerator,
                     info: DatasetInfo, settings: GenerationSettings, *, roles: dict[str, str] | None = None,
                     quality: QualityScorer | None = None, filters: QualitySection | None = None,
                     options: RunOptions | None = None, coordinator: Coordinator | None = None) -> GenerationResult:
    """Save the plan, render and write this task's pending shards through `generator` (at its batch size, with its
    safety checker), then write card and manifest if every shard of the plan is done.

    `quality` scores images and drops those `filters` (thresholds, spare seeds per image) reject; `settings` are the
    generation settings the plan was built with (the manifest pins them); `roles` names each config's role;
    `options` gives the write policy, this task and the encoding threads. With a `coordinator` the plan was saved by
    its prepare stage, and it says whether this process renders and finalizes (and which task it is).
    """
    root = Path(root)
    filters = filters or QualitySection()
    options = options or RunOptions()
    task = options.task
    if coordinator is None:
        save_plan(rows, root, options.write)
    else:
        check_plan(rows, root)
        task = coordinator.task
    run = ShardRun(root, generator, list(info.class_names), image_format=info.image_format, write=options.write,
                   quality=quality, reserve=filters.reserve, encode_workers=options.encode_workers, task=task)
    record = {**generator.describe(), **quality_record(quality, filters), "safety_checker": run.safety is not None}
    run.build = build_id(root, record, info.image_format)
    stats = run.run(rows) if coordinator is None or coordinator.renders else []
    if coordinator is not None and not coordinator.after_render():
        return GenerationResult(stats, False)

    def manifest() -> Manifest:
        return make_manifest(rows, root, info, settings, generator_ident=generator.ident, render=record, roles=roles,
                             build=run.build, license=generator.license, license_note=generator.license_note)

    return GenerationResult(stats, finalize_once(rows, root, run.build, manifest))


def finalize_once(rows: Sequence[PlanRow], root: Path, build: str, manifest: Any) -> bool:
    """Finalize `root` (card, manifest from `manifest()`) when every shard of build `build` is written, in one
    process only (an O_EXCL lock; a dataset this build already finalized is left as it is). True when finalized."""
    if not all_shards_done(rows, root, build):
        log.info("not all shards of this build are written yet; the last task to finish writes the card and "
                 "manifest")
        return False
    with finalize_lock(root / "generation") as mine:
        if not mine:
            return False
        if finalized_by(root, build):
            log.info("%s is already finalized by this build", root)
            return True
        finalize(root, manifest())
    return True


def finalize_folder(root: str | os.PathLike[str]) -> Manifest:
    """Finalize a folder whose shards are all written again (`failmode finalize DIR`: from its manifest or an
    interrupted finalize's draft), under the lock a build's finalizer takes: never beside one, and a lock left by a
    finalizer that died on this host is taken over and removed."""
    root = Path(root)
    if not root.is_dir():
        raise ValidationError(f"{root}: not a directory")
    folder = root / "generation" if (root / "generation").is_dir() else root
    with finalize_lock(folder) as mine:
        if not mine:
            raise FailmodeError(f"{root}: another process is finalizing it ({folder / LOCK_NAME}); wait for it, or "
                                "remove the lock once its holder is gone")
        return resume(root)


def finalized_by(root: Path, build: str) -> bool:
    """True when `root` holds a manifest written by build `build` and every file finalize derives is current."""
    path = root / layout.MANIFEST_NAME
    if not (path.is_file() and read_json(path).get("generation", {}).get("build") == build):
        return False
    return derived_files_current(root, Manifest.load(root))


def quality_record(quality: QualityScorer | None, filters: QualitySection) -> dict[str, Any]:
    """What the manifest records of the quality filter: the scorer's ident, its settings, the thresholds."""
    return {"quality_filter": quality.ident if quality is not None else None,
            "quality_clip_revision": clip_revision(filters.clip_model, filters.pretrained) if quality else None,
            "quality_settings": to_json(filters) if quality is not None else None,
            "quality_thresholds": {"min_class_score": filters.min_class_score,
                                   "min_context_score": filters.min_context_score}}

"""`failmode build <preset>`: mine -> attribute -> generate -> finalize, calling each stage's public function.

Each model's mining and attribution outputs live in `<work>/models/<model>/` with `stages.json`, the fingerprint
of the settings that produced them: a stage whose settings changed is run again (and every stage after it), an
unchanged one is skipped. A rerun whose plan is already rendered and finalized loads no model at all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.backends import GENERATORS, BackendContext, ImageGenerator, construct
from failmode.dataset import Manifest, config_slug
from failmode.dataset.finalize import derived_files_current
from failmode.dataset.layout import check_distinct
from failmode.errors import FailmodeError, UsageError, ValidationError
from failmode.generation.coordinate import LOCK_NAME, Coordinator, Group
from failmode.generation.environment import clip_revision, timm_revision
from failmode.generation.plan import (
    BASELINE_KIND,
    EVIDENCE_RULE,
    EVIDENCE_WEIGHTED,
    TOP_K,
    GenerationSettings,
    ModeSet,
    allocation_record,
    baseline_modes,
    build_plan,
    check_mode_set,
    evidence_modes,
    merge_modes,
    modes_from_json,
    plan_path,
    policy_config,
    random_context_modes,
    read_plan,
    seed_context_counts,
)
from failmode.generation.presets import Preset, QualitySection
from failmode.generation.quality import ClipQuality, QualityScorer
from failmode.generation.render import pipeline_ident
from failmode.generation.run import DatasetInfo, RunOptions, all_shards_done, generate_dataset, save_plan
from failmode.io import read_json, sha256_file, stable_hash, write_json
from failmode.options import FeatureOptions, ModelSpec, RenderOptions
from failmode.runtime import fixed_threads
from failmode.typed import to_json

log = logging.getLogger(__name__)

STAGES_FILE = "stages.json"


@dataclass(frozen=True)
class GeneratorChoice:
    """The generator a build or `failmode generate` renders with, resolved by name in one place
    (`resolve_generator`): a registered backend (built at once; e.g. the offline "composite" stand-in) or a diffusers
    model, a Hub id or a folder, loaded only when something renders (`options`: its render options)."""

    settings: GenerationSettings
    registered: ImageGenerator | None = None
    options: RenderOptions | None = None

    @property
    def ident(self) -> str:
        """The generator's ident, which the plan records (no pipeline is loaded for it)."""
        if self.registered is not None:
            return self.registered.ident
        return pipeline_ident(self.settings.generator, self.settings.revision)

    def load(self) -> ImageGenerator:
        """The generator itself (a diffusers pipeline loads here)."""
        if self.registered is not None:
            return self.registered
        g = self.settings
        return GENERATORS.get("diffusers")(g.generator, revision=g.revision, options=self.options, ident=self.ident)


def registered_generator(name: str, context: BackendContext,
                         options: dict[str, Any] | None = None) -> ImageGenerator | None:
    """The registered backend `name` names (any registered name but "diffusers": the demo's composite stand-in, a
    user's own), built from `context`; None when `name` is a diffusers model id or pipeline folder."""
    if name == "diffusers" or name not in GENERATORS:
        return None
    return construct(GENERATORS, name, options, context)


def resolve_generator(settings: GenerationSettings, render: RenderOptions, context: BackendContext) -> GeneratorChoice:
    """The generator `settings.generator` names: a registered backend (not "diffusers"), built from the run's
    `context`; else a diffusers model rendering with `render` on the context's device and the settings' scheduler
    (checked here, before anything runs)."""
    registered = registered_generator(settings.generator, context)
    if registered is not None:
        log.info("generator %r is a registered backend: the render options and the scheduler, steps and guidance "
                 "are for diffusers and do not apply", settings.generator)
        return GeneratorChoice(settings, registered=registered)
    options = dataclasses.replace(render, device=context.device, scheduler=settings.scheduler)
    return GeneratorChoice(settings, options=options)


def make_quality(cfg: QualitySection, *, device: str | None = None) -> QualityScorer | None:
    """The CLIP quality filter of a preset's `quality` section, or None when disabled."""
    if not cfg.enabled:
        return None
    from failmode.generation.render import process_device
    from failmode.models.clip import create_clip

    dev = process_device(device)
    clip = create_clip(cfg.clip_model, cfg.pretrained, device=dev)
    return ClipQuality(clip, cfg.min_class_score, cfg.min_context_score, device=dev)


@dataclass(frozen=True)
class ModelStages:
    """Where one model's mining and attribution outputs go, and the fingerprints of the settings behind them."""

    model: ModelSpec
    folder: Path
    mine: str
    attribute: str

    @property
    def failures(self) -> Path:
        """The mining stage's output."""
        return self.folder / "failures.parquet"

    @property
    def modes(self) -> Path:
        """The attribution stage's output (the generation stage's input)."""
        return self.folder / "modes.json"

    def done(self) -> dict[str, bool]:
        """Which stages are done with the current settings (their output exists and its fingerprint matches)."""
        path = self.folder / STAGES_FILE
        stamps = read_json(path) if path.is_file() else {}
        return {"mine": stamps.get("mine") == self.mine and self.failures.is_file(),
                "attribute": stamps.get("mine") == self.mine and stamps.get("attribute") == self.attribute
                and self.modes.is_file()}

    def stamp(self, **done: str) -> None:
        """Record the fingerprints of stages just completed (a redone mine invalidates attribution)."""
        path = self.folder / STAGES_FILE
        stamps = read_json(path) if path.is_file() else {}
        if "mine" in done and stamps.get("mine") != done["mine"]:
            stamps.pop("attribute", None)
        write_json(path, {**stamps, **done})


def model_stages(preset: Preset, work: Path, recipe: dict[str, float]) -> list[ModelStages]:
    """Per model: its folder under `work` and the fingerprints of its mining and attribution settings."""
    from failmode.models.setup import model_key

    d, a = preset.dataset, preset.attribution
    out = []
    for m in preset.models:
        mine = stable_hash({"model": m.id, "weights": model_key(m.id, m.weights), "head": m.head,
                            "image_size": m.image_size, "crop_pct": m.crop_pct, "dataset": d.spec,
                            "split": d.split, "train_split": d.train_split, "recipe": recipe,
                            "split_seed": d.split_seed}, n=16)
        attribute = stable_hash({"mine": mine, "attribution": to_json(a), "k": preset.generation.k,
                                 "vocabulary": to_json(preset.vocabulary)}, n=16)
        out.append(ModelStages(m, work / "models" / config_slug(m.id), mine, attribute))
    return out


def analyse(preset: Preset, stages: list[ModelStages], recipe: dict[str, float], *, device: str | None = None,
            cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Mine and attribute every model whose outputs are missing or stale (the prepare stage's first half), with the
    build's fixed CPU thread count (`render.threads`, as rendering and scoring: predictions and CLIP scores made on
    the CPU depend on it, and a launcher such as torchrun sets its own)."""
    with fixed_threads(preset.render.threads):
        _analyse(preset, stages, recipe, device=device, cache_dir=cache_dir)


def _analyse(preset: Preset, stages: list[ModelStages], recipe: dict[str, float], *, device: str | None,
             cache_dir: str | os.PathLike[str] | None) -> None:
    from failmode.mining.attribution import attribute_failures
    from failmode.mining.mine import mine_failures

    a, data = preset.attribution, preset.dataset.splits(recipe)
    extraction = FeatureOptions(device=device, cache_dir=None if cache_dir is None else str(cache_dir))
    for st in stages:
        done = st.done()
        if not done["mine"]:
            log.info("%s: mining (%s)", st.model.id, "settings changed" if st.failures.exists() else "new")
            mine_failures(st.model, data, out_dir=st.folder, extraction=extraction)
            st.stamp(mine=st.mine)
        if not done["attribute"]:
            log.info("%s: attributing (%s)", st.model.id, "settings changed" if st.modes.exists() else "new")
            attribute_failures(st.failures, vocabulary=preset.vocabulary.dataset, kind=preset.vocabulary.kind,
                               attributor=a, k=preset.generation.k, out_dir=st.folder, features=extraction)
            st.stamp(attribute=st.attribute)
        if done["mine"] and done["attribute"]:
            log.info("%s: mining and attribution up to date (%s)", st.model.id, st.folder)


def mode_sets(preset: Preset, stages: list[ModelStages], docs: dict[str, Any], vocab: Any,
              class_names: list[str], counts: dict[str, dict[int, list[int]]] | None = None) -> list[ModeSet]:
    """Per-model configs (from each model's modes.json document in `docs`; one per budget policy, the evidence-weighted
    ones from each model's seed-failure `counts`), one collective config per family, the class-only and the
    random-context baselines."""
    g = preset.generation
    k = g.k
    sets = [modes_from_json(docs[st.model.id], config=config_slug(st.model.id), k=k, source_model=st.model.id,
                            where=str(st.modes), allow_empty=True) for st in stages]
    for ms, st in zip(sets, stages, strict=True):
        check_mode_set(ms, vocab, str(st.modes))
    random_context = (random_context_modes(sets, vocab, class_names, base_seed=g.base_seed, k=k,
                                           images_per_mode=g.images_per_mode) if preset.baseline.random_context else None)
    sets = budget_mode_sets(sets, g, vocab, counts or {})
    for fam, members in sorted(preset.families.items()):
        sets.append(merge_modes([docs[m] for m in members], config=config_slug(f"collective-{fam}"), family=fam, k=k))
    if preset.baseline.enabled:
        sets.append(baseline_modes(class_names, [c.prompt_name for c in vocab.classes]))
    if random_context is not None:
        sets.append(random_context)
    return sets


def budget_mode_sets(top_k: list[ModeSet], settings: GenerationSettings, vocab: Any,
                     counts: dict[str, dict[int, list[int]]]) -> list[ModeSet]:
    """Each model's configs, one per budget policy of `settings` (`policy_config` names them), from its top-k
    ModeSet and, for the evidence-weighted policy, its seed-failure counts per context (keyed by source model)."""
    out = []
    for ms in top_k:
        for policy in settings.budget:
            config = policy_config(ms.config, policy, settings.budget)
            if policy == TOP_K:
                out.append(dataclasses.replace(ms, config=config, policy=TOP_K))
                continue
            if ms.source_model not in counts:
                raise UsageError(f"budget policy {policy!r} needs the seed-failure attributions of {ms.source_model}")
            out.append(evidence_modes(ms, counts[ms.source_model], vocab, config=config, k=settings.k,
                                      images_per_mode=settings.images_per_mode))
    return out


def budget_record(sets: list[ModeSet], settings: GenerationSettings) -> dict[str, Any]:
    """What the manifest (attribution.budget) and card record of the budget policies: the rule and, per model config,
    its policy and each class's images per context; empty for the default top-k alone (unchanged manifests)."""
    if tuple(settings.budget) == (TOP_K,):
        return {}
    policies = {}
    for ms in sets:
        if ms.role != "model":
            continue
        policies[ms.config] = allocation_record(ms, settings.k, settings.images_per_mode)
    return {"budget": {"policies": list(settings.budget), "evidence_rule": EVIDENCE_RULE, "configs": policies}}


def seed_counts(stages: list[ModelStages], vocab: Any, settings: GenerationSettings) -> dict[str, dict[int, list[int]]]:
    """Per model, its seed failures per class and vocabulary context (from attributions.parquet, seed half only),
    when a budget policy needs them."""
    if EVIDENCE_WEIGHTED not in settings.budget:
        return {}
    from failmode.mining.tables import read_table

    return {st.model.id: seed_context_counts(read_table(st.folder / "attributions.parquet")[0], vocab)
            for st in stages}


def mode_sets_from_files(inputs: GenerateInputs, settings: GenerationSettings) -> tuple[Any, str, list[ModeSet]]:
    """(vocabulary, vocabulary kind, mode sets) of what `failmode generate` plans: its modes files, `(modes.json path,
    config name or "")` pairs, with the top `settings.k` contexts of each class.

    The vocabulary defaults to the one the first modes file was attributed with; each file gives one config per
    budget policy of `settings` (the evidence-weighted one counts the seed failures of the attributions.parquet
    beside the modes file); a collective family adds one config pooling every file's modes; the baseline adds the
    class-only config.
    """
    from failmode.vocab import load_vocabulary

    k = settings.k
    loaded = [(read_json(f), name, f) for f, name in inputs.modes]
    sets = [modes_from_json(d, config=name or None, k=k, where=str(f)) for d, name, f in loaded]
    first = loaded[0][0].get("vocabulary") or {} if loaded else {}
    vocab_name = inputs.vocab or first.get("dataset")
    if not vocab_name:
        raise UsageError("--vocab is required with --baseline alone (it names the classes)")
    kind = inputs.kind or first.get("kind") or "background"
    vocabulary = load_vocabulary(vocab_name, kind)
    for ms, (_, _, f) in zip(sets, loaded, strict=True):
        check_mode_set(ms, vocabulary, str(f))
    counts = {}
    if EVIDENCE_WEIGHTED in settings.budget:
        from failmode.mining.tables import read_table

        for ms, (_, _, f) in zip(sets, loaded, strict=True):
            table = Path(f).parent / "attributions.parquet"
            if not table.is_file():
                raise UsageError(f"budget policy {EVIDENCE_WEIGHTED!r} needs {table} (written by failmode "
                                 f"attribute beside {f})")
            counts[ms.source_model] = seed_context_counts(read_table(table)[0], vocabulary)
    sets = budget_mode_sets(sets, settings, vocabulary, counts)
    if inputs.collective:
        sets.append(merge_modes([d for d, _, _ in loaded], config=config_slug(f"collective-{inputs.collective}"),
                                family=inputs.collective, k=k))
    if inputs.baseline:
        sets.append(baseline_modes(vocabulary.label_names(), [c.prompt_name for c in vocabulary.classes]))
    check_distinct({f"{ms.source_model!r} ({f})": ms.config for ms, (_, _, f) in zip(sets, loaded, strict=False)}
                   | {repr(ms.source_model): ms.config for ms in sets[len(loaded):]}, "generate")
    return vocabulary, kind, sets


def _dataset_class_names(preset: Preset, stages: list[ModelStages]) -> list[str]:
    """The dataset's class names: from a mined model's records when all are mined, else from the dataset."""
    from failmode.mining.failures import read_failures

    if all(st.done()["mine"] for st in stages):
        return list(read_failures(stages[0].failures)[1]["class_names"])
    from failmode.data.sources import open_source

    return open_source(preset.dataset.spec, preset.dataset.split).class_names


def is_complete(rows: list[Any], out: Path, quality: QualitySection | None) -> bool:
    """True when `out` holds a finalized dataset of exactly this plan and quality filter (nothing to do).

    A finalized dataset of this plan made with another quality filter is refused (its shards were filtered
    otherwise): one line saying to rebuild with --write overwrite.
    """
    path, manifest_file = plan_path(out), out / "failmode.json"
    if not (path.is_file() and manifest_file.is_file()):
        return False
    if (out / "generation" / LOCK_NAME).exists():  # a finalizer at work, or one that died: finalize_once settles it
        return False
    manifest = Manifest.load(out)
    if not all_shards_done(rows, out, manifest.generation.get("build", "")):  # every shard of the finalized build
        return False
    if manifest.plan_sha256 != sha256_file(path) or read_plan(path) != list(rows):
        return False
    used, wanted = manifest.generation.get("quality_settings"), to_json(quality) if quality else None
    if used != wanted:
        was, now = used or {"enabled": False}, wanted or {"enabled": False}
        diff = ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
                         if was.get(k) != now.get(k))
        raise UsageError(f"{out} was built with another quality filter ({diff}): rebuild it with --write overwrite "
                         "(or --out another folder)")
    return derived_files_current(out, manifest)  # a card, grid or _info.json missing or stale: finalize again


@dataclass(frozen=True)
class BuildInputs:
    """What a build plans from, checked before any model loads: the preset, each model's stages, the split recipe,
    the dataset's class names, the vocabulary and the generation settings (with the vocabulary's template)."""

    preset: Preset
    stages: list[ModelStages]
    recipe: dict[str, float]
    names: list[str]
    vocab: Any
    settings: GenerationSettings

    def plan(self, generator_id: str) -> BuildPlan:
        """Every model's modes documents, the configs' mode sets and the plan rows (read from the stages' outputs)."""
        preset, stages = self.preset, self.stages
        docs = {st.model.id: read_json(st.modes) for st in stages}
        sets = mode_sets(preset, stages, docs, self.vocab, self.names, seed_counts(stages, self.vocab, preset.generation))
        rows = build_plan(sets, self.settings, generator_id=generator_id,
                          baseline_images_per_class=preset.baseline.images_per_class)
        return BuildPlan(self, docs, sets, rows)


@dataclass(frozen=True)
class BuildPlan:
    """A build's plan: its inputs, every model's modes document, the mode sets and the plan rows."""

    inputs: BuildInputs
    modes_docs: dict[str, Any]
    sets: list[ModeSet]
    rows: list[Any]


def build(preset: Preset, out: str | os.PathLike[str], *, work: str | os.PathLike[str] | None = None,
          cache_dir: str | os.PathLike[str] | None = None, quality: bool = True,
          options: RunOptions | None = None) -> bool:
    """Run the whole pipeline for `preset` into dataset folder `out` (or the one stage of it `options` names:
    prepare, render, finalize); True when the dataset is finalized.

    `options` say how this process runs (device, write policy, task, stage, wait timeout). Everything checkable is
    checked before any model loads: the split recipe, the vocabulary against the dataset's class names, the
    generator's render options. Under torchrun / accelerate the processes join the launcher's group; job-array
    tasks meet through markers in the work folder (`failmode.generation.coordinate`).
    """
    from failmode.data.splits import resolve_recipe
    from failmode.vocab import load_vocabulary

    run = options or RunOptions()
    out = Path(out)
    work_dir = Path(work) if work else out.parent / f"{out.name}.work"
    d = preset.dataset
    recipe = resolve_recipe(d.id, d.train_per_class, d.debug_per_class)
    vocab = load_vocabulary(preset.vocabulary.dataset, preset.vocabulary.kind)
    stages = model_stages(preset, work_dir, recipe)
    names = _dataset_class_names(preset, stages)
    if len(names) < 2:  # no classifier fails between classes of a one-class dataset: nothing to mine
        raise ValidationError(f"{d.id}: the dataset has {len(names)} class{'es' if len(names) != 1 else ''} "
                              f"({', '.join(map(repr, names))}); a debug dataset needs at least 2")
    vocab.check_classes(names, d.id)
    inputs = BuildInputs(preset, stages, recipe, names, vocab,
                         with_vocabulary_template(preset.generation, preset.vocabulary.kind, vocab))
    # what prepare makes: this preset (with its overrides) into this folder (the same path on every node)
    key = stable_hash({"preset": to_json(preset), "out": str(out.resolve())}, n=16)
    coordinator = Coordinator(run.task, work_dir, key, stage=run.stage,
                              wait_timeout_s=run.wait_timeout_s, group=Group.join(run.wait_timeout_s))
    try:
        choice = resolve_generator(inputs.settings, preset.render,
                                   BackendContext(device=run.device, kind=preset.vocabulary.kind, dataset=d.id))

        def prepare() -> None:
            analyse(preset, stages, recipe, device=run.device, cache_dir=cache_dir)
            save_plan(inputs.plan(choice.ident).rows, out, run.write)

        coordinator.prepare(prepare)
        if run.stage == "prepare":
            log.info("prepared %s: render its shards with --stage render", out)
            return False
        planned = inputs.plan(choice.ident)
        wanted = preset.quality if quality and preset.quality.enabled else None
        if run.stage != "finalize" and run.write == "incremental" and is_complete(planned.rows, out, wanted):
            log.info("%s is complete and up to date: nothing to render", out)
            return True
        return _generate(planned, out, choice.load(), quality=quality, options=run, coordinator=coordinator)
    finally:
        coordinator.close()


def _generate(planned: BuildPlan, out: Path, gen: ImageGenerator, *, quality: bool, options: RunOptions,
              coordinator: Coordinator) -> bool:
    """Render this process's shards of a prepared build and finalize when it is the one to."""
    from failmode.data.sources import hub_dataset_id

    inputs = planned.inputs
    preset, d, vocab = inputs.preset, inputs.preset.dataset, inputs.vocab
    scorer = make_quality(preset.quality, device=options.device) if quality else None
    info = DatasetInfo(name=preset.name, version=preset.version, class_names=inputs.names,
                       image_format=preset.image_format, repo_id=preset.repo_id, pretty_name=preset.pretty_name,
                       description=preset.description, source_dataset=hub_dataset_id(d.id),
                       vocabulary={**to_json(preset.vocabulary), "version": getattr(vocab, "version", ""),
                                   "template": vocab.template},
                       attribution={**preset.attribution.record(), "k": preset.generation.k,
                                    "used": {mid: doc.get("attributor") for mid, doc in planned.modes_docs.items()},
                                    "resolved_revision": clip_revision(preset.attribution.clip_model,
                                                                       preset.attribution.pretrained),
                                    **budget_record(planned.sets, preset.generation)},
                       mining={**to_json(d), "recipe": inputs.recipe, "threads": preset.render.threads,
                               "models": [_mined(st) for st in inputs.stages]},
                       tags=preset.tags)
    done = generate_dataset(planned.rows, out, gen, info, inputs.settings, roles={s.config: s.role for s in planned.sets},
                            quality=scorer, filters=preset.quality, options=options, coordinator=coordinator).finalized
    if coordinator.stage == "finalize" and not done:
        raise FailmodeError(f"{out}: not every shard of this build is written: run the missing --stage render tasks")
    return done


def _mined(st: ModelStages) -> dict[str, Any]:
    """What the manifest records of one model's mining: its settings, head and failure counts."""
    from failmode.mining.failures import read_failures

    meta = read_failures(st.failures)[1]
    keys = ("model", "weights", "head", "head_file", "accuracy", "n_debug", "n_failures", "n_seed", "n_heldout")
    return {k: meta.get(k) for k in keys} | {"head_setting": st.model.head,
                                             "resolved_revision": timm_revision(st.model.id, st.model.weights)}


def with_vocabulary_template(settings: GenerationSettings, kind: str, vocab: Any) -> GenerationSettings:
    """`settings` whose prompt template for `kind` is the vocabulary's own."""
    return dataclasses.replace(settings, prompt_templates={**settings.prompt_templates, kind: vocab.template})


@dataclass(frozen=True)
class GenerateInputs:
    """What `failmode generate` plans: modes files (path, config name or ""), the vocabulary (default: the files'),
    its kind, a collective config's family, and the class-only control with its images per class."""

    modes: tuple[tuple[str, str], ...] = ()
    vocab: str | None = None
    kind: str | None = None
    collective: str | None = None
    baseline: bool = False
    baseline_images: int | None = None


@dataclass(frozen=True)
class GenerateJob:
    """Everything `failmode generate` is asked, typed: what to plan, the output folder, the generation settings,
    render options and quality filter (a preset's sections with the command line's overrides, merged once by
    `generate_sections`), the dataset's version, name and image format, how this process runs (`options.stage`
    "prepare": write the plan and stop), and whether the quality filter is left out."""

    inputs: GenerateInputs
    out: str
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    render: RenderOptions = field(default_factory=RenderOptions)
    quality: QualitySection = field(default_factory=QualitySection)
    version: str = "0.1.0"
    name: str | None = None
    image_format: str = "png"
    options: RunOptions = field(default_factory=RunOptions)
    no_quality: bool = False


def generate_sections(preset: str | None, generation: dict[str, Any], render: dict[str, Any],
                      quality: dict[str, Any]) -> tuple[GenerationSettings, RenderOptions, QualitySection, str]:
    """The generation settings, render options, quality filter and image format of `failmode generate`: a preset's
    sections (the defaults without one) with the given keys changed, each checked as a preset's section is."""
    from failmode.typed import from_mapping

    base: Preset | None = None
    if preset:
        from failmode.generation.presets import load_preset

        base = load_preset(preset)
    settings = GenerationSettings.from_dict({**(dataclasses.asdict(base.generation) if base else {}), **generation})
    options = dataclasses.replace(base.render if base else RenderOptions(), **render)
    section = from_mapping(QualitySection, {**(dataclasses.asdict(base.quality) if base else {}), **quality},
                           "quality settings")
    return settings, options, section, base.image_format if base else "png"


def generate(job: GenerateJob) -> bool:
    """`failmode generate`: check everything, plan the modes files (and controls), then render this task's shards
    and finalize when all are done; True when the dataset is finalized (False for a plan only or other shards left).
    """
    from failmode.data.sources import hub_dataset_id
    from failmode.dataset.manifest import SEMVER_RE
    from failmode.generation.run import DatasetInfo

    inputs, run = job.inputs, job.options
    if not inputs.modes and not inputs.baseline:
        raise UsageError("nothing to generate: pass --modes FILE and/or --baseline")
    if not SEMVER_RE.match(job.version):  # checked before anything renders
        raise UsageError(f"--version {job.version!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    if run.stage not in ("all", "prepare"):
        raise UsageError(f"failmode generate runs stage all or prepare (the plan only), not {run.stage!r}")
    vocab, kind, sets = mode_sets_from_files(inputs, job.settings)
    settings = with_vocabulary_template(job.settings, kind, vocab)
    choice = resolve_generator(settings, job.render,
                               BackendContext(device=run.device, kind=kind, dataset=_modes_dataset(inputs.modes)))
    rows = build_plan(sets, settings, generator_id=choice.ident, baseline_images_per_class=inputs.baseline_images)
    out = Path(job.out)
    if run.stage == "prepare":
        save_plan(rows, out, run.write)
        return False
    gen = choice.load()
    quality = None if job.no_quality else make_quality(job.quality, device=run.device)
    info = DatasetInfo(name=job.name or out.name, version=job.version, class_names=vocab.label_names(),
                       image_format=job.image_format, source_dataset=hub_dataset_id(vocab.dataset),
                       vocabulary={"dataset": vocab.dataset, "kind": kind, "version": vocab.version,
                                   "template": vocab.template},
                       attribution={"k": settings.k, "modes": [str(f) for f, _ in inputs.modes],
                                    **budget_record(sets, settings)})
    coordinator = None
    if run.task[1] > 1:  # several tasks: one saves the plan (and clears an overwritten build), the others wait
        # the prepare marker's key ("mode": the write policy's key as markers already written spell it)
        key = stable_hash({"rows": [to_json(r) for r in rows], "out": str(out.resolve()), "mode": run.write}, n=16)
        coordinator = Coordinator(run.task, out.parent / f"{out.name}.work", key, wait_timeout_s=run.wait_timeout_s,
                                  group=Group.join(run.wait_timeout_s))
    try:
        if coordinator is not None:
            coordinator.prepare(lambda: save_plan(rows, out, run.write))
        return generate_dataset(rows, out, gen, info, settings, roles={s.config: s.role for s in sets},
                                quality=quality, filters=job.quality, options=run, coordinator=coordinator).finalized
    finally:
        if coordinator is not None:
            coordinator.close()


def _modes_dataset(modes: tuple[tuple[str, str], ...]) -> str | None:
    """The dataset the first modes file's failures were mined on (what a registered generator such as the world's
    composite stand-in is built for), None without one."""
    return read_json(modes[0][0]).get("dataset") if modes else None


__all__ = ["BASELINE_KIND", "BuildInputs", "BuildPlan", "GenerateInputs", "GenerateJob", "GeneratorChoice",
           "ModelStages", "analyse", "budget_mode_sets", "budget_record", "build", "generate", "generate_sections",
           "is_complete", "make_quality", "mode_sets", "mode_sets_from_files", "model_stages", "resolve_generator",
           "seed_counts", "with_vocabulary_template"]

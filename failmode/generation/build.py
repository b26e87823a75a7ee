"""`failmode build <preset>`: mine -> attribute -> generate -> finalize, calling each stage's public function."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failmode.backends import GENERATORS, ImageGenerator
from failmode.dataset import config_slug
from failmode.errors import FailmodeError, UsageError
from failmode.generation.plan import (
    BASELINE_KIND,
    GenerationSettings,
    ModeSet,
    baseline_modes,
    build_plan,
    merge_modes,
    modes_from_json,
)
from failmode.generation.presets import Preset
from failmode.generation.quality import ClipQuality, QualityScorer
from failmode.generation.render import RenderOptions, describe_options, safety_function
from failmode.generation.run import DatasetInfo, finalize_if_complete, generate_dataset, make_manifest
from failmode.io import read_json

log = logging.getLogger(__name__)


@dataclass
class Stages:
    """The other stages' public functions `build` calls (swappable, e.g. for the offline world or tests)."""

    mine: Callable[..., Path]
    attribute: Callable[..., Path]
    vocabulary: Callable[[str, str], Any]

    @classmethod
    def default(cls) -> Stages:
        """failmode.mining's mine_failures / attribute_failures and failmode.vocab's load_vocabulary."""
        from failmode.mining.attribution import attribute_failures
        from failmode.mining.mine import mine_failures
        from failmode.vocab import load_vocabulary

        return cls(mine=mine_failures, attribute=attribute_failures, vocabulary=load_vocabulary)


def make_generator(preset: Preset, *, device: str | None = None, overrides: dict[str, Any] | None = None,
                   generator: str = "diffusers") -> ImageGenerator:
    """The preset's generator (diffusers by default) with its render options, `overrides` applied."""
    if generator != "diffusers":
        return GENERATORS.get(generator)()
    g = preset.generation
    options = RenderOptions(device=device, scheduler=g.scheduler, **{**preset.render, **(overrides or {})})
    return GENERATORS.get("diffusers")(g.generator, revision=g.revision, options=options)


def make_quality(cfg: dict[str, Any], *, device: str | None = None) -> QualityScorer | None:
    """The CLIP quality filter of a preset's `quality` section, or None when disabled."""
    if not cfg.get("enabled", False):
        return None
    from failmode.generation.render import worker_device
    from failmode.models.clip import create_clip

    dev = worker_device(device)
    clip = create_clip(cfg.get("clip_model", "ViT-B-32"), cfg.get("pretrained", "openai"), device=dev)
    return ClipQuality(clip, cfg.get("min_class_score"), cfg.get("min_context_score"), device=dev)


def analyse(preset: Preset, work: Path, stages: Stages, *, device: str | None = None,
            worker: tuple[int, int] = (0, 1), wait_s: float = 24 * 3600) -> dict[str, Path]:
    """modes.json per model: mined and attributed by worker 0 (skipped when present); other workers wait for them."""
    out: dict[str, Path] = {}
    for m in preset.models:
        folder = work / "models" / config_slug(m["id"])
        modes = folder / "modes.json"
        if not modes.exists() and worker[0] == 0:
            failures = stages.mine(m["id"], preset.dataset["id"], out_dir=folder, weights=m.get("weights", "timm"),
                                   head=m.get("head"), split=preset.dataset.get("split"),
                                   train_split=preset.dataset.get("train_split"), device=device,
                                   split_seed=preset.attribution.get("split_seed", 0))
            att = preset.attribution
            modes = stages.attribute(failures, vocabulary=preset.vocabulary["dataset"],
                                     kind=preset.vocabulary["kind"], attributor=att.get("attributor", "clip"),
                                     attributor_options=att.get("options"), k=preset.generation.k, out_dir=folder)
        _wait_for(modes, wait_s)
        out[m["id"]] = Path(modes)
    return out


def _wait_for(path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise FailmodeError(f"gave up waiting for {path} (worker 0 writes it)")
        time.sleep(10)


def mode_sets(preset: Preset, modes_files: dict[str, Path], vocab: Any) -> list[ModeSet]:
    """Per-model configs, one collective config per family, and the class-only baseline."""
    docs = {mid: read_json(p) for mid, p in modes_files.items()}
    k = preset.generation.k
    sets = [modes_from_json(docs[mid], config=config_slug(mid), k=k, source_model=mid, where=str(modes_files[mid]))
            for mid in preset.model_ids]
    for fam, members in sorted(preset.families.items()):
        sets.append(merge_modes([docs[m] for m in members], config=config_slug(f"collective-{fam}"), family=fam, k=k))
    if preset.baseline.get("enabled", True):
        sets.append(baseline_modes(dataset_class_names(vocab), [c.prompt_name for c in vocab.classes]))
    return sets


def mode_sets_from_files(modes_files: list[tuple[str, str]], *, k: int, vocab: str | None = None,
                         kind: str | None = None, collective: str | None = None,
                         baseline: bool = False) -> tuple[Any, str, list[ModeSet]]:
    """(vocabulary, kind, mode sets) from `(modes.json path, config name or "")` pairs, as `failmode generate` takes.

    The vocabulary defaults to the one the first modes file was attributed with; `collective` adds one config
    pooling every file's modes; `baseline` adds the class-only config.
    """
    from failmode.vocab import load_vocabulary

    loaded = [(read_json(f), name, f) for f, name in modes_files]
    first = loaded[0][0].get("vocabulary", {}) if loaded else {}
    vocab_name = vocab or first.get("dataset")
    if not vocab_name:
        raise UsageError("--vocab is required with --baseline alone (it names the classes)")
    kind = kind or first.get("kind") or "background"
    vocabulary = load_vocabulary(vocab_name, kind)
    sets = [modes_from_json(d, config=name or config_slug(str(d.get("source_model"))), k=k, where=str(f))
            for d, name, f in loaded]
    if collective:
        sets.append(merge_modes([d for d, _, _ in loaded], config=config_slug(f"collective-{collective}"),
                                family=collective, k=k))
    if baseline:
        sets.append(baseline_modes(dataset_class_names(vocabulary), [c.prompt_name for c in vocabulary.classes]))
    return vocabulary, kind, sets


def dataset_class_names(vocab: Any) -> list[str]:
    """The ClassLabel names of the vocabulary's dataset as the dataset spells them, else the vocabulary's names."""
    from failmode.vocab.classnames import known_datasets, label_names

    return label_names(vocab.dataset) if vocab.dataset in known_datasets() else list(vocab.class_names)


def build(preset: Preset, out: str | os.PathLike[str], *, work: str | os.PathLike[str] | None = None,
          stages: Stages | None = None, generator: ImageGenerator | None = None,
          quality: QualityScorer | None | bool = True, mode: str = "incremental", worker: tuple[int, int] = (0, 1),
          device: str | None = None, render_overrides: dict[str, Any] | None = None) -> bool:
    """Run the whole pipeline for `preset` into dataset folder `out`; True when the dataset was finalized."""
    out = Path(out)
    work_dir = Path(work) if work else out.parent / f"{out.name}.work"
    stages = stages or Stages.default()
    vocab = stages.vocabulary(preset.vocabulary["dataset"], preset.vocabulary["kind"])
    settings = with_vocabulary_template(preset.generation, preset.vocabulary["kind"], vocab)
    sets = mode_sets(preset, analyse(preset, work_dir, stages, device=device, worker=worker), vocab)
    gen = generator or make_generator(preset, device=device, overrides=render_overrides)
    if quality is True:
        quality = make_quality(preset.quality, device=device)
    rows = build_plan(sets, settings, generator_id=gen.ident,
                      baseline_images_per_class=preset.baseline.get("images_per_class"))
    render = {**preset.render, **(render_overrides or {})}
    names = dataset_class_names(vocab)
    info = DatasetInfo(name=preset.name, version=preset.version, class_names=names,
                       image_format=preset.image_format, repo_id=preset.repo_id, pretty_name=preset.pretty_name,
                       description=preset.description, source_dataset=preset.dataset["id"],
                       vocabulary={**preset.vocabulary, "version": getattr(vocab, "version", ""),
                                   "template": vocab.template},
                       attribution={**preset.attribution, "k": preset.generation.k}, tags=preset.tags)
    return render_dataset(rows, out, gen, info, settings, kinds={s.config: s.kind for s in sets}, quality=quality,
                          quality_cfg=preset.quality, mode=mode, worker=worker,
                          batch_size=render.get("batch_size", 16), safety_checker=render.get("safety_checker", False))


def with_vocabulary_template(settings: GenerationSettings, kind: str, vocab: Any) -> GenerationSettings:
    """`settings` whose prompt template for `kind` is the vocabulary's own."""
    return dataclasses.replace(settings, prompt_templates={**settings.prompt_templates, kind: vocab.template})


def render_dataset(rows: list[Any], out: str | os.PathLike[str], gen: ImageGenerator, info: DatasetInfo,
                   settings: GenerationSettings, *, kinds: dict[str, str], quality: QualityScorer | None | bool,
                   quality_cfg: dict[str, Any], mode: str = "incremental", worker: tuple[int, int] = (0, 1),
                   batch_size: int = 16, encode_workers: int | None = None, safety_checker: bool = False) -> bool:
    """Render this worker's shards of a plan through `gen`, then finalize if every shard is done (True if so)."""
    out = Path(out)
    generate_dataset(rows, out, gen, class_names=info.class_names, mode=mode, worker=worker, batch_size=batch_size,
                     image_format=info.image_format, quality=quality or None, safety=safety_function(gen),
                     reserve=quality_cfg.get("reserve", 3), encode_workers=encode_workers)
    opts = getattr(gen, "options", None)
    render_info = describe_options(opts) if isinstance(opts, RenderOptions) else {}
    render_info["quality_filter"] = getattr(quality, "ident", None) if quality else None
    render_info["quality_thresholds"] = {k: quality_cfg.get(k) for k in ("min_class_score", "min_context_score")}
    render_info["safety_checker"] = bool(safety_checker)
    manifest = make_manifest(rows, out, info, settings, generator_ident=gen.ident, render=render_info, kinds=kinds)
    return finalize_if_complete(rows, out, manifest)


__all__ = ["BASELINE_KIND", "Stages", "analyse", "build", "dataset_class_names", "make_generator", "make_quality",
           "mode_sets", "mode_sets_from_files", "render_dataset", "with_vocabulary_template"]

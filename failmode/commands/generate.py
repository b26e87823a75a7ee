"""`failmode generate`: failure modes (modes.json) + class-only baseline -> plan.parquet -> rendered dataset shards."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "render debug images for failure modes (plan, resumable shards, quality filter) into a dataset folder"
DESCRIPTION = (
    "Turn attributed failure modes (modes.json files from 'failmode attribute') and/or the class-only baseline into "
    "a sample plan (one row per image, seed recorded; written to OUT/generation/plan.parquet before rendering) and "
    "render it through a diffusers text-to-image pipeline into parquet + webdataset shards. Shards are independent "
    "and resumable: a restart skips done shards (--mode incremental). Several workers split the shards by "
    "RANK/WORLD_SIZE (accelerate launch, torchrun) and --shard-index/--num-shards (job arrays). The worker that "
    "sees every shard done writes the card and manifest."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode generate`."""
    p.add_argument("--modes", action="append", default=[], metavar="FILE[=CONFIG]",
                   help="a modes.json; its config is named after its source model unless =CONFIG is given")
    p.add_argument("--collective", metavar="FAMILY", help="also add one collective config merging all --modes files")
    p.add_argument("--baseline", action="store_true", help="add the class-only baseline ('a photo of a {class}')")
    p.add_argument("--baseline-images", type=int, default=None, help="baseline images per class (default k*images)")
    p.add_argument("--vocab", help="vocabulary (shipped dataset name or JSON path; default: the modes files')")
    p.add_argument("--kind", default=None, help="vocabulary kind (default: the modes files', else background)")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument("--name", help="dataset name (default: the folder name)")
    p.add_argument("--version", default="0.1.0", help="dataset version (semver)")
    p.add_argument("--preset", help="take generation/render/quality settings from this preset")
    g = p.add_argument_group("generation (override the preset or defaults)")
    g.add_argument("--generator", help="diffusers model id or local pipeline folder (default SD 1.5)")
    g.add_argument("--revision")
    g.add_argument("--scheduler", help="dpmsolver++ (default), dpmsolver++-karras, ddim, pndm, euler, unipc")
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float)
    g.add_argument("--size", type=int)
    g.add_argument("--negative-prompt")
    g.add_argument("--images-per-mode", type=int)
    g.add_argument("-k", "--k", type=int, help="failure modes per class")
    g.add_argument("--seed", type=int, dest="base_seed", help="base seed of the plan")
    g.add_argument("--shard-size", type=int)
    g.add_argument("--split")
    r = p.add_argument_group("speed")
    r.add_argument("--device")
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16", "auto"])
    r.add_argument("--batch-size", type=int, help="fixed kernel batch; halves on out-of-memory")
    r.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"])
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    r.add_argument("--fuse-qkv", action="store_true", default=None)
    r.add_argument("--encode-workers", type=int, help="PNG encoding threads (default: CPUs - 2, 2..8)")
    q = p.add_argument_group("filters")
    q.add_argument("--quality-threshold", type=float, help="drop images whose CLIP class score is below this")
    q.add_argument("--no-quality", action="store_true", help="no CLIP scores at all")
    q.add_argument("--clip-model", help="open_clip model of the quality filter (default: the preset's)")
    q.add_argument("--clip-pretrained",
                   help="its open_clip tag or local checkpoint; none: seeded random weights (default: the preset's)")
    q.add_argument("--reserve", type=int, help="replacement seeds per image (quality filter, safety checker)")
    q.add_argument("--safety-checker", action="store_true", default=None, help="run the pipeline's safety checker")
    w = p.add_argument_group("workers and resume")
    w.add_argument("--mode", choices=["incremental", "overwrite"], default="incremental")
    w.add_argument("--shard-index", type=int, help="this job's part (job arrays, e.g. $SLURM_ARRAY_TASK_ID)")
    w.add_argument("--num-shards", type=int, help="number of parts of the job array")
    w.add_argument("--image-format", choices=["png", "jpeg"])
    w.add_argument("--plan-only", action="store_true", help="write the plan and stop")


GEN_KEYS = ("generator", "revision", "scheduler", "steps", "guidance", "size", "negative_prompt", "images_per_mode",
            "k", "base_seed", "shard_size", "split")
RENDER_KEYS = ("precision", "batch_size", "compile", "channels_last", "fuse_qkv", "safety_checker")


def _preset_dict(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from failmode.generation.presets import load_preset

    if args.preset:
        pr = load_preset(args.preset)
        render = {k: v for k, v in asdict(pr.render).items() if k not in ("device", "scheduler")}
        return {"generation": asdict(pr.generation), "render": render, "quality": asdict(pr.quality),
                "image_format": pr.image_format}
    return {"generation": {}, "render": {}, "quality": {}, "image_format": "png"}


def _set(d: dict[str, Any], args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    d.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})


def run(args: argparse.Namespace) -> int:
    """Plan, render this worker's shards, and finalize when every shard is done."""
    from pathlib import Path

    from failmode.backends import GENERATORS
    from failmode.data.sources import hub_dataset_id
    from failmode.dataset.manifest import SEMVER_RE
    from failmode.errors import UsageError
    from failmode.generation import build as B
    from failmode.generation.plan import GenerationSettings, build_plan
    from failmode.generation.presets import QualitySection
    from failmode.generation.render import RenderOptions, pipeline_ident
    from failmode.generation.run import DatasetInfo, save_plan
    from failmode.generation.shards import worker_slot
    from failmode.runtime import configure_cpu_threads
    from failmode.typed import from_mapping

    configure_cpu_threads()
    if not args.modes and not args.baseline:
        raise UsageError("nothing to generate: pass --modes FILE and/or --baseline")
    if not SEMVER_RE.match(args.version):  # checked before anything renders
        raise UsageError(f"--version {args.version!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    worker = worker_slot(args.shard_index, args.num_shards)
    cfg = _preset_dict(args)
    _set(cfg["generation"], args, GEN_KEYS)
    _set(cfg["render"], args, RENDER_KEYS)
    settings = GenerationSettings.from_dict(cfg["generation"])
    modes_files = [(f, name) for f, _, name in (spec.partition("=") for spec in args.modes)]
    vocab, kind, sets = B.mode_sets_from_files(modes_files, k=settings.k, vocab=args.vocab, kind=args.kind,
                                              collective=args.collective, baseline=args.baseline)
    names = vocab.label_names()
    settings = B.with_vocabulary_template(settings, kind, vocab)
    render = {k: v for k, v in cfg["render"].items() if k != "batch_size"}
    options = RenderOptions(device=args.device, scheduler=settings.scheduler,
                            batch_size=cfg["render"].get("batch_size", 16), **render)
    ident = pipeline_ident(settings.generator, settings.revision)
    rows = build_plan(sets, settings, generator_id=ident, baseline_images_per_class=args.baseline_images)
    out = Path(args.out)
    if args.plan_only:
        save_plan(rows, out, args.mode)
        return 0

    gen = GENERATORS.get("diffusers")(settings.generator, revision=settings.revision, options=options, ident=ident)
    qcfg = dict(cfg["quality"])
    if args.quality_threshold is not None:
        qcfg.update(enabled=True, min_class_score=args.quality_threshold)
    qcfg.update({k: v for k, v in (("clip_model", args.clip_model), ("pretrained", args.clip_pretrained)) if v})
    if args.clip_pretrained == "none":  # the command line's word for random weights (null in a preset)
        qcfg["pretrained"] = None
    if args.reserve is not None:
        qcfg["reserve"] = args.reserve
    qsection = from_mapping(QualitySection, qcfg, "quality settings")
    quality = None if args.no_quality else B.make_quality(qsection, device=args.device)
    info = DatasetInfo(name=args.name or out.name, version=args.version, class_names=names,
                       image_format=args.image_format or cfg["image_format"], source_dataset=hub_dataset_id(vocab.dataset),
                       vocabulary={"dataset": vocab.dataset, "kind": kind, "version": vocab.version,
                                   "template": vocab.template},
                       attribution={"k": settings.k, "modes": [str(f) for f, _ in modes_files]})
    B.render_dataset(rows, out, gen, info, settings, kinds={s.config: s.kind for s in sets}, quality=quality,
                     quality_cfg=qsection, mode=args.mode, worker=worker,
                     encode_workers=args.encode_workers)
    return 0

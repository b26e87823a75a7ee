"""`failmode generate`: failure modes (modes.json) + class-only baseline -> plan.parquet -> rendered dataset shards."""

from __future__ import annotations

import argparse
from typing import Any

from failmode.commands._common import add_task_arguments, add_write_argument, log_renamed
from failmode.options import BUDGET_HELP, DEFAULT_WAIT_TIMEOUT_S, RenderOptions, budget_list, device_type
from failmode.typed import arg_type

_PLAN = "failmode.generation.plan:GenerationSettings"  # ranges of the flags (docs/settings.md)
_PRESET_BASELINE = "failmode.generation.presets:BaselineSection"

HELP = "render debug images for failure modes (plan, resumable shards, quality filter) into a dataset folder"
DESCRIPTION = (
    "Turn attributed failure modes (modes.json files from 'failmode attribute') and/or the class-only baseline into "
    "a sample plan (one row per image, seed recorded; written to OUT/generation/plan.parquet before rendering) and "
    "render it through the generator the settings name (a registered backend such as the demo's composite "
    "stand-in, else a diffusers text-to-image pipeline: a Hub id or a folder; resolved as 'failmode build' "
    "resolves it) into parquet + webdataset shards. Shards are independent and resumable: a restart skips done "
    "shards (--write incremental). Several tasks split the shards by RANK/WORLD_SIZE (accelerate launch, "
    "torchrun: the launcher's process group and its barriers) and --task-index/--num-tasks (job arrays: task 0 "
    "writes the plan, the others wait for it). The one task that sees every shard of this build done writes the "
    "card and manifest (under a lock)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode generate`."""
    p.add_argument("--modes", action="append", default=[], metavar="FILE[=CONFIG]",
                   help="a modes.json; its config is named after its source model unless =CONFIG is given")
    p.add_argument("--collective", metavar="FAMILY", help="also add one collective config merging all --modes files")
    p.add_argument("--baseline", action="store_true", help="add the class-only baseline ('a photo of a {class}')")
    p.add_argument("--baseline-images", type=arg_type(_PRESET_BASELINE, "images_per_class"), default=None,
                   help="baseline images per class (default k*images)")
    p.add_argument("--vocab", help="vocabulary (shipped dataset name or JSON path; default: the modes files')")
    p.add_argument("--kind", default=None, help="vocabulary kind (default: the modes files', else background)")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument("--name", help="dataset name (default: the folder name)")
    p.add_argument("--version", default="0.1.0", help="dataset version (semver)")
    p.add_argument("--preset", help="take generation/render/quality settings from this preset")
    g = p.add_argument_group("generation (override the preset or defaults)")
    g.add_argument("--generator", help="a registered generator (e.g. composite), else a diffusers model id or local "
                                       "pipeline folder (default SD 1.5)")
    g.add_argument("--revision")
    g.add_argument("--scheduler", help="dpmsolver++ (default), dpmsolver++-karras, ddim, pndm, euler, unipc")
    g.add_argument("--steps", type=arg_type(_PLAN, "steps"))
    g.add_argument("--guidance", type=arg_type(_PLAN, "guidance", float))
    g.add_argument("--size", type=arg_type(_PLAN, "size"))
    g.add_argument("--negative-prompt")
    g.add_argument("--images-per-mode", type=arg_type(_PLAN, "images_per_mode"))
    g.add_argument("-k", "--k", type=arg_type(_PLAN, "k"), help="failure modes per class")
    g.add_argument("--seed", type=int, dest="base_seed", help="base seed of the plan")
    g.add_argument("--shard-size", type=arg_type(_PLAN, "shard_size"))
    g.add_argument("--split")
    g.add_argument("--budget", type=budget_list, metavar="POLICY[,POLICY]", help=BUDGET_HELP)
    r = p.add_argument_group("rendering (override the preset's render section)")
    r.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 (default: this worker's GPU, else cpu)")
    RenderOptions.add_arguments(r)
    r.add_argument("--encode-workers", type=int, help="PNG encoding threads (default: CPUs - 2, 2..8)")
    q = p.add_argument_group("filters")
    q.add_argument("--quality-threshold", type=float, help="drop images whose CLIP class score is below this")
    q.add_argument("--no-quality", action="store_true", help="no CLIP scores at all")
    q.add_argument("--clip-model", help="open_clip model of the quality filter (default: the preset's)")
    q.add_argument("--clip-pretrained",
                   help="its open_clip tag or local checkpoint; none: seeded random weights (default: the preset's)")
    q.add_argument("--reserve", type=int, help="replacement seeds per image (quality filter, safety checker)")
    w = p.add_argument_group("tasks and resume")
    add_write_argument(w)
    add_task_arguments(w)
    w.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long a task waits for task 0's plan before giving up (default {DEFAULT_WAIT_TIMEOUT_S:g} s)")
    w.add_argument("--image-format", choices=["png", "jpeg"])
    w.add_argument("--plan-only", action="store_true", help="write the plan and stop")


GEN_KEYS = ("generator", "revision", "scheduler", "steps", "guidance", "size", "negative_prompt", "images_per_mode",
            "k", "base_seed", "shard_size", "split", "budget")


def _given(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    """Parse the arguments into a typed `GenerateJob` (the preset's sections and the overrides merged once) and run
    it (plan, render this task's shards, finalize)."""
    from failmode.generation.build import GenerateInputs, GenerateJob, generate, generate_sections
    from failmode.generation.run import RunOptions
    from failmode.generation.shards import task_slot
    from failmode.options import weights_or_none
    from failmode.runtime import configure_cpu_threads

    log_renamed(args)
    configure_cpu_threads()
    quality: dict[str, Any] = {}
    if args.quality_threshold is not None:
        quality.update(enabled=True, min_class_score=args.quality_threshold)
    if args.clip_model:
        quality["clip_model"] = args.clip_model
    if args.clip_pretrained:
        quality["pretrained"] = weights_or_none(args.clip_pretrained)  # none: random weights (null in a preset)
    if args.reserve is not None:
        quality["reserve"] = args.reserve
    inputs = GenerateInputs(modes=tuple((f, name) for f, _, name in (spec.partition("=") for spec in args.modes)),
                            vocab=args.vocab, kind=args.kind, collective=args.collective, baseline=args.baseline,
                            baseline_images=args.baseline_images)
    options = RunOptions(device=args.device, write=args.write, task=task_slot(args.task, args.tasks),
                         stage="prepare" if args.plan_only else "all", wait_timeout_s=args.wait_timeout,
                         encode_workers=args.encode_workers)
    settings, render, filters, image_format = generate_sections(args.preset, _given(args, GEN_KEYS),
                                                                RenderOptions.given(args), quality)
    generate(GenerateJob(inputs, args.out, settings, render, filters, version=args.version, name=args.name,
                         image_format=args.image_format or image_format, options=options, no_quality=args.no_quality))
    return 0

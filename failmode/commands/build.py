"""`failmode build <preset>`: mine -> attribute -> generate -> finalize for one target dataset."""

from __future__ import annotations

import argparse
import logging

HELP = "build a target debug dataset from a preset (mine, attribute, generate, finalize)"
DESCRIPTION = (
    "Build one of the target datasets described by a preset in builders/ (imagenet-bg-debug, cifar10-bg-debug, "
    "cifar100-bg-debug, cifar10-color-debug, cifar100-color-debug) or a preset JSON file: mine each model's "
    "failures, attribute them to contexts, render the per-model, collective and baseline configs, and write the "
    "card and manifest. Every stage is skipped when its output exists, so a rerun resumes. Under accelerate "
    "launch / torchrun, worker 0 mines and attributes and all workers share the rendering."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode build`."""
    p.add_argument("preset", nargs="?", help="preset name or JSON path (see --list)")
    p.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    p.add_argument("--out", help="dataset folder (default: ./<preset name>)")
    p.add_argument("--work", help="folder for mining/attribution outputs (default: <out>.work)")
    p.add_argument("--device")
    p.add_argument("--mode", choices=["incremental", "overwrite"], default="incremental")
    p.add_argument("--shard-index", type=int, help="this job's part (job arrays)")
    p.add_argument("--num-shards", type=int, help="number of parts of the job array")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"])
    p.add_argument("--no-quality", action="store_true", help="skip the CLIP quality filter")


def run(args: argparse.Namespace) -> int:
    """Load the preset and run the pipeline."""
    from failmode.errors import UsageError
    from failmode.generation.build import build
    from failmode.generation.presets import list_presets, load_preset
    from failmode.generation.shards import worker_slot
    from failmode.runtime import configure_cpu_threads

    if args.list:
        for name in list_presets():
            print(f"{name}\t{load_preset(name).pretty_name}")
        return 0
    if not args.preset:
        raise UsageError(f"name a preset (shipped: {', '.join(list_presets())})")
    configure_cpu_threads()
    preset = load_preset(args.preset)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("compile", args.compile)) if v is not None}
    done = build(preset, args.out or preset.name, work=args.work, quality=not args.no_quality, mode=args.mode,
                 worker=worker_slot(args.shard_index, args.num_shards), device=args.device,
                 render_overrides=overrides)
    if not done:
        logging.getLogger(__name__).info("this worker is done; the card is written when every shard is")
    return 0

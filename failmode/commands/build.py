"""`failmode build <preset>`: mine -> attribute -> generate -> finalize for one target dataset."""

from __future__ import annotations

import argparse
import logging

from failmode.commands._common import (
    add_labels_argument,
    add_task_arguments,
    add_write_argument,
    log_renamed,
    shipped_presets,
)
from failmode.options import BUDGET_HELP, BUILD_STAGES, DEFAULT_WAIT_TIMEOUT_S, RenderOptions, budget_list, device_type
from failmode.typed import arg_type

_PRESET_DATASET = "failmode.generation.presets:DatasetSection"

HELP = "build a target debug dataset from a preset (mine, attribute, generate, finalize)"
DESCRIPTION = (
    f"Build one of the target datasets described by a preset in builders/ ({', '.join(shipped_presets())}; "
    "fashion-scenes-debug is the offline demo's) or a preset JSON file: mine each model's "
    "failures, attribute them to contexts, render the per-model, collective and baseline configs, and write the "
    "card and manifest. A stage is skipped when its output exists and the settings that made it are unchanged, "
    "so a rerun resumes; changed settings redo the stages they affect. Options below override the preset and are "
    "recorded in the manifest. Under accelerate launch / torchrun the processes join the launcher's process group: "
    "rank 0 mines, attributes and plans while the others wait at a barrier, all render, rank 0 finalizes. Job arrays "
    "run --stage prepare once, then --stage render --task-index I --num-tasks N per task; the last renderer "
    "finalizes (or --stage finalize)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode build`."""
    p.add_argument("preset", nargs="?", help="preset name or JSON path (see --list)")
    p.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    p.add_argument("--out", help="dataset folder (default: ./<preset name>)")
    p.add_argument("--work", help="folder for mining/attribution outputs (default: <out>.work)")
    p.add_argument("--cache-dir", help="feature and embedding cache (default: $FAILMODE_CACHE_DIR or ~/.cache/failmode)")
    d = p.add_argument_group("dataset (override the preset's dataset section)")
    d.add_argument("--dataset", help="the classifiers' dataset: a known name, hf:ORG/NAME or a local folder")
    add_labels_argument(d)
    d.add_argument("--split", help="evaluation split holding the debug images")
    d.add_argument("--train-split", help="split a 'head: train' head is fitted on")
    d.add_argument("--train-per-class", type=arg_type(_PRESET_DATASET, "train_per_class", float),
                   help="split recipe: train images per class")
    d.add_argument("--debug-per-class", type=arg_type(_PRESET_DATASET, "debug_per_class", float),
                   help="split recipe: debug images per class (count, or fraction < 1)")
    m = p.add_argument_group("models and machine")
    m.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 (default: cuda if available)")
    m.add_argument("--generator", help="a registered generator (e.g. composite), else a diffusers Hub id or local "
                                       "save_pretrained folder (overrides generation.generator)")
    m.add_argument("--clip-model", help="open_clip name or JSON config for attribution and the quality filter")
    m.add_argument("--clip-pretrained", help="open_clip tag or local checkpoint for attribution and the quality filter; "
                                            "none: random weights (smoke tests)")
    m.add_argument("--no-quality", action="store_true", help="skip the CLIP quality filter")
    m.add_argument("--budget", type=budget_list, metavar="POLICY[,POLICY]", help=BUDGET_HELP)
    RenderOptions.add_arguments(p.add_argument_group("rendering (override the preset's render section)"))
    w = p.add_argument_group("tasks and resume")
    add_write_argument(w)
    add_task_arguments(w)
    w.add_argument("--stage", choices=BUILD_STAGES, default="all",
                   help="all (default: task 0 prepares, the others wait for it), prepare (mine, attribute, plan), "
                        "render (this task's shards; the last one finalizes) or finalize")
    w.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT_S, metavar="SECONDS",
                   help="how long a renderer waits for prepare (and a rank for rank 0) before giving up "
                        f"(default {DEFAULT_WAIT_TIMEOUT_S:g} s)")


def overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The preset keys the command line changes, by section."""
    from failmode.options import weights_or_none

    pick = lambda pairs: {k: v for k, v in pairs if v is not None}  # noqa: E731
    clip = pick((("clip_model", args.clip_model),))
    if args.clip_pretrained is not None:
        clip["pretrained"] = weights_or_none(args.clip_pretrained)  # none: random weights (null in a preset)
    sections = {
        "dataset": pick((("id", args.dataset), ("labels", args.labels), ("split", args.split), ("train_split", args.train_split),
                         ("train_per_class", args.train_per_class), ("debug_per_class", args.debug_per_class))),
        "generation": pick((("generator", args.generator), ("budget", args.budget))),
        "render": RenderOptions.given(args),
        "attribution": clip,
        "quality": clip,
    }
    return {k: v for k, v in sections.items() if v}


def run(args: argparse.Namespace) -> int:
    """Load the preset, apply the overrides and run the pipeline."""
    from failmode.errors import UsageError
    from failmode.generation.build import build
    from failmode.generation.presets import list_presets, load_preset
    from failmode.generation.run import RunOptions
    from failmode.generation.shards import task_slot
    from failmode.runtime import configure_cpu_threads

    log_renamed(args)
    if args.list:
        for name in list_presets():
            print(f"{name}\t{load_preset(name).pretty_name}")
        return 0
    if not args.preset:
        raise UsageError(f"name a preset (shipped: {', '.join(list_presets())})")
    configure_cpu_threads()
    preset = load_preset(args.preset).replace(**overrides(args))
    options = RunOptions(device=args.device, write=args.write, task=task_slot(args.task, args.tasks), stage=args.stage,
                         wait_timeout_s=args.wait_timeout)
    done = build(preset, args.out or preset.name, work=args.work, cache_dir=args.cache_dir, quality=not args.no_quality,
                 options=options)
    if not done:
        logging.getLogger(__name__).info("this task is done; the card is written when every shard is")
    return 0

"""`failmode slices`: minimal failure slices over attribute tags (after PRIME), checked on a second split."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "find minimal failure slices: tag combinations (up to s tags, >= m images) at least d less accurate"
DESCRIPTION = (
    "Tag every image of the find split with the vocabulary contexts whose attributor score passes a calibrated "
    "threshold, search every combination of up to s tags per class with at least m images and an accuracy at "
    "least d below the class's, keep the minimal ones, rank them, and check on a second split that their accuracy "
    "drops correlate. Writes slices.json, slices.parquet and report.md; with --generate-top, also a debug config "
    "rendered from the top slices' descriptions. Two modes. Real data: --mined DIR (a 'failmode mine' output) "
    "--vocabulary NAME_OR_JSON [--kinds background color]: every debug image is tagged with the CLIP attributor "
    "for each kind, correct / incorrect come from the recorded predictions, and the slices are checked on the "
    "run's test split (predicted by the mined model) or, when it cannot be predicted, on the other half of the "
    "debug split. Offline world: --world PRESET."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode slices`."""
    from failmode.commands._common import add_renamed
    from failmode.commands._discovery import add_real_arguments, add_render_arguments, add_world_arguments
    from failmode.options import PRECISION_CHOICES

    add_world_arguments(p)
    g = add_real_arguments(p)
    g.add_argument("--mined", metavar="DIR", help="a 'failmode mine' output folder (failures.parquet, splits.json, "
                                                 "predictions.npz): find slices on its debug split")
    add_render_arguments(g, type=_precision, choices=None, metavar="{auto,fp32,fp16,bf16}")
    add_renamed(g, "--render-precision", "--precision", dest="render_precision", choices=PRECISION_CHOICES)
    p.add_argument("--find", default="debug", help="world: split the slices are searched on (default debug)")
    p.add_argument("--check", help="world: split they are checked on, or none (default test); mined run: auto "
                                   "(default: test if predictable, else debug-half), test, debug-half, none")
    p.add_argument("-s", "--order", type=int, default=3, help="at most this many tags per slice (default 3)")
    p.add_argument("-m", "--min-size", type=int, default=25, help="at least this many images per slice (default 25)")
    p.add_argument("-d", "--min-drop", type=float, default=0.2, help="accuracy drop below the class's (default 0.2)")
    p.add_argument("--gain", type=float, default=0.1,
                   help="minimality: dropping any tag must raise accuracy by at least this much (default 0.1)")
    p.add_argument("--calibration", default="robust-z",
                   help="tag thresholds: robust-z (default), fixed, tag-precision (world only: needs known contexts)")
    p.add_argument("--z", type=float, default=3.0, help="robust-z: threshold = median + z * MAD-sigma (default 3)")
    p.add_argument("--tag-precision", type=float, default=0.9,
                   help="tag-precision: the tags' target precision on the train split's known contexts (default 0.9)")
    p.add_argument("--threshold", type=float, default=0.05, help="fixed: threshold on the centred score")
    p.add_argument("--min-check-size", type=int, default=5, help="check-split images a slice needs to be compared")
    p.add_argument("--generate-top", type=int, default=0, metavar="K",
                   help="render the top K slices into a debug config (out/debug-dataset); 0 = none")
    p.add_argument("--images-per-slice", type=int, default=10, help="images per slice in the debug config")
    p.add_argument("--out", required=True, help="output folder")


def _precision(text: str) -> str | float:
    """--precision: a render dtype; for one release a number is the tag-precision target it used to be."""
    from failmode.options import PRECISION_CHOICES

    if text in PRECISION_CHOICES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(PRECISION_CHOICES)}; "
                                         f"the tags' target precision is --tag-precision)") from None


def old_spellings(args: argparse.Namespace) -> None:
    """The old meanings kept for one release, as the new flags (each noted, to be logged): a number given to
    --precision is --tag-precision, --calibration precision is --calibration tag-precision."""
    from failmode.commands._common import note_renamed

    if isinstance(args.render_precision, float):
        note_renamed(args, f"--precision {args.render_precision:g}", f"--tag-precision {args.render_precision:g} "
                     "(--precision is the render dtype)")
        args.tag_precision, args.render_precision = args.render_precision, None
    if args.calibration == "precision":
        note_renamed(args, "--calibration precision", "--calibration tag-precision")
        args.calibration = "tag-precision"


def _calibration(args: argparse.Namespace, ws: Any) -> Any:
    """The tag calibration the options name (tag-precision: the world's train split with its known contexts)."""
    from failmode.discovery.slicing import Calibration
    from failmode.discovery.world import world_split
    from failmode.errors import UsageError

    options = {"robust-z": {"z": args.z}, "tag-precision": {"tag_precision": args.tag_precision},
               "fixed": {"value": args.threshold}}.get(args.calibration, {})
    if args.calibration != "tag-precision":
        return Calibration(args.calibration, options)
    if ws is None:
        raise UsageError("--calibration tag-precision needs images with known contexts: only with --world")
    train = world_split(ws, "train")
    return Calibration(args.calibration, options, train, None, [[c] for c in train.contexts()])


def _world(args: argparse.Namespace, params: Any) -> Any:
    """The slice run on the offline world."""
    from failmode.commands._discovery import setup_from_args
    from failmode.discovery.world import slice_world

    ws = setup_from_args(args)
    check = args.check or "test"
    return slice_world(ws, args.world, args.seed, find=args.find, check=None if check == "none" else check,
                       params=params, calibration=_calibration(args, ws), min_check_size=args.min_check_size)


def _mined(args: argparse.Namespace, params: Any) -> Any:
    """The slice run on a mined run (CLIP attributor; a diffusers generator with --generate-top)."""
    from failmode.commands._discovery import attributor_from_args, cache_dir, render_from_args
    from failmode.discovery.inputs import load_vocabularies
    from failmode.discovery.mined import load_mined_run, slice_mined_run
    from failmode.errors import UsageError
    from failmode.options import FeatureOptions

    if args.find != "debug":
        raise UsageError("--find is for --world; a mined run is searched on its debug split")
    if args.generate_top and not args.generator:
        raise UsageError("--generate-top on a mined run needs --generator (a diffusers model id or folder)")
    calibration = _calibration(args, None)
    run = load_mined_run(args.mined)
    vocabularies = load_vocabularies(args.vocabulary, args.kinds)
    return slice_mined_run(run, attributor_from_args(args, vocabularies[0].kind), vocabularies,
                           render=render_from_args(args) if args.generate_top else None, params=params,
                           calibration=calibration, check=args.check or "auto", seed=args.seed,
                           min_check_size=args.min_check_size,
                           extraction=FeatureOptions(device=args.device, cache_dir=str(cache_dir(args))))


def run(args: argparse.Namespace) -> int:
    """Run the slice search and write its outputs."""
    import logging

    import numpy as np

    from failmode.commands._common import log_renamed
    from failmode.commands._discovery import check_mode
    from failmode.discovery.slicing import write_slice_outputs
    from failmode.slices import SliceParams

    old_spellings(args)
    log_renamed(args)
    world = check_mode(args, "--mined")
    params = SliceParams(args.order, args.min_size, args.min_drop, args.gain).check()
    result = _world(args, params) if world else _mined(args, params)
    paths = write_slice_outputs(args.out, result, generate_top=args.generate_top,
                                images_per_slice=args.images_per_slice)
    g = result.report.generalisation
    logging.getLogger("failmode.slices").info(
        "%d slices -> %s (check-split drop correlation: Pearson %s)%s", len(result.report.slices), paths["report"],
        "n/a" if not g or np.isnan(g.get("pearson", np.nan)) else f"{g['pearson']:.3f}",
        f"; debug config: {paths['debug']}" if "debug" in paths else "")
    return 0

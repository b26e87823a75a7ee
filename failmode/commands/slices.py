"""`failmode slices`: minimal failure slices over attribute tags (after PRIME), checked on a second split."""

from __future__ import annotations

import argparse

HELP = "find minimal failure slices: tag combinations (up to s tags, >= m images) at least d less accurate"
DESCRIPTION = (
    "Tag every image of the find split with the vocabulary contexts whose attributor score passes a calibrated "
    "threshold, search every combination of up to s tags per class with at least m images and an accuracy at "
    "least d below the class's, keep the minimal ones, rank them, and check on a second split that their accuracy "
    "drops correlate. Writes slices.json, slices.parquet and report.md; with --generate-top, also a debug config "
    "rendered from the top slices' descriptions. Runs on the offline fashion-scenes world (--world)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode slices`."""
    from failmode.commands._discovery import add_world_arguments

    add_world_arguments(p)
    p.add_argument("--find", default="debug", help="split the slices are searched on (default debug)")
    p.add_argument("--check", default="test", help="split they are checked on ('none' to skip; default test)")
    p.add_argument("-s", "--order", type=int, default=3, help="at most this many tags per slice (default 3)")
    p.add_argument("-m", "--min-size", type=int, default=25, help="at least this many images per slice (default 25)")
    p.add_argument("-d", "--min-drop", type=float, default=0.2, help="accuracy drop below the class's (default 0.2)")
    p.add_argument("--gain", type=float, default=0.1,
                   help="minimality: dropping any tag must raise accuracy by at least this much (default 0.1)")
    p.add_argument("--calibration", default="robust-z", help="tag thresholds: robust-z (default), precision, fixed")
    p.add_argument("--z", type=float, default=3.0, help="robust-z: threshold = median + z * MAD-sigma (default 3)")
    p.add_argument("--precision", type=float, default=0.9,
                   help="precision: target precision on the train split's known contexts (default 0.9)")
    p.add_argument("--threshold", type=float, default=0.05, help="fixed: threshold on the centred score")
    p.add_argument("--min-check-size", type=int, default=5, help="check-split images a slice needs to be compared")
    p.add_argument("--generate-top", type=int, default=0, metavar="K",
                   help="render the top K slices into a debug config (out/debug-dataset); 0 = none")
    p.add_argument("--images-per-slice", type=int, default=10, help="images per slice in the debug config")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    """Run the slice search and write its outputs."""
    import logging

    import numpy as np

    from failmode.commands._discovery import setup_from_args, split_of
    from failmode.discovery.outputs import write_debug_config
    from failmode.discovery.slicing import Calibration, run_slices, slice_requests, write_slice_report
    from failmode.errors import FailmodeError
    from failmode.slices import SliceParams

    log = logging.getLogger("failmode.slices")
    ws = setup_from_args(args)
    options = {"robust-z": {"z": args.z}, "precision": {"precision": args.precision},
               "fixed": {"value": args.threshold}}.get(args.calibration, {})
    cal = Calibration(args.calibration, options)
    if args.calibration == "precision":
        train = split_of(ws, "train")
        cal = Calibration(args.calibration, options, train, None, [[c] for c in train.contexts()])
    params = SliceParams(args.order, args.min_size, args.min_drop, args.gain)
    check = None if args.check == "none" else (split_of(ws, args.check), None)
    report = run_slices(ws.attributor, ws.classifier, [ws.vocabulary], find=(split_of(ws, args.find), None),
                        check=check, params=params, calibration=cal, min_check_size=args.min_check_size)
    paths = write_slice_report(args.out, report)
    if args.generate_top:
        top = report.slices[: args.generate_top]
        kinds = {t: ws.vocabulary.kind for s in top for t in s.tags}
        size = ws.world.preset.image_size
        requests = slice_requests(top, per_slice=args.images_per_slice, base_seed=args.seed, size=size, kinds=kinds)
        if not requests:
            raise FailmodeError("no slices to render: lower -m or -d, or raise -s")
        root = write_debug_config(f"{args.out}/debug-dataset", name="fashion-scenes-slices", config="slices",
                                  requests=requests, generator=ws.generator, class_names=ws.world.class_names,
                                  source_model=ws.classifier.ident, description="top minimal failure slices")
        log.info("debug config: %s", root)
    g = report.generalisation
    log.info("%d slices -> %s (check-split drop correlation: Pearson %s)", len(report.slices), paths["report"],
             "n/a" if not g or np.isnan(g.get("pearson", np.nan)) else f"{g['pearson']:.3f}")
    return 0

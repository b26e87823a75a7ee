"""`failmode overlap`: intersection over union of several models' failure sets, as a matrix and a heatmap."""

from __future__ import annotations

import argparse

HELP = "compare failure sets of several models (IoU matrix CSV/JSON and a heatmap grouped by family)"
DESCRIPTION = (
    "Read failures.parquet of two or more models mined on the same debug set, compute the intersection over "
    "union of their misclassified images, and write overlap.csv, overlap.json (with family means) and overlap.png "
    "(models grouped by family: timm name prefix, or a --families mapping)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode overlap`."""
    p.add_argument("failures", nargs="*", help="failures.parquet files (or folders holding one)")
    p.add_argument("--runs", help="a folder of <model>/failures.parquet (every one found is compared)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--families", help='model name (or name prefix) -> family: inline JSON such as {"vit_": "ViT"} '
                   'or a JSON file')
    p.add_argument("--half", default="all", choices=("all", "seed", "heldout"), help="which failures to compare")


def run(args: argparse.Namespace) -> int:
    """Compare the failure sets."""
    from pathlib import Path

    from failmode.mining import failure_overlap
    from failmode.mining.overlap import load_families

    paths = [Path(p) for p in args.failures]
    if args.runs:
        paths += sorted(Path(args.runs).glob("*/failures.parquet"))
    print(failure_overlap(paths, out_dir=args.out, families=load_families(args.families), half=args.half))
    return 0

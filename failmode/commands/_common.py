"""Argument helpers shared by several commands (no heavy imports)."""

from __future__ import annotations

import argparse


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """--on-bad-image error|skip (failmode.data.sources.BadImages)."""
    p.add_argument("--on-bad-image", default="error", choices=("error", "skip"),
                   help="an image that cannot be decoded: error (default: stop, naming it) or skip (leave it out; "
                        "the outputs record how many and which)")


def add_labels_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--labels FILE: the labels file of a flat image folder (`failmode.data.spec.with_labels` attaches it)."""
    p.add_argument("--labels", metavar="FILE",
                   help="labels file of a flat image folder: a file,label CSV (class names or WordNet ids) or Kaggle's "
                        "LOC_val_solution.csv (default: labels.csv in the folder, or LOC_<split>_solution.csv beside it)")

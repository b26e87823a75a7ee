"""Argument helpers shared by several commands (no heavy imports)."""

from __future__ import annotations

import argparse


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """--on-bad-image error|skip (failmode.data.sources.BadImages)."""
    p.add_argument("--on-bad-image", default="error", choices=("error", "skip"),
                   help="an image that cannot be decoded: error (default: stop, naming it) or skip (leave it out; "
                        "the outputs record how many and which)")


def add_dataset_folder_argument(p: argparse.ArgumentParser) -> None:
    """DIR: a dataset folder written by `failmode build` / `failmode generate` (push, finalize)."""
    p.add_argument("dir", metavar="DIR", help="dataset folder written by 'failmode build' / 'failmode generate'")

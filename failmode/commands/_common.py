"""Argument helpers and names shared by several commands (no heavy imports)."""

from __future__ import annotations

import argparse
import re


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """--on-bad-image error|skip (failmode.data.sources.BadImages)."""
    p.add_argument("--on-bad-image", default="error", choices=("error", "skip"),
                   help="an image that cannot be decoded: error (default: stop, naming it) or skip (leave it out; "
                        "the outputs record how many and which)")


def add_mode_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--mode incremental|overwrite of the commands that write a dataset folder (build, generate)."""
    p.add_argument("--mode", choices=["incremental", "overwrite"], default="incremental",
                   help="incremental (default): keep the shards already written for this plan and render only the "
                        "missing ones (a rerun resumes); overwrite: delete the folder's previous build (shards, "
                        "manifest, card) and render everything again")


def shipped_presets() -> list[str]:
    """Names of the presets shipped in builders/ (read without importing the generation package)."""
    from pathlib import Path

    return sorted(f.stem for f in (Path(__file__).resolve().parents[1] / "builders").glob("*.json"))


def add_dataset_folder_argument(p: argparse.ArgumentParser) -> None:
    """DIR: a dataset folder written by `failmode build` / `failmode generate` (push, finalize)."""
    p.add_argument("dir", metavar="DIR", help="dataset folder written by 'failmode build' / 'failmode generate'")


def add_labels_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--labels FILE: the labels file of a flat image folder (`failmode.data.spec.with_labels` attaches it)."""
    p.add_argument("--labels", metavar="FILE",
                   help="labels file of a flat image folder: a file,label CSV (class names or WordNet ids) or Kaggle's "
                        "LOC_val_solution.csv (default: labels.csv in the folder, or LOC_<split>_solution.csv beside it)")


def folder_name(model: str) -> str:
    """A model name as the folder of its outputs under `--out` / `--runs` ('hf-hub:timm/x' -> 'hf-hub-timm-x')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")

"""`failmode finalize`: finish a dataset folder whose shards are all written (card, `_info.json`, grids, manifest)."""

from __future__ import annotations

import argparse
import logging

HELP = "finish a dataset folder whose shards are all written: rewrite its derived files and manifest"
DESCRIPTION = (
    "Rewrite every file finalize derives from the shards of DIR (_info.json per config, example grids, the dataset "
    "card) and, last, failmode.json, from the folder's manifest or from the draft an interrupted finalize left. "
    "Resumable: the same bytes as an uninterrupted build, whatever point a previous run stopped at."
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `failmode finalize`."""
    from failmode.commands._common import add_dataset_folder_argument

    add_dataset_folder_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Finalize DIR again and print its path."""
    from failmode.generation.run import finalize_folder

    manifest = finalize_folder(args.dir)
    log.info("finalized %s v%s: %d files listed", manifest.name, manifest.version, len(manifest.files))
    print(args.dir)
    return 0

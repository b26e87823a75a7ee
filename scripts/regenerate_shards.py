#!/usr/bin/env python
"""Regenerate named shards of a generated dataset (local folder) from its manifest + plan, and check the bytes.

    python scripts/regenerate_shards.py DATASET_DIR resnet50/train-00003 baseline/train-00000 --out regen/
    python scripts/regenerate_shards.py DATASET_DIR resnet50/train-00003 --generator /models/sd15  # local copy

Exit status 0 when every regenerated shard's parquet and tar equal the manifest's sha256, else 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from failmode.errors import FailmodeError
from failmode.generation.regenerate import regenerate_shards


def main(argv: list[str] | None = None) -> int:
    """Regenerate the named shards; exit 0 when all are byte-identical to the manifest."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset folder with failmode.json and generation/plan.parquet")
    p.add_argument("shards", nargs="+", help="CONFIG/SPLIT-NNNNN[-of-MMMMM]")
    p.add_argument("--out", required=True, help="folder the regenerated shards are written to")
    p.add_argument("--generator", help="local copy of the manifest's generator (default: its id)")
    p.add_argument("--device")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = regenerate_shards(args.dataset, args.shards, args.out, generator=args.generator, device=args.device)
    except FailmodeError as e:
        print(f"regenerate_shards: error: {e}", file=sys.stderr)
        return e.exit_code
    for name, ok in results.items():
        print(f"{name}\t{'identical' if ok else 'DIFFERS'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

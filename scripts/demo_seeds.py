#!/usr/bin/env python
"""Run `failmode demo` for several worlds and seeds (each into RUNS/<world>-<seed>, skipped when its results.json
exists) and print the tables of docs/demo-results.md: held-out / test / worst-context accuracy of the budget
policies and the controls with the acceptance margins of the evidence-weighted policy, per-seed rows with their
command, means, lambda sweep, images-per-mode sweep, uncommon-context test accuracy.

    python scripts/demo_seeds.py --runs runs --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from failmode.world.demo import DemoConfig, run_demo
from failmode.world.report import acceptance_table, lambda_table, policies_table, seeds_table

log = logging.getLogger("demo_seeds")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """Heldout accuracy of ours per images-per-mode value, one row per run."""
    ns = [p["images_per_mode"] for p in runs[0]["images_per_mode_sweep"]]
    lines = ["| world | seed | " + " | ".join(f"{n} per mode" for n in ns) + " |", "|---|---:|" + "---:|" * len(ns)]
    lines += [f"| {r['world']} | {r['seed']} | " + " | ".join(_pct(p["heldout_acc"]) for p in r["images_per_mode_sweep"])
              + " |" for r in runs]
    return "\n".join(lines) + "\n"


def uncommon_table(runs: list[dict[str, Any]]) -> str:
    """Test accuracy on the uncommon-context part of the test split, per method, one row per run."""
    names = ("before", "ours", "evidence-weighted", "random-context", "class-only")
    lines = ["| world | seed | " + " | ".join(names) + " | time (s) |", "|---|---:|" + "---:|" * (len(names) + 1)]
    lines += [f"| {r['world']} | {r['seed']} | "
              + " | ".join(_pct((r["methods"].get(n) or {}).get("test_uncommon_acc")) for n in names)
              + f" | {r['timings_s']['total']:.0f} |" for r in runs]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run what is missing, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs", help="folder of the demo outputs")
    ap.add_argument("--worlds", nargs="+", default=["concentrated", "diffuse", "mixed", "concentrated-gap",
                                                     "diffuse-gap", "mixed-gap"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--existing-only", action="store_true", help="tabulate the runs that have results.json; run none")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runs = []
    for world in args.worlds:
        for seed in args.seeds:
            out = Path(args.runs) / f"{world}-{seed}"
            if not (out / "results.json").is_file():
                if args.existing_only:
                    log.info("no results in %s: left out", out)
                    continue
                log.info("running %s", out)
                run_demo(out, DemoConfig.defaults(world=world, seed=seed))
            runs.append(json.loads((out / "results.json").read_text()))
    print(policies_table(runs))
    print(acceptance_table(runs))
    print(seeds_table(runs))
    print(lambda_table(runs))
    print(sweep_table(runs))
    print(uncommon_table(runs))


if __name__ == "__main__":
    main()

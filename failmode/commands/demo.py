"""`failmode demo`: the whole method on the offline fashion-scenes world, on a CPU, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from failmode.options import budget_list
from failmode.typed import arg_type

_PLAN = "failmode.generation.plan:GenerationSettings"  # ranges of the flags (docs/settings.md)

HELP = "run the whole method end to end on the offline fashion-scenes world (CPU, no downloads)"
DESCRIPTION = (
    "Build the fashion-scenes world (real Fashion-MNIST objects on real scene photos), train a linear head on a "
    "frozen EfficientNet-Lite0, mine its failures, attribute them to contexts, render debug images, write the "
    "dataset (parquet + webdataset + card) and retrain the head with lambda. Writes OUT/results.json, "
    "OUT/report.md (tables, per-class failure modes, plots) and OUT/dataset/. Image generation and attribution use "
    "stand-ins (composite images; exemplar features or pixel descriptors) named as such in every output; "
    "results.json records gap_probe_acc, how well a linear probe on the frozen features tells the generated "
    "images from the world's photos. Stage outputs are cached "
    "under OUT, so a rerun is fast."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode demo`."""
    p.add_argument("--out", required=True, help="output folder")
    # the shipped world presets, listed without importing the world package (parsing stays light)
    presets = sorted(f.stem for f in (Path(__file__).resolve().parents[1] / "world" / "data" / "presets").glob("*.json"))
    p.add_argument("--world",
                   help=f"a shipped world ({', '.join(presets)}; default concentrated: failures concentrate in a few "
                        "contexts per class; diffuse: they spread; mixed: half the classes each way; *-gap: the "
                        "generator's images differ visibly from the world's photos) or a world JSON file "
                        "(failmode-world/1, validated as the shipped ones are)")
    p.add_argument("--attributor",
                   help="attribution stand-in: exemplar (the classifier's frozen features) or pixels (pixel "
                        "descriptors, no classifier weights); default: the world's")
    p.add_argument("--seed", type=int, help="seed of the world, the halves and generation (default 0)")
    p.add_argument("--images-per-mode", type=arg_type(_PLAN, "images_per_mode"),
                   help="debug images per failure mode (default 20)")
    p.add_argument("--k", type=arg_type(_PLAN, "k"), help="failure modes per class (default 3)")
    p.add_argument("--lam", type=float, help="weight of the debug loss when retraining the head (default 0.5)")
    p.add_argument("--budget", type=budget_list, metavar="top-k[,POLICY]",
                   help="budget policies of the model configs, top-k first (default top-k,evidence-weighted: the "
                        "model's top-k config and its sibling <model>-evidence-weighted, both evaluated)")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the headline numbers."""
    from failmode.runtime import configure_cpu_threads
    from failmode.world.demo import DemoConfig, run_demo

    configure_cpu_threads()
    config = DemoConfig.defaults(world=args.world, seed=args.seed, images_per_mode=args.images_per_mode, k=args.k,
                                 lam=args.lam, attributor=args.attributor, budget=args.budget)
    r = run_demo(args.out, config)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    weighted = r.get("heldout_acc_evidence_weighted")
    print(f"world {r['world']} seed {r['seed']}: heldout failures ours (top-k) {pct(r['heldout_acc_ours'])}, "
          + (f"evidence-weighted {pct(weighted)}, " if weighted is not None else "") +
          f"random-context {pct(r['heldout_acc_random_context'])}, class-only {pct(r['heldout_acc_class_only'])}; "
          f"test {pct(r['test_acc_before'])} -> {pct(r['test_acc_after'])}; "
          f"attribution top-1 {pct(r['attribution_top1'])} ({r['attributor']}); "
          f"real-vs-generated probe {pct(r['gap_probe_acc'])}")
    print(f"report: {args.out}/report.md")
    return 0

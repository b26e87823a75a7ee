"""`failmode attribute`: CLIP zero-shot attribution of seed failures to vocabulary contexts; top-k modes per class."""

from __future__ import annotations

import argparse

from failmode.options import AttributionOptions, FeatureOptions
from failmode.typed import arg_type

HELP = "attribute seed failures to vocabulary contexts (CLIP zero-shot); write modes.json and a failure report"
DESCRIPTION = (
    "Score every seed failure of failures.parquet against its class's contexts (prompt templates are data, "
    "ensemble-averaged), pick the best context per failure and the k most frequent per class. Writes "
    "attributions.parquet, modes.json, report.md and failure_dataset/ (the failure records as a metadata-only "
    "dataset config) beside the failures, or in --out. Several tables share one loaded attributor and its "
    "embedding cache."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode attribute`."""
    p.add_argument("failures", nargs="*", help="failures.parquet files (or folders holding one)")
    p.add_argument("--runs", help="with --models: the folder holding one <model>/failures.parquet per model")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models under --runs to attribute")
    p.add_argument("--vocabulary", required=True, help="a shipped vocabulary's dataset name or a vocabulary JSON")
    p.add_argument("--kind", default="background", help="vocabulary kind: background, color (default background)")
    p.add_argument("-k", type=arg_type("failmode.generation.plan:GenerationSettings", "k"), default=3,
                   help="failure modes (contexts) kept per class (default 3)")
    p.add_argument("--out", help="output folder (only with one failures table; default: beside the table)")
    AttributionOptions.add_arguments(p)
    p.add_argument("--dataset", help="read images from here instead of the dataset the failures were mined on")
    p.add_argument("--split", help="split of --dataset")
    p.add_argument("--include-heldout", action="store_true",
                   help="also attribute heldout failures (not counted in modes)")
    FeatureOptions.add_arguments(p.add_argument_group("image embeddings"), batch_default="256")


def tables(args: argparse.Namespace) -> list[str]:
    """The failures tables named on the command line."""
    from pathlib import Path

    from failmode.dataset.layout import config_slug
    from failmode.errors import UsageError

    if bool(args.runs) != bool(args.models):
        raise UsageError("--runs and --models go together")
    paths = list(args.failures) + [str(Path(args.runs) / config_slug(m)) for m in args.models or []]
    if not paths:
        raise UsageError("name failures tables, or --runs DIR --models M1 M2 ...")
    if args.out and len(paths) > 1:
        raise UsageError("--out takes one failures table; several are written beside their tables")
    return paths


def run(args: argparse.Namespace) -> int:
    """Attribute each failures table with one shared attributor."""
    from failmode.mining import attribute_failures, make_attributor
    from failmode.mining.attribution import check_attribution_inputs

    paths = tables(args)
    for path in paths:  # every input checked before the attributor (CLIP) loads
        check_attribution_inputs(path, args.vocabulary, args.kind, args.k, dataset=args.dataset, split=args.split)
    features = FeatureOptions.from_args(args)
    attributor = make_attributor(AttributionOptions.from_args(args), args.kind, features=features)
    halves = ("seed", "heldout") if args.include_heldout else ("seed",)
    for path in paths:
        modes = attribute_failures(path, vocabulary=args.vocabulary, kind=args.kind, attributor=attributor, k=args.k,
                                   out_dir=args.out, features=features, dataset=args.dataset,
                                   split=args.split, halves=halves)
        print(modes)
    return 0

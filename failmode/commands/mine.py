"""`failmode mine`: a classifier's failures on the debug split, split into seed / heldout halves."""

from __future__ import annotations

import argparse

HELP = "mine a classifier's failures on the debug split (seed / heldout halves)"
DESCRIPTION = (
    "Predict the debug split of a dataset with a timm model (its own classifier, or a linear head for datasets "
    "it was not trained on), and write failures.parquet (misclassified images, seed/heldout halves), splits.json, "
    "predictions.npz and mining.json. Features are cached: reruns and other stages do no forward pass again. "
    "With --models, each model goes to OUT/<config name>/ (its name with each run of characters other than letters, "
    "digits, _ and - made one -, as build names its configs) and all share one cache."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode mine`."""
    from failmode.commands._common import add_bad_image_argument, add_labels_argument
    from failmode.options import FeatureOptions, ModelSpec, SplitSpec

    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a timm model name, e.g. resnet50")
    which.add_argument("--models", nargs="+", metavar="MODEL", help="several timm models (OUT/<model>/ each)")
    p.add_argument("--dataset", required=True,
                   help="imagenet-1k, cifar10, cifar100, hf:ORG/NAME, a local folder or wds:DIR")
    add_labels_argument(p)
    p.add_argument("--out", required=True, help="output folder (with --models: the parent of one folder per model)")
    ModelSpec.add_arguments(p)
    SplitSpec.add_arguments(p)
    FeatureOptions.add_arguments(p)
    add_bad_image_argument(p)


def run(args: argparse.Namespace) -> int:
    """Mine each model in turn."""
    from pathlib import Path

    from failmode.data.spec import with_labels
    from failmode.dataset.layout import config_slug
    from failmode.mining import mine_failures
    from failmode.models.classifier import known_model
    from failmode.options import FeatureOptions, ModelSpec, SplitSpec

    models = [args.model] if args.model else args.models
    for model in models:  # every name checked before the first model is mined
        known_model(model)
    for model in models:
        out = Path(args.out) if args.model else Path(args.out) / config_slug(model)
        path = mine_failures(ModelSpec.from_args(args, model),
                             SplitSpec.from_args(args, with_labels(args.dataset, args.labels)), out_dir=out,
                             extraction=FeatureOptions.from_args(args), on_bad_image=args.on_bad_image)
        print(path)
    return 0

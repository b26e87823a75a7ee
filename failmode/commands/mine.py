"""`failmode mine`: a classifier's failures on the debug split, split into seed / heldout halves."""

from __future__ import annotations

import argparse

HELP = "mine a classifier's failures on the debug split (seed / heldout halves)"
DESCRIPTION = (
    "Predict the debug split of a dataset with a timm model (its own classifier, or a linear head for datasets "
    "it was not trained on), and write failures.parquet (misclassified images, seed/heldout halves), splits.json, "
    "predictions.npz and mining.json. Features are cached: reruns and other stages do no forward pass again. "
    "With --models, each model goes to OUT/<model>/ and all share one cache."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode mine`."""
    from failmode.commands._common import add_bad_image_argument, add_labels_argument
    from failmode.options import FeatureOptions

    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a timm model name, e.g. resnet50")
    which.add_argument("--models", nargs="+", metavar="MODEL", help="several timm models (OUT/<model>/ each)")
    p.add_argument("--dataset", required=True,
                   help="imagenet-1k, cifar10, cifar100, hf:ORG/NAME, a local folder or wds:DIR")
    add_labels_argument(p)
    p.add_argument("--out", required=True, help="output folder (with --models: the parent of one folder per model)")
    p.add_argument("--weights", default="timm",
                   help="timm (pretrained), none, a state-dict file or an offline weight provider")
    p.add_argument("--head", help="a linear head file (.npz/.safetensors/.pt with weight, bias) or 'train' to fit "
                                  "one on the train split; needed when the model's classes are not the dataset's")
    p.add_argument("--split", help="split holding the debug images (default: the dataset's evaluation split)")
    p.add_argument("--train-split", help="split the head is trained on with --head train (default: train)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the debug/test split and the halves (default 0)")
    p.add_argument("--train-per-class", type=float, help="override the recipe: train images per class")
    p.add_argument("--debug-per-class", type=float,
                   help="override the recipe: debug images per class (a count, or a fraction < 1)")
    p.add_argument("--image-size", type=int, help="override the model's input size")
    p.add_argument("--crop-pct", type=float, help="override the model's centre-crop fraction (1.0: no border crop)")
    FeatureOptions.add_arguments(p)
    add_bad_image_argument(p)


def run(args: argparse.Namespace) -> int:
    """Mine each model in turn."""
    from pathlib import Path

    from failmode.commands._common import folder_name
    from failmode.data.spec import with_labels
    from failmode.mining import mine_failures
    from failmode.models.classifier import known_model
    from failmode.options import FeatureOptions

    models = [args.model] if args.model else args.models
    for model in models:  # every name checked before the first model is mined
        known_model(model)
    for model in models:
        out = Path(args.out) if args.model else Path(args.out) / folder_name(model)
        path = mine_failures(
            model, with_labels(args.dataset, args.labels), out_dir=out, weights=args.weights,
            split_seed=args.split_seed,
            extraction=FeatureOptions.from_args(args), head=args.head, split=args.split,
            train_split=args.train_split, train_per_class=args.train_per_class,
            debug_per_class=args.debug_per_class, image_size=args.image_size, crop_pct=args.crop_pct,
            on_bad_image=args.on_bad_image)
        print(path)
    return 0

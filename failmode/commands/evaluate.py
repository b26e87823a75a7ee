"""`failmode evaluate`: retrain the linear head of a frozen timm model on a debug dataset, report what it fixed."""

from __future__ import annotations

import argparse
import logging

from failmode.typed import arg_type

HELP = "retrain a model's linear head with a debug dataset and report accuracy before and after"
DESCRIPTION = (
    "Extract frozen features (cached on disk) of the dataset's train subset, test split and the model's seed/heldout "
    "failures on the debug split, and of the debug images; retrain the linear head with mean CE(original) + "
    "lambda * mean CE(debug) by full-batch SGD; report test/seed/heldout accuracy of the original head, the head "
    "retrained without debug data, and with the model's config and the class-only baseline config. Optional lambda "
    "and k sweeps (plots) and collective debugging of a model family. Results are appended to OUT/results.jsonl, one "
    "line per run; a run already there is skipped (--force recomputes it); OUT/tables.md is the accuracy table."
)

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `failmode evaluate`."""
    from failmode.commands._common import add_bad_image_argument, add_labels_argument
    from failmode.options import FeatureOptions, ModelSpec, SplitSpec

    g = parser.add_argument_group("model and data")
    g.add_argument("--model", action="append", required=True, metavar="NAME",
                   help="timm model name (repeat for a family: collective debugging, or several models in one run)")
    ModelSpec.add_arguments(g)
    g.add_argument("--dataset", default="imagenet-1k", help="the model's dataset: imagenet-1k, cifar10, cifar100, "
                   "hf:ORG/NAME or a local folder (default imagenet-1k)")
    add_labels_argument(g)
    g.add_argument("--debug-data", required=True, metavar="SPEC",
                   help="debug dataset: Hub id (e.g. failmode/imagenet-bg-debug), local folder, or wds:DIR")
    g.add_argument("--config", help="debug config of the model (default: the model name as a config slug)")
    g.add_argument("--baseline-config", default="baseline",
                   help="class-only baseline config to compare against ('none' to skip; default baseline)")
    g.add_argument("--random-config", default="random-context",
                   help="random-context control config to compare against ('none' to skip; default random-context)")
    g.add_argument("--revision", help="debug dataset revision on the Hub (e.g. v1.0.0); recorded in the results")
    g.add_argument("--debug-split", default="train", help="split of the debug dataset (default train)")
    g.add_argument("--failures", metavar="PARQUET", help="failures.parquet from 'failmode mine' (one model only); "
                   "default: recompute the failures from the model's predictions with the same seed/heldout rule")
    SplitSpec.add_arguments(g, "--eval-split")
    g.add_argument("--group-column", help="column of the evaluation split naming each image's group (e.g. context): "
                   "per-group and worst-group test accuracy")
    g.add_argument("--common-column", help="boolean column of the evaluation split: the image's group is its class's "
                   "common one (test accuracy on common vs uncommon groups)")
    h = parser.add_argument_group("head training (defaults from the paper)")
    h.add_argument("--lam", type=float, default=0.5, help="weight of the debug loss (default 0.5)")
    h.add_argument("--lr", type=float, default=0.2, help="learning rate (default 0.2)")
    h.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    h.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    h.add_argument("--epochs", type=arg_type("failmode.head:HeadParams", "epochs"), default=1000,
                   help="full-batch epochs, 0..1e6 (default 1000)")
    h.add_argument("--seed", type=int, default=0, help="seed of a random head init (default 0)")
    h.add_argument("--init", choices=("model", "random"), default="model",
                   help="start from the model's own head (default) or a random init")
    h.add_argument("--head-precision", choices=("auto", "fp32", "tf32", "bf16"), default="auto",
                   help="head matmul precision (auto: tf32 on CUDA, fp32 on CPU)")
    s = parser.add_argument_group("sweeps and collective debugging")
    s.add_argument("--lambda-sweep", type=_floats, default=[], metavar="L1,L2,...", help="lambdas to sweep (plot)")
    s.add_argument("--k-sweep", type=_ints, default=[], metavar="K1,K2,...",
                   help="top-k failure modes per class to sweep (plot)")
    s.add_argument("--images-per-mode-sweep", type=_ints, default=[], metavar="N1,N2,...",
                   help="first N images of each failure mode of the model's config to sweep (plot)")
    s.add_argument("--collective", metavar="CONFIG", help="the family's pooled config (e.g. collective-resnets): "
                   "debug every --model with it (type 1) and with one model's config (type 2)")
    s.add_argument("--type2-model", help="model whose config debugs the family in type 2 (default: the first)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", default="runs/evaluate", help="output folder (default runs/evaluate)")
    r.add_argument("--force", action="store_true", help="recompute runs already in OUT/results.jsonl (their lines "
                   "are replaced); by default they are skipped, so a rerun adds no line")
    FeatureOptions.add_arguments(r)
    add_bad_image_argument(r)


def run(args: argparse.Namespace) -> int:
    """Build the specs and head parameters from the arguments and run the evaluation suite."""

    from failmode.data.spec import with_labels
    from failmode.errors import UsageError
    from failmode.evaluate.pipeline import DebugSpec, EvalSpec, recorded_splits
    from failmode.evaluate.suite import run_suite
    from failmode.head import HeadParams
    from failmode.options import FeatureOptions, ModelSpec, SplitSpec

    if args.failures and len(args.model) > 1:
        raise UsageError("--failures belongs to one model; with several --model the failures are recomputed")
    if args.config and len(args.model) > 1:
        raise UsageError("--config names one model's config; with several --model each uses its own")
    baseline = None if args.baseline_config == "none" else args.baseline_config
    random_config = None if args.random_config == "none" else args.random_config
    data = SplitSpec.from_args(args, with_labels(args.dataset, args.labels))
    debug = DebugSpec(args.debug_data, args.config, baseline, random_config, revision=args.revision,
                      debug_split=args.debug_split, failures=args.failures, group_column=args.group_column,
                      common_column=args.common_column)
    specs = [recorded_splits(EvalSpec(ModelSpec.from_args(args, m), data, debug, FeatureOptions.from_args(args),
                                      args.on_bad_image)) for m in args.model]
    params = HeadParams(lam=args.lam, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                        epochs=args.epochs, seed=args.seed, init=args.init, precision=args.head_precision)
    written = run_suite(specs, params, args.out, lambdas=args.lambda_sweep, ks=args.k_sweep,
                        images_per_mode=args.images_per_mode_sweep,
                        collective=args.collective, type2_model=args.type2_model, force=args.force)
    log.info("%d new results in %s/results.jsonl; table: %s/tables.md", len(written), args.out, args.out)
    return 0

"""`failmode discover`: generate images over a broad prompt set, cluster the failures, confirm them as bugs."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "generate, then discover: cluster failures on generated images, describe and confirm them as bugs"
DESCRIPTION = (
    "For each class, generate images over the plain class prompt and every vocabulary context, classify them, "
    "cluster the misclassified ones in the attributor's embedding space, describe each cluster by its best-matching "
    "vocabulary phrase, regenerate from each description and confirm it as a bug when the lower 95 % Wilson bound "
    "of its failure rate exceeds the upper bound of the class's base rate. Writes bugs.json, bugs.parquet, "
    "report.md and grids/*.png; with --debug-images, also a debug config from the confirmed bugs. Two modes. "
    "Real models: --model TIMM_NAME [--weights timm|FILE|PROVIDER] [--head FILE] --dataset-classes "
    "imagenet-1k|cifar10|cifar100|FILE --vocabulary NAME_OR_JSON --generator ID_OR_DIR: the timm model's own "
    "logits classify Stable Diffusion images (or another diffusers pipeline), the CLIP attributor clusters and "
    "describes them. Offline world: --world PRESET."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode discover`."""
    from failmode.commands._discovery import add_real_arguments, add_render_arguments, add_world_arguments

    add_world_arguments(p)
    g = add_real_arguments(p)
    g.add_argument("--model", help="timm model name: the classifier under test")
    g.add_argument("--weights", default="timm",
                   help="timm (pretrained), none, a state-dict file or an offline weight provider (default timm)")
    g.add_argument("--head", help="a linear head file on the model's features, when its own classes are not these")
    g.add_argument("--dataset-classes", metavar="NAME_OR_FILE",
                   help="the classes the model predicts: imagenet-1k, cifar10, cifar100, or a JSON list / text file "
                        "(default: the vocabulary's dataset)")
    add_render_arguments(g)
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="only these classes, by name or label number (default: all the vocabulary covers)")
    p.add_argument("--images-per-prompt", type=int, default=8, help="broad-set images per prompt (default 8)")
    p.add_argument("--confirm-images", type=int, default=32, help="fresh images per description (default 32)")
    p.add_argument("--max-clusters", type=int, default=6, help="clusters per class at most (default 6)")
    p.add_argument("--min-cluster-size", type=int, default=3, help="failures per cluster at least (default 3)")
    p.add_argument("--base", default="plain", choices=("plain", "pooled"),
                   help="base failure rate: fresh plain-prompt images (default) or the whole broad set")
    p.add_argument("--debug-images", type=int, default=0, metavar="N",
                   help="render N images per confirmed bug into a debug config (out/debug-dataset); 0 = none")
    p.add_argument("--out", required=True, help="output folder")


def _params(args: argparse.Namespace, **kw: Any) -> Any:
    from failmode.discovery.discover import DiscoverParams

    return DiscoverParams(images_per_prompt=args.images_per_prompt, max_clusters=args.max_clusters,
                          min_cluster_size=args.min_cluster_size, confirm_images=args.confirm_images,
                          base=args.base, seed=args.seed, **kw).check()


def _world_setup(args: argparse.Namespace) -> Any:
    """Backends, classes and parameters of a world run."""
    from failmode.commands._discovery import setup_from_args
    from failmode.discovery.discover import DiscoverSetup
    from failmode.discovery.outputs import world_render
    from failmode.errors import UsageError
    from failmode.vocab.classnames import class_names

    _params(args)  # parameters and classes are checked before the world and its backends load
    names = class_names("fashion-scenes")
    unknown = sorted(set(args.classes or []) - set(names))
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)} (known: {', '.join(names)})")
    ws = setup_from_args(args)
    return DiscoverSetup(ws.generator, ws.classifier, ws.attributor, [ws.vocabulary], names, names,
                         [names.index(c) for c in args.classes] if args.classes else None,
                         _params(args, size=ws.world.preset.image_size), "fashion-scenes-discovered",
                         world_render(ws, args.world, args.seed))


def _real_setup(args: argparse.Namespace) -> Any:
    """Backends, classes and parameters of a run on a timm model with a diffusers generator and CLIP."""
    from pathlib import Path

    from failmode.commands._discovery import attributor_from_args, cache_dir, render_from_args
    from failmode.discovery.classify import TimmClassifier
    from failmode.discovery.discover import DiscoverSetup
    from failmode.discovery.inputs import check_class_names, dataset_classes, load_vocabularies, pick_labels
    from failmode.options import FeatureOptions, ModelSpec

    params = _params(args, size=args.size, steps=args.steps, guidance=args.guidance)
    vocabularies = load_vocabularies(args.vocabulary, args.kinds)
    spec = args.dataset_classes or vocabularies[0].dataset
    names, label_names = dataset_classes(spec)
    check_class_names(vocabularies, names)
    labels = pick_labels(args.classes, names, vocabularies)
    classifier = TimmClassifier(ModelSpec(args.model, args.weights, args.head, args.image_size), classes=names,
                                where=spec, extraction=FeatureOptions(device=args.device, cache_dir=str(cache_dir(args))))
    attributor = attributor_from_args(args, vocabularies[0].kind)
    render = render_from_args(args)
    return DiscoverSetup(render.make_generator(), classifier, attributor, vocabularies, names, label_names, labels,
                         params, f"{Path(spec).stem}-discovered", render)


def run(args: argparse.Namespace) -> int:
    """Run generate-then-discover and write its outputs."""
    import logging

    from failmode.commands._common import log_renamed
    from failmode.commands._discovery import check_mode
    from failmode.discovery.discover import discover_run

    log_renamed(args)
    setup = _world_setup(args) if check_mode(args, "--model") else _real_setup(args)
    report, paths = discover_run(setup, args.out, debug_images=args.debug_images)
    logging.getLogger("failmode.discover").info("%d confirmed bugs of %d candidates -> %s", len(report.confirmed),
                                                len(report.bugs), paths["report"])
    return 0

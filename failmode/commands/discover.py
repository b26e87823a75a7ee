"""`failmode discover`: generate images over a broad prompt set, cluster the failures, confirm them as bugs."""

from __future__ import annotations

import argparse

HELP = "generate, then discover: cluster failures on generated images, describe and confirm them as bugs"
DESCRIPTION = (
    "For each class, generate images over the plain class prompt and every vocabulary context, classify them, "
    "cluster the misclassified ones in the attributor's embedding space, describe each cluster by its best-matching "
    "vocabulary phrase, regenerate from each description and confirm it as a bug when the lower 95 %% Wilson bound "
    "of its failure rate exceeds the upper bound of the class's base rate. Writes bugs.json, bugs.parquet, "
    "report.md and grids/*.png; with --debug-images, also a debug config from the confirmed bugs. Runs on the "
    "offline fashion-scenes world (--world)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `failmode discover`."""
    from failmode.commands._discovery import add_world_arguments

    add_world_arguments(p)
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="only these classes (default: all)")
    p.add_argument("--images-per-prompt", type=int, default=8, help="broad-set images per prompt (default 8)")
    p.add_argument("--confirm-images", type=int, default=32, help="fresh images per description (default 32)")
    p.add_argument("--max-clusters", type=int, default=6, help="clusters per class at most (default 6)")
    p.add_argument("--min-cluster-size", type=int, default=3, help="failures per cluster at least (default 3)")
    p.add_argument("--base", default="plain", choices=("plain", "pooled"),
                   help="base failure rate: fresh plain-prompt images (default) or the whole broad set")
    p.add_argument("--debug-images", type=int, default=0, metavar="N",
                   help="render N images per confirmed bug into a debug config (out/debug-dataset); 0 = none")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    """Run generate-then-discover and write its outputs."""
    import logging

    from failmode.commands._discovery import setup_from_args
    from failmode.discovery.discover import DiscoverParams, bug_requests, discover, write_bug_report
    from failmode.discovery.outputs import write_debug_config
    from failmode.errors import FailmodeError, UsageError

    log = logging.getLogger("failmode.discover")
    ws = setup_from_args(args)
    names = ws.world.class_names
    unknown = sorted(set(args.classes or []) - set(names))
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)} (known: {', '.join(names)})")
    labels = [names.index(c) for c in args.classes] if args.classes else None
    params = DiscoverParams(images_per_prompt=args.images_per_prompt, max_clusters=args.max_clusters,
                            min_cluster_size=args.min_cluster_size, confirm_images=args.confirm_images,
                            base=args.base, size=ws.world.preset.image_size, seed=args.seed)
    report = discover(ws.generator, ws.classifier, ws.attributor, [ws.vocabulary], names, labels=labels, params=params)
    paths = write_bug_report(args.out, report)
    if args.debug_images:
        if not report.confirmed:
            raise FailmodeError("no confirmed bugs to render into a debug config")
        requests = bug_requests(report.confirmed, per_bug=args.debug_images, params=params)
        write_debug_config(f"{args.out}/debug-dataset", name="fashion-scenes-discovered", config="discovered",
                           requests=requests, generator=ws.generator, class_names=names,
                           source_model=ws.classifier.ident, description="confirmed bugs of generate-then-discover")
    log.info("%d confirmed bugs of %d candidates -> %s", len(report.confirmed), len(report.bugs), paths["report"])
    return 0

"""Options and set-up shared by `failmode slices` and `failmode discover` (not a subcommand itself)."""

from __future__ import annotations

import argparse
from typing import Any

from failmode.errors import UsageError


def add_world_arguments(p: argparse.ArgumentParser) -> None:
    """--world and the options that size it."""
    p.add_argument("--world", required=True, metavar="PRESET",
                   help="run on the offline fashion-scenes world with this preset (concentrated, diffuse, or a JSON)")
    p.add_argument("--seed", type=int, default=0, help="world and generation seed (default 0)")
    p.add_argument("--per-class", default="", metavar="SPLIT=N,...",
                   help="override images per class, e.g. train=100,debug=80,test=80")
    p.add_argument("--image-size", type=int, help="override the world's image size")
    p.add_argument("--exemplars", type=int, default=16, help="exemplar crops per context for the attributor")
    p.add_argument("--cache-dir", help="feature cache folder (default: none)")


def parse_per_class(text: str) -> dict[str, int]:
    """'train=100,debug=80' -> {'train': 100, 'debug': 80}."""
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise UsageError(f"--per-class wants SPLIT=N[,SPLIT=N...], not {item!r}")
        out[key.strip()] = int(value)
    return out


def setup_from_args(args: argparse.Namespace) -> Any:
    """The world set-up the options describe (classifier trained, stand-in backends made)."""
    from failmode.discovery.world import setup_world

    return setup_world(args.world, args.seed, per_class=parse_per_class(args.per_class) or None,
                       image_size=args.image_size, cache_dir=args.cache_dir, n_exemplars=args.exemplars)


def split_of(ws: Any, name: str) -> Any:
    """A split of the world by name, or a UsageError listing the splits."""
    if name not in ws.world.splits:
        raise UsageError(f"unknown split {name!r} (known: {', '.join(ws.world.splits)})")
    return ws.world.splits[name]

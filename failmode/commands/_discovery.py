"""Options and set-up shared by `failmode slices` and `failmode discover` (not a subcommand itself).

Both commands run in one of two modes: on the offline fashion-scenes world (--world PRESET: classifier, stand-in
attributor and generator, vocabulary all come from the world) or on real data (a mined run for slices, a timm
model for discover; a vocabulary, the CLIP attributor and a diffusers generator named on the command line).
"""

from __future__ import annotations

import argparse
from typing import Any

from failmode.errors import UsageError
from failmode.options import AttributionOptions, RenderOptions, device_type
from failmode.typed import arg_type

_PLAN = "failmode.generation.plan:GenerationSettings"  # ranges of the flags (docs/settings.md)


def add_world_arguments(p: argparse.ArgumentParser) -> None:
    """--world and the options that size it."""
    w = p.add_argument_group("offline world mode")
    w.add_argument("--world", metavar="PRESET",
                   help="run on the offline fashion-scenes world with this preset (concentrated, diffuse, or a JSON)")
    w.add_argument("--per-class", default="", metavar="SPLIT=N,...",
                   help="override images per class, e.g. train=100,debug=80,test=80")
    w.add_argument("--exemplars", type=int, default=16, help="exemplar crops per context for the attributor")
    p.add_argument("--seed", type=int, default=0, help="world, split and generation seed (default 0)")
    p.add_argument("--image-size", type=int,
                   help="world: override its image size; real data: the classifier's input size (default: its own)")
    p.add_argument("--cache-dir", help="feature / embedding cache (world: none by default; real data: "
                                       "$FAILMODE_CACHE_DIR or ~/.cache/failmode)")


def add_real_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Vocabulary and attributor options of the real-data mode; returns the group for more options."""
    g = p.add_argument_group("real-data mode")
    g.add_argument("--vocabulary", nargs="+", metavar="NAME_OR_JSON",
                   help="shipped vocabularies by dataset name (one per --kinds) and/or vocabulary JSON files")
    g.add_argument("--kinds", nargs="+", default=["background"], metavar="KIND",
                   help="vocabulary kinds of the shipped names: background, color (default background)")
    AttributionOptions.add_arguments(g)
    g.add_argument("--device", type=device_type, help="cpu, cuda, cuda:1 (default: cuda if available)")
    return g


def add_render_arguments(g: argparse._ArgumentGroup, **precision: Any) -> None:
    """The diffusers generator, its generation settings and its render options (`RenderOptions.add_arguments`:
    --precision, the render dtype; `precision`: argparse settings of that flag)."""
    g.add_argument("--generator", help="diffusers model id, local pipeline folder or registered generator name (default SD 1.5)")
    g.add_argument("--revision", help="generator revision on the Hub")
    g.add_argument("--scheduler", default="dpmsolver++",
                   help="dpmsolver++ (default), dpmsolver++-karras, ddim, pndm, euler, unipc, or 'pipeline'")
    g.add_argument("--steps", type=arg_type(_PLAN, "steps"), default=25, help="denoising steps (default 25)")
    g.add_argument("--guidance", type=arg_type(_PLAN, "guidance", float), default=7.5,
                   help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--size", type=arg_type(_PLAN, "size"), default=512, help="generated image size in pixels (default 512)")
    RenderOptions.add_arguments(g, **precision)


def check_mode(args: argparse.Namespace, real_flag: str) -> bool:
    """True for the world mode; one of --world / the real-data flag is required, not both."""
    real = getattr(args, real_flag.lstrip("-").replace("-", "_"))
    if bool(args.world) == bool(real):
        raise UsageError(f"give either --world PRESET (offline world) or {real_flag} (real data), not "
                         f"{'both' if real else 'neither'}")
    if real and not args.vocabulary:
        raise UsageError(f"{real_flag} needs --vocabulary NAME_OR_JSON")
    if args.world and args.vocabulary:
        raise UsageError("--vocabulary is for real data; the world brings its own vocabulary")
    return bool(args.world)


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


def cache_dir(args: argparse.Namespace) -> Any:
    """--cache-dir, else the toolkit's default cache (real-data mode)."""
    from pathlib import Path

    from failmode.io import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def attributor_from_args(args: argparse.Namespace, kind: str) -> Any:
    """The attributor the options name (CLIP by default), its image embeddings cached under `cache_dir(args)`."""
    from failmode.discovery.mined import CachedAttributor
    from failmode.mining.attribution import make_attributor
    from failmode.options import FeatureOptions

    attributor = make_attributor(AttributionOptions.from_args(args), kind, features=FeatureOptions(device=args.device))
    return CachedAttributor(attributor, cache_dir(args))


def render_from_args(args: argparse.Namespace) -> Any:
    """The diffusers generator (--generator, default SD 1.5) and generation settings the render flags name, as a
    `failmode.discovery.outputs.DebugRender` (the pipeline loads on first use)."""
    from failmode.discovery.outputs import diffusers_render
    from failmode.generation.plan import GenerationSettings
    from failmode.models.diffusion import DEFAULT_GENERATOR

    settings = GenerationSettings(generator=args.generator or DEFAULT_GENERATOR, revision=args.revision,
                                  scheduler=args.scheduler, steps=args.steps, guidance=args.guidance, size=args.size,
                                  base_seed=args.seed)
    options = RenderOptions.from_args(args, device=args.device,
                                      scheduler=None if args.scheduler == "pipeline" else args.scheduler)
    return diffusers_render(settings, options)

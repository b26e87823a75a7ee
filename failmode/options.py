"""Options objects shared by the library and the commands, one per concern (light: no heavy import, so commands can
add their flags and parse them):

- `FeatureOptions`: how images become frozen features (device, batch, precision, loader workers, decoder, cache);
  `failmode mine`, `evaluate`, `build`, and the image side of `attribute`.
- `AttributionOptions`: which attributor scores failures against contexts (CLIP's model and weights, or another
  registered attributor, with its options); `attribute`, `slices`, `discover` and a preset's `attribution` section.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.errors import UsageError

DECODE_CHOICES = ("auto", "cpu", "hybrid", "gpu")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class FeatureOptions:
    """Feature-extraction settings (`failmode.features.extract_features`); None means the device's default."""

    device: str | None = None
    batch_size: int | None = None  # None: 256 on a GPU, 64 on a CPU
    precision: str = "auto"
    num_workers: int | None = None  # None: failmode.images.default_workers
    decode: str = "auto"
    cache_dir: str | None = None  # the cache root; features go to cache_dir/features

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any, batch_default: str = "256 on a GPU, 64 on a CPU") -> None:
        """--device, --batch-size, --precision, --workers, --decode, --cache-dir (`batch_default`: the help's
        words for the default batch of whatever extracts)."""
        p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
        p.add_argument("--batch-size", type=int, help=f"images per forward pass (default: {batch_default})")
        p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                       help="precision of the forward passes (auto: bf16/fp16 on a GPU, fp32 on a CPU)")
        p.add_argument("--workers", "--num-workers", dest="num_workers", type=int,
                       help="loader processes decoding images (default: 0 on CPU, up to 8 on a GPU)")
        p.add_argument("--decode", default="auto", choices=DECODE_CHOICES,
                       help="cpu: resize in the workers (the model's exact preprocessing); hybrid: resize on the device; gpu: "
                            "also decode JPEGs there (CUDA only; default auto: hybrid on CUDA, else cpu)")
        p.add_argument("--cache-dir", help="cache folder (default: $FAILMODE_CACHE_DIR or ~/.cache/failmode)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatureOptions:
        """The options the flags of `add_arguments` set."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def extract_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `extract_features` (what a `FeatureExtractor` passes): the cache is its features/."""
        from failmode.io import default_cache_dir

        return {"device": self.device, "batch_size": self.batch_size, "precision": self.precision,
                "num_workers": self.num_workers, "decode": self.decode,
                "cache_dir": Path(self.cache_dir or default_cache_dir()) / "features"}


#: FeatureOptions fields the CLIP attributor takes for its image side (the cache is attribute_failures' own)
CLIP_LOADER_FIELDS = ("device", "batch_size", "precision", "num_workers", "decode")


@dataclass(frozen=True)
class AttributionOptions:
    """How seed failures get their contexts: the registered attributor and, for "clip", its open_clip model and
    weights; `options` are further keyword arguments of the attributor's factory (CLIP's `templates`, say).

    A preset's `attribution` section is one of these, and so are the attributor flags of the commands."""

    attributor: str = "clip"
    clip_model: str = "ViT-B-32"  # open_clip name or JSON config path (attributor "clip")
    pretrained: str | None = "openai"  # open_clip tag or local checkpoint (attributor "clip"); None: random weights
    options: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser | Any) -> None:
        """--attributor, --clip-model, --clip-pretrained, --templates and the repeatable --attributor-option."""
        p.add_argument("--attributor", default="clip", help="registered attributor (default clip)")
        p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model name or config JSON (default ViT-B-32)")
        p.add_argument("--clip-pretrained", default="openai",
                       help="open_clip pretrained tag, local checkpoint, or none for random weights (default openai)")
        p.add_argument("--templates", help="CLIP prompt templates JSON (default: failmode/mining/templates.json)")
        p.add_argument("--attributor-option", "--option", dest="attributor_option", action="append", default=[],
                       metavar="KEY=VALUE", help="extra attributor option (VALUE parsed as JSON when it can be); "
                                                 "repeatable")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AttributionOptions:
        """The options the flags of `add_arguments` set (`--clip-pretrained none`: random weights)."""
        pretrained = None if args.clip_pretrained == "none" else args.clip_pretrained
        extra = {"templates": args.templates} if args.templates and args.attributor == "clip" else {}
        return cls(args.attributor, args.clip_model, pretrained,
                   extra | parse_options(args.attributor_option, "--attributor-option"))

    def factory_options(self, features: FeatureOptions | None = None) -> dict[str, Any]:
        """Keyword arguments of the attributor's factory: for "clip" its model and weights and the image side of
        `features` (what is set), then `options`, which win."""
        if self.attributor != "clip":
            return dict(self.options)
        clip: dict[str, Any] = {"model": self.clip_model, "pretrained": self.pretrained}
        if features is not None:
            clip |= {k: v for k in CLIP_LOADER_FIELDS if (v := getattr(features, k)) is not None}
        return clip | self.options


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings (from a repeatable `flag`) as a dict; values that parse as JSON are decoded."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out

"""How images become frozen features, as one options object: the device, batch, precision, loader workers, decoder
and cache that `failmode mine`, `evaluate` and `build` share (light: no heavy import, so commands can use it)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    def add_arguments(p: argparse.ArgumentParser | Any) -> None:
        """--device, --batch-size, --precision, --workers, --decode, --cache-dir."""
        p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
        p.add_argument("--batch-size", type=int, help="images per forward pass (default: 256 on a GPU, 64 on a CPU)")
        p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                       help="feature extraction precision (auto: bf16/fp16 on a GPU, fp32 on a CPU)")
        p.add_argument("--workers", "--num-workers", dest="num_workers", type=int,
                       help="loader processes decoding images (default: 0 on CPU, up to 8 on a GPU)")
        p.add_argument("--decode", default="auto", choices=DECODE_CHOICES,
                       help="cpu: resize in the workers (timm's exact pixels); hybrid: resize on the device; gpu: "
                            "also decode JPEGs there (CUDA only; default auto: hybrid on CUDA, else cpu)")
        p.add_argument("--cache-dir", help="cache folder (default: $FAILMODE_CACHE_DIR or ~/.cache/failmode)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatureOptions:
        """The options the flags of `add_arguments` set."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def extract_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `extract_features` (and `mining.failures.predict`): the cache is its features/."""
        from failmode.io import default_cache_dir

        return {"device": self.device, "batch_size": self.batch_size, "precision": self.precision,
                "num_workers": self.num_workers, "decode": self.decode,
                "cache_dir": Path(self.cache_dir or default_cache_dir()) / "features"}

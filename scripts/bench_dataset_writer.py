"""Throughput of the dataset writer (`write_shard`: validate + encode + parquet + webdataset tar + stats).

    OMP_NUM_THREADS=1 python scripts/bench_dataset_writer.py --n 64 --size 512 --format png
    python scripts/bench_dataset_writer.py --n 16 --size 64 --pre-encoded   # quick smoke run

`--pre-encoded` hands the writer PNG/JPEG bytes (what the generation stage does: it encodes in worker threads), so
the figure is the writer's own cost (decode check + files); without it the writer also encodes the images.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from PIL import Image

from failmode.dataset import DebugSample, finalize, write_shard
from failmode.dataset.manifest import ConfigSpec, Manifest
from failmode.dataset.sample import CODECS

CLASSES = [f"class_{i}" for i in range(10)]


def make_samples(n: int, size: int, fmt: str, pre_encoded: bool) -> list[DebugSample]:
    """`n` samples with smooth random images (compress like photos more than white noise does)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        image = CODECS.get(fmt).encode(img) if pre_encoded else img
        out.append(DebugSample(image=image, label=i % 10, class_name=CLASSES[i % 10], context="in the snow",
                               context_kind="background", prompt=f"a photo of a {CLASSES[i % 10]} in the snow",
                               seed=i, generator="bench", source_model="bench", scores={"clip_class": 0.3}))
    return out


def main() -> None:
    """Write one shard of `--n` images and finalize; print seconds and images/s."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--format", default="png", choices=["png", "jpeg"])
    ap.add_argument("--pre-encoded", action="store_true")
    args = ap.parse_args()
    samples = make_samples(args.n, args.size, args.format, args.pre_encoded)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        stats = write_shard(root, "bench", "train", 0, 1, samples, class_names=CLASSES, image_format=args.format)
        t1 = time.perf_counter()
        finalize(root, Manifest(name="bench", version="0.0.1", class_names=CLASSES, image_format=args.format,
                                configs={"bench": ConfigSpec(kind="model", splits={"train": 1})}))
        t2 = time.perf_counter()
    mb = sum(f["size"] for f in stats["files"].values()) / 1e6
    print(f"write_shard: {args.n} images {args.size}px {args.format} pre_encoded={args.pre_encoded}: "
          f"{t1 - t0:.2f} s ({args.n / (t1 - t0):.1f} img/s, {mb:.1f} MB parquet+tar); finalize {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()

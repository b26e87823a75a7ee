"""Benchmark the exhaustive minimal-slice search (failmode.slices.find_slices) on synthetic tags.

Default: 10 classes x 50,000 tagged images (in all) x 40 tags, s = 3, m = 25; `--per-class` makes it 50,000
images per class (500,000 in all). Tags are independent Bernoulli columns of density 5-30 %, so nearly every
pair and triple is frequent (the search cannot prune much: close to its worst case). One planted slice per class
(a pair of tags with 30 % accuracy) checks that the search still finds what it should.

    OMP_NUM_THREADS=1 python scripts/bench_slices.py [--images 50000] [--per-class] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from failmode.slices import SliceParams, find_slices


def synthetic(classes: int, images: int, tags: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Random tags [N, K], labels, correctness (base accuracy 90 %) and one planted failing tag pair per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), images // classes)
    density = rng.uniform(0.05, 0.3, size=tags)
    density[: 2 * classes] = rng.uniform(0.2, 0.3, size=min(tags, 2 * classes))  # planted pairs stay >= m
    tag = rng.random((len(labels), tags)) < density
    correct = rng.random(len(labels)) < 0.9
    for c in range(classes):
        a, b = 2 * c % tags, (2 * c + 1) % tags
        rows = (labels == c) & tag[:, a] & tag[:, b]
        correct[rows] = rng.random(rows.sum()) < 0.3
    return tag, labels, correct, [f"tag{k:02d}" for k in range(tags)]


def main() -> None:
    """Run the benchmark and print one JSON line per repeat."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--images", type=int, default=50000, help="tagged images in all (per class with --per-class)")
    ap.add_argument("--per-class", action="store_true")
    ap.add_argument("--tags", type=int, default=40)
    ap.add_argument("-s", "--order", type=int, default=3)
    ap.add_argument("-m", "--min-size", type=int, default=25)
    ap.add_argument("-d", "--min-drop", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    total = args.images * args.classes if args.per_class else args.images
    tags, labels, correct, names = synthetic(args.classes, total, args.tags, args.seed)
    params = SliceParams(max_order=args.order, min_size=args.min_size, min_drop=args.min_drop)
    class_names = [f"class{c}" for c in range(args.classes)]
    for r in range(args.repeat):
        t0 = time.perf_counter()
        found = find_slices(tags, labels, correct, names, class_names, params)
        dt = time.perf_counter() - t0
        planted = sum(any(s.label == c and s.tags == [names[2 * c % args.tags], names[(2 * c + 1) % args.tags]]
                          for s in found) for c in range(args.classes))
        print(json.dumps({"repeat": r, "seconds": round(dt, 3), "classes": args.classes, "images": len(labels),
                          "tags": args.tags, "s": args.order, "m": args.min_size, "slices": len(found),
                          "planted_found": planted, "threads": os.environ.get("OMP_NUM_THREADS"),
                          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()

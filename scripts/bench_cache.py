#!/usr/bin/env python
"""Benchmark the cache entries' own check (`failmode.cache`): writing and reading one feature-cache entry with its
key, shapes, dtypes, SHA-256 and finite-value check, against a plain `np.savez` / `np.load` of the same arrays.

    python scripts/bench_cache.py --rows 10000 --dim 1280 --classes 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from failmode.cache import load_arrays, save_arrays


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` runs of `fn`, in milliseconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    """Print the four timings and the entry's size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    arrays = {"features": rng.standard_normal((args.rows, args.dim)).astype(np.float32),
              "logits": rng.standard_normal((args.rows, args.classes)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)

        def save_plain() -> None:
            with open(d / "plain.npz", "wb") as f:
                np.savez(f, **arrays)

        def load_plain() -> dict[str, np.ndarray]:
            with np.load(d / "plain.npz") as z:
                return {k: z[k] for k in z.files}

        save_ms = best_ms(save_plain, args.repeat)
        checked_save_ms = best_ms(lambda: save_arrays(d / "checked.npz", "key", arrays), args.repeat)
        load_ms = best_ms(load_plain, args.repeat)
        checked_load_ms = best_ms(lambda: load_arrays(d / "checked.npz", "key", rows=args.rows), args.repeat)
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    print(f"entry {mb:.0f} MB: np.savez {save_ms:.0f} ms, save_arrays {checked_save_ms:.0f} ms; "
          f"np.load {load_ms:.0f} ms, load_arrays {checked_load_ms:.0f} ms")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Attribution throughput from encoded JPEG files: decode -> CLIP image tower -> scores against contexts.

Writes N JPEG files (a few distinct smooth random images, ImageNet-like size, cycled under distinct names) into
an ImageFolder, then times `failmode.mining.attribute` with `ClipAttributor` (open_clip, random weights by
default: `create_clip(MODEL, pretrained=None)`) over all of them, after one warm-up batch.

  # the H100 target (>= 5,000 images/s): nvJPEG decode, bf16, large batches
  python scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 12 --decode gpu
  python scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 --decode hybrid
  python scripts/bench_attribute.py --device cuda --n 20000 --batch-size 1024 --workers 14 --decode cpu
  # CPU smoke run (seconds)
  python scripts/bench_attribute.py --device cpu --model failmode-tiny-clip --n 64 --jpeg-size 64x48 --batch-size 32
  # decoding alone (no model): the per-worker decode rate that bounds the CPU decoder
  python scripts/bench_attribute.py --device cpu --decode-only --n 512 --workers 1
  # the context prompts alone (ImageNet scale: --classes 1000 --contexts 8), class by class vs all together
  python scripts/bench_attribute.py --device cuda --text-only --classes 1000 --contexts 8 --batch-size 1024

Prints one JSON line (configuration and images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failmode.vocab import Vocabulary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    p.add_argument("--n", type=int, default=2048, help="images to attribute")
    p.add_argument("--unique", type=int, default=64, help="distinct images among the N files")
    p.add_argument("--jpeg-size", default="500x375", help="WxH of the JPEG files (ImageNet's typical size)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--classes", type=int, default=10, help="classes (folders); each has --contexts contexts")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--decode", default="cpu", choices=("cpu", "hybrid", "gpu"))
    p.add_argument("--no-draft", action="store_true", help="decode JPEGs at full scale (no DCT downscale)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--decode-only", action="store_true", help="time decoding to uint8 crops only (no model)")
    p.add_argument("--text-only", action="store_true",
                   help="time the context prompts of --classes x --contexts alone: one class at a time vs together")
    p.add_argument("--model-only-batches", type=int, default=0,
                   help="also time encode_image alone on this many resident batches (the ratio's denominator)")
    p.add_argument("--images", help="use this existing ImageFolder instead of writing JPEGs")
    return p.parse_args(argv)


def vocabulary(class_names: list[str], contexts: int) -> Vocabulary:
    """A synthetic vocabulary: `contexts` made-up background contexts for each class."""
    from failmode.vocab import from_dict

    return from_dict({
        "format": "failmode-vocabulary/1", "dataset": "bench", "kind": "background", "version": "0",
        "template": "a photo of a {class_name} {context}", "provenance": {"generator": "bench_attribute.py"},
        "classes": [{"index": i, "name": n, "prompt_name": n, "contexts": [f"in place {j}" for j in range(contexts)]}
                    for i, n in enumerate(class_names)]})


def time_calls(obj: object, method: str) -> list[float]:
    """Wrap `obj.method` so that each call's wall time is appended to the returned list."""
    seconds: list[float] = []
    inner = getattr(obj, method)

    def timed(*a: object, **k: object) -> object:
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            seconds.append(time.perf_counter() - t)

    setattr(obj, method, timed)
    return seconds


def model_only(att: Any, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """encode_image's throughput on one batch already on the device, as the attributor runs it (dtype, layout)."""
    import torch

    from failmode.runtime import autocast

    size = att.prep.size
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), autocast(device, att.dtype):
        att.model.encode_image(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.model_only_batches):
            att.model.encode_image(x)
        sync()
    rate = args.model_only_batches * args.batch_size / (time.perf_counter() - t0)
    return {"model_only_images_per_s": round(rate, 1)}


def bench_text(args: argparse.Namespace, device: object) -> int:
    """Prompts/s of the context embeddings: `encode_contexts` class by class vs `encode_context_sets` at once."""
    import torch

    from failmode.mining import ClipAttributor
    from failmode.models.clip import create_clip
    from failmode.options import FeatureOptions

    clip = create_clip(args.model, pretrained=None, device=device)
    features = FeatureOptions(device=str(device), batch_size=args.batch_size, precision=args.precision)
    names = [f"class {i}" for i in range(args.classes)]
    vocab = vocabulary(names, args.contexts)
    sets = [(n, list(vocab.contexts(i))) for i, n in enumerate(names)]
    sync = torch.cuda.synchronize if getattr(device, "type", "") == "cuda" else (lambda: None)
    result = {"bench": "attribute-text", "model": args.model, "classes": args.classes, "contexts": args.contexts,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    # warm-up over every prompt: kernels, and the tokenizer's per-word cache, which both timings then share
    ClipAttributor(clip=clip, features=features).encode_context_sets(sets)
    for how in ("one_class_at_a_time", "together"):
        att = ClipAttributor(clip=clip, features=features)
        prompts = len(att.templates) * args.classes * args.contexts
        sync()
        t0 = time.perf_counter()
        if how == "together":
            att.encode_context_sets(sets)
        else:
            for n, c in sets:
                att.encode_contexts(n, c)
        sync()
        result[f"{how}_prompts_per_s"] = round(prompts / (time.perf_counter() - t0), 1)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = parse_args(argv)
    import torch

    from failmode.data.sources import open_source
    from failmode.images import Preprocess, iter_crops
    from failmode.mining import ClipAttributor, attribute
    from failmode.models.clip import create_clip
    from failmode.options import FeatureOptions
    from failmode.runtime import configure_cpu_threads, pick_device
    from failmode.testing import BatchClock, jpeg_folder

    configure_cpu_threads()
    device = pick_device(args.device)
    if args.text_only:
        return bench_text(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.images) if args.images else Path(tmp) / "jpegs"
        if not args.images:
            w, h = (int(v) for v in args.jpeg_size.split("x"))
            jpeg_folder(root, args.n, unique=args.unique, size=(w, h), quality=args.quality, classes=args.classes)
        source = open_source(str(root))
        n = min(args.n, len(source))
        clip = create_clip(args.model, pretrained=None, device=device)
        features = FeatureOptions(device=str(device), batch_size=args.batch_size, precision=args.precision,
                                  num_workers=args.workers, decode=args.decode)
        att = ClipAttributor(clip=clip, features=features, draft=not args.no_draft)
        rows = [{"index": i, "image_id": source.ids[i], "label": int(source.labels[i]), "prediction": 0,
                 "class_name": source.class_names[int(source.labels[i])], "half": "seed"} for i in range(n)]
        vocab = vocabulary(source.class_names, args.contexts)
        warm = rows[: min(n, args.batch_size)]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        if args.decode_only:
            prep = Preprocess.from_open_clip(att.model, draft=not args.no_draft)
            run = lambda rs: sum(len(x) for x in iter_crops(  # noqa: E731
                source, [r["index"] for r in rs], prep, device=device, batch_size=args.batch_size,
                num_workers=args.workers, decode=args.decode))
        else:
            run = lambda rs: attribute(rs, source, vocab, att, k=3)  # noqa: E731
        image_seconds = time_calls(att, "encode_images")
        with BatchClock() as clock:
            run(warm)
            sync()
            image_seconds.clear()
            clock.reset()
            t0 = time.perf_counter()
            run(rows)
            sync()
            end = time.perf_counter()
        dt = end - t0
        # without the loader's start-up: from the arrival of the workers' first round of batches to the end
        steady = clock.steady_rate(end, skip=max(1, min(args.workers, len(clock.stamps) // 2)))
    result = {
        "bench": "attribute" + ("-decode-only" if args.decode_only else ""), "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "n": n, "jpeg_size": args.jpeg_size, "batch_size": args.batch_size, "workers": args.workers,
        "decode": args.decode, "draft": not args.no_draft, "precision": args.precision,
        "torch_threads": torch.get_num_threads(), "seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
        "steady_images_per_s": round(steady, 1) if steady is not None else None,
    }
    if args.model_only_batches:  # the image tower alone on a resident batch: the ceiling for the end-to-end figure
        result.update(model_only(att, args, device))
    if image_seconds:  # the image side alone (decode + image tower), without the per-class text prompts
        result["image_seconds"] = round(sum(image_seconds), 3)
        result["image_images_per_s"] = round(n / sum(image_seconds), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

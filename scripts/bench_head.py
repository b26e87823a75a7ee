#!/usr/bin/env python
"""Benchmark (1) the linear-head trainer against the plain fp32 autograd loop, (2) feature extraction vs the model.

(1) 1000 full-batch SGD epochs on N x D random features, C classes (paper scale: 30,000 x 2,048, 1,000 classes):
    `failmode.head.train_head` at each precision vs nn.Linear + torch.optim.SGD + autograd, same run,
    with the largest weight difference to the fp32 reference.
(2) `failmode.features.extract_features` (read, decode, resize/crop, normalise, batch, forward, copy to host) over an
    ImageFolder of JPEG files (500x375 by default), per decoder: "pil" (timm's per-image PIL transform in the loader
    workers) and the device-side `Preprocess` decoders "cpu", "hybrid", "gpu" (failmode.images), vs the model's
    forward alone on a ready batch, same model, batch size and precision (goal: >= 80%).

GPU:  python scripts/bench_head.py --device cuda --num-workers 14 --out bench_head.json
CPU smoke run: python scripts/bench_head.py --device cpu --n 3000 --dim 512 --classes 100 --epochs 100 \
        --model test_convnext --images 256 --batch-size 64 --image-size 64 --num-workers 0 --decode pil,cpu,hybrid
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import numpy as np
import torch

from failmode.head import HeadParams, train_head
from failmode.runtime import autocast, autocast_dtype, pick_device

log = logging.getLogger("bench_head")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_loop(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int) -> torch.nn.Linear:
    """The naive trainer: nn.Linear, torch.optim.SGD (lr 0.2, momentum 0.9, wd 5e-4), autograd, fp32."""
    lin = torch.nn.Linear(x.shape[1], classes).to(x.device)
    opt = torch.optim.SGD(lin.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(lin(x), y).backward()
        opt.step()
    return lin


def bench_head(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    """Seconds for `epochs` epochs: plain loop vs train_head per precision; max |W - W_plain|."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=g).to(dev)
    y = torch.randint(0, args.classes, (args.n,), generator=g).to(dev)
    plain_loop(x, y, args.classes, 2)  # warm-up: cuBLAS handles, torch.optim's first-step imports
    _sync(dev)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ref = plain_loop(x, y, args.classes, args.epochs)
    _sync(dev)
    res: dict[str, Any] = {"plain_fp32_autograd_s": time.perf_counter() - t0}
    torch.manual_seed(0)
    lin0 = torch.nn.Linear(args.dim, args.classes)  # the plain loop's initial weights (same seed)
    init = (lin0.weight.detach().clone(), lin0.bias.detach().clone())
    precisions = ["fp32"] + (["tf32", "bf16"] if dev.type == "cuda" else [])
    for p in precisions:
        train_head(x, y, HeadParams(epochs=2, precision=p), num_classes=args.classes, init=init, device=dev)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        head = train_head(x, y, HeadParams(lam=0.0, epochs=args.epochs, precision=p), num_classes=args.classes,
                          init=init, device=dev)
        _sync(dev)
        res[f"train_head_{p}_s"] = time.perf_counter() - t0
        res[f"train_head_{p}_max_abs_diff"] = float((head.weight - ref.weight.detach().cpu()).abs().max())
    return res


def bench_features(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    """Images/s of extract_features per decoder vs the model's forward alone (same model, batch size, precision)."""
    import tempfile

    from failmode.data.sources import open_source
    from failmode.features import extract_features, forward_features
    from failmode.images import iter_crops, normalize
    from failmode.models.classifier import create_classifier, eval_preprocess, eval_transform
    from failmode.options import FeatureOptions
    from failmode.testing import BatchClock, jpeg_folder

    net = create_classifier(args.model, "none").to(dev).eval()
    prep = eval_preprocess(net, args.image_size)
    w, h = (int(v) for v in args.jpeg_size.split("x"))
    res: dict[str, Any] = {"preprocess": repr(prep), "jpeg_size": args.jpeg_size}
    dtype = autocast_dtype(dev, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        source = open_source(str(jpeg_folder(tmp, args.images, size=(w, h))))
        for decode in args.decode.split(","):
            transform = eval_transform(net, args.image_size) if decode == "pil" else prep
            options = FeatureOptions(device=str(dev), batch_size=args.batch_size, num_workers=args.num_workers,
                                     precision="auto", decode="auto" if decode == "pil" else decode)
            kw = {"model_key": args.model, "transform": transform, "options": options}
            extract_features(net, source, np.arange(min(len(source), 2 * args.batch_size)), **kw)  # warm-up
            with BatchClock() as clock:
                t0 = time.perf_counter()
                extract_features(net, source, None, **kw)
                _sync(dev)
                end = time.perf_counter()
            res[f"extract_{decode}_img_s"] = args.images / (end - t0)
            # without the loader's start-up: from the arrival of the workers' first round of batches to the end
            steady = clock.steady_rate(end, skip=max(1, min(args.num_workers, len(clock.stamps) // 2)))
            if steady is not None and decode != "pil":
                res[f"extract_{decode}_steady_img_s"] = steady
        crops = next(iter_crops(source, np.arange(args.batch_size) % len(source), prep, device=dev,
                                batch_size=args.batch_size))
        batch = normalize(crops, prep, dtype or torch.float32)
    n_batches = max(1, args.images // args.batch_size)
    with torch.inference_mode(), autocast(dev, dtype):
        forward_features(net, batch, True)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            forward_features(net, batch, True)
        _sync(dev)
    res["model_only_img_s"] = n_batches * args.batch_size / (time.perf_counter() - t0)
    for decode in args.decode.split(","):
        res[f"extract_{decode}_over_model"] = res[f"extract_{decode}_img_s"] / res["model_only_img_s"]
        if f"extract_{decode}_steady_img_s" in res:
            res[f"extract_{decode}_steady_over_model"] = res[f"extract_{decode}_steady_img_s"] / res["model_only_img_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    """Parse the sizes, run both benchmarks, print and optionally save the figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--n", type=int, default=30000, help="samples (default 30,000)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2,048)")
    p.add_argument("--classes", type=int, default=1000, help="classes (default 1,000)")
    p.add_argument("--epochs", type=int, default=1000, help="full-batch epochs (default 1,000)")
    p.add_argument("--model", default="resnet50", help="timm model for the feature benchmark (random weights)")
    p.add_argument("--images", type=int, default=8192, help="JPEG files in the feature benchmark (default 8,192)")
    p.add_argument("--batch-size", type=int, default=256, help="feature batch size (default 256)")
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument("--jpeg-size", default="500x375", help="WxH of the JPEG files (ImageNet's typical size)")
    p.add_argument("--decode", default="pil,cpu,hybrid,gpu",
                   help="comma list: pil (timm's per-image transform) and the Preprocess decoders cpu, hybrid, gpu")
    p.add_argument("--num-workers", type=int, default=8, help="data loader workers for extract_features")
    p.add_argument("--skip", choices=("head", "features"), help="skip one benchmark")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dev = pick_device(args.device)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                           "torch_threads": torch.get_num_threads(), "args": vars(args)}
    if args.skip != "head":
        res["head"] = bench_head(args, dev)
    if args.skip != "features":
        res["features"] = bench_features(args, dev)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        from failmode.io import write_json

        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

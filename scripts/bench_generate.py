#!/usr/bin/env python
"""Images/s of debug-image generation: the naive diffusers call vs failmode's path, in one run, encoding and
writing included.

The full-size SD 1.5 architecture is built from the configs in failmode/models/configs/sd15 with random weights
(throughput does not depend on weight values; nothing is downloaded).

    python scripts/bench_generate.py                       # GPU: naive fp16 b1 50 PNDM steps vs fp16 b16 compiled DPM++ 25
    # CPU smoke run (tiny pipeline)
    python scripts/bench_generate.py --tiny --device cpu --precision fp32 --size 64 --steps 2 --naive-steps 2 \
        --images 16 --naive-images 2 --batch-size 4 --compile none
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from failmode.generation import GenerationSettings, ShardRun, baseline_modes, build_plan
from failmode.generation.render import PRECISIONS, DiffusersGenerator
from failmode.options import RenderOptions
from failmode.runtime import DEFAULT_THREADS, fixed_threads, pick_device

CONFIGS = Path(__file__).resolve().parents[1] / "failmode" / "models" / "configs" / "sd15"
CLASSES = [f"class {i}" for i in range(1000)]
log = logging.getLogger("bench_generate")


def sd15_random() -> Any:
    """The SD 1.5 pipeline architecture with random weights, from the configs kept in the repository."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from failmode.testing import clip_tokenizer

    def cfg(name: str) -> dict[str, Any]:
        return json.loads((CONFIGS / f"{name}.json").read_text())

    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(cfg("unet")).eval(), vae=AutoencoderKL.from_config(cfg("vae")).eval(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg("text_encoder"))).eval(), tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_config(cfg("scheduler")), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_naive(pipe: Any, args: argparse.Namespace, device: torch.device, out: Path) -> float:
    """The naive call: one prompt per call (batch 1), the pipeline's own scheduler, PNG written per image."""
    pipe.to(device, PRECISIONS[args.precision])
    kw = {"num_inference_steps": args.naive_steps, "height": args.size, "width": args.size, "guidance_scale": 7.5}
    with torch.inference_mode():
        pipe("a photo of a cat", num_inference_steps=2, height=args.size, width=args.size)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for i in range(args.naive_images):
            image = pipe(f"a photo of a {CLASSES[i]} in a desert", **kw).images[0]
            image.save(out / f"naive_{i}.png")
        sync(device)
    return args.naive_images / (time.perf_counter() - t0)


def bench_toolkit(pipe: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """failmode's path: plan -> fixed-shape batches -> thread-pool PNG encoding -> shards written by a writer thread."""
    options = RenderOptions(device=args.device, precision=args.precision, batch_size=args.batch_size,
                            scheduler=args.scheduler, channels_last=True, fuse_qkv=args.fuse_qkv,
                            compile=None if args.compile == "none" else args.compile)
    gen = DiffusersGenerator(pipeline=pipe, options=options, ident="diffusers:sd15-random")
    settings = GenerationSettings(generator="sd15-random", scheduler=args.scheduler, steps=args.steps,
                                  size=args.size, images_per_mode=1, shard_size=args.shard_size)

    def rows(n: int, config: str) -> list[Any]:
        per_class = max(1, n // 100)
        plan = build_plan([baseline_modes(CLASSES, config=config)], settings, generator_id=gen.ident,
                          baseline_images_per_class=per_class)
        return plan[:n]

    quality = None
    if args.quality:  # the filter as builds run it: CLIP scores per image (random weights: score only, never drop)
        from failmode.generation.quality import ClipQuality
        from failmode.models.clip import create_clip

        quality = ClipQuality(create_clip(args.quality, pretrained=None, device=gen.device), device=gen.device)
    kw = {"encode_workers": args.encode_workers, "quality": quality}
    warm = ShardRun(out / "warmup", gen, CLASSES, **kw)
    t0 = time.perf_counter()
    warm.run(rows(args.batch_size, "warmup"))  # compile + autotune happen here
    warmup_s = time.perf_counter() - t0
    log.warning("warm-up (compile): %.1f s", warmup_s)
    extra: dict[str, Any] = {}
    threads = int(gen.describe().get("threads") or DEFAULT_THREADS)  # ShardRun renders with this CPU thread count
    if args.steady_batches:  # the same compiled pipeline, steady state: plain call, then failmode's render alone
        with fixed_threads(threads):
            extra["plain_call_images_per_s"] = round(bench_plain(gen, args), 3)
        log.warning("plain pipeline call: %s images/s", extra["plain_call_images_per_s"])  # kept if killed later
        reqs = [r.request(0) for r in rows(args.steady_batches * args.batch_size, "steady")]
        gen._embeds.clear()  # each timed path encodes its prompts, as a build does (new prompts every few images)
        sync(gen.device)
        t0 = time.perf_counter()
        with fixed_threads(threads):
            gen.generate(reqs)
        sync(gen.device)
        extra["render_only_images_per_s"] = round(len(reqs) / (time.perf_counter() - t0), 3)
        log.warning("failmode's render alone: %s images/s", extra["render_only_images_per_s"])
    if args.profile:
        with fixed_threads(threads):
            profile_batch(gen, [r.request(0) for r in rows(args.batch_size, "profile")], Path(args.profile))
    run = ShardRun(out / "ds", gen, CLASSES, **kw)
    plan = rows(args.images, "bench")
    gen._embeds.clear()
    sync(gen.device)
    t0 = time.perf_counter()
    stats = run.run(plan)
    sync(gen.device)
    wall = time.perf_counter() - t0
    render = sum(s["timings"]["render_s"] for s in stats)
    encode = sum(s["timings"]["encode_s"] for s in stats)
    write = sum(s["timings"]["write_s"] for s in stats)
    return {"images": len(plan), "wall_s": round(wall, 3), "images_per_s": round(len(plan) / wall, 3),
            "render_s": round(render, 3), "encode_cpu_s": round(encode, 3), "write_s": round(write, 3),
            "writer_wait_s": round(run.wait_s, 3),
            "shard_writing_overhead_pct_of_gpu": round(100 * (wall - render) / render, 2),
            "warmup_s": round(warmup_s, 2), "batch_size_used": stats[-1]["batch_size"], **extra}


def bench_plain(gen: DiffusersGenerator, args: argparse.Namespace) -> float:
    """Images/s of the plain pipeline call on failmode's prepared (compiled) pipeline, as the H100 anchor runs it:
    random prompt embeddings, one device generator, output_type="pil", no encoding or writing. The latents are
    given in channels_last, the layout failmode's batches have, so the compiled UNet is reused (no recompile)."""
    pipe, bs, dev = gen.pipe, args.batch_size, gen.device
    dim = pipe.text_encoder.config.hidden_size
    pe = torch.randn(bs, 77, dim, device=dev, dtype=gen.dtype)
    ne = torch.randn(bs, 77, dim, device=dev, dtype=gen.dtype)
    g = torch.Generator(dev).manual_seed(0)
    f = pipe.vae_scale_factor

    def call(steps: int) -> None:
        lat = torch.randn(bs, pipe.unet.config.in_channels, args.size // f, args.size // f, generator=g, device=dev,
                          dtype=gen.dtype).contiguous(memory_format=torch.channels_last)
        pipe(prompt_embeds=pe, negative_prompt_embeds=ne, latents=lat, num_inference_steps=steps,
             height=args.size, width=args.size, output_type="pil")

    with torch.inference_mode():
        call(2)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.steady_batches):
            call(args.steps)
        sync(dev)
    return args.steady_batches * bs / (time.perf_counter() - t0)


def profile_batch(gen: DiffusersGenerator, reqs: list[Any], path: Path) -> None:
    """torch.profiler over one batch of failmode's render: the 25 ops with the most device (else CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = gen.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(gen.device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        gen.generate(reqs)
        sync(gen.device)
    wall = time.perf_counter() - t0
    avg = prof.key_averages()
    key = "device_time_total" if cuda else "cpu_time_total"
    busy = sum(getattr(e, "self_device_time_total", 0) for e in avg) / 1e6 if cuda else 0.0
    path.write_text(f"one batch of {len(reqs)}: wall {wall:.3f} s under the profiler, device busy {busy:.3f} s\n"
                    + avg.table(sort_by=key, row_limit=25) + "\n"
                    + avg.table(sort_by="cpu_time_total", row_limit=15) + "\n")


def main() -> None:
    """Run both paths and print images/s of each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="fp16", choices=sorted(PRECISIONS))
    p.add_argument("--tiny", action="store_true", help="the tiny test pipeline instead of SD 1.5 (CPU smoke)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--scheduler", default="dpmsolver++")
    p.add_argument("--naive-steps", type=int, default=50)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--naive-images", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--encode-workers", type=int, default=8)
    p.add_argument("--compile", default="max-autotune", choices=["none", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--fuse-qkv", action="store_true")
    p.add_argument("--quality", metavar="CLIP", help="also run the quality filter with this open_clip model "
                                                   "(random weights), e.g. ViT-B-32")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--steady-batches", type=int, default=0,
                   help="after the warm-up, also time this many batches of the plain pipeline call and of failmode's "
                        "render alone (no encoding, no writing) on the same compiled pipeline")
    p.add_argument("--profile", metavar="PATH", help="write a torch.profiler table of one render batch here")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = pick_device(args.device)
    if args.tiny:
        from failmode.testing import tiny_pipeline

        make = tiny_pipeline
    else:
        make = sd15_random
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    res: dict[str, Any] = {"device": name, "torch": torch.__version__, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not args.skip_naive:
            res["naive_images_per_s"] = round(bench_naive(make(), args, device, out), 4)
        res["toolkit"] = bench_toolkit(make(), args, out)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Render plan rows through a diffusers text-to-image pipeline, fast and batch-invariant.

Batch invariance: every latent comes from its own CPU `torch.Generator` seeded with the sample's seed, and every
denoising pass runs at one fixed shape (`batch_size` samples; a short batch is padded by repeating its last
sample). Kernels chosen for a shape do not depend on the other rows or on a row's position, so a sample's pixels
depend only on its request and the recorded batch size: alone, in a batch, or on any rank of any machine. (Running
an unpadded batch of 1 and a batch of 4 through the same UNet differs in the last float bits on CPU: oneDNN picks
other kernels for other batch shapes, and a few pixels then round differently.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.errors import FailmodeError, LoadError
from failmode.models.diffusion import DEFAULT_GENERATOR, load_pipeline
from failmode.options import SCHEDULERS, RenderOptions
from failmode.runtime import autocast_dtype, pick_device

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def oom_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "out of accelerator memory"."""
    found = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(e for e in found if e is not None)


def process_device(device: str | None = None) -> torch.device:
    """`device` if given; else this process's GPU under accelerate/torchrun (cuda:$LOCAL_RANK), else the default."""
    local_rank = os.environ.get("LOCAL_RANK")
    if not device and local_rank is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(local_rank) % torch.cuda.device_count()}")
    return pick_device(device)


def pipeline_ident(model: str, revision: str | None = None) -> str:
    """`diffusers:<id>@<revision>` for a Hub id; `diffusers:<dir name>@cfg-<hash of configs and weight sizes>` locally."""
    local = Path(model).expanduser()
    if not local.is_dir():
        return f"diffusers:{model}@{revision or 'main'}"
    h = hashlib.sha256()
    for p in sorted(q for q in local.rglob("*") if q.is_file()):
        h.update(p.relative_to(local).as_posix().encode())
        h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return f"diffusers:{local.name}@cfg-{h.hexdigest()[:12]}"


#: licences of diffusion model families on the Hub, by model id prefix (a model id not listed: its card's, else "other")
KNOWN_LICENSES = {
    "stable-diffusion-v1-5/": "creativeml-openrail-m", "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1": "creativeml-openrail-m", "stabilityai/stable-diffusion-xl": "openrail++",
}


def pipeline_license(model: str) -> str:
    """The licence id of a diffusers model: a known Hub family's, else the `license:` of its folder's model card
    (README.md), else "other" (its terms unknown here; the dataset card then points at the generator's card)."""
    from failmode.dataset.card import licenses, parse_card_header

    local = Path(model).expanduser()
    if not local.is_dir():
        return next((lic for prefix, lic in KNOWN_LICENSES.items() if model.startswith(prefix)), "other")
    try:
        found = parse_card_header((local / "README.md").read_text(encoding="utf-8")).get("license")
    except (OSError, FailmodeError):
        return "other"
    return found if found in licenses() else "other"


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace the pipeline's scheduler by the registered scheduler `name`, keeping its noise schedule."""
    import diffusers

    cls_name, overrides = SCHEDULERS.get(name)
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)


def prepare_pipeline(pipe: Any, options: RenderOptions) -> Any:
    """Move to device/dtype, set the scheduler, SDPA attention, channels_last, fused QKV and torch.compile."""
    device = process_device(options.device)
    dtype = PRECISIONS.get(options.precision) or autocast_dtype(device, "auto") or torch.float32
    if device.type == "cpu" and dtype is torch.float16:
        raise LoadError("fp16 is not supported on CPU; use --precision fp32 or bf16")
    # diffusers (0.42) warns "modules that should be kept in float32: []" on every dtype cast, even when a model has
    # no such modules; when none of the three has any, the warning says nothing and is silenced
    models_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = models_logger.level
    if all(not getattr(m, "_keep_in_fp32_modules", None) for m in (pipe.unet, pipe.vae, pipe.text_encoder)):
        models_logger.setLevel(logging.ERROR)
    try:
        pipe.to(device, dtype)
    finally:
        models_logger.setLevel(level)
    if options.scheduler:
        set_scheduler(pipe, options.scheduler)
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA (flash / memory-efficient kernels on GPU)
    if options.fuse_qkv:
        pipe.fuse_qkv_projections()
    if options.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.compile:
        pipe.unet = torch.compile(pipe.unet, mode=None if options.compile == "default" else options.compile,
                                  fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=None if options.compile == "default" else options.compile)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersGenerator(ImageGenerator):
    """SD 1.5 (default) or any diffusers text-to-image model: one seed per image, fixed-shape batches.

    A `pipeline` passed in is taken over: its device, dtype, scheduler and attention are changed in place.
    """

    def __init__(self, model: str = DEFAULT_GENERATOR, *, revision: str | None = None, pipeline: Any = None,
                 options: RenderOptions | None = None, ident: str | None = None) -> None:
        self.options = options or RenderOptions()
        if pipeline is None:
            pipeline = load_pipeline(model, revision=revision)
            self._check_pipeline(pipeline, model)
        self.pipe = prepare_pipeline(pipeline, self.options)
        self.ident = ident or pipeline_ident(model, revision)
        self.license = pipeline_license(model)
        self.batch_size = self.options.batch_size
        self.device = self.pipe.unet.device
        self.dtype = self.pipe.unet.dtype
        self._embeds: dict[str, torch.Tensor] = {}
        self._safety: tuple[Any, Any] | None = None
        if self.options.safety_checker:
            self._safety = self._load_safety(model, revision)

    @staticmethod
    def _check_pipeline(pipe: Any, model: str) -> None:
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if getattr(pipe, part, None) is None:
                raise LoadError(f"the diffusion pipeline {model!r} has no {part}; a text-to-image pipeline is needed")

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text-encoder output [1, 77, D] for `prompt`, computed once per unique prompt, alone (shape-invariant)."""
        if prompt not in self._embeds:
            tok = self.pipe.tokenizer(prompt, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")
            with torch.inference_mode():
                emb = self.pipe.text_encoder(tok.input_ids.to(self.device))[0]
            self._embeds[prompt] = emb.to(self.dtype)
        return self._embeds[prompt]

    def latents(self, req: GenerationRequest) -> torch.Tensor:
        """Initial noise of one request from its own CPU generator (the same on every device and rank)."""
        f = self.pipe.vae_scale_factor
        g = torch.Generator("cpu").manual_seed(req.seed)
        shape = (1, self.pipe.unet.config.in_channels, req.height // f, req.width // f)
        return torch.randn(shape, generator=g, dtype=torch.float32)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """One RGB image per request, in order; requests are grouped by (steps, guidance, size) internally."""
        out: dict[int, Image.Image] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.num_inference_steps, r.guidance_scale, r.height, r.width), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, img in zip(chunk, self._render([requests[i] for i in chunk]), strict=True):
                    out[i] = img
        return [out[i] for i in range(len(requests))]

    def _render(self, reqs: Sequence[GenerationRequest]) -> list[Image.Image]:
        padded = list(reqs) + [reqs[-1]] * (self.batch_size - len(reqs))
        r0 = reqs[0]
        latents = torch.cat([self.latents(r) for r in padded]).to(self.device, self.dtype)
        pos = torch.cat([self.encode_prompt(r.prompt) for r in padded])
        neg = torch.cat([self.encode_prompt(r.negative_prompt) for r in padded])
        if self.options.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=latents,
                            num_inference_steps=r0.num_inference_steps, guidance_scale=r0.guidance_scale,
                            height=r0.height, width=r0.width, output_type="latent").images
            pixels = self.decode_uint8(out[: len(reqs)]).cpu().numpy()
        return [Image.fromarray(p) for p in pixels]

    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> uint8 images [B, H, W, 3] on the device.

        The same pixels as the pipeline's `output_type="pil"` (denormalise in the model dtype, then x255 and
        round-half-even in float32), with the conversion on the device: only uint8 crosses to the host, and the
        CPU does no per-pixel float work between batches.
        """
        vae = self.pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        image = self.pipe.image_processor.postprocess(image, output_type="pt")
        return image.float().mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def _load_safety(self, model: str, revision: str | None) -> tuple[Any, Any]:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        from failmode.hub import load_from_hub_or_local

        def load(ident: str, local_only: bool) -> tuple[Any, Any]:
            kw = {"revision": revision, "local_files_only": local_only}
            checker = StableDiffusionSafetyChecker.from_pretrained(ident, subfolder="safety_checker", **kw)
            processor = CLIPImageProcessor.from_pretrained(ident, subfolder="feature_extractor", **kw)
            return checker.to(self.device).eval(), processor

        return load_from_hub_or_local(model, load, what=f"the safety checker of {model!r}",
                                      local_hint="use a pipeline folder with safety_checker/ and feature_extractor/")

    def safety_checker(self) -> Callable[[Sequence[Image.Image]], list[bool]] | None:
        """`flag_unsafe` when the safety checker is on (`RenderOptions.safety_checker`), else None."""
        return self.flag_unsafe if self._safety is not None else None

    def describe(self) -> dict[str, Any]:
        """The render options, with the precision the pipeline runs at (auto resolved)."""
        record = describe_options(self.options)
        record["precision"] = {v: k for k, v in PRECISIONS.items()}.get(self.dtype, record["precision"])
        return record

    def flag_unsafe(self, images: Sequence[Image.Image]) -> list[bool]:
        """The pipeline's safety checker verdict per image (all False when the checker is off)."""
        if self._safety is None:
            return [False] * len(images)
        import numpy as np

        checker, processor = self._safety
        clip_input = processor(list(images), return_tensors="pt").pixel_values.to(self.device)
        arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        with torch.inference_mode():
            _, flags = checker(images=arrays, clip_input=clip_input)
        return [bool(f) for f in flags]


def describe_options(options: RenderOptions) -> dict[str, Any]:
    """The render options as a JSON-ready dict (recorded in stats and the manifest)."""
    return json.loads(json.dumps(options.__dict__))

"""Outputs shared by `failmode slices` and `failmode discover`: requests, example grids, tables, debug configs.

A debug config goes the way every failmode dataset goes (`ModeSet` -> plan -> shards -> finalize, through
`failmode.generation`), so it follows the plan's order and shard rule and regenerates bit for bit from its manifest.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.errors import FailmodeError
from failmode.generation.plan import GenerationSettings, ModeSet, hash_seed
from failmode.io import write_bytes_atomic

if TYPE_CHECKING:
    from failmode.options import RenderOptions

log = logging.getLogger(__name__)



def requests_for(prompt: str, *, label: int, class_name: str, context: str, context_kind: str, n: int,
                 seed_parts: Sequence[Any], size: int, steps: int, guidance: float) -> list[GenerationRequest]:
    """`n` requests for one prompt (discover's own renders), seeds hashed from `seed_parts` + replica index."""
    return [GenerationRequest(prompt=prompt, seed=hash_seed(*seed_parts, r), label=label, class_name=class_name,
                              context=context, context_kind=context_kind, guidance_scale=guidance,
                              num_inference_steps=steps, height=size, width=size) for r in range(n)]


def save_png(path: str | os.PathLike[str], image: Image.Image) -> Path:
    """Write a PNG atomically (fixed encoder settings)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, optimize=False)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


@dataclass(frozen=True)
class DebugRender:
    """How `slices` / `discover` render a debug config: the generation settings the manifest records, how to make
    the generator (only when something is rendered), and the options that rebuild a registered one on regeneration."""

    settings: GenerationSettings
    make_generator: Callable[[], ImageGenerator]
    generator_options: dict[str, Any] = field(default_factory=dict)


def world_render(setup: Any, preset: str, seed: int) -> DebugRender:
    """The offline world's composite stand-in (a `failmode.discovery.world.WorldSetup`): rebuilt on regeneration
    from the world preset and seed."""
    settings = GenerationSettings(generator="composite", scheduler="none", steps=1, guidance=0.0,
                                  size=setup.world.preset.image_size, base_seed=seed).check()
    return DebugRender(settings, lambda: setup.generator.inner, {"preset": preset, "seed": seed})


def diffusers_render(settings: GenerationSettings, options: RenderOptions) -> DebugRender:
    """The generator `settings.generator` names: a registered backend (`generation.build.registered_generator`, as
    build and generate resolve it), else the diffusers pipeline (Hub id or local folder) rendering with `options`;
    loaded on the first `make_generator()` call and shared by later ones."""

    @functools.cache
    def make() -> ImageGenerator:
        from failmode.backends import BackendContext
        from failmode.generation.build import registered_generator
        from failmode.generation.render import DiffusersGenerator

        registered = registered_generator(settings.generator, BackendContext(device=options.device))
        return registered or DiffusersGenerator(settings.generator, revision=settings.revision, options=options)

    return DebugRender(settings.check(), make)


def write_debug_config(root: str | os.PathLike[str], *, name: str, modes: ModeSet, render: DebugRender,
                       class_names: list[str], description: str, version: str = "1.0.0") -> Path:
    """Render `modes` as the one config of a finalized dataset folder, through the generation stage (plan.parquet,
    shards by the shard rule, manifest, card), with `render`'s generator and settings."""
    from failmode.generation.plan import build_plan
    from failmode.generation.run import DatasetInfo, generate_dataset

    generator = render.make_generator()
    rows = build_plan([modes], render.settings, generator_id=generator.ident)
    if not rows:
        raise FailmodeError(f"debug config {modes.config}: nothing to render")
    info = DatasetInfo(name=name, version=version, class_names=list(class_names), description=description,
                       generator_options=dict(render.generator_options))
    if not generate_dataset(rows, root, generator, info, render.settings, roles={modes.config: modes.role}).finalized:
        raise FailmodeError(f"{root}: the debug config was not finalized")
    log.info("debug config %s: %d images -> %s", modes.config, len(rows), root)
    return Path(root)

"""Outputs shared by `failmode slices` and `failmode discover`: seeds, example grids, tables, debug configs."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.generation.plan import hash_seed
from failmode.io import atomic_path, write_bytes_atomic

log = logging.getLogger(__name__)

THUMB_PX = 96
SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: Any) -> int:
    """A seed from its parts, by the generation plan's rule (adding a part never moves others)."""
    return hash_seed(*parts)


def requests_for(prompt: str, *, label: int, class_name: str, context: str, context_kind: str, n: int,
                 seed_parts: Sequence[Any], size: int, steps: int, guidance: float) -> list[GenerationRequest]:
    """`n` requests for one prompt, seeds derived from `seed_parts` + replica index."""
    return [GenerationRequest(prompt=prompt, seed=derive_seed(*seed_parts, r), label=label, class_name=class_name,
                              context=context, context_kind=context_kind, guidance_scale=guidance,
                              num_inference_steps=steps, height=size, width=size) for r in range(n)]


def image_grid(images: Sequence[Image.Image], captions: Sequence[str] | None = None, cols: int = 4,
               thumb: int = THUMB_PX) -> Image.Image:
    """A white grid of square thumbnails, each with an optional one-line caption under it."""
    cols = max(1, min(cols, len(images) or 1))
    rows = max(1, math.ceil(len(images) / cols))
    cap_h = 14 if captions else 0
    grid = Image.new("RGB", (cols * thumb, rows * (thumb + cap_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + cap_h)
        grid.paste(ImageOps.fit(im.convert("RGB"), (thumb, thumb), Image.Resampling.BICUBIC), (x, y))
        if captions:
            draw.text((x + 2, y + thumb + 1), str(captions[i])[: thumb // 6], fill="black")
    return grid


def save_png(path: str | os.PathLike[str], image: Image.Image) -> Path:
    """Write a PNG atomically (fixed encoder settings)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, optimize=False)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def write_parquet(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """A parquet table of flat rows, written atomically (columns from the first row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(rows[0]) if rows else []
    table = pa.table({c: [r.get(c) for r in rows] for c in cols}) if rows else pa.table({})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_debug_config(root: str | os.PathLike[str], *, name: str, config: str, requests: Sequence[GenerationRequest],
                       generator: ImageGenerator, class_names: list[str], source_model: str,
                       description: str, version: str = "1.0.0") -> Path:
    """Render `requests` and write them as one debug config of a finalized dataset folder (parquet + wds + card)."""
    from failmode.dataset import ConfigSpec, DebugSample, Manifest, finalize, write_shard

    images = generator.generate(requests)
    samples = [DebugSample(image=im, label=r.label, class_name=r.class_name, context=r.context,
                           context_kind=r.context_kind, prompt=r.prompt, seed=r.seed, generator=generator.ident,
                           source_model=source_model) for r, im in zip(requests, images)]
    write_shard(root, config, "train", 0, 1, samples, class_names=class_names)
    manifest = Manifest(name=name, version=version, class_names=class_names, description=description,
                        configs={config: ConfigSpec(kind="model", splits={"train": 1}, source_model=source_model,
                                                    description=description)},
                        generator={"id": generator.ident})
    finalize(root, manifest)
    log.info("debug config %s: %d images -> %s", config, len(samples), root)
    return Path(root)

"""The one image grid: square thumbnails on white, with an optional one-line caption under each (dataset cards'
example grids, discovery's grids)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageOps


def image_grid(images: Sequence[Image.Image], captions: Sequence[str] | None = None, cols: int = 4,
               thumb: int = 96) -> Image.Image:
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

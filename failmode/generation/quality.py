"""Quality filter: CLIP similarity of each generated image to "a photo of a {class}" and to its context phrase.

Both scores are stored per sample (`clip_class`, `clip_context`); an image whose class score is below the
threshold is a failure of the generator (wrong object, no object) and is replaced from its seed reserve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from failmode.backends import GenerationRequest
from failmode.prompts import fill_template

CLASS_TEMPLATE = "a photo of a {class_name}"


class QualityScorer(Protocol):
    """Scores images against their requests; `keep` decides from the scores."""

    ident: str

    def score(self, images: Sequence[Image.Image], requests: Sequence[GenerationRequest]) -> list[dict[str, float]]:
        """Per image: a dict of named scores (column names of the dataset)."""

    def keep(self, scores: dict[str, float]) -> bool:
        """True if the image passes the filter."""


#: texts per text-encoder call of the quality scorer (a fixed shape: batch-independent embeddings)
TEXT_BATCH = 16


@dataclass
class ClipQuality:
    """CLIP cosine similarity of image to class prompt and to context phrase; drops images below `min_class_score`."""

    clip: Any  # failmode.models.clip.Clip
    min_class_score: float | None = None  # None: score only, never drop
    min_context_score: float | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 64

    def __post_init__(self) -> None:
        from failmode.images import Preprocess

        self.ident = f"clip:{self.clip.ident}"
        self._text: dict[str, torch.Tensor] = {}
        self._prep = Preprocess.from_open_clip(self.clip.model, draft=False)

    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of `texts`, each computed once, in batches of exactly TEXT_BATCH (padded with ""): a text's
        embedding does not depend on which texts were encoded before it (a resumed build scores as a fresh one)."""
        new = sorted({t for t in texts if t not in self._text})
        for i in range(0, len(new), TEXT_BATCH):
            chunk = new[i:i + TEXT_BATCH]
            padded = chunk + [""] * (TEXT_BATCH - len(chunk))
            with torch.inference_mode():
                emb = self.clip.model.encode_text(self.clip.tokenizer(padded).to(self.device)).float()
            for t, e in zip(chunk, torch.nn.functional.normalize(emb[:len(chunk)], dim=-1), strict=True):
                self._text[t] = e
        return torch.stack([self._text[t] for t in texts])

    def _encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP embeddings of `images` with CLIP's preprocessing through `failmode.images`: on a GPU the resize runs
        there (the main thread only wraps the decoded pixels, so the diffusion GPU waits ~1 ms, not ~100 ms of PIL
        resizing per batch); on a CPU PIL resizes, open_clip's exact pixels."""
        import numpy as np

        from failmode.images import crop_pil, device_crops, normalize

        prep, dev = self._prep, torch.device(self.device)
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[i:i + self.batch_size]]
            if dev.type == "cuda":
                x = device_crops([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in chunk], prep, dev)
            else:
                x = torch.stack([torch.from_numpy(crop_pil(im, prep).copy()).permute(2, 0, 1) for im in chunk])
            with torch.inference_mode():
                emb = self.clip.model.encode_image(normalize(x.to(dev), prep))
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1))
        return torch.cat(out)

    def score(self, images: Sequence[Image.Image], requests: Sequence[GenerationRequest]) -> list[dict[str, float]]:
        """`clip_class` (vs "a photo of a {class}") and `clip_context` (vs the context phrase) per image."""
        if not images:
            return []
        img = self._encode_images(images)
        cls = self._encode_texts([fill_template(CLASS_TEMPLATE, r.class_name) for r in requests])
        ctx = self._encode_texts([r.context for r in requests])
        s_cls = (img * cls).sum(-1).tolist()
        s_ctx = (img * ctx).sum(-1).tolist()
        return [{"clip_class": round(a, 6), "clip_context": round(b, 6)} for a, b in zip(s_cls, s_ctx, strict=True)]

    def keep(self, scores: dict[str, float]) -> bool:
        """False when a score is below its threshold."""
        if self.min_class_score is not None and scores["clip_class"] < self.min_class_score:
            return False
        return self.min_context_score is None or scores["clip_context"] >= self.min_context_score

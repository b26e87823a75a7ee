"""`ClipAttributor`: open_clip zero-shot scoring of images against a class's contexts (the "clip" attributor)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import Attributor, BackendContext
from failmode.data.sources import ImageSource
from failmode.errors import ValidationError
from failmode.io import read_json, stable_hash
from failmode.options import FeatureOptions
from failmode.progress import bar
from failmode.prompts import fill_template

log = logging.getLogger(__name__)

TEMPLATES_PATH = Path(__file__).with_name("templates.json")
TEMPLATES_FORMAT = "failmode-templates/1"


def load_templates(spec: str | os.PathLike[str] | Sequence[str] | None = None, kind: str = "background") -> list[str]:
    """Prompt templates for `kind`: from the shipped templates.json (None), another such JSON file, or a list."""
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        templates, where = list(spec), "templates"
    else:
        path = Path(spec) if spec is not None else TEMPLATES_PATH
        doc = read_json(path)
        if doc.get("format") != TEMPLATES_FORMAT:
            raise ValidationError(f"{path}: expected format {TEMPLATES_FORMAT!r}, found {doc.get('format')!r}")
        kinds = doc.get("kinds", {})
        templates, where = kinds.get(kind, kinds.get("default", [])), f"{path} ({kind})"
    bad = [t for t in templates if "{class_name}" not in t or "{context}" not in t]
    if not templates or bad:
        raise ValidationError(f"{where}: every template needs {{class_name}} and {{context}}"
                              + (f" (not {bad[0]!r})" if bad else " (none given)"))
    return templates


class ClipAttributor(Attributor):
    """CLIP zero-shot attribution: images and ensemble-averaged context prompts in CLIP space.

    `model`/`pretrained` name any open_clip model and tag or a local checkpoint (`failmode.models.clip`), or
    pass a ready `clip` (a `failmode.models.clip.Clip`). `features` says how images are read (the image side of a
    `FeatureOptions`: device, batch (default 256), precision, loader workers, decoder; its cache is the caller's).
    Images go through `failmode.images` (`decode`: "cpu" workers, "hybrid" worker decode + device resize, or "gpu"
    nvJPEG; "auto": hybrid on CUDA, else cpu), with bf16 autocast and channels_last on CUDA; the decoder is part of
    the embedding cache key.
    """

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> ClipAttributor:
        """CLIP with `options`, prompted for the run's vocabulary kind, reading images on its device (unless `options`
        set them: `kind`, the device of `features`)."""
        features = options.pop("features", None) or FeatureOptions()
        if features.device is None and context.device is not None:
            features = dataclasses.replace(features, device=context.device)
        return cls(**{"kind": context.kind, **options, "features": features})

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", *, clip: Any | None = None,
                 templates: str | os.PathLike[str] | Sequence[str] | None = None, kind: str = "background",
                 features: FeatureOptions | None = None, draft: bool = True) -> None:
        import torch

        from failmode.images import Preprocess, default_workers, resolve_decode
        from failmode.models.clip import create_clip
        from failmode.runtime import autocast_dtype, pick_device

        f = features or FeatureOptions()
        self.device = pick_device(f.device)
        self.clip = clip if clip is not None else create_clip(model, pretrained, device=self.device)
        self.model = self.clip.model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.templates = load_templates(templates, kind)
        self.prep = Preprocess.from_open_clip(self.model, draft=draft)
        self.dtype = autocast_dtype(self.device, f.precision)
        self.batch_size, self.decode = f.batch_size or 256, resolve_decode(f.decode, self.device)
        self.num_workers = default_workers(self.device) if f.num_workers is None else f.num_workers
        self.ident = f"clip:{self.clip.ident}"
        self._texts: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}  # (class name, contexts) -> embeddings

    @property
    def cache_key(self) -> str | None:
        """Identity of the image embeddings (None for random weights: those are never cached)."""
        pretrained = self.clip.pretrained
        if pretrained is None:
            return None
        if os.path.isfile(pretrained):
            st = os.stat(pretrained)
            pretrained = f"{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
        return stable_hash({"clip": self.clip.name, "weights": pretrained, "prep": repr(self.prep),
                            "decode": self.decode, "dtype": str(self.dtype)}, n=24)

    def encode_images(self, source: ImageSource, indices: Sequence[int]) -> np.ndarray:
        """L2-normalised image embeddings [len(indices), D] (float32)."""
        import torch

        from failmode.images import iter_crops, normalize
        from failmode.runtime import HostArrays, autocast

        out = HostArrays()  # copies to the host queue behind the GPU work (no per-batch wait)
        with torch.inference_mode(), bar("clip images", total=len(indices), unit="img") as b:
            for x in iter_crops(source, indices, self.prep, device=self.device, batch_size=self.batch_size,
                                num_workers=self.num_workers, decode=self.decode):
                with autocast(self.device, self.dtype):
                    emb = self.model.encode_image(normalize(x, self.prep, self.dtype or torch.float32))
                out.add(torch.nn.functional.normalize(emb.float(), dim=-1))
                b.update(len(x))
        return out.numpy() if len(out) else np.zeros((0, self._dim()), np.float32)

    def encode_contexts(self, class_name: str, contexts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean over templates of each context's prompt embeddings [len(contexts), D]."""
        return self.encode_context_sets([(class_name, contexts)])[0]

    def encode_context_sets(self, sets: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """`encode_contexts` of many classes at once: the prompts of every class not seen before are tokenised
        together and encoded in batches planned by `_text_batches` (on a GPU ImageNet's ~40,000 prompts take ~40
        full batches, not 1,000 small ones); results stay in memory, so tables attributed with this attributor
        share them."""
        import torch

        from failmode.runtime import autocast

        keys = [(name, tuple(c)) for name, c in sets]
        todo = list(dict.fromkeys(k for k in keys if k[1] and k not in self._texts))
        prompts = [fill_template(t, name, c) for name, cs in todo for c in cs for t in self.templates]
        if prompts:
            parts = []
            with torch.inference_mode():
                tokens = self.clip.tokenizer(prompts)
                for s, e in self._text_batches([len(cs) * len(self.templates) for _, cs in todo]):
                    with autocast(self.device, self.dtype):
                        emb = self.model.encode_text(tokens[s:e].to(self.device))
                    parts.append(torch.nn.functional.normalize(emb.float(), dim=-1))
                emb = torch.cat(parts)
                start = 0
                for name, cs in todo:
                    n = len(cs) * len(self.templates)
                    mean = emb[start:start + n].view(len(cs), len(self.templates), -1).mean(1)
                    self._texts[(name, cs)] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
                    start += n
        empty = np.zeros((0, self._dim()), np.float32)
        return [self._texts[k] if k[1] else empty for k in keys]

    def _text_batches(self, sizes: Sequence[int]) -> list[tuple[int, int]]:
        """(start, end) prompt ranges to encode: on a GPU full batches across classes (small calls leave it
        launch-bound); on a CPU one class per call, split at `batch_size` (measured faster there: 12 vs 10
        prompts/s for ViT-B-32 at 40 vs 64 prompts per call, one thread; docs/benchmarks.md)."""
        total = sum(sizes)
        if self.device.type == "cuda":
            return [(s, min(s + self.batch_size, total)) for s in range(0, total, self.batch_size)]
        out, start = [], 0
        for n in sizes:
            out += [(s, min(s + self.batch_size, start + n)) for s in range(start, start + n, self.batch_size)]
            start += n
        return out

    def scores(self, image_emb: np.ndarray, context_emb: np.ndarray) -> np.ndarray:
        """Cosine similarity times CLIP's learned logit scale (softmax of these is CLIP's zero-shot probability)."""
        scale = float(self.model.logit_scale.exp().item()) if hasattr(self.model, "logit_scale") else 100.0
        return scale * (image_emb @ context_emb.T)

    def _dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

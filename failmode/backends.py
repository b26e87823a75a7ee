"""The two pluggable backends of the method and their registries.

An `Attributor` scores images against context phrases (CLIP zero-shot in production). An `ImageGenerator` renders
one image per `GenerationRequest` (Stable Diffusion in production). Offline stand-ins register beside the real
ones and say so in their `ident`, which every output records.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from failmode.errors import UsageError
from failmode.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

    from failmode.data.sources import ImageSource


class Attributor(ABC):
    """Embeds images and the contexts of a class in one space; attribution picks the most similar context."""

    #: recorded in every output, e.g. "clip:ViT-B-32/openai" or "exemplar:... (stand-in for CLIP)"
    ident: str

    @abstractmethod
    def encode_images(self, source: ImageSource, indices: Sequence[int]) -> np.ndarray:
        """L2-normalised embeddings [len(indices), D] of the source's images at `indices`."""

    @abstractmethod
    def encode_contexts(self, class_name: str, contexts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings [len(contexts), D] of `class_name` seen in each context."""

    def encode_context_sets(self, sets: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """`encode_contexts` of many (class name, contexts) pairs; backends may batch across classes."""
        return [self.encode_contexts(name, contexts) for name, contexts in sets]

    def scores(self, image_emb: np.ndarray, context_emb: np.ndarray) -> np.ndarray:
        """Similarity logits [N, K] (cosine similarity; subclasses may scale it)."""
        return image_emb @ context_emb.T

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> Attributor:
        """The attributor built with `options` and what it takes of the run's `context` (by default nothing)."""
        return cls(**options)


@dataclass(frozen=True)
class GenerationRequest:
    """One image to render: everything needed to render it again bit for bit (a row of the sample plan)."""

    prompt: str
    seed: int
    label: int
    class_name: str
    context: str
    context_kind: str = "background"
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    height: int = 512
    width: int = 512

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for the plan table)."""
        return asdict(self)


class ImageGenerator(ABC):
    """Renders images; the image of a request depends only on the request (its seed), never on its batch."""

    #: recorded in every output, e.g. "diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5@<rev>"
    ident: str
    #: requests per `generate` call in a generation run (its fixed kernel batch; halved on out-of-memory)
    batch_size: int = 16
    #: the Hub licence id its images carry (a key of `cards/licenses.json`; "other" when not known)
    license: str = "other"
    #: the card's licence sentence where the id alone does not say where the images' terms come from ("": the
    #: licence's own sentence)
    license_note: str = ""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """One RGB image per request, in order."""

    def safety_checker(self) -> Callable[[Sequence[Image.Image]], list[bool]] | None:
        """A function flagging unsafe images (one bool per image), or None when the generator has none or it is off."""
        return None

    def describe(self) -> dict[str, Any]:
        """How this generator renders, as the manifest records it (speed options, precision; JSON-ready)."""
        return {}

    @classmethod
    def from_context(cls, context: BackendContext, **options: Any) -> ImageGenerator:
        """The generator built with `options` and what it takes of the run's `context` (by default nothing)."""
        return cls(**options)


#: name -> Attributor class ("clip", "exemplar", ...), built by `construct` through its `from_context`
ATTRIBUTORS: Registry[type[Attributor]] = Registry("attributor")
#: name -> ImageGenerator class ("diffusers", "composite", ...), built by `construct` through its `from_context`
GENERATORS: Registry[type[ImageGenerator]] = Registry("generator")

# Built-in backends, imported on first use.
ATTRIBUTORS.register_lazy("clip", "failmode.mining.attribution:ClipAttributor")
ATTRIBUTORS.register_lazy("exemplar", "failmode.world.backends:ExemplarAttributor")
ATTRIBUTORS.register_lazy("pixels", "failmode.world.pixels:PixelAttributor")
GENERATORS.register_lazy("diffusers", "failmode.generation.render:DiffusersGenerator")
GENERATORS.register_lazy("composite", "failmode.world.backends:CompositeGenerator")


@dataclass(frozen=True)
class BackendContext:
    """What a run offers every backend besides its own options: the device, the vocabulary kind, the classifiers'
    dataset (an exported world folder for the stand-ins) and the cache folder. A backend's `from_context` takes
    what it uses of it and says so; nothing is matched by parameter name."""

    device: str | None = None
    kind: str = "background"
    dataset: str | None = None
    cache_dir: str | os.PathLike[str] | None = None


def construct(registry: Registry[Any], name: str, options: dict[str, Any] | None = None,
              context: BackendContext | None = None) -> Any:
    """Build backend `name` of `registry` through its `from_context(context, **options)` (the one contract every
    registered backend class follows: options set in `options` win over what it takes from `context`), or a plain
    factory with `options` alone; bad options are one line."""
    backend = registry.get(name)
    opts = dict(options or {})
    make = getattr(backend, "from_context", None)
    try:
        if make is None:  # a plain factory registered as `name -> factory(**options)` takes no context
            return backend(**opts)
        return make(context or BackendContext(), **opts)
    except TypeError as e:
        raise UsageError(f"{registry.kind} {name!r}: bad options {sorted(opts)} ({e})") from None

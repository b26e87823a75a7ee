"""open_clip models by name and pretrained tag, Hub id, or local checkpoint; configs shipped here are registered."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from failmode.errors import LoadError, UsageError
from failmode.hub import load_from_hub_or_local

CONFIG_DIR = Path(__file__).parent / "configs" / "open_clip"


@dataclass
class Clip:
    """A CLIP model with its image preprocessing and text tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str | None
    seed: int = 0  # of the random init when `pretrained` is None

    @property
    def ident(self) -> str:
        """`name/pretrained` (`name/random-init-seed<N>` for seeded random weights), recorded in outputs."""
        return f"{self.name}/{self.pretrained or f'random-init-seed{self.seed}'}"


@functools.cache
def register_configs() -> None:
    """Add failmode's shipped open_clip JSON configs (e.g. `failmode-tiny-clip`) to open_clip's registry."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def create_clip(name: str = "ViT-B-32", pretrained: str | None = "openai", device: str | torch.device = "cpu",
                seed: int = 0) -> Clip:
    """Create an open_clip model.

    `name` is an open_clip model name or a path to a JSON model config. `pretrained` is an open_clip tag
    ("openai", "laion2b_s34b_b79k"), a local checkpoint file, or None for random init from `seed` (the same
    weights in every process; tests, benchmarks).
    An `hf-hub:org/repo` name loads config and weights from the Hub.
    """
    import open_clip

    register_configs()
    if name.endswith(".json"):
        if not os.path.exists(name):
            raise LoadError(f"open_clip config {name} does not exist")
        open_clip.add_model_config(name)
        name = Path(name).stem
    if not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise UsageError(f"open_clip does not know a model called {name!r}")

    def load(tag: str | None, local_only: bool) -> tuple[Any, Any]:
        from huggingface_hub import constants

        old = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = old or local_only
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=device)
            return model, preprocess
        except RuntimeError as e:  # open_clip raises RuntimeError for unknown tags
            raise LoadError(str(e).splitlines()[0]) from e
        finally:
            constants.HF_HUB_OFFLINE = old

    if pretrained is None:
        with torch.random.fork_rng(devices=[]):  # seeded: the same random model in every process
            torch.manual_seed(seed)
            model, preprocess = load(None, True)
    elif os.path.exists(pretrained):
        model, preprocess = load_from_hub_or_local(
            pretrained, load, what=f"open_clip checkpoint for {name}", local_hint="check the checkpoint file"
        )
    else:
        if not name.startswith("hf-hub:") and pretrained not in open_clip.list_pretrained_tags_by_model(name):
            tags = open_clip.list_pretrained_tags_by_model(name)
            known = f"known: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {name}"
            hint = (" (random weights: null in a preset, --clip-pretrained none on the command line)"
                    if pretrained.lower() in ("none", "null", "random") else "")
            raise UsageError(f"pretrained {pretrained!r} is neither a local checkpoint file nor an open_clip tag of "
                             f"{name} ({known}){hint}")
        model, preprocess = load_from_hub_or_local(
            f"{name}/{pretrained}",
            lambda _ident, local_only: load(pretrained, local_only),
            what=f"open_clip weights {name}/{pretrained}",
            local_hint="download the checkpoint elsewhere and pass its path as --clip-pretrained /path/to/open_clip_model.bin",
        )
    model.eval()
    return Clip(model, preprocess, open_clip.get_tokenizer(name), name, pretrained, seed)

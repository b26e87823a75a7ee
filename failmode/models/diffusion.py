"""diffusers text-to-image pipelines from a Hub id or a local directory (`save_pretrained` layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from failmode.errors import LoadError
from failmode.hub import load_from_hub_or_local

DEFAULT_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def load_pipeline(
    ident: str = DEFAULT_GENERATOR,
    *,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Any:
    """Load a diffusers text-to-image pipeline; the safety checker is off unless `safety_checker` is passed."""
    from diffusers import AutoPipelineForText2Image

    local = Path(ident).expanduser()
    if local.is_dir() and not (local / "model_index.json").exists():
        raise LoadError(f"{ident} is not a diffusers pipeline directory (no model_index.json)")
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)

    def load(i: str, local_only: bool) -> Any:
        return AutoPipelineForText2Image.from_pretrained(
            i, revision=revision, torch_dtype=torch_dtype, local_files_only=local_only, **kwargs
        )

    return load_from_hub_or_local(
        ident, load, what=f"the diffusion pipeline {ident!r}",
        local_hint="pass --generator /path/to/pipeline_dir (a diffusers save_pretrained folder)",
    )

"""What decides a build's bytes besides its settings: the device that rendered and the resolved commit of every Hub
model (library versions are the manifest's `environment`); recorded in the manifest, compared on regeneration."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
LOCAL = "local"  # the resolved revision of a model read from a folder or file
UNRESOLVED = "unresolved"  # a Hub model whose commit is not in the local cache


def device_record(device: Any = "cpu") -> dict[str, str]:
    """The kind and name of the device that renders and scores (a GPU's model; a CPU's architecture)."""
    import torch

    dev = torch.device(str(device))
    if dev.type == "cuda":
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(dev)}
    return {"device": dev.type, "device_name": platform.machine() or platform.processor() or "unknown"}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between a recorded environment and this one, in one line ("" when nothing does)."""
    keys = sorted(set(recorded) | set(current))
    return ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys
                     if recorded.get(k) != current.get(k))


def hub_revision(repo_id: str, revision: str | None = None, *, repo_type: str = "model") -> str:
    """The commit hash a Hub repo (at `revision`, default main) resolves to in the local cache: what a model load
    just used. LOCAL for a folder or file, UNRESOLVED when the cache does not hold it (nothing is downloaded)."""
    if Path(repo_id).expanduser().exists():
        return LOCAL
    if revision and COMMIT_RE.match(revision):
        return revision
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, revision=revision, repo_type=repo_type, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, offline, or not a Hub id: say so rather than guess
        return UNRESOLVED
    commit = Path(path).name
    return commit if COMMIT_RE.match(commit) else UNRESOLVED


def timm_revision(model: str, weights: str | None) -> str:
    """The resolved commit of a timm classifier's weights: LOCAL for a weights file, else its Hub repo's."""
    from failmode.options import weights_or_none

    if weights_or_none(weights) is None:
        return "random"
    if weights and weights != "timm":
        return LOCAL if Path(weights).expanduser().exists() else UNRESOLVED
    try:
        import timm

        repo = timm.models.get_pretrained_cfg(model).hf_hub_id
    except Exception:  # noqa: BLE001 - a name timm does not know has no Hub repo to resolve
        return UNRESOLVED
    return hub_revision(repo) if repo else UNRESOLVED


def clip_revision(model: str, pretrained: str | None) -> str:
    """The resolved commit of open_clip weights: LOCAL for a checkpoint file, "random" for none, else the Hub
    repo's commit that open_clip's pretrained tag points at."""
    if pretrained is None:
        return "random"
    if Path(pretrained).expanduser().exists() or Path(model).expanduser().exists():
        return LOCAL
    if pretrained.startswith("hf-hub:"):
        return hub_revision(pretrained.removeprefix("hf-hub:"))
    try:
        import open_clip

        repo = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "").rstrip("/")
    except Exception:  # noqa: BLE001
        return UNRESOLVED
    return hub_revision(repo) if repo else UNRESOLVED

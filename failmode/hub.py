"""Resolving model and dataset identifiers: a local directory or file, else a Hugging Face Hub id.

Every loader in failmode goes through `load_from_hub_or_local`, so an unreachable hub, offline mode or a
missing repository becomes one clear line that says what was being loaded and how to point at a local copy,
instead of a stack of retries.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from failmode.errors import LoadError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: a Hub repository id, ORG/NAME, as the Hub accepts it: each part letters, digits, '_', '-', '.', at most 96
#: characters, not starting or ending with '-' or '.', without '--' or '..' (so never '.' or '..')
_REPO_PART = r"(?![^/]*(?:--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$", re.ASCII)

PROBE_TIMEOUT_S = 3.0
#: seconds any Hub HTTP request of a push may go without progress (huggingface_hub's own client has no timeout):
#: a hung Hub fails the push in about this long; a slow upload that keeps sending is not cut
REQUEST_TIMEOUT_S = 15.0


def hub_offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE=1, the variable huggingface_hub honours)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The Hub endpoint huggingface_hub would use (HF_ENDPOINT, default https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def _reachable(endpoint: str, timeout: float) -> str | None:
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:  # DNS failure, refused, timeout
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the Hub endpoint accepts a TCP connection within `timeout` seconds, else why not."""
    return _reachable(hub_endpoint(), timeout)


def is_local(ident: str | os.PathLike[str]) -> bool:
    """True if `ident` names an existing local file or directory."""
    return Path(ident).expanduser().exists()


def looks_like_path(ident: str) -> bool:
    """True if `ident` is clearly meant as a filesystem path (absolute, ./, ../, ~ or an OS separator start)."""
    return ident.startswith(("/", "./", "../", "~")) or os.sep + os.sep in ident


def load_from_hub_or_local(
    ident: str | os.PathLike[str],
    loader: Callable[[str, bool], T],
    *,
    what: str,
    local_hint: str,
) -> T:
    """Load `ident` with `loader(ident, local_files_only)`, a local path first, else from the Hub or its cache.

    `what` names the thing for messages ("the diffusion pipeline 'runwayml/stable-diffusion-v1-5'");
    `local_hint` says how to point at a local copy ("pass --generator /path/to/pipeline_dir").
    Errors become a LoadError of one line. When the Hub cannot be reached (or HF_HUB_OFFLINE=1) the
    local cache is tried with `local_files_only=True` before giving up, with no retries against the network.
    """
    ident = os.fspath(ident)
    if is_local(ident):
        try:
            return loader(str(Path(ident).expanduser()), True)
        except LoadError:
            raise
        except Exception as e:  # a corrupt local copy: say which file and why, in one line
            raise LoadError(f"could not load {what} from local path {ident}: {_one_line(e)}") from e
    if looks_like_path(ident):
        raise LoadError(f"could not load {what}: local path {ident} does not exist")

    reason = "HF_HUB_OFFLINE=1" if hub_offline() else hub_unreachable_reason()
    if reason is not None:
        try:
            return loader(ident, True)
        except Exception as e:
            log.debug("cache lookup for %s failed: %s", ident, e)
            raise LoadError(
                f"could not load {what}: the Hugging Face Hub is not reachable ({reason}) and no cached copy "
                f"was found; {local_hint}"
            ) from None
    try:
        return loader(ident, False)
    except Exception as e:
        raise LoadError(f"could not load {what} from the Hub: {_one_line(e)}; {local_hint}") from e


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}"[:300]

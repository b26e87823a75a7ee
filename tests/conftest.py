"""Test harness: everything offline. Any non-loopback connection or DNS lookup fails the test that made it."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile

import pytest

# Set before any Hugging Face library is imported by a test: no telemetry, no download counters, and a Hub
# endpoint on a closed loopback port, so even a missed code path cannot reach the internet.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ.setdefault("FAILMODE_PROGRESS", "0")
# The default cache (features, embeddings) of anything a test runs without naming one: a folder of this run, never
# the user's ~/.cache/failmode (no stale entry from another checkout can make a test pass).
os.environ["FAILMODE_CACHE_DIR"] = tempfile.mkdtemp(prefix="failmode-test-cache-")
atexit.register(shutil.rmtree, os.environ["FAILMODE_CACHE_DIR"], True)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

_attempts: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback(host: object) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard_address(address: object) -> None:
    if isinstance(address, tuple) and not _is_loopback(address[0]):
        _attempts.append(repr(address))
        raise OSError(f"network disabled in tests: connection to {address!r}")


def _connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard_address(address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard_address(address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if not _is_loopback(host) and not (isinstance(host, str) and _is_ip(host)):
        _attempts.append(f"DNS {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests: lookup of {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _no_network() -> object:
    """Fail any test that tried to leave the machine, even if the library swallowed the error."""
    start = len(_attempts)
    yield
    tried = _attempts[start:]
    if tried:
        pytest.fail(f"test attempted network access: {tried[:3]}")


@pytest.fixture
def network_attempts() -> list[str]:
    """The list of blocked attempts; a test that makes some on purpose removes them before it ends."""
    return _attempts


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random open_clip model (session-wide; treat as read-only)."""
    from failmode.testing import tiny_clip

    return tiny_clip()


@pytest.fixture(scope="session")
def tiny_pipeline():
    """A tiny random diffusers StableDiffusionPipeline (session-wide; treat as read-only)."""
    from failmode.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """The tiny pipeline saved in diffusers' save_pretrained layout."""
    from failmode.testing import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd")


@pytest.fixture
def tiny_classifier():
    """A fresh tiny timm classifier with 10 classes."""
    from failmode.testing import tiny_classifier

    return tiny_classifier(10)

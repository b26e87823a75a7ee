"""Device, dtype and thread choices made in one place."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed-precision dtype for `device`: bf16 on GPUs that support it, else fp16 on CUDA, None on CPU.

    `precision` may force "fp32" (None), "fp16" or "bf16".
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast on `device` when `dtype` is set, else a no-op."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def configure_cpu_threads() -> None:
    """Use FAILMODE_THREADS (or OMP_NUM_THREADS) torch threads; small ops thrash with too many on shared cores."""
    n = os.environ.get("FAILMODE_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if n:
        torch.set_num_threads(max(1, int(n)))

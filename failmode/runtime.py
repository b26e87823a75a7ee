"""Device, dtype and thread choices made in one place."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given ("cpu", "cuda", "cuda:1") and present on this machine, else CUDA when available, else CPU."""
    if device:
        return check_device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_devices() -> list[str]:
    """The devices this machine has: cpu, cuda:0..N-1, mps."""
    out = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0))]
    mps = getattr(torch.backends, "mps", None)
    return out + (["mps"] if mps is not None and mps.is_available() else [])


def check_device(device: str) -> torch.device:
    """`device` as a torch.device when this machine has it; else UsageError in one line naming the devices it has
    (checked when a command parses --device, before any data or model loads)."""
    from failmode.errors import UsageError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device (available here: "
                         f"{', '.join(available_devices())})") from None
    have = available_devices()
    name = dev.type if dev.index is None else f"{dev.type}:{dev.index}"
    ok = dev.type == "cpu" or name in have or (dev.index is None and any(h.startswith(f"{dev.type}:") for h in have))
    if not ok:
        raise UsageError(f"--device {device}: not present on this machine (available here: {', '.join(have)})")
    return dev


def device_arg(text: str) -> str:
    """An argparse `type` for --device: the device as given when this machine has it, else a one-line usage error."""
    import argparse

    from failmode.errors import UsageError

    try:
        check_device(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--device ")) from None
    return text


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


#: CPU intra-op threads for rendering and scoring unless a build sets another count (`render.threads`): fixed
#: per build, never inherited from the launcher (torchrun sets OMP_NUM_THREADS=1), because oneDNN's CPU kernels
#: round differently with other thread counts
DEFAULT_THREADS = 1


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """torch uses exactly `n` CPU intra-op threads inside the block (the previous count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HostArrays:
    """Collects per-batch device tensors on the host without waiting for each batch.

    On CUDA each `add` queues a non-blocking copy into pinned memory, so the next batch's work is queued while
    this one finishes; `numpy()` waits once and concatenates. A synchronous `.cpu()` per batch would instead stall
    the loop every batch, leaving the GPU idle while the next batch is fetched and launched.
    """

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._cuda = False

    def add(self, t: torch.Tensor) -> None:
        """Queue the copy of `t` (detached, float32) to the host."""
        t = t.detach().float()
        if t.is_cuda:
            self._cuda = True
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            self._parts.append(host)
        else:
            self._parts.append(t.clone() if t.requires_grad else t)

    def __len__(self) -> int:
        return len(self._parts)

    def numpy(self) -> Any:
        """All batches concatenated along the first axis, as a numpy array (None when nothing was added)."""
        if not self._parts:
            return None
        if self._cuda:
            torch.cuda.synchronize()
        return torch.cat(self._parts).numpy()

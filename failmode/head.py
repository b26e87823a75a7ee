"""The linear head of a frozen classifier, retrained on cached features with L(original) + lambda * L(debug).

Objective (documented semantics; `lam = 0` is plain head training, bit for bit):

    f(W, b) = mean_i CE(W x_i + b, y_i)            over the N_o original samples
            + lam * mean_j CE(W d_j + b, e_j)      over the N_d debug samples
            + weight_decay / 2 * (|W|^2 + |b|^2)   (coupled L2, as torch.optim.SGD applies it to every parameter)

minimised by full-batch SGD with heavy-ball momentum exactly as `torch.optim.SGD(lr, momentum, weight_decay)`
steps an `nn.Linear` (buf = momentum * buf + grad; p -= lr * buf). Both terms are one weighted cross-entropy over the
concatenated features (weight 1/N_o per original sample, lam/N_d per debug sample); with `lam = 0` the debug samples
are dropped, so the run is the plain one. The gradient of softmax cross-entropy is analytic, (softmax - onehot) * w,
so one epoch is two matmuls and a few fused elementwise passes into preallocated buffers: no autograd, no per-epoch
allocations. On CUDA matmuls run in TF32 (or bf16 with fp32 master weights); on CPU in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from failmode.errors import UsageError
from failmode.linear import ArrayLike, LinearHead, as_tensor
from failmode.progress import bar
from failmode.runtime import pick_device

log = logging.getLogger(__name__)

#: matmul precisions of the trainer: "auto" is tf32 on CUDA and fp32 elsewhere
PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def accuracy(head: LinearHead, x: ArrayLike, y: ArrayLike) -> float:
    """Top-1 accuracy of `head` on features `x` with labels `y` (NaN for an empty set)."""
    y = np.asarray(as_tensor(y).cpu().numpy(), dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    return float((head.predict(x) == y).mean())


def _stack(train_x: ArrayLike, train_y: ArrayLike, debug_x: ArrayLike | None, debug_y: ArrayLike | None,
           lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenated features, labels and per-sample loss weights (1/N_o original, lam/N_d debug)."""
    x, y = as_tensor(train_x, torch.float32), as_tensor(train_y, torch.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(y) == 0:
        raise UsageError(f"train features must be [N, D] with N labels, N > 0; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if lam < 0 or not math.isfinite(lam):
        raise UsageError(f"lambda must be a finite number >= 0, got {lam}")
    if (debug_x is None) != (debug_y is None):
        raise UsageError("give both debug_x and debug_y, or neither")
    w = torch.full((len(y),), 1.0 / len(y))
    if debug_x is None or lam == 0:
        return x, y, w
    dx, dy = as_tensor(debug_x, torch.float32), as_tensor(debug_y, torch.int64)
    if dx.ndim != 2 or dx.shape[1] != x.shape[1] or dy.shape != (dx.shape[0],):
        raise UsageError(f"debug features must be [M, {x.shape[1]}] with M labels; got {tuple(dx.shape)} and "
                         f"{tuple(dy.shape)}")
    if len(dy) == 0:
        raise UsageError("the debug set is empty but lambda > 0")
    dw = torch.full((len(dy),), lam / len(dy))
    return torch.cat([x, dx]), torch.cat([y, dy]), torch.cat([w, dw])


def _init_params(init: LinearHead | tuple[ArrayLike, ArrayLike] | None, num_classes: int, dim: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (weight, bias): a copy of `init`, else nn.Linear's uniform(+-1/sqrt(D)) init from `seed`."""
    if init is None:
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(dim)
        weight = torch.rand(num_classes, dim, generator=g) * (2 * bound) - bound
        bias = torch.rand(num_classes, generator=g) * (2 * bound) - bound
        return weight, bias
    head = init if isinstance(init, LinearHead) else LinearHead(*init)
    if head.weight.shape != (num_classes, dim):
        raise UsageError(f"init head is {tuple(head.weight.shape)}, the data needs ({num_classes}, {dim})")
    return head.weight.clone(), head.bias.clone()


@contextlib.contextmanager
def _matmul_precision(mode: str) -> Iterator[None]:
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if mode == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


class _FullBatchSGD:
    """The training loop's state: features, labels, loss weights, parameters and preallocated buffers."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 device: torch.device, precision: str) -> None:
        self.bf16 = precision == "bf16"
        self.x = x.to(device, torch.bfloat16 if self.bf16 else torch.float32).contiguous()
        n, c = len(y), weight.shape[0]
        self.w = w.to(device)
        self.flat = (torch.arange(n, device=device) * c + y.to(device))  # positions of the true-class logits
        self.neg_w = -self.w
        self.weight, self.bias = weight.to(device).contiguous(), bias.to(device).contiguous()
        self.buf_w, self.buf_b = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
        self.grad_w, self.grad_b = torch.empty_like(self.weight), torch.empty_like(self.bias)
        self.z = torch.empty(n, c, device=device)

    def gradient(self, weight_decay: float) -> None:
        """grad_w, grad_b <- gradient of the objective at the current parameters."""
        if self.bf16:  # bf16 matmuls with fp32 accumulation; softmax, weights and momentum stay fp32
            self.z.copy_(torch.mm(self.x, self.weight.to(torch.bfloat16).T)).add_(self.bias)
        else:
            torch.addmm(self.bias, self.x, self.weight.T, out=self.z)
        torch.softmax(self.z, 1, out=self.z)
        self.z.mul_(self.w[:, None])                       # (softmax - onehot) * w, in place
        self.z.view(-1).index_add_(0, self.flat, self.neg_w)
        if self.bf16:
            self.grad_w.copy_(torch.mm(self.z.T.to(torch.bfloat16), self.x)).add_(self.weight, alpha=weight_decay)
        else:
            torch.addmm(self.weight, self.z.T, self.x, beta=weight_decay, out=self.grad_w)
        torch.sum(self.z, 0, out=self.grad_b).add_(self.bias, alpha=weight_decay)

    def run(self, epochs: int, lr: float, momentum: float, weight_decay: float) -> None:
        """`epochs` full-batch SGD steps, each exactly torch.optim.SGD's (dampening 0, no Nesterov)."""
        with bar("head training", total=epochs, unit="epoch") as b:
            for _ in range(epochs):
                self.gradient(weight_decay)
                self.buf_w.mul_(momentum).add_(self.grad_w)
                self.buf_b.mul_(momentum).add_(self.grad_b)
                self.weight.add_(self.buf_w, alpha=-lr)
                self.bias.add_(self.buf_b, alpha=-lr)
                b.update(1)


def train_head(
    train_x: ArrayLike,
    train_y: ArrayLike,
    *,
    debug_x: ArrayLike | None = None,
    debug_y: ArrayLike | None = None,
    lam: float = 0.5,
    lr: float = 0.2,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    epochs: int = 1000,
    num_classes: int | None = None,
    init: LinearHead | tuple[ArrayLike, ArrayLike] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    precision: str = "auto",
) -> LinearHead:
    """Train a linear head on cached features with mean CE(original) + lam * mean CE(debug) (module docstring).

    Inputs are numpy arrays or tensors. `num_classes` defaults to the init head's, else the largest label + 1.
    `init` is a head to start from (e.g. the model's own classifier); None draws nn.Linear's init from `seed`.
    `precision`: "auto" (TF32 matmuls on CUDA, fp32 on CPU), "fp32", "tf32" or "bf16" (bf16 matmuls, fp32 master
    weights, softmax and momentum).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if epochs < 0 or lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
        raise UsageError(f"need epochs >= 0, lr > 0, 0 <= momentum < 1, weight_decay >= 0 "
                         f"(got {epochs}, {lr}, {momentum}, {weight_decay})")
    x, y, w = _stack(train_x, train_y, debug_x, debug_y, lam)
    if num_classes is None:
        num_classes = init.num_classes if isinstance(init, LinearHead) else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise UsageError(f"labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    weight, bias = _init_params(init, num_classes, x.shape[1], seed)
    dev = pick_device(str(device) if device is not None else None)
    mode = ("tf32" if dev.type == "cuda" else "fp32") if precision == "auto" else precision
    loop = _FullBatchSGD(x, y, w, weight, bias, dev, mode)
    with _matmul_precision(mode), torch.inference_mode():
        loop.run(epochs, lr, momentum, weight_decay)
    log.debug("trained a %dx%d head on %d samples for %d epochs on %s (%s)", num_classes, x.shape[1], len(y),
              epochs, dev, mode)
    return LinearHead(loop.weight.cpu(), loop.bias.cpu())


def head_objective(head: LinearHead, train_x: ArrayLike, train_y: ArrayLike, *, debug_x: ArrayLike | None = None,
                   debug_y: ArrayLike | None = None, lam: float = 0.5, weight_decay: float = 5e-4) -> float:
    """The objective `train_head` minimises, evaluated at `head` (float64, for checks and reports)."""
    x, y, w = _stack(train_x, train_y, debug_x, debug_y, lam)
    W, b = head.weight.double(), head.bias.double()
    ce = torch.nn.functional.cross_entropy(x.double() @ W.T + b, y, reduction="none")
    reg = 0.5 * weight_decay * (W.square().sum() + b.square().sum())
    return float((ce * w.double()).sum() + reg)


#: the recipe of a new dataset's head on a frozen backbone (mining's `--head train`, evaluate's `--head train`)
DATASET_HEAD_RECIPE = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 1000, "seed": 0, "init": "random"}


def train_dataset_head(features: ArrayLike, labels: ArrayLike, num_classes: int, *,
                       device: str | torch.device | None = None) -> LinearHead:
    """The head a frozen backbone gets on a dataset it was not trained for (`DATASET_HEAD_RECIPE`, random init).

    Mining and evaluation both call this on the same train subset, so `--head train` gives the same head in both.
    """
    r = DATASET_HEAD_RECIPE
    return train_head(features, labels, num_classes=num_classes, lr=r["lr"], momentum=r["momentum"],
                      weight_decay=r["weight_decay"], epochs=r["epochs"], seed=r["seed"], init=None, device=device)

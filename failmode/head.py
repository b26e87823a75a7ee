"""The linear head of a frozen classifier: `LinearHead` (logits = features @ weight.T + bias), retrained on cached
features with L(original) + lambda * L(debug) (`train_head`, its options `HeadParams`), and applied by mining.

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

Heads on datasets a model was not trained for (CIFAR, custom folders) go through `apply_head`, which takes, in order
of preference: an object with `weight` [C, D] and `bias` [C] (a `LinearHead`: `train_head`'s result, or one read from
a file by `LinearHead.load`), a callable `features -> logits [N, C]`, or an object with `predict(features) -> labels
[N]` (then no confidences are recorded).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from failmode.errors import LoadError, UsageError, ValidationError
from failmode.io import atomic_path
from failmode.progress import bar
from failmode.runtime import pick_device
from failmode.typed import bounded, check_ranges

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

#: matmul precisions of the trainer: "auto" is tf32 on CUDA and fp32 elsewhere
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
#: where `mine_failures(head="train")` saves the head it fitted (beside failures.parquet)
HEAD_FILE = "head.safetensors"


def as_tensor(a: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`a` as a detached tensor (numpy arrays are wrapped, not copied), cast to `dtype` if given."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    return t.detach().to(dtype) if dtype is not None else t.detach()


@dataclass
class LinearHead:
    """A linear classifier `logits = x @ weight.T + bias` (weight [C, D], bias [C], float32, on CPU)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        self.weight = as_tensor(self.weight, torch.float32).cpu().contiguous()
        self.bias = as_tensor(self.bias, torch.float32).cpu().contiguous()
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"weight must be [C, D] and bias [C]; got {tuple(self.weight.shape)}, "
                             f"{tuple(self.bias.shape)}")

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.weight.shape[1])

    @classmethod
    def from_module(cls, linear: torch.nn.Module) -> LinearHead:
        """Copy of an `nn.Linear` (e.g. a timm model's `get_classifier()`)."""
        if not isinstance(linear, torch.nn.Linear):
            raise UsageError(f"the model's classifier is a {type(linear).__name__}, not a linear layer")
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        return cls(linear.weight.detach().clone(), bias.detach().clone())

    def logits(self, x: ArrayLike) -> ArrayLike:
        """Logits [N, C] of features `x` [N, D]; numpy in, numpy out; a tensor in, a tensor out."""
        xt = as_tensor(x, torch.float32).cpu()
        out = torch.addmm(self.bias, xt, self.weight.T)
        return out.numpy() if isinstance(x, np.ndarray) else out

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Predicted class indices [N] (int64 numpy)."""
        return np.asarray(as_tensor(self.logits(x)).argmax(1).numpy(), dtype=np.int64)

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write weight and bias (and JSON-able `metadata`) as a safetensors file, atomically."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"weight": self.weight, "bias": self.bias}, str(tmp),
                      metadata={"failmode": json.dumps(metadata or {}, sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearHead:
        """Read `weight` [C, D] and `bias` [C] from .safetensors (as `save` writes), .npz or a torch .pt/.pth file.

        Prefixed keys ("fc.weight", "head.bias") are accepted.
        """
        path = Path(path)
        if not path.is_file():
            raise LoadError(f"head file {path} does not exist")
        from failmode.io import read_tensors

        arrays = {k: v for k, v in read_tensors(path, "a linear head").items() if isinstance(v, torch.Tensor)}
        arrays = {k.split(".")[-1]: v for k, v in arrays.items()}
        if "weight" not in arrays or "bias" not in arrays:
            found = ", ".join(arrays) or "none"
            raise ValidationError(f"{path}: a head file needs 'weight' and 'bias' arrays (found {found})")
        weight, bias = arrays["weight"].float(), arrays["bias"].float()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValidationError(f"{path}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are not a "
                                  f"[C, D] / [C] pair")
        return cls(weight, bias)


def apply_head(head: Any, features: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted labels, logits or None) of `head` on `features`; the head must output `num_classes` classes."""
    if hasattr(head, "weight") and hasattr(head, "bias"):
        w, b = (np.asarray(_numpy(t), np.float32) for t in (head.weight, head.bias))
        head = LinearHead(w, b)
        if w.shape[1] != features.shape[1]:
            raise ValidationError(f"the head expects {w.shape[1]}-d features, the model gives {features.shape[1]}-d")
    if isinstance(head, LinearHead) or (callable(head) and not hasattr(head, "predict")):
        logits = np.asarray(_numpy(head.logits(features) if isinstance(head, LinearHead) else head(features)))
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValidationError(f"the head outputs {logits.shape[-1]} classes, the dataset has {num_classes}")
        return logits.argmax(1), logits
    if hasattr(head, "predict"):
        return np.asarray(_numpy(head.predict(features)), np.int64), None
    raise ValidationError(f"a head must be linear (weight, bias), callable, or have predict(); "
                          f"got {type(head).__name__}")


def _numpy(x: Any) -> Any:
    """A torch tensor as a numpy array (detached, on CPU); anything else unchanged."""
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else x


@dataclass(frozen=True)
class HeadParams:
    """How a head is trained (`train_head`): hyper-parameters (defaults from the paper), the starting point and the
    matmul precision; checked once, here, before any model or feature is loaded (one line naming the value).

    `init`: "model" starts from the head given to `train_head` (the model's own; nn.Linear's init from `seed` when
    none is given), "random" always draws nn.Linear's init from `seed`. `precision` (a matmul dtype): "auto" (TF32
    on CUDA, fp32 on CPU), "fp32", "tf32" or "bf16" (bf16 matmuls, fp32 master weights, softmax and momentum).
    """

    lam: float = 0.5
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = bounded(1000, 0, 1_000_000)
    seed: int = 0
    init: str = "model"
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Checked here, before any model or feature is loaded (one line naming the value)."""
        if self.init not in ("model", "random"):
            raise UsageError(f"head init must be 'model' or 'random', got {self.init!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise UsageError(f"lambda must be a finite number >= 0, got {self.lam}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0 and self.epochs >= 0):
            raise UsageError(f"need lr > 0, 0 <= momentum < 1, weight decay >= 0 and epochs >= 0 (got lr {self.lr}, "
                             f"momentum {self.momentum}, weight decay {self.weight_decay}, epochs {self.epochs})")
        if self.precision not in PRECISIONS:
            raise UsageError(f"head precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        try:
            check_ranges(self, "head")  # docs/settings.md
        except ValidationError as e:
            raise UsageError(str(e)) from None


def accuracy(head: LinearHead, x: ArrayLike, y: ArrayLike) -> float:
    """Top-1 accuracy of `head` on features `x` with labels `y` (NaN for an empty set)."""
    y = np.asarray(as_tensor(y).cpu().numpy(), dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    return float((head.predict(x) == y).mean())


def _stack(train_x: ArrayLike, train_y: ArrayLike, debug_x: ArrayLike | None, debug_y: ArrayLike | None,
           lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenated features, labels and per-sample loss weights (1/N_o original, lam/N_d debug); `lam` is checked
    by `HeadParams`."""
    x, y = as_tensor(train_x, torch.float32), as_tensor(train_y, torch.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(y) == 0:
        raise UsageError(f"train features must be [N, D] with N labels, N > 0; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
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


def train_head(train_x: ArrayLike, train_y: ArrayLike, params: HeadParams = HeadParams(), *,
               debug_x: ArrayLike | None = None, debug_y: ArrayLike | None = None, num_classes: int | None = None,
               init: LinearHead | tuple[ArrayLike, ArrayLike] | None = None,
               device: str | torch.device | None = None) -> LinearHead:
    """Train a linear head on cached features with mean CE(original) + lam * mean CE(debug) (module docstring).

    Inputs are numpy arrays or tensors; `params` says how (`HeadParams`, checked when made). `num_classes` defaults
    to the init head's, else the largest label + 1. `init` is the head to start from when `params.init` is "model"
    (e.g. the model's own classifier); without one (or with `params.init` "random") nn.Linear's init is drawn from
    `params.seed`.
    """
    start = init if params.init == "model" else None
    x, y, w = _stack(train_x, train_y, debug_x, debug_y, params.lam)
    if num_classes is None:
        num_classes = start.num_classes if isinstance(start, LinearHead) else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise UsageError(f"labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    weight, bias = _init_params(start, num_classes, x.shape[1], params.seed)
    dev = pick_device(str(device) if device is not None else None)
    mode = ("tf32" if dev.type == "cuda" else "fp32") if params.precision == "auto" else params.precision
    loop = _FullBatchSGD(x, y, w, weight, bias, dev, mode)
    with _matmul_precision(mode), torch.inference_mode():
        loop.run(params.epochs, params.lr, params.momentum, params.weight_decay)
    log.debug("trained a %dx%d head on %d samples for %d epochs on %s (%s)", num_classes, x.shape[1], len(y),
              params.epochs, dev, mode)
    return LinearHead(loop.weight.cpu(), loop.bias.cpu())


def head_objective(head: LinearHead, train_x: ArrayLike, train_y: ArrayLike, params: HeadParams = HeadParams(), *,
                   debug_x: ArrayLike | None = None, debug_y: ArrayLike | None = None) -> float:
    """The objective `train_head` minimises with `params` (its lam and weight decay), evaluated at `head` (float64,
    for checks and reports)."""
    x, y, w = _stack(train_x, train_y, debug_x, debug_y, params.lam)
    W, b = head.weight.double(), head.bias.double()
    ce = torch.nn.functional.cross_entropy(x.double() @ W.T + b, y, reduction="none")
    reg = 0.5 * params.weight_decay * (W.square().sum() + b.square().sum())
    return float((ce * w.double()).sum() + reg)


#: the recipe of a new dataset's head on a frozen backbone (mining's `--head train`, evaluate's `--head train`)
DATASET_HEAD = HeadParams(init="random")
#: the same recipe as mining records it in head.safetensors
DATASET_HEAD_RECIPE = {k: getattr(DATASET_HEAD, k) for k in ("lr", "momentum", "weight_decay", "epochs", "seed", "init")}


def train_dataset_head(features: ArrayLike, labels: ArrayLike, num_classes: int, *,
                       device: str | torch.device | None = None) -> LinearHead:
    """The head a frozen backbone gets on a dataset it was not trained for (`DATASET_HEAD`, random init).

    Mining and evaluation both call this on the same train subset, so `--head train` gives the same head in both.
    """
    return train_head(features, labels, DATASET_HEAD, num_classes=num_classes, device=device)

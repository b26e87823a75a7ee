"""The linear head of a frozen classifier: logits = features @ weight.T + bias, on numpy arrays or tensors.

Shared by mining (predictions through a head trained elsewhere) and the evaluate package (head retraining).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from failmode.errors import LoadError, UsageError, ValidationError
from failmode.io import atomic_path

ArrayLike = np.ndarray | torch.Tensor


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

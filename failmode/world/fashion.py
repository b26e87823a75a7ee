"""Fashion-MNIST read from the Debian package `dataset-fashion-mnist` (IDX files, gzip)."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from failmode.errors import LoadError, ValidationError
from failmode.vocab.classnames import class_names

#: Class names as they appear in prompts ("a photo of a {class_name} {context}"), in label order (data:
#: failmode/vocab/classnames.json, where the vocabulary of the world finds them too).
FASHION_CLASSES: list[str] = class_names("fashion-scenes")

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_root() -> Path:
    """The folder holding the IDX files: $FAILMODE_FASHION_MNIST if set, else the Debian package's folder."""
    return Path(os.environ.get("FAILMODE_FASHION_MNIST", DEFAULT_ROOT))


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    if not path.exists():
        raise LoadError(f"{path}: Fashion-MNIST not found (apt-get install dataset-fashion-mnist, "
                        "or point FAILMODE_FASHION_MNIST at a folder with the IDX .gz files)")
    data = gzip.decompress(path.read_bytes())
    if int.from_bytes(data[:4], "big") != magic:
        raise ValidationError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValidationError(f"{path}: {body.size} values, header says {dims}")
    return body.reshape(dims)


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(split: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the "train" (60k) or "test" (10k) split; read-only arrays."""
    if split not in _FILES:
        raise ValidationError(f"Fashion-MNIST split {split!r}: use one of {', '.join(_FILES)}")
    base = Path(root) if root else fashion_root()
    img_file, lbl_file = _FILES[split]
    images = _read_idx(base / img_file, 2051, 3)
    labels = _read_idx(base / lbl_file, 2049, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValidationError(f"{base}: {len(images)} images but {len(labels)} labels in split {split}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels

"""The image fast path of attribution and feature extraction: encoded bytes -> uint8 crops -> batches on the device.

Preprocessing is "resize the shortest side, centre-crop, normalise" (open_clip's and timm's evaluation transform).

Three decoders, all overlapping decoding with model compute through DataLoader workers:
  - "cpu": each worker reads the encoded bytes, decodes with PIL (JPEGs are decoded at a reduced DCT scale when
    the image is at least twice the target size, `draft`), resizes the shortest side and centre-crops, and hands
    over uint8 crops (4x less to copy than float). Pixel-identical to open_clip's preprocessing without `draft`;
  - "hybrid": workers only decode (libjpeg-turbo through torchvision); the antialiased resize and crop run on
    the device, one call per distinct image size in a batch (resizing costs twice the decode on a CPU core);
  - "gpu": workers only read bytes; JPEGs are decoded in batches on the GPU (`torchvision.io.decode_jpeg`,
    nvJPEG) and resized there; other formats are decoded by the workers.
Normalisation (mean/std), the dtype cast and channels_last happen on the device. The "hybrid" and "gpu" workers
hand a batch over as one flat shared-memory tensor plus its shapes (`pack`): one transfer per batch, where one
shared-memory file per image capped the main process at a few thousand images/s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from failmode.data.sources import ImageSource, decode_image

log = logging.getLogger(__name__)

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST}
DECODERS = ("cpu", "hybrid", "gpu")
_warned_gpu_decode: list[bool] = []  # non-empty once the nvJPEG fallback has been reported


@dataclass(frozen=True)
class Preprocess:
    """Resize the shortest side to `resize` (default: `size`), centre-crop `size` x `size`, normalise."""

    size: int  #: side of the square crop
    mean: tuple[float, float, float]  #: per-channel mean, on 0..1 pixels
    std: tuple[float, float, float]  #: per-channel standard deviation, on 0..1 pixels
    interpolation: str = "bicubic"  #: PIL resampling of the resize: bicubic, bilinear or nearest
    draft: bool = True  #: decode JPEGs at a reduced DCT scale, keeping at least twice the short side
    resize: int | None = None  #: short side before the crop (timm's crop_pct); None: `size`

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_RESAMPLE:
            raise ValueError(f"interpolation must be one of {', '.join(_PIL_RESAMPLE)}, not {self.interpolation!r}")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be at least the crop size ({self.size})")

    @property
    def short_side(self) -> int:
        """The shortest side after resizing, before the centre crop."""
        return self.resize or self.size

    @classmethod
    def from_open_clip(cls, model: Any, draft: bool = True) -> Preprocess:
        """The preprocessing an open_clip model was trained with (`model.visual.preprocess_cfg`)."""
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        size = size if isinstance(size, int) else size[0]
        return cls(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"), draft)

    @classmethod
    def from_timm(cls, data_config: dict[str, Any], draft: bool = False) -> Preprocess | None:
        """timm's evaluation transform (`resolve_model_data_config`) as a Preprocess; None when it is not one.

        timm resizes the shortest side to floor(size / crop_pct) and centre-crops `size` (crop_mode "center"); a
        non-square input, another crop mode or another interpolation has no Preprocess equivalent. `draft` is off
        by default so that the "cpu" decoder gives timm's exact pixels.
        """
        _, h, w = data_config["input_size"]
        interpolation = data_config.get("interpolation", "bilinear")
        crop_mode = data_config.get("crop_mode", "center")
        if h != w or crop_mode not in (None, "center") or interpolation not in _PIL_RESAMPLE:
            return None
        crop_pct = data_config.get("crop_pct") or 0.875
        return cls(int(h), tuple(data_config["mean"]), tuple(data_config["std"]), interpolation, draft,
                   resize=math.floor(h / crop_pct))


#: how images become model inputs: a per-image callable (PIL -> tensor) or the device-side `Preprocess`
Transform = Callable[[Any], torch.Tensor] | Preprocess


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest side to `size` (torchvision's rounding)."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def crop_pil(img: Image.Image, prep: Preprocess) -> np.ndarray:
    """Resize the shortest side to `prep.short_side` and centre-crop `prep.size`: uint8 array [size, size, 3]."""
    img = img.convert("RGB")
    w, h = resized_size(*img.size, prep.short_side)
    if (w, h) != img.size:
        img = img.resize((w, h), _PIL_RESAMPLE[prep.interpolation])
    left, top = int(round((w - prep.size) / 2.0)), int(round((h - prep.size) / 2.0))
    return np.asarray(img.crop((left, top, left + prep.size, top + prep.size)))


def decode_crop(source: ImageSource, i: int, prep: Preprocess) -> torch.Tensor:
    """The i-th image of `source` as a uint8 crop [3, size, size], decoded from its bytes when it has them."""
    data = source.encoded(i)
    if data is None:
        img = source.image(i)
    else:  # JPEGs downscaled in the DCT domain while decoding, never below twice the target
        draft = (lambda size: resized_size(*size, 2 * prep.short_side)) if prep.draft else None
        img = decode_image(data, source.where(i), draft=draft)
    return torch.from_numpy(crop_pil(img, prep).copy()).permute(2, 0, 1)


def is_jpeg(data: bytes | None) -> bool:
    """True for JPEG bytes (SOI marker)."""
    return data is not None and data[:2] == b"\xff\xd8"


class _Crops(torch.utils.data.Dataset):
    """CPU decoder: uint8 crops."""

    def __init__(self, source: ImageSource, indices: np.ndarray, prep: Preprocess) -> None:
        self.source, self.indices, self.prep = source, indices, prep

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> torch.Tensor:
        return decode_crop(self.source, int(self.indices[j]), self.prep)


def decode_full(source: ImageSource, i: int) -> torch.Tensor:
    """The i-th image decoded at full size, uint8 [3, H, W] (JPEGs with libjpeg-turbo via torchvision)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = source.encoded(i)
    if is_jpeg(data):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # unusual JPEGs (CMYK, truncated): PIL below
            pass
    img = source.image(i) if data is None else decode_image(data, source.where(i))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class _Decoded(_Crops):
    """Hybrid decoder: full-size uint8 images; resizing happens on the device."""

    def __getitem__(self, j: int) -> torch.Tensor:
        return decode_full(self.source, int(self.indices[j]))


class _Bytes(_Crops):
    """GPU decoder: raw JPEG bytes as a 1-D uint8 tensor; other formats decoded here at full size."""

    def __getitem__(self, j: int) -> torch.Tensor:
        i = int(self.indices[j])
        data = self.source.encoded(i)
        if is_jpeg(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_full(self.source, i)


def device_crops(images: list[torch.Tensor], prep: Preprocess, device: torch.device) -> torch.Tensor:
    """Resize (antialiased) and centre-crop full-size uint8 images [3, H, W] on `device`: uint8 [B, 3, S, S].

    Images of equal size are resized together (one interpolate call per size in the batch).
    """
    out = torch.empty((len(images), 3, prep.size, prep.size), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(j)
    for (h, w), members in groups.items():
        # the images of one size (views of the batch's one block, `unpack`) are stacked on the device
        x = torch.stack([images[j].to(device, non_blocking=True) for j in members]).float()
        nw, nh = resized_size(w, h, prep.short_side)
        if (nh, nw) != (h, w):
            smooth = prep.interpolation != "nearest"
            x = torch.nn.functional.interpolate(x, size=(nh, nw), mode=prep.interpolation, antialias=smooth,
                                                align_corners=False if smooth else None)
        top, left = int(round((nh - prep.size) / 2.0)), int(round((nw - prep.size) / 2.0))
        crop = x[:, :, top:top + prep.size, left:left + prep.size].round_().clamp_(0, 255)
        out[torch.tensor(members, device=device)] = crop.to(torch.uint8)
    return out


def _decode_on_gpu(items: list[torch.Tensor], prep: Preprocess, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [j for j, t in enumerate(items) if t.dim() == 1]
    images = list(items)
    if raw:
        try:
            decoded = decode_jpeg([items[j] for j in raw], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as e:  # e.g. a CMYK JPEG nvJPEG rejects: decode this batch on the CPU instead
            if not _warned_gpu_decode:
                log.warning("GPU JPEG decoding failed (%s); decoding such batches on the CPU (slower; --decode "
                            "hybrid decodes in the loader workers instead)", str(e).splitlines()[0][:200])
                _warned_gpu_decode.append(True)
            decoded = [decode_jpeg(items[j], mode=ImageReadMode.RGB) for j in raw]
        for j, img in zip(raw, decoded):
            images[j] = img
    return device_crops(images, prep, device)


def pack(items: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """Collate uint8 tensors of any shapes into one flat tensor and their shapes (`unpack` reverses it).

    In a loader worker the flat tensor is allocated in shared memory, as torch's default collate does: a batch
    crosses to the main process as one block, not one shared-memory file (and one file descriptor) per image."""
    flat = torch.empty(sum(t.numel() for t in items), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        flat.share_memory_()
    if items:
        torch.cat([t.reshape(-1) for t in items], out=flat)
    return flat, [tuple(t.shape) for t in items]


def unpack(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """The tensors `pack` collated: views into `flat` (on whatever device `flat` is)."""
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[offset:offset + n].view(shape))
        offset += n
    return out


def default_workers(device: torch.device) -> int:
    """Loader workers when none are asked for: none on CPU (decoding competes with the model for the same cores),
    up to 8 on a GPU (keep it fed), leaving one core to the main process."""
    return 0 if device.type != "cuda" else max(1, min(8, (os.cpu_count() or 2) - 1))


def resolve_decode(decode: str, device: torch.device) -> str:
    """"auto" -> "hybrid" on CUDA (resize on the GPU), "cpu" elsewhere (timm's exact pixels); others unchanged.

    "gpu" (nvJPEG) needs a CUDA device: asked for elsewhere it is refused in one line rather than replaced."""
    from failmode.errors import UsageError

    if decode == "auto":
        return "hybrid" if device.type == "cuda" else "cpu"
    if decode not in DECODERS:
        raise UsageError(f"--decode must be auto or one of {', '.join(DECODERS)}, not {decode!r}")
    if decode == "gpu" and device.type != "cuda":
        raise UsageError(f"--decode gpu decodes JPEGs with nvJPEG on a CUDA device, and the device is {device}: use "
                         "--decode hybrid (or cpu, or auto)")
    return decode


#: decoder name -> the per-image dataset its workers run
_DATASETS: dict[str, type[_Crops]] = {"cpu": _Crops, "hybrid": _Decoded, "gpu": _Bytes}


def iter_crops(source: ImageSource, indices: Sequence[int] | np.ndarray, prep: Preprocess, *, device: torch.device,
               batch_size: int = 256, num_workers: int = 0, decode: str = "cpu") -> Iterator[torch.Tensor]:
    """uint8 batches [B, 3, size, size] on `device`, in `indices` order; decoding runs ahead in workers.

    `decode`: "cpu" (decode + resize in workers, PIL: the exact preprocessing), "hybrid" (workers
    decode, the device resizes), "gpu" (nvJPEG decode and resize on a CUDA device; refused elsewhere), "auto"
    (`resolve_decode`).
    """
    decode = resolve_decode(decode, device)
    idx = np.asarray(indices, dtype=np.int64)
    loader = torch.utils.data.DataLoader(
        _DATASETS[decode](source, idx, prep), batch_size=batch_size, num_workers=num_workers,
        pin_memory=device.type == "cuda" and decode != "gpu", collate_fn=None if decode == "cpu" else pack,
        prefetch_factor=4 if num_workers else None)
    for batch in loader:
        if decode == "cpu":
            yield batch.to(device, non_blocking=True)
        elif decode == "hybrid":  # the whole batch crosses to the device in one copy, then is cut into images there
            flat, shapes = batch
            yield device_crops(unpack(flat.to(device, non_blocking=True), shapes), prep, device)
        else:
            yield _decode_on_gpu(unpack(*batch), prep, device)


def normalize(x: torch.Tensor, prep: Preprocess, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised `dtype` tensor in channels_last memory format."""
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1) * 255.0
    return ((x.float() - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)

"""One debug sample, its image encodings, and the checks that turn it into a row of the dataset."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from PIL import Image

from failmode.errors import ValidationError
from failmode.registry import Registry

# Columns every image config has, in this order; scores and extra columns follow, sorted by name.
CORE_COLUMNS: tuple[str, ...] = (
    "key", "image", "label", "class_name", "context", "context_kind", "prompt", "seed", "generator", "source_model",
)
_STR_FIELDS = ("class_name", "context", "context_kind", "prompt", "generator", "source_model")
_FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class SampleError(ValidationError):
    """A sample that cannot be written; the message names the sample and the problem."""


@dataclass
class DebugSample:
    """One generated debug image and everything needed to regenerate and use it."""

    image: Image.Image | bytes  # bytes = already-encoded PNG/JPEG (generation encodes in worker threads)
    label: int
    class_name: str
    context: str
    context_kind: str  # "background", "color", "class-only", "random-context", "slice", ...
    prompt: str
    seed: int
    generator: str  # model id + revision, or local hash
    source_model: str  # classifier whose failures chose the context, "collective:<family>" or "baseline"
    scores: dict[str, float] = field(default_factory=dict)  # quality scores, e.g. {"clip_class": 0.31}
    extra: dict[str, Any] = field(default_factory=dict)  # other scalar columns (negative_prompt, guidance, steps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DebugSample:
        """Build a sample from a mapping; a missing required field raises SampleError naming it."""
        names = [f.name for f in fields(cls)]
        required = [n for n in names if n not in ("scores", "extra")]
        missing = [n for n in required if n not in data]
        if missing:
            raise SampleError(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SampleError(f"unknown field(s) {', '.join(unknown)} (put other columns in 'extra')")
        return cls(**{n: data[n] for n in names if n in data})


@dataclass(frozen=True)
class ImageCodec:
    """An image file format: its webdataset extension, how to encode a PIL image, and how to recognise bytes."""

    name: str
    ext: str
    encode: Callable[[Image.Image], bytes]
    magic: tuple[bytes, ...]
    full_decode: bool = True  # False: PIL's verify() (structure and checksums, ~40x cheaper than decoding)


CODECS: Registry[ImageCodec] = Registry("image format")


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fixed settings and no metadata chunks: the same pixels always give the same bytes.
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0, optimize=False, progressive=False)
    return buf.getvalue()


# PNG chunks carry CRCs, so verify() catches truncated or corrupted files without inflating the pixels.
CODECS.register("png")(ImageCodec("png", "png", _encode_png, (b"\x89PNG\r\n\x1a\n",), full_decode=False))
CODECS.register("jpeg")(ImageCodec("jpeg", "jpg", _encode_jpeg, (b"\xff\xd8\xff",)))


def encode_image(image: Image.Image | bytes, codec: ImageCodec) -> bytes:
    """Encode a PIL image with `codec`, or check that given bytes are a decodable image of that format."""
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return codec.encode(image)
    if not isinstance(image, (bytes, bytearray)):
        raise SampleError(f"image must be a PIL image or encoded bytes, not {type(image).__name__}")
    data = bytes(image)
    if not data.startswith(codec.magic):
        raise SampleError(f"image bytes are not {codec.name.upper()} (this dataset stores {codec.name})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load() if codec.full_decode else im.verify()
    except Exception as e:  # PIL raises many types for corrupt data
        raise SampleError(f"undecodable image ({type(e).__name__}: {e})") from None
    return data


def describe(sample: Any, index: int) -> str:
    """A short name for a sample in messages: position, class and seed when known."""
    get = sample.get if isinstance(sample, Mapping) else lambda k, d=None: getattr(sample, k, d)
    parts = [f"sample #{index}"]
    if get("class_name") is not None:
        parts.append(f"class {get('class_name')!r}")
    if get("seed") is not None:
        parts.append(f"seed {get('seed')}")
    return " ".join(parts)


def sample_to_row(sample: DebugSample | Mapping[str, Any], key: str, class_names: list[str],
                  codec: ImageCodec) -> dict[str, Any]:
    """Check a sample and return its row (column -> value, image as encoded bytes); raise SampleError if malformed."""
    if isinstance(sample, Mapping):
        sample = DebugSample.from_dict(sample)
    if not isinstance(sample, DebugSample):
        raise SampleError(f"expected a DebugSample or a mapping, got {type(sample).__name__}")
    _check_label(sample, class_names)
    for name in _STR_FIELDS:
        value = getattr(sample, name)
        if not isinstance(value, str) or not value:
            raise SampleError(f"field {name!r} must be a non-empty string, got {value!r}")
    if isinstance(sample.seed, bool) or not isinstance(sample.seed, int) or not 0 <= sample.seed < 2**63:
        raise SampleError(f"field 'seed' must be a non-negative integer, got {sample.seed!r}")
    row: dict[str, Any] = {"key": key, "image": encode_image(sample.image, codec), "label": sample.label}
    row.update({name: getattr(sample, name) for name in _STR_FIELDS})
    row["seed"] = sample.seed
    row.update(_scores(sample.scores))
    for name, value in _extra(sample.extra).items():
        if name in row:
            raise SampleError(f"column {name!r} appears in both scores and extra")
        row[name] = value
    return {c: row[c] for c in CORE_COLUMNS} | {c: row[c] for c in sorted(set(row) - set(CORE_COLUMNS))}


def _check_label(sample: DebugSample, class_names: list[str]) -> None:
    if isinstance(sample.label, bool) or not isinstance(sample.label, int):
        raise SampleError(f"label must be an int, got {sample.label!r}")
    if not 0 <= sample.label < len(class_names):
        raise SampleError(f"unknown class: label {sample.label} is outside 0..{len(class_names) - 1}")
    if sample.class_name != class_names[sample.label]:
        known = sample.class_name in class_names
        what = "does not match" if known else "is not a class of this dataset; it does not match"
        raise SampleError(f"unknown class: class_name {sample.class_name!r} {what} label {sample.label} "
                          f"({class_names[sample.label]!r})")


def _check_field_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _FIELD_NAME_RE.match(name) or name in CORE_COLUMNS:
        raise SampleError(f"invalid {where} name {name!r}: lowercase letters, digits and '_', "
                          f"not one of {', '.join(CORE_COLUMNS)}")
    return name


def _scores(scores: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, value in scores.items():
        _check_field_name(name, "score")
        if value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SampleError(f"score {name!r} must be a finite number or None, got {value!r}")
        out[name] = float(value)
    return out


def _extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in extra.items():
        _check_field_name(name, "extra column")
        if not isinstance(value, (str, int, float, bool)):
            raise SampleError(f"extra column {name!r} must be a str, int, float or bool, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SampleError(f"extra column {name!r} must be finite, got {value!r}")
        out[name] = value
    return out

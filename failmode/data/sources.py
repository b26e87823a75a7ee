"""Labelled image collections behind one small interface, picked by prefix like timm's readers.

`open_source(spec, split)` accepts:
  - a known dataset name: `imagenet-1k`, `cifar10`, `cifar100` (their Hub ids and column schemas are data below),
  - `hf:ORG/NAME` (any Hub image-classification dataset), optionally `hf:ORG/NAME@REVISION`,
  - a local folder (an existing path that is not a known name; write `./cifar10` for a folder called cifar10):
    a `datasets.save_to_disk` folder, a folder of parquet files (a Hub dataset checkout or a
    failmode dataset, config chosen with `#config`), or an ImageFolder (one sub-folder per class),
  - `wds:DIR` (webdataset shards with `_info.json`, as failmode writes them).
Heavy libraries are imported only when a source is opened.
"""

from __future__ import annotations

import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from failmode.errors import BadImageError, LoadError, UsageError, ValidationError
from failmode.hub import load_from_hub_or_local
from failmode.io import read_json, stable_hash

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
LABEL_COLUMNS = ("label", "fine_label", "labels")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


@dataclass(frozen=True)
class KnownDataset:
    """A Hub dataset's id and column schema."""

    repo: str
    image_column: str
    label_column: str
    train_split: str
    eval_split: str


#: The datasets of the paper, by short name.
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "imagenet-1k": KnownDataset("ILSVRC/imagenet-1k", "image", "label", "train", "validation"),
    "cifar10": KnownDataset("uoft-cs/cifar10", "img", "label", "train", "test"),
    "cifar100": KnownDataset("uoft-cs/cifar100", "img", "fine_label", "train", "test"),
}


def decode_image(data: bytes | str | os.PathLike[str], where: str, *,
                 draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None) -> Image.Image:
    """Image bytes or a file decoded to RGB; an undecodable image (truncated, empty, not an image) is a
    BadImageError naming `where` (the source and index, or the file). `draft(size)` gives the size a JPEG may be
    downscaled to while decoding (DCT-domain)."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft(img.size))
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        size = f"{len(data)} bytes" if isinstance(data, bytes) else f"{Path(data).stat().st_size} bytes"
        raise BadImageError(f"{where}: cannot decode the image ({size}): {str(e) or type(e).__name__}") from None


#: what `--on-bad-image` may say: "error" (one line naming the image) or "skip" (left out, counted in the outputs)
BAD_IMAGE_POLICIES = ("error", "skip")


@dataclass
class BadImages:
    """The `--on-bad-image` policy of one run and the images it skipped (each named by `ImageSource.where`)."""

    policy: str = "error"
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in BAD_IMAGE_POLICIES:
            raise UsageError(f"--on-bad-image {self.policy!r}: use one of {', '.join(BAD_IMAGE_POLICIES)}")

    def run(self, source: ImageSource, indices: Sequence[int] | np.ndarray,
            fn: Callable[[np.ndarray], Any]) -> tuple[Any, np.ndarray]:
        """(fn(indices), indices used). Under "skip", an undecodable image makes this scan `indices` (each image
        decoded once), leave the bad ones out, log and record them, and call `fn` again; under "error" the
        BadImageError goes up. Runs without a bad image cost nothing extra."""
        idx = np.asarray(indices, dtype=np.int64)
        try:
            return fn(idx), idx
        except BadImageError:
            if self.policy != "skip":
                raise
        from failmode.progress import bar

        good = []
        with bar("checking images", total=len(idx), unit="img") as b:
            for i in idx:
                try:
                    source.image(int(i))
                    good.append(int(i))
                except BadImageError:
                    self.skipped.append(source.where(int(i)))
                b.update(1)
        log.warning("%s: skipped %d image(s) that cannot be decoded (--on-bad-image skip), e.g. %s", source.ident,
                    len(idx) - len(good), self.skipped[-1] if self.skipped else "-")
        idx = np.asarray(good, dtype=np.int64)
        return fn(idx), idx

    def record(self) -> dict[str, Any]:
        """What the outputs record: the policy, how many images were skipped and the first ten of them."""
        return {"policy": self.policy, "skipped": len(self.skipped), "examples": self.skipped[:10]}


class ImageSource(ABC):
    """A labelled image collection: `len`, `labels`, `class_names`, stable `ids`, and images by position."""

    #: stable identity used in cache keys (Hub id + revision + split, or a local path + content hash)
    ident: str
    class_names: list[str]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def image(self, i: int) -> Image.Image:
        """The i-th image, decoded, RGB."""

    def encoded(self, i: int) -> bytes | None:
        """The i-th image's encoded bytes (PNG/JPEG) when the source stores them, else None."""
        return None

    def where(self, i: int) -> str:
        """Where image `i` comes from, for messages: the source and its index and id (a file path if it has one)."""
        return f"{self.ident}: image {i} (id {self.ids[i]})"

    def column(self, name: str) -> list[Any]:
        """The values of a metadata column (e.g. `context`) for every image; ValidationError when there is none."""
        raise ValidationError(f"{self.ident}: no column {name!r} (this source has no metadata columns)")


class ListSource(ImageSource):
    """An in-memory source (generated worlds, tests)."""

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int], class_names: list[str], ident: str,
                 ids: Sequence[str] | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self._images = list(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.ident = ident
        self.ids = list(ids) if ids is not None else [f"{i:06d}" for i in range(len(images))]

    def image(self, i: int) -> Image.Image:
        return self._images[i].convert("RGB")


class HFSource(ImageSource):
    """A `datasets.Dataset` with an image column and a ClassLabel column."""

    def __init__(self, ds: Any, ident: str, image_column: str | None = None, label_column: str | None = None,
                 id_column: str | None = None) -> None:
        import datasets

        cols = ds.column_names
        self.image_column = image_column or _pick(cols, IMAGE_COLUMNS, "image", ident)
        self.label_column = label_column or _pick(cols, LABEL_COLUMNS, "label", ident)
        for c in (self.image_column, self.label_column):
            if c not in cols:
                raise ValidationError(f"{ident}: no column {c!r} (columns: {', '.join(cols)})")
        feat = ds.features[self.label_column]
        if not isinstance(feat, datasets.ClassLabel):
            raise ValidationError(f"{ident}: column {self.label_column!r} is not a ClassLabel, so class names are unknown")
        self.class_names = list(feat.names)
        self.labels = np.asarray(ds[self.label_column], dtype=np.int64)
        self.ids = [str(x) for x in ds[id_column]] if id_column else [f"{i:06d}" for i in range(len(ds))]
        self.ident = ident
        # Undecoded access: encoded bytes come straight from Arrow, decoding happens where it is needed.
        self._raw = ds.cast_column(self.image_column, datasets.Image(decode=False))

    def column(self, name: str) -> list[Any]:
        if name not in self._raw.column_names:
            raise ValidationError(f"{self.ident}: no column {name!r} (columns: {', '.join(self._raw.column_names)})")
        return list(self._raw[name])

    def encoded(self, i: int) -> bytes | None:
        rec = self._raw[int(i)][self.image_column]
        if rec.get("bytes") is not None:
            return rec["bytes"]
        return Path(rec["path"]).read_bytes() if rec.get("path") else None

    def image(self, i: int) -> Image.Image:
        data = self.encoded(i)
        if data is None:
            raise LoadError(f"{self.ident}: image {i} has neither bytes nor a path")
        return decode_image(data, self.where(i))


class FolderSource(ImageSource):
    """An ImageFolder: one sub-folder per class (sorted names are the classes), images inside."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValidationError(f"{root}: no class sub-folders")
        self.paths: list[Path] = []
        labels = []
        for k, name in enumerate(classes):
            files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            labels += [k] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = classes
        self.ids = [p.relative_to(root).as_posix() for p in self.paths]
        self.ident = f"folder:{root.resolve()}:{stable_hash([(i, p.stat().st_size) for i, p in zip(self.ids, self.paths)])}"

    def encoded(self, i: int) -> bytes | None:
        return self.paths[i].read_bytes()

    def where(self, i: int) -> str:
        return str(self.paths[i])

    def image(self, i: int) -> Image.Image:
        return decode_image(self.paths[i], self.where(i))


def _pick(cols: Sequence[str], candidates: Sequence[str], what: str, ident: str) -> str:
    for c in candidates:
        if c in cols:
            return c
    raise ValidationError(f"{ident}: no {what} column (expected one of {', '.join(candidates)}; columns: {', '.join(cols)})")


def offline_datasets() -> Any:
    """Import `datasets` with Hub calls off for local reads (no download-count request for local parquet)."""
    import datasets

    from failmode.progress import progress_disabled

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    if progress_disabled():  # its bars follow failmode's (off in logs and CI)
        datasets.disable_progress_bars()
    return datasets


def _open_local(path: Path, split: str | None, config: str | None) -> ImageSource:
    datasets = offline_datasets()
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_need_split(split, list(ds), path)]
        return HFSource(ds, f"disk:{path.resolve()}:{ds._fingerprint}")
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        if config is not None:
            parquet = [p for p in parquet if config in p.relative_to(path).parts]
            if not parquet:
                raise ValidationError(f"{path}: no parquet files for config {config!r}")
        by_split: dict[str, list[str]] = {}
        for p in parquet:
            by_split.setdefault(p.name.split("-")[0], []).append(str(p))
        files = by_split[_need_split(split, sorted(by_split), path)] if len(by_split) > 1 or split else parquet
        files = [str(f) for f in files]
        ds = datasets.Dataset.from_parquet(files, keep_in_memory=False)
        key = stable_hash([(f, os.path.getsize(f)) for f in files])
        return HFSource(ds, f"parquet:{path.resolve()}#{config or ''}:{split or ''}:{key}")
    return _open_folder(path, split)


def _open_folder(path: Path, split: str | None) -> ImageSource:
    """An ImageFolder, or split `split` of a folder of ImageFolders (`path/<split>/<class>/...`). A folder without
    split folders is one split: naming a split there is refused, as two names would read the same images."""
    if split is None:
        return FolderSource(path)
    if (path / split).is_dir():
        return FolderSource(path / split)
    splits = sorted(p.name for p in path.iterdir()
                    if p.is_dir() and any(c.is_dir() for c in p.iterdir()) and not p.name.startswith("."))
    if splits:
        raise UsageError(f"{path}: no split folder {split!r} (split folders: {', '.join(splits)})")
    raise UsageError(f"{path} is one ImageFolder without split folders ({path}/<split>/<class>/...), so split "
                     f"{split!r} would be the same images as any other split: give it split folders")


def check_disjoint_splits(train: ImageSource | None, evaluation: ImageSource, dataset: str) -> None:
    """The head's training images and the evaluation images must be different splits (UsageError otherwise)."""
    if train is not None and train.ident == evaluation.ident:
        raise UsageError(f"{dataset}: the train split and the evaluation split are the same images ({train.ident}); "
                         "choose different splits (--train-split / --split)")


def _need_split(split: str | None, available: Sequence[str], where: object) -> str:
    if split is None or split not in available:
        raise UsageError(f"{where}: choose a split with --split (available: {', '.join(available)})")
    return split


def hub_dataset_id(spec: str) -> str:
    """The Hub id a dataset spec names ("cifar10" -> "uoft-cs/cifar10", "hf:ORG/NAME@rev" -> "ORG/NAME"); empty
    for a local folder or a `wds:` spec (recorded as a card's `source_datasets` only when it is a Hub id)."""
    if spec in KNOWN_DATASETS:
        return KNOWN_DATASETS[spec].repo
    return spec.removeprefix("hf:").partition("@")[0] if spec.startswith("hf:") else ""


def open_source(spec: str, split: str | None = None) -> ImageSource:
    """Open a labelled image collection; see the module docstring for accepted specs."""
    if spec.startswith("wds:"):
        return _open_wds(Path(spec[4:]), split)
    local, _, config = spec.partition("#")
    known = KNOWN_DATASETS.get(spec)  # a known name is always the Hub dataset: a folder of that name is "./name"
    if known is None and Path(local).expanduser().exists():
        return _open_local(Path(local).expanduser(), split, config or None)
    repo, revision = (known.repo, None) if known else (spec.removeprefix("hf:").partition("@")[::2])
    if not known and not spec.startswith("hf:"):
        raise UsageError(
            f"unknown dataset {spec!r}: use {', '.join(KNOWN_DATASETS)}, hf:ORG/NAME, wds:DIR or an existing local folder"
        )
    split = split or (known.eval_split if known else None)
    datasets = offline_datasets()

    def load(ident: str, local_only: bool) -> Any:
        mode = datasets.DownloadMode.REUSE_DATASET_IF_EXISTS
        if local_only:
            datasets.config.HF_HUB_OFFLINE = True
        return datasets.load_dataset(ident, split=split, revision=revision or None, download_mode=mode)

    ds = load_from_hub_or_local(repo, load, what=f"the dataset {repo!r} (split {split})",
                                local_hint=f"download it elsewhere and pass the local folder instead of {spec!r}")
    cols = (known.image_column, known.label_column) if known else (None, None)
    return HFSource(ds, f"hub:{repo}@{revision or 'main'}:{split}:{ds._fingerprint}", *cols)


def _open_wds(root: Path, split: str | None) -> ImageSource:
    import webdataset as wds

    info_path = root / "_info.json"
    info = read_json(info_path)
    splits = info.get("splits", {})
    split = split or next(iter(splits), None)
    if split not in splits:
        raise UsageError(f"{info_path}: no split {split!r} (available: {', '.join(splits)})")
    names = info.get("class_names") or []
    shards = sorted(str(p) for p in root.glob(f"{split}-*.tar"))
    if not shards:
        raise ValidationError(f"{root}: no {split}-*.tar shards")
    images, labels, ids = [], [], []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        key = next((k for k in ("png", "jpg", "jpeg", "webp") if k in sample), None)
        if key is None or "cls" not in sample:
            raise ValidationError(f"{root}: sample {sample.get('__key__')} has no image or cls field")
        images.append(decode_image(sample[key], f"{sample.get('__url__', root)}: sample {sample['__key__']}"))
        labels.append(int(sample["cls"]))
        ids.append(sample["__key__"])
    return ListSource(images, labels, names, f"wds:{root.resolve()}:{split}:{stable_hash(ids)}", ids)

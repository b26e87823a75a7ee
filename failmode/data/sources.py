"""Labelled image collections behind one small interface, picked by prefix like timm's readers.

`open_source(spec, split)` accepts every spec `failmode.data.spec.parse_spec` parses:
  - a known dataset name: `imagenet-1k`, `cifar10`, `cifar100` (their Hub ids and column schemas are data there),
  - `hf:ORG/NAME` (any Hub image-classification dataset), optionally `hf:ORG/NAME@REVISION`: its parquet files (or,
    without them, its webdataset tars with `_info.json`) are read through `huggingface_hub.HfFileSystem` (fsspec),
    downloading only the byte ranges read,
  - a local folder (an existing path that is not a known name; write `./cifar10` for a folder called cifar10):
    a `datasets.save_to_disk` folder, a folder of parquet files (a Hub dataset checkout or a failmode dataset,
    config chosen with `#config`) read in place (no Arrow copy), an ImageFolder (one sub-folder per
    class: class names or WordNet ids), or a flat image folder with a labels file (`?labels=FILE`, or a
    `labels.csv` / Kaggle `LOC_<split>_solution.csv` in or beside it),
  - `wds:DIR` (webdataset shards with `_info.json`; samples with an image and `cls`), indexed and read in place.
A class list that is a known dataset's (`failmode.vocab.classnames.align_to_known`: any order, any spelling, or
WordNet ids) takes that dataset's names and index order; labels outside the class range are refused in one line.
Images are read lazily, by index; nothing is decoded ahead. Heavy libraries are imported only when a source opens.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from failmode.data.spec import KNOWN_DATASETS, DatasetSpec, KnownDataset, parse_spec
from failmode.errors import BadImageError, LoadError, UsageError, ValidationError
from failmode.hub import load_from_hub_or_local
from failmode.io import read_json, stable_hash

log = logging.getLogger(__name__)

__all__ = ["KNOWN_DATASETS", "KnownDataset", "ImageSource", "open_source"]

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
LABEL_COLUMNS = ("label", "fine_label", "labels")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
WDS_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


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
    """A labelled image collection: `len`, `labels`, `class_names`, stable `ids`, and images by position.

    `known` names the known dataset whose class order `class_names` follows (`align_classes`).
    """

    #: stable identity used in cache keys (Hub id + revision + split, or a local path + content hash)
    ident: str
    class_names: list[str]
    labels: np.ndarray
    ids: list[str]
    known: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def split_ident(self) -> str:
        """The identity of the whole split this source reads (a subset's is its split's)."""
        return getattr(self, "_split_ident", self.ident)

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


class RecordSource(ImageSource):
    """A source storing each image as a `datasets` Image record ({bytes, path}, or bare bytes)."""

    @staticmethod
    def record_bytes(rec: Any) -> bytes | None:
        """The encoded image of a record: its bytes, else the file at its path, else None."""
        if isinstance(rec, bytes):
            return rec
        if rec.get("bytes") is not None:
            return rec["bytes"]
        return Path(rec["path"]).read_bytes() if rec.get("path") else None

    def image(self, i: int) -> Image.Image:
        data = self.encoded(i)
        if data is None:
            raise LoadError(f"{self.ident}: image {i} has neither bytes nor a path")
        return decode_image(data, self.where(i))


class HFSource(RecordSource):
    """A `datasets.Dataset` with an image column and a ClassLabel column (a `save_to_disk` folder, memory-mapped)."""

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
        return self.record_bytes(self._raw[int(i)][self.image_column])


def _class_label_names(schema: Any, column: str) -> list[str] | None:
    """The ClassLabel names `datasets` stored for `column` in a parquet schema's `huggingface` metadata, if any."""
    import json

    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    feature = (json.loads(meta).get("info") or {}).get("features", {}).get(column) or {}
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and feature.get("names") else None


class Quota:
    """A per-class subset taken unit by unit (a parquet file's row groups, a tar shard): `per_class` images of each
    of `classes` classes, units in a seeded order, each unit's rows in a seeded order, a row taken while its class
    is short (a stratified sample at unit granularity, like splitting shuffled webdataset shards by shard). Only the
    units offered are read; `done` says when every class has its quota."""

    def __init__(self, classes: int, per_class: int, seed: int) -> None:
        self.per_class, self.seed = per_class, seed
        self.need = np.full(classes, per_class, dtype=np.int64)

    def sized(self, classes: int) -> Quota:
        """This quota over `classes` classes (a source knows them once it has read its class list)."""
        self.need = np.full(classes, self.per_class, dtype=np.int64)
        return self

    def order(self, units: int) -> np.ndarray:
        """The seeded order in which the units are offered."""
        return np.random.default_rng([self.seed, 1]).permutation(units)

    def take(self, unit: Sequence[int], labels: np.ndarray) -> np.ndarray:
        """Rows of one unit taken (sorted): its rows in a seeded order while their class is short."""
        taken = []
        for r in np.random.default_rng([self.seed, 1, *unit]).permutation(len(labels)):
            c = int(labels[r])
            if not 0 <= c < len(self.need):  # kept, so that `check_labels` names it
                taken.append(int(r))
            elif self.need[c] > 0:
                self.need[c] -= 1
                taken.append(int(r))
        return np.sort(np.asarray(taken, dtype=np.int64))

    @property
    def done(self) -> bool:
        """Every class has its quota."""
        return not self.need.any()


class ParquetSource(RecordSource):
    """Parquet files read in place: local files directly, Hub files through fsspec (`HfFileSystem`), only the byte
    ranges of the columns and row groups read. Labels come from the label column alone; an image's row group is
    read when it is asked for (one row group held at a time), so nothing is copied into a cache and memory stays
    flat. With `take` (a `Quota`), files are read in its seeded order until every class has its quota, and the
    source is those rows."""

    def __init__(self, files: Sequence[str], ident: str, *, fs: Any = None, image_column: str | None = None,
                 label_column: str | None = None, take: Quota | None = None) -> None:
        self.files, self.fs, self.ident = list(files), fs, ident
        self._open: dict[int, Any] = {}
        self._cached: tuple[tuple[int, int], Any] | None = None
        first = self._file(0)
        cols = first.schema_arrow.names
        self.image_column = image_column or _pick(cols, IMAGE_COLUMNS, "image", ident)
        self.label_column = label_column or _pick(cols, LABEL_COLUMNS, "label", ident)
        for c in (self.image_column, self.label_column):
            if c not in cols:
                raise ValidationError(f"{ident}: no column {c!r} (columns: {', '.join(cols)})")
        names = _class_label_names(first.schema_arrow, self.label_column)
        if names is None:
            raise ValidationError(f"{ident}: column {self.label_column!r} is not a ClassLabel, so class names are unknown")
        self.class_names = names
        take = take.sized(len(names)) if take is not None else None
        rows, labels = [], []
        for k in (range(len(self.files)) if take is None else take.order(len(self.files))):
            pf = self._file(int(k))
            y = np.asarray(pf.read(columns=[self.label_column]).column(0).to_numpy(zero_copy_only=False))
            if take is None:
                chosen = np.arange(len(y))
            else:  # row groups in a seeded order too: the rows of groups not needed are never read
                starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
                picked = []
                for g in np.random.default_rng([take.seed, 1, int(k)]).permutation(len(starts) - 1):
                    picked.append(starts[g] + take.take((int(k), int(g)), y[starts[g]:starts[g + 1]]))
                    if take.done:
                        break
                chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
            rows.append(np.stack([np.full(len(chosen), int(k)), chosen], axis=1))
            labels.append(y[chosen])
            if take is not None and take.done:
                break
        self._rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.ids = ([f"{i:06d}" for i in range(len(self.labels))] if take is None else
                    [f"{Path(self.files[k]).name}:{r}" for k, r in self._rows.tolist()])
        if take is not None:  # a subset: the files it read
            self._split_ident, self.ident = ident, f"{ident}:take{stable_hash(self.ids)}"

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own files
        return {**self.__dict__, "_open": {}, "_cached": None}

    def _file(self, k: int) -> Any:
        import pyarrow.parquet as pq

        if k not in self._open:
            path = self.files[k]
            # read in place, only the column chunks asked for; not memory-mapped: mapped pages would stay
            # resident for as long as the file is open, so memory would grow with every image read
            self._open[k] = pq.ParquetFile(path if self.fs is None else self.fs.open(path, "rb"))
        return self._open[k]

    def _row_group(self, k: int, row: int) -> tuple[Any, int]:
        """The image column of the row group holding `row` of file `k` (one held at a time), and the row's offset."""
        meta = self._file(k).metadata
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if row < start + n:
                break
            start += n
        if self._cached is None or self._cached[0] != (k, g):
            col = self._file(k).read_row_group(g, columns=[self.image_column]).column(0).combine_chunks()
            self._cached = ((k, g), col)
        return self._cached[1], row - start

    def encoded(self, i: int) -> bytes | None:
        k, row = (int(v) for v in self._rows[int(i)])
        group, j = self._row_group(k, row)
        return self.record_bytes(group[j].as_py())

    def column(self, name: str) -> list[Any]:
        if name not in self._file(0).schema_arrow.names:
            raise ValidationError(f"{self.ident}: no column {name!r} (columns: "
                                  f"{', '.join(self._file(0).schema_arrow.names)})")
        values: dict[int, list[Any]] = {}
        for k in dict.fromkeys(self._rows[:, 0].tolist()):
            values[k] = self._file(k).read(columns=[name]).column(0).to_pylist()
        return [values[k][r] for k, r in self._rows.tolist()]


class SubsetSource(ImageSource):
    """Some images of another source, by position (the head's train subset of a source read whole)."""

    def __init__(self, base: ImageSource, indices: np.ndarray, ident: str) -> None:
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices]
        self.class_names, self.known, self.ident = base.class_names, base.known, ident
        self.ids = [base.ids[int(i)] for i in self.indices]
        self._split_ident = base.split_ident

    def image(self, i: int) -> Image.Image:
        return self.base.image(int(self.indices[i]))

    def encoded(self, i: int) -> bytes | None:
        return self.base.encoded(int(self.indices[i]))

    def where(self, i: int) -> str:
        return self.base.where(int(self.indices[i]))

    def column(self, name: str) -> list[Any]:
        values = self.base.column(name)
        return [values[int(i)] for i in self.indices]


class FolderSource(ImageSource):
    """An ImageFolder: one sub-folder per class (sorted names are the classes: class names or WordNet ids)."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValidationError(f"{root}: no class sub-folders (a flat image folder needs a labels file: --labels "
                                  "FILE, labels.csv in it, or LOC_<split>_solution.csv beside it)")
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

    def reorder(self, order: np.ndarray) -> None:
        """Put the rows in `order` (class-aligned copies list their images by class index, then file name)."""
        self.paths = [self.paths[int(i)] for i in order]
        self.ids = [self.ids[int(i)] for i in order]
        self.labels = self.labels[order]


#: labels files found in or beside a flat image folder when none is given (`labels.csv`; Kaggle's
#: `LOC_val_solution.csv`, named after the split)
LABELS_FILES = ("labels.csv", "LOC_{split}_solution.csv")


class FlatFolderSource(FolderSource):
    """A flat image folder with a labels file: a `file,label` CSV (labels as class names or WordNet ids; a header
    row names the columns) or Kaggle's `LOC_val_solution.csv` as is (`ImageId,PredictionString`: the first WordNet
    id of each row is the label). Files are matched by path, name or name without suffix."""

    def __init__(self, root: Path, labels_file: Path) -> None:
        rows = _read_labels(labels_file)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        by_key: dict[str, Path] = {}
        for p in files:
            for key in (p.relative_to(root).as_posix(), p.name, p.stem):
                by_key.setdefault(key, p)
        labelled: dict[Path, str] = {}
        for key, label in rows:
            path = by_key.get(key) or by_key.get(Path(key).name) or by_key.get(Path(key).stem)
            if path is None:
                raise ValidationError(f"{labels_file}: image {key!r} is not in {root}")
            labelled[path] = label
        unlabelled = [p for p in files if p not in labelled]
        if unlabelled:
            raise ValidationError(f"{root}: {len(unlabelled)} image(s) have no label in {labels_file} "
                                  f"(e.g. {unlabelled[0].name})")
        self.class_names = sorted(set(labelled.values()))
        pos = {n: k for k, n in enumerate(self.class_names)}
        self.paths = files
        self.labels = np.asarray([pos[labelled[p]] for p in files], dtype=np.int64)
        self.ids = [p.relative_to(root).as_posix() for p in files]
        self.ident = (f"flat:{root.resolve()}:{stable_hash([(i, p.stat().st_size) for i, p in zip(self.ids, files)])}"
                      f":{stable_hash(rows)}")


def _read_labels(path: Path) -> list[tuple[str, str]]:
    """(file, label) rows of a labels CSV: `file,label` (with or without a header) or Kaggle's
    `ImageId,PredictionString` (the first token of the prediction string is the WordNet id)."""
    with open(path, newline="", encoding="utf-8") as f:
        table = [r for r in csv.reader(f) if r]
    if not table:
        raise ValidationError(f"{path}: no rows")
    head = [c.strip().lower() for c in table[0]]
    if head[:2] == ["imageid", "predictionstring"]:
        return [(r[0].strip(), r[1].split()[0]) for r in table[1:] if len(r) > 1 and r[1].split()]
    body = table[1:] if {"file", "filename", "image", "path"} & set(head) else table
    file_col = next((head.index(c) for c in ("file", "filename", "image", "path") if c in head), 0)
    label_col = next((head.index(c) for c in ("label", "class", "class_name", "wnid") if c in head), 1)
    if any(len(r) <= max(file_col, label_col) for r in body):
        raise ValidationError(f"{path}: every row needs a file and a label (columns: file,label)")
    return [(r[file_col].strip(), r[label_col].strip()) for r in body]


class WdsSource(ImageSource):
    """Webdataset shards read in place, local or through fsspec (`fs`: the Hub's webdataset copies): the tars are
    indexed (member headers and each sample's `cls`), an image is read by offset when asked for. With `take` (a
    `Quota`), shards are read in its seeded order until every class has its quota, and the source is those
    samples."""

    def __init__(self, shards: Sequence[str | Path], class_names: list[str], ident_prefix: str,
                 take: Quota | None = None, fs: Any = None) -> None:
        self.shards, self.fs = [str(s) for s in shards], fs
        self.class_names = list(class_names)
        take = take.sized(len(class_names)) if take is not None else None
        self._where: list[tuple[int, int, int]] = []  # (shard, data offset, size) of each sample's image
        labels, ids = [], []
        for k in (range(len(self.shards)) if take is None else take.order(len(self.shards))):
            shard = self.shards[int(k)]
            with self._open(int(k)) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                samples: dict[str, dict[str, Any]] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.partition(".")
                    s = samples.setdefault(key, {})
                    if ext.lower() in WDS_IMAGE_KEYS:
                        s["image"] = (m.offset_data, m.size)
                    elif ext == "cls":
                        s["cls"] = tar.extractfile(m).read()  # type: ignore[union-attr]
            for key, s in samples.items():
                if "image" not in s or "cls" not in s:
                    raise ValidationError(f"{shard}: sample {key} has no image or cls field")
            keys = list(samples)
            y = np.asarray([int(samples[key]["cls"].decode().strip()) for key in keys], dtype=np.int64)
            for r in (range(len(keys)) if take is None else take.take((int(k),), y)):
                labels.append(int(y[r]))
                ids.append(keys[r])
                self._where.append((int(k), *samples[keys[r]]["image"]))
            if take is not None and take.done:
                break
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = ids
        self.ident = f"{ident_prefix}:{stable_hash(ids)}"
        self._split_ident = ident_prefix

    def _open(self, k: int) -> Any:
        return open(self.shards[k], "rb") if self.fs is None else self.fs.open(self.shards[k], "rb")

    def encoded(self, i: int) -> bytes | None:
        k, offset, size = self._where[int(i)]
        with self._open(k) as f:
            f.seek(offset)
            return f.read(size)

    def where(self, i: int) -> str:
        return f"{self.shards[self._where[int(i)][0]]}: sample {self.ids[int(i)]}"

    def image(self, i: int) -> Image.Image:
        data = self.encoded(i)
        assert data is not None
        return decode_image(data, self.where(i))


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


def parquet_split_files(files: Sequence[str], split: str | None, config: str | None, where: object,
                        relative: Callable[[str], str]) -> list[str]:
    """The parquet files of one split (and config) of a dataset's files: `<split>-*.parquet` (or
    `<split>/*.parquet`) under any folder; a config is a folder name on the way. One split needs no name."""
    files = sorted(files)
    if config is not None:
        files = [f for f in files if config in relative(f).split("/")[:-1]]
        if not files:
            raise ValidationError(f"{where}: no parquet files for config {config!r}")
    by_split: dict[str, list[str]] = {}
    for f in files:
        parts = relative(f).split("/")
        name = parts[-1].split("-")[0] if "-" in parts[-1] else (parts[-2] if len(parts) > 1 else parts[-1])
        by_split.setdefault(name.removesuffix(".parquet"), []).append(f)
    if len(by_split) > 1 or split:
        return by_split[_need_split(split, sorted(by_split), where)]
    return files


def _open_local(path: Path, split: str | None, config: str | None, labels: Path | None,
                take: Quota | None = None) -> ImageSource:
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        datasets = offline_datasets()
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_need_split(split, list(ds), path)]
        return HFSource(ds, f"disk:{path.resolve()}:{ds._fingerprint}")
    parquet = [str(p) for p in path.rglob("*.parquet")]
    if parquet:
        files = parquet_split_files(parquet, split, config, path, lambda f: Path(f).relative_to(path).as_posix())
        key = stable_hash([(f, os.path.getsize(f)) for f in files])
        return ParquetSource(files, f"parquet:{path.resolve()}#{config or ''}:{split or ''}:{key}", take=take)
    return _open_folder(path, split, labels)


def _labels_file(folder: Path, split: str | None) -> Path | None:
    """The labels file of a flat folder when none is given: `labels.csv` in it, or a Kaggle solution file beside it."""
    for name in LABELS_FILES:
        name = name.format(split=split or folder.name)
        for candidate in (folder / name, folder.parent / name):
            if candidate.is_file():
                return candidate
    return None


def _folder(folder: Path, split: str | None, labels: Path | None) -> ImageSource:
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    if labels is None and not has_classes:
        labels = _labels_file(folder, split)
    return FlatFolderSource(folder, labels) if labels is not None else FolderSource(folder)


def _open_folder(path: Path, split: str | None, labels: Path | None = None) -> ImageSource:
    """An ImageFolder (or a flat folder with a labels file), or split `split` of a folder of them
    (`path/<split>/<class>/...`). A folder without split folders is one split: naming a split there is refused, as
    two names would read the same images."""
    if split is None:
        return _folder(path, split, labels)
    if (path / split).is_dir():
        return _folder(path / split, split, labels)
    splits = sorted(p.name for p in path.iterdir()
                    if p.is_dir() and any(c.is_dir() for c in p.iterdir()) and not p.name.startswith("."))
    if splits:
        raise UsageError(f"{path}: no split folder {split!r} (split folders: {', '.join(splits)})")
    raise UsageError(f"{path} is one ImageFolder without split folders ({path}/<split>/<class>/...), so split "
                     f"{split!r} would be the same images as any other split: give it split folders")


def check_disjoint_splits(train: ImageSource | None, evaluation: ImageSource, dataset: str) -> None:
    """The head's training images and the evaluation images must be different splits (UsageError otherwise)."""
    if train is not None and train.split_ident == evaluation.split_ident:
        raise UsageError(f"{dataset}: the train split and the evaluation split are the same images ({train.ident}); "
                         "choose different splits (--train-split / --split)")


def _need_split(split: str | None, available: Sequence[str], where: object) -> str:
    if split is None or split not in available:
        raise UsageError(f"{where}: choose a split with --split (available: {', '.join(available)})")
    return split


def hub_dataset_id(spec: str) -> str:
    """The Hub id a dataset spec names ("cifar10" -> "uoft-cs/cifar10", "hf:ORG/NAME@rev" -> "ORG/NAME"); empty
    for a local folder or a `wds:` spec (recorded as a card's `source_datasets` only when it is a Hub id)."""
    try:
        return parse_spec(spec).hub_id
    except UsageError:  # not a dataset spec this machine can open: no Hub id to record either
        return ""


def check_labels(source: ImageSource) -> None:
    """Every label must be a class of the source (0 .. classes - 1): one line naming how many are not, and one."""
    bad = np.flatnonzero((source.labels < 0) | (source.labels >= len(source.class_names)))
    if len(bad):
        i = int(bad[0])
        raise ValidationError(f"{source.ident}: {len(bad)} image(s) have a label outside the class range "
                              f"0..{len(source.class_names) - 1} (e.g. {source.where(i)} has label "
                              f"{int(source.labels[i])}); fix the labels or leave those images out")


def align_classes(source: ImageSource) -> ImageSource:
    """A source whose class list is a known dataset's (any order or spelling, or WordNet ids) takes that dataset's
    names and index order, labels remapped (`failmode.vocab.classnames.align_to_known`); folders list their images
    by class index, then file name, whatever the order of their folders. Other class lists keep their order."""
    from failmode.vocab.classnames import align_to_known, label_names

    found = align_to_known(source.class_names)
    if found is None:
        return source
    dataset, mapping = found
    names = label_names(dataset)
    if list(mapping) != list(range(len(names))) or source.class_names != names:
        log.info("%s: classes aligned by name to %s's index order", source.ident, dataset)
        source.labels = mapping[source.labels]
        source.class_names = names
        if isinstance(source, FolderSource):
            source.reorder(np.lexsort((np.asarray(source.ids, dtype=object).astype(str), source.labels))
                           if source.ids else np.zeros(0, np.int64))
    source.known = dataset
    return source


def open_source(spec: str, split: str | None = None, *, per_class: int | None = None, seed: int = 0) -> ImageSource:
    """Open a labelled image collection; see the module docstring for accepted specs.

    With `per_class`, only a seeded per-class subset: parquet files and tar shards are read one by one in a seeded
    order until every class has `per_class` images (`Quota`), so a few per class of a large split read a few
    percent of it; other sources are listed whole and `splits.stratified_take` picks the subset. Its `ids` say
    which images were taken."""
    parsed = parse_spec(spec)
    take = None
    if per_class is not None:
        take = Quota(0, per_class, seed)  # sized by the source once it knows its classes
    if parsed.kind == "wds":
        source = _open_wds(parsed.path, split, take)  # type: ignore[arg-type]
    elif parsed.kind == "local":
        source = _open_local(parsed.path, split, parsed.config, parsed.labels, take)  # type: ignore[arg-type]
    else:
        source = _open_hub(parsed, split, take)
    check_labels(source)
    if take is not None and not isinstance(source, ParquetSource | WdsSource):
        from failmode.data.splits import stratified_take

        chosen, _ = stratified_take(source.labels, per_class, seed, salt=1)  # type: ignore[arg-type]
        source = SubsetSource(source, chosen, f"{source.ident}:take{per_class}@{seed}")
    return align_classes(source)


def hub_filesystem() -> Any:
    """The Hub as an fsspec filesystem (`huggingface_hub.HfFileSystem`): only the byte ranges read are downloaded."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def open_parquet_split(fs: Any, root: str, split: str | None, config: str | None, ident: str,
                       known: KnownDataset | None = None, take: Quota | None = None) -> ParquetSource | None:
    """The parquet files of one split under `root` on an fsspec filesystem, read in place (the Hub's path; a local
    folder under fsspec reads the same way); None when `root` holds no parquet files."""
    files = [f for f in fs.glob(f"{root.rstrip('/')}/**/*.parquet")]
    if not files:
        return None
    files = parquet_split_files(files, split, config, ident, lambda f: f[len(root.rstrip("/")) + 1:])
    key = stable_hash([(f, fs.size(f)) for f in files])
    cols = (known.image_column, known.label_column) if known else (None, None)
    return ParquetSource(files, f"{ident}:{key}", fs=fs, image_column=cols[0], label_column=cols[1], take=take)


def _open_hub(parsed: DatasetSpec, split: str | None, take: Quota | None = None) -> ImageSource:
    """A Hub dataset: its parquet files through HfFileSystem when it has them, else `datasets.load_dataset`."""
    repo, revision, known = parsed.repo, parsed.revision, parsed.known
    assert repo is not None
    split = split or (known.eval_split if known else None)
    what = f"the dataset {repo!r} (split {split})"
    hint = f"download it elsewhere and pass the local folder instead of {parsed.text!r}"

    def load_parquet(ident: str, local_only: bool) -> ParquetSource | None:
        if local_only:  # no Hub to read from: a copy `datasets` cached earlier, below
            return None
        root = f"datasets/{ident}" + (f"@{revision}" if revision else "")
        return open_parquet_split(hub_filesystem(), root, split, parsed.config,
                                  f"hub:{ident}@{revision or 'main'}:{split}", known, take)

    def load_tars(ident: str, local_only: bool) -> WdsSource | None:
        if local_only:
            return None
        root = f"datasets/{ident}" + (f"@{revision}" if revision else "")
        return open_wds_split(hub_filesystem(), root, split, f"hub-wds:{ident}@{revision or 'main'}", take)

    for loader in (load_parquet, load_tars):  # parquet files, else the Hub's webdataset copies
        found = load_from_hub_or_local(repo, loader, what=what, local_hint=hint)
        if found is not None:
            return found
    datasets = offline_datasets()

    def load(ident: str, local_only: bool) -> Any:
        if local_only:
            datasets.config.HF_HUB_OFFLINE = True
        return datasets.load_dataset(ident, split=split, revision=revision or None,
                                     download_mode=datasets.DownloadMode.REUSE_DATASET_IF_EXISTS)

    ds = load_from_hub_or_local(repo, load, what=what, local_hint=hint)
    cols = (known.image_column, known.label_column) if known else (None, None)
    return HFSource(ds, f"hub:{repo}@{revision or 'main'}:{split}:{ds._fingerprint}", *cols)


def _open_wds(root: Path, split: str | None, take: Quota | None = None) -> ImageSource:
    return open_wds_split(None, str(root), split, f"wds:{root.resolve()}", take)  # type: ignore[return-value]


def open_wds_split(fs: Any, root: str, split: str | None, ident: str, take: Quota | None = None) -> WdsSource | None:
    """The webdataset split under `root` (`_info.json`: `class_names`, the split's tars as `<split>-*.tar` or listed
    as `filenames`), local (`fs` None) or on an fsspec filesystem (the Hub's path); None when there is no
    `_info.json` on a filesystem (a Hub dataset without webdataset copies)."""
    import json

    info_path = f"{root.rstrip('/')}/_info.json"
    if fs is None:
        info = read_json(info_path)
    elif fs.exists(info_path):
        with fs.open(info_path, "rb") as f:
            info = json.loads(f.read())
    else:
        return None
    splits = info.get("splits", {})
    split = split or next(iter(splits), None)
    if split not in splits:
        raise UsageError(f"{info_path}: no split {split!r} (available: {', '.join(splits)})")
    names = info.get("class_names") or []
    listed = (splits[split] or {}).get("filenames") if isinstance(splits[split], dict) else None
    if listed:
        shards = [f"{root.rstrip('/')}/{name}" for name in listed]
    else:
        shards = sorted(fs.glob(f"{root.rstrip('/')}/{split}-*.tar") if fs is not None
                        else (str(p) for p in Path(root).glob(f"{split}-*.tar")))
    if not shards:
        raise ValidationError(f"{root}: no {split}-*.tar shards")
    return WdsSource(shards, names, f"{ident}:{split}", take, fs=fs)

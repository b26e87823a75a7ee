"""Write shards: one parquet file + one webdataset tar + a stats marker per shard, atomically and reproducibly.

A shard is done when its `_stats.json` marker exists; the marker is written after both data files were renamed
into place, so an interrupted writer leaves no partial shard under a final name (only hidden `.tmp` files, removed
when the shard is written again). Equal samples give equal bytes: fixed image encoder settings, fixed parquet
writer settings, tar members with a fixed mtime/owner, and canonical JSON.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from failmode import __version__
from failmode.dataset import layout
from failmode.dataset.features import ArrowSchemaSpec, feature_spec_from_row
from failmode.dataset.sample import CODECS, DebugSample, ImageCodec, SampleError, describe, sample_to_row
from failmode.io import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: every tar member gets this mtime, so tar bytes are reproducible
ROW_GROUP_SIZE = 100  # rows per parquet row group (images are large; small groups keep readers' memory low)
PARQUET_OPTIONS: dict[str, Any] = {"compression": "snappy", "version": "2.6", "use_dictionary": False,
                                   "write_statistics": False}


def shard_done(root: str | os.PathLike[str], config: str, split: str, shard_index: int, num_shards: int) -> bool:
    """True when the shard's parquet, tar and stats marker all exist (the marker is written last)."""
    paths = (layout.stats_path, layout.parquet_path, layout.tar_path)
    return all(p(root, config, split, shard_index, num_shards).exists() for p in paths)


def read_shard_stats(root: str | os.PathLike[str], config: str, split: str, shard_index: int,
                     num_shards: int) -> dict[str, Any]:
    """The stats dict `write_shard` returned for a done shard (ValidationError if the marker is missing)."""
    return read_json(layout.stats_path(root, config, split, shard_index, num_shards))


def write_shard(
    root: str | os.PathLike[str],
    config: str,
    split: str,
    shard_index: int,
    num_shards: int,
    samples: Iterable[DebugSample | Mapping[str, Any]],
    *,
    class_names: list[str],
    image_format: str = "png",
) -> dict[str, Any]:
    """Atomically write one parquet shard + one webdataset tar + a `..._stats.json` marker written last.

    Malformed samples (missing field, unknown class, undecodable image, ...) are skipped with a warning naming
    them and listed under `rejected` in the returned stats; the other samples are written unchanged.
    """
    layout.check_config_name(config)
    layout.check_split_name(split)
    layout.check_shard(shard_index, num_shards)
    codec = CODECS.get(image_format)
    paths = {p.__name__: p(root, config, split, shard_index, num_shards)
             for p in (layout.parquet_path, layout.tar_path, layout.stats_path)}
    _clear_shard(paths.values())
    prefix = f"{config}_{split}_{shard_index:05d}"
    where = f"{config}/{layout.shard_stem(split, shard_index, num_shards)}"
    with atomic_path(paths["parquet_path"]) as ptmp, atomic_path(paths["tar_path"]) as ttmp:
        sink = _ShardSink(ptmp, ttmp, class_names, codec)
        try:
            rejected = _fill(sink, samples, prefix, class_names, codec, where)
        finally:
            sink.close()
        num_bytes = arrow_num_bytes(ptmp)
    root = Path(root)
    stats = {
        "kind": "images", "config": config, "split": split, "shard_index": shard_index, "num_shards": num_shards,
        "image_format": codec.name, "num_samples": sink.num_rows, "num_bytes": num_bytes,
        "label_counts": {str(k): v for k, v in sorted(sink.label_counts.items())},
        "features": sink.spec.to_json(), "rejected": rejected, "failmode_version": __version__,
        "files": {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                  for p in (paths["parquet_path"], paths["tar_path"])},
    }
    write_json(paths["stats_path"], stats)
    return stats


def arrow_num_bytes(path: str | os.PathLike[str]) -> int:
    """The in-memory Arrow size of a parquet shard as `datasets` counts it for `dataset_info.num_bytes`: the file
    read in batches of its first row group, each batch one contiguous table (validity bitmaps included)."""
    import pyarrow as pa

    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows == 0:
        return 0
    batch = pf.metadata.row_group(0).num_rows
    return sum(pa.Table.from_batches([b]).combine_chunks().nbytes for b in pf.iter_batches(batch_size=batch))


def _fill(sink: _ShardSink, samples: Iterable[Any], prefix: str, class_names: list[str], codec: ImageCodec,
          where: str) -> list[dict[str, str]]:
    rejected = []
    for i, sample in enumerate(samples):
        try:
            row = sample_to_row(sample, f"{prefix}_{i:06d}", class_names, codec)
            sink.add(row)
        except SampleError as e:
            name = describe(sample, i)
            log.warning("%s: rejected %s: %s", where, name, e)
            rejected.append({"sample": name, "reason": str(e)})
    return rejected


def _clear_shard(paths: Iterable[Path]) -> None:
    """Remove a shard's marker first (so it reads as not done), then its files and stale temporaries."""
    paths = sorted(paths, key=lambda p: not p.name.endswith("_stats.json"))
    for p in paths:
        p.unlink(missing_ok=True)
        if p.parent.exists():
            for tmp in p.parent.glob(f".{p.name}.*.tmp"):
                tmp.unlink(missing_ok=True)


class _ShardSink:
    """Streams rows into a parquet writer (row groups of ROW_GROUP_SIZE) and a tar file at the same time."""

    def __init__(self, parquet_file: Path, tar_file: Path, class_names: list[str], codec: ImageCodec) -> None:
        self.parquet_file, self.class_names, self.codec = parquet_file, class_names, codec
        self.tar = tarfile.open(tar_file, "w", format=tarfile.USTAR_FORMAT)
        self.spec: ArrowSchemaSpec | None = None
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[dict[str, Any]] = []
        self.num_rows = 0
        self.label_counts: Counter[int] = Counter()

    def add(self, row: dict[str, Any]) -> None:
        """Check the row against the shard's schema (set by the first row) and write it to both files."""
        spec = feature_spec_from_row(row, self.class_names)
        if self.spec is None:
            self.spec = spec
        elif spec != self.spec:
            raise SampleError(f"columns {spec.describe()} differ from the shard's first sample "
                              f"({self.spec.describe()})")
        self._add_tar(row)
        self.pending.append(row)
        self.num_rows += 1
        self.label_counts[row["label"]] += 1
        if len(self.pending) >= ROW_GROUP_SIZE:
            self._flush()

    def _add_tar(self, row: dict[str, Any]) -> None:
        key = row["key"]
        meta = {k: v for k, v in row.items() if k != "image"}
        members = [
            (f"{key}.{self.codec.ext}", row["image"]),
            (f"{key}.cls", str(row["label"]).encode()),
            (f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))

    def _flush(self) -> None:
        if not self.pending:
            return
        assert self.spec is not None  # set by the first row
        table = self.spec.table(self.pending, self.codec.ext)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.parquet_file, table.schema, **PARQUET_OPTIONS)
        self.writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
        self.pending = []

    def close(self) -> None:
        """Flush the last row group and close both files (an empty shard still gets a valid, empty parquet)."""
        if self.spec is None:
            self.spec = ArrowSchemaSpec.core(self.class_names)
        self._flush()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.parquet_file, self.spec.schema(), **PARQUET_OPTIONS)
        self.writer.close()
        self.tar.close()

"""Metadata-only configs (failure records and other tables): ids, labels, predictions, contexts, never pixels.

ImageNet's licence forbids redistributing its images, so tables refer to the original validation images by id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from failmode import __version__
from failmode.dataset import layout
from failmode.dataset.features import ArrowSchemaSpec, dtype_of
from failmode.dataset.writer import PARQUET_OPTIONS, ROW_GROUP_SIZE, arrow_num_bytes
from failmode.errors import ValidationError
from failmode.io import atomic_path, sha256_file, write_json

CLASS_COLUMNS = ("label", "prediction")  # integer class columns stored as ClassLabel when class names are given


def write_table_config(
    root: str | os.PathLike[str],
    config: str,
    split: str,
    rows: list[dict[str, Any]],
    *,
    class_names: Sequence[str] | None = None,
    class_columns: Sequence[str] = CLASS_COLUMNS,
    description: str = "",
) -> Path:
    """Write a metadata-only config (one parquet shard + stats marker) and return the parquet path.

    Values must be scalars (str, int, float, bool or None); bytes and images are refused. Integer columns named in
    `class_columns` become ClassLabel features when `class_names` is given. `finalize` adds every table config
    written here to the manifest and the card.
    """
    layout.check_config_name(config)
    layout.check_split_name(split)
    if not rows:
        raise ValidationError(f"table config {config!r}: no rows")
    spec = _table_spec(config, rows, list(class_names or []), class_columns)
    path = layout.parquet_path(root, config, split, 0, 1)
    marker = layout.stats_path(root, config, split, 0, 1)
    marker.unlink(missing_ok=True)
    table = spec.table(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE * 100, **PARQUET_OPTIONS)
        num_bytes = arrow_num_bytes(tmp)
    write_json(marker, {
        "kind": "table", "config": config, "split": split, "shard_index": 0, "num_shards": 1,
        "num_samples": len(rows), "num_bytes": num_bytes, "description": description,
        "features": spec.to_json(), "class_names": list(spec.class_names), "failmode_version": __version__,
        "files": {path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}},
    })
    return path


def _table_spec(config: str, rows: list[dict[str, Any]], class_names: list[str],
                class_columns: Sequence[str]) -> ArrowSchemaSpec:
    columns = list(rows[0])
    types: dict[str, str] = {}
    for i, row in enumerate(rows):
        if list(row) != columns:
            raise ValidationError(f"table config {config!r}: row {i} has columns {list(row)}, expected {columns}")
        for name, value in row.items():
            if isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "getpixel"):
                raise ValidationError(f"table config {config!r}: row {i} column {name!r} holds image data; "
                                      "metadata configs store ids only, never pixels")
            if value is None:
                continue
            dtype = dtype_of(value)
            if name in class_columns and class_names and dtype == "int64":
                if not 0 <= value < len(class_names):
                    raise ValidationError(f"table config {config!r}: row {i} {name}={value} is not a class index")
                dtype = "class_label"
            old = types.setdefault(name, dtype)
            if old != dtype and {old, dtype} != {"int64", "float64"}:
                raise ValidationError(f"table config {config!r}: column {name!r} mixes {old} and {dtype} (row {i})")
            if {old, dtype} == {"int64", "float64"}:
                types[name] = "float64"
    return ArrowSchemaSpec(tuple((c, types.get(c, "string")) for c in columns), tuple(class_names))

"""Parquet tables of records with a JSON metadata block in the file's schema (one self-describing file)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failmode.errors import ValidationError
from failmode.io import atomic_path

#: key under which the JSON metadata lives in the parquet schema metadata
META_KEY = b"failmode"


def write_table(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                schema: Any | None = None) -> Path:
    """Write `rows` (dicts with the same keys) to parquet atomically, with `meta` stored as JSON in the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=schema)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(path: str | os.PathLike[str], required: Sequence[str] = ()
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and metadata of a table written by `write_table`; a missing file or column is one clear line."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise ValidationError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValidationError(f"{path}: missing column(s) {', '.join(missing)}")
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    return table.to_pylist(), meta

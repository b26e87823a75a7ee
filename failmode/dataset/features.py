"""Column types of a dataset config, written as parquet/arrow schemas that Hugging Face `datasets` reads back
as its own features (Image, ClassLabel with the real class names, Value), without importing `datasets`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from failmode.dataset.sample import CORE_COLUMNS
from failmode.errors import ValidationError

# dtype name -> (arrow type, `datasets` feature JSON, dataset-card YAML dtype)
_VALUE_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
}
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_CORE_DTYPES = {"key": "string", "image": "image", "label": "class_label", "seed": "int64"}


def dtype_of(value: Any) -> str:
    """The column dtype of a scalar value (None only occurs for missing scores, which are float64)."""
    if value is None or isinstance(value, float):
        return "float64"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, str):
        return "string"
    raise ValidationError(f"unsupported value {value!r} ({type(value).__name__}): use str, int, float or bool")


@dataclass(frozen=True)
class ArrowSchemaSpec:
    """Ordered (column, dtype) pairs plus the class names of the `class_label` columns."""

    columns: tuple[tuple[str, str], ...]
    class_names: tuple[str, ...] = ()

    @classmethod
    def core(cls, class_names: list[str]) -> ArrowSchemaSpec:
        """The spec of an image config with only the core columns (no scores or extra columns)."""
        return cls(tuple((c, _CORE_DTYPES.get(c, "string")) for c in CORE_COLUMNS), tuple(class_names))

    def describe(self) -> str:
        """Short text of the columns for messages."""
        return ", ".join(f"{n}:{t}" for n, t in self.columns)

    def to_json(self) -> list[list[str]]:
        """JSON form stored in shard stats."""
        return [[n, t] for n, t in self.columns]

    def arrow_type(self, dtype: str) -> pa.DataType:
        """The arrow type of a dtype name."""
        if dtype == "image":
            return _IMAGE_TYPE
        if dtype == "class_label":
            return pa.int64()
        return _VALUE_TYPES[dtype]

    def hf_feature(self, dtype: str) -> dict[str, Any]:
        """The `datasets` feature JSON (as stored in parquet schema metadata) of a dtype."""
        if dtype == "image":
            return {"_type": "Image"}
        if dtype == "class_label":
            return {"_type": "ClassLabel", "names": list(self.class_names)}
        return {"_type": "Value", "dtype": dtype}

    def yaml_features(self) -> list[dict[str, Any]]:
        """The `dataset_info.features` list of a dataset card."""
        out = []
        for name, dtype in self.columns:
            if dtype == "class_label":
                names = {str(i): n for i, n in enumerate(self.class_names)}
                out.append({"name": name, "dtype": {"class_label": {"names": names}}})
            else:
                out.append({"name": name, "dtype": dtype})
        return out

    def schema(self) -> pa.Schema:
        """Arrow schema with the `huggingface` metadata `datasets` uses to restore Image and ClassLabel features."""
        features = {n: self.hf_feature(t) for n, t in self.columns}
        meta = json.dumps({"info": {"features": features}}, sort_keys=True, separators=(",", ":"))
        return pa.schema([(n, self.arrow_type(t)) for n, t in self.columns], metadata={"huggingface": meta})

    def table(self, rows: list[dict[str, Any]], image_ext: str | None = None) -> pa.Table:
        """An arrow table of `rows` (images as {bytes, path=<key>.<ext>} structs when `image_ext` is given)."""
        cols = {}
        for name, dtype in self.columns:
            values = [r.get(name) for r in rows]
            if dtype == "image":
                values = [{"bytes": v, "path": f"{r['key']}.{image_ext}" if image_ext else None}
                          for v, r in zip(values, rows, strict=True)]
            cols[name] = pa.array(values, type=self.arrow_type(dtype))
        return pa.Table.from_pydict(cols, schema=self.schema())


def feature_spec_from_row(row: dict[str, Any], class_names: list[str]) -> ArrowSchemaSpec:
    """The spec of an image-config row: core column types, then each further column's type from its value."""
    cols = tuple((n, _CORE_DTYPES.get(n) or dtype_of(v)) for n, v in row.items())
    return ArrowSchemaSpec(cols, tuple(class_names))


def spec_from_json(data: list[list[str]], class_names: list[str]) -> ArrowSchemaSpec:
    """Inverse of `ArrowSchemaSpec.to_json`."""
    return ArrowSchemaSpec(tuple((n, t) for n, t in data), tuple(class_names))

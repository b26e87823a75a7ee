"""Image dataset sources (Hub ids, local folders, parquet, webdataset, in-memory) and deterministic splits."""

from failmode.data.sources import ImageSource, ListSource, open_source
from failmode.data.splits import Splits, make_splits

__all__ = ["ImageSource", "ListSource", "Splits", "make_splits", "open_source"]

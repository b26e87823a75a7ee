"""Dataset writer (parquet + webdataset + card + manifest), validation and publishing.

Every dataset failmode builds is a Hugging Face dataset (`load_dataset(folder_or_repo, config)`) whose samples
also stream as webdataset tars and load with timm's `wds/` reader. See docs/dataset-format.md.
"""

from failmode.dataset.finalize import finalize
from failmode.dataset.layout import config_slug
from failmode.dataset.manifest import ConfigSpec, Manifest
from failmode.dataset.sample import CODECS, DebugSample, SampleError
from failmode.dataset.table import write_table_config
from failmode.dataset.validate import validate_dataset_folder
from failmode.dataset.writer import read_shard_stats, shard_done, write_shard
from failmode.errors import ValidationError

__all__ = [
    "CODECS", "ConfigSpec", "DebugSample", "Manifest", "SampleError", "ValidationError",
    "config_slug", "finalize", "read_shard_stats", "shard_done", "validate_dataset_folder", "write_shard",
    "write_table_config",
]

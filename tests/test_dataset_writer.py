"""Dataset writer: three loaders agree, bytes are reproducible, kills leave no partial shard, bad samples are named."""

from __future__ import annotations

import glob
import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from failmode.dataset import (
    DebugSample,
    ValidationError,
    finalize,
    layout,
    shard_done,
    validate_dataset_folder,
    write_shard,
    write_table_config,
)
from failmode.io import sha256_tree
from failmode.testing import TINY_CLASSES, DatasetWriter, build_tiny_dataset, tiny_debug_samples, tiny_manifest

MODEL = "timm/test_resnet.r160_in1k"


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "tiny-debug"
    build_tiny_dataset(root, n=10, shard_size=6)
    return root


def _load_hf(root: Path, config: str, split: str, cache: Path):
    import datasets

    # conftest sets HF_UPDATE_DOWNLOAD_COUNTS=0 and a closed loopback HF_ENDPOINT: no request leaves the machine
    return datasets.load_dataset(str(root), config, split=split, cache_dir=str(cache))


def test_three_loaders_agree(tiny_ds: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm.data
    import webdataset as wds

    hf = _load_hf(tiny_ds, "test_resnet", "train", tmp_path / "cache")
    assert hf.features["label"].names == TINY_CLASSES
    assert type(hf.features["image"]).__name__ == "Image"
    assert hf.features["seed"].dtype == "int64" and hf.features["clip_class"].dtype == "float64"
    hf_labels = {r["key"]: r["label"] for r in hf.remove_columns("image")}
    assert len(hf) == 10 and sorted(hf_labels.values()) == sorted(i % 4 for i in range(10))

    tm = timm.data.create_dataset("wds/tiny-debug", root=str(layout.wds_dir(tiny_ds, "test_resnet")), split="train")
    assert len(tm) == 10
    tm_labels = [int(t) for _, t in tm]

    tars = sorted(glob.glob(str(layout.wds_dir(tiny_ds, "test_resnet") / "*.tar")))
    plain = list(wds.WebDataset(tars, shardshuffle=False).to_tuple("__key__", "png", "cls", "json"))
    assert len(plain) == 10
    assert {k: int(c) for k, _, c, _ in plain} == hf_labels
    assert tm_labels == [int(c) for _, _, c, _ in plain]
    first = hf[0]
    key, png, _, meta = next(p for p in plain if p[0] == first["key"])
    meta = json.loads(meta)
    assert meta["prompt"] == first["prompt"] and meta["seed"] == first["seed"] and meta["steps"] == 2
    assert list(Image.open(io.BytesIO(png)).getdata()) == list(first["image"].getdata())


def test_table_config_loads_with_class_labels(tiny_ds: Path, tmp_path: Path) -> None:
    table = _load_hf(tiny_ds, "failures-test_resnet", "validation", tmp_path / "cache")
    assert table.features["prediction"].names == TINY_CLASSES
    assert table.column_names == ["image_id", "label", "prediction", "context", "half"]
    assert table[0] == {"image_id": "ILSVRC2012_val_00000001", "label": 1, "prediction": 2,
                        "context": "on a kitchen table", "half": "seed"}


def test_same_samples_give_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build_tiny_dataset(a)
    build_tiny_dataset(b)
    assert sha256_tree(a) == sha256_tree(b)
    assert (a / "README.md").read_bytes() == (b / "README.md").read_bytes()


def test_write_shard_stats_and_tar_headers(tmp_path: Path) -> None:
    import tarfile

    stats = write_shard(tmp_path, "m", "train", 0, 1, tiny_debug_samples(3, MODEL), class_names=TINY_CLASSES)
    assert stats["num_samples"] == 3 and stats["rejected"] == []
    assert stats["label_counts"] == {"0": 1, "1": 1, "2": 1}
    assert shard_done(tmp_path, "m", "train", 0, 1)
    with tarfile.open(layout.tar_path(tmp_path, "m", "train", 0, 1)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["m_train_00000_000000.png", "m_train_00000_000000.cls",
                                             "m_train_00000_000000.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(946684800, 0, 0, "", 0o644)}
    assert all("." not in m.name.rsplit(".", 1)[0] for m in members)


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, tarfile
    from failmode.testing import TINY_CLASSES, DatasetWriter, tiny_debug_samples
    calls = {"n": 0}
    real = tarfile.TarFile.addfile
    def addfile(self, info, fileobj=None):
        calls["n"] += 1
        if calls["n"] == int(sys.argv[2]):   # in the middle of the second shard
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, info, fileobj)
    tarfile.TarFile.addfile = addfile
    w = DatasetWriter(sys.argv[1], "m", "train", class_names=TINY_CLASSES, num_samples=10, shard_size=4)
    w.write(tiny_debug_samples(10, "timm/test_resnet.r160_in1k"))
""")


def test_killed_writer_leaves_no_partial_shard_and_rerun_completes(tmp_path: Path) -> None:
    root = tmp_path / "killed"
    # shard 0 has 4 samples x 3 tar members; die on the 5th member of shard 1
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root), "17"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert shard_done(root, "m", "train", 0, 3)
    assert not shard_done(root, "m", "train", 1, 3)
    visible = sorted(p.name for p in root.rglob("*") if p.is_file() and not layout.is_temp_file(p))
    assert visible == sorted(["train-00000-of-00003.parquet", "train-00000-of-00003_stats.json",
                              "train-00000-of-00003.tar"])
    assert any(layout.is_temp_file(p) for p in root.rglob("*"))  # the torn write is hidden, not under a final name

    w = DatasetWriter(root, "m", "train", class_names=TINY_CLASSES, num_samples=10, shard_size=4)
    assert w.pending_shards() == [1, 2]
    w.write(tiny_debug_samples(10, MODEL))
    assert not any(layout.is_temp_file(p) for p in root.rglob("*"))
    clean = tmp_path / "clean"
    DatasetWriter(clean, "m", "train", class_names=TINY_CLASSES, num_samples=10, shard_size=4).write(
        tiny_debug_samples(10, MODEL))
    assert sha256_tree(root) == sha256_tree(clean)


def test_resumable_writer_generates_only_pending_shards(tmp_path: Path) -> None:
    asked: list[range] = []

    def produce(positions: range):
        asked.append(positions)
        samples = list(tiny_debug_samples(10, MODEL))
        return [samples[i] for i in positions]

    w = DatasetWriter(tmp_path, "m", "train", class_names=TINY_CLASSES, num_samples=10, shard_size=4)
    w.write_ranges(produce)
    assert asked == [range(0, 4), range(4, 8), range(8, 10)]
    layout.stats_path(tmp_path, "m", "train", 1, 3).unlink()
    asked.clear()
    w.write_ranges(produce)
    assert asked == [range(4, 8)]


def test_stream_of_wrong_length_is_an_error(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "m", "train", class_names=TINY_CLASSES, num_samples=5, shard_size=4)
    with pytest.raises(ValidationError, match="ended early"):
        w.write(tiny_debug_samples(3, MODEL))
    with pytest.raises(ValidationError, match="more than the expected 5"):
        w.write(tiny_debug_samples(7, MODEL))


def test_malformed_samples_are_rejected_by_name_and_the_rest_is_written(tmp_path: Path, caplog) -> None:
    good = list(tiny_debug_samples(4, MODEL))
    png = io.BytesIO()
    good[0].image.save(png, format="PNG")
    missing = {k: v for k, v in vars(good[1]).items() if k != "prompt"}
    unknown = DebugSample(**{**vars(good[2]), "class_name": "zebra"})
    out_of_range = DebugSample(**{**vars(good[2]), "label": 9})
    corrupt = DebugSample(**{**vars(good[3]), "image": png.getvalue()[:60]})
    jpeg = io.BytesIO()
    good[0].image.save(jpeg, format="JPEG")
    wrong_format = DebugSample(**{**vars(good[3]), "image": jpeg.getvalue()})
    flipped = bytearray(png.getvalue())
    flipped[len(flipped) // 2] ^= 0xFF  # a corrupted byte inside the image data (CRC mismatch)
    bitflip = DebugSample(**{**vars(good[3]), "image": bytes(flipped)})
    stream = [good[0], missing, good[1], unknown, good[2], out_of_range, corrupt, wrong_format, good[3], bitflip]
    with caplog.at_level(logging.WARNING, logger="failmode.dataset.writer"):
        stats = write_shard(tmp_path, "m", "train", 0, 1, stream, class_names=TINY_CLASSES)
    reasons = {r["sample"]: r["reason"] for r in stats["rejected"]}
    assert list(reasons) == ["sample #1 class 'goldfish' seed 1", "sample #3 class 'zebra' seed 2",
                             "sample #5 class 'great white shark' seed 2", "sample #6 class 'tiger shark' seed 3",
                             "sample #7 class 'tiger shark' seed 3", "sample #9 class 'tiger shark' seed 3"]
    assert "missing field(s) prompt" in reasons["sample #1 class 'goldfish' seed 1"]
    assert "unknown class" in reasons["sample #3 class 'zebra' seed 2"]
    assert "outside 0..3" in reasons["sample #5 class 'great white shark' seed 2"]
    assert "undecodable image" in reasons["sample #6 class 'tiger shark' seed 3"]
    assert "not PNG" in reasons["sample #7 class 'tiger shark' seed 3"]
    assert "undecodable image" in reasons["sample #9 class 'tiger shark' seed 3"]
    assert "sample #3 class 'zebra' seed 2" in caplog.text
    table = pq.read_table(layout.parquet_path(tmp_path, "m", "train", 0, 1))
    assert table.column("key").to_pylist() == [f"m_train_00000_{i:06d}" for i in (0, 2, 4, 8)]
    clean = write_shard(tmp_path / "clean", "m", "train", 0, 1, good, class_names=TINY_CLASSES)
    clean_table = pq.read_table(layout.parquet_path(tmp_path / "clean", "m", "train", 0, 1))
    assert table.drop(["key", "image"]).equals(clean_table.drop(["key", "image"]))
    assert [i["bytes"] for i in table.column("image").to_pylist()] == \
        [i["bytes"] for i in clean_table.column("image").to_pylist()]
    assert clean["num_samples"] == stats["num_samples"] == 4


def test_finalize_names_missing_shards(tmp_path: Path) -> None:
    manifest = tiny_manifest(shards=3)
    write_shard(tmp_path, "test_resnet", "train", 0, 3, tiny_debug_samples(2, MODEL), class_names=TINY_CLASSES)
    write_shard(tmp_path, "baseline", "train", 0, 1, tiny_debug_samples(2, "baseline"), class_names=TINY_CLASSES)
    with pytest.raises(ValidationError, match=r"'test_resnet' split 'train': 2 of 3 shards not written \(shard 1, 2\)"):
        finalize(tmp_path, manifest)


def test_finalize_refuses_shards_with_different_columns(tmp_path: Path) -> None:
    manifest = tiny_manifest(shards=2)
    samples = list(tiny_debug_samples(4, MODEL))
    for s in samples[2:]:
        s.scores = {}
    write_shard(tmp_path, "test_resnet", "train", 0, 2, samples[:2], class_names=TINY_CLASSES)
    write_shard(tmp_path, "test_resnet", "train", 1, 2, samples[2:], class_names=TINY_CLASSES)
    write_shard(tmp_path, "baseline", "train", 0, 1, tiny_debug_samples(2, "baseline"), class_names=TINY_CLASSES)
    with pytest.raises(ValidationError, match="all shards of a config need the same columns"):
        finalize(tmp_path, manifest)


def test_stale_shards_of_an_older_build_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_tiny_dataset(root, n=10, shard_size=6)
    write_shard(root, "test_resnet", "train", 0, 5, tiny_debug_samples(1, MODEL), class_names=TINY_CLASSES)
    with pytest.raises(ValidationError, match="train-00000-of-00005.parquet is not part of this build"):
        validate_dataset_folder(root)


def test_table_config_never_stores_pixels(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="holds image data"):
        write_table_config(tmp_path, "failures", "validation", [{"image_id": "a", "pixels": b"\x89PNG"}])
    with pytest.raises(ValidationError, match="not a class index"):
        write_table_config(tmp_path, "failures", "validation", [{"image_id": "a", "label": 7}],
                           class_names=TINY_CLASSES)


def test_invalid_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="invalid config name"):
        write_shard(tmp_path, "timm/resnet50.a1", "train", 0, 1, [], class_names=TINY_CLASSES)
    with pytest.raises(ValidationError, match="invalid split name"):
        write_shard(tmp_path, "m", "start", 0, 1, [], class_names=TINY_CLASSES)

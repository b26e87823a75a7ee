"""A dataset written the way `failmode build` writes one, read by the real clients: timm's `wds/` and `hfds/`
readers with loader workers, `webdataset.WebLoader`, `datasets.load_dataset` (plain and streaming), and the card's
own recipes run as written."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from failmode.dataset import Manifest
from failmode.dataset.card import parse_card_header, render_card
from failmode.dataset.summary import collect_configs
from failmode.generation.plan import (
    MIN_SHARD_SAMPLES,
    ClassModes,
    GenerationSettings,
    ModeSet,
    build_plan,
    shard_bounds,
    shard_count,
)
from failmode.io import read_json
from failmode.testing import write_debug_dataset

CONFIGS = ("tiny-model", "random-context", "baseline")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_debug_dataset(tmp_path_factory.mktemp("clients") / "tiny-debug")


def pixel(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").getpixel((0, 0))


def written_samples(root: Path, config: str) -> Counter[tuple[int, tuple[int, int, int]]]:
    """(label, colour) of every sample of a config, from its parquet shards (each image is one seed's colour)."""
    rows = [r for f in sorted((root / "data" / config).glob("*.parquet"))
            for r in pq.read_table(f, columns=["image", "label"]).to_pylist()]
    return Counter((r["label"], pixel(r["image"]["bytes"])) for r in rows)


def test_plan_interleaves_classes_and_contexts_and_cuts_equal_shards():
    # unequal classes: 3 contexts x 10 for class 0, 1 context x 10 for class 1, 2 x 10 for class 2
    ms = ModeSet("m", "model", "m", "background", (
        ClassModes(0, "cat", "cat", ("a", "b", "c")), ClassModes(1, "dog", "dog", ("a",)),
        ClassModes(2, "ship", "ship", ("a", "b"))))
    settings = GenerationSettings(images_per_mode=10, k=3, shard_size=1000)
    rows = build_plan([ms], settings, generator_id="g")
    n, share = len(rows), {0: 30 / 60, 1: 10 / 60, 2: 20 / 60}
    assert n == 60 and rows[0].num_shards == 2  # 60 images: m = 2 (>= 2 x 16 images)
    for end in range(1, n + 1):  # every prefix holds each class in proportion, within one image
        counts = Counter(r.label for r in rows[:end])
        assert all(abs(counts[c] - share[c] * end) <= 1 for c in share), end
    cat = [r.context for r in rows if r.label == 0]
    for end in range(1, 31):  # and each class's contexts in proportion
        assert all(abs(cat[:end].count(c) - end / 3) <= 1 for c in "abc")
    assert [sum(1 for r in rows if r.shard_index == i) for i in range(2)] == [30, 30]
    assert [r.position for r in rows if r.shard_index == 1] == list(range(30))
    # seeded: the same plan twice, another base seed another order; an image's seed never depends on the order
    assert build_plan([ms], settings, generator_id="g") == rows
    other = build_plan([ms], GenerationSettings(images_per_mode=10, k=3, base_seed=1), generator_id="g")
    assert [r.label for r in other] != [r.label for r in rows]
    alone = build_plan([ModeSet("m", "model", "m", "background", ms.classes[:1])], settings, generator_id="g")
    by_key = {(r.label, r.context, r.replica): r.seed for r in rows}
    assert all(by_key[(r.label, r.context, r.replica)] == r.seed for r in alone)


def test_shard_count_rule(caplog):
    empty = ModeSet("none", "model", "none", "background", ())
    assert build_plan([empty], GenerationSettings(), generator_id="g") == []  # left out, with a warning
    assert "config none has no image to render" in caplog.text
    assert [shard_count(n, 1000) for n in (1, 31, 32, 63, 64, 127, 128, 8000, 8001)] == [1, 1, 2, 2, 4, 4, 8, 8, 16]
    assert shard_count(600, 50) == 16 and shard_count(100, 10) == 12  # the shard_size cap, then the multiple
    for n in range(1, 400):
        s = shard_count(n, 37)
        sizes = [len(b) for b in shard_bounds(n, s)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and max(sizes) <= 37
        assert s % 8 == 0 if n >= 8 * MIN_SHARD_SAMPLES else True


def test_every_config_is_interleaved_in_equal_shards(written):
    manifest = read_json(written / "failmode.json")
    for config in CONFIGS:
        info = read_json(written / "wds" / config / "_info.json")["splits"]["train"]
        assert manifest["configs"][config]["splits"]["train"] == len(info["filenames"]) == 8
        assert max(info["shard_lengths"]) - min(info["shard_lengths"]) <= 1
        first = pq.read_table(written / "data" / config / info["filenames"][0].replace(".tar", ".parquet"))
        assert len(set(first.column("label").to_pylist())) == 10  # the first shard alone holds every class


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_timm_wds_reader_in_training_mode_reads_every_sample_once(written, workers):
    import timm.data
    import torch

    for config in CONFIGS:
        ds = timm.data.create_dataset("wds/tiny-debug", root=str(written / "wds" / config), split="train",
                                      is_training=True, batch_size=1, seed=3)
        ds.transform = lambda im: im.getpixel((0, 0))
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        seen = Counter((int(target), tuple(colour)) for colour, target in loader)
        assert seen == written_samples(written, config), (config, workers)


def test_webdataset_webloader_with_two_workers_reads_every_config(written):
    import webdataset as wds

    for config in CONFIGS:
        urls = sorted(str(p) for p in (written / "wds" / config).glob("train-*.tar"))
        ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls")
        seen = Counter((int(cls), im.getpixel((0, 0))) for im, cls in wds.WebLoader(ds, batch_size=None,
                                                                                    num_workers=2))
        assert seen == written_samples(written, config), config


def test_datasets_plain_and_streaming_match_the_card(written):
    import datasets

    header = parse_card_header((written / "README.md").read_text())
    infos = {i["config_name"]: i for i in header["dataset_info"]}
    for config in CONFIGS:
        ds = datasets.load_dataset(str(written), config, split="train")
        expected = written_samples(written, config)
        assert Counter(ds["label"]) == Counter(label for label, _ in expected.elements())
        assert ds.features["label"].names[:2] == ["airplane", "automobile"]
        card_split = infos[config]["splits"][0]
        assert ds.info.splits["train"].num_bytes == card_split["num_bytes"]  # dataset_info as datasets computes it
        assert card_split["num_examples"] == ds.num_rows == sum(expected.values())
        stream = datasets.load_dataset(str(written), config, split="train", streaming=True)
        assert Counter(r["label"] for r in stream) == Counter(ds["label"])
    assert datasets.load_dataset(str(written), split="train").num_rows == 160  # the default config


def test_timm_hfds_reader_reads_a_config_folder(written):
    import timm.data

    for config in CONFIGS:
        ds = timm.data.create_dataset(f"hfds/{written}/data/{config}", root=None, split="train")
        assert len(ds) == 160
        assert Counter(int(ds[i][1]) for i in range(len(ds))) == Counter(
            label for label, _ in written_samples(written, config).elements())


def test_the_cards_recipes_run_as_written(written, monkeypatch, capsys):
    text = (written / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3 and "ORG/" not in text
    monkeypatch.chdir(written)  # the card of a dataset without a repo id reads its own folder
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tiny-model 160 " in out and "baseline 160 " in out and "random-context 160 " in out
    assert "160 samples" in out and "a photo of a" in out
    for flag in ("--split train", "--train-split train --val-split train", f"--data-dir $LOCAL/wds/{CONFIGS[0]}",
                 f"--dataset hfds/$LOCAL/data/{CONFIGS[0]}"):
        assert flag in text


def test_card_and_manifest_agree(written):
    from huggingface_hub import DatasetCard

    manifest = Manifest.load(written)
    data = DatasetCard.load(written / "README.md").data  # huggingface_hub's own metadata parsing
    assert manifest.default_config == "tiny-model"
    assert [c["config_name"] for c in data.configs if c.get("default")] == [manifest.default_config]
    assert data.tags == manifest.tags and "tiny" in manifest.tags and "stable-diffusion" not in manifest.tags
    assert data.task_ids == ["multi-class-image-classification"]
    assert data.annotations_creators == ["machine-generated"] and data.source_datasets == ["uoft-cs/cifar10"]
    text = (written / "README.md").read_text()
    for name, spec in manifest.configs.items():
        assert spec.description and spec.description.replace("|", "\\|") in text, name
    # a local source folder is not a Hub id: no source_datasets; a repo id puts the Hub in every recipe
    summaries = collect_configs(written, manifest)
    local = render_card(Manifest(**{**manifest.__dict__, "source_dataset": ""}), summaries)
    assert "source_datasets" not in parse_card_header(local)
    hub = render_card(Manifest(**{**manifest.__dict__, "repo_id": "failmode/tiny-debug"}), summaries)
    assert 'snapshot_download("failmode/tiny-debug", repo_type="dataset", revision="v1.0.0")' in hub
    assert 'load_dataset("failmode/tiny-debug", config, split="train", revision="v1.0.0")' in hub
    for block in re.findall(r"```python\n(.*?)```", hub, re.S):
        compile(block, "README.md", "exec")

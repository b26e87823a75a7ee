"""Dataset card, manifest and folder validation."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from failmode.dataset import Manifest, ValidationError, config_slug, finalize, layout, validate_dataset_folder
from failmode.dataset.card import parse_card_header
from failmode.io import sha256_bytes
from failmode.testing import TINY_CLASSES, build_tiny_dataset, tiny_manifest


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("card") / "tiny-debug"
    build_tiny_dataset(root, n=10, shard_size=6)
    return root


def test_card_header_is_hub_metadata(tiny_ds: Path) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(tiny_ds / "README.md")  # a local path: parsed offline, no Hub call
    data = card.data.to_dict()
    assert data["license"] == "creativeml-openrail-m"
    assert data["task_categories"] == ["image-classification"]
    assert {"synthetic", "failmode"} <= set(data["tags"])
    assert data["version"] == "1.0.0"
    configs = {c["config_name"]: c for c in data["configs"]}
    assert list(configs) == ["test_resnet", "baseline", "failures-test_resnet"]
    assert configs["test_resnet"]["default"] is True
    assert configs["baseline"]["data_files"] == [{"split": "train", "path": "data/baseline/train-*.parquet"}]
    info = {i["config_name"]: i for i in data["dataset_info"]}
    label = next(f for f in info["test_resnet"]["features"] if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {str(i): n for i, n in enumerate(TINY_CLASSES)}
    assert info["test_resnet"]["splits"][0]["num_examples"] == 10


def test_card_body_explains_and_shows_the_data(tiny_ds: Path) -> None:
    text = (tiny_ds / "README.md").read_text()
    body = text.split("\n---\n", 1)[1]
    assert "**Version 1.0.0** (Hub tag `v1.0.0`)" in body
    assert "List uncommon contexts for {class}." in body  # vocabulary prompt
    assert "failmode-tiny-clip" in body and "tiny-sd" in body  # attribution model, generator
    assert "seed = 1000 * base + index" in body
    assert "| 0 | tench | 3 | 1 |" in body  # per-class counts: test_resnet/train, baseline/train
    assert 'load_dataset("failmode/tiny-debug", config, split="train", revision="v1.0.0")' in body
    assert 'for config in ["test_resnet", "baseline"]:' in body
    assert "wds/test_resnet/train-{00000..00001}-of-00002.tar" in body
    assert 'create_dataset("wds/tiny-debug", root=f"{local}/wds/test_resnet", split="train"' in body
    assert "CreativeML OpenRAIL-M" in body and "@software{failmode" in body
    assert "![examples of test_resnet](assets/grid_test_resnet.png)" in body
    with Image.open(tiny_ds / "assets" / "grid_test_resnet.png") as grid:
        assert grid.format == "PNG" and grid.size == (4 * 128, 3 * 128)  # 10 samples -> 4 columns, 3 rows
    assert not (tiny_ds / "assets" / "grid_failures-test_resnet.png").exists()


def test_manifest_pins_the_build(tiny_ds: Path) -> None:
    m = Manifest.load(tiny_ds)
    assert m.version == "1.0.0" and m.tag == "v1.0.0"
    assert m.plan_sha256 == "f" * 64 and m.generator["sha256"] == "0123abcd"
    assert {"torch", "diffusers", "pillow", "pyarrow", "python"} <= set(m.environment)
    assert "data/test_resnet/train-00001-of-00002.parquet" in m.files
    assert "wds/test_resnet/train-00000-of-00002.tar" in m.files and "wds/test_resnet/_info.json" in m.files
    assert m.configs["failures-test_resnet"].kind == "table"
    assert m.configs["test_resnet"].num_samples == {"train": 10}
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "1.0"}, "is not semver"),
    ({"class_names": ["a", "a"]}, "distinct names"),
    ({"repo_id": "no-slash"}, "invalid repo_id"),
    ({"default_config": "nope"}, "default_config 'nope' is not a config"),
])
def test_manifest_rejects_bad_values(change: dict, message: str) -> None:
    data = {**tiny_manifest().to_json(), **change}
    with pytest.raises(ValidationError, match=message):
        Manifest.from_json(data)


def test_manifest_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="unknown key"):
        Manifest.from_json({**tiny_manifest().to_json(), "colour": "red"})


def test_validate_accepts_a_finished_folder(tiny_ds: Path) -> None:
    assert validate_dataset_folder(tiny_ds, check_hashes=True).name == "tiny-debug"


def test_validate_finds_tampering_missing_files_and_card_drift(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_tiny_dataset(root)
    tar = layout.tar_path(root, "baseline", "train", 0, 1)
    tar.write_bytes(tar.read_bytes()[:-1] + b"x")
    validate_dataset_folder(root)  # hashes are only checked on request
    with pytest.raises(ValidationError, match="baseline/train-00000-of-00001.tar: content differs"):
        validate_dataset_folder(root, check_hashes=True)

    layout.parquet_path(root, "test_resnet", "train", 1, 2).unlink()
    with pytest.raises(ValidationError, match="train-00001-of-00002.parquet is missing"):
        validate_dataset_folder(root)

    build_tiny_dataset(root)
    card = root / "README.md"
    card.write_text(card.read_text().replace("version: 1.0.0", "version: 1.0.1", 1))
    with pytest.raises(ValidationError, match="version '1.0.1' differs"):
        validate_dataset_folder(root)
    card.write_text("no header")
    with pytest.raises(ValidationError, match="no YAML header"):
        validate_dataset_folder(root)


def test_validate_needs_finalize_after_the_last_shard(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_tiny_dataset(root)
    m = Manifest.load(root)
    m.configs["baseline"].num_samples = {"train": 99}
    m.save(root)
    with pytest.raises(ValidationError, match="was finalize run"):
        validate_dataset_folder(root)


def test_unknown_license_is_refused(tmp_path: Path) -> None:
    from failmode.dataset import finalize
    from failmode.dataset.writer import write_shard
    from failmode.testing import tiny_debug_samples

    manifest = dataclasses.replace(tiny_manifest(shards=1), license="free-for-all")
    for config, model in (("test_resnet", "m"), ("baseline", "baseline")):
        write_shard(tmp_path, config, "train", 0, 1, tiny_debug_samples(2, model), class_names=TINY_CLASSES)
    with pytest.raises(ValidationError, match="unknown license 'free-for-all'"):
        finalize(tmp_path, manifest)


def test_parse_card_header_errors() -> None:
    with pytest.raises(ValidationError, match="does not parse"):
        parse_card_header("---\nkey: [unclosed\n---\nbody")
    with pytest.raises(ValidationError, match="not closed"):
        parse_card_header("---\nkey: 1\n")


def test_config_slug() -> None:
    assert config_slug("timm/vit_base_patch16_224.augreg_in21k") == "timm-vit_base_patch16_224-augreg_in21k"
    assert config_slug("collective:resnet") == "collective-resnet"
    assert layout.check_config_name(config_slug("baseline")) == "baseline"


def test_validate_checks_the_plan_hash(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_tiny_dataset(root, with_table=False)
    (root / layout.PLAN_PATH).parent.mkdir()
    (root / layout.PLAN_PATH).write_bytes(b"the plan")
    finalize(root, dataclasses.replace(Manifest.load(root), plan_sha256=sha256_bytes(b"the plan")))
    assert validate_dataset_folder(root, check_hashes=True).files[layout.PLAN_PATH] == sha256_bytes(b"the plan")
    (root / layout.PLAN_PATH).write_bytes(b"another plan")
    with pytest.raises(ValidationError, match="plan.parquet: content differs from the manifest's plan_sha256"):
        validate_dataset_folder(root, check_hashes=True)


def test_validate_refuses_a_card_whose_counts_differ_and_an_empty_config(tmp_path: Path) -> None:
    from failmode.dataset.validate import check_config_files

    root = tmp_path / "ds"
    build_tiny_dataset(root)
    card = root / "README.md"
    text = card.read_text()
    card.write_text(text.replace("num_examples: 10", "num_examples: 11", 1))
    with pytest.raises(ValidationError, match="config 'test_resnet' counts {'train': 11} differ"):
        validate_dataset_folder(root)
    card.write_text(text)
    m = validate_dataset_folder(root)
    m.configs["baseline"].num_samples = {"train": 0}
    with pytest.raises(ValidationError, match="config 'baseline' holds no images"):
        check_config_files(root, m, "baseline")
    with pytest.raises(ValidationError, match="no config 'nope'"):
        check_config_files(root, m, "nope")


def test_user_text_in_the_card_body_is_escaped_for_markdown_and_html(tmp_path: Path) -> None:
    """Class names with table pipes, markdown and HTML stay literal text in the card body (one cell each, no tag)."""
    from failmode.dataset.card import md_text
    from failmode.testing import write_debug_dataset

    names = ["a|b", "<img src=x onerror=alert(1)>", "*bold* [link](http://x)", "plain"]
    root = write_debug_dataset(tmp_path / "ds", class_names=names, images_per_mode=1, baseline_images_per_class=1)
    text = (root / "README.md").read_text()
    header = parse_card_header(text)
    info = next(i for i in header["dataset_info"] if i["config_name"] == "tiny-model")
    label = next(f for f in info["features"] if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {str(i): n for i, n in enumerate(names)}  # the header keeps them
    body = text.split("\n---\n", 1)[1]
    assert "<img" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "[link](http://x)" not in body and r"\*bold\* \[link\](http://x)" in body
    rows = [line for line in body.splitlines() if line.startswith("| 0 | ")]
    assert rows == [r"| 0 | a\|b | 2 | 1 | 2 |"]  # the pipe escaped: still five cells (2 modes x 1 image)
    assert md_text("x\n| y") == r"x \| y"
    validate_dataset_folder(root)


def test_a_card_with_a_repo_has_local_and_hub_forms_and_its_local_blocks_run(tiny_ds: Path) -> None:
    """With a repo id every recipe is given twice: as it runs in the folder (run here) and from the Hub at the tag."""
    from failmode.testing import card_python_blocks, check_card_states_the_manifest

    blocks = card_python_blocks((tiny_ds / "README.md").read_text())
    hub = [b for b in blocks if "snapshot_download" in b or '"failmode/tiny-debug"' in b]
    assert len(blocks) == 6 and len(hub) == 3
    assert all('revision="v1.0.0"' in b for b in hub)
    check_card_states_the_manifest(tiny_ds)


def test_the_cards_streaming_recipe_exits_cleanly_every_time(tiny_ds: Path) -> None:
    """A half-read `datasets` stream of parquet can abort the interpreter at exit ("terminate called without an active
    exception", apache/arrow#45214): with the old recipe (a for-loop with break) half of the runs aborted. The card's
    recipe joins the reader threads before exit; run it several times, as a user would."""
    import subprocess
    import sys

    from failmode.testing import card_python_blocks

    code = next(b for b in card_python_blocks((tiny_ds / "README.md").read_text())
                if "streaming=True" in b and "snapshot_download" not in b and '"failmode/tiny-debug"' not in b)
    assert "gc.collect()" in code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    codes = [subprocess.run([sys.executable, "-c", code], cwd=tiny_ds, env=env, capture_output=True,
                            timeout=300).returncode for _ in range(4)]
    assert codes == [0, 0, 0, 0]

"""Slices and generate-then-discover end to end on a small fashion-scenes world, checked against ground truth.

One small world (40-60 images per class and split, 48 px) is built once for the module; both methods must name
contexts that are uncommon for their class in training (the planted spurious contexts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

PER_CLASS = {"train": 40, "debug": 60, "test": 40}
SIZE = 48
TOP = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ws(cache):
    from failmode.discovery.world import setup_world

    return setup_world("concentrated", 0, per_class=PER_CLASS, image_size=SIZE, cache_dir=cache, n_exemplars=4)


def train_fraction(ws, label: int, context: str) -> float:
    """Fraction of class `label`'s training images shown in `context` (ground truth)."""
    train = ws.world.splits["train"]
    ctx = np.array(train.contexts())
    return float((ctx[train.labels == label] == context).mean())


def test_slices_recover_planted_contexts(ws, tmp_path):
    from failmode.discovery.slicing import Calibration, run_slices, write_slice_report
    from failmode.slices import SliceParams

    w = ws.world
    report = run_slices(ws.attributor, ws.classifier, [ws.vocabulary], find=(w.splits["debug"], None),
                        check=(w.splits["test"], None), params=SliceParams(3, 5, 0.3, 0.1),
                        calibration=Calibration("robust-z", {"z": 3.0}), min_check_size=3)
    assert len(report.slices) >= TOP
    debug = w.splits["debug"]
    truth = np.array(debug.contexts())
    for s in report.slices[:TOP]:
        for tag in s.tags:
            assert train_fraction(ws, s.label, tag) < 0.05, (s.description, "is common in training")
            # the slice's context is one the debug split really shows this class in (planted uncommon context)
            assert tag in [w.scenes[i].context for i in w.uncommon_scenes[s.label]], s.description
        assert s.accuracy <= s.class_accuracy - 0.3
    # ground truth agrees with the tags: most images of a top single-tag slice are really in that context
    top = report.slices[0]
    members = (debug.labels == top.label) & np.isin(truth, top.tags)
    assert members.sum() >= top.size * 0.5
    g = report.generalisation
    assert g["n_compared"] >= 2 and g["mean_check_drop"] > 0.2
    paths = write_slice_report(tmp_path, report)
    table = pq.read_table(paths["parquet"]).to_pylist()
    assert [r["rank"] for r in table] == list(range(1, len(report.slices) + 1))
    assert table[0]["description"] == report.slices[0].description
    doc = json.loads(paths["json"].read_text())
    assert doc["format"] == "failmode-slices/1" and doc["params"]["min_size"] == 5
    assert "## Generalisation" in paths["report"].read_text()


def test_discover_confirms_planted_contexts(ws, tmp_path):
    from failmode.discovery.discover import DiscoverParams, discover, write_bug_report

    names = ws.world.class_names
    labels = [names.index(c) for c in ("trouser", "sneaker")]
    params = DiscoverParams(images_per_prompt=3, confirm_images=16, max_clusters=4, min_cluster_size=3, size=SIZE)
    report = discover(ws.generator, ws.classifier, ws.attributor, [ws.vocabulary], names, labels=labels,
                      params=params)
    confirmed = report.confirmed
    assert len(confirmed) >= TOP
    for b in confirmed[:TOP]:
        assert train_fraction(ws, b.label, b.phrases[0]) < 0.05, b.prompt
        assert b.failure_low > b.base_high and b.p_value < 0.01
        assert b.confirm_failures <= b.confirm_n == 16
    assert all(c["base_n"] == 16 for c in report.classes)  # plain prompt base rate on fresh images
    paths = write_bug_report(tmp_path, report)
    doc = json.loads(paths["json"].read_text())
    assert doc["meta"]["n_confirmed"] == len(confirmed)
    grid = tmp_path / confirmed[0].grid
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.width >= 64
    assert confirmed[0].prompt in paths["report"].read_text()


def test_commands_end_to_end(ws, cache, tmp_path):
    """Both commands through their argparse front ends, with a debug config from the top slices."""
    from failmode.commands import discover as discover_cmd
    from failmode.commands import slices as slices_cmd
    from failmode.dataset import validate_dataset_folder

    world = ["--world", "concentrated", "--per-class", "train=40,debug=60,test=40", "--image-size", str(SIZE),
             "--exemplars", "4", "--cache-dir", str(cache)]
    for mod, extra in ((slices_cmd, ["-m", "5", "-d", "0.3", "--generate-top", "2", "--images-per-slice", "3"]),
                       (discover_cmd, ["--classes", "trouser", "--images-per-prompt", "2", "--confirm-images", "8",
                                       "--debug-images", "2"])):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        out = tmp_path / mod.__name__.rsplit(".", 1)[-1]
        assert mod.run(p.parse_args([*world, *extra, "--out", str(out)])) == 0
        manifest = validate_dataset_folder(out / "debug-dataset")
        assert sum(manifest.configs[next(iter(manifest.configs))].num_samples.values()) > 0
        assert_regenerates(out / "debug-dataset", tmp_path / f"regen-{out.name}")
    assert (tmp_path / "slices" / "slices.parquet").exists() and (tmp_path / "discover" / "bugs.parquet").exists()


def assert_regenerates(root, regen, *extra):
    """Every shard of the folder's one config, through scripts/regenerate_shards.py as a user runs it: the plan
    (shard rule included) and the manifest give the same bytes again."""
    import runpy

    from failmode.generation.plan import read_plan_of, shard_count

    rows = read_plan_of(root)
    (config,) = {r.config for r in rows}
    assert rows[0].num_shards == shard_count(len(rows), 1000)
    shards = sorted({f"{config}/{r.split}-{r.shard_index:05d}-of-{r.num_shards:05d}" for r in rows})
    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "regenerate_shards.py"))
    assert script["main"]([str(root), *shards, "--out", str(regen), "--device", "cpu", *extra]) == 0


def test_slices_tag_precision_calibration_and_its_old_spellings(ws, cache, tmp_path, caplog):
    """--calibration tag-precision --tag-precision 0.7 calibrates each tag on the train split's known contexts; the
    old spellings (--calibration precision, the number given to --precision) give the same slices for one release,
    with one line each naming the new flag."""
    import logging

    from failmode.commands import slices as slices_cmd

    world = ["--world", "concentrated", "--per-class", "train=40,debug=60,test=40", "--image-size", str(SIZE),
             "--exemplars", "4", "--cache-dir", str(cache), "-m", "5", "-d", "0.2"]
    docs, lines = {}, {}
    for name, flags in (("new", ["--calibration", "tag-precision", "--tag-precision", "0.7"]),
                        ("old", ["--calibration", "precision", "--precision", "0.7"])):
        p = argparse.ArgumentParser()
        slices_cmd.add_arguments(p)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="failmode"):
            assert slices_cmd.run(p.parse_args([*world, *flags, "--out", str(tmp_path / name)])) == 0
        lines[name] = [r.getMessage() for r in caplog.records if " is renamed " in r.getMessage()]
        docs[name] = json.loads((tmp_path / name / "slices.json").read_text())
    meta = docs["new"]["meta"]
    assert meta["calibration"] == "tag-precision" and meta["calibration_options"] == {"tag_precision": 0.7}
    assert meta["calibration_source"] == ws.world.splits["train"].ident
    assert docs["old"] == docs["new"] and docs["new"]["slices"]
    assert lines == {"new": [], "old": [
        "--precision 0.7 is renamed --tag-precision 0.7 (--precision is the render dtype); the old name is accepted "
        "for one more release",
        "--calibration precision is renamed --calibration tag-precision; the old name is accepted for one more "
        "release"]}

"""Presets (builders/*.json), `build` orchestration over the other stages, and the `generate` command end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from failmode.dataset import Manifest, validate_dataset_folder
from failmode.errors import LoadError, UsageError, ValidationError
from failmode.generation import list_presets, load_preset, read_plan_of
from failmode.generation.build import Stages, build
from failmode.io import read_json, sha256_file
from failmode.vocab import load_vocabulary, shipped_path

from .test_generation import SolidGenerator

TARGETS = ["cifar10-bg-debug", "cifar10-color-debug", "cifar100-bg-debug", "cifar100-color-debug",
           "imagenet-bg-debug"]


def test_shipped_presets_describe_the_target_datasets():
    assert list_presets() == TARGETS
    p = load_preset("imagenet-bg-debug")
    g = p.generation
    assert (g.generator, g.scheduler, g.steps, g.size, g.images_per_mode, g.k) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "dpmsolver++", 25, 512, 5, 3)
    assert p.dataset["id"] == "imagenet-1k" and p.vocabulary == {"dataset": "imagenet-1k", "kind": "background"}
    assert set(p.families) == {"cnn", "vit"} and p.render["safety_checker"] is False
    assert load_preset("cifar100-color-debug").vocabulary == {"dataset": "cifar100", "kind": "color"}
    for name in TARGETS:  # every preset's vocabulary is shipped
        preset = load_preset(name)
        assert shipped_path(preset.vocabulary["dataset"], preset.vocabulary["kind"]).exists()


def test_bad_presets_fail_with_one_clear_line(tmp_path):
    with pytest.raises(UsageError, match="unknown preset 'nope'.*imagenet-bg-debug"):
        load_preset("nope")
    doc = read_json(load_preset("cifar10-bg-debug").source)
    for change, message in (({"colour": 1}, "unknown key"), ({"families": {"x": ["vit_huge"]}}, "not in models"),
                            ({"generation": {**doc["generation"], "stepz": 3}}, "unknown key.*stepz")):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({**doc, **change}))
        with pytest.raises(ValidationError, match=message):
            load_preset(path)


def fake_stages(calls: list) -> Stages:
    """Mining and attribution stand-ins: each model fails on cat and ship in its own contexts."""
    contexts = {"resnet18.a1_in1k": ["in a desert", "on snow"], "convnext_tiny.fb_in1k": ["on snow", "in a cave"],
                "vit_small_patch16_224.augreg_in21k_ft_in1k": ["in a city", "in a desert"]}

    def mine(model, dataset, *, out_dir, **kw):
        calls.append(("mine", model, dataset, kw["head"]))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "failures.parquet").write_text(model)
        return Path(out_dir) / "failures.parquet"

    def attribute(failures, *, vocabulary, kind, k, out_dir, **kw):
        model = Path(failures).read_text()
        calls.append(("attribute", model, vocabulary, kind, k))
        modes = [{"context": c, "count": 3 - i} for i, c in enumerate(contexts[model])]
        doc = {"format": "failmode-modes/1", "source_model": model, "dataset": "cifar10",
               "vocabulary": {"dataset": vocabulary, "kind": kind, "version": "1"}, "attributor": "fake", "k": k,
               "classes": [{"label": 3, "class_name": "cat", "prompt_name": "cat", "n_seed_failures": 3,
                            "modes": modes},
                           {"label": 8, "class_name": "ship", "prompt_name": "ship", "n_seed_failures": 1,
                            "modes": modes[:1]}]}
        (Path(out_dir) / "modes.json").write_text(json.dumps(doc))
        return Path(out_dir) / "modes.json"

    return Stages(mine=mine, attribute=attribute, vocabulary=load_vocabulary)


def test_build_runs_mine_attribute_generate_finalize_and_resumes(tmp_path):
    preset = load_preset("cifar10-bg-debug")
    gen_settings = dataclasses.replace(preset.generation, images_per_mode=1, k=2, size=32, shard_size=8)
    preset = dataclasses.replace(preset, generation=gen_settings, baseline={"enabled": True, "images_per_class": 1},
                                 attribution={**preset.attribution, "k": 2})
    calls: list = []
    out = tmp_path / "ds"
    assert build(preset, out, stages=fake_stages(calls), generator=SolidGenerator(), quality=None)
    assert [c[:2] for c in calls if c[0] == "mine"] == [("mine", m) for m in preset.model_ids]
    assert all(c[2:] == ("cifar10", "train") for c in calls if c[0] == "mine")
    assert {c[2:] for c in calls if c[0] == "attribute"} == {("cifar10", "background", 2)}
    manifest = validate_dataset_folder(out)
    assert {n: s.kind for n, s in manifest.configs.items()} == {
        "resnet18-a1_in1k": "model", "convnext_tiny-fb_in1k": "model",
        "vit_small_patch16_224-augreg_in21k_ft_in1k": "model", "collective-cnn": "collective",
        "collective-vit": "collective", "baseline": "baseline"}
    assert manifest.configs["baseline"].num_samples == {"train": 10}
    assert manifest.generation["safety_checker"] is False and manifest.generation["quality"]["unfilled"] == 0
    assert manifest.plan_sha256 == sha256_file(out / "generation/plan.parquet")
    n = manifest.generation["quality"]["planned"]
    assert (f"Quality filter: off; {n} of {n} planned images written, 0 dropped by the filter"
            in (out / "README.md").read_text())
    assert "Safety checker: off (debug data" in (out / "README.md").read_text()
    rows = read_plan_of(out)
    cnn = [r for r in rows if r.config == "collective-cnn" and r.label == 3]
    assert [r.context for r in cnn] == ["on snow", "in a desert"]  # counts summed over resnet18 and convnext
    assert rows[0].prompt.startswith("a photo of a cat ")
    table = pq.read_table(out / "data/baseline/train-00000-of-00002.parquet", columns=["prompt", "context_kind"])
    assert table.column("prompt").to_pylist()[0] == "a photo of an airplane"
    # Rerun: nothing is mined, attributed or rendered again.
    calls.clear()
    gen = SolidGenerator()
    assert build(preset, out, stages=fake_stages(calls), generator=gen, quality=None)
    assert calls == [] and gen.calls == []


def generate_args(*argv: str) -> argparse.Namespace:
    from failmode.commands import generate

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_generate_command_renders_a_finalized_dataset(tiny_pipeline_dir, tmp_path):
    from failmode.commands import generate

    modes = {"format": "failmode-modes/1", "source_model": "resnet50", "dataset": "cifar10",
             "vocabulary": {"dataset": "cifar10", "kind": "background", "version": "1"}, "attributor": "x", "k": 1,
             "classes": [{"label": 3, "class_name": "cat", "prompt_name": "cat", "n_seed_failures": 1,
                          "modes": [{"context": "in a desert", "count": 1}]}]}
    (tmp_path / "modes.json").write_text(json.dumps(modes))
    common = ["--generator", str(tiny_pipeline_dir), "--steps", "2", "--size", "32", "--k", "1",
              "--images-per-mode", "2", "--baseline", "--baseline-images", "1", "--precision", "fp32",
              "--device", "cpu", "--batch-size", "4", "--shard-size", "8", "--version", "1.0.0"]
    out = tmp_path / "ds"
    args = generate_args("--modes", str(tmp_path / "modes.json"), "--out", str(out), *common)
    assert generate.run(args) == 0
    manifest = Manifest.load(out)
    assert sorted(manifest.configs) == ["baseline", "resnet50"] and manifest.generator["id"] == str(tiny_pipeline_dir)
    assert manifest.generation["scheduler"] == "dpmsolver++" and manifest.generation["safety_checker"] is False
    t = pq.read_table(out / "data/resnet50/train-00000-of-00001.parquet").to_pylist()
    assert [r["prompt"] for r in t] == ["a photo of a cat in a desert"] * 2 and t[0]["seed"] != t[1]["seed"]
    bad = generate_args("--baseline", "--vocab", "cifar10", "--out", str(tmp_path / "x"), "--generator",
                        str(tmp_path / "missing"), "--device", "cpu", "--precision", "fp32")
    with pytest.raises(LoadError, match="does not exist"):
        generate.run(bad)
    # The published folder regenerates shard by shard, bit for bit (scripts/regenerate_shards.py).
    from failmode.generation.regenerate import regenerate_shards

    again = regenerate_shards(out, ["resnet50/train-00000"], tmp_path / "regen", device="cpu")
    assert again == {"resnet50/train-00000-of-00001": True}
    with pytest.raises(UsageError, match="no shard"):
        regenerate_shards(out, ["resnet50/test-00009"], tmp_path / "regen", device="cpu")


def test_generate_command_refuses_empty_or_unnamed_work(tmp_path):
    from failmode.commands import generate
    from failmode.errors import UsageError

    with pytest.raises(UsageError, match="nothing to generate"):
        generate.run(generate_args("--out", str(tmp_path / "ds")))
    with pytest.raises(UsageError, match="--vocab is required with --baseline alone"):
        generate.run(generate_args("--baseline", "--out", str(tmp_path / "ds"), "--plan-only"))
    assert not (tmp_path / "ds").exists()

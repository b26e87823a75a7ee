"""Presets (builders/*.json): typed sections and one-line errors; what `build` checks before any model loads; the
`generate` command end to end. The whole build -> evaluate chain is in test_chain.py."""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq
import pytest

from failmode.data.splits import resolve_recipe
from failmode.dataset import Manifest
from failmode.errors import LoadError, UsageError, ValidationError
from failmode.generation import list_presets, load_preset
from failmode.io import read_json
from failmode.vocab import load_vocabulary, shipped_path

TARGETS = ["cifar10-bg-debug", "cifar10-color-debug", "cifar100-bg-debug", "cifar100-color-debug",
           "fashion-scenes-debug", "imagenet-bg-debug"]


def test_shipped_presets_describe_the_target_datasets():
    assert list_presets() == TARGETS
    p = load_preset("imagenet-bg-debug")
    g = p.generation
    assert (g.generator, g.scheduler, g.steps, g.size, g.images_per_mode, g.k) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "dpmsolver++", 25, 512, 5, 3)
    assert p.dataset.id == "imagenet-1k" and (p.vocabulary.dataset, p.vocabulary.kind) == ("imagenet-1k", "background")
    assert set(p.families) == {"cnn", "vit"} and p.render.safety_checker is False and p.render.precision == "auto"
    assert load_preset("cifar100-color-debug").vocabulary.kind == "color"
    for name in TARGETS:  # every preset's vocabulary is shipped; its recipe is written out, so a local copy works
        preset = load_preset(name)
        assert shipped_path(preset.vocabulary.dataset, preset.vocabulary.kind).exists()
        assert preset.dataset.train_per_class and preset.dataset.debug_per_class
        assert preset.baseline.enabled and preset.baseline.random_context  # both controls in every build
        if name.startswith("fashion"):  # the offline demo's world: its stand-ins chosen by name
            assert (preset.generation.generator, preset.attribution.attributor) == ("composite", "exemplar")
            continue
        assert resolve_recipe(preset.dataset.id) == {"train_per_class": preset.dataset.train_per_class,
                                                     "debug_per_class": preset.dataset.debug_per_class}
        cifar = name.startswith("cifar")
        assert all((m.head == "train") == cifar for m in preset.models)  # frozen ImageNet backbones, CIFAR heads


@pytest.mark.parametrize("section,change,message", [
    ("", {"colour": 1}, "unknown key 'colour'"),
    ("", {"families": {"x": ["vit_huge"]}}, "not in models"),
    ("", {"version": "v1"}, "not semver"),
    ("generation", {"stepz": 3}, "generation: unknown key 'stepz'"),
    ("generation", {"steps": "25"}, r"generation.steps must be integer, got '25'"),
    ("quality", {"min_clas_score": 0.3}, "quality: unknown key 'min_clas_score'"),
    ("attribution", {"clip_modle": "ViT-B-16"}, "attribution: unknown key 'clip_modle'"),
    ("dataset", {"train_per_class": "ten"}, "dataset.train_per_class must be number or null"),
    ("dataset", {"debug_per_class": 0}, r"dataset.debug_per_class: 0 is out of range \(> 0 and <= 1e\+06\)"),
    ("dataset", {"train_per_class": 1e308}, r"dataset.train_per_class: 1e\+308 is out of range"),
    ("generation", {"steps": 1000000000}, r"generation.steps: 1000000000 is out of range \(1..1000\)"),
    ("generation", {"size": 1000000000000}, r"generation.size: 1000000000000 is out of range \(8..4096\)"),
    ("generation", {"guidance": float("nan")}, r"generation.guidance: nan is out of range \(0..100\)"),
    ("generation", {"images_per_mode": 100000}, r"generation.images_per_mode: 100000 is out of range"),
    ("baseline", {"images_per_class": 1000000000}, r"baseline.images_per_class: 1000000000 is out of range"),
    ("render", {"batch_size": 100000}, r"render.batch_size: 100000 is out of range \(1..1024\)"),
    ("render", {"precision": "fp64"}, "render: precision must be auto"),
    ("render", {"scheduler": "ddim"}, "render: unknown key 'scheduler'"),
    ("baseline", {"enabled": "yes"}, "baseline.enabled must be true/false"),
])
def test_bad_presets_fail_with_one_line_naming_section_and_key(tmp_path, section, change, message):
    doc = read_json(load_preset("cifar10-bg-debug").source)
    if section:
        doc[section] = {**doc[section], **change}
    else:
        doc.update(change)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match=message) as e:
        load_preset(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_presets_and_overrides(tmp_path):
    with pytest.raises(UsageError, match="unknown preset 'nope'.*imagenet-bg-debug"):
        load_preset("nope")
    with pytest.raises(UsageError, match="does not exist"):
        load_preset(tmp_path / "missing.json")
    p = load_preset("cifar10-bg-debug").replace(dataset={"id": "./cifar10", "train_per_class": 5},
                                                render={"precision": "fp32"})
    assert (p.dataset.id, p.dataset.train_per_class, p.dataset.debug_per_class) == ("./cifar10", 5, 600)
    assert p.render.precision == "fp32" and p.record()["dataset"]["id"] == "./cifar10"
    with pytest.raises(ValidationError, match="precision"):
        load_preset("cifar10-bg-debug").replace(render={"precision": "fp8"})


def test_build_flags_override_the_presets_sections_and_none_means_random_clip_weights():
    import argparse

    from failmode.commands import build as build_command

    p = argparse.ArgumentParser()
    build_command.add_arguments(p)
    args = p.parse_args(["cifar10-bg-debug", "--clip-model", "RN50", "--clip-pretrained", "none",
                         "--precision", "fp32", "--dataset", "./cifar10"])
    over = build_command.overrides(args)
    assert over["attribution"] == over["quality"] == {"clip_model": "RN50", "pretrained": None}
    preset = load_preset("cifar10-bg-debug").replace(**over)
    assert preset.attribution.pretrained is None and preset.quality.pretrained is None
    assert (preset.attribution.clip_model, preset.render.precision, preset.dataset.id) == ("RN50", "fp32", "./cifar10")
    assert "pretrained" not in build_command.overrides(p.parse_args(["cifar10-bg-debug"])).get("attribution", {})


def test_build_checks_recipe_and_vocabulary_before_any_model(tmp_path, capsys):
    """A local dataset without a recipe, or whose classes are not the vocabulary's: one line, exit 1, nothing written."""
    from failmode.cli import main
    from failmode.testing import write_local_dataset

    data = write_local_dataset(tmp_path / "d", "cifar10", {"train": 1, "test": 2},
                               class_names=[f"k{i}" for i in range(10)])
    doc = read_json(load_preset("cifar10-bg-debug").source)
    doc["dataset"] = {"id": str(data), "split": "test", "train_split": "train"}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "p.json"), "--out", str(out), "--device", "cpu"]) == 2
    assert "no split recipe" in capsys.readouterr().err
    argv = ["build", str(tmp_path / "p.json"), "--out", str(out), "--train-per-class", "1", "--debug-per-class", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "calls class 0 'airplane'" in err and "'k0'" in err
    assert not out.exists() and not (tmp_path / "out.work").exists()


def test_known_names_never_shadowed_by_folders(tmp_path, monkeypatch):
    """A folder called cifar10 in the working directory is neither the vocabulary nor the Hub dataset."""
    from failmode.data.sources import open_source
    from failmode.testing import write_local_dataset

    monkeypatch.chdir(tmp_path)
    write_local_dataset(tmp_path / "cifar10", "cifar10", {"train": 1, "test": 1}, class_names=list("abcdefghij"))
    assert load_vocabulary("cifar10", "background").dataset == "cifar10"
    assert open_source("./cifar10", "test").class_names == list("abcdefghij")
    with pytest.raises(LoadError, match="cifar10"):  # the Hub (unreachable here), not the folder
        open_source("cifar10", "test")


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
    for bad, message in ((["--version", "banana"], "not semver"), (["--task-index", "3", "--num-tasks", "2"],
                                                                      "invalid task slot")):
        with pytest.raises(UsageError, match=message):  # before the pipeline loads or anything renders
            generate.run(generate_args("--baseline", "--vocab", "cifar10", "--out", str(tmp_path / "ds"),
                                       "--generator", str(tmp_path / "no-pipeline"), *bad))
    with pytest.raises(UsageError, match="--vocab is required with --baseline alone"):
        generate.run(generate_args("--baseline", "--out", str(tmp_path / "ds"), "--plan-only"))
    assert not (tmp_path / "ds").exists()


def test_mining_and_attribution_run_with_the_builds_fixed_thread_count(tmp_path, monkeypatch):
    """The prepare stage mines and attributes with the preset's `render.threads`, whatever torch's count was before
    (a launcher such as torchrun sets OMP_NUM_THREADS=1): CPU predictions and CLIP scores depend on it."""
    import torch

    import failmode.mining.attribution as attribution
    import failmode.mining.mine as mine
    from failmode.generation.build import build
    from failmode.generation.run import RunOptions
    from failmode.testing import tiny_build_preset

    path = tiny_build_preset(tmp_path)
    doc = json.loads(path.read_text())
    doc.setdefault("render", {})["threads"] = 2
    path.write_text(json.dumps(doc))
    seen: list[tuple[str, int]] = []

    def counting(name, real):
        def call(*args, **kwargs):
            seen.append((name, torch.get_num_threads()))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(mine, "mine_failures", counting("mine", mine.mine_failures))
    monkeypatch.setattr(attribution, "attribute_failures", counting("attribute", attribution.attribute_failures))
    torch.set_num_threads(1)
    assert build(load_preset(str(path)), tmp_path / "out", work=tmp_path / "work", cache_dir=tmp_path / "cache",
                 options=RunOptions(device="cpu", stage="prepare")) is False
    assert seen == [("mine", 2), ("attribute", 2)]
    assert torch.get_num_threads() == 1  # restored after the stage


def _files(root) -> dict[str, str]:
    """sha256 of every file under the shard folders and generation/ of a dataset folder, by relative path."""
    from failmode.io import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for base in ("data", "wds", "generation")
            for p in sorted((root / base).rglob("*")) if p.is_file()}


def test_a_registered_generator_gives_the_same_shards_through_generate_and_build(tmp_path, caplog):
    """`failmode generate` resolves a preset's generator as `failmode build` does (one function): a registered name
    (the seed-colour generator of failmode.testing) is that backend in both, never a diffusers model looked up on the
    Hub, and the same settings give byte-identical shards (parquet, tar, markers), plan and generation stats. The old
    flag names still work and log one line naming the new one."""
    import logging

    from failmode.cli import main
    from failmode.testing import SEED_COLOR, SeedColorGenerator, tiny_build_preset

    path = tiny_build_preset(tmp_path)
    doc = json.loads(path.read_text())
    doc["generation"]["generator"] = SEED_COLOR
    doc["baseline"]["random_context"] = False  # a control `failmode generate` does not make
    path.write_text(json.dumps(doc))
    built, generated, work = tmp_path / "built", tmp_path / "generated", tmp_path / "work"
    assert main(["build", str(path), "--out", str(built), "--work", str(work), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--write", "overwrite", "--task-index", "0", "--num-tasks", "1"]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="failmode.commands"):
        assert main(["generate", "--preset", str(path), "--modes", str(work / "models/test_efficientnet/modes.json"),
                     "--collective", "tiny", "--baseline", "--baseline-images", "1", "--out", str(generated),
                     "--name", "cifar10-bg-debug", "--version", "1.0.0", "--device", "cpu",
                     "--mode", "overwrite", "--shard-index", "0", "--num-shards", "1"]) == 0
    renamed = [r.getMessage() for r in caplog.records if r.name == "failmode.commands"]
    assert renamed == [f"{old} is renamed {new}; the old name is accepted for one more release" for old, new in
                       (("--mode", "--write"), ("--shard-index", "--task-index"), ("--num-shards", "--num-tasks"))]
    for root in (built, generated):
        manifest = Manifest.load(root)
        assert sorted(manifest.configs) == ["baseline", "collective-tiny", "test_efficientnet"]
        assert (manifest.generator["id"], manifest.generator["ident"]) == (SEED_COLOR, SeedColorGenerator.ident)
        assert manifest.generator["resolved_revision"] == "registered"
    files = _files(built)
    assert any(f.endswith(".tar") for f in files) and any(f.endswith("_stats.json") for f in files)
    assert files == _files(generated)


def test_generate_sections_are_typed_once_from_the_preset_and_the_overrides():
    """`failmode generate` merges a preset's generation / render / quality sections with its flags once, into the typed
    objects `GenerateJob` holds (checked as a preset's sections are)."""
    import dataclasses

    from failmode.generation.build import generate_sections
    from failmode.generation.plan import GenerationSettings
    from failmode.generation.presets import QualitySection
    from failmode.options import RenderOptions

    preset = load_preset("fashion-scenes-debug")
    settings, render, quality, image_format = generate_sections("fashion-scenes-debug", {"steps": 3},
                                                                {"batch_size": 2}, {"reserve": 0})
    assert settings == dataclasses.replace(preset.generation, steps=3)
    assert render == dataclasses.replace(preset.render, batch_size=2)
    assert quality == dataclasses.replace(preset.quality, reserve=0) and image_format == "png"
    assert generate_sections(None, {}, {}, {}) == (GenerationSettings(), RenderOptions(), QualitySection(), "png")
    with pytest.raises(ValidationError, match="quality settings: unknown key 'colour'"):
        generate_sections(None, {}, {}, {"colour": 1})
    with pytest.raises(ValidationError, match=r"generation settings.steps: 0 is out of range"):
        generate_sections("fashion-scenes-debug", {"steps": 0}, {}, {})


@pytest.mark.parametrize("command,required", [("build", ["preset"]), ("generate", ["--out", "ds"])])
def test_old_flag_names_set_the_new_flags_and_log_their_new_name(command, required, caplog):
    import logging

    from failmode.cli import build_parser
    from failmode.commands._common import log_renamed

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    new = parser.parse_args([*required, "--write", "overwrite", "--task-index", "1", "--num-tasks", "2"])
    old = parser.parse_args([*required, "--mode", "overwrite", "--shard-index", "1", "--num-shards", "2"])
    assert (old.write, old.task, old.tasks) == (new.write, new.task, new.tasks) == ("overwrite", 1, 2)
    assert parser.parse_args(required).write == "incremental"
    with caplog.at_level(logging.WARNING, logger="failmode.commands"):
        log_renamed(new)
        assert caplog.records == []
        log_renamed(old)
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "--mode is renamed --write", "--shard-index is renamed --task-index", "--num-shards is renamed --num-tasks"]
    text = " ".join(parser.format_help().split())
    assert "[--mode {" not in text and "old name: --mode" in text  # hidden from the usage, named in --write's help

"""`failmode slices` on a mined run and `failmode discover` on a timm model + diffusers pipeline (tiny, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from failmode.cli import main
from failmode.errors import UsageError
from failmode.options import FeatureOptions, ModelSpec, SplitSpec

ARCH = "test_efficientnet"
TOY_CLASSES = ["red thing", "blue thing"]
SLICE_COLUMNS = {"label", "class_name", "tags", "order", "size", "correct", "accuracy", "class_accuracy", "drop",
                 "accuracy_low", "accuracy_high", "score", "description", "rank", "check_size", "check_accuracy",
                 "check_class_accuracy", "check_drop"}
TINY_CLIP = ["--clip-model", "failmode-tiny-clip", "--clip-pretrained", "none", "--device", "cpu"]


def vocabulary(path, dataset, classes, contexts, kind="background", prompt_names=None):
    """Write a vocabulary JSON: `classes` [(index, name)], the same `contexts` for each."""
    prompt_names = prompt_names or {}
    doc = {"format": "failmode-vocabulary/1", "dataset": dataset, "kind": kind, "version": "0.0.1",
           "template": "a photo of a {class_name} {context}",
           "provenance": {"generator": "test", "prompt": "", "date": "2026-11-22", "post_processing": ""},
           "classes": [{"index": i, "name": n, "prompt_name": prompt_names.get(n, n), "contexts": list(contexts)}
                       for i, n in classes]}
    path.write_text(json.dumps(doc))
    return str(path)


def toy_dataset():
    """64 images, 2 classes, each class made of 4 colour groups (so images of a class differ, as in real data)."""
    import datasets

    from failmode.testing import synthetic_images

    images, groups = synthetic_images(64, size=32, num_classes=8)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=TOY_CLASSES)})
    return datasets.Dataset.from_dict({"img": images, "label": [g % 2 for g in groups]}, features=features)


def coin_flip_head(net, data):
    """A linear head that splits the images in two along a random feature direction, whatever their label: each
    class is about half right, so its images can be grouped into slices less accurate than the class."""
    from failmode.data.sources import open_source
    from failmode.features import extract_features
    from failmode.models.classifier import eval_transform

    feats = extract_features(net, open_source(str(data)), model_key="head-probe", transform=eval_transform(net),
                             options=FeatureOptions(device="cpu"), with_logits=False).features
    w = np.random.default_rng(0).normal(size=feats.shape[1]).astype(np.float32)
    weight = np.stack([np.zeros_like(w), w])
    return {"weight": weight, "bias": np.array([0.0, -float(np.median(feats @ w))], np.float32)}


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A mined run of a tiny timm model + head file on 64 toy images (2 classes): 16 debug + 16 test per class."""
    import timm

    from failmode.mining import mine_failures
    root = tmp_path_factory.mktemp("mined")
    toy_dataset().save_to_disk(str(root / "data"))
    torch.manual_seed(0)
    net = timm.create_model(ARCH, pretrained=False)
    torch.save(net.state_dict(), root / "w.pth")
    np.savez(root / "head.npz", **coin_flip_head(net, root / "data"))
    mine_failures(ModelSpec(ARCH, str(root / "w.pth"), str(root / "head.npz")),
                  SplitSpec(str(root / "data"), train_per_class=1, debug_per_class=0.5), out_dir=root / "run",
                  extraction=FeatureOptions(device="cpu", batch_size=32, cache_dir=str(root / "cache")))
    vocabulary(root / "vocab.json", "toy", list(enumerate(TOY_CLASSES)),
               ["in a forest", "on a beach", "in the snow", "at night"], prompt_names={"blue thing": "azure object"})
    vocabulary(root / "colors.json", "toy", list(enumerate(TOY_CLASSES)), ["that is pink", "that is green"],
               kind="color")
    return root


def slices_argv(root, out, *extra):
    return ["slices", "--mined", str(root / "run"), "--vocabulary", str(root / "vocab.json"), *TINY_CLIP,
            "-s", "2", "-m", "3", "-d", "0.1", "--gain", "0", "--z", "0", "--min-check-size", "1",
            "--cache-dir", str(root / "cache"), "--out", str(out), *extra]


def test_slices_on_a_mined_run_through_the_cli(mined, tiny_pipeline_dir, tmp_path):
    from failmode.dataset import validate_dataset_folder

    torch.manual_seed(0)  # the random tiny CLIP draws from torch's generator
    out = tmp_path / "slices"
    render = ["--generate-top", "2", "--images-per-slice", "2", "--generator", str(tiny_pipeline_dir), "--size", "64",
              "--steps", "2", "--scheduler", "ddim", "--batch-size", "2"]
    assert main(slices_argv(mined, out, *render)) == 0
    splits = json.loads((mined / "run" / "splits.json").read_text())
    doc = json.loads((out / "slices.json").read_text())
    assert doc["format"] == "failmode-slices/1"
    assert set(doc) == {"format", "params", "meta", "generalisation", "thresholds", "slices"}
    meta = doc["meta"]
    # every debug image tagged, recorded predictions used; the head file makes the test split predictable
    assert meta["check_mode"] == "test"
    assert meta["n_find"] == meta["n_debug"] == meta["n_tagged_debug"] == len(splits["debug"]) == 32
    assert meta["n_check"] == len(splits["test"]) == 32
    assert meta["attributor"] == "clip:failmode-tiny-clip/random-init-seed0"
    assert set(doc["thresholds"]) == {"in a forest", "on a beach", "in the snow", "at night"}
    preds = np.load(mined / "run" / "predictions.npz")
    assert meta["find_accuracy"] == pytest.approx(float((preds["labels"] == preds["predictions"]).mean()))
    assert doc["generalisation"]["n_slices"] == len(doc["slices"]) > 0
    table = pq.read_table(out / "slices.parquet")
    assert set(table.column_names) == SLICE_COLUMNS and table.num_rows == len(doc["slices"])
    for s in doc["slices"]:
        assert s["size"] >= 3 and s["class_accuracy"] - s["accuracy"] >= 0.1 - 1e-9
        assert s["accuracy_low"] - 1e-12 <= s["accuracy"] <= s["accuracy_high"] + 1e-12
        assert set(s["tags"].split(" + ")) <= set(doc["thresholds"])
        prompt = {"red thing": "a red thing", "blue thing": "an azure object"}[s["class_name"]]  # vocabulary's name
        assert s["description"] == f"a photo of {prompt} {s['tags'].replace(' + ', ' ')}"
    assert doc["slices"][0]["description"] in (out / "report.md").read_text()
    manifest = validate_dataset_folder(out / "debug-dataset")  # the top 2 slices rendered, 2 images each
    assert manifest.class_names == TOY_CLASSES and manifest.configs["slices"].num_samples == {"train": 4}
    plan = pq.read_table(next((out / "debug-dataset" / "data" / "slices").glob("*.parquet"))).to_pylist()
    assert sorted({r["prompt"] for r in plan}) == sorted(s["description"] for s in doc["slices"][:2])
    # the config went through the generation plan: it regenerates bit for bit from its manifest (the local pipeline)
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "regenerate_shards.py"))
    assert (out / "debug-dataset" / "generation" / "plan.parquet").is_file()
    assert script["main"]([str(out / "debug-dataset"), "slices/train-00000", "--out", str(tmp_path / "regen"),
                           "--device", "cpu"]) == 0


def test_generate_top_on_a_mined_run_needs_a_generator(mined, tmp_path, capsys):
    assert main(slices_argv(mined, tmp_path / "o", "--generate-top", "1")) == 2
    assert "needs --generator" in capsys.readouterr().err


def test_slices_debug_halves_and_two_kinds(mined, tmp_path):
    import argparse

    from failmode.commands import slices as cmd
    from failmode.commands._discovery import cache_dir

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(slices_argv(mined, tmp_path / "o", "--check", "debug-half", "--seed", "3")[1:]
                        + ["--vocabulary", str(mined / "vocab.json"), str(mined / "colors.json")])
    assert cmd.run(args) == 0 and cache_dir(args) == mined / "cache"
    doc = json.loads((tmp_path / "o" / "slices.json").read_text())
    meta = doc["meta"]
    assert meta["check_mode"] == "debug-half" and meta["vocabulary_kinds"] == ["background", "color"]
    assert meta["n_find"] + meta["n_check"] == meta["n_tagged_debug"] == meta["n_debug"] == 32
    assert meta["n_find"] == meta["n_check"] == 16  # 8 + 8 per class
    assert {"that is pink", "that is green", "at night"} <= set(doc["thresholds"])


def test_auto_check_falls_back_to_debug_halves(mined):
    from dataclasses import replace

    from failmode.discovery.mined import load_mined_run, resolve_check, split_debug

    run = load_mined_run(mined / "run")
    assert resolve_check(run, "auto", FeatureOptions(device="cpu"))[0] == "test"
    trained = replace(run, meta={**run.meta, "head": "linear head trained on 2 train images"})
    assert resolve_check(trained, "auto") == ("debug-half", None)
    with pytest.raises(UsageError, match="head .* was not saved"):
        resolve_check(trained, "test")
    a, b = split_debug(run, seed=0)
    assert not set(a) & set(b) and sorted([*a, *b]) == sorted(run.splits.debug.tolist())
    assert np.bincount(run.source.labels[a]).tolist() == [8, 8]
    assert list(split_debug(run, seed=0)[0]) == list(a) and list(split_debug(run, seed=1)[0]) != list(a)


def test_mined_run_errors_are_one_line(mined, tmp_path, capsys):
    assert main(["slices", "--mined", str(tmp_path / "nope"), "--vocabulary", "x.json", "--out",
                 str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such mined run" in err
    partial = tmp_path / "partial"
    shutil.copytree(mined / "run", partial)
    (partial / "predictions.npz").unlink()
    argv = slices_argv(mined, tmp_path / "o")
    argv[argv.index("--mined") + 1] = str(partial)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks predictions.npz" in err
    assert main(["slices", "--out", str(tmp_path / "o")]) == 2
    assert "either --world PRESET" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_discover_on_a_timm_model_with_a_diffusers_pipeline(tiny_pipeline_dir, tmp_path):
    import timm

    from failmode.stats import wilson_interval

    torch.manual_seed(0)
    torch.save(timm.create_model(ARCH, pretrained=False).state_dict(), tmp_path / "w.pth")  # 1000 ImageNet logits
    vocab = vocabulary(tmp_path / "in.json", "imagenet-1k", [(0, "tench"), (1, "goldfish")],
                       ["in a forest", "on a sofa"])
    out = tmp_path / "bugs"
    argv = ["discover", "--model", ARCH, "--weights", str(tmp_path / "w.pth"), "--dataset-classes", "imagenet-1k",
            "--vocabulary", vocab, "--generator", str(tiny_pipeline_dir), "--size", "64", "--steps", "2",
            "--batch-size", "4", "--scheduler", "ddim", "--images-per-prompt", "2", "--confirm-images", "4",
            "--min-cluster-size", "2", "--max-clusters", "2", "--cache-dir", str(tmp_path / "cache"), *TINY_CLIP,
            "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "bugs.json").read_text())
    assert doc["format"] == "failmode-bugs/1" and set(doc) == {"format", "params", "meta", "classes", "bugs"}
    assert doc["meta"]["classifier"].startswith(f"{ARCH}@file:")
    assert doc["meta"]["generator"].startswith("diffusers:tiny-sd@cfg-")
    assert [c["class_name"] for c in doc["classes"]] == ["tench", "goldfish"]
    assert all(c["broad_images"] == 2 * 3 for c in doc["classes"])  # plain prompt + 2 contexts, 2 images each
    assert doc["params"]["size"] == 64 and doc["params"]["steps"] == 2
    assert doc["bugs"], "a random 1000-way classifier fails nearly always: there must be clusters"
    for b in doc["bugs"]:
        lo, hi = wilson_interval(b["confirm_failures"], b["confirm_n"])
        assert b["confirm_n"] == 4 and b["base_n"] == 4
        assert (b["failure_low"], b["failure_high"]) == pytest.approx((float(lo), float(hi)))
        assert b["failure_low"] <= b["failure_rate"] <= b["failure_high"]
        assert b["confirmed"] == (b["failure_low"] > b["base_high"])
        assert b["phrases"] in ("in a forest", "on a sofa") and b["prompt"].endswith(b["phrases"])
        assert (out / b["grid"]).is_file()
    assert pq.read_table(out / "bugs.parquet").num_rows == len(doc["bugs"])


def test_discover_refuses_a_class_list_that_does_not_fit(tmp_path, capsys):
    vocab = vocabulary(tmp_path / "c.json", "cifar10", [(0, "airplane")], ["in a forest"])
    argv = ["discover", "--model", ARCH, "--weights", "none", "--vocabulary", vocab, "--dataset-classes",
            "imagenet-1k", "--generator", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "class 0 is 'airplane'" in capsys.readouterr().err
    argv[argv.index("--dataset-classes") + 1] = "cifar10"
    assert main(argv) == 2  # 1000 ImageNet logits for 10 classes and no head
    assert f"{ARCH} has 1000 classes but cifar10 has 10: give it a head" in capsys.readouterr().err  # mine's words


def _parsed(argv: list[str], caplog) -> tuple[object, list[str]]:
    """The command line as slices / discover read it (old spellings turned into the new flags) and the log lines
    naming new flags."""
    import logging

    from failmode.cli import build_parser
    from failmode.commands import slices as slices_cmd
    from failmode.commands._common import log_renamed

    args = build_parser().parse_args(argv)
    if argv[0] == "slices":
        slices_cmd.old_spellings(args)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="failmode"):
        log_renamed(args)
    return args, [r.getMessage() for r in caplog.records]


def test_precision_is_the_render_dtype_and_tag_precision_the_calibration_target(caplog):
    """`precision` means a dtype: slices and discover take the render dtype as --precision like every other
    command (slices' old name --render-precision is kept as an alias, with a line naming --precision); slices'
    calibration target is --tag-precision, its method --calibration tag-precision."""
    base = ["--world", "concentrated", "--out", "o"]
    args, lines = _parsed(["slices", *base, "--precision", "fp16", "--tag-precision", "0.8",
                           "--calibration", "tag-precision"], caplog)
    assert (args.render_precision, args.tag_precision, args.calibration, lines) == ("fp16", 0.8, "tag-precision", [])
    args, lines = _parsed(["slices", *base], caplog)
    assert (args.render_precision, args.tag_precision, args.calibration, lines) == (None, 0.9, "robust-z", [])
    args, lines = _parsed(["slices", *base, "--render-precision", "bf16"], caplog)
    assert args.render_precision == "bf16"
    assert lines == ["--render-precision is renamed --precision; the old name is accepted for one more release"]
    for command in ("slices", "discover"):
        args, lines = _parsed([command, *base, "--precision", "fp32"], caplog)
        assert (args.render_precision, lines) == ("fp32", [])


def test_slices_old_precision_spellings_keep_their_meaning_for_one_release(caplog):
    """A number given to slices' --precision is the tag-precision target it was, --calibration precision is
    tag-precision; each logs one line naming the new flag."""
    base = ["slices", "--world", "concentrated", "--out", "o"]
    args, lines = _parsed([*base, "--calibration", "precision", "--precision", "0.75"], caplog)
    assert (args.render_precision, args.tag_precision, args.calibration) == (None, 0.75, "tag-precision")
    assert lines == ["--precision 0.75 is renamed --tag-precision 0.75 (--precision is the render dtype); the old name "
                     "is accepted for one more release",
                     "--calibration precision is renamed --calibration tag-precision; the old name is accepted for one "
                     "more release"]


def test_slices_precision_flag_refuses_what_is_neither_a_dtype_nor_a_number(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["slices", "--world", "concentrated", "--precision", "fp8", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'fp8' (choose from auto, fp32, fp16, bf16; the tags' target " \
                                 "precision is --tag-precision)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_tag_precision_calibration_needs_the_world_under_both_spellings(mined, tmp_path, capsys):
    for calibration in ("tag-precision", "precision"):
        assert main(slices_argv(mined, tmp_path / "o", "--calibration", calibration)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == ("failmode slices: error: --calibration tag-precision needs images with known contexts: "
                           "only with --world")
    assert not (tmp_path / "o").exists()


def test_the_mined_classifier_is_rebuilt_with_the_crop_mining_recorded(mined):
    """A run mined with --crop-pct is checked on the test split with that crop, not the model's default."""
    from failmode.discovery.mined import live_classifier, load_mined_run
    from failmode.models.classifier import eval_preprocess

    run = load_mined_run(mined / "run")
    default, why = live_classifier(run, FeatureOptions(device="cpu"))
    assert default is not None, why
    run.meta["crop_pct"] = 1.0
    cropped, _ = live_classifier(run, FeatureOptions(device="cpu"))
    assert cropped.extractor.transform == eval_preprocess(cropped.extractor.model, None, 1.0)
    assert cropped.extractor.transform != default.extractor.transform


def test_discover_has_no_render_precision_alias(capsys):
    """--render-precision was slices' name of the render dtype only: discover always called it --precision."""
    from failmode.cli import build_parser

    args = build_parser().parse_args(["slices", "--out", "x", "--render-precision", "fp16"])
    assert args.render_precision == "fp16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["discover", "--out", "x", "--render-precision", "fp16"])
    assert "unrecognized arguments: --render-precision" in capsys.readouterr().err

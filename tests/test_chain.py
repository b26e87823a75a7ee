"""The chain a user runs, end to end, for the three datasets: `failmode build <preset>` then `failmode evaluate`.

Nothing is faked: tiny but real timm / open_clip / diffusers models saved to disk as a user saves real ones, a
local dataset in the exact Hub schema of each dataset, a preset derived from the shipped one by pointing it at
those local copies, and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failmode.cli import main
from failmode.dataset import Manifest, validate_dataset_folder
from failmode.io import read_jsonl
from failmode.testing import (
    CIFAR10_CLASSES,
    TINY_CLIP,
    derive_preset,
    save_tiny_classifier,
    save_tiny_clip,
    save_tiny_pipeline,
    write_local_dataset,
)

ARCH = "test_efficientnet"
SLUG = "test_efficientnet"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Classifier weights (1000-class ImageNet head), a CLIP checkpoint and an SD pipeline folder, on disk."""
    root = tmp_path_factory.mktemp("models")
    return {"weights": save_tiny_classifier(root / "classifier.safetensors", ARCH),
            "clip": save_tiny_clip(root / "clip.pt"), "pipeline": save_tiny_pipeline(root / "sd")}


def run_chain(tmp_path: Path, shipped: str, schema: str, names: list[str], models: dict[str, Path], *,
              eval_split: str, head: str | None, used: int | None = None, baseline: bool = True):
    per_class = {"train": 3, eval_split: 3}
    data = write_local_dataset(tmp_path / "data" / schema, schema, per_class, class_names=names, used_classes=used)
    preset = derive_preset(shipped, tmp_path / "preset.json", data, models, head=head, train_per_class=2,
                           debug_per_class=2, baseline=baseline)
    out = tmp_path / "ds"
    assert main(["build", str(preset), "--out", str(out), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 0
    evaluate = ["evaluate", "--model", ARCH, "--weights", str(models["weights"]), "--dataset", str(data),
                "--eval-split", eval_split, "--train-per-class", "2", "--debug-per-class", "2", "--debug-data",
                str(out), "--out", str(tmp_path / "eval"), "--epochs", "20", "--device", "cpu",
                "--cache-dir", str(tmp_path / "c")]
    if head:
        evaluate += ["--head", head]
    if not baseline:
        evaluate += ["--baseline-config", "none"]
    assert main(evaluate) == 0
    return data, out, validate_dataset_folder(out), read_jsonl(tmp_path / "eval" / "results.jsonl")


def check_common(manifest: Manifest, records: list[dict], data: Path, models: dict[str, Path], *, n_classes: int,
                 n_used: int, baseline: bool = True) -> None:
    kinds = {"model": [SLUG], "collective": ["collective-tiny"], "baseline": ["baseline"] if baseline else [],
             "random-context": ["random-context"]}
    assert {k: sorted(c for c, s in manifest.configs.items() if s.kind == k) for k in kinds} == kinds
    assert len(manifest.class_names) == n_classes
    # the manifest records what was used: the dataset as given, its recipe, the CLIP checkpoint, the precision
    assert manifest.source_dataset == "" and manifest.mining["id"] == str(data)  # a local folder: no Hub id
    assert manifest.mining["id"] == str(data) and manifest.mining["recipe"] == {"train_per_class": 2,
                                                                                 "debug_per_class": 2}
    assert manifest.attribution["used"] == {ARCH: f"clip:{TINY_CLIP}/{models['clip']}"}
    assert manifest.generation["precision"] == "fp32"  # "auto" on a CPU
    assert manifest.generation["quality_filter"] == f"clip:{TINY_CLIP}/{models['clip']}"
    mined = manifest.mining["models"][0]
    assert mined["model"] == ARCH and mined["weights"] == str(models["weights"])
    # evaluate: original, retrain, then the model's config and the baseline, one line each, on the same splits
    expected = [("original", None), ("retrain", None), ("debug", SLUG)] + ([("debug", "baseline")] if baseline else [])
    expected.append(("debug", "random-context"))
    assert [(r["setting"], r["config"]) for r in records] == expected
    for r in records:
        assert r["n_train"] == 2 * n_used and r["n_test"] == 1 * n_used
        assert r["n_seed"] + r["n_heldout"] == mined["n_failures"]
        assert r["dataset"] == str(data) and r["params"]["train_per_class"] == 2
        assert all(r[m] is None or 0 <= r[m] <= 1 for m in ("test", "seed", "heldout"))
    debug = {r["config"]: r for r in records if r["setting"] == "debug"}
    assert debug[SLUG]["n_debug"] == manifest.configs[SLUG].num_samples["train"]
    if baseline:
        assert debug["baseline"]["n_debug"] == n_classes  # one class-only image per class
    # random-context: per class as many images as the (one) model config has, over the class's vocabulary
    assert debug["random-context"]["n_debug"] == debug[SLUG]["n_debug"]


@pytest.mark.slow
def test_cifar10_chain_with_a_trained_head(models, tmp_path, monkeypatch, capsys):
    data, out, manifest, records = run_chain(tmp_path, "cifar10-bg-debug", "cifar10", CIFAR10_CLASSES, models,
                                             eval_split="test", head="train")
    check_common(manifest, records, data, models, n_classes=10, n_used=10)
    head_file = tmp_path / "ds.work/models" / SLUG / "head.safetensors"
    assert manifest.mining["models"][0]["head_file"] == "head.safetensors" and head_file.is_file()
    assert all(r["params"]["head"] == "train" for r in records)
    # the head mining saved is the head `evaluate --head train` fits: the same "original" accuracies
    again = tmp_path / "eval-file"
    assert main(["evaluate", "--model", ARCH, "--weights", str(models["weights"]), "--dataset", str(data),
                 "--eval-split", "test", "--train-per-class", "2", "--debug-per-class", "2", "--debug-data", str(out),
                 "--out", str(again), "--epochs", "20", "--device", "cpu", "--head", str(head_file),
                 "--baseline-config", "none", "--random-config", "none", "--cache-dir", str(tmp_path / "c")]) == 0
    by_file = read_jsonl(again / "results.jsonl")
    assert [r[m] for m in ("test", "seed", "heldout") for r in by_file[:1]] == [
        records[0][m] for m in ("test", "seed", "heldout")]
    # a recipe that leaves no test image is one line before any model loads (it used to crash in per-class gains)
    small = ["evaluate", "--model", ARCH, "--weights", str(models["weights"]), "--head", "train", "--dataset", str(data),
             "--eval-split", "test", "--train-per-class", "2", "--debug-per-class", "3", "--debug-data", str(out),
             "--out", str(tmp_path / "eval-small")]
    capsys.readouterr()
    assert main(small) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leaves no test image" in err
    assert not (tmp_path / "eval-small" / "results.jsonl").exists()
    tables = (tmp_path / "eval" / "tables.md").read_text()
    assert f"{ARCH} (weights classifier.safetensors; head trained on the train subset)" in tables

    # A rerun with nothing to do loads no model: every loader raises if called.
    from failmode.generation import render
    from failmode.models import classifier, clip

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    for mod, name in ((render, "load_pipeline"), (clip, "create_clip"), (classifier, "create_classifier")):
        monkeypatch.setattr(mod, name, boom)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["build", str(tmp_path / "preset.json"), "--out", str(out), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()

    # Changed attribution settings redo attribution (not silently reuse modes.json): here a missing checkpoint.
    doc = json.loads((tmp_path / "preset.json").read_text())
    doc["attribution"]["pretrained"] = str(tmp_path / "no-such-clip.pt")
    (tmp_path / "stale.json").write_text(json.dumps(doc))
    assert main(["build", str(tmp_path / "stale.json"), "--out", str(tmp_path / "ds2"), "--work",
                 str(tmp_path / "ds.work"), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) != 0
    assert not (tmp_path / "ds2" / "failmode.json").exists()

    # A quality filter that drops every image leaves no finalized dataset (it used to finalize empty configs).
    doc = json.loads((tmp_path / "preset.json").read_text())
    doc["quality"]["min_class_score"] = 2.0  # above any cosine similarity
    (tmp_path / "strict.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["build", str(tmp_path / "strict.json"), "--out", str(tmp_path / "ds3"), "--work",
                 str(tmp_path / "ds.work"), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "hold no image" in capsys.readouterr().err
    assert not (tmp_path / "ds3" / "failmode.json").exists() and not (tmp_path / "ds3" / "README.md").exists()


@pytest.mark.slow
def test_cifar100_chain_fine_labels(models, tmp_path):
    from failmode.vocab.classnames import label_names

    names = label_names("cifar100")
    data, out, manifest, records = run_chain(tmp_path, "cifar100-bg-debug", "cifar100", names, models,
                                             eval_split="test", head="train", used=20)
    check_common(manifest, records, data, models, n_classes=100, n_used=20)
    assert manifest.vocabulary["dataset"] == "cifar100"
    import pyarrow.parquet as pq

    table = pq.read_table(next((out / "data" / SLUG).glob("*.parquet")), columns=["label", "class_name"])
    assert {names[y] for y in table.column("label").to_pylist()} == set(table.column("class_name").to_pylist())


@pytest.mark.slow
def test_imagenet_chain_native_head(models, tmp_path):
    from failmode.vocab.classnames import label_names

    names = label_names("imagenet-1k")
    names[517] = "crane, construction crane"  # datasets' ClassLabel refuses the two "crane" of timm's list
    data, out, manifest, records = run_chain(tmp_path, "imagenet-bg-debug", "imagenet-1k", names, models,
                                             eval_split="validation", head=None, used=5, baseline=False)
    check_common(manifest, records, data, models, n_classes=1000, n_used=5, baseline=False)
    assert manifest.mining["models"][0]["head"] == "native"
    assert all(r["params"]["head"] == "native" for r in records)
    # the card of a diffusers build states what ran, names local models by folder name and content hash, and its
    # python blocks run from the folder
    from failmode.testing import check_card_states_the_manifest

    header = check_card_states_the_manifest(out)
    assert header["license"] == "other" and "diffusers" in header["tags"] and "stable-diffusion" not in header["tags"]
    text = (out / "README.md").read_text()
    assert "generated by a text-to-image diffusion model" in text and "CreativeML" not in text
    assert "clip.pt@sha256:" in text and str(models["clip"]) not in text and str(models["pipeline"]) not in text
    assert "clip_model: `failmode-tiny-clip`" in text  # the CLIP attributor's own fields


@pytest.mark.slow
@pytest.mark.parametrize("shipped,schema", [("cifar10-color-debug", "cifar10"), ("cifar100-color-debug", "cifar100")])
def test_color_presets_chain(models, tmp_path, shipped, schema):
    from failmode.vocab.classnames import label_names

    names = label_names(schema)
    used = 10 if schema == "cifar10" else 20
    data, out, manifest, records = run_chain(tmp_path, shipped, schema, names, models, eval_split="test",
                                             head="train", used=used)
    check_common(manifest, records, data, models, n_classes=len(names), n_used=used)
    assert manifest.vocabulary["kind"] == "color"
    import pyarrow.parquet as pq

    kinds = pq.read_table(next((out / "data" / SLUG).glob("*.parquet")), columns=["context_kind"]).column(0)
    assert set(kinds.to_pylist()) == {"color"}

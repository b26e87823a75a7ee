"""Failure mining: halves rule, failure records, determinism, feature cache reuse/invalidation, heads, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from failmode.data.sources import ListSource
from failmode.errors import UsageError, ValidationError
from failmode.head import LinearHead, apply_head
from failmode.mining import Predictions, assign_halves, failures_from_predictions, mine_failures, read_failures
from failmode.options import FeatureOptions, ModelSpec, SplitSpec
from failmode.testing import synthetic_images

ARCH = "test_efficientnet"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 40-image cifar10-schema dataset on disk, a weights file of the tiny timm model, and a 10-class head."""
    import timm

    from failmode.testing import tiny_image_dataset

    root = tmp_path_factory.mktemp("mining")
    tiny_image_dataset("cifar10", n=40).save_to_disk(str(root / "data"))
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    torch.save(model.state_dict(), root / "w.pth")
    torch.manual_seed(1)
    torch.save(timm.create_model(ARCH, pretrained=False).state_dict(), root / "w2.pth")
    rng = np.random.default_rng(0)
    np.savez(root / "head.npz", weight=rng.normal(size=(10, model.num_features)).astype(np.float32),
             bias=rng.normal(size=10).astype(np.float32))
    np.savez(root / "head64.npz", weight=rng.normal(size=(10, 64)).astype(np.float32), bias=np.zeros(10, np.float32))
    return root


def _mine(world, out, cache, decode="cpu", **kw):
    kw = {"weights": str(world / "w.pth"), "head": str(world / "head.npz"), "train_per_class": 1,
          "debug_per_class": 0.75} | kw
    extraction = FeatureOptions(device="cpu", batch_size=16, decode=decode, cache_dir=str(cache))
    model = ModelSpec(ARCH, **{k: kw.pop(k) for k in ("weights", "head", "image_size", "crop_pct") if k in kw})
    on_bad_image = kw.pop("on_bad_image", "error")
    return mine_failures(model, SplitSpec(str(world / "data"), **kw), out_dir=out, extraction=extraction,
                         on_bad_image=on_bad_image)


def test_halves_are_per_class_ceil_half_and_seeded():
    labels = np.array([0] * 5 + [1] * 2 + [2])
    h = assign_halves(labels, seed=0)
    assert [(h[labels == c] == "seed").sum() for c in (0, 1, 2)] == [3, 1, 1]
    assert list(assign_halves(labels, seed=0)) == list(h)
    many = np.zeros(40, np.int64)
    assert list(assign_halves(many, 0)) != list(assign_halves(many, 1))  # the seed matters


def test_failure_records_exact():
    images, labels = synthetic_images(6, size=8, num_classes=3)
    src = ListSource(images, labels, ["a", "b", "c"], "mem:test", ids=[f"im{i}" for i in range(6)])
    preds = Predictions(np.array([5, 1, 2, 4]), np.array([2, 1, 2, 1]), np.array([0, 1, 2, 2]),
                        np.array([0.5, 0.9, 0.8, 0.7], np.float32))
    rows = failures_from_predictions(src, preds, seed=0)
    assert [(r["index"], r["image_id"], r["label"], r["prediction"], r["predicted_class"]) for r in rows] == [
        (4, "im4", 1, 2, "c"), (5, "im5", 2, 0, "a")]  # source order; correct predictions dropped
    assert [r["half"] for r in rows] == ["seed", "seed"]  # one failure per class -> seed
    assert rows[1]["confidence"] == pytest.approx(0.5)


def test_mine_is_deterministic_cached_and_invalidated(world, tmp_path, monkeypatch):
    import failmode.features as features

    calls = []
    real = features.forward_features
    monkeypatch.setattr(features, "forward_features", lambda *a, **k: calls.append(1) or real(*a, **k))

    p1 = _mine(world, tmp_path / "a", tmp_path / "cacheA")
    first = len(calls)
    p2 = _mine(world, tmp_path / "b", tmp_path / "cacheB")  # fresh cache: recomputed
    assert len(calls) == 2 * first > 0
    for name in ("failures.parquet", "splits.json", "predictions.npz"):
        assert (p1.parent / name).read_bytes() == (p2.parent / name).read_bytes(), name

    calls.clear()
    p3 = _mine(world, tmp_path / "c", tmp_path / "cacheA")  # same inputs, cache A: no forward pass at all
    assert calls == [] and p3.read_bytes() == p1.read_bytes()

    _mine(world, tmp_path / "d", tmp_path / "cacheA", image_size=40)  # preprocessing changed
    assert len(calls) == first
    _mine(world, tmp_path / "e", tmp_path / "cacheA", weights=str(world / "w2.pth"))  # model changed
    assert len(calls) == 2 * first
    p4 = _mine(world, tmp_path / "f", tmp_path / "cacheA", decode="hybrid")  # resize on the device: other pixels
    assert len(calls) == 3 * first
    _mine(world, tmp_path / "g", tmp_path / "cacheA", decode="auto")  # auto is cpu on a CPU: cache A's entry
    assert len(calls) == 3 * first and p4.exists()

    rows, meta = read_failures(p1)
    splits = json.loads((p1.parent / "splits.json").read_text())
    assert meta["n_debug"] == len(splits["debug"]) == 30 and splits["seed"] == 0
    assert {r["index"] for r in rows} <= set(splits["debug"])
    assert meta["n_failures"] == len(rows) == meta["n_seed"] + meta["n_heldout"]
    assert meta["accuracy"] == pytest.approx(1 - len(rows) / 30)


def test_split_seed_changes_split(world, tmp_path):
    a = json.loads((_mine(world, tmp_path / "a", tmp_path / "c").parent / "splits.json").read_text())
    b = json.loads((_mine(world, tmp_path / "b", tmp_path / "c", split_seed=1).parent / "splits.json").read_text())
    assert a["debug"] != b["debug"] and len(a["debug"]) == len(b["debug"])


def test_native_logits_and_missing_head(tmp_path):
    from failmode.features import FeatureExtractor
    from failmode.mining import predict
    from failmode.models.classifier import eval_preprocess
    from failmode.testing import tiny_classifier

    images, labels = synthetic_images(8, size=32, num_classes=10)
    names = [f"c{i}" for i in range(10)]
    model = tiny_classifier(10)
    src = ListSource(images, labels, names, "mem:native")
    extractor = FeatureExtractor(model, "tiny@0", eval_preprocess(model),
                                 FeatureOptions(device="cpu", cache_dir=str(tmp_path)))
    p = predict(extractor, src, range(8))
    with torch.inference_mode():
        from failmode.models.classifier import eval_transform

        t = eval_transform(model)
        expect = model(torch.stack([t(im) for im in images])).argmax(1).numpy()
    assert list(p.predictions) == list(expect)
    src3 = ListSource(images, labels, names[:3] * 1, "mem:three")
    src3.labels = np.asarray(labels) % 3
    with pytest.raises(UsageError, match="pass a head"):
        predict(extractor, src3, range(8))


def test_head_forms_agree():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    head = LinearHead(w.astype(np.float32), b.astype(np.float32))
    preds, logits = apply_head(head, x, 3)
    assert list(apply_head(lambda f: f @ w.T + b, x, 3)[0]) == list(preds)
    lin = torch.nn.Linear(4, 3)  # torch modules with weight/bias tensors count as linear heads
    as_numpy = LinearHead(lin.weight.detach().numpy(), lin.bias.detach().numpy())
    assert np.allclose(apply_head(lin, x, 3)[1], apply_head(as_numpy, x, 3)[1], atol=1e-5)
    assert apply_head(type("P", (), {"predict": lambda self, f: preds})(), x, 3)[1] is None
    with pytest.raises(ValidationError, match="outputs 3 classes"):
        apply_head(head, x, 10)
    with pytest.raises(ValidationError, match="4-d features"):
        apply_head(head, x[:, :2], 3)


# ---- the command line: one clear line on stderr, non-zero exit ----

@pytest.fixture
def cli(monkeypatch):
    """`failmode` main with only this package's commands registered (others may be mid-edit)."""
    from failmode import cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMANDS", ("mine", "attribute", "overlap"))
    return cli_mod.main


def _one_line_error(capsys, code, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == code and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err
    return err


def test_cli_unknown_model(cli, capsys, world, tmp_path):
    rc = cli(["mine", "--model", "resnet_not_a_model", "--dataset", str(world / "data"), "--out", str(tmp_path)])
    _one_line_error(capsys, 2, rc, "timm does not know", "resnet_not_a_model")
    # with --models every name is checked before the first model is mined
    rc = cli(["mine", "--models", ARCH, "resnet_not_a_model", "--dataset", str(world / "data"), "--out",
              str(tmp_path / "many"), "--train-per-class", "1", "--debug-per-class", "1"])
    _one_line_error(capsys, 2, rc, "timm does not know", "resnet_not_a_model")
    assert not (tmp_path / "many").exists()


def test_cli_dataset_without_expected_columns(cli, capsys, tmp_path):
    import datasets

    images, labels = synthetic_images(4, size=8)
    datasets.Dataset.from_dict({"picture": images, "category": labels}).save_to_disk(str(tmp_path / "bad"))
    capsys.readouterr()  # drop the save progress bar
    rc = cli(["mine", "--model", ARCH, "--weights", "none", "--dataset", str(tmp_path / "bad"), "--out",
              str(tmp_path / "o"), "--debug-per-class", "1", "--train-per-class", "1"])
    _one_line_error(capsys, 1, rc, "no image column", "picture")


def test_cli_models_form_shares_cache(cli, capsys, world, tmp_path):
    rc = cli(["mine", "--models", "test_vit", "test_convnext", "--weights", "none", "--head", str(world / "head64.npz"),
              "--dataset", str(world / "data"), "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "c"),
              "--debug-per-class", "0.5", "--train-per-class", "1", "--device", "cpu"])
    out = capsys.readouterr().out.split()
    assert rc == 0 and out == [str(tmp_path / "runs" / m / "failures.parquet") for m in ("test_vit", "test_convnext")]
    assert [read_failures(p)[1]["model"] for p in out] == ["test_vit", "test_convnext"]
    assert len(list((tmp_path / "c" / "features").glob("*.npz"))) == 2


def test_head_trained_on_the_train_split(world, tmp_path):
    """--head train: features of the recorded train subset fit a linear head (the evaluate package's trainer)."""
    import datasets

    from failmode.testing import tiny_image_dataset

    dd = datasets.DatasetDict({"train": tiny_image_dataset("cifar10", n=30, seed=1),
                               "test": tiny_image_dataset("cifar10", n=20, seed=2)})
    dd.save_to_disk(str(tmp_path / "dd"))
    p = mine_failures(ModelSpec(ARCH, str(world / "w.pth"), "train"),
                      SplitSpec(str(tmp_path / "dd"), "test", "train", train_per_class=2, debug_per_class=1),
                      out_dir=tmp_path / "o", extraction=FeatureOptions(device="cpu", cache_dir=str(tmp_path / "c")))
    rows, meta = read_failures(p)
    splits = json.loads((p.parent / "splits.json").read_text())
    assert len(splits["train"]) == 20 and len(splits["debug"]) == 10 and meta["n_debug"] == 10
    assert meta["head"] == "linear head trained on 20 train images (head.safetensors)"
    # the head is saved beside the outputs, with what it was trained on
    saved = LinearHead.load(p.parent / "head.safetensors")
    assert saved.num_classes == 10 and meta["head_file"] == "head.safetensors"
    from safetensors import safe_open

    with safe_open(str(p.parent / "head.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["failmode"])
    assert (info["n_train"], info["train_per_class"], info["model"]) == (20, 2, ARCH)
    assert meta["accuracy"] == pytest.approx(1 - len(rows) / 10)

"""Core helpers: registry, atomic files, JSONL, splits, feature cache, the network guard itself."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from failmode.data.splits import make_splits
from failmode.errors import UsageError, ValidationError
from failmode.io import append_jsonl, atomic_path, read_json, read_jsonl, write_json
from failmode.registry import Registry


def test_registry_register_get_and_lazy():
    reg: Registry[object] = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    reg.register_lazy("join", "os.path:join")
    assert reg.get("a") is a and reg.names() == ["a", "join"] and "join" in reg
    import os.path

    assert reg.get("join") is os.path.join
    with pytest.raises(UsageError, match="unknown widget 'b' \\(known: a, join\\)"):
        reg.get("b")
    with pytest.raises(ValueError):
        reg.register("a")(a)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValidationError, match="bad.json: invalid JSON at line 1"):
        read_json(tmp_path / "bad.json")


def test_jsonl_append_and_torn_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, [{"a": 1}])
    append_jsonl(p, [{"a": 2}])
    with p.open("a") as f:
        f.write('{"a": 3')  # an interrupted append
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    append_jsonl(p, [{"a": 4}])  # the torn tail is cut first, never glued to the next record
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 4}\n'
    p.write_text('{"a": 5')  # a file that is only a torn line
    append_jsonl(p, [{"a": 6}])
    assert p.read_text() == '{"a": 6}\n'


def test_splits_are_stratified_deterministic_and_disjoint():
    train_labels = np.repeat(np.arange(5), 40)
    eval_labels = np.repeat(np.arange(5), 50)
    a = make_splits(train_labels, eval_labels, train_per_class=30, debug_per_class=30, seed=7)
    b = make_splits(train_labels, eval_labels, train_per_class=30, debug_per_class=30, seed=7)
    c = make_splits(train_labels, eval_labels, train_per_class=30, debug_per_class=30, seed=8)
    assert np.array_equal(a.debug, b.debug) and not np.array_equal(a.debug, c.debug)
    assert len(a.train) == 150 and len(a.debug) == 150 and len(a.test) == 100
    assert not set(a.debug) & set(a.test)
    assert np.bincount(eval_labels[a.debug]).tolist() == [30] * 5
    assert type(a).from_json(a.to_json()).to_json() == a.to_json()


def test_feature_cache_hit_and_invalidation(tmp_path):
    from failmode.data.sources import HFSource
    from failmode.features import extract_features
    from failmode.models.classifier import eval_preprocess, eval_transform
    from failmode.testing import tiny_classifier, tiny_image_dataset

    src = HFSource(tiny_image_dataset("cifar10", n=12), "tiny-12")
    model = tiny_classifier(10)
    prep = eval_preprocess(model)
    first = extract_features(model, src, model_key="m1", transform=prep, cache_dir=tmp_path)
    again = extract_features(model, src, model_key="m1", transform=prep, cache_dir=tmp_path)
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.logits, again.logits)
    assert not extract_features(model, src, model_key="m2", transform=prep, cache_dir=tmp_path).cached
    other = eval_transform(model, image_size=48)
    assert not extract_features(model, src, model_key="m1", cache_dir=tmp_path, transform=other).cached


def test_device_side_preprocessing_matches_timms_eval_transform(tmp_path):
    from PIL import Image

    from failmode.data.sources import ListSource
    from failmode.features import extract_features
    from failmode.images import Preprocess
    from failmode.models.classifier import eval_preprocess, eval_transform, model_data_config
    from failmode.options import FeatureOptions
    from failmode.testing import tiny_classifier

    model = tiny_classifier(10)
    prep = eval_preprocess(model, image_size=48)
    assert prep == Preprocess(48, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", False, resize=50)
    rng = np.random.default_rng(0)
    smooth = [Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
              for w, h in [(96, 72), (72, 96), (64, 64), (96, 72), (50, 50)]]
    src = ListSource(smooth, [0, 1, 2, 3, 4], [str(i) for i in range(10)], "sizes")
    exact = extract_features(model, src, model_key="m", transform=eval_transform(model, image_size=48))
    cpu = extract_features(model, src, model_key="m", transform=prep,
                           options=FeatureOptions(decode="cpu", batch_size=2))
    hybrid = extract_features(model, src, model_key="m", transform=prep,
                              options=FeatureOptions(decode="hybrid", batch_size=2))
    # "cpu": timm's pixels, normalised on the device (float rounding only); "hybrid": torch's antialiased resize
    np.testing.assert_allclose(cpu.features, exact.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cpu.logits, exact.logits, rtol=1e-4, atol=1e-5)
    rel = np.linalg.norm(hybrid.features - exact.features) / np.linalg.norm(exact.features)
    assert 0 < rel < 0.05
    # cache keys differ by decoder; a squash-crop model has no device-side form and keeps the PIL transform
    first = extract_features(model, src, model_key="m", transform=prep, options=FeatureOptions(decode="cpu"),
                             cache_dir=tmp_path)
    assert not first.cached and extract_features(model, src, model_key="m", transform=prep,
                                                 options=FeatureOptions(decode="cpu"),
                                                 cache_dir=tmp_path).cached
    assert not extract_features(model, src, model_key="m", transform=prep,
                                options=FeatureOptions(decode="hybrid"), cache_dir=tmp_path).cached
    cfg = {**model_data_config(model), "crop_mode": "squash"}
    assert Preprocess.from_timm(cfg) is None and Preprocess.from_timm({**cfg, "crop_mode": "center"}) is not None
    from failmode.errors import UsageError

    with pytest.raises(UsageError, match="decode must be auto or one of cpu, hybrid, gpu"):
        extract_features(model, src, model_key="m", transform=prep, options=FeatureOptions(decode="nvjpeg"))
    with pytest.raises(UsageError, match="--decode gpu decodes JPEGs with nvJPEG on a CUDA device, and the device is "
                                         "cpu: use --decode hybrid"):  # refused, not silently replaced
        extract_features(model, src, model_key="m", transform=prep,
                         options=FeatureOptions(decode="gpu", device="cpu"))


def test_feature_cache_without_logits_is_recomputed_when_logits_are_asked_for(tmp_path):
    from failmode.data.sources import HFSource
    from failmode.features import extract_features
    from failmode.models.classifier import eval_preprocess
    from failmode.testing import tiny_classifier, tiny_image_dataset

    src = HFSource(tiny_image_dataset("cifar10", n=6), "tiny-6")
    model = tiny_classifier(10)
    prep = eval_preprocess(model)
    plain = extract_features(model, src, model_key="m", transform=prep, cache_dir=tmp_path, with_logits=False)
    assert plain.logits is None
    full = extract_features(model, src, model_key="m", transform=prep, cache_dir=tmp_path)  # needs logits: no hit
    assert not full.cached and full.logits.shape == (6, 10)
    again = extract_features(model, src, model_key="m", transform=prep, cache_dir=tmp_path)
    assert again.cached and np.array_equal(again.logits, full.logits)


def test_host_arrays_concatenate_batches_in_order_as_float32():
    import torch

    from failmode.runtime import HostArrays

    out = HostArrays()
    assert out.numpy() is None and len(out) == 0
    out.add(torch.arange(6, dtype=torch.bfloat16).view(3, 2))
    out.add(torch.tensor([[6.0, 7.0]], requires_grad=True))
    got = out.numpy()
    assert got.dtype == np.float32 and got.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]] and len(out) == 2


def test_guard_blocks_non_loopback_connections(network_attempts):
    before = len(network_attempts)
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(network_attempts) == before + 2
    del network_attempts[before:]  # this test made them on purpose

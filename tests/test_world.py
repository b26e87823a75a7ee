"""The fashion-scenes world: real data readers, compositing, presets, splits, vocabulary and the stand-in backends."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from failmode.backends import ATTRIBUTORS, GENERATORS, GenerationRequest
from failmode.errors import LoadError, UsageError, ValidationError
from failmode.world import FASHION_CLASSES, build_world, list_presets, load_fashion_mnist, load_preset, load_scenes
from failmode.world.composite import Layout, composite, object_mask
from failmode.world.scenes import scene_pixels
from failmode.world.world import OBJECT_RANGES

SMALL = {"train": 20, "debug": 20, "test": 10}


@pytest.fixture(scope="module")
def world():
    return build_world("concentrated", seed=3, per_class=SMALL, image_size=32)


def test_fashion_mnist_reads_the_installed_idx_files():
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and sorted(np.unique(labels)) == list(range(10))
    assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    test_images, _ = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)
    assert not images.flags.writeable


def test_fashion_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(LoadError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 12))
    with pytest.raises(ValidationError, match="not an IDX file"):
        load_fashion_mnist("test", str(tmp_path))
    with pytest.raises(ValidationError, match="split"):
        load_fashion_mnist("validation")


def test_object_mask_fills_small_prints_but_not_large_holes():
    obj = np.zeros((28, 28), np.uint8)
    obj[4:24, 4:24] = 200
    obj[6:8, 6:8] = 0  # a dark print (4 px): part of the object
    obj[12:20, 12:20] = 0  # a handle's opening (64 px): background
    mask = object_mask(obj)
    assert mask[6, 6] == 1 and mask[15, 15] == 0 and mask[0, 0] == 0 and mask[10, 10] == 1


def test_composite_is_a_function_of_the_generator_state():
    scene = scene_pixels(load_scenes()[0])
    obj = load_fashion_mnist("train")[0][0]
    a = composite(obj, scene, np.random.default_rng(5), 48, 40)
    b = composite(obj, scene, np.random.default_rng(5), 48, 40)
    c = composite(obj, scene, np.random.default_rng(6), 48, 40)
    assert a.size == (48, 40) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    grey = np.asarray(composite(obj, scene, np.random.default_rng(5), 48, 48, Layout((1.0, 1.0), (0.3, 0.3))))
    # object filling the frame: masked pixels are grey (R == G == B), like the Fashion-MNIST object
    core = object_mask(obj)[14, 14] == 1
    assert core and len(set(grey[24, 24].tolist())) == 1


def test_scenes_are_distinct_installed_photos():
    scenes = load_scenes()
    assert 12 <= len(scenes) <= 16
    assert len({s.name for s in scenes}) == len(scenes) and len({s.context for s in scenes}) == len(scenes)
    for s in scenes:
        assert s.file().exists(), s
        px = scene_pixels(s)
        assert px.ndim == 3 and px.shape[2] == 3 and min(px.shape[:2]) <= 384


def test_presets_load_and_bad_presets_fail_in_one_line(tmp_path):
    assert list_presets() == ["concentrated", "concentrated-gap", "diffuse", "diffuse-gap", "mixed", "mixed-gap"]
    conc, diff = load_preset("concentrated"), load_preset("diffuse")
    assert conc.uncommon_policy == "listed" and diff.uncommon_policy == "all_others"
    assert all(2 <= len(v) <= 3 for v in conc.uncommon.values())
    for name in ("mixed", "mixed-gap"):  # half the classes concentrated (3 scenes), half spread (all 12 others)
        mixed = load_preset(name)
        assert sorted(len(v) for v in mixed.uncommon.values()) == [3] * 5 + [12] * 5
        assert (mixed.gap is not None) == name.endswith("-gap") and mixed.common == conc.common
    with pytest.raises(UsageError, match="known: concentrated, concentrated-gap, diffuse, diffuse-gap, mixed"):
        load_preset("uniform")
    doc = json.loads(json.dumps(conc.to_dict()))
    doc.update(format="failmode-world/1", description="")
    doc["uncommon"]["bag"] = ["gravel"]  # the bag's common scene
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match="common scene 'gravel' as uncommon"):
        load_preset(tmp_path / "bad.json")
    doc["uncommon"]["bag"] = ["moon"]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match="unknown scene"):
        load_preset(tmp_path / "bad.json")


def test_world_splits_are_disjoint_seeded_and_follow_the_preset(world):
    sizes = {k: len(v) for k, v in world.splits.items()}
    assert sizes == {k: 10 * n for k, n in SMALL.items()}
    train, debug = world.splits["train"], world.splits["debug"]
    assert set(train.objects).isdisjoint(debug.objects)
    for split, src in world.splits.items():
        lo, hi = OBJECT_RANGES[split][1:]
        assert src.objects.min() >= lo and src.objects.max() < hi
        assert (load_fashion_mnist(OBJECT_RANGES[split][0])[1][src.objects] == src.labels).all()
    for c, pool in world.pool.items():
        assert pool.min() >= OBJECT_RANGES["pool"][1] and (load_fashion_mnist("train")[1][pool] == c).all()
    for i in np.flatnonzero(debug.is_uncommon()):
        assert debug.scenes[i] in world.uncommon_scenes[debug.labels[i]]
    again = build_world("concentrated", seed=3, per_class=SMALL, image_size=32)
    assert again.splits["debug"].ident == debug.ident
    assert again.splits["debug"].image(7).tobytes() == debug.image(7).tobytes()
    assert build_world("concentrated", seed=4, per_class=SMALL, image_size=32).splits["debug"].ident != debug.ident
    assert debug.image(0).size == (32, 32) and debug.contexts()[0] == world.scenes[debug.scenes[0]].context


def test_regimes_differ_only_in_where_the_uncommon_minority_goes():
    sizes = {"train": 300, "debug": 300, "test": 10}
    conc, diff = build_world("concentrated", 0, per_class=sizes), build_world("diffuse", 0, per_class=sizes)
    for w in (conc, diff):
        assert 0.95 < 1 - w.splits["train"].is_uncommon().mean() < 0.99  # train_common_fraction 0.97
        assert 0.25 < w.splits["debug"].is_uncommon().mean() < 0.35  # eval_uncommon_fraction 0.3
    per_class_conc = [len(set(conc.splits["debug"].scenes[(conc.splits["debug"].labels == c)
                                                          & conc.splits["debug"].is_uncommon()])) for c in range(10)]
    per_class_diff = [len(set(diff.splits["debug"].scenes[(diff.splits["debug"].labels == c)
                                                          & diff.splits["debug"].is_uncommon()])) for c in range(10)]
    assert max(per_class_conc) <= 3 and min(per_class_diff) >= 10


def test_shipped_vocabulary_lists_every_scene_but_the_common_one():
    from failmode.vocab import load_vocabulary, validate

    vocab = load_vocabulary("fashion-scenes", "background")
    validate(vocab, FASHION_CLASSES)
    for preset in ("concentrated", "diffuse"):
        w = build_world(preset, 0, per_class=SMALL)
        for c in range(10):
            assert vocab.contexts(c) == w.vocabulary_contexts(c)
            assert w.common_context(c) not in vocab.contexts(c)
    assert vocab.prompt(0, vocab.contexts(0)[0]) == "a photo of a t-shirt in a forest"


def _request(world, label, context, seed, kind="background"):
    name = world.class_names[label]
    return GenerationRequest(prompt=f"a photo of a {name} {context}", seed=seed, label=label, class_name=name,
                             context=context, context_kind=kind, height=32, width=32)


def test_composite_generator_is_registered_seeded_and_batch_invariant(world):
    gen = GENERATORS.get("composite")(world)
    assert "stand-in for Stable Diffusion" in gen.ident
    reqs = [_request(world, 2, "in a forest", 11), _request(world, 2, "in a forest", 12),
            _request(world, 5, "on gravel", 11)]
    batch = gen.generate(reqs)
    alone = gen.generate(reqs[1:2])[0]
    assert batch[1].tobytes() == alone.tobytes() and batch[0].tobytes() != batch[1].tobytes()
    plain = gen.generate([_request(world, 4, "none", 9, kind="class-only")])[0]
    common = gen.generate([_request(world, 4, world.common_context(4), 9)])[0]
    assert plain.tobytes() == common.tobytes()  # a plain class prompt shows the class's common scene
    with pytest.raises(ValidationError, match="unknown context 'on the moon'"):
        gen.generate([_request(world, 0, "on the moon", 1)])


def test_exemplar_attributor_embeds_contexts_class_agnostically(world):
    from failmode.testing import tiny_classifier

    att = ATTRIBUTORS.get("exemplar")(world, model=tiny_classifier(10), n_exemplars=2)
    assert "stand-in for CLIP" in att.ident and "uncentred" in att.ident
    ctx = ["in a forest", "on gravel"]
    emb = att.encode_contexts("bag", ctx)
    assert emb.shape[0] == 2 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.array_equal(emb, att.encode_contexts("dress", ctx))
    assert np.array_equal(emb[1], att.prototypes()[world.scene_index("on gravel")])
    img = att.encode_images(world.splits["debug"], [0, 3])
    assert img.shape == (2, emb.shape[1]) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    with pytest.raises(ValidationError, match="not a fashion-scenes class"):
        att.encode_contexts("cat", ctx)


@pytest.mark.slow
def test_kept_scenes_look_distinct_to_the_real_backbone(tmp_path):
    """No two scenes' centred exemplar prototypes are close (near-duplicates were dropped from the candidates)."""
    from failmode.world.backbone import encode, load_backbone
    from failmode.world.backends import ExemplarAttributor

    w = build_world("concentrated", 0, per_class=SMALL, image_size=64)
    model = load_backbone()
    att = ExemplarAttributor(w, model=model, n_exemplars=6, cache_dir=tmp_path)
    feats = encode(model, att.exemplars(), 64, cache_dir=tmp_path).features
    att.center = feats.mean(axis=0)
    protos = att.prototypes()
    sim = protos @ protos.T
    np.fill_diagonal(sim, -1)
    assert sim.max() < 0.6, np.unravel_index(sim.argmax(), sim.shape)

"""Gap worlds: the generator crops photo regions the splits never use and has a visible look; the gap is measured
by a probe on held-out objects; the pixel attributor uses no classifier weights and beats chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from failmode.backends import ATTRIBUTORS, GenerationRequest
from failmode.errors import ValidationError
from failmode.world import build_world, list_presets, load_preset
from failmode.world.scenes import scene_pixels
from failmode.world.world import OBJECT_RANGES

SMALL = {"train": 20, "debug": 60, "test": 10}


@pytest.fixture(scope="module")
def gap_world():
    return build_world("concentrated-gap", seed=2, per_class=SMALL, image_size=48)


def _span(view: np.ndarray, base: np.ndarray) -> tuple[int, int]:
    """[lo, hi) of `view` along `base`'s long axis, `view` being a slice of `base` (checked)."""
    assert np.shares_memory(view, base), "the composite's scene is not a part of the scene photo"
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    row, col = offset // base.strides[0], (offset % base.strides[0]) // base.strides[1]
    h, w = base.shape[:2]
    return (col, col + view.shape[1]) if w >= h else (row, row + view.shape[0])


def test_gap_presets_are_shipped_and_keep_the_other_worlds_unchanged():
    assert {"concentrated-gap", "diffuse-gap"} <= set(list_presets())
    for name in ("concentrated", "diffuse"):
        plain, gap = load_preset(name), load_preset(f"{name}-gap")
        assert plain.gap is None and plain.attributor == "exemplar" and "gap" not in plain.to_dict()
        assert gap.attributor == "pixels" and gap.gap is not None
        assert (gap.common, gap.uncommon, gap.uncommon_policy) == (plain.common, plain.uncommon, plain.uncommon_policy)
    w = build_world("concentrated", 0, per_class=SMALL)
    for s in range(len(w.scenes)):  # outside gap worlds, splits and generator share the whole photo
        assert w.split_pixels(s) is scene_pixels(w.scenes[s]) and w.generator_pixels(s) is scene_pixels(w.scenes[s])


def test_generator_and_exemplars_crop_photo_regions_disjoint_from_the_splits(gap_world, monkeypatch):
    import failmode.world.backends as backends
    import failmode.world.world as world_mod

    seen: list[tuple[str, np.ndarray]] = []

    def spy(where, real):
        def wrapped(obj, scene, *a, **kw):
            seen.append((where, scene))
            return real(obj, scene, *a, **kw)
        return wrapped

    monkeypatch.setattr(world_mod, "composite", spy("split", world_mod.composite))
    monkeypatch.setattr(backends, "composite", spy("generator", backends.composite))
    for split in ("train", "debug", "test"):
        src = gap_world.splits[split]
        for i in range(0, len(src), 37):
            src.image(i)
    gen = backends.CompositeGenerator(gap_world)
    for s, scene in enumerate(gap_world.scenes):
        gen.generate([GenerationRequest(f"a photo of a bag {scene.context}", 100 + s, 8, "bag", scene.context,
                                        height=48, width=48)])
    backends.exemplar_images(gap_world, 2)
    gap = gap_world.preset.gap
    assert {w for w, _ in seen} == {"split", "generator"}
    for where, view in seen:
        base = next(scene_pixels(sc) for sc in gap_world.scenes if np.shares_memory(view, scene_pixels(sc)))
        lo, hi = _span(view, base)
        long_side = max(base.shape[:2])
        span = gap.world_region if where == "split" else gap.generator_region
        assert round(span[0] * long_side) == lo and hi == round(span[1] * long_side), (where, lo, hi)
    assert gap.world_region[1] <= gap.generator_region[0]  # the two regions share no pixel


def test_generator_images_have_their_own_look_and_stay_seeded(gap_world):
    from failmode.world.backends import CompositeGenerator
    from failmode.world.composite import composite

    gen = CompositeGenerator(gap_world)
    assert "photo regions the splits do not use" in gen.ident
    req = GenerationRequest("a photo of a coat in a forest", 7, 4, "coat", "in a forest", height=48, width=48)
    a, b = gen.generate([req, req])
    assert a.tobytes() == b.tobytes()
    rng = np.random.default_rng(7)
    obj = gen._object(4, rng)
    plain = composite(obj, gap_world.generator_pixels(gap_world.scene_index("in a forest")), rng, 48, 48,
                      gap_world.generator_layout)
    assert plain.tobytes() != a.tobytes() and gap_world.generator_look.apply(plain).tobytes() == a.tobytes()
    # the look blurs: less high-frequency energy than the same composite without it
    hf = lambda im: float(np.abs(np.diff(np.asarray(im, dtype=np.float32), axis=1)).mean())  # noqa: E731
    assert hf(a) < 0.8 * hf(plain)


def test_gap_probe_is_fit_and_scored_on_disjoint_held_out_objects(gap_world, tmp_path):
    from failmode.world.backbone import load_backbone
    from failmode.world.gap import measure_gap

    model = load_backbone()
    probe = measure_gap(gap_world, model, per_class=16, cache_dir=tmp_path)
    assert probe.n_fit == probe.n_eval == 160
    assert not set(probe.fit_objects) & set(probe.eval_objects)
    lo, hi = OBJECT_RANGES["pool"][1:]
    used = {int(o) for split in ("train", "debug") for o in gap_world.splits[split].objects}
    assert all(lo <= o < hi for o in probe.fit_objects + probe.eval_objects)
    assert not used & set(probe.fit_objects + probe.eval_objects)
    plain = build_world("concentrated", seed=2, per_class=SMALL, image_size=48)
    no_gap = measure_gap(plain, model, per_class=16, cache_dir=tmp_path)
    assert probe.gap_probe_acc >= 0.85 and no_gap.gap_probe_acc <= 0.7, (probe, no_gap)
    assert set(probe.record()) == {"gap_probe_acc", "n_fit", "n_eval", "features"}
    with pytest.raises(ValidationError, match="per_class must be >= 2"):
        measure_gap(gap_world, model, per_class=1)


def test_pixel_attributor_uses_no_classifier_weights_and_finds_true_contexts(gap_world, monkeypatch):
    import failmode.models.classifier as classifier
    import failmode.world.backbone as backbone

    def refuse(*a, **kw):
        raise AssertionError("the pixels attributor ran a neural network")

    monkeypatch.setattr(backbone, "load_backbone", refuse)
    monkeypatch.setattr(classifier, "create_classifier", refuse)
    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)
    att = ATTRIBUTORS.get("pixels")(gap_world, n_exemplars=12)
    assert att.ident.startswith("pixels:") and "no classifier weights" in att.ident
    assert not any(isinstance(v, torch.nn.Module) for v in vars(att).values())
    src = gap_world.splits["debug"]
    unc = np.flatnonzero(src.is_uncommon())
    emb = att.encode_images(src, unc)
    hits = []
    for i, x in zip(unc, emb):
        label = int(src.labels[i])
        vocab = gap_world.vocabulary_contexts(label)
        pred = vocab[int(np.argmax(att.encode_contexts(src.class_names[label], vocab) @ x))]
        hits.append(pred == gap_world.scenes[int(src.scenes[i])].context)
    assert len(hits) >= 100 and np.mean(hits) >= 0.6, np.mean(hits)  # chance: 1 in 12
    with pytest.raises(ValidationError, match="n_exemplars must be >= 1"):
        ATTRIBUTORS.get("pixels")(gap_world, n_exemplars=0)


def test_bad_gap_sections_fail_in_one_line(tmp_path):
    doc = json.loads(open(load_preset.__globals__["_presets_dir"]() / "concentrated-gap.json").read())
    for change, message in ((dict(generator_region=[0.5, 1.0]), "overlap"),
                            (dict(world_region=[0.6, 0.2]), "0 <= lo < hi <= 1"),
                            (dict(layout={"placement": "left"}), "placement must be one of"),
                            (dict(look={"blur": -1}), "gap.look")):
        bad = {**doc, "gap": {**doc["gap"], **change}}
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValidationError, match=message):
            load_preset(path)

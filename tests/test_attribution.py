"""Attribution: known contexts are recovered, counting / top-k / tie rules exactly, determinism with tiny CLIP,
embedding cache, CLIP preprocessing fidelity, templates, outputs (modes.json, report, failure dataset), CLI errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from failmode.backends import Attributor
from failmode.data.sources import ListSource
from failmode.errors import UsageError, ValidationError
from failmode.mining import attribute, attribute_failures, top_k_modes, write_failures
from failmode.options import FeatureOptions
from failmode.testing import CIFAR10_CLASSES, synthetic_images
from failmode.vocab import from_dict

CPU = FeatureOptions(device="cpu")

CONTEXTS = ["in a desert", "on a beach", "in the snow", "underwater"]


COLORS = ["that is bright pink", "that is neon green", "that is painted gold", "that is striped purple"]


def vocab_doc(classes=CIFAR10_CLASSES, drop=(), kind="background", contexts=CONTEXTS):
    return {"format": "failmode-vocabulary/1", "dataset": "cifar10", "kind": kind, "version": "0.1",
            "template": "a photo of a {class_name} {context}", "provenance": {"generator": "test"},
            "classes": [{"index": i, "name": n, "prompt_name": f"pn-{n}", "contexts": contexts}
                        for i, n in enumerate(classes) if i not in drop]}


class KnownAttributor(Attributor):
    """Image i embeds as a fixed vector (`emb[i]`); a context embeds as its one-hot in CONTEXTS."""

    ident = "known:test"

    def __init__(self, emb, cache_key=None, contexts=CONTEXTS):
        self.emb, self.cache_key, self.calls, self.all = emb, cache_key, [], contexts

    def encode_images(self, source, indices):
        self.calls.append(list(indices))
        return np.stack([self.emb[i] for i in indices])

    def encode_contexts(self, class_name, contexts):
        assert class_name.startswith("pn-")  # the vocabulary's prompt name is what gets encoded
        return np.eye(len(self.all))[[self.all.index(c) for c in contexts]]

    def scores(self, image_emb, context_emb):
        return 10.0 * super().scores(image_emb, context_emb)


def onehot(j, n=len(CONTEXTS)):
    return np.eye(n)[j]


def rows_for(labels, halves=None):
    return [{"index": i, "image_id": f"im{i}", "label": y, "class_name": CIFAR10_CLASSES[y], "prediction": (y + 1) % 10,
             "predicted_class": CIFAR10_CLASSES[(y + 1) % 10], "confidence": 0.5,
             "half": halves[i] if halves else "seed"} for i, y in enumerate(labels)]


def source_for(n):
    images, _ = synthetic_images(n, size=8)
    return ListSource(images, [0] * n, CIFAR10_CLASSES, "mem:attr", ids=[f"im{i}" for i in range(n)])


def test_known_contexts_are_recovered_and_counted():
    truth = [0, 0, 2, 1, 0, 3, 3, 3, 1]  # context of each failure
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    att = KnownAttributor({i: onehot(t) for i, t in enumerate(truth)})
    res = attribute(rows_for(labels), source_for(9), from_dict(vocab_doc()), att, k=2)
    assert [r["context"] for r in sorted(res.records, key=lambda r: r["index"])] == [CONTEXTS[t] for t in truth]
    assert res.classes == [
        {"label": 0, "class_name": "airplane", "prompt_name": "pn-airplane", "n_seed_failures": 5,
         "modes": [{"context": "in a desert", "count": 3}, {"context": "on a beach", "count": 1}]},
        {"label": 1, "class_name": "automobile", "prompt_name": "pn-automobile", "n_seed_failures": 4,
         "modes": [{"context": "underwater", "count": 3}, {"context": "on a beach", "count": 1}]},
    ]
    r0 = res.records[0]
    assert r0["contexts"] == CONTEXTS and sum(r0["probabilities"]) == pytest.approx(1.0)
    assert r0["probability"] == pytest.approx(np.exp(10) / (np.exp(10) + 3))


def test_color_vocabulary(mined, tmp_path):
    """Any vocabulary kind: colour contexts are attributed the same way, and the kind is recorded."""
    from failmode.mining import read_failures

    (tmp_path / "color.json").write_text(json.dumps(vocab_doc(kind="color", contexts=COLORS)))
    rows, _ = read_failures(mined / "run")
    truth = {r["index"]: r["index"] % 4 for r in rows}
    att = KnownAttributor({i: onehot(t) for i, t in truth.items()}, contexts=COLORS)
    modes = json.loads(attribute_failures(mined / "run", vocabulary=str(tmp_path / "color.json"), kind="color",
                                          attributor=att, out_dir=tmp_path / "o").read_text())
    assert modes["vocabulary"]["kind"] == "color" and modes["attributor"] == "known:test"
    import pyarrow.parquet as pq

    recs = pq.read_table(tmp_path / "o" / "attributions.parquet").to_pylist()
    assert recs and all(r["context"] == COLORS[truth[r["index"]]] for r in recs)
    with pytest.raises(UsageError, match="of kind 'color', not 'background'"):
        attribute_failures(mined / "run", vocabulary=str(tmp_path / "color.json"), attributor=att, out_dir=tmp_path)


def test_heldout_failures_are_not_attributed_or_counted():
    labels, halves = [0, 0, 0], ["seed", "heldout", "seed"]
    att = KnownAttributor({i: onehot(i) for i in range(3)})
    res = attribute(rows_for(labels, halves), source_for(3), from_dict(vocab_doc()), att)
    assert [r["index"] for r in res.records] == [0, 2] and att.calls == [[0, 2]]
    assert res.classes[0]["n_seed_failures"] == 2
    both = attribute(rows_for(labels, halves), source_for(3), from_dict(vocab_doc()), att, halves=("seed", "heldout"))
    assert len(both.records) == 3 and both.classes[0]["modes"] == res.classes[0]["modes"]


def test_tie_rules():
    # exact score tie for one failure: the context listed first in the vocabulary wins
    tie = (onehot(1) + onehot(2)) / np.sqrt(2)
    res = attribute(rows_for([0]), source_for(1), from_dict(vocab_doc()), KnownAttributor({0: tie}))
    assert res.records[0]["context"] == "on a beach"
    # count tie -> higher summed probability; count and probability tie -> vocabulary order; k truncates;
    # contexts never chosen are not modes
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.1, 0.2, 0.7, 0.0], [0.5, 0.0, 0.0, 0.5]])
    assert top_k_modes(np.array([1, 2, 0]), probs, CONTEXTS, 3) == [
        {"context": "in the snow", "count": 1}, {"context": "on a beach", "count": 1},
        {"context": "in a desert", "count": 1}]
    flat = np.full((2, 4), 0.25)
    assert top_k_modes(np.array([3, 1]), flat, CONTEXTS, 1) == [{"context": "on a beach", "count": 1}]
    assert top_k_modes(np.array([2, 2]), flat, CONTEXTS, 3) == [{"context": "in the snow", "count": 2}]


def test_vocabulary_missing_a_class_is_one_line():
    att = KnownAttributor({0: onehot(0), 1: onehot(0)})
    with pytest.raises(ValidationError, match=r"no contexts for class 3 \('cat'\)"):
        attribute(rows_for([0, 3]), source_for(2), from_dict(vocab_doc(drop=(3,))), att)


def test_embedding_cache_computes_only_new_images(tmp_path):
    att = KnownAttributor({i: onehot(i % 4) for i in range(6)}, cache_key="k1")
    voc, src = from_dict(vocab_doc()), source_for(6)
    a = attribute(rows_for([0, 0, 0]), src, voc, att, cache_dir=tmp_path)
    b = attribute(rows_for([0] * 6), src, voc, att, cache_dir=tmp_path)
    c = attribute(rows_for([0] * 6), src, voc, att, cache_dir=tmp_path)
    assert att.calls == [[0, 1, 2], [3, 4, 5]]
    assert b.records == c.records and b.records[:3] == a.records
    att.cache_key = "k2"  # other weights or preprocessing: recomputed
    attribute(rows_for([0]), src, voc, att, cache_dir=tmp_path)
    assert att.calls[-1] == [0]


# ---- the real CLIP attributor, on a tiny random CLIP ----

@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A cifar10-schema dataset on disk (JPEG images) and a failures table on it (predictions fixed)."""
    import datasets

    from failmode.testing import tiny_image_dataset

    root = tmp_path_factory.mktemp("attr")
    ds = tiny_image_dataset("cifar10", n=30, size=48)  # larger than the tiny CLIP input: resizing is exercised
    jpegs = []
    for im in ds["img"]:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        jpegs.append({"bytes": buf.getvalue(), "path": None})
    ds = ds.cast_column("img", datasets.Image(decode=False)).map(lambda _, i: {"img": jpegs[i]}, with_indices=True)
    ds.cast_column("img", datasets.Image()).save_to_disk(str(root / "data"))
    from failmode.data.sources import open_source

    src = open_source(str(root / "data"))
    from failmode.mining import Predictions, failures_from_predictions

    preds = Predictions(np.arange(30), src.labels, (src.labels + np.arange(30) % 3) % 10)
    rows = failures_from_predictions(src, preds, seed=0)
    meta = {"model": "fake/net.v1", "dataset": str(root / "data"), "split": None, "source": src.ident,
            "class_names": src.class_names, "n_debug": 30, "accuracy": preds.accuracy, "split_seed": 0}
    write_failures(root / "run", rows, meta)
    (root / "voc.json").write_text(json.dumps(vocab_doc()))
    return root


def test_clip_attribution_is_deterministic_and_writes_outputs(mined, tiny_clip, tmp_path):
    from failmode.mining import ClipAttributor, read_failures

    outs = []
    for name in ("a", "b"):
        att = ClipAttributor(clip=tiny_clip, features=FeatureOptions(device="cpu", batch_size=7))
        outs.append(attribute_failures(mined / "run", vocabulary=str(mined / "voc.json"), attributor=att,
                                       out_dir=tmp_path / name, features=FeatureOptions(cache_dir=str(tmp_path / "cache"))))
    a, b = outs
    assert a.read_bytes() == b.read_bytes()
    for f in ("attributions.parquet", "report.md"):
        assert (a.parent / f).read_bytes() == (b.parent / f).read_bytes()
    modes = json.loads(a.read_text())
    rows, _ = read_failures(mined / "run")
    seed = [r for r in rows if r["half"] == "seed"]
    assert modes["format"] == "failmode-modes/1" and modes["source_model"] == "fake/net.v1"
    assert modes["vocabulary"] == {"dataset": "cifar10", "kind": "background", "version": "0.1"}
    assert modes["attributor"] == "clip:failmode-tiny-clip/random-init-seed0" and modes["k"] == 3
    assert sum(c["n_seed_failures"] for c in modes["classes"]) == len(seed)
    assert all(sum(m["count"] for m in c["modes"]) <= c["n_seed_failures"] for c in modes["classes"])
    report = (a.parent / "report.md").read_text()
    assert report.count("\n| ") == 1 + len({r["label"] for r in rows})  # header + one row per class with failures
    import pyarrow.parquet as pq

    table = pq.read_table(next((a.parent / "failure_dataset" / "data").glob("failures-fake-net-v1/debug-*.parquet")))
    ds_rows = table.to_pylist()
    assert [r["image_id"] for r in ds_rows] == [r["image_id"] for r in rows]
    assert all((r["context"] is None) == (r["half"] == "heldout") for r in ds_rows)


def test_clip_batch_matches_open_clip_preprocess(mined, tiny_clip):
    """The fast uint8 path gives the same pixels as open_clip's own PIL preprocessing (JPEG source)."""
    import torch

    from failmode.data.sources import open_source
    from failmode.images import Preprocess, iter_crops, normalize

    src = open_source(str(mined / "data"))
    prep = Preprocess.from_open_clip(tiny_clip.model, draft=False)
    x = normalize(next(iter_crops(src, [0, 1, 2], prep, device=torch.device("cpu"))), prep)
    ref = torch.stack([tiny_clip.preprocess(src.image(i)) for i in range(3)])
    assert x.shape == ref.shape and torch.allclose(x, ref, atol=1e-5)


def test_template_ensemble_is_normalised_mean(tiny_clip):
    from failmode.mining import ClipAttributor

    t1, t2 = "a photo of a {class_name} {context}.", "a {context} scene with a {class_name}."
    both = ClipAttributor(clip=tiny_clip, features=CPU, templates=[t1, t2]).encode_contexts("cat", CONTEXTS[:2])
    e1 = ClipAttributor(clip=tiny_clip, features=CPU, templates=[t1]).encode_contexts("cat", CONTEXTS[:2])
    e2 = ClipAttributor(clip=tiny_clip, features=CPU, templates=[t2]).encode_contexts("cat", CONTEXTS[:2])
    mean = (e1 + e2) / np.linalg.norm(e1 + e2, axis=1, keepdims=True)
    assert np.allclose(both, mean, atol=1e-5)
    with pytest.raises(ValidationError, match="class_name"):
        ClipAttributor(clip=tiny_clip, features=CPU, templates=["a photo of {context}"])


def test_context_sets_are_encoded_in_one_call_once_and_match_one_class_at_a_time(tiny_clip, monkeypatch):
    import torch

    from failmode.mining import ClipAttributor

    sets = [("cat", CONTEXTS[:3]), ("dog", CONTEXTS[1:]), ("cat", CONTEXTS[:3]), ("ship", [])]
    alone = [ClipAttributor(clip=tiny_clip, features=CPU).encode_contexts(n, c) for n, c in sets]
    att = ClipAttributor(clip=tiny_clip, features=FeatureOptions(device="cpu", batch_size=4))  # 3 + 3 contexts x 5 templates
    calls = []
    real = att.model.encode_text
    monkeypatch.setattr(att.model, "encode_text", lambda t: calls.append(len(t)) or real(t))
    together = att.encode_context_sets(sets)
    assert calls == [4, 4, 4, 3] * 2  # on a CPU one class per call; the duplicate and the empty set cost nothing
    att.device = torch.device("cuda")  # the batch plan on a GPU: full batches across classes
    assert att._text_batches([15, 15]) == [(s, min(s + 4, 30)) for s in range(0, 30, 4)]
    att.device = torch.device("cpu")
    for a, b in zip(together, alone, strict=True):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert together[3].shape == (0, alone[0].shape[1])
    calls.clear()
    assert np.array_equal(att.encode_contexts("dog", CONTEXTS[1:]), together[1]) and calls == []  # from memory


def test_shipped_templates_cover_kinds():
    from failmode.mining.clip_attributor import load_templates

    for kind in ("background", "color"):
        ts = load_templates(None, kind)
        assert ts[0] == "a photo of a {class_name} {context}."
        assert ts[0].format(class_name="car", context="that is bright pink") == "a photo of a car that is bright pink."


# ---- the command line ----

@pytest.fixture
def cli(monkeypatch):
    from failmode import cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMANDS", ("mine", "attribute", "overlap"))
    return cli_mod.main


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    import torch

    from failmode.testing import tiny_clip

    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save(tiny_clip(seed=3).model.state_dict(), path)
    return path


def test_cli_attribute_and_missing_class(cli, capsys, mined, clip_checkpoint, tmp_path):
    base = ["attribute", str(mined / "run"), "--clip-model", "failmode-tiny-clip", "--clip-pretrained",
            str(clip_checkpoint), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert cli([*base, "--vocabulary", str(mined / "voc.json"), "--out", str(tmp_path / "o"), "-k", "2"]) == 0
    modes = json.loads((tmp_path / "o" / "modes.json").read_text())
    assert modes["k"] == 2 and modes["attributor"] == f"clip:failmode-tiny-clip/{clip_checkpoint}"
    assert len(list((tmp_path / "c" / "embeddings").glob("*.npz"))) == 1  # real weights: embeddings cached
    (tmp_path / "v.json").write_text(json.dumps(vocab_doc(drop=(4,))))
    capsys.readouterr()
    rc = cli([*base, "--vocabulary", str(tmp_path / "v.json"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "no contexts for class 4 ('deer')" in err, err


def test_loader_workers_hand_over_one_block_per_batch_with_the_same_pixels(tmp_path):
    """Hybrid and nvJPEG batches cross from the loader workers as one flat shared-memory tensor plus shapes (not one
    shared-memory file per image): the images unpacked are the per-image tensors, and hybrid crops through two
    workers equal the per-image path's."""
    import numpy as np
    import torch

    from failmode.data.sources import open_source
    from failmode.images import Preprocess, _Bytes, _Decoded, decode_full, device_crops, iter_crops, pack, unpack
    from failmode.testing import jpeg_folder

    src = open_source(str(jpeg_folder(tmp_path / "j", 9, unique=3, size=(60, 45), classes=2)))
    idx = np.arange(9)
    for dataset in (_Decoded, _Bytes):
        loader = torch.utils.data.DataLoader(dataset(src, idx, None), batch_size=4, num_workers=2, collate_fn=pack)
        got = []
        for flat, shapes in loader:
            assert flat.dim() == 1 and flat.dtype == torch.uint8 and flat.is_shared()
            assert flat.numel() == sum(int(np.prod(s)) for s in shapes)
            got += unpack(flat, shapes)
        want = [dataset(src, idx, None)[j] for j in idx]
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    prep = Preprocess(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", draft=False,
                      resize=20)
    cpu = torch.device("cpu")
    ref = device_crops([decode_full(src, int(i)) for i in idx], prep, cpu)
    got = torch.cat(list(iter_crops(src, idx, prep, device=cpu, batch_size=4, num_workers=2, decode="hybrid")))
    assert torch.equal(got, ref)


def test_hybrid_and_gpu_decoders_match_cpu_decoder(mined, tiny_clip):
    """Device-side resizing (hybrid) stays within a few grey levels of PIL's; gpu off CUDA is refused."""
    import torch

    from failmode.data.sources import open_source
    from failmode.images import Preprocess, iter_crops

    src = open_source(str(mined / "data"))
    prep = Preprocess.from_open_clip(tiny_clip.model, draft=False)
    cpu = torch.device("cpu")
    ref = torch.cat(list(iter_crops(src, range(10), prep, device=cpu, batch_size=4))).int()
    got = torch.cat(list(iter_crops(src, range(10), prep, device=cpu, batch_size=4, decode="hybrid"))).int()
    assert got.shape == ref.shape == (10, 3, 32, 32)
    assert (got - ref).abs().float().mean() < 0.5 and (got - ref).abs().max() <= 4
    from failmode.errors import UsageError

    with pytest.raises(UsageError, match="--decode gpu decodes JPEGs with nvJPEG on a CUDA device"):
        list(iter_crops(src, range(10), prep, device=cpu, batch_size=4, decode="gpu"))

"""Every common ImageNet layout, aligned by name; duplicate names one way; labels checked; only what is needed read."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from failmode.cli import main
from failmode.data.sources import FlatFolderSource, FolderSource, ParquetSource, WdsSource, open_source
from failmode.data.spec import parse_spec, with_labels
from failmode.errors import UsageError, ValidationError
from failmode.testing import CountingFS, hub_parquet_split, imagenet_layouts
from failmode.vocab.classnames import class_infos, class_names, label_names

CRANES = [134, 517]
MAILLOTS = [638, 639]
FEW = [0, 5, *CRANES, *MAILLOTS]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return imagenet_layouts(tmp_path_factory.mktemp("layouts"), train_per_class=2, val_per_class=3, classes=FEW)


def _bytes(source, i):
    return source.encoded(i)


def test_spec_is_parsed_in_one_place(tmp_path):
    (tmp_path / "d").mkdir()
    assert parse_spec("imagenet-1k").kind == "known" and parse_spec("imagenet-1k").repo == "ILSVRC/imagenet-1k"
    hub = parse_spec("hf:org/name@v1.0.0#cfg")
    assert (hub.kind, hub.repo, hub.revision, hub.config) == ("hub", "org/name", "v1.0.0", "cfg")
    local = parse_spec(f"{tmp_path / 'd'}#cfg")
    assert (local.kind, local.path, local.config) == ("local", tmp_path / "d", "cfg")
    assert parse_spec(f"wds:{tmp_path}").kind == "wds"
    assert parse_spec("org/name", hub_default=True).kind == "hub"  # debug data: a Hub id without the prefix
    (tmp_path / "labels.csv").write_text("file,label\n")
    spec = parse_spec(with_labels(str(tmp_path / "d"), str(tmp_path / "labels.csv")))
    assert spec.labels == tmp_path / "labels.csv" and spec.path == tmp_path / "d"
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        parse_spec("nope")
    with pytest.raises(UsageError, match="labels file .* does not exist"):
        parse_spec(with_labels(str(tmp_path / "d"), str(tmp_path / "missing.csv")))


def test_wnid_imagefolder_is_imagenet(layouts):
    """timm's train.py layout: folders of WordNet ids are ImageNet's classes, names and index order (it used to be
    refused: "vocabulary ... calls class 0 'tench', but ... calls it 'n01440764'")."""
    src = open_source(str(layouts["wnid"]), "val")
    assert isinstance(src, FolderSource) and src.known == "imagenet-1k"
    assert src.class_names == label_names("imagenet-1k")
    assert sorted(set(src.labels.tolist())) == FEW and np.bincount(src.labels)[FEW].tolist() == [3] * len(FEW)
    assert src.ids[0] == "n01440764/ILSVRC2012_val_00000001.JPEG"
    train = open_source(str(layouts["wnid"]), "train")
    assert train.class_names == src.class_names and len(train) == 2 * len(FEW)


def test_class_name_folders_are_aligned_by_name(tmp_path):
    """Folders named by class, listed alphabetically: labels follow ImageNet's index order, not the folders' order
    ("tench" used to become label 890); both cranes and both maillots are there, each its own class."""
    root = imagenet_layouts(tmp_path, train_per_class=0, val_per_class=1, layouts=("wnid", "names"))
    names, wnid = open_source(str(root["names"] / "val")), open_source(str(root["wnid"] / "val"))
    assert names.known == "imagenet-1k" and names.class_names == label_names("imagenet-1k")
    assert names.labels.tolist() == list(range(1000)) == wnid.labels.tolist()
    assert [_bytes(names, i) for i in range(1000)] == [_bytes(wnid, i) for i in range(1000)]
    assert names.ids[134] == "crane/ILSVRC2012_val_00000135.JPEG"
    assert names.ids[517] == "crane, construction crane/ILSVRC2012_val_00000518.JPEG"
    assert names.ids[0] == "tench/ILSVRC2012_val_00000001.JPEG"


def test_flat_folder_with_a_labels_file(layouts, tmp_path):
    """Kaggle's `LOC_val_solution.csv` as is (found beside the folder), and a `file,label` CSV by --labels."""
    flat = open_source(str(layouts["flat"]), "val")
    wnid = open_source(str(layouts["wnid"]), "val")
    assert isinstance(flat, FlatFolderSource) and flat.known == "imagenet-1k"
    assert flat.labels.tolist() == wnid.labels.tolist()
    assert [_bytes(flat, i) for i in range(len(flat))] == [_bytes(wnid, i) for i in range(len(wnid))]
    # a `file,label` CSV (WordNet ids, any case), given as --labels (the spec's `?labels=`)
    infos = class_infos("imagenet-1k")
    rows = ["file,label"] + [f"{Path(i).name},{infos[int(y)].id.upper()}" for i, y in zip(flat.ids, flat.labels)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    spec = with_labels(str(layouts["flat"] / "val"), str(tmp_path / "mine.csv"))
    by_name = open_source(spec)
    assert by_name.class_names == label_names("imagenet-1k") and by_name.labels.tolist() == wnid.labels.tolist()
    (tmp_path / "bad.csv").write_text("file,label\nnot-there.JPEG,tench\n")
    with pytest.raises(ValidationError, match="image 'not-there.JPEG' is not in"):
        open_source(with_labels(str(layouts["flat"] / "val"), str(tmp_path / "bad.csv")))


def _class_label_dataset(root: Path, names: list[str], labels: list[int]) -> Path:
    import datasets
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8), (y % 256, 0, 0)) for y in labels],
                                     "label": labels}, features=feats)
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(root / "data" / "validation-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("spelling", ["synonyms", "prompt names", "upper case"])
def test_duplicate_names_have_one_spelling_and_copies_match_either_way(tmp_path, spelling):
    """ImageNet's two "crane" and two "maillot": one disambiguated spelling (the later one with its synonyms) for
    ClassLabel and vocabulary alike; a user's copy spelled apart another way is matched to it."""
    from failmode.vocab import load_vocabulary

    ours = label_names("imagenet-1k")
    assert len(set(ours)) == 1000 and len(set(class_names("imagenet-1k"))) == 1000
    assert [ours[i] for i in CRANES + MAILLOTS] == ["crane", "crane, construction crane", "maillot",
                                                     "maillot, tank suit"]
    theirs = list(ours)
    if spelling == "prompt names":
        theirs[134], theirs[517], theirs[638], theirs[639] = "crane bird", "construction crane", "maillot", "tank suit"
    elif spelling == "upper case":
        theirs = [n.upper().replace(" ", "_") for n in ours]
    src = open_source(str(_class_label_dataset(tmp_path, theirs, [0, 134, 517, 638, 639])), "validation")
    assert src.class_names == ours and src.labels.tolist() == [0, 134, 517, 638, 639]
    load_vocabulary("imagenet-1k").check_classes(src.class_names, "copy")  # what build checks before mining


def test_case_or_space_differences_with_a_vocabulary_of_its_own_are_refused_in_one_line():
    """Not a known dataset's class list: names must be spelled as the vocabulary does (they used to pass this check
    and fail after mining, when the plan compared the spellings)."""
    from failmode.vocab.vocabulary import from_dict

    vocab = from_dict({"format": "failmode-vocabulary/1", "dataset": "shapes", "kind": "background", "version": "1",
                       "template": "a photo of a {class_name} {context}", "provenance": {},
                       "classes": [{"index": 0, "name": "red square", "contexts": ["in a desert"]},
                                   {"index": 1, "name": "blue circle", "contexts": ["in a desert"]}]})
    vocab.check_classes(["red square", "blue circle"], "shapes")
    with pytest.raises(ValidationError, match=r"shapes spells class 1 'Blue  Circle', the vocabulary 'blue circle'"):
        vocab.check_classes(["red square", "Blue  Circle"], "shapes")
    with pytest.raises(ValidationError, match="calls it 'triangle'"):
        vocab.check_classes(["red square", "triangle"], "shapes")


def _relabel(path: Path, labels: list[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("label"), table.schema.field("label"),
                             pa.array(labels, pa.int64()))
    pq.write_table(table, path)


@pytest.mark.parametrize("split,value", [("validation", -1), ("train", 7)])
def test_labels_outside_the_class_range_are_named_before_any_model_loads(tmp_path, capsys, split, value):
    """A label outside the ClassLabel range, in the eval split (it used to say "class -1 has 1 images") or the
    train split (a ValueError): one line naming it, exit 1, nothing written, no model loaded."""
    names = ["red", "green", "blue"]
    root = tmp_path / "ds"
    for s in ("train", "validation"):
        _class_label_dataset(root, names, [0, 1, 2] * 4)
        (root / "data" / "validation-00000-of-00001.parquet").rename(root / "data" / f"{s}-00000-of-00001.parquet")
    bad = [0, 1, 2] * 4
    bad[5] = value
    _relabel(root / "data" / f"{split}-00000-of-00001.parquet", bad)
    out = tmp_path / "out"
    code = main(["mine", "--model", "test_convnext", "--weights", str(tmp_path / "no-such-weights.pt"),
                 "--dataset", str(root), "--split", "validation", "--head", "train", "--train-per-class", "2",
                 "--debug-per-class", "2", "--out", str(out), "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failmode mine:")]
    assert code == 1 and len(err) == 1, err
    assert "1 image(s) have a label outside the class range 0..2" in err[0] and f"has label {value}" in err[0]
    assert not out.exists()


def _debug_folder(root: Path, names: list[str], config: str, labels: list[int]) -> Path:
    """A finalized debug dataset of one config (tiny images of the given labels), as `evaluate` reads one."""
    from PIL import Image

    from failmode.dataset.writer import write_shard
    from failmode.testing import finalize_configs

    samples = [{"image": Image.new("RGB", (8, 8)), "label": y, "class_name": names[y], "context": "ctx",
                "context_kind": "background", "prompt": "p", "seed": i, "generator": "test",
                "source_model": config} for i, y in enumerate(labels)]
    write_shard(root, config, "train", 0, 1, samples, class_names=names)
    finalize_configs(root, names, {config: "model"})
    return root


def test_the_models_own_head_refuses_a_class_order_of_its_own(tmp_path, capsys):
    """`evaluate` with a 1,000-class model's own head on 1,000 classes that are not ImageNet's: one line, before any
    feature is extracted (it used to score against those labels with no warning)."""
    names = [f"c{i:03d}" for i in range(1000)]
    root = tmp_path / "ds"
    for s in ("train", "validation"):
        _class_label_dataset(root, names, [0, 1] * 4)
        (root / "data" / "validation-00000-of-00001.parquet").rename(root / "data" / f"{s}-00000-of-00001.parquet")
    _debug_folder(tmp_path / "debug", names, "test_convnext", [0, 1, 0, 1])
    out = tmp_path / "run"
    code = main(["evaluate", "--model", "test_convnext", "--weights", "none", "--dataset", str(root),
                 "--debug-data", str(tmp_path / "debug"), "--train-per-class", "2", "--debug-per-class", "2",
                 "--out", str(out), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                 "--baseline-config", "none", "--random-config", "none"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failmode evaluate:")]
    assert code == 2 and len(err) == 1, err
    assert "matches no known class order" in err[0] and "own imagenet-1k head" in err[0]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))
    assert not (out / "results.jsonl").exists() or (out / "results.jsonl").read_text() == ""


def _wds_split(root: Path, samples: list[tuple[bytes, int]], per_shard: int, class_names: list[str]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for k in range(0, len(samples), per_shard):
        path = root / f"train-{k // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for j, (data, y) in enumerate(samples[k:k + per_shard], start=k):
                for ext, payload in (("jpg", data), ("cls", str(y).encode())):
                    info = tarfile.TarInfo(f"{j:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(path)
    (root / "_info.json").write_text(json.dumps({"splits": {"train": {"num_samples": len(samples)}},
                                                 "class_names": class_names}))
    return shards


def test_webdataset_tars_with_cls_are_read_in_place(layouts, tmp_path):
    """Tars with `cls`, class list in `_info.json` (here WordNet ids): indexed, images read by offset (no decoded
    list), labels aligned; the same samples webdataset itself reads."""
    import webdataset as wds

    folder = open_source(str(layouts["wnid"]), "val")
    ids = [c.id for c in class_infos("imagenet-1k")]
    local = [ids[int(y)] for y in sorted(set(folder.labels.tolist()))]
    samples = [(folder.encoded(i), local.index(ids[int(y)])) for i, y in enumerate(folder.labels)]
    _wds_split(tmp_path / "wds", samples, 7, local)
    src = open_source(f"wds:{tmp_path / 'wds'}", "train")
    assert isinstance(src, WdsSource) and not hasattr(src, "_images") and src.known == "imagenet-1k"
    assert src.labels.tolist() == folder.labels.tolist()
    assert [src.encoded(i) for i in range(len(src))] == [folder.encoded(i) for i in range(len(folder))]
    theirs = list(wds.WebDataset([str(p) for p in sorted((tmp_path / "wds").glob("*.tar"))], shardshuffle=False,
                                 empty_check=False))
    assert [s["jpg"] for s in theirs] == [src.encoded(i) for i in range(len(src))]
    one = open_source(f"wds:{tmp_path / 'wds'}", "train", per_class=1)  # shards in a seeded order, one per class
    assert sorted(one.labels.tolist()) == FEW and set(one.ids) <= set(src.ids)
    # the Hub's webdataset copies: the same code through fsspec, reading tar headers and the images taken only
    from failmode.data.sources import Quota, open_wds_split

    fs = CountingFS()
    hub = open_wds_split(fs, str(tmp_path / "wds"), "train", "hub-wds:org/name@main", Quota(0, 1, 0))
    assert hub is not None and hub.ids == one.ids and [hub.encoded(i) for i in range(len(hub))] == [
        one.encoded(i) for i in range(len(one))]
    tars = sum(p.stat().st_size for p in (tmp_path / "wds").glob("*.tar"))
    images = sum(len(one.encoded(i)) for i in range(len(one)))
    assert fs.read < images + 0.5 * tars, (fs.read, images, tars)  # tar headers of the shards read + images
    assert open_wds_split(CountingFS(), str(tmp_path), "train", "hub-wds:none") is None  # no _info.json: not wds
    folder_one = open_source(str(layouts["wnid"]), "val", per_class=1)  # listed whole: the same stratified take
    assert sorted(folder_one.labels.tolist()) == FEW and folder_one.split_ident == folder.split_ident


def test_a_few_per_class_read_a_few_percent_through_fsspec(tmp_path):
    """3 images per class of a 40-shard, shuffled, Hub-layout parquet split, read through an fsspec filesystem (what
    HfFileSystem is): files are read in a seeded order until every class has its quota, so <= 10 % of the split's
    bytes are read (it used to download and copy the whole split), nothing is written, and the chosen ids are
    recorded (seeded: mining and evaluation take the same images)."""
    from failmode.data.sources import Quota, open_parquet_split
    from failmode.data.splits import make_splits

    names = [f"class {i}" for i in range(100)]
    files = hub_parquet_split(tmp_path / "hub", class_names=names, per_class=400, shards=40, size=16)
    total = sum(p.stat().st_size for p in files)
    before = sorted(tmp_path.rglob("*"))

    def take(seed: int) -> tuple[ParquetSource, CountingFS]:
        fs = CountingFS()
        src = open_parquet_split(fs, str(tmp_path / "hub"), "train", None, "hub:org/name@main:train",
                                 take=Quota(0, 3, seed))
        assert isinstance(src, ParquetSource)
        return src, fs

    src, fs = take(0)
    assert np.bincount(src.labels, minlength=100).tolist() == [3] * 100 and src.class_names == names
    assert all(src.encoded(i) for i in range(len(src))) and fs.read <= 0.10 * total, (fs.read, total)
    splits = make_splits(src.labels, np.repeat(np.arange(100), 5), train_per_class=3, debug_per_class=3, seed=0,
                         train_ids=src.ids)
    assert splits.train.tolist() == list(range(300)) and splits.to_json()["train_ids"] == src.ids
    assert src.ids[0].startswith("train-") and ".parquet:" in src.ids[0]
    assert take(0)[0].ids == src.ids and take(1)[0].ids != src.ids
    assert sorted(tmp_path.rglob("*")) == before
    whole = open_source(str(tmp_path / "hub"), "train", per_class=3)  # a local copy: the same choice, in place
    assert whole.ids == src.ids and whole.labels.tolist() == src.labels.tolist()


def test_local_parquet_is_read_in_place(tmp_path, monkeypatch):
    """A local parquet folder is memory-mapped where it is: no Arrow copy in the datasets cache."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    names = [f"class {i}" for i in range(10)]
    hub_parquet_split(tmp_path / "ds", class_names=names, per_class=5, shards=3, rows_per_group=4)
    src = open_source(str(tmp_path / "ds"), "train")
    assert isinstance(src, ParquetSource) and len(src) == 50 and src.image(49).size == (8, 8)
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").rglob("*.arrow"))


@pytest.mark.slow
def test_imagenet_build_and_evaluate_on_every_layout(tmp_path):
    """The 1,000-class chain with the real ImageNet class list (both cranes and both maillots have images): `failmode
    build` (a preset derived from imagenet-bg-debug) then `failmode evaluate` with the model's own head, on a wnid
    ImageFolder, on class-name folders (listed alphabetically) and on a flat folder + LOC_val_solution.csv: the same
    debug images and the same results. (The wnid folder used to be refused; class-name folders scored against
    alphabetical labels; the second crane failed after mining.)"""
    from failmode.io import read_jsonl
    from failmode.testing import derive_preset, save_tiny_classifier, save_tiny_clip, save_tiny_pipeline

    models = {"weights": save_tiny_classifier(tmp_path / "m" / "classifier.safetensors", "test_efficientnet"),
              "clip": save_tiny_clip(tmp_path / "m" / "clip.pt"), "pipeline": save_tiny_pipeline(tmp_path / "m" / "sd")}
    data = imagenet_layouts(tmp_path / "data", train_per_class=2, val_per_class=3, classes=FEW)
    results, images = {}, {}
    for layout, root in data.items():
        preset = derive_preset("imagenet-bg-debug", tmp_path / f"{layout}.json", root, models, head=None,
                               train_per_class=2, debug_per_class=2, baseline=False)
        doc = json.loads(preset.read_text())
        doc["dataset"].update(split="val", train_split="train")
        doc["models"][0]["image_size"] = 32
        preset.write_text(json.dumps(doc))
        out, cache = tmp_path / f"{layout}-ds", str(tmp_path / "cache")
        assert main(["build", str(preset), "--out", str(out), "--device", "cpu", "--cache-dir", cache]) == 0
        assert main(["evaluate", "--model", "test_efficientnet", "--weights", str(models["weights"]), "--dataset",
                     str(root), "--eval-split", "val", "--train-per-class", "2", "--debug-per-class", "2",
                     "--debug-data", str(out), "--out", str(tmp_path / f"{layout}-eval"), "--epochs", "20",
                     "--image-size", "32", "--device", "cpu", "--cache-dir", cache, "--baseline-config", "none"]) == 0
        records = read_jsonl(tmp_path / f"{layout}-eval" / "results.jsonl")
        results[layout] = [(r["setting"], r["config"], r["test"], r["seed"], r["heldout"], r["n_train"], r["n_test"],
                            r["n_seed"], r["n_heldout"], r["n_debug"]) for r in records]
        import pyarrow.parquet as pq

        table = pq.read_table(sorted((out / "data" / "test_efficientnet").glob("*.parquet"))[0],
                              columns=["label", "class_name", "prompt"])
        images[layout] = table.to_pylist()
        manifest = json.loads((out / "failmode.json").read_text())
        assert manifest["class_names"] == label_names("imagenet-1k")
    assert results["wnid"] == results["names"] == results["flat"]
    assert images["wnid"] == images["names"] == images["flat"]
    assert [r[:2] for r in results["wnid"]] == [("original", None), ("retrain", None), ("debug", "test_efficientnet"),
                                                ("debug", "random-context")]
    assert results["wnid"][0][6] == len(FEW)  # one test image per class
    labels = {row["label"] for row in images["wnid"]}
    assert labels <= set(FEW) and {row["class_name"] for row in images["wnid"] if row["label"] == 517} <= {
        "crane, construction crane"}


def test_mining_and_evaluation_take_the_same_training_images(layouts, tmp_path, capsys):
    """The training images mining chose are recorded in splits.json (`train_ids`); `evaluate --failures` checks that
    it takes the same ones, in one line before any feature is extracted."""
    common = ["--weights", "none", "--dataset", str(layouts["wnid"]), "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache"), "--image-size", "32"]
    mined = tmp_path / "mined"
    assert main(["mine", "--model", "test_efficientnet", *common, "--split", "val", "--head", "train",
                 "--train-per-class", "2", "--debug-per-class", "2", "--out", str(mined)]) == 0
    recorded = json.loads((mined / "splits.json").read_text())
    assert len(recorded["train_ids"]) == 2 * len(FEW) and recorded["train_ids"][0].startswith("n01440764/")
    debug = _debug_folder(tmp_path / "debug", label_names("imagenet-1k"), "test_efficientnet", FEW)

    def evaluate(per_class: str, out: str) -> int:
        return main(["evaluate", "--model", "test_efficientnet", *common, "--eval-split", "val", "--head", "train",
                     "--train-per-class", per_class, "--debug-per-class", "2", "--failures",
                     str(mined / "failures.parquet"), "--debug-data", str(debug), "--out", str(tmp_path / out),
                     "--baseline-config", "none", "--random-config", "none", "--epochs", "5"])

    capsys.readouterr()
    assert evaluate("1", "other") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failmode evaluate:")]
    assert len(err) == 1 and "trained on other images than this evaluation takes" in err[0], err
    assert not (tmp_path / "other" / "results.jsonl").exists()
    assert evaluate("2", "same") == 0 and (tmp_path / "same" / "results.jsonl").read_text().count("\n") == 3

"""Bad input is refused where it enters, in one line with a non-zero exit, before any model loads or any image
renders; nothing is left behind (issue: bad input and faults)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from failmode.cli import main
from failmode.vocab import load_vocabulary


def _modes_doc() -> dict:
    """A valid failmode-modes/1 document for CIFAR-10 with contexts of the shipped vocabulary."""
    vocab = load_vocabulary("cifar10", "background")
    classes = [{"label": c.index, "class_name": c.name, "prompt_name": c.prompt_name, "n_seed_failures": 2,
                "modes": [{"context": ctx, "count": 2 - j} for j, ctx in enumerate(c.contexts[:2])]}
               for c in vocab.classes[:3]]
    return {"format": "failmode-modes/1", "source_model": "resnet18", "attributor": "clip:test",
            "vocabulary": {"dataset": "cifar10", "kind": "background", "version": vocab.version}, "classes": classes}


def _one_line_error(capsys, argv: list[str], match: str) -> str:
    assert main(argv) in (1, 2)  # 2: a usage error, 1: bad data
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert match in err, err
    return err


BAD_MODES = {
    "label out of range": (lambda d: d["classes"][0].update(label=42), "label 42 is not a class of cifar10"),
    "negative label": (lambda d: d["classes"][0].update(label=-1), "label must be an integer >= 0, not -1"),
    "repeated label": (lambda d: d["classes"][1].update(label=0, class_name="airplane"), "label 0 is listed twice"),
    "numeric context": (lambda d: d["classes"][0]["modes"][0].update(context=5), "context must be a non-empty string, not 5"),
    "empty context": (lambda d: d["classes"][0]["modes"][0].update(context=""), "context must be a non-empty string"),
    "unknown context": (lambda d: d["classes"][0]["modes"][0].update(context="on the moon"),
                        "context 'on the moon' is not in the cifar10 background vocabulary"),
    "class name of another dataset": (lambda d: d["classes"][2].update(class_name="apple"),
                                      "label 2 is 'bird' in cifar10, not 'apple'"),
    "no classes": (lambda d: d.update(classes=[]), "'classes' must be a non-empty list"),
    "top-level list": (lambda d: None, "expected a JSON object (a failmode-modes/1 file), got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODES))
def test_generate_refuses_bad_modes_files_before_planning(case, tmp_path, capsys):
    change, message = BAD_MODES[case]
    doc = _modes_doc()
    if case == "top-level list":
        doc = [doc]
    else:
        change(doc)
    modes = tmp_path / "modes.json"
    modes.write_text(json.dumps(doc))
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["generate", "--modes", str(modes), "--plan-only", "--out", str(out)], message)
    assert str(modes) in err  # names the file
    assert not out.exists()  # nothing planned, nothing written


def test_generate_plans_a_valid_modes_file(tmp_path):
    modes = tmp_path / "modes.json"
    modes.write_text(json.dumps(_modes_doc()))
    assert main(["generate", "--modes", str(modes), "--plan-only", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "generation" / "plan.parquet").is_file()


def test_weights_and_head_files_that_are_not_tensors_are_one_line(tmp_path):
    from failmode.errors import ValidationError
    from failmode.head import LinearHead
    from failmode.models.classifier import create_classifier

    js = tmp_path / "weights.json"
    js.write_text('{"lr": 0.1}')
    renamed = tmp_path / "weights.safetensors"
    renamed.write_text('{"lr": 0.1}')
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"\x80\x02garbage")
    for path in (js, renamed):
        with pytest.raises(ValidationError, match="a JSON file, not classifier weights"):
            create_classifier("test_efficientnet", str(path))
    with pytest.raises(ValidationError, match="weights.pt: not readable as classifier weights"):
        create_classifier("test_efficientnet", str(garbage))
    with pytest.raises(ValidationError, match="a JSON file, not a linear head"):
        LinearHead.load(js)


def test_vocabulary_files_that_are_not_utf8_or_are_folders_are_one_line(tmp_path, capsys):
    modes = tmp_path / "modes.json"
    modes.write_text(json.dumps(_modes_doc()))
    latin = tmp_path / "vocab.json"
    latin.write_bytes('{"dataset": "cifar10", "note": "caf\xe9"}'.encode("latin-1"))
    folder = tmp_path / "folder.json"
    folder.mkdir()
    base = ["generate", "--modes", str(modes), "--plan-only", "--out", str(tmp_path / "out"), "--vocab"]
    _one_line_error(capsys, base + [str(latin)], "not UTF-8 text (byte b'\\xe9'")
    _one_line_error(capsys, base + [str(folder)], "Is a directory")


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    """A CIFAR-10 local dataset, a tiny classifier on disk and a finalized debug dataset (3 configs, 8 shards)."""
    from failmode.testing import CIFAR10_CLASSES, save_tiny_classifier, write_debug_dataset, write_local_dataset

    root = tmp_path_factory.mktemp("finalized")
    return {"data": write_local_dataset(root / "data", "cifar10", {"train": 3, "test": 4}, class_names=CIFAR10_CLASSES),
            "weights": save_tiny_classifier(root / "classifier.safetensors"),
            "debug": write_debug_dataset(root / "debug")}


def _evaluate(finalized: dict, debug: Path, out: Path) -> list[str]:
    return ["evaluate", "--model", "test_efficientnet", "--weights", str(finalized["weights"]), "--head", "train",
            "--dataset", str(finalized["data"]), "--eval-split", "test", "--train-per-class", "2",
            "--debug-per-class", "2", "--debug-data", str(debug), "--config", "tiny-model", "--epochs", "5",
            "--device", "cpu", "--out", str(out), "--cache-dir", str(out.parent / "cache")]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_evaluate_push_and_regenerate_refuse_a_folder_an_interrupted_build_left(finalized, tmp_path, capsys):
    """What a kill leaves (some shards, no failmode.json) is not a dataset: one line, exit 1, no results line."""
    broken = _copy(finalized["debug"], tmp_path / "killed")
    (broken / "failmode.json").unlink()
    shards = sorted((broken / "data" / "tiny-model").glob("*.parquet"))
    for shard in shards[1:]:
        shard.unlink()
    out = tmp_path / "eval"
    left = len(list((broken / "data").glob("*/*.parquet")))
    _one_line_error(capsys, _evaluate(finalized, broken, out), f"not a finalized failmode dataset ({left} shard(s) "
                    "but no failmode.json")
    assert not (out / "results.jsonl").exists()
    _one_line_error(capsys, ["push", str(broken), "--repo", "org/name"], "not a finalized failmode dataset")
    from failmode.errors import ValidationError
    from failmode.generation.regenerate import regenerate_shards

    with pytest.raises(ValidationError, match="not a finalized failmode dataset"):
        regenerate_shards(broken, ["tiny-model/train-00000-of-00008"], tmp_path / "regen")


def test_evaluate_refuses_a_config_whose_shards_differ_from_the_manifest(finalized, tmp_path, capsys):
    tampered = _copy(finalized["debug"], tmp_path / "tampered")
    shard = sorted((tampered / "data" / "tiny-model").glob("*.parquet"))[2]
    shard.write_bytes(sorted((tampered / "data" / "tiny-model").glob("*.parquet"))[1].read_bytes())
    out = tmp_path / "eval"
    _one_line_error(capsys, _evaluate(finalized, tampered, out), f"{shard.name} differs from failmode.json")
    assert not (out / "results.jsonl").exists()
    stray = _copy(finalized["debug"], tmp_path / "stray")
    extra = stray / "data" / "tiny-model" / "train-00000-of-00002.parquet"
    extra.write_bytes(b"")
    _one_line_error(capsys, _evaluate(finalized, stray, out), "train-00000-of-00002.parquet is not in failmode.json")
    assert main(_evaluate(finalized, finalized["debug"], out)) == 0  # the finalized folder itself is read
    assert len((out / "results.jsonl").read_text().splitlines()) >= 2


def _mine(data: Path, out: Path, *extra: str) -> list[str]:
    return ["mine", "--model", "test_efficientnet", "--weights", "none", "--head", "train", "--dataset", str(data),
            "--train-per-class", "2", "--debug-per-class", "2", "--image-size", "32", "--device", "cpu",
            "--out", str(out), "--cache-dir", str(out.parent / "cache"), *extra]


def test_an_image_folder_without_split_folders_is_not_two_splits(tmp_path, capsys):
    from failmode.testing import jpeg_folder

    flat = jpeg_folder(tmp_path / "flat", 40, unique=4, size=(40, 30), classes=4)
    out = tmp_path / "mined"
    _one_line_error(capsys, _mine(flat, out, "--split", "test", "--train-split", "train"),
                    "without split folders")
    _one_line_error(capsys, _mine(flat, out), "split 'train' would be the same images")  # the default train split
    assert not out.exists()
    for split in ("train", "test"):
        jpeg_folder(tmp_path / "split" / split, 40, unique=4, size=(40, 30), classes=4, seed=1 if split == "test" else 0)
    _one_line_error(capsys, _mine(tmp_path / "split", out, "--split", "validation"),
                    "no split folder 'validation' (split folders: test, train)")
    _one_line_error(capsys, _mine(tmp_path / "split", out, "--split", "train", "--train-split", "train"),
                    "the train split and the evaluation split are the same images")
    assert main(_mine(tmp_path / "split", out, "--split", "test")) == 0
    assert (out / "failures.parquet").is_file()


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "not an image"])
def test_a_corrupt_image_file_is_named_in_one_line(damage, tmp_path, capsys):
    from failmode.testing import jpeg_folder

    for split in ("train", "test"):
        jpeg_folder(tmp_path / "data" / split, 40, unique=4, size=(40, 30), classes=4)
    folder = tmp_path / "data" / "test" / "class002"
    for bad in folder.iterdir():  # every image of one class, so the debug split has some
        data = bad.read_bytes()
        bad.write_bytes({"truncated": data[: len(data) // 3], "zero bytes": b"",
                         "not an image": b"<html>no</html>"}[damage])
    out = tmp_path / "mined"
    err = _one_line_error(capsys, _mine(tmp_path / "data", out, "--split", "test", "--workers", "2"),
                          f"{folder}/")
    assert ".jpg: cannot decode the image" in err
    assert "Original Traceback" not in err and "DataLoader" not in err
    assert not (out / "failures.parquet").exists()


def test_corrupt_image_bytes_in_a_parquet_dataset_name_the_source_and_row(tmp_path, capsys):
    import pyarrow.parquet as pq

    from failmode.testing import CIFAR10_CLASSES, write_local_dataset

    data = write_local_dataset(tmp_path / "data", "cifar10", {"train": 3, "test": 4}, class_names=CIFAR10_CLASSES)
    path = data / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    column = table.column("img").to_pylist()
    column = [{"bytes": c["bytes"][:40], "path": None} for c in column]  # every row truncated
    pq.write_table(table.set_column(table.schema.get_field_index("img"), "img",
                                    __import__("pyarrow").array(column, type=table.schema.field("img").type)), path)
    err = _one_line_error(capsys, _mine(data, tmp_path / "mined", "--split", "test"), "): cannot decode the image")
    assert re.search(r"parquet:\S+: image \d+ \(id \d+\): cannot decode the image \(40 bytes\)", err), err


def _files(root: Path) -> dict[str, str]:
    from failmode.io import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_9_during_failmode_build_then_rerun_gives_the_same_folder_every_file(tmp_path):
    """`failmode build` killed with SIGKILL in generation, then run again, leaves exactly the files (bytes and names)
    of an uninterrupted build: shards, wds, card, manifest, plan and the per-shard generation stats."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from failmode.testing import tiny_build_preset

    preset = tiny_build_preset(tmp_path)

    logs = tmp_path / "logs"
    logs.mkdir()

    def build(out: Path) -> subprocess.Popen:
        log = (logs / f"{out.name}-{len(list(logs.iterdir()))}.log").open("wb")
        return subprocess.Popen([sys.executable, "-m", "failmode", "build", str(preset), "--out", str(out),
                                 "--work", str(out.parent / f"{out.name}.work"), "--device", "cpu",
                                 "--cache-dir", str(tmp_path / f"cache-{out.name}")],
                                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ})

    def finished(proc: subprocess.Popen) -> bool:
        code = proc.wait(timeout=300)
        assert code == 0, [p.read_text()[-2000:] for p in sorted(logs.iterdir())][-1]
        return True

    ref = tmp_path / "ref"
    assert finished(build(ref))
    expected = _files(ref)
    assert any(k.startswith("generation/stats/") for k in expected) and "failmode.json" in expected
    killed = tmp_path / "killed"
    proc = build(killed)
    deadline = time.monotonic() + 240
    while not list((killed / "generation" / "stats").rglob("*.json")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "failmode.json").exists()  # killed before the end
    assert finished(build(killed))
    got = _files(killed)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []


def test_overlap_families_inline_json_and_a_list_are_named(tmp_path):
    from failmode.errors import ValidationError
    from failmode.mining.overlap import load_families

    assert load_families('{"vit_": "ViT"}') == {"vit_": "ViT"}
    with pytest.raises(ValidationError, match=r"--families '\[1,2\]': families map model names .* \(got list\)"):
        load_families("[1,2]")
    with pytest.raises(ValidationError, match="invalid JSON"):
        load_families("{vit_: ViT}")
    path = tmp_path / "fam.json"
    path.write_text('{"resnet": 3}')
    with pytest.raises(ValidationError, match="fam.json: families map .* \\(got non-string family names\\)"):
        load_families(path)


def test_duplicate_contexts_are_named_once():
    from failmode.vocab.vocabulary import VocabClass, _class_problems

    c = VocabClass(0, "airplane", "airplane", ["in a desert", "in a desert", "in a desert", "in deserts"])
    problems = [p for p in _class_problems("background", c, 1, None) if "desert" in p]
    assert problems == ["context 'in a desert' is listed more than once",
                        "contexts 'in a desert' and 'in deserts' are duplicates after normalisation"]


def test_discover_refuses_bad_parameters_and_classes_before_loading_anything(tmp_path, capsys, monkeypatch):
    import failmode.commands._discovery as setup

    def refuse(*a, **kw):
        raise AssertionError("the world was set up before the arguments were checked")

    monkeypatch.setattr(setup, "setup_from_args", refuse)
    _one_line_error(capsys, ["discover", "--world", "concentrated", "--max-clusters", "0", "--out", str(tmp_path)],
                    "max_clusters must be >= 1, got 0")
    _one_line_error(capsys, ["discover", "--world", "concentrated", "--classes", "T-shirt/top", "--out",
                             str(tmp_path)], "unknown class(es) T-shirt/top (known: t-shirt, trouser,")


def test_on_bad_image_skip_leaves_corrupt_images_out_and_records_them(tmp_path, capsys, caplog):
    from failmode.mining.failures import read_failures
    from failmode.testing import jpeg_folder

    for split in ("train", "test"):
        jpeg_folder(tmp_path / "data" / split, 40, unique=4, size=(40, 30), classes=4, seed=split == "test")
    damaged = sorted((tmp_path / "data" / "test" / "class002").iterdir()) + [  # 5 in the debug split, 5 in test
        sorted((tmp_path / "data" / "train" / "class001").iterdir())[0]]
    for path in damaged:
        path.write_bytes(path.read_bytes()[:200])
    out = tmp_path / "mined"
    args = _mine(tmp_path / "data", out, "--split", "test", "--train-per-class", "10", "--debug-per-class", "5")
    _one_line_error(capsys, args, "cannot decode the image")  # the default stops, naming the file
    assert main(args + ["--on-bad-image", "skip"]) == 0
    _, meta = read_failures(out / "failures.parquet")
    bad = meta["bad_images"]
    assert bad["policy"] == "skip" and bad["skipped"] == 6  # the train image and the 5 of the debug split
    assert set(bad["examples"]) <= {str(p) for p in damaged} and str(damaged[-1]) in bad["examples"]
    assert meta["n_debug"] == 4 * 5 - 5
    assert any("--on-bad-image skip" in r.getMessage() for r in caplog.records)


def test_evaluate_on_bad_image_skip_counts_what_it_left_out(finalized, tmp_path, capsys):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from failmode.io import read_jsonl

    data = shutil.copytree(finalized["data"], tmp_path / "data")
    path = data / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    rows = table.column("img").to_pylist()
    labels = table.column("label").to_pylist()
    rows = [{"bytes": r["bytes"][:30], "path": None} if y == 3 else r for r, y in zip(rows, labels)]  # class 3
    column = table.schema.get_field_index("img")
    pq.write_table(table.set_column(column, "img", pa.array(rows, type=table.schema.field("img").type)), path)
    out = tmp_path / "eval"
    args = _evaluate({**finalized, "data": data}, finalized["debug"], out)
    _one_line_error(capsys, args, "cannot decode the image")
    assert not (out / "results.jsonl").exists()
    assert main(args + ["--on-bad-image", "skip"]) == 0
    records = read_jsonl(out / "results.jsonl")
    assert records and all(r["bad_images_skipped"] == 4 for r in records)  # 2 debug-split + 2 test images
    assert all(r["n_test"] == 10 * 2 - 2 for r in records)

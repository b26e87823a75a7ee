"""The evaluate package end to end on a tiny offline world: CLI, results log, resume, sweeps, collective, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from failmode.cli import main
from failmode.errors import ValidationError
from failmode.evaluate.results import KEY_FIELDS, ResultsLog, markdown_table, result_key
from failmode.testing import finalize_configs, synthetic_images

# ImageNet-1k's classes, as the tiny timm models have 1000 outputs (the model's own head needs its class order)
NAMES = __import__("failmode.vocab.classnames", fromlist=["label_names"]).label_names("imagenet-1k")
USED = 4  # classes that have images


def _ds(n: int, seed: int, names: list[str] = NAMES):
    import datasets

    images, labels = synthetic_images(n, size=32, seed=seed, num_classes=USED)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)


def _write_config(root: Path, config: str, n: int, seed: int, names: list[str] = NAMES) -> None:
    """One config of a debug dataset, written by the project's dataset writer (parquet + webdataset shard)."""
    from failmode.dataset.writer import write_shard

    images, labels = synthetic_images(n, size=32, seed=seed, num_classes=USED)
    samples = [{"image": im, "label": y, "class_name": names[y], "context": f"ctx{(i // USED) % 2}",  # ctx0 first
                "context_kind": "background", "prompt": f"a photo of a {names[y]}", "seed": i, "generator": "test",
                "source_model": config} for i, (im, y) in enumerate(zip(images, labels))]
    stats = write_shard(root, config, "train", 0, 1, samples, class_names=names)
    assert not stats.get("rejected")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny ImageNet-shaped dataset (train/validation) and a debug dataset folder with several configs."""
    import datasets

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("world")
    datasets.DatasetDict({"train": _ds(16, 1), "validation": _ds(32, 2)}).save_to_disk(str(root / "dataset"))
    debug = root / "debug"
    kinds = {"test_convnext": "model", "test_resnet": "model", "baseline": "baseline", "collective-fam": "collective",
             "random-context": "random-context"}
    for k, config in enumerate(kinds):
        _write_config(debug, config, 16, 10 + k)
    finalize_configs(debug, NAMES, kinds, version="1.2.3")
    cifar = ["airplane", "automobile", "bird", NAMES[1]]
    _write_config(root / "cifar-debug", "test_convnext", 8, 20, names=cifar)
    finalize_configs(root / "cifar-debug", cifar, {"test_convnext": "model"})
    return root


@pytest.fixture(autouse=True)
def _only_evaluate_command(monkeypatch):
    """The CLI with only this command (other stages' command modules may not exist in this checkout yet)."""
    from failmode import cli

    monkeypatch.setattr(cli, "COMMANDS", ("evaluate",))


def _args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", "test_convnext", "--weights", "none", "--dataset", str(world / "dataset"),
            "--debug-data", str(world / "debug"), "--train-per-class", "4", "--debug-per-class", "4",
            "--image-size", "32", "--epochs", "60", "--device", "cpu", "--batch-size", "64",
            "--cache-dir", str(world / "cache"), "--out", str(out), *extra]


def test_results_jsonl_round_trips(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    rec = {"model": "m", "weights": "timm", "dataset": "d", "debug_data": "x", "revision": "v1.0.0", "config": "m",
           "setting": "debug", "params": {"lam": 0.5, "epochs": 1000}, "test": 0.75, "seed": 0.5, "heldout": None}
    written = log.append([rec, {**rec, "setting": "original", "config": None, "test": 0.7, "seed": 0.0}])
    assert log.read() == written
    assert written[0] == {**rec, "key": result_key(rec)}
    assert result_key({**rec, "test": 0.1}) == result_key(rec)  # metrics are not part of the key
    assert result_key({**rec, "params": {"lam": 1.0, "epochs": 1000}}) != result_key(rec)
    assert log.done() == {r["key"] for r in written} and set(KEY_FIELDS) <= set(written[0])
    table = markdown_table(log.read())
    assert "| m | m | debug | 0.5 | 75.0 (+5.0) | 50.0 (+50.0) | – |" in table


def test_evaluate_end_to_end_and_rerun_skips(world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(world, out, "--lambda-sweep", "0,1", "--k-sweep", "1,2")) == 0
    recs = ResultsLog(out / "results.jsonl").read()
    by = {(r["setting"], r["config"], r["params"].get("lam"), r["params"].get("k")): r for r in recs}
    assert set(by) == {("original", None, None, None), ("retrain", None, None, None),
                       ("debug", "test_convnext", 0.5, None), ("debug", "baseline", 0.5, None),
                       ("debug", "random-context", 0.5, None), ("lambda-sweep", "test_convnext", 0.0, None),
                       ("lambda-sweep", "test_convnext", 1.0, None),
                       ("k-sweep", "test_convnext", 0.5, 1), ("k-sweep", "test_convnext", 0.5, 2)}
    orig = by[("original", None, None, None)]
    # failures are recomputed from the model's own predictions: its own head gets every one of them wrong
    assert orig["n_seed"] + orig["n_heldout"] > 0 and orig["seed"] in (0.0, None) and orig["heldout"] in (0.0, None)
    assert (orig["n_train"], orig["n_test"]) == (16, 16)
    debug = by[("debug", "test_convnext", 0.5, None)]
    assert debug["n_debug"] == 16 and debug["dataset_version"] == "1.2.3" and debug["params"]["epochs"] == 60
    # lambda = 0 is plain retraining, exactly; k = 2 keeps both contexts, so it equals the full config
    lam0 = by[("lambda-sweep", "test_convnext", 0.0, None)]
    assert [lam0[m] for m in ("test", "seed", "heldout")] == [by[("retrain", None, None, None)][m]
                                                               for m in ("test", "seed", "heldout")]
    assert by[("k-sweep", "test_convnext", 0.5, 1)]["n_debug"] == 8
    k2 = by[("k-sweep", "test_convnext", 0.5, 2)]
    assert k2["n_debug"] == 16 and [k2[m] for m in ("test", "heldout")] == [debug[m] for m in ("test", "heldout")]
    sweep = json.loads((out / "sweeps" / "test_convnext__lambda.json").read_text())
    assert [p["lam"] for p in sweep["points"]] == [0.0, 1.0]
    for png in ("test_convnext__lambda.png", "test_convnext__k.png"):
        assert (out / "sweeps" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gains = json.loads(next((out / "per_class").glob("test_convnext__test_convnext__*.json")).read_text())
    assert set(gains) <= set(NAMES[:USED]) and all(-1 <= g["test_gain"] <= 1 for g in gains.values())
    assert "| test_convnext (weights none) | baseline | debug | 0.5 |" in (out / "tables.md").read_text()

    assert "| k-sweep (k = 1) | 0.5 |" in (out / "tables.md").read_text()  # every sweep point is named

    # a plain rerun with the same arguments loads nothing and writes nothing new
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise AssertionError("a rerun should not load the model or any features")

    with monkeypatch.context() as m:
        m.setattr("failmode.evaluate.pipeline.load_model_features", boom)
        assert main(_args(world, out, "--lambda-sweep", "0,1", "--k-sweep", "1,2")) == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # --force recomputes every run and replaces its line: same keys, same order, no duplicate
    assert main(_args(world, out, "--lambda-sweep", "0,1", "--k-sweep", "1,2", "--force")) == 0
    again = ResultsLog(out / "results.jsonl").read()
    assert [r["key"] for r in again] == [r["key"] for r in recs]
    assert [[r[m] for m in ("test", "seed", "heldout")] for r in again] == [[r[m] for m in ("test", "seed", "heldout")]
                                                                           for r in recs]


def test_torn_results_line_is_recomputed_not_glued(world, tmp_path):
    """A run killed while writing its line leaves a torn tail: the rerun cuts it, recomputes that run, appends."""
    out = tmp_path / "torn"
    assert main(_args(world, out)) == 0
    path = out / "results.jsonl"
    full = path.read_bytes()
    lines = full.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # the last record half written, no newline
    assert main(_args(world, out)) == 0
    after = path.read_bytes().splitlines(keepends=True)
    assert after[:-1] == lines[:-1] and len(after) == len(lines)
    recomputed, original = json.loads(after[-1]), json.loads(lines[-1])
    assert recomputed["key"] == original["key"]
    assert [recomputed[m] for m in ("test", "seed", "heldout")] == [original[m] for m in ("test", "seed", "heldout")]


def test_kill_during_evaluate_then_rerun_has_no_duplicate(world, tmp_path):
    """kill -9 while `failmode evaluate` writes results, then a plain rerun: each run's line exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import failmode

    out = tmp_path / "killed"
    args = _args(world, out, "--epochs", "4000", "--lambda-sweep", "0,0.1,0.25,1,2")
    env = {**os.environ, "PYTHONPATH": str(Path(failmode.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "failmode", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished
    partial = ResultsLog(path).read()
    assert 2 <= len(partial) < 10
    assert main(args) == 0
    recs = ResultsLog(path).read()
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 10  # original, retrain, 3 debug configs, 5 lambdas; none twice
    assert [r["setting"] for r in recs].count("original") == 1
    assert recs[:len(partial)] == partial  # what the killed run wrote stays as it was


def test_collective_relative_accuracy(world, tmp_path):
    out = tmp_path / "coll"
    args = _args(world, out, "--model", "test_resnet", "--collective", "collective-fam", "--baseline-config", "none")
    assert main(args) == 0
    rows = json.loads((out / "collective.json").read_text())
    assert {(r["model"], r["setting"]) for r in rows} == {
        (m, s) for m in ("test_convnext", "test_resnet")
        for s in ("collective-individual", "collective-type1", "collective-type2")}
    rel = {(r["model"], r["setting"].removeprefix("collective-")): r for r in rows}
    assert [rel[m, "individual"]["test_relative"] for m in ("test_convnext", "test_resnet")] == [1.0, 1.0]
    assert {rel[m, s]["config"] for m in ("test_convnext", "test_resnet") for s in ("type1", "type2")} == {
        "collective-fam", "test_convnext"}
    assert rel["test_resnet", "individual"]["config"] == "test_resnet"
    # type 2 with the first model's own config is that model's individual debugging, exactly
    ind, same = rel["test_convnext", "individual"], rel["test_convnext", "type2"]
    assert [same[m] for m in ("test", "seed", "heldout")] == [ind[m] for m in ("test", "seed", "heldout")]
    assert same["test_relative"] == 1.0
    assert (out / "collective.png").read_bytes()[:4] == b"\x89PNG"


def _no_model(*a, **k):
    raise AssertionError("the class names must be checked before the model is loaded")


def test_class_name_mismatch_is_one_line(world, tmp_path, capsys, monkeypatch):
    args = _args(world, tmp_path, "--epochs", "1")
    args[args.index("--debug-data") + 1] = str(world / "cifar-debug")
    monkeypatch.setattr("failmode.models.classifier.create_classifier", _no_model)
    assert main([*args, "--baseline-config", "none", "--random-config", "none"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failmode evaluate:")]
    assert len(err) == 1
    err = err[0]
    assert "class names do not match" in err and "'airplane'" in err and "'bird'" in err and "3 of 4 unknown" in err


def test_webdataset_debug_data(world, tmp_path):
    from failmode.evaluate.data import open_debug_set

    names = [NAMES[2], NAMES[0], NAMES[1], NAMES[3]]  # a different order than the model's: labels are mapped by name
    _write_config(tmp_path / "ds", "test_convnext", 6, 5, names)
    shard_dir = tmp_path / "ds" / "wds" / "test_convnext"
    (shard_dir / "_info.json").write_text(json.dumps({"splits": {"train": {"num_samples": 6}}, "class_names": names}))
    ds = open_debug_set(f"wds:{tmp_path / 'ds'}", "test_convnext", NAMES)
    labels = np.arange(6) % USED
    assert np.array_equal(ds.labels, [NAMES.index(names[y]) for y in labels]) and ds.contexts is None
    with pytest.raises(ValidationError, match="not a finalized failmode dataset"):
        open_debug_set(str(tmp_path / "ds"), "test_convnext", NAMES)  # the parquet folder is trusted once finalized
    finalize_configs(tmp_path / "ds", names, {"test_convnext": "model"})
    from_parquet = open_debug_set(str(tmp_path / "ds"), "test_convnext", NAMES)
    assert np.array_equal(from_parquet.labels, ds.labels) and from_parquet.contexts == ["ctx0"] * 4 + ["ctx1"] * 2


def test_failures_from_the_mining_stage(world, tmp_path, capsys):
    from failmode.data.splits import make_splits
    from failmode.mining.failures import write_failures

    labels = np.arange(32) % USED
    debug = make_splits(np.arange(16) % USED, labels, train_per_class=4, debug_per_class=4).debug
    rows = [{"index": int(i), "image_id": f"{i:06d}", "label": int(labels[i]), "class_name": NAMES[labels[i]],
             "prediction": 999, "predicted_class": "c999", "confidence": 0.5, "half": half}
            for i, half in zip(debug[:3], ("seed", "heldout", "heldout"))]
    write_failures(tmp_path / "mined", rows, {"model": "test_convnext", "split_seed": 0})
    out = tmp_path / "run"
    args = _args(world, out, "--epochs", "5", "--baseline-config", "none", "--failures",
                 str(tmp_path / "mined" / "failures.parquet"))
    assert main(args) == 0
    orig = next(r for r in ResultsLog(out / "results.jsonl").read() if r["setting"] == "original")
    assert (orig["n_seed"], orig["n_heldout"]) == (1, 2) and orig["params"]["failures"].endswith("failures.parquet")

    write_failures(tmp_path / "other", rows, {"model": "resnet50", "split_seed": 0})
    args[args.index("--failures") + 1] = str(tmp_path / "other" / "failures.parquet")
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failmode evaluate:")]
    assert len(err) == 1 and "mined with model 'resnet50', not 'test_convnext'" in err[0]


def test_hub_debug_data_offline_is_one_clear_line(tmp_path, monkeypatch):
    from failmode.errors import LoadError
    from failmode.evaluate.data import open_debug_set

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # an empty cache: nothing to fall back on
    with pytest.raises(LoadError) as e:
        open_debug_set("failmode/imagenet-bg-debug", "resnet50", NAMES, revision="v1.0.0")
    msg = str(e.value)
    assert "\n" not in msg and "'failmode/imagenet-bg-debug' (config resnet50, revision v1.0.0)" in msg
    assert "not reachable" in msg and "--debug-data /path/to/folder" in msg


def test_align_labels_identity_with_duplicate_names_and_ambiguity_error():
    from failmode.errors import ValidationError
    from failmode.evaluate.data import align_labels

    names = ["crane", "tench", "crane"]  # ImageNet-1k spells two classes "crane"
    assert align_labels(names, names, "x").tolist() == [0, 1, 2]
    assert align_labels(["tench"], ["goldfish", "tench"], "x").tolist() == [1]
    with pytest.raises(ValidationError, match="'crane' occur more than once"):
        align_labels(["crane", "tench"], names, "x")


@pytest.mark.parametrize("extra,message", [
    (["--lam", "-1"], "lambda must be a finite number >= 0, got -1"),
    (["--lambda-sweep", "0.5,-2"], "lambda must be a finite number >= 0, got -2"),
    (["--lr", "-1"], "need lr > 0"),
    (["--k-sweep", "0,1"], "k sweep: values must be >= 1, got 0"),
    (["--images-per-mode-sweep", "0"], "images-per-mode sweep: values must be >= 1"),
])
def test_bad_head_settings_fail_before_any_model_loads(world, tmp_path, capsys, monkeypatch, extra, message):
    out = tmp_path / "run"
    monkeypatch.setattr("failmode.models.classifier.create_classifier", _no_model)
    assert main(_args(world, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "results.jsonl").exists()


def test_unknown_group_column_fails_before_any_model_loads(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("failmode.models.classifier.create_classifier", _no_model)
    assert main(_args(world, tmp_path / "run", "--group-column", "nosuch")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'nosuch'" in err[0]

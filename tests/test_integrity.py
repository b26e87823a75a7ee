"""Integrity: finalize survives kills, caches carry their own check, names stay distinct, bounds come before work."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from failmode.cli import main


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _build(root: Path) -> Path:
    from failmode.testing import write_debug_dataset

    return write_debug_dataset(root, class_names=["cat", "dog"], images_per_mode=2, baseline_images_per_class=2)


def _killed_finalize(root: Path, point: int, after: bool) -> int:
    """Run the build's finalize in a forked child that is killed (SIGKILL) just before (or after) its `point`-th
    atomic rename; return the child's wait status (0: it finished before reaching the point)."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup of any kind when the signal comes
        try:
            import failmode.io

            real, count = os.replace, [0]

            def replace(src, dst):  # type: ignore[no-untyped-def]
                count[0] += 1
                if count[0] == point and not after:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst)
                if count[0] == point and after:
                    os.kill(os.getpid(), signal.SIGKILL)

            failmode.io.os.replace = replace
            _build(root)
            os._exit(0)
        except BaseException:
            os._exit(3)
    return os.waitpid(pid, 0)[1]


def test_finalize_killed_between_any_two_files_resumes_to_the_same_bytes(tmp_path: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 before and after every file finalize writes (draft, _info.json, grids, card, manifest), then a plain
    rerun of the build, or `failmode finalize DIR`: the folder is byte-identical to an uninterrupted build, with no
    temporary left. Before, a kill after the manifest left a folder without its card that every rerun called done."""
    import failmode.generation.run as run
    from failmode.generation.build import is_complete
    from failmode.generation.plan import plan_path, read_plan

    want = _tree(_build(tmp_path / "ref"))
    base = tmp_path / "base"
    with monkeypatch.context() as m:  # the shards, all written, and finalize not yet run
        m.setattr(run, "finalize", lambda root, manifest: manifest)
        _build(base)
    assert not (base / "failmode.json").exists() and not (base / "README.md").exists()
    points = 0
    for point in range(1, 40):
        for after in (False, True):
            work = tmp_path / f"k{point}{'a' if after else 'b'}"
            shutil.copytree(base, work)
            status = _killed_finalize(work, point, after)
            if status == 0:
                break
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            points += 1
            twin = tmp_path / f"{work.name}-cli"
            shutil.copytree(work, twin)
            rows = read_plan(plan_path(work))
            if is_complete(rows, work, None):  # what `failmode build` asks before doing nothing
                assert _tree(work) == want, (point, after)
            if not (work / "failmode.json").exists():
                from failmode.dataset import validate_dataset_folder
                from failmode.errors import ValidationError

                with pytest.raises(ValidationError, match="not a finalized failmode dataset"):
                    validate_dataset_folder(work)  # never a folder that looks done but is not
            _build(work)  # a plain rerun
            assert _tree(work) == want, (point, after)
            capsys.readouterr()
            code = main(["finalize", str(twin)])
            out, err = capsys.readouterr()
            if code == 0:
                assert _tree(twin) == want, (point, after)
            else:  # killed before the draft was saved: only the build knows the manifest
                assert code == 1 and err.strip().splitlines() == [
                    f"failmode finalize: error: {twin}: no failmode.json and no interrupted finalize to resume; run the "
                    "build (failmode build / generate) that wrote the shards again"], err
                assert point == 1 and not after
        else:
            continue
        break
    assert points == 2 * 10  # draft, 3 x _info.json, 3 x grid, card, final draft, its rename: before and after each


def test_finalize_command_rewrites_a_missing_or_stale_card_and_cleans_temporaries(tmp_path: Path, capsys) -> None:
    from failmode.generation.build import is_complete
    from failmode.generation.plan import plan_path, read_plan

    root = _build(tmp_path / "ds")
    want = _tree(root)
    rows = read_plan(plan_path(root))
    assert is_complete(rows, root, None)
    (root / "README.md").write_text("stale")
    assert not is_complete(rows, root, None)  # `failmode build` finalizes again instead of "nothing to render"
    (root / "assets" / "grid_baseline.png").unlink()
    (root / ".README.md.abc123.tmp").write_text("torn")
    (root / "assets" / ".grid_baseline.png.x.tmp").write_text("torn")
    assert main(["finalize", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(root)
    assert _tree(root) == want and is_complete(rows, root, None)
    assert main(["finalize", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.strip() == f"failmode finalize: error: {tmp_path / 'nothing'}: not a directory"


# -- caches carry their own check --------------------------------------------------------------------------------

# the model's own head: ImageNet's class order
NAMES = __import__("failmode.vocab.classnames", fromlist=["label_names"]).label_names("imagenet-1k")
USED = 4


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datasets

    from failmode.dataset.writer import write_shard
    from failmode.testing import finalize_configs, synthetic_images

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("eval")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    splits = {}
    for split, n, seed in (("train", 16, 1), ("validation", 32, 2)):
        images, labels = synthetic_images(n, size=32, seed=seed, num_classes=USED)
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)
    datasets.DatasetDict(splits).save_to_disk(str(root / "dataset"))
    images, labels = synthetic_images(16, size=32, seed=10, num_classes=USED)
    samples = [{"image": im, "label": y, "class_name": NAMES[y], "context": f"ctx{i % 2}", "context_kind": "background",
                "prompt": f"a photo of a {NAMES[y]}", "seed": i, "generator": "test", "source_model": "test_convnext"}
               for i, (im, y) in enumerate(zip(images, labels))]
    write_shard(root / "debug", "test_convnext", "train", 0, 1, samples, class_names=NAMES)
    finalize_configs(root / "debug", NAMES, {"test_convnext": "model"})
    return root


def _evaluate(world: Path, out: Path, cache: Path, capsys) -> tuple[int, list[dict], str]:
    from failmode import cli
    from failmode.evaluate.results import ResultsLog

    capsys.readouterr()
    code = cli.main(["evaluate", "--model", "test_convnext", "--weights", "none", "--dataset", str(world / "dataset"),
                     "--debug-data", str(world / "debug"), "--train-per-class", "4", "--debug-per-class", "4",
                     "--image-size", "32", "--epochs", "20", "--device", "cpu", "--batch-size", "64",
                     "--baseline-config", "none", "--random-config", "none", "--cache-dir", str(cache), "--out", str(out)])
    err = capsys.readouterr().err
    recs = ResultsLog(out / "results.jsonl").read() if (out / "results.jsonl").exists() else []
    return code, [{k: r.get(k) for k in ("setting", "config", "test", "seed", "heldout")} for r in recs], err


def _damage(path: Path, how: str) -> None:
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return
    feats = arrays["features"]
    if how == "nan":
        arrays["features"] = np.full_like(feats, np.nan)
    elif how == "random":  # right shape and dtype, the entry's own record kept: only the checksum can tell
        arrays["features"] = np.random.default_rng(0).standard_normal(feats.shape).astype(feats.dtype)
    elif how == "rows":
        arrays = {k: v[:-1] if k != "__cache__" else v for k, v in arrays.items()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("how", ["nan", "random", "truncated", "rows"])
def test_a_damaged_feature_cache_is_computed_again_with_one_warning(eval_world: Path, tmp_path: Path, capsys, caplog,
                                                                    how: str) -> None:
    """NaN features, random values of the right shape, a truncated file, a wrong row count: each cached entry is
    refused with one warning line and computed again; the results equal a clean run's. Before: exit 0 with wrong
    accuracies (NaN, random), a BadZipFile traceback (truncated), a broadcast traceback (rows)."""
    cache = tmp_path / "cache"
    code, want, err = _evaluate(eval_world, tmp_path / "clean", cache, capsys)
    assert code == 0 and want and "warning" not in err.lower(), err
    entries = sorted((cache / "features").glob("*.npz"))
    assert entries
    clean = {p: p.read_bytes() for p in entries}
    for p in entries:
        _damage(p, how)
    caplog.clear()
    code, got, err = _evaluate(eval_world, tmp_path / "again", cache, capsys)
    assert code == 0 and "Traceback" not in err, err
    assert got == want
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == len(entries) and all("ignoring the cache entry" in w for w in warned), warned
    assert all("\n" not in w for w in warned)
    assert all("computing it again" in line for line in warned)
    assert {p: p.read_bytes() for p in entries} == clean  # recomputed and rewritten, byte for byte


def test_nan_features_from_a_model_name_the_model_and_the_batch(tmp_path: Path) -> None:
    """A model that gives NaN for one image (here: its input is NaN) is an error naming the model, the batch and the
    image, and nothing is cached; before, the NaN features were cached and used."""
    import torch

    from failmode.data.sources import ListSource
    from failmode.errors import FailmodeError
    from failmode.features import extract_features
    from failmode.options import FeatureOptions
    from failmode.testing import synthetic_images, tiny_classifier

    images, labels = synthetic_images(12, size=32, seed=3, num_classes=4)
    source = ListSource(images, labels, NAMES[:4], ident="twelve")
    calls = []

    def transform(im):  # images are read in order (no loader workers): the 8th one becomes NaN
        calls.append(1)
        x = torch.full((3, 32, 32), float(sum(im.getpixel((0, 0)))) / 765)
        return x.fill_(float("nan")) if len(calls) == 8 else x

    with pytest.raises(FailmodeError, match=r"^tiny@1: the model gave NaN or infinite features in batch 1 "
                                            r"\(images 5\.\.9 of 12, first at source index 7\); nothing was cached"):
        extract_features(tiny_classifier(num_classes=4), source, model_key="tiny@1", transform=transform,
                         options=FeatureOptions(device="cpu", batch_size=5, num_workers=0), cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.npz"))


# -- names stay distinct, bounds before work -------------------------------------------------------------------------

def _preset(tmp_path: Path, **changes) -> Path:
    """The shipped cifar10 preset pointed at paths that need not exist: every case below is refused before any file
    is read or any model loads."""
    import json

    from failmode.testing import derive_preset

    models = {"weights": tmp_path / "w.safetensors", "clip": tmp_path / "clip.pt", "pipeline": tmp_path / "sd"}
    path = derive_preset("cifar10-bg-debug", tmp_path / "preset.json", tmp_path / "data", models, head=None,
                         train_per_class=2, debug_per_class=2)
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            doc[section][name] = value
        else:
            doc[section] = value
    path.write_text(json.dumps(doc))
    return path


def _main(argv: list[str]) -> int:
    """The CLI's exit code (argparse's usage errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def test_finalize_command_takes_the_builds_lock(tmp_path: Path, capsys) -> None:
    """`failmode finalize DIR` never runs beside a live finalizer (one line, the lock kept) and takes over the lock
    of a finalizer that died on this host (finalized, the lock gone)."""
    import socket
    import subprocess

    root = _build(tmp_path / "d")
    want = _tree(root)
    lock = root / "generation" / ".finalize.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a live holder: this process
    capsys.readouterr()
    assert main(["finalize", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another process is finalizing it" in err[0] and lock.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    assert main(["finalize", str(root)]) == 0
    assert not lock.exists() and _tree(root) == want


def _build_cli(tmp_path: Path, preset: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = _main(["build", str(preset), "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("changes, message", [
    ({"models": [{"id": "test_efficientnet"}, {"id": "test_efficientnet."}], "families": {}},
     "model 'test_efficientnet' and model 'test_efficientnet.' would share the config and folder name "
     "'test_efficientnet'; rename one of them"),
    ({"families": {"tiny": ["test_efficientnet"], "tiny!!": ["test_efficientnet"]}},
     "family 'tiny' and family 'tiny!!' would share the config and folder name 'collective-tiny'; rename one of them"),
    ({"models": [{"id": "Test_EfficientNet"}, {"id": "test_efficientnet"}], "families": {}},
     "model 'Test_EfficientNet' and model 'test_efficientnet' would share the config and folder name "
     "'test_efficientnet'; rename one of them"),
    ({"generation__steps": 1000000000}, "generation.steps: 1000000000 is out of range (1..1000)"),
    ({"generation__size": 1000000000000}, "generation.size: 1000000000000 is out of range (8..4096)"),
    ({"generation__guidance": float("nan")}, "generation.guidance: nan is out of range (0..100)"),
    ({"baseline": {"images_per_class": 1000000000}}, "baseline.images_per_class: 1000000000 is out of range (1..10000)"),
    ({"dataset__train_per_class": 1e308}, "dataset.train_per_class: 1e+308 is out of range (> 0 and <= 1e+06)"),
    ({"render__batch_size": 100000}, "render.batch_size: 100000 is out of range (1..1024)"),
])
def test_a_preset_with_colliding_names_or_numbers_out_of_range_is_refused_before_any_work(tmp_path: Path, capsys,
                                                                                          changes, message) -> None:
    """Before: the two models merged into one config (exit 0), steps / images_per_class ran to the OOM killer,
    size was a traceback that left a plan, NaN guidance dropped every image, 1e308 was cut silently."""
    preset = _preset(tmp_path, **changes)
    code, err = _build_cli(tmp_path, preset, capsys)
    assert code == 1 and err == [f"failmode build: error: {preset}: {message}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.json"]  # nothing written: no plan, no work folder


@pytest.mark.parametrize("flags, message", [
    ("--batch-size 100000", "argument --batch-size: 100000 is out of range (1..1024)"),
    ("--train-per-class 1e308", "argument --train-per-class: 1e308 is out of range (> 0 and <= 1e+06)"),
    ("--device cuda:99", "argument --device: cuda:99: not present on this machine (available here: HAVE)"),
    ("--device nonsense", "argument --device: 'nonsense' is not a device (available here: HAVE)"),
    ("--device mps", "argument --device: mps: not present on this machine (available here: HAVE)"),
])
def test_flags_out_of_range_and_absent_devices_are_one_usage_line(tmp_path: Path, capsys, flags, message) -> None:
    """Before: a RuntimeError traceback after the data had loaded (devices), the allocator's failure (batch)."""
    import sys

    from failmode.runtime import available_devices

    if sys.platform == "darwin" and flags == "--device mps":
        flags = "--device cuda:99"  # (mps is present on Apple silicon)
        message = "argument --device: cuda:99: not present on this machine (available here: HAVE)"
    message = message.replace("HAVE", ", ".join(available_devices()))
    code, err = _build_cli(tmp_path, _preset(tmp_path), capsys, *flags.split())
    assert code == 2 and err == [f"failmode build: error: {message} (see 'failmode build --help')"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.json"]


@pytest.mark.parametrize("command", [
    ["mine", "--model", "test_efficientnet", "--dataset", "x", "--out", "OUT", "--device", "cuda:99"],
    ["evaluate", "--model", "test_efficientnet", "--dataset", "x", "--debug-data", "y", "--out", "OUT",
     "--device", "cuda:99"],
    ["generate", "--modes", "x.json", "--out", "OUT", "--device", "nonsense"],
    ["generate", "--modes", "x.json", "--out", "OUT", "--guidance", "nan"],
    ["generate", "--modes", "x.json", "--out", "OUT", "--steps", "1000000000"],
    ["evaluate", "--model", "m", "--dataset", "x", "--debug-data", "y", "--out", "OUT", "--epochs", "1e12"],
    ["evaluate", "--model", "m", "--dataset", "x", "--debug-data", "y", "--out", "OUT", "--epochs", "10000000"],
])
def test_every_command_checks_device_and_numbers_when_parsing(tmp_path: Path, capsys, command) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    code = _main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"failmode {command[0]}: error: argument "), err
    assert not (tmp_path / "out").exists()


def test_cuda_is_accepted_exactly_when_present() -> None:
    import torch

    from failmode.errors import UsageError
    from failmode.runtime import check_device

    assert check_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert check_device("cuda").type == "cuda"
        assert check_device(f"cuda:{torch.cuda.device_count() - 1}").index == torch.cuda.device_count() - 1
    else:
        with pytest.raises(UsageError, match=r"^--device cuda: not present on this machine \(available here: cpu"):
            check_device("cuda")
    with pytest.raises(UsageError, match=r"^--device cuda:99: not present"):
        check_device("cuda:99")


def test_a_one_class_dataset_is_refused_before_any_model_loads(tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the build finalized a dataset with only the baseline config."""
    from failmode.testing import write_local_dataset

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("failmode.models.classifier.create_classifier", no_model)
    data = write_local_dataset(tmp_path / "data", "cifar10", {"train": 3, "test": 3}, class_names=["cat"])
    preset = _preset(tmp_path, dataset__id=str(data))
    code, err = _build_cli(tmp_path, preset, capsys)
    assert code == 1 and err == [f"failmode build: error: {data}: the dataset has 1 class ('cat'); a debug dataset "
                                 "needs at least 2"], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_the_documented_ranges_are_the_code_s() -> None:
    import dataclasses
    import re

    from failmode.generation.plan import GenerationSettings
    from failmode.generation.presets import BaselineSection, DatasetSection, QualitySection
    from failmode.head import HeadParams
    from failmode.options import FeatureOptions, ModelSpec, RenderOptions, SplitSpec

    doc = (Path(__file__).parents[1] / "docs" / "settings.md").read_text()
    section = None
    documented = {}
    for line in doc.splitlines():
        m = re.match(r"^\| (.*?) \| `(\w+)` \|[^|]*\| (.+?)(?: \(.*\))? \|$", line)
        if not m:
            continue
        cls = re.search(r"\(`(\w+)`\)", m[1])
        section = cls[1] if cls else section
        documented[section, m[2]] = m[3]
    assert len(documented) >= 15  # the table parses
    classes = [GenerationSettings, BaselineSection, DatasetSection, SplitSpec, ModelSpec, QualitySection,
               RenderOptions, FeatureOptions, HeadParams]
    code = {(c.__name__, f.name): f.metadata["range"].describe() for c in classes for f in dataclasses.fields(c)
            if "range" in f.metadata}
    assert documented == code


def test_regeneration_reads_regular_files_of_the_folder_only(tmp_path: Path) -> None:
    """A generation-stats file swapped for a link to a file outside the folder is refused before it is read."""
    from failmode.errors import ValidationError
    from failmode.generation.regenerate import regenerate_shards

    root = _build(tmp_path / "ds")
    outside = tmp_path / "outside.json"
    outside.write_text('{"batch_size": 1}')
    stats = sorted((root / "generation" / "stats").rglob("*.json"))[0]
    stats.unlink()
    stats.symlink_to(outside)
    rel = stats.relative_to(root).as_posix()
    with pytest.raises(ValidationError, match=f"{rel} is a symbolic link; a dataset folder holds regular files only"):
        regenerate_shards(root, ["baseline/train-00000-of-00001"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_data_file_swapped_for_a_link(tmp_path: Path) -> None:
    """A listed shard replaced by a link (even to identical bytes) is refused before it is read."""
    from failmode.dataset import Manifest
    from failmode.dataset.validate import check_config_files
    from failmode.errors import ValidationError

    root = _build(tmp_path / "ds")
    shard = sorted((root / "data" / "baseline").glob("*.parquet"))[0]
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(copy)
    with pytest.raises(ValidationError, match="is a symbolic link; a dataset folder holds regular files only"):
        check_config_files(root, Manifest.load(root), "baseline")


def test_a_damaged_embedding_cache_is_computed_again_with_one_warning(tmp_path: Path, caplog) -> None:
    """The image-embedding cache of attribution: NaN, truncated or another key's entry is never used."""
    import numpy as np

    from failmode.data.sources import ListSource
    from failmode.mining.attribution import encode_images_cached
    from failmode.testing import synthetic_images

    images, labels = synthetic_images(6, size=16, seed=5, num_classes=2)
    source = ListSource(images, labels, ["a", "b"], ident="six")

    class Encoder:  # the attribution side that is cached: embeddings of images by index
        cache_key = "encoder@1"
        calls = 0

        def encode_images(self, src, indices):
            Encoder.calls += 1
            return np.asarray([[float(i), float(sum(src.image(i).getpixel((0, 0))))] for i in indices], np.float32)

    want = encode_images_cached(Encoder(), source, range(6), tmp_path)
    entry = next((tmp_path / "embeddings").glob("*.npz"))
    good = entry.read_bytes()
    for damage in ("nan", "truncated"):
        if damage == "nan":
            with np.load(entry) as z:
                arrays = {k: z[k] for k in z.files}
            arrays["embeddings"] = np.full_like(arrays["embeddings"], np.nan)
            with open(entry, "wb") as f:
                np.savez(f, **arrays)
        else:
            entry.write_bytes(good[: len(good) // 3])
        caplog.clear()
        calls = Encoder.calls
        assert np.array_equal(encode_images_cached(Encoder(), source, range(6), tmp_path), want)
        assert Encoder.calls == calls + 1 and entry.read_bytes() == good
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and warned[0].startswith("image embeddings: ignoring the cache entry"), warned

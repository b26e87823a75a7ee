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
    assert points >= 2 * 9  # draft, 3 x _info.json, 3 x grid, card, final draft, manifest: before and after each


def test_finalize_command_rewrites_a_missing_or_stale_card_and_cleans_temporaries(tmp_path: Path, capsys) -> None:
    root = _build(tmp_path / "ds")
    want = _tree(root)
    (root / "README.md").write_text("stale")
    (root / "assets" / "grid_baseline.png").unlink()
    (root / ".README.md.abc123.tmp").write_text("torn")
    (root / "assets" / ".grid_baseline.png.x.tmp").write_text("torn")
    assert main(["finalize", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(root)
    assert _tree(root) == want
    assert main(["finalize", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.strip() == f"failmode finalize: error: {tmp_path / 'nothing'}: not a directory"


# -- caches carry their own check --------------------------------------------------------------------------------

NAMES = [f"c{i:03d}" for i in range(1000)]  # the tiny timm models have 1000 outputs
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
    import torch

    from failmode.data.sources import ListSource
    from failmode.errors import FailmodeError
    from failmode.features import extract_features
    from failmode.testing import synthetic_images, tiny_classifier

    model = tiny_classifier(num_classes=4)
    images, labels = synthetic_images(12, size=32, seed=3, num_classes=4)
    source = ListSource(images, labels, NAMES[:4], ident="twelve")
    kwargs = dict(model_key="tiny@nan", batch_size=5, device="cpu", cache_dir=tmp_path / "c", num_workers=0,
                  transform=lambda im: torch.zeros(3, 32, 32) + float(sum(im.getpixel((0, 0)))) / 765)
    assert extract_features(model, source, **kwargs).features.shape[0] == 12  # finite: cached
    with torch.no_grad():
        model.get_classifier().bias[:] = float("nan")
    kwargs["model_key"] = "tiny@nan"
    for p in (tmp_path / "c").glob("*.npz"):
        p.unlink()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("inf"))
    with pytest.raises(FailmodeError, match=r"^tiny@nan: the model gave NaN or infinite features in batch 0 "
                                            r"\(images 0\.\.4 of 12, first at source index 0\)"):
        extract_features(model, source, **kwargs)
    assert not list((tmp_path / "c").glob("*.npz"))  # nothing cached

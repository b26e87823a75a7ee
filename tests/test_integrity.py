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

"""Scale-out on the launchers' own engines (issue 26): one derived preset with tiny models built by one process,
torchrun, a job array, accelerate and a job array with a task killed and rerun gives the same bytes; failures end
the job instead of leaving a silent wait; an overwrite is a new build; one finalizer; files readable by others."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from failmode.cli import main

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, str]:
    from failmode.io import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


class World:
    """Tiny models, a local dataset, a derived preset (and one with other settings) and a log folder."""

    def __init__(self, root: Path) -> None:
        from failmode.testing import tiny_build_preset

        self.root = root
        self.preset = tiny_build_preset(root)
        doc = json.loads(self.preset.read_text())
        doc["generation"]["base_seed"] += 1  # other settings: every image changes
        self.other = root / "other.json"
        self.other.write_text(json.dumps(doc))
        self.logs = root / "logs"
        self.logs.mkdir()

    def start(self, launcher: list[str], out: Path, *args: str, preset: Path | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Start `launcher failmode build PRESET --out OUT ARGS` under umask 022; (process, its log file)."""
        log = self.logs / f"{out.name}-{len(list(self.logs.iterdir()))}.log"
        cmd = [*launcher, "failmode", "build", str(preset or self.preset), "--out", str(out), "--device", "cpu",
               "--cache-dir", str(self.root / "cache"), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), umask=0o022,
                                env=env or {**os.environ}, start_new_session=True)
        return proc, log

    def ok(self, *procs: tuple[subprocess.Popen, Path]) -> None:
        for proc, log in procs:
            code = proc.wait(timeout=600)
            assert code == 0, log.read_text()[-3000:]


PLAIN = [sys.executable, "-m"]
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m"]
# Two CPU processes under accelerate: --multi_gpu selects its torch.distributed launcher (gloo on a CPU machine);
# `--cpu --num_processes 2` would start a single process.
ACCELERATE = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _array(world: World, out: Path, *args: str, preset: Path | None = None, kill_task_1: bool = False) -> None:
    """A two-task job array started together; with `kill_task_1`, task 1 is SIGKILLed after its first shard."""
    tasks = [world.start(PLAIN, out, "--task-index", str(i), "--num-tasks", "2", *args, preset=preset)
             for i in (0, 1)]
    if not kill_task_1:
        world.ok(*tasks)
        return
    proc, log = tasks[1]
    _wait_for_line(log, " images ({", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    world.ok(tasks[0])
    assert not (out / "failmode.json").exists()  # task 0 does not finalize while task 1's shards are missing


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def five(world: World) -> dict[str, Path]:
    """The same preset built five ways (two processes each, except the reference)."""
    r = world.root
    outs = {k: r / k for k in ("single", "torchrun", "array", "accelerate", "array-killed")}
    world.ok(world.start(PLAIN, outs["single"]))
    world.ok(world.start(TORCHRUN, outs["torchrun"]))
    _array(world, outs["array"])
    world.ok(world.start(ACCELERATE, outs["accelerate"]))
    _array(world, outs["array-killed"], kill_task_1=True)
    world.ok(world.start(PLAIN, outs["array-killed"], "--stage", "render", "--task-index", "1", "--num-tasks", "2"))
    return outs


def test_one_process_torchrun_job_array_accelerate_and_a_killed_array_give_the_same_bytes(five, world):
    expected = _files(five["single"])
    assert "failmode.json" in expected and "README.md" in expected
    assert any(k.startswith("data/") for k in expected) and any(k.startswith("wds/") for k in expected)
    for name in ("torchrun", "array", "accelerate", "array-killed"):
        got = _files(five[name])
        assert sorted(got) == sorted(expected), name
        assert [k for k in expected if got[k] != expected[k]] == [], name
    logs = "".join(p.read_text() for p in world.logs.iterdir())
    assert "rank 1 of 2 (gloo)" in logs  # torchrun and accelerate both ran two ranks in one group
    manifest = json.loads((five["single"] / "failmode.json").read_text())
    g = manifest["generation"]
    assert (g["device"], g["threads"], g["precision"], g["compile"]) == ("cpu", 1, "fp32", None) and g["device_name"]
    assert manifest["generator"]["resolved_revision"] == "local"
    assert manifest["attribution"]["resolved_revision"] == "local"
    assert [m["resolved_revision"] for m in manifest["mining"]["models"]] == ["local"]
    assert {"torch", "diffusers", "open_clip_torch"} <= set(manifest["environment"])


def test_every_file_is_written_readable_by_others_under_umask_022(five):
    for out in five.values():
        modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
        assert modes and {k: v for k, v in modes.items() if v != "0o644"} == {}


def test_regenerate_shards_on_a_torchrun_build_is_identical_with_no_thread_variable(five, world, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FAILMODE_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "regenerate_shards.py"), str(five["torchrun"]),
                           "test_efficientnet/train-00001", "baseline/train-00000", "--out", str(tmp_path / "regen"),
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["test_efficientnet/train-00001-of-00003", "identical",
                                   "baseline/train-00000-of-00005", "identical"]


def test_overwrite_with_a_killed_task_then_incremental_rerun_equals_a_clean_build(five, world):
    r = world.root
    ow = r / "overwritten"
    shutil.copytree(five["array"], ow)
    shutil.copytree(r / "array.work", r / "overwritten.work")
    _array(world, ow, "--write", "overwrite", preset=world.other, kill_task_1=True)
    proc, log = world.start(PLAIN, ow, "--stage", "finalize", preset=world.other)
    assert proc.wait(timeout=600) == 1  # old shards are not this build's: nothing is finalized
    assert "not every shard of this build is written" in log.read_text().strip().splitlines()[-1]
    assert not (ow / "failmode.json").exists()
    world.ok(world.start(PLAIN, ow, preset=world.other))  # incremental: renders the shards of the old build
    clean = r / "clean-other"
    world.ok(world.start(PLAIN, clean, preset=world.other))
    expected, got = _files(clean), _files(ow)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []
    assert expected["failmode.json"] != _files(five["single"])["failmode.json"]  # the settings did change


def test_two_finalizers_at_once_make_one_finalize_and_the_same_bytes(five, tmp_path):
    from failmode.dataset import Manifest
    from failmode.generation.plan import read_plan_of
    from failmode.generation.run import finalize_once

    root = tmp_path / "ds"
    shutil.copytree(five["single"], root)
    expected = _files(root)
    manifest = Manifest.load(root)
    (root / "failmode.json").unlink()
    (root / "README.md").unlink()
    rows, build = read_plan_of(root), manifest.generation["build"]
    calls, results = [], []
    start = threading.Barrier(2)

    def make() -> Manifest:
        calls.append(threading.get_ident())
        time.sleep(0.5)  # hold the lock while the other finalizer tries it
        return manifest

    def finalizer() -> None:
        start.wait()
        results.append(finalize_once(rows, root, build, make))

    threads = [threading.Thread(target=finalizer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(results) == [False, True]
    assert _files(root) == expected
    assert not (root / "generation" / ".finalize.lock").exists()


def test_rank_0_killed_during_mining_ends_the_torchrun_job(world, tmp_path):
    proc, log = world.start(TORCHRUN, tmp_path / "ds", "--cache-dir", str(tmp_path / "cache"))
    try:
        _wait_for_line(log, "mining (new)", proc)
        rank0 = [pid for pid in _children(proc.pid) if _environ(pid).get("RANK") == "0"]
        assert len(rank0) == 1
        os.kill(rank0[0], signal.SIGKILL)
        code = proc.wait(timeout=30)  # torchrun ends the job: rank 1 does not wait at its barrier
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0
    assert not (tmp_path / "ds" / "failmode.json").exists()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


def test_a_renderer_without_prepare_logs_its_wait_and_stops_at_the_wait_timeout(world, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="failmode")
    code = main(["build", str(world.preset), "--out", str(tmp_path / "ds"), "--device", "cpu", "--stage", "render",
                 "--task-index", "1", "--num-tasks", "2", "--wait-timeout", "1"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gave up after --wait-timeout 1 s waiting for prepare" in err, err
    assert any("waiting for prepare" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "ds" / "data").exists()


def test_a_failed_prepare_stops_the_waiting_renderers_at_once(tmp_path):
    from failmode.errors import FailmodeError
    from failmode.generation.coordinate import Coordinator

    def boom() -> None:
        raise FailmodeError("the dataset folder is empty")

    with pytest.raises(FailmodeError, match="empty"):
        Coordinator((0, 2), tmp_path, "key", stage="prepare").prepare(boom)
    with pytest.raises(FailmodeError, match=r"prepare failed \(the dataset folder is empty\)"):
        Coordinator((1, 2), tmp_path, "key", stage="render", wait_timeout_s=120).prepare(boom)
    # another build's failure is not this one's: its renderer keeps waiting (here: until its timeout)
    with pytest.raises(FailmodeError, match="gave up after --wait-timeout"):
        Coordinator((1, 2), tmp_path, "other", stage="render", wait_timeout_s=0.2).prepare(boom)


def test_atomic_writes_take_the_umask(tmp_path):
    from failmode.io import write_json

    before = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(before)
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == "0o640"


def test_the_prepare_stage_mines_attributes_and_plans_and_renders_nothing(world, tmp_path):
    out = tmp_path / "ds"
    assert main(["build", str(world.preset), "--out", str(out), "--device", "cpu", "--stage", "prepare",
                 "--cache-dir", str(world.root / "cache")]) == 0
    assert (out / "generation" / "plan.parquet").is_file()
    assert json.loads((tmp_path / "ds.work" / "prepared.json").read_text())["key"]
    assert (tmp_path / "ds.work" / "models" / "test_efficientnet" / "modes.json").is_file()
    assert not (out / "data").exists() and not (out / "failmode.json").exists()


def test_hub_models_resolve_to_the_cached_snapshot_commit_and_folders_to_local(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from failmode.generation.environment import UNRESOLVED, hub_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--sd-tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_revision("org/sd-tiny") == commit  # "main" as the cache last resolved it, not the branch name
    assert hub_revision("org/sd-tiny", commit) == commit
    assert hub_revision("org/not-cached") == UNRESOLVED  # nothing is downloaded
    assert hub_revision(str(repo)) == "local"

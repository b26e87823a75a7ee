"""Who prepares, who renders and who finalizes a build run by several processes: the launcher's process group
(torchrun / accelerate: torch.distributed barriers) or a job array's stages (markers on a shared filesystem).

Under torchrun / `accelerate launch` (WORLD_SIZE > 1) the processes join the launcher's group (gloo on CPU, nccl
on GPU): rank 0 prepares (mines, attributes, plans) while the others wait at a barrier, all render their shards,
and rank 0 finalizes after the last barrier. A rank that fails ends its process, and the launcher ends the job.
Job-array tasks (`--task-index/--num-tasks`, `--stage`) meet through files instead: `prepare` writes a marker
(or, when it fails, a failure marker that stops the waiters at once); renderers wait for it with a log line every
minute up to `--wait-timeout`; the renderer that sees every shard of the build done finalizes under an `O_EXCL`
lock, so two never finalize together.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failmode.errors import FailmodeError, UsageError
from failmode.io import read_json, write_json
from failmode.options import BUILD_STAGES as STAGES
from failmode.options import DEFAULT_WAIT_TIMEOUT_S

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # a waiting renderer says what it waits for at least this often
PREPARED, PREPARE_FAILED = "prepared.json", "prepare-failed.json"
LOCK_NAME = ".finalize.lock"


def world(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) the launcher set (RANK / WORLD_SIZE), (0, 1) without one."""
    env = dict(os.environ) if env is None else env
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))


@dataclass
class Group:
    """The launcher's process group, joined once per process (None of it when WORLD_SIZE is 1)."""

    rank: int
    size: int

    @classmethod
    def join(cls, timeout_s: float) -> Group | None:
        """Join the group torchrun / accelerate set up (gloo on CPU, nccl on GPU); None for a single process.

        `timeout_s` bounds every barrier: a rank still waiting then (rank 0 mining for longer) fails the job.
        """
        rank, size = world()
        if size <= 1:
            return None
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
            log.info("joined the launcher's process group: rank %d of %d (%s)", rank, size, dist.get_backend())
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self, what: str) -> None:
        """Wait until every rank gets here (`what` is logged)."""
        import torch
        import torch.distributed as dist

        log.info("rank %d of %d: waiting at the barrier (%s)", self.rank, self.size, what)
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

    def close(self) -> None:
        """Leave the group."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Coordinator:
    """One process's part in a build: its task slot, its stage, and where job-array tasks meet.

    `markers` is the folder of the prepare markers (shared by every task: on a shared filesystem); `key` names
    what prepare makes, from settings known before anything runs, so a renderer never takes an older build's
    marker for its own.
    """

    task: tuple[int, int]  # (this task, tasks): `failmode.generation.shards.task_slot`
    markers: Path
    key: str
    stage: str = "all"
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    group: Group | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UsageError(f"unknown stage {self.stage!r} (known: {', '.join(STAGES)})")
        if self.wait_timeout_s <= 0:
            raise UsageError(f"--wait-timeout must be > 0 seconds, got {self.wait_timeout_s:g}")
        self.markers = Path(self.markers)

    @property
    def prepares(self) -> bool:
        """True when this process runs prepare itself (stage prepare, or task 0 of a plain run)."""
        return self.stage == "prepare" or (self.stage == "all" and self.task[0] == 0)

    @property
    def renders(self) -> bool:
        """True when this process renders shards."""
        return self.stage in ("all", "render")

    def prepare(self, fn: Callable[[], Any]) -> None:
        """Run `fn` (mine, attribute, plan) where this process owns it; elsewhere wait until it is done."""
        if self.group is None or self.group.rank == 0:
            if self.prepares:
                self._run_prepare(fn)
            else:
                self._wait_file()
        if self.group is not None:
            self.group.barrier("prepare")

    def _run_prepare(self, fn: Callable[[], Any]) -> None:
        done, failed = self.markers / PREPARED, self.markers / PREPARE_FAILED
        for m in (done, failed):
            m.unlink(missing_ok=True)
        try:
            fn()
        except BaseException as e:
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            write_json(failed, {"key": self.key, "error": line})
            raise
        write_json(done, {"key": self.key})

    def _wait_file(self) -> None:
        """Wait for this build's prepare marker: a log line at least every minute, one line at the timeout, at once
        when prepare left its failure marker."""
        done, failed = self.markers / PREPARED, self.markers / PREPARE_FAILED
        start = last_log = time.monotonic()
        what = f"prepare (mine, attribute, plan: --stage prepare or task 0) to write {done}"
        first = True
        while True:
            if _marker_key(failed) == self.key:
                raise FailmodeError(f"prepare failed ({read_json(failed).get('error', '')}): nothing to render; "
                                    "fix it and run --stage prepare again")
            if _marker_key(done) == self.key:
                if not first:
                    log.info("prepare is done after %.0f s of waiting", time.monotonic() - start)
                return
            now = time.monotonic()
            if now - start >= self.wait_timeout_s:
                raise FailmodeError(f"gave up after --wait-timeout {self.wait_timeout_s:g} s waiting for {what}")
            if first or now - last_log >= LOG_EVERY_S:
                log.info("waiting for %s (%.0f s so far, giving up after %g s)", what, now - start,
                         self.wait_timeout_s)
                first, last_log = False, now
            time.sleep(min(2.0, max(0.05, self.wait_timeout_s - (now - start))))

    def after_render(self) -> bool:
        """After this process rendered its shards: True when it is the one that may finalize (group rank 0 after
        the last barrier; every job-array task, the lock then picking one)."""
        if self.group is not None:
            self.group.barrier("render")
            return self.group.rank == 0
        return True

    def close(self) -> None:
        """Leave the launcher's group, if joined."""
        if self.group is not None:
            self.group.close()


def _marker_key(path: Path) -> str | None:
    try:
        return read_json(path).get("key")
    except Exception:  # noqa: BLE001 - absent or being replaced: not there yet
        return None


@contextlib.contextmanager
def finalize_lock(folder: str | os.PathLike[str]) -> Iterator[bool]:
    """Yield True to the one process that created `folder/.finalize.lock` (O_EXCL), False to any other; the lock
    goes when its holder is done. A lock whose holder died on this host is taken over; one from another host is
    named in the log (remove it once its holder is known to be gone)."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _break_stale(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        log.info("another process is finalizing (%s holds %s)", _holder(path), path)
        yield False
        return
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return "?"


def _break_stale(path: Path) -> None:
    """Remove a lock left by a finalizer that died on this host (its pid is gone)."""
    host, _, pid = _holder(path).partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        log.info("removing the finalize lock %s: its holder (pid %s) is gone", path, pid)
        path.unlink(missing_ok=True)
    except PermissionError:
        pass

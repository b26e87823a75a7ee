"""Render a plan into dataset shards: resumable, rank-assigned, with encoding and writing overlapped with the GPU.

A shard is the unit of work. Task `i` of `n` (from RANK/WORLD_SIZE, set by `accelerate launch` / torchrun, and
`--task-index/--num-tasks` for job arrays) takes every n-th shard of the plan. Each shard's generation stats carry
the id of the build that wrote it (its plan and everything that decides its bytes): only shards of the current
build count as done, so an overwrite is a new build, never a mix. Within a shard, images are rendered
in fixed-shape batches on the main thread; each accepted image is handed to a thread pool that encodes it, and a
finished shard is written by a writer thread while the next shard renders. The writer's `_stats.json` marker comes
after the shard's files and the generation stats after the marker; a shard counts as done only with both, so a
killed shard is redone from scratch on restart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.dataset import layout
from failmode.dataset.sample import CODECS, DebugSample
from failmode.dataset.writer import shard_done, write_shard
from failmode.errors import UsageError
from failmode.generation.environment import device_record
from failmode.generation.plan import PlanRow
from failmode.generation.quality import QualityScorer
from failmode.generation.render import oom_errors
from failmode.io import read_json, write_json
from failmode.progress import bar
from failmode.runtime import DEFAULT_THREADS, fixed_threads

log = logging.getLogger(__name__)

#: write policies of a dataset folder: resume the current build, or start a new one
WRITES = ("incremental", "overwrite")
SafetyFn = Callable[[Sequence[Image.Image]], list[bool]]


@dataclass
class ShardJob:
    """The plan rows of one shard (positions 0..n-1, in order)."""

    config: str
    split: str
    shard_index: int
    num_shards: int
    rows: list[PlanRow]

    @property
    def name(self) -> str:
        """`<config>/<split>-0000i-of-0000n`."""
        return f"{self.config}/{layout.shard_stem(self.split, self.shard_index, self.num_shards)}"


def shard_jobs(rows: Sequence[PlanRow]) -> list[ShardJob]:
    """Group plan rows into shards, in plan order."""
    jobs: dict[tuple[str, str, int, int], ShardJob] = {}
    for r in rows:
        key = (r.config, r.split, r.shard_index, r.num_shards)
        jobs.setdefault(key, ShardJob(*key, rows=[])).rows.append(r)
    for job in jobs.values():
        job.rows.sort(key=lambda r: r.position)
    return list(jobs.values())


def task_slot(task: int | None = None, tasks: int | None = None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(task, tasks): this process's part of the shards, from RANK/WORLD_SIZE combined with job-array task `task` of
    `tasks`."""
    env = dict(os.environ) if env is None else env
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    part, parts = (task or 0), (tasks or 1)
    if not (0 <= rank < world) or not (0 <= part < parts):
        raise UsageError(f"invalid task slot: rank {rank} of {world}, job-array task {part} of {parts}")
    return part * world + rank, parts * world


def assign(jobs: Sequence[ShardJob], task: int, tasks: int) -> list[ShardJob]:
    """The shards of task `task` of `tasks`: every `tasks`-th shard of the plan, starting at `task`."""
    return [j for i, j in enumerate(jobs) if i % tasks == task]


@dataclass
class BatchState:
    """The batch size in use; halves on out-of-memory."""

    batch_size: int

    def render(self, generator: ImageGenerator, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """Render `requests` in batches of `batch_size`, retrying a batch at half the size when memory runs out."""
        out: list[Image.Image] = []
        i = 0
        while i < len(requests):
            n = self.batch_size
            try:
                out.extend(generator.generate(requests[i:i + n]))
            except oom_errors():
                if n == 1:
                    raise
                self.shrink(generator)
                continue
            i += n
        return out

    def shrink(self, generator: ImageGenerator) -> None:
        """Halve the batch size (and the generator's kernel batch) after an out-of-memory error."""
        import torch

        self.batch_size = max(1, self.batch_size // 2)
        generator.batch_size = self.batch_size
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of memory: batch size lowered to %d (recorded in the shard stats; pixels may differ in "
                    "the last bits from a run at the planned batch size)", self.batch_size)


@dataclass
class ShardRun:
    """One task's pass over the shards of a plan: where they go, what renders them (the generator's batch size
    and safety checker), the quality filter, and how fast. `failmode.generation.generate_dataset` runs it between
    saving the plan and finalizing; regeneration runs it alone on chosen shards."""

    root: Path
    generator: ImageGenerator
    class_names: list[str]
    image_format: str = "png"
    write: str = "incremental"  # WRITES: incremental (skip shards of this build already written) or overwrite
    quality: QualityScorer | None = None
    reserve: int = 3  # replacement seeds per planned image
    encode_workers: int | None = None  # PNG encoding threads (default: the CPU count minus 2, 2..8)
    task: tuple[int, int] = (0, 1)  # (this task, tasks): `task_slot`
    build: str = ""  # the id of the build being written (recorded in each shard's stats; see `shard_current`)
    stats: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.write not in WRITES:
            raise UsageError(f"unknown write policy {self.write!r} (known: {', '.join(WRITES)})")
        self.root = Path(self.root)
        self.safety: SafetyFn | None = self.generator.safety_checker()
        self.encode_workers = self.encode_workers or max(2, min(8, (os.cpu_count() or 4) - 2))
        self.codec = CODECS.get(self.image_format)
        self.state = BatchState(self.generator.batch_size)
        # CPU threads while rendering and scoring: the generator's recorded setting, never the launcher's
        self.threads = int(self.generator.describe().get("threads") or DEFAULT_THREADS)
        self.device = device_record(getattr(self.generator, "device", "cpu"))
        self.wait_s = 0.0  # time the renderer waited for the writer (encoding/writing not hidden behind rendering)

    def pending(self, rows: Sequence[PlanRow]) -> list[ShardJob]:
        """This task's shards still to write: those not written by this build (all of them when overwriting)."""
        mine = assign(shard_jobs(rows), *self.task)
        if self.write == "overwrite":
            return mine
        return [j for j in mine if not shard_current(self.root, j, self.build)]

    def run(self, rows: Sequence[PlanRow]) -> list[dict[str, Any]]:
        """Render and write this task's pending shards; returns their generation stats."""
        jobs = self.pending(rows)
        log.info("task %d of %d: %d shard(s) to write (%d CPU thread(s))", *self.task, len(jobs), self.threads)
        with fixed_threads(self.threads), ThreadPoolExecutor(self.encode_workers, thread_name_prefix="encode") as enc, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as writer, \
                bar("images", total=sum(len(j.rows) for j in jobs), unit="img") as b:
            in_flight: Future[dict[str, Any]] | None = None
            try:
                for job in jobs:
                    t0 = time.perf_counter()
                    samples, gen = self._render_shard(job, enc, b)
                    gen["timings"] = {"render_s": round(time.perf_counter() - t0, 3)}
                    if in_flight is not None:  # at most one shard waits for the writer
                        self._collect(in_flight)
                    in_flight = writer.submit(self._write, job, samples, gen)
            finally:
                if in_flight is not None:
                    self._collect(in_flight)
        return self.stats

    def _collect(self, future: Future[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        self.stats.append(future.result())
        self.wait_s += time.perf_counter() - t0

    def _render_shard(self, job: ShardJob, enc: ThreadPoolExecutor,
                      b: Any) -> tuple[list[Future[tuple[DebugSample, float]]], dict[str, Any]]:
        done: dict[int, Future[tuple[DebugSample, float]]] = {}
        failures = {"quality_dropped": 0, "unsafe_flagged": 0, "unfilled": 0}
        history: dict[int, list[str]] = {}
        pending: list[tuple[PlanRow, int]] = [(r, 0) for r in job.rows]
        while pending:
            retry: list[tuple[PlanRow, int]] = []
            for chunk in _chunks(pending, self.state.batch_size):
                reqs = [row.request(a) for row, a in chunk]
                images = self.state.render(self.generator, reqs)
                verdicts = self._verdicts(images, reqs)
                for (row, attempt), image, (reason, scores) in zip(chunk, images, verdicts, strict=True):
                    if reason is None:
                        done[row.position] = enc.submit(_timed, self._sample, row, attempt, image, scores,
                                                        ",".join(history.get(row.position, [])))
                        b.update(1)
                        continue
                    failures["quality_dropped" if reason == "quality" else "unsafe_flagged"] += 1
                    history.setdefault(row.position, []).append(f"{reason}@{attempt}")
                    if attempt < self.reserve:
                        retry.append((row, attempt + 1))
                    else:
                        failures["unfilled"] += 1
                        b.update(1)
            pending = retry
        gen = {
            "config": job.config, "split": job.split, "shard_index": job.shard_index, "num_shards": job.num_shards,
            "planned": len(job.rows), "count": len(done), "failures": failures,
            "substituted": sum(1 for p in history if p in done), "batch_size": self.state.batch_size,
            "generator": self.generator.ident, "quality": getattr(self.quality, "ident", None),
            "safety_checker": self.safety is not None, "reserve": self.reserve,
            "build": self.build, **self.device, "threads": self.threads,
        }
        return [done[p] for p in sorted(done)], gen

    def _verdicts(self, images: Sequence[Image.Image],
                  reqs: Sequence[GenerationRequest]) -> Iterator[tuple[str | None, dict[str, float]]]:
        unsafe = self.safety(images) if self.safety else [False] * len(images)
        scores = self.quality.score(images, reqs) if self.quality else [{} for _ in images]
        for flag, s in zip(unsafe, scores, strict=True):
            if flag:
                yield "unsafe", s
            elif self.quality is not None and not self.quality.keep(s):
                yield "quality", s
            else:
                yield None, s

    def _sample(self, row: PlanRow, attempt: int, image: Image.Image, scores: dict[str, float],
                substitution: str) -> DebugSample:
        data = self.codec.encode(image.convert("RGB"))
        req = row.request(attempt)
        extra = {"planned_seed": row.seed, "attempt": attempt, "substitution": substitution,
                 "negative_prompt": row.negative_prompt, "guidance_scale": row.guidance_scale,
                 "num_inference_steps": row.num_inference_steps, "height": row.height, "width": row.width}
        return DebugSample(image=data, label=row.label, class_name=row.class_name, context=row.context,
                           context_kind=row.context_kind, prompt=row.prompt, seed=req.seed, generator=row.generator,
                           source_model=row.source_model, scores=dict(scores), extra=extra)

    def _write(self, job: ShardJob, futures: list[Future[tuple[DebugSample, float]]],
               gen: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        samples = [s for s, _ in results]
        encode_s = sum(dt for _, dt in results)
        t1 = time.perf_counter()
        gen["timings"].update(encode_s=round(encode_s, 3), encode_wait_s=round(t1 - t0, 3))
        # The generation stats are written once, after the shard and its marker: a shard counts as written only
        # when both are there (`shard_current`), so a kill between the two redoes the shard. Timings stay out of
        # the file (they differ between runs; the folder is deterministic): they are logged and returned.
        path = gen_stats_path(self.root, job.config, job.split, job.shard_index, job.num_shards)
        path.unlink(missing_ok=True)
        written = write_shard(self.root, job.config, job.split, job.shard_index, job.num_shards, samples,
                              class_names=self.class_names, image_format=self.image_format)
        gen["timings"]["write_s"] = round(time.perf_counter() - t1, 3)
        gen["rejected"] = len(written.get("rejected", []))
        write_json(path, {k: v for k, v in gen.items() if k != "timings"})
        log.info("%s: %d/%d images (%s)", job.name, gen["count"], gen["planned"], gen["failures"])
        log.debug("%s: timings %s", job.name, gen["timings"])
        return gen


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def shard_current(root: str | os.PathLike[str], job: ShardJob, build: str) -> bool:
    """True when `job`'s shard and its generation stats (written after it) are there and, when `build` is given,
    the shard was written by that build."""
    if not shard_done(root, job.config, job.split, job.shard_index, job.num_shards):
        return False
    path = gen_stats_path(root, job.config, job.split, job.shard_index, job.num_shards)
    try:
        stats = read_json(path)
    except Exception:  # noqa: BLE001 - stats missing or torn: the shard is redone
        return False
    return not build or stats.get("build") == build


def gen_stats_path(root: str | os.PathLike[str], config: str, split: str, shard_index: int, num_shards: int) -> Path:
    """Where a shard's generation stats are kept (`failmode.dataset.layout.generation_stats_path`)."""
    return layout.generation_stats_path(root, config, split, shard_index, num_shards)

"""Regenerate named shards of a dataset folder from its manifest and plan, and check them against the manifest.

The manifest decides everything that decides the bytes: the generator's resolved commit, the render options with
the CPU thread count, the quality filter; what this machine cannot reproduce (another device, other library
versions) is said in one line before rendering."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failmode.backends import BackendContext
from failmode.dataset import Manifest, layout
from failmode.dataset.validate import check_listed, load_finalized
from failmode.errors import UsageError
from failmode.generation.environment import COMMIT_RE, device_record, differences
from failmode.generation.plan import PlanRow, read_plan_of
from failmode.generation.shards import ShardRun, gen_stats_path, shard_jobs
from failmode.io import read_json, sha256_file
from failmode.options import RenderOptions

log = logging.getLogger(__name__)


def select_shards(rows: Sequence[PlanRow], names: Sequence[str]) -> list[PlanRow]:
    """The plan rows of shards named `<config>/<split>-0000i-of-0000n` (or `<config>/<split>-0000i`)."""
    jobs = {j.name: j for j in shard_jobs(rows)}
    short = {n.rsplit("-of-", 1)[0]: n for n in jobs}
    out: list[PlanRow] = []
    for name in names:
        full = name if name in jobs else short.get(name)
        if full is None:
            raise UsageError(f"no shard {name!r} in the plan (e.g. {next(iter(jobs), 'none')})")
        out.extend(jobs[full].rows)
    return out


def _quality(manifest: Manifest, device: str | None) -> Any:
    """The quality filter the manifest records (its settings), or None when the dataset was built without one."""
    settings = manifest.generation.get("quality_settings")
    if not settings:
        return None
    from failmode.generation.build import make_quality
    from failmode.generation.presets import QualitySection
    from failmode.typed import from_mapping

    return make_quality(from_mapping(QualitySection, settings, "manifest generation.quality_settings"), device=device)


def regenerate_shards(root: str | os.PathLike[str], shards: Sequence[str], out: str | os.PathLike[str], *,
                      generator: str | None = None, device: str | None = None) -> dict[str, bool]:
    """Render the named shards of dataset `root` again into `out`; per shard, True if its parquet and tar bytes
    equal the manifest's hashes. `generator` points at a local copy of the manifest's generator."""
    from failmode.generation.build import registered_generator
    from failmode.generation.render import DiffusersGenerator

    root, out = Path(root), Path(out)
    manifest = load_finalized(root)
    check_listed(root, manifest)  # read regular files of the folder only: no link, nothing the manifest does not list
    rows = select_shards(read_plan_of(root), shards)
    g = manifest.generation
    fields = {f.name for f in dataclasses.fields(RenderOptions)} - {"device"}
    gen_id = generator or manifest.generator["id"]
    gen = registered_generator(gen_id, BackendContext(device=device, dataset=manifest.mining.get("id")),
                               manifest.generator.get("options"))
    if gen is not None:  # a registered backend (the demo's composite stand-in)
        options = RenderOptions(device=device, batch_size=int(g.get("batch_size", 16)))
    else:
        options = RenderOptions(device=device, **{k: v for k, v in g.items() if k in fields})
        # One pipeline and one quality scorer for every shard; only the kernel batch is set per shard. The Hub
        # commit the build resolved, not the branch it named (unless a local copy is given).
        resolved = manifest.generator.get("resolved_revision", "")
        revision = resolved if generator is None and COMMIT_RE.match(resolved) else manifest.generator.get("revision")
        gen = DiffusersGenerator(gen_id, revision=revision or None, options=options,
                                 ident=manifest.generator.get("ident"))
    _say_differences(manifest, gen)
    quality = _quality(manifest, device)
    results: dict[str, bool] = {}
    for job in shard_jobs(rows):
        stats_file = gen_stats_path(root, job.config, job.split, job.shard_index, job.num_shards)
        # the batch size the shard was rendered at (lower than planned after an out-of-memory retry)
        # and the spare seeds it had per image
        stats = read_json(stats_file) if stats_file.exists() else {}
        gen.batch_size = stats.get("batch_size", options.batch_size)
        ShardRun(out, gen, manifest.class_names, image_format=manifest.image_format, write="overwrite",
                 quality=quality, reserve=stats.get("reserve", 3), build=g.get("build", "")).run(job.rows)
        results[job.name] = _matches(root, out, job, manifest)
        log.info("%s: %s", job.name, "identical to the manifest" if results[job.name] else "DIFFERS from the manifest")
    return results


def _say_differences(manifest: Manifest, gen: Any) -> None:
    """One line naming what of this machine differs from the one that built the dataset (device, versions)."""
    from failmode.dataset.finalize import environment

    recorded = {**manifest.environment, **{k: manifest.generation.get(k) for k in ("device", "device_name")}}
    diff = differences(recorded, {**environment(), **device_record(getattr(gen, "device", "cpu"))})
    if diff:
        log.warning("this machine differs from the one that built %s (%s): shards may not be byte-identical",
                    manifest.name, diff)


def _matches(root: Path, out: Path, job: Any, manifest: Manifest) -> bool:
    rels = [p("", job.config, job.split, job.shard_index, job.num_shards).as_posix()
            for p in (layout.parquet_path, layout.tar_path)]
    return all(manifest.files.get(r) == sha256_file(out / r) for r in rels)

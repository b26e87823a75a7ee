"""One call for everything `failmode evaluate` does: standard settings, sweeps and collective debugging per model.

Outputs under `out_dir`: results.jsonl (append-only, one line per model x config x setting), tables.md,
per_class/*.json, sweeps/<model>__{lambda,k,images_per_mode}.{json,png}, collective.{json,png}. Runs whose key is
already in results.jsonl are skipped before any model or feature is loaded (with `force` they are recomputed and
replace their lines), so a rerun with the same arguments adds no line; when nothing new was run, the tables and
plots are left as they are (delete tables.md to redraw them from the log).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failmode.errors import UsageError
from failmode.evaluate.pipeline import EvalSpec, Run, Setting, execute, standard_runs
from failmode.evaluate.results import ResultsLog, write_table
from failmode.evaluate.sweeps import (
    collective_runs,
    images_per_mode_runs,
    k_runs,
    lambda_runs,
    plot_collective,
    relative_accuracy,
    select,
    write_sweep,
)
from failmode.head import HeadParams
from failmode.io import write_json


def run_suite(specs: Sequence[EvalSpec], params: HeadParams, out_dir: str | os.PathLike[str], *,
              lambdas: Sequence[float] = (), ks: Sequence[int] = (), images_per_mode: Sequence[int] = (),
              collective: str | None = None,
              type2_model: str | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Evaluate every spec (standard settings + requested sweeps), then collective debugging if `collective` is set.

    Returns the records this call appended to out_dir/results.jsonl.
    """
    if collective and len(specs) < 2:
        raise UsageError("collective debugging needs a family: pass --model at least twice")
    out = Path(out_dir)
    results = ResultsLog(out / "results.jsonl")
    type2_model = type2_model or specs[0].model.id
    specs = [recorded_policy_configs(spec) for spec in specs]
    coll = collective_runs(specs, params, collective, type2_model) if collective else []
    written: list[dict[str, Any]] = []
    for spec in specs:
        runs = (standard_runs(spec, params) + lambda_runs(spec, params, lambdas) + k_runs(spec, params, ks)
                + images_per_mode_runs(spec, params, images_per_mode))
        runs += [run for run in coll if run.spec is spec]
        written += execute(spec, runs, results, force, out_dir=out)
    if written or not (out / "tables.md").exists():
        _write_reports(out, results.read(), specs, params, lambdas, ks, images_per_mode, coll)
    return written


def recorded_policy_configs(spec: EvalSpec) -> EvalSpec:
    """`spec` with `policy_configs` filled from a local debug dataset's manifest when unset: the model's other
    configs of kind model (its budget-policy siblings, `<model>-evidence-weighted`), so they are scored beside it."""
    import dataclasses

    from failmode.dataset.layout import MANIFEST_NAME
    from failmode.hub import is_local
    from failmode.io import read_json

    debug = spec.debug
    path = Path(debug.debug_data).expanduser() / MANIFEST_NAME
    if debug.policy_configs or debug.debug_data.startswith("wds:") or not is_local(debug.debug_data) \
            or not path.is_file():
        return spec
    configs = read_json(path).get("configs") or {}
    siblings = tuple(sorted(name for name, c in configs.items() if isinstance(c, dict) and c.get("kind") == "model"
                            and c.get("source_model") == spec.model.id and name != spec.model_config))
    return dataclasses.replace(spec, debug=dataclasses.replace(debug, policy_configs=siblings)) if siblings else spec


def _write_reports(out: Path, records: list[dict[str, Any]], specs: Sequence[EvalSpec], params: HeadParams,
                   lambdas: Sequence[float], ks: Sequence[int], images_per_mode: Sequence[int],
                   coll: list[Run]) -> None:
    for spec in specs:
        original = next(iter(select(records, [Run(spec, Setting.ORIGINAL)])), None)
        if lambdas:
            write_sweep(out, spec, "lambda", select(records, lambda_runs(spec, params, lambdas)), original)
        if ks:
            write_sweep(out, spec, "k", select(records, k_runs(spec, params, ks)), original)
        if images_per_mode:
            write_sweep(out, spec, "images_per_mode",
                        select(records, images_per_mode_runs(spec, params, images_per_mode)), original)
    if coll:
        rows = relative_accuracy(select(records, coll))
        write_json(out / "collective.json", rows)
        plot_collective(rows, out / "collective.png")
    write_table(out / "tables.md", records)


"""Lambda, k and images-per-mode sweeps of the debug head (the paper's Figure 5) and collective debugging (Figure 6),
with plots.

lambda sweep: the model's config at each lambda (heldout accuracy rises and test accuracy falls as lambda grows).
k sweep: only each class's top-k failure modes (contexts) of the config, at the chosen lambda.
images-per-mode sweep: only the first n images of each failure mode of the config, at the chosen lambda.
collective: a family of models, each debugged (individual) with its own config, (type 1) with the family's pooled
config, and (type 2) with one model's config; relative accuracy = accuracy / individual accuracy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failmode.dataset.layout import config_slug
from failmode.errors import UsageError
from failmode.evaluate.pipeline import EvalSpec, Run, Setting
from failmode.evaluate.results import METRICS
from failmode.head import HeadParams
from failmode.io import write_json
from failmode.plots import save_figure, subplots

SWEEPS = {"lambda": "lam", "k": "k", "images_per_mode": "images_per_mode"}
COLLECTIVE = (Setting.COLLECTIVE_INDIVIDUAL, Setting.COLLECTIVE_TYPE1, Setting.COLLECTIVE_TYPE2)


def lambda_runs(spec: EvalSpec, params: HeadParams, lambdas: Sequence[float]) -> list[Run]:
    """Planned runs of a lambda sweep on the model's config (each lambda checked as HeadParams checks it)."""
    return [Run(spec, Setting.LAMBDA_SWEEP, spec.model_config, dataclasses.replace(params, lam=float(lam)))
            for lam in lambdas]


def _at_least_one(values: Sequence[int], what: str) -> None:
    bad = [v for v in values if int(v) < 1]
    if bad:
        raise UsageError(f"{what}: values must be >= 1, got {bad[0]}")


def k_runs(spec: EvalSpec, params: HeadParams, ks: Sequence[int]) -> list[Run]:
    """Planned runs of a k sweep (top-k failure modes per class) on the model's config."""
    _at_least_one(ks, "k sweep")
    return [Run(spec, Setting.K_SWEEP, spec.model_config, params, k=int(k)) for k in ks]


def images_per_mode_runs(spec: EvalSpec, params: HeadParams, counts: Sequence[int]) -> list[Run]:
    """Planned runs of an images-per-mode sweep: the first n images of each (class, context) of the model's config."""
    _at_least_one(counts, "images-per-mode sweep")
    return [Run(spec, Setting.IMAGES_PER_MODE_SWEEP, spec.model_config, params, images_per_mode=int(n))
            for n in counts]


def collective_runs(specs: Sequence[EvalSpec], params: HeadParams, collective_config: str,
                    type2_model: str) -> list[Run]:
    """Planned runs of collective debugging: per model, individual, type 1 (pooled) and type 2 (one model's) config."""
    configs = (None, collective_config, config_slug(type2_model))
    return [Run(s, setting, config or s.model_config, params) for s in specs for setting, config in zip(COLLECTIVE, configs)]


def select(records: Sequence[dict[str, Any]], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The latest record of each planned run, in plan order (runs not in `records` are left out)."""
    by_key = {r["key"]: r for r in records if "key" in r}
    return [by_key[k] for k in (run.key for run in runs) if k in by_key]


def sweep_points(records: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """(x, test, seed, heldout) points of a sweep, sorted by x."""
    x = SWEEPS[kind]
    return sorted(({x: r["params"][x], **{m: r.get(m) for m in METRICS}} for r in records), key=lambda p: p[x])


def plot_sweep(points: Sequence[dict[str, Any]], kind: str, path: str | os.PathLike[str], title: str,
               baseline: dict[str, Any] | None = None) -> None:
    """Accuracy (test / seed / heldout) against lambda or k as a PNG; dashed lines: the original head."""
    x = SWEEPS[kind]
    fig, ax = subplots(figsize=(5, 3.5))
    for m, colour in zip(METRICS, ("tab:blue", "tab:orange", "tab:green")):
        xs = [p[x] for p in points if p[m] is not None]
        ax.plot(xs, [100 * p[m] for p in points if p[m] is not None], marker="o", color=colour, label=m)
        if baseline is not None and baseline.get(m) is not None:
            ax.axhline(100 * baseline[m], color=colour, linestyle="--", linewidth=0.8)
    if kind == "lambda" and all(p[x] >= 0 for p in points):
        ax.set_xscale("symlog", linthresh=0.1)
    xlabel = {"lambda": "λ", "k": "k (failure modes per class)", "images_per_mode": "images per failure mode"}[kind]
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", title=title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def relative_accuracy(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and collective setting: accuracies and their ratio to the model's individual debugging."""
    individual = {r["model"]: r for r in records if r["setting"] == Setting.COLLECTIVE_INDIVIDUAL.value}
    out = []
    for r in records:
        base = individual.get(r["model"])
        if base is None:
            continue
        row = {"model": r["model"], "setting": r["setting"], "config": r["config"]}
        for m in METRICS:
            row[m] = r.get(m)
            row[f"{m}_relative"] = None if not base.get(m) or r.get(m) is None else r[m] / base[m]
        out.append(row)
    return out


def plot_collective(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], metric: str = "heldout") -> None:
    """Grouped bars: per model, relative `metric` accuracy of type 1 and type 2 collective debugging."""
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = subplots(figsize=(max(4, 1.2 * len(models) + 2), 3.5))
    for j, setting in enumerate(s.value for s in COLLECTIVE[1:]):
        vals = [next((r[f"{metric}_relative"] or 0.0 for r in rows if r["model"] == m and r["setting"] == setting), 0.0)
                for m in models]
        ax.bar(np.arange(len(models)) + 0.4 * j - 0.2, vals, width=0.4, label=setting.removeprefix("collective-"))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right")
    ax.set(ylabel=f"relative {metric} accuracy", title="collective vs individual debugging")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def write_sweep(out_dir: Path, spec: EvalSpec, kind: str, records: Sequence[dict[str, Any]],
                original: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Write sweeps/<model>__<kind>.json (the numbers) and .png (the plot); return the points."""
    points = sweep_points(records, kind)
    model = spec.model.id
    stem = out_dir / "sweeps" / f"{config_slug(model)}__{kind}"
    write_json(stem.with_suffix(".json"), {"model": model, "config": spec.model_config, "points": points,
                                           "original": {m: (original or {}).get(m) for m in METRICS}})
    plot_sweep(points, kind, stem.with_suffix(".png"), f"{model}: {kind} sweep ({spec.model_config})", original)
    return points

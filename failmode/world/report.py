"""The demo's report.md and its plots (lambda sweep, images-per-mode sweep, example grids)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failmode.io import write_bytes_atomic
from failmode.plots import save_figure, subplots

METHOD_LABELS = {"before": "before (no debug data)", "ours": "ours, top-k (the k most frequent mined modes)",
                 "evidence-weighted": "ours, evidence-weighted (the same images per class, spread by the evidence)",
                 "class-only": "class-only baseline", "random-context": "random-context baseline"}
#: the methods compared at equal budget in the policy tables, by their names in results.json's `methods`
POLICY_COLUMNS = (("top-k", "ours"), ("weighted", "evidence-weighted"), ("random-context", "random-context"),
                  ("class-only", "class-only"))
METRICS = ("test_acc", "test_common_acc", "test_uncommon_acc", "worst_group_acc", "seed_acc", "heldout_acc")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def plot_sweep(points: Sequence[dict[str, Any]], x: str, path: Path, title: str, log_x: bool = False,
               baselines: dict[str, float | None] | None = None) -> None:
    """Accuracy (heldout, test, test common) against `x`; optional horizontal baseline lines (heldout)."""
    fig, ax = subplots(figsize=(5.5, 3.6))
    xs = [p[x] for p in points]
    for metric, style in (("heldout_acc", "o-"), ("test_acc", "s-"), ("test_common_acc", "^--")):
        ax.plot(xs, [100 * (p[metric] or 0) for p in points], style, label=metric.replace("_acc", ""))
    for name, value in (baselines or {}).items():
        if value is not None:
            ax.axhline(100 * value, linestyle=":", color="grey")
            ax.text(xs[0], 100 * value + 1, f"heldout, {name}", fontsize=7, color="grey")
    if log_x:
        ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel(x)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=100, tight=True)


def plot_grid(images: Sequence[Any], captions: Sequence[str], path: Path, cols: int, title: str) -> None:
    """Images in a grid with a small caption under each."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im, cap in zip(axes.ravel(), images, captions):
        ax.imshow(im)
        ax.set_title(cap, fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=100, tight=True)


def failure_grid(records: Sequence[dict[str, Any]], source: Any, truth: Sequence[str], path: Path,
                 per_class: int) -> None:
    """Seed failures, `per_class` per class: true class -> prediction, attributed and true context."""
    names = source.class_names
    picked: list[dict[str, Any]] = []
    for y in range(len(names)):
        picked += [r for r in records if r["label"] == y and r["half"] == "seed"][:per_class]
    captions = [f"{names[r['label']]} -> {names[r['prediction']]}\nattr: {r['context']}\ntrue: {truth[r['index']]}"
                for r in picked]
    plot_grid([source.image(r["index"]) for r in picked], captions, path, per_class * 2,
              "seed failures (true -> predicted; attributed / true context)")


def debug_grid(ds: Any, path: Path, per_class: int) -> None:
    """The first debug images of the model's config: one per failure mode, `per_class` per class at most."""
    seen: dict[int, list[int]] = {}
    contexts = ds.contexts or [""] * len(ds.labels)
    for i, y in enumerate(ds.labels):
        rows = seen.setdefault(int(y), [])
        if len(rows) < per_class and contexts[i] not in {contexts[j] for j in rows}:
            rows.append(i)
    picked = [i for y in sorted(seen) for i in seen[y]]
    names = ds.source.class_names
    plot_grid([ds.source.image(i) for i in picked], [f"{names[ds.source.labels[i]]}\n{contexts[i]}" for i in picked],
              path, per_class * 2, f"debug images of config `{ds.config}` (composite stand-in)")


def _table(results: dict[str, Any]) -> list[str]:
    configs = results.get("configs", {})
    lines = ["| method | config | debug images | test | test, common ctx | test, uncommon ctx | worst context "
             "| seed failures | heldout failures |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["methods"].items():
        config = f"`{configs[name]}`" if configs.get(name) else "–"
        lines.append(f"| {METHOD_LABELS.get(name, name)} | {config} | {m['n_images']} | "
                     + " | ".join(_pct(m.get(k)) for k in METRICS) + " |")
    return lines


def _sweep_table(points: Sequence[dict[str, Any]], x: str) -> list[str]:
    lines = [f"| {x} | test | test, common ctx | heldout failures |", "|---:|---:|---:|---:|"]
    lines += [f"| {p[x]} | {_pct(p['test_acc'])} | {_pct(p['test_common_acc'])} | {_pct(p['heldout_acc'])} |"
              for p in points]
    return lines


def _modes_table(results: dict[str, Any]) -> list[str]:
    k = results["parameters"]["demo"]["k"]
    lines = [f"| class | seed failures | top-{k} attributed contexts (count) | true uncommon contexts "
             "| common context |", "|---|---:|---|---|---|"]
    for c in results["per_class_modes"]:
        modes = ", ".join(f"{m['context']} ({m['count']})" for m in c["modes"])
        lines.append(f"| {c['class_name']} | {c['n_seed_failures']} | {modes} | "
                     f"{', '.join(c['true_uncommon_contexts'])} | {c['common_context']} |")
    return lines


def _budget_table(results: dict[str, Any]) -> list[str]:
    """Images per context of each class under each budget policy (the manifest's attribution.budget)."""
    configs = (results.get("budget") or {}).get("configs") or {}
    if not configs:
        return ["Budget policy: top-k only."]
    names = {int(c["label"]): c["class_name"] for c in results["per_class_modes"]}
    lines = ["| class | " + " | ".join(f"`{c}` ({v['policy']})" for c, v in configs.items()) + " |",
             "|---|" + "---|" * len(configs)]
    labels = sorted({int(y) for v in configs.values() for y in v["images"]})
    for y in labels:
        cells = [", ".join(f"{ctx} {n}" for ctx, n in sorted(v["images"].get(str(y), {}).items(),
                                                            key=lambda kv: (-kv[1], kv[0]))) for v in configs.values()]
        lines.append(f"| {names.get(y, y)} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(results: dict[str, Any]) -> str:
    """The report text (plots are referenced from plots/)."""
    p, s = results["parameters"], results["stand_ins"]
    ours = results["configs"]["ours"]
    lines = [
        f"# failmode demo: fashion-scenes world `{results['world']}`, seed {results['seed']}", "",
        "The whole method on an offline world of real Fashion-MNIST objects on real scene photos, run as a user runs "
        "it: the world is exported as a local dataset (`world/`), `failmode build` makes the debug dataset "
        "(`dataset/`) from the `fashion-scenes-debug` preset, `failmode evaluate` retrains the head (`evaluate/`). "
        "Every number below is from evaluate's `evaluate/results.jsonl`. Two stages use **stand-ins** (registered "
        "backends beside the real ones):",
        f"- image generation: `{s['generator']}`",
        f"- attribution: `{s['attributor']}`", "",
        "The same numbers, as commands (`commands.sh`):", "", "```bash", *results["commands"], "```", "",
        f"Backbone `{p['backbone']}` (frozen) + linear head ({p['head']['before']}); failures mined on the debug "
        f"split: {results['n_failures_seed']} seed, {results['n_failures_heldout']} heldout. Attribution top-1 "
        f"(seed failures in an uncommon context, n = {results['n_attribution_top1']}): "
        f"**{_pct(results['attribution_top1'])} %** (attributor `{results['attributor']}`).", "",
        "Synthetic-to-real gap: a linear probe on the frozen features tells the generator's images from the world's "
        f"photos of held-out objects with **{_pct(results['gap_probe_acc'])} %** held-out accuracy "
        f"(n = {results['gap_probe']['n_eval']}; 50 % = no visible gap).", "",
        "## Accuracy (%) after retraining the head with lambda = "
        f"{p['demo']['lam']}, {p['demo']['images_per_mode']} images per mode", "",
        *_table(results), "",
        "Worst context: the lowest test accuracy over the contexts (groups of `--group-column context`). "
        "`class-only` renders the plain class prompt (in this world: the class on its common scene), "
        "`random-context` spreads, per class, as many images as the model's config has over the class's vocabulary "
        "contexts in equal shares (+-1 image, seeded).", "",
        "## Failure modes per class (seed failures)", "", *_modes_table(results), "",
        "## Images per context under each budget policy (docs/budget-policies.md)", "",
        "`top-k` puts the same number of images on each of the k most frequent attributed contexts; "
        "`evidence-weighted` spreads the same number per class over the vocabulary by the seed failures' counts.", "",
        *_budget_table(results), "",
        "## Lambda sweep (ours)", "", "![lambda sweep](plots/lambda_sweep.png)", "",
        *_sweep_table(results["lambda_sweep"], "lam"), "",
        "## Images-per-mode sweep (ours)", "", "![images per mode sweep](plots/images_per_mode_sweep.png)", "",
        *_sweep_table(results["images_per_mode_sweep"], "images_per_mode"), "",
        "## Examples", "", "![seed failures](plots/failures.png)", "", "![debug images](plots/debug_images.png)", "",
        "## Timings (s)", "", "| stage | seconds |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in results["timings_s"].items()], "",
        "All parameters are in `results.json`; the debug dataset is in `dataset/` "
        f"(`datasets.load_dataset(\"dataset\", \"{ours}\")`), mining and attribution outputs in `work/`.",
    ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict[str, Any], world: Any, paths: Any) -> Path:
    """Write out/report.md and out/plots/*.png; return the report path."""
    from failmode.data.sources import open_source
    from failmode.dataset import config_slug
    from failmode.evaluate.data import open_debug_set
    from failmode.mining.tables import read_table

    plots = out / "plots"
    per = int(results["parameters"]["demo"]["grid_examples"])
    main = results["methods"]
    plot_sweep(results["lambda_sweep"], "lam", plots / "lambda_sweep.png", "ours: accuracy vs lambda", log_x=True,
               baselines={"random-context": main["random-context"]["heldout_acc"]})
    plot_sweep(results["images_per_mode_sweep"], "images_per_mode", plots / "images_per_mode_sweep.png",
               "ours: accuracy vs images per mode",
               baselines={"random-context": main["random-context"]["heldout_acc"],
                          "class-only": main["class-only"]["heldout_acc"]})
    ours = results["configs"]["ours"]
    records, _ = read_table(paths.work / "models" / config_slug(ours) / "attributions.parquet")
    evaluation = open_source(str(paths.world), "validation")
    failure_grid(records, evaluation, evaluation.column("context"), plots / "failures.png", max(1, per // 2))
    k = int(results["parameters"]["demo"]["k"])
    debug = open_debug_set(str(paths.dataset), ours, evaluation.class_names)
    debug_grid(debug, plots / "debug_images.png", max(1, min(per, k)))
    path = out / "report.md"
    write_bytes_atomic(path, report_markdown(results).encode("utf-8"))
    return path


def seeds_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown table of several demo results (one row per run with its command, then the mean per world), in %."""
    cols = ("heldout_acc_ours", "heldout_acc_random_context", "heldout_acc_class_only", "attribution_top1",
            "gap_probe_acc", "test_acc_before", "test_acc_after", "worst_group_acc_before", "worst_group_acc_after",
            "test_common_acc_before", "test_common_acc_after")
    head = ("| world | seed | heldout: ours | random-context | class-only | attribution top-1 | gap probe "
            "| test before | after "
            "| worst context before | after | test common before | after | seed / heldout failures | command |")
    lines = [head, "|---|---:|" + "---:|" * (len(cols) + 1) + "---|"]
    for r in runs:
        lines.append(f"| {r['world']} | {r['seed']} | " + " | ".join(_pct(r[c]) for c in cols)
                     + f" | {r['n_failures_seed']} / {r['n_failures_heldout']} "
                     f"| `failmode demo --out runs/{r['world']}-{r['seed']} --world {r['world']} --seed {r['seed']}` |")
    for world in dict.fromkeys(r["world"] for r in runs):
        group = [r for r in runs if r["world"] == world]
        means = [float(np.mean([r[c] for r in group])) for c in cols]
        lines.append(f"| **{world} mean** | {len(group)} seeds | " + " | ".join(_pct(m) for m in means) + " | | |")
    return "\n".join(lines) + "\n"


def _metric(r: dict[str, Any], method: str, metric: str) -> float | None:
    return (r["methods"].get(method) or {}).get(metric)


def _mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) or not values else float(np.mean(values))


def policies_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown table of held-out failure / test / worst-context accuracy of top-k, evidence-weighted, random-context
    and class-only (equal budget for the first three), one row per run with its command, then the mean per world."""
    metrics = (("heldout", "heldout_acc"), ("test", "test_acc"), ("worst context", "worst_group_acc"))
    head = "| world | seed | " + " | ".join(f"{m}: {n}" for m, _ in metrics for n, _ in POLICY_COLUMNS) + " | command |"
    lines = [head, "|---|---:|" + "---:|" * (len(metrics) * len(POLICY_COLUMNS)) + "---|"]
    for r in runs:
        cells = [_pct(_metric(r, method, key)) for _, key in metrics for _, method in POLICY_COLUMNS]
        lines.append(f"| {r['world']} | {r['seed']} | " + " | ".join(cells)
                     + f" | `failmode demo --out runs/{r['world']}-{r['seed']} --world {r['world']} --seed {r['seed']}` |")
    for world in dict.fromkeys(r["world"] for r in runs):
        group = [r for r in runs if r["world"] == world]
        cells = [_pct(_mean([_metric(r, method, key) for r in group])) for _, key in metrics
                 for _, method in POLICY_COLUMNS]
        lines.append(f"| **{world} mean** | {len(group)} seeds | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def acceptance_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per world, mean over its runs: evidence-weighted held-out accuracy minus the better of top-k and
    random-context, and its test accuracy minus top-k's (points; the bound is -1)."""
    lines = ["| world | seeds | heldout: weighted | max(top-k, random-context) | difference | test: weighted | top-k "
             "| difference |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for world in dict.fromkeys(r["world"] for r in runs):
        group = [r for r in runs if r["world"] == world]
        held = {m: _mean([_metric(r, m, "heldout_acc") for r in group])
                for m in ("ours", "evidence-weighted", "random-context")}
        test = {m: _mean([_metric(r, m, "test_acc") for r in group]) for m in ("ours", "evidence-weighted")}
        if None in held.values() or None in test.values():
            continue
        best = max(held["ours"], held["random-context"])
        lines.append(f"| {world} | {len(group)} | {_pct(held['evidence-weighted'])} | {_pct(best)} | "
                     f"{100 * (held['evidence-weighted'] - best):+.1f} | {_pct(test['evidence-weighted'])} | "
                     f"{_pct(test['ours'])} | {100 * (test['evidence-weighted'] - test['ours']):+.1f} |")
    return "\n".join(lines) + "\n"


def lambda_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the lambda sweep (heldout / test accuracy of the model's config), mean over each world's runs."""
    lams = [p["lam"] for p in runs[0]["lambda_sweep"]]
    lines = ["| world | " + " | ".join(f"λ = {lam}" for lam in lams) + " |", "|---|" + "---:|" * len(lams)]
    for world in dict.fromkeys(r["world"] for r in runs):
        group = [r for r in runs if r["world"] == world]
        cells = []
        for j in range(len(lams)):
            held = np.mean([r["lambda_sweep"][j]["heldout_acc"] for r in group])
            test = np.mean([r["lambda_sweep"][j]["test_acc"] for r in group])
            cells.append(f"{100 * held:.1f} / {100 * test:.1f}")
        lines.append(f"| {world} (heldout / test) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""Evaluation results: one append-only JSONL line per model x config x setting, a markdown table, resume keys.

A record is a flat JSON object: the identifying fields in `KEY_FIELDS` (model, weights, dataset, debug data and its
revision, config, setting, and every head/split parameter in `params`), the metrics, and provenance. Its `key` is a
hash of the identifying fields only, so a rerun can tell, before loading anything, which runs are done (and skip
them unless `--force`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from failmode.io import append_jsonl, dumps_jsonl, read_jsonl, stable_hash, write_bytes_atomic

#: fields that identify a run; equal fields -> same key -> skipped on a rerun (recomputed with --force)
KEY_FIELDS: tuple[str, ...] = ("model", "weights", "dataset", "debug_data", "revision", "config", "setting", "params")

#: the accuracies every record carries (fractions in [0, 1]; NaN-free: an empty set is recorded as null): on the test
#: split and on the model's failures of the seed and heldout halves (the sets the code calls seed_half / heldout_half)
METRICS: tuple[str, ...] = ("test", "seed", "heldout")


def result_key(fields: dict[str, Any]) -> str:
    """Hash of a record's identifying fields (`KEY_FIELDS`)."""
    missing = [k for k in KEY_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"result fields lack {missing}")
    return stable_hash({k: fields[k] for k in KEY_FIELDS}, n=20)


def clean_metric(v: float | None) -> float | None:
    """A JSON-safe accuracy: None for NaN (an empty evaluation set)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class ResultsLog:
    """The results file: `append` adds records (with their `key`), `done` lists the keys present.

    A record whose key is already in the file replaces that line (a recomputed run, `--force`), so the file never
    holds two lines of one run; new keys are appended, after cutting a torn last line left by a killed run.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """All records, in file order."""
        return read_jsonl(self.path)

    def done(self) -> set[str]:
        """Keys of the records already written."""
        return {r["key"] for r in self.read() if "key" in r}

    def append(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write records, adding each one's `key`: new keys are appended, known keys replace their line; returns
        them as written."""
        out = [{**r, "key": result_key(r)} for r in records]
        new = {r["key"]: r for r in out}
        existing = self.read()
        if any(r.get("key") in new for r in existing):
            kept = [new.pop(r["key"]) if r.get("key") in new else r for r in existing]
            lines = [dumps_jsonl(r) for r in [*kept, *new.values()]]
            write_bytes_atomic(self.path, "".join(lines).encode("utf-8"))
        else:
            append_jsonl(self.path, out)
        return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _delta(v: float | None, base: float | None) -> str:
    return "" if v is None or base is None else f" ({100 * (v - base):+.1f})"


def model_label(record: dict[str, Any]) -> str:
    """The model of a record as the table names it: with its weights and head where they are not the defaults."""
    extra = []
    weights = record.get("weights")
    if weights not in (None, "timm"):
        extra.append(f"weights {Path(str(weights)).name}")
    head = record.get("params", {}).get("head")
    if head not in (None, "native"):
        extra.append(f"head {Path(str(head)).name if head != 'train' else 'trained on the train subset'}")
    return record["model"] + (f" ({'; '.join(extra)})" if extra else "")


#: sweep parameters other than lambda (which has its own column), as the table names a record's sweep point
SWEEP_POINTS: tuple[tuple[str, str], ...] = (("k", "k = {}"), ("images_per_mode", "{} images per mode"))


def setting_label(record: dict[str, Any]) -> str:
    """A record's setting as the table names it, with its sweep point (`k-sweep (k = 2)`)."""
    points = [fmt.format(record["params"][p]) for p, fmt in SWEEP_POINTS if record["params"].get(p) is not None]
    return record["setting"] + (f" ({', '.join(points)})" if points else "")


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Accuracy table in the style of the paper's Tables 2-3: per model, one row per config x setting.

    Columns are test / seed / heldout accuracy (%) and, where a group column was evaluated, worst-group test
    accuracy; in brackets the change from the model's original head. Rows of the same model with other weights or
    another head are separate groups (`model_label`).
    """
    metrics = METRICS + (("worst_group",) if any("worst_group" in r for r in records) else ())
    names = {"worst_group": "worst group"}
    lines = ["| model | config | setting | λ | " + " | ".join(names.get(m, m) for m in metrics) + " |",
             "|---|---|---|---|" + "---|" * len(metrics)]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_model.setdefault(model_label(r), []).append(r)
    for model, recs in by_model.items():
        base = next((r for r in recs if r["setting"] == "original"), None)
        for r in recs:
            cells = [_pct(r.get(m)) + ("" if r is base else _delta(r.get(m), base and base.get(m))) for m in metrics]
            lam = r["params"].get("lam")
            lines.append(f"| {model} | {r['config'] or '–'} | {setting_label(r)} | {'' if lam is None else lam} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    """Write `markdown_table(records)` atomically."""
    write_bytes_atomic(path, markdown_table(records).encode("utf-8"))

"""Outputs of attribution: attributions.parquet, modes.json, a markdown failure report, and the failure records
as a metadata-only dataset config (image ids, labels, predictions, contexts, halves; never pixels)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failmode.io import write_bytes_atomic, write_json
from failmode.mining.attribution import MODES_FORMAT, Attribution
from failmode.mining.tables import write_table

log = logging.getLogger(__name__)

ATTRIBUTIONS_FORMAT = "failmode-attributions/1"
EXAMPLES_PER_CLASS = 3


def attributions_schema() -> Any:
    """The pyarrow schema of attributions.parquet."""
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("image_id", pa.string()), ("label", pa.int64()),
                      ("class_name", pa.string()), ("prediction", pa.int64()), ("half", pa.string()),
                      ("context", pa.string()), ("context_index", pa.int64()), ("probability", pa.float64()),
                      ("contexts", pa.list_(pa.string())), ("probabilities", pa.list_(pa.float64()))])


def vocabulary_info(vocabulary: Any) -> dict[str, Any]:
    """The vocabulary's dataset, kind and version, as modes.json records them."""
    return {key: getattr(vocabulary, key, None) for key in ("dataset", "kind", "version")}


def modes_document(result: Attribution, meta: dict[str, Any], vocabulary: Any) -> dict[str, Any]:
    """The modes.json content (format failmode-modes/1)."""
    return {"format": MODES_FORMAT, "source_model": meta.get("model"), "dataset": meta.get("dataset"),
            "vocabulary": vocabulary_info(vocabulary), "attributor": result.attributor, "k": result.k,
            "classes": result.classes}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def failure_report(result: Attribution, meta: dict[str, Any], rows: Sequence[dict[str, Any]], vocabulary: Any) -> str:
    """Markdown report: run summary, then one table row per class with failures (most failures first)."""
    by_label: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["index"]):
        by_label.setdefault(r["label"], []).append(r)
    modes = {c["label"]: c["modes"] for c in result.classes}
    n_seed = sum(r["half"] == "seed" for r in rows)
    voc = vocabulary_info(vocabulary)
    lines = [
        f"# Failure report: {meta.get('model')} on {meta.get('dataset')}", "",
        f"- debug images: {meta.get('n_debug')}, accuracy {float(meta.get('accuracy') or 0):.4f}",
        f"- failures: {len(rows)} (seed {n_seed}, heldout {len(rows) - n_seed}) in {len(by_label)} classes",
        f"- predictions: {meta.get('head')}; weights: {meta.get('weights')}; split seed {meta.get('split_seed')}",
        f"- attribution: {result.attributor}; vocabulary {voc['dataset']}/{voc['kind']} v{voc['version']}; "
        f"top-{result.k} contexts of the seed failures", "",
        f"| label | class | failures | seed | top-{result.k} contexts (count) | example failure ids |",
        "|---:|---|---:|---:|---|---|",
    ]
    for label, items in sorted(by_label.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        seed = [r for r in items if r["half"] == "seed"]
        ctx = ", ".join(f"{m['context']} ({m['count']})" for m in modes.get(label, [])) or "-"
        ids = ", ".join(f"`{r['image_id']}`" for r in seed[:EXAMPLES_PER_CLASS])
        name = _cell(items[0]["class_name"])
        lines.append(f"| {label} | {name} | {len(items)} | {len(seed)} | {_cell(ctx)} | {ids} |")
    return "\n".join(lines) + "\n"


def failure_dataset_rows(rows: Sequence[dict[str, Any]], result: Attribution) -> list[dict[str, Any]]:
    """One metadata row per failure; `context` is None for failures that were not attributed (heldout)."""
    context = {r["index"]: r["context"] for r in result.records}
    return [{"image_id": r["image_id"], "index": r["index"], "label": r["label"], "prediction": r["prediction"],
             "confidence": r["confidence"], "context": context.get(r["index"]), "half": r["half"]}
            for r in sorted(rows, key=lambda r: r["index"])]


def write_failure_dataset(root: Path, rows: Sequence[dict[str, Any]], result: Attribution, meta: dict[str, Any]
                          ) -> Path | None:
    """The failure records as config `failures-<model>`, split `debug`, of a dataset folder at `root`."""
    from failmode.dataset import config_slug, write_table_config

    if not rows:
        log.info("no failures: no failure dataset config written")
        return None
    return write_table_config(
        root, config_slug(f"failures-{meta.get('model')}"), "debug", failure_dataset_rows(rows, result),
        class_names=meta.get("class_names"),
        description=f"Misclassified debug images of {meta.get('model')} on {meta.get('dataset')} with the context "
                    f"{result.attributor} attributed to each seed failure.")


def write_attribution(out_dir: str | Path, result: Attribution, meta: dict[str, Any], rows: Sequence[dict[str, Any]],
                      vocabulary: Any) -> Path:
    """Write attributions.parquet, modes.json, report.md and failure_dataset/; return the modes.json path."""
    out = Path(out_dir)
    table_meta = {"format": ATTRIBUTIONS_FORMAT, "source_model": meta.get("model"), "dataset": meta.get("dataset"),
                  "attributor": result.attributor, "k": result.k, "vocabulary": vocabulary_info(vocabulary)}
    write_table(out / "attributions.parquet", result.records, table_meta, schema=attributions_schema())
    write_bytes_atomic(out / "report.md", failure_report(result, meta, rows, vocabulary).encode())
    write_failure_dataset(out / "failure_dataset", rows, result, meta)
    path = out / "modes.json"
    write_json(path, modes_document(result, meta, vocabulary))
    log.info("%s: %d seed failures attributed, modes for %d classes -> %s", meta.get("model"), len(result.records),
             len(result.classes), path)
    return path

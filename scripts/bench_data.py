#!/usr/bin/env python
"""The data path at scale: bytes read, bytes written and peak memory of taking images from ImageNet-shaped splits.

Stand-ins in the real layouts are generated in a scratch folder (deleted afterwards unless --keep):
  - a Hub-style parquet split (`data/train-NNNNN-of-MMMMM.parquet`, >= 40 shuffled shards, row groups of 100),
  - a WordNet-id ImageFolder (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`),
  - a webdataset split (`train-NNNNN.tar` with `jpg` + `cls`, `_info.json`),
and measured, each in its own process (bytes read: through the fsspec interface the Hub path uses for parquet,
`/proc/self/io` rchar otherwise; bytes written: everything new in the scratch folder, the `datasets` cache
included; peak RSS: VmHWM; for `evaluate`, read counts the whole process, model and Python imports included):
  (a) 3 images per class of the train split (failmode's per-class take; and `datasets.load_dataset` + select,
      the previous way, for the parquet split),
  (b) a whole validation split read once (every image's bytes),
  (c) `failmode evaluate` (a tiny model at 32 px, the model's own head) over 1k, 4k and 16k debug images of
      512 px JPEG, from the parquet folder and from the webdataset shards.
A projection for ILSVRC/imagenet-1k's real size closes the output, marked as an estimate.

  python scripts/bench_data.py                       # the defaults measured in docs/benchmarks.md
  python scripts/bench_data.py --sizes 1000 --classes 20 --per-class 100   # a quick run

Prints one JSON line per measurement, then the projection.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: ILSVRC/imagenet-1k on the Hub (parquet), as assumed by the projection: split sizes (bytes, images), train shards
#: and rows per row group (the Hub writes image datasets in row groups of 100), and the head's recipe
IMAGENET = {"train_bytes": 146.0e9, "train_images": 1_281_167, "train_shards": 294, "rows_per_group": 100,
            "val_bytes": 6.4e9, "val_images": 50_000, "classes": 1000, "train_per_class": 30}


def project(seed: int = 0) -> dict[str, Any]:
    """What a first ImageNet-1k run reads, by simulation (an estimate, not a measurement): the train split's labels
    shuffled over its shards and row groups, `Quota` run over them as `ParquetSource` runs it; the row groups it
    touches are the image bytes read (plus each touched shard's label column)."""
    from failmode.data.sources import Quota

    n, k = IMAGENET["train_images"], IMAGENET["classes"]
    labels = np.random.default_rng(seed).permutation(np.arange(n) % k)
    shards = np.array_split(np.arange(n), IMAGENET["train_shards"])
    quota = Quota(k, IMAGENET["train_per_class"], seed)
    groups = rows = 0
    for s in quota.order(len(shards)):
        part = shards[int(s)]
        starts = list(range(0, len(part), IMAGENET["rows_per_group"])) + [len(part)]
        for g in np.random.default_rng([seed, 1, int(s)]).permutation(len(starts) - 1):
            quota.take((int(s), int(g)), labels[part[starts[g]:starts[g + 1]]])
            groups, rows = groups + 1, rows + starts[g + 1] - starts[g]
            if quota.done:
                break
        if quota.done:
            break
    per_row = IMAGENET["train_bytes"] / n
    train_gb = rows * per_row / 1e9
    val_gb = IMAGENET["val_bytes"] / 1e9
    feats_gb = (k * IMAGENET["train_per_class"] + IMAGENET["val_images"]) * (2048 + 1000) * 4 / 1e9
    return {"projection": "ILSVRC/imagenet-1k, an estimate (simulated, not measured)",
            "assumed": {k_: v for k_, v in IMAGENET.items()},
            "train_row_groups_read": groups, "train_rows_read": rows,
            "train_fraction_read": round(rows / n, 4), "train_read_gb": round(train_gb, 1),
            "validation_read_gb": round(val_gb, 1), "downloaded_gb": round(train_gb + val_gb, 1),
            "written_gb_datasets_cache": 0.0, "written_gb_feature_cache_resnet50": round(feats_gb, 2),
            "previously_downloaded_gb": round((IMAGENET["train_bytes"] + IMAGENET["val_bytes"]) / 1e9, 1),
            "previously_written_gb": "about the same again as Arrow in the datasets cache"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="scratch folder (default: a new temporary folder)")
    p.add_argument("--classes", type=int, default=100, help="classes of the stand-ins (default 100)")
    p.add_argument("--per-class", type=int, default=400, help="train images per class (default 400)")
    p.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    p.add_argument("--shards", type=int, default=40, help="parquet shards / tars of the train split (default 40)")
    p.add_argument("--image-size", type=int, default=64, help="side of the stand-ins' JPEG images (default 64)")
    p.add_argument("--sizes", default="1000,4000,16000", help="debug images for evaluate (default 1000,4000,16000)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--project-only", action="store_true", help="print the ImageNet-1k projection only")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in a child process
    p.add_argument("--args", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent across fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# --- stand-ins ----------------------------------------------------------------------------------------------------

def _jpegs(n: int, size: int, seed: int = 0, quality: int = 85) -> list[bytes]:
    """`n` distinct low-entropy JPEG images (smooth colour fields with mild grain) of `size` px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def make_standins(root: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The three train-split layouts and a validation split of each, from the same images."""
    from failmode.testing import hub_parquet_split
    from failmode.vocab.classnames import class_infos

    infos = class_infos("imagenet-1k")
    step = len(infos) // a.classes
    classes = [infos[i * step] for i in range(a.classes)]
    blobs = _jpegs(64, a.image_size)
    names = [c.label_name or c.name for c in classes]
    image = lambda label, row: blobs[(row * 7 + label) % len(blobs)]  # noqa: E731
    train = hub_parquet_split(root / "parquet", class_names=names, per_class=a.per_class, shards=a.shards,
                              image=image)
    hub_parquet_split(root / "parquet", class_names=names, per_class=a.val_per_class, shards=max(1, a.shards // 10),
                      split="validation", seed=1, image=image)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(a.classes), a.per_class))
    for split, n, ys in (("train", a.per_class, labels),
                         ("val", a.val_per_class, np.repeat(np.arange(a.classes), a.val_per_class))):
        for i, y in enumerate(ys):
            folder = root / "folder" / split / classes[int(y)].id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}_{i:08d}.JPEG").write_bytes(image(int(y), i))
    (root / "wds").mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(len(labels)), a.shards)):
        with tarfile.open(root / "wds" / f"train-{k:05d}.tar", "w") as tar:
            for i in part:
                for ext, payload in (("jpg", image(int(labels[i]), int(i))), ("cls", str(int(labels[i])).encode())):
                    info = tarfile.TarInfo(f"{int(i):08d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    (root / "wds" / "_info.json").write_text(json.dumps({"splits": {"train": {"num_samples": int(len(labels))}},
                                                         "class_names": names}))
    return {"parquet_train_bytes": sum(p.stat().st_size for p in train),
            "folder_train_bytes": _tree_bytes(root / "folder" / "train"),
            "wds_train_bytes": _tree_bytes(root / "wds"),
            "parquet_val_bytes": sum(p.stat().st_size for p in (root / "parquet" / "data").glob("validation-*")),
            "folder_val_bytes": _tree_bytes(root / "folder" / "val")}


def make_eval_inputs(root: Path, n: int) -> dict[str, str]:
    """A tiny model on disk, a small wnid ImageFolder as its dataset and a finalized debug dataset of `n` 512 px
    JPEG images in one config (parquet + webdataset shards of 1,000)."""
    import dataclasses

    from failmode.dataset.finalize import finalize
    from failmode.dataset.manifest import ConfigSpec
    from failmode.dataset.writer import write_shard
    from failmode.testing import imagenet_layouts, save_tiny_classifier, tiny_manifest
    from failmode.vocab.classnames import label_names

    names = label_names("imagenet-1k")
    weights = root / "classifier.safetensors"
    if not weights.exists():
        save_tiny_classifier(weights, "test_efficientnet")
        imagenet_layouts(root / "data", train_per_class=2, val_per_class=3, classes=range(0, 1000, 100),
                         layouts=("wnid",))
    blobs = _jpegs(16, 512, seed=3, quality=80)
    debug = root / f"debug-{n}"
    shards = max(1, n // 1000)
    for k, part in enumerate(np.array_split(np.arange(n), shards)):
        samples = [{"image": blobs[i % len(blobs)], "label": int((i % 10) * 100), "class_name": names[(i % 10) * 100],
                    "context": f"ctx{i % 3}", "context_kind": "background", "prompt": "p", "seed": int(i),
                    "generator": "bench", "source_model": "test_efficientnet"} for i in part]
        write_shard(debug, "test_efficientnet", "train", k, shards, samples, class_names=names, image_format="jpeg")
    manifest = dataclasses.replace(tiny_manifest(), name="bench", class_names=names, repo_id="", image_format="jpeg",
                                   configs={"test_efficientnet": ConfigSpec(kind="model", splits={"train": shards},
                                                                            source_model="test_efficientnet")})
    finalize(debug, manifest)
    return {"weights": str(weights), "data": str(root / "data" / "wnid"), "debug": str(debug)}


# --- measurements (each in a child process) -----------------------------------------------------------------------

def measure(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run measurement `name` here; returns bytes read and the measurement's own figures."""
    os.environ["HF_DATASETS_CACHE"] = args["hf_cache"]
    root = Path(args["root"])
    import datasets  # noqa: F401  (imports and class lists loaded before counting: only data reads are counted)
    import pyarrow.parquet  # noqa: F401

    import failmode.data.sources  # noqa: F401
    import failmode.testing  # noqa: F401  (torch: every measurement's memory starts from the same imports)
    from failmode.vocab.classnames import class_infos

    class_infos("imagenet-1k")
    read0, t0 = _rchar(), time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "take-parquet":
        from failmode.data.sources import Quota, open_parquet_split
        from failmode.testing import CountingFS

        fs = CountingFS()
        src = open_parquet_split(fs, str(root / "parquet"), "train", None, "bench", take=Quota(0, 3, 0))
        assert src is not None
        extra["images"] = sum(len(src.encoded(i) or b"") > 0 for i in range(len(src)))
        extra["read"] = fs.read
    elif name == "take-parquet-datasets":  # the previous way: the whole split through `datasets`, then select
        import datasets

        from failmode.data.splits import stratified_take

        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        datasets.disable_progress_bars()
        files = sorted(str(p) for p in (root / "parquet" / "data").glob("train-*.parquet"))
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
        idx, _ = stratified_take(np.asarray(ds["label"]), 3, 0, salt=1)
        raw = ds.cast_column("image", datasets.Image(decode=False)).select(idx.tolist())
        extra["images"] = sum(bool(r["image"]["bytes"]) for r in raw)
    elif name in ("take-folder", "take-wds"):
        from failmode.data.sources import open_source

        spec = str(root / "folder") if name == "take-folder" else f"wds:{root / 'wds'}"
        src = open_source(spec, "train", per_class=3)
        extra["images"] = sum(len(src.encoded(i) or b"") > 0 for i in range(len(src)))
    elif name in ("whole-parquet", "whole-folder"):
        from failmode.data.sources import open_parquet_split, open_source
        from failmode.testing import CountingFS

        if name == "whole-parquet":
            fs = CountingFS()
            src = open_parquet_split(fs, str(root / "parquet"), "validation", None, "bench")
        else:
            src = open_source(str(root / "folder"), "val")
        assert src is not None
        extra["images"] = sum(len(src.encoded(i) or b"") > 0 for i in range(len(src)))
        if name == "whole-parquet":
            extra["read"] = fs.read
    elif name.startswith("evaluate"):
        from failmode.cli import main

        spec = args["debug"] if name == "evaluate-parquet" else f"wds:{args['debug']}"
        code = main(["evaluate", "--model", "test_efficientnet", "--weights", args["weights"], "--dataset",
                     args["data"], "--eval-split", "val", "--train-per-class", "2", "--debug-per-class", "2",
                     "--debug-data", spec, "--out", str(Path(args["out"])), "--epochs", "5", "--image-size", "32",
                     "--device", "cpu", "--cache-dir", args["cache"], "--baseline-config", "none",
                     "--random-config", "none", "--batch-size", "64"])
        assert code == 0, code
    out = {"measure": name, "seconds": round(time.perf_counter() - t0, 2),
           "peak_rss_mb": _peak_rss_mb()}
    out["read"] = extra.pop("read", _rchar() - read0)
    return out | extra


def child(name: str, args: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """`measure(name)` in a fresh process; bytes written = what appeared in the scratch folder meanwhile."""
    before = _tree_bytes(scratch)
    cmd = [sys.executable, __file__, "--measure", name, "--args", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["written"] = _tree_bytes(scratch) - before
    return result


def main(argv: list[str] | None = None) -> int:
    """Generate the stand-ins, measure, print one JSON line each and the projection."""
    a = parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.measure, json.loads(a.args))))
        return 0
    if a.project_only:
        print(json.dumps(project()))
        return 0
    scratch = Path(a.root or tempfile.mkdtemp(prefix="failmode-bench-data-"))
    base = {"root": str(scratch / "standins"), "hf_cache": str(scratch / "hf-cache")}
    try:
        sizes = make_standins(scratch / "standins", a)
        print(json.dumps({"standins": sizes, "classes": a.classes, "train_per_class": a.per_class,
                          "val_per_class": a.val_per_class, "shards": a.shards, "image_size": a.image_size}))
        rows = {}
        for name, total in (("take-parquet", "parquet_train_bytes"), ("take-parquet-datasets", "parquet_train_bytes"),
                            ("take-folder", "folder_train_bytes"), ("take-wds", "wds_train_bytes"),
                            ("whole-parquet", "parquet_val_bytes"), ("whole-folder", "folder_val_bytes")):
            r = child(name, base, scratch)
            r |= {"split_bytes": sizes[total], "read_pct": round(100 * r["read"] / sizes[total], 2),
                  "written_pct": round(100 * r["written"] / sizes[total], 2)}
            rows[name] = r
            print(json.dumps(r))
            shutil.rmtree(scratch / "hf-cache", ignore_errors=True)
        for n in (int(s) for s in a.sizes.split(",")):
            inputs = make_eval_inputs(scratch / "eval", n)
            debug_bytes = _tree_bytes(Path(inputs["debug"]) / "data")
            for path in ("parquet", "wds"):
                r = child(f"evaluate-{path}", base | inputs | {"out": str(scratch / "eval" / f"run-{path}-{n}"),
                                                                "cache": str(scratch / "eval" / f"cache-{n}")}, scratch)
                r |= {"debug_images": n, "debug_parquet_bytes": debug_bytes}
                print(json.dumps(r))
            shutil.rmtree(inputs["debug"])
        print(json.dumps(project()))
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

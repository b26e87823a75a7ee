"""Tiny debug datasets built offline in code (tests, examples): real files in the real format, random pixels."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from failmode.dataset.finalize import finalize
from failmode.dataset.manifest import ConfigSpec, Manifest
from failmode.dataset.sample import DebugSample
from failmode.dataset.table import write_table_config
from failmode.dataset.writer import DatasetWriter

TINY_CLASSES = ["tench", "goldfish", "great white shark", "tiger shark"]
TINY_CONTEXTS = ["in a swimming pool", "on a kitchen table", "in the snow"]


def tiny_debug_samples(n: int, source_model: str, class_names: list[str] = TINY_CLASSES, size: int = 32,
                       seed: int = 0) -> Iterator[DebugSample]:
    """`n` well-formed samples with synthetic images whose colour depends on the label (deterministic)."""
    from failmode.testing import synthetic_images

    images, labels = synthetic_images(n, size=size, seed=seed, num_classes=len(class_names))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        context = TINY_CONTEXTS[i % len(TINY_CONTEXTS)] if source_model != "baseline" else ""
        yield DebugSample(
            image=image, label=label, class_name=class_names[label], context=context or "none",
            context_kind="background" if context else "class-only",
            prompt=f"a photo of a {class_names[label]} {context}".strip(), seed=1000 * seed + i,
            generator="tiny-sd@sha256:0123abcd", source_model=source_model,
            scores={"clip_class": round(0.2 + 0.01 * i, 4), "clip_context": round(0.3 - 0.01 * i, 4)},
            extra={"guidance": 7.5, "steps": 2, "negative_prompt": "blurry"},
        )


def tiny_manifest(version: str = "1.0.0", shards: int = 2) -> Manifest:
    """The manifest of `build_tiny_dataset`: a per-model config with `shards` shards and a baseline config."""
    return Manifest(
        name="tiny-debug", version=version, class_names=list(TINY_CLASSES), repo_id="failmode/tiny-debug",
        pretty_name="Tiny debug set", description="A tiny debug dataset for tests.", source_dataset="imagenet-1k",
        configs={
            "test_resnet": ConfigSpec(kind="model", splits={"train": shards}, source_model="timm/test_resnet.r160_in1k",
                                      description="failure modes of test_resnet"),
            "baseline": ConfigSpec(kind="baseline", splits={"train": 1}, source_model="baseline",
                                   description="class-only prompts"),
        },
        generator={"id": "tiny-sd", "sha256": "0123abcd", "scheduler": "DDIM"},
        vocabulary={"source": "failmode/vocab/data/imagenet.json", "prompt": "List uncommon contexts for {class}."},
        attribution={"model": "failmode-tiny-clip", "top_k": 3},
        generation={"steps": 2, "guidance": 7.5, "size": 32, "prompt_template": "a photo of a {class} {context}"},
        seeds={"base_seed": 0, "rule": "seed = 1000 * base + index"}, plan_sha256="f" * 64,
    )


def build_tiny_dataset(root: str | os.PathLike[str], *, n: int = 10, shard_size: int = 6,
                       with_table: bool = True) -> Manifest:
    """Write and finalize a complete tiny dataset folder; return its final manifest."""
    root = Path(root)
    shards = -(-n // shard_size)
    manifest = tiny_manifest(shards=shards)
    DatasetWriter(root, "test_resnet", "train", class_names=TINY_CLASSES, num_samples=n,
                  shard_size=shard_size).write(tiny_debug_samples(n, "timm/test_resnet.r160_in1k"))
    DatasetWriter(root, "baseline", "train", class_names=TINY_CLASSES, num_samples=4,
                  shard_size=4).write(tiny_debug_samples(4, "baseline", seed=1))
    if with_table:
        rows = [{"image_id": f"ILSVRC2012_val_{i:08d}", "label": i % 4, "prediction": (i + 1) % 4,
                 "context": TINY_CONTEXTS[i % 3], "half": "seed" if i % 2 else "heldout"} for i in range(1, 6)]
        write_table_config(root, "failures-test_resnet", "validation", rows, class_names=TINY_CLASSES,
                           description="failure records of test_resnet on the validation split (ids only)")
    return finalize(root, manifest)


def finalize_configs(root: str | os.PathLike[str], class_names: list[str], configs: dict[str, str], *,
                     name: str = "tiny-debug", version: str = "1.0.0") -> Manifest:
    """Finalize a folder whose configs (name -> kind) were written as one train shard each with `write_shard`."""
    manifest = dataclasses.replace(
        tiny_manifest(version), name=name, class_names=list(class_names), repo_id="",
        configs={c: ConfigSpec(kind=kind, splits={"train": 1}, source_model=c if kind == "model" else kind)
                 for c, kind in configs.items()})
    return finalize(root, manifest)

"""Tiny, randomly initialised but architecturally real models and datasets, built offline in code.

Used by the test suite and by examples that must run without downloads. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from failmode.backends import GENERATORS, ImageGenerator
from failmode.dataset.finalize import finalize
from failmode.dataset.manifest import ConfigSpec, Manifest
from failmode.dataset.sample import DebugSample
from failmode.dataset.table import write_table_config
from failmode.dataset.writer import shard_done, write_shard
from failmode.errors import ValidationError
from failmode.progress import progress

TINY_CLIP = "failmode-tiny-clip"

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_clip(seed: int = 0) -> Any:
    """A 2-layer open_clip CLIP (32 px images, real 49,408-token BPE tokenizer) with random weights."""
    from failmode.models.clip import create_clip

    return create_clip(TINY_CLIP, pretrained=None, seed=seed)


@functools.cache
def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    merges = [tuple(pair) for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    # open_clip spells the special tokens <start_of_text>/<end_of_text>; OpenAI's tokenizer files (and
    # transformers) spell them <|startoftext|>/<|endoftext|>, with the same ids 49406/49407.
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    return {rename.get(k, k): v for k, v in tok.encoder.items()}, merges


def clip_tokenizer() -> Any:
    """A transformers CLIPTokenizer rebuilt from open_clip's shipped BPE file (same ids as OpenAI CLIP's)."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab_and_merges()
    # transformers 5 takes the vocab and merges directly; model_max_length=77 as CLIP (pipelines truncate to it).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_pipeline(seed: int = 0, sample_size: int = 32) -> Any:
    """A tiny StableDiffusionPipeline (UNet, VAE, CLIP text encoder, DDIM) that turns a real prompt into an image.

    Configs follow diffusers' own fast tests; images come out at `sample_size * 2` pixels (one VAE downsample).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline in diffusers' `save_pretrained` layout (a stand-in for a local SD checkout)."""
    path = Path(path)
    tiny_pipeline(seed).save_pretrained(path)
    return path


def tiny_classifier(num_classes: int = 10, arch: str = "test_efficientnet", seed: int = 0) -> torch.nn.Module:
    """A timm test architecture (`pretrained=False`) with `num_classes` outputs, in eval mode."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()


def synthetic_images(n: int, size: int = 32, seed: int = 0, num_classes: int = 10) -> tuple[list[Image.Image], list[int]]:
    """`n` RGB images whose dominant colour depends on the label, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    labels = [int(i % num_classes) for i in range(n)]
    hues = np.linspace(0, 255, num_classes, endpoint=False)
    images = []
    for lab in labels:
        base = np.array([hues[lab], 255 - hues[lab], (hues[lab] * 3) % 256], dtype=np.float32)
        arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr))
    return images, labels


def tiny_image_dataset(
    schema: str = "cifar10", n: int = 40, size: int = 32, seed: int = 0, class_names: list[str] | None = None,
    used_classes: int | None = None,
) -> Any:
    """A `datasets.Dataset` in the schema of the Hub's `cifar10` (`img`, `label`), `cifar100` (`img`,
    `fine_label`) or `imagenet-1k` (`image`, `label`), with ClassLabel names; images of the first `used_classes`
    classes (default all), balanced."""
    import datasets

    names = class_names or CIFAR10_CLASSES
    images, labels = synthetic_images(n, size=size, seed=seed, num_classes=used_classes or len(names))
    image_col, label_col = {
        "cifar10": ("img", "label"),
        "cifar100": ("img", "fine_label"),
        "imagenet-1k": ("image", "label"),
    }[schema]
    features = datasets.Features({image_col: datasets.Image(), label_col: datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({image_col: images, label_col: labels}, features=features)


def jpeg_folder(root: str | Path, n: int, *, unique: int = 64, size: tuple[int, int] = (500, 375), quality: int = 90,
                classes: int = 10, seed: int = 0) -> Path:
    """An ImageFolder of `n` JPEG files for benchmarks: `unique` smooth random images (low-frequency noise plus
    grain, ImageNet's typical 500x375 by default) cycled under distinct names over `classes` folders."""
    rng = np.random.default_rng(seed)
    w, h = size
    blobs = []
    for _ in range(unique):
        low = rng.uniform(0, 255, (max(2, h // 32), max(2, w // 32), 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.clip(np.asarray(img, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    root = Path(root)
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"class{i % classes:03d}" / f"{i:07d}.jpg").write_bytes(blobs[i % unique])
    return root


#: the splits of the Hub datasets of the paper, as `write_local_dataset` names them
SCHEMA_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "imagenet-1k": ("train", "validation")}


def write_local_dataset(root: str | Path, schema: str, per_class: dict[str, int], *, class_names: list[str],
                        used_classes: int | None = None, size: int = 32, seed: int = 0) -> Path:
    """A local copy of a Hub image-classification dataset in its layout (`data/<split>-00000-of-00001.parquet`)
    and column schema (see `tiny_image_dataset`): `per_class[split]` images of each used class per split."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    used = used_classes or len(class_names)
    for k, (split, n) in enumerate(per_class.items()):
        ds = tiny_image_dataset(schema, n * used, size=size, seed=seed + k, class_names=class_names,
                                used_classes=used)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def save_tiny_classifier(path: str | Path, arch: str = "test_efficientnet", seed: int = 0) -> Path:
    """A tiny timm model with ImageNet's 1000-class head, saved as a user saves one: its state dict, safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_classifier(1000, arch, seed).state_dict(), str(path))
    return path


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """The tiny open_clip model's weights as a local checkpoint (a `pretrained=` path for `TINY_CLIP`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_clip(seed).model.state_dict(), path)
    return path


class SeedColorGenerator(ImageGenerator):
    """An `ImageGenerator` that paints each image one colour from the first bytes of its seed (distinct seeds,
    distinct images): the generation path (plan, shards, writer, card) without a diffusion model."""

    ident = "testing:seed-color"
    license = "apache-2.0"  # solid colours painted by failmode's own code

    def __init__(self, size: int = 8) -> None:
        self.size = size

    def generate(self, requests: Any) -> list[Image.Image]:
        """One solid `size` x `size` RGB image per request."""
        return [Image.new("RGB", (self.size, self.size), tuple(r.seed.to_bytes(8, "big")[:3])) for r in requests]


#: the seed-colour generator under a registered name, as a preset or `failmode generate --generator` names it
SEED_COLOR = "seed-color"
GENERATORS.register(SEED_COLOR)(SeedColorGenerator)


def write_debug_dataset(root: str | Path, *, class_names: list[str] | None = None, images_per_mode: int = 8,
                        baseline_images_per_class: int = 16, shard_size: int = 1000) -> Path:
    """A finalized failmode dataset written the way `failmode build` writes one (plan, shards, manifest, card):
    one model config with two contexts per class, the random-context and class-only controls."""
    from failmode.generation.plan import (
        ClassModes,
        GenerationSettings,
        ModeSet,
        baseline_modes,
        build_plan,
        random_context_modes,
    )
    from failmode.generation.run import DatasetInfo, RunOptions, generate_dataset

    names = class_names or CIFAR10_CLASSES
    contexts = ("in a desert", "on snow", "in a cave")

    class Vocabulary:  # the two calls random_context_modes makes
        def get(self, label: int) -> Any:
            return ClassModes(label, names[label], names[label])

        def contexts(self, label: int) -> tuple[str, ...]:
            return contexts

    settings = GenerationSettings(generator="testing:seed-color", size=8, images_per_mode=images_per_mode, k=2,
                                  shard_size=shard_size)
    model = ModeSet("tiny-model", "model", "tiny-model", "background",
                    tuple(ClassModes(i, n, n, contexts[:2]) for i, n in enumerate(names)))
    sets = [model, random_context_modes([model], Vocabulary(), names, base_seed=0, k=2,
                                        images_per_mode=images_per_mode), baseline_modes(names)]
    rows = build_plan(sets, settings, generator_id=SeedColorGenerator.ident,
                      baseline_images_per_class=baseline_images_per_class)
    info = DatasetInfo(name="tiny-debug", version="1.0.0", class_names=list(names), source_dataset="uoft-cs/cifar10",
                       tags=["tiny"])
    generate_dataset(rows, root, SeedColorGenerator(), info, settings, roles={s.config: s.role for s in sets},
                     options=RunOptions(encode_workers=2))
    return Path(root)


def derive_preset(shipped: str, path: Path, dataset: Path, models: dict[str, Path], *, head: str | None,
                  train_per_class: int, debug_per_class: int, baseline: bool = True) -> Path:
    """The shipped preset `shipped` pointed at a local dataset and the tiny models saved on disk (`models`: weights,
    clip, pipeline), with small counts: what a user edits to run the chain on their own copies."""
    from failmode.generation.presets import BUILDERS_DIR

    doc = json.loads((BUILDERS_DIR / f"{shipped}.json").read_text())
    doc["dataset"].update(id=str(dataset), train_per_class=train_per_class, debug_per_class=debug_per_class)
    doc["models"] = [{"id": "test_efficientnet", "weights": str(models["weights"]), "head": head}]
    doc["families"] = {"tiny": ["test_efficientnet"]}
    doc["attribution"].update(clip_model=TINY_CLIP, pretrained=str(models["clip"]))
    doc["quality"].update(clip_model=TINY_CLIP, pretrained=str(models["clip"]), min_class_score=-1.0)
    doc["generation"].update(generator=str(models["pipeline"]), steps=2, size=32, images_per_mode=1, k=1)
    doc["baseline"] = {"enabled": baseline, "images_per_class": 1}
    doc["render"]["batch_size"] = 8
    path.write_text(json.dumps(doc))
    return path


def tiny_build_preset(root: Path) -> Path:
    """`cifar10-bg-debug` derived for tiny models saved under `root/m` and a local dataset under `root/data`, with
    several shards per config and the seeded random-weight quality scorer: a whole `failmode build` in seconds."""
    models = {"weights": save_tiny_classifier(root / "m" / "classifier.safetensors"),
              "clip": save_tiny_clip(root / "m" / "clip.pt"), "pipeline": save_tiny_pipeline(root / "m" / "sd")}
    data = write_local_dataset(root / "data", "cifar10", {"train": 3, "test": 3}, class_names=CIFAR10_CLASSES)
    preset = derive_preset("cifar10-bg-debug", root / "preset.json", data, models, head="train",
                           train_per_class=2, debug_per_class=2)
    doc = json.loads(preset.read_text())
    doc["generation"].update(images_per_mode=2, shard_size=2)  # several shards per config
    doc["quality"].update(enabled=True, pretrained=None)  # the seeded random-weight scorer (recorded)
    preset.write_text(json.dumps(doc))
    return preset


# --- tiny dataset folders written shard by shard (the dataset package's tests) ---------------------------------

TINY_CLASSES = ["tench", "goldfish", "great white shark", "tiger shark"]
TINY_CONTEXTS = ["in a swimming pool", "on a kitchen table", "in the snow"]


def tiny_debug_samples(n: int, source_model: str, class_names: list[str] = TINY_CLASSES, size: int = 32,
                       seed: int = 0) -> Iterator[DebugSample]:
    """`n` well-formed samples with synthetic images whose colour depends on the label (deterministic)."""
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


class DatasetWriter:
    """Test helper: cuts a stream of samples into shards of `shard_size` and writes them with `write_shard`;
    resumable (done shards are skipped). Generation writes shards from its plan instead.

    `num_samples` fixes the number of shards up front (file names say `-of-0000M`).
    """

    def __init__(self, root: str | os.PathLike[str], config: str, split: str, *, class_names: list[str],
                 num_samples: int, shard_size: int = 1000, image_format: str = "png") -> None:
        if num_samples < 1 or shard_size < 1:
            raise ValidationError(f"num_samples ({num_samples}) and shard_size ({shard_size}) must be positive")
        self.root, self.config, self.split = Path(root), config, split
        self.class_names, self.image_format = list(class_names), image_format
        self.num_samples, self.shard_size = num_samples, shard_size
        self.num_shards = math.ceil(num_samples / shard_size)

    def shard_range(self, shard_index: int) -> range:
        """Positions in the stream of the samples that go into shard `shard_index`."""
        start = shard_index * self.shard_size
        return range(start, min(start + self.shard_size, self.num_samples))

    def pending_shards(self) -> list[int]:
        """Indices of shards not written yet."""
        return [i for i in range(self.num_shards)
                if not shard_done(self.root, self.config, self.split, i, self.num_shards)]

    def write(self, samples: Iterable[DebugSample | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Consume the whole stream (exactly `num_samples` items), writing pending shards; returns their stats."""
        it = iter(samples)
        pending, out = set(self.pending_shards()), []
        for i in progress(range(self.num_shards), desc=f"{self.config}/{self.split} shards", unit="shard"):
            chunk = list(itertools.islice(it, len(self.shard_range(i))))
            if len(chunk) < len(self.shard_range(i)):
                raise ValidationError(f"the sample stream ended early: expected {self.num_samples} samples")
            if i in pending:
                out.append(self._write(i, chunk))
        if next(it, None) is not None:
            raise ValidationError(f"the sample stream has more than the expected {self.num_samples} samples")
        return out

    def write_ranges(self, produce: Callable[[range], Iterable[DebugSample]]) -> list[dict[str, Any]]:
        """Write each pending shard from `produce(positions)`: nothing is generated for shards already done."""
        return [self._write(i, produce(self.shard_range(i)))
                for i in progress(self.pending_shards(), desc=f"{self.config}/{self.split} shards", unit="shard")]

    def _write(self, shard_index: int, samples: Iterable[Any]) -> dict[str, Any]:
        return write_shard(self.root, self.config, self.split, shard_index, self.num_shards, samples,
                           class_names=self.class_names, image_format=self.image_format)


# --- what a finished dataset's card states ----------------------------------------------------------------------


def card_python_blocks(text: str) -> list[str]:
    """The ```python blocks of a card, in order."""
    import re

    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


def check_card_states_the_manifest(root: str | os.PathLike[str], *, run_blocks: bool = True) -> dict[str, Any]:
    """Assert that a finalized folder's card states what its manifest records of what ran: licence, tags, generator
    and attributor text; no local path of this machine; no empty field; every python block runs as written with the
    folder as working directory (offline). Returns the card's YAML header."""
    import re
    import subprocess
    import sys

    from failmode.dataset.card import SD_LICENSES, licenses, made_by_diffusion, parse_card_header, public

    root = Path(root)
    text = (root / "README.md").read_text(encoding="utf-8")
    manifest = Manifest.load(root)
    header = parse_card_header(text)
    body = text.split("\n---\n", 1)[1]
    licence = body.split("\n## License\n", 1)[1].split("\n## ", 1)[0]
    assert header["license"] == manifest.license and header["tags"] == manifest.tags
    diffusion = made_by_diffusion(manifest)
    assert ("stable-diffusion" in header["tags"]) == (diffusion and manifest.license in SD_LICENSES)
    note = manifest.generator.get("license_note")
    assert (note or licenses()[manifest.license]["text"]) in licence
    assert ("Stable Diffusion" in licence) == (manifest.license in SD_LICENSES)
    ident = str(public(manifest.generator.get("ident") or manifest.generator["id"]))
    assert ident in body, f"the generator {ident!r} is not named in the card"
    assert ("not a diffusion model" in body) == ("stand-in" in ident)
    attribution = body.split("**Failure mining and attribution.**", 1)[1].split("\n", 1)[0]
    attributor = manifest.attribution.get("attributor", "clip")  # hand-written manifests may not name it
    assert "attributor" not in manifest.attribution or f"attributor: `{attributor}`" in attribution
    if attributor != "clip":
        assert "clip_model" not in attribution and "pretrained" not in attribution
        assert "clip_model" not in manifest.attribution and "pretrained" not in manifest.attribution
    local = {str(root.resolve()), str(root.resolve().parent), str(Path.home())}
    for token in re.split(r"[\s`'\"(),;|<>]+", json.dumps(manifest.to_json())):  # every existing path recorded
        local |= {token[i:] for i in range(len(token)) if token[i] == "/" and len(token) > i + 1
                  and token[i + 1] != "/" and Path(token[i:]).exists() and token[i:] != "/"}
    found = sorted(p for p in local if p in text)
    assert not found, f"local paths in the card: {found}"
    assert not re.search(r"(?<![`\w])``(?!`)|: ;|: $", body, flags=re.M), "an empty field in the card"
    if run_blocks:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        blocks = card_python_blocks(text)
        assert blocks, "no python block in the card"
        for code in blocks:
            if "snapshot_download" in code or (manifest.repo_id and f'"{manifest.repo_id}"' in code):
                compile(code, "card", "exec")  # the Hub form (the same body, its folder from the Hub): valid Python
                continue
            done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"card block failed:\n{code}\n{done.stderr[-2000:]}"
    return header


def imagenet_layouts(root: str | Path, *, train_per_class: int, val_per_class: int, classes: Sequence[int] | None = None,
                     size: int = 8, layouts: Sequence[str] = ("wnid", "names", "flat"), seed: int = 0) -> dict[str, Path]:
    """The same tiny ImageNet-1k images (JPEG, a colour per class plus seeded noise) in the common local layouts:
    `wnid` (an ImageFolder of WordNet ids, `train/` and `val/`, what timm's train.py reads), `names` (folders named by
    class name, so listed alphabetically) and `flat` (`train/` as wnid folders, `val/` one flat folder with Kaggle's
    `LOC_val_solution.csv` beside it). `classes`: the class indices that have images (default: all 1,000); the
    `names` layout has a folder for every class (empty for the others), as a full copy's class list."""
    from failmode.vocab.classnames import class_infos

    infos = class_infos("imagenet-1k")
    chosen = list(range(len(infos))) if classes is None else list(classes)
    root = Path(root)
    out = {name: root / name for name in layouts}
    solution = ["ImageId,PredictionString"]
    n_val = 0
    for c in chosen:
        info = infos[c]
        hue = np.asarray([(37 * c) % 256, (91 * c) % 256, (173 * c) % 256], np.float32)
        rng = np.random.default_rng([seed, c])
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            for k in range(n):
                pixels = np.clip(hue + rng.normal(0, 24, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                if split == "val":
                    n_val += 1
                    fname = f"ILSVRC2012_val_{n_val:08d}.JPEG"
                    solution.append(f"ILSVRC2012_val_{n_val:08d},{info.id} 1 1 {size - 1} {size - 1}")
                else:
                    fname = f"{info.id}_{k}.JPEG"
                folders = {"wnid": info.id, "names": info.name, "flat": info.id if split == "train" else None}
                for layout, base in out.items():
                    sub = folders[layout]
                    path = base / split / sub / fname if sub else base / split / fname
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(buf.getvalue())
    if "names" in out:
        for split in ("train", "val"):
            for info in infos:
                (out["names"] / split / info.name).mkdir(parents=True, exist_ok=True)
    if "flat" in out:
        (out["flat"] / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n", encoding="utf-8")
    return out


def hub_parquet_split(root: str | Path, *, class_names: list[str], per_class: int, shards: int,
                      rows_per_group: int = 100, split: str = "train", size: int = 8, seed: int = 0,
                      image: Callable[[int, int], bytes] | None = None) -> list[Path]:
    """A split in the Hub's parquet layout (`data/<split>-NNNNN-of-MMMMM.parquet`, `image` + ClassLabel `label`,
    the `datasets` feature metadata, row groups of `rows_per_group` as the Hub writes image datasets), rows
    shuffled across shards as ImageNet's are. `image(label, row)` gives each image's encoded bytes (default: a tiny
    JPEG of the class's colour)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    def tiny(label: int, row: int) -> bytes:
        rng = np.random.default_rng([seed, row])
        hue = np.asarray([(37 * label) % 256, (91 * label) % 256, (173 * label) % 256], np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(hue + rng.normal(0, 24, (size, size, 3)), 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=90)
        return buf.getvalue()

    make = image or tiny
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(class_names)), per_class))
    schema = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)}).arrow_schema
    folder = Path(root) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(np.array_split(np.arange(len(labels)), shards)):
        table = pa.table({"image": [{"bytes": make(int(labels[i]), int(i)), "path": None} for i in part],
                          "label": labels[part].astype(np.int64)}, schema=schema)
        path = folder / f"{split}-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=rows_per_group)
        paths.append(path)
    return paths


class CountingFS:
    """fsspec's local filesystem behind a counter of the bytes read through it: the calls `HfFileSystem` answers for
    a Hub id (glob, size, open), so the Hub path is measured offline on a local folder."""

    def __init__(self) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.fs, self.read = LocalFileSystem(), 0

    def glob(self, path: str) -> list[str]:
        """The files matching `path`."""
        return self.fs.glob(path)

    def size(self, path: str) -> int:
        """A file's size in bytes."""
        return self.fs.size(path)

    def exists(self, path: str) -> bool:
        """Whether `path` exists."""
        return self.fs.exists(path)

    def open(self, path: str, mode: str = "rb") -> io.RawIOBase:
        """The file, counting what is read from it."""
        owner = self

        class Counted(io.FileIO):
            def read(self, n: int = -1) -> bytes:
                data = super().read(n)
                owner.read += len(data)
                return data

            def readinto(self, b: Any) -> int:
                n = super().readinto(b) or 0
                owner.read += n
                return n

        return Counted(self.fs._strip_protocol(path), mode)


class BatchClock:
    """Steady-state throughput for benchmarks: while active, every batch `failmode.images.iter_crops` yields is
    time-stamped, so a run's images/s can be given without the loader's start-up and first batch."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int]] = []  # (time the batch reached the caller, images in it)

    def __enter__(self) -> BatchClock:
        import time

        from failmode import images

        self._inner = inner = images.iter_crops

        def timed(*args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
            for x in inner(*args, **kwargs):
                self.stamps.append((time.perf_counter(), len(x)))
                yield x

        images.iter_crops = timed
        return self

    def __exit__(self, *exc: object) -> None:
        from failmode import images

        images.iter_crops = self._inner

    def steady_rate(self, end: float, skip: int = 1) -> float | None:
        """Images/s from the arrival of batch `skip` - 1 to `end` (a perf_counter time after the last batch's work
        finished); None with too few batches. The last call's batches only (stamps are cleared by `reset`)."""
        if len(self.stamps) <= skip:
            return None
        return sum(n for _, n in self.stamps[skip:]) / (end - self.stamps[skip - 1][0])

    def reset(self) -> None:
        """Forget the batches seen so far."""
        self.stamps.clear()

"""Generation stage: plan determinism, batch/rank invariance, kill-and-resume, OOM fallback, filters, load errors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from failmode.backends import GenerationRequest, ImageGenerator
from failmode.errors import LoadError, ValidationError
from failmode.generation import (
    DatasetInfo,
    GenerationSettings,
    RunOptions,
    ShardRun,
    attempt_seed,
    baseline_modes,
    build_plan,
    generate_dataset,
    modes_from_json,
    read_plan,
    task_slot,
    write_plan,
)
from failmode.generation.render import DiffusersGenerator
from failmode.io import read_json, sha256_file
from failmode.options import RenderOptions

CLASSES = ["cat", "dog", "ship"]
MODES = {
    "format": "failmode-modes/1", "source_model": "resnet50", "dataset": "tiny",
    "vocabulary": {"dataset": "tiny", "kind": "background", "version": "1"}, "attributor": "clip:tiny", "k": 2,
    "classes": [
        {"label": 0, "class_name": "cat", "prompt_name": "cat", "n_seed_failures": 3,
         "modes": [{"context": "in a desert", "count": 2}, {"context": "on snow", "count": 1},
                   {"context": "in a cave", "count": 1}]},
        {"label": 2, "class_name": "ship", "prompt_name": "ship", "n_seed_failures": 1,
         "modes": [{"context": "in a city", "count": 1}]},
    ],
}
SETTINGS = GenerationSettings(steps=2, size=32, images_per_mode=2, k=2, shard_size=3, scheduler="dpmsolver++")
INFO = DatasetInfo(name="tiny", version="1.0.0", class_names=CLASSES)


def plan(settings: GenerationSettings = SETTINGS, ident: str = "diffusers:tiny") -> list:
    sets = [modes_from_json(MODES, config="resnet50", k=settings.k), baseline_modes(CLASSES)]
    return build_plan(sets, settings, generator_id=ident, baseline_images_per_class=1)


def generate(rows: list, root: Path, gen: ImageGenerator, settings: GenerationSettings = SETTINGS,
             **kw) -> list[dict]:
    """`generate_dataset` with the tests' dataset info; the generation stats of the shards it wrote."""
    return generate_dataset(rows, root, gen, INFO, settings, **kw).stats


class SolidGenerator(ImageGenerator):
    """Colour from the seed; raises after `fail_after` images or OOM above `max_batch`."""

    ident = "fake:solid"

    def __init__(self, fail_after: int | None = None, max_batch: int | None = None) -> None:
        self.fail_after, self.max_batch, self.calls, self.n = fail_after, max_batch, [], 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        if self.max_batch is not None and len(requests) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.calls.append(len(requests))
        out = []
        for r in requests:
            if self.fail_after is not None and self.n >= self.fail_after:
                raise RuntimeError("killed (simulated)")
            self.n += 1
            out.append(Image.new("RGB", (16, 16), tuple(int(b) for b in r.seed.to_bytes(8, "big")[:3])))
        return out


@pytest.fixture(scope="module")
def tiny_gen():
    from failmode.testing import tiny_pipeline

    # A pipeline of its own: DiffusersGenerator takes ownership and changes its scheduler and attention in place.
    opts = RenderOptions(device="cpu", precision="fp32", batch_size=4, scheduler="dpmsolver++")
    return DiffusersGenerator(pipeline=tiny_pipeline(), options=opts, ident="diffusers:tiny")


def tree(root: Path) -> dict[str, str]:
    """sha256 of every dataset file (data/ and wds/)."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for base in ("data", "wds") for p in sorted((root / base).rglob("*")) if p.is_file()}


def test_plan_is_deterministic_and_seeds_are_independent_of_other_configs(tmp_path):
    rows = plan()
    assert rows == plan()
    assert [(r.config, r.shard_index, r.position) for r in rows][:7] == [
        ("resnet50", 0, 0), ("resnet50", 0, 1), ("resnet50", 0, 2), ("resnet50", 1, 0), ("resnet50", 1, 1),
        ("resnet50", 1, 2), ("baseline", 0, 0)]
    assert {r.prompt for r in rows if r.config == "resnet50"} == {
        "a photo of a cat in a desert", "a photo of a cat on snow", "a photo of a ship in a city"}
    assert sorted(r.prompt for r in rows if r.config == "baseline") == [
        "a photo of a cat", "a photo of a dog", "a photo of a ship"]
    assert len({r.seed for r in rows}) == len(rows)
    alone = build_plan([modes_from_json(MODES, config="resnet50", k=2)], SETTINGS, generator_id="diffusers:tiny")
    assert [r.seed for r in alone] == [r.seed for r in rows if r.config == "resnet50"]
    h1, h2 = write_plan(rows, tmp_path / "a.parquet"), write_plan(plan(), tmp_path / "b.parquet")
    assert h1 == h2 and read_plan(tmp_path / "a.parquet") == rows
    assert attempt_seed(rows[0].seed, 0) == rows[0].seed != attempt_seed(rows[0].seed, 1)
    other = plan(GenerationSettings(**{**SETTINGS.to_dict(), "base_seed": 1}))
    assert all(a.seed != b.seed for a, b in zip(rows, other))


def test_same_pixels_alone_in_a_batch_of_4_and_on_rank_1_of_2(tiny_gen, tmp_path):
    rows = plan()[:4]
    reqs = [r.request() for r in rows]
    batch = tiny_gen.generate(reqs)
    for i, r in enumerate(reqs):
        assert np.array_equal(np.asarray(tiny_gen.generate([r])[0]), np.asarray(batch[i]))
    # Across ranks: shard 1 of the plan is rendered by task 1 of 2 (alone) and by a single task (after shard 0).
    one, two = tmp_path / "one", tmp_path / "two"
    assert generate_dataset(plan(), one, tiny_gen, INFO, SETTINGS).finalized
    assert task_slot(env={"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    second = generate_dataset(plan(), two, tiny_gen, INFO, SETTINGS, options=RunOptions(task=(1, 2)))
    assert [(s["config"], s["shard_index"]) for s in second.stats] == [("resnet50", 1)]
    assert not second.finalized and not (two / "failmode.json").exists()  # shards of the other task are missing
    rel = "data/resnet50/train-00001-of-00002.parquet"
    assert sha256_file(one / rel) == sha256_file(two / rel)
    last = generate_dataset(plan(), two, tiny_gen, INFO, SETTINGS, options=RunOptions(task=(0, 2)))
    assert last.finalized  # the last one finalizes
    assert tree(one) == tree(two)
    assert (one / "failmode.json").read_bytes() == (two / "failmode.json").read_bytes()
    recorded = read_json(one / "failmode.json")["generation"]  # the generator's own description of how it renders
    assert {k: recorded[k] for k in ("batch_size", "precision", "scheduler", "safety_checker", "quality_filter")} == {
        "batch_size": 4, "precision": "fp32", "scheduler": "dpmsolver++", "safety_checker": False,
        "quality_filter": None}


def test_device_side_decode_gives_the_pipelines_own_pil_pixels(tiny_gen):
    req = plan()[0].request()
    ours = np.asarray(tiny_gen.generate([req])[0])
    pipe = tiny_gen.pipe
    latents = torch.cat([tiny_gen.latents(req)] * tiny_gen.batch_size)  # the fixed kernel batch, as generate pads
    emb, neg = tiny_gen.encode_prompt(req.prompt), tiny_gen.encode_prompt(req.negative_prompt)
    with torch.inference_mode():
        ref = pipe(prompt_embeds=emb.repeat(len(latents), 1, 1), negative_prompt_embeds=neg.repeat(len(latents), 1, 1),
                   latents=latents.contiguous(memory_format=torch.channels_last),
                   num_inference_steps=req.num_inference_steps, guidance_scale=req.guidance_scale,
                   height=req.height, width=req.width, output_type="pil").images[0]
    assert ours.dtype == np.uint8 and ours.shape == (req.height, req.width, 3)
    assert np.array_equal(ours, np.asarray(ref)) and ours.std() > 0


def test_compiled_pipeline_captures_whole_graphs_and_keeps_pixels(tiny_gen, monkeypatch):
    """`compile` wraps the UNet (fullgraph: a graph break would fail) and the VAE decoder; dynamo's capture is what
    can break across diffusers/torch versions, so it runs here with the eager backend (inductor's code generation
    takes a minute on a CPU and is exercised by the GPU benchmark)."""
    from failmode.testing import tiny_pipeline

    calls = []
    real_compile = torch.compile

    def eager_compile(fn, **kw):
        calls.append((getattr(fn, "__name__", type(fn).__name__), kw.get("fullgraph", False), kw.get("mode")))
        return real_compile(fn, **{**kw, "mode": None, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    opts = RenderOptions(device="cpu", precision="fp32", batch_size=4, scheduler="dpmsolver++", compile="max-autotune")
    compiled = DiffusersGenerator(pipeline=tiny_pipeline(), options=opts, ident="diffusers:tiny")
    assert calls == [("UNet2DConditionModel", True, "max-autotune"), ("decode", False, "max-autotune")]
    reqs = [r.request() for r in plan()[:3]]
    for a, b in zip(compiled.generate(reqs), tiny_gen.generate(reqs), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    torch._dynamo.reset()


def test_kill_during_a_shard_then_resume_gives_the_same_bytes(tiny_gen, tmp_path):
    class Killing(ImageGenerator):
        ident = tiny_gen.ident

        def __init__(self, after: int) -> None:
            self.left = after

        def generate(self, requests):
            if self.left < len(requests):
                raise RuntimeError("killed (simulated)")
            self.left -= len(requests)
            return tiny_gen.generate(requests)

        def describe(self):  # the same render settings, so the same build: its done shards are kept
            return tiny_gen.describe()

    Killing.batch_size = 2
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    generate(plan(), ref, tiny_gen)
    with pytest.raises(RuntimeError, match="killed"):
        generate(plan(), resumed, Killing(after=4))
    partial = tree(resumed)
    assert "data/resnet50/train-00000-of-00002_stats.json" in partial
    assert "data/resnet50/train-00001-of-00002_stats.json" not in partial
    stats = generate(plan(), resumed, tiny_gen)
    assert [(s["config"], s["shard_index"]) for s in stats] == [("resnet50", 1), ("baseline", 0)]
    assert tree(resumed) == tree(ref)
    assert not list(resumed.rglob("*.tmp"))


def test_kill_after_a_shard_marker_and_before_its_generation_stats_redoes_the_shard(tmp_path, monkeypatch):
    """A kill once a shard's marker is written but before its final generation stats: the rerun counts the shard as
    not written and redoes it, so the folder equals an uninterrupted one (the stats once lacked `rejected`)."""
    import failmode.generation.shards as shards

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    generate(plan(), ref, SolidGenerator())
    real = shards.write_json

    def dies_at_the_final_stats(path, obj, *a, **kw):
        if "rejected" in obj:
            raise KeyboardInterrupt("killed (simulated)")
        return real(path, obj, *a, **kw)

    monkeypatch.setattr(shards, "write_json", dies_at_the_final_stats)
    with pytest.raises(KeyboardInterrupt):
        generate(plan(), killed, SolidGenerator())
    assert "data/resnet50/train-00000-of-00002_stats.json" in tree(killed)  # the marker made it
    monkeypatch.setattr(shards, "write_json", real)
    redone = generate(plan(), killed, SolidGenerator())
    assert [(s["config"], s["shard_index"]) for s in redone][0] == ("resnet50", 0)

    def every_file(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}

    assert every_file(killed) == every_file(ref)


def test_out_of_memory_halves_the_batch_instead_of_dying(tmp_path):
    gen = SolidGenerator(max_batch=2)
    gen.batch_size = 8
    stats = generate(plan(), tmp_path, gen)
    assert all(s["batch_size"] == 2 for s in stats) and max(gen.calls) == 2
    assert sum(s["count"] for s in stats) == len(plan())
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ShardRun(tmp_path / "x", SolidGenerator(max_batch=0), CLASSES).run(plan())


def test_overwrite_mode_redoes_done_shards_and_a_changed_plan_needs_it(tmp_path):
    generate(plan(), tmp_path, SolidGenerator())
    assert generate(plan(), tmp_path, SolidGenerator()) == []
    redone = generate(plan(), tmp_path, SolidGenerator(), options=RunOptions(write="overwrite"))
    assert len(redone) == 3
    changed = plan(GenerationSettings(**{**SETTINGS.to_dict(), "guidance": 5.0}))
    with pytest.raises(ValidationError, match="different plan"):
        generate(changed, tmp_path, SolidGenerator())


def test_overwrite_with_another_shard_count_never_mixes_old_and_new_shards(tmp_path):
    """An overwrite first removes the previous build's manifest, card and the shards the new plan does not have: a
    run that stops half-way leaves no finalized-looking folder and no shard of the old count."""
    generate(plan(), tmp_path, SolidGenerator())  # resnet50: 2 shards of 3
    (tmp_path / "failmode.json").write_text("{}")  # as finalize leaves it
    (tmp_path / "README.md").write_text("the old card")
    one_shard = plan(GenerationSettings(**{**SETTINGS.to_dict(), "shard_size": 100}))
    with pytest.raises(RuntimeError, match="killed"):
        generate(one_shard, tmp_path, SolidGenerator(fail_after=2), options=RunOptions(write="overwrite"))
    assert not (tmp_path / "failmode.json").exists() and not (tmp_path / "README.md").exists()
    left = sorted(p.name for p in (tmp_path / "data" / "resnet50").iterdir())
    assert all("-of-00001" in name for name in left) and not list((tmp_path / "wds").rglob("*-of-00002*"))
    assert not list((tmp_path / "generation" / "stats").rglob("*-of-00002.json"))
    generate(one_shard, tmp_path, SolidGenerator(), options=RunOptions(write="overwrite"))
    assert sorted(p.name for p in (tmp_path / "data" / "resnet50").iterdir()) == [
        "train-00000-of-00001.parquet", "train-00000-of-00001_stats.json"]


class SeedScorer:
    """Drops the images of chosen seeds (a stand-in for CLIP saying 'no object')."""

    ident = "fake:seed-scorer"

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def score(self, images, requests):
        return [{"clip_class": 0.0 if r.seed in self.bad else 0.3, "clip_context": 0.1} for r in requests]

    def keep(self, scores):
        return scores["clip_class"] >= 0.2


def test_quality_filter_replaces_drops_from_the_seed_reserve(tmp_path):
    import pyarrow.parquet as pq

    rows = plan()
    first, second = rows[0], rows[1]
    bad = {first.seed, attempt_seed(first.seed, 1), second.seed, *(attempt_seed(second.seed, a) for a in (1, 2, 3))}
    stats = generate(rows, tmp_path, SolidGenerator(), quality=SeedScorer(bad))
    s0 = stats[0]
    assert s0["failures"] == {"quality_dropped": 6, "unsafe_flagged": 0, "unfilled": 1}
    assert s0["count"] == 2 and s0["substituted"] == 1
    t = pq.read_table(tmp_path / "data/resnet50/train-00000-of-00002.parquet").to_pylist()
    assert [r["seed"] for r in t] == [attempt_seed(first.seed, 2), rows[2].seed]
    assert t[0]["planned_seed"] == first.seed and t[0]["attempt"] == 2
    assert t[0]["substitution"] == "quality@0,quality@1" and t[1]["substitution"] == ""
    assert t[0]["clip_class"] == pytest.approx(0.3) and t[0]["clip_context"] == pytest.approx(0.1)
    on_disk = read_json(tmp_path / "generation/stats/resnet50/train-00000-of-00002.json")
    assert on_disk["failures"]["quality_dropped"] == 6 and on_disk["count"] == 2
    assert "timings" not in on_disk and set(s0["timings"]) >= {"render_s", "write_s"}  # timings: returned, not kept


def test_safety_checker_flags_are_regenerated_with_the_next_seed(tmp_path):
    import pyarrow.parquet as pq

    rows = plan()
    flagged = {rows[1].seed}

    class Gen(SolidGenerator):
        def generate(self, requests):
            self.last = list(requests)
            return super().generate(requests)

        def safety_checker(self):
            return lambda imgs: [r.seed in flagged for r in self.last]

    gen = Gen()
    stats = generate(rows, tmp_path, gen)
    assert stats[0]["failures"]["unsafe_flagged"] == 1 and stats[0]["count"] == 3
    assert stats[0]["safety_checker"] and read_json(tmp_path / "failmode.json")["generation"]["safety_checker"]
    t = pq.read_table(tmp_path / "data/resnet50/train-00000-of-00002.parquet").to_pylist()
    assert t[1]["seed"] == attempt_seed(rows[1].seed, 1) and t[1]["substitution"] == "unsafe@0"


def test_clip_quality_scores_are_cosine_similarities(tiny_clip):
    from failmode.generation.quality import ClipQuality

    q = ClipQuality(tiny_clip, min_class_score=0.5, batch_size=4)
    imgs = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    reqs = [r.request() for r in plan() if r.class_name == "cat"][:3]
    scores = q.score(imgs, reqs)
    with torch.no_grad():
        x = torch.stack([tiny_clip.preprocess(imgs[0])])
        i = torch.nn.functional.normalize(tiny_clip.model.encode_image(x), dim=-1)
        t = torch.nn.functional.normalize(tiny_clip.model.encode_text(tiny_clip.tokenizer(["a photo of a cat"])), dim=-1)
    assert scores[0]["clip_class"] == pytest.approx(float(i @ t.T), abs=1e-5)
    assert q.keep({"clip_class": 0.6, "clip_context": 0.0}) and not q.keep({"clip_class": 0.4, "clip_context": 0.9})
    # images larger than CLIP's input and not square: resized and cropped exactly as open_clip's preprocess
    rng = np.random.default_rng(1)
    big = [Image.fromarray(rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)).resize((72, 60)) for _ in range(3)]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            tiny_clip.model.encode_image(torch.stack([tiny_clip.preprocess(im) for im in big])), dim=-1)
    assert torch.allclose(q._encode_images(big), ref, atol=1e-5)


def test_missing_or_corrupt_model_directory_fails_with_one_line(tiny_pipeline_dir, tmp_path):
    with pytest.raises(LoadError) as e:
        DiffusersGenerator(str(tmp_path / "nope"), options=RenderOptions(device="cpu", precision="fp32"))
    assert "does not exist" in str(e.value) and "\n" not in str(e.value)
    broken = shutil.copytree(tiny_pipeline_dir, tmp_path / "broken")
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LoadError) as e:
        DiffusersGenerator(str(broken), options=RenderOptions(device="cpu", precision="fp32"))
    assert "broken" in str(e.value) and "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="no model_index.json"):
        DiffusersGenerator(str(empty), options=RenderOptions(device="cpu", precision="fp32"))


def test_random_context_config_spreads_the_model_configs_count_over_the_vocabulary():
    from failmode.generation.plan import ClassModes, ModeSet, random_context_modes
    from failmode.vocab import load_vocabulary
    from failmode.vocab.classnames import label_names

    vocab = load_vocabulary("cifar10", "background")
    names = label_names("cifar10")
    a = ModeSet("a", "model", "a", "background", (ClassModes(3, "cat", "cat", ("x", "y", "z")),
                                                  ClassModes(5, "dog", "dog", ("x",))))
    b = ModeSet("b", "model", "b", "background", (ClassModes(3, "cat", "cat", ("x",)),))
    coll = ModeSet("c", "collective", "collective:f", "background", (ClassModes(9, "truck", "truck", ("x",)),))
    ms = random_context_modes([a, b, coll], vocab, names, base_seed=0, k=3, images_per_mode=5)
    by = {cm.label: cm for cm in ms.classes}
    assert set(by) == {3, 5}  # the collective config does not count; truck has no model images
    assert sum(by[3].counts) == round((15 + 5) / 2) and sum(by[5].counts) == round(5 / 2)
    n_ctx = len(vocab.contexts(3))
    assert by[3].contexts == tuple(vocab.contexts(3)) and max(by[3].counts) - min(by[3].counts) <= 1 < n_ctx
    assert set(by[5].contexts) <= set(vocab.contexts(5)) and set(by[5].counts) == {1}  # 2 images, 2 contexts
    assert random_context_modes([a, b], vocab, names, base_seed=0, k=3, images_per_mode=5) == ms  # seeded
    assert random_context_modes([a, b], vocab, names, base_seed=1, k=3, images_per_mode=5).classes[1] != by[5]
    rows = build_plan([ms], GenerationSettings(k=3, images_per_mode=5), generator_id="g")
    assert sorted(r.context for r in rows if r.label == 5) == sorted(by[5].contexts)
    assert all(r.class_name == names[r.label] for r in rows) and len(rows) == sum(by[3].counts) + 2


def test_failmode_generate_renders_a_finalized_dataset_that_regenerates(tiny_pipeline_dir, tmp_path):
    """`failmode generate` as a user runs it: a modes file and the class-only control, a saved pipeline, the
    quality filter with seeded random CLIP weights; the folder validates and a shard regenerates bit for bit."""
    import json

    from failmode.cli import main
    from failmode.dataset import validate_dataset_folder
    from failmode.generation.regenerate import regenerate_shards
    from failmode.testing import TINY_CLIP
    from failmode.vocab import load_vocabulary

    vocab = load_vocabulary("cifar10", "background")
    doc = {"format": "failmode-modes/1", "source_model": "resnet18", "vocabulary": {"dataset": "cifar10"},
           "classes": [{"label": c.index, "class_name": c.name, "modes": [{"context": c.contexts[0], "count": 1}]}
                       for c in vocab.classes[:2]]}
    modes = tmp_path / "modes.json"
    modes.write_text(json.dumps(doc))
    out = tmp_path / "ds"
    assert main(["generate", "--modes", str(modes), "--baseline", "--baseline-images", "1", "--out", str(out),
                 "--generator", str(tiny_pipeline_dir), "--steps", "2", "--size", "32", "--images-per-mode", "2",
                 "--batch-size", "4", "--device", "cpu", "--quality-threshold", "-1", "--clip-model", TINY_CLIP,
                 "--clip-pretrained", "none", "--version", "1.2.0"]) == 0
    manifest = validate_dataset_folder(out, check_hashes=True)
    assert manifest.version == "1.2.0" and set(manifest.configs) == {"resnet18", "baseline"}
    assert manifest.configs["resnet18"].num_samples == {"train": 4} and manifest.configs["baseline"].num_samples == {
        "train": 10}
    assert manifest.generation["quality_filter"] == f"clip:{TINY_CLIP}/random-init-seed0"
    assert all(regenerate_shards(out, ["resnet18/train-00000"], tmp_path / "regen", device="cpu").values())

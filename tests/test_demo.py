"""`failmode demo`: a reduced run of the chain (world export -> build -> evaluate) on the fashion-scenes world, its
outputs, caching, the commands it logs, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from failmode.errors import UsageError
from failmode.io import read_json
from failmode.world.demo import DemoConfig, attribution_top1, run_demo

SMALL = dict(per_class={"train": 40, "debug": 40, "test": 20}, image_size=64, n_exemplars=8, images_per_mode=5,
             images_per_mode_sweep=[2, 5], lambdas=[0.0, 0.5], epochs=60, grid_examples=2)
MODEL = "tf_efficientnet_lite0"  # the preset's model: its config is named after it


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    results = run_demo(out, DemoConfig.defaults(seed=1, **SMALL))
    return out, results, time.perf_counter() - t0


@pytest.mark.slow
def test_reduced_demo_fixes_heldout_failures_better_than_class_only(demo):
    _, r, _ = demo
    assert r["n_failures_seed"] > 20 and r["n_failures_heldout"] > 20
    assert r["heldout_acc_before"] == 0.0  # heldout images are failures of the head before retraining
    assert r["heldout_acc_ours"] > r["heldout_acc_class_only"] + 0.1
    assert r["test_acc_after"] > r["test_acc_before"]  # the test split has the uncommon minority too
    assert 0.5 < r["attribution_top1"] <= 1.0 and r["n_attribution_top1"] > 0
    n = {k: v["n_images"] for k, v in r["methods"].items()}
    assert n["before"] == 0 and n["ours"] == n["random-context"] > 0 and n["class-only"] == 10 * 3 * 5
    assert 0 <= r["worst_group_acc_before"] <= r["test_acc_before"] and r["worst_group_acc_after"] is not None
    assert [p["images_per_mode"] for p in r["images_per_mode_sweep"]] == [2, 5]
    assert r["images_per_mode_sweep"][0]["n_images"] < r["images_per_mode_sweep"][1]["n_images"] == n["ours"]


@pytest.mark.slow
def test_demo_numbers_are_evaluates_results_lines_and_its_commands_reproduce_them(demo, tmp_path):
    import shlex

    from failmode.cli import main
    from failmode.io import read_jsonl

    out, r, _ = demo
    lines = {rec["key"]: rec for rec in read_jsonl(out / "evaluate" / "results.jsonl")}
    for name, field in (("ours", "heldout_acc_ours"), ("class-only", "heldout_acc_class_only"),
                        ("random-context", "heldout_acc_random_context"),
                        ("evidence-weighted", "heldout_acc_evidence_weighted")):
        assert lines[r["results_keys"][name]]["heldout"] == r[field]
    assert r["configs"] == {"before": None, "ours": MODEL, "evidence-weighted": f"{MODEL}-evidence-weighted",
                            "class-only": "baseline", "random-context": "random-context"}
    build, evaluate = (shlex.split(c) for c in (out / "commands.sh").read_text().splitlines())
    assert build[:2] == ["failmode", "build"] and evaluate[:2] == ["failmode", "evaluate"]
    evaluate[evaluate.index("--out") + 1] = str(tmp_path / "again")
    assert main(evaluate[1:]) == 0
    again = {(x["setting"], x["config"], x["params"].get("lam"), x["params"].get("images_per_mode")): x
             for x in read_jsonl(tmp_path / "again" / "results.jsonl")}
    ours = again[("debug", MODEL, 0.5, None)]
    assert (ours["heldout"], ours["test"], ours["worst_group"]) == (
        r["heldout_acc_ours"], r["test_acc_after"], r["worst_group_acc_after"])
    weighted = again[("debug", f"{MODEL}-evidence-weighted", 0.5, None)]  # evaluate finds the sibling by itself
    assert (weighted["heldout"], weighted["test"]) == (r["heldout_acc_evidence_weighted"],
                                                       r["methods"]["evidence-weighted"]["test_acc"])


@pytest.mark.slow
def test_demo_writes_results_report_plots_mining_and_a_loadable_dataset(demo):
    import datasets

    out, r, _ = demo
    saved = json.loads((out / "results.json").read_text())
    for key in ("test_acc_before", "test_acc_after", "heldout_acc_before", "heldout_acc_ours",
                "heldout_acc_class_only", "heldout_acc_random_context", "attribution_top1", "n_failures_seed",
                "n_failures_heldout", "worst_group_acc_before", "worst_group_acc_after", "parameters", "timings_s"):
        assert saved[key] == r[key]
    assert saved["parameters"]["demo"]["images_per_mode"] == 5
    assert saved["parameters"]["world_preset"]["image_size"] == 64
    assert saved["parameters"]["head"]["epochs"] == 60  # evaluate's option, recorded
    assert "stand-in" in saved["stand_ins"]["generator"] and "stand-in" in saved["stand_ins"]["attributor"]
    report = (out / "report.md").read_text()
    assert "stand-in for Stable Diffusion" in report
    assert f"| ours, top-k (the k most frequent mined modes) | `{MODEL}` | " in report
    for plot in ("lambda_sweep", "images_per_mode_sweep", "failures", "debug_images"):
        assert f"plots/{plot}.png" in report
        assert (out / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mined = out / "work" / "models" / MODEL
    modes = json.loads((mined / "modes.json").read_text())
    assert modes["attributor"] == r["stand_ins"]["attributor"] and len(modes["classes"]) == 10
    assert (mined / "failures.parquet").exists() and (mined / "attributions.parquet").exists()
    ours = datasets.load_dataset(str(out / "dataset"), MODEL, split="train")
    assert len(ours) == r["methods"]["ours"]["n_images"]
    contexts = {(row["label"], row["context"]) for row in ours.select_columns(["label", "context"])}
    for cls in r["per_class_modes"]:
        assert {(cls["label"], m["context"]) for m in cls["modes"]} <= contexts
    manifest = json.loads((out / "dataset" / "failmode.json").read_text())
    assert {c: s["kind"] for c, s in manifest["configs"].items()} == {
        MODEL: "model", f"{MODEL}-evidence-weighted": "model", "baseline": "baseline",
        "random-context": "random-context"}
    assert manifest["name"] == "fashion-scenes-debug" and manifest["generator"]["id"] == "composite"
    assert (out / "dataset" / "README.md").exists()
    # the world is an ordinary local dataset: Hub layout, ClassLabel, ground-truth context columns
    world = datasets.load_dataset(str(out / "world"), split="validation")
    assert world.features["label"].names[0] == "t-shirt" and set(world.column_names) == {
        "image", "label", "context", "common"}
    assert len(world) == 10 * (40 + 20) and 0 < sum(world["common"]) < len(world)


@pytest.mark.slow
def test_the_demo_dataset_regenerates_bit_for_bit(demo, tmp_path):
    """Every config of the demo's dataset, composite stand-in included, regenerates from its manifest and plan."""
    from failmode.generation.regenerate import regenerate_shards

    out, _, _ = demo
    sibling = f"{MODEL}-evidence-weighted"
    shards = {c: read_json(out / "dataset/failmode.json")["configs"][c]["splits"]["train"]
              for c in ("random-context", MODEL, sibling)}
    assert regenerate_shards(out / "dataset", ["random-context/train-00000", f"{MODEL}/train-00001",
                                               f"{sibling}/train-00000"],
                             tmp_path / "regen") == {f"random-context/train-00000-of-{shards['random-context']:05d}": True,
                                                     f"{MODEL}/train-00001-of-{shards[MODEL]:05d}": True,
                                                     f"{sibling}/train-00000-of-{shards[sibling]:05d}": True}


@pytest.mark.slow
def test_rerun_reads_the_caches_and_gives_the_same_numbers(demo):
    out, first, seconds = demo
    t0 = time.perf_counter()
    again = run_demo(out, DemoConfig.defaults(seed=1, **SMALL))
    assert time.perf_counter() - t0 < seconds
    for key in ("methods", "lambda_sweep", "images_per_mode_sweep", "attribution_top1", "per_class_modes"):
        assert again[key] == first[key]


def test_demo_config_defaults_come_from_data_and_bad_values_fail():
    c = DemoConfig.defaults()
    assert (c.world, c.k, c.images_per_mode, c.lam) == ("concentrated", 3, 20, 0.5)
    assert max(c.images_per_mode_sweep) == c.images_per_mode
    assert DemoConfig.defaults(seed=None).seed == 0  # None means "the default"
    with pytest.raises(UsageError, match="demo parameters: unknown key 'colour' \\(known: attributor, budget, "):
        DemoConfig.defaults(colour="red")
    with pytest.raises(UsageError, match="demo parameters.k must be integer, got 'three'"):
        DemoConfig.defaults(k="three")
    assert DemoConfig.defaults(lambdas=[0.0, 1]).lambdas == (0.0, 1)  # JSON lists become the typed tuples
    with pytest.raises(UsageError, match="lambda"):
        DemoConfig.defaults(lam=-1)
    with pytest.raises(UsageError, match="images_per_mode_sweep"):
        DemoConfig.defaults(images_per_mode_sweep=[40])


def test_the_demo_preset_matches_the_demo_defaults():
    """`failmode build fashion-scenes-debug` on an exported default world is what `failmode demo` builds."""
    from failmode.generation.presets import load_preset
    from failmode.world import build_world
    from failmode.world.demo import Paths, demo_preset

    shipped = load_preset("fashion-scenes-debug")
    derived = demo_preset(DemoConfig.defaults(), build_world("concentrated", 0), Paths(Path("x")))
    for section in ("generation", "baseline", "attribution"):
        assert derived[section] == shipped.record()[section]
    assert derived["models"] == shipped.record()["models"]
    assert {k: v for k, v in derived["dataset"].items() if k != "id"} == {
        k: v for k, v in shipped.record()["dataset"].items() if k != "id"}
    gap_world = build_world("diffuse-gap", 0)
    gap = demo_preset(DemoConfig.defaults(), gap_world, Paths(Path("x")))["attribution"]
    assert (gap["attributor"], gap["options"]) == ("pixels", {"n_exemplars": 48})  # the world's attributor
    chosen = demo_preset(DemoConfig.defaults(attributor="exemplar"), gap_world, Paths(Path("x")))["attribution"]
    assert chosen == shipped.record()["attribution"]


def test_world_export_is_deterministic(tmp_path):
    from failmode.io import sha256_file
    from failmode.world import build_world
    from failmode.world.export import export_world, world_of

    small = {"train": 3, "debug": 2, "test": 2}
    a = export_world(build_world("diffuse", 2, per_class=small, image_size=32), tmp_path / "a")
    b = export_world(build_world("diffuse", 2, per_class=small, image_size=32), tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [f.as_posix() for f in files] == ["data/train-00000-of-00001.parquet",
                                             "data/validation-00000-of-00001.parquet", "world.json"]
    assert all(sha256_file(a / f) == sha256_file(b / f) for f in files)
    assert world_of(a).key == build_world("diffuse", 2, per_class=small, image_size=32).key


def test_attribution_top1_counts_only_seed_failures_in_uncommon_contexts():
    truth = ["beach", "forest", "pier", "sky"]
    common = [False, False, False, True]
    records = [{"index": 0, "half": "seed", "context": "beach"}, {"index": 1, "half": "seed", "context": "moon"},
               {"index": 2, "half": "heldout", "context": "moon"}, {"index": 3, "half": "seed", "context": "moon"}]
    assert attribution_top1(records, truth, common) == (0.5, 2)
    assert attribution_top1([], truth, common) == (None, 0)


def test_cli_parses_demo_options_and_rejects_unknown_worlds(capsys):
    from failmode.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--out", "x", "--world", "diffuse", "--seed", "2"])
    assert (args.world, args.seed, args.out) == ("diffuse", 2, "x")
    assert main(["demo", "--out", "x", "--world", "uniform"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown world 'uniform'" in err[0] and "mixed-gap" in err[0]


@pytest.mark.slow
def test_gap_world_demo_records_the_gap_and_an_attributor_without_classifier_weights(tmp_path):
    """`failmode demo --world concentrated-gap` on a reduced world: the chain runs with the pixel attributor, and
    results.json and report.md carry the measured real-vs-generated probe accuracy and the attributor."""
    from failmode.cli import main

    small = {**SMALL, "gap_probe_per_class": 16}
    r = run_demo(tmp_path / "gap", DemoConfig.defaults(world="concentrated-gap", seed=1, **small))
    assert r["world"] == "concentrated-gap" and r["attributor"] == "pixels"
    assert r["stand_ins"]["attributor"].startswith("pixels:") and "no classifier weights" in r["stand_ins"]["attributor"]
    assert "photo regions the splits do not use" in r["stand_ins"]["generator"]
    assert r["gap_probe_acc"] >= 0.85 and r["gap_probe"]["n_eval"] == 160
    assert r["parameters"]["world_preset"]["gap"]["generator_region"] == [0.6, 1.0]
    modes = read_json(tmp_path / "gap" / "work" / "models" / MODEL / "modes.json")
    assert modes["attributor"] == r["stand_ins"]["attributor"]
    assert 0.3 < r["attribution_top1"] <= 1.0 and r["heldout_acc_ours"] > r["heldout_acc_class_only"]
    report = (tmp_path / "gap" / "report.md").read_text()
    assert "Synthetic-to-real gap" in report and f"{100 * r['gap_probe_acc']:.1f} %" in report
    saved = read_json(tmp_path / "gap" / "results.json")
    assert saved["gap_probe_acc"] == r["gap_probe_acc"]
    # only the demo's stand-in attributors can be chosen, in one line, before anything runs
    assert main(["demo", "--out", str(tmp_path / "x"), "--attributor", "clip"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="unknown demo attributor"):
        DemoConfig.defaults(attributor="clip")


@pytest.mark.slow
def test_demo_card_states_what_ran_and_its_python_blocks_run(demo):
    """The composite stand-in and the exemplar attributor, named as such: no diffusion licence or tag, no CLIP
    fields, no local path; every python block of the card runs from the dataset's folder."""
    from failmode.testing import check_card_states_the_manifest

    out, _, _ = demo
    header = check_card_states_the_manifest(out / "dataset")
    assert header["license"] == "other" and "stable-diffusion" not in header["tags"]
    text = (out / "dataset" / "README.md").read_text()
    assert "made by the `composite` generator, a stand-in, not a diffusion model" in text
    assert "Fashion-MNIST garments (MIT License)" in text and "OpenRAIL" not in text
    assert str(out) not in text


@pytest.mark.slow
def test_rerunning_the_demo_commands_changes_no_result(demo):
    """Each line of commands.sh run again: results.jsonl and tables.md byte-identical (runs already there are
    skipped), and tables.md names every sweep point."""
    import shlex

    from failmode.cli import main

    out, _, _ = demo
    results, tables = out / "evaluate" / "results.jsonl", out / "evaluate" / "tables.md"
    before = results.read_bytes(), tables.read_bytes()
    for line in (out / "commands.sh").read_text().splitlines():
        assert main(shlex.split(line)[1:]) == 0
    assert (results.read_bytes(), tables.read_bytes()) == before
    text = tables.read_text()
    for n in (2, 5):
        assert f"| images-per-mode-sweep ({n} images per mode) | 0.5 |" in text


def test_a_world_json_path_is_validated_like_the_shipped_worlds(tmp_path, capsys):
    """`failmode demo --world FILE`: a malformed world file is one line naming it, before anything runs."""
    from failmode.cli import main

    shipped = read_json(Path(__file__).resolve().parents[1] / "failmode/world/data/presets/mixed.json")
    cases = {"not-json.json": "{", "a-list.json": "[]",
             "bad-type.json": json.dumps({**shipped, "image_size": "big"}),
             "missing-class.json": json.dumps({**shipped, "common": {"t-shirt": "beach"}}),
             "unknown-scene.json": json.dumps({**shipped, "uncommon": {**shipped["uncommon"], "bag": ["moon"]}})}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert main(["demo", "--out", str(tmp_path / "out"), "--world", str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0], (name, err)
    assert not (tmp_path / "out").exists()  # nothing half-written
    good = tmp_path / "my-world.json"
    good.write_text(json.dumps({**shipped, "name": "my-world"}))
    assert DemoConfig.defaults(world=str(good)).world == str(good)


@pytest.mark.slow
def test_a_user_world_runs_end_to_end_with_both_budget_policies(tmp_path):
    """A world JSON of one's own (`failmode demo --world my-world.json`): the chain runs, the build adds the
    evidence-weighted sibling with top-k's images per class, evaluate scores all four configs, and the manifest and
    card record each class's allocation."""
    shipped = read_json(Path(__file__).resolve().parents[1] / "failmode/world/data/presets/mixed.json")
    path = tmp_path / "my-world.json"
    path.write_text(json.dumps({**shipped, "name": "my-world"}))
    r = run_demo(tmp_path / "run", DemoConfig.defaults(world=str(path), seed=1, **SMALL))
    assert r["world"] == "my-world"
    assert set(r["methods"]) == {"before", "ours", "evidence-weighted", "class-only", "random-context"}
    n = {k: v["n_images"] for k, v in r["methods"].items()}
    assert n["ours"] == n["evidence-weighted"] == n["random-context"] > 0
    assert r["configs"]["evidence-weighted"] == f"{MODEL}-evidence-weighted"
    assert r["heldout_acc_evidence_weighted"] == r["methods"]["evidence-weighted"]["heldout_acc"] is not None
    manifest = read_json(tmp_path / "run" / "dataset" / "failmode.json")
    budget = manifest["attribution"]["budget"]
    assert budget["policies"] == ["top-k", "evidence-weighted"] and manifest["generation"]["budget"] == budget["policies"]
    top, weighted = budget["configs"][MODEL], budget["configs"][f"{MODEL}-evidence-weighted"]
    assert (top["policy"], weighted["policy"]) == ("top-k", "evidence-weighted")
    descriptions = {c: spec["description"] for c, spec in manifest["configs"].items()}
    assert "top contexts per class" in descriptions[MODEL]
    assert "by the attributed seed failures" in descriptions[f"{MODEL}-evidence-weighted"]
    assert {y: sum(c.values()) for y, c in top["images"].items()} == {
        y: sum(c.values()) for y, c in weighted["images"].items()}
    assert "evidence-weighted" in (tmp_path / "run" / "dataset" / "README.md").read_text()
    assert "evidence-weighted" in (tmp_path / "run" / "report.md").read_text()

"""`failmode demo`: a reduced run of the whole method on the fashion-scenes world, its outputs, caching and CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from failmode.errors import UsageError, ValidationError
from failmode.world.demo import DemoConfig, attribution_top1, match_counts, run_demo

SMALL = dict(per_class={"train": 40, "debug": 40, "test": 20}, image_size=64, n_exemplars=8, images_per_mode=5,
             images_per_mode_sweep=[5], lambdas=[0.0, 0.5], head={"epochs": 100, "retrain_epochs": 60}, grid_examples=2)


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
    assert n["before"] == 0 and n["ours"] == n["class-only"] == n["random-context"] > 0


@pytest.mark.slow
def test_demo_writes_results_report_plots_mining_and_a_loadable_dataset(demo):
    import datasets

    out, r, _ = demo
    saved = json.loads((out / "results.json").read_text())
    for key in ("test_acc_before", "test_acc_after", "heldout_acc_before", "heldout_acc_ours",
                "heldout_acc_class_only", "heldout_acc_random_context", "attribution_top1", "n_failures_seed",
                "n_failures_heldout", "parameters", "timings_s"):
        assert saved[key] == r[key]
    assert saved["parameters"]["demo"]["images_per_mode"] == 5
    assert saved["parameters"]["world_preset"]["image_size"] == 64
    assert "stand-in" in saved["stand_ins"]["generator"] and "stand-in" in saved["stand_ins"]["attributor"]
    report = (out / "report.md").read_text()
    assert "stand-in for Stable Diffusion" in report and "| ours (mined failure modes) | " in report
    for plot in ("lambda_sweep", "images_per_mode_sweep", "failures", "debug_images"):
        assert f"plots/{plot}.png" in report
        assert (out / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modes = json.loads((out / "mining" / "modes.json").read_text())
    assert modes["attributor"] == r["stand_ins"]["attributor"] and len(modes["classes"]) == 10
    assert (out / "mining" / "failures.parquet").exists() and (out / "mining" / "attributions.parquet").exists()
    ours = datasets.load_dataset(str(out / "dataset"), "ours", split="train")
    assert len(ours) == r["methods"]["ours"]["n_images"]
    contexts = {(row["label"], row["context"]) for row in ours.select_columns(["label", "context"])}
    for cls in r["per_class_modes"]:
        assert {(cls["label"], m["context"]) for m in cls["modes"]} <= contexts
    manifest = json.loads((out / "dataset" / "failmode.json").read_text())
    assert set(manifest["configs"]) >= {"ours", "class-only", "random-context"}
    assert (out / "dataset" / "README.md").exists()


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
    assert c.max_images_per_mode == max(c.images_per_mode_sweep)
    assert DemoConfig.defaults(seed=None).seed == 0  # None means "the default"
    with pytest.raises(UsageError, match="unknown demo parameter"):
        DemoConfig.defaults(colour="red")
    with pytest.raises(UsageError, match="lambda"):
        DemoConfig.defaults(lam=-1)


def test_match_counts_keeps_per_label_counts_seeds_and_renumbers_shards():
    from failmode.generation import GenerationSettings, baseline_modes, build_plan

    settings = GenerationSettings(size=64, images_per_mode=4, k=2, shard_size=3)
    rows = build_plan([baseline_modes(["a", "b", "c"], config="class-only")], settings, generator_id="g")
    kept = match_counts(rows, {0: 5, 2: 2}, seed=0, shard_size=3)
    assert [r.label for r in kept] == [0] * 5 + [2] * 2
    assert [(r.shard_index, r.position, r.num_shards) for r in kept] == [(i // 3, i % 3, 3) for i in range(7)]
    assert {r.seed for r in kept} <= {r.seed for r in rows}
    assert kept == match_counts(rows, {0: 5, 2: 2}, seed=0, shard_size=3)
    with pytest.raises(ValidationError, match="9 needed"):
        match_counts(rows, {1: 9}, seed=0, shard_size=3)


def test_attribution_top1_counts_only_seed_failures_in_uncommon_contexts():
    from failmode.world import build_world

    w = build_world("concentrated", 0, per_class={"train": 5, "debug": 30, "test": 5})
    src = w.splits["debug"]
    unc = np.flatnonzero(src.is_uncommon())[:3]
    common = np.flatnonzero(~src.is_uncommon())[0]
    truth = src.contexts()
    records = [{"index": int(unc[0]), "half": "seed", "context": truth[unc[0]]},
               {"index": int(unc[1]), "half": "seed", "context": "on the moon"},
               {"index": int(unc[2]), "half": "heldout", "context": "on the moon"},
               {"index": int(common), "half": "seed", "context": "on the moon"}]
    assert attribution_top1(records, w) == (0.5, 2)
    assert attribution_top1([], w) == (None, 0)


def test_cli_parses_demo_options_and_rejects_unknown_worlds(capsys):
    from failmode.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--out", "x", "--world", "diffuse", "--seed", "2"])
    assert (args.world, args.seed, args.out) == ("diffuse", 2, "x")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", "x", "--world", "uniform"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err

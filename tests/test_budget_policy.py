"""Budget policies (issue 29): the evidence-weighted allocation goes peaked for peaked seed-failure counts and broad
for flat or sparse ones, keeps top-k's images per class, reads seed rows only, and reaches the plan, manifest and the
command lines; top-k alone leaves plans and manifests as they were."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from failmode.errors import UsageError, ValidationError
from failmode.generation.plan import (
    EVIDENCE_WEIGHTED,
    TOP_K,
    ClassModes,
    GenerationSettings,
    ModeSet,
    build_plan,
    evidence_allocation,
    evidence_modes,
    evidence_probabilities,
    policy_config,
    seed_context_counts,
    water_fill,
)

CONTEXTS = tuple(f"ctx{j}" for j in range(12))


class _Vocab:
    """Two classes with the same 12 contexts (what build and generate ask of a vocabulary here)."""

    def contexts(self, label: int) -> tuple[str, ...]:
        return CONTEXTS


def test_peaked_counts_give_a_targeted_set_and_flat_or_sparse_counts_a_broad_one():
    peaked = [9, 0, 8, 0, 0, 7, 1, 0, 0, 0, 0, 0]
    x = np.asarray(evidence_allocation(peaked, 60, 20))
    assert x.sum() == 60
    assert x[[0, 2, 5]].sum() >= 54 and min(x[[0, 2, 5]]) >= 17  # nearly all on the three modes, near-equal shares
    assert (x > 0).sum() <= 4
    flat = [2, 3, 2, 1, 2, 3, 2, 2, 1, 2, 3, 2]
    y = np.asarray(evidence_allocation(flat, 60, 20))
    assert y.sum() == 60 and (y > 0).all() and y.max() - y.min() <= 2  # every context, about 5 each
    sparse = [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]  # three failures say little: spread the budget
    z = np.asarray(evidence_allocation(sparse, 60, 20))
    assert z.sum() == 60 and (z > 0).sum() >= 10
    one_mode = [20, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    w = np.asarray(evidence_allocation(one_mode, 60, 20))
    assert w[0] >= 30 and w.sum() == 60  # one dominant mode takes most of the budget (saturating gain: not all)


def test_allocation_is_deterministic_and_probabilities_follow_the_support_models():
    counts = [5, 4, 0, 3, 0, 0, 2, 0, 0, 1, 0, 0]
    assert evidence_allocation(counts, 45, 15) == evidence_allocation(list(counts), 45, 15)
    p = evidence_probabilities([10, 9, 8] + [0] * 9)
    assert p.sum() == pytest.approx(1) and p[:3].min() > 10 * p[3:].max()
    assert np.allclose(evidence_probabilities([0] * 12), 1 / 12)
    assert np.allclose(evidence_probabilities([3] * 12), 1 / 12, atol=0.01)  # perfectly flat counts: flat
    x = water_fill(np.asarray([0.5, 0.3, 0.2]), 30.0, 10.0)
    assert x.sum() == pytest.approx(30) and x[0] > x[1] > x[2] >= 0
    assert x[0] - x[1] == pytest.approx(10 * np.log(0.5 / 0.3))  # tau ln(p_i / p_j) between active contexts
    with pytest.raises(ValidationError):
        evidence_allocation(counts, -1, 20)


def _records(rows):
    return [{"label": y, "half": half, "context": c} for y, half, c in rows]


def test_counts_read_seed_rows_only_and_never_heldout_ones():
    seed = [(0, "seed", "ctx0"), (0, "seed", "ctx0"), (0, "seed", "ctx3"), (1, "seed", "ctx11")]
    counts = seed_context_counts(_records(seed), _Vocab())
    assert counts == {0: [2, 0, 0, 1] + [0] * 8, 1: [0] * 11 + [1]}
    # held-out rows, even ones no vocabulary could hold, change nothing: they are never read
    heldout = [(0, "heldout", "ctx5")] * 50 + [(2, "heldout", "not a context")]
    assert seed_context_counts(_records(seed + heldout), _Vocab()) == counts
    with pytest.raises(ValidationError, match="not in the vocabulary"):
        seed_context_counts(_records([(0, "seed", "not a context")]), _Vocab())


def _top_k() -> ModeSet:
    classes = (ClassModes(0, "a", "a", ("ctx0", "ctx2", "ctx5")), ClassModes(1, "b", "b", ("ctx1", "ctx4")))
    return ModeSet("m", "model", "model-id", "background", classes)


def test_evidence_modes_keep_top_k_images_per_class_and_the_plan_records_each_image():
    counts = {0: [9, 0, 8, 0, 0, 7, 1, 0, 0, 0, 0, 0], 1: [2, 3, 2, 1, 2, 3, 2, 2, 1, 2, 3, 2]}
    settings = GenerationSettings(images_per_mode=10, k=3, budget=(TOP_K, EVIDENCE_WEIGHTED), size=64)
    ew = evidence_modes(_top_k(), counts, _Vocab(), config="m-evidence-weighted", k=3, images_per_mode=10)
    assert ew.policy == EVIDENCE_WEIGHTED and ew.source_model == "model-id"
    assert [sum(c.counts) for c in ew.classes] == [30, 20]  # the same totals as top-k (3 and 2 modes x 10)
    assert len(ew.classes[0].contexts) <= 4 and len(ew.classes[1].contexts) == 12  # peaked vs flat class
    rows = build_plan([_top_k(), ew], settings, generator_id="g")
    per = {(r.config, r.label): 0 for r in rows}
    for r in rows:
        per[r.config, r.label] += 1
    assert per == {("m", 0): 30, ("m", 1): 20, ("m-evidence-weighted", 0): 30, ("m-evidence-weighted", 1): 20}
    seeds = [r.seed for r in rows]
    assert len(set(seeds)) == len(seeds)  # every image has its own seed
    assert build_plan([_top_k(), ew], settings, generator_id="g") == rows  # deterministic


def test_budget_setting_is_checked_named_and_left_out_of_default_manifests():
    assert "budget" not in GenerationSettings().to_dict()  # top-k alone: the manifest bytes of before
    both = GenerationSettings.from_dict({"budget": ["top-k", "evidence-weighted"]})
    assert both.budget == (TOP_K, EVIDENCE_WEIGHTED) and both.to_dict()["budget"] == ["top-k", "evidence-weighted"]
    for bad in (["uniform"], [], ["top-k", "top-k"]):
        with pytest.raises(ValidationError, match="budget"):
            GenerationSettings.from_dict({"budget": bad})
    assert policy_config("m", TOP_K, (TOP_K, EVIDENCE_WEIGHTED)) == "m"
    assert policy_config("m", EVIDENCE_WEIGHTED, (TOP_K, EVIDENCE_WEIGHTED)) == "m-evidence-weighted"
    assert policy_config("m", EVIDENCE_WEIGHTED, (EVIDENCE_WEIGHTED,)) == "m"


def test_build_and_generate_flags_set_the_budget(capsys):
    from failmode.cli import build_parser
    from failmode.commands.build import overrides

    args = build_parser().parse_args(["build", "cifar10-bg-debug", "--budget", "top-k,evidence-weighted"])
    assert overrides(args)["generation"] == {"budget": ["top-k", "evidence-weighted"]}
    gen = build_parser().parse_args(["generate", "--out", "x", "--budget", "evidence-weighted"])
    assert gen.budget == ["evidence-weighted"]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["build", "cifar10-bg-debug", "--budget", "top-k,everything"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--budget" in err and "top-k, evidence-weighted" in err


def test_top_k_mode_sets_of_a_preset_are_unchanged_and_siblings_follow_each_model():
    from failmode.generation.build import budget_mode_sets, budget_record

    top = _top_k()
    default = GenerationSettings(images_per_mode=10, k=3)
    assert budget_mode_sets([top], default, _Vocab(), {}) == [dataclasses.replace(top, policy=TOP_K)]
    assert budget_record([top], default) == {}
    both = dataclasses.replace(default, budget=(TOP_K, EVIDENCE_WEIGHTED))
    with pytest.raises(UsageError, match="seed-failure attributions"):
        budget_mode_sets([top], both, _Vocab(), {})
    counts = {"model-id": {0: [9, 0, 8, 0, 0, 7, 1, 0, 0, 0, 0, 0], 1: [1] * 12}}
    sets = budget_mode_sets([top], both, _Vocab(), counts)
    assert [s.config for s in sets] == ["m", "m-evidence-weighted"]
    record = budget_record(sets, both)["budget"]
    assert record["policies"] == ["top-k", "evidence-weighted"]
    assert record["configs"]["m"]["images"]["0"] == {"ctx0": 10, "ctx2": 10, "ctx5": 10}
    assert sum(record["configs"]["m-evidence-weighted"]["images"]["1"].values()) == 20


def test_generate_plans_the_evidence_weighted_sibling_from_the_attributions_beside_the_modes(tmp_path):
    """`failmode generate --budget top-k,evidence-weighted --plan-only`: the sibling's counts come from the seed rows
    of the attributions.parquet next to modes.json (held-out rows are there too, and ignored); a missing table is one
    line naming it."""
    from failmode.cli import main
    from failmode.generation.plan import read_plan
    from failmode.mining.tables import write_table
    from failmode.vocab import load_vocabulary

    contexts = list(load_vocabulary("cifar10", "background").contexts(3))
    modes = {"format": "failmode-modes/1", "source_model": "resnet50", "dataset": "cifar10",
             "vocabulary": {"dataset": "cifar10", "kind": "background", "version": "1"}, "attributor": "x", "k": 2,
             "classes": [{"label": 3, "class_name": "cat", "prompt_name": "cat", "n_seed_failures": 14,
                          "modes": [{"context": contexts[0], "count": 8}, {"context": contexts[1], "count": 6}]}]}
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "modes.json").write_text(json.dumps(modes))
    rows = ([{"label": 3, "half": "seed", "context": contexts[0]}] * 8 + [{"label": 3, "half": "seed",
                                                                          "context": contexts[1]}] * 6
            + [{"label": 3, "half": "heldout", "context": contexts[-1]}] * 30)
    argv = ["generate", "--modes", str(folder / "modes.json"), "--out", str(tmp_path / "ds"), "--k", "2",
            "--images-per-mode", "5", "--budget", "top-k,evidence-weighted", "--plan-only"]
    assert main(argv) == 2  # no attributions.parquet yet: one line naming it, nothing written
    assert not (tmp_path / "ds").exists()
    write_table(folder / "attributions.parquet", rows, {})
    assert main(argv) == 0
    plan = read_plan(tmp_path / "ds" / "generation" / "plan.parquet")
    per = {}
    for r in plan:
        per.setdefault(r.config, {}).setdefault(r.context, 0)
        per[r.config][r.context] += 1
    assert per["resnet50"] == {contexts[0]: 5, contexts[1]: 5}
    weighted = per["resnet50-evidence-weighted"]
    assert sum(weighted.values()) == 10 and contexts[-1] not in weighted  # held-out rows never count
    assert weighted.get(contexts[0], 0) + weighted.get(contexts[1], 0) >= 8

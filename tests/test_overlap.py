"""Cross-model overlap: family rule, exact IoU values, CSV/JSON/PNG outputs grouped by family, mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from failmode.errors import UsageError, ValidationError
from failmode.mining import failure_overlap, iou_matrix, model_family, write_failures


@pytest.mark.parametrize("name,family", [
    ("resnet50", "resnet"), ("resnet50.a1_in1k", "resnet"), ("tf_efficientnet_lite0", "efficientnet"),
    ("mobilenetv3_large_100", "mobilenet"), ("vit_base_patch16_224.augreg_in21k", "vit"),
    ("convnext_tiny", "convnext"), ("convnextv2_nano", "convnext"), ("hf-hub:timm/deit_small_patch16_224", "deit"),
])
def test_family_from_timm_name(name, family):
    assert model_family(name) == family


def test_family_mapping_exact_then_longest_prefix():
    fams = {"vit_": "transformer", "vit_small": "small-vit", "resnet50": "cnn"}
    assert model_family("vit_small_patch16", fams) == "small-vit"
    assert model_family("vit_base", fams) == "transformer"
    assert model_family("resnet50", fams) == "cnn"
    assert model_family("convnext_tiny", fams) == "convnext"  # not mapped: derived from the name


def test_iou_matrix_exact():
    m = iou_matrix([{"a", "b", "c"}, {"b", "c", "d"}, set(), set()])
    assert m[0, 1] == pytest.approx(2 / 4) and m[0, 2] == 0.0 and m[2, 3] == 1.0
    assert np.allclose(m, m.T) and np.all(np.diag(m) == 1.0)


def _table(root, model, failing, seed_ids=(), **meta):
    rows = [{"index": int(i[2:]), "image_id": i, "label": 0, "class_name": "a", "prediction": 1,
             "predicted_class": "b", "confidence": None, "half": "seed" if i in seed_ids else "heldout"}
            for i in failing]
    base = {"model": model, "dataset": "d", "source": "mem:d", "split_seed": 0, "n_debug": 10} | meta
    return write_failures(root / model, rows, base)


def test_overlap_outputs(tmp_path):
    paths = [_table(tmp_path, "vit_small", ["im1", "im2", "im3"], seed_ids=("im1",)),
             _table(tmp_path, "resnet50", ["im1", "im2"], seed_ids=("im1", "im2")),
             _table(tmp_path, "resnet18", ["im2", "im4"], seed_ids=("im4",))]
    out = failure_overlap(paths, out_dir=tmp_path / "ov")
    doc = json.loads(out.read_text())
    assert doc["models"] == ["resnet18", "resnet50", "vit_small"]  # grouped by family, then name
    assert doc["families"] == {"resnet18": "resnet", "resnet50": "resnet", "vit_small": "vit"}
    assert doc["matrix"] == [[1.0, round(1 / 3, 6), 0.25], [round(1 / 3, 6), 1.0, round(2 / 3, 6)],
                             [0.25, round(2 / 3, 6), 1.0]]
    assert doc["family_mean"]["resnet"] == {"resnet": round(1 / 3, 6), "vit": round((0.25 + 2 / 3) / 2, 6)}
    csv = (tmp_path / "ov" / "overlap.csv").read_text().splitlines()
    assert csv[0] == "model,resnet18,resnet50,vit_small" and csv[1] == "resnet18,1.0000,0.3333,0.2500"
    png = (tmp_path / "ov" / "overlap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    seed = json.loads(failure_overlap(paths, out_dir=tmp_path / "ov2", half="seed").read_text())
    assert seed["n_failures"] == {"resnet18": 1, "resnet50": 2, "vit_small": 1}
    assert seed["matrix"][1][2] == 0.5  # {im1, im2} vs {im1}


def test_overlap_refuses_different_debug_sets(tmp_path):
    a = _table(tmp_path, "resnet50", ["im1"])
    b = _table(tmp_path, "resnet18", ["im1"], split_seed=1)
    with pytest.raises(ValidationError, match="split_seed"):
        failure_overlap([a, b], out_dir=tmp_path / "ov")
    with pytest.raises(UsageError, match="at least two"):
        failure_overlap([a], out_dir=tmp_path / "ov")


def test_cli_overlap_runs_folder(tmp_path, monkeypatch, capsys):
    from failmode import cli

    monkeypatch.setattr(cli, "COMMANDS", ("mine", "attribute", "overlap"))
    _table(tmp_path / "runs", "resnet50", ["im1", "im2"])
    _table(tmp_path / "runs", "vit_small", ["im2"])
    (tmp_path / "fam.json").write_text(json.dumps({"resnet": "CNN", "vit_": "Transformer"}))
    rc = cli.main(["overlap", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ov"),
                   "--families", str(tmp_path / "fam.json")])
    assert rc == 0 and capsys.readouterr().out.strip() == str(tmp_path / "ov" / "overlap.json")
    doc = json.loads((tmp_path / "ov" / "overlap.json").read_text())
    assert doc["families"] == {"resnet50": "CNN", "vit_small": "Transformer"} and doc["matrix"][0][1] == 0.5

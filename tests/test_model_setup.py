"""One setup of a classifier on a dataset (`failmode.models.setup.open_classifier`), shared by mine, evaluate, build
and discover: the same checks, the same one-line errors, the same model key and head description."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failmode.cli import main
from failmode.errors import UsageError
from failmode.options import FeatureOptions, ModelSpec, SplitSpec
from failmode.testing import finalize_configs, synthetic_images

NAMES = [f"gadget {i}" for i in range(10)]  # a class list of its own, 10 classes; the tiny timm models have 1000
MODEL = "test_convnext"


def _dataset(root: Path) -> Path:
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})

    def split(n: int, seed: int) -> datasets.Dataset:
        images, labels = synthetic_images(n, size=32, seed=seed, num_classes=len(NAMES))
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)

    datasets.DatasetDict({"train": split(20, 1), "validation": split(20, 2)}).save_to_disk(str(root / "data"))
    return root / "data"


def _debug(root: Path) -> Path:
    from failmode.dataset.writer import write_shard

    images, labels = synthetic_images(10, size=32, seed=3, num_classes=len(NAMES))
    samples = [{"image": im, "label": y, "class_name": NAMES[y], "context": "ctx", "context_kind": "background",
                "prompt": f"a photo of a {NAMES[y]}", "seed": i, "generator": "test", "source_model": MODEL}
               for i, (im, y) in enumerate(zip(images, labels))]
    write_shard(root / "debug", MODEL, "train", 0, 1, samples, class_names=NAMES)
    finalize_configs(root / "debug", NAMES, {MODEL: "model"})
    return root / "debug"


def _error(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"failmode {command}: ")]
    assert len(lines) == 1, lines
    return lines[0].removeprefix(f"failmode {command}: error: ")


def test_mine_evaluate_and_discover_refuse_a_wrong_class_count_with_one_message(tmp_path, capsys):
    """A 1000-class model with no head on a 10-class dataset: mine, evaluate and discover (its classifier) stop with
    the same one line, before any feature is extracted (they used to be three copies; discover's said another
    thing)."""
    from failmode.discovery.classify import TimmClassifier

    data, debug = _dataset(tmp_path), _debug(tmp_path)
    cache = tmp_path / "cache"
    common = ["--model", MODEL, "--weights", "none", "--dataset", str(data), "--train-per-class", "1",
              "--debug-per-class", "1", "--device", "cpu", "--cache-dir", str(cache)]
    assert main(["mine", *common, "--split", "validation", "--out", str(tmp_path / "mined")]) == 2
    mined = _error("mine", capsys)
    assert main(["evaluate", *common, "--debug-data", str(debug), "--baseline-config", "none", "--random-config",
                 "none", "--out", str(tmp_path / "eval")]) == 2
    evaluated = _error("evaluate", capsys)
    with pytest.raises(UsageError) as e:
        TimmClassifier(ModelSpec(MODEL, "none"), classes=NAMES, where=str(data),
                       extraction=FeatureOptions(device="cpu", cache_dir=str(cache)))
    assert mined == evaluated == str(e.value)
    assert mined.startswith(f"{MODEL} has 1000 classes but {data} has 10: give it a head for these classes")
    assert not cache.exists() or not list(cache.rglob("*.npz"))  # refused before any feature was extracted
    assert not (tmp_path / "mined" / "failures.parquet").exists() and not (tmp_path / "eval" / "results.jsonl").exists()


def test_the_setup_opens_the_data_before_the_model_and_names_it_once(tmp_path):
    """`open_classifier`: splits and recipe as mining records them, the model key of the cache, and the model loaded
    only when it is used (its class check then); discover's class list takes a known dataset's order."""
    from failmode.models.setup import head_ident, known_order, model_key, open_classifier

    data = _dataset(tmp_path)
    split = SplitSpec(str(data), "validation", train_per_class=1, debug_per_class=1)
    setup = open_classifier(ModelSpec(MODEL, "none", head="train"), split, FeatureOptions(), need_train=True)
    assert "net" not in vars(setup) and setup.class_names == NAMES and setup.recipe == {"train_per_class": 1,
                                                                                         "debug_per_class": 1}
    assert len(setup.splits.train) == 10 and len(setup.splits.debug) == 10 and setup.train is not None
    assert setup.model_key == model_key(MODEL, "none") == f"{MODEL}@random-init-seed0"
    assert setup.extractor.model_key == setup.model_key and "net" in vars(setup)  # a head: no class check
    with pytest.raises(UsageError, match="timm does not know a model called 'no_such_net'"):
        open_classifier(ModelSpec("no_such_net"), split, FeatureOptions())
    from failmode.vocab.classnames import class_names

    assert known_order(class_names("cifar10")) == "cifar10" and known_order(NAMES) is None
    assert known_order(class_names("imagenet-1k")) == "imagenet-1k"  # an ImageNet model's own head fits it
    assert known_order(list(reversed(class_names("cifar10")))) is None  # cifar10's classes, another order
    head = tmp_path / "h.npz"
    assert [head_ident(None), head_ident("train")] == ["native", "train"]
    assert head_ident(str(head)) == str(head.resolve()) and head_ident(str(head), mining=True) == f"file:{head}"


def test_mining_records_the_head_as_evaluate_names_it_apart_from_the_prefix(tmp_path):
    """The head file as mining.json and results.jsonl write it: one function, the two forms the files have."""
    from failmode.models.setup import head_ident

    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "head.npz")
    assert head_ident(str(link), mining=True) == f"file:{link}"  # mining: the path as given, made absolute
    assert head_ident(str(link)) == str(tmp_path / "head.npz")  # results: links followed
    assert json.dumps(head_ident(None)) == '"native"'

"""The options objects (failmode.options): flags -> one frozen object -> the keyword arguments a backend takes."""

from __future__ import annotations

import argparse
import json

import pytest

from failmode.errors import UsageError, ValidationError
from failmode.options import AttributionOptions, FeatureOptions


def parse(argv: list[str], *adders) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for add in adders:
        add(p)
    return p.parse_args(argv)


def test_clip_flags_become_the_clip_factory_options_with_the_image_side_of_the_feature_options():
    args = parse(["--clip-model", "RN50", "--clip-pretrained", "none", "--templates", "t.json",
                  "--attributor-option", "draft=false", "--device", "cpu", "--batch-size", "32", "--workers", "2"],
                 AttributionOptions.add_arguments, FeatureOptions.add_arguments)
    opts = AttributionOptions.from_args(args)
    assert opts == AttributionOptions("clip", "RN50", None, {"templates": "t.json", "draft": False})
    assert opts.factory_options(FeatureOptions.from_args(args)) == {
        "model": "RN50", "pretrained": None, "templates": "t.json", "draft": False,
        "features": FeatureOptions(device="cpu", batch_size=32, num_workers=2)}
    # --attributor-option wins over a flag, a loader field included
    bare = AttributionOptions.from_args(parse(["--attributor-option", "model=ViT-L-14", "--option", "batch_size=8"],
                                              AttributionOptions.add_arguments))
    assert bare.factory_options(FeatureOptions(device="cpu", batch_size=32)) == {
        "model": "ViT-L-14", "pretrained": "openai", "features": FeatureOptions(device="cpu", batch_size=8)}
    assert bare.factory_options() == {"model": "ViT-L-14", "pretrained": "openai",
                                      "features": FeatureOptions(batch_size=8)}


def test_another_attributor_gets_only_its_own_options():
    args = parse(["--attributor", "exemplar", "--templates", "t.json", "--option", "n=4"],
                 AttributionOptions.add_arguments)
    opts = AttributionOptions.from_args(args)
    assert opts.factory_options(FeatureOptions(device="cpu", batch_size=8)) == {"n": 4}
    with pytest.raises(UsageError, match="--attributor-option wants KEY=VALUE, not 'n'"):
        AttributionOptions.from_args(parse(["--option", "n"], AttributionOptions.add_arguments))


def test_a_presets_attribution_section_is_an_attribution_options(tmp_path):
    from failmode.generation.presets import BUILDERS_DIR, load_preset

    doc = json.loads((BUILDERS_DIR / "cifar10-bg-debug.json").read_text())
    doc["attribution"] = {"attributor": "clip", "clip_model": "RN50", "pretrained": None}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    preset = load_preset(str(tmp_path / "p.json"))
    assert preset.attribution == AttributionOptions("clip", "RN50", None)
    doc["attribution"]["templates"] = "t.json"  # a CLIP option goes under "options"
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match="unknown key .templates."):
        load_preset(str(tmp_path / "p.json"))


def test_make_attributor_builds_what_the_options_name(tiny_clip, tmp_path):
    import torch

    from failmode.mining import make_attributor
    from failmode.testing import TINY_CLIP

    path = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    att = make_attributor(AttributionOptions(clip_model=TINY_CLIP, pretrained=str(path)), "background",
                          features=FeatureOptions(device="cpu", batch_size=5, num_workers=0))
    assert att.ident == f"clip:{TINY_CLIP}/{path}" and att.batch_size == 5 and att.num_workers == 0
    assert att.device.type == "cpu"


def test_render_flags_override_a_base_and_only_the_flags_given():
    from failmode.options import RenderOptions

    def args(argv: list[str], **precision: object) -> argparse.Namespace:
        return parse(argv, lambda p: RenderOptions.add_arguments(p, **precision))

    assert RenderOptions.given(args([])) == {}
    given = args(["--precision", "bf16", "--batch-size", "8", "--no-channels-last", "--safety-checker"])
    assert RenderOptions.given(given) == {"precision": "bf16", "batch_size": 8, "channels_last": False,
                                          "safety_checker": True}
    preset = RenderOptions(precision="fp16", batch_size=32, compile="max-autotune", fuse_qkv=True)
    out = RenderOptions.from_args(given, preset, device="cpu", scheduler=None)
    assert out == RenderOptions(device="cpu", precision="bf16", batch_size=8, scheduler=None, channels_last=False,
                                compile="max-autotune", fuse_qkv=True, safety_checker=True)
    # --precision is the render dtype everywhere; a command may read it with its own type (slices, for one release)
    with pytest.raises(SystemExit):  # not a dtype
        args(["--precision", "0.9"])
    assert RenderOptions.given(args(["--precision", "0.9"], type=float, choices=None)) == {"precision": 0.9}
    with pytest.raises(UsageError, match="unknown scheduler 'lms'"):
        RenderOptions.from_args(args([]), scheduler="lms")
    with pytest.raises(UsageError, match=r"batch_size: 0 is out of range \(1..1024\)"):
        RenderOptions(batch_size=0)
    with pytest.raises(SystemExit):  # a flag out of range is a usage error of argparse, before anything runs
        args(["--batch-size", "100000"])


def test_none_means_random_weights_through_one_conversion():
    """The word `none` (random weights) is turned into None in one function, wherever it comes from: CLIP's
    --clip-pretrained in attribute / build / generate, a classifier's weights in its revision record."""
    from failmode.cli import build_parser
    from failmode.commands.build import overrides
    from failmode.generation.environment import timm_revision
    from failmode.options import weights_or_none

    assert (weights_or_none("none"), weights_or_none(None), weights_or_none("timm")) == (None, None, "timm")
    # None and "none" are the same random init for create_classifier and model keys, so for the revision record too
    assert timm_revision("resnet18", "none") == timm_revision("resnet18", None) == "random"
    args = build_parser().parse_args(["build", "cifar10-bg-debug", "--clip-pretrained", "none"])
    assert overrides(args)["attribution"] == overrides(args)["quality"] == {"pretrained": None}
    args = build_parser().parse_args(["build", "cifar10-bg-debug", "--clip-pretrained", "openai", "--clip-model", "RN50"])
    assert overrides(args)["attribution"] == {"clip_model": "RN50", "pretrained": "openai"}
    attribute = build_parser().parse_args(["attribute", "f.parquet", "--vocabulary", "v", "--clip-pretrained", "none"])
    assert AttributionOptions.from_args(attribute).pretrained is None

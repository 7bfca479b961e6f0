"""The four branches: shapes, gradients, sizes, adjacency init and local weight loading.
Everything runs on CPU at the demo profile; nothing is downloaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.video import r2plus1d_18, swin3d_t

from mgpipe import layout
from mgpipe.models import (DEMO_PROFILE, PoseC3D, STCNN, build_model, count_parameters,
                           load_weights)

NUM_CLASSES = 5
INPUTS = {  # tiny batches of the demo data's shapes
    "stcnn": (2, 3, 16, 68),
    "posec3d": (2, 68, 8, 32, 32),
    "r2plus1d": (2, 3, 8, 48, 48),
    "swin3d": (2, 3, 8, 48, 48),
}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("models must never download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("branch", list(INPUTS))
def test_demo_forward_backward(branch):
    torch.manual_seed(0)
    model = build_model(branch, NUM_CLASSES, embed_dim=16, **DEMO_PROFILE[branch])
    x = torch.randn(INPUTS[branch])
    logits, emb = model(x)
    assert logits.shape == (2, NUM_CLASSES) and emb.shape == (2, 16)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()
    (logits.logsumexp(1).mean() + emb.pow(2).mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        assert model(x[:1])[0].shape == (1, NUM_CLASSES)


def test_stcnn_motion_channels_and_strides():
    model = STCNN(NUM_CLASSES, in_channels=6, channels=(8, 16), strides=(1, 2))
    assert model.forward_features(torch.randn(3, 6, 20, 68)).shape == (3, 16)
    assert model.blocks[1].temporal[0].stride == (2, 1)


def test_stcnn_mixing_initialised_from_adjacency():
    model = STCNN(NUM_CLASSES, **DEMO_PROFILE["stcnn"], num_subsets=2)
    a = torch.from_numpy(layout.adjacency())
    for block in model.blocks:
        assert block.mixing.requires_grad and block.mixing.shape == (2, 68, 68)
        torch.testing.assert_close(block.mixing[0].detach(), a)
        torch.testing.assert_close(block.mixing[1].detach(), a @ a)
    # each block learns its own copy
    assert model.blocks[0].mixing.data_ptr() != model.blocks[1].mixing.data_ptr()


def test_posec3d_paper_scale_size_and_structure():
    model = PoseC3D(NUM_CLASSES, in_channels=68)  # base 32, blocks (4, 6, 3)
    n = count_parameters(model)
    print(f"PoseC3D paper scale (K=68): {n:,} parameters")
    assert 1.5e6 < n < 3e6
    stem = model.stem[0][0]
    assert stem.kernel_size == (1, 7, 7) and stem.stride == (1, 1, 1)
    temporal_kernels = [[b.conv1[0].kernel_size[0] for b in stage] for stage in model.stages]
    assert temporal_kernels == [[1] * 4, [3] * 6, [3] * 3]  # only later stages inflated
    assert model.num_features == 512
    # T is kept until the last stage; H, W halve per stage
    x = model.stages[:2](model.stem(torch.randn(1, 68, 8, 16, 16)))
    assert x.shape[2:] == (8, 4, 4)


def test_r2plus1d_full_size_matches_torchvision():
    tv = r2plus1d_18(weights=None, num_classes=NUM_CLASSES)
    ours = build_model("r2plus1d", NUM_CLASSES)
    head = tv.fc.weight.numel() + tv.fc.bias.numel()
    assert count_parameters(ours.backbone) == count_parameters(tv) - head
    tv_keys = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.backbone.state_dict().items()} == tv_keys


def test_swin3d_full_size_matches_torchvision():
    tv = swin3d_t(weights=None, num_classes=NUM_CLASSES)
    ours = build_model("swin3d", NUM_CLASSES)
    head = tv.head.weight.numel() + tv.head.bias.numel()
    assert count_parameters(ours.backbone) == count_parameters(tv) - head
    assert set(ours.backbone.state_dict()) == set(tv.state_dict()) - {"head.weight", "head.bias"}


def test_load_torchvision_backbone_weights(tmp_path):
    size = dict(widths=(8, 8, 16, 16), layers=(1, 1, 1, 1))
    src = build_model("r2plus1d", 7, **size)
    path = tmp_path / "backbone.pt"
    torch.save(src.backbone.state_dict(), path)  # bare, torchvision-style keys
    model = build_model("r2plus1d", NUM_CLASSES, weights_path=path, **size)
    for k, v in src.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)


def test_load_own_checkpoint_skips_mismatched_head(tmp_path):
    size = DEMO_PROFILE["stcnn"]
    src = build_model("stcnn", 7, **size)
    path = tmp_path / "ckpt.pt"
    # as a DDP training checkpoint might hold it
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = build_model("stcnn", NUM_CLASSES, **size)
    missing = load_weights(model, path)
    assert set(missing) == {"head.fc.weight", "head.fc.bias"}  # 7 vs 5 classes
    torch.testing.assert_close(model.blocks[0].mixing, src.blocks[0].mixing)
    torch.testing.assert_close(model.head.embed.weight, src.head.embed.weight)

    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor"):
        load_weights(model, path)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown branch"):
        build_model("resnet", NUM_CLASSES)
    with pytest.raises(ValueError, match="RGB"):
        build_model("swin3d", NUM_CLASSES, in_channels=68, **DEMO_PROFILE["swin3d"])


def test_in_channels_default_per_branch():
    assert build_model("stcnn", 3, **DEMO_PROFILE["stcnn"]).data_bn.num_features == 3 * 68
    posec3d = build_model("posec3d", 3, in_channels=17, **DEMO_PROFILE["posec3d"])
    assert posec3d.stem[0][0].in_channels == 17
    assert np.isclose(layout.adjacency().sum(1), 1).all()  # the init is row-normalised

"""Kinetics-400 weights for the RGB branches from a local file (issue #11).

torchvision's released r2plus1d_18 / swin3d_t files are plain ``model.state_dict()`` dumps
of ``torchvision.models.video.r2plus1d_18()`` / ``swin3d_t()``; the tests save such a state
dict of a randomly initialised torchvision model (weights=None: nothing is downloaded) and
load it the way ``branches.<b>.weights`` does."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models.video import r2plus1d_18, swin3d_t

from mgpipe.models import DEMO_PROFILE, backbone_tensors, build_model
from mgpipe.params import validate_params
from mgpipe.train import BranchData, branch_config, train_branch

NUM_CLASSES = 15
FILES = {"r2plus1d": "r2plus1d_18-91a641e6.pth", "swin3d": "swin3d_t-7615ae03.pth"}
TORCHVISION = {"r2plus1d": (r2plus1d_18, "fc"), "swin3d": (swin3d_t, "head")}
INPUT = {"r2plus1d": (2, 3, 4, 32, 32), "swin3d": (1, 3, 4, 64, 64)}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights must never be downloaded")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def torchvision_file(branch: str, folder) -> tuple[nn.Module, dict, str]:
    """A torchvision model with random weights and non-trivial BatchNorm statistics, and its
    state dict saved as torchvision releases it. Returns (model, state dict, path)."""
    make, _ = TORCHVISION[branch]
    torch.manual_seed(123)
    tv = make()  # weights=None
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in tv.state_dict().items()}
    path = folder / FILES[branch]
    torch.save(tv.state_dict(), path)
    return tv, state, str(path)


@pytest.mark.parametrize("branch", ["r2plus1d", "swin3d"])
def test_torchvision_file_loads_into_the_paper_size_model(tmp_path, branch):
    tv, state, path = torchvision_file(branch, tmp_path)
    _, classifier = TORCHVISION[branch]
    torch.manual_seed(0)
    model = build_model(branch, NUM_CLASSES, weights_path=path)  # model: {} = paper size
    torch.manual_seed(0)
    fresh = build_model(branch, NUM_CLASSES)  # the same init, nothing loaded

    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    assert {f"backbone.{k}" for k in loaded} == set(backbone_tensors(model))
    for k, v in loaded.items():  # every backbone tensor is the file's
        assert torch.equal(own[f"backbone.{k}"], v), k
    assert not torch.equal(own["backbone." + next(iter(loaded))],
                           fresh.state_dict()["backbone." + next(iter(loaded))])
    # torchvision's 400-class classifier is skipped; our heads stay as initialised
    assert state[f"{classifier}.weight"].shape[0] == 400
    heads = [k for k in own if k.startswith("head.")]
    assert heads and all(torch.equal(own[k], fresh.state_dict()[k]) for k in heads)
    assert model.head.fc.out_features == NUM_CLASSES

    # the backbone computes what torchvision's model computes (its classifier removed)
    setattr(tv, classifier, nn.Identity())
    tv.eval()
    model.eval()
    x = torch.randn(INPUT[branch], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.forward_features(x), tv(x)
    assert ours.shape == theirs.shape == (INPUT[branch][0], model.head.fc.in_features)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("branch", ["r2plus1d", "swin3d"])
def test_torchvision_file_with_the_demo_size_model_fails_clearly(tmp_path, branch):
    _, _, path = torchvision_file(branch, tmp_path)
    demo = build_model(branch, NUM_CLASSES, **DEMO_PROFILE[branch])
    with pytest.raises(ValueError) as e:
        build_model(branch, NUM_CLASSES, weights_path=path, **DEMO_PROFILE[branch])
    msg = str(e.value)
    assert FILES[branch] in msg and f"branches.{branch}.weights" in msg
    assert f"set branches.{branch}.model: {{}} for the paper-size architecture" in msg
    m = re.search(r"only (\d+) of the model's (\d+) backbone tensors matched", msg)
    assert m, msg
    matched, total = map(int, m.groups())
    assert total == len(backbone_tensors(demo)) and matched < 0.9 * total
    if branch == "r2plus1d":  # only the BatchNorm counters (shape ()) fit
        assert matched == sum(k.endswith("num_batches_tracked") for k in backbone_tensors(demo))


def test_a_partial_backbone_file_fails_but_most_of_one_loads(tmp_path):
    size = dict(widths=(8, 8, 16, 16), layers=(1, 1, 1, 1))
    src = build_model("r2plus1d", 7, **size).backbone.state_dict()
    names = list(src)
    path = tmp_path / "w.pt"
    torch.save({k: src[k] for k in names[: len(names) // 2]}, path)  # half the tensors
    with pytest.raises(ValueError, match=rf"only {len(names) // 2} of the model's {len(names)} "
                                         r"backbone tensors .* are not in the file"):
        build_model("r2plus1d", 5, weights_path=path, **size)
    keep = names[: int(0.95 * len(names)) + 1]  # >= 90%: loads, the rest stays initialised
    torch.save({k: src[k] for k in keep}, path)
    model = build_model("r2plus1d", 5, weights_path=path, **size)
    assert all(torch.equal(model.backbone.state_dict()[k], src[k]) for k in keep)


def test_a_missing_or_unreadable_file_names_the_param(tmp_path):
    missing = tmp_path / "nowhere" / FILES["swin3d"]
    with pytest.raises(FileNotFoundError, match=r"swin3d_t-7615ae03\.pth: weights file not found "
                                                r"\(branches\.swin3d\.weights\)"):
        build_model("swin3d", NUM_CLASSES, weights_path=missing, **DEMO_PROFILE["swin3d"])
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth \(branches\.r2plus1d\.weights\): cannot be read"):
        build_model("r2plus1d", NUM_CLASSES, weights_path=junk, **DEMO_PROFILE["r2plus1d"])


def _params(path: str, model: dict) -> dict:
    return validate_params({"branches": {"r2plus1d": {
        "input": "data/processed/rgb.h5", "weights": path, "model": model, "epochs": 1,
        "batch_size": 4, "lr": 1e-12, "warmup_epochs": 0, "dropout": 0.0}}})


def test_the_train_path_loads_branches_weights(tmp_path):
    """params -> branch_config -> train_branch, as stages/train.py runs it: the model it
    trains starts from the file (lr 1e-12: one epoch leaves the weights where they were)."""
    _, state, path = torchvision_file("r2plus1d", tmp_path)
    cfg = branch_config(_params(path, {}), "r2plus1d")
    assert cfg["weights"] == path and cfg["model"] == {}
    gen = torch.Generator().manual_seed(0)
    arrays = {f"c{i}": torch.randint(0, 255, (4, 16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
              for i in range(8)}
    ids, labels = list(arrays), [i % 2 for i in range(8)]
    data = BranchData("rgb", arrays, 2, ids[:6], labels[:6], ids[6:], labels[6:], ids[6:])
    train_branch("r2plus1d", data, cfg, tmp_path / "out", progress=False)
    trained = torch.load(tmp_path / "out" / "best.pt", weights_only=True)["model"]
    params = {n for n, _ in build_model("r2plus1d", 2).named_parameters()}
    for k, v in state.items():
        if f"backbone.{k}" in params:  # BatchNorm statistics move in train mode
            assert (trained[f"backbone.{k}"] - v).abs().max() < 1e-6, k
    assert trained["head.fc.weight"].shape == (2, 512)

    with pytest.raises(ValueError, match=r"set branches\.r2plus1d\.model: \{\}"):
        cfg = branch_config(_params(path, DEMO_PROFILE["r2plus1d"]), "r2plus1d")
        train_branch("r2plus1d", data, cfg, tmp_path / "demo", progress=False)

"""The four branches (SPEC section 6). Every model maps a batch to ``(logits [N, num_classes],
embedding [N, embed_dim])``: a classifier head (dropout + linear) and an embedding head (linear
projection for the OSE loss) on the same pooled feature.

- ``STCNN``          joints    [N, C, T, V=68]     decoupled spatial mixing + temporal conv
- ``PoseC3D``        heatmaps  [N, K, T, H, W]     SlowOnly-style 3D ResNet (Duan et al. 2022)
- ``VideoR2Plus1D``  RGB clips [N, 3, T, H, W]     torchvision's R(2+1)D-18 (or a reduced one)
- ``VideoSwin3D``    RGB clips [N, 3, T, H, W]     torchvision's SwinTransformer3d

Constructor defaults are the paper-scale networks; ``DEMO_PROFILE`` holds the reduced sizes the
CPU demo uses. No weights are ever downloaded; ``build_model(..., weights_path=...)`` loads a
local state dict instead.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock as R2Plus1DBlock
from torchvision.models.video.resnet import Conv2Plus1D
from torchvision.models.video.swin_transformer import SwinTransformer3d

from mgpipe import layout

log = logging.getLogger(__name__)

BRANCHES = ("stcnn", "posec3d", "r2plus1d", "swin3d")

# Reduced sizes for the 15-minute CPU demo (size_params of build_model). The paper-scale
# profile is the constructor defaults, i.e. an empty dict.
DEMO_PROFILE: dict[str, dict] = {
    "stcnn": dict(channels=(32, 64, 64), strides=(1, 2, 1)),
    "posec3d": dict(base_channels=8, stage_blocks=(1, 1, 1), stem_stride=2),
    "r2plus1d": dict(widths=(16, 32, 64, 128), layers=(1, 1, 1, 1)),
    "swin3d": dict(hidden_dim=24, depths=(1, 1, 1), num_heads=(1, 2, 4),
                   window_size=(4, 3, 3), patch_size=(2, 8, 8), stochastic_depth_prob=0.0),
}


class Heads(nn.Module):
    """Pooled feature [N, F] -> (logits [N, num_classes], embedding [N, embed_dim])."""

    def __init__(self, in_features: int, num_classes: int, embed_dim: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        self.embed = nn.Linear(in_features, embed_dim)
        for m in (self.fc, self.embed):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(self.dropout(x)), self.embed(x)


# ---- STCNN: skeleton joints ----------------------------------------------------------------

def hop_adjacency(num_subsets: int, adjacency: np.ndarray | None = None) -> torch.Tensor:
    """Initial mixing matrices [num_subsets, V, V]: powers A, A^2, ... of the row-normalised
    adjacency (with self loops) of the layout, i.e. 1-hop, 2-hop, ... neighbourhoods."""
    a = torch.as_tensor(layout.adjacency() if adjacency is None else adjacency,
                        dtype=torch.float32)
    mats = [a]
    for _ in range(num_subsets - 1):
        mats.append(mats[-1] @ a)
    return torch.stack(mats)


class STBlock(nn.Module):
    """[N, C_in, T, V] -> [N, C_out, T / stride, V].

    Spatial: each subset k mixes joints with a learnable A_k [V, V] (y_i = sum_j A_k[i, j] x_j),
    the K mixed copies are concatenated and a 1x1 conv maps K*C_in -> C_out; BN, ReLU.
    Temporal: conv (kernel x 1) with the stride, BN; residual add; ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, mixing: torch.Tensor,
                 kernel_size: int = 9, stride: int = 1):
        super().__init__()
        self.mixing = nn.Parameter(mixing.clone())  # [K, V, V]
        k = mixing.shape[0]
        self.spatial = nn.Sequential(
            nn.Conv2d(k * in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.temporal = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, (kernel_size, 1), (stride, 1),
                      ((kernel_size - 1) // 2, 0), bias=False),
            nn.BatchNorm2d(out_channels))
        if in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, (stride, 1), bias=False),
                nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        y = torch.einsum("nctj,kij->nkcti", x, self.mixing).reshape(n, -1, t, v)
        y = self.temporal(self.spatial(y))
        return self.relu(y + self.residual(x))


class STCNN(nn.Module):
    """Skeleton branch. Input joints [N, C, T, V] (C = x, y, score and optional motion
    channels; V = 68); output (logits [N, num_classes], embedding [N, embed_dim]).

    An input BatchNorm over C*V, then one ``STBlock`` per entry of ``channels`` / ``strides``,
    mean pooling over T and V.
    """

    def __init__(self, num_classes: int, in_channels: int = 3,
                 channels: Sequence[int] = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256),
                 strides: Sequence[int] | None = None, kernel_size: int = 9,
                 num_subsets: int = 2, adjacency: np.ndarray | None = None,
                 embed_dim: int = 128, dropout: float = 0.5):
        super().__init__()
        if strides is None:  # ST-GCN's: halve T where the width grows
            strides = [2 if i and c != channels[i - 1] else 1 for i, c in enumerate(channels)]
        if len(strides) != len(channels):
            raise ValueError(f"{len(channels)} channels but {len(strides)} strides")
        mixing = hop_adjacency(num_subsets, adjacency)
        self.num_joints = mixing.shape[-1]
        self.data_bn = nn.BatchNorm1d(in_channels * self.num_joints)
        blocks, c_in = [], in_channels
        for c_out, s in zip(channels, strides):
            blocks.append(STBlock(c_in, c_out, mixing, kernel_size, s))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = Heads(c_in, num_classes, embed_dim, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, T, V] -> pooled [N, channels[-1]]."""
        n, c, t, v = x.shape
        x = self.data_bn(x.permute(0, 1, 3, 2).reshape(n, c * v, t))
        x = x.reshape(n, c, v, t).permute(0, 1, 3, 2).contiguous()
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.forward_features(x))


# ---- PoseC3D: heatmap volumes --------------------------------------------------------------

def _conv_bn(c_in: int, c_out: int, kernel, stride=1, padding=0, relu: bool = True):
    layers = [nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm3d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck3d(nn.Module):
    """SlowOnly bottleneck: conv (3x1x1 if ``inflate`` else 1x1x1) -> conv 1x3x3 (carries the
    stride) -> conv 1x1x1 to 4*planes; residual.
    [N, C, T, H, W] -> [N, 4*planes, T/st, H/ss, W/ss]."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride=(1, 1, 1), inflate: bool = False):
        super().__init__()
        kt = 3 if inflate else 1
        self.conv1 = _conv_bn(inplanes, planes, (kt, 1, 1), 1, (kt // 2, 0, 0))
        self.conv2 = _conv_bn(planes, planes, (1, 3, 3), stride, (0, 1, 1))
        self.conv3 = _conv_bn(planes, planes * 4, 1, relu=False)
        self.downsample = None
        if stride != (1, 1, 1) or inplanes != planes * 4:
            self.downsample = _conv_bn(inplanes, planes * 4, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class BasicBlock3d(nn.Module):
    """Basic block: conv (3x3x3 if ``inflate`` else 1x3x3, carries the stride) -> conv 1x3x3."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride=(1, 1, 1), inflate: bool = False):
        super().__init__()
        kt = 3 if inflate else 1
        self.conv1 = _conv_bn(inplanes, planes, (kt, 3, 3), stride, (kt // 2, 1, 1))
        self.conv2 = _conv_bn(planes, planes, (1, 3, 3), 1, (0, 1, 1), relu=False)
        self.downsample = None
        if stride != (1, 1, 1) or inplanes != planes:
            self.downsample = _conv_bn(inplanes, planes, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class PoseC3D(nn.Module):
    """Heatmap branch, the SlowOnly 3D ResNet of PoseC3D for skeletons (pyskl's
    ``slowonly_r50``: base 32, blocks (4, 6, 3), inflate (0, 1, 1), spatial strides (2, 2, 2),
    temporal strides (1, 1, 2)). Input [N, K, T, H, W] (K keypoint heatmaps).

    Stem: conv 1x7x7 stride 1 + a stride-1 3x3 max pool (no early temporal or spatial
    downsampling). Stage i has ``stage_blocks[i]`` blocks of width ``base_channels * 2**i``;
    only inflated (later) stages use temporal kernels of 3. Global average pool.
    """

    def __init__(self, num_classes: int, in_channels: int = layout.NUM_KEYPOINTS,
                 base_channels: int = 32, stage_blocks: Sequence[int] = (4, 6, 3),
                 inflate: Sequence[int] = (0, 1, 1), spatial_strides: Sequence[int] = (2, 2, 2),
                 temporal_strides: Sequence[int] = (1, 1, 2), block: str = "bottleneck",
                 embed_dim: int = 128, dropout: float = 0.5, stem_stride: int = 1):
        super().__init__()
        block_cls = {"bottleneck": Bottleneck3d, "basic": BasicBlock3d}[block]
        # stem_stride 2 (spatial only) cuts the cost ~4x for CPU demos; PoseC3D uses 1.
        self.stem = nn.Sequential(
            _conv_bn(in_channels, base_channels, (1, 7, 7), (1, stem_stride, stem_stride), (0, 3, 3)),
            nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1)))
        stages, inplanes = [], base_channels
        for i, n_blocks in enumerate(stage_blocks):
            planes = base_channels * 2 ** i
            blocks = []
            for j in range(n_blocks):
                stride = (temporal_strides[i], spatial_strides[i], spatial_strides[i]) if j == 0 \
                    else (1, 1, 1)
                blocks.append(block_cls(inplanes, planes, stride, bool(inflate[i])))
                inplanes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = inplanes
        self.head = Heads(inplanes, num_classes, embed_dim, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.stages.modules():  # zero-init the last BN of each residual branch
            if isinstance(m, (Bottleneck3d, BasicBlock3d)):
                nn.init.zeros_((m.conv3 if isinstance(m, Bottleneck3d) else m.conv2)[1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K, T, H, W] -> pooled [N, num_features]."""
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.forward_features(x))


# ---- RGB branches (torchvision backbones) --------------------------------------------------

class R2Plus1DBackbone(nn.Module):
    """torchvision's R(2+1)D ResNet with its classifier dropped and widths/depths as params;
    module names match ``torchvision.models.video.r2plus1d_18`` so its state dicts load.
    The defaults build exactly r2plus1d_18 (minus ``fc``). [N, 3, T, H, W] -> [N, widths[-1]].
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512),
                 layers: Sequence[int] = (2, 2, 2, 2), stem_mid: int | None = None):
        super().__init__()
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError("R(2+1)D needs 4 widths and 4 layer counts")
        mid = stem_mid or max(1, round(45 * widths[0] / 64))  # torchvision: 45 for 64
        self.stem = nn.Sequential(  # torchvision's R2Plus1dStem with a variable width
            nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        inplanes = widths[0]
        for i, (planes, n_blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes))
            blocks = [R2Plus1DBlock(inplanes, planes, Conv2Plus1D, stride, downsample)]
            blocks += [R2Plus1DBlock(planes, planes, Conv2Plus1D) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features = inplanes
        for m in self.modules():  # as torchvision's VideoResNet
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class VideoR2Plus1D(nn.Module):
    """RGB branch on R(2+1)D. Input [N, 3, T, H, W] normalised float; defaults = r2plus1d_18."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512),
                 layers: Sequence[int] = (2, 2, 2, 2), stem_mid: int | None = None,
                 embed_dim: int = 128, dropout: float = 0.5):
        super().__init__()
        self.backbone = R2Plus1DBackbone(widths, layers, stem_mid)
        self.head = Heads(self.backbone.num_features, num_classes, embed_dim, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


class VideoSwin3D(nn.Module):
    """RGB branch on torchvision's ``SwinTransformer3d`` (its ``head`` replaced by ours).
    Input [N, 3, T, H, W] normalised float; defaults = ``swin3d_t``."""

    def __init__(self, num_classes: int, hidden_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Sequence[int] = (8, 7, 7), patch_size: Sequence[int] = (2, 4, 4),
                 stochastic_depth_prob: float = 0.1, embed_dim: int = 128, dropout: float = 0.5):
        super().__init__()
        # ``hidden_dim`` is torchvision's ``embed_dim`` (token width of the first stage);
        # ``embed_dim`` is the OSE embedding size D, as in the other branches.
        self.backbone = SwinTransformer3d(
            patch_size=list(patch_size), embed_dim=hidden_dim, depths=list(depths),
            num_heads=list(num_heads), window_size=list(window_size),
            stochastic_depth_prob=stochastic_depth_prob)
        num_features = self.backbone.head.in_features
        self.backbone.head = nn.Identity()
        self.head = Heads(num_features, num_classes, embed_dim, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


# ---- building and loading ------------------------------------------------------------------

def build_model(branch: str, num_classes: int, in_channels: int | None = None,
                embed_dim: int = 128, dropout: float = 0.5,
                weights_path: str | Path | None = None, **size_params) -> nn.Module:
    """Build one branch. ``in_channels``: joint channels for "stcnn" (default 3), heatmap
    channels K for "posec3d" (default 68); the RGB branches take 3 and ignore it.
    ``embed_dim`` is the OSE embedding size D; ``size_params`` go to the class (see
    ``DEMO_PROFILE``; empty = paper scale). ``weights_path``: local state dict to load.
    """
    if branch == "stcnn":
        model = STCNN(num_classes, in_channels or 3, embed_dim=embed_dim, dropout=dropout,
                      **size_params)
    elif branch == "posec3d":
        model = PoseC3D(num_classes, in_channels or layout.NUM_KEYPOINTS, embed_dim=embed_dim,
                        dropout=dropout, **size_params)
    elif branch == "r2plus1d":
        _check_rgb(branch, in_channels)
        model = VideoR2Plus1D(num_classes, embed_dim=embed_dim, dropout=dropout, **size_params)
    elif branch == "swin3d":
        _check_rgb(branch, in_channels)
        model = VideoSwin3D(num_classes, embed_dim=embed_dim, dropout=dropout, **size_params)
    else:
        raise ValueError(f"unknown branch {branch!r}; expected one of {BRANCHES}")
    if weights_path:
        load_weights(model, weights_path, param=f"branches.{branch}")
    return model


def _check_rgb(branch: str, in_channels: int | None) -> None:
    if in_channels not in (None, 3):
        raise ValueError(f"{branch} takes RGB input (3 channels), got in_channels={in_channels}")


# Share of a model's backbone tensors a backbone state dict must fill (see load_weights).
MIN_BACKBONE_LOADED = 0.9


def backbone_tensors(model: nn.Module) -> list[str]:
    """Names in ``model.state_dict()`` that belong to the feature extractor, i.e. everything
    but our classifier/embedding ``head``."""
    return [n for n in model.state_dict() if not n.startswith("head.")]


def load_weights(model: nn.Module, path: str | Path, param: str | None = None) -> list[str]:
    """Load a local state dict into ``model``; returns the names of the model's tensors left
    as initialised.

    Accepts our own checkpoints (optionally wrapped as {"model": ...} or {"state_dict": ...},
    with DDP's "module." prefix) and bare torchvision backbone state dicts (keys without
    "backbone."), such as torchvision's released Kinetics-400 files for ``r2plus1d_18``
    (r2plus1d_18-91a641e6.pth) and ``swin3d_t`` (swin3d_t-7615ae03.pth): they load into the
    paper-size models (``branches.<b>.model: {}``), whose module names are torchvision's.
    Tensors whose name is not in the model or whose shape differs are skipped: torchvision's
    400-class classifier (``fc`` of R(2+1)D, ``head`` of Swin3D) never loads, so our heads
    stay as initialised, and our own checkpoint's classifier for another number of classes
    is skipped likewise.

    Errors (``param``, e.g. "branches.r2plus1d", names the params block in messages):
    FileNotFoundError for a missing file; ValueError when nothing matches, and when the file
    holds backbone tensors (at least one of its names is a backbone tensor of the model) but
    fills fewer than ``MIN_BACKBONE_LOADED`` (90%) of the model's backbone tensors: weights
    for another architecture, e.g. r2plus1d_18's with the demo-size ``model`` block, where
    only a few tensors (BatchNorm counters) happen to fit. Loading those few silently would
    train a mostly random backbone that claims to be pretrained.

    Input normalisation: the RGB clips are normalised with Kinetics mean/std
    (``mgpipe.data.RGB_MEAN`` / ``RGB_STD``), exactly torchvision's R(2+1)D transforms.
    torchvision's Swin3D weights were trained with ImageNet mean/std ((0.485, 0.456, 0.406) /
    (0.229, 0.224, 0.225)). The difference is small: the means differ by 0.03-0.06 and the
    stds by under 0.01 (pixels in [0, 1]), so Swin3D sees its input shifted by 0.13-0.28 of a
    standard deviation per channel, an offset that fine-tuning absorbs; the pipeline keeps one
    normalisation for both RGB branches.
    """
    where = f" ({param}.weights)" if param else ""
    path = Path(path)
    if not path.is_file():
        fix = f"; set {param}.weights to a local state dict, or null to train from scratch" \
            if param else ""
        raise FileNotFoundError(f"{path}: weights file not found{where}{fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects beyond tensors
        raise ValueError(f"{path}{where}: cannot be read as a state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}{where}: not a state dict (a {type(state).__name__})")
    own = model.state_dict()
    backbone = set(backbone_tensors(model))
    usable, skipped, named = {}, [], {}  # named: backbone name -> the file's shape
    for name, tensor in state.items():
        name = str(name).removeprefix("module.")
        if name not in own and f"backbone.{name}" in own:
            name = f"backbone.{name}"
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        if name in backbone:
            named[name] = shape
        if name in own and shape == tuple(own[name].shape):
            usable[name] = tensor
        else:
            skipped.append(name)
    loaded = sum(n in backbone for n in usable)
    if named and loaded < MIN_BACKBONE_LOADED * len(backbone):
        other = [n for n in named if n not in usable]
        examples = "; ".join(f"{n}: {named[n]} in the file, {tuple(own[n].shape)} in the model"
                             for n in other[:2])
        fix = (f"set {param}.model: {{}} for the paper-size architecture those weights belong "
               f"to" if param else "build the architecture those weights belong to")
        raise ValueError(
            f"{path}{where} does not fit the configured model: only {loaded} of the model's "
            f"{len(backbone)} backbone tensors matched in name and shape ({len(other)} have "
            f"another shape{', e.g. ' + examples if other else ''}; "
            f"{len(backbone) - len(named)} are not in the file); {fix} (torchvision's "
            f"r2plus1d_18 / swin3d_t Kinetics-400 files need the paper-size model), or remove "
            f"the weights entry")
    if not usable:
        raise ValueError(f"no tensor in {path}{where} matches the model ({len(state)} tensors, "
                         f"e.g. {list(state)[:3]})")
    model.load_state_dict(usable, strict=False)
    missing = [n for n in own if n not in usable]
    log.info("loaded %d tensors from %s; %d skipped %s; %d left as initialised %s",
             len(usable), path, len(skipped), skipped[:5], len(missing), missing[:5])
    return missing


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

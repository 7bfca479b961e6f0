"""Reading and validating ``params.yaml``, the one source of settings for every stage.

One schema (pydantic models, below) covers the whole file. Every stage validates all of it at
load: an unknown key (a typo such as ``cmpl.round``), a wrong type or an out-of-range value
stops the stage with the key path, what is allowed and, for typos, the nearest valid key.
A missing key takes the default written here, which is the committed ``params.yaml``'s value
(a test keeps them equal), so a params file may hold only the blocks a stage reads.
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BRANCHES = ("stcnn", "posec3d", "r2plus1d", "swin3d")
# Keys of branches.<b>.model: the size parameters of each branch's model class (a test
# checks them against the constructors in mgpipe/models.py, which this module does not
# import: loading params must not pay for importing torch).
MODEL_KEYS = {
    "stcnn": ("channels", "strides", "kernel_size", "num_subsets", "adjacency"),
    "posec3d": ("base_channels", "stage_blocks", "inflate", "spatial_strides",
                "temporal_strides", "block", "stem_stride"),
    "r2plus1d": ("widths", "layers", "stem_mid"),
    "swin3d": ("hidden_dim", "depths", "num_heads", "window_size", "patch_size",
               "stochastic_depth_prob"),
}
CSV_COLUMNS = ("video", "subject", "label", "split", "clip_id", "start_frame", "end_frame",
               "keypoints")
# Source skeletons of a dataset's own keypoints (mgpipe.layout.LAYOUTS; a test keeps them equal).
LAYOUT_NAMES = ("kinect_v1", "kinect_v2", "coco17", "openpose18", "openpose_body25",
                "openpose137", "mediapipe_pose33")


class ParamsError(ValueError):
    """params.yaml breaks the schema; the message names each bad key path and the fix."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SynthParams(_Block):
    seed: int = Field(0, ge=0)
    subjects: int = Field(12, ge=2)
    test_subjects: int = Field(4, ge=0)
    val_subjects: int = Field(2, ge=0)
    clips_per_subject: int = Field(30, ge=1)
    classes: int = Field(12, ge=2)
    imbalance: float = Field(24.0, ge=1)
    width: int = Field(160, ge=32)
    height: int = Field(120, ge=32)
    frames: int = Field(40, ge=2)
    fps: int = Field(25, ge=1)
    layout: Literal["clips", "imigue"] = "clips"
    idle_frames: int = Field(20, ge=0)


class CameraParams(_Block):
    width: int = Field(640, ge=1)
    height: int = Field(480, ge=1)
    focal: float = Field(525.0, gt=0)


def _check_frame_size(v):
    if v is not None and min(v) < 1:
        raise ValueError("width and height must be >= 1")
    return v


def _check_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"not a valid regular expression ({e})") from None
    return v


_Layout = Literal[LAYOUT_NAMES + ("custom",)]  # type: ignore[valid-type]
_Channels = Literal["auto", "xy", "xy_score", "xyz", "xyz_score"]


class CsvParams(_Block):
    file: str = "clips.csv"
    columns: dict[Literal[CSV_COLUMNS], str] = {}  # type: ignore[valid-type]
    classes: Optional[list[str]] = None
    # the keypoints column's files (mgpipe/skeletons.py)
    layout: Optional[_Layout] = None
    layout_map: dict[str, int] = {}    # custom: {our keypoint name: source joint index}
    joints: Optional[int] = Field(None, ge=1)
    rows: Literal["auto", "joint", "frame"] = "auto"
    channels: _Channels = "auto"
    camera: CameraParams = CameraParams()
    frame_size: Optional[tuple[int, int]] = None
    fps: float = Field(30, gt=0)
    npz_key: Optional[str] = None

    @field_validator("frame_size")
    @classmethod
    def _frame_size(cls, v):
        return _check_frame_size(v)


class StgcnSplits(_Block):
    train: Optional[str] = "train"
    val: Optional[str] = "val"
    test: Optional[str] = "test"


class StgcnParams(_Block):
    data: str = "{split}_data.npy"
    labels: str = "{split}_label.pkl"
    splits: StgcnSplits = StgcnSplits()
    layout: _Layout = "kinect_v2"
    layout_map: dict[str, int] = {}
    channels: _Channels = "auto"
    camera: CameraParams = CameraParams()
    frame_size: Optional[tuple[int, int]] = None
    fps: float = Field(30, gt=0)
    subject_regex: str = "^(.*)$"
    classes: Optional[list[str]] = None

    @field_validator("frame_size")
    @classmethod
    def _frame_size(cls, v):
        return _check_frame_size(v)

    @field_validator("subject_regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _check_regex(v)


class PysklSplits(_Block):
    train: Optional[str] = "xsub_train"
    val: Optional[str] = None
    test: Optional[str] = "xsub_val"


class PysklParams(_Block):
    file: str = "ntu60_hrnet.pkl"
    splits: PysklSplits = PysklSplits()
    layout: _Layout = "coco17"
    layout_map: dict[str, int] = {}
    camera: CameraParams = CameraParams()
    fps: float = Field(30, gt=0)
    subject_regex: str = "^(.*)$"
    classes: Optional[list[str]] = None

    @field_validator("subject_regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _check_regex(v)


class UtdMhadParams(_Block):
    camera: CameraParams = CameraParams()
    fps: float = Field(30, gt=0)
    val_subjects: list[str] = ["s7"]


class LabelColumns(_Block):
    label: str = "label"
    start: str = "start_frame"
    end: str = "end_frame"


class ListFiles(_Block):
    train: Optional[str] = "train_list.txt"
    val: Optional[str] = "val_list.txt"
    test: Optional[str] = "test_list.txt"


class ImigueParams(_Block):
    openpose: str = "{id}/{id}_openpose.xlsx"
    labels: str = "{id}/{id}_label.csv"
    video: Optional[str] = "{id}/{id}.mp4"
    frame_column: Optional[str] = None
    label_columns: LabelColumns = LabelColumns()
    end_inclusive: bool = True
    first_frame: int = Field(0, ge=0)
    lists: ListFiles = ListFiles()
    subject_regex: str = "^(.*)$"
    frame_size: tuple[int, int] = (1280, 720)
    fps: float = Field(25, gt=0)
    classes: Optional[list[str]] = None

    @field_validator("subject_regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        return v

    @field_validator("frame_size")
    @classmethod
    def _positive(cls, v):
        if min(v) < 1:
            raise ValueError("width and height must be >= 1")
        return v


class DatasetParams(_Block):
    name: Literal["synth", "csv", "utd_mhad", "imigue", "stgcn", "pyskl"] = "synth"
    root: str = "data/raw/synth"
    csv: CsvParams = CsvParams()
    utd_mhad: UtdMhadParams = UtdMhadParams()
    imigue: ImigueParams = ImigueParams()
    stgcn: StgcnParams = StgcnParams()
    pyskl: PysklParams = PysklParams()


class SplitLists(_Block):
    train: list[Union[str, int]] = []
    val: list[Union[str, int]] = []
    test: list[Union[str, int]] = []


class SplitRatio(_Block):
    train: float = Field(0.6, ge=0)
    val: float = Field(0.2, ge=0)
    test: float = Field(0.2, ge=0)


class SplitParams(_Block):
    by: Literal["dataset", "subjects", "ratio"] = "dataset"
    val_subjects: list[Union[str, int]] = []
    subjects: SplitLists = SplitLists()
    ratio: SplitRatio = SplitRatio()
    seed: int = Field(0, ge=0)


class PrepareParams(_Block):
    on_bad_clip: Literal["error", "skip"] = "error"


class KeypointsParams(_Block):
    backend: Literal["provided", "mediapipe"] = "provided"
    model_complexity: Literal[0, 1, 2] = 1
    min_detection_confidence: float = Field(0.5, ge=0, le=1)


class RgbParams(_Block):
    frames: int = Field(8, ge=1)
    size: int = Field(48, ge=8)
    margin: float = Field(0.3, ge=0)


class HeatmapsParams(_Block):
    mode: Literal["joint", "limb"] = "joint"
    sigma: float = Field(0.8, gt=0)
    frames: int = Field(16, ge=1)
    size: tuple[int, int] = (32, 32)

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if min(v) < 4:
            raise ValueError("height and width must be >= 4 grid pixels (paper scale: [56, 56])")
        return v


class TrainParams(_Block):
    seed: int = Field(0, ge=0)
    amp: bool = True
    deterministic: bool = True
    sync_bn: bool = True
    # CPU numerics: results differ with the thread count and with the instruction set the
    # kernels pick (bench/determinism.py), so both are pinned unless set to 0 / false
    cpu_threads: int = Field(1, ge=0)
    portable_kernels: bool = True


class RuntimeParams(_Block):
    """How fast, not what: no stage lists this block in dvc.yaml, so changing it reruns
    nothing (the outputs do not depend on it)."""
    launcher: str = "python"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loader_workers: int = Field(0, ge=0)
    keypoint_workers: int = Field(0, ge=0)
    crop_workers: int = Field(2, ge=0)
    heatmap_workers: int = Field(0, ge=0)
    compile: bool = False
    channels_last: bool = False
    eval_batch_size: int = Field(32, ge=1)

    @field_validator("launcher")
    @classmethod
    def _launcher(cls, v: str) -> str:
        if not v.split():
            raise ValueError("give a command, e.g. python or torchrun --standalone --nproc_per_node 8")
        return v


class LossParams(_Block):
    class_weight: Literal["none", "sqrt", "inverse"] = "sqrt"
    ose_weight: float = Field(0.1, ge=0)
    embed_dim: int = Field(64, ge=1)


class AugmentParams(_Block):
    """Keypoint-space augmentation (mgpipe/augment.py): joints, and heatmaps drawn from
    keypoints (render); for stored heatmaps and RGB only ``flip`` applies."""
    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = Field(0.0, ge=0, le=180)       # degrees
    shear: float = Field(0.0, ge=0, le=1)
    translate: float = Field(0.05, ge=0, le=1)     # of the skeleton box's half side / the grid
    joint_dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError("give [lo, hi] with 0 < lo <= hi, e.g. [0.9, 1.1]")
        return v


class RenderParams(_Block):
    """Heatmaps drawn from keypoints per batch (posec3d), instead of read from heatmaps.h5."""
    mode: Literal["joint", "limb"] = "joint"
    sigma: float = Field(0.8, gt=0)
    frames: int = Field(16, ge=1)
    size: tuple[int, int] = (32, 32)
    margin: float = Field(0.1, ge=0)


class BranchParams(_Block):
    input: str
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    frames: int = Field(32, ge=1)    # stcnn: joint frames sampled per clip
    motion: bool = True              # stcnn: add frame-difference channels
    weights: Optional[str] = None
    model: Optional[dict[str, Any]] = None
    # null: the default augmentation (flip, small scale/shift or crops, time jitter)
    augment: Optional[AugmentParams] = None
    # posec3d: draw heatmaps from keypoints each batch (input: data/interim/keypoints.h5)
    render: Optional[RenderParams] = None
    test_flip: bool = False          # average each clip's logits with its mirror image's


class CmplParams(_Block):
    rounds: int = Field(1, ge=0)
    source: Literal["others", "all"] = "others"
    # a confidence in [0, 1], or fit: per-class thresholds fitted on validation
    threshold: Union[float, Literal["fit"]] = "fit"
    target_precision: float = Field(0.9, gt=0, le=1)
    min_support: int = Field(5, ge=1)
    min_agree: int = Field(2, ge=1)
    selection: Literal["balanced", "confidence"] = "balanced"
    quota: float = Field(2.0, ge=1)
    max_per_class: Optional[int] = Field(None, ge=1)
    class_fraction: Optional[float] = Field(0.5, gt=0)
    weights: Optional[dict[str, float]] = None
    finetune: bool = True
    finetune_epochs: int = Field(10, ge=1)
    finetune_lr: float = Field(0.1, gt=0)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v):
        if v == "fit":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("Input should be a number in [0, 1] or 'fit'")
        if v > 1:
            raise ValueError("Input should be less than or equal to 1")
        if not v >= 0:  # also NaN
            raise ValueError("Input should be greater than or equal to 0")
        return float(v)


class FuseParams(_Block):
    # equal | fit (maximise validation macro-F1) | {branch: weight}
    weights: Union[Literal["equal", "fit"], dict[str, float]] = "equal"
    temperature: bool = True
    # weight 0 for a branch whose val macro-F1 is not above chance (permutation p >= 0.05)
    chance_gate: bool = True


class Params(_Block):
    """The whole params.yaml."""
    synth: SynthParams = SynthParams()
    dataset: DatasetParams = DatasetParams()
    split: SplitParams = SplitParams()
    prepare: PrepareParams = PrepareParams()
    keypoints: KeypointsParams = KeypointsParams()
    rgb: RgbParams = RgbParams()
    heatmaps: HeatmapsParams = HeatmapsParams()
    train: TrainParams = TrainParams()
    runtime: RuntimeParams = RuntimeParams()
    loss: LossParams = LossParams()
    branches: dict[Literal[BRANCHES], BranchParams] = {}  # type: ignore[valid-type]
    cmpl: CmplParams = CmplParams()
    fuse: FuseParams = FuseParams()


# ---- validation and messages -----------------------------------------------------------------

def _unwrap(annotation):
    """The model class (or dict value type) inside Optional[...] / Union[...]."""
    for arg in get_args(annotation) if get_origin(annotation) is Union else (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        if get_origin(arg) is dict:
            return arg
    return None


def _keys_at(loc: tuple) -> list[str] | None:
    """Allowed keys of the block at ``loc`` (a pydantic error location), if it is a block."""
    node: Any = Params
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part)
            node = _unwrap(field.annotation) if field else None
        elif get_origin(node) is dict:  # branches.<name>: skip the key
            node = get_args(node)[1]
            node = _unwrap(node) if not (isinstance(node, type) and issubclass(node, BaseModel)) else node
        else:
            return None
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


# Keys that moved to the runtime block (they change speed, not results).
MOVED = {"train.launcher": "runtime.launcher", "train.workers": "runtime.loader_workers",
         "train.device": "runtime.device", "train.compile": "runtime.compile",
         "train.channels_last": "runtime.channels_last",
         "train.eval_batch_size": "runtime.eval_batch_size",
         "keypoints.workers": "runtime.keypoint_workers", "rgb.workers": "runtime.crop_workers"}


def _message(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("literal[", "dict[", "list["))))
    path = ".".join(str(p) for p in loc if p != "[key]")
    if err["type"] == "extra_forbidden" and path in MOVED:
        return (f"{path}: moved to {MOVED[path]} (settings that change speed, not results, "
                f"live in the runtime block, which no stage depends on)")
    if err["type"] == "extra_forbidden":
        allowed = _keys_at(loc[:-1]) or []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {'.'.join(map(str, loc[:-1] + (near[0],)))}?)" if near else ""
        return f"{path}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if loc and loc[-1] == "[key]":
        return f"{path}: key {err['input']!r} not allowed: {err['msg']}"
    return f"{path}: {err['msg']} (got {err['input']!r})"


def _cross_checks(p: Params, raw: dict) -> list[str]:
    """What one block alone cannot check."""
    errors = []
    if "branches" in raw and not p.branches:
        errors.append(f"branches: no branch configured; add one or more of {', '.join(BRANCHES)}")
    for name, b in p.branches.items():
        unknown = sorted(set(b.model or {}) - set(MODEL_KEYS[name]))
        for key in unknown:
            near = difflib.get_close_matches(key, MODEL_KEYS[name], n=1)
            hint = f" (did you mean branches.{name}.model.{near[0]}?)" if near else ""
            errors.append(f"branches.{name}.model.{key}: unknown key{hint}; allowed keys: "
                          f"{', '.join(MODEL_KEYS[name])}")
    for block, weights in (("cmpl.weights", p.cmpl.weights), ("fuse.weights", p.fuse.weights)):
        if isinstance(weights, dict):
            extra = sorted(set(weights) - set(p.branches))
            missing = sorted(set(p.branches) - set(weights))
            if extra:
                errors.append(f"{block}: {extra} not among the configured branches {list(p.branches)}")
            if missing and block == "fuse.weights":
                errors.append(f"{block}: no weight for {missing}; give one per branch, or use equal / fit")
            if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
                errors.append(f"{block}: weights must be >= 0 with at least one > 0 (got {weights})")
    s = p.synth
    if s.subjects <= s.test_subjects + s.val_subjects:
        errors.append(f"synth.subjects: {s.subjects} leaves no training subject after "
                      f"{s.test_subjects} test and {s.val_subjects} val subjects")
    return errors


def validate_params(raw: dict | None, source: str = "params.yaml") -> dict:
    """Validate a params dict against the schema; returns it as plain Python types with the
    defaults filled in. Raises ParamsError listing every problem, one per line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of blocks, got {type(raw).__name__}")
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        lines, seen = [], set()
        for err in e.errors(include_url=False):
            msg = _message(err).replace("Value error, ", "")
            path = msg.split(":", 1)[0]
            if path not in seen:  # a union (e.g. fuse.weights) reports once per member
                seen.add(path)
                lines.append(msg)
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None
    problems = _cross_checks(p, raw)
    if problems:
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(problems))
    out = p.model_dump(mode="python")
    out["branches"] = {name: out["branches"][name] for name in raw.get("branches") or {}}
    return _plain(out)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def read_params(path: str | Path = "params.yaml") -> dict:
    """params.yaml -> validated dict; raises FileNotFoundError / ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run from the project root "
                                f"(where dvc.yaml is) or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    return validate_params(raw, str(path))


def load_params(path: str | Path = "params.yaml") -> dict:
    """For stage scripts: ``read_params``, but a missing or invalid file ends the process
    with exit code 2 and the message (no traceback), as argparse does for bad arguments."""
    try:
        return read_params(path)
    except (FileNotFoundError, ParamsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

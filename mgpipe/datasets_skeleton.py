"""Container formats of skeleton datasets, as dataset adapters (``dataset.name``):

stgcn  ST-GCN's arrays, as ST-GCN ships NTU RGB+D and Kinetics and the MiGA challenge ships
       the iMiGUE and SMG skeletons: per split ``<split>_data.npy`` float [N, C, T, V, M]
       (samples, channels, frames, joints, persons; C = 2 or 3, for 2D data with C = 3 the
       third is a score) and ``<split>_label.pkl``, a pickle of (sample_names, labels), two
       lists. The data file is memory-mapped: memory does not grow with N. Frames at the
       end with every joint of every person 0 (ST-GCN's padding to a fixed T) are trimmed.
pyskl  pyskl's annotation pickle: {"split": {split name: [frame_dir, ...]}, "annotations":
       [{"frame_dir", "label", "keypoint" [M, T, V, 2], "keypoint_score" [M, T, V],
       "img_shape" (h, w), "total_frames"}, ...]} (pyskl's 2D releases: COCO-17 from HRNet;
       its 3D ones: keypoint [M, T, V, 3] Kinect joints, no score).

Both keep one person per sample: the most active one, i.e. the largest total motion of its
valid joints (the sum over frames of the mean displacement of the joints seen in both
frames); ties go to the one with more valid joints, and a person with no valid joint never
wins (:func:`mgpipe.skeletons.most_active_person`). Joints are converted into the 68 layout
by :mod:`mgpipe.skeletons` (layout, channels, virtual camera for 3D joints).

The splits come from the files (``split.by: dataset`` uses them). The subject of a sample is
group 1 of ``subject_regex`` searched in its name (default: the whole name), so the split is
by subject only when the dataset's own splits are (NTU's cross-subject split is; set
``subject_regex: "P(\\d+)"`` to name NTU's performers). Labels are integers; ``classes``
names them (default ``class_<i>``).

Pickles are read by a restricted unpickler: plain lists, tuples, dicts, strings and numbers,
and numpy arrays, nothing else (a pickle naming any other global, e.g. ``os.system``, is
refused before it runs): a downloaded pickle cannot run code.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np

from mgpipe import skeletons
from mgpipe.datasets import DatasetError, RawDataset, _table

SPLITS = ("train", "val", "test")
_CAMERA = {"width": 640, "height": 480, "focal": 525.0}
STGCN_DEFAULTS = {
    "data": "{split}_data.npy",     # file name patterns under dataset.root; {split} = the
    "labels": "{split}_label.pkl",  # file's split name below
    "splits": {"train": "train", "val": "val", "test": "test"},  # ours -> the files' (null: none)
    "layout": "kinect_v2",
    "layout_map": {},
    "channels": "auto",
    "camera": _CAMERA,
    "frame_size": None,             # [w, h] of 2D joints; null = their extent per clip
    "fps": 30.0,
    "subject_regex": "^(.*)$",
    "classes": None,
}
PYSKL_DEFAULTS = {
    "file": "ntu60_hrnet.pkl",
    "splits": {"train": "xsub_train", "val": None, "test": "xsub_val"},
    "layout": "coco17",
    "layout_map": {},
    "camera": _CAMERA,
    "fps": 30.0,
    "subject_regex": "^(.*)$",
    "classes": None,
}


# ---- safe pickles --------------------------------------------------------------------------

# The only globals a pickle of plain data and numpy arrays needs (numpy 1.x and 2.x names).
_NUMPY_GLOBALS = {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    for n in ("_reconstruct", "scalar")
} | {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
     ("numpy", "ndarray"), ("numpy", "dtype"),
     ("_codecs", "encode")}  # bytes in protocol 0-2 pickles (ST-GCN's era: Python 2)
_PLAIN = (str, bytes, int, float, bool, type(None), np.generic)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but numpy's array and scalar reconstruction."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain lists, "
                                     f"tuples, dicts, strings, numbers and numpy arrays are read")


def load_data_pickle(path: str | Path):
    """A pickle of plain data (lists, tuples, dicts, str, int, float, numpy arrays) -> the
    object; anything else (a class, a function such as os.system) raises DatasetError naming
    the file, without running it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="latin1").load()  # Python 2 pickles too
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... of a bad pickle
        raise DatasetError(f"{path}: not a pickle of plain data ({type(e).__name__}: {e}); "
                           f"only lists, tuples, dicts, strings, numbers and numpy arrays are "
                           f"accepted") from None
    bad = _not_plain(obj)
    if bad:
        raise DatasetError(f"{path}: holds a {bad} object; only lists, tuples, dicts, strings, "
                           f"numbers and numpy arrays are accepted")
    return obj


def _not_plain(obj) -> str:
    """The type name of the first object in ``obj`` that is not plain data; "" if none."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, np.ndarray):
            if x.dtype.kind == "O":
                stack.extend(x.ravel().tolist())
        elif not isinstance(x, _PLAIN):
            return type(x).__name__
    return ""


# ---- shared pieces -------------------------------------------------------------------------

def _options(defaults: dict, options: dict) -> dict:
    o = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    o["splits"] = {**defaults["splits"], **(options.get("splits") or {})}
    return o


def _subject(name: str, regex: re.Pattern, where: str) -> tuple[str, str]:
    """(subject, problem) of a sample name: group 1 of ``regex`` searched in it (the whole
    match when the regex has no group)."""
    m = regex.search(name)
    if not m:
        return "", (f"sample name {name!r} does not match {where}.subject_regex "
                    f"{regex.pattern!r}; fix the regex (group 1 = the subject)")
    return (m.group(1) if m.groups() else m.group(0)), ""


def _class_names(labels: list, classes: list | None) -> list[str]:
    """Names of integer labels: ``classes`` or class_<i> up to the largest label."""
    if classes:
        return [str(c) for c in classes]
    ints = [int(x) for x in labels if _is_int(x)]
    return [f"class_{i}" for i in range(max(ints) + 1 if ints else 0)]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _label(x, classes: list[str], where: str) -> tuple[str, str]:
    """(class name, problem) of an integer label."""
    if not _is_int(x):
        return "", f"label {x!r} is not an integer class index"
    if not 0 <= int(x) < len(classes):
        return "", (f"label {int(x)} has no name: {where}.classes lists {len(classes)} "
                    f"(0..{len(classes) - 1}); add names or remove the list")
    return classes[int(x)], ""


def trim_padding(persons: np.ndarray) -> np.ndarray:
    """[M, T, V, C] without the trailing frames in which every value is 0 (padding)."""
    content = (persons != 0).any(axis=(0, 2, 3))                      # [T]
    return persons[:, :int(np.flatnonzero(content)[-1]) + 1 if content.any() else 0]


def one_person(persons: np.ndarray, fmt: skeletons.SkeletonFormat, source: str,
               trim: bool = False) -> tuple[np.ndarray, str]:
    """A sample's persons [M, T, V, C] -> (float32 [T, 68, 3], channels) of its most active
    person (see the module docstring); ``trim`` drops ST-GCN's zero padding first."""
    persons = np.asarray(persons, np.float32)
    if trim:
        persons = trim_padding(persons)
    if persons.shape[1] == 0:
        raise DatasetError(f"{source}: every frame is 0 (padding only), expected at least one "
                           f"frame with joints")
    channels = skeletons.channels_of(persons.shape[-1], fmt, source)
    best = skeletons.most_active_person(persons, channels.endswith("score"))
    return skeletons.to_layout(persons[best], fmt, source)


def _format(o: dict, where: str) -> skeletons.SkeletonFormat:
    """The skeleton format of a container block; a custom layout's joint count is the data's."""
    return skeletons.skeleton_format({**o, "joints": None}, where)


# ---- ST-GCN arrays -------------------------------------------------------------------------

def _stgcn_labels(path: Path) -> tuple[list[str], list]:
    obj = load_data_pickle(path)
    if not (isinstance(obj, (list, tuple)) and len(obj) >= 2
            and all(isinstance(x, (list, tuple, np.ndarray)) for x in obj[:2])
            and len(obj[0]) == len(obj[1])):
        raise DatasetError(f"{path}: expected a pickle of (sample_names, labels), two lists of "
                           f"the same length; found a {type(obj).__name__}"
                           + (f" of {len(obj)} items" if isinstance(obj, (list, tuple)) else ""))
    names = [x.decode() if isinstance(x, bytes) else str(x) for x in obj[0]]
    labels = [x.item() if isinstance(x, np.generic) else x for x in obj[1]]
    return names, labels


def _stgcn_data(path: Path, fmt: skeletons.SkeletonFormat, n: int) -> np.ndarray:
    """The memory-mapped [N, C, T, V, M] array, its shape checked."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # ValueError, OSError of a bad file
        raise DatasetError(f"{path}: cannot read as a .npy array ({e}); expected float "
                           f"[N, C, T, V, M] as ST-GCN writes it") from None
    if data.ndim != 5 or data.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: {data.dtype} array of shape {data.shape}, expected numbers "
                           f"[N, C, T, V, M] (samples, channels, frames, joints, persons)")
    if data.shape[0] != n:
        raise DatasetError(f"{path}: {data.shape[0]} samples, but its label file names {n}; "
                           f"the data and label files must belong together")
    v = data.shape[3]
    if fmt.joints is not None and v != fmt.joints:
        raise DatasetError(f"{path}: {v} joints (V of [N, C, T, V, M] = {data.shape}), but "
                           f"layout {fmt.describe()} expects {fmt.joints}; set "
                           f"{fmt.param('layout')} to the data's skeleton")
    if max(fmt.table.values()) >= v:
        raise DatasetError(f"{path}: {v} joints, but {fmt.param('layout_map')} uses source "
                           f"index {max(fmt.table.values())}; indices count from 0")
    skeletons.channels_of(data.shape[1], fmt, f"{path} (C of [N, C, T, V, M] = {data.shape})")
    return data


def _stgcn_parts(root: Path, o: dict, fmt: skeletons.SkeletonFormat) -> list[tuple]:
    """(our split, data path, mmap data, label path, names, labels) per split with files."""
    parts = []
    for split in SPLITS:
        tag = o["splits"].get(split)
        if not tag:
            continue
        data_path = root / o["data"].format(split=tag)
        label_path = root / o["labels"].format(split=tag)
        if not data_path.is_file() and not label_path.is_file():
            continue  # a split the dataset does not have
        for p in (data_path, label_path):
            if not p.is_file():
                raise DatasetError(f"{p}: not found, but its partner "
                                   f"{label_path if p == data_path else data_path} is; check "
                                   f"dataset.stgcn.data / dataset.stgcn.labels")
        names, labels = _stgcn_labels(label_path)
        parts.append((split, data_path, _stgcn_data(data_path, fmt, len(names)), label_path,
                      names, labels))
    if not parts:
        tried = [o["data"].format(split=t) for t in o["splits"].values() if t]
        raise DatasetError(f"{root}: no ST-GCN split files (looked for {tried} and their "
                           f"label files); check dataset.root, dataset.stgcn.data, "
                           f"dataset.stgcn.labels and dataset.stgcn.splits")
    return parts


def load_stgcn(root: str | Path, **options) -> RawDataset:
    """ST-GCN arrays (see the module docstring); options: STGCN_DEFAULTS."""
    o = _options(STGCN_DEFAULTS, options)
    where = "dataset.stgcn"
    fmt = _format(o, where)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; set dataset.root")
    parts = _stgcn_parts(root, o, fmt)
    classes = _class_names([x for p in parts for x in p[5]], o["classes"])
    regex = re.compile(o["subject_regex"])
    rows, where_is, sizes = [], {}, {}
    for split, data_path, data, label_path, names, labels in parts:
        is_3d = skeletons.channels_of(data.shape[1], fmt, str(data_path)).startswith("xyz")
        for i, (name, y) in enumerate(zip(names, labels)):
            subject, bad_subject = _subject(name, regex, where)
            label, bad_label = _label(y, classes, where)
            rows.append(dict(clip_id=name, subject=subject, label=label, video="",
                             start_frame=0, end_frame=-1, split=split,
                             origin=f"{label_path}[{i}]", problem=bad_subject or bad_label))
            where_is[name] = (data, i, data_path)
            if is_3d:
                sizes[name] = fmt.camera[:2]

    def keypoints(clip_id: str) -> np.ndarray:
        data, i, data_path = where_is[clip_id]
        sample = np.asarray(data[i], np.float32)              # [C, T, V, M]
        return one_person(sample.transpose(3, 1, 2, 0), fmt,
                          f"{data_path} sample {i} ({clip_id})", trim=True)[0]

    size = tuple(int(v) for v in o["frame_size"]) if o["frame_size"] else None
    return RawDataset("stgcn", classes, _table(rows), keypoints, frame_size=size,
                      fps=float(o["fps"]), frame_sizes=sizes)


# ---- pyskl annotations ---------------------------------------------------------------------

def _pyskl_file(path: Path) -> tuple[dict, list]:
    """(split dict, annotation list) of a pyskl pickle, their structure checked."""
    if not path.is_file():
        raise DatasetError(f"{path}: pyskl annotation file not found; set dataset.root and "
                           f"dataset.pyskl.file")
    obj = load_data_pickle(path)
    if not (isinstance(obj, dict) and isinstance(obj.get("split"), dict)
            and isinstance(obj.get("annotations"), list)):
        keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DatasetError(f"{path}: expected pyskl's {{'split': {{name: [frame_dir, ...]}}, "
                           f"'annotations': [...]}}; found {keys}")
    for i, a in enumerate(obj["annotations"]):
        if not isinstance(a, dict) or "frame_dir" not in a or "keypoint" not in a:
            raise DatasetError(f"{path}: annotation {i} lacks 'frame_dir' or 'keypoint'; "
                               f"expected pyskl's per-sample dicts")
    return obj["split"], obj["annotations"]


def _pyskl_splits(path: Path, split: dict, wanted: dict) -> dict[str, str]:
    """frame_dir -> our split, from the pyskl split lists ``wanted`` names."""
    of: dict[str, str] = {}
    for ours in SPLITS:
        theirs = wanted.get(ours)
        if not theirs:
            continue
        if theirs not in split:
            raise DatasetError(f"{path}: no split {theirs!r} (dataset.pyskl.splits.{ours}); "
                               f"the file has {sorted(split)}")
        for name in split[theirs]:
            name = str(name)
            if of.get(name, ours) != ours:
                raise DatasetError(f"{path}: sample {name!r} is in both {of[name]} and {ours} "
                                   f"(dataset.pyskl.splits); a sample belongs to one split")
            of[name] = ours
    if not of:
        raise DatasetError(f"{path}: dataset.pyskl.splits names no split; set train and test "
                           f"(and val) to split names of the file: {sorted(split)}")
    return of


def _pyskl_persons(a: dict, source: str) -> tuple[np.ndarray, str | None]:
    """An annotation's persons [M, T, V, C] (the score appended when given) and the channels
    that fixes (None: by the layout's auto rule)."""
    kp = np.asarray(a["keypoint"], np.float32)
    if kp.ndim == 3:
        kp = kp[None]
    if kp.ndim != 4:
        raise DatasetError(f"{source}: keypoint of shape {kp.shape}, expected [M, T, V, C]")
    score = a.get("keypoint_score")
    if score is None:
        return kp, None
    score = np.asarray(score, np.float32).reshape(kp.shape[:3])
    return np.concatenate([kp, score[..., None]], -1), ("xy_score" if kp.shape[-1] == 2
                                                        else "xyz_score")


def load_pyskl(root: str | Path, **options) -> RawDataset:
    """pyskl's annotation pickle (see the module docstring); options: PYSKL_DEFAULTS."""
    o = _options(PYSKL_DEFAULTS, options)
    where = "dataset.pyskl"
    fmt = _format(o, where)
    path = Path(root) / o["file"]
    split, annotations = _pyskl_file(path)
    of = _pyskl_splits(path, split, o["splits"])
    by_name = {str(a["frame_dir"]): (i, a) for i, a in enumerate(annotations)}
    classes = _class_names([by_name[n][1].get("label") for n in of if n in by_name],
                           o["classes"])
    regex = re.compile(o["subject_regex"])
    rows, sizes = [], {}
    for name, ours in of.items():
        i, a = by_name.get(name, (None, None))
        if a is None:
            rows.append(dict(clip_id=name, subject="", label="", video="", start_frame=0,
                             end_frame=-1, split=ours, origin=f"{path} split {ours}",
                             problem="listed in the split but has no annotation"))
            continue
        subject, bad_subject = _subject(name, regex, where)
        label, bad_label = _label(a.get("label"), classes, where)
        rows.append(dict(clip_id=name, subject=subject, label=label, video="", start_frame=0,
                         end_frame=-1, split=ours, origin=f"{path} annotations[{i}]",
                         problem=bad_subject or bad_label))
        shape = a.get("img_shape")
        if shape is not None and len(shape) == 2:
            sizes[name] = (int(shape[1]), int(shape[0]))   # img_shape is (h, w)

    def keypoints(clip_id: str) -> np.ndarray:
        i, a = by_name[clip_id]
        source = f"{path} annotations[{i}] ({clip_id})"
        persons, channels = _pyskl_persons(a, source)
        f = dataclasses.replace(fmt, channels=channels) if channels else fmt
        kp, read_as = one_person(persons, f, source)
        if read_as.startswith("xyz"):
            sizes[clip_id] = fmt.camera[:2]
        return kp

    return RawDataset("pyskl", classes, _table(rows), keypoints, fps=float(o["fps"]),
                      frame_sizes=sizes)

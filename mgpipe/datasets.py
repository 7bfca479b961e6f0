"""Dataset adapters: each turns a dataset on disk into one table of clips plus, where the
dataset brings them, keypoints in the 68 layout (SPEC section 5).

An adapter returns a :class:`RawDataset`; :func:`mgpipe.manifest.build_manifest` then checks
it, probes the videos, splits it by subject and writes the manifest. Switching dataset is a
params change (``dataset.name`` and its block), not a code change.

Table columns every adapter fills: clip_id, subject, label (class name, "" when unknown),
video (path: ``dataset.root`` joined with the path under it, normalised but not resolved, so
a relative root gives relative paths and outputs hash the same wherever the data is cloned;
"" when the dataset has no video), start_frame, end_frame (frame range of the clip in the
video, end exclusive; -1 = to the end), split (the dataset's own protocol,
"" when it has none), origin (file and row, for error messages), problem ("" or why the clip
is unusable, found while reading).

Adapters here: synth, csv (videos and/or per-clip keypoint files, read by
:mod:`mgpipe.skeletons`), utd_mhad, imigue; the skeleton containers stgcn and pyskl live in
:mod:`mgpipe.datasets_skeleton`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mgpipe import layout

TABLE_COLUMNS = ["clip_id", "subject", "label", "video", "start_frame", "end_frame", "split",
                 "origin", "problem"]


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file (and row) and the fix."""


@dataclass
class RawDataset:
    name: str
    classes: list[str]
    table: pd.DataFrame
    # clip_id -> keypoints float32 [T, 68, 3] in source pixels; None when the dataset has none.
    keypoints: Callable[[str], np.ndarray] | None = None
    # Frame size (width, height px) and rate of clips without video (no video to probe).
    frame_size: tuple[int, int] | None = None
    fps: float | None = None
    extra: dict = field(default_factory=dict)
    # Per-clip (width, height) of clips without video, taking precedence over frame_size; an
    # adapter may fill it as late as when the clip's keypoints are read. A clip without video
    # in neither gets the extent of its keypoints (mgpipe.manifest.keypoint_extent).
    frame_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def _table(rows: list[dict]) -> pd.DataFrame:
    t = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for c in ("start_frame", "end_frame"):
        t[c] = t[c].fillna(-1).astype(int) if len(t) else t[c].astype(int)
    for c in ("clip_id", "subject", "label", "video", "split", "origin", "problem"):
        t[c] = t[c].fillna("").astype(str)
    return t


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies under ``root`` once both are resolved (symlinks, ``..``)."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _video_path(path: Path) -> str:
    """A video path for the table: normalised (``a/./b/../c`` -> ``a/c``), never resolved, so
    it stays relative when the dataset root is."""
    return os.path.normpath(path)


def _frame_cell(value, column: str) -> tuple[int | None, str]:
    """One cell of a frame index -> (index, ""); (None, "") when empty; (None, why) when it
    is not a whole number >= 0."""
    text = str(value).strip()
    if not text:
        return None, ""
    if not re.fullmatch(r"[+-]?\d+", text):
        return None, f"{column} {text!r} is not a whole number"
    if int(text) < 0:
        return None, f"{column} {text!r} is negative (frames count from 0)"
    return int(text), ""


# ---- synth ---------------------------------------------------------------------------------

def load_synth(root: str | Path) -> RawDataset:
    """The embedded synthetic dataset written by the ``synth`` stage (``labels.csv``,
    ``classes.json``, ``videos/``, ``keypoints/<clip_id>.npy``)."""
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"{labels}: not found; run `dvc repro synth` to generate the "
                           f"synthetic dataset, or set dataset.root to the folder holding it")
    t = pd.read_csv(labels, dtype=str, keep_default_na=False)
    classes = json.loads((root / "classes.json").read_text())
    rows = [dict(clip_id=r.clip_id, subject=r.subject, label=r.label,
                 video=_video_path(root / r.video), start_frame=0, end_frame=-1,
                 split=r.split, origin=f"{labels}:{i + 2}", problem="")
            for i, r in enumerate(t.itertuples())]

    def keypoints(clip_id: str) -> np.ndarray:
        return np.load(root / "keypoints" / f"{clip_id}.npy")

    return RawDataset("synth", classes, _table(rows), keypoints)


# ---- generic CSV ---------------------------------------------------------------------------

CSV_KEYPOINT_DEFAULTS = {
    "layout": None,          # a mgpipe.layout.LAYOUTS name, or custom (with layout_map)
    "layout_map": {},        # custom: {our keypoint name: source joint index}
    "joints": None,          # custom: source joints per frame (needed for 2D tables)
    "rows": "auto",          # auto | joint | frame (text tables and 2D arrays)
    "channels": "auto",      # auto | xy | xy_score | xyz | xyz_score
    "camera": {"width": 640, "height": 480, "focal": 525.0},   # 3D joints: virtual camera
    "frame_size": None,      # [w, h] of 2D keypoints without video; null = their extent
    "fps": 30.0,             # clips without video
    "npz_key": None,         # .npz with several arrays: the keypoints' name
}


def load_csv(path: str | Path, root: str | Path | None = None,
             columns: dict | None = None, classes: list[str] | None = None,
             keypoints: dict | None = None) -> RawDataset:
    """A CSV of clips: video path and/or keypoints file, subject, label, optional split (and
    optional clip_id, start_frame, end_frame). Relative paths resolve against the CSV's
    folder and must stay inside ``root`` (default: the CSV's folder). ``columns`` renames our
    column names to the CSV's (e.g. ``{"video": "path", "label": "class"}``). Empty frame
    cells mean the whole video; a frame cell that is not a whole number >= 0 makes the row's
    problem.

    With a ``keypoints`` column the dataset brings its keypoints: every row names its
    per-clip keypoint file (read by :mod:`mgpipe.skeletons` as ``keypoints`` says: layout,
    rows, channels, camera, npz_key; see CSV_KEYPOINT_DEFAULTS) and the video is optional.
    For a row without video the file is the clip's source: start_frame/end_frame, when given,
    pick frames [start, end) of it; with a video the file holds the clip's own frames. Clips
    without video take ``frame_size`` and ``fps``; 3D keypoints are always in the camera's
    frame (camera width x height), 2D ones without ``frame_size`` in their extent."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset CSV not found; set dataset.root (the dataset "
                           f"folder) and dataset.csv.file (the CSV under it)")
    cols = {"video": "video", "subject": "subject", "label": "label", "split": "split",
            "clip_id": "clip_id", "start_frame": "start_frame", "end_frame": "end_frame",
            "keypoints": "keypoints"}
    cols.update(columns or {})
    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for a malformed file
        raise DatasetError(f"{path}: cannot parse as CSV ({e})") from e
    has_kp = cols["keypoints"] in t.columns
    required = ("subject", "label") if has_kp else ("video", "subject", "label")
    missing = [cols[c] for c in required if cols[c] not in t.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the CSV has {list(t.columns)}. "
                           f"Add them, or map names with dataset.csv.columns "
                           f"(e.g. {{video: path}}); a row needs a video or a keypoints file")
    base = path.parent
    root = Path(root) if root else base
    rows, files = [], {}
    for i, r in enumerate(t.to_dict("records")):
        row, kp_file = _csv_row(r, cols, base, root, f"{path}:{i + 2}", has_kp)
        rows.append(row)
        files[row["clip_id"]] = (kp_file, row)
    table = _table(rows)
    if not classes:
        classes = sorted(set(table["label"]) - {""})
    if not has_kp:
        return RawDataset("csv", list(classes), table)
    return _csv_with_keypoints(list(classes), table, files, keypoints or {})


def _csv_with_keypoints(classes: list[str], table: pd.DataFrame, files: dict,
                        options: dict) -> RawDataset:
    """The CSV dataset with its keypoints callable (clip_id -> [T, 68, 3])."""
    from mgpipe import skeletons

    o = {**CSV_KEYPOINT_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    fmt = skeletons.skeleton_format(o, "dataset.csv")
    sizes: dict[str, tuple[int, int]] = {}
    cache: dict[Path, tuple[np.ndarray, str]] = {}

    def keypoints(clip_id: str) -> np.ndarray:
        kp_file, row = files[clip_id]
        if kp_file not in cache:  # consecutive clips may share one file
            cache.clear()
            cache[kp_file] = skeletons.load_clip(kp_file, fmt)
        kp, channels = cache[kp_file]
        if channels.startswith("xyz"):
            sizes[clip_id] = fmt.camera[:2]
        if row["video"]:
            return kp
        return _frame_range(kp, row, kp_file)

    size = tuple(int(v) for v in o["frame_size"]) if o["frame_size"] else None
    return RawDataset("csv", classes, table, keypoints, frame_size=size,
                      fps=float(o["fps"]), frame_sizes=sizes)


def _frame_range(kp: np.ndarray, row: dict, kp_file: Path) -> np.ndarray:
    """Frames [start_frame, end_frame) of a keypoints-only clip's file (end -1: to its end)."""
    start, end = row["start_frame"], row["end_frame"]
    stop = len(kp) if end < 0 else end
    if start >= len(kp) or stop > len(kp):
        raise DatasetError(f"{kp_file}: {len(kp)} frames, but the row ({row['origin']}) asks "
                           f"for frames {start}..{stop - 1} (from 0); fix start_frame/end_frame "
                           f"or leave them empty for the whole file")
    return kp[start:stop]


def _csv_row(r: dict, cols: dict, base: Path, root: Path, origin: str,
             has_kp: bool = False) -> tuple[dict, Path | None]:
    """One CSV record -> (table row, its keypoints file or None); what makes it unusable
    goes to the row's ``problem``."""
    rel = str(r.get(cols["video"], "")).strip()
    kp_rel = str(r.get(cols["keypoints"], "")).strip() if has_kp else ""
    video, kp_file = base / rel, (base / kp_rel if kp_rel else None)
    start, bad_start = _frame_cell(r.get(cols["start_frame"], ""), cols["start_frame"])
    end, bad_end = _frame_cell(r.get(cols["end_frame"], ""), cols["end_frame"])
    problem = bad_start or bad_end
    if problem:
        problem += ("; give a frame index from 0, or leave the cell empty for the start/end "
                    "of the video")
    if not rel and not has_kp:
        problem = "empty video path"
    elif has_kp and not kp_rel:
        problem = (f"empty {cols['keypoints']} cell; this CSV brings keypoints, so every clip "
                   f"needs its keypoints file: fill the cell, or drop the column to detect "
                   f"keypoints from the videos (keypoints.backend: mediapipe)")
    elif rel and not _inside(video, root):
        problem = (f"video path {rel!r} escapes the dataset root {root}; keep videos under "
                   f"the folder dataset.root names")
    elif kp_rel and not _inside(kp_file, root):
        problem = (f"keypoints path {kp_rel!r} escapes the dataset root {root}; keep keypoint "
                   f"files under the folder dataset.root names")
    name = Path(rel).stem if rel else Path(kp_rel).stem
    row = dict(clip_id=str(r.get(cols["clip_id"], "")).strip() or name,
               subject=r[cols["subject"]].strip(), label=r[cols["label"]].strip(),
               video=_video_path(video) if rel else "",
               start_frame=0 if start is None else start, end_frame=-1 if end is None else end,
               split=r.get(cols["split"], "").strip().lower(), origin=origin, problem=problem)
    return row, kp_file


# ---- UTD-MHAD (Kinect v1 skeletons, no video) ----------------------------------------------

UTD_MHAD_ACTIONS = [
    "swipe_left", "swipe_right", "wave", "clap", "throw", "arm_cross", "basketball_shoot",
    "draw_x", "draw_circle_cw", "draw_circle_ccw", "draw_triangle", "bowling", "boxing",
    "baseball_swing", "tennis_swing", "arm_curl", "tennis_serve", "push", "knock", "catch",
    "pickup_throw", "jog", "walk", "sit_to_stand", "stand_to_sit", "lunge", "squat",
]
UTD_MHAD_TRAIN = ["s1", "s3", "s5", "s7"]
UTD_MHAD_TEST = ["s2", "s4", "s6", "s8"]
_UTD_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_skeleton\.mat$")


def project_kinect(joints: np.ndarray, width: int = 640, height: int = 480,
                   focal: float = 525.0) -> np.ndarray:
    """Project Kinect camera-space joints [T, J, 3] (metres; x to the sensor's left, y up,
    z away from the sensor) into a virtual pinhole camera: pixels [T, J, 2].

    The subject's left lands on the image right, as in an unmirrored camera frame."""
    x, y, z = joints[..., 0], joints[..., 1], np.maximum(joints[..., 2], 1e-3)
    u = width / 2 - focal * x / z
    v = height / 2 - focal * y / z
    return np.stack([u, v], -1).astype(np.float32)


def utd_mhad_keypoints(mat_path: str | Path, width: int = 640, height: int = 480,
                       focal: float = 525.0) -> np.ndarray:
    """One UTD-MHAD skeleton file -> keypoints [T, 68, 3] in the 68 layout (score 1 where
    mapped and inside the frame, else 0)."""
    from scipy.io import loadmat

    skel = loadmat(str(mat_path))["d_skel"].astype(np.float32)  # [20, 3, T]
    joints = skel.transpose(2, 0, 1)                              # [T, 20, 3]
    uv = project_kinect(joints, width, height, focal)
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    src = np.concatenate([uv, inside[..., None].astype(np.float32)], -1)
    kp = layout.map_keypoints(src, layout.FROM_KINECT20)
    kp[..., :2] *= kp[..., 2:3] > 0
    return kp


def load_utd_mhad(root: str | Path, width: int = 640, height: int = 480,
                  focal: float = 525.0, fps: float = 30.0,
                  val_subjects: list | tuple = ()) -> RawDataset:
    """UTD-MHAD skeletons (``a{action}_s{subject}_t{trial}_skeleton.mat``), standard
    cross-subject protocol (subjects 1,3,5,7 train; 2,4,6,8 test); ``val_subjects`` (e.g.
    ["s7"]) are taken from train for validation."""
    val_subjects = [str(s) for s in val_subjects]
    bad = [s for s in val_subjects if s not in UTD_MHAD_TRAIN]
    if bad:
        raise DatasetError(f"dataset.utd_mhad.val_subjects: {bad} are not training subjects "
                           f"{UTD_MHAD_TRAIN}; validation subjects come from train")
    root = Path(root)
    files = sorted(root.glob("a*_s*_t*_skeleton.mat"))
    if not files:
        raise DatasetError(f"{root}: no a*_s*_t*_skeleton.mat files; set dataset.root to the "
                           f"UTD-MHAD skeleton folder")
    rows = []
    for f in files:
        m = _UTD_NAME.match(f.name)
        if not m:
            continue
        a, s, tr = map(int, m.groups())
        subject = f"s{s}"
        label = UTD_MHAD_ACTIONS[a - 1] if 1 <= a <= len(UTD_MHAD_ACTIONS) else f"a{a}"
        split = ("val" if subject in val_subjects else "train" if subject in UTD_MHAD_TRAIN
                 else "test" if subject in UTD_MHAD_TEST else "")
        rows.append(dict(clip_id=f"a{a:02d}_s{s}_t{tr}", subject=subject, label=label, video="",
                         start_frame=0, end_frame=-1, split=split, origin=str(f), problem=""))
    by_id = {r["clip_id"]: Path(r["origin"]) for r in rows}

    def keypoints(clip_id: str) -> np.ndarray:
        return utd_mhad_keypoints(by_id[clip_id], width, height, focal)

    return RawDataset("utd_mhad", list(UTD_MHAD_ACTIONS), _table(rows), keypoints,
                      frame_size=(width, height), fps=fps)


# ---- iMiGUE (challenge release) ------------------------------------------------------------

IMIGUE_DEFAULTS = {
    "openpose": "{id}/{id}_openpose.xlsx",   # per frame: 137 x (x, y, confidence)
    "labels": "{id}/{id}_label.csv",          # one row per clip of the long video
    "video": "{id}/{id}.mp4",                 # optional: "" or a missing file = skeleton only
    "frame_column": None,                     # xlsx column holding the frame number, if any
    "label_columns": {"label": "label", "start": "start_frame", "end": "end_frame"},
    "end_inclusive": True,
    "first_frame": 0,                         # 1 when the label csv counts frames from 1
    "lists": {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"},
    "subject_regex": r"^(.*)$",               # subject = group 1 of this, applied to the video id
    "frame_size": [1280, 720],
    "fps": 25.0,
    "classes": None,                          # list of class names; default: sorted labels
}


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, item) of a clip list; [] when the file is absent."""
    if not path.is_file():
        return []
    return [(i + 1, ln.strip()) for i, ln in enumerate(path.read_text().splitlines())
            if ln.strip() and not ln.strip().startswith("#")]


_XLSX_ROW = re.compile(rb"<row\b([^>]*?)(?:/>|>(.*?)</row>)", re.S)
_XLSX_CELL = re.compile(rb"<c\b([^>]*?)(?:/>|>(.*?)</c>)", re.S)
_XLSX_REF = re.compile(rb'\br="([A-Z]+)(\d+)"')
_XLSX_TYPE = re.compile(rb'\bt="(\w+)"')
_XLSX_V = re.compile(rb"<v>([^<]*)</v>")
_XLSX_T = re.compile(rb"<t\b[^>]*>([^<]*)</t>")


class _NotPlainSheet(Exception):
    """The fast xlsx reader met something it does not handle; openpyxl reads the file."""


def _column_index(letters: bytes) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ch - 64
    return n - 1


def _xlsx_rows(path: Path) -> list[list]:
    """The first sheet of an xlsx as rows of cell values (float, str or None), placed by
    their cell references. A regular-expression reader over the sheet's XML, 10-20x faster
    than openpyxl on a long interview's sheet (hundreds of thousands of numeric cells);
    raises _NotPlainSheet on anything unusual (namespace prefixes, formulas' errors, ...)."""
    import zipfile
    from xml.sax.saxutils import unescape

    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if "xl/worksheets/sheet1.xml" in names:
            sheet = "xl/worksheets/sheet1.xml"
        elif len(sheets) == 1:
            sheet = sheets[0]
        else:
            raise _NotPlainSheet("which sheet is first")
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            for si in re.findall(rb"<si>(.*?)</si>", z.read("xl/sharedStrings.xml"), re.S):
                shared.append(unescape(b"".join(_XLSX_T.findall(si)).decode()))
        xml = z.read(sheet)
    if b"<sheetData" not in xml or b":row" in xml or b":c " in xml:
        raise _NotPlainSheet("unexpected sheet XML")
    rows: list[list] = []
    for m in _XLSX_ROW.finditer(xml):
        ref = re.search(rb'\br="(\d+)"', m.group(1))
        if ref:
            while len(rows) < int(ref.group(1)) - 1:   # rows left out are empty
                rows.append([])
        body = m.group(2) or b""
        if b"t=" not in body and b"r=" not in body and b"<f" not in body:
            rows.append([float(v) for v in _XLSX_V.findall(body)])   # plain numbers
            continue
        row: list = []
        for c in _XLSX_CELL.finditer(body):
            attrs, inner = c.group(1), c.group(2) or b""
            ref = _XLSX_REF.search(attrs)
            if ref:
                row.extend([None] * (_column_index(ref.group(1)) - len(row)))
            kind = _XLSX_TYPE.search(attrs)
            kind = kind.group(1) if kind else b"n"
            v = _XLSX_V.search(inner)
            if kind == b"n":
                row.append(float(v.group(1)) if v and v.group(1) else None)
            elif kind == b"s":
                row.append(shared[int(v.group(1))] if v else None)
            elif kind in (b"inlineStr", b"str"):
                text = b"".join(_XLSX_T.findall(inner)) if kind == b"inlineStr" else (
                    v.group(1) if v else b"")
                row.append(unescape(text.decode()))
            elif kind == b"b":
                row.append(float(v.group(1)) if v else None)
            else:
                raise _NotPlainSheet(f"cell type {kind!r}")
        rows.append(row)
    return rows


def _read_sheet(path: Path) -> pd.DataFrame:
    """An xlsx's first sheet as a DataFrame, its first row the column names (as pandas'
    read_excel gives it)."""
    try:
        rows = _xlsx_rows(path)
    except _NotPlainSheet:
        return pd.read_excel(path, engine="openpyxl")
    if not rows:
        return pd.DataFrame()
    width = max(len(r) for r in rows)
    header = [h if h not in (None, "") else f"Unnamed: {i}"
              for i, h in enumerate(rows[0] + [None] * (width - len(rows[0])))]
    header = [str(int(h)) if isinstance(h, float) and h.is_integer() else str(h) for h in header]
    while len(rows) > 1 and not any(v is not None for v in rows[-1]):
        rows.pop()                                  # trailing empty rows, as pandas drops
    data = [r + [None] * (width - len(r)) for r in rows[1:]]
    sheet = pd.DataFrame(data, columns=header)
    return sheet.infer_objects()


def read_openpose_xlsx(path: str | Path, frame_column: str | None = None,
                       first_frame: int = 0) -> np.ndarray:
    """An iMiGUE ``<id>_openpose.xlsx``: a header row, then one row per frame with 137
    keypoints as x, y, confidence (411 numeric columns, in BODY_25, face 70, left hand 21,
    right hand 21 order) -> float32 [F, 137, 3]; row i is frame i of the video.

    With ``frame_column`` (``dataset.imigue.frame_column``) the rows are placed by that
    column's frame number instead (counted from ``first_frame``, ``dataset.imigue.first_frame``,
    as the label csv counts); frames without a row (no person detected) are 0, 0, 0.
    Every mismatch raises DatasetError naming the file, the row and the param to set."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: OpenPose sheet not found; check dataset.root and "
                           f"dataset.imigue.openpose (the file name pattern, now "
                           f"{IMIGUE_DEFAULTS['openpose']!r} by default)")
    try:
        sheet = _read_sheet(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read the OpenPose sheet ({e})") from e
    frames = None
    if frame_column:
        if frame_column not in sheet.columns:
            raise DatasetError(f"{path}: no column {frame_column!r} (dataset.imigue.frame_column); "
                               f"columns start with {list(sheet.columns[:5])}")
        frames = pd.to_numeric(sheet[frame_column], errors="coerce")
        bad = frames.isna() | (frames % 1 != 0)
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise DatasetError(f"{path}: row {i + 2}: frame number {sheet[frame_column].iloc[i]!r} "
                               f"in column {frame_column!r} (dataset.imigue.frame_column) is not "
                               f"a whole number")
        frames = frames.astype(int).to_numpy() - int(first_frame)
        sheet = sheet.drop(columns=[frame_column])
    numeric = sheet.select_dtypes("number")
    if numeric.shape[1] != 137 * 3:
        other = [c for c in sheet.columns if c not in numeric.columns]
        hint = (f"; non-numeric column(s) {other[:5]}: set dataset.imigue.frame_column if one "
                f"is the frame number, or fix the cells" if other else
                "; set dataset.imigue.frame_column if the first column is a frame number")
        raise DatasetError(f"{path}: expected 411 numeric columns (137 OpenPose keypoints "
                           f"x, y, confidence: BODY_25, face 70, hands 2 x 21), found "
                           f"{numeric.shape[1]} of {sheet.shape[1]} columns{hint}")
    values = numeric.to_numpy(np.float32)
    if frames is None:
        return values.reshape(len(values), 137, 3)
    if len(frames) and frames.min() < 0:
        i = int(np.argmin(frames))
        raise DatasetError(f"{path}: row {i + 2}: frame {frames[i] + first_frame} comes before "
                           f"the first frame {first_frame}; set dataset.imigue.first_frame to "
                           f"how the sheet counts frames (0 or 1)")
    dup = pd.Series(frames).duplicated()
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise DatasetError(f"{path}: row {i + 2}: frame {frames[i] + first_frame} appears twice "
                           f"in column {frame_column!r} (dataset.imigue.frame_column)")
    out = np.zeros((int(frames.max()) + 1 if len(frames) else 0, 137, 3), np.float32)
    out[frames] = values.reshape(len(values), 137, 3)
    return out


def _imigue_range(r: dict, lc: dict, o: dict) -> tuple[int, int, str]:
    """A label row's frames -> (start, end exclusive, problem), 0-based; (0, -1, why) when
    the row's frames are unusable (the why names the param to set)."""
    start, bad_start = _frame_cell(r[lc["start"]], lc["start"])
    end, bad_end = _frame_cell(r[lc["end"]], lc["end"])
    if bad_start or bad_end or start is None or end is None:
        return 0, -1, ((bad_start or bad_end or "empty frame cell") + "; fix the label row "
                       "(columns: dataset.imigue.label_columns)")
    start -= o["first_frame"]
    end += (1 if o["end_inclusive"] else 0) - o["first_frame"]
    if start < 0:
        return 0, -1, (f"{lc['start']} {r[lc['start']]} comes before the first frame "
                       f"{o['first_frame']}; set dataset.imigue.first_frame to how the file "
                       f"counts frames (0 or 1)")
    if not start < end:
        return 0, -1, (f"bad frame range {r[lc['start']]}..{r[lc['end']]}; fix the label row or "
                       f"dataset.imigue.first_frame / dataset.imigue.end_inclusive")
    return start, end, ""


def _imigue_labels(path: Path, lc: dict) -> pd.DataFrame:
    """One label csv, its columns checked against ``dataset.imigue.label_columns``."""
    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for a malformed file
        raise DatasetError(f"{path}: cannot parse as CSV ({e}); the label file needs columns "
                           f"{list(lc.values())} (dataset.imigue.label_columns)") from e
    t.columns = [str(c).strip() for c in t.columns]
    missing = [c for c in lc.values() if c not in t.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the file has "
                           f"{list(t.columns)}. Set dataset.imigue.label_columns "
                           f"(e.g. {{label: ..., start: ..., end: ...}}) to its names")
    return t


def load_imigue(root: str | Path, **options) -> RawDataset:  # noqa: C901 (one reader)
    """iMiGUE challenge layout: one folder per long video with ``<id>_openpose.xlsx`` and
    ``<id>_label.csv``; clip lists for train/val/test name video ids or clip ids
    (``<id>_<n>``, n = the label row, from 0). Each clip is a frame range of its long video.
    File names and column names are configurable (see ``IMIGUE_DEFAULTS``); whatever does not
    match raises DatasetError naming the file, the row and the ``dataset.imigue`` param."""
    o = {**IMIGUE_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    lc = {**IMIGUE_DEFAULTS["label_columns"], **(o["label_columns"] or {})}
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: iMiGUE root not found; set dataset.root to the iMiGUE "
                           f"folder")
    video_ids = sorted(p.name for p in root.iterdir()
                       if p.is_dir() and (root / o["labels"].format(id=p.name)).is_file())
    if not video_ids:
        raise DatasetError(f"{root}: no video folder with a {o['labels']} file; check "
                           f"dataset.root and dataset.imigue.labels")
    split_of: dict[str, str] = {}
    listed: dict[str, str] = {}                      # item -> "file:line", for errors
    for split, name in (o["lists"] or {}).items():
        if not name:
            continue
        for line, item in _read_list(root / name):
            if item in split_of and split_of[item] != split:
                raise DatasetError(f"{root / name}:{line}: {item!r} is listed in both "
                                   f"{split_of[item]} and {split}; fix the clip lists")
            split_of[item] = split
            listed.setdefault(item, f"{root / name}:{line}")
    subject_re = re.compile(o["subject_regex"])
    rows = []
    for vid in video_ids:
        labels_path = root / o["labels"].format(id=vid)
        t = _imigue_labels(labels_path, lc)
        m = subject_re.match(vid)
        if not m:
            raise DatasetError(f"{root / vid}: video id {vid!r} does not match "
                               f"dataset.imigue.subject_regex {o['subject_regex']!r}; fix the "
                               f"regex (group 1 = the subject)")
        subject = m.group(1) if m.groups() else vid
        video = root / o["video"].format(id=vid) if o["video"] else None
        has_video = video is not None and video.is_file()
        for n, r in enumerate(t.to_dict("records")):
            clip_id = f"{vid}_{n}"
            start, end, problem = _imigue_range(r, lc, o)
            rows.append(dict(clip_id=clip_id, subject=subject, label=str(r[lc["label"]]).strip(),
                             video=_video_path(video) if has_video else "",
                             start_frame=start, end_frame=end,
                             split=split_of.get(clip_id, split_of.get(vid, "")),
                             origin=f"{labels_path}:{n + 2}", problem=problem))
    table = _table(rows)
    unknown = sorted(set(listed) - set(table.clip_id) - set(video_ids))
    if unknown:
        raise DatasetError(f"{listed[unknown[0]]}: {unknown[0]!r} is neither a clip id "
                           f"(<video id>_<label row from 0>) nor a video id of {root}"
                           f"{f' ({len(unknown)} such items)' if len(unknown) > 1 else ''}; "
                           f"fix the list, or dataset.imigue.lists / dataset.imigue.labels")
    classes = o["classes"] or sorted(set(table["label"]) - {""}, key=lambda s: (len(s), s))
    sheets: dict[str, np.ndarray] = {}
    ranges = {r.clip_id: (r.clip_id.rsplit("_", 1)[0], r.start_frame, r.end_frame, r.origin)
              for r in table.itertuples()}

    def keypoints(clip_id: str) -> np.ndarray:
        vid, start, end, origin = ranges[clip_id]
        sheet_path = root / o["openpose"].format(id=vid)
        if vid not in sheets:  # one long video's sheet serves all its clips
            sheets.clear()
            sheets[vid] = read_openpose_xlsx(sheet_path, o["frame_column"], o["first_frame"])
        sheet = sheets[vid]
        if end > len(sheet):
            raise DatasetError(
                f"{sheet_path}: clip {clip_id} ({origin}) needs frames {start}..{end - 1} (from "
                f"0) but the sheet has {len(sheet)} frame rows; if the label csv counts frames "
                f"from 1 set dataset.imigue.first_frame: 1, if its end frame is exclusive set "
                f"dataset.imigue.end_inclusive: false")
        return layout.map_keypoints(sheet[start:end], layout.FROM_OPENPOSE137)

    w, h = o["frame_size"]
    return RawDataset("imigue", [str(c) for c in classes], table, keypoints,
                      frame_size=(int(w), int(h)), fps=float(o["fps"]))


def load_dataset(cfg: dict) -> RawDataset:
    """The ``dataset`` params block -> RawDataset: ``cfg['name']`` picks the adapter,
    ``cfg['root']`` is the dataset folder, ``cfg[name]`` holds the adapter's options."""
    name, root = cfg.get("name"), cfg.get("root")
    block = dict(cfg.get(name) or {})
    if not root:
        raise DatasetError("dataset.root is not set; point it at the dataset folder")
    if name == "synth":
        return load_synth(root)
    if name == "csv":
        kp_options = {k: v for k, v in block.items() if k in CSV_KEYPOINT_DEFAULTS}
        return load_csv(Path(root) / block.get("file", "clips.csv"), root, block.get("columns"),
                        block.get("classes"), kp_options)
    if name == "utd_mhad":
        cam = block.get("camera", {})
        return load_utd_mhad(root, cam.get("width", 640), cam.get("height", 480),
                             cam.get("focal", 525.0), block.get("fps", 30.0),
                             block.get("val_subjects", []))
    if name == "imigue":
        return load_imigue(root, **block)
    if name in ("stgcn", "pyskl"):
        from mgpipe import datasets_skeleton

        loader = datasets_skeleton.load_stgcn if name == "stgcn" else datasets_skeleton.load_pyskl
        return loader(root, **block)
    raise DatasetError(f"dataset.name: unknown dataset {name!r}; "
                       f"use one of synth, csv, utd_mhad, imigue, stgcn, pyskl")

"""A dataset's own keypoints from per-clip files, in any common file type and source
skeleton, converted into the 68-keypoint layout (:mod:`mgpipe.layout`).

File types (by suffix, case-insensitive):
  .npy        one array: [T, J, C] (frames, joints, channels), or a 2D table (see rows)
  .npz        one array as in .npy: the only one, else the one named by ``npz_key``
              (default: ``keypoints``)
  .csv, .txt  numbers separated by commas and/or whitespace; one optional header line (a
              first line that is not all numbers, or that counts its columns 0, 1, 2, ... or
              1, 2, 3, ... as pandas' to_csv writes an unnamed table's); blank lines and
              lines starting with '#' are ignored. A 2D table (see rows)
  .json       a list of frames, each a list of joints [x, y(, z)(, score)] (or each a flat
              row of numbers: a 2D table), or {"keypoints": that list}; ``null`` = missing.
              Also OpenPose's per-frame output {"people": [{"pose_keypoints_2d": [x, y, c,
              ...], ...}]}: one such object (one frame), a list of them, or a folder of such
              files (one per frame, in name order). OpenPose does not track people, so each
              frame keeps its most confident person (the largest sum of pose scores); the
              openpose137 layout reads pose, face and both hands, any other the pose points.

Rows (``rows``) of a 2D table with R rows of K numbers, for a layout of J source joints:
  joint   one row per joint per frame, x y [z] [score]: K = C, R = T x J (frame after frame)
  frame   one row per frame, joint after joint: K = J x C, R = T
  auto    joint when K is 2, 3 or 4 (C, when channels is set) and R is a multiple of J;
          frame when K is J x 2, J x 3 or J x 4 (J x C). A table that fits both (only
          possible for J <= 2) or neither is an error that names the param to set. A
          row-per-joint file whose joint count is wrong can still fit by chance (18 joints
          over 17 frames = 17 x 18 rows): check that the layout is the file's skeleton.

Channels (``channels``) C per joint: xy (2), xy_score (3), xyz (3), xyz_score (4).
  auto: C = 2 -> xy, C = 4 -> xyz_score, C = 3 -> xyz for the Kinect layouts (kinect_v1,
  kinect_v2: depth-sensor joints in metres), xy_score for every other layout.
  xy, xy_score: pixels of the source frame; xy without a score gets score 1 where x and y are
  finite and not both 0, else 0.
  xyz, xyz_score: Kinect camera space (metres; x to the sensor's left, y up, z away from it),
  projected into the virtual pinhole camera ``camera`` = (width, height, focal) exactly as
  :func:`mgpipe.datasets.project_kinect` does for UTD-MHAD; a joint is seen (score 1, or its
  score) when finite, not (0, 0, 0), in front of the camera (z > 0) and inside the frame.

The result is float32 [T, 68, 3] (x, y pixels, score) through :func:`layout.map_keypoints`,
unseen keypoints (0, 0, 0), cleaned by :func:`layout.clean_keypoints`. A file that cannot be
read as the format says (missing, empty, not parsable, wrong dimensions, a joint count other
than the layout's, nothing but NaN) raises :class:`mgpipe.datasets.DatasetError` naming the
file, what it found, what was expected and the param to change.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgpipe import layout
from mgpipe.datasets import DatasetError, project_kinect

CHANNELS = {"xy": 2, "xy_score": 3, "xyz": 3, "xyz_score": 4}
ROWS = ("auto", "joint", "frame")
SUFFIXES = (".npy", ".npz", ".csv", ".txt", ".json")
_SEP = re.compile(r"[\s,]+")
# OpenPose's per-person arrays in the order of the 137-point layout, with their point counts.
_OPENPOSE_PARTS = (("pose_keypoints_2d", 25), ("face_keypoints_2d", 70),
                   ("hand_left_keypoints_2d", 21), ("hand_right_keypoints_2d", 21))


@dataclass(frozen=True)
class SkeletonFormat:
    """How to read a dataset's keypoints: the source skeleton and the file conventions.

    layout: a :data:`layout.LAYOUTS` name or "custom"; table: {our index: source index};
    joints: the source's joint count J (None: a custom layout without ``joints``, taken from
    3D arrays); camera: (width px, height px, focal px) for 3D joints; where: the params
    block the settings come from (e.g. "dataset.csv"), named in error messages."""
    layout: str
    table: dict
    joints: int | None
    rows: str = "auto"
    channels: str = "auto"
    camera: tuple[int, int, float] = (640, 480, 525.0)
    npz_key: str | None = None
    where: str = "dataset.csv"

    def param(self, key: str) -> str:
        return f"{self.where}.{key}"

    def describe(self) -> str:
        """The layout for messages: "coco17 (17 joints)"."""
        return f"{self.layout} ({self.joints} joints)" if self.joints else self.layout


def skeleton_format(block: dict, where: str) -> SkeletonFormat:
    """A params block (``layout``, ``layout_map``, ``joints``, ``rows``, ``channels``,
    ``camera``, ``npz_key``; all optional but ``layout``) -> SkeletonFormat. ``where`` is
    the block's path, for messages. Raises DatasetError for an unknown or unset layout or a
    bad custom map."""
    name = block.get("layout")
    names = ", ".join(list(layout.LAYOUTS) + ["custom"])
    if not name:
        raise DatasetError(f"{where}.layout is not set: name the keypoints' skeleton, one of "
                           f"{names} (custom: with {where}.layout_map {{our name: source "
                           f"index}})")
    if name == "custom":
        joints = block.get("joints")
        try:
            table = layout.table_from_names(block.get("layout_map") or {}, joints)
        except ValueError as e:
            raise DatasetError(f"{where}.layout_map: {e}") from None
    elif name in layout.LAYOUTS:
        if block.get("layout_map"):
            raise DatasetError(f"{where}.layout_map is read only with {where}.layout: custom "
                               f"(now {name!r}); remove one of them")
        joints, table = layout.LAYOUTS[name]
    else:
        raise DatasetError(f"{where}.layout: unknown layout {name!r}; use one of {names}")
    rows, channels = block.get("rows") or "auto", block.get("channels") or "auto"
    if rows not in ROWS:
        raise DatasetError(f"{where}.rows: {rows!r}; use one of {', '.join(ROWS)}")
    if channels != "auto" and channels not in CHANNELS:
        raise DatasetError(f"{where}.channels: {channels!r}; use auto or one of "
                           f"{', '.join(CHANNELS)}")
    cam = block.get("camera") or {}
    camera = (int(cam.get("width", 640)), int(cam.get("height", 480)),
              float(cam.get("focal", 525.0)))
    return SkeletonFormat(name, dict(table), joints, rows, channels, camera,
                          block.get("npz_key"), where)


# ---- reading files into [T, J, C] ---------------------------------------------------------

def read_frames(path: str | Path, fmt: SkeletonFormat) -> np.ndarray:
    """One keypoint file (or OpenPose folder) -> float32 [T, J, C] as stored (source joints,
    source units), its shape checked against ``fmt``."""
    path = Path(path)
    if path.is_dir():
        return shape_frames(_openpose_folder(path, fmt), fmt, str(path))
    if not path.is_file():
        raise DatasetError(f"{path}: keypoints file not found; check the path (relative to the "
                           f"dataset's CSV) and dataset.root")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(f"{path}: unknown keypoints file type {suffix!r}; use one of "
                           f"{', '.join(SUFFIXES)} (or a folder of OpenPose .json files)")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes), expected keypoints for at least "
                           f"one frame")
    reader = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_text, ".txt": _read_text,
              ".json": _read_json}[suffix]
    return shape_frames(reader(path, fmt), fmt, str(path))


def _read_npy(path: Path, fmt: SkeletonFormat) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError for a bad file
        raise DatasetError(f"{path}: cannot read as a .npy array ({e}); expected a numeric "
                           f"array [T, J, C] saved with numpy.save") from None


def _read_npz(path: Path, fmt: SkeletonFormat) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = _npz_key(path, keys, fmt)
            return z[key]
    except DatasetError:
        raise
    except Exception as e:  # a corrupt zip, a pickled member
        raise DatasetError(f"{path}: cannot read as a .npz archive ({e}); expected numeric "
                           f"arrays saved with numpy.savez") from None


def _npz_key(path: Path, keys: list[str], fmt: SkeletonFormat) -> str:
    """Which array of an .npz: the only one, else ``npz_key``, else "keypoints"."""
    if not keys:
        raise DatasetError(f"{path}: empty .npz archive (no arrays), expected the keypoints "
                           f"array")
    if fmt.npz_key:
        if fmt.npz_key not in keys:
            raise DatasetError(f"{path}: no array {fmt.npz_key!r} ({fmt.param('npz_key')}); "
                               f"the archive holds {keys}")
        return fmt.npz_key
    if len(keys) == 1:
        return keys[0]
    if "keypoints" in keys:
        return "keypoints"
    raise DatasetError(f"{path}: {len(keys)} arrays {keys} and none named 'keypoints'; set "
                       f"{fmt.param('npz_key')} to the one holding the keypoints")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _is_header(cells: list[str]) -> bool:
    """A first line that names columns: not all numbers, or the column numbers themselves
    (0..K-1 or 1..K, pandas' names for an unnamed table's columns)."""
    if not all(_is_number(c) for c in cells):
        return True
    values = [float(c) for c in cells]
    return len(values) > 1 and values in (list(range(len(values))),
                                          list(range(1, len(values) + 1)))


def _read_text(path: Path, fmt: SkeletonFormat) -> np.ndarray:
    """A .csv/.txt table -> float64 [R, K]; one optional header line."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text file ({e}); expected rows of numbers "
                           f"separated by commas or spaces") from None
    rows = [(n, [c for c in _SEP.split(line.strip()) if c])
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise DatasetError(f"{path}: no rows of numbers (empty, or only a header), expected "
                           f"keypoints for at least one frame")
    width = len(rows[0][1])
    for n, cells in rows:
        if len(cells) != width:
            raise DatasetError(f"{path}: line {n} has {len(cells)} values, line {rows[0][0]} has "
                               f"{width}; every row needs the same number of values (one row "
                               f"per joint or per frame, {fmt.param('rows')})")
    try:
        values = np.array([c for _, cells in rows for c in cells], dtype=np.float64)
    except ValueError:
        n, cell = next((n, c) for n, cells in rows for c in cells if not _is_number(c))
        raise DatasetError(f"{path}: line {n}: {cell!r} is not a number; only the first line "
                           f"may be a header") from None
    return values.reshape(len(rows), width)


def _read_json(path: Path, fmt: SkeletonFormat) -> np.ndarray:
    try:
        obj = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); expected a list of frames of "
                           f"joints [x, y(, z)(, score)]") from None
    if isinstance(obj, dict) and "keypoints" in obj:
        obj = obj["keypoints"]
    if _is_openpose(obj):
        return _openpose_frames([obj], fmt, str(path))
    if isinstance(obj, list) and obj and all(_is_openpose(o) for o in obj):
        return _openpose_frames(obj, fmt, str(path))
    if not isinstance(obj, list):
        raise DatasetError(f"{path}: a JSON {type(obj).__name__} without 'keypoints' or "
                           f"'people'; expected a list of frames of joints [x, y(, z)(, score)], "
                           f"{{\"keypoints\": [...]}} or OpenPose's {{\"people\": [...]}}")
    try:
        return np.array(obj, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{path}: frames are ragged or not numbers ({e}); every frame needs "
                           f"the same joints, each [x, y(, z)(, score)] numbers") from None


def _is_openpose(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("people"), list)


def _openpose_folder(path: Path, fmt: SkeletonFormat) -> np.ndarray:
    files = sorted(path.glob("*.json"))
    if not files:
        raise DatasetError(f"{path}: a folder without .json files; a keypoints folder holds "
                           f"OpenPose's per-frame JSON files")
    frames = []
    for f in files:
        try:
            obj = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(f"{f}: not valid JSON ({e}); expected OpenPose's per-frame "
                               f"{{\"people\": [...]}}") from None
        if not _is_openpose(obj):
            raise DatasetError(f"{f}: no 'people' list; a keypoints folder holds OpenPose's "
                               f"per-frame JSON files")
        frames.append(obj)
    return _openpose_frames(frames, fmt, str(path))


def _openpose_person(person: dict, parts, source: str) -> np.ndarray:
    """One OpenPose person -> [J, 3] (x, y, confidence); parts it lacks are zeros."""
    blocks = []
    for key, n in parts:
        v = np.asarray(person.get(key) or [], np.float64).ravel()
        if n is None:
            n = len(v) // 3
        if v.size == 0:
            v = np.zeros(n * 3)
        if v.size != n * 3:
            raise DatasetError(f"{source}: OpenPose {key!r} has {v.size} numbers, expected "
                               f"{n} points x (x, y, confidence) = {n * 3}")
        blocks.append(v.reshape(n, 3))
    return np.concatenate(blocks)


def _openpose_frames(frames: list[dict], fmt: SkeletonFormat, source: str) -> np.ndarray:
    """OpenPose per-frame objects -> [T, J, 3], each frame's most confident person; frames
    without anyone are zeros."""
    parts = _OPENPOSE_PARTS if fmt.layout == "openpose137" else (("pose_keypoints_2d", None),)
    best = []
    for frame in frames:
        people = [_openpose_person(p, parts, source) for p in frame["people"]
                  if isinstance(p, dict)]
        people = [p for p in people if len(p)]
        best.append(max(people, key=lambda p: float(np.nansum(p[:25, 2])), default=None))
    found = [p for p in best if p is not None]
    if not found:
        raise DatasetError(f"{source}: OpenPose found no person in any of its {len(frames)} "
                           f"frames; expected at least one frame with a person")
    counts = sorted({len(p) for p in found})
    if len(counts) > 1:
        raise DatasetError(f"{source}: OpenPose people have {counts} points in different "
                           f"frames, expected the same skeleton in every frame")
    return np.stack([p if p is not None else np.zeros((counts[0], 3)) for p in best])


def shape_frames(arr, fmt: SkeletonFormat, source: str) -> np.ndarray:
    """A file's array -> float32 [T, J, C]: 3D arrays as they are, 2D tables by ``rows``.
    Raises DatasetError when the shape does not fit the layout."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{source}: holds {arr.dtype} values, expected numbers")
    if arr.size == 0:
        raise DatasetError(f"{source}: empty array (shape {arr.shape}), expected keypoints for "
                           f"at least one frame")
    if arr.ndim == 2:
        arr = _table_to_frames(arr, fmt, source)
    elif arr.ndim != 3:
        raise DatasetError(f"{source}: {arr.ndim} dimensions (shape {arr.shape}), expected "
                           f"[T, J, C] (frames, joints, channels) or a 2D table of one row per "
                           f"joint or per frame")
    t, j, c = arr.shape
    if fmt.joints is not None and j != fmt.joints:
        fix = (f"{fmt.param('joints')} to the file's joint count" if fmt.layout == "custom"
               else f"{fmt.param('layout')} to the file's skeleton")
        raise DatasetError(f"{source}: {j} joints per frame (shape {arr.shape} read as [T, J, C])"
                           f", but layout {fmt.describe()} expects {fmt.joints}; set {fix}")
    top = max(fmt.table.values())
    if top >= j:
        raise DatasetError(f"{source}: {j} joints per frame, but {fmt.param('layout_map')} "
                           f"uses source index {top}; indices count from 0")
    channels_of(c, fmt, source)  # raises on a channel count that does not fit
    return arr.astype(np.float32)


def _table_to_frames(arr: np.ndarray, fmt: SkeletonFormat, source: str) -> np.ndarray:
    """A 2D table [R, K] -> [T, J, C] by ``fmt.rows`` (see the module docstring)."""
    r, k = arr.shape
    j = fmt.joints
    if j is None:
        raise DatasetError(f"{source}: a 2D table ({r} rows of {k} values) needs the joint "
                           f"count: set {fmt.param('joints')} for the custom layout")
    counts = [CHANNELS[fmt.channels]] if fmt.channels != "auto" else [2, 3, 4]
    as_joint = k in counts and r % j == 0
    as_frame = k % j == 0 and k // j in counts
    want = (f"one row per joint: {'/'.join(map(str, counts))} values a row and a multiple of "
            f"{j} rows; one row per frame: {'/'.join(str(j * c) for c in counts)} values a row")
    rows = fmt.rows
    if rows == "auto":
        if as_joint and as_frame:
            raise DatasetError(f"{source}: {r} rows of {k} values fit both one row per joint and "
                               f"one row per frame for {j} joints; set {fmt.param('rows')} to "
                               f"joint or frame")
        if not (as_joint or as_frame):
            raise DatasetError(f"{source}: {r} rows of {k} values fit no reading for layout "
                               f"{fmt.describe()} ({want}); check {fmt.param('layout')}, "
                               f"{fmt.param('rows')} and {fmt.param('channels')}")
        rows = "joint" if as_joint else "frame"
    if rows == "joint":
        if not as_joint:
            raise DatasetError(f"{source}: {r} rows of {k} values are not one row per joint of "
                               f"layout {fmt.describe()} ({want.split(';')[0]}); check "
                               f"{fmt.param('rows')} ({fmt.rows}) and {fmt.param('layout')}")
        return arr.reshape(r // j, j, k)
    if not as_frame:
        raise DatasetError(f"{source}: {r} rows of {k} values are not one row per frame of "
                           f"layout {fmt.describe()} ({want.split('; ')[1]}); check "
                           f"{fmt.param('rows')} ({fmt.rows}) and {fmt.param('layout')}")
    return arr.reshape(r, j, k // j)


def channels_of(c: int, fmt: SkeletonFormat, source: str) -> str:
    """The channel meaning of C values per joint (see the module docstring)."""
    if fmt.channels != "auto":
        if CHANNELS[fmt.channels] != c:
            raise DatasetError(f"{source}: {c} values per joint, but {fmt.param('channels')} is "
                               f"{fmt.channels} ({CHANNELS[fmt.channels]} values); set it to "
                               f"the file's channels or auto")
        return fmt.channels
    if c == 2:
        return "xy"
    if c == 4:
        return "xyz_score"
    if c == 3:
        return "xyz" if fmt.layout in layout.KINECT_LAYOUTS else "xy_score"
    raise DatasetError(f"{source}: {c} values per joint, expected 2 (x, y), 3 (x, y, score or "
                       f"x, y, z) or 4 (x, y, z, score); check the file and "
                       f"{fmt.param('channels')}")


# ---- into the 68 layout --------------------------------------------------------------------

def to_layout(frames: np.ndarray, fmt: SkeletonFormat, source: str) -> tuple[np.ndarray, str]:
    """Source keypoints [T, J, C] -> (float32 [T, 68, 3] pixels with scores, the channels
    read). 3D joints are projected by ``fmt.camera``. Raises DatasetError when no value is
    finite."""
    frames = np.asarray(frames, np.float32)
    channels = channels_of(frames.shape[-1], fmt, source)
    if not np.isfinite(frames).any():
        raise DatasetError(f"{source}: every value is NaN or infinite ({frames.shape[0]} "
                           f"frames), expected at least one finite keypoint")
    if channels.startswith("xyz"):
        uv, seen = _project(frames[..., :3], fmt.camera)
    else:
        uv = frames[..., :2]
        seen = np.isfinite(uv).all(-1)
        if channels == "xy":
            seen &= (uv != 0).any(-1)
    score = frames[..., -1] if channels.endswith("score") else np.float32(1)
    src = np.concatenate([uv, np.where(seen, score, 0)[..., None]], -1)
    kp = layout.map_keypoints(src, fmt.table)
    kp[..., :2] *= kp[..., 2:3] > 0
    return layout.clean_keypoints(kp)[0], channels


def _project(xyz: np.ndarray, camera: tuple[int, int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space joints [..., 3] (metres) -> (pixels [..., 2], seen [...]): finite, not
    (0, 0, 0), in front of the camera and inside the frame."""
    width, height, focal = camera
    uv = project_kinect(xyz, width, height, focal)
    with np.errstate(invalid="ignore"):
        seen = (np.isfinite(xyz).all(-1) & (xyz != 0).any(-1) & (xyz[..., 2] > 0)
                & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0)
                & (uv[..., 1] < height))
    return uv, seen


def load_clip(path: str | Path, fmt: SkeletonFormat) -> tuple[np.ndarray, str]:
    """One clip's keypoint file -> (float32 [T, 68, 3] in pixels, the channels read:
    xy, xy_score, xyz or xyz_score)."""
    return to_layout(read_frames(path, fmt), fmt, str(path))


def read_keypoint_file(path: str | Path, fmt: SkeletonFormat) -> np.ndarray:
    """One clip's keypoint file -> float32 [T, 68, 3] (x, y pixels, score)."""
    return load_clip(path, fmt)[0]


# ---- several people in one sample ----------------------------------------------------------

def valid_joints(persons: np.ndarray, has_score: bool) -> np.ndarray:
    """Which joints of [M, T, V, C] are seen: finite, coordinates not all 0 and, with a score
    channel (the last), score > 0. -> bool [M, T, V]."""
    coords = persons[..., :-1] if has_score else persons
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(persons).all(-1) & (coords != 0).any(-1)
        if has_score:
            ok &= persons[..., -1] > 0
    return ok


def person_motion(persons: np.ndarray, has_score: bool) -> tuple[np.ndarray, np.ndarray]:
    """(motion [M], valid joint count [M]) of each person of [M, T, V, C]: motion is the sum
    over frames t >= 1 of the mean displacement |p_t - p_(t-1)| (Euclidean, over the
    coordinate channels) of the joints seen in both frames; a frame pair with no such joint
    adds 0."""
    persons = np.asarray(persons, np.float64)
    ok = valid_joints(persons, has_score)
    coords = persons[..., :-1] if has_score else persons
    both = ok[:, 1:] & ok[:, :-1]                                    # [M, T-1, V]
    step = np.linalg.norm(np.nan_to_num(coords[:, 1:] - coords[:, :-1]), axis=-1)
    n = both.sum(-1)
    mean = np.where(n > 0, (step * both).sum(-1) / np.maximum(n, 1), 0.0)
    return mean.sum(-1), ok.sum((1, 2))


def most_active_person(persons: np.ndarray, has_score: bool = False) -> int:
    """Index of the person to keep among [M, T, V, C]: the largest total motion
    (:func:`person_motion`); ties go to the one with more valid joints, then the lower index.
    A person with no valid joint never wins (index 0 when nobody has one)."""
    motion, count = person_motion(persons, has_score)
    candidates = [m for m in range(len(count)) if count[m] > 0]
    if not candidates:
        return 0
    return max(candidates, key=lambda m: (motion[m], count[m], -m))

"""The two on-disk formats of the synthetic dataset (``synth.layout``).

``clips`` (the default, read by ``dataset.name: synth``), in ``out_dir``::

    videos/<clip_id>.mp4      mp4v, width x height, ``frames`` frames at ``fps``
    keypoints/<clip_id>.npy   float32 [T, 68, 3]: x, y in pixels, score (0 = missing)
    classes.json              class names in index order
    contact_sheet.png         a few labelled frames per class
    labels.csv                clip_id, subject, label, split, video, frames, fps, width,
                              height, onset, offset (written last)

``imigue`` (read by ``dataset.name: imigue`` with the default ``dataset.imigue`` params), laid
out as the iMiGUE release: one long video per interview (subject), its labelled clips
between stretches of idle motion::

    <id>/<id>.mp4             the whole interview, width x height at ``fps``
    <id>/<id>_openpose.xlsx   one row per frame of the video, a header row, then 137 OpenPose
                              points (BODY_25, face 70, left hand 21, right hand 21) as x, y,
                              confidence: 411 numeric columns; missing points are 0, 0, 0
    <id>/<id>_label.csv       label, start_frame, end_frame: one row per clip, frames from 0,
                              end inclusive (written after the video and the sheet)
    train_list.txt, val_list.txt, test_list.txt
                              clip ids (``<id>_<n>``, n = the label row from 0), one a line
                              (written last)
    classes.json, contact_sheet.png

The id of a video is its subject's (``S01``...). Clip ``<id>_<n>`` is exactly the clip the
``clips`` layout writes as ``<id>_<nnn>`` (same frames and keypoints), so both layouts carry the
same signals; the idle stretches between clips are ``synth.idle_frames`` long on average.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from xml.sax.saxutils import escape

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import layout as L
from .io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from .synth_figures import Subject, class_names
from .synth_render import Clip, render_idle
from .video import AtomicVideoWriter

if TYPE_CHECKING:
    from .synth import SynthConfig

LABEL_COLUMNS = ["clip_id", "subject", "label", "split", "video", "frames", "fps", "width",
                 "height", "onset", "offset"]
IMIGUE_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
IMIGUE_LABEL_COLUMNS = ["label", "start_frame", "end_frame"]
GAP_STREAM = 0x6A9   # separates the idle stretches' lengths from the other random streams

RenderClip = Callable[["SynthConfig", Subject, int, int], Clip]


# ---- files -------------------------------------------------------------------------------

def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 BGR frames [T, H, W, 3] as an mp4v mp4, atomically."""
    h, w = frames.shape[1:3]
    with AtomicVideoWriter(path, fps, (w, h)) as out:
        for f in frames:
            out.write(f)
        out.close()


def read_video(path: Path) -> np.ndarray:
    """All frames of a video, uint8 [T, H, W, 3] BGR."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    if not frames:
        raise IOError(f"cannot read any frame from {path}")
    return np.stack(frames)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)

# ---- clips layout ------------------------------------------------------------------------

def _out_of_frame(clip: Clip, cfg: SynthConfig) -> float:
    """Fraction of the clip's frames in which a hand point is outside the image."""
    c = clip.clean[:, L.HANDS]
    return float(((c[..., 0] < 0) | (c[..., 0] > cfg.width - 1) | (c[..., 1] < 0)
                  | (c[..., 1] > cfg.height - 1)).any(-1).mean())


def write_clips(cfg: SynthConfig, out_dir: Path, table: pd.DataFrame, subjects: dict,
                render_clip: RenderClip, progress: bool = True) -> dict:
    """The ``clips`` layout (module docstring): one mp4 and one keypoint file per clip of
    ``table`` (``mgpipe.synth.plan``). ``labels.csv`` is removed first and written last, so an
    interrupted run never looks finished; files of clips not in ``table`` are removed."""
    (out_dir / "labels.csv").unlink(missing_ok=True)
    names = class_names(cfg.classes)
    onsets, offsets, out_frac = [], [], []
    for row in tqdm(table.itertuples(), total=len(table), desc="synth clips", disable=not progress,
                    unit="clip"):
        clip = render_clip(cfg, subjects[row.subject], row.label, row.index)
        write_video(out_dir / "videos" / f"{row.clip_id}.mp4", clip.frames, cfg.fps)
        _save_npy(out_dir / "keypoints" / f"{row.clip_id}.npy", clip.keypoints)
        onsets.append(clip.onset)
        offsets.append(clip.offset)
        out_frac.append(_out_of_frame(clip, cfg))
    write_json_atomic(out_dir / "classes.json", names)
    keep = set(table.clip_id)
    for sub_dir, ext in (("videos", ".mp4"), ("keypoints", ".npy")):
        for p in (out_dir / sub_dir).glob(f"*{ext}"):
            if p.stem not in keep:
                p.unlink()
    labels = pd.DataFrame({
        "clip_id": table.clip_id, "subject": table.subject,
        "label": [names[i] for i in table.label], "split": table.split,
        "video": [f"videos/{c}.mp4" for c in table.clip_id], "frames": cfg.frames,
        "fps": cfg.fps, "width": cfg.width, "height": cfg.height,
        "onset": onsets, "offset": offsets,
    })[LABEL_COLUMNS]
    save_contact_sheet(out_dir, out_dir / "contact_sheet.png", labels=labels)
    write_csv_atomic(out_dir / "labels.csv", labels)
    return {"hand_out_of_frame_clips": int(np.sum(np.array(out_frac) > 0))}


# ---- imigue layout -----------------------------------------------------------------------

# {OpenPose 137 index: our index}: the inverse of layout.FROM_OPENPOSE137. Where two of ours
# come from one OpenPose point (pose knuckles 17-22 and the hand model's), the hand's wins,
# as in OpenPose, whose pose knuckles are the hand model's points.
_TO_OPENPOSE137 = {theirs: ours for ours, theirs in sorted(
    L.FROM_OPENPOSE137.items(), key=lambda kv: kv[0] in L.HANDS)}
OPENPOSE_PARTS = [("pose", 25), ("face", 70), ("lhand", 21), ("rhand", 21)]
OPENPOSE_COLUMNS = [f"{part}_{i}_{c}" for part, n in OPENPOSE_PARTS for i in range(n)
                    for c in ("x", "y", "c")]


def to_openpose137(kp: np.ndarray) -> np.ndarray:
    """Keypoints [..., 68, 3] in our layout -> [..., 137, 3] in OpenPose's (BODY_25 + face
    70 + hands 2x21), as iMiGUE ships them; points we do not model are 0, 0, 0.
    ``layout.map_keypoints(out, layout.FROM_OPENPOSE137)`` gives ``kp`` back, except that the
    pose knuckles 17-22 become the hand model's points."""
    kp = np.asarray(kp, np.float32)
    out = np.zeros(kp.shape[:-2] + (137, 3), np.float32)
    theirs = np.fromiter(_TO_OPENPOSE137.keys(), int)
    ours = np.fromiter(_TO_OPENPOSE137.values(), int)
    out[..., theirs, :] = kp[..., ours, :]
    return out


_XLSX_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '</Types>'),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
        '</Relationships>'),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        '</Relationships>'),
}


def write_xlsx(path: Path, header: list[str], values: np.ndarray, decimals: int = 3,
               chunk: int = 512) -> None:
    """One sheet: a header row of ``header`` then ``values`` [rows, len(header)] as numbers
    with ``decimals`` decimals, written atomically as a minimal xlsx (what openpyxl, pandas
    and spreadsheet programs read). Streams row chunks into the zip (a long interview holds
    millions of cells; openpyxl would take minutes) and stores no timestamps, so the same
    values give the same bytes."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[1] != len(header):
        raise ValueError(f"values {values.shape} do not match {len(header)} header cells")
    head = "".join(f'<c t="inlineStr"><is><t>{escape(h)}</t></is></c>' for h in header)
    cell = f"<c><v>%.{decimals}f</v></c>"
    row_fmt = "<row>" + cell * len(header) + "</row>"
    with atomic_path(path, suffix=".xlsx") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, text in _XLSX_PARTS.items():
                zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text,
                            zipfile.ZIP_DEFLATED, 1)
            info = zipfile.ZipInfo("xl/worksheets/sheet1.xml", (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                fh.write(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                         b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                         b"<sheetData>")
                fh.write(f"<row>{head}</row>".encode())
                for a in range(0, len(values), chunk):
                    block = values[a:a + chunk]
                    fh.write("".join(row_fmt % tuple(r) for r in block.tolist()).encode())
                fh.write(b"</sheetData></worksheet>")


def idle_gaps(cfg: SynthConfig, video: int, clips: int) -> np.ndarray:
    """Lengths (frames) of the ``clips + 1`` idle stretches of video ``video``: before each
    clip and after the last, each uniform in [idle_frames / 2, 3 idle_frames / 2]."""
    rng = np.random.default_rng([cfg.seed, GAP_STREAM, video])
    lo, hi = cfg.idle_frames // 2, cfg.idle_frames + cfg.idle_frames // 2
    return rng.integers(lo, hi + 1, clips + 1)


def render_long_video(cfg: SynthConfig, sub, rows: pd.DataFrame, video: int,
                      render_clip: RenderClip, path: Path, on_clip=None) -> np.ndarray:
    """Subject ``sub``'s long video (number ``video`` of the set) written to ``path``: its
    clips (``rows`` of ``mgpipe.synth.plan``, in order) between idle stretches
    (``idle_gaps``), streamed. ``on_clip(row, clip, first_frame)`` is called for each clip
    before it is written. Returns the video's keypoints, float32 [T, 68, 3]."""
    gaps = idle_gaps(cfg, video, len(rows))
    kps = []
    with AtomicVideoWriter(path, cfg.fps, (cfg.width, cfg.height)) as out:
        def write(frames: np.ndarray, keypoints: np.ndarray) -> None:
            for f in frames:
                out.write(f)
            kps.append(keypoints)

        for n, row in enumerate(rows.itertuples()):
            if gaps[n]:
                idle = render_idle(cfg, sub, int(gaps[n]), (video, n))
                write(idle.frames, idle.keypoints)
            clip = render_clip(cfg, sub, row.label, row.index)
            if on_clip is not None:
                on_clip(row, clip, out.count)
            write(clip.frames, clip.keypoints)
        if gaps[-1]:
            idle = render_idle(cfg, sub, int(gaps[-1]), (video, len(rows)))
            write(idle.frames, idle.keypoints)
        out.close()
    return np.concatenate(kps).astype(np.float32)


def write_imigue(cfg: SynthConfig, out_dir: Path, table: pd.DataFrame, subjects: dict,
                 render_clip: RenderClip, progress: bool = True) -> dict:
    """The ``imigue`` layout (module docstring): one long video per subject of ``table``
    (``mgpipe.synth.plan``), its clips in plan order between idle stretches. The list files
    are removed first and written last (and each folder's label csv after its video and
    sheet), so an interrupted run never looks finished; the ``clips`` layout's files and
    video folders of subjects not in ``table`` are removed."""
    for name in IMIGUE_LISTS.values():
        (out_dir / name).unlink(missing_ok=True)
    (out_dir / "labels.csv").unlink(missing_ok=True)
    for sub_dir in ("videos", "keypoints"):
        shutil.rmtree(out_dir / sub_dir, ignore_errors=True)
    names = class_names(cfg.classes)
    picks = _contact_picks(_with_names(table, names), names)
    sheet_frames: dict[str, np.ndarray] = {}
    out_frac = []
    bar = tqdm(total=len(table), desc="synth clips (imigue layout)", disable=not progress,
               unit="clip")
    for v, (sid, rows) in enumerate(table.groupby("subject", sort=True)):
        folder = out_dir / sid
        labels = []

        def on_clip(row, clip, first: int) -> None:
            labels.append((names[row.label], first, first + len(clip.frames) - 1))
            if row.clip_id in picks:
                sheet_frames[row.clip_id] = clip.frames[(clip.onset + clip.offset) // 2]
            out_frac.append(_out_of_frame(clip, cfg))
            bar.update()

        kp = render_long_video(cfg, subjects[sid], rows, v, render_clip,
                               folder / f"{sid}.mp4", on_clip)
        op = to_openpose137(kp)
        write_xlsx(folder / f"{sid}_openpose.xlsx", OPENPOSE_COLUMNS, op.reshape(len(op), -1))
        write_csv_atomic(folder / f"{sid}_label.csv",
                         pd.DataFrame(labels, columns=IMIGUE_LABEL_COLUMNS))
    bar.close()
    keep = set(table.subject)
    for p in sorted(out_dir.iterdir()):
        if p.is_dir() and p.name not in keep and (p / f"{p.name}_label.csv").is_file():
            shutil.rmtree(p)
    write_json_atomic(out_dir / "classes.json", names)
    _contact_sheet(names, picks, sheet_frames, cfg.width, cfg.height, out_dir / "contact_sheet.png")
    for split, name in IMIGUE_LISTS.items():
        ids = [f"{r.subject}_{j}" for r in table[table.split == split].itertuples()
               for j in [int(r.clip_id.rsplit("_", 1)[1])]]
        write_text_atomic(out_dir / name, "".join(f"{i}\n" for i in ids))
    return {"videos": len(keep),
            "hand_out_of_frame_clips": int(np.sum(np.array(out_frac) > 0))}


# ---- contact sheet -----------------------------------------------------------------------

def _with_names(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``plan``'s table with class names for label indices."""
    return table.assign(label=[names[i] for i in table.label])


def _contact_picks(labels: pd.DataFrame, names: list[str] | None = None,
                   per_class: int = 3) -> dict[str, tuple[int, int, str]]:
    """The clips a contact sheet shows: clip_id -> (row, column, caption). One row per class
    of ``names`` (default: the labels' classes in order of appearance), up to ``per_class``
    clips of different subjects spread over the table."""
    if names is None:
        names = list(dict.fromkeys(labels.label))
    picks = {}
    for r, name in enumerate(names):
        rows = labels[labels.label == name].drop_duplicates("subject")
        if len(rows) > per_class:
            rows = rows.iloc[np.linspace(0, len(rows) - 1, per_class).round().astype(int)]
        for c, row in enumerate(rows.itertuples()):
            picks[row.clip_id] = (r, c, f"{name}  {row.subject} {row.split}")
    return picks


def _contact_sheet(names: list[str], picks: dict, frames: dict[str, np.ndarray], width: int,
                   height: int, path: Path, per_class: int = 3, zoom: int = 2) -> tuple[int, int]:
    """Draw the picked frames (``frames``: clip_id -> uint8 [H, W, 3]) ``zoom`` times enlarged
    under caption strips and write the PNG atomically; returns its size (height, width)."""
    w, h = width * zoom, height * zoom
    strip = 18
    sheet = np.full((len(names) * (h + strip), per_class * w, 3), 40, np.uint8)
    for cid, (r, c, caption) in picks.items():
        y0, x0 = r * (h + strip), c * w
        sheet[y0 + strip:y0 + strip + h, x0:x0 + w] = cv2.resize(
            frames[cid], (w, h), interpolation=cv2.INTER_NEAREST)
        cv2.putText(sheet, caption, (x0 + 4, y0 + 13),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buf.tobytes())
    return sheet.shape[0], sheet.shape[1]


def save_contact_sheet(out_dir: Path, path: Path, per_class: int = 3, zoom: int = 2,
                       labels: pd.DataFrame | None = None) -> tuple[int, int]:
    """A PNG grid of the ``clips`` layout: one row per class, ``per_class`` clips of different
    subjects, each shown at the middle of its gesture, ``zoom`` times enlarged under a
    caption strip. Reads ``labels.csv`` unless ``labels`` is given. Returns the image size
    (height, width)."""
    out_dir = Path(out_dir)
    if labels is None:
        labels = pd.read_csv(out_dir / "labels.csv")
    names = list(dict.fromkeys(pd.read_json(out_dir / "classes.json", typ="series")))
    picks = _contact_picks(labels, names, per_class)
    rows = labels.set_index("clip_id")
    frames = {}
    for cid in picks:
        row = rows.loc[cid]
        video = read_video(out_dir / row.video)
        frames[cid] = video[min(len(video) - 1, (int(row.onset) + int(row.offset)) // 2)]
    return _contact_sheet(names, picks, frames, int(labels.width.iloc[0]),
                          int(labels.height.iloc[0]), path, per_class, zoom)

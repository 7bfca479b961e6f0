"""Videos to look at (``mgpipe predict --render``, issue #13): a clip's frames with its 68
keypoints and bones, the saliency crop box and the predicted label drawn on them, and for a
long video a timeline strip of the labels found along it with a moving cursor.

Every output frame is a stack of three bands:

    banner    the top prediction and its probability (large), the 2nd and 3rd (small), the
              frame number, and a legend whose hand entries turn grey ("no L hand") in the
              frames where that hand is not seen
    video     the source frame, resized so its short side is >= ``min_size`` px (small videos
              become readable) and its long side <= ``max_size`` px, with the skeleton and
              the crop box drawn; a clip without video gets a blank canvas of its keypoints'
              frame size
    timeline  (only with ``segments``) one coloured bar per detected segment, brighter the
              more probable, a white cursor at the current frame

Drawing functions work in place on OpenCV images: uint8 [H, W, 3] in **BGR** order (as
``cv2.VideoCapture`` returns them), colours are BGR tuples, coordinates are pixels with
(0, 0) the centre of the top-left pixel. Keypoints are [68, 3] (x, y, score) in pixels of the
source frame (mgpipe.layout); ``scale`` and ``offset`` map them to the image:
``(x + 0.5) * scale - 0.5 + offset_x`` (the mapping of ``cv2.resize``), so scale 1 and offset
(0, 0) draw a keypoint on the pixel it names.

Colours (``PART_COLOURS``): face (layout 0-10) yellow, body (arms, torso, neck: 11-25)
light blue, the subject's left hand (26-46) green, right hand (47-67) magenta, the crop box
white; a timeline segment takes its class's colour (``class_colour``).

:func:`render_clip` streams a clip's frames from its video (one frame in memory at a time,
so a long video costs no memory), draws them and writes ``<out>.mp4`` (MPEG-4 Part 2,
``mp4v``: the codec every OpenCV build with FFmpeg writes; H.264 is not in the pip wheels)
through a temporary file renamed into place only once its frame count is checked.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from mgpipe import layout
from mgpipe.video import AtomicVideoWriter, VideoError, probe_video

# ---- colours and parts -----------------------------------------------------------------------

PART_NAMES = ("face", "body", "left hand", "right hand")
PART_COLOURS = ((0, 220, 255), (255, 190, 90), (60, 220, 60), (230, 70, 230))  # BGR
BOX_COLOUR = (255, 255, 255)
MISSING_COLOUR = (140, 140, 140)
BLANK = (40, 40, 40)          # the canvas of a clip without video
BAND = (28, 28, 28)           # banner and timeline background
MIN_SCORE = 0.3               # keypoints at or below this score are not drawn

PART = np.full(layout.NUM_KEYPOINTS, 1, np.int64)   # part index of each keypoint
PART[layout.FACE] = 0
PART[layout.LEFT_HAND:layout.RIGHT_HAND] = 2
PART[layout.RIGHT_HAND:] = 3

# tab20's first ten and their light halves (BGR): distinct for up to 20 classes, then repeats
_PALETTE = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
            (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23),
            (232, 199, 174), (120, 187, 255), (138, 223, 152), (150, 152, 255), (213, 176, 197),
            (148, 156, 196), (210, 182, 247), (199, 199, 199), (141, 219, 219), (229, 218, 158))


def class_colour(index: int) -> tuple[int, int, int]:
    """BGR colour of class ``index`` (its position in the class list), as the timeline
    strip and the banner's swatch draw it."""
    return _PALETTE[int(index) % len(_PALETTE)]


def bone_part(a: int, b: int) -> int:
    """Part index whose colour a bone a-b takes: the joints' part when they share one,
    else body (the wrist-to-hand and neck-to-nose links)."""
    return int(PART[a]) if PART[a] == PART[b] else 1


BONE_PARTS = np.array([bone_part(a, b) for a, b in layout.BONES], np.int64)


def visible(kp: np.ndarray, min_score: float = MIN_SCORE) -> np.ndarray:
    """Mask [...] of keypoints [..., 3] that are drawn: finite x, y and score > min_score
    (a NaN score is not)."""
    kp = np.asarray(kp, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1]) & (kp[..., 2] > min_score)


def hands_seen(kp: np.ndarray, min_score: float = MIN_SCORE) -> tuple[bool, bool]:
    """(left hand seen, right hand seen) in one frame [68, 3]: any of its 21 points drawn."""
    v = visible(kp, min_score)
    return bool(v[layout.LEFT_HAND:layout.RIGHT_HAND].any()), bool(v[layout.RIGHT_HAND:].any())


# ---- drawing ---------------------------------------------------------------------------------

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions, anti-aliased
_FAR = 1e6   # image coordinates beyond this are not drawn (cv2 fixed point overflows)


def _fixed(x: float) -> int:
    return int(round(x * (1 << _SHIFT)))


def to_image(xy: np.ndarray, scale: float | tuple[float, float] = 1.0,
             offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Source pixel coordinates [..., 2] -> image coordinates [..., 2] (float64), the
    mapping ``cv2.resize`` applies to pixel centres: (v + 0.5) * scale - 0.5 + offset.
    ``scale``: one factor, or (x factor, y factor)."""
    xy = np.asarray(xy, np.float64)
    s = np.broadcast_to(np.asarray(scale, np.float64), (2,))
    return (xy + 0.5) * s - 0.5 + np.asarray(offset, np.float64)


def draw_keypoints(img: np.ndarray, kp: np.ndarray, scale: float | tuple[float, float] = 1.0,
                   offset: tuple[float, float] = (0.0, 0.0), min_score: float = MIN_SCORE,
                   radius: float = 3.0) -> np.ndarray:
    """Filled dots for the visible keypoints of one frame ``kp`` [68, 3] (source px) on
    ``img`` (uint8 BGR [H, W, 3], in place), coloured by part (``PART_COLOURS``), with a
    1 px dark rim so they show on any background; ``radius`` in image px. NaN, infinite or
    low-score (<= ``min_score``) points are skipped. Returns ``img``."""
    xy = to_image(np.asarray(kp, np.float64)[:, :2], scale, offset)
    r = max(_fixed(radius), 1 << _SHIFT)
    for j in np.flatnonzero(visible(kp, min_score)):
        if np.abs(xy[j]).max() > _FAR:  # far off the image (a detector glitch)
            continue
        c = (_fixed(xy[j, 0]), _fixed(xy[j, 1]))
        cv2.circle(img, c, r + (1 << _SHIFT), (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, c, r, PART_COLOURS[PART[j]], -1, cv2.LINE_AA, _SHIFT)
    return img


def draw_bones(img: np.ndarray, kp: np.ndarray, scale: float | tuple[float, float] = 1.0,
               offset: tuple[float, float] = (0.0, 0.0), min_score: float = MIN_SCORE,
               thickness: int = 2, bones: Sequence[tuple[int, int]] = layout.BONES
               ) -> np.ndarray:
    """Lines for the bones (``mgpipe.layout.BONES``: the skeleton graph, and the limb
    channels of the heatmaps) whose two keypoints are both visible, on ``img`` (uint8 BGR
    [H, W, 3], in place), coloured by part (``bone_part``); ``thickness`` in image px.
    Returns ``img``."""
    xy = to_image(np.asarray(kp, np.float64)[:, :2], scale, offset)
    v = visible(kp, min_score)
    for a, b in bones:
        if not (v[a] and v[b]) or max(np.abs(xy[a]).max(), np.abs(xy[b]).max()) > _FAR:
            continue
        pa, pb = (_fixed(xy[a, 0]), _fixed(xy[a, 1])), (_fixed(xy[b, 0]), _fixed(xy[b, 1]))
        cv2.line(img, pa, pb, PART_COLOURS[bone_part(a, b)], max(int(thickness), 1),
                 cv2.LINE_AA, _SHIFT)
    return img


def draw_skeleton(img: np.ndarray, kp: np.ndarray, scale: float | tuple[float, float] = 1.0,
                  offset: tuple[float, float] = (0.0, 0.0), min_score: float = MIN_SCORE,
                  unit: float = 1.0) -> np.ndarray:
    """Bones, then keypoints over them, of one frame [68, 3]; ``unit`` scales line widths
    and dot sizes (1: for an image about 480 px high). Returns ``img``."""
    draw_bones(img, kp, scale, offset, min_score, thickness=max(1, round(2 * unit)))
    return draw_keypoints(img, kp, scale, offset, min_score, radius=2.5 * unit)


def draw_box(img: np.ndarray, box: Sequence[float], scale: float | tuple[float, float] = 1.0,
             offset: tuple[float, float] = (0.0, 0.0), colour=BOX_COLOUR, thickness: int = 2,
             label: str = "", unit: float = 1.0) -> np.ndarray:
    """Rectangle for a box (x0, y0, x1, y1) in source pixels, x1/y1 exclusive (as
    ``mgpipe.crop`` cuts it: the pixels round(x0) <= x < round(x1) are inside), drawn
    ``thickness`` px wide on the outermost image pixels inside it, and ``label`` in small
    text just inside its top-left corner. Returns ``img``."""
    sx, sy = np.broadcast_to(np.asarray(scale, np.float64), (2,))
    x0, y0, x1, y1 = np.round(np.asarray(box, np.float64)).tolist()
    # pixel i covers [i, i + 1) in edge coordinates: scaling maps edges by the factor
    p0 = (int(round(x0 * sx + offset[0])), int(round(y0 * sy + offset[1])))
    p1 = (int(round(x1 * sx + offset[0])) - 1, int(round(y1 * sy + offset[1])) - 1)
    t = max(int(thickness), 1)
    # four filled bands, exact to the pixel (cv2's thick outlines are centred on the line)
    for a, b in (((p0[0], p0[1]), (p1[0], p0[1] + t - 1)), ((p0[0], p1[1] - t + 1), p1),
                 ((p0[0], p0[1]), (p0[0] + t - 1, p1[1])), ((p1[0] - t + 1, p0[1]), p1)):
        cv2.rectangle(img, a, b, colour, -1, cv2.LINE_8)
    if label:
        put_text(img, label, (p0[0] + t + 3, p0[1] + t + 3), 0.45 * unit, colour, anchor="top")
    return img


def _ascii(text: str) -> str:
    """Hershey fonts draw ASCII only: anything else becomes '?'."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))


def text_size(text: str, scale: float, thickness: int = 1) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of ``text`` in px."""
    (w, h), base = cv2.getTextSize(_ascii(text), cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return w, h, base


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour,
             thickness: int | None = None, anchor: str = "baseline") -> int:
    """``text`` with a black outline (legible on any frame) at ``org`` (its left end on the
    baseline, or with ``anchor="top"`` its top-left corner); Hershey simplex font, ``scale``
    as cv2.putText. Returns the x just after the text."""
    text = _ascii(text)
    t = thickness or _thick(scale)
    w, h, _ = text_size(text, scale, t)
    x, y = int(org[0]), int(org[1]) + (h if anchor == "top" else 0)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), t + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, t, cv2.LINE_AA)
    return x + w


def _percent(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return "<1%" if 0 < p < 0.005 else f"{100 * p:.0f}%"


def banner_height(unit: float = 1.0) -> int:
    """Height in px of the banner ``draw_banner`` fills, for text ``unit``."""
    return int(round(86 * unit))


def draw_frame_number(band: np.ndarray, frame: int | None, frames: int | None,
                      unit: float = 1.0) -> np.ndarray:
    """"frame i/n" (``frame`` 0-based) at the banner's top right (nothing when either is
    None). Returns ``band``."""
    if frame is not None and frames:
        pad, small = int(round(8 * unit)), 0.5 * unit
        text = f"frame {frame + 1}/{frames}"
        put_text(band, text, (band.shape[1] - pad - text_size(text, small, _thick(small))[0],
                              pad), small, (200, 200, 200), anchor="top")
    return band


def _thick(scale: float) -> int:
    return max(1, round(scale * 1.6))


def draw_banner(band: np.ndarray, top: Sequence[tuple[str, float]], frame: int | None = None,
                frames: int | None = None, hands: tuple[bool, bool] | None = None,
                colour_index: int | None = None, title: str = "", unit: float = 1.0
                ) -> np.ndarray:
    """The prediction banner on ``band`` (uint8 BGR [h, W, 3], h >= ``banner_height(unit)``,
    in place; its background is filled): row 1 the top prediction ``top[0]`` (label,
    probability in [0, 1]) large, after a swatch of its class colour (``colour_index``:
    its position in the class list), and on the right "frame i/n" (``frame`` 0-based);
    row 2 the 2nd and 3rd predictions small, and ``title`` (e.g. the clip id) on the right,
    cut from its left to the room there; row 3 the colour legend, where a hand
    that ``hands`` (left seen, right seen) says is missing in this frame reads "no L hand"
    in grey. ``top`` empty: "no prediction". Returns ``band``."""
    band[:] = BAND
    W = band.shape[1]
    pad = int(round(8 * unit))
    big, small = 0.85 * unit, 0.5 * unit
    y1 = pad
    x = pad
    if top:
        label, p = top[0]
        _, h, _ = text_size("Ag", big)
        if colour_index is not None:
            cv2.rectangle(band, (x, y1), (x + h, y1 + h), class_colour(colour_index), -1)
            x += h + pad
        x = put_text(band, f"{label}", (x, y1), big, (255, 255, 255), anchor="top")
        put_text(band, _percent(p), (x + pad, y1), big, (120, 230, 255), anchor="top")
    else:
        put_text(band, "no prediction", (x, y1), big, MISSING_COLOUR, anchor="top")
    draw_frame_number(band, frame, frames, unit)
    y2 = y1 + int(round(34 * unit))
    x = pad
    for k, (label, p) in enumerate(top[1:3], start=2):
        x = put_text(band, f"{k}. {label} {_percent(p)}", (x, y2), small, (210, 210, 210),
                     anchor="top") + 3 * pad
    if title:  # right-aligned on row 2, cut from the left to the room left
        text = _ascii(title)
        while text and text_size(text, small)[0] > W - x - pad:
            text = text[1:]
        if text:
            put_text(band, text, (W - pad - text_size(text, small)[0], y2), small,
                     (200, 200, 200), anchor="top")
    y3 = y2 + int(round(22 * unit))
    x = pad
    names = ["face", "body", "L hand", "R hand"]
    for part, name in enumerate(names):
        seen = True if hands is None or part < 2 else hands[part - 2]
        colour = PART_COLOURS[part] if seen else MISSING_COLOUR
        _, h, _ = text_size("A", small)
        cv2.circle(band, (x + h // 2, y3 + h // 2), max(2, h // 2), colour, -1, cv2.LINE_AA)
        x = put_text(band, name if seen else f"no {name}", (x + h + pad // 2, y3), small,
                     colour, anchor="top") + 2 * pad
    _, h, _ = text_size("A", small)
    cv2.rectangle(band, (x, y3), (x + h, y3 + h), BOX_COLOUR, 1)
    put_text(band, "crop", (x + h + pad // 2, y3), small, BOX_COLOUR, anchor="top")
    return band


def _label_index(label, class_names: Sequence[str]) -> int | None:
    """Class index of a segment label (an index or a class name); None: no class."""
    if label is None or (isinstance(label, float) and math.isnan(label)) or label == "":
        return None
    if isinstance(label, (int, np.integer)):
        return int(label) if 0 <= int(label) < len(class_names) else None
    try:
        return list(class_names).index(str(label))
    except ValueError:
        return None


def timeline_strip(width: int, height: int, segments: Iterable[tuple], class_names: Sequence[str],
                   current: int | None = None, span: tuple[int, int] | None = None,
                   unit: float = 1.0) -> np.ndarray:
    """A timeline strip, uint8 BGR [height, width, 3], for a long video's detections.

    segments: (start_frame, end_frame, label, score) per detection, frames [start, end) in
    the video's numbering, label a class name or an index into ``class_names`` (None or ""
    for none: drawn as a gap), score in [0, 1]; later segments are drawn over earlier ones.
    span: the frames [first, last) the strip's width covers (default: 0 to the largest
    end_frame). Each segment is a bar of its class colour (``class_colour``), blended into
    the background by its score (a sure detection is bright, a doubtful one dim), with its
    label when the bar is wide enough; ``current`` (a frame) draws a white cursor and the
    label under it at the strip's top left. Pure: no state, plain numbers in."""
    strip = np.empty((int(height), int(width), 3), np.uint8)
    strip[:] = BAND
    segments = [tuple(s) for s in segments]
    if span is None:
        span = (0, max([int(s[1]) for s in segments], default=1))
    first, last = int(span[0]), max(int(span[1]), int(span[0]) + 1)
    per_frame = width / (last - first)

    def x_of(f: float) -> int:
        return int(round((f - first) * per_frame))

    pad = max(1, int(round(3 * unit)))
    small = 0.42 * unit
    # a text row ("now: label p") over the bar row; the cursor stays in the bar row
    bar0, bar1 = min(text_size("Ag", small)[1] + 3 * pad, height // 2), height - pad
    for start, end, label, score in segments:
        k = _label_index(label, class_names)
        x0, x1 = max(x_of(start), 0), min(max(x_of(end), x_of(start) + 1), width)
        if x1 <= 0 or x0 >= width or k is None:
            continue
        s = float(np.clip(score if score is not None and np.isfinite(score) else 0, 0, 1))
        alpha = 0.3 + 0.7 * s
        colour = tuple(int(round(alpha * c + (1 - alpha) * b))
                       for c, b in zip(class_colour(k), BAND))
        cv2.rectangle(strip, (x0, bar0), (x1 - 1, bar1), colour, -1)
        name = class_names[k]
        w, h, _ = text_size(name, small, 1)
        if w + 2 * pad <= x1 - x0 and h + 2 * pad <= bar1 - bar0:
            cv2.putText(strip, _ascii(name), (x0 + pad, (bar0 + bar1 + h) // 2),
                        cv2.FONT_HERSHEY_SIMPLEX, small, (0, 0, 0), 1, cv2.LINE_AA)
    if current is not None:
        draw_timeline_cursor(strip, segments, class_names, current, (first, last), unit)
    return strip


def draw_timeline_cursor(strip: np.ndarray, segments: Sequence[tuple], class_names: Sequence[str],
                         current: int, span: tuple[int, int], unit: float = 1.0) -> np.ndarray:
    """The moving part of ``timeline_strip``, on a strip it drew without ``current``: the
    cursor at frame ``current`` in the bar row and "now: <label> <p>" (the last segment
    holding that frame) in the text row above it. Returns ``strip``."""
    height, width = strip.shape[:2]
    first, last = int(span[0]), max(int(span[1]), int(span[0]) + 1)
    pad = max(1, int(round(3 * unit)))
    small = 0.42 * unit
    bar0 = min(text_size("Ag", small)[1] + 3 * pad, height // 2)
    now = [s for s in segments if int(s[0]) <= current < int(s[1])
           and _label_index(s[2], class_names) is not None]
    text = f"now: {class_names[_label_index(now[-1][2], class_names)]} " \
           f"{_percent(float(now[-1][3]))}" if now else "now: -"
    put_text(strip, text, (pad * 2, pad), small, (230, 230, 230), anchor="top")
    cx = min(max(int(round((current + 0.5 - first) * width / (last - first))), 0), width - 1)
    cv2.line(strip, (cx, bar0), (cx, height - 1), (255, 255, 255), max(1, round(2 * unit)))
    tri = np.array([[cx - 2 * pad, bar0], [cx + 2 * pad, bar0], [cx, bar0 + 2 * pad]], np.int32)
    cv2.fillConvexPoly(strip, tri, (255, 255, 255), cv2.LINE_AA)
    return strip


def timeline_height(unit: float = 1.0) -> int:
    """Height in px of the timeline band for text ``unit``."""
    return int(round(44 * unit))


# ---- frames in, video out --------------------------------------------------------------------

def output_geometry(width: int, height: int, min_size: int = 480, max_size: int = 1280
                    ) -> tuple[float, int, int]:
    """(scale, width, height) of the video band for a source frame: scaled so its short side
    is >= ``min_size`` and its long side <= ``max_size`` (the latter wins when both cannot
    hold), 1 when it already fits; even sizes (what codecs want)."""
    s = 1.0
    if min(width, height) < min_size:
        s = min_size / min(width, height)
    if max(width, height) * s > max_size:
        s = max_size / max(width, height)
    w, h = max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)
    return s, w, h


# A render that could not be written (the message says why): the video module's error, which
# its writer (AtomicVideoWriter) raises too.
RenderError = VideoError


def video_frames(video: str | os.PathLike, start_frame: int = 0, frames: int | None = None
                 ) -> tuple[float, Iterator[np.ndarray]]:
    """(fps, iterator of BGR frames [H, W, 3]) of ``video``'s frames [start, start + frames)
    (``frames`` None: to its end), decoded sequentially one at a time (frames before the
    start are grabbed, not converted; no seeking). Raises VideoError/FileNotFoundError
    when it cannot be opened."""
    from mgpipe.video import open_capture, scan_frames

    cap = open_capture(video)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    start = int(start_frame)
    stop = None if frames is None or frames < 0 else start + int(frames)

    def gen() -> Iterator[np.ndarray]:
        try:
            for _, frame in scan_frames(cap, lambda i: i >= start, stop):
                yield frame
        finally:
            cap.release()

    return (fps if fps > 0 else 25.0), gen()


@dataclass
class RenderInfo:
    """What :func:`render_clip` wrote: the file, its frames, size (w, h) and fps, and the
    seconds it took (decoding, drawing and encoding)."""
    path: Path
    frames: int
    width: int
    height: int
    fps: float
    seconds: float

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.seconds / max(self.frames, 1)


def render_clip(path: str | os.PathLike, kp: np.ndarray | None,
                top: Sequence[tuple[str, float]] = (), *, classes: Sequence[str] = (),
                video: str | os.PathLike | None = None, start_frame: int = 0,
                frames: int | None = None, box: Sequence[float] | None = None,
                crop_margin: float | None = None, segments: Iterable[tuple] | None = None,
                frame_size: tuple[int, int] | None = None, fps: float | None = None,
                title: str = "", min_size: int = 480, max_size: int = 1280,
                min_score: float = MIN_SCORE,
                frame_top: Callable[[int], Sequence[tuple[str, float]]] | None = None
                ) -> RenderInfo:
    """Write ``path`` (an .mp4): the clip with its keypoints, crop box and prediction drawn
    on every frame.

    kp: float32 [T, 68, 3] (x, y, score) in source pixels, frame t of the clip (frames past
        T, or all with None, get no skeleton).
    top: the best predictions, (label, probability) most probable first (3 are shown);
        ``classes``: the class list (for the label's colour swatch and the timeline).
    video: the source; its frames [start_frame, start_frame + frames) are drawn (``frames``
        None: to its end). Without it: a blank canvas of ``frame_size`` (w, h), default the
        keypoints' extent (``mgpipe.manifest.keypoint_extent``), ``frames`` = T, at ``fps``
        (default 25).
    box: the crop box (x0, y0, x1, y1) in source px; or ``crop_margin``: computed as the
        crop stage does (``mgpipe.crop.saliency_box`` of the keypoints and frame size with
        this margin; the whole frame, labelled so, when no salient keypoint is seen).
    segments: the timeline (see ``timeline_strip``, frames numbered as the video's); the
        strip covers the rendered frames and its cursor follows.
    frame_top: for an untrimmed video, frame i (of the rendered ones) -> its own ``top``
        (the window-averaged prediction there), shown instead of ``top``.
    Memory stays at one frame whatever the length. Raises RenderError (= VideoError) /
    OSError; nothing is left at ``path`` then."""
    t0 = time.perf_counter()
    kp = None if kp is None else np.asarray(kp, np.float32)
    start = int(start_frame)
    if video:
        src_fps, source = video_frames(video, start, frames)
        fps = fps or src_fps
        first = next(source, None)
        if first is None:
            raise RenderError(f"{video}: no frame decodes from frame {start} on")
        h, w = first.shape[:2]
        stream = _chain(first, source)
        total = frames if frames is not None and frames >= 0 else None
    else:
        if kp is None:
            raise RenderError("neither a video nor keypoints to draw")
        if frame_size is None:
            from mgpipe.manifest import keypoint_extent
            frame_size = keypoint_extent(kp)
        w, h = int(frame_size[0]), int(frame_size[1])
        total = len(kp) if frames is None or frames < 0 else int(frames)
        blank = np.empty((h, w, 3), np.uint8)
        blank[:] = BLANK
        stream = (blank for _ in range(total))
        start = 0
        fps = fps or 25.0
    box_label = "crop"
    if box is None and crop_margin is not None and kp is not None and len(kp):
        from mgpipe.crop import saliency_box
        box, fallback = saliency_box(kp, (w, h), float(crop_margin))
        box_label = "crop: whole frame (no salient keypoint)" if fallback else "crop"
    _, vw, vh = output_geometry(w, h, min_size, max_size)
    scale = (vw / w, vh / h)  # the two differ by < 1 px over the frame (even sizes)
    unit = float(np.clip(min(vw, vh) / 480, 0.6, 2.5))
    bh = banner_height(unit)
    segs = [tuple(x) for x in segments] if segments is not None else None
    th = timeline_height(unit) if segs is not None else 0
    canvas = np.empty((bh + vh + th, vw, 3), np.uint8)
    colour_index = _label_index(top[0][0], classes) if top and classes else None
    n_total = total if total is not None else max(probe_video(video).frames - start, 1)
    banners: dict = {}
    strip = None
    with AtomicVideoWriter(path, fps, (vw, bh + vh + th)) as out:
        for i, frame in enumerate(stream):
            f = kp[i] if kp is not None and i < len(kp) else None
            view = canvas[bh:bh + vh]
            view[:] = frame if (vw, vh) == (w, h) else \
                cv2.resize(frame, (vw, vh), interpolation=cv2.INTER_LINEAR)
            if box is not None:
                draw_box(view, box, scale, thickness=max(1, round(2 * unit)), label=box_label,
                         unit=unit)
            if f is not None:
                draw_skeleton(view, f, scale, min_score=min_score, unit=unit)
            # the banner and the strip change little from frame to frame: drawn once per
            # state, then only the frame number and the cursor are drawn on a copy
            hands = hands_seen(f, min_score) if f is not None else (False, False)
            now, key = top, hands
            if frame_top is not None:
                now = [(label, round(float(q), 2)) for label, q in frame_top(i)]
                key = (hands, tuple(now))
                colour_index = _label_index(now[0][0], classes) if now and classes else None
            if key not in banners:
                if len(banners) > 256:  # a long video: keep memory flat
                    banners.clear()
                banners[key] = draw_banner(np.empty_like(canvas[:bh]), now, None, None, hands,
                                           colour_index, title, unit)
            canvas[:bh] = banners[key]
            draw_frame_number(canvas[:bh], i, max(n_total, i + 1), unit)
            if th:
                span = (start, start + max(n_total, i + 1))
                if strip is None or span != strip[0]:
                    strip = (span, timeline_strip(vw, th, segs, classes, None, span, unit))
                canvas[bh + vh:] = strip[1]
                draw_timeline_cursor(canvas[bh + vh:], segs, classes, start + i, span, unit)
            out.write(canvas)
        if out.count == 0:
            raise RenderError("no frame to draw")
        n = out.count
        written = out.close()
    return RenderInfo(written, n, vw, bh + vh + th, float(fps), time.perf_counter() - t0)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


# ---- mgpipe predict --render -----------------------------------------------------------------

RENDER_COLUMNS = ["clip", "file", "frames", "width", "height", "fps", "seconds", "ms_per_frame",
                  "problem"]


def output_name(clip_id: str) -> str:
    """``<clip_id>.mp4`` relative to the output folder; a clip id's folders are kept (a
    folder input's ``sub/clip``) but '..', '.' and empty parts are dropped, so nothing is
    written outside it."""
    parts = [p for p in str(clip_id).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts or ["clip"]) + ".mp4"


def render_predictions(out: str | os.PathLike, items: Sequence, fused: np.ndarray,
                       classes: Sequence[str], crop_margin: float | None = None,
                       progress: bool = True, warn=None, timelines: dict | None = None):
    """``<out>/<clip>.mp4`` for each predicted clip (``mgpipe predict --render``): items
    are mgpipe.predict's ``Prepared`` (clip, frames, kp, rgb), ``fused`` their fused
    probabilities [N, C]; the banner shows the top 3, the crop box is drawn where the RGB
    branches got a crop (``crop_margin``: the bundle's rgb.margin). A clip that fails is
    reported through ``warn(message)`` and its row's ``problem``; the others go on.
    ``timelines``: clip id -> its segments (see ``timeline_strip``), drawn under the clip.
    Returns a pandas DataFrame with ``RENDER_COLUMNS``, one row per item."""
    import pandas as pd
    from tqdm import tqdm

    rows = []
    fused = np.asarray(fused, np.float64).reshape(len(items), len(classes))
    for it, p in tqdm(list(zip(items, fused)), desc="render", unit="clip", disable=not progress):
        c = it.clip
        name = output_name(c.clip_id)
        top = []
        if np.isfinite(p).all():
            order = np.argsort(-p, kind="stable")[:3]
            top = [(classes[k], float(p[k])) for k in order]
        row = dict.fromkeys(RENDER_COLUMNS, "")
        row.update(clip=c.clip_id, file=name)
        try:
            info = render_clip(Path(out) / name, it.kp, top, classes=classes,
                               video=c.video or None, start_frame=c.start_frame,
                               frames=it.frames if c.video else None,
                               crop_margin=crop_margin if it.rgb is not None else None,
                               segments=(timelines or {}).get(c.clip_id), title=c.clip_id)
            row.update(frames=info.frames, width=info.width, height=info.height,
                       fps=round(info.fps, 3), seconds=round(info.seconds, 4),
                       ms_per_frame=round(info.ms_per_frame, 3))
        except Exception as e:  # noqa: BLE001 - one clip's render never stops the others
            text = str(e) if isinstance(e, (ValueError, RuntimeError, OSError)) and str(e) \
                else f"{type(e).__name__}: {e}"
            row.update(file="", problem=f"not rendered: {text}")
            if warn is not None:
                warn(f"{c.clip_id}: not rendered: {text}")
        rows.append(row)
    return pd.DataFrame(rows, columns=RENDER_COLUMNS)

"""The 68-keypoint layout shared by every source (SPEC section 4).

Index ranges:
    0-24   the 25 upper-body landmarks of MediaPipe Pose, in its order
    25     neck, the midpoint of the shoulders
    26-46  left hand, 21 MediaPipe hand landmarks (the subject's left)
    47-67  right hand, 21 MediaPipe hand landmarks

Each keypoint is (x, y, score) in pixels of the source frame; a missing keypoint has score 0.
Left/right always mean the subject's own side, as in MediaPipe: in an unmirrored frame of a
person facing the camera, the left shoulder has the larger x.

Mapping tables from other skeletons are dicts ``{our_index: source_index}``; ``map_keypoints``
applies one and fills the derived neck. ``LAYOUTS`` names every known source skeleton
(kinect_v1, kinect_v2, coco17, openpose18, openpose_body25, openpose137, mediapipe_pose33) with
its joint count; ``table_from_names`` builds a table from a user's ``{our name: source index}``.
"""
from __future__ import annotations

import numpy as np

POSE_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip",
]
HAND_NAMES = [
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
]
NECK = 25
LEFT_HAND = 26   # first index of the left hand block
RIGHT_HAND = 47  # first index of the right hand block
NUM_KEYPOINTS = 68

NAMES: list[str] = (
    POSE_NAMES + ["neck"]
    + [f"left_hand_{n}" for n in HAND_NAMES]
    + [f"right_hand_{n}" for n in HAND_NAMES]
)
INDEX: dict[str, int] = {n: i for i, n in enumerate(NAMES)}

POSE = list(range(0, 25))
HANDS = list(range(LEFT_HAND, NUM_KEYPOINTS))
FACE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
ARMS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]

# Pairs swapped by a horizontal flip.
_POSE_FLIP = [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
              (17, 18), (19, 20), (21, 22), (23, 24)]
FLIP_PAIRS: list[tuple[int, int]] = _POSE_FLIP + [(LEFT_HAND + i, RIGHT_HAND + i) for i in range(21)]


def flip_index() -> np.ndarray:
    """Permutation p [68] such that kp_flipped[:, p] relabels sides after mirroring x."""
    perm = np.arange(NUM_KEYPOINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


_POSE_BONES = [(0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
               (0, 9), (0, 10),  # mouth joins the nose: keeps the graph connected
               (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
               (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
               (11, 23), (12, 24), (23, 24)]
_NECK_BONES = [(NECK, 0), (NECK, 11), (NECK, 12)]
HAND_BONES_LOCAL = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8),
                    (5, 9), (9, 10), (10, 11), (11, 12), (9, 13), (13, 14), (14, 15), (15, 16),
                    (13, 17), (0, 17), (17, 18), (18, 19), (19, 20)]
# The pose wrist joins the hand's own wrist, so the skeleton graph is one connected piece.
BONES: list[tuple[int, int]] = (
    _POSE_BONES + _NECK_BONES + [(15, LEFT_HAND), (16, RIGHT_HAND)]
    + [(LEFT_HAND + a, LEFT_HAND + b) for a, b in HAND_BONES_LOCAL]
    + [(RIGHT_HAND + a, RIGHT_HAND + b) for a, b in HAND_BONES_LOCAL]
)


def adjacency(self_loops: bool = True, normalize: bool = True) -> np.ndarray:
    """Symmetric adjacency [68, 68] from BONES (row-normalised when ``normalize``)."""
    a = np.zeros((NUM_KEYPOINTS, NUM_KEYPOINTS), np.float32)
    for i, j in BONES:
        a[i, j] = a[j, i] = 1.0
    if self_loops:
        a += np.eye(NUM_KEYPOINTS, dtype=np.float32)
    if normalize:
        a /= np.maximum(a.sum(1, keepdims=True), 1e-6)
    return a


# ---- mapping tables: {our index: source index} -------------------------------------------

# COCO-17: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (no knees/ankles here).
FROM_COCO17: dict[int, int] = {0: 0, 2: 1, 5: 2, 7: 3, 8: 4, 11: 5, 12: 6, 13: 7, 14: 8,
                               15: 9, 16: 10, 23: 11, 24: 12}

# OpenPose as iMiGUE ships it: 137 = BODY_25 (0-24) + face 70 (25-94) + left hand 21 (95-115)
# + right hand 21 (116-136). OpenPose hand points use MediaPipe's hand order. Face points are
# the iBUG-68 scheme (+2 pupils): 36/39 subject's right eye outer/inner, 42/45 left eye
# inner/outer, 48/54 right/left mouth corner. Pose knuckles 17-22 come from the hand model.
OP_FACE, OP_LHAND, OP_RHAND = 25, 95, 116
FROM_OPENPOSE137: dict[int, int] = {
    0: 0, NECK: 1, 12: 2, 14: 3, 16: 4, 11: 5, 13: 6, 15: 7, 24: 9, 23: 12,
    5: 15, 2: 16, 8: 17, 7: 18,
    1: OP_FACE + 42, 3: OP_FACE + 45, 4: OP_FACE + 39, 6: OP_FACE + 36,
    9: OP_FACE + 54, 10: OP_FACE + 48,
    17: OP_LHAND + 17, 19: OP_LHAND + 5, 21: OP_LHAND + 2,
    18: OP_RHAND + 17, 20: OP_RHAND + 5, 22: OP_RHAND + 2,
    **{LEFT_HAND + i: OP_LHAND + i for i in range(21)},
    **{RIGHT_HAND + i: OP_RHAND + i for i in range(21)},
}

# Kinect v1, 20 joints (0-based here: 0 head, 1 shoulder_center, 2 spine, 3 hip_center,
# 4-7 left shoulder/elbow/wrist/hand, 8-11 right ..., 12-15 left hip/knee/ankle/foot, 16-19
# right ...). The head centre stands in for the nose, the hand centre for the middle knuckle.
FROM_KINECT20: dict[int, int] = {0: 0, NECK: 1, 11: 4, 13: 5, 15: 6, LEFT_HAND + 9: 7,
                                 12: 8, 14: 9, 16: 10, RIGHT_HAND + 9: 11, 23: 12, 24: 16}

# Kinect v2, 25 joints in NTU RGB+D order (0-based): 0 spine base, 1 spine mid, 2 neck, 3 head,
# 4-7 left shoulder/elbow/wrist/hand, 8-11 right ..., 12-15 left hip/knee/ankle/foot, 16-19
# right ..., 20 spine shoulder, 21 left hand tip, 22 left thumb, 23 right hand tip, 24 right
# thumb. As for Kinect v1: the head stands in for the nose, the hand centre for the middle
# knuckle; the hand tip is the middle fingertip, the thumb joint the thumb tip. Our neck (the
# shoulders' midpoint) is the spine-shoulder joint, which sits there; Kinect's own "neck" (2)
# lies higher, between the shoulders and the head, and is left out.
FROM_KINECT25: dict[int, int] = {
    0: 3, NECK: 20,
    11: 4, 13: 5, 15: 6, LEFT_HAND + 9: 7, LEFT_HAND + 12: 21, LEFT_HAND + 4: 22,
    12: 8, 14: 9, 16: 10, RIGHT_HAND + 9: 11, RIGHT_HAND + 12: 23, RIGHT_HAND + 4: 24,
    23: 12, 24: 16,
}

# OpenPose BODY_25 (0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left ..., 8 mid hip,
# 9-11 right hip/knee/ankle, 12-14 left ..., 15 right eye, 16 left eye, 17 right ear, 18 left
# ear, 19-24 feet): the first 25 points of FROM_OPENPOSE137, which starts with BODY_25.
FROM_OPENPOSE_BODY25: dict[int, int] = {o: s for o, s in FROM_OPENPOSE137.items() if s < 25}

# OpenPose COCO-18, as ST-GCN's Kinetics skeletons ship it: 0 nose, 1 neck, 2-4 right
# shoulder/elbow/wrist, 5-7 left ..., 8-10 right hip/knee/ankle, 11-13 left ..., 14 right eye,
# 15 left eye, 16 right ear, 17 left ear.
FROM_OPENPOSE18: dict[int, int] = {0: 0, NECK: 1, 12: 2, 14: 3, 16: 4, 11: 5, 13: 6, 15: 7,
                                   24: 8, 23: 11, 5: 14, 2: 15, 8: 16, 7: 17}

# MediaPipe Pose has 33 landmarks; ours are its first 25.
FROM_MEDIAPIPE_POSE33: dict[int, int] = {i: i for i in range(25)}

# Every named source skeleton: name -> (number of source joints, table). Left/right are the
# subject's own in all of them (as in ours).
LAYOUTS: dict[str, tuple[int, dict[int, int]]] = {
    "kinect_v1": (20, FROM_KINECT20),
    "kinect_v2": (25, FROM_KINECT25),
    "coco17": (17, FROM_COCO17),
    "openpose18": (18, FROM_OPENPOSE18),
    "openpose_body25": (25, FROM_OPENPOSE_BODY25),
    "openpose137": (137, FROM_OPENPOSE137),
    "mediapipe_pose33": (33, FROM_MEDIAPIPE_POSE33),
}
# Layouts whose joints come as camera-space 3D (x, y, z) metres from a depth sensor.
KINECT_LAYOUTS = ("kinect_v1", "kinect_v2")


def table_from_names(mapping: dict[str, int], joints: int | None = None) -> dict[int, int]:
    """A mapping table from a user's ``{our keypoint name: source joint index}`` (names from
    ``NAMES``, e.g. ``{"left_wrist": 7, "neck": 1}``; indices from 0). ``joints``, when given,
    is the source's joint count and bounds the indices. Raises ValueError naming every unknown
    name (with the valid ones) or bad index."""
    if not mapping:
        raise ValueError(f"the mapping is empty; give {{our name: source index}} with names "
                         f"from: {', '.join(NAMES)}")
    unknown = [n for n in mapping if n not in INDEX]
    if unknown:
        raise ValueError(f"unknown keypoint name(s) {unknown}; valid names: {', '.join(NAMES)}")
    bad = {n: i for n, i in mapping.items()
           if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
           or (joints is not None and i >= joints)}
    if bad:
        bound = f"0..{joints - 1}" if joints is not None else ">= 0"
        raise ValueError(f"source index(es) {bad} out of range: indices count from 0 and must be "
                         f"{bound}")
    return {INDEX[n]: int(i) for n, i in mapping.items()}


def map_keypoints(src: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Map source keypoints [..., J, 3] (x, y, score) into the layout [..., 68, 3].

    Unmapped slots get zeros (score 0). When the table has no neck, the neck is the
    midpoint of the shoulders with the smaller of their scores.
    """
    src = np.asarray(src, dtype=np.float32)
    out = np.zeros(src.shape[:-2] + (NUM_KEYPOINTS, 3), np.float32)
    ours = np.fromiter(table.keys(), int)
    theirs = np.fromiter(table.values(), int)
    out[..., ours, :] = src[..., theirs, :]
    if NECK not in table:
        fill_neck(out)
    return out


def fill_neck(kp: np.ndarray) -> np.ndarray:
    """Set the neck [..., 25, :] from the shoulders in place; returns ``kp``."""
    ls, rs = kp[..., 11, :], kp[..., 12, :]
    score = np.minimum(ls[..., 2], rs[..., 2])
    kp[..., NECK, :2] = np.where(score[..., None] > 0, (ls[..., :2] + rs[..., :2]) / 2, 0)
    kp[..., NECK, 2] = score
    return kp


def flip_bone_index(bones: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Permutation [len(bones)] that relabels limb channels after a horizontal flip."""
    bones = BONES if bones is None else bones
    p = flip_index()
    where = {frozenset(b): i for i, b in enumerate(bones)}
    return np.array([where[frozenset((p[i], p[j]))] for i, j in bones], np.int64)


def clean_keypoints(kp: np.ndarray) -> tuple[np.ndarray, int]:
    """Keypoints [..., 68, 3] with every non-finite entry made harmless: a keypoint whose x, y
    or score is NaN/inf (or whose score is negative) gets (0, 0, 0), i.e. unseen.

    Called wherever keypoints enter the pipeline (provided by a dataset, or a detector), so
    one NaN cannot reach a model. Returns (cleaned float32 copy, number of keypoints cleaned).
    """
    kp = np.array(kp, dtype=np.float32, copy=True)
    bad = ~np.isfinite(kp).all(-1) | (np.nan_to_num(kp[..., 2], nan=0.0) < 0)
    n = int(bad.sum())
    if n:
        kp[bad] = 0.0
    return kp, n

import numpy as np

from mgpipe import layout


def test_names_and_blocks():
    assert len(layout.NAMES) == layout.NUM_KEYPOINTS == 68
    assert len(set(layout.NAMES)) == 68
    assert layout.NAMES[0] == "nose" and layout.NAMES[24] == "right_hip"
    assert layout.NAMES[25] == "neck"
    assert layout.NAMES[26] == "left_hand_wrist" and layout.NAMES[46] == "left_hand_pinky_tip"
    assert layout.NAMES[47] == "right_hand_wrist" and layout.NAMES[67] == "right_hand_pinky_tip"


def test_flip_pairs_are_left_right_and_an_involution():
    for a, b in layout.FLIP_PAIRS:
        na, nb = layout.NAMES[a], layout.NAMES[b]
        assert "left" in na and "right" in nb and na.replace("left", "right") == nb
    p = layout.flip_index()
    assert np.array_equal(p[p], np.arange(68))
    unpaired = {i for i in range(68) if p[i] == i}
    assert unpaired == {0, 25}  # nose and neck sit on the midline


def test_bones_connect_every_keypoint():
    seen = {0}
    adj = {i: set() for i in range(68)}
    for i, j in layout.BONES:
        assert 0 <= i < 68 and 0 <= j < 68 and i != j
        adj[i].add(j)
        adj[j].add(i)
    stack = [0]
    while stack:
        for n in adj[stack.pop()] - seen:
            seen.add(n)
            stack.append(n)
    assert seen == set(range(68))
    raw = layout.adjacency(normalize=False)
    assert np.array_equal(raw, raw.T) and np.all(np.diag(raw) == 1)
    assert np.allclose(layout.adjacency().sum(1), 1)


def test_bones_flip_onto_bones():
    p = layout.flip_index()
    bones = {frozenset(b) for b in layout.BONES}
    assert {frozenset((p[i], p[j])) for i, j in layout.BONES} == bones


def test_coco17_mapping_and_derived_neck():
    src = np.zeros((17, 3), np.float32)
    src[5] = [100, 50, 0.9]   # left shoulder
    src[6] = [60, 52, 0.8]    # right shoulder
    src[15] = [1, 1, 1]       # left knee: not in our layout
    kp = layout.map_keypoints(src, layout.FROM_COCO17)
    assert kp.shape == (68, 3)
    assert np.allclose(kp[11], [100, 50, 0.9]) and np.allclose(kp[12], [60, 52, 0.8])
    assert np.allclose(kp[25], [80, 51, 0.8])
    assert kp[26:, 2].sum() == 0


def test_openpose137_mapping_keeps_sides_and_hands():
    src = np.zeros((5, 137, 3), np.float32)
    src[:, :, 0] = np.arange(137)          # x = source index, to read the mapping back
    src[:, :, 2] = 1
    kp = layout.map_keypoints(src, layout.FROM_OPENPOSE137)
    assert kp.shape == (5, 68, 3)
    assert kp[0, layout.INDEX["left_shoulder"], 0] == 5     # OpenPose LShoulder
    assert kp[0, layout.INDEX["right_wrist"], 0] == 4       # OpenPose RWrist
    assert kp[0, layout.INDEX["neck"], 0] == 1
    assert np.array_equal(kp[0, 26:47, 0], np.arange(95, 116))    # left hand block
    assert np.array_equal(kp[0, 47:68, 0], np.arange(116, 137))   # right hand block


def test_kinect20_mapping():
    src = np.zeros((20, 3), np.float32)
    src[:, 0] = np.arange(20)
    src[:, 2] = 1
    kp = layout.map_keypoints(src, layout.FROM_KINECT20)
    assert kp[layout.INDEX["left_shoulder"], 0] == 4
    assert kp[layout.INDEX["right_wrist"], 0] == 10
    assert kp[layout.INDEX["neck"], 0] == 1
    assert (kp[:, 2] > 0).sum() == len(layout.FROM_KINECT20)

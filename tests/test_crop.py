"""Saliency-guided crop boxes: hand-checked cases."""
import numpy as np

from mgpipe.crop import crop_frames, motion_energy, saliency_box


def still_person(t=20):
    """A person in a 200x100 frame: every keypoint seen, standing still at x 40..60."""
    kp = np.zeros((t, 68, 3), np.float32)
    kp[..., 0] = np.linspace(40, 60, 68)
    kp[..., 1] = 50
    kp[..., 2] = 1
    return kp


def test_motion_energy_counts_seen_displacement_only():
    kp = still_person(3)
    kp[:, 26, 0] = [10, 13, 13]   # moves 3 px, then stays
    kp[1, 47, 2] = 0              # unseen in the middle frame: no energy across the gap
    kp[:, 47, 0] = [0, 50, 100]
    e = motion_energy(kp)
    assert e[26] == 3 and e[47] == 0 and e[0] == 0


def test_box_follows_the_moving_hand_and_stays_square_inside_frame():
    kp = still_person()
    kp[:, 47:68, 0] = 150 + 10 * np.sin(np.arange(20))[:, None]   # right hand waves at x~150
    box, fallback = saliency_box(kp, (200, 100), margin=0.1, min_size=0.1)
    x0, y0, x1, y1 = box
    assert not fallback
    assert abs((x1 - x0) - (y1 - y0)) < 1e-3          # square
    assert 0 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 100
    assert x0 < 150 < x1                             # the moving hand is inside
    assert (x0 + x1) / 2 > 100                       # and it pulls the box towards it


def test_no_keypoints_falls_back_to_the_whole_frame():
    kp = np.zeros((5, 68, 3), np.float32)
    box, fallback = saliency_box(kp, (64, 48))
    assert fallback and list(box) == [0, 0, 64, 48]


def test_crop_frames_shape_and_content():
    frames = np.zeros((4, 20, 30, 3), np.uint8)
    frames[:, 5:15, 10:20] = 255                      # a white square
    out = crop_frames(frames, np.array([10, 5, 20, 15], np.float32), 8)
    assert out.shape == (4, 8, 8, 3) and out.min() == 255

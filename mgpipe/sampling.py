"""Frame sampling shared by the crop and heatmap stages."""
from __future__ import annotations

import numpy as np


def uniform_indices(num_frames: int, length: int) -> np.ndarray:
    """Indices [length] (int64) of ``length`` frames spread uniformly over ``num_frames``.

    Takes the centre of each of ``length`` equal segments; repeats frames when the clip is
    shorter than ``length``. Deterministic (no jitter): training augmentation adds its own.
    """
    if num_frames <= 0:
        raise ValueError(f"cannot sample from a clip with {num_frames} frames")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    centres = (np.arange(length) + 0.5) * num_frames / length
    return np.clip(np.floor(centres).astype(np.int64), 0, num_frames - 1)

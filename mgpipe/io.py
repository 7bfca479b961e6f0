"""Small I/O helpers: atomic writes so an interrupted stage never leaves a file that looks
finished."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


SKIP_COLUMNS = ["clip_id", "stage", "reason"]  # every <stage>_skipped.csv
_TEXT_COLUMNS = ("clip_id", "subject", "split", "label", "video")


def read_manifest(path: str | os.PathLike):
    """data/interim/manifest.csv as a DataFrame; ids and labels stay text (clip "007" is not
    the number 7) and an empty label stays "" (test clips)."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, dtype={c: str for c in _TEXT_COLUMNS})


def read_skips(paths) -> dict[str, str]:
    """clip_id -> "stage: reason" from the skipped-clip CSVs among ``paths`` that exist (the
    first reason recorded for a clip wins)."""
    import pandas as pd

    out: dict[str, str] = {}
    for p in paths:
        if Path(p).is_file() and Path(p).stat().st_size:
            t = pd.read_csv(p, dtype=str, keep_default_na=False)
            # <stage>_skipped.csv name their stage; prepare's skipped.csv has no stage column
            stage = t["stage"] if "stage" in t else ["prepare"] * len(t)
            for cid, st, reason in zip(t["clip_id"], stage, t["reason"]):
                out.setdefault(cid, f"{st}: {reason}")
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv_atomic(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def save_torch_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically, with identical bytes for identical content: saved through
    a file object, so the archive's inner folder is the fixed "archive" rather than the name
    of the temporary file."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


# How heatmaps.h5 and rgb.h5 store a clip: one chunk per clip (a clip is always read whole), zstd
# level 1 (HDF5 filter 32015, from the hdf5plugin package). `python bench/loader.py --codecs`,
# 68 x 48 x 56 x 56 volumes of mgpipe.synth's keypoints, one process on a shared 2-core
# machine (two runs), write / read+decompress ms per clip and MB per clip: zstd 1 5-7 /
# 3.3-4.3 / 0.054; gzip 1 (the previous default) 26-53 / 13-20 / 0.108; lzf 21-36 / 24-36 /
# 0.19; lz4 4-6 / 3.2-3.6 / 0.11; blosc-lz4 3-9 / 2.6-8 / 0.12; none 10.2 MB. Per-frame
# chunks are no faster and larger. bench/heatmaps.py: the stage end to end (render + write)
# 2.5x the gzip-1 stage in one process, 3.3-5.3x with 2 worker processes (stages/heatmaps.py
# renders and compresses in workers; h5py holds the GIL while compressing, so a writer
# thread gains nothing).
H5_COMPRESSION = "zstd"
H5_LEVEL = 1


def h5_filter(compression: str | None = H5_COMPRESSION, level: int | None = H5_LEVEL) -> dict:
    """h5py ``create_dataset`` keyword arguments for a compression: "zstd" (hdf5plugin; level
    1-22), "gzip" (level 0-9), "lzf", or None (uncompressed)."""
    if compression is None:
        return {}
    if compression == "zstd":
        try:
            import hdf5plugin
        except ImportError as e:  # pragma: no cover - a dependency of the project
            raise ImportError("heatmaps.h5 and rgb.h5 are zstd-compressed: install hdf5plugin "
                              "(pip install hdf5plugin)") from e
        return dict(hdf5plugin.Zstd(clevel=int(level or 1)))
    if compression == "gzip":
        return dict(compression="gzip", compression_opts=1 if level is None else int(level))
    if compression == "lzf":
        return dict(compression="lzf")
    raise ValueError(f"unknown compression {compression!r}; expected zstd, gzip, lzf or None")

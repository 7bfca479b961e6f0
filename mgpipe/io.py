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

"""Shared fixtures. Real data lives in ../shared (beside the checkout); tests that need it
skip with a clear reason when it is absent (a user's clone), and run in CI where it exists."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MGPIPE_SHARED", ROOT.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs real data at {path} (the ../shared folder beside the checkout; "
                    f"set MGPIPE_SHARED to point elsewhere)")
    return path


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """Folder of real video clips of people (../shared/media)."""
    return _need(SHARED / "media")


@pytest.fixture(scope="session")
def utd_mhad_root() -> Path:
    """Folder of the real UTD-MHAD Kinect skeletons (../shared/datasets/utd-mhad-skeleton)."""
    return _need(SHARED / "datasets" / "utd-mhad-skeleton")


def copy_project(dst: Path) -> Path:
    """The project's tracked and untracked-but-not-ignored files copied into ``dst``, less
    the pipeline's outputs (data/, models/, metrics/, dvc.lock), as a fresh clone holds them
    before its first `dvc repro`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("data/", "models/", "metrics/")) or f == "dvc.lock":
            continue  # outputs the pipeline must produce itself
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst


def edit_params(project: Path, blocks: dict, drop_branches=()) -> None:
    """Merge ``blocks`` ({block: {key: value}}; a mapping value updates the mapping under
    its key) into ``project``'s params.yaml and remove the branches in ``drop_branches``."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for block, values in blocks.items():
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(params[block].get(k), dict):
                params[block][k].update(v)
            else:
                params[block][k] = v
    for b in drop_branches:
        del params["branches"][b]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

"""Reading ``params.yaml`` (the one source of settings for every stage)."""
from __future__ import annotations

from pathlib import Path

import yaml


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run from the project root "
                                f"(where dvc.yaml is) or pass --params")
    with open(path) as f:
        return yaml.safe_load(f) or {}

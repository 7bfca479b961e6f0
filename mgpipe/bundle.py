"""The model bundle that ``mgpipe predict`` runs: ``models/predict/``, written by the fuse
stage, read without DVC, params.yaml or the data.

Layout::

    models/predict/
        bundle.json     format and mgpipe versions, classes, per branch: checkpoint file,
                        its sha256, modality, temperature and fusion weight (a branch the
                        chance gate dropped has weight 0), the fallback weights, and the
                        params blocks that say how a clip becomes each model's input, and
                        (``clips``, when the fuse stage knew it) the training clips' median
                        length in frames, fps and seconds: the default window of
                        ``mgpipe predict --window`` on untrimmed video
        <branch>.pt     a copy of the branch's best.pt of the last CMPL round fuse evaluated
                        (the folder of that round's logits in models/cmpl/rounds.json); it
                        holds the model's "config", "num_classes", "modality" and "branch"

The temperatures and weights are the unrounded numbers fuse used for the last round
(``evaluate_round``'s ``calibration``), so predicting the test clips gives the
probabilities of metrics/predictions.csv. The folder is written whole into a temporary
folder beside it and renamed into place. Light on purpose (json, hashlib, shutil): the fuse
stage imports it, and its dvc.yaml deps are its import closure.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import mgpipe

FORMAT = "mgpipe-predict-bundle"
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
# params.yaml blocks the bundle keeps: how keypoints, crops and heatmaps were made, each
# branch's settings, what rebuilds a model, and how fusion calibrates
PARAM_BLOCKS = ("keypoints", "rgb", "heatmaps", "branches", "train", "loss", "fuse")
# the branches' input modality (mgpipe.data.MODALITY_OF, which imports torch; a test keeps
# them equal)
MODALITY_OF = {"stcnn": "joints", "posec3d": "heatmap", "r2plus1d": "rgb", "swin3d": "rgb"}
# dataset.csv keys that say how keypoint files are read (mgpipe.skeletons)
KEYPOINT_FILE_KEYS = ("layout", "layout_map", "joints", "rows", "channels", "camera",
                      "frame_size", "fps", "npz_key")


class BundleError(ValueError):
    """A models folder ``mgpipe predict`` cannot use; the message names the folder and what
    to do."""


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clip_lengths(frames, fps) -> dict | None:
    """The ``clips`` entry of bundle.json from the training clips' frame counts and fps
    (sequences of numbers; empty cells, clips without video, are left out): median frames,
    median fps, median seconds (3 decimals); None when there is no usable clip."""
    import pandas as pd

    n = pd.to_numeric(pd.Series(list(frames), dtype=object), errors="coerce")
    f = pd.to_numeric(pd.Series(list(fps), dtype=object), errors="coerce")
    ok = (n > 0) & (f > 0)
    if not ok.any():
        return None
    n, f = n[ok], f[ok]
    return {"frames": float(n.median()), "fps": float(f.median()),
            "seconds": round(float((n / f).median()), 3)}


def bundle_document(classes: list[str], rounds: dict, calibration: dict, gated: dict,
                    params: dict, checkpoints: dict[str, str], clips: dict | None = None
                    ) -> dict:
    """bundle.json's content. ``rounds``: models/cmpl/rounds.json; ``calibration``: the last
    round's ``evaluate_round(...)["calibration"]``; ``gated``: branch -> bool (its gate);
    ``params``: the validated params.yaml; ``checkpoints``: branch -> sha256 of its copy;
    ``clips``: :func:`clip_lengths` of the training clips (optional)."""
    last = max(rounds["logits"], key=int)
    dataset = params.get("dataset", {})
    csv = dataset.get("csv", {}) or {}
    blocks = {k: params.get(k, {}) for k in PARAM_BLOCKS}
    blocks["dataset"] = {"name": dataset.get("name"),
                         "csv": {k: csv.get(k) for k in KEYPOINT_FILE_KEYS if k in csv}}
    branches = {}
    for b in rounds["logits"][last]:
        branches[b] = {"checkpoint": f"{b}.pt", "sha256": checkpoints[b],
                       "modality": MODALITY_OF[b],
                       "temperature": float(calibration["temperature"][b]),
                       "weight": float(calibration["weight"][b]), "gated": bool(gated.get(b))}
    fallback = calibration.get("fallback")
    extra = {"clips": clips} if clips else {}
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "mgpipe_version": mgpipe.__version__, "classes": list(classes),
            "cmpl_round": int(last),
            "fusion": {"temperature_scaling": bool(params.get("fuse", {}).get("temperature", True)),
                       "fallback_weights": None if fallback is None
                       else {b: float(w) for b, w in fallback.items()}},
            "branches": branches, "params": blocks, **extra}


def write_bundle(out: str | os.PathLike, classes: list[str], rounds: dict, calibration: dict,
                 gated: dict, params: dict, clips: dict | None = None) -> Path:
    """models/predict (``out``) from the last round listed in ``rounds`` (rounds.json): each
    branch's best.pt beside that round's logits, copied as <branch>.pt, and bundle.json.
    Written into ``.<name>.partial`` beside ``out`` and renamed into place."""
    out = Path(out)
    last = max(rounds["logits"], key=int)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sums = {}
    for b, logits in rounds["logits"][last].items():
        best = Path(logits).parent / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(f"{best}: the round-{last} checkpoint of {b} is missing; "
                                    f"rerun the cmpl stage (dvc repro)")
        shutil.copyfile(best, tmp / f"{b}.pt")
        sums[b] = sha256(tmp / f"{b}.pt")
    doc = bundle_document(classes, rounds, calibration, gated, params, sums, clips)
    (tmp / BUNDLE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    old = out.parent / f".{out.name}.old"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_bundle(folder: str | os.PathLike, verify: bool = True) -> dict:
    """bundle.json of a models folder, checked: its format and format version, a class
    list, and each branch's checkpoint present (and, with ``verify``, its sha256 that of the
    file the fuse stage wrote). Raises BundleError naming the folder and the fix."""
    folder = Path(folder)
    rebuild = ("run the pipeline (dvc repro) to write it: the fuse stage writes "
               "models/predict/, or pass --models with the folder it wrote")
    path = folder / BUNDLE_FILE
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such models folder; {rebuild}")
    if not path.is_file():
        raise BundleError(f"{folder}: no {BUNDLE_FILE}, so it is not a prediction bundle "
                          f"(an older pipeline did not write one); {rebuild}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot be read as JSON ({e}); {rebuild}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{path}: not an mgpipe prediction bundle (format "
                          f"{doc.get('format') if isinstance(doc, dict) else None!r}); {rebuild}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{folder}: bundle format version {version!r} (written by mgpipe "
            f"{doc.get('mgpipe_version', '?')}), this mgpipe {mgpipe.__version__} reads version "
            f"{FORMAT_VERSION}; rewrite it with this mgpipe (dvc repro fuse, or dvc repro -f "
            f"fuse) or install the mgpipe version that wrote it")
    classes = doc.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise BundleError(f"{path}: 'classes' must be a list of distinct class names; "
                          f"{rebuild}")
    branches = doc.get("branches")
    if not isinstance(branches, dict) or not branches:
        raise BundleError(f"{path}: no branches; {rebuild}")
    for b, entry in branches.items():
        if b not in MODALITY_OF:
            raise BundleError(f"{path}: unknown branch {b!r} (this mgpipe knows "
                              f"{', '.join(MODALITY_OF)}); install the mgpipe that wrote it")
        ckpt = folder / entry.get("checkpoint", "")
        if not ckpt.is_file():
            raise BundleError(f"{folder}: checkpoint {entry.get('checkpoint')!r} of {b} is "
                              f"missing; copy the whole folder the fuse stage wrote")
        if verify and entry.get("sha256") and sha256(ckpt) != entry["sha256"]:
            raise BundleError(f"{ckpt}: not the checkpoint {BUNDLE_FILE} was written with "
                              f"(its sha256 differs): the folder mixes files of two trainings; "
                              f"copy the whole folder the fuse stage wrote")
    return doc

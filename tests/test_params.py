"""params.yaml is validated against one schema at load: typos, wrong types and out-of-range
values stop a stage with the key path and what is allowed, before anything is written."""
from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgpipe import models
from mgpipe.params import (BRANCHES, MODEL_KEYS, MOVED, Params, ParamsError, read_params,
                           validate_params)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(**edits) -> dict:
    """The committed params with ``edits`` ({"cmpl.rounds": -1}; value None deletes)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for path, value in edits.items():
        *parents, last = path.split("__")
        node = p
        for k in parents:
            node = node[k]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return p


def test_committed_params_validate_and_schema_defaults_are_the_committed_values():
    p = read_params(ROOT / "params.yaml")
    defaults = validate_params({})
    for block in COMMITTED:
        if block != "branches":
            assert defaults[block] == p[block], f"schema defaults of {block} differ from params.yaml"
    assert list(p["branches"]) == list(COMMITTED["branches"])  # order kept: it is the dvc order


@pytest.mark.parametrize("edits, message", [
    ({"cmpl__round": 2}, r"cmpl\.round: unknown key \(did you mean cmpl\.rounds\?\); allowed keys: rounds"),
    ({"cmpl__rounds": -1}, r"cmpl\.rounds: Input should be greater than or equal to 0 \(got -1\)"),
    ({"cmpl__threshold": 2}, r"cmpl\.threshold: Input should be less than or equal to 1"),
    ({"cmpl__source": "other"}, r"cmpl\.source: Input should be 'others' or 'all'"),
    ({"heatmaps__size": [0, 0]}, r"heatmaps\.size: height and width must be >= 4"),
    ({"heatmaps__size": "big"}, r"heatmaps\.size: "),
    ({"branches__foo": {"input": "x.h5"}}, r"branches\.foo: key 'foo' not allowed: Input should be 'stcnn'"),
    ({"branches__stcnn__warmup_epoch": 1},
     r"branches\.stcnn\.warmup_epoch: unknown key \(did you mean branches\.stcnn\.warmup_epochs\?\)"),
    ({"branches__posec3d__model": {"base_channel": 8}},
     r"branches\.posec3d\.model\.base_channel: unknown key \(did you mean branches\.posec3d\.model\.base_channels\?\)"),
    ({"branches__stcnn__epochs": "ten"}, r"branches\.stcnn\.epochs: Input should be a valid integer"),
    ({"loss__class_weight": "log"}, r"loss\.class_weight: Input should be 'none', 'sqrt' or 'inverse'"),
    ({"fuse__weights": {"stcnn": 1.0}}, r"fuse\.weights: no weight for \['posec3d', 'r2plus1d', 'swin3d'\]"),
    ({"fuse__weights": "fitt"}, r"fuse\.weights: Input should be 'equal' or 'fit'"),
    ({"dataset__csv__path": "clips.csv"}, r"dataset\.csv\.path: unknown key; allowed keys: file, columns, classes"),
    ({"dataset__name": "kinetics"}, r"dataset\.name: Input should be 'synth', 'csv', 'utd_mhad', 'imigue', 'stgcn' or 'pyskl'"),
    ({"dataset__imigue__subject_regex": "(unclosed"}, r"dataset\.imigue\.subject_regex: not a valid regular expression"),
    ({"synth__test_subjects": 10}, r"synth\.subjects: 12 leaves no training subject"),
    ({"prepare__on_bad_clip": "ignore"}, r"prepare\.on_bad_clip: Input should be 'error' or 'skip'"),
    ({"keypoints__model_complexity": 3}, r"keypoints\.model_complexity: Input should be 0, 1 or 2"),
    ({"trian": {}}, r"trian: unknown key \(did you mean train\?\)"),
])
def test_bad_params_name_the_key_path_and_the_fix(edits, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(_with(**edits))


def test_every_problem_is_reported_at_once():
    with pytest.raises(ParamsError) as e:
        validate_params(_with(cmpl__round=2, heatmaps__sigma=0))
    assert "cmpl.round" in str(e.value) and "heatmaps.sigma" in str(e.value)


def test_model_keys_match_the_model_constructors():
    classes = {"stcnn": models.STCNN, "posec3d": models.PoseC3D,
               "r2plus1d": models.VideoR2Plus1D, "swin3d": models.VideoSwin3D}
    assert set(classes) == set(BRANCHES) == set(MODEL_KEYS)
    for b, cls in classes.items():
        own = set(inspect.signature(cls.__init__).parameters) - {
            "self", "num_classes", "in_channels", "embed_dim", "dropout"}
        assert own == set(MODEL_KEYS[b]), b


def test_a_stage_stops_on_bad_params_before_touching_its_outputs(tmp_path):
    """`cmpl.rounds: -1` used to exit 0, turn CMPL off and delete the finished round1/."""
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with(cmpl__rounds=-1)))
    round1 = tmp_path / "cmpl" / "round1"
    round1.mkdir(parents=True)
    (round1 / "done.json").write_text("{}")
    p = subprocess.run([sys.executable, "stages/cmpl.py", "--params", str(bad), "--out",
                        str(tmp_path / "cmpl")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert "cmpl.rounds: Input should be greater than or equal to 0 (got -1)" in p.stderr
    assert "Traceback" not in p.stderr
    assert (round1 / "done.json").is_file()


# Param paths named in messages and docs must exist (a hint naming `dataset.csv.path`, which
# does not, sent users looking for a key they could not set).
_PARAM_PATH = re.compile(r"(?<![\w./])(%s)((?:\.[a-z_0-9]+)+)" % "|".join(Params.model_fields))
_FILE_SUFFIX = re.compile(r"\.(py|h5|csv|json|png|yaml|pt|npz|npy|txt|partial|mp4|avi|xlsx|tsv)$")


def _resolves(path: list[str]) -> bool:
    node = validate_params(COMMITTED)
    for i, key in enumerate(path):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, dict) and i == 1 and path[0] == "branches" and key in ("<b>", "<branch>"):
            node = next(iter(node.values()))
        elif i > 0 and path[i - 1] in ("model", "weights", "columns"):
            return True  # free-form maps
        else:
            return False
    return True


def _texts() -> dict[str, str]:
    """Where users read param names: string literals (messages, docstrings) of the library
    and the stages, and `code spans` of the README."""
    out = {}
    for path in [*ROOT.glob("mgpipe/*.py"), *ROOT.glob("stages/*.py")]:
        tree = ast.parse(path.read_text())
        out[str(path.relative_to(ROOT))] = "\n".join(
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    out["README.md"] = "\n".join(re.findall(r"`([^`]+)`", (ROOT / "README.md").read_text()))
    return out


DELIBERATE_TYPOS = {"cmpl.round"} | set(MOVED)  # examples of what validation catches


def test_param_paths_in_messages_and_docs_exist():
    bad = []
    for where, text in _texts().items():
        for m in _PARAM_PATH.finditer(text.replace("<branch>", "stcnn").replace("<b>", "stcnn")):
            token = m.group(0)
            if _FILE_SUFFIX.search(token) or token in DELIBERATE_TYPOS:
                continue  # a file name such as keypoints.h5
            if not _resolves(token.split(".")):
                bad.append(f"{where}: {token}")
    assert not bad, "param paths that params.yaml does not have:\n" + "\n".join(sorted(set(bad)))


def test_moved_speed_settings_say_where_they_went():
    with pytest.raises(ParamsError, match=r"train\.launcher: moved to runtime\.launcher"):
        validate_params(_with(train__launcher="torchrun"))
    with pytest.raises(ParamsError, match=r"rgb\.workers: moved to runtime\.crop_workers"):
        validate_params(_with(rgb__workers=2))

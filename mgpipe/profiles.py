"""Params profiles: named sets of params.yaml values for a kind of data, merged into
params.yaml by ``python -m mgpipe profile NAME`` (comments and order kept), so a profile is
an ordinary params change that DVC tracks, caches and diffs like any other.

A profile is a YAML file of the blocks and keys it sets, in params.yaml's shape; mappings
merge key by key, anything else (numbers, lists, null) replaces the value. Shipped profiles
live in ``mgpipe/profiles/`` (``list_profiles``); a path to your own file works too.
"""
from __future__ import annotations

import io
from pathlib import Path

from mgpipe.io import atomic_path
from mgpipe.params import _plain  # ruamel's commented maps and sequences as dicts and lists

PROFILE_DIR = Path(__file__).with_name("profiles")


def list_profiles() -> dict[str, str]:
    """Shipped profile name -> its first comment line (what it is for)."""
    out = {}
    for p in sorted(PROFILE_DIR.glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.stat().st_size else ""
        out[p.stem] = first.lstrip("# ").strip()
    return out


def profile_path(name: str) -> Path:
    """A shipped profile's file, or ``name`` itself when it is a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    shipped = PROFILE_DIR / f"{name}.yaml"
    if not shipped.is_file():
        raise FileNotFoundError(f"profile {name!r}: not a shipped profile ({', '.join(list_profiles())}) "
                                f"nor a YAML file")
    return shipped


def merge(into, values: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """Deep-merge ``values`` into the mapping ``into`` in place; returns the changes as
    (key path, old value, new value), in the profile's order."""
    changes = []
    for key, new in values.items():
        path = f"{prefix}{key}"
        old = into.get(key)
        if isinstance(new, dict) and isinstance(old, dict) and new:
            changes += merge(old, new, f"{path}.")
            continue
        if _plain(old) != _plain(new):
            changes.append((path, _plain(old), _plain(new)))
            into[key] = new
    return changes


def apply_profile(params_path: str | Path, name: str, dry_run: bool = False) -> list[tuple]:
    """Merge profile ``name`` into ``params_path`` (written only if the result validates
    against the params schema, and not with ``dry_run``); returns the changes."""
    from ruamel.yaml import YAML

    from mgpipe.params import validate_params

    yaml = YAML()  # round trip: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.representer.add_representer(  # null as params.yaml writes it, not an empty value
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params_path = Path(params_path)
    doc = yaml.load(params_path.read_text())
    profile = YAML(typ="safe").load(profile_path(name).read_text()) or {}
    changes = merge(doc, profile)
    validate_params(_plain(doc), str(params_path))
    if changes and not dry_run:
        buf = io.StringIO()
        yaml.dump(doc, buf)
        with atomic_path(params_path, suffix=".yaml") as tmp:
            Path(tmp).write_text(buf.getvalue())
    return changes

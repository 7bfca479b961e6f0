"""Which code a result depends on: the ``mgpipe`` modules a stage script imports, found by
reading the source (no import), and a fingerprint of their contents.

``dvc.yaml`` lists each stage's closure as its deps (a test compares them), and the cmpl
stage puts the fingerprint into each round's signature, so editing the code a round ran
redoes the round instead of reusing it.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "mgpipe"
ROOT = Path(__file__).resolve().parents[1]  # the project (or site-packages) folder


def _imported_modules(path: Path) -> set[str]:
    """Dotted names of the mgpipe modules ``path`` imports anywhere (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    try:
        own = ".".join(path.resolve().relative_to(ROOT).with_suffix("").parts)
    except ValueError:  # a script outside the project: no relative imports to resolve
        own = path.stem
    package = own.rsplit(".", 1)[0] if "." in own else ""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import y
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # from mgpipe import report
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    as_module = ROOT.joinpath(*parts).with_suffix(".py")
    as_package = ROOT.joinpath(*parts, "__init__.py")
    return as_module if as_module.is_file() else as_package if as_package.is_file() else None


def import_closure(script: str | Path) -> list[str]:
    """Files of every mgpipe module ``script`` imports, directly or through other mgpipe
    modules, as sorted paths relative to the project root (e.g. "mgpipe/train.py"). Importing
    any submodule runs the package's ``__init__.py``, so it is included."""
    todo, seen = [Path(script).resolve()], set()
    files: set[Path] = set()
    while todo:
        path = todo.pop()
        for name in _imported_modules(path):
            f = _module_file(name)
            if f is None or f in seen:
                continue
            seen.add(f)
            files.add(f)
            todo.append(f)
    if files:
        files.add(ROOT / PACKAGE / "__init__.py")
    return sorted(f.relative_to(ROOT).as_posix() for f in files)


def code_fingerprint(paths: list[str | Path]) -> str:
    """sha1 over the names and contents of ``paths`` (absolute, or relative to the project
    root). A file counts by its folder and name ("stages/cmpl.py"), so the same code hashes
    the same wherever the checkout is."""
    entries = []
    for p in map(Path, paths):
        full = p if p.is_absolute() else ROOT / p
        entries.append(("/".join(full.parts[-2:]), full))
    h = hashlib.sha1()
    for name, full in sorted(entries):
        h.update(name.encode() + b"\0" + full.read_bytes() + b"\0")
    return h.hexdigest()


def scripts_run_by(script: str | Path) -> list[Path]:
    """Stage scripts that ``script`` runs as subprocesses, declared in it as a module-level
    ``RUNS = ["train.py", ...]`` (names next to it)."""
    script = Path(script).resolve()
    for node in ast.parse(script.read_text()).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "RUNS" for t in node.targets)
                and isinstance(node.value, (ast.List, ast.Tuple))):
            return [script.with_name(e.value) for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def stage_code(script: str | Path) -> list[str]:
    """Every file a stage runs: the script, the scripts it runs (``RUNS``) and the mgpipe
    modules all of them import, as sorted paths relative to the project root (absolute for
    scripts outside it, e.g. a copy of stages/ that imports this checkout's mgpipe)."""
    script = Path(script).resolve()
    scripts = [script] + scripts_run_by(script)
    files = {s.relative_to(ROOT).as_posix() if s.is_relative_to(ROOT) else str(s) for s in scripts}
    for s in scripts:
        files.update(import_closure(s))
    return sorted(files)

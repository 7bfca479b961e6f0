"""Ablation studies as DVC experiments: `mgpipe ablate [GRID] -j N`.

A grid file (``ablations.yaml``) names settings, each a set of params overrides (what
``dvc exp run -S`` takes), and the seeds (``train.seed``) to run each with. Every pair is one
real DVC experiment named ``<prefix>-<setting>-s<seed>``, queued with ``dvc exp run --queue``
and run by ``dvc queue start -j N``: inspect it with ``dvc exp show``, apply or push it like
any other. Then ``<out>.json``, ``<out>.md`` and ``<out>.png`` get, per setting and for each
branch and the fusion, the test macro-F1 over seeds (mean, sd) and a paired bootstrap over the
test clips against the setting's reference (the baseline unless the grid says otherwise).

Resuming: an experiment already finished from the same code as HEAD (dvc.yaml and every file
its stages depend on), with the params the grid asks for, is reused;
one queued or running (from an interrupted run of this command) is waited for. Order: the
baseline and the settings that retrain first; a setting that changes only ``cmpl`` or
``fuse`` is queued once its seed's baseline has finished, so DVC's run cache restores the
trainings it shares instead of rerunning them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mgpipe.stats import paired_bootstrap, seed_spread

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESULTS = ("metrics/test_by_clip.csv", "metrics/metrics.json")


class GridError(ValueError):
    """The grid file is wrong; the message says where and how to fix it."""


@dataclass
class Setting:
    name: str
    set: dict = field(default_factory=dict)      # dotted key -> value
    remove: list = field(default_factory=list)   # dotted keys deleted (-S '~key')
    compare: str | None = None                   # reference setting (None: the baseline)


@dataclass
class Grid:
    settings: list[Setting]
    seeds: list[int]
    baseline: str
    prefix: str = "abl"
    round: str | int = "last"                    # the CMPL round whose predictions count
    out: str = "metrics/ablations"
    base_set: dict = field(default_factory=dict)
    base_remove: list = field(default_factory=list)
    resamples: int = 2000
    base_profile: str | None = None              # a params profile under every setting


@dataclass
class Planned:
    setting: Setting
    seed: int
    name: str
    overrides: list[str]   # -S values, in order
    params: dict           # params.yaml the experiment must end up with


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (see ablations.yaml for the format)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    allowed = {"settings", "seeds", "baseline", "prefix", "round", "out", "base", "resamples"}
    unknown = set(raw) - allowed
    if unknown:
        raise GridError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    settings = []
    for i, s in enumerate(raw.get("settings") or []):
        if not isinstance(s, dict) or "name" not in s:
            raise GridError(f"{path}: settings[{i}] needs a name (and optional set, remove, compare)")
        extra = set(s) - {"name", "set", "remove", "compare"}
        if extra:
            raise GridError(f"{path}: settings[{i}] ({s['name']}): unknown keys {sorted(extra)}")
        settings.append(Setting(str(s["name"]), dict(s.get("set") or {}), list(s.get("remove") or []),
                                s.get("compare")))
    if not settings:
        raise GridError(f"{path}: no settings")
    names = [s.name for s in settings]
    for n in names:
        if not NAME_RE.match(n):
            raise GridError(f"{path}: setting name {n!r}: use letters, digits, '-', '_', '.'")
    if len(set(names)) != len(names):
        raise GridError(f"{path}: setting names repeat: {names}")
    baseline = raw.get("baseline", names[0])
    for s in settings:
        ref = s.compare or baseline
        if ref not in names:
            raise GridError(f"{path}: {s.name} compares with {ref!r}, which is not a setting")
        if "train.seed" in s.set:
            raise GridError(f"{path}: {s.name} sets train.seed; list seeds under 'seeds' instead")
    seeds = [int(x) for x in raw.get("seeds", [0, 1, 2])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: seeds must be distinct integers, got {seeds}")
    base = raw.get("base") or {}
    if set(base) - {"set", "remove", "profile"}:
        raise GridError(f"{path}: base takes set, remove and profile, not "
                        f"{sorted(set(base) - {'set', 'remove', 'profile'})}")
    prefix = str(raw.get("prefix", "abl"))
    if not NAME_RE.match(prefix):
        raise GridError(f"{path}: prefix {prefix!r}: use letters, digits, '-', '_', '.'")
    rnd = raw.get("round", "last")
    if rnd != "last" and not (isinstance(rnd, int) and rnd >= 0):
        raise GridError(f"{path}: round must be 'last' or a round number >= 0, got {rnd!r}")
    return Grid(settings, seeds, baseline, prefix, rnd, str(raw.get("out", "metrics/ablations")),
                dict(base.get("set") or {}), list(base.get("remove") or []),
                int(raw.get("resamples", 2000)), base.get("profile"))


def apply_overrides(params: dict, set_: dict, remove: list) -> dict:
    """``params`` with dotted keys removed and set (missing keys and mappings created; a
    mapping set onto a mapping is merged into it), as ``dvc exp run -S '~key' -S
    ++key=value`` does. Pure: returns a new dict."""
    from mgpipe.profiles import merge

    out = json.loads(json.dumps(params))
    for key in remove:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    for key, value in set_.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        merge(node, {last: json.loads(json.dumps(value))})  # a mapping merges, as in Hydra
    return out


def override_args(set_: dict, remove: list) -> list[str]:
    """The ``-S`` values for these overrides (YAML flow values, as DVC parses them). Keys are
    set with Hydra's ``++`` (add or override): a profile adds keys params.yaml lacks (e.g.
    ``branches.stcnn.augment``), which a plain ``key=value`` refuses."""
    args = [f"~{k}" for k in remove]
    for k, v in set_.items():
        text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
        if text.endswith("\n..."):
            text = text[:-4].strip()
        args.append(f"++{k}={text.removesuffix('...').strip()}")
    return args


def level(setting: Setting) -> str:
    """'fuse' when the setting changes only fuse params, 'cmpl' when only cmpl (and fuse),
    else 'train' (it retrains the branches)."""
    keys = list(setting.set) + list(setting.remove)
    if all(k.startswith("fuse.") for k in keys):
        return "fuse"
    if all(k.startswith(("fuse.", "cmpl.")) for k in keys):
        return "cmpl"
    return "train"


def plan(grid: Grid, params: dict) -> list[Planned]:
    """Every (setting, seed) experiment of the grid in the order they run: the baseline, the
    settings that retrain, then those changing only fuse (cheap: everything before fuse
    comes from the run cache), then those changing cmpl (each may retrain in CMPL rounds);
    grid order within each group."""
    order = {"train": 0, "fuse": 1, "cmpl": 2}
    settings = sorted(grid.settings, key=lambda s: (s.name != grid.baseline, order[level(s)]))
    base = dict(grid.base_set)
    if grid.base_profile:
        from mgpipe.profiles import merge, profile_path
        profile = yaml.safe_load(profile_path(grid.base_profile).read_text()) or {}
        # the profile's changes to params.yaml, as dotted keys (what `mgpipe profile` does)
        base = {**{k: new for k, _, new in merge(json.loads(json.dumps(params)), profile)}, **base}
    out = []
    for s in settings:
        for seed in grid.seeds:
            set_ = {**base, **s.set, "train.seed": seed}
            remove = grid.base_remove + s.remove
            out.append(Planned(s, seed, f"{grid.prefix}-{s.name}-s{seed}",
                               override_args(set_, remove),
                               apply_overrides(params, set_, remove)))
    return out


def prerequisites(planned: list[Planned], baseline: str) -> dict[str, str]:
    """name -> the experiment whose trainings (and CMPL rounds) it reuses from DVC's run
    cache: a setting that changes only cmpl or fuse waits for the baseline of its seed.
    Settings that retrain wait for nothing."""
    base = {p.seed: p.name for p in planned if p.setting.name == baseline}
    return {p.name: base[p.seed] for p in planned
            if p.setting.name != baseline and level(p.setting) != "train" and p.seed in base}


# ---- git and DVC ------------------------------------------------------------------------------

def _git(repo: Path, *args: str, check: bool = True) -> str:
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout if p.returncode == 0 else ""


def _has(repo: Path, rev: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"], cwd=repo,
                          capture_output=True).returncode == 0


def code_paths(repo: Path, rev: str = "HEAD") -> list[str]:
    """dvc.yaml and the files its stages depend on (scripts, modules) at ``rev``: the code
    whose change makes an earlier experiment stale. Other files (README, tests, a new
    module no stage imports) do not."""
    stages = (yaml.safe_load(_git(repo, "show", f"{rev}:dvc.yaml")) or {}).get("stages", {})
    deps = {d if isinstance(d, str) else next(iter(d)) for st in stages.values()
            for d in (st.get("do", st).get("deps") or [])}
    tracked = set(_git(repo, "ls-tree", "-r", "--name-only", rev).split())
    return ["dvc.yaml", *sorted(d for d in deps if "${" not in d and d in tracked)]


def code_trees(repo: Path, rev: str, paths: list[str]) -> tuple[str, ...]:
    """Git object ids of ``paths`` at ``rev`` ("" where absent)."""
    return tuple(_git(repo, "rev-parse", f"{rev}:{p}", check=False).strip() for p in paths)


def experiment_refs(repo: Path) -> dict[str, list[tuple[str, str]]]:
    """name -> [(exp ref, baseline commit)] of every DVC experiment in the repository."""
    out: dict[str, list[tuple[str, str]]] = {}
    for ref in _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split():
        parts = ref.split("/")  # refs/exps/ab/cdef.../<name>
        if len(parts) == 5 and len(parts[2] + parts[3]) == 40:
            out.setdefault(parts[4], []).append((ref, parts[2] + parts[3]))
    return out


def finished_experiments(repo: Path, planned: list[Planned], any_code: bool = False
                         ) -> dict[str, str]:
    """Planned name -> exp ref of a finished experiment that can be reused: same code trees
    as HEAD, the params the grid asks for, and its result files present. With ``any_code``
    (``--collect --any-code``) one run from older stage code counts too when none from
    HEAD's does (``older_code`` tells which)."""
    paths = code_paths(repo)
    head = code_trees(repo, "HEAD", paths)
    refs = experiment_refs(repo)
    found, same = {}, {}
    for p in planned:
        candidates = refs.get(p.name, [])
        for ref, base in candidates:
            if base not in same:
                same[base] = code_trees(repo, base, paths) == head
        for ref, base in sorted(candidates, key=lambda rb: not same[rb[1]]):
            if not same[base] and not any_code:
                continue
            try:
                params = yaml.safe_load(_git(repo, "show", f"{ref}:params.yaml"))
            except yaml.YAMLError:
                continue
            if params == p.params and all(_has(repo, ref, f) for f in RESULTS):
                found[p.name] = ref
                break
    return found


def queue_states(repo: Path, env: dict) -> tuple[dict[str, str], int | None]:
    """Experiment name -> DVC queue status (Queued, Running, Success, Failed, ...), and the
    number of live queue workers (active + idle; None when ``dvc queue status`` did not say)."""
    p = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True,
                       text=True)
    states, workers = {}, None
    for line in p.stdout.splitlines():
        words = line.split()
        if len(words) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", words[0]):
            states[words[1]] = words[-1]
        m = re.match(r"Worker status: (\d+) active, (\d+) idle", line.strip())
        if m:
            workers = int(m.group(1)) + int(m.group(2))
    if workers == 0:  # the status asks the workers, which a busy machine can leave unanswered
        workers = local_workers(repo) or 0
    return states, workers


def local_workers(repo: Path) -> int:
    """Live ``dvc exp queue-worker`` processes of ``repo`` on this machine."""
    import psutil

    n = 0
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "queue-worker" in cmd and Path(proc.info["cwd"] or "/").resolve() == repo.resolve():
                n += 1
        except (psutil.Error, OSError):
            continue
    return n


def dvc_env(threads: int) -> dict:
    """Environment of dvc and the queue workers: this interpreter's bin folder first on PATH
    (dvc, and the `python` the stages run, from the same environment), ``threads`` OMP
    threads per experiment, no analytics pings."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads), DVC_NO_ANALYTICS="1")


def run_experiments(repo: Path, todo: list[Planned], baseline: str, jobs: int, env: dict,
                    log=print, poll: float = 10.0, stop_at: float | None = None,
                    orphan_after: float = 120.0) -> dict[str, str]:
    """Queue ``todo`` (in order) with ``dvc exp run --queue`` and run it with ``jobs`` queue
    workers, keeping at most ``jobs`` experiments queued or running so the order holds, and
    queueing a setting that reuses its seed's baseline trainings only once that baseline has
    finished (its stages are then in the run cache). An experiment already queued or
    running (an interrupted earlier call) is waited for, not queued again.
    After ``stop_at`` (a time.time() value) nothing new is queued: the running ones finish
    and the rest is left for the next call. Returns name -> final queue status (Success,
    Failed, ...) of the experiments it queued or waited for.

    A queue worker can die (killed, out of memory) and leave its experiment "Running" for
    ever. When ours are queued or running but no worker has been alive for ``orphan_after``
    seconds, the workers are started again; a "Running" one is then marked "Lost" (killed
    and removed from the queue, so the next call runs it again) instead of waited for."""
    deps = prerequisites(todo, baseline)
    names = {p.name for p in todo}
    states, _ = queue_states(repo, env)
    submitted = {n for n in names if states.get(n) in ("Queued", "Running")}
    for n in sorted(submitted):
        log(f"ablate: {n} is already {states[n].lower()}; waiting for it")
    pending = [p for p in todo if p.name not in submitted]
    last, no_worker_since, lost = None, None, {}
    while True:
        states, workers = queue_states(repo, env)
        states.update(lost)
        active = {n for n in submitted if states.get(n) in ("Queued", "Running")}
        if active and workers == 0:
            no_worker_since = no_worker_since or time.time()
            if time.time() - no_worker_since >= orphan_after:
                for n in sorted(n for n in active if states[n] == "Running"):
                    log(f"ablate: {n} shows Running but no queue worker is alive (a worker "
                        f"died); marking it lost. The next `mgpipe ablate` runs it again.",
                        flush=True)
                    for cmd in (["kill", "-f", n], ["remove", n]):
                        subprocess.run(["dvc", "queue", *cmd], cwd=repo, env=env,
                                       capture_output=True)
                    lost[n] = states[n] = "Lost"
                active = {n for n in active if n not in lost}
                if active:  # queued ones: start workers for them again
                    log("ablate: no queue worker is alive; starting them again", flush=True)
                    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo,
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                no_worker_since = None
        else:
            no_worker_since = None
        finished = submitted - active
        queued_now = False
        if stop_at is not None and time.time() > stop_at and pending:
            log(f"ablate: --stop-after reached; {len(pending)} experiments left for the next "
                f"call: {', '.join(p.name for p in pending[:6])}{' ...' if len(pending) > 6 else ''}",
                flush=True)
            names -= {p.name for p in pending}
            pending = []
        for p in list(pending):
            if len(active) >= jobs:
                break
            if deps.get(p.name) in names and deps[p.name] not in finished:
                continue  # its baseline is still training: wait, then restore from the cache
            cmd = ["dvc", "exp", "run", "--queue", "-n", p.name]
            for o in p.overrides:
                cmd += ["-S", o]
            q = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
            if q.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed: {q.stderr.strip() or q.stdout.strip()}")
            pending.remove(p)
            submitted.add(p.name)
            active.add(p.name)
            queued_now = True
        if queued_now:  # workers stop when the queue is empty; this starts missing ones only
            # no pipes: the detached workers would inherit them and hold this call until they
            # exit, so nothing new would be queued while they run
            subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        done = len(finished)
        if done != last:
            log(f"ablate: {done}/{len(names)} experiments done"
                + (f"; running or queued: {', '.join(sorted(active))}" if active else ""),
                flush=True)
            last = done
        if not pending and not active:
            return {n: states.get(n, "unknown") for n in names if n in submitted}
        time.sleep(poll)


def stage_log(repo: Path, name: str, env: dict) -> dict:
    """From ``dvc queue logs NAME``: the stages it ran, restored from the run cache, or found
    unchanged, and each stage's own time where our stage scripts print it."""
    p = subprocess.run(["dvc", "queue", "logs", name], cwd=repo, env=env, capture_output=True,
                       text=True)
    text = p.stdout
    return {"ran": re.findall(r"Running stage '([^']+)'", text),
            "run_cache": re.findall(r"Stage '([^']+)' is cached - skipping run", text),
            "unchanged": re.findall(r"Stage '([^']+)' didn't change, skipping", text),
            "seconds": {k: float(v) for k, v in re.findall(r"^(\S+): finished in ([0-9.]+) s", text, re.M)},
            "tail": text[-3000:] if p.returncode == 0 else p.stderr[-3000:]}


# ---- results ----------------------------------------------------------------------------------

def read_results(repo: Path, ref: str) -> tuple[pd.DataFrame, dict]:
    table = pd.read_csv(pd.io.common.StringIO(_git(repo, "show", f"{ref}:{RESULTS[0]}")),
                        keep_default_na=False, dtype=str)
    return table, json.loads(_git(repo, "show", f"{ref}:{RESULTS[1]}"))


def summarise(grid: Grid, planned: list[Planned], results: dict[str, tuple[pd.DataFrame, dict]],
              classes: list[str]) -> dict:
    """Per setting: test macro-F1 over seeds per branch and fused (mean, sd, values), val
    fused macro-F1, and the paired bootstrap against the reference setting on the same test
    clips (only seeds both settings have)."""
    index = {c: i for i, c in enumerate(classes)}
    preds: dict[str, dict[int, pd.DataFrame]] = {}
    val: dict[str, dict[int, float]] = {}
    for p in planned:
        if p.name not in results:
            continue
        table, metrics = results[p.name]
        rounds = sorted(table["round"].astype(int).unique())
        r = rounds[-1] if grid.round == "last" else int(grid.round)
        if r not in rounds:
            raise GridError(f"{p.name} has rounds {rounds}, not round {r} (grid 'round')")
        preds.setdefault(p.setting.name, {})[p.seed] = table[table["round"].astype(int) == r] \
            .set_index("clip_id")
        val.setdefault(p.setting.name, {})[p.seed] = metrics["val"]["fused"]["macro_f1"]

    def as_index(col: pd.Series) -> np.ndarray:
        return np.array([index.get(x, -1) if x else -1 for x in col], np.int64)

    out = {}
    for s in grid.settings:
        runs = preds.get(s.name, {})
        entry = {"overrides": override_args(s.set, s.remove), "level": level(s),
                 "compare": s.compare or grid.baseline, "seeds": sorted(runs),
                 "experiments": {str(p.seed): p.name for p in planned if p.setting.name == s.name}}
        if runs:
            any_run = next(iter(runs.values()))
            clips = list(any_run.index)
            labels = as_index(any_run["label"])
            columns = [c for c in any_run.columns if c not in ("round", "label")]
            entry["test_macro_f1"] = {
                c: seed_spread(labels, np.stack([as_index(runs[k].loc[clips, c]) for k in sorted(runs)]),
                               len(classes)) for c in columns}
            v = [val[s.name][k] for k in sorted(runs)]
            entry["val_fused_macro_f1"] = {"mean": float(np.mean(v)),
                                           "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            ref = preds.get(entry["compare"], {})
            common = sorted(set(runs) & set(ref))
            if entry["compare"] != s.name and common:
                entry["vs_reference"] = {}
                for c in columns:
                    if c not in next(iter(ref.values())).columns:
                        continue
                    a = np.stack([as_index(runs[k].loc[clips, c]) for k in common])
                    b = np.stack([as_index(ref[k].loc[clips, c]) for k in common])
                    entry["vs_reference"][c] = {**paired_bootstrap(labels, a, b, len(classes),
                                                                   grid.resamples),
                                                "seeds": common}
        out[s.name] = entry
    return out


def p_text(p: float) -> str:
    """'p=0.046'; 'p<0.001' when no resample (of the default 2000) crossed zero, since the
    bootstrap cannot resolve a smaller p."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def markdown_table(summary: dict, branches: list[str]) -> str:
    """Mean +- sd of test macro-F1 over seeds per setting; the fused difference from the
    reference with its 95% bootstrap interval and p."""
    head = ["setting", "changes", "seeds", "fused test macro-F1", "vs reference (fused)",
            *branches, "val fused"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary.items():
        f1 = e.get("test_macro_f1", {})

        def ms(d):
            return f"{d['mean']:.3f} +- {d['sd']:.3f}" if d else "-"
        vs = e.get("vs_reference", {}).get("fused")
        vs_text = (f"{vs['diff']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}] {p_text(vs['p'])} "
                   f"(vs {e['compare']})" if vs else ("reference" if name == e["compare"] else "-"))
        changes = ", ".join(f"`{o.removeprefix('++')}`" for o in e["overrides"]) or "(params.yaml)"
        lines.append("| " + " | ".join([name, changes, str(len(e["seeds"])), ms(f1.get("fused")), vs_text,
                                        *[ms(f1.get(b)) for b in branches],
                                        ms(e.get("val_fused_macro_f1"))]) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, branches: list[str], path: Path) -> None:
    """One panel per branch and the fusion: each setting's test macro-F1 per seed (dots) and
    mean (bar); the reference's mean as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["fused", *branches]
    names = list(summary)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 0.45 * len(names) + 1.6),
                             sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cols):
        for y, n in enumerate(names):
            d = summary[n].get("test_macro_f1", {}).get(c)
            if not d:
                continue
            ax.barh(y, d["mean"], color="#9ecae1" if n != summary[n]["compare"] else "#3182bd")
            ax.plot(d["values"], [y] * len(d["values"]), "k.", ms=4)
        ax.set_title(c)
        ax.set_xlim(0, 1)
        ax.set_xlabel("test macro-F1")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    fig.suptitle("Ablations: bars = mean over seeds, dots = seeds")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# ---- command line -----------------------------------------------------------------------------

def _classes(results: dict[str, tuple[pd.DataFrame, dict]], branches: list[str]) -> list[str]:
    names: set[str] = set()
    for table, _ in results.values():
        for c in ["label", "fused", *branches]:
            if c in table:
                names.update(x for x in table[c] if x)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="mgpipe ablate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mgpipe ablate -j 2                  the default grid (ablations.yaml)\n"
               "  mgpipe ablate --dry-run             the experiments, their -S and what is done\n"
               "  mgpipe ablate --only baseline cmpl-off   run these settings (collect all)\n"
               "  mgpipe ablate --collect             tables from finished experiments only\n"
               "  dvc exp show --sort-by metrics/metrics.json:test.fused.macro_f1\n")
    ap.add_argument("grid", nargs="?", default="ablations.yaml", help="grid file (default: %(default)s)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="experiments at a time (queue workers)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP threads per experiment (default: cores // jobs); training "
                         "itself uses train.cpu_threads unless that is 0")
    ap.add_argument("--only", nargs="+", metavar="SETTING", help="run only these settings")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds instead of the grid's")
    ap.add_argument("--stop-after", type=float, metavar="MINUTES",
                    help="queue nothing new after this many minutes (running experiments "
                         "finish; the rest waits for the next call)")
    ap.add_argument("--collect", action="store_true", help="run nothing; tables from what is finished")
    ap.add_argument("--any-code", action="store_true",
                    help="with --collect: also experiments run at older stage code (a change "
                         "such as signal handling that leaves results alone makes every "
                         "experiment stale); the tables name their commits")
    ap.add_argument("--dry-run", action="store_true", help="list the experiments; run and write nothing")
    args = ap.parse_args(argv)
    repo = Path.cwd()
    if not (repo / "dvc.yaml").is_file() or not (repo / ".git").exists():
        ap.error("run it in the project root (a git repository with dvc.yaml)")
    try:
        grid = load_grid(args.grid)
        if args.seeds:
            grid.seeds = list(dict.fromkeys(args.seeds))
        unknown = set(args.only or []) - {s.name for s in grid.settings}
        if unknown:
            raise GridError(f"--only: {sorted(unknown)} not in {args.grid}")
        params = yaml.safe_load(_git(repo, "show", "HEAD:params.yaml"))
        planned = plan(grid, params)
        from mgpipe.params import ParamsError, validate_params
        for p in planned:  # a typo fails here, not in 30 queued experiments
            try:
                validate_params(p.params, f"{args.grid}: {p.setting.name}")
            except ParamsError as e:
                raise GridError(str(e)) from None
    except (GridError, RuntimeError, OSError) as e:
        print(f"mgpipe ablate: error: {e}", file=sys.stderr)
        return 2
    found = finished_experiments(repo, planned)
    if args.collect and args.any_code:
        found = {**finished_experiments(repo, planned, any_code=True), **found}
    todo = [p for p in planned if p.name not in found
            and (not args.only or p.setting.name in args.only)]
    print(f"ablate: {len(planned)} experiments ({len(grid.settings)} settings x {len(grid.seeds)} "
          f"seeds); {len(found)} finished; {len(todo)} to run")
    if args.dry_run:
        common = [o for o in planned[0].overrides if o in set.intersection(
            *(set(p.overrides) for p in planned)) and not o.startswith("train.seed=")]
        if common:
            print("  every experiment: -S " + " -S ".join(common))
        for p in planned:
            state = "finished" if p.name in found else "to run" if p in todo else "skipped (--only)"
            lv = "train" if p.setting.name == grid.baseline else level(p.setting)
            print(f"  {p.name:36s} {lv:5s} {state:9s} -S "
                  + " -S ".join(o for o in p.overrides if o not in common))
        return 0
    jobs = max(1, args.jobs)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    env = dvc_env(threads)
    started = time.time()
    statuses: dict[str, str] = {}
    if todo and not args.collect:
        own = {f"{Path(grid.out).as_posix()}{ext}" for ext in (".json", ".md", ".png")}
        dirty = "\n".join(line for line in _git(repo, "status", "--porcelain",
                                                 "--untracked-files=no").splitlines()
                          if line[3:] not in own)  # our own tables change every call
        if dirty:
            print("mgpipe ablate: error: tracked files have uncommitted changes; commit them "
                  "first so every experiment starts from one commit:\n" + dirty, file=sys.stderr)
            return 2
        print(f"ablate: {jobs} experiment(s) at a time", flush=True)
        stop_at = started + 60 * args.stop_after if args.stop_after else None
        statuses.update(run_experiments(repo, todo, grid.baseline, jobs, env, stop_at=stop_at))
        found = finished_experiments(repo, planned)
    wall = time.time() - started
    failed = sorted(n for n in statuses if n not in found)
    moved = [n for n in failed if statuses[n] == "Success"]
    if moved:  # finished, but HEAD's stage code changed while they ran
        print(f"ablate: {', '.join(moved)} finished at stage code that is no longer HEAD's "
              f"(a commit changed a stage or its code during the grid); `mgpipe ablate "
              f"--collect --any-code` tables them, a plain call runs them again",
              file=sys.stderr)
        failed = [n for n in failed if n not in moved]
    for n in failed:
        log = stage_log(repo, n, env)
        print(f"ablate: {n} did not finish ({statuses[n]}); see `dvc queue logs {n}`. Its end:\n"
              + log["tail"][-1500:], file=sys.stderr)

    out = Path(grid.out)
    previous = {}
    if out.with_suffix(".json").is_file():
        previous = json.loads(out.with_suffix(".json").read_text())
    logs = dict(previous.get("stage_logs", {}))
    for p in planned:  # which stages each experiment ran or restored (kept across invocations)
        if p.name in found and (p.name not in logs or p.name in statuses):
            entry = stage_log(repo, p.name, env)
            entry.pop("tail")
            logs[p.name] = entry
    results = {p.name: read_results(repo, found[p.name]) for p in planned if p.name in found}
    current = finished_experiments(repo, planned) if args.any_code else found
    older = {n: ref.split("/")[2] + ref.split("/")[3][:8] for n, ref in found.items()
             if n not in current}
    if not results:
        print("ablate: no finished experiment to summarise yet")
        return 1 if failed else 0
    first = next(iter(results.values()))[0]
    branches = [c for c in first.columns if c not in ("round", "clip_id", "label", "fused")]
    summary = summarise(grid, planned, results, _classes(results, branches))
    # each call's record also goes to a journal git ignores: `dvc exp apply` restores the
    # tables an experiment snapshot (with older `runs`) over these
    journal = repo / ".dvc" / "tmp" / "ablate" / f"{grid.prefix}-runs.jsonl"
    if statuses:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with open(journal, "a") as f:
            f.write(json.dumps({
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                "wall_seconds": round(wall, 1), "experiments": sorted(statuses),
                "jobs": jobs, "threads": threads, "cpus": os.cpu_count()}) + "\n")
    runs = merge_runs(previous.get("runs", []), journal)
    doc = {"grid": str(args.grid), "prefix": grid.prefix, "seeds": grid.seeds,
           "baseline": grid.baseline, "round": grid.round, "branches": branches,
           "settings": summary, "run_cache": run_cache_savings(logs), "runs": runs,
           "stage_logs": logs,
           "experiments": {p.name: found.get(p.name) for p in planned},
           "older_code": older}
    out.parent.mkdir(parents=True, exist_ok=True)
    from mgpipe.io import write_json_atomic
    write_json_atomic(out.with_suffix(".json"), doc)
    table = markdown_table(summary, branches)
    if older:
        commits: dict[str, int] = {}
        for c in older.values():
            commits[c] = commits.get(c, 0) + 1
        table += ("\nRun at older stage code (`--any-code`): "
                  + "; ".join(f"{k} experiments at commit {c}" for c, k in sorted(commits.items()))
                  + " (each experiment's in the json's `older_code`)\n")
    tmp = out.with_name(f".{out.name}.md.tmp")
    tmp.write_text(f"<!-- written by `mgpipe ablate {args.grid}`; macro-F1 on the test subjects, "
                   f"mean +- sd over seeds; vs reference: difference of means, 95% paired "
                   f"bootstrap interval over test clips, two-sided p -->\n" + table)
    os.replace(tmp, out.with_suffix(".md"))
    plot(summary, branches, out.with_suffix(".png"))
    print(table)
    print(f"ablate: wrote {out}.json, {out}.md, {out}.png")
    return 1 if failed else 0


def merge_runs(previous: list[dict], journal: Path) -> list[dict]:
    """The table's earlier ``runs`` records and the journal's, one per start time, in order
    (a torn last line, from a call killed while writing it, is skipped)."""
    runs = {r["started"]: r for r in previous}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs.setdefault(r["started"], r)
    return [runs[k] for k in sorted(runs)]


def run_cache_savings(logs: dict[str, dict]) -> dict:
    """How many train/cmpl stage runs DVC's run cache replaced, and the time they would have
    taken (each stage's mean 'finished in' time over the experiments that ran it)."""
    times: dict[str, list[float]] = {}
    for e in logs.values():
        for stage, s in e.get("seconds", {}).items():
            times.setdefault(stage, []).append(s)
    ran = sum(len(e.get("ran", [])) for e in logs.values())
    restored = [s for e in logs.values() for s in e.get("run_cache", [])]
    saved = sum(np.mean(times[s]) for s in restored if s in times)
    return {"stages_ran": ran, "stages_from_run_cache": len(restored),
            "seconds_saved_estimate": round(float(saved), 1),
            "stage_seconds_mean": {k: round(float(np.mean(v)), 1) for k, v in sorted(times.items())}}

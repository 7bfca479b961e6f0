"""mgpipe command line: `python -m mgpipe --help` (or the `mgpipe` entry point).

The pipeline itself runs through DVC (`dvc repro`); these commands run single pieces by
hand, with the same code the stages use.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

# command -> (stage script under stages/, one-line help)
STAGE_COMMANDS = {
    "synth": ("synth.py", "generate the embedded synthetic micro-gesture dataset"),
    "prepare": ("prepare.py", "dataset -> manifest, classes, hidden test labels (by subject)"),
    "keypoints": ("keypoints.py", "extract 68-point keypoints (MediaPipe Holistic or provided)"),
    "crop": ("crop.py", "saliency-guided RGB crops into data/processed/rgb.h5"),
    "heatmaps": ("heatmaps.py", "PoseC3D-style heatmap volumes into data/processed/heatmaps.h5"),
    "train": ("train.py", "train one branch (stcnn, posec3d, r2plus1d, swin3d)"),
    "cmpl": ("cmpl.py", "cross-modal pseudo-labelling rounds on the test subjects"),
    "fuse": ("fuse.py", "temperature-scaled fusion and the metrics"),
}


def _stages_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "stages"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = {k: v for k, v in STAGE_COMMANDS.items() if (_stages_dir() / v[0]).is_file()}
    epilog = "pipeline:\n  dvc repro                      run every stage, cached\n" \
             "  dvc exp run -S cmpl.rounds=2   an experiment that reruns only what changed\n" \
             "  dvc metrics diff               compare F1 with the last commit\n\n" \
             "Each command takes --help. Run from the project root (where params.yaml is)."
    ap = argparse.ArgumentParser(prog="mgpipe", description="mgpipe: micro-gesture recognition pipeline (arXiv 2606.13030), stage by stage.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=epilog)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in available.items():
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("profile", help="merge a params profile (e.g. real-skeleton) into params.yaml",
                   add_help=False)
    sub.add_parser("ablate", help="an ablation grid x seeds as DVC experiments; F1 table, "
                   "bootstrap, plot", add_help=False)
    sub.add_parser("predict", help="the trained models on new videos or keypoint files "
                   "(no DVC): top-5 classes per clip", add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        ap.print_help()
        return 0
    if argv[0] == "profile":
        return profile_command(argv[1:])
    if argv[0] == "ablate":
        from mgpipe.ablate import main as ablate_main
        return ablate_main(argv[1:])
    if argv[0] == "predict":
        from mgpipe.predict import main as predict_main
        return predict_main(argv[1:])
    if argv[0] in STAGE_COMMANDS and argv[0] not in available:
        print(f"mgpipe {argv[0]}: this installation has no stage scripts ({_stages_dir()} is "
              f"absent: mgpipe was installed as a package); run the pipeline from a checkout "
              f"of the project (dvc repro, or python -m mgpipe {argv[0]} there)", file=sys.stderr)
        return 2
    if argv[0] not in available:
        ap.error(f"unknown command {argv[0]!r}; choose from "
                 f"{', '.join([*available, 'profile', 'ablate', 'predict'])}")
    script = _stages_dir() / available[argv[0]][0]
    sys.argv = [f"mgpipe {argv[0]}"] + argv[1:]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def profile_command(argv: list[str]) -> int:
    """``mgpipe profile NAME``: merge a params profile into params.yaml."""
    from mgpipe.params import ParamsError
    from mgpipe.profiles import apply_profile, list_profiles

    shipped = "\n".join(f"  {k:16s} {v}" for k, v in list_profiles().items())
    ap = argparse.ArgumentParser(
        prog="mgpipe profile", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Merge a params profile into params.yaml (comments kept): the profile's "
                    "keys replace params.yaml's, mappings merge key by key. Then run "
                    "`dvc repro` or `dvc exp run`; `git diff params.yaml` shows the change.",
        epilog=f"shipped profiles:\n{shipped}")
    ap.add_argument("name", help="a shipped profile, or a path to a YAML file of params")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = ap.parse_args(argv)
    try:
        changes = apply_profile(args.params, args.name, args.dry_run)
    except (FileNotFoundError, ParamsError) as e:
        print(f"mgpipe profile: error: {e}", file=sys.stderr)
        return 2
    for key, old, new in changes:
        print(f"  {key}: {old!r} -> {new!r}")
    verb = "would change" if args.dry_run else "changed"
    print(f"profile {args.name}: {verb} {len(changes)} value(s) in {args.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

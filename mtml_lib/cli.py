"""The ``mtml`` command: run the notebooks, list them, regenerate the figure gallery.

Usage::

    mtml run [NOTEBOOK ...] [--profile smoke|quick|full] [--device auto|cpu|cuda|mps] [--seed N]
             [--out DIR] [--fail-fast] [--store] [--jobs N]
    mtml list
    mtml figures [--out DIR] [--profile P]
    mtml release [EXERCISE ...] --out DIR
    mtml grade SUBMISSION ... [--key EXERCISE] [--json FILE] [--timeout S] [--memory-gib G]

Exit codes: 0 success, 1 a notebook failed, 2 bad usage (unknown profile, device, notebook or seed, an
output path that cannot be written), 130 interrupted (Ctrl-C; the figure gallery is rewritten first, so
it lists exactly the figures on disk).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtml_lib import __version__, config


def _seed(text: str) -> int:
    try:
        return config.check_seed(int(text))
    except ValueError as err:  # ConfigError is a ValueError; argparse turns it into a usage error
        raise argparse.ArgumentTypeError(str(err) if isinstance(err, config.ConfigError)
                                         else f"seed must be an integer, got {text!r}") from None


def _jobs(text: str) -> int:
    from mtml_lib import pipeline

    try:
        value = int(text)
    except ValueError:
        value = text  # refused below with the valid range
    try:
        return pipeline.check_jobs(value)
    except config.ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtml",
        description="Multi-task learning, meta-learning and transfer: run the notebooks and regenerate figures and results.",
    )
    parser.add_argument("--version", action="version", version=f"mtml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="execute notebooks through papermill (default: all, in order)",
                         description="Execute notebooks in order through papermill; executed copies go to OUT/build, "
                                     "figures to OUT/figures, metrics to OUT/results/<profile>/.")
    run.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                     help="notebook names (e.g. 01_math_model, or just 01); default: all")
    run.add_argument("--profile", choices=config.PROFILE_NAMES, default=None,
                     help="run profile (default: MTML_PROFILE, else full on a GPU and quick on a CPU)")
    run.add_argument("--device", default=None, metavar="{auto,cpu,cuda,mps}",
                     help="device (default: MTML_DEVICE, else auto)")
    run.add_argument("--seed", type=_seed, default=0, help="random seed injected into every notebook (default 0)")
    run.add_argument("--out", type=Path, default=None,
                     help="output root for build/, figures/ and results/ (default: MTML_OUT, else the repository)")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    run.add_argument("--store", action="store_true",
                     help="write successful runs back into notebooks/ (outputs kept, papermill metadata stripped)")
    run.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                     help="run up to N notebooks at a time, one process each (default 1); results, figures and "
                          "stored notebooks are those of a serial run")
    run.add_argument("--no-progress", action="store_true", help="hide the per-cell progress bar")

    sub.add_parser("list", help="list the notebooks in order with a one-line description",
                   description="List the notebooks in reading order.")

    figures = sub.add_parser("figures", help="regenerate the figure gallery figures/README.md",
                             description="Regenerate figures/README.md from figures/index.json.")
    figures.add_argument("--out", type=Path, default=None, help="output root holding figures/ (default: the repository)")
    figures.add_argument("--profile", choices=config.PROFILE_NAMES, default=None,
                         help="the gallery of this profile only (default: every gallery found: figures/ for quick, "
                              "figures/<profile>/ for the others)")

    release = sub.add_parser("release", help="write student versions of the exercises (solutions removed)",
                             description="Write student versions of notebooks/exercises/*.ipynb: solution regions "
                                         "replaced by a placeholder, hidden tests removed, outputs cleared.")
    release.add_argument("exercises", nargs="*", metavar="EXERCISE", help="exercise names (default: all)")
    release.add_argument("--out", type=Path, required=True, help="folder for the student notebooks")

    grade = sub.add_parser("grade", help="grade submitted exercise notebooks",
                           description="Run the answer cells of each submission in a sandboxed process with the "
                                       "instructor's setup cells, compare the values of the instructor's probes with "
                                       "those of the instructor's solution, and print the points. Every submission "
                                       "gets a line, a score or zero with the reason; run as root for the full sandbox.")
    grade.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION", help="submitted notebooks")
    grade.add_argument("--key", default=None,
                       help="instructor notebook or exercise name (default: the exercise whose file name the submission has)")
    grade.add_argument("--json", type=Path, default=None, help="also write the reports as JSON to this file")
    grade.add_argument("--timeout", type=float, default=60,
                       help="wall-clock seconds allowed per run of a submission (default 60; a run that stops "
                            "inside a question is started again for the questions after it)")
    grade.add_argument("--memory-gib", type=float, default=2.0,
                       help="address-space limit per submission in GiB (default 2, of which torch and mtml_lib, "
                            "already loaded, take about 0.65)")
    return parser


def _grade(args) -> int:
    import time

    from mtml_lib import exercises, grading

    settings = grading.Settings(timeout=args.timeout, memory_gib=args.memory_gib).check()
    if args.json:
        config.writable_file(args.json, "--json")  # before grading: a bad path must not lose the grades
    key = exercises.resolve([args.key])[0] if args.key else None
    start = time.monotonic()

    def show(report) -> None:
        where = f"key: {report.exercise}" if report.exercise else "not graded"
        print(f"{report.submission}: {report.score:g} / {report.total:g} points ({where})"
              + (f": {report.error}" if report.error else ""), flush=True)
        if report.error is None:
            for q in report.questions:
                print(f"  {q.grade_id:<14} {q.score:g}/{q.points:g}  {'ok' if q.error is None else q.error}")
        for note in report.notes:
            print(f"  note: {note}")

    reports = grading.grade_batch(args.submissions, key=key, settings=settings, on_report=show,
                                  warn=lambda message: print(f"mtml grade: warning: {message}", file=sys.stderr))
    print(f"{len(reports)} submission(s) graded in {time.monotonic() - start:.0f} s")
    if args.json:
        try:
            grading.write_gradebook(reports, args.json)
        except OSError as err:
            print(f"mtml: error: grade book {args.json} could not be written ({err.strerror or err}); the grades "
                  "are printed above", file=sys.stderr)
            return 1
        print(f"grade book written: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("\nmtml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mtml list | head -3`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from mtml_lib import exercises, pipeline

    try:
        if args.command == "release":
            config.require_checkout("mtml release")  # before --out is made: nothing is written for nothing
            config.writable_dir(args.out, "--out")
            for path in exercises.release_all(args.exercises, args.out):
                print(f"student version written: {path}")
            return 0
        if args.command == "grade":
            return _grade(args)
        if args.command == "list":
            for path in pipeline.discover():
                print(f"{path.stem:<30} {pipeline.describe(path)}")
            return 0
        if args.command == "figures":
            if not args.out and not os.environ.get("MTML_OUT"):
                config.require_checkout("mtml figures without --out")
            root = config.writable_dir(args.out, "--out") if args.out else config.output_root()
            from mtml_lib.plotting import write_gallery

            names = [args.profile] if args.profile else [config.GALLERY_PROFILE] + [
                p for p in config.PROFILE_NAMES if p != config.GALLERY_PROFILE and (root / "figures" / p).is_dir()]
            for name in names:
                folder = root / "figures" / ("" if name == config.GALLERY_PROFILE else name)
                print(f"gallery written: {write_gallery(folder)}")
            return 0
        results = pipeline.run_notebooks(
            args.notebooks, profile=args.profile, device=args.device, seed=args.seed, out=args.out,
            fail_fast=args.fail_fast, store=args.store, progress=not args.no_progress, jobs=args.jobs,
        )
    except (config.ConfigError, exercises.ExerciseError) as err:
        parser.exit(2, f"mtml: error: {err}\n")
    print()
    print(pipeline.summary_table(results))
    failed = [r for r in results if r.status != "ok"]
    if failed:
        print(f"\n{len(failed)} of {len(results)} notebook(s) failed; executed copies with the errors are in "
              f"{failed[0].output.parent}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

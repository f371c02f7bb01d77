"""`mtml run --jobs 2` against a serial run: wall time, and whether the two wrote the same numbers.

Runs the notebooks twice in fresh processes, one after the other: ``mtml run --profile P --jobs 1`` and
``--jobs 2``, each into its own output folder and with its own empty data cache (``MTML_CACHE``), so that
neither run reads what the other built or trained. Then it compares what they wrote: every number in
``results/<profile>/*.json`` apart from timings and provenance must be equal (the runs are deterministic
with the profiles' thread settings), and the same figures must exist. The exit code is 1 when they differ.

Notebooks 02 and 04 already train their networks in two processes under the quick and full profiles
(the profile's ``workers``), so on two cores ``--jobs 2`` gains most where the other notebooks overlap
with them.

Run: ``.venv/bin/python benchmarks/bench_jobs.py`` (``--profile smoke|quick``, ``--notebooks 01 03``,
``--jobs 3``, ``--keep DIR`` to keep the outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_WORDS = ("time", "wall", "seconds", "started_at", "ms_per", "elapsed", "minutes")


def numbers(value, path=""):
    """Every leaf of a results file by its path, leaving out timings (which differ from run to run)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if any(word in key for word in TIMING_WORDS):
                continue
            out.update(numbers(item, f"{path}/{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(numbers(item, f"{path}[{i}]"))
        return out
    return {path: value}


def differences(a: Path, b: Path, profile: str) -> list[str]:
    """What the results and figures of the two output roots disagree on."""
    found = []
    left = {p.name: p for p in (a / "results" / profile).glob("*.json")}
    right = {p.name: p for p in (b / "results" / profile).glob("*.json")}
    if set(left) != set(right):
        found.append(f"results files differ: {sorted(set(left) ^ set(right))}")
    for name in sorted(set(left) & set(right)):
        x = numbers(json.loads(left[name].read_text())["metrics"])
        y = numbers(json.loads(right[name].read_text())["metrics"])
        keys = sorted(k for k in set(x) | set(y) if x.get(k, "missing") != y.get(k, "missing"))
        if keys:
            found.append(f"{name}: {len(keys)} values differ, e.g. {keys[0]}: {x.get(keys[0], 'missing')!r} "
                         f"vs {y.get(keys[0], 'missing')!r}")
    folder = "figures" if profile == "quick" else f"figures/{profile}"
    pngs = [sorted(p.name for p in (root / folder).glob("*.png")) for root in (a, b)]
    if pngs[0] != pngs[1]:
        found.append(f"figures differ: {sorted(set(pngs[0]) ^ set(pngs[1]))}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", choices=["smoke", "quick", "full"])
    parser.add_argument("--notebooks", nargs="*", default=[], help="notebooks to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="the parallel run's --jobs (default 2)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the two output roots in this folder")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mtml-jobs-"))
    mtml = [sys.executable, "-m", "mtml_lib"]
    times, roots = {}, {}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for jobs in (1, args.jobs):
        root = work / f"jobs{jobs}"
        shutil.rmtree(root, ignore_errors=True)
        env = dict(os.environ, MTML_CACHE=str(root / "cache"))
        command = mtml + ["run", *args.notebooks, "--profile", args.profile, "--out", str(root), "--no-progress",
                          "--jobs", str(jobs)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        times[jobs], roots[jobs] = time.perf_counter() - start, root
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            print(f"mtml run --jobs {jobs} failed (exit {done.returncode})")
            return 1
        print(f"--jobs {jobs}: {times[jobs]:.1f} s wall (load average after: {os.getloadavg()[0]:.2f})")
    found = differences(roots[1], roots[args.jobs], args.profile)
    print(f"\nprofile {args.profile}, notebooks: {' '.join(args.notebooks) or 'all'}")
    print(f"serial {times[1]:.1f} s, --jobs {args.jobs} {times[args.jobs]:.1f} s: "
          f"{times[1] / times[args.jobs]:.2f}x")
    print("same results and figures" if not found else "DIFFERENT OUTPUTS:\n  " + "\n  ".join(found))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

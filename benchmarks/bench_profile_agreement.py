"""Does the quick profile tell the story the full profile tells? Compares the committed results of both.

The quick profile exists so that a reader on a laptop sees, in minutes, the conclusions that the converged
``full`` run supports. This script reads ``results/quick/<notebook>.json`` and ``results/full/<notebook>.json``
(written by ``mtml run NN --profile quick|full``) and compares the qualitative statements the notebook
makes:

- notebook 02: for every strategy, the sign of each task's change against the single-task networks
  (Δm% per task) and of the overall Δm%, and which strategy has the highest mean Δm%.

A statement counts only where the full run settles it: the 95 % interval over its seeds (Student's t)
excludes zero. Where it does not, the full run itself cannot say which way it goes, so the quick run
cannot disagree with it; the table shows those as "open". The script exits with 1 when a settled
statement disagrees, with 2 when a results file is missing.

Run: ``.venv/bin/python benchmarks/bench_profile_agreement.py`` (``--results DIR`` to read another output
root's ``results/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtml_lib import metrics as M  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load(results: Path, profile: str, notebook: str) -> dict:
    path = results / profile / f"{notebook}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `mtml run {notebook[:2]} --profile {profile}` first")
    return json.loads(path.read_text())["metrics"]


def _per_method(rows: list[dict], column: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: r["seed"]):
        out.setdefault(row["method"], []).append(float(row[column]))
    return out


def compare_02(quick: dict, full: dict) -> list[dict]:
    """One row per (strategy, quantity): the quick mean, the full mean ± interval, and the verdict."""
    rows = []
    columns = ["delta_m/cls", "delta_m/seg", "delta_m/depth", "delta_m"]
    for column in columns:
        q, f = _per_method(quick["per_seed"], column), _per_method(full["per_seed"], column)
        for method in f:
            if method == "stl" or method not in q:
                continue
            mean, half = M.mean_ci(f[method])
            settled = not np.isnan(half) and abs(mean) > half
            quick_mean = float(np.mean(q[method]))
            agree = np.sign(quick_mean) == np.sign(mean)
            rows.append({"what": f"{method} {column}", "quick": f"{quick_mean:+.1f}", "full": f"{mean:+.1f} ± {half:.1f}",
                         "verdict": ("agree" if agree else "DISAGREE") if settled else "open"})
    q, f = _per_method(quick["per_seed"], "delta_m"), _per_method(full["per_seed"], "delta_m")
    strategies = [m for m in f if m != "stl" and m in q]
    best_full = max(strategies, key=lambda m: np.mean(f[m]))
    best_quick = max(strategies, key=lambda m: np.mean(q[m]))
    # the full winner is settled when its paired interval against every other strategy lies above zero
    gaps = [M.paired_difference(f[best_full], f[m]) for m in strategies if m != best_full]
    settled = len(f[best_full]) > 1 and all(diff > half for diff, half in gaps)
    rows.append({"what": "best Δm% strategy", "quick": best_quick, "full": best_full,
                 "verdict": ("agree" if best_quick == best_full else "DISAGREE") if settled else "open"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the results/ folder to read")
    args = parser.parse_args(argv)
    try:
        rows = compare_02(load(args.results, "quick", "02_multitask_cls_seg"),
                          load(args.results, "full", "02_multitask_cls_seg"))
    except FileNotFoundError as err:
        print(f"bench_profile_agreement: {err}", file=sys.stderr)
        return 2
    width = max(len(r["what"]) for r in rows)
    print(f"notebook 02: quick vs full (Δm% in %; full: mean ± 95% CI over seeds)\n")
    print(f"{'statement':{width}s}  {'quick':>9s}  {'full':>13s}  verdict")
    for r in rows:
        print(f"{r['what']:{width}s}  {r['quick']:>9s}  {r['full']:>13s}  {r['verdict']}")
    settled = [r for r in rows if r["verdict"] != "open"]
    wrong = [r for r in settled if r["verdict"] == "DISAGREE"]
    print(f"\n{len(settled) - len(wrong)} of {len(settled)} settled statements agree; {len(rows) - len(settled)} open")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

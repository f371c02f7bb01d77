"""Does the quick profile tell the story the full profile tells? Compares the committed results of both.

The quick profile exists so that a reader on a laptop sees, in minutes, the conclusions that the converged
``full`` run supports. This script reads ``results/quick/<notebook>.json`` and ``results/full/<notebook>.json``
(written by ``mtml run NN --profile quick|full``) and compares the qualitative statements the notebook
makes:

- notebook 02: for every strategy, the sign of each task's change against the single-task networks
  (Δm% per task) and of the overall Δm%, and which strategy has the highest mean Δm%;
- notebook 04: for every pair of learners and every test setting they share, which of the two is more
  accurate on the glyph meta-test split, and which learner is the most accurate 5-way 1-shot.

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


def compare_04(quick: dict, full: dict) -> list[dict]:
    """One row per (pair of learners, setting): which is more accurate in quick and in full; settled in full
    when the paired interval over its seeds excludes zero."""
    def per_seed(results: dict) -> dict[str, dict[str, list[float]]]:
        return {name: {setting: [float(v) for v in r.get("seeds", [r["mean"]])] for setting, r in settings.items()}
                for name, settings in results["glyph_test"].items()}

    q, f = per_seed(quick), per_seed(full)
    names = [n for n in f if n in q]
    rows = []
    for setting in dict.fromkeys(s for n in names for s in f[n]):
        have = [n for n in names if setting in f[n] and setting in q[n]]
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                diff, half = M.paired_difference(f[a][setting], f[b][setting])  # NaN half-width: one seed
                quick_diff = float(np.mean(q[a][setting]) - np.mean(q[b][setting]))
                settled = not np.isnan(half) and abs(diff) > half
                agree = np.sign(quick_diff) == np.sign(diff)
                rows.append({"what": f"{a} - {b}, {setting}", "quick": f"{100 * quick_diff:+.1f}",
                             "full": f"{100 * diff:+.1f} ± {100 * half:.1f}",
                             "verdict": ("agree" if agree else "DISAGREE") if settled else "open"})
    setting = "5-way 1-shot"
    have = [n for n in names if setting in f[n] and setting in q[n]]
    best_full = max(have, key=lambda n: np.mean(f[n][setting]))
    best_quick = max(have, key=lambda n: np.mean(q[n][setting]))
    gaps = [M.paired_difference(f[best_full][setting], f[n][setting]) for n in have if n != best_full]
    settled = len(f[best_full][setting]) > 1 and all(diff > half for diff, half in gaps)
    rows.append({"what": f"most accurate, {setting}", "quick": best_quick, "full": best_full,
                 "verdict": ("agree" if best_quick == best_full else "DISAGREE") if settled else "open"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the results/ folder to read")
    args = parser.parse_args(argv)
    wrong_total = 0
    for notebook, compare, unit in (("02_multitask_cls_seg", compare_02, "Δm% in %"),
                                    ("04_few_shot_classification", compare_04, "accuracy differences in points")):
        try:
            rows = compare(load(args.results, "quick", notebook), load(args.results, "full", notebook))
        except FileNotFoundError as err:
            print(f"bench_profile_agreement: {err}", file=sys.stderr)
            return 2
        width = max(len(r["what"]) for r in rows)
        print(f"notebook {notebook[:2]}: quick vs full ({unit}; full: mean ± 95% CI over seeds)\n")
        print(f"{'statement':{width}s}  {'quick':>14s}  {'full':>14s}  verdict")
        for r in rows:
            print(f"{r['what']:{width}s}  {r['quick']:>14s}  {r['full']:>14s}  {r['verdict']}")
        settled = [r for r in rows if r["verdict"] != "open"]
        wrong = [r for r in settled if r["verdict"] == "DISAGREE"]
        wrong_total += len(wrong)
        print(f"\n{len(settled) - len(wrong)} of {len(settled)} settled statements agree; {len(rows) - len(settled)} open\n")
    return 1 if wrong_total else 0


if __name__ == "__main__":
    sys.exit(main())

"""The quick-versus-full comparison of benchmarks/bench_profile_agreement.py on made-up results."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_profile_agreement", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_profile_agreement.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def results(table):
    return {"glyph_test": {name: {setting: {"mean": sum(v) / len(v), "seeds": v} for setting, v in settings.items()}
                           for name, settings in table.items()}}


def test_learner_orderings_count_only_where_the_full_seeds_settle_them():
    full = results({"ProtoNet": {"5-way 1-shot": [0.98, 0.99, 0.985], "20-way 1-shot": [0.95, 0.96, 0.955]},
                    "MAML 5-way": {"5-way 1-shot": [0.95, 0.96, 0.955]},
                    "FOMAML 5-way": {"5-way 1-shot": [0.94, 0.97, 0.96]}})
    quick = results({"ProtoNet": {"5-way 1-shot": [0.97], "20-way 1-shot": [0.9]},
                     "MAML 5-way": {"5-way 1-shot": [0.92]},
                     "FOMAML 5-way": {"5-way 1-shot": [0.80]}})
    rows = {r["what"]: r for r in bench.compare_04(quick, full)}
    assert rows["ProtoNet - MAML 5-way, 5-way 1-shot"]["verdict"] == "agree"  # +3 points at every seed
    assert rows["MAML 5-way - FOMAML 5-way, 5-way 1-shot"]["verdict"] == "open"  # the full seeds disagree
    assert rows["most accurate, 5-way 1-shot"]["full"] == "ProtoNet"
    assert rows["most accurate, 5-way 1-shot"]["verdict"] == "agree"
    assert not any("20-way" in what for what in rows if " - " in what)  # one learner only: no pair
    # a quick run that puts MAML above ProtoNet contradicts a settled statement
    quick["glyph_test"]["MAML 5-way"]["5-way 1-shot"] = {"mean": 0.99, "seeds": [0.99]}
    rows = {r["what"]: r for r in bench.compare_04(quick, full)}
    assert rows["ProtoNet - MAML 5-way, 5-way 1-shot"]["verdict"] == "DISAGREE"
    assert rows["most accurate, 5-way 1-shot"]["verdict"] == "DISAGREE"

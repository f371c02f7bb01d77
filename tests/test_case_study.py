"""The case study of notebook 02: models, losses, batches, evaluation, selection protocol, profiles."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtml_lib import metrics as M
from mtml_lib.checkpoint import CheckpointError
from mtml_lib.data import shapes
from mtml_lib.models.cnn import count_parameters
from mtml_lib.mtl import case_study as cs
from mtml_lib.mtl.trainer import MultiTaskTrainer
from mtml_lib.mtl.weighting import WEIGHTINGS
from mtml_lib.profiles.cls_seg import PROFILES

CFG = shapes.ShapesConfig(image_size=16)
WIDTHS = (4, 8, 8)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path / "cache"))




@pytest.fixture(scope="module")
def tiny_data():
    return {name: shapes.make_split(n, seed=0, split=name, cfg=CFG, cache=False)
            for name, n in (("train", 48), ("val", 24), ("test", 24))}


SMOKE = dataclasses.replace(PROFILES["smoke"], n_train=48, n_val=24, n_test=24, epochs=2, batch_size=16)


def test_model_outputs_and_single_task_networks_of_the_same_size():
    model = cs.build_model(cs.TASKS, WIDTHS, CFG, seed=0)
    out = model(torch.rand(2, 3, 16, 16))
    assert out["cls"].shape == (2, len(shapes.CATEGORIES))
    assert out["seg"].shape == (2, len(shapes.CATEGORIES) + 1, 16, 16)
    assert out["depth"].shape == (2, 16, 16)
    for task in cs.TASKS:
        single = cs.build_model([task], WIDTHS, CFG, seed=0)
        assert count_parameters(single.shared) == count_parameters(model.shared)
        assert count_parameters(single.heads[task]) == count_parameters(model.heads[task])
    # the depth head starts at the background depth, where most pixels are
    assert torch.allclose(out["depth"].mean(), torch.tensor(cs.DEPTH_INIT), atol=0.5)


def test_segmentation_loss_ignores_the_ignore_index_and_checks_shapes():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4, 4)
    masks = torch.randint(0, 6, (2, 4, 4))
    masks[:, 0] = shapes.IGNORE_INDEX
    keep = masks != shapes.IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    assert cs.segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"need masks \(B, H, W\) = \(2, 4, 4\), got \(2, 5, 5\)"):
        cs.segmentation_loss(logits, torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="need labels"):
        cs.classification_loss(torch.randn(3, 5), torch.zeros(2, dtype=torch.long))


def test_strategies_get_their_options_and_bad_names_raise():
    uw = cs.make_strategy("uw", cs.TASKS)
    assert uw.factors.tolist() == [1.0, 1.0, 0.5]  # classification, segmentation, depth (regression)
    assert cs.make_strategy("dwa", cs.TASKS, steps_per_epoch=7).steps_per_epoch == 7
    with pytest.raises(ValueError, match=r"unknown weighting strategy 'nash'; valid strategies"):
        cs.make_strategy("nash", cs.TASKS)
    with pytest.raises(ValueError, match="unknown task 'normals'"):
        cs.make_task("normals", WIDTHS)
    bad = dataclasses.replace(SMOKE, strategies=("ew", "nash"))
    with pytest.raises(ValueError, match="unknown weighting strategy 'nash'"):
        cs.run_study(bad, {"train": None, "val": None, "test": None})


def test_batches_cover_the_split_once_per_epoch_and_repeat_by_seed(tiny_data):
    batches = cs.Batches(tiny_data["train"], ["cls", "seg"], batch_size=20, seed=3)
    assert len(batches) == 3
    epoch = [labels for _, targets in batches for labels in [targets["cls"]]]
    assert sum(len(b) for b in epoch) == 48
    images = torch.cat([x for x, _ in cs.Batches(tiny_data["train"], ["cls"], 20, seed=3)])
    assert torch.equal(images.sort(0).values, tiny_data["train"].images.sort(0).values)
    first = [x for x, _ in cs.Batches(tiny_data["train"], ["cls"], 20, seed=3)]
    again = [x for x, _ in cs.Batches(tiny_data["train"], ["cls"], 20, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    two_epochs = cs.Batches(tiny_data["train"], ["cls"], 48, seed=3)
    a, b = (x for x, _ in list(two_epochs) + list(two_epochs))
    assert not torch.equal(a, b)  # reshuffled


def test_evaluate_accumulates_over_the_whole_split(tiny_data):
    model = cs.build_model(cs.TASKS, WIDTHS, CFG, seed=1)
    split = tiny_data["val"]
    result = cs.evaluate(model, split, batch_size=5)  # five batches, the last one short
    model.eval()
    with torch.no_grad():
        out = model(split.images)
    cm = M.confusion_matrix(split.masks, out["seg"], len(shapes.CATEGORIES) + 1, ignore_index=shapes.IGNORE_INDEX)
    assert result["seg"]["miou"] == pytest.approx(M.mean_iou(cm))
    assert result["seg"]["pixel_acc"] == pytest.approx(M.pixel_accuracy(cm))
    assert result["cls"]["accuracy"] == pytest.approx(M.accuracy(split.labels, out["cls"]))
    assert result["depth"]["abs_err"] == pytest.approx(float((out["depth"] - split.depth).abs().mean()), rel=1e-5)


def test_model_selection_never_sees_the_test_split(tiny_data, monkeypatch):
    calls = []
    fitting = {"now": False}
    original_fit, original_evaluate = MultiTaskTrainer.fit, cs.evaluate

    def fit(self, *args, **kwargs):
        fitting["now"] = True
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            fitting["now"] = False

    def evaluate(model, split, *args, **kwargs):
        calls.append((fitting["now"], split is tiny_data["test"]))
        return original_evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(MultiTaskTrainer, "fit", fit)
    monkeypatch.setattr(cs, "evaluate", evaluate)
    stl = cs.train_run(cs.STL, ["seg"], tiny_data, SMOKE, seed=0)
    baseline = {"seg": {m: stl.val["seg"][m] for m in cs.TASK_METRICS["seg"]}}
    cs.train_run("pcgrad", ["seg"], tiny_data, SMOKE, seed=0, baseline_val=baseline)
    assert any(during for during, _ in calls)
    assert not any(during and on_test for during, on_test in calls)
    assert sum(on_test for _, on_test in calls) == 2  # each model is tested once, after training
    with pytest.raises(ValueError, match="pass baseline_val"):
        cs.train_run("ew", ["seg"], tiny_data, SMOKE, seed=0)
    with pytest.raises(ValueError, match="trains one task"):
        cs.train_run(cs.STL, ["cls", "seg"], tiny_data, SMOKE, seed=0)


def test_the_study_runs_every_strategy_and_repeats_by_seed(tiny_data):
    study = cs.run_study(SMOKE, tiny_data, keep_models=True)
    frame = cs.results_frame(study)
    assert list(frame.method) == [cs.STL, *cs.STRATEGIES]
    assert (frame[frame.method == cs.STL].delta_m == 0).all()
    for column in ("cls/accuracy", "cls/f1", "seg/miou", "seg/pixel_acc", "depth/abs_err", "delta_m", "time_s"):
        assert frame[column].notna().all()
    table = cs.summary_table(frame, ["cls/accuracy", "seg/miou", "depth/abs_err", "delta_m"])
    assert list(table.index) == [cs.STL, *cs.STRATEGIES] and " ± " not in table.loc["ew", "seg/miou"]  # one seed
    assert "delta_m/depth" in cs.summary_table(frame).columns
    for key, run in study.runs.items():
        assert run.best_epoch in (0, 1) and len(run.history.val) == 2, key
    uw = cs.uw_weights_frame(study)
    assert set(uw.task) == set(cs.TASKS) and (uw.weight > 0).all()
    curves = cs.curves_frame(study)
    assert set(curves.method) == {cs.STL, *cs.STRATEGIES} and curves.epoch.max() == 2
    panel = cs.predictions(study, tiny_data["test"], [cs.STL, "ew"], seed=0, n=3)
    assert panel["ew"]["seg"].shape == (3, 16, 16) and panel[cs.STL]["depth"].shape == (3, 16, 16)
    again = cs.train_run("rlw", list(cs.TASKS), tiny_data, SMOKE, seed=0,
                         baseline_val={t: study.runs[(f"stl:{t}", 0)].val[t] for t in cs.TASKS})
    assert again.test == study.runs[("rlw", 0)].test  # same seed, same numbers


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_are_consistent(name):
    s = PROFILES[name]
    assert s.image_size % 2 ** (len(s.widths) - 1) == 0
    assert set(s.strategies) <= set(WEIGHTINGS) and s.seeds
    model = cs.build_model(cs.TASKS, s.widths, shapes.ShapesConfig(image_size=s.image_size), seed=0)
    out = model(torch.rand(2, 3, s.image_size, s.image_size))
    assert out["seg"].shape[-2:] == (s.image_size, s.image_size)
    if name == "full":
        assert len(s.seeds) >= 3 and set(s.strategies) == set(cs.STRATEGIES) and s.resumable
    if name in ("quick", "full"):  # both run on the 2-core CPU, two trainings at a time, one thread each
        assert s.workers == 2 and s.threads == 1 and s.schedule == "cosine"


TWO_SEEDS = dataclasses.replace(SMOKE, seeds=(0, 1), strategies=("ew", "rlw", "pcgrad"))


def test_parallel_workers_and_a_resumed_study_give_the_numbers_of_one_process(tiny_data, tmp_path):
    one = cs.run_study(TWO_SEEDS, tiny_data, workers=1)
    seen = []
    two = cs.run_study(TWO_SEEDS, tiny_data, workers=2, keep_models=True, resumable=True, cache_root=tmp_path,
                       on_run=lambda r: seen.append((r.method, r.seed, r.cached)))
    assert list(two.runs) == list(one.runs) and len(seen) == len(one.runs) and not any(c for *_, c in seen)
    for key, run in one.runs.items():
        assert two.runs[key].test == run.test and two.runs[key].history.val == run.history.val, key
        assert two.runs[key].model is not None
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == len(one.runs) and any(f.startswith("stl-seg-seed1-") for f in files)
    again = cs.run_study(TWO_SEEDS, tiny_data, workers=1, resumable=True, cache_root=tmp_path, keep_models=True)
    assert all(r.cached for r in again.runs.values())
    assert cs.results_frame(again).drop(columns="time_s").equals(cs.results_frame(one).drop(columns="time_s"))
    panel = cs.predictions(again, tiny_data["test"], ["ew"], seed=1, n=2)
    assert panel["ew"]["seg"].shape == (2, 16, 16)


def test_a_run_file_names_its_settings_seed_and_code_and_a_bad_file_is_refused(tiny_data, tmp_path):
    path = cs.run_path("ew", cs.TASKS, TWO_SEEDS, 0, tmp_path)
    assert path != cs.run_path("ew", cs.TASKS, TWO_SEEDS, 1, tmp_path)
    assert path != cs.run_path("ew", cs.TASKS, dataclasses.replace(TWO_SEEDS, lr=1e-3), 0, tmp_path)
    assert path == cs.run_path("ew", cs.TASKS, dataclasses.replace(TWO_SEEDS, seeds=(0,), workers=2), 0, tmp_path)
    assert len(cs.code_fingerprint()) == 16
    study = cs.run_study(dataclasses.replace(TWO_SEEDS, seeds=(0,)), tiny_data, resumable=True, cache_root=tmp_path)
    assert path.is_file()
    other = cs.run_path("rlw", cs.TASKS, TWO_SEEDS, 0, tmp_path)
    other.write_bytes(path.read_bytes())  # the file of another run under this run's name
    with pytest.raises(CheckpointError, match="holds 'ew' seed 0"):
        cs.load_run(other, "rlw", cs.TASKS, TWO_SEEDS, 0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        cs.run_study(dataclasses.replace(TWO_SEEDS, seeds=(0,)), tiny_data, resumable=True, cache_root=tmp_path)
    assert study.runs[("ew", 0)].cached is False


def test_tables_report_t_intervals_and_paired_differences_to_ew():
    import pandas as pd

    frame = pd.DataFrame([
        {"method": m, "seed": s, "cls/accuracy": a, "depth/abs_err": d, "delta_m": dm}
        for m, s, a, d, dm in [("ew", 0, 0.80, 0.10, 1.0), ("ew", 1, 0.90, 0.20, 2.0), ("ew", 2, 0.70, 0.15, 3.0),
                               ("mgda", 0, 0.78, 0.09, 1.5), ("mgda", 1, 0.88, 0.18, 2.5), ("mgda", 2, 0.68, 0.14, 3.5)]])
    table = cs.summary_table(frame, ["cls/accuracy", "depth/abs_err"])
    assert table.loc["ew", "cls/accuracy"] == f"80.0 ± {100 * M.mean_ci([0.8, 0.9, 0.7])[1]:.1f}"  # t, not 1.96
    long = cs.paired_differences(frame, ["cls/accuracy", "depth/abs_err", "delta_m"]).set_index("column")
    assert long.loc["cls/accuracy", "diff"] == pytest.approx(-0.02) and long.loc["cls/accuracy", "half"] < 1e-12
    assert not long.loc["cls/accuracy", "better"] and long.loc["cls/accuracy", "distinguishable"]
    assert long.loc["depth/abs_err", "better"]  # a lower error is an improvement
    assert long.loc["delta_m", "diff"] == pytest.approx(0.5)
    paired = cs.paired_table(frame, ["cls/accuracy", "delta_m"])
    assert list(paired.index) == ["mgda"] and paired.loc["mgda", "cls/accuracy"].startswith("-2.0 ± 0.0 *")
    with pytest.raises(ValueError, match="reference method 'uw'"):
        cs.paired_differences(frame, reference="uw")
    single = cs.summary_table(frame[frame.seed == 0], ["delta_m"])
    assert single.loc["ew", "delta_m"] == "1.0"  # one seed: no interval


def test_late_gains_measure_what_the_last_epochs_added(tiny_data):
    study = cs.run_study(dataclasses.replace(SMOKE, epochs=4, strategies=("ew",)), tiny_data)
    gains = cs.late_gains(study, fraction=0.25)
    assert set(gains.method) == {cs.STL, "ew"} and (gains.gain >= 0).all()
    run = study.runs[("stl:depth", 0)]
    errors = [v["depth/abs_err"] for v in run.history.val]
    expected = max(-e for e in errors) - max(-e for e in errors[:3])
    assert gains[(gains.task == "depth")].gain.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="fraction"):
        cs.late_gains(study, fraction=1.0)


def test_describe_results_follows_the_record():
    def row(acc, miou, err, dm, t):
        return {"cls/accuracy": acc, "seg/miou": miou, "depth/abs_err": err, "delta_m": dm, "time_s": t,
                "delta_m/cls": 2.0, "delta_m/seg": -5.0, "delta_m/depth": -dm}
    record = {"settings": {"seeds": [0], "epochs": 3},
              "mean": {cs.STL: row(0.70, 0.50, 0.10, 0.0, 30.0), "ew": row(0.75, 0.40, 0.12, -8.0, 10.0),
                       "rlw": row(0.69, 0.45, 0.09, -2.0, 10.0), "mgda": row(0.72, 0.42, 0.11, -4.0, 25.0)},
              "paired_vs_ew": [{"method": m, "column": "delta_m", "diff": d, "half": float("nan"),
                                "distinguishable": False, "better": d > 0} for m, d in (("rlw", 6.0), ("mgda", 4.0))],
              "late_gain": [{"method": cs.STL, "task": "cls", "seed": 0, "metric": "cls/accuracy", "gain": 1.5},
                            {"method": "ew", "task": "all", "seed": 0, "metric": "delta_m", "gain": 0.5}],
              "uw_final_weights": {"cls": 0.5, "depth": 1.5}}
    text = cs.describe_results(record)
    assert "2 of the 3 strategies beat the single-task classifier (70.0 % test accuracy)" in text
    assert "RLW loses 1.0 points" in text and "better with RLW" in text  # depth 0.09 < 0.10
    assert "One seed" in text and "RLW +6.0" in text
    assert "2.5 times EW's training time" in text  # MGDA, the only gradient-based strategy
    assert "1 to 0.50 (cls), 0.5 to 1.50 (depth)" in text and "depth's, a factor 3.00" in text
    assert "1.5 accuracy points" in text

"""Few-shot experiment runner: specs, learners, training with validation selection, evaluation, tables."""

import pytest
import torch

from mtml_lib import fewshot
from mtml_lib.data.episodes import ClassDataset, EpisodeSampler
from mtml_lib.meta import MetaLearner
from mtml_lib.meta.protonet import ProtoNet




def pattern_dataset(n_classes=10, n_per_class=6, seed=0, split="train") -> ClassDataset:
    """Each class a random 16 x 16 binary pattern; instances flip a few pixels."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(n_classes, 1, 1, 16, 16, generator=g) > 0.5).float()
    flips = (torch.rand(n_classes, n_per_class, 1, 16, 16, generator=g) > 0.95).float()
    images = ((base - flips).abs() * 255).to(torch.uint8)
    return ClassDataset(images, [f"c{i}" for i in range(n_classes)], ["g"] * n_classes, split)


def test_spec_validation_and_names():
    assert fewshot.TrainSpec("protonet", n_way=20).name == "ProtoNet"
    assert fewshot.TrainSpec("metasgd", n_way=5).name == "Meta-SGD 5-way"
    assert fewshot.TrainSpec("protonet", n_way=20).serves(5)
    assert not fewshot.TrainSpec("maml", n_way=5).serves(20)
    with pytest.raises(ValueError, match="unknown learner 'reptil'.*'protonet'"):
        fewshot.TrainSpec("reptil")
    with pytest.raises(ValueError, match="TrainSpec.iterations must be an integer >= 1, got 0"):
        fewshot.TrainSpec("maml", iterations=0)
    with pytest.raises(ValueError, match="refresh_every"):
        fewshot.TrainSpec("maml", refresh_every=0)


def test_make_learner():
    net = fewshot.make_learner(fewshot.TrainSpec("protonet", hidden=4), image_size=16)
    assert isinstance(net, ProtoNet)
    anil = fewshot.make_learner(fewshot.TrainSpec("anil", n_way=3, hidden=4), image_size=16)
    assert isinstance(anil, MetaLearner) and anil.algorithm == "anil"
    assert anil.model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    assert anil.adapted_names == ["head.weight", "head.bias"]


def test_training_keeps_the_best_validation_parameters():
    train_data, val_data = pattern_dataset(seed=0), pattern_dataset(seed=1, split="val")
    spec = fewshot.TrainSpec("protonet", n_way=3, k_shot=1, n_query=2, iterations=12, hidden=4, val_every=4,
                             val_episodes=20, meta_lr=0.01)
    result = fewshot.train(spec, train_data, val_data, seed=0)
    assert result.iterations == [4, 8, 12] and len(result.train_loss) == 3 and len(result.val_accuracy) == 3
    assert result.best_val_accuracy == max(result.val_accuracy)
    assert result.best_iteration == result.iterations[result.val_accuracy.index(max(result.val_accuracy))]
    # the learner now holds the selected parameters: re-measuring the validation episodes gives the best score
    val_batch = EpisodeSampler(val_data, 3, 1, 2, seed=1).sample(20)
    assert fewshot.episode_accuracy(result.learner, val_batch).mean().item() == pytest.approx(result.best_val_accuracy)
    # same seed, same run
    again = fewshot.train(spec, train_data, val_data, seed=0)
    assert again.val_accuracy == result.val_accuracy and again.train_loss == result.train_loss


def test_refresh_draws_fresh_instances():
    rounds = []

    def data(draw):
        rounds.append(draw)
        return pattern_dataset(seed=draw)

    spec = fewshot.TrainSpec("fomaml", n_way=3, n_query=2, meta_batch=2, iterations=7, hidden=4, val_every=7,
                             val_episodes=4, refresh_every=3)
    fewshot.train(spec, data, pattern_dataset(seed=9), seed=0)
    assert rounds == [0, 1, 2]


def test_evaluate_is_paired_by_seed_and_reports_a_ci():
    data = pattern_dataset(n_classes=8, n_per_class=6)
    net = ProtoNet(torch.nn.Flatten())  # raw pixels: the patterns are far apart
    r1 = fewshot.evaluate(net, data, 4, 1, 3, n_episodes=30, seed=5, chunk=7)
    r2 = fewshot.evaluate(net, data, 4, 1, 3, n_episodes=30, seed=5)
    assert r1["mean"] == r2["mean"] == 1.0 and r1["ci95"] == 0.0 and r1["episodes"] == 30
    maml = fewshot.make_learner(fewshot.TrainSpec("maml", n_way=4, hidden=4, test_steps=2), image_size=16)
    r = fewshot.evaluate(maml, data, 4, 2, 2, n_episodes=12, seed=0)
    assert 0 <= r["mean"] <= 1 and r["ci95"] > 0
    curve = fewshot.accuracy_vs_steps(maml, data, 4, 1, 2, max_steps=3, n_episodes=6, seed=0)
    assert curve["steps"] == [0, 1, 2, 3] and len(curve["mean"]) == len(curve["ci95"]) == 4


def test_tables_and_pictures():
    table = fewshot.results_table({"A": {"5-way 1-shot": {"mean": 0.98765, "ci95": 0.0043}}, "B": {}},
                                  ["5-way 1-shot", "20-way 1-shot"])
    assert table.loc["A", "5-way 1-shot"] == "98.77 ± 0.43" and table.loc["B", "20-way 1-shot"] == "—"
    assert fewshot.setting_name(20, 1) == "20-way 1-shot"
    specs = fewshot.spec_table([fewshot.TrainSpec("protonet"), fewshot.TrainSpec("maml")])
    assert list(specs.index) == ["ProtoNet", "MAML 5-way"] and specs.loc["ProtoNet", "inner_lr"] == "—"
    data = pattern_dataset(n_classes=5, n_per_class=4)
    picture = fewshot.class_mosaic(data, n_classes=3, n_instances=4)
    assert picture.shape == (3 * 18, 4 * 18) and 0 <= picture.min() and picture.max() <= 1
    images = torch.zeros(2, 1, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 4:24, 10:12] = 255  # a bar 2 px wide and 20 px long, centred
    stats = fewshot.image_stats(ClassDataset(images, ["a", "b"], ["g", "g"], "x"))
    assert stats["background"] == 0 and stats["max"] == 1.0
    assert stats["extent (fraction of frame)"] == pytest.approx(20 / 28, abs=1e-3)
    assert stats["stroke width (px)"] == pytest.approx(40 / 22, abs=1e-3)


# ----------------------------------------------------------------------------------------- error analysis
def test_one_shot_confusion_matches_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 2, generator=g)
    conf = fewshot.one_shot_confusion(z)
    n_classes, n = z.shape[:2]
    for a in range(n_classes):
        for b in range(n_classes):
            if a == b:
                assert conf[a, b] == 0
                continue
            wins, total = 0, 0
            for i in range(n):
                for j in range(n):
                    if j == i:
                        continue
                    for k in range(n):
                        wins += int(((z[a, i] - z[b, k]) ** 2).sum() < ((z[a, i] - z[a, j]) ** 2).sum())
                        total += 1
            assert conf[a, b].item() == pytest.approx(wins / total, abs=1e-12)
    with pytest.raises(ValueError, match="instances >= 2"):
        fewshot.one_shot_confusion(torch.zeros(3, 1, 2))


def test_expected_accuracy_of_known_confusions():
    conf = torch.zeros(6, 6)
    assert torch.allclose(fewshot.expected_accuracy(conf, 5), torch.ones(6, dtype=torch.float64))
    conf[0, 1] = 1.0  # class 0 always loses to class 1: right only when 1 is not among its 4 distractors (1/5)
    acc = fewshot.expected_accuracy(conf, 5)
    assert acc[0].item() == pytest.approx(1 / 5, abs=1e-12) and acc[1:].eq(1).all()
    # against a brute-force average over every set of distractors
    import itertools
    conf = torch.rand(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / 2
    conf.fill_diagonal_(0)
    for a in range(6):
        sets = list(itertools.combinations([b for b in range(6) if b != a], 2))
        brute = sum(float(torch.prod(1 - conf[a, list(c)])) for c in sets) / len(sets)
        assert fewshot.expected_accuracy(conf, 3)[a].item() == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="n_way must be between 2 and the 6 classes, got 7"):
        fewshot.expected_accuracy(conf, 7)


def test_confusion_report_names_the_confused_classes():
    data = pattern_dataset(n_classes=6, n_per_class=4)
    data.images[1] = data.images[0]  # classes 0 and 1 identical: the pair to find
    conf = fewshot.one_shot_confusion(data.images.flatten(2).float())
    report = fewshot.confusion_report(conf, data, n_way=3, top=2)
    assert set(report["pairs"]["class"].iloc[:1]) | set(report["pairs"]["confused with"].iloc[:1]) == {"c0", "c1"}
    assert set(report["classes"]["class"]) == {"c0", "c1"} and report["share"] > 0.9
    assert report["expected_accuracy"] < 1.0


# ----------------------------------------------------------------------------------------- resuming
class Interrupt(Exception):
    pass


def _interrupt_at_validation(monkeypatch, call: int):
    """Make the ``call``-th validation (1-based) of fewshot.train raise, as a crash or a kill would."""
    real, calls = fewshot.episode_accuracy, {"n": 0}

    def flaky(learner, batch, steps=None):
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupt
        return real(learner, batch, steps)

    monkeypatch.setattr(fewshot, "episode_accuracy", flaky)


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_an_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, learner):
    train = lambda r: pattern_dataset(n_classes=8, n_per_class=6, seed=10 + r)  # noqa: E731 (fresh instances per round)
    val = pattern_dataset(n_classes=5, seed=99, split="val")
    spec = fewshot.TrainSpec(learner, n_way=3, n_query=2, meta_batch=2, iterations=12, hidden=4, val_every=3,
                             val_episodes=4, refresh_every=5, inner_lr=0.1)
    straight = fewshot.train(spec, train, val, seed=1)

    path = tmp_path / "run.pt"
    _interrupt_at_validation(monkeypatch, call=3)  # dies in the validation of iteration 9: the file holds iteration 6
    with pytest.raises(Interrupt):
        fewshot.train(spec, train, val, seed=1, checkpoint=path)
    monkeypatch.undo()
    resumed = fewshot.train(spec, train, val, seed=1, checkpoint=path)

    assert resumed.iterations == straight.iterations == [3, 6, 9, 12]
    assert resumed.train_loss == straight.train_loss and resumed.val_accuracy == straight.val_accuracy
    assert resumed.best_iteration == straight.best_iteration
    a, b = straight.learner.state_dict(), resumed.learner.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a finished run comes back from its file without a single training step
    monkeypatch.setattr(type(resumed.learner), "meta_step", lambda *args: pytest.fail("trained again"))
    again = fewshot.train(spec, train, val, seed=1, checkpoint=path)
    assert again.val_accuracy == straight.val_accuracy
    assert all(torch.equal(a[k], again.learner.state_dict()[k]) for k in a)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    from mtml_lib.checkpoint import CheckpointError, save_checkpoint

    data, val = pattern_dataset(), pattern_dataset(n_classes=5, seed=99, split="val")
    spec = fewshot.TrainSpec("protonet", n_way=3, n_query=2, iterations=4, hidden=4, val_every=2, val_episodes=4)
    path = tmp_path / "run.pt"
    fewshot.train(spec, data, val, checkpoint=path)
    longer = fewshot.TrainSpec("protonet", n_way=3, n_query=2, iterations=8, hidden=4, val_every=2, val_episodes=4)
    with pytest.raises(CheckpointError, match="another training run .*n_iterations: 4 in the checkpoint, 8 now"):
        fewshot.train(longer, data, val, checkpoint=path)
    wider = fewshot.TrainSpec("protonet", n_way=3, n_query=2, iterations=4, hidden=6, val_every=2, val_episodes=4)
    with pytest.raises(CheckpointError, match="does not fit"):
        fewshot.train(wider, data, val, checkpoint=path)
    five_way = fewshot.TrainSpec("protonet", n_way=5, n_query=2, iterations=4, hidden=4, val_every=2, val_episodes=4)
    with pytest.raises(CheckpointError, match=r"another training run \(the learner's settings, seed or data"):
        fewshot.train(five_way, data, val, checkpoint=path)  # same network and loop, other episodes
    with pytest.raises(CheckpointError, match="seed or data"):
        fewshot.train(spec, data, val, seed=1, checkpoint=path)
    with pytest.raises(CheckpointError, match="seed or data"):
        fewshot.train(spec, pattern_dataset(n_classes=12), val, checkpoint=path)
    other = tmp_path / "model.pt"
    save_checkpoint(other, fewshot.make_learner(spec, image_size=16))
    with pytest.raises(CheckpointError, match="not written by meta_train"):
        fewshot.train(spec, data, val, checkpoint=other)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fewshot.train(spec, data, val, checkpoint=path)


def test_checkpoint_path_changes_with_every_setting(tmp_path):
    spec = fewshot.TrainSpec("maml", n_way=5)
    base = fewshot.checkpoint_path(spec, 0, "glyphs-v2", tmp_path)
    assert base.parent == tmp_path and base.name.startswith("maml-5-way-") and base.suffix == ".pt"
    assert base == fewshot.checkpoint_path(fewshot.TrainSpec("maml", n_way=5), 0, "glyphs-v2", tmp_path)
    others = {fewshot.checkpoint_path(fewshot.TrainSpec("maml", n_way=5, hidden=32), 0, "glyphs-v2", tmp_path),
              fewshot.checkpoint_path(spec, 1, "glyphs-v2", tmp_path),
              fewshot.checkpoint_path(spec, 0, "glyphs-v3", tmp_path)}
    assert base not in others and len(others) == 3


@pytest.mark.parametrize("profile", ["full", "paper"])
def test_every_learner_of_the_long_profiles_trains_and_evaluates(profile):
    # the full and paper profiles run for hours on a GPU: check their specs on tiny data (narrow networks, 16 x 16)
    import dataclasses

    from mtml_lib.profiles.few_shot import PROFILES

    settings = PROFILES[profile]
    data, val = pattern_dataset(n_classes=64, n_per_class=12), pattern_dataset(n_classes=24, n_per_class=12, seed=5,
                                                                               split="val")
    names = {s.name for s in settings.learners}
    assert len(names) == len(settings.learners)  # one name a learner: the notebook keys its results by name
    expected = {"full": {"ProtoNet", "MAML 5-way", "FOMAML 5-way", "ANIL 5-way", "Meta-SGD 5-way"},
                "paper": {"ProtoNet 1-shot", "ProtoNet 5-shot", "MAML 5-way 5-shot", "FOMAML 20-way 1-shot"}}
    assert names >= expected[profile]
    for n_way, k_shot in settings.eval_settings:  # every setting of the table has a learner
        assert any(spec.serves(n_way, k_shot) for spec in settings.learners), (n_way, k_shot)
    for spec in settings.learners:
        tiny = dataclasses.replace(spec, iterations=1, hidden=4, val_every=1, val_episodes=1, meta_batch=2)
        result = fewshot.train(tiny, data, val, seed=0)
        assert result.iterations == [1] and 0.0 <= result.val_accuracy[0] <= 1.0, spec.name
        for n_way, k_shot in settings.eval_settings:
            if spec.serves(n_way, k_shot):
                acc = fewshot.evaluate(result.learner, val, n_way, k_shot, n_query=1, n_episodes=2)
                assert 0.0 <= acc["mean"] <= 1.0, (spec.name, n_way, k_shot)


def test_the_refreshing_sampler_resumes_at_every_call_count():
    # the state after any number of calls, loaded into a new sampler, gives the batches the old one gives next
    spec = fewshot.TrainSpec("protonet", n_way=3, n_query=2, refresh_every=5)
    train = lambda r: pattern_dataset(n_classes=8, n_per_class=6, seed=10 + r)  # noqa: E731
    for calls in range(0, 22):
        original = fewshot._RefreshingSampler(train, spec, seed=4, device="cpu")
        for _ in range(calls):
            original(2)
        copy = fewshot._RefreshingSampler(train, spec, seed=4, device="cpu")
        copy.load_state_dict(original.state_dict())
        for _ in range(7):
            a, b = original(2), copy(2)
            assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x), calls


def test_a_resumable_run_needs_a_sampler_with_state(tmp_path):
    from mtml_lib.meta import meta_train

    learner = fewshot.make_learner(fewshot.TrainSpec("protonet", hidden=4), image_size=16)
    sampler = EpisodeSampler(pattern_dataset(), 3, 1, 2, seed=0)
    with pytest.raises(TypeError, match="resumable run needs a sampler with state_dict.*got function"):
        meta_train(learner, lambda n: sampler.sample(n), 2, meta_batch=1, log_every=1, checkpoint=tmp_path / "r.pt")


def test_head_init_zero_and_the_zeroing_trick():
    with pytest.raises(ValueError, match="head_init must be one of 'random', 'zero', 'zeroing', got 'zeros'"):
        fewshot.TrainSpec("maml", head_init="zeros")
    torch.manual_seed(0)
    zero = fewshot.make_learner(fewshot.TrainSpec("maml", n_way=3, hidden=4, head_init="zero"), image_size=16)
    assert zero.model.head.weight.abs().sum() == 0 and zero.model.head.bias.abs().sum() == 0
    assert zero.model.features[0][0].weight.abs().sum() > 0  # the backbone keeps its random init
    # at a zero head every class has the same logit; one inner step writes each class's support features
    # (centred over the classes) into its row: the row of class c is α/N_s Σ_{y=c} (1 - 1/N) φ(x) - ...
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    phi = zero.adapt(x[None], y[None], steps=1)
    features = zero.model.features(x)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    expected = zero.inner_lr * (onehot - 1 / 3).T @ features / 6
    assert torch.allclose(phi["head.weight"][0], expected, atol=1e-6)

    train_data, val_data = pattern_dataset(seed=0), pattern_dataset(seed=1, split="val")
    common = dict(n_way=3, n_query=2, meta_batch=2, iterations=4, hidden=4, val_every=2, val_episodes=4, inner_lr=0.1)
    zeroing = fewshot.train(fewshot.TrainSpec("maml", head_init="zeroing", **common), train_data, val_data, seed=0)
    head = zeroing.learner.model.head
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0  # reset after every meta-update
    only_init = fewshot.train(fewshot.TrainSpec("maml", head_init="zero", **common), train_data, val_data, seed=0)
    assert only_init.learner.model.head.weight.abs().sum() > 0  # the meta-update moves a zero-initialised head
    assert zeroing.val_accuracy != [] and only_init.val_accuracy != []


def test_published_protocol_switches_are_checked():
    for kwargs, message in ((dict(backbone="resnet"), "backbone must be one of 'conv4', 'strided'"),
                            (dict(loss="sum"), "loss must be one of 'mean', 'sum_over_shot'"),
                            (dict(select="best-val"), "select must be one of 'best', 'last'"),
                            (dict(halve_every=2000), "choose one schedule")):
        with pytest.raises(ValueError, match=message):
            fewshot.TrainSpec("maml", **kwargs)
    with pytest.raises(ValueError, match="'strided' is the MAML family's"):
        fewshot.TrainSpec("protonet", backbone="strided")
    one_shot = fewshot.TrainSpec("protonet", n_way=60, k_shot=1, match_shot=True)
    assert one_shot.serves(20, 1) and not one_shot.serves(5, 5) and one_shot.serves(5)
    assert fewshot.TrainSpec("maml", n_way=5).serves(5, 5)  # without match_shot any shot


def test_finns_summed_loss_is_the_mean_with_n_times_the_step():
    """Finn et al. sum a task's cross-entropy and divide by K: with N-way episodes their α is N·α on the mean."""
    common = dict(n_way=3, k_shot=2, hidden=4, inner_steps=1, backbone="strided")
    torch.manual_seed(0)
    finn = fewshot.make_learner(fewshot.TrainSpec("maml", inner_lr=0.1, loss="sum_over_shot", **common), image_size=16)
    mean = fewshot.make_learner(fewshot.TrainSpec("maml", inner_lr=0.3, **common), image_size=16)
    mean.load_state_dict(finn.state_dict())
    x, y = torch.rand(1, 6, 1, 16, 16), torch.tensor([[0, 0, 1, 1, 2, 2]])
    a, b = finn.adapt(x, y, steps=1), mean.adapt(x, y, steps=1)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    theta = dict(finn.model.named_parameters())
    assert torch.equal(a["norms.0.bias"][0], theta["norms.0.bias"])  # the normalisation is not adapted ...
    assert not torch.equal(a["convs.0.weight"][0], theta["convs.0.weight"])  # ... the convolutions are
    logits = torch.randn(6, 3)
    assert fewshot.sum_over_shot_cross_entropy(logits, y[0], 2) == pytest.approx(
        3 * torch.nn.functional.cross_entropy(logits, y[0]).item())


def test_halving_schedule_and_keeping_the_last_iterate():
    train_data, val_data = pattern_dataset(seed=0), pattern_dataset(seed=1, split="val")
    spec = fewshot.TrainSpec("protonet", n_way=3, n_query=2, iterations=12, hidden=4, val_every=3, val_episodes=20,
                             meta_lr=0.05, cosine=False, halve_every=4, select="last")
    rates = []
    real_step = ProtoNet.meta_step

    def recording(self, optimizer, batch):
        rates.append(optimizer.param_groups[0]["lr"])
        return real_step(self, optimizer, batch)

    ProtoNet.meta_step = recording
    try:
        last = fewshot.train(spec, train_data, val_data, seed=0)
    finally:
        ProtoNet.meta_step = real_step
    assert rates == [0.05] * 4 + [0.025] * 4 + [0.0125] * 4
    val_batch = EpisodeSampler(val_data, 3, 1, 2, seed=1).sample(20)
    # the last parameters are kept: re-measuring gives the last validation score, whatever the best was
    assert fewshot.episode_accuracy(last.learner, val_batch).mean().item() == pytest.approx(last.val_accuracy[-1])


def test_running_statistics_are_used_and_kept_at_evaluation():
    torch.manual_seed(0)
    net = fewshot.make_learner(fewshot.TrainSpec("protonet", hidden=4, norm="running"), image_size=16)
    batch = EpisodeSampler(pattern_dataset(), 3, 1, 2, seed=0).sample(4)
    bn = net.encoder.features[0][1]
    before = bn.running_mean.clone()
    assert net.training
    fewshot.episode_accuracy(net, batch)
    assert torch.equal(bn.running_mean, before) and net.training  # evaluated in eval mode, then back


def test_train_all_in_parallel_processes_gives_the_sequential_results(tmp_path):
    train = lambda r: pattern_dataset(n_classes=8, n_per_class=6, seed=10 + r)  # noqa: E731 (a function: fork, not pickle)
    val = pattern_dataset(n_classes=5, seed=99, split="val")
    specs = [fewshot.TrainSpec("protonet", n_way=3, n_query=2, iterations=6, hidden=4, val_every=3, val_episodes=4),
             fewshot.TrainSpec("maml", n_way=3, n_query=2, meta_batch=2, iterations=6, hidden=4, val_every=3,
                               val_episodes=4, inner_lr=0.1, head_init="zeroing")]
    seen = []
    one = fewshot.train_all(specs, train, val, seeds=(0, 1), workers=1)
    two = fewshot.train_all(specs, train, val, seeds=(0, 1), workers=2, checkpoint_root=tmp_path, data_key="x",
                            on_result=lambda r: seen.append((r.spec.name, r.seed)))
    assert list(one) == list(two) == [("ProtoNet", 0), ("ProtoNet", 1), ("MAML 3-way", 0), ("MAML 3-way", 1)]
    assert sorted(seen) == sorted(one)
    for key, a in one.items():
        b = two[key]
        assert a.seed == b.seed == key[1]
        assert a.val_accuracy == b.val_accuracy and a.train_loss == b.train_loss
        assert a.best_iteration == b.best_iteration and len(a.elapsed) == len(a.iterations) == 2
        sa, sb = a.learner.state_dict(), b.learner.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        # the selected parameters came across: they score the best validation accuracy again
        batch = EpisodeSampler(val, 3, 1, 2, seed=key[1] + 1).sample(4)
        assert fewshot.episode_accuracy(b.learner, batch).mean().item() == pytest.approx(b.best_val_accuracy)
    assert one[("ProtoNet", 0)].val_accuracy != one[("ProtoNet", 1)].val_accuracy or \
        one[("ProtoNet", 0)].train_loss != one[("ProtoNet", 1)].train_loss  # the seeds are different runs
    assert len(list(tmp_path.glob("*.pt"))) == 4  # one resumable file per run
    with pytest.raises(ValueError, match="share a name"):
        fewshot.train_all([specs[0], specs[0]], train, val)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        fewshot.train_all(specs, train, val, workers=0)


def test_results_over_seeds_and_paired_differences():
    import math

    from mtml_lib.metrics import student_t_quantile

    def run(mean, ci=0.01):
        return {"mean": mean, "ci95": ci}

    per_seed = {"MAML 5-way": {"5-way 1-shot": [run(0.90), run(0.92), run(0.94)]},
                "ProtoNet": {"5-way 1-shot": [run(0.95), run(0.97), run(0.99)], "20-way 1-shot": [run(0.9)] * 3},
                "FOMAML 5-way": {"5-way 1-shot": [run(0.80), run(0.95), run(0.87)]}}
    summary = fewshot.over_seeds(per_seed)
    maml = summary["MAML 5-way"]["5-way 1-shot"]
    assert maml["over"] == "seeds" and maml["seeds"] == [0.90, 0.92, 0.94] and maml["mean"] == pytest.approx(0.92)
    assert maml["ci95"] == pytest.approx(student_t_quantile(0.95, 2) * 0.02 / math.sqrt(3))  # s = 0.02
    single = fewshot.over_seeds({"ProtoNet": {"5-way 1-shot": [run(0.9, 0.03)]}})["ProtoNet"]["5-way 1-shot"]
    assert single["over"] == "episodes" and single["ci95"] == 0.03  # one seed: the interval over test episodes
    table = fewshot.paired_to(summary, "MAML 5-way", ["5-way 1-shot", "20-way 1-shot"])
    assert list(table.index) == ["ProtoNet", "FOMAML 5-way"]
    assert table.loc["ProtoNet", "5-way 1-shot"] == "+5.00 ± 0.00 *"  # the same +5 points at every seed
    assert table.loc["ProtoNet", "20-way 1-shot"] == "—"  # the reference has no 20-way result
    assert not table.loc["FOMAML 5-way", "5-way 1-shot"].endswith("*")  # -5, +3, -7: the seeds disagree
    with pytest.raises(ValueError, match="unknown reference learner 'MAML'"):
        fewshot.paired_to(summary, "MAML", ["5-way 1-shot"])
    one_seed = fewshot.over_seeds({"A": {"s": [run(0.9)]}, "B": {"s": [run(0.8)]}})
    with pytest.raises(ValueError, match="at least two seeds"):
        fewshot.paired_to(one_seed, "A", ["s"])


def test_plateau_table_reads_the_late_gain_of_each_learner():
    spec = fewshot.TrainSpec("maml", n_way=5)
    runs = {("MAML 5-way", s): fewshot.TrainResult(spec, None, iterations=[100, 200, 300], val_accuracy=[0.5, 0.8, v],
                                                    best_val_accuracy=max(0.8, v), seconds=120.0)
            for s, v in ((0, 0.9), (1, 0.7))}
    row = fewshot.plateau_table(runs).loc["MAML 5-way"]
    assert row["seeds"] == 2 and row["training minutes a seed"] == 2.0
    assert row["best validation accuracy (%)"] == pytest.approx(85.0)  # (90 + 80) / 2
    assert row["gain over the last 33 % (points)"] == pytest.approx(0.0)  # from iteration 200: +10 and -10


def test_one_inner_step_from_a_zero_head_moves_only_the_head_as_the_formula_says():
    data = pattern_dataset(n_classes=8, n_per_class=6)
    spec = fewshot.TrainSpec("maml", n_way=4, k_shot=2, hidden=4, inner_lr=0.3, head_init="zero")
    learner = fewshot.make_learner(spec, image_size=16)
    batch = EpisodeSampler(data, 4, 2, 3, seed=0).sample(3)
    out = fewshot.zero_head_step(learner, batch)
    assert out["backbone_change"] == 0.0  # no gradient reaches the features through a zero head
    assert out["head_formula_error"] < 1e-5 and out["anil_vs_maml"] < 1e-5
    assert -1.0 <= out["fomaml_cosine"] < 0.999  # the first-order gradient is another direction
    with torch.no_grad():
        learner.model.head.weight.add_(0.1)
    with pytest.raises(ValueError, match="needs a zero head"):
        fewshot.zero_head_step(learner, batch)
    # with a random head the backbone does move: the check above could fail
    random = fewshot.make_learner(fewshot.TrainSpec("maml", n_way=4, k_shot=2, hidden=4, inner_lr=0.3), image_size=16)
    fast = random.adapt(batch.support_x, batch.support_y, steps=1)
    theta = dict(random.model.named_parameters())
    assert max(float((fast[n] - theta[n].detach()).abs().max()) for n in fast if not n.startswith("head.")) > 0
    with pytest.raises(ValueError, match="MAML, FOMAML or ANIL"):
        fewshot.zero_head_step(fewshot.make_learner(fewshot.TrainSpec("metasgd", n_way=4, hidden=4, head_init="zero"),
                                                    image_size=16), batch)


# ------------------------------------------------------------- saving learners, fixed episode lists
def _tiny_data(n_classes=12, n_per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n_classes, n_per_class, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return ClassDataset(images=images, class_names=[f"c{i}" for i in range(n_classes)],
                        groups=["g"] * n_classes, split="test")


def test_save_load_round_trip_gives_the_same_predictions(tmp_path):
    from mtml_lib.checkpoint import CheckpointError

    data = _tiny_data()
    spec = fewshot.TrainSpec("maml", n_way=3, k_shot=1, n_query=2, iterations=3, hidden=8, val_every=2,
                             val_episodes=4, head_init="zeroing")
    ckpt = tmp_path / "run.pt"
    result = fewshot.train(spec, data, data, seed=1, checkpoint=ckpt)
    path = fewshot.save(result, tmp_path / "learner.pt", data="tiny random images")
    back = fewshot.load(path)
    assert back.spec == spec and back.image_shape == (1, 28, 28) and back.data == "tiny random images"
    assert back.best_iteration == result.best_iteration and back.val_accuracy == result.val_accuracy
    for k, v in result.learner.state_dict().items():
        assert torch.equal(v, back.learner.state_dict()[k])
    a = fewshot.evaluate(result.learner, data, 3, 1, 2, n_episodes=8, seed=5)
    b = fewshot.evaluate(back.learner, data, 3, 1, 2, n_episodes=8, seed=5)
    assert a["mean"] == b["mean"]
    # the training checkpoint: refused by load, its selected parameters through best_parameters
    with pytest.raises(CheckpointError, match="training checkpoint.*fewshot.best_parameters"):
        fewshot.load(ckpt)
    best = fewshot.best_parameters(ckpt)
    assert all(torch.equal(best[k], v) for k, v in result.learner.state_dict().items())
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        fewshot.best_parameters(path)
    # a file of another format version is refused with both versions named
    payload = torch.load(path, weights_only=True)
    payload["extra"]["kind"] = "mtml-learner-0"
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="'mtml-learner-0', not a learner of format 'mtml-learner-1'"):
        fewshot.load(tmp_path / "old.pt")


def test_fixed_episode_list_equals_the_sampler_path():
    data = _tiny_data()
    torch.manual_seed(0)
    learner = fewshot.make_learner(fewshot.TrainSpec("protonet", hidden=8))
    episodes = fewshot.episodes_from_sampler(data, 4, 2, 3, n_episodes=10, seed=7, chunk=4)
    assert len(episodes) == 10 and len(episodes[0].classes) == 4 and len(episodes[0].support[0]) == 2
    by_sampler = fewshot.evaluate(learner, data, 4, 2, 3, n_episodes=10, seed=7, chunk=4)
    by_list = fewshot.evaluate(learner, data, episodes=episodes, chunk=3)
    assert by_list["mean"] == pytest.approx(by_sampler["mean"], abs=1e-7) and by_list["episodes"] == 10
    batch = fewshot.episode_batch(data, episodes[:4])
    ref = EpisodeSampler(data, 4, 2, 3, seed=7).sample(4)
    assert torch.equal(batch.support_x, ref.support_x) and torch.equal(batch.query_y, ref.query_y)
    # class names work as well as indices; bad lists are named
    named = [fewshot.Episode(tuple(data.class_names[c] for c in e.classes), e.support, e.query) for e in episodes]
    assert fewshot.evaluate(learner, data, episodes=named)["mean"] == by_list["mean"]
    bad = fewshot.Episode(("c0", "nope"), ((0,), (1,)), ((2,), (3,)))
    with pytest.raises(ValueError, match="episode 0: class 'nope' is not in the test data set"):
        fewshot.episode_batch(data, [bad])
    with pytest.raises(ValueError, match="episode 1: expected 2 ways"):
        fewshot.episode_batch(data, [fewshot.Episode((0, 1), ((0,), (1,)), ((2,), (3,))),
                                     fewshot.Episode((0, 1, 2), ((0,), (1,), (2,)), ((2,), (3,), (4,)))])
    with pytest.raises(ValueError, match="distinct indices in 0..5"):
        fewshot.episode_batch(data, [fewshot.Episode((0, 1), ((0,), (1,)), ((0,), (9,)))])

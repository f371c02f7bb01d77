"""Profiles of notebook 04_few_shot_classification: N-way K-shot glyphs (and Omniglot) with ProtoNets and MAML.

``quick`` trains each learner for about a minute on a CPU: Conv4 with 32 filters, ProtoNets on 20-way
1-shot episodes (1,500 episodes, Adam 2e-3), the MAML family for 5-way only (500 meta-batches of 4 tasks,
Adam 2e-3), one seed, two learners at a time. ``full`` is the converged comparison a 2-core CPU runs in
about an hour and a half: Conv4 with 64 filters, as published; ProtoNets on 20-way 1-shot episodes for
4,000 episodes, the MAML family on 12,000 5-way 1-shot tasks (3,000 meta-batches of 4) with Adam on a
cosine schedule, fresh distortions of the training characters every 1,000 iterations, every learner with
three seeds (the seeds pair the learners), 600 test episodes with 15 queries per class. The MAML family
follows :data:`RECIPE` in both (a zero head after every meta-update, inner step 0.4, one step), and is
trained for 5-way only (a MAML model has one output per trained class; ProtoNets serve 20-way, and the
``paper`` profile trains 20-way MAML). ``smoke`` only checks that the notebook runs (a few fonts, a few
classes, a few iterations). ``full`` and ``paper`` are resumable: each learner's training state is
written to the cache at every validation, so a run that stops (a time limit, a crash) continues where it
was when started again; delete ``<cache>/fewshot`` to train from scratch.

``paper`` follows the published code on the glyph data (never chosen automatically; GPU-scale):

- **MAML and FOMAML** as Finn et al.'s Omniglot code (``cbfinn/maml``: ``main.py`` for the commands and
  flags, ``maml.py`` for the network, the losses and the optimiser, ``utils.py`` for the blocks and the
  loss): :class:`~mtml_lib.models.backbones.StridedConv4` (stride-2 convolutions, shift-only batch
  normalisation left out of the inner loop, averaged features, N(0, 1) head); the cross-entropy summed
  over a task's examples and divided by K, for the inner and the outer loss; 5-way: α = 0.4, one inner
  step, 32 tasks a meta-batch, tested after 3 steps; 20-way: α = 0.1, five steps, 16 tasks, tested after
  5; one model per shot (5-way 1-shot, 5-way 5-shot, 20-way 1-shot), trained with K queries per class;
  Adam 1e-3 without schedule for 60,000 meta-batches; the last parameters are kept (their code selects
  no model; the validation curve is recorded only). FOMAML is their ``stop_grad`` switch.
- **Prototypical Networks** as Snell et al.'s code (``jakesnell/prototypical-networks``): Conv4 with
  max-pooling and ``nn.BatchNorm2d`` whose running statistics serve at test time, flattened 64-d
  embeddings, squared Euclidean distance; 60-way episodes with 5 queries and the shot of the test (one
  model for 1-shot, one for 5-shot); Adam 1e-3 halved every 2,000 episodes.

Where it departs, and why: (1) the data are the glyph splits, not Omniglot (rotations as classes make no
sense for characters, a rotated glyph is often another character: training on Omniglot is a separate
data path); (2) ProtoNets keep the best parameters on glyph validation episodes for 40,000 episodes
(their step size is below 1e-9 by then) instead of stopping on the validation loss with a patience of 200
epochs and retraining on train + validation; (3) every learner is tested on the same 1,000 episodes with
15 queries per class (Snell et al.'s test; Finn et al. test 600 tasks with K queries, which changes the
spread of the estimate, not its expectation); (4) ANIL and Meta-SGD have no run in these papers and are
left out. Finn et al. report 98.7 ± 0.4, 99.9 ± 0.1 and 95.8 ± 0.3 % (5-way 1-shot, 5-way 5-shot,
20-way 1-shot on Omniglot), Snell et al. 98.8, 99.7 and 96.0 %.
"""

from dataclasses import dataclass

from mtml_lib.fewshot import TrainSpec


@dataclass(frozen=True)
class FewShotProfile:
    learners: tuple[TrainSpec, ...]  # one entry per trained learner (ProtoNets serve every way)
    fonts: tuple[str, ...] | None = None  # glyph fonts (None: every usable font of matplotlib)
    n_per_class: int = 20  # instances per glyph class, as Omniglot's 20 drawers
    max_classes: int | None = None  # keep at most this many classes per split (smoke)
    eval_settings: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 1))  # (n_way, k_shot) of the table
    eval_episodes: int = 600  # test episodes per setting
    eval_query: int = 15  # query images per class in test episodes
    steps_max: int = 10  # accuracy versus adaptation steps: 0..steps_max inner steps
    steps_episodes: int = 100  # episodes of that curve
    omniglot_episodes: int = 600  # test episodes on Omniglot (when its files are present)
    omniglot_settings: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 1))  # (n_way, k_shot) on Omniglot
    omniglot_train: bool = True  # when an Omniglot protocol's files are present, train the learners on it too
    omniglot_seeds: tuple[int, ...] = (0,)  # training seeds on Omniglot (added to the run's seed)
    #: (n_way, k_shot) of the published-protocol table on Omniglot (the papers' four settings)
    omniglot_protocol_settings: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 1), (20, 5))
    threads: int = 1  # CPU threads per training process: one is fastest on a busy machine
    workers: int = 1  # learners trained at once, in separate processes (independent runs: the same numbers)
    seeds: tuple[int, ...] = (0,)  # training seeds, added to the run's seed: every learner is trained with each
    resumable: bool = False  # keep each learner's training state in the cache; a rerun continues it


def _maml_family(n_way: int, **kwargs) -> tuple[TrainSpec, ...]:
    return tuple(TrainSpec(learner=name, n_way=n_way, **kwargs) for name in ("maml", "fomaml", "anil", "metasgd"))


#: the MAML family's recipe, chosen on the glyph meta-validation episodes (5-way 1-shot, quick sizes, 400
#: meta-batches; notebook 04 gives the numbers): a zero head after every meta-update (Kao, Chiu & Chen 2022),
#: the inner step of Finn et al. (0.4 on the mean loss; 0.1 and 0.8 scored lower), trained and tested
#: with one inner step
RECIPE = {"head_init": "zeroing", "inner_lr": 0.4, "inner_steps": 1, "test_steps": 1}


PROFILES = {
    "smoke": FewShotProfile(
        learners=(TrainSpec("protonet", n_way=5, iterations=4, hidden=8, norm="batchnorm", val_every=2, val_episodes=10),)
        + _maml_family(5, iterations=2, meta_batch=2, hidden=8, val_every=2, val_episodes=10, **RECIPE),
        fonts=("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral"),
        n_per_class=20,
        max_classes=60,
        eval_episodes=10,
        eval_query=5,
        steps_max=2,
        steps_episodes=4,
        omniglot_episodes=10,
        omniglot_train=False,  # CI loads the protocol's data when present, trains nothing on it
        workers=2,
        seeds=(0, 1),  # the code paths of the full profile: parallel learners, intervals over seeds
    ),
    "quick": FewShotProfile(
        learners=(TrainSpec("protonet", n_way=20, iterations=1500, meta_lr=2e-3, hidden=32, norm="batchnorm",
                            val_every=250, val_way=5, val_episodes=200, refresh_every=250),)
        + _maml_family(5, iterations=500, meta_batch=4, meta_lr=2e-3, hidden=32, val_every=100, val_episodes=100,
                       **RECIPE),
        eval_query=5,
        steps_episodes=50,
        omniglot_episodes=200,
        omniglot_settings=((5, 1), (20, 1)),
        workers=2,
    ),
    "full": FewShotProfile(
        learners=(TrainSpec("protonet", n_way=20, iterations=4000, meta_lr=1e-3, hidden=64, norm="batchnorm",
                            val_every=400, val_way=5, val_episodes=600, refresh_every=1000),)
        + _maml_family(5, iterations=3000, meta_batch=4, meta_lr=2e-3, hidden=64, val_every=250, val_episodes=300,
                       refresh_every=1000, **RECIPE),
        eval_query=15,
        steps_episodes=600,
        workers=2,
        seeds=(0, 1, 2),
        resumable=True,
    ),
    "paper": FewShotProfile(
        learners=tuple(TrainSpec("protonet", n_way=60, k_shot=k, n_query=5, iterations=40000, meta_lr=1e-3,
                                 cosine=False, halve_every=2000, hidden=64, norm="running", val_every=100,
                                 val_way=5, val_episodes=100, match_shot=True) for k in (1, 5))
        + tuple(TrainSpec(learner, n_way=n_way, k_shot=k, n_query=k, meta_batch=32 if n_way == 5 else 16,
                          iterations=60000, meta_lr=1e-3, cosine=False, inner_lr=0.4 if n_way == 5 else 0.1,
                          inner_steps=1 if n_way == 5 else 5, test_steps=3 if n_way == 5 else 5, hidden=64,
                          backbone="strided", loss="sum_over_shot", select="last", match_shot=True,
                          val_every=500, val_episodes=100)
                for learner in ("maml", "fomaml") for n_way, k in ((5, 1), (5, 5), (20, 1))),
        eval_episodes=1000,
        eval_query=15,
        steps_episodes=600,
        omniglot_episodes=1000,
        resumable=True,
    ),
}

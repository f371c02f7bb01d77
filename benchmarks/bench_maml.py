"""Meta-training throughput of second-order MAML: batched torch.func path vs per-task loop vs ``higher``.

Two cases, each one Adam meta-step of second-order MAML (one inner step) on a fixed meta-batch:

- ``sinusoid``: MLP 1-40-40-1, 25 tasks, K = 10 support + 10 query points, α = 0.01 (Finn et al. 2017);
- ``conv4``: Conv4 (64 filters, PlainBatchNorm2d) on 28x28 images, 5-way 1-shot with 5 query images per
  class, α = 0.4, a meta-batch of ``--conv-tasks`` tasks (the paper uses 32; fewer keeps the run short).

Paths: ``vmap`` (``MetaLearner(batched=True)``), ``vmap+compile`` (the same under ``torch.compile``),
``loop`` (``MetaLearner(batched=False)``, ``torch.autograd`` one task at a time) and ``higher``
(``higher.innerloop_ctx`` with a differentiable SGD, one task at a time, the common recipe), plus for
Conv4 the default ``auto`` path, which takes the loop on the CPU (faster there for convolutions) and
for ``nn.BatchNorm2d`` anywhere (vmap's second-order gradient would be wrong).

Before timing, every path's meta-gradient is compared with the loop's on the same tasks (float32,
relative error of the whole gradient vector); a path that disagrees is reported and not timed. Timing:
``--repeats`` rounds, each timing ``--steps`` meta-steps of every path in turn (so that load from other
processes hits all paths alike); the table shows the median over rounds.

Run: ``.venv/bin/python benchmarks/bench_maml.py`` (``--help`` for options). ``higher`` is a
benchmark-only dependency (``requirements-bench.txt``); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved_median  # noqa: E402
from mtml_lib.data.sinusoid import SinusoidTasks  # noqa: E402
from mtml_lib.meta import MetaLearner, TaskBatch  # noqa: E402
from mtml_lib.models import MLP, Conv4  # noqa: E402

try:
    import higher
    from importlib.metadata import version as _version

    HIGHER_VERSION = _version("higher")
except ImportError:  # benchmark-only dependency
    higher, HIGHER_VERSION = None, "not installed"


# ------------------------------------------------------------------------------------------ cases
def sinusoid_case(seed: int):
    torch.manual_seed(seed)
    batch = SinusoidTasks().sample(25, 10, generator=torch.Generator().manual_seed(seed))
    return MLP([1, 40, 40, 1]), F.mse_loss, batch, 0.01


def conv4_case(seed: int, n_tasks: int, norm: str = "plain"):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n_way, k_shot, n_query = 5, 1, 5
    labels = lambda k: torch.arange(n_way).repeat_interleave(k).expand(n_tasks, -1).clone()  # noqa: E731
    batch = TaskBatch(torch.randn(n_tasks, n_way * k_shot, 1, 28, 28, generator=g), labels(k_shot),
                      torch.randn(n_tasks, n_way * n_query, 1, 28, 28, generator=g), labels(n_query))
    return Conv4(1, 64, n_way, norm=norm), F.cross_entropy, batch, 0.4


# ------------------------------------------------------------------------------------------ paths
class LearnerPath:
    """One meta-step through MetaLearner.meta_step (vmap, vmap+compile, loop or auto)."""

    def __init__(self, model, loss_fn, inner_lr, **options):
        self.model = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.learner = MetaLearner(self.model, loss_fn, "maml", inner_lr=inner_lr, **options)
        self.opt = torch.optim.Adam(self.learner.parameters(), lr=1e-3)

    def gradient(self, batch: TaskBatch) -> torch.Tensor:
        grads, _ = self.learner.meta_gradient(batch)
        return torch.cat([grads[f"model.{n}"].reshape(-1) for n, _ in self.model.named_parameters()])

    def step(self, batch: TaskBatch) -> None:
        self.learner.meta_step(self.opt, batch)


class HigherPath:
    """The same meta-step written with ``higher``: a differentiable inner SGD per task."""

    def __init__(self, model, loss_fn, inner_lr):
        self.model = copy.deepcopy(model)
        self.loss_fn = loss_fn
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=inner_lr)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        total = 0.0
        for i in range(batch.n_tasks):
            with higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                diffopt.step(self.loss_fn(fmodel(batch.support_x[i]), batch.support_y[i]))
                total = total + self.loss_fn(fmodel(batch.query_x[i]), batch.query_y[i])
        return total / batch.n_tasks

    def gradient(self, batch: TaskBatch) -> torch.Tensor:
        grads = torch.autograd.grad(self.meta_loss(batch), list(self.model.parameters()))
        return torch.cat([g.reshape(-1) for g in grads])

    def step(self, batch: TaskBatch) -> None:
        self.opt.zero_grad()
        self.meta_loss(batch).backward()
        self.opt.step()


# ----------------------------------------------------------------------------------------- driver
def run_case(name: str, model, loss_fn, batch, inner_lr, args, extra_paths=()) -> list[dict]:
    paths = {"vmap": lambda: LearnerPath(model, loss_fn, inner_lr, batched=True),
             "loop": lambda: LearnerPath(model, loss_fn, inner_lr, batched=False)}
    if not args.no_compile:
        paths["vmap+compile"] = lambda: LearnerPath(model, loss_fn, inner_lr, batched=True, compile=True)
    if higher is not None:
        paths["higher"] = lambda: HigherPath(model, loss_fn, inner_lr)
    paths.update(dict(extra_paths))
    reference = LearnerPath(model, loss_fn, inner_lr, batched=False).gradient(batch)
    runners, rows = {}, []
    for path, make in paths.items():
        row = {"case": name, "path": path, "rel_err": float("nan"), "ms": float("nan"), "note": ""}
        rows.append(row)
        try:
            runner = make()
            start = time.perf_counter()
            row["rel_err"] = float((runner.gradient(batch) - reference).norm() / reference.norm())
            row["first_call_s"] = time.perf_counter() - start
        except Exception as err:  # a path that cannot run (e.g. torch.compile on this platform) is reported
            refused = isinstance(err, ValueError) and "refused" in str(err)
            row["note"] = ("refused, as it must (vmap's 2nd-order gradient would be wrong)" if refused
                           else f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}")
            continue
        if not row["rel_err"] <= args.tolerance:
            row["note"] = f"gradient differs from the loop (rel. error {row['rel_err']:.1e}); not timed"
            continue
        if isinstance(runner, LearnerPath):
            row["note"] = f"path={runner.learner.path}"
        runners[path] = runner
    step_s = interleaved_median({path: (lambda r=runner: r.step(batch)) for path, runner in runners.items()},
                                args.repeats, args.steps, warmup=2)
    for row in rows:
        if row["path"] in step_s:
            row["ms"] = 1e3 * step_s[row["path"]]
    return rows


def print_table(rows: list[dict]) -> None:
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["path"]] = row
    print(f"\n{'case':<18}{'path':<16}{'ms/step':>9}{'steps/s':>9}{'vs loop':>9}{'vs higher':>10}{'grad rel.err':>14}  note")
    for case, paths in by_case.items():
        loop, hi = paths.get("loop", {}).get("ms"), paths.get("higher", {}).get("ms")
        for path, row in paths.items():
            ms = row["ms"]
            vs = lambda ref: f"{ref / ms:8.2f}x" if ref and ms == ms and ref == ref else f"{'-':>9}"  # noqa: E731
            print(f"{case:<18}{path:<16}{ms:9.2f}{1e3 / ms if ms == ms else float('nan'):9.1f}{vs(loop)}{vs(hi):>10}"
                  f"{row['rel_err']:14.1e}  {row['note']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (median reported)")
    parser.add_argument("--steps", type=int, default=20, help="meta-steps per round and path (Conv4: a quarter)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--conv-tasks", type=int, default=4, help="tasks per Conv4 meta-batch")
    parser.add_argument("--cases", default="sinusoid,conv4", help="comma-separated: sinusoid, conv4")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative gradient error vs the loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"bench_maml: torch {torch.__version__}, higher {HIGHER_VERSION}, "
          f"CPU {cpu} ({torch.get_num_threads()} thread(s) used), python {platform.python_version()}")
    print(f"timing: median of {args.repeats} rounds; second-order MAML, 1 inner step, Adam meta-step; float32")
    rows = []
    cases = args.cases.split(",")
    if "sinusoid" in cases:
        rows += run_case("sinusoid MLP", *sinusoid_case(args.seed), args)
    if "conv4" in cases:
        conv_args = argparse.Namespace(**{**vars(args), "steps": max(1, args.steps // 4)})
        bn_model, bn_loss, bn_batch, bn_lr = conv4_case(args.seed, args.conv_tasks, norm="batchnorm")
        model, loss_fn, batch, lr = conv4_case(args.seed, args.conv_tasks)
        rows += run_case(f"Conv4 5w1s x{args.conv_tasks}", model, loss_fn, batch, lr, conv_args,
                         extra_paths=[("auto", lambda: LearnerPath(model, loss_fn, lr))])
        rows += run_case(f"Conv4-BN 5w1s x{args.conv_tasks}", bn_model, bn_loss, bn_batch, bn_lr,
                         argparse.Namespace(**{**vars(conv_args), "no_compile": True}),
                         extra_paths=[("auto", lambda: LearnerPath(bn_model, bn_loss, bn_lr))])
    print_table(rows)
    ms = {(r["case"], r["path"]): r["ms"] for r in rows}
    print()
    verdicts = []
    if "sinusoid" in cases:
        loop, vm, hi = (ms.get(("sinusoid MLP", p)) for p in ("loop", "vmap", "higher"))
        verdicts.append(("sinusoid: vmap vs loop", loop / vm, 4.0))
        if hi:
            verdicts.append(("sinusoid: vmap vs higher", hi / vm, 8.0))
        if ms.get(("sinusoid MLP", "vmap+compile")) == ms.get(("sinusoid MLP", "vmap+compile")) and ("sinusoid MLP", "vmap+compile") in ms:
            print(f"sinusoid: vmap+compile vs vmap: {vm / ms[('sinusoid MLP', 'vmap+compile')]:.2f}x (informative)")
    if "conv4" in cases:
        case = f"Conv4 5w1s x{args.conv_tasks}"
        print(f"Conv4: forced vmap vs loop {ms[(case, 'loop')] / ms[(case, 'vmap')]:.2f}x (informative: on the CPU "
              "the adapted filters make vmap run grouped convolutions, so 'auto' takes the loop there)")
        # 'auto' runs the loop's code on the CPU: a ratio a little under 1 is timing noise, hence the 0.9
        verdicts.append(("Conv4: auto (the default) vs loop", ms[(case, "loop")] / ms[(case, "auto")], 0.9))
        bn = f"Conv4-BN 5w1s x{args.conv_tasks}"
        print(f"Conv4 with nn.BatchNorm2d: 'auto' takes the loop; auto vs loop {ms[(bn, 'loop')] / ms[(bn, 'auto')]:.2f}x")
    ok = True
    for label, ratio, target in verdicts:
        passed = ratio == ratio and ratio >= target
        ok &= passed
        print(f"{label}: {ratio:.2f}x (target >= {target:g}x) {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

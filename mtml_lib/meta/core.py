"""The MAML family as one functional core: inner loop, meta-loss, meta-gradient, adaptation, evaluation.

See the package docstring (:mod:`mtml_lib.meta`) for the mathematics and the API; this module holds
:class:`MetaLearner` and the pure pieces it is made of (:func:`inner_update`).

Two execution paths compute the same numbers:

- ``"vmap"``: one task is written as a pure function of the parameters (``torch.func.functional_call``
  for the forward pass, ``torch.func.grad`` for the inner gradient) and ``torch.func.vmap`` maps it over
  the tasks of the meta-batch, so a meta-step is a handful of batched kernels instead of ``T`` Python
  iterations;
- ``"loop"``: the reference. A Python loop over the tasks with ``torch.autograd.grad(...,
  create_graph=True)``, the textbook implementation and the one the tests compare against.

Why a loop path still exists: ``vmap`` over ``nn.BatchNorm*`` (and ``nn.InstanceNorm*``) gives a *wrong
second-order* meta-gradient with torch 2.13 (first order is right; finite differences agree with the
loop). ``batched="auto"`` therefore falls back to the loop, with a warning, whenever the model holds one
of those modules, and ``batched=True`` refuses such a model. ``mtml_lib.models.PlainBatchNorm2d`` is
the same normalisation written from plain tensor ops and is exact under ``vmap``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from mtml_lib.meta.tasks import TaskBatch

Params = dict[str, torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the algorithms :class:`MetaLearner` implements
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "anil", "metasgd", "reptile")
_BATCHED_CHOICES = ("auto", True, False)


# ------------------------------------------------------------------------------------ pure pieces
def inner_update(params: Params, grads: Params, lr: float | Params) -> Params:
    """One gradient-descent step ``θ' = θ − α ⊙ g`` on the entries named in ``grads``.

    ``lr`` is one number (MAML) or one tensor per entry, shaped like it (Meta-SGD). Entries of ``params``
    without a gradient are returned unchanged. Nothing is modified in place, so the result stays a
    differentiable function of ``params`` (and of ``lr``).
    """
    out = dict(params)
    for name, g in grads.items():
        step = lr[name] if isinstance(lr, dict) else lr
        out[name] = params[name] - step * g
    return out


def normalisation_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.BatchNorm*`` / ``nn.InstanceNorm*`` modules of ``model`` (``vmap``-unsafe)."""
    return [name or type(model).__name__ for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


def last_layer_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters of the last submodule that owns parameters (the "head")."""
    last: str | None = None
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            last = name
    if last is None:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    prefix = f"{last}." if last else ""
    return [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix) and "." not in n[len(prefix):]]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = " (meta-training needs at least one inner step: with 0 the meta-loss ignores adaptation)" if minimum == 1 else ""
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return value


class MetaOutput(NamedTuple):
    """What one meta-step computed. ``loss``: mean query loss over the tasks (differentiable for the
    MAML family). ``task_losses``: ``(T,)`` query loss of each task after adaptation. ``inner_losses``:
    ``(T, steps)`` support loss before each inner step. The last two are detached."""

    loss: torch.Tensor
    task_losses: torch.Tensor
    inner_losses: torch.Tensor


class Evaluation(NamedTuple):
    """Query loss (and metric) of each task after 0, 1, ..., ``steps`` inner steps: ``(steps + 1, T)``."""

    loss: torch.Tensor
    metric: torch.Tensor | None


# -------------------------------------------------------------------------------------- the learner
class MetaLearner(nn.Module):
    """A model, a per-task loss and one algorithm of the MAML family.

    Parameters
    ----------
    model: any ``nn.Module`` mapping ``(n, *x_shape)`` inputs to ``(n, *out_shape)`` predictions; its
        trainable parameters are θ. Buffers and frozen parameters are used as they are.

    loss_fn: ``loss_fn(prediction, target) -> scalar``, the loss of one task's set (``F.mse_loss``,
        ``F.cross_entropy``...). It must be written from tensor ops (it runs under ``vmap``).

    algorithm: one of :data:`ALGORITHMS`.

    inner_lr: α, the inner-loop step size (Meta-SGD: the initial value of every learned rate).

    inner_steps: inner steps during meta-training (>= 1).

    test_steps: inner steps of :meth:`adapt` and :meth:`evaluate` by default (>= 0).

    inner_params: name prefixes of the parameters the inner loop adapts. Default: all of θ, except for
        ANIL, where it is the last layer (:func:`last_layer_names`).

    first_order: drop the second-order term. Default: True for ``fomaml``, False otherwise (Reptile is
        first-order by construction and ignores it).

    batched: ``"auto"``, ``True`` (vmap; refuses models with ``nn.BatchNorm*``/``nn.InstanceNorm*``) or
        ``False`` (the per-task loop). ``"auto"`` takes vmap except (1) for a model with
        ``nn.BatchNorm*``/``nn.InstanceNorm*`` (loop, with a warning: vmap's second-order gradient is
        wrong) and (2) for a model with convolutions on the CPU (loop: under vmap each task's adapted
        filters become a grouped convolution, measured 1.4-2x slower than the loop on CPU with torch
        2.13). The choice is remade when the learner is moved (``learner.to(device)``); ``path`` and
        ``path_reason`` say what was chosen.

    compile: on the vmap path, run :meth:`meta_gradient` as one ``torch.compile``-d function (the first
        call compiles, ~30 s on a laptop CPU; later meta-steps are several times faster). The returned
        ``loss`` is then detached; :meth:`meta_loss` itself stays eager and differentiable.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Loss,
        algorithm: str = "maml",
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        test_steps: int = 10,
        inner_params: Sequence[str] | None = None,
        first_order: bool | None = None,
        batched: bool | str = "auto",
        compile: bool = False,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(prediction, target), got {type(loss_fn).__name__}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; valid algorithms: {', '.join(map(repr, ALGORITHMS))}")
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)) or not math.isfinite(inner_lr) or inner_lr <= 0:
            raise ValueError(f"inner_lr must be a finite number > 0, got {inner_lr!r}")
        if batched not in _BATCHED_CHOICES or isinstance(batched, int) and not isinstance(batched, bool):
            raise ValueError(f"batched must be one of {_BATCHED_CHOICES}, got {batched!r}")
        if algorithm == "fomaml" and first_order is False:
            raise ValueError("algorithm 'fomaml' is first-order by definition; use algorithm='maml' for second order")
        self.model = model
        self.loss_fn = loss_fn
        self.algorithm = algorithm
        self.inner_lr = float(inner_lr)
        self.inner_steps = _check_int(inner_steps, "inner_steps", 1)
        self.test_steps = _check_int(test_steps, "test_steps", 0)
        self.first_order = algorithm in ("fomaml", "reptile") if first_order is None else bool(first_order)
        if algorithm == "reptile":
            self.first_order = True
        self.adapted_names = self._resolve_inner_params(inner_params)
        if algorithm == "metasgd":
            # ParameterDict keys cannot contain dots; the mapping back is in _lrs().
            self.inner_lrs = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for n, p in model.named_parameters() if n in self.adapted_names}
            )
        self.batched = batched
        norms = normalisation_modules(model)
        if batched is True and norms:
            raise ValueError(
                f"batched=True refused: the model has nn.BatchNorm/InstanceNorm modules {norms}, for which vmap gives a "
                "wrong second-order meta-gradient; use mtml_lib.models.PlainBatchNorm2d (Conv4(norm='plain')) or "
                "batched='auto'/False (the per-task loop)"
            )
        if batched == "auto" and norms:
            warnings.warn(
                f"model has nn.BatchNorm/InstanceNorm modules {norms}: using the per-task loop, because vmap would give a "
                "wrong second-order meta-gradient; Conv4(norm='plain') is exact and batched",
                stacklevel=2,
            )
        self.path, self.path_reason = self._choose_path()
        self.compile = bool(compile)
        self._compiled = None

    def _choose_path(self) -> tuple[str, str]:
        if self.batched is False:
            return "loop", "batched=False"
        norms = normalisation_modules(self.model)
        if norms:
            return "loop", f"nn.BatchNorm/InstanceNorm modules {norms}: vmap's second-order gradient would be wrong"
        if self.batched == "auto":
            convs = [n for n, m in self.model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
            if convs and device.type == "cpu":
                return "loop", f"{len(convs)} convolution(s) on the CPU: the per-task loop is faster there"
        return "vmap", "batched=True" if self.batched is True else "auto"

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .double() ... go through here: the fastest path may differ on the new device
        out = super()._apply(fn, *args, **kwargs)
        if "batched" in self.__dict__:
            self.path, self.path_reason = self._choose_path()
        return out

    # ----------------------------------------------------------------------------- parameters
    def _resolve_inner_params(self, inner_params: Sequence[str] | None) -> list[str]:
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"model {type(self.model).__name__} has no trainable parameters")
        if inner_params is None:
            return last_layer_names(self.model) if self.algorithm == "anil" else trainable
        if isinstance(inner_params, str):
            inner_params = [inner_params]
        names: list[str] = []
        for prefix in inner_params:
            match = [n for n in trainable if n == prefix or n.startswith(prefix + ".")]
            if not match:
                raise ValueError(f"inner_params prefix {prefix!r} matches no trainable parameter; parameters: {trainable}")
            names += [n for n in match if n not in names]
        return [n for n in trainable if n in names]

    def _theta(self) -> tuple[Params, Params]:
        """(θ: the trainable parameters, the rest: buffers and frozen parameters), live tensors."""
        params, rest = {}, dict(self.model.named_buffers())
        for name, p in self.model.named_parameters():
            (params if p.requires_grad else rest)[name] = p
        return params, rest

    def _lrs(self) -> float | Params:
        if self.algorithm != "metasgd":
            return self.inner_lr
        return {n: self.inner_lrs[_key(n)] for n in self.adapted_names}

    def learned_inner_lrs(self) -> Params:
        """Meta-SGD's learned per-parameter inner learning rates, by parameter name (detached)."""
        if self.algorithm != "metasgd":
            raise ValueError(f"only algorithm 'metasgd' learns its inner learning rates (this learner is {self.algorithm!r})")
        return {n: v.detach() for n, v in self._lrs().items()}

    # ------------------------------------------------------------------------ per-task pieces
    def _forward(self, params: Params, rest: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (params, rest), (x,))

    def _loss(self, params: Params, rest: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self._forward(params, rest, x), y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor for one task, got {shape}")
        return loss

    def _autograd_grads(self, loss: torch.Tensor, params: Params, first_order: bool) -> Params:
        """∇ of ``loss`` w.r.t. the adapted entries of ``params`` with ``torch.autograd`` (loop, façade)."""
        inputs = [params[n] for n in self.adapted_names]
        grads = torch.autograd.grad(loss, inputs, create_graph=not first_order, allow_unused=True)
        return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(self.adapted_names, inputs, grads)}

    def _support_grads(self, engine: str, params: Params, rest: Params, x, y, first_order: bool) -> tuple[Params, torch.Tensor]:
        if engine == "func":
            def loss_of(fast: Params):
                loss = self._loss({**params, **fast}, rest, x, y)
                return loss, loss.detach()

            grads, loss = torch.func.grad(loss_of, has_aux=True)({n: params[n] for n in self.adapted_names})
        else:
            loss = self._loss(params, rest, x, y)
            grads = self._autograd_grads(loss, params, first_order)
            loss = loss.detach()
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        return grads, loss

    def _adapt_task(self, engine: str, params: Params, rest: Params, lrs, x, y, steps: int, first_order: bool,
                    query=None, metric=None):
        """Inner loop of one task. Returns (adapted params, support losses (steps,), query curve or None)."""
        inner, curve, scores = [], [], []

        def measure(p: Params):
            if query is not None:
                pred = self._forward(p, rest, query[0])
                curve.append(self.loss_fn(pred, query[1]).detach())
                if metric is not None:
                    scores.append(torch.as_tensor(metric(pred, query[1])).detach().to(pred.dtype))

        for _ in range(steps):
            measure(params)
            grads, loss = self._support_grads(engine, params, rest, x, y, first_order)
            inner.append(loss)
            params = inner_update(params, grads, lrs)
        measure(params)
        inner_t = torch.stack(inner) if inner else x.new_zeros(0)
        curves = (torch.stack(curve), torch.stack(scores) if scores else None) if query is not None else None
        return params, inner_t, curves

    def _task_meta_loss(self, engine: str, params, rest, lrs, sx, sy, qx, qy, steps: int):
        fast, inner, _ = self._adapt_task(engine, params, rest, lrs, sx, sy, steps, self.first_order)
        return self._loss(fast, rest, qx, qy), inner

    # ------------------------------------------------------------------------------ meta-loss
    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> MetaOutput:
        """Mean over the tasks of the query loss after ``steps`` (default ``inner_steps``) inner steps.

        ``loss`` is differentiable w.r.t. θ (and Meta-SGD's rates): ``loss.backward()`` gives the
        meta-gradient. Not defined for Reptile, which has no differentiable meta-objective: use
        :meth:`meta_gradient` or :meth:`meta_step`.
        """
        if self.algorithm == "reptile":
            raise ValueError("Reptile has no differentiable meta-loss; use meta_gradient() or meta_step()")
        batch = _as_batch(batch)
        steps = self.inner_steps if steps is None else _check_int(steps, "steps", 1)
        params, rest = self._theta()
        lrs = self._lrs()
        if self.path == "vmap":
            def one_task(sx, sy, qx, qy):
                return self._task_meta_loss("func", params, rest, lrs, sx, sy, qx, qy, steps)

            task_losses, inner = vmap(one_task, randomness="different")(*batch.tensors())
        else:
            outs = [self._task_meta_loss("autograd", params, rest, lrs, *(t[i] for t in batch.tensors()), steps)
                    for i in range(batch.n_tasks)]
            task_losses = torch.stack([o[0] for o in outs])
            inner = torch.stack([o[1] for o in outs])
        _check_finite(inner, task_losses.detach(), self.inner_lr)
        return MetaOutput(task_losses.mean(), task_losses.detach(), inner)

    def meta_gradient(self, batch: TaskBatch, steps: int | None = None) -> tuple[Params, MetaOutput]:
        """The meta-gradient, by name of :meth:`named_parameters` (``model.*``, Meta-SGD's ``inner_lrs.*``).

        MAML family: ∇ of :meth:`meta_loss`. Reptile: ``(θ − φ̄) / (α · steps)``, the mean over tasks
        of the distance travelled by the inner loop on the support set, scaled so that one step gives the
        support-loss gradient; the query set only measures the adapted model (``task_losses``).
        """
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if self.compile and self.path == "vmap":
            return self._compiled_meta_gradient(_as_batch(batch), steps)
        if self.algorithm != "reptile":
            out = self.meta_loss(batch, steps)
            grads = torch.autograd.grad(out.loss, [p for _, p in named], allow_unused=True)
            return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)}, out
        batch = _as_batch(batch)
        steps = self.inner_steps if steps is None else _check_int(steps, "steps", 1)
        fast, inner, _ = self._adapt_batch(batch.support_x, batch.support_y, steps)
        task_losses = self._query_losses(fast, batch.query_x, batch.query_y)
        _check_finite(inner, task_losses, self.inner_lr)
        theta = dict(self.model.named_parameters())
        grads = {n: torch.zeros_like(p) for n, p in named}
        for name in self.adapted_names:
            grads[f"model.{name}"] = (theta[name].detach() - fast[name]).mean(0) / (self.inner_lr * steps)
        return grads, MetaOutput(task_losses.mean(), task_losses, inner)

    def _functional_meta_gradient(self, params: Params, lrs, rest: Params, sx, sy, qx, qy, steps: int):
        """Pure function of detached tensors -> (meta-gradient by name, task losses, inner losses).

        The same mathematics as the eager vmap path, written with ``torch.func.grad`` for the outer
        gradient too, so that ``torch.compile`` can trace the whole meta-step into one graph.
        """
        if self.algorithm == "reptile":
            def adapt(x, y):
                fast, inner, _ = self._adapt_task("func", params, rest, lrs, x, y, steps, True)
                return fast, inner

            fast, inner = vmap(adapt, randomness="different")(sx, sy)
            task_losses = vmap(lambda p, x, y: self.loss_fn(self._forward(p, rest, x), y), randomness="different")(fast, qx, qy)
            grads = {f"model.{n}": (params[n] - fast[n]).mean(0) / (self.inner_lr * steps) for n in self.adapted_names}
            return grads, task_losses, inner

        def objective(theta: Params, rates):
            def one_task(sx, sy, qx, qy):
                return self._task_meta_loss("func", theta, rest, rates, sx, sy, qx, qy, steps)

            task_losses, inner = vmap(one_task, randomness="different")(sx, sy, qx, qy)
            return task_losses.mean(), (task_losses.detach(), inner)

        if isinstance(lrs, dict):
            (g_theta, g_lrs), (task_losses, inner) = torch.func.grad(objective, argnums=(0, 1), has_aux=True)(params, lrs)
            grads = {f"model.{n}": g for n, g in g_theta.items()}
            grads.update({f"inner_lrs.{_key(n)}": g for n, g in g_lrs.items()})
        else:
            g_theta, (task_losses, inner) = torch.func.grad(objective, has_aux=True)(params, lrs)
            grads = {f"model.{n}": g for n, g in g_theta.items()}
        return grads, task_losses, inner

    def _compiled_meta_gradient(self, batch: TaskBatch, steps: int | None) -> tuple[Params, MetaOutput]:
        steps = self.inner_steps if steps is None else _check_int(steps, "steps", 1)
        if self._compiled is None:
            self._compiled = torch.compile(self._functional_meta_gradient)
        params, rest = self._theta()
        lrs = self._lrs()
        lrs = {n: v.detach() for n, v in lrs.items()} if isinstance(lrs, dict) else lrs
        args = ({n: p.detach() for n, p in params.items()}, lrs, rest, *batch.tensors(), steps)
        try:
            grads, task_losses, inner = self._compiled(*args)
        except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler for inductor on this machine
            # The eager function computes the same numbers, so continuing is safe; say so loudly.
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                          "continuing with the eager vmap path", stacklevel=3)
            self._compiled = self._functional_meta_gradient
            grads, task_losses, inner = self._compiled(*args)
        _check_finite(inner, task_losses, self.inner_lr)
        full = {n: grads.get(n, torch.zeros_like(p)) for n, p in self.named_parameters() if p.requires_grad}
        return full, MetaOutput(task_losses.mean(), task_losses, inner)

    def meta_step(self, optimizer: torch.optim.Optimizer, batch: TaskBatch, steps: int | None = None) -> MetaOutput:
        """One meta-training step: compute :meth:`meta_gradient`, write it to ``.grad``, ``optimizer.step()``."""
        grads, out = self.meta_gradient(batch, steps)
        for name, p in self.named_parameters():
            if name in grads:
                p.grad = grads[name].detach()
        optimizer.step()
        return MetaOutput(out.loss.detach(), out.task_losses, out.inner_losses)

    # ----------------------------------------------------------------------- test-time adaptation
    def _adapt_batch(self, x: torch.Tensor, y: torch.Tensor, steps: int, query=None, metric=None):
        """First-order adaptation of every task from the current θ, without a graph to θ."""
        lrs = self._lrs()
        lrs = {n: v.detach() for n, v in lrs.items()} if isinstance(lrs, dict) else lrs
        params, rest = self._theta()
        params = {n: p.detach() for n, p in params.items()}
        if self.path == "vmap":
            def one_task(x, y, *q):
                fast, inner, curves = self._adapt_task("func", params, rest, lrs, x, y, steps, True, q or None, metric)
                # vmap returns tensors only: flatten the optional curves
                return (fast, inner) + tuple(c for c in (curves or ()) if c is not None)

            with torch.no_grad():
                out = vmap(one_task, randomness="different")(x, y, *(query or ()))
            curves = None if query is None else (out[2], out[3] if metric is not None else None)
            return out[0], out[1], curves
        outs = []
        with torch.enable_grad():
            for i in range(x.shape[0]):
                leaf = {n: p.requires_grad_(n in self.adapted_names) for n, p in ((n, p.clone()) for n, p in params.items())}
                q = (query[0][i], query[1][i]) if query is not None else None
                fast, inner, curves = self._adapt_task("autograd", leaf, rest, lrs, x[i], y[i], steps, True, q, metric)
                outs.append(({n: v.detach() for n, v in fast.items()}, inner, curves))
        fast = {n: torch.stack([o[0][n] for o in outs]) for n in params}
        inner = torch.stack([o[1] for o in outs])
        curves = None
        if query is not None:
            curves = (torch.stack([o[2][0] for o in outs]),
                      torch.stack([o[2][1] for o in outs]) if metric is not None else None)
        return fast, inner, curves

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Adapted parameters φ_i of every task: ``steps`` (default ``test_steps``) inner steps from θ.

        ``support_x`` ``(T, n, *x_shape)``, ``support_y`` ``(T, n, *y_shape)``. Returns a dict of tensors
        with a leading task dimension ``(T, *param_shape)``, detached; pass it to :meth:`predict`.
        """
        steps = self.test_steps if steps is None else _check_int(steps, "steps", 0)
        batch = _as_batch(TaskBatch(support_x, support_y, support_x[:, :1], support_y[:, :1]))
        fast, inner, _ = self._adapt_batch(batch.support_x, batch.support_y, steps)
        _check_finite(inner, None, self.inner_lr)
        return fast

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Predictions ``(T, n, *out_shape)`` of the adapted models ``params`` (from :meth:`adapt`) on ``x``
        ``(T, n, *x_shape)``."""
        _, rest = self._theta()
        with torch.no_grad():
            if self.path == "vmap":
                return vmap(lambda p, xi: self._forward(p, rest, xi), randomness="different")(params, x)
            return torch.stack([self._forward({n: v[i] for n, v in params.items()}, rest, x[i]) for i in range(x.shape[0])])

    def _query_losses(self, fast: Params, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        _, rest = self._theta()
        with torch.no_grad():
            if self.path == "vmap":
                return vmap(lambda p, x, y: self.loss_fn(self._forward(p, rest, x), y), randomness="different")(fast, qx, qy)
            return torch.stack([self.loss_fn(self._forward({n: v[i] for n, v in fast.items()}, rest, qx[i]), qy[i])
                                for i in range(qx.shape[0])])

    def evaluate(self, batch: TaskBatch, steps: int | None = None, metric: Callable | None = None,
                 chunk_size: int | None = None, allow_nonfinite: bool = False) -> Evaluation:
        """Query loss (and ``metric(prediction, target)``, e.g. accuracy) of every task after 0..``steps``
        inner steps on its support set. Returns :class:`Evaluation` with ``(steps + 1, T)`` tensors.

        ``chunk_size`` bounds how many tasks are adapted at once (memory for large models). A task whose
        adaptation diverges raises ``FloatingPointError`` unless ``allow_nonfinite``, which keeps its
        NaN/inf losses in the result (to count divergence, e.g. of rates learned for fewer steps).
        """
        batch = _as_batch(batch)
        steps = self.test_steps if steps is None else _check_int(steps, "steps", 0)
        size = batch.n_tasks if chunk_size is None else _check_int(chunk_size, "chunk_size", 1)
        losses, scores = [], []
        for start in range(0, batch.n_tasks, size):
            part = batch.select(slice(start, start + size))
            _, inner, (loss, score) = self._adapt_batch(part.support_x, part.support_y, steps,
                                                        (part.query_x, part.query_y), metric)
            if not allow_nonfinite:
                _check_finite(inner, loss[:, -1], self.inner_lr)
            losses.append(loss)
            scores.append(score)
        return Evaluation(torch.cat(losses).T, torch.cat(scores).T if metric is not None else None)

    # ------------------------------------------------------------------------------ the façade
    def clone(self) -> "Clone":
        """A differentiable copy of θ that :meth:`Clone.adapt` updates (see :class:`Clone`)."""
        from mtml_lib.meta.facade import Clone

        return Clone(self)

    def extra_repr(self) -> str:
        return (f"algorithm={self.algorithm!r}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"test_steps={self.test_steps}, first_order={self.first_order}, path={self.path!r}, "
                f"adapted={len(self.adapted_names)} tensors")


def _key(name: str) -> str:
    return name.replace(".", "__")


def _as_batch(batch) -> TaskBatch:
    if isinstance(batch, TaskBatch):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 4:
        return TaskBatch(*batch)
    raise TypeError(f"expected a TaskBatch or (support_x, support_y, query_x, query_y), got {type(batch).__name__}")


def _check_finite(inner: torch.Tensor, query: torch.Tensor | None, inner_lr: float) -> None:
    """Raise ``FloatingPointError`` naming the first task (and inner step) whose loss is NaN or infinite."""
    bad = ~torch.isfinite(inner)
    if bool(bad.any()):
        task, step = (int(i) for i in bad.nonzero()[0])
        raise FloatingPointError(
            f"non-finite support loss {inner[task, step].item()} in task {task} at inner step {step}; "
            f"check the data and the inner learning rate (inner_lr={inner_lr})"
        )
    if query is not None:
        bad = ~torch.isfinite(query)
        if bool(bad.any()):
            task = int(bad.nonzero()[0, 0])
            raise FloatingPointError(
                f"non-finite query loss {query[task].item()} in task {task} after adaptation; "
                f"check the data and the inner learning rate (inner_lr={inner_lr})"
            )

"""The teaching façade: ``clone`` a learner, ``adapt`` on a loss, use the clone like the model.

MAML for one task in three lines, with the same inner update as the batched core::

    fast = learner.clone()                       # φ = θ, still a function of θ
    fast.adapt(F.mse_loss(fast(x_s), y_s))       # φ ← φ − α ∇_φ L_support(φ)  (graph kept: 2nd order)
    F.mse_loss(fast(x_q), y_q).backward()        # ∇_θ L_query(φ(θ)) lands in θ.grad

A clone never copies or modifies the model: it holds a dict of tensors computed from θ and runs the
model with them through ``torch.func.functional_call``. The meta-gradient equals
:meth:`MetaLearner.meta_gradient` (tested), only slower: one task at a time.
"""

from __future__ import annotations

import torch

from mtml_lib.meta.core import MetaLearner, Params, inner_update


class Clone:
    """Adapted parameters φ of one task, differentiable w.r.t. the learner's θ (and Meta-SGD's rates)."""

    def __init__(self, learner: MetaLearner):
        if learner.algorithm == "reptile":
            raise ValueError("Reptile has no differentiable inner loop to clone; use MetaLearner.meta_step")
        self.learner = learner
        self.params, self._rest = learner._theta()
        self.steps_taken = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction with the current φ: ``(n, *x_shape) -> (n, *out_shape)``."""
        return self.learner._forward(self.params, self._rest, x)

    def adapt(self, loss: torch.Tensor) -> "Clone":
        """One inner step ``φ ← φ − α ∇_φ loss`` on the learner's adapted parameters; returns ``self``."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"adapt() needs a scalar loss tensor, got {loss!r}")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite support loss {loss.item()} at inner step {self.steps_taken}")
        grads = self.learner._autograd_grads(loss, self.params, self.learner.first_order)
        self.params = inner_update(self.params, grads, self.learner._lrs())
        self.steps_taken += 1
        return self

    def parameters(self) -> Params:
        """The current φ by name (tensors in the graph of θ)."""
        return dict(self.params)

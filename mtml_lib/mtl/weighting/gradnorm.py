"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018).

Task weights w_i are learned so that the gradient norms of the weighted losses train at similar rates:
with n_i = ‖∇_θ L_i‖ (so that G_i = ‖∇_θ w_i L_i‖ = w_i n_i), Ḡ = mean_i G_i, the inverse training
rate r_i = L̃_i / mean_j L̃_j where L̃_i = L_i(t) / L_i(0), and the asymmetry α,

    L_grad = Σ_i abs(w_i n_i − Ḡ r_i^α),    with the target Ḡ r_i^α held constant,

so ∂L_grad/∂w_i = sign(w_i n_i − Ḡ r_i^α) n_i. The model follows Σ_i w_i ∇_θ L_i; after every weight
update the weights are renormalised to Σ_i w_i = T. The paper takes n_i on the last shared layer to save
time; here the trainer hands over the gradients of all shared parameters, so n_i uses all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from mtml_lib.mtl.weighting.base import Weighting


def gradnorm_targets(weights: torch.Tensor, grad_norms: torch.Tensor, losses: torch.Tensor,
                     initial_losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """The target norms Ḡ r_i^α ``(T,)`` (constants in L_grad)."""
    mean_norm = (weights * grad_norms).mean()
    ratio = losses / initial_losses
    rate = ratio / ratio.mean()
    return mean_norm * rate**alpha


def gradnorm_weight_grad(weights: torch.Tensor, grad_norms: torch.Tensor, losses: torch.Tensor,
                         initial_losses: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """∂L_grad/∂w ``(T,)`` = sign(w_i n_i − Ḡ r_i^α) n_i."""
    target = gradnorm_targets(weights, grad_norms, losses, initial_losses, alpha)
    return torch.sign(weights * grad_norms - target) * grad_norms


def renormalise(weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Positive weights with Σ w = T (GradNorm's renormalisation after each update)."""
    w = weights.clamp_min(eps)
    return w * (w.numel() / w.sum())


class GradNorm(Weighting):
    """GradNorm with asymmetry ``alpha`` (1.5 in the paper's NYUv2 runs). The weights are a parameter
    the trainer's optimiser updates: :meth:`combine` puts ∂L_grad/∂w into their ``.grad``, as the
    trainer's contract for gradient-based strategies with learned state asks."""

    name = "gradnorm"
    uses_gradients = True

    def __init__(self, n_tasks: int, alpha: float = 1.5):
        super().__init__(n_tasks)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(n_tasks))
        self.initial_losses: torch.Tensor | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [self.weights]

    def to(self, device: torch.device | str) -> "GradNorm":
        self.weights.data = self.weights.data.to(device)
        return self

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        losses = losses.detach()
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        with torch.no_grad():
            self.weights.copy_(renormalise(self.weights))  # after the optimiser's last update
        w = self.weights.detach().to(grads.dtype)
        norms = grads.norm(dim=1)
        self.weights.grad = gradnorm_weight_grad(w, norms, losses.to(grads.dtype),
                                                 self.initial_losses.to(grads.dtype), self.alpha).to(self.weights.dtype)
        self.last_weights = w.clone()
        return w @ grads

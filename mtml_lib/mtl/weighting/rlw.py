"""Random loss weighting (RLW; Lin et al., TMLR 2022).

Every step draws fresh weights w = T softmax(z), z ~ N(0, I_T), and minimises Σ_i w_i L_i. The paper
normalises to Σ w = 1; the factor T here makes the expected scale match equal weighting (Σ w = T), so
the two share a learning rate. RLW is the baseline that shows how much of a weighting method's gain
a random one already gets.
"""

from __future__ import annotations

import torch

from mtml_lib.mtl.weighting.base import Weighting


def rlw_weights(n_tasks: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of RLW weights ``(T,)``: T softmax(z), z ~ N(0, I)."""
    z = torch.randn(n_tasks, generator=generator, dtype=torch.float64)
    return n_tasks * torch.softmax(z, dim=0)


class RandomLossWeighting(Weighting):
    """RLW with its own random stream (``seed``), so runs repeat and other random numbers are untouched."""

    name = "rlw"

    def __init__(self, n_tasks: int, seed: int = 0):
        super().__init__(n_tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def loss(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        w = rlw_weights(self.n_tasks, self.generator).to(dtype=losses.dtype, device=losses.device)
        self.last_weights = w
        return (w * losses).sum()

"""Loss-weighting and gradient-combination strategies, one short module each, one interface.

A strategy turns the vector of task losses ``(T,)`` into one scalar to minimise (loss-based strategies:
EW, fixed weights, UW, DWA, RLW) or turns the per-task gradients of the shared parameters ``(T, P)`` into
one update direction ``(P,)`` (gradient-based strategies: GradNorm, PCGrad, MGDA, CAGrad). The
mathematics of each lives in a pure function on tensors in its module; the autograd plumbing lives in
the trainer alone.

``get_weighting(name, n_tasks, **options)`` builds one by name; ``WEIGHTINGS`` lists the names.
"""

from __future__ import annotations

import importlib

from mtml_lib.mtl.weighting.base import EqualWeights, FixedWeights, Weighting

#: name -> (module, class); modules are imported on first use
WEIGHTINGS: dict[str, tuple[str, str]] = {
    "ew": ("mtml_lib.mtl.weighting.base", "EqualWeights"),
    "fixed": ("mtml_lib.mtl.weighting.base", "FixedWeights"),
    "uw": ("mtml_lib.mtl.weighting.uncertainty", "UncertaintyWeighting"),
    "dwa": ("mtml_lib.mtl.weighting.dwa", "DynamicWeightAverage"),
    "rlw": ("mtml_lib.mtl.weighting.rlw", "RandomLossWeighting"),
    "gradnorm": ("mtml_lib.mtl.weighting.gradnorm", "GradNorm"),
    "pcgrad": ("mtml_lib.mtl.weighting.pcgrad", "PCGrad"),
    "mgda": ("mtml_lib.mtl.weighting.mgda", "MGDA"),
    "cagrad": ("mtml_lib.mtl.weighting.cagrad", "CAGrad"),
}


def get_weighting(name: str, n_tasks: int, **options) -> Weighting:
    """Build the strategy called ``name`` for ``n_tasks`` tasks (options go to its constructor)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting strategy {name!r}; valid strategies: {sorted(WEIGHTINGS)}")
    module, cls = WEIGHTINGS[name]
    return getattr(importlib.import_module(module), cls)(n_tasks, **options)


__all__ = ["WEIGHTINGS", "EqualWeights", "FixedWeights", "Weighting", "get_weighting"]

r"""Meta-learning: the MAML family on ``torch.func`` (MAML, FOMAML, ANIL, Meta-SGD, Reptile).

The problem
-----------
Tasks ``τ_i`` come from a distribution; each has a *support* set ``S_i`` (a few examples to adapt on)
and a *query* set ``Q_i`` (to measure the adapted model). MAML (Finn et al. 2017) learns an
initialisation θ from which a few gradient steps on ``S_i`` give a good model for ``τ_i``:

.. math::

    φ_i(θ) = θ − α ∇_θ L_{S_i}(θ)                   \quad\text{(inner step; repeated ``steps`` times)}

    \min_θ \; \frac{1}{T} \sum_i L_{Q_i}(φ_i(θ))      \quad\text{(meta-objective)}

    ∇_θ L_{Q_i}(φ_i) = (I − α ∇^2_θ L_{S_i}(θ)) \, ∇_φ L_{Q_i}(φ_i)

The Hessian term is the *second-order* part. The variants differ in one place each:

=========== ==============================================================================
``maml``     the formula above (second order: the inner gradient stays in the graph)
``fomaml``   drops the Hessian term: ∇_θ ≈ ∇_φ L_Q(φ_i) (the inner gradient is detached)
``anil``     adapts only the last layer (the head) in the inner loop; the body is meta-learned only
``metasgd``  a learned step size per parameter entry: φ = θ − α ⊙ ∇L_S, α meta-learned with θ
``reptile``  no query loss: moves θ towards the adapted φ̄, meta-gradient (θ − φ̄) / (α · steps)
=========== ==============================================================================

The API (model- and loss-agnostic)
----------------------------------
Data is a :class:`TaskBatch`: ``support_x (T, n_support, *x_shape)``, ``support_y (T, n_support,
*y_shape)``, ``query_x (T, n_query, *x_shape)``, ``query_y (T, n_query, *y_shape)``. The model is any
``nn.Module`` applied to one task's examples ``(n, *x_shape)``; the loss is any ``loss_fn(prediction,
target) -> scalar`` of one task (``F.mse_loss`` for regression, ``F.cross_entropy`` with integer labels
``(n,)`` for N-way classification).

::

    learner = MetaLearner(model, F.mse_loss, algorithm="maml", inner_lr=0.01, inner_steps=1, test_steps=10)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)    # θ (and Meta-SGD's learned rates)
    out = learner.meta_step(opt, batch)                       # out.loss, out.task_losses (T,)
    phi = learner.adapt(support_x, support_y, steps=5)        # adapted parameters, (T, *shape) each
    pred = learner.predict(phi, query_x)                      # (T, n_query, *out_shape)
    ev = learner.evaluate(test_batch, steps=10, metric=acc)   # ev.loss, ev.metric: (steps + 1, T)

``meta_loss(batch)`` returns the differentiable meta-objective (``.loss.backward()`` works);
``meta_gradient(batch)`` returns the gradients by parameter name without touching ``.grad``. For
teaching, ``learner.clone()`` gives the three-line façade of :mod:`mtml_lib.meta.facade`.
:func:`meta_train` and :func:`pretrain` (the joint-training baseline) are the training loops;
``meta_train`` takes a validation hook (the best-validated parameters are kept), a cosine schedule and a
checkpoint file from which an interrupted run resumes exactly.

Execution paths
---------------
``batched=True`` maps one task's computation over the meta-batch with ``torch.func.vmap``;
``batched=False`` is the per-task Python loop with ``torch.autograd``, the reference that tests compare
against. Both give the same meta-gradient (float64: to ~1e-15). ``batched="auto"`` (default) takes vmap
except where the loop is right or faster: ``vmap`` over ``nn.BatchNorm*`` gives a wrong second-order
meta-gradient (torch 2.13), so models holding one run on the loop (with a warning; ``batched=True``
refuses them; ``mtml_lib.models.PlainBatchNorm2d`` is exact under vmap), and convolutional models on the
CPU run on the loop, which is faster there (``benchmarks/bench_maml.py``). ``learner.path`` and
``learner.path_reason`` say what was chosen. ``compile=True`` runs the vmap meta-step under
``torch.compile`` (several times faster for small models after a one-off compilation).
Tiny models (the sinusoid MLP) run fastest on one CPU thread: ``torch.set_num_threads(1)``.

Errors: bad settings and mismatched shapes raise ``ValueError`` naming the value; a NaN or infinite
support or query loss raises ``FloatingPointError`` naming the task and the inner step.
"""

from mtml_lib.meta.core import (  # noqa: F401
    ALGORITHMS,
    Evaluation,
    MetaLearner,
    MetaOutput,
    inner_update,
    last_layer_names,
    normalisation_modules,
)
from mtml_lib.meta.facade import Clone  # noqa: F401
from mtml_lib.meta.tasks import TaskBatch  # noqa: F401
from mtml_lib.meta.training import History, mean_ci95, meta_train, pretrain  # noqa: F401

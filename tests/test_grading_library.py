"""Answers that call the library's own implementation of what a question asks score nothing.

For every exercise, a submission answers the questions the library can answer by calling it (ex03, with
the ways to copy the implementation back, is in ``test_grading_hostile.py``). Graded in the full
sandbox these questions score zero; graded against a copy of the exercise that lists nothing as
unavailable the same submission scores them, which shows that each call is a real shortcut.
Needs root (the private root hides the library's source), like the hostile suite.
"""

import os

import nbformat
import pytest

from mtml_lib import exercises, grading

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hostile submissions are only run in the full sandbox, as root")

# exercise -> (answers that call the library, the questions they answer)
CASES = {
    "ex01_multitask_gradient": ({
        "grad_head": "import torch\nfrom mtml_lib.mtl.linear_models import objective_gradients\n"
                     "def grad_head(B, a_i, X_i, y_i, w_i, lam):\n"
                     "    _, g = objective_gradients(B, a_i[None], X_i[None], y_i[None], torch.tensor([float(w_i)], dtype=B.dtype))\n"
                     "    return g[0] + lam * a_i",
        "grad_shared": "import torch\nfrom mtml_lib.mtl import linear_models as lm\n"
                       "def grad_shared(B, heads, X, y, w, lam):\n"
                       "    total = lam * B\n"
                       "    for a, X_i, y_i, w_i in zip(heads, X, y, w):\n"
                       "        total = total + lm.objective_gradients(B, a[None], X_i[None], y_i[None], torch.tensor([float(w_i)], dtype=B.dtype))[0]\n"
                       "    return total",
    }, {"q1_head": 2, "q2_shared": 2}),
    "ex02_maml_by_hand": ({
        "adapted_weight": "import torch, torch.nn.functional as F\nfrom torch import nn\nfrom mtml_lib.meta import MetaLearner\n"
                          "def adapted_weight(w, xs, ys, alpha):\n"
                          "    model = nn.Linear(1, 1, bias=False).double()\n"
                          "    with torch.no_grad():\n        model.weight.fill_(w)\n"
                          "    learner = MetaLearner(model, F.mse_loss, algorithm='maml', inner_lr=alpha, inner_steps=1, test_steps=1)\n"
                          "    return float(next(iter(learner.adapt(xs.view(1, -1, 1), ys.view(1, -1, 1)).values())).flatten()[0])",
    }, {"q1_adapt": 2}),
    "ex04_prototypical_networks": ({
        "class_prototypes": "from mtml_lib.meta import protonet\n"
                            "def class_prototypes(support, support_y, n_way):\n    return protonet.prototypes(support, support_y, n_way)",
        "proto_logits": "from mtml_lib.meta.protonet import squared_distances\n"
                        "def proto_logits(query, prototypes):\n    return -squared_distances(query, prototypes)",
        "episode_accuracy": "from mtml_lib.meta import protonet\n"
                            "def episode_accuracy(s, sy, q, qy, n):\n"
                            "    return float((protonet.prototype_logits(s, sy, q, n).argmax(1) == qy).double().mean())",
    }, {"q1_prototypes": 2, "q2_logits": 2, "q3_accuracy": 1}),
    "ex05_transfer_head": ({
        "fit_head": "import torch\nfrom sklearn.linear_model import Ridge\n"
                    "def fit_head(features, y, ridge):\n"
                    "    if ridge == 0:\n        return torch.linalg.lstsq(features, y[:, None]).solution[:, 0]\n"
                    "    model = Ridge(alpha=ridge, fit_intercept=False, solver='cholesky', tol=1e-12).fit(features.numpy(), y.numpy())\n"
                    "    return torch.as_tensor(model.coef_)",
        "transfer_mse": "import torch\nfrom mtml_lib import transfer_study\n"
                        "def transfer_mse(x_s, y_s, x_q, y_q, ridge):\n"
                        "    size = k + 1  # the library adds an intercept: a huge precision holds it at 0\n"
                        "    prior = (torch.zeros(size, dtype=torch.float64), torch.diag(torch.tensor([1.0] * k + [1e12], dtype=torch.float64)))\n"
                        "    head = transfer_study.ridge_heads(trunk(x_s)[None], y_s[None, :, None], ridge, prior)[0, :k, 0]\n"
                        "    return float((trunk(x_q) @ head - y_q).pow(2).mean())",
    }, {"q1_fit_head": 3, "q2_transfer": 2}),
}


def _submission(key, answers, path):
    nb = exercises.release(key)
    for cell in nb.cells:
        gid = exercises.nbgrader_meta(cell).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_calling_the_library_scores_nothing(name, tmp_path):
    key = exercises.resolve([name])[0]
    answers, asked = CASES[name]
    submission = _submission(key, answers, tmp_path / f"{name}.ipynb")
    nb = nbformat.read(key, 4)
    assert nb.metadata["mtml"]["unavailable"]
    nb.metadata["mtml"]["unavailable"] = []
    open_key = tmp_path / "open" / key.name
    open_key.parent.mkdir()
    nbformat.write(nb, open_key)
    sandboxed = grading.grade_batch([submission], key=key)[0]
    control = grading.grade_batch([submission], key=open_key)[0]
    got = {q.grade_id: q.score for q in sandboxed.questions if q.grade_id in asked}
    shortcut = {q.grade_id: q.score for q in control.questions if q.grade_id in asked}
    assert shortcut == asked, control  # the library (or scikit-learn) would answer these questions
    assert got == dict.fromkeys(asked, 0), sandboxed
    no_sklearn = any("No module named 'sklearn" in n for n in sandboxed.notes)  # hidden: the import fails
    for q in sandboxed.questions:
        if q.grade_id in asked:
            assert "not available in this exercise" in q.error or no_sklearn, (q, sandboxed.notes)

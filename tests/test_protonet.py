"""Prototypical Networks: prototypes and distances against hand computation, per-episode encoding, training."""

import pytest
import torch
from torch import nn

from mtml_lib.meta.protonet import ProtoNet, prototype_logits, prototypes, squared_distances
from mtml_lib.meta.tasks import TaskBatch
from mtml_lib.models.backbones import Conv4




def test_prototypes_are_class_means():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [5.0, 5.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 2, 1])
    expected = torch.tensor([[1.0, 0.0], [1.0, 2.0], [5.0, 5.0]])
    assert torch.allclose(prototypes(z, y, 3), expected)


def test_squared_distances_and_logits_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # (0,0): 1, 4   (1,1): 1, 2   (3,-1): 5, 18
    expected = torch.tensor([[1.0, 4.0], [1.0, 2.0], [5.0, 18.0]])
    assert torch.equal(squared_distances(x, c), expected)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    logits = prototype_logits(support, torch.tensor([0, 0, 1]), x, 2)  # prototypes (1, 0) and (0, 2)
    assert torch.equal(logits, -expected)
    assert logits.argmax(1).tolist() == [0, 0, 0]


def test_prototype_errors():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"classes \[1\] have no support"):
        prototypes(z, torch.tensor([0, 0, 2]), 3)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        prototypes(z, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="embeddings"):
        prototypes(torch.zeros(3, 2, 1), torch.tensor([0, 1, 0]), 2)


def toy_batch(n_tasks=3, n_way=4, k=2, q=3, seed=0):
    """Separable toy episodes: class c of task t sits near a random centre in 6 dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_tasks, n_way, 6, generator=g) * 3
    sy = torch.arange(n_way).repeat_interleave(k).expand(n_tasks, -1)
    qy = torch.arange(n_way).repeat_interleave(q).expand(n_tasks, -1)
    sx = centres.gather(1, sy.unsqueeze(-1).expand(-1, -1, 6)) + 0.1 * torch.randn(n_tasks, n_way * k, 6, generator=g)
    qx = centres.gather(1, qy.unsqueeze(-1).expand(-1, -1, 6)) + 0.1 * torch.randn(n_tasks, n_way * q, 6, generator=g)
    return TaskBatch(sx, sy.clone(), qx, qy.clone())


def test_protonet_with_identity_encoder_classifies_separable_tasks():
    net = ProtoNet(nn.Identity())
    batch = toy_batch()
    logits = net.logits(batch)
    assert logits.shape == (3, 12, 4)
    ev = net.evaluate(batch)
    assert ev.metric.shape == (1, 3) and torch.all(ev.metric == 1.0)
    # logits equal the hand formula for one task
    t = 1
    c = torch.stack([batch.support_x[t][batch.support_y[t] == k].mean(0) for k in range(4)])
    assert torch.allclose(logits[t], -((batch.query_x[t][:, None] - c[None]) ** 2).sum(-1), atol=1e-5)


def test_each_task_is_encoded_alone():
    """With batch-statistics normalisation, a task's logits must not depend on the other tasks of the batch."""
    torch.manual_seed(0)
    net = ProtoNet(Conv4(1, 8, norm="plain")).double()
    g = torch.Generator().manual_seed(1)
    batch = TaskBatch(torch.rand(2, 6, 1, 28, 28, generator=g, dtype=torch.float64), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
                      torch.rand(2, 3, 1, 28, 28, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 2]] * 2))
    both = net.logits(batch)
    alone = net.logits(batch.select([1]))
    assert torch.allclose(both[1], alone[0], atol=1e-12)


def test_meta_step_learns_a_toy_embedding():
    torch.manual_seed(0)
    # noisy dimensions swamp the class signal until the encoder learns to ignore them
    encoder = nn.Linear(6, 6)

    def batch(seed):
        b = toy_batch(n_tasks=4, seed=seed)
        noise = torch.Generator().manual_seed(100 + seed)
        sx, qx = b.support_x.clone(), b.query_x.clone()
        sx[..., 3:] = 20 * torch.randn(sx[..., 3:].shape, generator=noise)
        qx[..., 3:] = 20 * torch.randn(qx[..., 3:].shape, generator=noise)
        return TaskBatch(sx, b.support_y, qx, b.query_y)

    net = ProtoNet(encoder)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    before = net.meta_loss(batch(999)).loss.item()
    for i in range(60):
        out = net.meta_step(opt, batch(i))
        assert out.loss.dim() == 0 and out.task_losses.shape == (4,)
    after = net.meta_loss(batch(999)).loss.item()
    assert after < 0.5 * before


def test_encoder_must_return_embeddings():
    net = ProtoNet(nn.Unflatten(1, (2, 3)))
    with pytest.raises(ValueError, match=r"\(n, D\) embeddings"):
        net.logits(toy_batch())
    with pytest.raises(TypeError, match="nn.Module"):
        ProtoNet(lambda x: x)

"""N-way K-shot episode sampler: counts, disjointness, label remapping, seeding, errors."""

import pytest
import torch

from mtml_lib.data.episodes import ClassDataset, EpisodeSampler
from mtml_lib.meta.tasks import TaskBatch


def tagged_dataset(n_classes: int = 12, n_per_class: int = 9) -> ClassDataset:
    """Images whose first pixel is the class id and second pixel the instance id (so they can be decoded)."""
    images = torch.zeros(n_classes, n_per_class, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(n_classes).view(-1, 1)
    images[:, :, 0, 0, 1] = torch.arange(n_per_class).view(1, -1)
    return ClassDataset(images, [f"c{i}" for i in range(n_classes)], ["g"] * n_classes, split="train")


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (x[..., 0, 0, :2] * 255).round().long()
    return ids[..., 0], ids[..., 1]


def test_episode_shapes_counts_and_labels():
    n, k, q, t = 5, 2, 3, 7
    batch = EpisodeSampler(tagged_dataset(), n, k, q, seed=0).sample(t)
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (t, n * k, 1, 2, 2) and batch.query_x.shape == (t, n * q, 1, 2, 2)
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    for i in range(t):
        assert torch.equal(torch.bincount(batch.support_y[i], minlength=n), torch.full((n,), k))
        assert torch.equal(torch.bincount(batch.query_y[i], minlength=n), torch.full((n,), q))
        assert set(batch.support_y[i].tolist()) == set(range(n))


def test_support_and_query_are_disjoint_and_from_the_labelled_class():
    batch = EpisodeSampler(tagged_dataset(), 4, 3, 5, seed=1).sample(20)
    classes = batch.info["classes"]
    for i in range(batch.n_tasks):
        assert len(set(classes[i].tolist())) == 4  # distinct classes within an episode
        s_cls, s_inst = decode(batch.support_x[i])
        q_cls, q_inst = decode(batch.query_x[i])
        # the label of an image names the data-set class it came from, per episode
        assert torch.equal(s_cls, classes[i][batch.support_y[i]])
        assert torch.equal(q_cls, classes[i][batch.query_y[i]])
        support = set(zip(s_cls.tolist(), s_inst.tolist()))
        query = set(zip(q_cls.tolist(), q_inst.tolist()))
        assert len(support) == 12 and len(query) == 20 and not support & query


def test_labels_are_remapped_per_episode():
    batch = EpisodeSampler(tagged_dataset(), 5, 1, 1, seed=3).sample(50)
    # the same data-set class gets different labels in different episodes
    first_class_labels = {}
    for cls_row in batch.info["classes"]:
        for label, c in enumerate(cls_row.tolist()):
            first_class_labels.setdefault(c, set()).add(label)
    assert max(len(v) for v in first_class_labels.values()) > 1


def test_seeded_repeatability():
    data = tagged_dataset()
    a = EpisodeSampler(data, 5, 1, 2, seed=11)
    b = EpisodeSampler(data, 5, 1, 2, seed=11)
    c = EpisodeSampler(data, 5, 1, 2, seed=12)
    for _ in range(3):
        ba, bb, bc = a.sample(4), b.sample(4), c.sample(4)
        assert torch.equal(ba.support_x, bb.support_x) and torch.equal(ba.query_x, bb.query_x)
    assert not torch.equal(ba.info["classes"], bc.info["classes"])
    # consecutive draws differ
    assert not torch.equal(a.sample(4).info["classes"], a.sample(4).info["classes"])


def test_plain_tensor_and_list_of_unequal_classes():
    tensor = tagged_dataset().images  # (C, M, 1, 2, 2) uint8
    batch = EpisodeSampler(tensor, 3, 1, 2, seed=0).sample(2)
    assert batch.support_x.dtype == torch.float32 and batch.support_x.max() <= 1
    classes = [torch.full((m, 3), float(c)) for c, m in enumerate([4, 6, 3, 8])]
    sampler = EpisodeSampler(classes, 4, 1, 2, seed=0)
    batch = sampler(5)
    for i in range(5):
        # every image carries its class id; labels map to classes consistently
        assert torch.equal(batch.support_x[i][:, 0].long(), batch.info["classes"][i][batch.support_y[i]])


def test_impossible_episodes_raise_clear_errors():
    data = tagged_dataset(n_classes=6, n_per_class=5)
    with pytest.raises(ValueError, match=r"n_way=7 exceeds the 6 classes"):
        EpisodeSampler(data, 7, 1, 1)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 2 \+ 4 = 6 exceeds the 5 images"):
        EpisodeSampler(data, 2, 2, 4)
    with pytest.raises(ValueError, match="smallest class"):
        EpisodeSampler([torch.zeros(5, 1), torch.zeros(2, 1)], 2, 1, 2)
    for bad in ({"n_way": 0}, {"k_shot": 0}, {"n_query": 0}, {"n_way": 2.5}):
        kwargs = {"n_way": 2, "k_shot": 1, "n_query": 1, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            EpisodeSampler(data, **kwargs)
    with pytest.raises(ValueError, match="n_tasks"):
        EpisodeSampler(data, 2, 1, 1).sample(0)


def test_class_dataset_checks_and_subset():
    data = tagged_dataset(6, 4)
    sub = data.subset([4, 1], split="val")
    assert len(sub) == 2 and sub.class_names == ["c4", "c1"] and sub.split == "val"
    assert torch.equal(sub.images[0], data.images[4])
    assert data[2].dtype == torch.float32 and data[2].shape == (4, 1, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        ClassDataset(torch.zeros(2, 3, 1, 2, 2), ["a", "b"], ["g", "g"], "train")
    with pytest.raises(ValueError, match="class names"):
        ClassDataset(torch.zeros(2, 3, 1, 2, 2, dtype=torch.uint8), ["a"], ["g", "g"], "train")

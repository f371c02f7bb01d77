"""N-way K-shot episodes over any class-indexed image data set.

An *episode* (a few-shot task) draws ``n_way`` classes, then ``k_shot`` support and ``n_query`` query
images from each, all distinct. Labels are remapped per episode to ``0 .. n_way-1`` in the order the
classes were drawn, so a label carries no information across episodes (the model cannot memorise that
"class 17 is label 3"). Episodes come in batches with a leading task dimension, the layout the meta
learners in :mod:`mtml_lib.meta` take::

    support_x (T, n_way * k_shot, C, H, W)   support_y (T, n_way * k_shot)   in class-major order
    query_x   (T, n_way * n_query, C, H, W)  query_y   (T, n_way * n_query)

Images are float32 in ``[0, 1]`` with ink = 1 on a background of 0, the convention shared by
:mod:`mtml_lib.data.glyphs` and :mod:`mtml_lib.data.omniglot`.

"Class-indexed" means: ``data[c]`` is a tensor of the images of class ``c`` (first dimension: instances)
and ``len(data)`` is the number of classes. A :class:`ClassDataset`, a tensor ``(n_classes, n_per_class,
...)`` and a list of per-class tensors (sizes may differ) all qualify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterator

import torch

from mtml_lib.meta.tasks import TaskBatch


@dataclass
class ClassDataset:
    """Images grouped by class, as the loaders return them.

    ``images``: uint8 ``(n_classes, n_per_class, C, H, W)`` (0 = background, 255 = full ink); stored as
    bytes to keep tens of thousands of images small, converted to float in ``[0, 1]`` when indexed.
    ``class_names``: one readable name per class (the character, or ``Alphabet/characterNN``).
    ``groups``: the alphabet (script or Unicode block) of each class, the unit by which splits are made.
    """

    images: torch.Tensor
    class_names: list[str]
    groups: list[str]
    split: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dim() != 5 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"ClassDataset.images must be uint8 (n_classes, n_per_class, C, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if len(self.class_names) != n or len(self.groups) != n:
            raise ValueError(
                f"{n} classes of images but {len(self.class_names)} class names and {len(self.groups)} groups"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, c) -> torch.Tensor:
        """Images of class ``c`` as float32 ``(n_per_class, C, H, W)`` in ``[0, 1]``."""
        return self.images[c].float().div_(255.0)

    @property
    def n_per_class(self) -> int:
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[2:])

    def gather(self, classes: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """Images at ``(classes[i], instances[i])`` as float32 ``(*classes.shape, C, H, W)``."""
        return self.images[classes, instances].float().div_(255.0)

    def subset(self, classes: Sequence[int], split: str | None = None) -> "ClassDataset":
        """The data set restricted to ``classes`` (indices into this one), in that order."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        return ClassDataset(
            images=self.images[idx],
            class_names=[self.class_names[i] for i in idx.tolist()],
            groups=[self.groups[i] for i in idx.tolist()],
            split=split or self.split,
            info={k: v for k, v in self.info.items() if k != "files"},  # per-class file lists no longer line up
        )

    def describe(self) -> str:
        c, m = self.images.shape[:2]
        return (f"{self.split}: {c} classes from {len(set(self.groups))} alphabets, {m} images each, "
                f"image shape {self.image_shape}")


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) to float in [0, 1]; float images unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _class_sizes(data) -> list[int]:
    if isinstance(data, ClassDataset):
        return [data.n_per_class] * len(data)
    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise ValueError(f"a class-indexed tensor needs shape (n_classes, n_per_class, ...), got {tuple(data.shape)}")
        return [data.shape[1]] * data.shape[0]
    return [len(data[c]) for c in range(len(data))]


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a class-indexed data set, reproducibly from ``seed``.

    Two samplers with the same data, settings and seed yield the same episodes in the same order.
    Raises ``ValueError`` when the request is impossible: more ways than classes, or more
    support + query images than the smallest class holds (its instances are never reused within a task).
    """

    def __init__(self, data, n_way: int, k_shot: int, n_query: int, seed: int = 0):
        for name, value, low in (("n_way", n_way, 1), ("k_shot", k_shot, 1), ("n_query", n_query, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.data = data
        self.sizes = _class_sizes(data)
        n_classes = len(self.sizes)
        split = getattr(data, "split", "data set")
        if n_way > n_classes:
            raise ValueError(f"n_way={n_way} exceeds the {n_classes} classes of the {split} split; "
                             f"choose n_way <= {n_classes}")
        smallest = min(self.sizes)
        if k_shot + n_query > smallest:
            raise ValueError(f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} exceeds the "
                             f"{smallest} images of the smallest class of the {split} split; "
                             f"choose k_shot + n_query <= {smallest}")
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.seed = seed
        self.generator = torch.Generator().manual_seed(int(seed))
        self._equal = len(set(self.sizes)) == 1

    def sample(self, n_tasks: int = 1) -> TaskBatch:
        """The next ``n_tasks`` episodes as one :class:`TaskBatch`; ``info["classes"]`` ``(T, n_way)`` holds
        the data-set class behind each episode label."""
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        n, k, q = self.n_way, self.k_shot, self.n_query
        classes, order = self.draw_indices(n_tasks)
        images = self._gather(classes, order)  # (T, n, k+q, C, H, W)
        labels = torch.arange(n).view(1, n, 1).expand(n_tasks, n, k + q)
        shape = images.shape[3:]
        return TaskBatch(
            support_x=images[:, :, :k].reshape(n_tasks, n * k, *shape),
            support_y=labels[:, :, :k].reshape(n_tasks, n * k),
            query_x=images[:, :, k:].reshape(n_tasks, n * q, *shape),
            query_y=labels[:, :, k:].reshape(n_tasks, n * q),
            info={"classes": classes},
        )

    def draw_indices(self, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n_tasks`` episodes as indices, without the images: classes ``(T, n_way)`` and, per
        class, its instances ``(T, n_way, k_shot + n_query)`` (support first). :meth:`sample` draws these."""
        n, k, q = self.n_way, self.k_shot, self.n_query
        g = self.generator
        classes = torch.stack([torch.randperm(len(self.sizes), generator=g)[:n] for _ in range(n_tasks)])
        if self._equal:
            order = torch.rand(n_tasks, n, self.sizes[0], generator=g).argsort(dim=-1)[..., : k + q]
        else:
            order = torch.stack([
                torch.stack([torch.randperm(self.sizes[c], generator=g)[: k + q] for c in row.tolist()])
                for row in classes
            ])
        return classes, order

    def _gather(self, classes: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        cls = classes.unsqueeze(-1).expand_as(order)
        if isinstance(self.data, ClassDataset):
            return self.data.gather(cls, order)
        if isinstance(self.data, torch.Tensor):
            return _as_float(self.data[cls, order])
        return torch.stack([
            torch.stack([_as_float(torch.as_tensor(self.data[c])[idx]) for c, idx in zip(row_c.tolist(), row_i)])
            for row_c, row_i in zip(classes, order)
        ])

    def state_dict(self) -> dict:
        """The random state, so that a resumed run draws the episodes it would have drawn."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, n_tasks: int) -> TaskBatch:
        """Same as :meth:`sample`: a sampler is a callable ``sample(n_tasks) -> TaskBatch``."""
        return self.sample(n_tasks)

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample(1)

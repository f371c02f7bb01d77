"""Backbones shared by the notebooks: an MLP and the standard Conv4 of few-shot learning.

Normalisation is :class:`PlainBatchNorm2d`, written from plain tensor ops. Why not ``nn.BatchNorm2d``:
under ``torch.func.vmap`` over the tasks of a meta-batch, ``nn.BatchNorm2d`` (without running stats)
gives a wrong *second-order* MAML meta-gradient with torch 2.13 (first order is right), while the plain
expression below matches the per-task loop to float64 precision. It always normalises with the
statistics of the batch it is given (as MAML's reference code does at meta-train and meta-test time),
so under vmap each task is normalised with its own statistics, exactly as in the per-task loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers.

    ``MLP([1, 40, 40, 1])`` is the MAML sinusoid regressor. Input ``(B, sizes[0])``, output ``(B, sizes[-1])``.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"MLP needs at least two positive layer sizes, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = sizes


class PlainBatchNorm2d(nn.Module):
    """Batch normalisation over ``(B, H, W)`` per channel, with a learnable affine, no running stats.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased batch variance. Input and output
    ``(B, C, H, W)``. Correct under ``vmap`` at any order of differentiation (see module docstring).
    ``scale=False`` leaves the weight out (a learned shift only, as TensorFlow's ``batch_norm`` by default).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, scale: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if scale else None
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"PlainBatchNorm2d({self.num_features}) expects (B, {self.num_features}, H, W), got {tuple(x.shape)}")
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1)
        return y + self.bias.view(1, -1, 1, 1)


_NORMS = ("plain", "batchnorm", "running", "none")


def _block(n_in: int, n_out: int, norm: str, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, kernel_size=3, padding=1)]
    if norm == "plain":
        layers.append(PlainBatchNorm2d(n_out))
    elif norm == "batchnorm":
        layers.append(nn.BatchNorm2d(n_out, track_running_stats=False))
    elif norm == "running":
        layers.append(nn.BatchNorm2d(n_out))
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The standard 4-block few-shot backbone (Vinyals et al. 2016; Finn et al. 2017).

    Each block: 3x3 conv (``hidden`` filters) -> normalisation -> ReLU -> 2x2 max-pool. A 28x28 input
    leaves a ``hidden``x1x1 map, so ``features`` has ``hidden`` dimensions. With ``n_out`` a linear
    classifier head is added. Input ``(B, in_channels, H, W)``; output ``(B, n_out)`` or
    ``(B, feature_dim)``.

    ``norm``: ``"plain"`` (default, correct under batched MAML), ``"batchnorm"`` (``nn.BatchNorm2d``
    without running stats, kept to demonstrate the vmap second-order trap), ``"running"``
    (``nn.BatchNorm2d`` with running statistics, used in evaluation mode: Snell et al.'s ProtoNet encoder)
    or ``"none"``.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, n_out: int | None = None, norm: str = "plain",
                 image_size: int = 28):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {list(_NORMS)}")
        self.features = nn.Sequential(
            *[_block(in_channels if i == 0 else hidden, hidden, norm, pool=True) for i in range(4)],
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x2 poolings (needs >= 16)")
        self.feature_dim = hidden * side * side
        self.head = nn.Linear(self.feature_dim, n_out) if n_out is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Conv4 expects images (B, C, H, W), got shape {tuple(x.shape)}")
        z = self.features(x)
        return self.head(z) if self.head is not None else z


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``padding="SAME"`` along one axis: ``(before, after)`` so that the output has
    ``ceil(size / stride)`` positions; an odd total pads one more after (PyTorch's ``padding=1`` pads both
    sides alike, which samples other pixels at stride 2 on even sizes)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StridedConv4(nn.Module):
    """The Conv4 of Finn et al.'s Omniglot code: the ``model`` of MAML's ``paper`` profile.

    Four blocks of a 3x3 convolution with ``hidden`` filters and stride 2 (TensorFlow ``SAME`` padding:
    28 -> 14 -> 7 -> 4 -> 2; no max-pooling), batch normalisation with a learned shift and no scale
    (eps 1e-3, the statistics of the batch it is given, at training and at test time), ReLU; the last map
    is averaged over its positions (``hidden`` features, not flattened); a linear head of ``n_out``
    outputs. Initialisation as theirs: Glorot-uniform convolution weights, zero biases, head weights from
    N(0, 1) and a zero head bias. :attr:`fast_names` lists what their inner loop adapts (convolutions and
    head; the normalisation's shifts are meta-learned only). Input ``(B, C, H, W)``, output ``(B, n_out)``.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, n_out: int = 5):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=2) for i in range(4)])
        self.norms = nn.ModuleList([PlainBatchNorm2d(hidden, eps=1e-3, scale=False) for _ in range(4)])
        self.head = nn.Linear(hidden, n_out)
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.head.weight, 0.0, 1.0)
        nn.init.zeros_(self.head.bias)
        self.feature_dim = hidden

    @property
    def fast_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if not n.startswith("norms.")]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"StridedConv4 expects images (B, C, H, W), got shape {tuple(x.shape)}")
        for conv, norm in zip(self.convs, self.norms):
            (top, bottom), (left, right) = tf_same_padding(x.shape[-2], 3, 2), tf_same_padding(x.shape[-1], 3, 2)
            x = torch.relu(norm(conv(torch.nn.functional.pad(x, (left, right, top, bottom)))))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

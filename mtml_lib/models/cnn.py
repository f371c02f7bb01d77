"""A small convolutional encoder (the shared θ) and the task heads θ_i of the scene case study.

- :class:`Encoder`: stages of two 3x3 convolutions (BatchNorm, ReLU), 2x2 max-pooling between stages;
  returns the feature map of every stage, finest first, so that dense heads can use skip connections.
- :class:`ClassifierHead`: global average pooling of the coarsest map + a two-layer MLP -> logits ``(B, C)``.
- :class:`DenseDecoder`: a light feature-pyramid decoder (upsample, add the skip, convolve) -> per-pixel
  outputs ``(B, C, H, W)``: class logits for segmentation, or ``(B, H, W)`` with ``squeeze`` for depth.

BatchNorm, with running statistics for evaluation. The trainer runs one forward pass per step for every
strategy (gradient-based ones differentiate that one graph once per task), so the statistics see each
batch once whatever the strategy. GroupNorm was tried and learned the classification task far more
slowly: after it the spatial mean of every channel group is fixed per image, which starves pooled heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _conv(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU()]


def _check_widths(widths: Sequence[int]) -> list[int]:
    widths = [int(w) for w in widths]
    if not widths or any(w < 4 for w in widths):
        raise ValueError(f"widths must be a non-empty list of channel counts >= 4, got {widths}")
    return widths


class Encoder(nn.Module):
    """``in_channels`` -> stages of ``widths`` channels; input ``(B, C, H, W)`` with H, W divisible by
    2^(len(widths) - 1); output: list of maps ``(B, widths[k], H / 2^k, W / 2^k)``."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.widths = _check_widths(widths)
        stages, n_in = [], in_channels
        for w in self.widths:
            stages.append(nn.Sequential(*_conv(n_in, w), *_conv(w, w)))
            n_in = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        factor = 2 ** (len(self.stages) - 1)
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"Encoder expects images (B, C, H, W) with H and W divisible by {factor}, "
                             f"got shape {tuple(x.shape)}")
        features = []
        for k, stage in enumerate(self.stages):
            x = stage(x if k == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features


class ClassifierHead(nn.Module):
    """A 3x3 convolution (ReLU) on the coarsest encoder map, global average *and* max pooling, then
    ``Linear -> ReLU -> Linear`` -> logits ``(B, n_classes)``.

    Why max pooling next to the average: "is there a large star somewhere" is a maximum, not a mean.
    """

    def __init__(self, in_channels: int, n_classes: int, hidden: int = 64):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        z = self.conv(features[-1])
        return self.mlp(torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1))


class DenseDecoder(nn.Module):
    """Per-pixel outputs from the encoder's maps, in the manner of a feature pyramid: every map is brought
    to ``hidden`` channels by a 1x1 convolution; from the coarsest one up, the running map is upsampled x2,
    added to the next finer one and passed through a 3x3 convolution block; a 1x1 convolution gives
    ``n_out`` channels. Cheaper than concatenating the skips (the finest level dominates the cost).
    Output ``(B, n_out, H, W)``, or ``(B, H, W)`` when ``squeeze`` (``n_out`` must then be 1). ``bias``
    initialises the output bias (for regression: a typical target value, so training starts near it)."""

    def __init__(self, widths: Sequence[int], n_out: int, squeeze: bool = False, bias: float = 0.0,
                 hidden: int = 16):
        super().__init__()
        widths = _check_widths(widths)
        if squeeze and n_out != 1:
            raise ValueError(f"squeeze needs n_out = 1, got {n_out}")
        self.squeeze = squeeze
        self.lateral = nn.ModuleList([nn.Conv2d(w, hidden, 1) for w in widths])
        self.blocks = nn.ModuleList([nn.Sequential(*_conv(hidden, hidden)) for _ in widths[:-1]])
        self.out = nn.Conv2d(hidden, n_out, 1)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for k in range(len(features) - 2, -1, -1):  # from the coarsest map up to the finest
            skip = self.lateral[k](features[k])
            x = self.blocks[k](F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip)
        y = self.out(x)
        return y.squeeze(1) if self.squeeze else y


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

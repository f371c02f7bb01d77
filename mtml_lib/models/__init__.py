"""Models: backbones (MLP, Conv4) and the multi-task model (shared θ + one head θ_i per task)."""

from mtml_lib.models.backbones import MLP, Conv4, PlainBatchNorm2d, StridedConv4  # noqa: F401
from mtml_lib.models.multitask import MultiTaskModel, Task  # noqa: F401

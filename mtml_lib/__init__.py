"""mtml_lib: the tested core of the mtml tutorial on multi-task learning, meta-learning and transfer."""

__version__ = "0.1.0"

from mtml_lib.config import setup  # noqa: E402,F401

"""Save and load model checkpoints with their provenance, and refuse corrupt or mismatched ones.

A checkpoint is one file written by ``torch.save``: the model's ``state_dict``, optional extra state
(an optimizer's, a strategy's), the run's provenance, and a SHA-256 digest of the tensors, checked on
load. Writes go to a temporary file first and are renamed into place, so an interrupted save never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtml_lib import config

FORMAT = "mtml-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, of another format, or for another model."""


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s parameters (and ``extra``) to ``path`` with provenance and a digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    run = config.current_run()
    payload = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "state_dict": state,
        "sha256": _digest(state),
        "extra": extra or {},
        "provenance": json.loads(json.dumps(run.metadata(), default=str)) if run is not None else {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, verify it, and (given ``model``) load its parameters strictly.

    Raises :class:`CheckpointError` naming the file and what is wrong: missing file, unreadable or
    truncated data, another format, a digest mismatch, or parameters that do not fit ``model``
    (missing, unexpected or differently shaped keys). Returns the checkpoint's payload.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}; expected {FORMAT!r} (written by save_checkpoint)")
    state = payload["state_dict"]
    if _digest(state) != payload.get("sha256"):
        raise CheckpointError(f"checkpoint {path} failed its integrity check (SHA-256 of the tensors differs)")
    if model is not None:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or shapes:
            details = "; ".join(
                part for part in (
                    f"missing {missing}" if missing else "",
                    f"unexpected {unexpected}" if unexpected else "",
                    "shape differs for " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes)
                    if shapes else "",
                ) if part
            )
            raise CheckpointError(
                f"checkpoint {path} (a {payload.get('model_class')}) does not fit this {type(model).__name__}: {details}"
            )
        model.load_state_dict(state)
    return payload

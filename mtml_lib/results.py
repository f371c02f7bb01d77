"""Metrics per notebook as JSON with provenance: ``results/<profile>/<notebook>.json``.

One file per notebook and profile, so the quick numbers of ``make reproduce`` and the paper numbers of
the full profile stand side by side and every number names the profile it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtml_lib import config


def _plain(value: Any, where: str) -> Any:
    """Convert tensors and NumPy values to JSON types; refuse NaN and infinity (they hide failures)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"result {where} is {value}; results must be finite numbers")
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"result {where} has type {type(value).__name__}, which JSON cannot hold")


def record(notebook: str | None, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to ``results/<profile>/<notebook>.json`` with the current run's provenance.

    ``notebook`` defaults to the current run's; the profile is the current run's (``"interactive"``
    without one). The file is replaced as a whole, so it always holds the numbers of one run.
    """
    run = config.current_run()
    notebook = notebook or (run.notebook if run is not None else None)
    if not notebook:
        raise ValueError("record() needs a notebook name, or a run started with mtml_lib.config.setup()")
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"metrics must be a non-empty dict, got {metrics!r}")
    payload = {
        "notebook": notebook,
        "provenance": run.metadata() if run is not None else {},
        "metrics": _plain(metrics, "metrics"),
    }
    directory = config.results_dir() / (run.profile if run is not None else "interactive")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{notebook}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load(notebook: str, profile: str, directory: Path | None = None) -> dict[str, Any]:
    """Read ``results/<profile>/<notebook>.json`` (as written by :func:`record`)."""
    directory = (Path(directory) if directory is not None else config.results_dir()) / profile
    path = directory / f"{notebook}.json"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        raise FileNotFoundError(f"no results for notebook {notebook!r} in {directory}; available: {available}")
    return json.loads(path.read_text())

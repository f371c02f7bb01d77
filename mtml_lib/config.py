"""Run profiles, device choice, seeding and run metadata.

Every notebook starts with a papermill ``parameters`` cell (``profile = None``, ``device = None``,
``seed = 0``) and then calls :func:`setup`, which resolves the values in this order:

1. the value given explicitly (the notebook's parameters cell, or ``mtml run --profile``);
2. the environment variables ``MTML_PROFILE`` / ``MTML_DEVICE``;
3. auto: ``full`` on a GPU, ``quick`` on a CPU (``paper`` is never chosen automatically).

A profile is a frozen dataclass of settings, one class per notebook, defined in
``mtml_lib.profiles.<module>``; ``smoke`` runs in seconds (tests), ``quick`` gives meaningful results on a
laptop CPU in minutes, ``full`` gives the paper settings.

Where generated files go: ``figures/`` and ``results/`` under the output root, which is ``MTML_OUT``
when set (tests and ``mtml run --out`` use it) and otherwise the repository that holds this package.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROFILE_NAMES: tuple[str, ...] = ("smoke", "quick", "full", "paper")
#: every notebook has these; ``paper`` only where a published protocol exists that ``full`` does not follow
REQUIRED_PROFILES: tuple[str, ...] = ("smoke", "quick", "full")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A bad profile, device, notebook or path: the message names the value and the valid choices."""


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


# --------------------------------------------------------------------------------------------- paths
def _is_checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir() and (folder / "mtml_lib").is_dir()


def find_checkout() -> Path | None:
    """The project checkout: the folder that holds this package (an editable install or a clone on the path),
    else the nearest folder at or above the working directory that holds ``pyproject.toml``, ``notebooks/``
    and ``mtml_lib/`` (an installed package used inside a clone); None outside any checkout."""
    if _is_checkout(PACKAGE_DIR.parent):
        return PACKAGE_DIR.parent
    cwd = Path.cwd().resolve()
    return next((folder for folder in (cwd, *cwd.parents) if _is_checkout(folder)), None)


def repo_root() -> Path:
    """The project checkout (:func:`find_checkout`), or the working directory outside one."""
    return find_checkout() or Path.cwd()


def require_checkout(what: str) -> Path:
    """The project checkout, or :class:`ConfigError` saying that ``what`` needs one (the notebooks and
    exercises live in the clone, not in the installed package)."""
    root = find_checkout()
    if root is None:
        raise ConfigError(f"{what} needs the project's checkout (the folder with notebooks/, mtml_lib/ and "
                          f"pyproject.toml), and neither {Path.cwd()} nor a folder above it is one; run it inside "
                          "a clone of the project")
    return root


def output_root() -> Path:
    """Root under which ``figures/`` and ``results/`` are written (``MTML_OUT`` overrides)."""
    env = os.environ.get("MTML_OUT")
    return Path(env).expanduser().resolve() if env else repo_root()


#: the profile whose figures are the gallery of ``figures/`` (what the README shows and the notebooks store);
#: the figures of another profile go to ``figures/<profile>/``, so a run never overwrites another profile's
GALLERY_PROFILE = "quick"


def figures_dir(profile: str | None = None) -> Path:
    """``figures/`` under the output root for the quick profile (and outside a run), ``figures/<profile>/``
    for the others; ``profile`` defaults to the current run's."""
    if profile is None:
        run = current_run()
        profile = run.profile if run is not None else GALLERY_PROFILE
    root = output_root() / "figures"
    return root if profile == GALLERY_PROFILE else root / profile


def scratch_root() -> Path:
    """Where a smoke run writes when no output root is given: ``build/smoke`` in the checkout (ignored by
    git), so that checking that the notebooks run never replaces the committed figures and results."""
    return repo_root() / "build" / "smoke"


def results_dir() -> Path:
    return output_root() / "results"


def notebooks_dir() -> Path:
    """``notebooks/`` of the project checkout; :class:`ConfigError` outside one."""
    return require_checkout("this command") / "notebooks"


def cache_dir() -> Path:
    """Where generated data sets are cached (``MTML_CACHE`` overrides; default ``<repo>/.cache``)."""
    env = os.environ.get("MTML_CACHE")
    return Path(env).expanduser().resolve() if env else repo_root() / ".cache"


# ------------------------------------------------------------------------------------------ profiles
def resolve_profile(profile: str | None = None, device: str | torch.device | None = None) -> str:
    """Resolve a profile name: explicit > ``MTML_PROFILE`` > auto (``full`` on GPU, ``quick`` on CPU)."""
    source = "argument"
    if profile is None:
        profile = os.environ.get("MTML_PROFILE") or None
        source = "MTML_PROFILE"
    if profile is None:
        dev = resolve_device(device)
        return "full" if dev.type == "cuda" else "quick"
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {profile!r} (from {source}); valid profiles: {_choices(PROFILE_NAMES)}")
    return profile


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Resolve a device: explicit > ``MTML_DEVICE`` > auto (CUDA when available, else CPU).

    Raises :class:`ConfigError` for an unknown name or for a GPU that this machine does not have.
    """
    source = "argument"
    if device is None:
        device = os.environ.get("MTML_DEVICE") or None
        source = "MTML_DEVICE"
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device {name!r} (from {source}); valid devices: {_choices(DEVICE_CHOICES)}")
    if kind == "cpu" and name not in ("cpu", "cpu:0"):
        raise ConfigError(f"device {name!r} (from {source}): the CPU takes no index; use 'cpu'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} (from {source}) was requested but this machine has no CUDA GPU "
            f"visible to torch {torch.__version__}; use 'cpu' or 'auto'"
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} (from {source}) was requested but MPS is not available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {name!r}: {err}") from None


def load_profile(notebook: str, profile: str) -> Any:
    """The frozen settings dataclass of ``notebook`` under ``profile``."""
    from mtml_lib.profiles import NOTEBOOK_PROFILES

    if notebook not in NOTEBOOK_PROFILES:
        raise ConfigError(f"unknown notebook {notebook!r}; valid notebooks: {_choices(NOTEBOOK_PROFILES)}")
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {_choices(PROFILE_NAMES)}")
    module = importlib.import_module(f"mtml_lib.profiles.{NOTEBOOK_PROFILES[notebook]}")
    if profile not in module.PROFILES:
        having = [nb for nb in NOTEBOOK_PROFILES if has_profile(nb, profile)]
        raise ConfigError(f"notebook {notebook!r} has no {profile!r} profile (its 'full' profile is its reference "
                          f"setting); notebooks with one: {_choices(having) or '(none)'}")
    return module.PROFILES[profile]


def has_profile(notebook: str, profile: str) -> bool:
    """Whether ``notebook`` defines ``profile`` (every notebook has smoke, quick and full)."""
    from mtml_lib.profiles import NOTEBOOK_PROFILES

    if notebook not in NOTEBOOK_PROFILES:
        return False
    return profile in importlib.import_module(f"mtml_lib.profiles.{NOTEBOOK_PROFILES[notebook]}").PROFILES


# ------------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for deterministic kernels.

    Returns a fresh ``torch.Generator`` seeded with ``seed`` for code that wants an explicit stream.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar that the caller asked for: not when ``TQDM_DISABLE`` is set (as
    ``mtml run`` sets it, so that no widget state ends up in stored notebooks). tqdm reads that variable
    only for bars that do not pass ``disable`` themselves."""
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false", "no")


SEED_RANGE = (0, 2**63 - 1)  # torch.manual_seed's range for non-negative seeds


def check_seed(seed: Any) -> int:
    """``seed`` as an int, or :class:`ConfigError` when it is not an integer in :data:`SEED_RANGE`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
        raise ConfigError(f"seed {seed} is out of range; valid seeds: {SEED_RANGE[0]} to {SEED_RANGE[1]} (2^63 - 1)")
    return int(seed)


def writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it; otherwise raise
    :class:`ConfigError` with one line naming ``what`` (e.g. ``"--out"``), the path and the reason."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mtml-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be written: {err.strerror or err}") from None
    return path


def writable_file(path: str | Path, what: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder exists or can be made, and
    it is not a folder); raise :class:`ConfigError` with one line otherwise. Nothing is left behind."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    writable_dir(path.parent, f"the folder of {what}")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be written: {err.strerror or err}") from None
    if not existed:
        path.unlink()
    return path


# ------------------------------------------------------------------------------------------ metadata
#: folders of generated outputs: a change there is a result, not a change of the code that made it
GENERATED_DIRS: tuple[str, ...] = ("results/", "figures/", "build/")


def _cell_sources(text: str) -> list[tuple[str, str]] | None:
    import json

    try:
        cells = json.loads(text).get("cells", [])
        return [(c.get("cell_type", ""), "".join(c.get("source", "")) if isinstance(c.get("source"), list)
                 else str(c.get("source", ""))) for c in cells]
    except (ValueError, AttributeError, TypeError):
        return None


def _only_outputs_changed(root: Path, path: str) -> bool:
    """Whether the notebook ``path`` differs from its committed version in outputs and metadata only."""
    try:
        committed = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=root, capture_output=True, text=True,
                                   timeout=10, check=True).stdout
        current = (root / path).read_text()
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return False
    before, after = _cell_sources(committed), _cell_sources(current)
    return before is not None and before == after


def git_state() -> tuple[str, list[str]]:
    """The checkout's commit and its tracked files that differ from it, leaving out generated outputs
    (:data:`GENERATED_DIRS`) and notebooks whose cells' sources are unchanged (stored outputs only): what
    remains is code that differs from the commit. ``("unknown", [])`` outside a git checkout."""
    root = repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", []
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if len(line) > 3]
    dirty = [p for p in changed if not p.startswith(GENERATED_DIRS)
             and not (p.endswith(".ipynb") and _only_outputs_changed(root, p))]
    return sha or "unknown", dirty


def _commit_label(sha: str, dirty: list[str]) -> str:
    return f"{sha}-dirty" if dirty and sha != "unknown" else sha


def git_commit() -> str:
    """The checkout's commit, with ``-dirty`` when code differs from it (see :func:`git_state`), or ``"unknown"``."""
    return _commit_label(*git_state())


@dataclasses.dataclass
class Run:
    """One notebook run: what was asked for, what was resolved, and when it started."""

    notebook: str
    profile: str
    settings: Any
    device: torch.device
    seed: int
    started_at: str
    _t0: float = dataclasses.field(default_factory=time.perf_counter, repr=False)
    commit: str = "unknown"
    dirty_files: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        sha, self.dirty_files = git_state()
        self.commit = _commit_label(sha, self.dirty_files)

    @property
    def wall_time(self) -> float:
        """Seconds since :func:`setup`."""
        return time.perf_counter() - self._t0

    def metadata(self) -> dict[str, Any]:
        """Provenance recorded next to every figure and result."""
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "seed": self.seed,
            "device": str(self.device),
            "torch": str(torch.__version__),  # a plain str (torch's TorchVersion does not load with weights_only)
            "python": platform.python_version(),
            "git_commit": self.commit,
            "git_dirty_files": list(self.dirty_files),
            "started_at": self.started_at,
            "wall_time_s": round(self.wall_time, 3),
        }

    def describe(self) -> str:
        lines = [f"mtml run: notebook={self.notebook} profile={self.profile} device={self.device} seed={self.seed}"]
        if dataclasses.is_dataclass(self.settings):
            for field in dataclasses.fields(self.settings):
                lines.append(f"  {field.name} = {getattr(self.settings, field.name)!r}")
        return "\n".join(lines)


_CURRENT: Run | None = None


def current_run() -> Run | None:
    """The run started by the latest :func:`setup` in this process, if any."""
    return _CURRENT


def setup(
    notebook: str,
    profile: str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> Run:
    """Resolve profile and device, seed everything, and start the run that figures and results cite."""
    global _CURRENT
    dev = resolve_device(device)
    name = resolve_profile(profile, dev)
    settings = load_profile(notebook, name)
    seed_everything(seed)
    run = Run(
        notebook=notebook,
        profile=name,
        settings=settings,
        device=dev,
        seed=int(seed),
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    _CURRENT = run
    if verbose:
        print(run.describe())
    return run

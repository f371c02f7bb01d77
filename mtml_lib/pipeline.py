"""Run the ordered notebooks through papermill: the machinery behind ``mtml run`` and ``make reproduce``.

For each notebook, in order: inject ``profile``, ``device`` and ``seed`` into its ``parameters`` cell,
execute it with the ``python3`` kernel of the current environment (cwd ``notebooks/``), write the executed
copy to ``<out>/build/``, and let the notebook write ``<out>/figures/`` (``figures/<profile>/`` for a
profile other than quick: see :func:`mtml_lib.config.figures_dir`) and ``<out>/results/<profile>/`` (``MTML_OUT``
is set for its kernel, and ``TQDM_DISABLE`` so that no progress widgets end up in the stored outputs;
papermill's per-cell bar shows the progress instead). A failing notebook is reported with its cell and error, its executed copy (with
the error) is kept, and the remaining notebooks still run unless ``fail_fast``. At the end the figure
gallery is regenerated. ``store=True`` writes a successful run back over ``notebooks/<name>.ipynb`` with
papermill's metadata stripped, so the committed notebooks carry the outputs of a real run. A smoke run
without ``out`` (and without ``MTML_OUT`` or ``store``) writes under ``build/smoke/``: checking that the
notebooks run changes no committed output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mtml_lib import config

KERNEL_NAME = "python3"


class NotebookNotFound(config.ConfigError):
    """An unknown notebook name; the message lists the valid names."""


@dataclass
class NotebookResult:
    """What happened to one notebook in a run."""

    name: str
    profile: str
    device: str
    status: str  # "ok" or "failed"
    wall_time: float
    output: Path
    error: str | None = None
    cell: int | None = None  # position of the failing cell in the source notebook (1-based), when known
    cell_source: str | None = None  # first line of the failing cell

    @property
    def where(self) -> str:
        if self.cell is None:
            return ""
        return f"cell {self.cell} `{self.cell_source}`" if self.cell_source else f"cell {self.cell}"


def discover(directory: Path | None = None) -> list[Path]:
    """The ordered notebooks: ``NN_name.ipynb`` directly in ``notebooks/``, sorted by name."""
    directory = Path(directory) if directory is not None else config.notebooks_dir()
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def describe(path: Path) -> str:
    """One line about a notebook: the first heading of its first markdown cell."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                text = line.strip().lstrip("#").strip()
                if text:
                    return text
    return ""


def resolve(names: list[str] | None, directory: Path | None = None) -> list[Path]:
    """Map names (``01_math_model``, ``01_math_model.ipynb``, ``01`` or a path) to notebook paths, in order."""
    available = discover(directory)
    if not names:
        return available
    by_stem = {p.stem: p for p in available}
    chosen: list[Path] = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            match = path.resolve()
        else:
            stem = path.name[: -len(".ipynb")] if path.name.endswith(".ipynb") else path.name
            match = by_stem.get(stem)
            if match is None:
                prefixed = [p for s, p in by_stem.items() if s.split("_", 1)[0] == stem]
                match = prefixed[0] if len(prefixed) == 1 else None
        if match is None:
            raise NotebookNotFound(f"unknown notebook {name!r}; valid notebooks: {', '.join(by_stem) or '(none found)'}")
        if match not in chosen:
            chosen.append(match)
    return chosen


def kernelspec_metadata() -> dict[str, str]:
    """The ``kernelspec`` a stored notebook carries: the installed ``python3`` kernel's name, display name and
    language. JupyterLab rewrites a notebook's kernelspec to the kernel it starts, so any other display
    name (papermill and older tools write ``"Python 3"``; ipykernel installs ``"Python 3 (ipykernel)"``)
    marks the notebook modified as soon as it is opened."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME}
    except NoSuchKernel:
        return {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL_NAME}


def strip_run_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove papermill's injected-parameters cell, its run and timing metadata and any stored widget
    state, and name the installed kernel (:func:`kernelspec_metadata`) (in place)."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # widget state of a bar drawn in some run: JupyterLab shows it frozen
    nb.metadata["kernelspec"] = kernelspec_metadata()
    kept = []
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            continue
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        kept.append(cell)
    nb.cells = kept
    return nb


@contextlib.contextmanager
def _environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _execute(path: Path, output: Path, parameters: dict, progress: bool) -> None:
    import papermill as pm

    pm.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        kernel_name=KERNEL_NAME,
        cwd=str(path.parent),
        progress_bar=progress,
        request_save_on_cell_execute=True,
    )


def _failure(err: Exception, output: Path) -> tuple[str, int | None, str | None]:
    """The error line, and the failing cell's 1-based position in the *source* notebook with its first line.

    papermill counts cells in the executed copy, which holds one injected-parameters cell more.
    """
    from papermill.exceptions import PapermillExecutionError

    if not isinstance(err, PapermillExecutionError):
        return f"{type(err).__name__}: {err}", None, None
    index = err.cell_index
    try:
        cells = nbformat.read(output, as_version=4).cells
        injected = sum(1 for c in cells[:index] if "injected-parameters" in c.metadata.get("tags", []))
    except (OSError, ValueError):
        injected = 0
    first_line = next((line.strip() for line in (err.source or "").splitlines() if line.strip()), None)
    if first_line and len(first_line) > 60:
        first_line = first_line[:57] + "..."
    return f"{err.ename}: {err.evalue}", index - injected + 1, first_line


def run_notebooks(
    names: list[str] | None = None,
    profile: str | None = None,
    device: str | None = None,
    seed: int = 0,
    out: Path | str | None = None,
    fail_fast: bool = False,
    store: bool = False,
    progress: bool = True,
    log=print,
    jobs: int = 1,
) -> list[NotebookResult]:
    """Execute notebooks in order; return one :class:`NotebookResult` each (see module docstring).

    Profile and device are resolved here, before any notebook starts, so a bad value fails at once.
    ``jobs`` > 1 executes up to that many notebooks at a time, each in its own process (see
    :func:`_run_parallel`); the notebooks do not read each other's outputs, so every result, figure and
    stored notebook is the one a serial run writes (only the wall times differ).
    """
    jobs = check_jobs(jobs)
    dev = config.resolve_device(device)
    prof = config.resolve_profile(profile, dev)
    paths = resolve(names)
    if not paths:
        raise NotebookNotFound(f"no notebooks found in {config.notebooks_dir()}")
    if prof not in config.REQUIRED_PROFILES:  # e.g. paper: only some notebooks have one
        if names:
            for path in paths:
                config.load_profile(path.stem, prof)  # a one-line error before anything runs
        else:
            skipped = [p.stem for p in paths if not config.has_profile(p.stem, prof)]
            paths = [p for p in paths if config.has_profile(p.stem, prof)]
            if skipped:
                log(f"profile {prof}: running {', '.join(p.stem for p in paths)}; "
                    f"{', '.join(skipped)} have no {prof} profile")
    seed = config.check_seed(seed)
    if out is not None:
        root = Path(out).expanduser().resolve()
    elif prof == "smoke" and not os.environ.get("MTML_OUT") and not store:
        root = config.scratch_root()
        log(f"smoke profile: outputs go to {root} (give --out to choose another folder)")
    else:
        root = config.output_root()
    build = config.writable_dir(root / "build", "--out" if out is not None else "the output folder")
    figures = config.writable_dir(root / "figures" / ("" if prof == config.GALLERY_PROFILE else prof),
                                  "--out" if out is not None else "the output folder")
    if not python_kernel_ok():
        log(f"warning: the Jupyter kernel {KERNEL_NAME!r} does not belong to {sys.executable}; notebooks may run "
            "in another environment (remove the other 'python3' kernel spec, see `jupyter kernelspec list`)")
    results: list[NotebookResult] = []
    from mtml_lib.plotting import write_gallery

    # progress bars inside the notebooks would be stored as widget state; papermill's own bar shows progress
    with _environment(MTML_OUT=str(root), TQDM_DISABLE="1"):
        try:
            if jobs > 1 and len(paths) > 1:
                _run_parallel(paths, prof, dev, seed, build, fail_fast, store, log, results, jobs)
            else:
                _run_each(paths, prof, dev, seed, build, fail_fast, store, progress, log, results)
        finally:  # also after Ctrl-C: the gallery then lists exactly the figures on disk
            gallery = write_gallery(figures)
    log(f"figure gallery: {gallery}")
    return results


MAX_JOBS = 64


def check_jobs(jobs) -> int:
    """``jobs`` as a positive integer, or a :class:`~mtml_lib.config.ConfigError` naming the valid range."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise config.ConfigError(f"jobs must be an integer from 1 to {MAX_JOBS}, got {jobs!r}")
    return jobs


def _timed_execute(path: Path, output: Path, parameters: dict,
                   progress: bool) -> tuple[float, tuple[str, int | None, str | None] | None]:
    """Execute one notebook: its wall time, and None when it ran, else the error line and failing cell
    (:func:`_failure`; described where it ran, because papermill's exceptions do not survive pickling)."""
    t0 = time.perf_counter()
    try:
        _execute(path, output, parameters, progress)
    except Exception as err:  # noqa: BLE001 - any failure is reported, then the next notebook runs
        return time.perf_counter() - t0, _failure(err, output)
    return time.perf_counter() - t0, None


def _messages_path(output: Path) -> Path:
    """Where a notebook run in a worker process leaves its kernel's messages: beside the executed copy."""
    return output.with_name(output.stem + ".stderr.txt")


def _execute_job(path: Path, output: Path, parameters: dict) -> tuple[float, tuple[str, int | None, str | None] | None]:
    """:func:`_timed_execute` in a worker process. The kernel's own messages (its stderr, inherited from
    this process) go to :func:`_messages_path`, so that notebooks running side by side do not interleave
    them on the terminal."""
    sys.stderr.flush()
    with open(_messages_path(output), "w") as messages:
        os.dup2(messages.fileno(), 2)
    return _timed_execute(path, output, parameters, progress=False)


def _conclude(tag: str, path: Path, output: Path, prof: str, dev, wall: float,
              failure: tuple[str, int | None, str | None] | None, store: bool, log,
              messages: Path | None = None) -> NotebookResult:
    """The :class:`NotebookResult` of one finished run, its failure logged with the cell, or (``store``)
    its outputs written back over ``path`` without papermill's metadata."""
    if failure is not None:
        message, cell, source = failure
        result = NotebookResult(path.stem, prof, str(dev), "failed", wall, output, message, cell, source)
        where = f" at {result.where}" if result.where else ""
        kept = f"executed copy kept: {output}" + (f"; kernel messages: {messages}" if messages else "")
        log(f"{tag} {path.stem}: FAILED{where}: {message} ({kept})")
        return result
    if store:
        nbformat.write(strip_run_metadata(nbformat.read(output, as_version=4)), path)
        log(f"{tag} {path.stem}: outputs stored in {path}")
    return NotebookResult(path.stem, prof, str(dev), "ok", wall, output)


def _run_parallel(paths: list[Path], prof: str, dev, seed: int, build: Path, fail_fast: bool, store: bool,
                  log, results: list[NotebookResult], jobs: int) -> None:
    """Execute ``paths`` with up to ``jobs`` notebooks at a time, each in a fresh (spawned) process.

    Results are appended in notebook order whatever order the runs end in; ``store`` writes a notebook back
    as soon as its run has ended well. With ``fail_fast`` no notebook starts after the first failure (those
    running finish). Ctrl-C interrupts the running notebooks (their kernels are shut down)
    and cancels the rest. Each worker inherits ``MTML_OUT`` and ``TQDM_DISABLE`` from this process; the
    figure index is written under a file lock and the data caches atomically, so runs side by side do not
    disturb each other.
    """
    import multiprocessing
    import signal
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = len(paths)
    parameters = {"profile": prof, "device": str(dev), "seed": int(seed)}
    done: dict[int, NotebookResult] = {}
    log(f"running {n} notebooks, up to {jobs} at a time (one process each; per-cell progress not shown)")
    pool = ProcessPoolExecutor(max_workers=min(jobs, n), mp_context=multiprocessing.get_context("spawn"))
    queue = list(enumerate(paths, 1))
    try:
        pending = {}
        while queue or pending:
            while queue and len(pending) < jobs:  # submitted only when a worker is free: nothing waits queued
                i, path = queue.pop(0)
                output = build / path.name
                log(f"[{i}/{n}] {path.stem}: profile={prof} device={dev} seed={seed} -> {output}")
                pending[pool.submit(_execute_job, path, output, parameters)] = (i, path, output)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                i, path, output = pending.pop(future)
                wall, failure = future.result()
                if failure is None:
                    log(f"[{i}/{n}] {path.stem}: ok in {wall:.0f} s")
                done[i] = _conclude(f"[{i}/{n}]", path, output, prof, dev, wall, failure, store, log,
                                    messages=_messages_path(output))
                if failure is not None and fail_fast and queue:
                    log(f"--fail-fast: not starting {', '.join(p.stem for _, p in queue)}")
                    queue.clear()
    except KeyboardInterrupt:
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)  # papermill then shuts its kernel down
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        results.extend(done[i] for i in sorted(done))


def _run_each(paths: list[Path], prof: str, dev, seed: int, build: Path, fail_fast: bool, store: bool,
              progress: bool, log, results: list[NotebookResult]) -> None:
    """Execute ``paths`` in order, appending one :class:`NotebookResult` each to ``results``."""
    parameters = {"profile": prof, "device": str(dev), "seed": int(seed)}
    for i, path in enumerate(paths, 1):
        output = build / path.name
        log(f"[{i}/{len(paths)}] {path.stem}: profile={prof} device={dev} seed={seed} -> {output}")
        wall, failure = _timed_execute(path, output, parameters, progress)
        results.append(_conclude(f"[{i}/{len(paths)}]", path, output, prof, dev, wall, failure, store, log))
        if failure is not None and fail_fast:
            break


def summary_table(results: list[NotebookResult]) -> str:
    """A plain-text table: notebook, profile, device, wall time, status (and the error of failures)."""
    header = ("notebook", "profile", "device", "wall time", "status")
    rows = [
        (r.name, r.profile, r.device, f"{r.wall_time:.1f} s",
         "ok" if r.status == "ok" else f"FAILED at {r.where}: {r.error}" if r.where else f"FAILED: {r.error}")
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def python_kernel_ok() -> bool:
    """Whether the ``python3`` kernel resolves to this interpreter's environment (as ``make`` sets up)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    exe = spec.argv[0]
    return exe in ("python", "python3", "{python}") or Path(exe).resolve().parent == Path(sys.executable).resolve().parent

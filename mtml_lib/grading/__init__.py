"""Grading exercise submissions that may be hostile, in batches that always finish.

Threat model: a submission is written by someone who wants points they have not earned, or wants to
disturb the grading of others. The grader therefore never runs submitted code in its own process and
never believes what submitted code says about itself:

- Only the submission's *answer cells* (nbgrader ``solution: true``, matched by ``grade_id``) are used;
  setup cells come from the instructor's notebook and graded cells are not run at all, so editing,
  deleting, duplicating or stripping them changes nothing, and the total is the instructor's.
- The answers run in a sandboxed child (:mod:`mtml_lib.grading.sandbox`: private root file system without
  the instructor notebooks, an unprivileged user id, resource limits, every process killed at the end),
  which evaluates each question's probes and reports their values as JSON data.
- **Hidden inputs stay hidden.** The probes evaluate the answers on inputs the student never sees (the
  ``setup`` of each graded cell's ``metadata.mtml``, removed from the student version). The child
  receives a question only after its answer cells ran, and the next one only after it answered the one
  before (see the sandbox's docstring), so no answer cell can read a probe, and no answer can learn the
  inputs of a question before that question's values are fixed. From the phase in which the child knows
  a question, the grader keeps numbers and nothing the child wrote as text: a probe that raises is
  reported by its exception's built-in class name only (``raised TypeError``), a run that stops then by
  ``SIGKILL``/``SIGXCPU`` or "a signal" and by "exit code 0" or "a non-zero exit code". What a
  submission can still signal back about hidden inputs is therefore a few bits per question (which
  probes pass, which built-in error, how the run ended), never the inputs themselves; the answer cells'
  own errors (before any probe was sent) are reported in full, since they help the student.
- **Answers that call the library.** An exercise lists in its notebook metadata the library functions
  and classes that compute what it asks for (``unavailable``). In the child they are replaced by stubs
  that raise before any exercise code runs, by swapping each function's code object in place, so an
  alias made by ``from ... import``, ``importlib.reload``, ``sys.modules``, ``gc`` or another library
  function that calls it reaches the stub too; their source files and cached bytecode are covered by
  empty files in the private root, so ``open(module.__file__)``, ``inspect.getsource`` and ``exec`` of a
  copy find nothing; and a listed package the grader never imports (``sklearn``, whose
  ``confusion_matrix`` or ``Ridge`` would answer a question) is hidden from the file system. A probe that
  reaches a stub fails. What this cannot stop, and does not try to: general tools of torch that a
  student may legitimately use (``torch.bincount``, ``torch.linalg.solve``) and autograd. A value check
  cannot tell how a value was computed, so a question whose point is a derivation is graded on a
  quantity that autograd has nothing to differentiate for (ex01's gradients after a
  reparametrisation, ex02's meta-gradient from the derivatives it is given, its critical step sizes).
- **Questions are independent.** A question may name earlier answers (``uses`` in its metadata): for
  its probes the instructor's solutions of those answers replace the student's, sent with that question
  only, so an error in question 1 costs question 1 and nothing after it.
- The expected values come from a separate sandboxed run of the instructor's own solutions, made before
  any submission runs and kept in the grader's memory; a question scores its points only when every probe
  value matches (same structure and shape, numbers within the question's tolerance). A child that
  patches ``torch.allclose``, the ``assert`` statement, IPython or the report itself can only report
  numbers, and numbers are checked.
- The instructor notebooks are hashed before the batch and checked after it (a warning if they changed:
  the expected values were computed before); the grade book is written
  atomically by the grader after every child is dead, at a path checked before grading starts.

Every submission gets a report: a score, or zero with the reason (not a notebook, malformed metadata,
duplicated grade_id, timeout, memory limit, killed, ...); one bad submission never stops the batch. A run
that stops inside a question is started again for the questions after it (within three timeouts), so a
loop or a crash costs only the questions that reach it.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtml_lib import exercises
from mtml_lib.exercises import Exercise, ExerciseError
from mtml_lib.grading import sandbox

MAX_SUBMISSION_BYTES = 20 << 20


@dataclass
class Settings:
    """Limits of one submission's run."""

    timeout: float = 60.0  # wall-clock seconds for the whole run of one submission
    memory_gib: float = 2.0  # RLIMIT_AS; torch and mtml_lib, loaded before the answers run, map about 0.65 GiB
    file_mib: int = 64  # RLIMIT_FSIZE, and the child's private tmpfs is four times this
    processes: int = 64  # RLIMIT_NPROC (threads count) for the sandbox's user id
    isolate: bool = True  # private root, network and user id when running as root

    def check(self) -> "Settings":
        for name, what, low in (("timeout", "--timeout (seconds)", 1), ("memory_gib", "--memory-gib", 0.5),
                                ("file_mib", "file size limit (MiB)", 1), ("processes", "process limit", 4)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < low:
                raise ExerciseError(f"{what} must be a number of at least {low:g}, got {value!r}")
        return self


@dataclass
class Question:
    grade_id: str
    points: float
    score: float = 0.0
    error: str | None = None


@dataclass
class GradeReport:
    submission: str
    exercise: str | None = None
    questions: list[Question] = field(default_factory=list)
    error: str | None = None  # why the submission as a whole scored zero
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def total(self) -> float:
        return sum(q.points for q in self.questions)

    def as_dict(self) -> dict:
        return {"submission": self.submission, "exercise": self.exercise, "score": self.score,
                "total": self.total, "error": self.error, "notes": self.notes,
                "seconds": round(self.seconds, 2), "questions": [q.__dict__ for q in self.questions]}


def printable(text, limit: int = 300) -> str:
    """Text a submission controls, made safe to print: no control characters (terminal escapes, newlines)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Rejected(Exception):
    """The submission cannot be graded at all; the message is the reason."""


# ------------------------------------------------------------------------------------------ reading
def read_answers(path: Path, exercise: Exercise) -> tuple[dict[str, str], list[str]]:
    """The answer cells of a submission by grade_id, and notes on what was ignored; :class:`_Rejected`
    when the file is not a notebook or an answer's grade_id appears twice."""
    if not path.exists():
        raise _Rejected("the file does not exist")
    if not path.is_file():
        raise _Rejected("not a file")
    if path.stat().st_size > MAX_SUBMISSION_BYTES:
        raise _Rejected(f"not a notebook: larger than {MAX_SUBMISSION_BYTES >> 20} MiB")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, OSError, RecursionError) as err:
        raise _Rejected(f"not a notebook: not JSON ({printable(err, 120)})") from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise _Rejected("not a notebook: no list of cells")
    wanted = set(exercise.answer_ids)
    answers: dict[str, str] = {}
    count: dict[str, int] = {}
    notes: list[str] = []
    for i, cell in enumerate(cells, 1):
        if not isinstance(cell, dict):
            notes.append(f"cell {i} is not a cell object: ignored")
            continue
        meta = cell.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            notes.append(f"cell {i}: malformed metadata ({type(meta).__name__}): ignored")
            continue
        nbg = meta.get("nbgrader") if isinstance(meta, dict) else None
        if nbg is None:
            continue
        if not isinstance(nbg, dict) or not isinstance(nbg.get("grade_id"), str):
            notes.append(f"cell {i}: malformed nbgrader metadata: ignored")
            continue
        gid = nbg["grade_id"]
        if gid not in wanted or cell.get("cell_type") != "code":
            continue  # setup and graded cells: the instructor's are used
        count[gid] = count.get(gid, 0) + 1
        source = cell.get("source")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        if not isinstance(source, str):
            notes.append(f"cell {i} ({gid}): its source is not text: ignored")
            continue
        answers[gid] = source
    repeated = sorted(g for g, n in count.items() if n > 1)
    if repeated:
        raise _Rejected(f"malformed: grade_id {repeated[0]!r} appears in {count[repeated[0]]} cells "
                        "(each answer cell must appear once)")
    if not count:
        notes.append(f"no answer cells found (code cells with nbgrader grade_id {', '.join(sorted(wanted))})")
    return answers, notes


# ---------------------------------------------------------------------------------------- comparing
def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _close(a, b, rtol: float, atol: float) -> bool:
    try:
        a, b = float(a), float(b)
    except OverflowError:
        return False
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b) or math.isinf(a):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def compare(got, expected, rtol: float, atol: float, where: str = "value") -> str | None:
    """``None`` when ``got`` matches ``expected`` (plain JSON data from the sandbox), else what differs."""
    if isinstance(expected, dict) and "__tensor__" in expected:
        if not (isinstance(got, dict) and "__tensor__" in got):
            return f"{where}: expected a tensor, got {type(got).__name__}"
        if got.get("__tensor__") != expected["__tensor__"]:
            return f"{where}: wrong shape"  # neither shape is shown: both tell about the hidden inputs
        data, ref = got.get("data"), expected["data"]
        if not isinstance(data, list) or len(data) != len(ref):
            return f"{where}: malformed tensor"
        if (got.get("kind") == "bool") != (expected["kind"] == "bool"):
            return f"{where}: expected a {expected['kind']} tensor, got {got.get('kind')}"
        for a, b in zip(data, ref):
            if isinstance(b, bool):
                if a is not b:
                    return f"{where}: wrong values"
            elif not _is_number(a) or not _close(a, b, rtol, atol):
                return f"{where}: wrong values"
        return None
    if isinstance(expected, bool):
        return None if got is expected else f"{where}: wrong value"
    if _is_number(expected):
        if not _is_number(got):
            return f"{where}: expected a number, got {type(got).__name__}"
        return None if _close(got, expected, rtol, atol) else f"{where}: wrong value"
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return f"{where}: expected a list of {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected)):
            problem = compare(a, b, rtol, atol, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where}: expected the keys {sorted(expected)}"
        for k in expected:
            problem = compare(got[k], expected[k], rtol, atol, f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    return None if got == expected and type(got) is type(expected) else f"{where}: wrong value"


# ------------------------------------------------------------------------------------------ running
def _probe_values(result: sandbox.RunResult) -> dict[tuple[str, int], dict]:
    return result.values


def _run_failure(result: sandbox.RunResult, settings: Settings) -> str:
    """Why a probe has no value: the run stopped before it. Once the questions started, an exit code or a
    signal the submission could choose is told only by its class (see the module docstring)."""
    if result.timed_out:
        return f"timeout: the run took more than {settings.timeout:g} s"
    code = result.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGXCPU":
            return "CPU time limit exceeded"
        if result.cells_done and name != "SIGKILL":
            name = "a signal"
        return f"the run was killed ({name}) before this question"
    if result.cells_done and code not in (0, None):
        return "the run ended (a non-zero exit code) before this question"
    return f"the run ended (exit code {code}) before this question"


def _memory(error: str) -> bool:
    return error.startswith("MemoryError") or "can't allocate memory" in error or "DefaultCPUAllocator" in error


_BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                   if isinstance(value, type) and issubclass(value, BaseException)}


def probe_error(error, exercise: Exercise, settings: Settings) -> str:
    """A probe's error as the grader reports it: the child's text is not shown (it ran with the hidden
    inputs), only its class when built in, a stubbed library function by name, or the memory limit."""
    error = str(error)
    if _memory(error):
        return f"memory limit ({settings.memory_gib:g} GiB) exceeded"
    for name in exercise.unavailable:
        if error == sandbox.unavailable_message(name):
            return f"calls {name}, which is not available in this exercise"
    kind = error.split(":", 1)[0].strip()
    return f"raised {kind}" if kind in _BUILTIN_ERRORS else "raised an exception"


def _hidden(exercise: Exercise, extra=()) -> list[str]:
    """Folders the child must not see even where a bound folder holds them: the exercise's, the checkout's
    notebooks and its git history, and ``extra`` (the submissions' folders)."""
    from mtml_lib import config

    folders = {exercise.path.resolve().parent, *extra}
    checkout = config.find_checkout()
    if checkout is not None:
        folders |= {checkout.resolve() / "notebooks", checkout.resolve() / ".git"}
    return sorted(str(f) for f in folders)


def _spec(exercise: Exercise, answers: dict[str, str] | None, settings: Settings, hide=()) -> dict:
    """What the child starts with: the cells and the limits, never a question (those come later)."""
    timeout = float(settings.timeout)
    return {
        "cells": exercise.program(answers), "unavailable": list(exercise.unavailable),
        "memory_bytes": int(settings.memory_gib * sandbox.GIB), "cpu_seconds": max(2, math.ceil(timeout) + 1),
        "file_bytes": int(settings.file_mib * sandbox.MIB), "processes": int(settings.processes),
        "tmpfs_mib": int(settings.file_mib * 4), "isolate": settings.isolate, "binds": sandbox.default_binds(),
        "hide": _hidden(exercise, hide),
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "USER": "student",
                "LOGNAME": "student", "TMPDIR": "/tmp"},
    }


class Grader:
    """Grades submissions against instructor notebooks; one instance per batch."""

    def __init__(self, settings: Settings | None = None, warn=None):
        self.settings = (settings or Settings()).check()
        self.uid = sandbox.pick_uid() if self.settings.isolate else -1
        self.warn = warn or (lambda message: None)
        self.expected: dict[Path, dict[tuple[str, int], object]] = {}
        self.exercises: dict[Path, Exercise] = {}
        self._warned = False
        self.server = sandbox.Server()
        self.hide: set[Path] = set()  # the submissions' folders

    def close(self) -> None:
        self.server.close()

    def exercise(self, key: Path) -> Exercise:
        key = Path(key).resolve()
        if key not in self.exercises:
            self.exercises[key] = exercises.load(key)
            self.server.prewarm |= set(self.exercises[key].unavailable)  # for a server started after this
        return self.exercises[key]

    def _sandbox_warnings(self, result: sandbox.RunResult) -> None:
        if self._warned:
            return
        self._warned = True
        info = result.sandbox or {}
        messages = list(info.get("warnings", []))
        if self.uid < 0:
            why = "isolation is turned off" if os.geteuid() == 0 else "not running as root"
            messages.append(f"{why}: submissions run as user id {os.getuid()}, in a temporary folder but without a "
                            "private file system, can read every file that user can (the instructor notebooks "
                            "included) and can leave processes behind by starting a new session; run `mtml grade` "
                            "as root for grades you can trust")
        for message in messages:
            self.warn(message)

    def prepare(self, key: Path) -> Exercise:
        """Load an exercise and compute its expected probe values from the instructor's solutions."""
        exercise = self.exercise(key)
        path = exercise.path.resolve()
        if path in self.expected:
            return exercise
        try:
            spec = _spec(exercise, None, self.settings, self.hide)
            result = sandbox.run(spec, max(self.settings.timeout, 120), self.uid, self.server,
                                 exercise.payloads())
        except (OSError, RuntimeError) as err:
            raise ExerciseError(f"the grading sandbox could not run {exercise.path.name}: {err}") from None
        if result.sandbox is None:
            raise ExerciseError(f"the grading sandbox did not start (exit code {result.returncode}): "
                                f"{result.log.strip().splitlines()[-1] if result.log.strip() else 'no output'}")
        self._sandbox_warnings(result)
        values = _probe_values(result)
        expected = {}
        for q in exercise.questions:
            for i, _ in enumerate(q.probes):
                record = values.get((q.grade_id, i))
                if record is None or "value" not in record:
                    why = record.get("error") if record else _run_failure(result, self.settings)
                    raise ExerciseError(f"{exercise.path.name}: the instructor's solution fails probe {i} of "
                                        f"{q.grade_id!r}: {why}")
                expected[(q.grade_id, i)] = record["value"]
        self.expected[path] = expected
        return exercise

    def grade(self, submission: Path, key: Path) -> GradeReport:
        """Grade one submission; never raises for anything the submission contains."""
        start = time.monotonic()
        exercise = self.prepare(key)
        report = GradeReport(submission=str(submission), exercise=exercise.name,
                             questions=[Question(q.grade_id, q.points) for q in exercise.questions])
        try:
            answers, report.notes = read_answers(Path(submission), exercise)
        except _Rejected as err:
            return self._reject(report, str(err), start)
        expected = self.expected[exercise.path.resolve()]
        pending = [q.grade_id for q in exercise.questions]
        first = True
        while pending:
            # A run that stops inside a question (timeout, killed, exit) is started again for the questions
            # after it, so one question's loop or crash costs only that question; not when the answer cells
            # themselves never finished, and not beyond three timeouts for the whole submission.
            try:
                spec = _spec(exercise, answers, self.settings, self.hide)
                result = sandbox.run(spec, self.settings.timeout, self.uid, self.server, exercise.payloads(pending))
            except (OSError, RuntimeError) as err:  # the grader's side failed (e.g. out of file descriptors)
                return self._reject(report, f"not graded: the grading sandbox failed ({printable(err)}); "
                                            "grade it again", start)
            if result.leftover:
                report.notes.append(f"processes {result.leftover} of the run could not be killed")
            if first:
                cell_errors = [r for r in result.cells if r.get("error")]
                for record in cell_errors[:10]:
                    report.notes.append(f"{printable(record.get('id'), 60)}: {printable(record['error'])}")
            first = False
            stopped = self._score(report, exercise, pending, _probe_values(result), expected, result)
            if stopped is None:
                break
            started = result.cells_done
            pending = pending[pending.index(stopped) + 1:]
            if pending and (not started or time.monotonic() - start > 2 * self.settings.timeout):
                reason = _run_failure(result, self.settings) if not started else \
                    "not run: the time for this submission went to the questions before"
                for q in report.questions:
                    if q.grade_id in pending:
                        q.error = reason
                break
        report.seconds = time.monotonic() - start
        return report

    def _score(self, report: GradeReport, exercise: Exercise, pending: list[str], values: dict, expected: dict,
               result: sandbox.RunResult) -> str | None:
        """Score the ``pending`` questions from one run's values; returns the question the run stopped in."""
        specs = {q.grade_id: q for q in exercise.questions}
        for q in report.questions:
            if q.grade_id not in pending:
                continue
            spec = specs[q.grade_id]
            for i, _ in enumerate(spec.probes):
                record = values.get((q.grade_id, i))
                if record is None:
                    q.error = _run_failure(result, self.settings)
                    return q.grade_id
                if "value" not in record:
                    q.error = f"check {i + 1} {probe_error(record.get('error'), exercise, self.settings)}"
                else:
                    problem = compare(record["value"], expected[(q.grade_id, i)], spec.rtol, spec.atol,
                                      f"check {i + 1}")
                    if problem:
                        q.error = f"wrong result ({problem})"
                if q.error:
                    break
            else:
                q.score = q.points
        return None

    def _reject(self, report: GradeReport, reason: str, start: float) -> GradeReport:
        report.error = reason
        for q in report.questions:
            q.error = reason
        report.seconds = time.monotonic() - start
        return report

    def reject(self, submission: Path, reason: str) -> GradeReport:
        return GradeReport(submission=str(submission), error=reason)


def key_for(submission: Path) -> tuple[Path | None, str | None]:
    """The instructor notebook named like the submission, or None and the reason."""
    if not Path(submission).is_file():
        return None, "the file does not exist" if not Path(submission).exists() else "not a file"
    try:
        return exercises.resolve([Path(submission).stem])[0], None
    except ExerciseError as err:
        return None, f"{err}; pass --key to name the exercise"


def grade_batch(submissions: list[Path], key: Path | None = None, settings: Settings | None = None,
                on_report=None, warn=None) -> list[GradeReport]:
    """Grade every submission (against ``key``, an exercise name or instructor notebook, or else the exercise
    named like each file) and return one report each, in order. Instructor notebooks are loaded and solved before the first submission runs, and are
    checked unchanged afterwards (a warning otherwise: the grades use the version read at the start)."""
    grader = Grader(settings, warn=warn)
    if key is not None:
        key = exercises.resolve([str(key)])[0]
    keys = [(key, None) if key is not None else key_for(s) for s in submissions]
    grader.hide = {Path(s).resolve().parent for s in submissions}
    reports = []
    try:
        chosen = list(dict.fromkeys(k for k, _ in keys if k is not None))
        for path in chosen:  # every exercise loaded before the sandbox's server starts (it imports what they list)
            grader.exercise(path)
        for path in chosen:
            grader.prepare(path)
        for submission, (path, problem) in zip(submissions, keys):
            report = grader.reject(submission, problem) if path is None else grader.grade(Path(submission), path)
            reports.append(report)
            if on_report:
                on_report(report)
    finally:
        grader.close()
    import hashlib

    for exercise in grader.exercises.values():
        try:
            same = hashlib.sha256(exercise.path.read_bytes()).hexdigest() == exercise.digest
        except OSError:
            same = False
        if not same and warn:
            warn(f"the instructor notebook {exercise.path} changed or vanished during grading; the grades use "
                 "the version read before the first submission ran")
    return reports


def write_gradebook(reports: list[GradeReport], path: Path) -> None:
    """Write the reports as JSON, atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    text = json.dumps([r.as_dict() for r in reports], indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

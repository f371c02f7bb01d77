"""Coursework: exercise notebooks in nbgrader's format, their student versions, and grading.

An exercise is an instructor notebook in ``notebooks/exercises/`` (it runs top to bottom with the
solutions in place, so the tests check it). Its cells carry nbgrader's metadata
(``{"nbgrader": {"grade_id", "points", "solution", "grade", "locked", "schema_version": 3}}``) and markers,
so an instructor can also run the exercise through nbgrader itself:

- **answer cells** (``solution: true``): the student's. Lines between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` are replaced in the student version by ``# YOUR CODE HERE`` and a
  ``raise NotImplementedError`` (indented like the region), so an unanswered question fails loudly.
- **graded cells** (``grade: true``, with ``points``): the checks a student sees and runs (``assert``
  statements; lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed from the
  student version). For ``mtml grade`` each graded cell also holds, in ``metadata.mtml``, its *probes*:
  Python expressions (and an optional ``setup``) whose values, computed from the student's answers, must
  equal those computed from the instructor's (within ``rtol``/``atol``). The probes are removed from the
  student version. The probes run on *fresh* inputs that the ``setup`` makes (other shapes, seeds and
  values than the notebook's), never on the notebook's own data, so an answer fitted to what the student
  can see gains nothing; a setup makes inputs only (no reference computation: it reaches the child).
  ``uses``, a list of answer ``grade_id`` values, makes the question independent of earlier answers: for its
  probes the instructor's solutions of those answer cells replace the student's.
- **setup cells** (everything else): data and imports, taken from the instructor's copy when grading.

The notebook's own ``metadata.mtml.unavailable`` lists what the exercise asks the student to write and
the library (or an installed package) already computes: ``"mtml_lib.metrics.confusion_matrix"``, a class,
a whole module of this package, or a package such as ``"sklearn"``. While ``mtml grade`` runs the answers
and probes, those are stubs that raise and their source cannot be read (see :mod:`mtml_lib.grading`), so
an answer that calls them scores nothing. Setup cells and probe setups must not call them either (the
instructor's run fails loudly if they do); visible checks may, since they run only in the student's own
kernel.

Grading (:mod:`mtml_lib.grading`) never trusts the submission: only its answer cells are used, they run
in a sandboxed child process together with the instructor's setup cells, and the grader compares the
plain numbers the child reports with the instructor's. Authors: keep setup cells before the answer cells
(or seed their own generators), so an answer that draws random numbers does not change the data a later
setup cell makes; and give probe setups their own ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from mtml_lib import config

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
PLACEHOLDER = 'raise NotImplementedError("exercise: replace this line with your solution")'


class ExerciseError(ValueError):
    """A malformed exercise or an unusable command argument; the message names the notebook and the cell."""


@dataclass(frozen=True)
class QuestionSpec:
    """One graded cell: its points and the probes ``mtml grade`` evaluates."""

    grade_id: str
    points: float
    probes: tuple[str, ...]
    setup: str = ""
    rtol: float = 1e-7
    atol: float = 1e-10
    uses: tuple[str, ...] = ()  # answer grade_ids whose instructor solutions the probes run with


@dataclass
class Exercise:
    """An instructor notebook, parsed: its code cells by kind, and its questions."""

    name: str
    path: Path
    digest: str
    cells: list[dict] = field(default_factory=list)  # {"kind", "grade_id", "source", "student"}
    questions: list[QuestionSpec] = field(default_factory=list)
    unavailable: tuple[str, ...] = ()  # library names a grading run replaces by stubs (module docstring)

    @property
    def answer_ids(self) -> list[str]:
        return [c["grade_id"] for c in self.cells if c["kind"] == "solution"]

    @property
    def total(self) -> float:
        return sum(q.points for q in self.questions)

    def program(self, answers: dict[str, str] | None = None) -> list[dict]:
        """The cells a grading run executes, in order: the instructor's setup cells and, for each answer
        cell, ``answers[grade_id]`` (the student's; the empty student version where missing), or the
        instructor's solution when ``answers`` is None. Graded cells are not run."""
        program = []
        for i, cell in enumerate(self.cells, 1):
            if cell["kind"] == "setup":
                program.append({"id": f"setup cell {cell['grade_id'] or i}", "source": cell["source"]})
            elif cell["kind"] == "solution":
                source = cell["source"] if answers is None else answers.get(cell["grade_id"], cell["student"])
                program.append({"id": f"answer cell {cell['grade_id']}", "source": source})
        return program

    def payloads(self, grade_ids=None) -> list[dict]:
        """The questions as a grading run receives them, one at a time (those of ``grade_ids`` only, when
        given): the probe setup, the probes, and the instructor's solutions of the answers it ``uses``."""
        solutions = {c["grade_id"]: c["source"] for c in self.cells if c["kind"] == "solution"}
        return [{"grade_id": q.grade_id, "setup": q.setup, "probes": list(q.probes),
                 "references": [solutions[g] for g in q.uses]}
                for q in self.questions if grade_ids is None or q.grade_id in grade_ids]


def exercises_dir() -> Path:
    return config.notebooks_dir() / "exercises"


def discover() -> list[Path]:
    """The instructor notebooks in ``notebooks/exercises/``, sorted by name."""
    return sorted(p for p in exercises_dir().glob("*.ipynb") if p.is_file())


def resolve(names: list[str] | None) -> list[Path]:
    """Exercise names (stem, file name, or path) to instructor notebooks; all of them when ``names`` is empty."""
    available = {p.stem: p for p in discover()}
    if not names:
        return list(available.values())
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            chosen.append(path)
            continue
        stem = path.name[: -len(".ipynb")] if path.name.endswith(".ipynb") else path.name
        if stem not in available:
            raise ExerciseError(f"unknown exercise {name!r}; valid exercises: {', '.join(available) or '(none found)'}")
        chosen.append(available[stem])
    return chosen


def nbgrader_meta(cell) -> dict:
    """The cell's ``metadata.nbgrader`` when it is a mapping, else ``{}``."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    value = meta.get("nbgrader") if isinstance(meta, dict) else None
    return value if isinstance(value, dict) else {}


def _strip_region(source: str, begin: str, end: str, where: str, replacement: bool) -> str:
    """Remove the lines between ``begin`` and ``end`` (markers included), optionally leaving a placeholder.

    A marker is any line that contains its words (``BEGIN SOLUTION``, as nbgrader matches them), so a
    marker typed with another number of ``#`` never leaves a solution in the student version."""
    begin_words, end_words = begin.lstrip("# "), end.lstrip("# ")
    out: list[str] = []
    inside = False
    indent = ""
    for line in source.splitlines():
        if begin_words in line:
            if inside:
                raise ExerciseError(f"{where}: {begin!r} inside another region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if replacement:
                out += [f"{indent}# YOUR CODE HERE", f"{indent}{PLACEHOLDER}"]
            continue
        if end_words in line:
            if not inside:
                raise ExerciseError(f"{where}: {end!r} without a matching {begin!r}")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ExerciseError(f"{where}: {begin!r} is never closed by {end!r}")
    return "\n".join(out)


def _student_source(source: str, where: str) -> str:
    source = _strip_region(source, BEGIN_SOLUTION, END_SOLUTION, where, replacement=True)
    return _strip_region(source, BEGIN_HIDDEN, END_HIDDEN, where, replacement=False)


def _question(cell, meta: dict, where: str) -> QuestionSpec:
    gid, points = meta["grade_id"], meta.get("points")
    if not isinstance(points, (int, float)) or isinstance(points, bool) or points <= 0:
        raise ExerciseError(f"{where} ({gid!r}) needs positive nbgrader 'points', got {points!r}")
    probe_meta = cell.metadata.get("mtml")
    probes = probe_meta.get("probes") if isinstance(probe_meta, dict) else None
    if not probes or not isinstance(probes, list) or not all(isinstance(p, str) and p.strip() for p in probes):
        raise ExerciseError(f"{where} ({gid!r}) needs metadata mtml.probes, a non-empty list of expressions")
    for p in probes:
        try:
            compile(p, where, "eval")
        except SyntaxError as err:
            raise ExerciseError(f"{where} ({gid!r}): probe {p!r} is not an expression: {err.msg}") from None
    setup = probe_meta.get("setup", "")
    rtol, atol = probe_meta.get("rtol", 1e-7), probe_meta.get("atol", 1e-10)
    if not isinstance(setup, str) or not all(isinstance(t, (int, float)) and t >= 0 for t in (rtol, atol)):
        raise ExerciseError(f"{where} ({gid!r}): mtml.setup must be text, mtml.rtol and mtml.atol non-negative numbers")
    uses = probe_meta.get("uses", [])
    if not isinstance(uses, list) or not all(isinstance(u, str) for u in uses):
        raise ExerciseError(f"{where} ({gid!r}): mtml.uses must be a list of answer grade_ids")
    return QuestionSpec(gid, float(points), tuple(probes), setup, float(rtol), float(atol), tuple(uses))


def load(path: Path) -> Exercise:
    """Parse and check an instructor notebook: unique grade ids, positive points, probes on graded cells."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except Exception as err:  # noqa: BLE001 - any unreadable instructor notebook is reported the same way
        raise ExerciseError(f"instructor notebook {path} is not a readable notebook: {err}") from None
    exercise = Exercise(name=path.stem, path=path, digest=hashlib.sha256(raw).hexdigest())
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells, 1):
        where = f"{path.name} cell {i}"
        meta = nbgrader_meta(cell)
        gid = meta.get("grade_id")
        if meta and not isinstance(gid, str):
            raise ExerciseError(f"{where}: nbgrader metadata needs a text 'grade_id', got {gid!r}")
        if gid in seen:
            raise ExerciseError(f"{where} repeats grade_id {gid!r}")
        if gid:
            seen.add(gid)
        if cell.cell_type != "code":
            continue
        if meta.get("solution") and meta.get("grade"):
            raise ExerciseError(f"{where} ({gid!r}): a cell is either an answer (solution) or a check (grade), not both")
        kind = "solution" if meta.get("solution") else "test" if meta.get("grade") else "setup"
        if kind == "setup" and BEGIN_SOLUTION in cell.source:
            raise ExerciseError(f"{where}: a solution region outside an answer cell (nbgrader solution: true)")
        if kind == "test":
            exercise.questions.append(_question(cell, meta, where))
        exercise.cells.append({"kind": kind, "grade_id": gid, "source": cell.source,
                               "student": _student_source(cell.source, where)})
    if not exercise.questions:
        raise ExerciseError(f"{path.name}: no graded cells (code cells with nbgrader grade: true, points and mtml.probes)")
    if not exercise.answer_ids:
        raise ExerciseError(f"{path.name}: no answer cells (code cells with nbgrader solution: true)")
    for q in exercise.questions:
        unknown = [u for u in q.uses if u not in exercise.answer_ids]
        if unknown:
            raise ExerciseError(f"{path.name} ({q.grade_id!r}): mtml.uses names {unknown[0]!r}, which is not an "
                                f"answer cell; answer cells: {', '.join(exercise.answer_ids)}")
    meta = nb.metadata.get("mtml", {})
    unavailable = meta.get("unavailable", []) if isinstance(meta, dict) else None
    if not isinstance(unavailable, list) or not all(isinstance(u, str) and u.strip() for u in unavailable):
        raise ExerciseError(f"{path.name}: notebook metadata mtml.unavailable must be a list of names, "
                            f"got {unavailable!r}")
    exercise.unavailable = tuple(unavailable)
    return exercise


def release(instructor: Path) -> nbformat.NotebookNode:
    """The student version of an instructor notebook: solutions replaced, hidden tests and probes removed,
    outputs cleared; nbgrader's metadata kept."""
    load(instructor)
    student = nbformat.read(instructor, as_version=4)
    for i, cell in enumerate(student.cells, 1):
        cell.metadata.pop("mtml", None)
        if cell.cell_type != "code":
            continue
        cell.source = _student_source(cell.source, f"{instructor.name} cell {i}")
        cell.outputs = []
        cell.execution_count = None
    return student


def release_all(names: list[str] | None, out: Path) -> list[Path]:
    """Write the student versions of the chosen exercises into ``out``; returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in resolve(names):
        target = out / path.name
        nbformat.write(release(path), target)
        written.append(target)
    return written


def grade(submission: Path, key: Path, timeout: float = 60, **settings):
    """Grade one submission against the instructor notebook ``key``; see :func:`mtml_lib.grading.grade_batch`."""
    from mtml_lib import grading

    return grading.grade_batch([Path(submission)], key=Path(key), settings=grading.Settings(timeout=timeout, **settings))[0]

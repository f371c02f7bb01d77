"""Coursework: release exercise notebooks without their solutions, and grade submissions automatically.

An exercise is an instructor notebook in ``notebooks/exercises/`` (it runs top to bottom with the
solutions in place, so the tests check it). Two markers make it coursework:

- **solution regions** in code cells, between a line ``# BEGIN SOLUTION`` and a line ``# END SOLUTION``.
  The student version replaces each region by ``# YOUR CODE HERE`` and a ``raise NotImplementedError``
  (indented like the region), so an unanswered question fails loudly rather than silently.
- **graded cells**: code cells whose metadata holds ``{"mtml": {"grade_id": "q1", "points": 2}}``. They
  hold the checks (``assert`` statements). Lines between ``# BEGIN HIDDEN TESTS`` and
  ``# END HIDDEN TESTS`` are removed from the student version.

Grading executes the submission with the *instructor's* graded cells put back in place (matched by
``grade_id``), so editing or deleting a check does not change the grade, and hidden tests run. A graded
cell scores its points when it runs without error; every other cell may fail without stopping the run
(a later question can still score). The report lists each question with its points and the error of
those that failed.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from mtml_lib import config

BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
BEGIN_HIDDEN = "# BEGIN HIDDEN TESTS"
END_HIDDEN = "# END HIDDEN TESTS"
PLACEHOLDER = 'raise NotImplementedError("exercise: replace this line with your solution")'


class ExerciseError(ValueError):
    """A malformed exercise or submission; the message names the notebook and the cell."""


@dataclass
class Question:
    grade_id: str
    points: float
    score: float = 0.0
    error: str | None = None


@dataclass
class GradeReport:
    submission: str
    questions: list[Question] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def total(self) -> float:
        return sum(q.points for q in self.questions)

    def as_dict(self) -> dict:
        return {
            "submission": self.submission,
            "score": self.score,
            "total": self.total,
            "questions": [q.__dict__ for q in self.questions],
        }


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


def _grade_meta(cell) -> dict | None:
    meta = cell.metadata.get("mtml", {})
    return meta if "grade_id" in meta else None


def _strip_region(source: str, begin: str, end: str, where: str, replacement: bool) -> str:
    """Remove the lines between ``begin`` and ``end`` (markers included), optionally leaving a placeholder."""
    out: list[str] = []
    inside = False
    indent = ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ExerciseError(f"{where}: {begin!r} inside another region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if replacement:
                out += [f"{indent}# YOUR CODE HERE", f"{indent}{PLACEHOLDER}"]
            continue
        if stripped == end:
            if not inside:
                raise ExerciseError(f"{where}: {end!r} without a matching {begin!r}")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ExerciseError(f"{where}: {begin!r} is never closed by {end!r}")
    return "\n".join(out)


def grade_cells(nb: nbformat.NotebookNode, name: str) -> dict[str, nbformat.NotebookNode]:
    """The graded cells of an instructor notebook by ``grade_id``; checks ids are unique and points positive."""
    cells: dict[str, nbformat.NotebookNode] = {}
    for i, cell in enumerate(nb.cells, 1):
        meta = _grade_meta(cell)
        if meta is None:
            continue
        gid, points = meta["grade_id"], meta.get("points")
        if gid in cells:
            raise ExerciseError(f"{name}: cell {i} repeats grade_id {gid!r}")
        if not isinstance(points, (int, float)) or points <= 0:
            raise ExerciseError(f"{name}: cell {i} ({gid!r}) needs positive 'points', got {points!r}")
        cells[gid] = cell
    if not cells:
        raise ExerciseError(f"{name}: no graded cells (code cells with metadata mtml.grade_id and mtml.points)")
    return cells


def release(instructor: Path) -> nbformat.NotebookNode:
    """The student version of an instructor notebook: solutions replaced, hidden tests removed, outputs cleared."""
    nb = nbformat.read(instructor, as_version=4)
    grade_cells(nb, instructor.name)
    student = copy.deepcopy(nb)
    for i, cell in enumerate(student.cells, 1):
        if cell.cell_type != "code":
            continue
        where = f"{instructor.name} cell {i}"
        cell.source = _strip_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, where, replacement=True)
        cell.source = _strip_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, where, replacement=False)
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def grade(submission: Path, key: Path, timeout: int = 300) -> GradeReport:
    """Execute ``submission`` with the graded cells of ``key`` (the instructor notebook) and score it."""
    from nbclient import NotebookClient

    submission, key = Path(submission), Path(key)
    if not submission.is_file():
        raise ExerciseError(f"submission {submission} does not exist")
    try:
        nb = nbformat.read(submission, as_version=4)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ExerciseError(f"submission {submission} is not a readable notebook: {err}") from None
    official = grade_cells(nbformat.read(key, as_version=4), key.name)
    seen = set()
    for cell in nb.cells:
        meta = _grade_meta(cell)
        if meta is not None and meta["grade_id"] in official:
            cell.source = official[meta["grade_id"]].source
            cell.metadata["mtml"] = dict(official[meta["grade_id"]].metadata["mtml"])
            seen.add(meta["grade_id"])
    missing = [gid for gid in official if gid not in seen]
    for gid in missing:  # a deleted check still runs, at the end
        nb.cells.append(copy.deepcopy(official[gid]))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(key.parent)}})
    client.execute()
    report = GradeReport(submission=str(submission))
    for cell in nb.cells:
        meta = _grade_meta(cell)
        if meta is None or meta["grade_id"] not in official:
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        question = Question(grade_id=meta["grade_id"], points=float(official[meta["grade_id"]].metadata["mtml"]["points"]))
        if errors:
            question.error = _ANSI.sub("", f"{errors[0].get('ename')}: {errors[0].get('evalue')}")
        elif cell.get("execution_count") is None:
            question.error = "not executed"
        else:
            question.score = question.points
        report.questions.append(question)
    order = list(official)
    report.questions.sort(key=lambda q: order.index(q.grade_id))
    return report

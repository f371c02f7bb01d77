"""The exercises speak nbgrader's format: nbgrader itself releases one and grades it (test-only dependency).

Skipped when nbgrader is not installed (``pip install -r requirements-test.txt``).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mtml_lib import exercises

pytest.importorskip("nbgrader", reason="nbgrader is not installed (a test-only dependency: requirements-test.txt)")

EXERCISE = "ex04_prototypical_networks"


def _nbgrader(course, *args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # alembic
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--CourseDirectory.root=" + str(course)],
                          cwd=course, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_nbgrader_generates_and_autogrades_an_exercise(tmp_path):
    key = exercises.resolve([EXERCISE])[0]
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    shutil.copy(key, course / "source" / "ps1" / key.name)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'mtml'\n"
        "c.CourseDirectory.db_assignments = [dict(name='ps1')]\n"
        "c.CourseDirectory.db_students = [dict(id='solver'), dict(id='blank')]\n"
        "c.ExecutePreprocessor.timeout = 120\n")
    _nbgrader(course, "generate_assignment", "ps1", "--force")
    released = course / "release" / "ps1" / key.name
    student = nbformat.read(released, 4)
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text and "raise NotImplementedError" in text

    solutions = {exercises.nbgrader_meta(c).get("grade_id"): c.source for c in nbformat.read(key, 4).cells}
    solved = nbformat.read(released, 4)
    for cell in solved.cells:
        if exercises.nbgrader_meta(cell).get("solution"):
            cell.source = solutions[exercises.nbgrader_meta(cell)["grade_id"]]
    for name, nb in (("solver", solved), ("blank", student)):
        folder = course / "submitted" / name / "ps1"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / key.name)
    _nbgrader(course, "autograde", "ps1", "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        total = gb.find_assignment("ps1").max_score
        scores = {s: gb.find_submission("ps1", s).score for s in ("solver", "blank")}
    assert total == exercises.load(key).total == 7
    assert scores == {"solver": 7, "blank": 0}

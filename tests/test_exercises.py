"""Coursework: releasing strips solutions and hidden tests; grading uses the instructor's checks."""

import json

import nbformat
import pytest

from mtml_lib import cli, exercises

EXERCISE = "ex03_segmentation_metrics"


@pytest.fixture(scope="module")
def key():
    return exercises.resolve([EXERCISE])[0]


def test_every_exercise_releases_without_solutions():
    paths = exercises.discover()
    assert [p.stem for p in paths] == sorted(p.stem for p in paths) and len(paths) >= 3
    for path in paths:
        student = exercises.release(path)
        text = "\n".join(c.source for c in student.cells)
        assert exercises.BEGIN_SOLUTION not in text and exercises.BEGIN_HIDDEN not in text
        regions = sum(c.source.count(exercises.BEGIN_SOLUTION) for c in nbformat.read(path, 4).cells)
        assert regions >= 1 and text.count(exercises.PLACEHOLDER) == regions
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_hidden_tests_are_removed_but_visible_checks_stay():
    path = exercises.resolve(["ex01_multitask_gradient"])[0]
    student = exercises.release(path)
    graded = [c for c in student.cells if "mtml" in c.metadata]
    assert "W2 = torch.randn" not in graded[1].source and "assert grad_shared" in graded[1].source


def test_solution_placeholder_keeps_indentation():
    source = "def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n"
    out = exercises._strip_region(source, exercises.BEGIN_SOLUTION, exercises.END_SOLUTION, "t", True)
    assert out == f"def f(x):\n    # YOUR CODE HERE\n    {exercises.PLACEHOLDER}"
    with pytest.raises(exercises.ExerciseError, match="never closed"):
        exercises._strip_region("# BEGIN SOLUTION\nx = 1", exercises.BEGIN_SOLUTION, exercises.END_SOLUTION, "t", True)


def _write(nb, path):
    nbformat.write(nb, path)
    return path


def test_grading_blank_full_partial_and_tampered(key, tmp_path):
    instructor = exercises.grade(key, key)
    assert instructor.score == instructor.total == 5

    blank = _write(exercises.release(key), tmp_path / "blank.ipynb")
    report = exercises.grade(blank, key)
    assert report.score == 0 and all("NotImplementedError" in q.error for q in report.questions)

    # partial: the confusion matrix is right, the mIoU forgets to leave absent classes out
    partial = exercises.release(key)
    solved = nbformat.read(key, 4)
    for cell, ref in zip(partial.cells, solved.cells):
        if "def confusion" in ref.source:
            cell.source = ref.source
        if "def miou" in ref.source:
            cell.source = "def miou(cm):\n    cm = cm.double()\n    tp = cm.diagonal()\n    return float((tp / (cm.sum(0) + cm.sum(1) - tp).clamp_min(1)).mean())"
        if "mtml" in cell.metadata:  # a student who weakens every check gains nothing
            cell.source = "print('all good')"
    report = exercises.grade(_write(partial, tmp_path / "partial.ipynb"), key)
    scores = {q.grade_id: q.score for q in report.questions}
    assert scores == {"q1_confusion": 2, "q2_miou": 0, "q3_per_batch": 0}
    assert report.questions[1].error.startswith("AssertionError")


def test_deleted_check_still_runs(key, tmp_path):
    nb = nbformat.read(key, 4)
    nb.cells = [c for c in nb.cells if c.metadata.get("mtml", {}).get("grade_id") != "q3_per_batch"]
    report = exercises.grade(_write(nb, tmp_path / "deleted.ipynb"), key)
    assert {q.grade_id: q.score for q in report.questions}["q3_per_batch"] == 1


def test_cli_release_and_grade(tmp_path, capsys):
    assert cli.main(["release", EXERCISE, "--out", str(tmp_path)]) == 0
    submission = tmp_path / f"{EXERCISE}.ipynb"
    assert submission.is_file()
    assert cli.main(["grade", str(submission), "--json", str(tmp_path / "grades.json")]) == 0
    out = capsys.readouterr().out
    assert f"{submission}: 0 / 5 points" in out
    assert json.loads((tmp_path / "grades.json").read_text())[0]["total"] == 5
    with pytest.raises(SystemExit) as exc:
        cli.main(["release", "ex99", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "valid exercises: ex01_multitask_gradient" in capsys.readouterr().err


def test_malformed_exercise_errors(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    with pytest.raises(exercises.ExerciseError, match="no graded cells"):
        exercises.release(_write(nb, tmp_path / "none.ipynb"))
    nb.cells = [nbformat.v4.new_code_cell("assert True", metadata={"mtml": {"grade_id": "a", "points": 0}})]
    with pytest.raises(exercises.ExerciseError, match="positive 'points'"):
        exercises.release(_write(nb, tmp_path / "zero.ipynb"))
    with pytest.raises(exercises.ExerciseError, match="does not exist"):
        exercises.grade(tmp_path / "missing.ipynb", tmp_path / "zero.ipynb")

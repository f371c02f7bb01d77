"""Coursework: releasing strips solutions, hidden tests and probes; grading scores answers, not claims."""

import json

import nbformat
import pytest

from mtml_lib import cli, exercises, grading

EXERCISE = "ex03_segmentation_metrics"


@pytest.fixture(scope="module")
def key():
    return exercises.resolve([EXERCISE])[0]


def _answer(nb, grade_id, source):
    for cell in nb.cells:
        if exercises.nbgrader_meta(cell).get("grade_id") == grade_id:
            cell.source = source
            return nb
    raise KeyError(grade_id)


def test_every_exercise_releases_without_solutions_hidden_tests_or_probes():
    paths = exercises.discover()
    assert [p.stem for p in paths] == sorted(p.stem for p in paths)
    # at least one exercise per narrative notebook 01-05
    assert {p.stem[:4] for p in paths} >= {"ex01", "ex02", "ex03", "ex04", "ex05"}
    for path in paths:
        student = exercises.release(path)
        text = "\n".join(c.source for c in student.cells)
        assert exercises.BEGIN_SOLUTION not in text and exercises.BEGIN_HIDDEN not in text
        instructor = nbformat.read(path, 4)
        regions = sum(c.source.count(exercises.BEGIN_SOLUTION) for c in instructor.cells)
        assert regions >= 1 and text.count(exercises.PLACEHOLDER) == regions
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
        assert not any("mtml" in c.metadata for c in student.cells)  # the probes stay with the instructor
        hidden = sum(c.source.count(exercises.BEGIN_HIDDEN) for c in instructor.cells)
        assert hidden >= 1, f"{path.name} has no hidden tests"
        exercise = exercises.load(path)
        assert len(exercise.questions) >= 2 and all(len(q.probes) >= 2 or q.points <= 1 for q in exercise.questions)
        assert exercise.unavailable, f"{path.name} lists no library implementation as unavailable"
        derivations = [c.source for c in instructor.cells if c.cell_type == "markdown" and
                       ("a derivation" in c.source or "a prediction" in c.source)]
        assert derivations, f"{path.name} asks for no derivation or prediction"
        for cell in instructor.cells:  # nbgrader's schema: every code cell is locked, an answer or a check
            meta = exercises.nbgrader_meta(cell)
            if cell.cell_type == "code":
                assert meta.get("schema_version") == 3 and isinstance(meta.get("grade_id"), str)
                assert meta["solution"] or meta["locked"]
                assert ("points" in meta) == meta["grade"]


def test_hidden_tests_are_removed_but_visible_checks_stay():
    path = exercises.resolve(["ex01_multitask_gradient"])[0]
    student = exercises.release(path)
    graded = [c for c in student.cells if exercises.nbgrader_meta(c).get("grade")]
    assert "B_h = torch.randn" not in graded[1].source and "assert grad_shared" in graded[1].source
    assert "zero_start ==" not in graded[3].source and 'zero_start in ("a", "b", "c", "d")' in graded[3].source


def _data_names(source_cells: list[str]) -> set[str]:
    """Names that the notebook's setup cells bind to data the student sees (tensors and lists of them)."""
    import torch

    ns: dict = {}
    for source in source_cells:
        exec(source, ns)  # noqa: S102 - the instructor's own setup cells
    def is_data(value):
        if isinstance(value, (list, tuple)):
            return any(is_data(v) for v in value)
        return isinstance(value, torch.Tensor)
    return {name for name, value in ns.items() if is_data(value)}


def test_hidden_checks_use_fresh_inputs_only():
    """No probe (and no probe setup) reads the data the student sees: every input is made anew."""
    import ast

    for path in exercises.discover():
        exercise = exercises.load(path)
        seen = _data_names([c["source"] for c in exercise.cells if c["kind"] == "setup"])
        assert seen, path.name
        for q in exercise.questions:
            used = set()
            for text, mode in [(p, "eval") for p in q.probes] + [(q.setup, "exec")]:
                used |= {n.id for n in ast.walk(ast.parse(text, mode=mode)) if isinstance(n, ast.Name)}
            assert not used & seen, (path.name, q.grade_id, sorted(used & seen))


def test_visible_checks_do_not_state_the_answer():
    """ex02's first check used to hold the adapted weight's formula; no visible check holds an answer line."""
    for path in exercises.discover():
        nb = nbformat.read(path, 4)
        solutions = [line.strip() for c in nb.cells if exercises.nbgrader_meta(c).get("solution")
                     for line in exercises._strip_region(c.source, exercises.BEGIN_HIDDEN, exercises.END_HIDDEN, "t", False).splitlines()
                     if line.strip().startswith("return ") or "=" in line and not line.strip().startswith(("def ", "#"))]
        student = exercises.release(path)
        visible = "\n".join(c.source for c in student.cells if exercises.nbgrader_meta(c).get("grade"))
        for line in solutions:
            expression = line.removeprefix("return ").split("=", 1)[-1].strip() if not line.startswith("return ") \
                else line.removeprefix("return ").strip()
            if len(expression) > 12:
                assert expression not in visible, (path.name, expression)


def test_solution_placeholder_keeps_indentation():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    out = exercises._strip_region(source, exercises.BEGIN_SOLUTION, exercises.END_SOLUTION, "t", True)
    assert out == f"def f(x):\n    # YOUR CODE HERE\n    {exercises.PLACEHOLDER}"
    loose = "x = 1\n# BEGIN SOLUTION\nsecret = 2\n  ## END SOLUTION\n"  # other markers, as nbgrader reads them
    assert "secret" not in exercises._strip_region(loose, exercises.BEGIN_SOLUTION, exercises.END_SOLUTION, "t", True)
    with pytest.raises(exercises.ExerciseError, match="never closed"):
        exercises._strip_region("### BEGIN SOLUTION\nx = 1", exercises.BEGIN_SOLUTION, exercises.END_SOLUTION, "t", True)


def _write(nb, path):
    nbformat.write(nb, path)
    return path


def test_grading_full_blank_and_partial(key, tmp_path):
    solved = nbformat.read(key, 4)
    blank = exercises.release(key)
    # partial: the confusion matrix is right, the mIoU forgets to leave absent classes out, the per-batch
    # mean is right, the two-batch derivation is wrong, and every visible check is replaced by a print
    # (which changes nothing: checks are not taken from submissions)
    partial = exercises.release(key)
    for gid in ("confusion", "per_batch_mean_miou"):
        _answer(partial, gid, next(c.source for c in solved.cells if exercises.nbgrader_meta(c).get("grade_id") == gid))
    _answer(partial, "miou", "def miou(cm):\n    cm = cm.double()\n    tp = cm.diagonal()\n"
                             "    return float((tp / (cm.sum(0) + cm.sum(1) - tp).clamp_min(1)).mean())")
    _answer(partial, "two_batch_mious", "def two_batch_mious(n_big, n_small):\n    return 0.5, 0.5")
    for cell in partial.cells:
        if exercises.nbgrader_meta(cell).get("grade"):
            cell.source = "print('all good')"
    paths = [key, _write(blank, tmp_path / "blank.ipynb"), _write(partial, tmp_path / "partial.ipynb")]
    full, empty, part = grading.grade_batch(paths, key=key)
    assert full.score == full.total == 7 and full.error is None
    assert empty.score == 0 and all("NotImplementedError" in q.error for q in empty.questions)
    scores = {q.grade_id: q.score for q in part.questions}
    # q3 (the mean of per-batch mIoUs) runs with the instructor's confusion and miou: the wrong miou of q2
    # is not counted twice
    assert scores == {"q1_confusion": 2, "q2_miou": 0, "q3_per_batch": 1, "q4_two_batches": 0}
    assert part.questions[1].error == "wrong result (check 1: wrong value)"  # the matrix with an absent class


def test_cli_release_and_grade(tmp_path, capsys):
    assert cli.main(["release", EXERCISE, "--out", str(tmp_path)]) == 0
    submission = tmp_path / f"{EXERCISE}.ipynb"
    assert submission.is_file()
    missing = tmp_path / "nobody.ipynb"
    assert cli.main(["grade", str(submission), str(missing), "--key", EXERCISE,
                     "--json", str(tmp_path / "grades.json")]) == 0
    out = capsys.readouterr().out
    assert f"{submission}: 0 / 7 points" in out
    assert f"{missing}: 0 / 7 points (key: {EXERCISE}): the file does not exist" in out
    book = json.loads((tmp_path / "grades.json").read_text())
    assert [b["total"] for b in book] == [7, 7] and book[1]["error"] == "the file does not exist"
    renamed = tmp_path / "renamed.ipynb"
    renamed.write_bytes(submission.read_bytes())
    assert cli.main(["grade", str(missing), str(renamed)]) == 0  # no --key: the exercise is named by the file
    out = capsys.readouterr().out
    assert f"{missing}: 0 / 0 points (not graded): the file does not exist" in out
    assert f"{renamed}: 0 / 0 points (not graded): unknown exercise 'renamed'" in out and "pass --key" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["release", "ex99", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "valid exercises: ex01_multitask_gradient" in capsys.readouterr().err


def test_cli_grade_usage_errors_before_grading(tmp_path, capsys):
    submission = tmp_path / "x.ipynb"
    submission.write_text("{}")
    for argv, message in (
        (["--key", "ex99"], "unknown exercise 'ex99'"),
        (["--json", str(tmp_path)], "is a folder"),
        (["--json", "/proc/nope/grades.json"], "cannot be written"),
        (["--timeout", "0"], "--timeout (seconds) must be a number of at least 1"),
        (["--memory-gib", "0.1"], "--memory-gib must be a number of at least 0.5"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(["grade", str(submission), *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, (argv, err)


def test_malformed_exercise_errors(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    with pytest.raises(exercises.ExerciseError, match="no graded cells"):
        exercises.release(_write(nb, tmp_path / "none.ipynb"))
    check = {"grade": True, "solution": False, "locked": True, "schema_version": 3}
    nb.cells = [nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": dict(check, grade_id="a", points=0)})]
    with pytest.raises(exercises.ExerciseError, match="positive nbgrader 'points'"):
        exercises.release(_write(nb, tmp_path / "zero.ipynb"))
    nb.cells = [nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": dict(check, grade_id="a", points=1)})]
    with pytest.raises(exercises.ExerciseError, match="needs metadata mtml.probes"):
        exercises.release(_write(nb, tmp_path / "noprobe.ipynb"))
    nb.cells = [nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": dict(check, grade_id="a", points=1),
                                                                   "mtml": {"probes": ["x ="]}})]
    with pytest.raises(exercises.ExerciseError, match="not an expression"):
        exercises.release(_write(nb, tmp_path / "badprobe.ipynb"))
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": dict(check, grade_id="a", points=1),
                                                             "mtml": {"probes": ["x"]}}),
                nbformat.v4.new_code_cell("x = 2", metadata={"nbgrader": dict(check, grade_id="a", points=1),
                                                             "mtml": {"probes": ["x"]}})]
    with pytest.raises(exercises.ExerciseError, match="repeats grade_id 'a'"):
        exercises.release(_write(nb, tmp_path / "dup.ipynb"))
    (tmp_path / "text.ipynb").write_text("not json")
    with pytest.raises(exercises.ExerciseError, match="not a readable notebook"):
        exercises.load(tmp_path / "text.ipynb")


def test_compare_is_strict_about_structure_and_tolerant_within_tolerance():
    t = {"__tensor__": [2], "kind": "float", "data": [1.0, 2.0]}
    assert grading.compare(t, t, 1e-7, 0) is None
    assert grading.compare({"__tensor__": [2], "kind": "float", "data": [1.0, 2.0 + 1e-9]}, t, 1e-7, 0) is None
    assert "wrong values" in grading.compare({"__tensor__": [2], "kind": "float", "data": [1.0, 2.1]}, t, 1e-7, 0)
    assert "shape" in grading.compare({"__tensor__": [1, 2], "kind": "float", "data": [1.0, 2.0]}, t, 1e-7, 0)
    assert grading.compare(float("nan"), 1.0, 1, 1) and grading.compare(float("inf"), 1.0, 1, 1)
    assert grading.compare(float("nan"), float("nan"), 0, 0) is None
    assert grading.compare(True, 1, 0, 0) and grading.compare(1, True, 0, 0)
    assert grading.compare([1.0], [1.0, 2.0], 0, 0) and grading.compare({"a": 1}, {"a": 1, "b": 2}, 0, 0)
    assert grading.compare("1.0", 1.0, 0, 0) and grading.compare(None, 1.0, 0, 0)


def test_every_exercise_scores_its_solution_full_and_its_student_version_zero(tmp_path):
    keys = exercises.discover()
    blanks = []
    for key in keys:
        folder = tmp_path / key.stem
        folder.mkdir()
        blanks.append(_write(exercises.release(key), folder / key.name))
    reports = grading.grade_batch(keys + blanks)
    for report in reports[: len(keys)]:
        assert report.score == report.total >= 5 and report.error is None, report
    for report in reports[len(keys):]:
        assert report.score == 0 and report.total >= 5, report
        # a function left blank raises NotImplementedError; a value left blank was never defined
        assert all(q.error and ("NotImplementedError" in q.error or "NameError" in q.error)
                   for q in report.questions), report


def test_grade_book_is_replaced_atomically(tmp_path):
    book = tmp_path / "grades.json"
    book.write_text("old")
    report = grading.GradeReport("s.ipynb", "ex", [grading.Question("q", 1.0, 1.0)])
    grading.write_gradebook([report], book)
    assert json.loads(book.read_text())[0]["score"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["grades.json"]  # no temporary file left

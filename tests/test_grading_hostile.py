"""Hostile submissions: each scores exactly what it legitimately answers, and none disturbs the batch.

One batch (through ``mtml grade``, as an instructor runs it) grades every case below against
``ex03_segmentation_metrics``; the tests then check each report, that no process of the batch is left,
that nothing was written outside the sandboxes, and that the instructor notebooks are unchanged.
They need root (the complete sandbox: private root, own user id) and are skipped without it.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from mtml_lib import cli, exercises, grading
from mtml_lib.grading import sandbox

EXERCISE = "ex03_segmentation_metrics"
UID = 61977
MARK = "mtml-hostile-4242"
SLEEP = "900.4242"  # a unique argument, to find the process if it survived
TIMEOUT = 6
ROOT = os.geteuid() == 0
# Without root the submissions would run as the tester, free to read and rewrite the instructor notebooks
# and to write in /tmp: the hostile cases are not run at all then.
pytestmark = pytest.mark.skipif(not ROOT, reason="hostile submissions are only run in the full sandbox, as root")
needs_root = pytest.mark.skipif(not ROOT, reason="the private root and own user id need root")

KEY = exercises.resolve([EXERCISE])[0]
SOLVED = {exercises.nbgrader_meta(c).get("grade_id"): c.source for c in nbformat.read(KEY, 4).cells}
RIGHT = {gid: SOLVED[gid] for gid in ("confusion", "miou", "per_batch_mean_miou", "two_batch_mious")}
FULL = {"q1_confusion": 2, "q2_miou": 2, "q3_per_batch": 1, "q4_two_batches": 2}
ZERO = {"q1_confusion": 0, "q2_miou": 0, "q3_per_batch": 0, "q4_two_batches": 0}
# q3 runs with the instructor's confusion and miou, so it scores whatever happened to q1 and q2
BUT_Q2 = {"q1_confusion": 2, "q2_miou": 0, "q3_per_batch": 1, "q4_two_batches": 2}
OUTSIDE = [f"/tmp/{MARK}", f"/var/tmp/{MARK}", f"/dev/shm/{MARK}", f"/work/{MARK}", f"{KEY.parent}/{MARK}",
           f"/root/{MARK}"]

FIND_KEY = r'''
import glob, os, pathlib
found = []
try:
    from mtml_lib import exercises as _ex
    found += [str(p) for p in _ex.discover()]
except Exception:
    pass
import mtml_lib
for base in [pathlib.Path(mtml_lib.__file__).resolve().parents[1], pathlib.Path(os.getcwd()), pathlib.Path("/work/main"),
             pathlib.Path("%(keydir)s").parent.parent]:
    found += glob.glob(str(base / "notebooks" / "exercises" / "*.ipynb")) + glob.glob(str(base / "*.ipynb"))
for top in ("/work", "/tmp", "/root", os.getcwd()):
    for folder, _, files in os.walk(top):
        found += [os.path.join(folder, f) for f in files if f.startswith("ex03")]
'''


# Looks for the hidden inputs while the answer cells run: in every container the collector tracks, in the
# frames above, and on the descriptor that will bring the questions. It finds nothing, because nothing
# of a question has been sent yet; the count ends up in the grading notes.
SPY = r"""
import gc, os, sys
def _spy():
    needles = ["manual_seed(" + "30", "t_h" + "2 =", "cm_h" + "3 =", "b_h" + ".append"]
    found = []
    for obj in gc.get_objects():
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        try:
            found += [i[:40] for i in list(items) if isinstance(i, str) and i not in needles
                      and any(n in i for n in needles)]
            if isinstance(obj, dict) and any(isinstance(obj.get(k), list) and obj[k] for k in ("probes", "questions")):
                found.append(sorted(obj)[:4])
        except Exception:
            pass
    frame = sys._getframe()
    while frame is not None:
        found += [k for k, v in list(frame.f_locals.items()) if k in ("questions", "question") and isinstance(v, (list, dict))]
        frame = frame.f_back
    try:
        os.set_blocking(4, False)
        found.append(os.read(4, 65536).decode()[:40])
    except OSError:
        pass
    finally:
        os.set_blocking(4, True)
    return found
raise RuntimeError(f"found {len(_spy())}: {_spy()[:3]}")
"""
# Tries to carry the hidden inputs out through every text the grader could show: an exception's message,
# forged report lines (a cell error, a sandbox warning, a second end of cells, a probe error) and the exit code.
LEAK_MIOU = "def miou(cm):\n    raise ValueError('LEAK ' + repr(cm.tolist()))"
LEAK_PER_BATCH = r"""
import json, os
def per_batch_mean_miou(batches, n, i):
    text = "LEAK " + repr([t.tolist() for t, p in batches])[:200]
    for record in ({"event": "cell", "id": "x", "error": text}, {"event": "sandbox", "warnings": [text]},
                   {"event": "cells"}, {"event": "probe", "question": "q3_per_batch", "index": 0, "error": text}):
        os.write(3, (json.dumps(record) + "\n").encode())
    os._exit(37)
"""
# Every answer computed by the library's own implementation of what the question asks.
LIBRARY = {
    "confusion": "from mtml_lib import metrics\ndef confusion(t, p, n, i):\n"
                 "    return metrics.confusion_matrix(t, p, n, ignore_index=i)",
    "miou": "from mtml_lib.metrics import mean_iou\ndef miou(cm):\n    return mean_iou(cm)",
    "per_batch_mean_miou": "from mtml_lib import metrics\ndef per_batch_mean_miou(batches, n, i):\n"
                           "    return sum(metrics.ConfusionMatrix(n, i).update(t, p).miou() for t, p in batches) / len(batches)",
    "two_batch_mious": "import torch\nfrom mtml_lib.metrics import confusion_matrix as cmx, iou_per_class\n"
                       "def two_batch_mious(a, b):\n"
                       "    c1 = cmx(torch.zeros(a, dtype=torch.long), torch.zeros(a, dtype=torch.long), 2)\n"
                       "    c2 = cmx(torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long), 2)\n"
                       "    m = lambda c: float(iou_per_class(c).nanmean())\n"
                       "    return m(c1 + c2), (m(c1) + m(c2)) / 2",
}
# The library's implementation copied back: reloaded, read from its file, from its cached bytecode, from
# inspect, imported anew, found by the collector, or taken from scikit-learn. The first way that gives a
# function is used; none does in the sandbox.
COPY_CONFUSION = r"""
import gc, glob, importlib, importlib.util, inspect, marshal, os, sys, types
import torch
from mtml_lib import metrics

def _ways():
    yield lambda: importlib.reload(metrics).confusion_matrix
    def from_file():
        scope = {"__name__": "copy"}
        exec(open(metrics.__file__).read(), scope)
        return scope["confusion_matrix"]
    yield from_file
    def from_inspect():
        scope = {"__name__": "copy"}
        exec(inspect.getsource(metrics), scope)
        return scope["confusion_matrix"]
    yield from_inspect
    def from_bytecode():
        for path in glob.glob(os.path.join(os.path.dirname(metrics.__file__), "__pycache__", "metrics*.pyc")):
            scope = {"__name__": "copy"}
            exec(marshal.loads(open(path, "rb").read()[16:]), scope)
            return scope["confusion_matrix"]
    yield from_bytecode
    def fresh_import():
        sys.modules.pop("mtml_lib.metrics")
        spec = importlib.util.spec_from_file_location("metrics_copy", metrics.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.confusion_matrix
    yield fresh_import
    def collected():
        for obj in gc.get_objects():
            if isinstance(obj, types.FunctionType) and obj.__name__ == "confusion_matrix":
                return obj
    yield collected
    def from_sklearn():
        from sklearn.metrics import confusion_matrix as sk
        return lambda t, p, n, ignore_index: torch.as_tensor(sk(t[t != ignore_index], p[t != ignore_index], labels=list(range(n))))
    yield from_sklearn

def confusion(t, p, n, i):
    for way in _ways():
        try:
            return way()(t, p, n, ignore_index=i)
        except BaseException:
            continue
    raise LookupError("no way to the library's confusion matrix")
"""


def _notebook(answers=None, edit=None):
    nb = exercises.release(KEY)
    for cell in nb.cells:
        gid = exercises.nbgrader_meta(cell).get("grade_id")
        if answers and gid in answers:
            cell.source = answers[gid]
    if edit:
        edit(nb)
    return nb


def _cases(tmp: Path) -> dict:
    """name -> (file, expected scores or None, expected error substring per question or for the file)."""
    cases = {}

    def add(name, nb=None, scores=ZERO, reason=None, text=None):
        path = tmp / f"{name}.ipynb"
        if text is not None:
            path.write_text(text)
        elif nb is not None:
            nbformat.write(nb, path)
        cases[name] = (path, scores, reason)

    add("solved", _notebook(RIGHT), FULL)
    add("blank", _notebook())

    def edit_setup(nb):
        nb.cells[1].source += "\nC = 1\nbatches = []\nmetrics.confusion_matrix = lambda *a, **k: None\n"
    add("edited_setup_blank", _notebook(edit=edit_setup))
    add("edited_setup_solved", _notebook(RIGHT, edit=edit_setup), FULL)

    add("patched_allclose", _notebook({
        "confusion": "import torch\ntorch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
                     "def confusion(t, p, n, i):\n    return torch.zeros(n, n, dtype=torch.long)",
        "miou": "def miou(cm):\n    return 0.0"}))

    add("ipython_hooks", _notebook({"confusion": """
def _assert_to_pass(lines):
    return [line.replace("assert", "pass") for line in lines]
for attempt in (
    lambda: get_ipython().input_transformers_cleanup.append(_assert_to_pass),
    lambda: get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None),
    lambda: get_ipython().events.register("post_run_cell", lambda *a: None),
):
    try:
        attempt()
    except Exception:
        pass
"""}))

    add("reads_instructor_notebook", _notebook({"per_batch_mean_miou": FIND_KEY % {"keydir": KEY.parent} + """
import json
for path in found:
    try:
        nb = json.load(open(path))
    except Exception:
        continue
    for cell in nb.get("cells", []):
        if "BEGIN SOLUTION" in "".join(cell.get("source", "")):
            exec("".join(cell["source"]), globals())
"""}))

    add("escapes_root_through_descriptors", _notebook({"per_batch_mean_miou": """
import os
for fd in range(256):  # a directory descriptor from outside the private root would lead out of it
    try:
        os.fchdir(fd)
    except OSError:
        continue
    for _ in range(30):
        os.chdir("..")
    try:
        os.chroot(".")
    except OSError:
        pass
""" + FIND_KEY % {"keydir": KEY.parent} + """
import json
for path in found:
    try:
        nb = json.load(open(path))
    except Exception:
        continue
    for cell in nb.get("cells", []):
        if "BEGIN SOLUTION" in "".join(cell.get("source", "")):
            exec("".join(cell["source"]), globals())
"""}))

    def duplicate_checks(nb):
        graded = [c for c in nb.cells if exercises.nbgrader_meta(c).get("grade")]
        copies = [json.loads(json.dumps(c)) for c in graded for _ in range(11)]
        nb.cells += [nbformat.from_dict({k: v for k, v in c.items() if k != "id"}) for c in copies]
    add("duplicated_checks", _notebook(RIGHT, edit=duplicate_checks), FULL)

    def duplicate_answer(nb):
        answer = next(c for c in nb.cells if exercises.nbgrader_meta(c).get("grade_id") == "confusion")
        nb.cells.append(nbformat.from_dict({k: v for k, v in json.loads(json.dumps(answer)).items() if k != "id"}))
    add("duplicated_answer", _notebook(RIGHT, edit=duplicate_answer), ZERO, "grade_id 'confusion' appears in 2 cells")

    add("rewrites_instructor_notebook", _notebook({"confusion": FIND_KEY % {"keydir": KEY.parent} + """
for path in found + [os.path.join(os.getcwd(), "%s.ipynb")]:
    try:
        open(path, "w").write("{}")
    except Exception:
        pass
""" % EXERCISE}))
    add("blank_after_rewrite", _notebook())

    add("lingering_processes", _notebook(dict(RIGHT, per_batch_mean_miou=RIGHT["per_batch_mean_miou"] + f"""
import os, subprocess, time
try:
    subprocess.Popen(["sleep", "{SLEEP}"], start_new_session=True)
except Exception:
    pass
for _ in range(200):  # a small fork bomb: the process limit stops it
    try:
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.5)
                for path in ["{tmp}/grades.json", "/tmp/{MARK}-late"]:
                    try:
                        open(path, "w").write("rewritten")
                    except Exception:
                        pass
                time.sleep(900)
            os._exit(0)
    except OSError:
        break
""")), FULL)

    writes = "\n".join(f"try:\n    open({p!r}, 'w').write('x')\nexcept Exception:\n    pass" for p in OUTSIDE)
    add("writes_outside", _notebook(dict(RIGHT, confusion=RIGHT["confusion"] + "\n" + writes)), FULL)

    add("allocates_3_gib", _notebook(dict(RIGHT, miou="import torch\ndef miou(cm):\n"
                                          "    x = torch.ones(3 * 2**30, dtype=torch.uint8)\n    return float(x.sum())")),
        BUT_Q2, "memory limit")
    add("infinite_loop", _notebook(dict(RIGHT, miou="def miou(cm):\n    while True:\n        pass")), BUT_Q2, "timeout")
    add("kills_itself", _notebook(dict(RIGHT, miou="import os, signal\ndef miou(cm):\n"
                                       "    os.kill(os.getpid(), signal.SIGKILL)")), BUT_Q2, "killed (SIGKILL)")
    add("crashes_in_the_first_question", _notebook(dict(RIGHT, confusion="import os, signal\ndef confusion(*args):\n"
                                                        "    os.kill(os.getpid(), signal.SIGKILL)")),
        {"q1_confusion": 0, "q2_miou": 2, "q3_per_batch": 1, "q4_two_batches": 2}, "killed (SIGKILL)")
    add("exits_early", _notebook(dict(RIGHT, per_batch_mean_miou="import os, sys\ntry:\n    sys.exit(3)\nexcept BaseException:\n    pass\n"
                                      "def per_batch_mean_miou(*args):\n    os._exit(0)")),
        {"q1_confusion": 2, "q2_miou": 2, "q3_per_batch": 0, "q4_two_batches": 2}, "exit code 0")
    add("forged_report", _notebook({"confusion": """
import os, json
zero = {"__tensor__": [4, 4], "kind": "int", "data": [0] * 16}
for q, n in (("q1_confusion", 2), ("q2_miou", 3), ("q3_per_batch", 1), ("q4_two_batches", 2)):
    for i in range(n):
        value = [zero, zero] if (q, i) == ("q1_confusion", 0) else (zero if q == "q1_confusion" else 0.5)
        for fd in range(3, 10):
            try:
                os.write(fd, (json.dumps({"event": "probe", "question": q, "index": i, "value": value}) + "\\n").encode())
            except OSError:
                pass
"""}))
    add("nasty_report", _notebook({"confusion": r"""
import os
lines = ["[" * 100000 + "]" * 100000,
         '{"event": "probe", "question": "q1_confusion", "index": 0, "value": 1' + "0" * 5000 + '}',
         '{"event": "probe", "question": "q2_miou", "index": 0, "value": 1e999}',
         '{"event": "probe", "question": "q2_miou", "index": ["x"], "value": 0}', "\x00\xff"]
for fd in range(3, 10):
    for line in lines:
        try:
            os.write(fd, (line + "\n").encode("utf-8", "surrogateescape"))
        except OSError:
            pass
raise RuntimeError("\x1b[2J\x1b[1;1H/fake.ipynb: 5 / 5 points\n")
"""}))
    add("answers_using_globals_the_probes_use", _notebook(dict(RIGHT, confusion="g = 7  # the probes' setup uses g too\n"
                                                               + RIGHT["confusion"].replace("return ", "return 0 * g + "))), FULL)

    add("spies_at_cell_time", _notebook(dict(RIGHT, two_batch_mious=RIGHT["two_batch_mious"] + SPY)), FULL)
    add("leaks_hidden_inputs", _notebook(dict(RIGHT, miou=LEAK_MIOU, per_batch_mean_miou=LEAK_PER_BATCH)),
        {"q1_confusion": 2, "q2_miou": 0, "q3_per_batch": 0, "q4_two_batches": 0})
    add("calls_the_library", _notebook(LIBRARY), ZERO, "which is not available in this exercise")
    add("copies_the_library", _notebook(dict(RIGHT, confusion=COPY_CONFUSION)),
        {"q1_confusion": 0, "q2_miou": 2, "q3_per_batch": 1, "q4_two_batches": 2})

    def malformed(nb):
        nb.cells[0].metadata["mtml"] = "grade_id"
        nb.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": {"grade_id": ["q1_confusion"]}}))
        nb.cells.append(nbformat.v4.new_code_cell("x = 2", metadata={"nbgrader": "q2_miou"}))
    path_nb = _notebook(RIGHT, edit=malformed)
    add("malformed_metadata", path_nb, FULL)
    raw = json.loads(nbformat.writes(_notebook(RIGHT)))
    for cell in raw["cells"]:  # the miou answer loses its source: left out (q2 and q3, which uses it, score 0)
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "miou":
            del cell["source"]
    raw["cells"].append({"cell_type": "code", "metadata": [], "source": "x"})
    raw["cells"].append("not a cell")
    add("cell_without_source", text=json.dumps(raw), scores=BUT_Q2)
    add("not_json", text="this is not a notebook", scores=ZERO, reason="not a notebook: not JSON")
    add("json_not_notebook", text='{"cells": "none"}', scores=ZERO, reason="not a notebook: no list of cells")
    add("binary", text="\x00\xff" * 10, scores=ZERO, reason="not a notebook")
    cases["missing_file"] = (tmp / "missing.ipynb", ZERO, "the file does not exist")
    return cases


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _sleepers() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and SLEEP in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry))
        except OSError:
            pass
    return [p for p in pids if not Path(f"/proc/{p}/status").read_text().count("State:\tZ")]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cases = _cases(tmp)
    before = _digest(KEY.parent)
    book = tmp / "grades.json"
    os.environ["MTML_SANDBOX_UID"] = str(UID)
    start = time.monotonic()
    try:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["grade", *[str(p) for p, _, _ in cases.values()], "--key", EXERCISE,
                             "--json", str(book), "--timeout", str(TIMEOUT)])
    finally:
        del os.environ["MTML_SANDBOX_UID"]
    seconds = time.monotonic() - start
    written = book.read_text()
    time.sleep(2.0)  # the late writer of the lingering case would have written by now
    reports = {r["submission"]: r for r in json.loads(book.read_text())}
    return {"cases": cases, "code": code, "out": out.getvalue(), "reports": reports, "book": book,
            "book_text": written, "before": before, "seconds": seconds}


def _report(batch, name):
    path, _, _ = batch["cases"][name]
    return batch["reports"][str(path)]


def test_batch_finishes_with_a_report_for_every_submission(batch):
    assert batch["code"] == 0
    assert len(batch["reports"]) == len(batch["cases"])
    for name, (path, _, _) in batch["cases"].items():
        assert f"{path}: " in batch["out"], name
        assert _report(batch, name)["total"] == 7, name  # the instructor's total, whatever the file holds
    print(f"\nhostile batch: {len(batch['cases'])} submissions in {batch['seconds']:.1f} s")


@pytest.mark.parametrize("name", [
    "solved", "blank", "edited_setup_blank", "edited_setup_solved", "patched_allclose", "ipython_hooks",
    "reads_instructor_notebook", "escapes_root_through_descriptors", "duplicated_checks", "duplicated_answer", "rewrites_instructor_notebook",
    "blank_after_rewrite", "lingering_processes", "writes_outside", "allocates_3_gib", "infinite_loop",
    "kills_itself", "crashes_in_the_first_question", "exits_early", "forged_report", "nasty_report", "answers_using_globals_the_probes_use",
    "malformed_metadata", "cell_without_source", "not_json", "json_not_notebook", "binary", "missing_file",
    "spies_at_cell_time", "leaks_hidden_inputs", "calls_the_library", "copies_the_library",
])
def test_scores_exactly_what_is_answered(batch, name):
    _, scores, reason = batch["cases"][name]
    report = _report(batch, name)
    got = {q["grade_id"]: q["score"] for q in report["questions"]}
    assert got == scores, (name, report)
    if reason:
        failed = [q["error"] for q in report["questions"] if q["score"] == 0]
        assert failed and all(reason in e for e in failed), (name, report)


def test_output_holds_no_control_characters_from_submissions(batch):
    assert "\x1b" not in batch["out"] and "\x1b" not in batch["book_text"]
    assert not any(line.startswith("/fake.ipynb") for line in batch["out"].splitlines())
    assert any(n.startswith("answer cell confusion: RuntimeError:") for n in _report(batch, "nasty_report")["notes"])


def test_malformed_cells_are_noted_not_fatal(batch):
    notes = " | ".join(_report(batch, "malformed_metadata")["notes"])
    assert "malformed nbgrader metadata" in notes
    notes = " | ".join(_report(batch, "cell_without_source")["notes"])
    assert "source is not text" in notes and "not a cell object" in notes and "malformed metadata" in notes


@needs_root
def test_no_process_left_and_no_file_outside(batch):
    assert sandbox._uid_processes(UID) == []
    assert _sleepers() == []
    for path in OUTSIDE + [f"/tmp/{MARK}-late"]:
        assert not os.path.exists(path), path
    assert batch["book"].read_text() == batch["book_text"]  # the late writer never wrote the grade book


def test_instructor_notebooks_unchanged(batch):
    assert _digest(KEY.parent) == batch["before"]


@needs_root
def test_without_isolation_the_same_reader_would_score_and_the_grader_says_so(tmp_path):
    """The reading attack is real: what stops it is the sandbox (and a grader without one warns)."""
    case = _cases(tmp_path)["reads_instructor_notebook"][0]
    warnings = []
    report = grading.grade_batch([case], key=EXERCISE, settings=grading.Settings(isolate=False),
                                 warn=warnings.append)[0]
    assert report.score == 5
    assert any(w.startswith("isolation is turned off") for w in warnings), warnings


@needs_root
def test_a_sandbox_that_cannot_be_built_degrades_with_a_warning():
    exercise = exercises.load(KEY)
    spec = grading._spec(exercise, RIGHT, grading.Settings())
    spec["binds"] = spec["binds"] + ["/nonexistent-mtml-folder/x"]  # the private root fails to build
    server = sandbox.Server()
    try:
        result = sandbox.run(spec, 60, UID, server, exercise.payloads())
    finally:
        server.close()
    assert result.sandbox["namespace"] is False and result.sandbox["uid"] == UID
    assert any(w.startswith("no private root") for w in result.sandbox["warnings"])
    assert all("value" in r for r in grading._probe_values(result).values())  # the run itself went on


@needs_root
def test_instructor_folders_inside_a_bound_folder_are_hidden():
    exercise = exercises.load(KEY)
    answer = f"import os\ntry:\n    seen = sorted(os.listdir({str(KEY.parent)!r}))\nexcept OSError as err:\n" \
             "    seen = [type(err).__name__]\ndef confusion(*args):\n    return seen"
    spec = grading._spec(exercise, {"confusion": answer}, grading.Settings())
    spec["binds"] = spec["binds"] + [str(KEY.parent)]  # as if the checkout lay inside a bound folder
    server = sandbox.Server()
    try:
        seen = {}
        for hide in (spec["hide"], []):
            result = sandbox.run(dict(spec, hide=hide), 60, UID, server, exercise.payloads())
            seen[bool(hide)] = grading._probe_values(result)[("q1_confusion", 1)].get("value")
    finally:
        server.close()
    assert KEY.name in seen[False]  # the bind alone would show the instructor notebooks
    assert seen[True] in ([], ["FileNotFoundError"])  # an empty folder over it, or over notebooks/ above it


def test_no_probe_reaches_the_answer_cells(batch):
    notes = _report(batch, "spies_at_cell_time")["notes"]
    assert any(n.startswith("answer cell two_batch_mious: RuntimeError: found 0: []") for n in notes), notes


def test_hidden_inputs_never_come_back_as_text(batch):
    report = _report(batch, "leaks_hidden_inputs")
    text = json.dumps(report)
    assert "LEAK" not in text and "LEAK" not in batch["out"] and "37" not in text.replace(report["submission"], "")
    errors = {q["grade_id"]: q["error"] for q in report["questions"]}
    assert errors["q2_miou"] == "check 1 raised ValueError"
    assert errors["q3_per_batch"] == "check 1 raised an exception"  # the forged record: its text is dropped
    assert errors["q4_two_batches"] == "the run ended (a non-zero exit code) before this question"
    assert report["notes"] == []  # the forged cell error came after the cells: ignored


def test_the_library_answers_score_without_the_stubs(tmp_path, batch):
    """The two library cases are real attacks: against a copy of the exercise that lists nothing as
    unavailable they score the questions they answer."""
    nb = nbformat.read(KEY, 4)
    nb.metadata["mtml"]["unavailable"] = []
    key = tmp_path / "key" / KEY.name
    key.parent.mkdir()
    nbformat.write(nb, key)
    paths = [batch["cases"][name][0] for name in ("calls_the_library", "copies_the_library")]
    calls, copies = grading.grade_batch(paths, key=key)
    assert calls.score == calls.total == 7, calls
    assert copies.score == copies.total == 7, copies

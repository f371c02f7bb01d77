"""The `mtml` command: usage errors, notebook failures reported with their cell, --store, list, figures."""

import json
import subprocess
import sys

import nbformat
import pytest
import torch

from mtml_lib import cli, pipeline


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title line")]
    nb.cells.append(nbformat.v4.new_code_cell("profile = None\ndevice = None\nseed = 0", metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def books(tmp_path):
    good = _notebook(
        tmp_path / "01_good.ipynb",
        "import matplotlib.pyplot as plt\nfrom mtml_lib import config, plotting\n"
        "run = config.setup('00_overview', profile, device, seed, verbose=False)",
        "fig = plt.figure(); plotting.save_figure(fig, 'good_fig', caption='Made by a test.')\n"
        "print('profile', run.profile, 'seed', run.seed)",
    )
    broken = _notebook(tmp_path / "02_broken.ipynb", "x = 1", "raise ValueError('deliberately broken')", "y = 2")
    last = _notebook(tmp_path / "03_last.ipynb", "print('last ran')")
    return good, broken, last


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_failing_notebook_is_reported_with_cell_and_others_still_run(books, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _run(["run", *map(str, books), "--profile", "smoke", "--seed", "5", "--out", str(out), "--no-progress"], capsys)
    assert code == 1
    assert "02_broken" in text and "FAILED at cell 4 `raise ValueError('deliberately broken')`: ValueError: deliberately broken" in text
    assert (out / "build" / "03_last.ipynb").is_file()
    executed = nbformat.read(out / "build" / "03_last.ipynb", as_version=4)
    assert "last ran" in json.dumps(executed.cells[-1].outputs)
    broken = nbformat.read(out / "build" / "02_broken.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in broken.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # the good notebook wrote its figure under --out, with the injected parameters in its provenance
    index = json.loads((out / "figures" / "smoke" / "index.json").read_text())
    assert index["good_fig"]["provenance"]["profile"] == "smoke" and index["good_fig"]["provenance"]["seed"] == 5
    assert "good_fig" in (out / "figures" / "smoke" / "README.md").read_text()


def test_fail_fast_stops_at_first_failure(books, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _run(["run", *map(str, books[1:]), "--profile", "smoke", "--out", str(out), "--fail-fast", "--no-progress"], capsys)
    assert code == 1 and "FAILED" in text
    assert not (out / "build" / "03_last.ipynb").exists()


def test_store_writes_outputs_back_without_papermill_metadata(books, tmp_path, capsys):
    good = books[0]
    code, _ = _run(["run", str(good), "--profile", "smoke", "--out", str(tmp_path / "out"), "--store", "--no-progress"], capsys)
    assert code == 0
    nb = nbformat.read(good, as_version=4)
    assert "papermill" not in nb.metadata
    assert all("injected-parameters" not in c.metadata.get("tags", []) for c in nb.cells)
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert "profile smoke seed 0" in json.dumps(nb.cells[-1].outputs)
    assert nb.cells[1].source == "profile = None\ndevice = None\nseed = 0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--profile", "medium"], "invalid choice: 'medium'"),
        (["run", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "99_nothing", "--profile", "smoke"], "unknown notebook '99_nothing'; valid notebooks: 00_overview"),
    ],
)
def test_usage_errors_exit_2_with_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_cpu_machine_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "00_overview", "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err


def test_list_shows_notebooks_in_order(capsys):
    code, text = _run(["list"], capsys)
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert code == 0 and names == sorted(names) and names[0] == "00_overview"
    assert "Overview" in text


def test_resolve_accepts_prefix_and_suffix():
    assert pipeline.resolve(["00"])[0].name == "00_overview.ipynb"
    assert pipeline.resolve(["00_overview.ipynb"])[0].name == "00_overview.ipynb"


def test_figures_command_writes_gallery(tmp_path, capsys):
    code, text = _run(["figures", "--out", str(tmp_path)], capsys)
    assert code == 0 and (tmp_path / "figures" / "README.md").is_file() and "No figures yet" in (tmp_path / "figures" / "README.md").read_text()


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "mtml_lib", "run", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--profile {smoke,quick,full,paper}" in done.stdout and "--fail-fast" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "00", "--seed", str(2**64)], "seed 18446744073709551616 is out of range; valid seeds: 0 to"),
        (["run", "00", "--seed", "-1"], "out of range"),
        (["run", "00", "--seed", "one"], "seed must be an integer, got 'one'"),
        (["run", "00", "--device", "cpu:1", "--profile", "smoke"], "device 'cpu:1' (from argument): the CPU takes no index"),
    ],
)
def test_bad_seeds_and_devices_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_output_paths_that_cannot_be_written_are_one_line_usage_errors(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv in (["run", "00", "--profile", "smoke", "--out", str(a_file)],
                 ["run", "00", "--profile", "smoke", "--out", "/proc/nope"],
                 ["release", "--out", str(a_file)],
                 ["figures", "--out", str(a_file)],
                 ["grade", str(tmp_path / "x.ipynb"), "--json", "/proc/x.json"],
                 ["grade", str(tmp_path / "x.ipynb"), "--json", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert err.startswith("mtml: error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert a_file.read_text() == "x"


def test_ctrl_c_exits_130_and_leaves_the_gallery_consistent(books, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real = pipeline._execute

    def interrupted(path, output, parameters, progress):
        real(path, output, parameters, progress)  # the first notebook writes its figure, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_execute", interrupted)
    code, text = _run(["run", str(books[0]), str(books[2]), "--profile", "smoke", "--out", str(out), "--no-progress"],
                      capsys)
    assert code == 130 and "interrupted" in text and "Traceback" not in text
    index = json.loads((out / "figures" / "smoke" / "index.json").read_text())
    gallery = (out / "figures" / "smoke" / "README.md").read_text()
    assert set(index) == {"good_fig"} and "good_fig" in gallery and "smoke" in gallery


def test_list_into_a_closed_pipe_is_not_an_error():
    # the reader is gone before `mtml list` writes a line (as `mtml list | head -1` after head exits)
    child = subprocess.Popen([sys.executable, "-m", "mtml_lib", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_smoke_run_without_out_writes_to_scratch_not_the_committed_outputs(books, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MTML_OUT", raising=False)
    repo = tmp_path / "checkout"
    monkeypatch.setattr(pipeline.config, "repo_root", lambda: repo)
    code, text = _run(["run", str(books[0]), "--profile", "smoke", "--no-progress"], capsys)
    assert code == 0 and f"outputs go to {repo / 'build' / 'smoke'}" in text
    assert (repo / "build" / "smoke" / "figures" / "smoke" / "good_fig.png").is_file()
    assert not (repo / "figures").exists() and not (repo / "results").exists()


def test_figures_command_rewrites_every_gallery(tmp_path, capsys):
    (tmp_path / "figures" / "full").mkdir(parents=True)
    code, text = _run(["figures", "--out", str(tmp_path)], capsys)
    assert code == 0 and text.count("gallery written") == 2
    assert (tmp_path / "figures" / "full" / "README.md").is_file()
    code, text = _run(["figures", "--out", str(tmp_path), "--profile", "full"], capsys)
    assert code == 0 and text.count("gallery written") == 1


@pytest.mark.slow
def test_the_installed_package_finds_a_checkout_or_says_it_needs_one(tmp_path):
    """A wheel installed into a fresh environment (the other dependencies reached through a path file, the
    editable install of this checkout left out): outside a checkout every command that needs the notebooks
    says so in one line and exits 2; inside a clone (here its notebooks/ folder) it finds them."""
    import site
    import sysconfig
    from pathlib import Path

    repo = Path(pipeline.config.PACKAGE_DIR).parent
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(repo)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    env = tmp_path / "env"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env)],
                   check=True, timeout=120)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = site.getsitepackages()[0] if site.getsitepackages() else sysconfig.get_paths()["purelib"]
    (Path(purelib) / "deps.pth").write_text(deps + "\n")  # a plain path line: the editable finder stays out
    wheel = next(wheels.glob("mtml-*.whl"))
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", purelib,
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import mtml_lib; print(mtml_lib.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(purelib), where
    import os

    plain = {k: v for k, v in os.environ.items() if k != "MTML_OUT"}  # as a user's shell has it
    for argv in (["list"], ["run", "03", "--profile", "smoke"], ["release", "--out", "rel"], ["figures"]):
        done = subprocess.run([str(python), "-m", "mtml_lib", *argv], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, env=plain)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert "needs the project's checkout" in done.stderr and "Traceback" not in done.stderr, argv
    assert list(elsewhere.iterdir()) == []  # nothing written
    inside = subprocess.run([str(python), "-m", "mtml_lib", "list"], cwd=repo / "notebooks", capture_output=True,
                            text=True, timeout=300, env=plain)
    assert inside.returncode == 0 and inside.stdout.startswith("00_overview"), inside.stderr


def test_the_paper_profile_runs_only_where_a_notebook_has_one(capsys, monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(pipeline, "_execute", lambda path, output, parameters, progress: ran.append(path.stem))
    code, text = _run(["run", "--profile", "paper", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 0 and ran == ["04_few_shot_classification"]
    assert "02_multitask_cls_seg" in text and "have no paper profile" in text
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "02", "--profile", "paper", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has no 'paper' profile" in err and "'04_few_shot_classification'" in err


def _waits_for(mine, other):
    """Notebook code that announces ``mine`` and waits (at most 120 s) for ``other``: two such notebooks finish
    only when they run at the same time."""
    return (f"import pathlib, time\npathlib.Path({str(mine)!r}).touch()\nt0 = time.time()\n"
            f"while not pathlib.Path({str(other)!r}).exists():\n"
            f"    assert time.time() - t0 < 120, 'the other notebook never ran beside this one'\n    time.sleep(0.1)\n"
            f"print('met the other notebook')")


def test_jobs_runs_notebooks_side_by_side_with_the_serial_outputs(books, tmp_path, capsys):
    good, broken, last = books
    second = _notebook(
        tmp_path / "04_second.ipynb",
        "import matplotlib.pyplot as plt\nfrom mtml_lib import config, plotting\n"
        "run = config.setup('00_overview', profile, device, seed, verbose=False)",
        "fig = plt.figure(); entry = plotting.save_figure(fig, 'second_fig', caption='Made by another test.')\n"
        "print(entry['caption'], entry['provenance']['seed'])")
    a, b = tmp_path / "a.flag", tmp_path / "b.flag"
    meet_a = _notebook(tmp_path / "05_meet_a.ipynb", _waits_for(a, b))
    meet_b = _notebook(tmp_path / "06_meet_b.ipynb", _waits_for(b, a))
    paths = [good, broken, last, second]
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    code_s, text_s = _run(["run", *map(str, paths), "--profile", "smoke", "--seed", "3", "--out", str(serial),
                           "--no-progress"], capsys)
    code_p, text_p = _run(["run", *map(str, paths + [meet_a, meet_b]), "--profile", "smoke", "--seed", "3", "--out",
                           str(parallel), "--jobs", "2", "--no-progress"], capsys)
    assert code_s == code_p == 1
    assert "FAILED at cell 4 `raise ValueError('deliberately broken')`: ValueError: deliberately broken" in text_p
    # the summary lists the notebooks in order, whichever ended first
    table = text_p[text_p.index("notebook  "):]
    assert [table.index(p.stem) for p in paths + [meet_a, meet_b]] == sorted(table.index(p.stem) for p in paths + [meet_a, meet_b])
    for p in (meet_a, meet_b):  # they waited for each other: only a run side by side finishes them
        assert "met the other notebook" in json.dumps(nbformat.read(parallel / "build" / p.name, as_version=4).cells[-1].outputs)
    for p in paths:
        outputs = [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.get("outputs", [])]
                   for c in nbformat.read(serial / "build" / p.name, as_version=4).cells]
        again = [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.get("outputs", [])]
                 for c in nbformat.read(parallel / "build" / p.name, as_version=4).cells]
        assert outputs == again, p.name
    index = json.loads((parallel / "figures" / "smoke" / "index.json").read_text())
    assert set(index) == set(json.loads((serial / "figures" / "smoke" / "index.json").read_text())) == {"good_fig", "second_fig"}
    assert "second_fig" in (parallel / "figures" / "smoke" / "README.md").read_text()


def test_jobs_with_store_and_fail_fast(books, tmp_path, capsys):
    good, broken, last = books
    code, _ = _run(["run", str(good), str(last), "--profile", "smoke", "--out", str(tmp_path / "out"), "--store",
                    "--jobs", "2", "--no-progress"], capsys)
    assert code == 0
    assert "profile smoke seed 0" in json.dumps(nbformat.read(good, as_version=4).cells[-1].outputs)
    assert "papermill" not in nbformat.read(last, as_version=4).metadata
    # two workers: the broken notebook fails while the slow one runs; the slow one finishes, the third never starts
    slow = _notebook(tmp_path / "02_slow.ipynb", "import time\ntime.sleep(8)\nprint('slow done')")
    out = tmp_path / "ff"
    code, text = _run(["run", str(broken), str(slow), str(last), "--profile", "smoke", "--out", str(out),
                       "--fail-fast", "--jobs", "2", "--no-progress"], capsys)
    assert code == 1 and "FAILED" in text and "not starting 03_last" in text
    assert not (out / "build" / "03_last.ipynb").exists()
    assert "slow done" in json.dumps(nbformat.read(out / "build" / "02_slow.ipynb", as_version=4).cells[-1].outputs)


@pytest.mark.parametrize("value", ["0", "-1", "two", "65"])
def test_bad_jobs_are_usage_errors(value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "03", "--profile", "smoke", "--jobs", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "jobs must be an integer from 1 to 64" in err and "Traceback" not in err


def test_ctrl_c_with_jobs_stops_every_notebook_in_one_line(tmp_path):
    """SIGINT to the parent alone (the harder case than a terminal's Ctrl-C, which every process receives):
    the running kernels are shut down, nothing is left running, exit 130 without a traceback."""
    import os
    import signal
    import time

    pids = [tmp_path / f"{name}.pid" for name in ("a", "b")]
    books = [_notebook(tmp_path / f"0{i}_sleeps.ipynb",
                       f"import os, pathlib, time\npathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\ntime.sleep(120)")
             for i, pid in enumerate(pids, 1)]
    process = subprocess.Popen([sys.executable, "-m", "mtml_lib", "run", *map(str, books), "--profile", "smoke",
                                "--out", str(tmp_path / "out"), "--jobs", "2", "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a test run started in the background (make test &) ignores SIGINT, and children
                               # inherit that: give the command the disposition a terminal gives it
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not all(p.exists() and p.read_text() for p in pids):
        assert time.time() < deadline and process.poll() is None, "the notebooks did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "mtml: interrupted" in err and "Traceback" not in out + err
    for pid in (int(p.read_text()) for p in pids):  # the kernels are gone (reaped by their worker)
        deadline = time.time() + 30
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.time() < deadline, f"kernel {pid} still running"
            time.sleep(0.2)

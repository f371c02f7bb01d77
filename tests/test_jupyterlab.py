"""Opening a committed notebook in JupyterLab leaves it unmodified (no "unsaved changes" mark, nothing for
autosave to write). Runs JupyterLab on a copy of the notebooks and opens each in headless Chromium over the
DevTools protocol; skips with the reason when Chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from devtools import DevTools, find_chromium

from mtml_lib import pipeline

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebooks_name_the_installed_kernel(path):
    """JupyterLab replaces a kernelspec that differs from the kernel it starts, which marks the notebook
    modified on open: the stored one must be the installed python3 kernel's."""
    assert nbformat.read(path, as_version=4).metadata.get("kernelspec") == pipeline.kernelspec_metadata()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> bytes:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def test_opening_a_notebook_in_jupyterlab_does_not_modify_it(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; .ci/run installs it")
        pytest.skip("Chromium is not installed (apt-get install chromium): JupyterLab check not run")
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    root = tmp_path / "lab"
    root.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, root / nb.name)
    lab_port, cdp_port = _free_port(), _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    jupyter = Path(sys.executable).parent / "jupyter"
    lab = subprocess.Popen([str(jupyter), "lab", "--no-browser", f"--port={lab_port}", "--ServerApp.token=",
                            "--ServerApp.password=", "--allow-root", f"--ServerApp.root_dir={root}",
                            "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--remote-debugging-port={cdp_port}", f"--user-data-dir={tmp_path / 'profile'}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{lab_port}/lab", 90)
        targets = json.loads(_wait_http(f"http://127.0.0.1:{cdp_port}/json", 30))
        page = next(t for t in targets if t["type"] == "page")
        page_tools = DevTools(page["webSocketDebuggerUrl"])
        call, evaluate = page_tools.call, page_tools.evaluate
        dirty = {}
        for nb in NOTEBOOKS:
            call("Page.navigate", url=f"http://127.0.0.1:{lab_port}/lab/tree/{nb.name}")
            end = time.monotonic() + 90
            # loaded: the notebook's tab is current and its kernel reports idle (kernel info received)
            ready = ("Array.from(document.querySelectorAll('.lm-TabBar-tab.lm-mod-current'))"
                     f".some(t => t.textContent.includes('{nb.name}')) && "
                     "!!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')")
            while not evaluate(ready):
                assert time.monotonic() < end, f"{nb.name} did not open in JupyterLab within 90 s"
                time.sleep(0.5)
            time.sleep(2.0)  # kernel info arrives; a mismatched kernelspec or language_info is rewritten now
            dirty[nb.name] = evaluate("Array.from(document.querySelectorAll('.lm-TabBar-tab.jp-mod-dirty'))"
                                      ".map(t => t.textContent)")
        page_tools.ws.close()
    finally:
        browser.terminate()
        lab.terminate()
        for proc in (browser, lab):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert all(not tabs for tabs in dirty.values()), f"marked modified on open: {dirty}"
    for nb in NOTEBOOKS:  # and nothing was written to the copies
        assert (root / nb.name).read_bytes() == nb.read_bytes(), f"{nb.name} was rewritten"

"""The book (``make book``): built once per session from the committed files, then read as HTML and, when a
Chromium is installed, opened page by page in a headless browser driven over the DevTools protocol.

The build goes to ``build/book-test``, never over ``build/book``. Without the book's dependencies
(``requirements-book.txt``, which ``requirements-test.txt`` pulls in) or without a browser the tests skip
with the reason; under CI (``CI`` set) a missing browser fails instead, since ``.ci/run`` installs one.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from devtools import DevTools, find_chromium

ROOT = Path(__file__).resolve().parent.parent
#: links that may leave the site: the papers a page cites, and the published data sets it reads
PAPER_HOSTS = ("doi.org", "arxiv.org", "openreview.net", "proceedings.mlr.press", "proceedings.neurips.cc",
               "papers.nips.cc", "jmlr.org", "openaccess.thecvf.com", "science.org", "link.springer.com")
DATA_SETS = ("https://github.com/brendenlake/omniglot",)  # Lake et al.'s Omniglot (mtml_lib.data.omniglot)

pytest.importorskip("sphinx", reason="the book's dependencies are not installed (pip install -r requirements-book.txt)")
pytest.importorskip("myst_nb", reason="the book's dependencies are not installed (pip install -r requirements-book.txt)")
bs4 = pytest.importorskip("bs4")


# ------------------------------------------------------------------------------------------ the build
@pytest.fixture(scope="session")
def site() -> Path:
    out = ROOT / "build" / "book-test"  # Sphinx's cache beside it makes a second run incremental
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "book.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"make book failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"book built in {time.perf_counter() - start:.0f} s")
    return out


def pages(site: Path) -> list[Path]:
    """The site's pages (not the theme's template fragments under ``_static/``)."""
    return sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))


@functools.lru_cache(maxsize=None)
def soup(path: Path):
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def words(page: Path) -> str:
    """The page's text with whitespace collapsed (inline code is split into one span per word)."""
    return " ".join(soup(page).get_text(" ").split())


def notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def chapter_notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def exercise_notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))


def plain_title(nb: Path) -> str:
    """The notebook's first heading without its maths: the words a reader sees in the chapter title."""
    first = next(c for c in notebook(nb)["cells"] if c["cell_type"] == "markdown")
    line = next(l for l in "".join(first["source"]).splitlines() if l.startswith("# "))
    return re.sub(r"\$[^$]*\$", "", line[2:]).strip(" :·")


def download_target(page: Path, name: str) -> Path | None:
    """The file behind the page's download link named ``name`` (None when the page has none)."""
    for a in soup(page).find_all("a", href=True):
        if a["href"].split("/")[-1] == name and "_downloads" in a["href"]:
            return (page.parent / unquote(a["href"])).resolve()
    return None


def known_docstring_issues() -> list[tuple[str, str]]:
    """The docstring problems ``docs/conf.py`` tolerates (each one printed by every build)."""
    import runpy

    return runpy.run_path(str(ROOT / "docs" / "conf.py"))["KNOWN_DOCSTRING_ISSUES"]


# ------------------------------------------------------------------------------------------ HTML checks
def test_every_chapter_is_in_the_book_with_its_files_and_command(site):
    index = soup(site / "index.html")
    nav = " ".join(" ".join(a.get_text(" ") for a in index.find_all("a")).split())
    for nb in chapter_notebooks():
        page = site / "chapters" / f"{nb.stem}.html"
        assert page.is_file(), f"chapter {nb.stem} missing from the book"
        text = words(page)
        assert plain_title(nb) in text and plain_title(nb) in nav, nb.stem
        assert f"mtml run {nb.stem[:2]} --profile quick" in text, f"{nb.stem}: no regeneration command"
        stored = download_target(page, nb.name)
        assert stored is not None and stored.read_bytes() == nb.read_bytes(), f"{nb.stem}: no link to its notebook"
        for result in sorted((ROOT / "results").glob(f"*/{nb.stem}.json")):
            linked = download_target(page, result.name)
            assert linked is not None, f"{nb.stem}: no link to {result.relative_to(ROOT)}"
            assert f"results/{result.parent.name}/{result.name}" in text
        # the stored outputs are the content: as many output images as the notebook stores
        stored_images = sum("image/png" in o.get("data", {}) for c in notebook(nb)["cells"]
                            for o in c.get("outputs", []))
        shown = [img for img in soup(page).select("article img") if "_images/" in img["src"]]
        assert len(shown) >= stored_images, f"{nb.stem}: {len(shown)} images shown, {stored_images} stored"


def _solution_lines(nb: Path) -> list[str]:
    """Distinctive lines that only the instructor version has (inside solution or hidden-test regions)."""
    lines, inside = [], False
    for cell in notebook(nb)["cells"]:
        for line in "".join(cell["source"]).splitlines():
            if "BEGIN SOLUTION" in line or "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END SOLUTION" in line or "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(line.strip()) >= 25:
                lines.append(line.strip())
    return lines


def test_exercises_are_the_student_versions(site):
    from mtml_lib import exercises

    for nb in exercise_notebooks():
        page = site / "exercises" / f"{nb.stem}.html"
        assert page.is_file(), f"exercise {nb.stem} missing from the book"
        text = soup(page).get_text("\n")
        assert "YOUR CODE HERE" in text and "NotImplementedError" in text
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            assert marker not in text, f"{nb.stem}: {marker!r} in the book"
        student = "\n".join(c.source for c in exercises.release(nb).cells)
        leaked = [line for line in _solution_lines(nb) if line not in student and line in text]
        assert not leaked, f"{nb.stem}: solution lines in the book: {leaked[:3]}"
        handed_out = download_target(page, nb.name)
        assert handed_out is not None
        assert not [line for line in _solution_lines(nb) if line not in student and line in handed_out.read_text()]
        assert not [c for c in notebook(handed_out)["cells"] if "mtml" in c.get("metadata", {})], "probes handed out"
    assert _solution_lines(exercise_notebooks()[0]), "the check above would pass on any page"


def saved_figures() -> list[str]:
    names = set()
    for nb in chapter_notebooks():
        names |= set(re.findall(r'save_figure\(\s*\w+,\s*\\?"([\w-]+)\\?"', nb.read_text(encoding="utf-8")))
    return sorted(names)


def test_every_figure_of_the_notebooks_is_in_the_gallery_with_caption_and_provenance(site):
    names = saved_figures()
    assert len(names) >= 10, names
    gallery = soup(site / "gallery.html")
    index = json.loads((ROOT / "figures" / "index.json").read_text(encoding="utf-8"))
    text = " ".join(gallery.get_text(" ").split())
    for name in names:
        imgs = [img for img in gallery.find_all("img") if img.get("alt") == name]
        assert imgs, f"figure {name} not in the gallery"
        built = (site / unquote(imgs[0]["src"])).resolve()
        assert built.is_file(), f"{name}: {imgs[0]['src']} missing from the site"
        assert built.read_bytes() == (ROOT / "figures" / f"{name}.png").read_bytes(), f"{name}: not figures/{name}.png"
        entry = index[name]
        assert " ".join(entry["caption"].split()) in text, f"{name}: caption missing"
        assert entry["provenance"]["git_commit"] in text, f"{name}: provenance missing"


def test_results_tables_for_every_profile(site):
    for result in sorted((ROOT / "results").glob("*/*.json")):
        profile, stem = result.parent.name, result.stem
        page = site / "results" / f"{profile}.html"
        assert page.is_file(), f"no results page for profile {profile}"
        doc = soup(page)
        heading = next((h for h in doc.find_all("h2") if stem in h.get_text()), None)
        assert heading is not None, f"{profile}: no section for {stem}"
        section = heading.find_parent("section")
        assert len(section.find_all("table")) >= 2, f"{profile}/{stem}: no tables"
        data = json.loads(result.read_text(encoding="utf-8"))
        assert data["provenance"]["git_commit"] in section.get_text(), f"{profile}/{stem}: provenance missing"


def test_no_unrendered_dollar_maths(site):
    dollars = re.compile(r"\$[^$\s][^$]*?\$")
    math_pages = 0
    for page in pages(site):
        doc = bs4.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        math_pages += bool(doc.select(".math"))
        for tag in doc.select("script, style, pre, code, .math, .onlyprint, .highlight"):
            tag.decompose()
        found = dollars.findall(doc.get_text(" "))
        assert not found, f"{page.relative_to(site)}: unrendered maths {found[:3]}"
    assert math_pages >= 8, "the chapters' maths should be marked up for MathJax"


def test_links_stay_in_the_site_and_resolve(site):
    """Every link, script, style sheet and image is a file of the site (fragment included), except links to
    the papers; MathJax is the local copy."""
    ids: dict[Path, set[str]] = {}
    tolerated = {f"{path[:-3].replace('/', '.')}.html" for path, _ in known_docstring_issues()}
    for page in pages(site):
        doc = soup(page)
        if page.name in tolerated:  # docutils marks the known markup error with a link to its own report
            for el in doc.select("a > span.problematic"):
                el.parent.decompose()
        for tag, attr in (("a", "href"), ("link", "href"), ("script", "src"), ("img", "src"), ("iframe", "src")):
            for el in doc.find_all(tag):
                url = el.get(attr)
                if not url or url.startswith(("mailto:", "data:", "javascript:")):
                    continue
                parts = urlsplit(url)
                if parts.scheme or url.startswith("//"):
                    allowed = (parts.hostname or "").endswith(PAPER_HOSTS) or url.startswith(DATA_SETS)
                    assert tag == "a" and allowed, f"{page.relative_to(site)}: link out of the site: {url}"
                    continue
                target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
                assert target.is_file(), f"{page.relative_to(site)}: broken link {url}"
                if parts.fragment and target.suffix == ".html":
                    if target not in ids:
                        ids[target] = {e["id"] for e in soup(target).find_all(id=True)}
                    assert parts.fragment in ids[target], f"{page.relative_to(site)}: no #{parts.fragment} in {url}"
    mathjax = site / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.is_file() and any((site / "_static" / "mathjax").rglob("*.woff"))
    assert 'src="../_static/mathjax/tex-chtml.js' in (site / "chapters" / "01_math_model.html").read_text()


def test_a_broken_link_or_a_missing_image_fails_the_build(tmp_path):
    """The book's configuration turns Sphinx's warnings into a failed build (checked on a two-line page)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text("# A page\n\n[a chapter that is not there](missing.md)\n\n"
                                  "![a figure that is not there](figures/missing.png)\n")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                           "-c", str(ROOT / "docs"), str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "missing.png" in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ the browser
def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            if params["entry"].get("url", "").endswith("/favicon.ico"):
                continue  # the browser asks for one by itself; the site declares none
            errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
    return errors


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    chromium = find_chromium()
    if chromium is None:
        reason = "no Chromium on this machine (apt-get install chromium); the browser test did not run"
        if os.environ.get("CI"):
            pytest.fail(reason + " under CI, where .ci/run installs it")
        print(reason)
        pytest.skip(reason)
    pytest.importorskip("websocket", reason="websocket-client is not installed (requirements-test.txt)")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tmp_path_factory.mktemp("chromium")
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = None
        deadline = time.monotonic() + 60
        while endpoint is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = match.group(1) if match else None
        assert endpoint, "Chromium did not open its DevTools port"
        port = urlsplit(endpoint).port
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        yield tools, f"http://127.0.0.1:{server.server_address[1]}/"
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()


PAGE_STATE = """(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const images = Array.from(document.images);
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return {
    math: document.querySelectorAll('.math').length,
    typeset: document.querySelectorAll('mjx-container').length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    images: images.length,
    broken: images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute('src')),
    title: document.title,
  };
})()"""


def test_every_page_opens_in_chromium_without_errors(site, browser):
    tools, base = browser
    checked, math_pages, images, fetched = 0, 0, 0, 0
    for page in pages(site):
        rel = page.relative_to(site).as_posix()
        tools.drain()
        tools.call("Page.navigate", url=base + rel)
        tools.wait_for("Page.loadEventFired")
        state = tools.evaluate(PAGE_STATE)
        events = tools.drain()
        errors = console_errors(events)
        assert not errors, f"{rel}: console errors {errors[:3]}"
        requested = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        outside = [url for url in requested if not url.startswith((base, "data:", "blob:", "about:"))]
        assert not outside, f"{rel}: requests outside the site {outside[:3]}"
        fetched += len(requested)
        assert not state["broken"], f"{rel}: images not decoded {state['broken'][:3]}"
        if state["math"]:
            assert state["typeset"] >= state["math"] and not state["mathErrors"], f"{rel}: maths not typeset {state}"
            math_pages += 1
        images += state["images"]
        checked += 1
        if rel == "chapters/01_math_model.html":
            shot = tools.call("Page.captureScreenshot", format="png")
            target = ROOT / "build" / "book-screenshot-01_math_model.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(shot["data"]))
            assert target.read_bytes().startswith(b"\x89PNG") and target.stat().st_size > 20_000, "blank screenshot"
    print(f"{checked} pages opened in Chromium, {math_pages} with typeset maths, {images} images decoded, "
          f"{fetched} requests, all to the site")
    assert fetched > checked, "the network events should have been recorded"
    assert checked == len(pages(site)) and math_pages >= 8 and images >= len(saved_figures()), (checked, math_pages, images)

"""Build the book: the committed notebooks, exercises, figures, results and library reference as one site.

``make book`` runs ``python docs/book.py``, which

1. *stages* the sources under ``build/book-src/``: the front page and two section introductions cut from
   ``README.md``; the notebooks 00-05 as chapters, each with a box naming its notebook file, the command
   that regenerates it and its results files; the exercises' student versions, made by
   :func:`mtml_lib.exercises.release` (solutions replaced, hidden tests and probes removed); the figure
   gallery from ``figures/index.json`` (captions and provenance); one results page per profile from
   ``results/<profile>/*.json``; the API reference (autosummary over ``mtml_lib``);
2. runs Sphinx (``docs/conf.py``: myst-nb with execution off, sphinx-book-theme, MathJax 3 copied into
   the site) with warnings as errors, into ``build/book/``.

Nothing is executed and nothing is fetched: the stored outputs of the quick run are the content. Staged
files are rewritten only when their content changes, so a second build reuses Sphinx's cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = Path(__file__).resolve().parent

#: README sections that open another page of the book instead of the front page
README_ROUTES = {"Results": "results/index.md", "Speed": "results/index.md",
                 "Coursework (instructor guide)": "exercises/index.md"}
#: the profile whose outputs the committed notebooks store (the book's chapters show them)
STORED_PROFILE = "quick"


# ------------------------------------------------------------------------------------------ helpers
def write(path: Path, text: str | bytes) -> None:
    """Write ``text`` unless the file already holds it (an unchanged source keeps Sphinx's cache valid)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def copy(source: Path, target: Path) -> None:
    write(target, source.read_bytes())


def slug(heading: str) -> str:
    """The anchor MyST gives a heading (``myst_heading_anchors``): lower case, punctuation dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def md_escape(text: str) -> str:
    """Plain text for a Markdown paragraph or table cell (no emphasis, links or math from it)."""
    text = re.sub(r"([\\`*_\[\]{}<>#|$])", r"\\\1", str(text))
    return text.replace("\n", " ")


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return md_escape(value)


def chapters(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb") if p.is_file())


def profiles(root: Path) -> list[str]:
    """Profiles with results, the stored one first."""
    found = sorted(p.name for p in (root / "results").iterdir() if p.is_dir() and any(p.glob("*.json")))
    return sorted(found, key=lambda name: (name != STORED_PROFILE, name))


# ------------------------------------------------------------------------------------------ README
def readme_sections(root: Path) -> tuple[str, list[tuple[str, str]]]:
    """The README's opening (title and story) and its ``## `` sections as (heading, body)."""
    text = (root / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return parts[0], [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def rewrite_links(text: str, page: str, anchors: dict[str, str], root: Path) -> str:
    """Point the README's links at the book: notebooks to chapters, figures to the staged copies, anchors
    to the page that carries their section; a link to another repository file becomes its path in code
    (that file is not part of the site)."""
    up = "../" * page.count("/")

    def image(match):
        alt, target = match.group(1), match.group(2)
        return f"![{alt}]({up}{target})" if target.startswith("figures/") else match.group(0)

    def link(match):
        label, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+://", target):
            return match.group(0)
        if target.startswith("#"):
            where = anchors.get(target[1:], page)
            rel = "" if where == page else up + where
            return f"[{label}]({rel}{target})"
        stem = Path(target).stem
        if target.startswith("notebooks/") and (root / "notebooks" / f"{stem}.ipynb").is_file():
            return f"[{label}]({up}chapters/{stem}.ipynb)"
        return label if label.strip("`") == target else f"{label} (`{target}`)"

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", image, text)
    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", link, text)


def stage_readme(root: Path, src: Path) -> dict[str, list[str]]:
    """Front page and section introductions from the README; returns page -> Markdown pieces."""
    opening, sections = readme_sections(root)
    anchors = {slug(h): README_ROUTES.get(h, "index.md") for h, _ in sections}
    pages: dict[str, list[str]] = {"index.md": [], "results/index.md": [], "exercises/index.md": []}
    pages["index.md"].append(rewrite_links(opening, "index.md", anchors, root))
    for heading, body in sections:
        page = README_ROUTES.get(heading, "index.md")
        pages[page].append(f"## {heading}\n" + rewrite_links(body, page, anchors, root))
    return pages


# ------------------------------------------------------------------------------------------ chapters
def figure_index(root: Path, profile: str | None = None) -> dict[str, dict]:
    folder = root / "figures" if profile in (None, STORED_PROFILE) else root / "figures" / profile
    path = folder / "index.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def chapter_box(root: Path, nb: Path) -> str:
    """The box under a chapter's title: notebook file, regeneration command, results files, figures."""
    stem, number = nb.stem, nb.stem[:2]
    lines = [":::{admonition} This chapter's files", ":class: note", "",
             f"- Notebook: {{download}}`notebooks/{nb.name} <../_files/notebooks/{nb.name}>`, shown here with "
             f"the stored outputs of its `{STORED_PROFILE}` run.",
             f"- Regenerate it: `mtml run {number} --profile {STORED_PROFILE}` (add `--store` to write the outputs "
             f"back into the notebook; `make notebooks` does so for all)."]
    for profile in profiles(root):
        result = root / "results" / profile / f"{stem}.json"
        if result.is_file():
            again = "" if profile == STORED_PROFILE else f"; regenerate with `mtml run {number} --profile {profile}`"
            lines.append(f"- Results, `{profile}` profile: {{download}}`results/{profile}/{stem}.json "
                         f"<../_files/results/{profile}/{stem}.json>` (tables: [{profile} results]"
                         f"(../results/{profile}.md#{slug(stem)})){again}.")
    figs = [name for name, entry in figure_index(root).items() if entry.get("notebook") == stem]
    if figs:
        links = ", ".join(f"[{name}](../gallery.md#{slug(name)})" for name in figs)
        lines.append(f"- Figures (in `figures/`, with captions and provenance in the gallery): {links}.")
    return "\n".join(lines + [":::", ""])


def toc_entry(nb, doc: str) -> str:
    """A toctree line for a notebook; a title with maths gets a plain one for the navigation, where a
    formula does not fit (the chapter itself keeps its title)."""
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    title = next((l[2:] for l in (first.source if first else "").splitlines() if l.startswith("# ")), "")
    if "$" not in title:
        return doc
    return f"{re.sub(r'[$][^$]*[$]', '', title).strip(' :·')} <{doc}>"


def stage_chapters(root: Path, src: Path) -> list[str]:
    import nbformat

    docs = []
    for nb_path in chapters(root):
        nb = nbformat.read(nb_path, as_version=4)
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(chapter_box(root, nb_path)))
        write(src / "chapters" / nb_path.name, nbformat.writes(nb))
        copy(nb_path, src / "_files" / "notebooks" / nb_path.name)
        docs.append(toc_entry(nb, f"chapters/{nb_path.stem}"))
    return docs


def stage_exercises(root: Path, src: Path, intro: list[str]) -> None:
    """The student versions, as ``mtml release`` writes them (the library's release code, not a copy)."""
    import nbformat

    from mtml_lib import exercises

    docs = []
    for path in sorted((root / "notebooks" / "exercises").glob("*.ipynb")):
        student = exercises.release(path)
        box = nbformat.v4.new_markdown_cell(
            ":::{admonition} Student version\n:class: note\n\n"
            f"This is what `mtml release {path.stem}` hands out: solutions replaced by `# YOUR CODE HERE`, "
            "hidden tests and grading probes removed, outputs cleared. Download it: "
            f"{{download}}`{path.name} <../_files/exercises/{path.name}>`.\n:::\n")
        student.cells.insert(1, box)
        text = nbformat.writes(student)
        write(src / "exercises" / path.name, text)
        write(src / "_files" / "exercises" / path.name, nbformat.writes(exercises.release(path)))
        docs.append(path.stem)
    toc = "\n".join(["```{toctree}", ":maxdepth: 1", "", *docs, "```", ""])
    write(src / "exercises" / "index.md", "# Exercises\n\nOne exercise for each of the notebooks 01-05, in the "
          "student version: the instructor notebooks with their solutions and hidden tests stay in "
          "`notebooks/exercises/`.\n\n" + toc + "\n" + "\n".join(intro))


# ------------------------------------------------------------------------------------------ gallery
def provenance_table(prov: dict, chapter: str | None, up: str) -> list[str]:
    rows = []
    if chapter:
        rows.append(("notebook", f"[{chapter}]({up}chapters/{chapter}.ipynb)"))
    for key in ("profile", "seed", "device", "torch", "python", "git_commit", "started_at", "wall_time_s"):
        if key in prov:
            value = f"`{prov[key]}`" if key == "git_commit" else fmt(prov[key])
            label = "wall time" if key == "wall_time_s" else key.replace("_", " ")
            rows.append((label, value + (" s" if key == "wall_time_s" else "")))
    dirty = prov.get("git_dirty_files")
    if dirty:
        rows.append(("files changed from that commit", ", ".join(f"`{f}`" for f in dirty)))
    return ["| provenance | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def gallery_page(profile: str) -> str:
    return "gallery.md" if profile == STORED_PROFILE else f"gallery-{profile}.md"


def stage_gallery(root: Path, src: Path) -> None:
    """``gallery.md`` for the figures the notebooks store, ``gallery-<profile>.md`` for another profile's."""
    others = [p.name for p in sorted((root / "figures").iterdir()) if p.is_dir() and (p / "index.json").is_file()]
    for profile in [STORED_PROFILE, *others]:
        index = figure_index(root, profile)
        folder = root / "figures" if profile == STORED_PROFILE else root / "figures" / profile
        rel = "figures" if profile == STORED_PROFILE else f"figures/{profile}"
        if profile == STORED_PROFILE:
            lines = ["# Figure gallery", "",
                     "Every figure that the notebooks show, written by one notebook through "
                     "`mtml_lib.plotting.save_figure`, with the caption and the provenance recorded in "
                     f"`figures/index.json` (profile `{profile}`; PNG here, a PDF beside each).", ""]
            if others:
                lines += ["```{toctree}", ":maxdepth: 1", "", *(gallery_page(p)[:-3] for p in others), "```", ""]
        else:
            lines = [f"# Figures of the `{profile}` profile", "",
                     f"The same figures from `mtml run NN --profile {profile}`, kept in `{rel}/` with their own "
                     "index, so that this run never replaced the figures the notebooks show.", ""]
        current = None
        for name, entry in sorted(index.items(), key=lambda kv: (kv[1].get("notebook", ""), kv[0])):
            chapter = entry.get("notebook")
            if chapter != current:
                lines += [f"## {chapter}", ""]
                current = chapter
            png = folder / entry.get("png", f"{name}.png")
            if not png.is_file():
                raise SystemExit(f"book: {folder.relative_to(root)}/index.json lists {png.name}, which is missing "
                                 f"(rerun `mtml run {str(chapter)[:2]} --profile {profile}` or `mtml figures`)")
            target = f"{rel}/{png.name}"
            copy(png, src / target)
            lines += [f"### {name}", "", f"```{{image}} {target}", f":alt: {name}", ":width: 100%", "```", "",
                      md_escape(entry.get("caption", "")), ""]
            pdf = folder / entry.get("pdf", f"{name}.pdf")
            if pdf.is_file():
                copy(pdf, src / "_files" / target.replace(".png", ".pdf"))
                lines += [f"{{download}}`PDF <_files/{target.replace('.png', '.pdf')}>`", ""]
            lines += provenance_table(entry.get("provenance", {}),
                                      chapter if (root / "notebooks" / f"{chapter}.ipynb").is_file() else None, "")
        write(src / gallery_page(profile), "\n".join(lines))


# ------------------------------------------------------------------------------------------ results
def scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def short_list(values: list) -> str:
    if all(scalar(v) for v in values) and len(values) <= 12:
        return ", ".join(fmt(v) for v in values) or "(none)"
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        return f"{len(values)} values, from {fmt(values[0])} to {fmt(values[-1])} (min {fmt(min(numbers))}, max {fmt(max(numbers))})"
    return f"{len(values)} entries (see the JSON file)"


def cell(value) -> str:
    if scalar(value):
        return fmt(value)
    if isinstance(value, list):
        return short_list(value)
    return f"{len(value)} entries (see the JSON file)"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def render(value, title: str, level: int) -> list[str]:
    """A JSON value as Markdown tables: scalars as a key/value table, a mapping of flat mappings as a
    matrix, a list of flat records as rows; anything deeper as sub-sections."""
    head = [f"{'#' * level} {md_escape(title)}", ""] if level <= 4 else [f"**{md_escape(title)}**", ""]
    if isinstance(value, dict):
        items = list(value.items())
        flat = [(k, v) for k, v in items if scalar(v) or isinstance(v, list) and all(scalar(x) for x in v)]
        nested = [(k, v) for k, v in items if (k, v) not in flat]
        if nested and all(isinstance(v, dict) and all(not isinstance(x, dict) for x in v.values()) for _, v in nested) \
                and len(nested) >= 2 and not flat:
            columns = list(dict.fromkeys(c for _, v in nested for c in v))
            rows = [[md_escape(k), *(cell(v.get(c)) for c in columns)] for k, v in nested]
            return head + table(["", *map(md_escape, columns)], rows)
        out = head
        if flat:
            out += table(["", "value"], [[md_escape(k), cell(v)] for k, v in flat])
        for key, child in nested:
            out += render(child, str(key), level + 1)
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
            and all(not isinstance(x, (dict, list)) or isinstance(x, list) and all(scalar(y) for y in x)
                    for v in value for x in v.values()):
        columns = list(dict.fromkeys(c for v in value for c in v))
        return head + table(list(map(md_escape, columns)), [[cell(v.get(c)) for c in columns] for v in value])
    return head + [cell(value) if not isinstance(value, list) else short_list(value), ""]


def stage_results(root: Path, src: Path, intro: list[str]) -> None:
    pages = []
    for profile in profiles(root):
        lines = [f"# Results: the `{profile}` profile", "",
                 f"Every number that the `{profile}` runs wrote to `results/{profile}/`, one section per notebook, "
                 f"rendered from the JSON files (floats to four significant digits; long curves summarised). "
                 f"Regenerate a notebook's file with `mtml run NN --profile {profile}`.", ""]
        for path in sorted((root / "results" / profile).glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            stem = path.stem
            copy(path, src / "_files" / "results" / profile / path.name)
            lines += [f"## {stem}", ""]
            chapter = f"[chapter]({'../chapters/' + stem + '.ipynb'})" if (root / "notebooks" / f"{stem}.ipynb").is_file() else ""
            lines += [f"{chapter} · {{download}}`results/{profile}/{path.name} <../_files/results/{profile}/{path.name}>` · "
                      f"`mtml run {stem[:2]} --profile {profile}`", ""]
            lines += provenance_table(data.get("provenance", {}), None, "../")
            lines += render(data.get("metrics", {}), "metrics", 3)
        write(src / "results" / f"{profile}.md", "\n".join(lines))
        pages.append(profile)
    toc = "\n".join(["```{toctree}", ":maxdepth: 1", "", *pages, "```", ""])
    write(src / "results" / "index.md", "# Results\n\nThe numbers of every notebook, per profile, rendered from "
          "`results/<profile>/*.json`:\n\n" + toc + "\nThe summary below is the README's.\n\n" + "\n".join(intro))


# ------------------------------------------------------------------------------------------ API
def library_modules() -> list[str]:
    """Every public module of ``mtml_lib``, found without importing plain modules (``__main__`` runs the CLI)."""
    import pkgutil

    import mtml_lib

    names = ["mtml_lib"] + [m.name for m in pkgutil.walk_packages(mtml_lib.__path__, "mtml_lib.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def stage_api(src: Path) -> None:
    modules = "\n".join(f"   {name}" for name in library_modules())
    write(src / "api" / "index.md", "# Library reference\n\nGenerated from the docstrings of `mtml_lib`: the "
          "notebooks call into it, and everything they compute is defined (and tested) there. One page per "
          "module; a package's page is its overview.\n\n"
          f"```{{eval-rst}}\n.. autosummary::\n   :toctree: generated\n\n{modules}\n```\n")


# ------------------------------------------------------------------------------------------ build
def stage(root: Path, src: Path) -> None:
    readme = stage_readme(root, src)
    docs = stage_chapters(root, src)
    stage_exercises(root, src, readme["exercises/index.md"])
    stage_gallery(root, src)
    stage_results(root, src, readme["results/index.md"])
    stage_api(src)
    toc = ["```{toctree}", ":caption: Chapters", ":maxdepth: 1", "", *docs, "```", "",
           "```{toctree}", ":caption: Coursework, figures, numbers, code", ":maxdepth: 1", "",
           "exercises/index", "gallery", "results/index", "api/index", "```", ""]
    write(src / "index.md", "\n".join(readme["index.md"]) + "\n\n" + "\n".join(toc))


def build(root: Path = ROOT, out: Path | None = None, fresh: bool = False) -> Path:
    """Stage the sources and run Sphinx; returns the site folder. Raises SystemExit on a warning."""
    from sphinx.cmd.build import build_main

    out = out or root / "build" / "book"
    src = out.parent / f"{out.name}-src"
    doctrees = out.parent / f"{out.name}-doctrees"
    # Sphinx notices changed sources, not a changed setup() or template: those rebuild everything
    stamp = doctrees / "book-config.sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CONF_DIR.rglob("*"))
                                     if p.is_file() and p.suffix in (".py", ".rst", ".css", ".html"))).hexdigest()
    fresh = fresh or not stamp.is_file() or stamp.read_text() != digest
    if fresh:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(doctrees, ignore_errors=True)
    stage(root, src)
    args = ["-b", "html", "-W", "--keep-going", "-q", "-c", str(CONF_DIR), "-d", str(doctrees), str(src), str(out)]
    if fresh:
        args.insert(0, "-E")
    status = build_main(args)
    if status == 0:
        write(stamp, digest)
    if status:
        raise SystemExit(f"book: Sphinx failed (exit {status}); the warnings above say where")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="site folder (default build/book)")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything, ignoring Sphinx's cache")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    site = build(ROOT, args.out.resolve(), args.fresh)
    print(f"book: {site / 'index.html'} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

"""Sphinx configuration of the book (``make book``).

The sources are not this folder: ``docs/book.py`` stages them under ``build/book-src`` (the committed
notebooks as chapters, the exercises' student versions, pages generated from the README, the figure
index and the results) and runs Sphinx there with this folder as the configuration directory. Nothing
is executed: the notebooks' stored outputs are the content.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

project = "mtml"
author = "the mtml authors"
copyright = "the mtml authors"
html_title = "mtml: multi-task learning, meta-learning and knowledge transfer"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx-mathjax-offline",
]

templates_path = [str(HERE / "_templates")]  # absolute: autosummary looks relative to the sources
exclude_patterns = ["_files/**", "**.ipynb_checkpoints"]

# --- notebooks: read, never run ----------------------------------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True
# Markdown that a cell displays (prose rendered from the run) is parsed like the notebook's own cells, so its
# $...$ maths renders; commonmark, the default, would leave it as text
nb_render_markdown_format = "myst"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# --- the library reference ---------------------------------------------------------------------------
autosummary_generate = True
# members defined in each module, once (a package that re-exports them does not document them again)
autodoc_default_options = {"member-order": "bysource", "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# --- offline HTML: MathJax 3 from sphinx-mathjax-offline, no web fonts, no external links -------------
# The extension copies MathJax (scripts and fonts) to _static/mathjax once the build succeeds; the path
# is set here as well so that the page never points at a CDN even if the extension's default changes.
mathjax_path = "mathjax/tex-chtml.js"
html_theme = "sphinx_book_theme"
html_static_path = [str(HERE / "_static")]
html_css_files = ["book.css"]
html_show_sphinx = False
html_show_sourcelink = False
html_copy_source = False
smartquotes = False  # captions and the README are quoted verbatim
html_last_updated_fmt = None
html_context = {"default_mode": "auto"}  # light or dark as the reader's system says
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,  # each chapter links to its notebook file itself
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "use_issues_button": False,
    "use_edit_page_button": False,
    "home_page_in_toc": True,
    "footer_start": [],
    "footer_center": [],
    "footer_end": [],
    "extra_footer": "",
    "launch_buttons": {},
}

# A warning fails the build (``sphinx-build -W``): a broken internal link, a missing image or download,
# a docstring that docutils cannot parse. Cross-references to other packages' objects (torch, numpy) are
# not checked: their inventories would have to be fetched from the web.
suppress_warnings: list[str] = []

# Docstring problems already reported to the owners of these files and tolerated until they are fixed
# there: (file, start of the docutils message). Each is printed on every build; anything else fails it.
KNOWN_DOCSTRING_ISSUES: list[tuple[str, str]] = []


class _KnownIssues:
    """A filter put first on Sphinx's warning handler: lets every warning through except the known ones,
    which it prints as notes (so they neither vanish nor fail the build)."""

    def filter(self, record) -> bool:
        where = str(getattr(record, "location", "") or "")
        message = record.getMessage()
        for path, start in KNOWN_DOCSTRING_ISSUES:
            if path in where.replace("\\", "/") and message.startswith(start):
                print(f"book: known docstring issue, to fix in {path}: {where}: {message}")
                return False
        return True


def setup(app):
    import logging

    # MathJax on every page: chapter titles with maths appear in every page's navigation
    app.set_html_assets_policy("always")

    for handler in logging.getLogger("sphinx").handlers:
        if handler.level == logging.WARNING:
            handler.filters.insert(0, _KnownIssues())

"""Sphinx configuration of emcore's documentation site.

Build it with ``bash ci/docs.sh`` (warnings are errors); the pages are the
Markdown files of this folder (MyST), the API reference from the docstrings
(autodoc + numpydoc, ``api/``), and a gallery of examples in ``gallery/`` that
sphinx-gallery executes at every build, so a broken example fails the build.
"""

from __future__ import annotations

import emcore

project = "emcore"
author = "emcore developers"
copyright = "emcore developers"
release = emcore.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# images/ holds the figures the pages show; _build is the output.
exclude_patterns = ["_build", "images", "gallery/README.txt", "**.ipynb_checkpoints"]

# --- MyST: the pages are GitHub Markdown with explicit <a id="..."></a> anchors
# (docs/README.md: "Citing these pages from code"), which stay raw HTML; headings
# get slugs as well so a page can link to another's section.
myst_enable_extensions = ["colon_fence", "deflist"]   # no dollarmath: a $ is a $
myst_heading_anchors = 4

# --- autodoc + numpydoc
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"             # the numpydoc Parameters section says it
numpydoc_show_class_members = False    # autodoc lists the members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- sphinx-gallery: gallery/*.py run at build time (each a few seconds, seeded)
#
# The examples run in this process. As for the README's examples
# (tests/test_readme.py), a warning of emcore's own (a fit that did not converge, a
# chain that broke) is an error: the gallery must not show a fit that warns.
import warnings as _warnings

import emcore.exceptions as _exceptions

for _category in vars(_exceptions).values():
    if isinstance(_category, type) and issubclass(_category, Warning):
        _warnings.filterwarnings("error", category=_category)

sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r".*",        # every example runs: the build tests them
    "ignore_pattern": r"/_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "matplotlib_animations": False,
    "min_reported_time": 1,
}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"emcore {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []


# --- The pages' explicit anchors as link targets
#
# The pages mark sections with ``<a id="check-b"></a>`` before the heading
# (docs/README.md, "Citing these pages from code"), which GitHub renders and
# ci/check_doc_refs.py checks. MyST keeps them as raw HTML, so in the built page
# the anchor exists, but MyST's link resolution knows only heading slugs, and
# ``[text](elbo_chain.md#check-b)`` would warn. This transform registers each such
# anchor as a slug of its page (named after the heading it precedes), before MyST
# resolves ``#id`` links (its ResolveAnchorIds runs at priority 879). Anchor names
# are per page (several pages have a ``statistics``), so they cannot be global
# Sphinx labels.

import re as _re

from docutils import nodes as _nodes
from docutils.transforms import Transform as _Transform

_ANCHOR = _re.compile(r'^\s*<a id="([^"]+)">(?:</a>)?\s*$')   # MyST splits <a ...></a> in two


class _RegisterHtmlAnchors(_Transform):
    default_priority = 870

    def apply(self, **kwargs) -> None:
        slugs = getattr(self.document, "myst_slugs", None)
        if slugs is None:
            return
        pending: list[tuple[str, int]] = []
        for node in self.document.findall(
                lambda n: isinstance(n, (_nodes.raw, _nodes.title))):
            if isinstance(node, _nodes.raw):
                m = _ANCHOR.match(node.astext())
                if m and "html" in node.get("format", ""):
                    pending.append((m.group(1), node.line or 0))
            elif pending and isinstance(node.parent, _nodes.section):
                for name, line in pending:
                    slugs[name] = (line, name, node.astext())
                pending = []
        for name, line in pending:              # an anchor after the last heading
            slugs[name] = (line, name, "")
        env = getattr(self.document.settings, "env", None)
        if env is not None and slugs:
            env.metadata[env.docname]["myst_slugs"] = slugs


# --- The API reference covers every public name
#
# api/*.md document emcore, emcore.plugin_api and emcore.testing with
# ``automodule :members:``, which follows each module's __all__ but leaves out
# re-exported constants (their ``#:`` comments live in another module): the pages
# declare those with ``py:data``. A public name that has no entry fails the build.

import importlib as _importlib

from sphinx.util import logging as _logging

_API_MODULES = ("emcore", "emcore.plugin_api", "emcore.testing")


def _check_api_covered(app, env):
    documented = set(env.get_domain("py").objects)
    for mod in _API_MODULES:
        for name in _importlib.import_module(mod).__all__:
            if f"{mod}.{name}" not in documented:
                _logging.getLogger(__name__).warning(
                    "%s.%s is public (in __all__) but not in the API reference "
                    "(docs/api/)", mod, name)


def setup(app):
    app.add_transform(_RegisterHtmlAnchors)
    app.connect("env-check-consistency", _check_api_covered)
    return {"parallel_read_safe": True}

#!/usr/bin/env python3
"""Move the README's manual into the user guide, docs/guide/*.md (issue 21, item 5).

How to run it (from the repository root, on a clean tree, once every branch that
edits README sections is merged)::

    python3 ci/split_readme.py --dry-run   # the plan: which heading goes to which page
    python3 ci/split_readme.py             # do it
    bash ci/docs.sh                        # the site builds with the guide, -W
    .venv/bin/pytest tests/test_readme.py  # the moved examples still run

What it does:

* Every ``## `` section of README.md (with its ``###`` subsections) named in
  ``PAGES`` moves, verbatim and in the order ``PAGES`` gives, to that guide page,
  under the page's ``# `` title. Headings keep their level, so the examples runner
  (tests/test_readme.py) still gives each ``## `` section one namespace. A ``## ``
  heading ``PAGES`` does not know goes to the catch-all page (``CATCH_ALL``) and is
  listed on stdout, so a section added later is never lost; add it to ``PAGES``.
* Sections in ``KEEP`` stay in the README (the docs build command).
* The README keeps its first screen (the title, what emcore is, the two commands:
  everything above the first ``## ``), then a table of contents linking the guide
  pages, then the ``KEEP`` sections.
* Links are rewritten for their new place: ``[x](#heading)`` to the page holding
  that heading, ``docs/...`` relative to docs/guide/, any other repository path
  (``benchmarks/README.md``) to its URL on GitHub (the docs site builds from docs/
  only, so a relative link out of it would not resolve).
* docs/guide/index.md lists the pages; docs/index.md gets ``guide/index`` in its
  first table of contents (at the ``GUIDE_TOCTREE_MARKER`` line), and
  docs/README.md links the guide instead of the README.

Safe and idempotent: it refuses (exit status 1, nothing written) when README.md
has no section it knows, or when a guide page it would write already exists; run
on a README it already split (``SPLIT_MARKER`` present) it changes nothing and
says so (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY_URL = "https://github.com/emcore-developers/emcore/blob/main/"

#: guide page -> (its title, the README's ``## `` headings it holds, in order)
PAGES: dict[str, tuple[str, list[str]]] = {
    "using.md": ("Using emcore", ["Using it"]),
    "data_types.md": ("Data types and missing values", [
        "Missing values", "Counts", "Categories (latent class analysis)",
        "Binary data", "Positive data", "Heavy tails (Student-t)",
        "Regression mixtures", "Mixed data types"]),
    "hidden_markov.md": ("Hidden Markov models", ["Hidden Markov models"]),
    "variants.md": ("Variational Bayes and accelerated EM", [
        "Variational Bayes", "Accelerating EM and its variants"]),
    "results.md": ("Reading a fit: summaries and plots", ["Summary", "Plots"]),
    "command_line.md": ("The command line", ["Command line"]),
    "plugins.md": ("Plugins and writing a family", [
        "Plugins", "Writing a family", "How a fit runs"]),
    "development.md": ("Development, benchmarks and releases", [
        "Development", "Benchmarks", "Release / wheels"]),
}
#: the page for ``## `` headings that PAGES does not name
CATCH_ALL = ("more.md", "More")
#: ``## `` sections that stay in the README
KEEP = ["Documentation"]
#: written into the README; its presence means the split was done
SPLIT_MARKER = "<!-- The manual is in docs/guide/ (ci/split_readme.py). -->"
#: the line of docs/index.md after which ``guide/index`` goes
GUIDE_TOCTREE_MARKER = ":caption: Using emcore"
#: docs/README.md's link to the README as the user guide
DOCS_README_LINK = "[README](https://github.com/emcore-developers/emcore#readme)"


class SplitError(Exception):
    """The README cannot be split safely; nothing was written."""


def _slug(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first ``## `` heading, and [(heading, section text)].

    Fenced code is skipped while looking for headings (a ``## `` inside a block
    is not one).
    """
    lines = text.split("\n")
    starts, fence = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("## "):
            starts.append(i)
    if not starts:
        return text, []
    head = "\n".join(lines[:starts[0]])
    sections = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        sections.append((lines[a][3:].strip(), "\n".join(lines[a:b]).rstrip("\n") + "\n"))
    return head, sections


def _headings(section: str) -> list[str]:
    fence, out = False, []
    for line in section.split("\n"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#{2,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


_LINK = re.compile(r"(?<!\!)(\]\()([^)\s]+)(\))|(\!\[[^\]]*\]\()([^)\s]+)(\))")


def _rewrite_links(section: str, where: str, anchors: dict[str, str]) -> str:
    """Links of a README section, rewritten for the file ``where`` (a path from the
    repository root: README.md or docs/guide/X.md). ``anchors``: slug -> the file
    holding that heading after the split. Fenced code is left alone."""
    out, fence = [], False
    for line in section.split("\n"):
        if line.startswith("```"):
            fence = not fence
        if fence or line.startswith("```"):
            out.append(line)
            continue
        out.append(_LINK.sub(lambda m: _one_link(m, where, anchors), line))
    return "\n".join(out)


def _one_link(m: re.Match, where: str, anchors: dict[str, str]) -> str:
    opening, target, closing = (m.group(1), m.group(2), m.group(3)) if m.group(1) \
        else (m.group(4), m.group(5), m.group(6))
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, mailto:, ...
        return m.group(0)
    path, _, anchor = target.partition("#")
    if not path:                                          # #heading of the README
        home = anchors.get(anchor)
        if home is None:
            raise SplitError(f"README.md links to #{anchor}, which no heading has")
        return opening + _relative(home, where) + (f"#{anchor}") + closing
    if where == "README.md":
        return m.group(0)
    if path.startswith("docs/"):
        new = _relative(path, where)
    else:                                                 # outside the docs site
        new = REPOSITORY_URL + path
    return opening + new + (f"#{anchor}" if anchor else "") + closing


def _relative(target: str, where: str) -> str:
    """``target`` (a path from the repository root) as seen from the file ``where``."""
    if target == where:
        return ""
    return os.path.relpath(target, os.path.dirname(where) or ".").replace(os.sep, "/")


def plan(readme: str) -> tuple[str, dict[str, tuple[str, list[tuple[str, str]]]], list[str]]:
    """(the README's head, {page: (title, [(heading, text)])}, the unknown headings)."""
    head, sections = _sections(readme)
    known = {h for _, hs in PAGES.values() for h in hs}
    present = [h for h, _ in sections]
    if not known.intersection(present):
        raise SplitError("README.md has no section ci/split_readme.py knows "
                         f"(its ## headings: {present}); nothing done")
    dup = sorted({h for h in present if present.count(h) > 1})
    if dup:
        raise SplitError(f"README.md has these ## headings twice: {dup}")
    text = dict(sections)
    pages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for page, (title, heads) in PAGES.items():
        chosen = [(h, text[h]) for h in heads if h in text]
        if chosen:
            pages[page] = (title, chosen)
    unknown = [h for h in present if h not in known and h not in KEEP]
    if unknown:
        pages[CATCH_ALL[0]] = (CATCH_ALL[1], [(h, text[h]) for h in unknown])
    return head, pages, unknown


def split(root: Path, dry_run: bool = False) -> int:
    readme_path = root / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    if SPLIT_MARKER in readme:
        print("README.md is already split (docs/guide/); nothing to do")
        return 0
    head, pages, unknown = plan(readme)
    guide = root / "docs" / "guide"
    existing = sorted(p for p in [*pages, "index.md"] if (guide / p).exists())
    if existing and not dry_run:
        raise SplitError(f"docs/guide/ already has {existing}: remove them first")

    # where each heading (any level) lives after the split, by its slug
    anchors: dict[str, str] = {}
    for page, (_, secs) in pages.items():
        for _, sec in secs:
            for h in _headings(sec):
                anchors.setdefault(_slug(h), f"docs/guide/{page}")
    _, sections = _sections(readme)
    kept = [(h, s) for h, s in sections if h in KEEP]
    for h, s in kept:
        for sub in _headings(s):
            anchors.setdefault(_slug(sub), "README.md")

    for page, (title, secs) in pages.items():
        print(f"docs/guide/{page}: " + "; ".join(h for h, _ in secs))
    for h, _ in kept:
        print(f"README.md keeps: {h}")
    if unknown:
        print(f"not in PAGES, moved to docs/guide/{CATCH_ALL[0]}: " + "; ".join(unknown))
    if dry_run:
        return 0

    files: dict[Path, str] = {}
    for page, (title, secs) in pages.items():
        where = f"docs/guide/{page}"
        body = "\n".join(_rewrite_links(s, where, anchors) for _, s in secs)
        files[guide / page] = f"# {title}\n\n{body}"
    toc = "\n".join(page.removesuffix(".md") for page in pages)
    files[guide / "index.md"] = (
        "# User guide\n\nHow to use emcore, section by section; every Python example "
        "on these pages runs in the tests (tests/test_readme.py) as written.\n\n"
        f"```{{toctree}}\n:maxdepth: 2\n\n{toc}\n```\n")

    contents = ["## Contents", "", "The user guide, in `docs/guide/` (and on the "
                "docs site, `bash ci/docs.sh`):", ""]
    for page, (title, secs) in pages.items():
        # a page's sections, or for a page of one section, its subsections
        subs = [h for h, _ in secs] if len(secs) > 1 else _headings(secs[0][1])[1:]
        contents.append(f"- [{title}](docs/guide/{page})" + (": " + ", ".join(subs)
                                                               if subs else ""))
    contents += ["", "The mathematics the code cites is in [docs/](docs/README.md).", ""]
    kept_text = "\n".join(_rewrite_links(s, "README.md", anchors) for _, s in kept)
    new_readme = (head.rstrip("\n") + "\n\n" + SPLIT_MARKER + "\n\n"
                  + "\n".join(contents) + ("\n" + kept_text if kept_text else ""))
    files[readme_path] = new_readme.rstrip("\n") + "\n"

    index_path = root / "docs" / "index.md"
    index = index_path.read_text(encoding="utf-8")
    if "guide/index" not in index:
        if GUIDE_TOCTREE_MARKER not in index:
            raise SplitError(f"docs/index.md has no {GUIDE_TOCTREE_MARKER!r} line to "
                             "put guide/index under")
        # after the toctree's options (the marker and the blank line that follows)
        index = index.replace(GUIDE_TOCTREE_MARKER + "\n\n",
                              GUIDE_TOCTREE_MARKER + "\n\nguide/index\n", 1)
        files[index_path] = index
    docs_readme = root / "docs" / "README.md"
    text = docs_readme.read_text(encoding="utf-8")
    if DOCS_README_LINK in text:
        files[docs_readme] = text.replace(DOCS_README_LINK, "[guide](guide/index.md)")

    guide.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path.relative_to(root)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="print which section goes where; write nothing")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository (default: the one this script is in)")
    args = parser.parse_args(argv)
    try:
        return split(args.root.resolve(), dry_run=args.dry_run)
    except SplitError as exc:
        print(f"ci/split_readme.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

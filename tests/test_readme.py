"""Every ```python block of README.md and of the docs' pages (the user guide,
docs/guide/*.md, once ci/split_readme.py has moved the README's manual there, and any
other docs/ page with Python examples) runs as written, and prints what the page shows.

How the blocks are run:

* The blocks of one ``## `` section of a page share one namespace and run in the
  order they appear, as a reader who types a section's examples into one session would (the
  "Using it" section loads ``X`` once, and later blocks use it). Each section starts
  from a fresh namespace; no block relies on another section.
  Blocks above a page's first ``## `` share the page's own namespace.
* Each block is its own test, named after its page and line. A test first runs
  the earlier blocks of its section that have not run yet (so ``-k`` can select
  one block), then its own block.
* Output: a ```python block followed directly by a fence without a language (only
  blank lines between) shows what the block prints; the test compares the printed
  text with it line by line (trailing spaces ignored). A block with no such output
  fence must print nothing. The README prints floating-point numbers rounded to
  the digits that do not depend on the order of the sums, so an exact comparison
  is fair on every platform.
* A warning of emcore's own (emcore.exceptions: a fit that did not converge, a
  chain that broke) is an error: the README's examples must not show a fit that
  warns.
* Files the blocks write (the memmap, HDF5 and zarr examples) go to a temporary
  working directory.
* A block that imports an optional package (dask, distributed, h5py, zarr) or uses
  the example plugin (``emcore_poisson``, ``family="example_poisson"``) or a
  progress bar (``progress=True``: tqdm) is skipped when that
  is not installed, except under ``EMCORE_TEST_INSTALLED`` (CI installs them all):
  there it must run. Blocks that follow a skipped one must not depend on it.

Skipped as a whole when README.md is not next to the tests (an installed suite).
The pages are found by ``_documents``: README.md, then every docs/**/*.md but the
build's output (docs/_build, the gallery's generated pages); the gallery's own
examples (docs/gallery/*.py) run in the docs build (ci/docs.sh).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import emcore.exceptions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: folders of docs/ that hold generated pages, not sources
_GENERATED = {"_build", "auto_examples"}

#: what a block needs besides emcore's own dependencies: text in the block -> module
_USES_PLUGIN = {'family="example_poisson"': "emcore_poisson", "progress=True": "tqdm"}
_OPTIONAL = {"dask", "distributed", "h5py", "zarr", "emcore_poisson", "matplotlib", "tqdm"}


@dataclass(frozen=True)
class Block:
    index: int              # 1-based among the python blocks of all pages
    line: int               # line of the opening fence
    section: str            # the "## " heading it is under
    code: str
    output: Optional[str]   # the output fence that follows it, if any
    page: str = "README.md"  # the file, from the repository root

    @property
    def scope(self) -> tuple[str, str]:
        """The blocks of one scope share a namespace."""
        return (self.page, self.section)

    @property
    def where(self) -> str:
        return f"{self.page} line {self.line}"


def _documents() -> list[Path]:
    """README.md, then the docs pages (sorted), if they are next to the tests."""
    if not README.is_file():
        return []
    docs = ROOT / "docs"
    pages = sorted(p for p in docs.rglob("*.md")
                   if not _GENERATED.intersection(p.relative_to(docs).parts))
    return [README, *pages]


def _all_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in _documents():
        page = path.relative_to(ROOT).as_posix()
        for b in _blocks(path.read_text(encoding="utf-8"), page):
            blocks.append(Block(len(blocks) + 1, b.line, b.section, b.code, b.output, page))
    return blocks


def _blocks(text: str, page: str = "README.md") -> list[Block]:
    lines = text.split("\n")
    fences = []             # (line number, language, body)
    section, i = "", 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            assert j < len(lines), f"{page}: the fence opened at line {i + 1} never closes"
            fences.append((i + 1, m.group(1), "\n".join(lines[i + 1:j]), section, j + 1))
            i = j + 1
        else:
            i += 1
    blocks = []
    for n, (line, lang, body, sec, end) in enumerate(fences):
        if lang != "python":
            continue
        output = None
        if n + 1 < len(fences):
            nline, nlang, nbody, _, _ = fences[n + 1]
            between = lines[end:nline - 1]
            if nlang == "" and all(not s.strip() for s in between):
                output = nbody
        blocks.append(Block(len(blocks) + 1, line, sec, body + "\n", output, page))
    return blocks


_EMCORE_WARNINGS = [c for c in vars(emcore.exceptions).values()
                    if isinstance(c, type) and issubclass(c, Warning)]
_BLOCKS = _all_blocks()


def _requirements(block: Block) -> set[str]:
    needed = set()
    for node in ast.walk(ast.parse(block.code)):
        if isinstance(node, ast.Import):
            needed |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            needed.add(node.module.split(".")[0])
    needed |= {mod for text, mod in _USES_PLUGIN.items() if text in block.code}
    return needed & _OPTIONAL


class _Session:
    """Runs the blocks section by section, each section in its own namespace."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.namespaces: dict[tuple[str, str], dict] = {}
        self.done: dict[int, str] = {}      # block index -> "ok", "skipped: ...", "failed"

    def run(self, block: Block) -> None:
        for earlier in _BLOCKS:
            if earlier.index >= block.index:
                break
            if earlier.scope != block.scope:
                continue
            if earlier.index not in self.done:
                try:
                    self._run(earlier)
                except pytest.skip.Exception:
                    pass                    # recorded as skipped: later blocks go on
                except (Exception, pytest.fail.Exception):
                    pass                    # recorded as failed: reported just below
            if self.done[earlier.index] == "failed":
                pytest.fail(f"the block at {earlier.where} of the same section failed, "
                            f"so this one cannot run")
        self._run(block)

    def _run(self, block: Block) -> None:
        missing = sorted(m for m in _requirements(block)
                         if importlib.util.find_spec(m) is None)
        if missing:
            if os.environ.get("EMCORE_TEST_INSTALLED"):
                self.done[block.index] = "failed"
                pytest.fail(f"EMCORE_TEST_INSTALLED is set but {missing} is not installed")
            self.done[block.index] = "skipped"
            pytest.skip(f"needs {', '.join(missing)}")
        ns = self.namespaces.setdefault(block.scope, {"__name__": "readme"})
        printed = io.StringIO()
        self.done[block.index] = "failed"
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(printed), warnings.catch_warnings():
                for category in _EMCORE_WARNINGS:
                    warnings.filterwarnings("error", category=category)
                exec(compile(block.code, f"{block.page}, line {block.line}", "exec"), ns)
        finally:
            os.chdir(cwd)
        got = [s.rstrip() for s in printed.getvalue().rstrip("\n").split("\n")]
        want = [s.rstrip() for s in (block.output or "").split("\n")]
        assert got == want, (
            f"the block at {block.where} printed\n"
            + "\n".join(got) + f"\nbut {block.page} shows\n" + "\n".join(want))
        self.done[block.index] = "ok"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return _Session(tmp_path_factory.mktemp("readme"))


def test_readme_has_python_blocks():
    # README.md and the guide together: before ci/split_readme.py the examples are
    # in the README, after it in docs/guide/ (either way, all of them run here)
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (an installed test suite)")
    assert len(_BLOCKS) >= 10, "README.md and docs/: expected their ```python examples"
    assert any(b.output is not None for b in _BLOCKS), "no block shows its output"


@pytest.mark.parametrize("block", _BLOCKS, ids=[f"{b.page}-line{b.line}"
                                                 for b in _BLOCKS])
def test_readme_block(block, session):
    session.run(block)


# --- ci/split_readme.py: the README's manual moved to docs/guide/ keeps every example

SPLIT_SCRIPT = ROOT / "ci" / "split_readme.py"


def _split_readme():
    if not SPLIT_SCRIPT.is_file():
        pytest.skip("ci/split_readme.py is not next to the tests (an installed test suite)")
    spec = importlib.util.spec_from_file_location("split_readme", SPLIT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scratch_repository(tmp_path: Path, readme: str) -> Path:
    """A repository with the files the split reads and writes."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    for name in ("index.md", "README.md"):
        (tmp_path / "docs" / name).write_text(
            (ROOT / "docs" / name).read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def _examples(root: Path) -> list[tuple[str, str, Optional[str]]]:
    pages = [root / "README.md", *sorted((root / "docs" / "guide").glob("*.md"))]
    return sorted((b.section, b.code, b.output) for p in pages
                  for b in _blocks(p.read_text(encoding="utf-8"), p.name))


def test_split_readme_moves_every_example_and_is_idempotent(tmp_path):
    split = _split_readme()
    readme = README.read_text(encoding="utf-8")
    if split.SPLIT_MARKER in readme:
        pytest.skip("README.md is already split")
    root = _scratch_repository(tmp_path, readme)
    before = _examples(root)
    assert split.main(["--root", str(root)]) == 0
    # every block, with its output, in a section of the same name (its namespace)
    assert _examples(root) == before
    new = (root / "README.md").read_text(encoding="utf-8")
    assert new.startswith(readme[:readme.index("\n## ")])     # the first screen stays
    assert not [b for b in _blocks(new) if b.section not in split.KEEP]
    assert "guide/index" in (root / "docs" / "index.md").read_text(encoding="utf-8")
    files = {p: p.read_bytes() for p in root.rglob("*.md")}
    assert split.main(["--root", str(root)]) == 0            # a second run changes nothing
    assert {p: p.read_bytes() for p in root.rglob("*.md")} == files


def test_split_readme_rewrites_links_and_catches_unknown_sections(tmp_path):
    split = _split_readme()
    root = _scratch_repository(tmp_path, (
        "# emcore\n\nWhat it is.\n\n## Using it\n\nSee [the summary](#summary), "
        "[the chain](docs/elbo_chain.md#check-b) and [benchmarks](benchmarks/README.md).\n\n"
        "## Summary\n\nBack to [using](#using-it).\n\n## Something new\n\nText.\n"))
    assert split.main(["--root", str(root)]) == 0
    guide = root / "docs" / "guide"
    using = (guide / "using.md").read_text(encoding="utf-8")
    assert "[the summary](results.md#summary)" in using
    assert "[the chain](../elbo_chain.md#check-b)" in using
    assert f"[benchmarks]({split.REPOSITORY_URL}benchmarks/README.md)" in using
    assert "[using](using.md#using-it)" in (guide / "results.md").read_text(encoding="utf-8")
    catch_all = (guide / split.CATCH_ALL[0]).read_text(encoding="utf-8")
    assert "## Something new" in catch_all


def test_split_readme_refuses_a_readme_it_does_not_know(tmp_path):
    split = _split_readme()
    root = _scratch_repository(tmp_path, "# other\n\n## Foo\n\nbar\n")
    assert split.main(["--root", str(root)]) == 1
    assert not (root / "docs" / "guide").exists()
    assert (root / "README.md").read_text(encoding="utf-8") == "# other\n\n## Foo\n\nbar\n"

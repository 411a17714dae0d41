"""Every ```python block of README.md runs as written, and prints what the README shows.

How the blocks are run:

* The blocks of one ``## `` section share one namespace and run in the order they
  appear, as a reader who types a section's examples into one session would (the
  "Using it" section loads ``X`` once, and later blocks use it). Each section starts
  from a fresh namespace; no block relies on another section.
* Each block is its own test. A test first runs the earlier blocks of its section
  that have not run yet (so ``-k`` can select one block), then its own block.
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

README = Path(__file__).resolve().parent.parent / "README.md"

#: what a block needs besides emcore's own dependencies: text in the block -> module
_USES_PLUGIN = {'family="example_poisson"': "emcore_poisson", "progress=True": "tqdm"}
_OPTIONAL = {"dask", "distributed", "h5py", "zarr", "emcore_poisson", "matplotlib", "tqdm"}


@dataclass(frozen=True)
class Block:
    index: int              # 1-based among the python blocks
    line: int               # line of the opening fence
    section: str            # the "## " heading it is under
    code: str
    output: Optional[str]   # the output fence that follows it, if any


def _blocks(text: str) -> list[Block]:
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
            assert j < len(lines), f"README.md: the fence opened at line {i + 1} never closes"
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
        blocks.append(Block(len(blocks) + 1, line, sec, body + "\n", output))
    return blocks


_EMCORE_WARNINGS = [c for c in vars(emcore.exceptions).values()
                    if isinstance(c, type) and issubclass(c, Warning)]
_BLOCKS = _blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


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
        self.namespaces: dict[str, dict] = {}
        self.done: dict[int, str] = {}      # block index -> "ok", "skipped: ...", "failed"

    def run(self, block: Block) -> None:
        for earlier in _BLOCKS:
            if earlier.index >= block.index:
                break
            if earlier.section != block.section:
                continue
            if earlier.index not in self.done:
                try:
                    self._run(earlier)
                except pytest.skip.Exception:
                    pass                    # recorded as skipped: later blocks go on
                except (Exception, pytest.fail.Exception):
                    pass                    # recorded as failed: reported just below
            if self.done[earlier.index] == "failed":
                pytest.fail(f"block {earlier.index} (README.md line {earlier.line}) of the "
                            f"same section failed, so this one cannot run")
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
        ns = self.namespaces.setdefault(block.section, {"__name__": "readme"})
        printed = io.StringIO()
        self.done[block.index] = "failed"
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(printed), warnings.catch_warnings():
                for category in _EMCORE_WARNINGS:
                    warnings.filterwarnings("error", category=category)
                exec(compile(block.code, f"README.md, block {block.index} (line "
                             f"{block.line})", "exec"), ns)
        finally:
            os.chdir(cwd)
        got = [s.rstrip() for s in printed.getvalue().rstrip("\n").split("\n")]
        want = [s.rstrip() for s in (block.output or "").split("\n")]
        assert got == want, (
            f"README.md block {block.index} (line {block.line}) printed\n"
            + "\n".join(got) + "\nbut the README shows\n" + "\n".join(want))
        self.done[block.index] = "ok"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return _Session(tmp_path_factory.mktemp("readme"))


def test_readme_has_python_blocks():
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (an installed test suite)")
    assert len(_BLOCKS) >= 10, "README.md: expected its ```python examples"
    assert any(b.output is not None for b in _BLOCKS), "no block shows its output"


@pytest.mark.parametrize("block", _BLOCKS, ids=[f"block{b.index}-line{b.line}"
                                                 for b in _BLOCKS])
def test_readme_block(block, session):
    session.run(block)

"""The README's "Writing a family" section documents every hook with its signature,
every method a family implements, and every conformance check."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from emcore import hookspecs
from emcore.plugin_api import Family
from emcore.testing import FAMILY_CHECKS, SUPPORT_CAPABILITIES

README = Path(__file__).resolve().parent.parent / "README.md"
TITLE = "## Writing a family"


def _manual() -> str:
    """README.md, then the user guide's pages (where ci/split_readme.py moves the
    README's sections, headings unchanged)."""
    guide = sorted((README.parent / "docs" / "guide").glob("*.md"))
    return "\n".join(p.read_text(encoding="utf-8") for p in [README, *guide])


@pytest.fixture(scope="module")
def section() -> str:
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (an installed test suite)")
    text = _manual()
    assert TITLE in text, f"README.md has no {TITLE!r} section"
    body = text.split(TITLE, 1)[1]
    return body.split("\n## ", 1)[0]


def _hookspecs() -> dict:
    """{name: function} of every hook specification in emcore/hookspecs.py."""
    specs = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(fn, "emcore_spec", None) is not None}
    assert specs, "no hook specifications found"
    return specs


def _signature(fn) -> str:
    """``name(params) -> Return`` with the annotations' quotes removed, as written
    in the README (``emcore_register_families() -> Sequence[FamilyRecord]``)."""
    sig = inspect.signature(fn)
    params = ", ".join(str(p).replace("'", "").replace('"', "")
                       for p in sig.parameters.values())
    text = f"{fn.__name__}({params})"
    if sig.return_annotation is not inspect.Signature.empty:
        ret = sig.return_annotation
        ret = ret if isinstance(ret, str) else inspect.formatannotation(ret)
        text += " -> " + ret.replace("'", "").replace('"', "")
    return text


def test_readme_sections_are_in_order():
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (an installed test suite)")
    heads = re.findall(r"^## (.+)$", _manual(), re.M)
    at = heads.index("Writing a family")
    assert heads[at - 1] == "Plugins" and heads[at + 1] == "How a fit runs"


def test_every_hook_is_documented_with_its_signature(section):
    for name, fn in _hookspecs().items():
        signature = _signature(fn)
        assert f"`{signature}`" in section, (
            f"the README's {TITLE!r} section does not document the hook {signature}")


def test_every_documented_hook_exists(section):
    documented = set(re.findall(r"\b(emcore_[a-z_]+)\(", section))
    assert documented, "no hooks documented"
    assert documented <= set(_hookspecs()), documented - set(_hookspecs())


def test_every_family_method_is_documented(section):
    abstract = set(Family.__abstractmethods__)
    optional = {name for name, member in vars(Family).items()
                if callable(member) and not name.startswith("_") and name not in abstract}
    for name in sorted(abstract | optional):
        assert f"`{name}(" in section, f"Family.{name} is not documented in {TITLE!r}"


def test_every_check_and_support_capability_is_documented(section):
    for name in FAMILY_CHECKS:
        assert f"`{name}`" in section, f"{name} is not documented in {TITLE!r}"
    for capability in SUPPORT_CAPABILITIES:
        assert f"`{capability}`" in section


def test_the_signature_format_is_what_the_readme_uses():
    def emcore_example(a, b: "int" = 1) -> "Sequence['FamilyRecord']":
        """A stand-in hook."""

    assert _signature(emcore_example) == "emcore_example(a, b: int = 1) -> Sequence[FamilyRecord]"

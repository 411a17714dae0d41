"""The release artifacts as users get them: what the wheel and the sdist hold, and
that the emcore under test is the wheel's.

``ci/wheel.sh`` builds the sdist and, from it, the wheel, repairs the wheel with
auditwheel, installs it into a fresh environment with no compiler and runs this
suite there with ``EMCORE_WHEEL`` and ``EMCORE_SDIST`` set to the two files. Without
those variables the artifact tests are skipped; the checkers themselves are always
tested, on small artifacts made here that break each rule.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import importlib
import importlib.metadata
import io
import os
import re
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

import pytest

from emcore._version import DISTRIBUTION

# --- what the artifacts must and must not hold -------------------------------------------

# Compiled modules (dotted name); setup.py's MODULES. The wheel needs each one built.
COMPILED_MODULES = (
    "emcore.blas",
    "emcore.kernel",
    "emcore._core._passes",
    "emcore.plugins._gaussian_kernel",
    "emcore.plugins._posterior_kernels",
)

# Files a user's install needs besides the compiled modules: the public Cython
# interface and C headers (third-party plugins `cimport` and `#include` them from an
# installed emcore), the bundled data, and the first-party plugins under
# emcore.plugins.
WHEEL_REQUIRED = (
    "emcore/__init__.py",
    "emcore/_version.py",
    "emcore/py.typed",
    "emcore/kernel.pxd",
    "emcore/blas.pxd",
    "emcore/moments.pxd",
    "emcore/include/emcore/vec4.h",
    "emcore/include/emcore/vexp.h",
    "emcore/include/emcore/moments.h",
    "emcore/datasets/__init__.py",
    "emcore/datasets/data/old_faithful.csv",
    "emcore/plugins/__init__.py",
    "emcore/plugins/gaussian.py",
    "emcore/plugins/posterior.py",
    "emcore/plugins/constrained.py",
    "emcore/plugins/positive.py",
    "emcore/plugins/student_t.py",
)

# The first-party plugins come through the same entry-point group a third party uses.
ENTRY_POINTS_REQUIRED = {
    "emcore": {"gaussian": "emcore.plugins.gaussian", "soft": "emcore.plugins.posterior",
               "constrained": "emcore.plugins.constrained"},
    "console_scripts": {"emcore": "emcore._cli:main"},
}

# What a build needs from the sdist (paths below its top folder).
SDIST_REQUIRED = (
    "PKG-INFO",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "MANIFEST.in",
    "CHANGELOG.md",
    "LICENSE",
    "emcore/__init__.py",
    "emcore/_version.py",
    "emcore/kernel.pxd",
    "emcore/blas.pxd",
    "emcore/moments.pxd",
    "emcore/kernel.pyx",
    "emcore/blas.pyx",
    "emcore/_core/_passes.pyx",
    "emcore/_core/_rows.h",
    "emcore/_core/_markov.pyx",
    "emcore/_core/_markov.h",
    "emcore/include/emcore/vec4.h",
    "emcore/include/emcore/vexp.h",
    "emcore/include/emcore/moments.h",
    "emcore/datasets/data/old_faithful.csv",
    "plugins/__init__.py",
    "plugins/_gaussian_kernel.pyx",
    "plugins/_posterior_kernels.pyx",
    "plugins/_gaussian_full.h",
    "plugins/_gaussian_diag.h",
    "plugins/_lloyd.h",
    "plugins/_soft_posterior.h",
    "tests/conftest.py",
    "docs/README.md",
    "docs/elbo_chain.md",
)

# Build leftovers and development files: never in either artifact.
LEFTOVER_SUFFIXES = (".c", ".cpp", ".o", ".obj", ".a", ".lib", ".html", ".pyc", ".pyo")
LEFTOVER_DIRS = {"__pycache__", ".git", ".hypothesis", ".pytest_cache", "build", "dist",
                 ".venv", ".venv-test", ".venv-wheel", ".venv-release"}
# ... and in the wheel, nothing of the repository but the package (a top-level
# `plugins` or anything else outside emcore/ is refused in wheel_problems).
WHEEL_FORBIDDEN_DIRS = {"tests", "benchmarks", "ci", ".ci"}

_EXTENSION = re.compile(r"\.(?:[^./]+\.)?(?:so|pyd)$")   # _passes.cpython-311-x86_64-linux-gnu.so


def _leftovers(names) -> list[str]:
    problems = []
    for name in names:
        if name.endswith(LEFTOVER_SUFFIXES):
            problems.append(f"build leftover {name}")
        elif LEFTOVER_DIRS.intersection(PurePosixPath(name).parts):
            problems.append(f"build or development folder in {name}")
    return problems


def _extension_of(names, module: str) -> list[str]:
    stem = module.replace(".", "/")
    return [n for n in names if n.startswith(stem + ".") and _EXTENSION.search(n)
            and "/" not in n[len(stem):]]


def _version_in(source: str) -> str | None:
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source, re.M)
    return match.group(1) if match else None


def wheel_problems(path) -> list[str]:
    """Every way the wheel at ``path`` falls short; empty when it is fit to ship."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        read = lambda n: zf.read(n).decode("utf-8")   # noqa: E731
        filename = Path(path).name
        fn_version = filename.split("-")[1] if filename.count("-") >= 4 else None
        problems = []

        dist_infos = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        if len(dist_infos) != 1:
            return [f"expected one .dist-info folder, found {sorted(dist_infos)}"]
        dist_info = dist_infos.pop()

        # Only the package, its vendored libraries (auditwheel/delvewheel) and metadata.
        allowed_top = {"emcore", "emcore_learn.libs", "emcore.libs", dist_info}
        for top in sorted({n.split("/")[0] for n in names} - allowed_top):
            problems.append(f"unexpected top-level entry {top!r} (only the emcore package "
                            "belongs in the wheel: no tests, benchmarks, ci or a flat "
                            "`plugins` package)")
        for name in names:
            folders = PurePosixPath(name).parts[:-1]
            if WHEEL_FORBIDDEN_DIRS.intersection(folders):
                problems.append(f"repository folder inside the wheel: {name}")
            elif any(f.endswith(".egg-info") for f in folders):
                problems.append(f"build leftover {name}")
        problems += _leftovers(names)

        for name in WHEEL_REQUIRED:
            if name not in names:
                problems.append(f"missing {name}")
        for module in COMPILED_MODULES:
            if len(_extension_of(names, module)) != 1:
                problems.append(f"compiled module {module} missing (or built twice): "
                                f"{_extension_of(names, module)}")
        # Any other shipped Cython source must have been compiled too.
        for name in names:
            if name.endswith(".pyx"):
                module = name[:-len(".pyx")].replace("/", ".")
                if not _extension_of(names, module):
                    problems.append(f"{name} is shipped but {module} was not compiled")

        ep_name = f"{dist_info}/entry_points.txt"
        # the BSD licence requires its text in binary distributions
        if f"{dist_info}/licenses/LICENSE" not in names:
            problems.append(f"missing {dist_info}/licenses/LICENSE")
        if ep_name not in names:
            problems.append(f"missing {ep_name}")
        else:
            eps = configparser.ConfigParser(delimiters=("=",))
            eps.optionxform = str
            eps.read_string(read(ep_name))
            for group, required in ENTRY_POINTS_REQUIRED.items():
                have = dict(eps[group]) if eps.has_section(group) else {}
                for key, value in required.items():
                    if have.get(key, "").replace(" ", "") != value:
                        problems.append(f"entry point [{group}] {key} = {value} missing "
                                        f"(found {have.get(key)!r})")
            for key, value in (dict(eps["emcore"]) if eps.has_section("emcore") else {}).items():
                module = value.split(":")[0].strip()
                stem = module.replace(".", "/")
                if f"{stem}.py" not in names and f"{stem}/__init__.py" not in names:
                    problems.append(f"entry point emcore.{key} -> {module}, which the wheel "
                                    "does not contain")

        meta_name = f"{dist_info}/METADATA"
        if meta_name in names:
            meta = HeaderParser().parsestr(read(meta_name))
            requires = {re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].lower()
                        for r in meta.get_all("Requires-Dist") or []}
            # The compiled core needs both at import time (scipy for its BLAS).
            for dep in ("numpy", "scipy"):
                if dep not in requires:
                    problems.append(f"Requires-Dist lacks {dep}")
            versions = {"file name": fn_version, "METADATA": meta["Version"],
                        "emcore/_version.py": _version_in(read("emcore/_version.py"))
                        if "emcore/_version.py" in names else None}
            if len(set(versions.values())) != 1:
                problems.append(f"versions disagree: {versions}")
        else:
            problems.append(f"missing {meta_name}")
        return problems


def sdist_problems(path) -> list[str]:
    """Every way the sdist at ``path`` falls short; empty when it is fit to ship."""
    with tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        tops = {m.name.split("/")[0] for m in members}
        if len(tops) != 1:
            return [f"expected one top folder, found {sorted(tops)}"]
        top = tops.pop()
        names = [m.name[len(top) + 1:] for m in members]
        problems = []
        for name in SDIST_REQUIRED:
            if name not in names:
                problems.append(f"missing {name}")
        for name in names:
            if _EXTENSION.search(name):
                problems.append(f"compiled module in the sdist: {name}")
        problems += _leftovers(names)

        read = lambda n: tf.extractfile(f"{top}/{n}").read().decode("utf-8")   # noqa: E731
        versions = {"folder": top.partition("-")[2] or None,
                    "PKG-INFO": HeaderParser().parsestr(read("PKG-INFO"))["Version"]
                    if "PKG-INFO" in names else None,
                    "emcore/_version.py": _version_in(read("emcore/_version.py"))
                    if "emcore/_version.py" in names else None}
        if len(set(versions.values())) != 1:
            problems.append(f"versions disagree: {versions}")
        return problems


# --- the real artifacts (ci/wheel.sh) ------------------------------------------------------

def _artifact(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is not set; ci/wheel.sh sets it to the built file")
    assert os.path.isfile(path), f"{var}={path} is not a file"
    return path


def test_wheel_holds_what_users_need_and_nothing_else():
    problems = wheel_problems(_artifact("EMCORE_WHEEL"))
    assert not problems, "the wheel is not fit to ship:\n" + "\n".join(problems)


def test_sdist_holds_what_a_build_needs_and_no_generated_code():
    problems = sdist_problems(_artifact("EMCORE_SDIST"))
    assert not problems, "the sdist is not fit to ship:\n" + "\n".join(problems)


def test_every_cython_source_in_the_sdist_is_compiled_in_the_wheel():
    wheel, sdist = _artifact("EMCORE_WHEEL"), _artifact("EMCORE_SDIST")
    with tarfile.open(sdist) as tf:
        pyx = [m.name.split("/", 1)[1] for m in tf.getmembers() if m.name.endswith(".pyx")]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert pyx
    for source in pyx:
        # The repository's plugins/ is installed as emcore.plugins.
        module = re.sub(r"^plugins/", "emcore/plugins/", source)[:-len(".pyx")].replace("/", ".")
        assert _extension_of(names, module), f"{source}: no compiled {module} in the wheel"


def test_the_emcore_under_test_is_the_wheel():
    """Every file the wheel installs is, byte for byte, the one imported here."""
    wheel = _artifact("EMCORE_WHEEL")
    import emcore
    dist = importlib.metadata.distribution(DISTRIBUTION)
    package_dir = Path(emcore.__file__).parent
    assert Path(dist.locate_file("emcore/__init__.py")).resolve() == \
        (package_dir / "__init__.py").resolve()
    with zipfile.ZipFile(wheel) as zf:
        record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode("utf-8"))))
    checked = 0
    for name, digest, _size in rows:
        if not digest or ".dist-info/" in name:
            continue
        algorithm, _, expected = digest.partition("=")
        data = Path(dist.locate_file(name)).read_bytes()
        actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=")
        assert actual.decode() == expected, f"installed {name} is not the wheel's"
        checked += 1
    assert checked > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_compiled_modules_load_the_libraries_vendored_in_the_wheel():
    """After auditwheel repair, the extensions use the wheel's own copies (libgomp),
    not the build machine's."""
    _artifact("EMCORE_WHEEL")
    import emcore
    libs = Path(emcore.__file__).resolve().parent.parent / "emcore.libs"
    vendored = sorted(libs.iterdir()) if libs.is_dir() else []
    if not vendored:
        pytest.skip("this wheel vendors no libraries (not repaired, or nothing to vendor)")
    for module in COMPILED_MODULES:
        importlib.import_module(module)
    maps = Path("/proc/self/maps").read_text()
    for lib in vendored:
        assert str(lib) in maps, f"{lib.name} is vendored but not the copy in use"


# --- the checkers can fail ------------------------------------------------------------------

def _good_wheel_members(version="1.2.3"):
    members = {name: "" for name in WHEEL_REQUIRED}
    members["emcore/_version.py"] = f'__version__ = "{version}"\n'
    for module in COMPILED_MODULES:
        stem = module.replace(".", "/")
        members[f"{stem}.cpython-311-x86_64-linux-gnu.so"] = "ELF"
        members[f"{stem}.pyx"] = "# cython"
    members["emcore.libs/libgomp-0123abcd.so.1.0.0"] = "ELF"
    di = f"emcore-{version}.dist-info"
    members[f"{di}/METADATA"] = (f"Metadata-Version: 2.4\nName: emcore\nVersion: {version}\n"
                                 "Requires-Dist: numpy>=1.25\nRequires-Dist: scipy>=1.11\n")
    members[f"{di}/entry_points.txt"] = (
        "[console_scripts]\nemcore = emcore._cli:main\n\n"
        "[emcore]\ngaussian = emcore.plugins.gaussian\nsoft = emcore.plugins.posterior\n"
        "constrained = emcore.plugins.constrained\n")
    members[f"{di}/RECORD"] = ""
    members[f"{di}/licenses/LICENSE"] = "BSD"
    return members


def _zip(tmp_path, members, name="emcore-1.2.3-cp311-cp311-manylinux_2_28_x86_64.whl"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in members.items():
            zf.writestr(member, text)
    return path


def _tar(tmp_path, members, top="emcore-1.2.3"):
    path = tmp_path / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for member, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _good_sdist_members(version="1.2.3"):
    members = {name: "" for name in SDIST_REQUIRED}
    members["PKG-INFO"] = f"Metadata-Version: 2.4\nName: emcore\nVersion: {version}\n"
    members["emcore/_version.py"] = f'__version__ = "{version}"\n'
    return members


def test_wheel_checker_accepts_a_complete_wheel(tmp_path):
    assert wheel_problems(_zip(tmp_path, _good_wheel_members())) == []


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("emcore/kernel.pxd"), "missing emcore/kernel.pxd"),
    (lambda m: m.pop("emcore/blas.pxd"), "missing emcore/blas.pxd"),
    (lambda m: m.pop("emcore/datasets/data/old_faithful.csv"), "old_faithful.csv"),
    (lambda m: m.pop("emcore/_core/_passes.cpython-311-x86_64-linux-gnu.so"),
     "emcore._core._passes missing"),
    (lambda m: m.pop("emcore/plugins/_gaussian_kernel.cpython-311-x86_64-linux-gnu.so"),
     "emcore.plugins._gaussian_kernel missing"),
    (lambda m: m.update({"emcore/extra.pyx": ""}), "emcore.extra was not compiled"),
    (lambda m: m.update({"plugins/__init__.py": ""}), "'plugins'"),
    (lambda m: m.update({"tests/test_chain.py": ""}), "'tests'"),
    (lambda m: m.update({"benchmarks/bench.py": ""}), "'benchmarks'"),
    (lambda m: m.update({"ci/test.sh": ""}), "'ci'"),
    (lambda m: m.update({"build/lib/emcore/blas.so": ""}), "'build'"),
    (lambda m: m.update({"emcore/tests/test_x.py": ""}), "repository folder"),
    (lambda m: m.update({"emcore/blas.c": ""}), "build leftover emcore/blas.c"),
    (lambda m: m.update({"emcore/__pycache__/engine.cpython-311.pyc": ""}), "leftover"),
    (lambda m: m.update({"emcore/emcore.egg-info/PKG-INFO": ""}), "build leftover"),
    (lambda m: m.update({"emcore-1.2.3.dist-info/entry_points.txt":
                         "[console_scripts]\nemcore = emcore._cli:main\n"}),
     "[emcore] gaussian"),
    (lambda m: m.update({"emcore-1.2.3.dist-info/METADATA":
                         "Name: emcore\nVersion: 1.2.3\nRequires-Dist: numpy\n"}),
     "Requires-Dist lacks scipy"),
    (lambda m: m.update({"emcore/_version.py": '__version__ = "9.9"\n'}), "versions disagree"),
    (lambda m: m.pop("emcore-1.2.3.dist-info/licenses/LICENSE"), "licenses/LICENSE"),
])
def test_wheel_checker_rejects(tmp_path, change, expected):
    members = _good_wheel_members()
    change(members)
    problems = wheel_problems(_zip(tmp_path, members))
    assert any(expected in p for p in problems), problems


def test_sdist_checker_accepts_a_complete_sdist(tmp_path):
    assert sdist_problems(_tar(tmp_path, _good_sdist_members())) == []


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("emcore/kernel.pxd"), "missing emcore/kernel.pxd"),
    (lambda m: m.pop("plugins/_gaussian_kernel.pyx"), "missing plugins/_gaussian_kernel.pyx"),
    (lambda m: m.pop("setup.py"), "missing setup.py"),
    (lambda m: m.pop("emcore/datasets/data/old_faithful.csv"), "old_faithful.csv"),
    (lambda m: m.update({"emcore/kernel.c": ""}), "build leftover emcore/kernel.c"),
    (lambda m: m.update({"emcore/kernel.cpython-311-x86_64-linux-gnu.so": ""}),
     "compiled module in the sdist"),
    (lambda m: m.update({"build/temp/x.o": ""}), "leftover"),
    (lambda m: m.update({"PKG-INFO": "Name: emcore\nVersion: 2.0\n"}), "versions disagree"),
])
def test_sdist_checker_rejects(tmp_path, change, expected):
    members = _good_sdist_members()
    change(members)
    problems = sdist_problems(_tar(tmp_path, members))
    assert any(expected in p for p in problems), problems

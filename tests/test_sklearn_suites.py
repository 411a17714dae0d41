"""ci/sklearn_suites.py: scikit-learn's own GaussianMixture and KMeans test files
against emcore. The run itself (a few minutes) is a CI step of its own (.ci/run);
these tests check the runner's pieces: the import swap on the installed files and
the one list of expected failures."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ci" / "sklearn_suites.py"


@pytest.fixture(scope="module")
def suites():
    if not SCRIPT.is_file():
        pytest.skip("ci/sklearn_suites.py is not next to the tests (an installed suite)")
    spec = importlib.util.spec_from_file_location("sklearn_suites", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_copies_test_emcores_estimators(suites, tmp_path):
    root = suites._sklearn_root(sys.executable)
    if not all((root / rel).is_file() for rel in suites.SUITES):
        pytest.skip("scikit-learn is installed without its tests")
    for path in suites._copy_suites(root, tmp_path):
        text = path.read_text(encoding="utf-8")
        imported = re.findall(r"^from (\S+) import (.*)$", text, flags=re.M)
        for name in ("GaussianMixture", "KMeans"):
            sources = {module for module, names in imported
                       if name in [n.strip() for n in names.split(",")]}
            assert sources <= {"emcore"}, (path.name, name, sources)


def test_every_known_failure_says_why(suites):
    assert suites.KNOWN
    for pattern, why in suites.KNOWN.items():
        re.compile(pattern)
        assert len(why) > 20, pattern


def test_a_failure_outside_the_list_is_not_explained(suites):
    assert suites.known_reason("test_k_means.py::test_a_new_test[42]") is None
    assert suites.known_reason(
        "test_k_means.py::test_kmeans_elkan_results[42-0-dense-blobs]") is not None

"""``mypy --strict`` on the plugin contract (emcore/plugin_api.py, emcore/hookspecs.py):
the typed surface a third-party family is written against. Skips without mypy (it
comes with the test extra) or outside the source tree."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["emcore/plugin_api.py", "emcore/hookspecs.py"]


@pytest.mark.slow       # ~10 s: mypy's cold start, with its cache in a temporary folder
def test_the_plugin_contract_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    if not all((ROOT / f).exists() for f in FILES):
        pytest.skip("not run from the source tree")
    # --follow-imports=silent: the two files are checked strictly, the modules they
    # import are read for their types without being checked themselves
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict",
                           "--follow-imports=silent", "--cache-dir", str(tmp_path),
                           *FILES], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

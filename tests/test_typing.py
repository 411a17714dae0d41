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


# --- the estimators' public signatures (issue 21 item 7) ------------------------------

def _estimators() -> list:
    import inspect
    import emcore
    return [getattr(emcore, name) for name in emcore.__all__
            if inspect.isclass(getattr(emcore, name))
            and hasattr(getattr(emcore, name), "fit")]


def test_every_public_method_of_every_estimator_is_annotated():
    # mypy --strict on a caller (below) rejects a call to an unannotated function;
    # this names every such method at once, without mypy
    import inspect
    missing = []
    for cls in _estimators():
        for name, method in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") and name != "__init__":
                continue
            sig = inspect.signature(method)
            params = [p for p, v in sig.parameters.items()
                      if p != "self" and v.annotation is inspect.Parameter.empty]
            if params or (name != "__init__"
                          and sig.return_annotation is inspect.Signature.empty):
                missing.append(f"{cls.__name__}.{name}: {params or 'return'}")
    assert not missing, missing


_CALLER = '''\
"""A user's typed script: mypy --strict checks it against emcore's signatures."""
import numpy as np
from numpy.typing import NDArray

import emcore

X: NDArray[np.float64] = np.zeros((20, 2))
gm: emcore.GaussianMixture = emcore.GaussianMixture(2, covariance_type="diag",
                                                    random_state=0).fit(X)
labels = gm.predict(X)
proba = gm.predict_proba(X)
score: float = gm.score(X)
bic: float = gm.bic(X)
samples = gm.sample(5)
km: emcore.KMeans = emcore.KMeans(2, random_state=0).fit(X)
distances = km.transform(X)
mm: emcore.MixtureModel = emcore.MixtureModel(2, random_state=0).fit(X)
vb = emcore.BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
hmm = emcore.HiddenMarkovModel(2, random_state=0).fit(X)
print(labels, proba, score, bic, samples, distances, mm.summary(X), vb, hmm,
      km.summary(X), gm.summary(X))
'''


@pytest.mark.slow       # ~15 s: mypy reads numpy's and emcore's stubs cold
def test_a_typed_caller_of_the_estimators_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    if not (ROOT / "emcore" / "__init__.py").exists():
        pytest.skip("not run from the source tree")
    caller = tmp_path / "caller.py"
    caller.write_text(_CALLER, encoding="utf-8")
    # the caller is checked strictly (an unannotated estimator method is an error
    # there: no-untyped-call); emcore's modules are read for their types only
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict",
                           "--follow-imports=silent", "--cache-dir",
                           str(tmp_path / "cache"), str(caller)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

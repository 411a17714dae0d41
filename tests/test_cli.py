"""The ``emcore`` command (demo, plugins, --version) and the bundled Old Faithful data."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emcore
from emcore import _cli
from emcore import registry as registry_mod
from emcore.datasets import OLD_FAITHFUL_COLUMNS, load_old_faithful

from _commands import emcore_command


def _run(args, tmp_path):
    # cwd=tmp_path: never import the uncompiled source folder from the repository root.
    return subprocess.run(emcore_command() + list(args), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


# --- the bundled data -----------------------------------------------------------------

def test_load_old_faithful_is_the_published_data():
    X = load_old_faithful()
    assert X.shape == (272, 2)
    assert X.dtype == np.float64
    assert X.flags.c_contiguous
    assert np.isfinite(X).all()
    assert OLD_FAITHFUL_COLUMNS == ("eruptions", "waiting")
    # R: summary(faithful) / colMeans(faithful)
    np.testing.assert_allclose(X.mean(axis=0), [3.487783, 70.897059], atol=1e-6)
    np.testing.assert_array_equal(X.min(axis=0), [1.6, 43.0])
    np.testing.assert_array_equal(X.max(axis=0), [5.1, 96.0])
    # A fresh array on every call (callers may modify it).
    Y = load_old_faithful()
    assert Y is not X and not np.shares_memory(X, Y)
    np.testing.assert_array_equal(X, Y)


# --- emcore --version ---------------------------------------------------------------

def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"emcore {emcore.__version__}"


def test_version_of_python_dash_m_emcore(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "emcore", "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"emcore {emcore.__version__}"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main([])
    assert exc.value.code == 2
    assert "usage: emcore" in capsys.readouterr().err


# --- emcore plugins -------------------------------------------------------------------

def test_plugins_without_third_party_plugins(capsys, monkeypatch):
    # A fresh registry of the installed entry points (no third-party plugins are
    # installed in the test environment), not whatever another test cached.
    monkeypatch.setattr(registry_mod, "get_registry", registry_mod.load_registry)
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    families, rest = out.split("Posterior rules:")
    rules, broken = rest.split("Broken plugins:")
    assert families.startswith("Families:")
    assert re.search(r"^  gaussian\s+from emcore-learn \(entry point 'gaussian'\)$", families, re.M)
    assert re.search(r"capabilities: compiled_kernel, covariance_type:diag, "
                     r"covariance_type:full, covariance_type:spherical, "
                     r"covariance_type:tied, sampling, support:real", families)
    assert re.search(r"^  soft\s+from emcore-learn \(entry point 'soft'\)$", rules, re.M)
    assert broken.strip() == "(none)"


# --- emcore demo ----------------------------------------------------------------------

def _sklearn_fit():
    """scikit-learn's 2-component full-covariance fit of Old Faithful, tight tol."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = load_old_faithful()
    sk = SkGaussianMixture(n_components=2, covariance_type="full", tol=1e-12,
                           max_iter=10_000, reg_covar=1e-6, random_state=0).fit(X)
    assert sk.converged_
    order = np.argsort(sk.means_[:, 0])
    return sk.score(X) * X.shape[0], sk.weights_[order], sk.means_[order]


def test_demo_audit(tmp_path):
    proc = _run(["demo", "--audit"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lines = out.splitlines()

    # The iteration table: header columns, then one row per iteration, all "ok".
    header_at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("iter"))
    columns = lines[header_at].split()
    assert columns == ["iter", "loglik(theta_t)", "ELBO(q_t,theta_t+1)",
                       "loglik(theta_t+1)", "gap", "change", "chain"]
    assert set(lines[header_at + 1]) == {"-"}
    rows = []
    for line in lines[header_at + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    assert len(rows) >= 2
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    assert all(r[6] == "ok" for r in rows), rows
    loglik = np.array([float(r[1]) for r in rows] + [float(rows[-1][3])])
    elbo = np.array([float(r[2]) for r in rows])
    gap = np.array([float(r[4]) for r in rows])
    assert np.all(np.diff(loglik) >= 0)                    # EM is monotone
    assert np.all(elbo <= loglik[1:] + 1e-9)
    assert np.all(gap >= 0)

    assert "Stopping rule that fired: tol: relative change" in out
    assert "ELBO chain: holds at every iteration" in out

    # The final log-likelihood is the Old Faithful maximum, as scikit-learn finds it.
    sk_loglik, sk_weights, sk_means = _sklearn_fit()
    final = float(re.search(r"Log-likelihood at the fitted parameters: (-?\d+\.\d+)",
                            out).group(1))
    assert final == pytest.approx(loglik[-1], abs=1e-9)
    assert final == pytest.approx(sk_loglik, rel=1e-6)

    # The fitted parameters: weights, means and 2 x 2 covariances per component.
    assert "Fitted parameters" in out
    comps = re.findall(r"component (\d): weight (\S+)\s+mean \((\S+), (\S+)\)", out)
    assert [c[0] for c in comps] == ["0", "1"]
    weights = np.array([float(c[1]) for c in comps])
    means = np.array([[float(c[2]), float(c[3])] for c in comps])
    order = np.argsort(means[:, 0])
    np.testing.assert_allclose(weights[order], sk_weights, atol=2e-4)
    np.testing.assert_allclose(means[order], sk_means, atol=2e-4)
    assert len(re.findall(r"^\s+covariance \[.*,.*\]$", out, re.M)) == 4


def test_demo_prints_the_summary(tmp_path):
    from emcore import GaussianMixture
    from emcore.summary import summarise

    fig = tmp_path / "demo.png"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    command = ["demo", "--plot", str(fig)] if has_matplotlib else ["demo"]
    proc = _run(command, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    X = load_old_faithful()
    gm = GaussianMixture(n_components=2, random_state=0, tol=1e-8).fit(X)
    expected = str(summarise(gm, X, parameters=True, feature_names=OLD_FAITHFUL_COLUMNS))
    assert expected in proc.stdout
    assert "ELBO chain: holds at every iteration" in proc.stdout
    assert "iter" not in proc.stdout.split()          # the audit table only with --audit
    if has_matplotlib:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"Plot written to {fig}" in proc.stdout


@pytest.mark.parametrize("command", [["plugins"], ["demo"], ["demo", "--audit"]])
def test_output_piped_into_a_closed_reader_is_not_an_error(tmp_path, command):
    # `emcore plugins | head -1`: the reader is gone before the output is written
    proc = subprocess.Popen(emcore_command() + command, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, stderr
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr

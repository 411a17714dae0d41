"""The example third-party plugin (examples/emcore-poisson), installed as its own
distribution next to emcore: discovered, listed, fitted by name, right, conformant.

ci/test.sh and ci/wheel.sh install it (``pip install ./examples/emcore-poisson``)
and set EMCORE_TEST_INSTALLED, so there these tests always run; elsewhere they are
skipped when the plugin is not installed.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import re
import subprocess

import numpy as np
import pytest
from scipy.stats import poisson

import emcore
from emcore.registry import get_registry
from emcore.testing import (FAMILY_CHECKS, check_family, summation_depth_for,
                            tolerance_across)

from _commands import emcore_command
from _poisson import DISTRIBUTION, installed

if not installed() and not os.environ.get("EMCORE_TEST_INSTALLED"):
    pytest.skip(f"the example plugin {DISTRIBUTION} is not installed "
                "(pip install ./examples/emcore-poisson; ci/test.sh does)",
                allow_module_level=True)

U = 2.0 ** -53


@pytest.fixture(scope="module")
def plugin():
    assert installed(), (f"{DISTRIBUTION} must be installed when EMCORE_TEST_INSTALLED is "
                         "set: ci/test.sh and ci/wheel.sh pip install ./examples/emcore-poisson")
    import emcore_poisson
    return emcore_poisson


@pytest.fixture(scope="module")
def counts():
    """Two well-separated groups of 2-D counts, in shuffled order."""
    rng = np.random.default_rng(5)
    rates = np.array([[2.0, 9.0], [8.0, 1.0]])
    z = rng.permutation(np.repeat([0, 1], [300, 200]))
    return rng.poisson(rates[z]).astype(np.float64), rates


def test_discovered_through_the_registry(plugin):
    entry = get_registry().families["example_poisson"]
    assert (entry.plugin, entry.distribution) == ("poisson", DISTRIBUTION)
    assert entry.record.factory is plugin.PoissonFamily
    assert {"sampling", "support:nonnegative_integers"} <= entry.record.capabilities
    assert not [b for b in get_registry().broken if b.distribution == DISTRIBUTION]


def test_listed_by_emcore_plugins(plugin, tmp_path):
    proc = subprocess.run(emcore_command() + ["plugins"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    families = proc.stdout.split("Posterior rules:")[0]
    assert re.search(rf"^  example_poisson\s+from {DISTRIBUTION} \(entry point 'poisson'\)$",
                     families, re.M), proc.stdout
    assert "capabilities: sampling, support:nonnegative_integers" in families


def test_written_against_the_public_plugin_api_only(plugin):
    tree = ast.parse(inspect.getsource(plugin))
    from_emcore = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "emcore":
            from_emcore.add((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("emcore") for a in node.names)
    # the plugin API, and the exception the API tells families to raise
    assert from_emcore == {("emcore.plugin_api", ("Family", "FamilyRecord", "Params",
                                                  "hookimpl")),
                           ("emcore", ("DegenerateComponentError",))}


def test_fits_by_name(plugin, counts):
    X, rates = counts
    model = emcore.MixtureModel(n_components=2, family="example_poisson", random_state=0).fit(X)
    assert isinstance(model.family_, plugin.PoissonFamily)
    assert model.converged_ and model.stop_reason_ == "tol"
    assert all(it.chain_holds() for it in model.history_)
    order = np.argsort(model.params_["rates"][:, 0])
    # 200-300 points per group: the rates' standard errors are sqrt(rate / n) <= 0.2
    np.testing.assert_allclose(model.params_["rates"][order], rates, atol=0.6)
    np.testing.assert_allclose(model.weights_[order], [0.6, 0.4], atol=0.05)
    assert model.predict(X).shape == (X.shape[0],)
    draws = model.sample(50)[0]
    assert draws.shape == (50, 2) and np.all(draws == np.round(draws))


def test_one_component_is_the_direct_maximum_likelihood_estimate(plugin, counts):
    X, _ = counts
    n, d = X.shape
    model = emcore.MixtureModel(n_components=1, family="example_poisson", random_state=0).fit(X)
    # The MLE of independent Poisson rates is the column mean. The fit sums
    # non-negative counts in chunks (relative error <= depth u) and divides once,
    # against a correctly rounded reference: 2 (depth + 2) u relative.
    mean = np.array([math.fsum(X[:, j]) / n for j in range(d)])
    depth = summation_depth_for(n, d)
    np.testing.assert_allclose(model.params_["rates"][0], mean, rtol=2 * (depth + 2) * U,
                               atol=0)
    # ... and its log-likelihood is the direct one, sum_ij log Poisson(x_ij; mean_j)
    logpmf = poisson.logpmf(X, mean)
    direct = math.fsum(logpmf.ravel())
    family = model.family_
    M = math.fsum(np.abs(logpmf).ravel())
    tau = tolerance_across(1, n, d, family.rounding_amplification(model.params_), 2 * M)
    # score() is the mean per row: dividing by n and multiplying back rounds twice
    total = model.score(X) * n
    assert abs(total - direct) <= tau + 2 * U * abs(total)


def test_m_step_with_known_responsibilities_is_the_weighted_mean(plugin, counts):
    X, _ = counts
    rng = np.random.default_rng(1)
    R = rng.dirichlet([1.0, 1.0, 1.0], size=X.shape[0])
    family = plugin.PoissonFamily(3, 2)
    rates = family.m_step(family.chunk_stats(X, R), None)["rates"]
    # sum_i r_ik x_ij / sum_i r_ik: two sums of n non-negative products (relative
    # error <= (n + 1) u each) and a division: 2 (n + 2) u relative, to fsum's exact sums
    expected = np.array([[math.fsum(R[:, k] * X[:, j]) / math.fsum(R[:, k])
                          for j in range(2)] for k in range(3)])
    np.testing.assert_allclose(rates, expected, rtol=2 * (X.shape[0] + 2) * U, atol=0)


def test_empty_component_at_initialisation_is_a_clear_error(plugin):
    family = plugin.PoissonFamily(2, 1)
    X = np.array([[1.0], [3.0]])
    with pytest.raises(emcore.DegenerateComponentError, match="component 1"):
        family.m_step(family.chunk_stats(X, np.array([[1.0, 0.0], [1.0, 0.0]])), None)
    # later, an empty component keeps its previous rates (a valid maximiser)
    kept = family.m_step(family.chunk_stats(X, np.array([[1.0, 0.0], [1.0, 0.0]])),
                         {"rates": np.array([[5.0], [7.0]])})["rates"]
    assert kept.tolist() == [[2.0], [7.0]]


def test_zero_rates_are_exact(plugin):
    # a column that is all zeros in a component gives rate 0: P(0) = 1, P(x > 0) = 0
    family = plugin.PoissonFamily(1, 2)
    params = {"rates": np.array([[0.0, 2.0]])}
    X = np.array([[0.0, 1.0], [1.0, 1.0]])
    a = family.log_density(X, params)
    assert a[0, 0] == pytest.approx(poisson.logpmf(1, 2.0), rel=1e-15)
    assert a[1, 0] == -np.inf
    stats = family.chunk_stats(X[:1], np.ones((1, 1)))
    assert family.expected_log_likelihood(stats, params) == pytest.approx(a[0, 0], rel=1e-15)


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_passes_the_conformance_suite(plugin, n_features):
    report = check_family(get_registry().family("example_poisson"), n_features=n_features)
    statuses = {r.name: r.status for r in report.results}
    assert list(statuses) == list(FAMILY_CHECKS)
    # every check applies at any number of features (the normalisation and moment
    # checks sum a grid up to 2 counts, then importance-sample)
    assert {name for name, s in statuses.items() if s == "passed"} == set(FAMILY_CHECKS)


# --- the family's declared support -------------------------------------------------------

def test_data_outside_the_support_is_rejected_at_fit(plugin, counts):
    # before: partly negative counts were fitted, giving negative rates
    X = counts[0].copy()
    X[7, 1] = -3.0
    with pytest.raises(ValueError, match=r"'X' parameter of MixtureModel.fit must lie in "
                                         r"the support of family 'example_poisson' "
                                         r"\(support:nonnegative_integers.*X\[7, 1\] = -3\.0"):
        emcore.MixtureModel(2, family="example_poisson", random_state=0).fit(X)
    X[7, 1] = 2.5
    with pytest.raises(ValueError, match=r"X\[7, 1\] = 2\.5 \(column 1\)"):
        emcore.MixtureModel(2, family="example_poisson", random_state=0).fit(X)


@pytest.mark.parametrize("method", ["score", "score_samples", "predict", "predict_proba",
                                    "bic"])
def test_data_outside_the_support_is_rejected_by_a_fitted_model(plugin, counts, method):
    # before: score on all-negative data was +6.25 (a log-likelihood above 0 for counts)
    model = emcore.MixtureModel(2, family="example_poisson", random_state=0).fit(counts[0])
    with pytest.raises(ValueError, match=rf"'X' parameter of MixtureModel.{method} must lie "
                                         r"in the support of family 'example_poisson'.*X\[0, 0\] = -1"):
        getattr(model, method)(-np.ones((4, 2)))

"""emcore.testing's hypothesis strategies: what they promise, and eager argument errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.errors import InvalidArgument
from scipy.special import logsumexp

from emcore.plugins.gaussian import GaussianFamily
from emcore.testing import (UNIT_ROUNDOFF as U, ConstraintSet, MixtureDataset,
                            constraint_sets, family_parameters, gaussian_mixtures,
                            mixture_datasets, posteriors, spd_matrices)

from _poisson import poisson_module

_poisson = poisson_module()
needs_poisson = pytest.mark.skipif(_poisson is None, reason="examples/emcore-poisson absent")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# --- eager argument validation: at the call, not at the draw ------------------------------

def _not_a_family():
    return "gaussian"


@pytest.mark.parametrize("make, match", [
    (lambda: spd_matrices(0), "n_features=0 must be at least 1"),
    (lambda: spd_matrices(2.5), "must be an integer"),
    (lambda: spd_matrices(2, max_log10_condition=-1), "max_log10_condition"),
    (lambda: spd_matrices(2, log10_scale=(1.0, -1.0)), "must not exceed"),
    (lambda: spd_matrices(2, log10_scale=3), "pair of numbers"),
    (lambda: gaussian_mixtures(min_components=3, max_components=2), "must not exceed"),
    (lambda: gaussian_mixtures(separation=0), "greater than 0"),
    (lambda: gaussian_mixtures(max_features=True), "must be an integer"),
    (lambda: posteriors(0, 2), "n_samples=0"),
    (lambda: posteriors(3, 2, max_logit=float("nan")), "finite number"),
    (lambda: posteriors(3, 2, allow_zeros=1), "must be a bool"),
    (lambda: family_parameters(_not_a_family()), "must be an emcore.plugin_api.Family"),
    (lambda: family_parameters(GaussianFamily(2, 2), nearly_degenerate="yes"), "bool"),
    (lambda: mixture_datasets(GaussianFamily(2, 2), min_samples=5, max_samples=2),
     "must not exceed"),
    (lambda: mixture_datasets(GaussianFamily(2, 2), params=[1]), "dict of arrays"),
    (lambda: constraint_sets(4, 2, kinds=("<",)), "subset of"),
    (lambda: constraint_sets(4, 2, min_constraints=0), "at least 1"),
])
def test_invalid_arguments_raise_when_the_strategy_is_built(make, match):
    with pytest.raises(InvalidArgument, match=match):
        make()


def test_a_family_without_random_params_or_sampling_is_rejected_eagerly():
    from emcore.plugin_api import Family

    class Bare(Family):
        log_density = empty_stats = chunk_stats = merge_stats = m_step = None
        expected_log_likelihood = n_parameters = None

    with pytest.raises(InvalidArgument, match="cannot draw its own parameters"):
        family_parameters(Bare(2, 2))
    if _poisson is not None:
        class NoSample(_poisson.PoissonFamily):
            sample = Family.sample
        with pytest.raises(InvalidArgument, match="does not implement sample"):
            mixture_datasets(NoSample(2, 2))


def test_importing_emcore_testing_does_not_import_hypothesis(tmp_path):
    code = ("import sys, emcore.testing\n"
            "assert 'hypothesis' not in sys.modules\n"
            "emcore.testing.posteriors\n"
            "assert 'hypothesis' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# --- what each strategy promises ------------------------------------------------------------

@given(d=st.integers(1, 4), data=st.data())
def test_spd_matrices_are_symmetric_positive_definite_with_bounded_condition(d, data):
    S = data.draw(spd_matrices(d, max_log10_condition=3.0))
    assert S.shape == (d, d) and np.array_equal(S, S.T)
    ev = np.linalg.eigvalsh(S)
    # Q is orthogonal and S = Q diag(lambda) Q^T up to rounding of size
    # ~ 8 d^2 u ||S|| (QR and two products of d-term sums); by Weyl's inequality the
    # computed eigenvalues move by at most that, so the condition number is at most
    # 10^3 (1 + delta) / (1 - delta 10^3) with delta = 8 d^2 u.
    delta = 8 * d * d * U
    assert ev[0] > 0
    assert ev[-1] / ev[0] <= 1e3 * (1 + delta) / (1 - delta * 1e3)


@given(mixture=gaussian_mixtures(min_components=2, max_components=3, max_features=2))
def test_gaussian_mixtures(mixture):
    w, means, covs = mixture
    k, d = means.shape
    assert 2 <= k <= 3 and 1 <= d <= 2 and covs.shape == (k, d, d)
    # softmax of k logits: each weight rounded once after a k-term sum
    assert abs(math.fsum(w) - 1.0) <= 2 * (k + 2) * U
    assert np.all(np.abs(means) <= 10.0)


@given(n=st.integers(1, 20), k=st.integers(1, 5), zeros=st.booleans(), data=st.data())
def test_posteriors_are_normalised_rows_in_log_space(n, k, zeros, data):
    lq = data.draw(posteriors(n, k, allow_zeros=zeros))
    assert lq.shape == (n, k) and not np.isnan(lq).any() and np.all(lq <= 0)
    # log-softmax, (a - max) - log sum exp(a - max): each entry within
    # (k + 2) u (1 + |log q|) of exact (docs/elbo_chain.md#per-row-errors), so
    # the row sums of q are 1 to
    # 2 (k + 2) u (1 + max |log q| over entries with q > 0)
    q = np.exp(lq)
    finite = np.where(np.isfinite(lq), np.abs(lq), 0.0)
    bound = 2 * (k + 2) * U * (1 + finite.max(axis=1))
    assert np.all(np.abs(q.sum(axis=1) - 1.0) <= bound + k * U)
    if not zeros:
        assert np.isfinite(lq).all()
    hot = np.isinf(lq).any(axis=1)
    assert np.all((lq[hot] == 0) | np.isneginf(lq[hot]))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("nearly_degenerate", [False, True])
def test_family_parameters_of_the_gaussian_respect_the_covariance_type(covariance_type,
                                                                      nearly_degenerate):
    family = GaussianFamily(3, 3, covariance_type=covariance_type)

    @given(params=family_parameters(family, nearly_degenerate=nearly_degenerate))
    def run(params):
        C = params["covariances"]
        assert C.shape == (3, 3, 3)
        off = C - np.einsum("kjj->kj", C)[:, :, None] * np.eye(3)
        if covariance_type in ("diag", "spherical"):
            assert np.all(off == 0)
        if covariance_type == "spherical":
            assert np.all(C[:, 0, 0][:, None] == np.einsum("kjj->kj", C))
        if covariance_type == "tied":
            assert np.all(C == C[0])
        conds = np.linalg.cond(C)
        if nearly_degenerate and covariance_type != "spherical":
            assert np.all(conds >= 1e5)           # drawn at 1e6..1e9
        elif not nearly_degenerate:
            assert np.all(conds <= 1e2 * 1.001)
        X = np.zeros((2, 3))
        assert np.isfinite(family.log_density(X, params)).all()

    run()


@needs_poisson
def test_family_parameters_from_the_familys_own_random_params():
    family = _poisson.PoissonFamily(2, 3)

    @given(params=family_parameters(family), tiny=family_parameters(
        family, nearly_degenerate=True))
    def run(params, tiny):
        assert params["rates"].shape == (2, 3)
        assert np.all((params["rates"] >= 0.5) & (params["rates"] <= 20.0))
        assert np.all(tiny["rates"] > 0)

    run()


@given(data=st.data(), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_mixture_datasets_of_the_gaussian(data, covariance_type):
    family = GaussianFamily(2, 2, covariance_type=covariance_type)
    ds = data.draw(mixture_datasets(family, min_samples=3, max_samples=30))
    assert isinstance(ds, MixtureDataset)
    assert 3 <= ds.X.shape[0] <= 30 and ds.X.shape[1] == 2 and ds.X.flags.c_contiguous
    assert np.isfinite(ds.X).all()
    assert ds.labels.shape == (ds.X.shape[0],) and set(ds.labels) <= {0, 1}
    assert abs(math.fsum(ds.weights) - 1.0) <= 8 * U


@needs_poisson
@given(data=st.data())
def test_mixture_datasets_of_counts_with_duplicated_rows(data):
    family = _poisson.PoissonFamily(3, 2)
    ds = data.draw(mixture_datasets(family, max_samples=20, duplicate_rows=True))
    assert np.all(ds.X == np.round(ds.X)) and np.all(ds.X >= 0)
    assert 1 <= ds.X.shape[0] <= 40
    assert ds.labels.max() < 3


@given(n=st.integers(1, 12), k=st.integers(1, 4), data=st.data())
def test_constraint_sets_are_feasible_by_construction(n, k, data):
    cs = data.draw(constraint_sets(n, k, max_constraints=4))
    assert isinstance(cs, ConstraintSet)
    m = cs.n_constraints
    assert 1 <= m <= 4 and cs.phi.shape == (n, k, m) and cs.bounds.shape == (m,)
    assert len(cs.kinds) == m and set(cs.kinds) <= {"<=", "=="}
    q = np.exp(cs.witness_log_q)
    assert np.allclose(logsumexp(cs.witness_log_q, axis=1), 0.0, rtol=0, atol=4 * (k + 2) * U)
    for j, kind in enumerate(cs.kinds):
        e = math.fsum((q * cs.phi[:, :, j]).ravel())
        # the documented rounding of the sum behind b: 2 n k u sum |q phi|
        tol = 2 * n * k * U * math.fsum(np.abs(q * cs.phi[:, :, j]).ravel())
        assert e <= cs.bounds[j] + tol
        if kind == "==":
            assert abs(e - cs.bounds[j]) <= tol


def test_constraint_sets_include_active_and_inactive_inequalities_and_equalities():
    seen = set()

    @given(cs=constraint_sets(5, 3, min_constraints=3, max_constraints=3))
    def run(cs):
        q = np.exp(cs.witness_log_q)
        for j, kind in enumerate(cs.kinds):
            slack = cs.bounds[j] - math.fsum((q * cs.phi[:, :, j]).ravel())
            seen.add(kind if kind == "==" else ("active" if abs(slack) < 1e-9 else "slack"))

    run()
    assert seen == {"==", "active", "slack"}

"""The Gaussian family plugin against independent computations (scipy, numpy, fsum)."""

import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import multivariate_normal

from emcore import DegenerateComponentError, GaussianMixture
from emcore.engine import UNIT_ROUNDOFF as U, run_em
from emcore.exceptions import ConvergenceWarning
from emcore.plugins._gaussian_kernel import GaussianFullKernel
from emcore.registry import get_registry

from _strategies import FIN, gaussian_mixtures, sample_mixture, spd_matrices


def _family(k, d, reg_covar=0.0):
    return get_registry().family("gaussian").factory(k, d, reg_covar=reg_covar)


def _rule():
    return get_registry().posterior_rule("soft").factory()


def _logpdf_extended(x, mean, cov):
    """log N(x | mean, cov) in long double (80-bit on x86-64), by forward substitution."""
    L = np.linalg.cholesky(cov).astype(np.longdouble)
    dev = (x.astype(np.longdouble) - mean.astype(np.longdouble))
    out = np.empty(x.shape[0], dtype=np.longdouble)
    d = x.shape[1]
    for i in range(x.shape[0]):
        y = np.zeros(d, dtype=np.longdouble)
        for a in range(d):
            y[a] = (dev[i, a] - np.dot(L[a, :a], y[:a])) / L[a, a]
        out[i] = np.dot(y, y)
    log_det = 2 * np.sum(np.log(np.diag(L)))
    return -0.5 * (d * np.log(np.longdouble(2) * np.pi) + log_det + out), out


@given(mixture=gaussian_mixtures(max_k=3, max_d=5), n=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e3, -1e6]))
def test_log_density_matches_extended_precision_and_scipy(mixture, n, seed, offset):
    w, means, covs = mixture
    k, d = means.shape
    means = means + offset
    family = _family(k, d)
    params = family.params_from_covariances(means, covs)
    X = sample_mixture((w, means, covs), n, seed)
    got = family.log_density(X, params)
    extended = np.finfo(np.longdouble).eps < 1e-18
    for j in range(k):
        kappa = np.linalg.cond(covs[j])
        log_det = abs(np.linalg.slogdet(covs[j])[1])
        ref, quad = _logpdf_extended(X, means[j], covs[j])
        quad = np.abs(quad.astype(np.float64))
        # ours: the quadratic form within 2 gamma_d sqrt(d kappa) relative
        # (docs/elbo_chain.md#check-b,
        # item 2); log det from a backward-stable Cholesky within tr(Sigma^-1 dSigma)
        # <= d gamma_d kappa; the constants within (d + 2) u
        tol = 2.0 * (d + 2) * U * ((1.0 + np.sqrt(d * kappa)) * quad + d * kappa
                                   + log_det + 2.0 * d)
        if extended:  # else long double is double and ref is no better than ours
            assert np.all(np.abs(got[:, j] - ref.astype(np.float64)) <= tol)
        # scipy works through an eigendecomposition, whose quadratic form errs
        # ~ d gamma_d kappa relative: a weaker oracle, still independent code
        sp = multivariate_normal(means[j], covs[j]).logpdf(X).reshape(n)
        assert np.all(np.abs(got[:, j] - sp) <= tol + 4.0 * (d + 2) * U * d * kappa
                      * (quad + 1.0))


def _centred_reference(X, w):
    """Weighted mean and centred scatter by two passes with correctly rounded sums."""
    W = math.fsum(w)
    mean = np.array([math.fsum(w * X[:, j]) for j in range(X.shape[1])]) / W
    D = X - mean
    # the rounded mean is off by ~u |mean|: correct the scatter about it by its
    # residual r = sum w (x - mean), exactly as sum w (x-m)(x-m)^T - r r^T / W
    r = np.array([math.fsum(w * D[:, j]) for j in range(X.shape[1])])
    scatter = np.array([[math.fsum(np.concatenate([w * D[:, a] * D[:, b],
                                                   [-r[a] * r[b] / W]]))
                         for b in range(X.shape[1])] for a in range(X.shape[1])])
    return W, mean + r / W, scatter


@given(n=st.integers(2, 80), d=st.integers(1, 4), k=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), split=st.integers(0, 80),
       offset=st.sampled_from([0.0, 1e4, 1e8]), spread=st.sampled_from([1.0, 1e-3]))
def test_statistics_are_exact_moments_and_merge_like_the_union(n, d, k, seed, split,
                                                                offset, spread):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, spread, (n, d)) + offset
    weights = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0, 2, (n, 1))
    family = _family(k, d)
    split = min(split, n)
    whole = family.chunk_stats(X, weights)
    merged = family.merge_stats(family.chunk_stats(X[:split], weights[:split]),
                                family.chunk_stats(X[split:], weights[split:]))
    for stats in (whole, merged):
        mean, scatter = stats.centred()
        for j in range(k):
            W, ref_mean, ref_scatter = _centred_reference(X, weights[:, j])
            sd = np.sqrt(np.diag(ref_scatter) / W)
            # sums of n + d terms, each of the size of the spread about the mean:
            # gamma_{n+d} relative to the scale (the offset cancels exactly)
            tol = 4.0 * (n + d) * U
            assert stats.weight[j] == pytest.approx(W, rel=tol)
            assert np.all(np.abs(mean[j] - ref_mean) <= tol * (np.abs(ref_mean) + sd))
            assert np.all(np.abs(scatter[j] - ref_scatter) <= tol * W * np.outer(sd, sd))


@given(mixture=gaussian_mixtures(max_k=3, max_d=3), n=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e4, -1e6]),
       data=st.data())
def test_expected_log_likelihood_from_statistics_equals_the_direct_sum(mixture, n, seed,
                                                                        offset, data):
    w, means, covs = mixture
    k, d = means.shape
    family = _family(k, d)
    X = sample_mixture((w, means + offset, covs), n, seed)
    # arbitrary parameters near the data, arbitrary q
    params = family.params_from_covariances(
        means + offset + data.draw(arrays(np.float64, (k, d), elements=st.floats(-3, 3, **FIN))),
        covs)
    q = np.exp(np.log(rng_dirichlet(seed, n, k)))
    stats = family.chunk_stats(X, q)
    # reference log-densities in long double (scipy's eigendecomposition route errs
    # kappa-linearly, more than what is checked here)
    logpdf_quad = [_logpdf_extended(X, params["means"][j], covs[j]) for j in range(k)]
    direct_terms = np.stack([lp.astype(np.float64) for lp, _ in logpdf_quad], axis=1)
    direct = math.fsum((q * direct_terms).ravel())
    got = family.expected_log_likelihood(stats, params)
    kappa = max(np.linalg.cond(c) for c in covs)
    # M: the size of each log-density's parts (the constant, the log-determinant,
    # the quadratic form), which is what rounds, not of their sum: the parts
    # cancel when log N is near 0 (hypothesis found x at the mean with
    # sigma^2 = 0.123: log N = -2e-4 from parts of size 1)
    part_sizes = np.stack([0.5 * (d * np.log(2 * np.pi) + abs(np.linalg.slogdet(covs[j])[1])
                                  + quad.astype(np.float64))
                           for j, (_, quad) in enumerate(logpdf_quad)], axis=1)
    M = math.fsum((q * part_sizes).ravel())
    tol = 4.0 * (n + 2 * d + 4) * (1.0 + np.sqrt(d * kappa)) * U * M
    assert abs(got - direct) <= tol


def rng_dirichlet(seed, n, k):
    return np.random.default_rng(seed + 1).dirichlet(np.ones(k), size=n)


@given(mixture=gaussian_mixtures(max_k=3, max_d=3), seed=st.integers(0, 2**32 - 1),
       reg_covar=st.sampled_from([0.0, 0.0, 0.1]), data=st.data())
def test_m_step_maximises_the_penalised_expected_log_likelihood(mixture, seed, reg_covar,
                                                               data):
    w, means, covs = mixture
    k, d = means.shape
    n = 12 * k * (d + 1)
    X = sample_mixture(mixture, n, seed)
    family = _family(k, d, reg_covar=reg_covar)
    q = rng_dirichlet(seed, n, k)
    stats = family.chunk_stats(X, q)
    best = family.m_step(stats, None)

    def objective(p):
        return family.expected_log_likelihood(stats, p) - family.m_step_penalty(stats, p)

    top = objective(best)
    M = abs(top) + n * d
    for _ in range(5):
        mean_shift = data.draw(arrays(np.float64, (k, d), elements=st.floats(-0.3, 0.3, **FIN)))
        factor = np.stack([data.draw(spd_matrices(d, log10_cond_max=0.5,
                                                  log10_scale=(-0.5, 0.5)))
                           for _ in range(k)])
        # a congruence keeps the covariances positive definite
        L = np.linalg.cholesky(factor)
        perturbed_cov = L @ best["covariances"] @ np.swapaxes(L, 1, 2)
        other = family.params_from_covariances(best["means"] + mean_shift, perturbed_cov)
        assert objective(other) <= top + 8 * (n + d) * U * M


def test_one_component_reaches_the_closed_form_mle_in_one_step():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 3)) @ np.array([[2.0, 0, 0], [0.5, 1, 0], [0, 0.3, 0.2]]) + 7
    mean = X.mean(axis=0)
    cov = np.cov(X.T, bias=True)
    gm = GaussianMixture(1, reg_covar=0.0, max_iter=1, tol=0.0).fit(X)
    assert np.allclose(gm.means_[0], mean, rtol=1e-13, atol=1e-13)
    assert np.allclose(gm.covariances_[0], cov, rtol=1e-12, atol=1e-14)
    n, d = X.shape
    loglik = -0.5 * n * (d * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + d)
    assert gm.score(X) * n == pytest.approx(loglik, rel=1e-12)


def test_d_equal_one():
    rng = np.random.default_rng(6)
    X = np.concatenate([rng.normal(0, 1, 300), rng.normal(5, 0.5, 200)])[:, None]
    gm = GaussianMixture(2, random_state=0).fit(X)
    assert gm.means_.shape == (2, 1) and gm.covariances_.shape == (2, 1, 1)
    assert sorted(np.round(gm.means_.ravel())) == [0.0, 5.0]
    assert all(it.chain_holds() for it in gm.history_)


def test_n_parameters_matches_scikit_learn():
    from sklearn.mixture import GaussianMixture as Sk
    rng = np.random.default_rng(0)
    for k, d in [(1, 1), (2, 3), (4, 5)]:
        X = rng.normal(size=(50, d))
        sk = Sk(k, max_iter=500).fit(X)
        assert _family(k, d).n_parameters() + k - 1 == sk._n_parameters()


def test_sampling_matches_the_model_moments():
    rng = np.random.default_rng(8)
    family = _family(2, 2)
    covs = np.array([[[1.0, 0.6], [0.6, 2.0]], [[0.5, -0.2], [-0.2, 0.3]]])
    params = family.params_from_covariances(np.array([[0.0, 1.0], [4.0, -2.0]]), covs)
    counts = np.array([40000, 30000])
    X = family.sample(params, counts, rng)
    assert X.shape == (70000, 2)
    for j, (lo, hi) in enumerate([(0, 40000), (40000, 70000)]):
        part = X[lo:hi]
        se_mean = np.sqrt(np.diag(covs[j]) / counts[j])
        assert np.all(np.abs(part.mean(0) - params["means"][j]) <= 6 * se_mean)
        # variance of a sample covariance entry: (s_ab^2 + s_aa s_bb) / n
        se_cov = np.sqrt((covs[j] ** 2 + np.outer(np.diag(covs[j]), np.diag(covs[j])))
                         / counts[j])
        assert np.all(np.abs(np.cov(part.T) - covs[j]) <= 6 * se_cov)


def test_identical_points_without_reg_covar_raise_a_clear_error():
    X = np.ones((20, 2))
    with pytest.raises(DegenerateComponentError, match="component 0") as info:
        GaussianMixture(1, reg_covar=0.0).fit(X)
    assert "reg_covar" in str(info.value) and info.value.component == 0
    # with reg_covar the same data fit, to the point and reg_covar * I
    gm = GaussianMixture(1, reg_covar=1e-4).fit(X)
    assert np.allclose(gm.means_, 1.0) and np.allclose(gm.covariances_, 1e-4 * np.eye(2))


def test_a_component_with_zero_weight_keeps_its_parameters():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(200, 2))
    family = _family(2, 2)
    # component 1 sits 1e4 standard deviations away: its q underflows to exactly 0
    params = family.params_from_covariances(np.array([[0.0, 0.0], [1e4, 1e4]]),
                                            np.stack([np.eye(2)] * 2))
    result = run_em(X, family, _rule(), np.array([0.5, 0.5]), params, max_iter=3, tol=0.0)
    assert result.history[0].empty_components == (1,)
    assert result.weights[1] == 0.0
    assert np.array_equal(result.params["means"][1], [1e4, 1e4])
    assert np.array_equal(result.params["covariances"][1], np.eye(2))
    assert all(np.all(np.isfinite(v)) for v in result.params.values())
    assert result.chain_holds


def test_kernel_pickles_and_blas_wrappers_match_numpy():
    from emcore import blas
    rng = np.random.default_rng(10)
    kernel = GaussianFullKernel(rng.normal(size=(2, 3)), np.stack([np.eye(3)] * 2))
    X = rng.normal(size=(5, 3))
    assert np.array_equal(pickle.loads(pickle.dumps(kernel)).log_density(X),
                          kernel.log_density(X))
    A = rng.normal(size=(9, 4))
    assert np.allclose(blas._py_row_sq_norms(A), np.sum(A * A, axis=1), rtol=1e-14)
    assert np.allclose(blas._py_gemv_t(A, np.arange(9.0), 0.5), 0.5 * A.T @ np.arange(9.0),
                       rtol=1e-14)
    S = blas._py_syrk_t(A)
    assert np.array_equal(S, S.T) and np.allclose(S, A.T @ A, rtol=1e-14)
    Ut = np.triu(rng.normal(size=(4, 4)))
    B = A.copy()
    blas._py_trmm_right_upper(B, Ut)
    assert np.allclose(B, A @ Ut, rtol=1e-13, atol=1e-13)

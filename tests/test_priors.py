"""MAP-EM with the conjugate prior of Fraley & Raftery (2007).

The M-step is checked against a direct numerical maximisation of the MAP
objective (scipy.optimize), the log prior against scipy's densities, and the
MAP chain loglik + log prior at every iteration, degenerate data included.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.optimize import minimize
from scipy.stats import invwishart, multivariate_normal

from emcore import DegenerateComponentError, GaussianMixture, GaussianPrior
from emcore.exceptions import ConvergenceWarning
from emcore.registry import get_registry

from _strategies import gaussian_mixtures, sample_mixture


def _quiet(gm, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X, **kwargs)


def test_default_hyperparameters_are_mclusts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) @ np.array([[1.0, 0.2, 0], [0, 2.0, 0.3], [0, 0, 0.5]])
    p = GaussianPrior().resolve(X, 4)
    assert p.shrinkage == 0.01 and p.dof == 3 + 2
    assert np.allclose(p.mean, X.mean(axis=0))
    assert np.allclose(p.scale, np.cov(X.T, ddof=1) / 4 ** (2 / 3))
    assert np.array_equal(p.weight_concentration, np.ones(4))
    # d = 1: nu = 3, scale = var(x) / K^2 (mclust's special case is the same formula)
    p1 = GaussianPrior().resolve(X[:, :1], 3)
    assert p1.dof == 3 and np.allclose(p1.scale, np.var(X[:, 0], ddof=1) / 9)
    # n <= d: the diagonal of the covariance
    assert np.count_nonzero(GaussianPrior().resolve(X[:3], 2).scale -
                            np.diag(np.diag(GaussianPrior().resolve(X[:3], 2).scale))) == 0


def _family(prior, k, d, reg_covar=0.0):
    return get_registry().family("gaussian").factory(k, d, reg_covar=reg_covar, prior=prior)


def test_log_prior_matches_scipy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2))
    prior = GaussianPrior(shrinkage=0.3, dof=4.5).resolve(X, 2)
    fam = _family(prior, 2, 2)
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[2.0, -0.4], [-0.4, 1.0]]])
    params = fam.params_from_covariances(np.array([[0.5, -1.0], [2.0, 0.3]]), covs)
    expected = sum(
        invwishart(df=prior.dof, scale=prior.scale).logpdf(covs[k])
        + multivariate_normal(prior.mean, covs[k] / prior.shrinkage).logpdf(params["means"][k])
        for k in range(2))
    value, magnitude = fam.log_prior(params)
    assert value == pytest.approx(expected, rel=1e-12)
    assert magnitude >= abs(value)


@pytest.mark.parametrize("shrinkage", [0.01, 0.0, 2.0])
def test_map_m_step_maximises_the_map_objective(shrinkage):
    # one component, d = 2, weighted statistics; maximise Q + log prior over (mu, L)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(15, 2)) * [1.0, 0.3] + [2.0, -1.0]
    q = rng.uniform(0.2, 1.0, size=(15, 1))
    prior = GaussianPrior(shrinkage=shrinkage, dof=3.5,
                          mean=np.array([0.5, 0.0])).resolve(X, 1)
    fam = _family(prior, 1, 2)
    stats = fam.chunk_stats(X, q)
    best = fam.m_step(stats, None)

    def params_of(v):
        L = np.array([[np.exp(v[2]), 0.0], [v[3], np.exp(v[4])]])
        return v[:2], L @ L.T

    def negative_map_objective(v):
        mu, cov = params_of(v)
        value = np.sum(q[:, 0] * multivariate_normal(mu, cov).logpdf(X))
        value += invwishart(df=prior.dof, scale=prior.scale).logpdf(cov)
        if shrinkage > 0:
            value += multivariate_normal(prior.mean, cov / shrinkage).logpdf(mu)
        return -value

    start = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    opt = minimize(negative_map_objective, start, method="BFGS",
                   options={"gtol": 1e-10, "maxiter": 10000})
    mu, cov = params_of(opt.x)
    # the optimiser stops within ~1e-6 of the optimum in each coordinate
    assert np.allclose(best["means"][0], mu, rtol=0, atol=1e-5)
    assert np.allclose(best["covariances"][0], cov, rtol=1e-5, atol=1e-6)
    # and no perturbation of the closed form does better
    ours = np.r_[best["means"][0], np.log(np.linalg.cholesky(best["covariances"][0])[0, 0]),
                 np.linalg.cholesky(best["covariances"][0])[1, 0],
                 np.log(np.linalg.cholesky(best["covariances"][0])[1, 1])]
    assert negative_map_objective(ours) <= opt.fun + 1e-9 * abs(opt.fun)


def test_dirichlet_prior_on_the_weights_gives_the_posterior_mode():
    from emcore.engine import data_pass, run_em
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 1, (60, 1)), rng.normal(3, 1, (40, 1))])
    alpha = np.array([3.0, 11.0])
    prior = GaussianPrior(weight_concentration=alpha).resolve(X, 2)
    fam = _family(prior, 2, 1)
    rule = get_registry().posterior_rule("soft").factory()
    w0 = np.array([0.5, 0.5])
    p0 = fam.params_from_covariances(np.array([[0.0], [3.0]]), np.ones((2, 1, 1)))
    n_k = data_pass(X, fam, rule, w0, p0).resp_sum
    result = run_em(X, fam, rule, w0, p0, max_iter=1, tol=0.0, weight_concentration=alpha)
    expected = (n_k + alpha - 1) / (100 + alpha.sum() - 2)
    assert np.allclose(result.weights, expected, rtol=1e-13)
    # the Dirichlet's log density is part of the objective
    from scipy.stats import dirichlet
    assert result.history[0].log_prior_next - fam.log_prior(result.params)[0] == \
        pytest.approx(dirichlet(alpha).logpdf(result.weights), rel=1e-12)


@given(mixture=gaussian_mixtures(min_k=1, max_k=3, max_d=3, separation=8.0),
       n_per=st.integers(2, 20), seed=st.integers(0, 2**32 - 1),
       duplicate=st.booleans(), reg_covar=st.sampled_from([0.0, 0.0, 1e-3]))
def test_map_chain_holds_and_the_objective_never_decreases(mixture, n_per, seed,
                                                           duplicate, reg_covar):
    k, d = mixture[1].shape
    X = sample_mixture(mixture, n_per * k, seed)     # often fewer than d + 1 per component
    if duplicate:
        X[: len(X) // 2] = X[0]                       # half the rows identical
    gm = _quiet(GaussianMixture(k, prior="default", reg_covar=reg_covar, max_iter=15,
                                tol=0.0, random_state=seed % 997, n_jobs=1), X)
    assert all(np.all(np.isfinite(a)) for a in (gm.weights_, gm.means_, gm.covariances_))
    for it in gm.history_:
        assert it.chain_holds(), it.chain_slacks()
        if reg_covar == 0.0:
            # MAP-EM: loglik + log prior never decreases
            assert it.objective >= it.value + it.log_prior - it.tolerance


@pytest.mark.parametrize("X", [
    np.ones((12, 2)),                                                  # all identical
    np.r_[np.ones((6, 2)), np.zeros((6, 2))],                          # two points
    np.r_[np.random.default_rng(4).normal(size=(30, 3)), [[50.0, 50.0, 50.0]]],  # a loner
    np.random.default_rng(5).normal(size=(5, 4)),                      # n_k < d
], ids=["identical", "two-points", "one-point-cluster", "fewer-points-than-d"])
def test_degenerate_data_fit_with_a_prior_and_fail_clearly_without(X):
    k = 2
    gm = _quiet(GaussianMixture(k, prior="default", reg_covar=0.0, random_state=0), X)
    assert all(np.all(np.isfinite(a)) for a in (gm.weights_, gm.means_, gm.covariances_))
    assert all(it.chain_holds() for it in gm.history_)
    with pytest.raises(DegenerateComponentError, match="prior='default'"):
        _quiet(GaussianMixture(k, reg_covar=0.0, random_state=0), X)


@pytest.mark.parametrize("prior, words", [
    ("mclust", "'prior'"),
    (GaussianPrior(shrinkage=-1.0), "shrinkage"),
    (GaussianPrior(dof=0.5), "dof"),
    (GaussianPrior(scale=-np.eye(2)), "scale"),
    (GaussianPrior(mean=[1.0, 2.0, 3.0]), "mean"),
    (GaussianPrior(weight_concentration=0.5), "weight_concentration"),
    (GaussianPrior(weight_concentration=[1.0, 2.0, 3.0]), "weight_concentration"),
])
def test_bad_priors_name_the_problem(prior, words):
    X = np.random.default_rng(6).normal(size=(30, 2))
    with pytest.raises(ValueError, match="prior") as info:
        GaussianMixture(2, prior=prior).fit(X)
    assert words in str(info.value)


def test_prior_is_fitted_state_and_bic_uses_the_likelihood():
    from emcore.datasets import load_old_faithful
    X = load_old_faithful()
    gm = GaussianMixture(2, prior="default", reg_covar=0.0, random_state=0, tol=1e-10).fit(X)
    assert gm.prior_ is not None and gm.prior_.dof == 4
    loglik = gm.score(X) * X.shape[0]
    assert gm.history_[-1].objective == pytest.approx(
        gm.history_[-1].value_next + gm.history_[-1].log_prior_next, rel=1e-15)
    p = 2 * 2 + 2 * 3 + 1
    assert gm.bic(X) == pytest.approx(-2 * loglik + p * math.log(X.shape[0]), rel=1e-12)


# --- the default prior on constant columns and identical rows (issue 15, item 1) ----------

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("constant", [0.1, 0.001, -3.7, 1e15])
def test_default_scale_ignores_where_a_constant_column_sits(covariance_type, constant):
    # A constant column has variance exactly 0 wherever it sits: its default scale
    # is the one of the same data with the column at 0 (where the mean is exact).
    # About a rounded mean it was rounding noise (~1e-33 at 0.1), 'full'/'tied'
    # raised "scale must be positive definite" and the fallback never fired.
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 3)) * [1.0, 1.0, 3.0]
    X[:, 1] = 0.0
    at_zero = GaussianPrior().resolve(X, 2, covariance_type=covariance_type)
    X[:, 1] = constant
    moved = GaussianPrior().resolve(X, 2, covariance_type=covariance_type)
    assert np.array_equal(moved.scale, at_zero.scale)
    assert moved.scale_scalar == at_zero.scale_scalar
    assert moved.mean[1] == constant


@given(value=st.floats(-1e12, 1e12, allow_nan=False).filter(lambda v: v != 0.0),
       n=st.integers(3, 30), d=st.integers(1, 3), k=st.integers(1, 3),
       covariance_type=st.sampled_from(COVARIANCE_TYPES),
       reg_covar=st.sampled_from([0.0, 1e-6]))
def test_identical_rows_fit_with_the_documented_fallback_scale(value, n, d, k,
                                                               covariance_type, reg_covar):
    # no spread at all: the documented fallback, variance 1 per feature (scale
    # I / K^(2/d); 'diag'/'spherical': varsigma^2 = 1 / K^(2/d)); then a fit whose
    # MAP objective never decreases and whose chain holds
    X = np.full((n, d), value)
    prior = GaussianPrior().resolve(X, k, covariance_type=covariance_type)
    expected = 1.0 / k ** (2.0 / d)
    if covariance_type in ("full", "tied"):
        assert np.array_equal(prior.scale, np.eye(d) * expected)
    else:
        assert prior.scale_scalar == expected
    gm = _quiet(GaussianMixture(k, covariance_type=covariance_type, prior="default",
                                reg_covar=reg_covar, max_iter=10, tol=0.0, random_state=0), X)
    assert all(np.all(np.isfinite(a)) for a in (gm.weights_, gm.means_, gm.covariances_))
    for it in gm.history_:
        assert it.chain_holds(), it.chain_slacks()
        if reg_covar == 0.0:
            assert it.objective >= it.value + it.log_prior - it.tolerance


# --- the prior for mclust's ten other models (issue 20; docs/gaussian.md#mclust-prior) ----

MCLUST_TEN = ("EII", "EEI", "VEI", "EVI", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV")


@pytest.mark.parametrize("model", MCLUST_TEN)
@pytest.mark.parametrize("seed", [0, 1])
def test_mclust_models_map_chain_holds(model, seed):
    # MAP-EM on few, overlapping points (some components near n_k <= d, where ML
    # degenerates), weighted: loglik + log prior never decreases, the chain holds
    # (seed 1 adds reg_covar: the penalised chain, with the MAP counts as weights)
    reg_covar = 0.1 * seed
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0.0, 1.0, (12, 3)),
                        rng.normal(1.5, 0.5, (5, 3)) * [1.0, 3.0, 0.2],
                        rng.normal(-2.0, 2.0, (9, 3))])
    w = rng.exponential(1.0, len(X))
    gm = _quiet(GaussianMixture(3, covariance_type=model, prior="default",
                                reg_covar=reg_covar, max_iter=25, tol=0.0,
                                random_state=seed, n_jobs=1),
                X, sample_weight=w)
    assert gm.prior_ is not None
    for it in gm.history_:
        assert it.chain_holds(), (model, it.chain_slacks())
        if reg_covar == 0.0:
            assert it.objective >= it.value + it.log_prior - it.tolerance


@pytest.mark.parametrize("model", MCLUST_TEN)
def test_mclust_map_m_step_is_the_maximiser(model):
    # The MAP M-step against a quasi-Newton search of Q + log p (the family's own
    # expected_log_likelihood and log_prior, written apart from m_step) over the
    # means and the model's volume / shape / orientation factors (the ML test's
    # parametrisation, tests/test_covariance_types.py): nothing better is found.
    # Tolerance as there: an objective of size ~1e3 to ~1e-13, BFGS's own gains
    # below 1e-7 relative are its line-search noise.
    from test_covariance_types import _compose, _decompose, _rows_of, _scatters
    n, W = _scatters(0)
    k, d = W.shape[0], W.shape[1]
    X, resp = _rows_of(n, W)
    kind = {"EII": "spherical", "EEI": "diag", "VEI": "diag", "EVI": "diag"}.get(model, "full")
    prior = GaussianPrior(shrinkage=0.5).resolve(X, k, None, kind)
    family = get_registry().family("gaussian").factory(k, d, covariance_type=model,
                                                        reg_covar=0.0, prior=prior)
    stats = family.chunk_stats(X, resp)
    best = family.m_step(stats, None)

    def objective(params):
        return family.expected_log_likelihood(stats, params) + family.log_prior(params)[0]

    f0 = objective(best)
    log_vol, log_shape, D = _decompose(model, best["covariances"])
    n_skew = 0 if D is None else D.shape[0]
    sizes = (k * d, log_vol.size, log_shape.size, n_skew * d * (d - 1) // 2)
    cuts = np.cumsum(sizes)

    def params_of(theta):
        means = theta[:cuts[0]].reshape(k, d)
        lv, ls = theta[cuts[0]:cuts[1]], theta[cuts[1]:cuts[2]].reshape(log_shape.shape)
        skew = theta[cuts[2]:].reshape(n_skew, d * (d - 1) // 2)
        cov = _compose(model, k, d, lv, ls, D, skew)
        U = np.swapaxes(np.linalg.inv(np.linalg.cholesky(cov)), 1, 2)    # L^-T
        return {"means": means, "covariances": cov, "precisions_cholesky": U}

    theta0 = np.concatenate([best["means"].ravel(), log_vol, log_shape.ravel(),
                             np.zeros(sizes[3])])
    assert objective(params_of(theta0)) == pytest.approx(f0, rel=1e-12)
    found = -minimize(lambda t: -objective(params_of(t)), theta0, method="BFGS").fun
    assert found <= f0 + 1e-7 * abs(f0), (f0, found)


@pytest.mark.parametrize("model", ["VEE", "EVE", "VVE", "EVV"])
def test_models_without_an_mclust_prior_take_vvvs(model):
    # mclust defines no prior for these: emcore's is VVV's inverse Wishart and
    # normal prior on each component, evaluated at the constrained covariances: the
    # same log density as 'full''s up to its normalising constant
    rng = np.random.default_rng(8)
    X = rng.normal(size=(40, 3))
    prior = GaussianPrior(shrinkage=0.3).resolve(X, 2, None, "full")
    ours, full = (get_registry().family("gaussian").factory(2, 3, covariance_type=t,
                                                             reg_covar=0.0, prior=prior)
                  for t in (model, "full"))
    gaps = [ours.log_prior(p)[0] - full.log_prior(p)[0]
            for p in (ours.random_params(rng) for _ in range(3))]
    assert np.ptp(gaps) <= 1e-12 * max(abs(g) for g in gaps)

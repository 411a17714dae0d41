"""Missing values: exact EM for the observed-data likelihood (issue 17, first part).

References written independently here: the classic one-Gaussian EM with missing
data (Little & Rubin, Statistical Analysis with Missing Data, 2nd ed., sec. 11.2),
a direct maximisation of the observed-data log-likelihood by scipy.optimize, and
the marginal / conditional Gaussian formulas by np.linalg.solve.
"""

import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import Phase, given, settings, strategies as st
from scipy.special import logsumexp

from emcore import ChainViolationWarning, GaussianMixture
from emcore._missing import prepare, run_missing_em

TYPES = ("full", "tied", "diag", "spherical")


def _two_clusters(n=200, d=3, rate=0.2, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.0, 1.0, (n // 2, d)),
                   rng.normal(3.0, 1.0, (n // 2, d)) @ np.diag(np.arange(1, d + 1) / d)])
    mask = rng.random(X.shape) < rate
    mask[np.all(mask, axis=1), 0] = False          # keep one coordinate per row
    Xm = X.copy()
    Xm[mask] = np.nan
    return X, Xm


def _observed_loglik(X, weights, means, covs):
    """sum_i log sum_k w_k N(x_io | mu_ko, Sigma_koo), one row at a time (scipy)."""
    total = 0.0
    for x in X:
        o = ~np.isnan(x)
        total += logsumexp([np.log(w) + scipy.stats.multivariate_normal.logpdf(
            x[o], m[o], c[np.ix_(o, o)]) for w, m, c in zip(weights, means, covs)])
    return total


def _full_covs(g):
    k, d = g.means_.shape
    c, t = g.covariances_, g.covariance_type
    if t == "full":
        return c
    if t == "tied":
        return np.broadcast_to(c, (k, d, d))
    return (c[:, :, None] if t == "diag" else c[:, None, None]) * np.eye(d)


# --- K = 1: the classic EM for one normal with missing data ---------------------------

def _classic_em(X, mu, sigma, n_iter):
    """Little & Rubin's EM for N(mu, Sigma) with missing entries, row by row."""
    n, d = X.shape
    for _ in range(n_iter):
        T1, T2 = np.zeros(d), np.zeros((d, d))
        for x in X:
            o, m = ~np.isnan(x), np.isnan(x)
            xh, C = x.copy(), np.zeros((d, d))
            if m.any():
                B = sigma[np.ix_(m, o)] @ np.linalg.inv(sigma[np.ix_(o, o)])
                xh[m] = mu[m] + B @ (x[o] - mu[o])
                C[np.ix_(m, m)] = sigma[np.ix_(m, m)] - B @ sigma[np.ix_(o, m)]
            T1 += xh
            T2 += np.outer(xh, xh) + C
        mu = T1 / n
        sigma = T2 / n - np.outer(mu, mu)
    return mu, sigma


def test_one_component_equals_the_classic_missing_data_em():
    _, X = _two_clusters(n=120, d=3, rate=0.25, seed=1)
    mu0 = np.nanmean(X, axis=0)
    sigma0 = np.diag(np.nanvar(X, axis=0))
    g = GaussianMixture(1, missing="marginalize", reg_covar=0.0, tol=0.0, max_iter=15,
                        means_init=mu0[None], weights_init=[1.0],
                        precisions_init=np.linalg.inv(sigma0)[None]).fit(X)
    mu, sigma = _classic_em(X, mu0, sigma0, 15)
    np.testing.assert_allclose(g.means_[0], mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.covariances_[0], sigma, rtol=1e-10, atol=1e-12)
    assert g.lower_bound_ * X.shape[0] == pytest.approx(
        _observed_loglik(X, [1.0], g.means_, g.covariances_), rel=1e-12)


def test_one_component_reaches_the_direct_maximum_of_the_observed_likelihood():
    # K = 1 (issue 17): the converged EM against scipy.optimize of the same
    # objective (9 free parameters: mean and log-Cholesky factor), from the same start
    _, X = _two_clusters(n=120, d=3, rate=0.25, seed=3)
    mu0, sigma0 = np.nanmean(X, axis=0), np.diag(np.nanvar(X, axis=0))
    g = GaussianMixture(1, missing="marginalize", reg_covar=0.0, tol=1e-11,
                        max_iter=3000, means_init=mu0[None], weights_init=[1.0],
                        precisions_init=np.linalg.inv(sigma0)[None]).fit(X)
    em = g.lower_bound_ * X.shape[0]

    groups = [(o, X[np.all(~np.isnan(X) == o, axis=1)][:, o])
              for o in np.unique(~np.isnan(X), axis=0)]     # the patterns, once

    def negative(theta):         # -L(theta) for one normal, pattern by pattern
        _, (mean,), (cov,) = _unpack(theta, 1, 3)
        total = 0.0
        for o, rows in groups:
            total += np.sum(scipy.stats.multivariate_normal.logpdf(
                rows, mean[o], cov[np.ix_(o, o)]))
        return -total

    res = scipy.optimize.minimize(negative, _pack(np.ones(1), mu0[None], sigma0[None]),
                                  method="BFGS", options={"gtol": 1e-9, "maxiter": 5000})
    # the optimiser's accuracy: at |gradient| <= gtol = 1e-9 per parameter the value
    # is within ~gtol^2 / curvature of the maximum, and its finite-difference
    # gradients (steps ~1.5e-8) leave ~1e-7 relative on the parameters; 1e-9
    # relative on the value (|L| ~ 500) covers both. EM stops at a relative change
    # of 1e-11 (its rate here < 0.5: within ~1e-11 of its maximum)
    assert em == pytest.approx(-res.fun, rel=1e-9)
    assert em >= -res.fun - 1e-9 * abs(res.fun)
    # (the parameters: the value is flat at the maximum, so a value within 5e-7
    # places them only within ~sqrt(2 5e-7 / curvature) ~ 1e-4; the classic EM
    # test above checks them at 1e-10)


# --- K = 2: a direct maximisation of the same objective ------------------------------

def _unpack(theta, k, d):
    logits = np.concatenate([[0.0], theta[:k - 1]])
    w = np.exp(logits - logsumexp(logits))
    means = theta[k - 1:k - 1 + k * d].reshape(k, d)
    L = np.zeros((k, d, d))
    rows, cols = np.tril_indices(d)
    L[:, rows, cols] = theta[k - 1 + k * d:].reshape(k, -1)
    idx = np.arange(d)
    L[:, idx, idx] = np.exp(L[:, idx, idx])
    return w, means, L @ np.swapaxes(L, 1, 2)


def _pack(w, means, covs):
    k, d = means.shape
    L = np.linalg.cholesky(covs)
    idx = np.arange(d)
    L[:, idx, idx] = np.log(L[:, idx, idx])
    rows, cols = np.tril_indices(d)
    return np.concatenate([np.log(w[1:] / w[0]), means.ravel(), L[:, rows, cols].ravel()])


def _fast_observed_loglik(X, w, means, covs):
    """The observed-data log-likelihood by pattern with np.linalg (for the optimiser)."""
    total = 0.0
    for obs in np.unique(~np.isnan(X), axis=0):
        rows = X[np.all((~np.isnan(X)) == obs, axis=1)][:, obs]
        lj = []
        for wk, m, c in zip(w, means, covs):
            c = c[np.ix_(obs, obs)]
            diff = rows - m[obs]
            quad = np.einsum("ij,ij->i", diff, np.linalg.solve(c, diff.T).T)
            lj.append(np.log(wk) - 0.5 * (quad + np.linalg.slogdet(c)[1]
                                          + obs.sum() * np.log(2 * np.pi)))
        total += np.sum(logsumexp(np.array(lj), axis=0))
    return total


def test_two_components_reach_the_direct_maximum_from_the_same_start():
    # ~4 s: BFGS with finite-difference gradients over the 11 free parameters (the
    # outside reference issue 17 asks for)
    _, X = _two_clusters(n=200, d=2, rate=0.2, seed=2)
    w0 = np.array([0.5, 0.5])
    m0 = np.array([[0.5, 0.5], [2.0, 1.5]])
    c0 = np.array([np.eye(2), np.eye(2)])
    g = GaussianMixture(2, missing="marginalize", reg_covar=0.0, tol=1e-13,
                        max_iter=2000, weights_init=w0, means_init=m0,
                        precisions_init=np.linalg.inv(c0)).fit(X)
    em = g.lower_bound_ * X.shape[0]
    res = scipy.optimize.minimize(lambda th: -_fast_observed_loglik(X, *_unpack(th, 2, 2)),
                                  _pack(w0, m0, c0), method="BFGS",
                                  options={"gtol": 1e-8, "maxiter": 5000})
    # both maximise the same objective from the same start: the same local maximum
    assert em == pytest.approx(-res.fun, rel=1e-6)
    assert em >= -res.fun - 1e-6 * abs(res.fun)
    assert em == pytest.approx(_observed_loglik(X, g.weights_, g.means_, _full_covs(g)),
                               rel=1e-12)


# --- the chain, every covariance type, hypothesis-drawn MCAR masks ---------------------

# ~0.5 s per example (15 iterations, 4 covariance types drawn): 6 examples
@settings(max_examples=6, deadline=None,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))     # fast: no shrinking
@given(seed=st.integers(0, 2**31 - 1), rate=st.floats(0.05, 0.4),
       covariance_type=st.sampled_from(TYPES))
def test_chain_holds_every_iteration_with_mcar_masks(seed, rate, covariance_type):
    _, X = _two_clusters(n=120, d=3, rate=rate, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        g = GaussianMixture(2, covariance_type=covariance_type, missing="marginalize",
                            tol=0.0, max_iter=15, random_state=seed).fit(X)
    assert len(g.history_) == 15
    for it in g.history_:
        # ELBO(q_t, theta_t) = loglik_obs(theta_t), ascent, ELBO <= loglik_obs(theta_{t+1})
        assert it.chain_holds(), (it.iteration, it.chain_slacks())
    assert g.lower_bound_ * X.shape[0] == pytest.approx(
        _fast_observed_loglik(X, g.weights_, g.means_, _full_covs(g)), rel=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_without_nan_the_missing_path_equals_the_complete_data_fit(covariance_type):
    X, _ = _two_clusters(n=150, d=3, seed=3)
    g = GaussianMixture(2, covariance_type=covariance_type, tol=0.0, max_iter=10,
                        random_state=0).fit(X)
    start = GaussianMixture(2, covariance_type=covariance_type, max_iter=0,
                            random_state=0).fit(X)
    family, weights, params = start._fitted_model()
    result = run_missing_em(prepare(X), family, weights, params, max_iter=10, tol=0.0)
    np.testing.assert_allclose(result.weights, g.weights_, rtol=1e-9)
    np.testing.assert_allclose(result.params["means"], g.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.params["covariances"], _full_covs(g), rtol=1e-8,
                               atol=1e-12)
    # and the public estimator takes the compiled path on complete data
    h = GaussianMixture(2, covariance_type=covariance_type, tol=0.0, max_iter=10,
                        random_state=0, missing="marginalize").fit(X)
    np.testing.assert_array_equal(h.means_, g.means_)


# --- the bias it removes --------------------------------------------------------------

def test_marginalizing_removes_the_bias_of_complete_case_analysis():
    rng = np.random.default_rng(4)
    n = 2000
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    X = rng.multivariate_normal([0.0, 0.0], cov, size=n)
    Xm = X.copy()
    Xm[X[:, 0] > 0.0, 1] = np.nan          # MAR: depends on the observed x0 only
    g = GaussianMixture(1, missing="marginalize", random_state=0).fit(Xm)
    se = np.sqrt(np.diag(cov) / n)          # standard error of the full-data mean
    complete_case = np.nanmean(Xm[~np.isnan(Xm[:, 1])], axis=0)
    assert abs(complete_case[1]) > 10 * se[1]            # biased by E[x1 | x0 <= 0]
    # the MLE's standard error is larger than the full-data one (x1 is missing for
    # half the rows): 3 full-data standard errors still cover it (mu_1's sd ~ 1.3 se)
    assert np.all(np.abs(g.means_[0]) < 3 * se / 0.75)


# --- predictions and imputation -------------------------------------------------------

def test_scores_and_posteriors_of_incomplete_rows_are_marginal():
    _, X = _two_clusters(n=200, d=3, seed=5)
    g = GaussianMixture(2, missing="marginalize", random_state=0).fit(X)
    covs = _full_covs(g)
    rows = X[:20]
    expected = np.array([_observed_loglik(r[None], g.weights_, g.means_, covs)
                         for r in rows])
    np.testing.assert_allclose(g.score_samples(rows), expected, rtol=1e-12)
    proba = g.predict_proba(rows)
    for r, p in zip(rows, proba):
        o = ~np.isnan(r)
        lj = [np.log(w) + scipy.stats.multivariate_normal.logpdf(r[o], m[o], c[np.ix_(o, o)])
              for w, m, c in zip(g.weights_, g.means_, covs)]
        np.testing.assert_allclose(p, np.exp(lj - logsumexp(lj)), rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(g.predict(rows), np.argmax(proba, axis=1))


def test_impute_gives_conditional_means_and_standard_deviations():
    _, X = _two_clusters(n=200, d=3, seed=6)
    g = GaussianMixture(1, missing="marginalize", random_state=0).fit(X)
    mu, S = g.means_[0], g.covariances_[0]
    filled, std = g.impute(X[:30], return_std=True)
    for x, f, s in zip(X[:30], filled, std):
        o, m = ~np.isnan(x), np.isnan(x)
        np.testing.assert_array_equal(f[o], x[o])
        np.testing.assert_array_equal(s[o], 0.0)
        if m.any():
            B = np.linalg.solve(S[np.ix_(o, o)], S[np.ix_(o, m)]).T
            np.testing.assert_allclose(f[m], mu[m] + B @ (x[o] - mu[o]), rtol=1e-10)
            C = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
            np.testing.assert_allclose(s[m], np.sqrt(np.diag(C)), rtol=1e-10)
    assert not np.isnan(g.impute(X)).any()


def test_impute_std_includes_the_spread_between_components():
    # a missing coordinate of a row equally likely under two components far apart
    g = GaussianMixture.from_parameters([0.5, 0.5], [[0.0, -5.0], [0.0, 5.0]],
                                        np.array([np.eye(2), np.eye(2)]),
                                        missing="marginalize")
    filled, std = g.impute([[0.0, np.nan]], return_std=True)
    assert filled[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert std[0, 1] == pytest.approx(np.sqrt(1.0 + 25.0), rel=1e-12)


# --- errors and dropped rows ----------------------------------------------------------

def test_nan_is_an_error_by_default_and_missing_is_checked():
    _, X = _two_clusters(seed=7)
    with pytest.raises(ValueError, match="X"):
        GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="'missing' parameter"):
        GaussianMixture(2, missing="drop").fit(X)
    with pytest.raises(ValueError, match="'posterior' parameter"):
        GaussianMixture(2, missing="marginalize", posterior="hard").fit(X)
    with pytest.raises(ValueError, match="sample_weight"):
        GaussianMixture(2, missing="marginalize").fit(X, sample_weight=-np.ones(len(X)))
    Xinf = X.copy()
    Xinf[0, 0] = np.inf
    with pytest.raises(ValueError, match="X"):
        GaussianMixture(2, missing="marginalize").fit(Xinf)


def test_rows_with_every_coordinate_missing_are_dropped_and_counted():
    _, X = _two_clusters(seed=8)
    Xe = np.vstack([X, np.full((3, X.shape[1]), np.nan)])
    with pytest.warns(UserWarning, match="3 row"):
        g = GaussianMixture(2, missing="marginalize", random_state=0).fit(Xe)
    h = GaussianMixture(2, missing="marginalize", random_state=0).fit(X)
    assert g.n_rows_dropped_ == 3 and h.n_rows_dropped_ == 0
    np.testing.assert_array_equal(g.means_, h.means_)


def test_a_component_that_never_observes_a_coordinate_is_an_error():
    rng = np.random.default_rng(9)
    A = rng.normal(0.0, 1.0, (60, 2))
    B = rng.normal(40.0, 1.0, (60, 2))
    B[:, 1] = np.nan                     # the second cluster never shows coordinate 1
    X = np.vstack([A, B])
    with pytest.raises(ValueError, match="Component 1 has no observed value of "
                                         "coordinate 1"):
        GaussianMixture(2, missing="marginalize", weights_init=[0.5, 0.5],
                        means_init=[[0.0, 0.0], [40.0, 40.0]],
                        precisions_init=[np.eye(2), np.eye(2)]).fit(X)


# ~0.1 s per example: a hypothesis-drawn mask that hides a coordinate from every
# row of one cluster, on top of MCAR gaps
@settings(max_examples=8, deadline=None,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))     # fast: no shrinking
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 4), data=st.data(),
       rate=st.floats(0.0, 0.3), covariance_type=st.sampled_from(TYPES))
def test_a_drawn_mask_that_hides_a_coordinate_from_a_component_is_named(
        seed, d, data, rate, covariance_type):
    hidden = data.draw(st.integers(0, d - 1), label="coordinate")
    cluster = data.draw(st.integers(0, 1), label="component")
    rng = np.random.default_rng(seed)
    # two clusters 40 standard deviations apart: each row's posterior is one-hot to
    # the last bit (exp(-800) underflows), so the hiding cluster's component sees
    # no value of the hidden coordinate at all
    centres = np.array([np.zeros(d), np.full(d, 40.0)])
    X = np.vstack([rng.normal(c, 1.0, (50, d)) for c in centres])
    gone = rng.random(X.shape) < rate
    gone[50 * cluster:50 * (cluster + 1), hidden] = True
    keep = (hidden + 1) % d                            # one coordinate left per row
    gone[np.all(gone, axis=1), keep] = False
    X[gone] = np.nan
    with pytest.raises(ValueError, match=rf"Component {cluster} has no observed value "
                                         rf"of coordinate {hidden}\b"):
        GaussianMixture(2, covariance_type=covariance_type, missing="marginalize",
                        weights_init=[0.5, 0.5], means_init=centres,
                        precisions_init=_identity_precisions(covariance_type, d),
                        max_iter=5).fit(X)


def _identity_precisions(covariance_type, d, k=2):
    return {"full": np.broadcast_to(np.eye(d), (k, d, d)), "tied": np.eye(d),
            "diag": np.ones((k, d)), "spherical": np.ones(k)}[covariance_type]


# --- sample weights, priors, SQUAREM, threads (issue 17, second part) ---------------------

def _given_start(d=3):
    return dict(weights_init=[0.5, 0.5], means_init=[np.zeros(d), np.full(d, 2.0)],
                precisions_init=[np.eye(d), np.eye(d)])


def test_integer_sample_weights_equal_repeated_rows():
    _, X = _two_clusters(n=150, d=3, rate=0.25, seed=11)
    counts = np.random.default_rng(11).integers(0, 4, size=X.shape[0])
    kw = dict(missing="marginalize", tol=0.0, max_iter=12, **_given_start())
    g = GaussianMixture(2, **kw).fit(X, sample_weight=counts.astype(float))
    h = GaussianMixture(2, **kw).fit(np.repeat(X, counts, axis=0))
    # the same sums in another order (rows repeated vs weighted): the statistics
    # agree to a few hundred ulps (summation depth ~ n u), and 12 EM steps on these
    # well-conditioned covariances (condition < 10) keep that within 1e-10
    np.testing.assert_allclose(g.weights_, h.weights_, rtol=1e-10)
    np.testing.assert_allclose(g.means_, h.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.covariances_, h.covariances_, rtol=1e-10, atol=1e-12)
    assert g.lower_bound_ == pytest.approx(h.lower_bound_, rel=1e-12)
    # and the weights matter: unweighted is another fit
    u = GaussianMixture(2, **kw).fit(X)
    assert not np.allclose(u.means_, g.means_, rtol=1e-6)


def test_map_prior_through_the_missing_pass_equals_the_complete_data_map_fit():
    # without NaN the public fit takes the compiled complete-data path; the missing
    # pass (run_missing_em) with the same resolved prior must give the same MAP fit
    X, _ = _two_clusters(n=150, d=3, seed=12)
    g = GaussianMixture(2, prior="default", tol=0.0, max_iter=10, **_given_start()).fit(X)
    prior = g.prior_
    family = g._family(3, prior=prior)
    start = GaussianMixture(2, prior="default", max_iter=0, **_given_start()).fit(X)
    weights, params = start._initial_parameters(X, family, np.random.default_rng(0))
    result = run_missing_em(prepare(X), family, weights, params, max_iter=10, tol=0.0,
                            weight_concentration=prior.weight_concentration)
    np.testing.assert_allclose(result.weights, g.weights_, rtol=1e-9)
    np.testing.assert_allclose(result.params["means"], g.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.params["covariances"], g.covariances_, rtol=1e-8,
                               atol=1e-12)
    assert "log prior" in result.objective_name


@pytest.mark.parametrize("covariance_type", TYPES)
def test_map_fit_with_missing_values_keeps_its_chain(covariance_type):
    _, X = _two_clusters(n=150, d=3, rate=0.2, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        g = GaussianMixture(2, covariance_type=covariance_type, prior="default",
                            missing="marginalize", tol=0.0, max_iter=15,
                            random_state=0).fit(X)
        ml = GaussianMixture(2, covariance_type=covariance_type, missing="marginalize",
                             tol=0.0, max_iter=15, random_state=0).fit(X)
    assert g.prior_ is not None
    objectives = [it.objective for it in g.history_]
    for it in g.history_:
        assert it.chain_holds(), (it.iteration, it.chain_slacks())
        assert it.log_prior != 0.0
    # MAP-EM: loglik + log prior never decreases (up to each record's tolerance)
    for a, b, it in zip(objectives, objectives[1:], g.history_[1:]):
        assert b >= a - it.tolerance
    assert not np.allclose(g.covariances_, ml.covariances_, rtol=1e-6)


def test_squarem_with_missing_values_reaches_the_em_maximum_in_fewer_passes():
    _, X = _two_clusters(n=300, d=3, rate=0.3, seed=14)
    kw = dict(missing="marginalize", tol=1e-10, max_iter=2000, **_given_start())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        em = GaussianMixture(2, **kw).fit(X)
        sq = GaussianMixture(2, accelerate="squarem", **kw).fit(X)
    assert sq.converged_ and em.converged_
    assert sq.lower_bound_ == pytest.approx(em.lower_bound_, rel=1e-8)
    assert any(it.step == "squarem" for it in sq.history_)
    assert len(sq.history_) < len(em.history_)
    for it in sq.history_:
        assert it.chain_holds(), (it.iteration, it.step, it.chain_slacks())


def test_missing_value_fit_is_bitwise_the_same_for_any_n_jobs():
    # > 16 tiles of 256 rows: several blocks, run by 1 or 3 threads
    _, X = _two_clusters(n=5000, d=3, rate=0.2, seed=15)
    kw = dict(missing="marginalize", tol=0.0, max_iter=5, random_state=0)
    a = GaussianMixture(2, n_jobs=1, **kw).fit(X)
    b = GaussianMixture(2, n_jobs=3, **kw).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    assert a.lower_bound_ == b.lower_bound_


def test_partial_fit_with_missing_values_is_a_clear_error():
    _, X = _two_clusters(seed=16)
    with pytest.raises(ValueError, match="partial_fit must not have missing values"):
        GaussianMixture(2, missing="marginalize", random_state=0).partial_fit(X)


# --- chunked sources ------------------------------------------------------------------

def _memmap(tmp_path, X, name="x.dat"):
    mm = np.memmap(tmp_path / name, dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    return np.memmap(tmp_path / name, dtype=np.float64, mode="r", shape=X.shape)


def test_a_memmap_with_nan_fits_bitwise_as_in_memory(tmp_path):
    # n below one block (65536 rows at d = 3): the same kernel call on the same rows
    _, X = _two_clusters(n=3000, d=3, rate=0.2, seed=17)
    kw = dict(missing="marginalize", tol=0.0, max_iter=8, random_state=0)
    a = GaussianMixture(2, **kw).fit(X)
    b = GaussianMixture(2, **kw).fit(_memmap(tmp_path, X))
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    assert a.lower_bound_ == b.lower_bound_


def test_a_memmap_with_nan_over_several_blocks_fits_as_in_memory(tmp_path):
    from emcore._input import as_source
    from emcore._missing import as_source_with_nan
    _, X = _two_clusters(n=3000, d=3, rate=0.2, seed=18)
    X[5] = np.nan                         # an all-missing row: skipped by the pass
    source = as_source_with_nan(_memmap(tmp_path, X))
    assert source.has_nan and source.n_empty_rows == 1
    source.block_rows = 1024              # 3 blocks of 4 tiles
    kw = dict(missing="marginalize", tol=0.0, max_iter=8, **_given_start())
    with pytest.warns(UserWarning, match="1 row"):
        a = GaussianMixture(2, **kw).fit(X)
    with pytest.warns(UserWarning, match="1 row"):
        b = GaussianMixture(2, **kw).fit(source)
    assert a.n_rows_dropped_ == b.n_rows_dropped_ == 1
    # the same terms summed in another grouping (blocks, and the empty row's place in
    # the tiles): statistics within ~depth u ~ 1e-13 relative; 8 EM steps on
    # covariances of condition < 10 keep the parameters within 1e-10
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-10)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=1e-12)
    # a source without NaN is the ordinary one
    assert not hasattr(as_source(_memmap(tmp_path, np.ones((4, 2)), "y.dat")), "has_nan")


# ~2 s of CPU (a local cluster in threads: its start-up dominates)
def test_a_dask_array_with_nan_fits_as_in_memory():
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    _, X = _two_clusters(n=3000, d=3, rate=0.2, seed=19)
    kw = dict(missing="marginalize", tol=0.0, max_iter=6, **_given_start())
    a = GaussianMixture(2, **kw).fit(X)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None):
        # rechunked to one block (a multiple of 4096 rows at d = 3): the same kernel
        # call on the same rows, on the worker
        b = GaussianMixture(2, **kw).fit(da.from_array(X, chunks=(1000, 3)))
        # the default start (k-means++ on the column-mean-filled array) runs there too
        c = GaussianMixture(2, missing="marginalize", max_iter=3, tol=0.0,
                            random_state=0).fit(da.from_array(X, chunks=(1000, 3)))
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    assert np.all(np.isfinite(c.means_)) and c.n_iter_ == 3


# --- product-form families (issue 17, item 4): MixtureModel(missing="marginalize") ------

from emcore import MixtureModel  # noqa: E402

PRODUCT_FORMS = {
    # name: (family_options, drawer of complete data (n, rng) -> X)
    "poisson": ({}, lambda n, rng: rng.poisson(
        np.array([[1.0, 6.0, 2.0], [7.0, 1.5, 4.0]])[rng.integers(0, 2, n)]).astype(float)),
    "bernoulli": ({}, lambda n, rng: (rng.random((n, 3)) < np.array(
        [[0.2, 0.8, 0.5], [0.9, 0.1, 0.4]])[rng.integers(0, 2, n)]).astype(float)),
    "categorical": ({"n_levels": 3}, lambda n, rng: np.minimum(
        rng.poisson(np.array([[0.3, 2.0, 1.0], [2.5, 0.2, 0.6]])[rng.integers(0, 2, n)]),
        2).astype(float)),
    "exponential": ({}, lambda n, rng: rng.exponential(
        np.array([[1.0, 5.0, 0.5], [6.0, 0.7, 2.0]])[rng.integers(0, 2, n)])),
    "gamma": ({}, lambda n, rng: rng.gamma(
        np.array([[2.0, 6.0, 3.0], [5.0, 2.5, 8.0]])[rng.integers(0, 2, n)])),
    "product": ({"parts": [("poisson", [0, 2]), ("gamma", [1])]}, lambda n, rng: np.column_stack(
        [rng.poisson(3.0, n), rng.gamma(2.0, 1.0, n), rng.poisson(1.0, n)]).astype(float)),
}


def _mask(X, rate, rng):
    """X with MCAR NaN at ``rate``, every row keeping one entry."""
    missing = rng.random(X.shape) < rate
    missing[np.all(missing, axis=1), 0] = False
    return np.where(missing, np.nan, X)


def _direct_observed_loglik(name, options, X, weights, params):
    """sum_i log sum_k w_k prod_{j observed} p_j(x_ij | k), by scipy.stats, row by row:
    the observed-data likelihood written independently of emcore's families."""
    def column_logpdf(fam, j, x, k, p):
        if fam == "poisson":
            return scipy.stats.poisson.logpmf(x, p["rates"][k, j])
        if fam == "bernoulli":
            return scipy.stats.bernoulli.logpmf(x, p["probabilities"][k, j])
        if fam == "categorical":
            return np.log(p["probabilities"][k, j, int(x)])
        if fam == "exponential":
            return scipy.stats.expon.logpdf(x, scale=1.0 / p["rates"][k, j])
        if fam == "gamma":
            return scipy.stats.gamma.logpdf(x, p["shapes"][k, j], scale=1.0 / p["rates"][k, j])
        if fam == "gaussian":              # 'diag' or 'spherical'
            return scipy.stats.norm.logpdf(x, p["means"][k, j],
                                           np.sqrt(p["covariances"][k, j, j]))
        raise AssertionError(fam)

    if name == "product":
        columns = []
        for g, (part, cols, *_) in enumerate(options["parts"]):
            sub = {key.split(".", 1)[1]: v for key, v in params.items()
                   if key.startswith(f"part{g}.")}
            columns += [(c, part, i, sub) for i, c in enumerate(cols)]
    else:
        columns = [(j, name, j, params) for j in range(X.shape[1])]
    total = 0.0
    for x in X:
        terms = [np.log(w) + sum(column_logpdf(fam, i, x[c], k, p)
                                 for c, fam, i, p in columns if not np.isnan(x[c]))
                 for k, w in enumerate(weights)]
        total += logsumexp(terms)
    return total


# ~0.3 s per example (12 iterations at n = 150, and the scipy reference)
@settings(max_examples=12, deadline=None,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))     # fast: no shrinking
@given(seed=st.integers(0, 2**31 - 1), rate=st.floats(0.05, 0.5),
       name=st.sampled_from(sorted(PRODUCT_FORMS)))
def test_product_form_chain_holds_with_hypothesis_masks(seed, rate, name):
    options, draw = PRODUCT_FORMS[name]
    rng = np.random.default_rng(seed)
    X = _mask(draw(150, rng), rate, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        m = MixtureModel(2, family=name, family_options=options, missing="marginalize",
                         tol=0.0, max_iter=12, random_state=seed).fit(X)
    assert len(m.history_) == 12
    for it in m.history_:
        # ELBO(q_t, theta_t) = loglik_obs(theta_t), ascent, ELBO <= loglik_obs(theta_{t+1})
        assert it.chain_holds(), (it.iteration, it.chain_slacks())
    # the objective is the observed-data log-likelihood, written independently: the
    # value at the fitted parameters is the engine's last record; both are sums of
    # n = 150 row values of magnitude |log p| <~ 20, so they agree to ~n * 20 * d u
    direct = _direct_observed_loglik(name, options, X, m.weights_, m.params_)
    assert m.history_[-1].value_next == pytest.approx(direct, rel=1e-10)
    # and prediction on the same rows uses the same marginal densities
    assert m.score_samples(X).sum() == pytest.approx(direct, rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_a_product_with_a_gaussian_part_marginalizes_through_the_capability(
        covariance_type):
    # the Gaussian family's own capability reached through the plugin API
    options = {"parts": [("gaussian", [0, 2], {"covariance_type": covariance_type}),
                         ("poisson", [1])]}
    rng = np.random.default_rng(34)
    z = rng.random(300) < 0.5
    X = _mask(np.column_stack([rng.normal(np.where(z, 0.0, 3.0), 1.0),
                               rng.poisson(np.where(z, 2.0, 6.0)),
                               rng.normal(np.where(z, 1.0, -1.0), 0.5)]), 0.25, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        m = MixtureModel(2, family="product", family_options=options,
                         missing="marginalize", tol=0.0, max_iter=12,
                         random_state=0).fit(X)
    assert all(it.chain_holds() for it in m.history_)
    # as in the hypothesis test above: n = 300 row values |log p| <~ 20 summed in
    # another order agree to ~n * 20 * d u
    direct = _direct_observed_loglik("product", options, X, m.weights_, m.params_)
    assert m.history_[-1].value_next == pytest.approx(direct, rel=1e-10)
    assert m.score_samples(X).sum() == pytest.approx(direct, rel=1e-10)


def test_product_form_k1_is_the_closed_form_of_the_observed_entries():
    rng = np.random.default_rng(4)
    for name, rows in (("poisson", PRODUCT_FORMS["poisson"][1](300, rng)),
                       ("bernoulli", PRODUCT_FORMS["bernoulli"][1](300, rng)),
                       ("exponential", PRODUCT_FORMS["exponential"][1](300, rng))):
        X = _mask(rows, 0.3, rng)
        m = MixtureModel(1, family=name, missing="marginalize", tol=0.0,
                         max_iter=2).fit(X)
        mean = np.nanmean(X, axis=0)
        want = 1.0 / mean if name == "exponential" else mean
        got = m.params_["rates" if name != "bernoulli" else "probabilities"][0]
        # the MLE per column over its observed entries only (not over all rows: the
        # column means of the zero-filled data would be smaller by the observed
        # share, ~0.7). Two sums of <= 300 terms in different orders: 300 u ~ 7e-14
        np.testing.assert_allclose(got, want, rtol=1e-13)
        assert not np.allclose(got, np.nansum(X, axis=0) / X.shape[0], rtol=0.05)


def test_product_form_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(5)
    X = _mask(PRODUCT_FORMS["poisson"][1](200, rng), 0.25, rng)
    counts = rng.integers(0, 4, size=X.shape[0])
    start = {"rates": [[1.0, 4.0, 2.0], [5.0, 2.0, 3.0]]}
    kw = dict(family="poisson", missing="marginalize", tol=0.0, max_iter=10,
              params_init=start, weights_init=[0.5, 0.5])
    a = MixtureModel(2, **kw).fit(X, sample_weight=counts.astype(float))
    b = MixtureModel(2, **kw).fit(np.repeat(X, counts, axis=0))
    # the same sums in another order: statistics within ~n u = 1e-13 relative, and
    # 10 EM steps (a contraction near the fit) keep the parameters within 1e-10
    np.testing.assert_allclose(a.params_["rates"], b.params_["rates"], rtol=1e-10)
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=1e-10)
    assert a.history_[-1].value_next == pytest.approx(b.history_[-1].value_next, rel=1e-12)
    c = MixtureModel(2, **kw).fit(X)
    assert not np.allclose(c.params_["rates"], a.params_["rates"], rtol=1e-6)


def test_product_form_marginalizing_removes_the_bias_of_complete_case_analysis():
    # two Poisson components; column 1 is missing at random given column 0 (MAR:
    # mostly where column 0 is small, i.e. in the component with the large rate in
    # column 1), so complete rows under-represent that component
    rng = np.random.default_rng(6)
    n = 4000
    z = rng.random(n) < 0.5
    rates = np.where(z[:, None], [[1.0, 8.0]], [[9.0, 2.0]])
    X = rng.poisson(rates).astype(float)
    drop = rng.random(n) < np.where(X[:, 0] <= 3, 0.7, 0.05)
    X[drop, 1] = np.nan
    true_mean = 0.5 * 8.0 + 0.5 * 2.0                 # E[x_1] under the model
    m = MixtureModel(2, family="poisson", missing="marginalize", random_state=0).fit(X)
    marginal = float(m.weights_ @ m.params_["rates"][:, 1])
    complete = X[~np.isnan(X[:, 1])]
    cc = MixtureModel(2, family="poisson", random_state=0).fit(complete)
    complete_case = float(cc.weights_ @ cc.params_["rates"][:, 1])
    # standard error of a mean of n Poisson-mixture draws: sqrt(Var x_1 / n),
    # Var x_1 = E[lambda] + Var[lambda] = 5 + 9 = 14
    se = np.sqrt(14.0 / n)
    assert abs(marginal - true_mean) < 3 * se
    assert abs(complete_case - true_mean) > 10 * se


def test_a_family_without_the_capability_is_refused_by_name():
    X = np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, np.nan], [2.0, 0.5]])
    with pytest.raises(ValueError, match=r"family 'student_t' does not support missing"):
        MixtureModel(2, family="student_t", missing="marginalize").fit(X)
    with pytest.raises(ValueError, match=r"must be 'soft' when X has missing values"):
        MixtureModel(2, family="poisson", posterior="hard", missing="marginalize").fit(
            np.abs(X))
    with pytest.raises(ValueError, match=r"part\(s\) of family|does not support missing"):
        MixtureModel(2, family="product", missing="marginalize", family_options={
            "parts": [("poisson", [0]), ("gaussian", [1])]}).fit(np.abs(X))
    # the default refuses NaN as before
    with pytest.raises(ValueError):
        MixtureModel(2, family="poisson").fit(np.abs(X))


def test_product_form_rows_all_missing_are_dropped_and_counted():
    rng = np.random.default_rng(8)
    X = _mask(PRODUCT_FORMS["poisson"][1](100, rng), 0.2, rng)
    X[[3, 7]] = np.nan
    with pytest.warns(UserWarning, match="2 row"):
        m = MixtureModel(2, family="poisson", missing="marginalize", random_state=0,
                         max_iter=5, tol=0.0).fit(X)
    assert m.n_rows_dropped_ == 2
    # an all-missing row scores log sum_k w_k = log 1 = 0 and has the mixture weights
    # as posterior; the fitted weights sum to 1 within K u (their normalisation) and
    # the log-sum-exp adds (K + 2) u, so |score| <= 2 (K + 2) u
    assert abs(m.score_samples(X[[3]])[0]) <= 2 * (2 + 2) * 2.0 ** -53
    np.testing.assert_allclose(m.predict_proba(X[[3]])[0], m.weights_, rtol=1e-15)


def test_a_component_never_observing_a_coordinate_is_an_error_for_product_forms():
    X = np.array([[0.0, np.nan]] * 20 + [[9.0, 3.0]] * 20 + [[10.0, 4.0]] * 20)
    start = {"rates": [[0.1, 1.0], [9.5, 3.5]]}
    with pytest.raises(ValueError, match=r"Component 0 has no observed value of "
                                         r"coordinate 1"):
        MixtureModel(2, family="poisson", missing="marginalize", params_init=start,
                     weights_init=[0.3, 0.7], max_iter=3).fit(X)


def test_complete_rows_through_the_marginalize_path_are_the_complete_data_fit():
    rng = np.random.default_rng(9)
    X = PRODUCT_FORMS["gamma"][1](200, rng)
    a = MixtureModel(2, family="gamma", missing="marginalize", random_state=0,
                     max_iter=10, tol=0.0).fit(X)
    b = MixtureModel(2, family="gamma", random_state=0, max_iter=10, tol=0.0).fit(X)
    np.testing.assert_array_equal(a.params_["shapes"], b.params_["shapes"])
    assert a.n_rows_dropped_ == b.n_rows_dropped_ == 0


# --- prediction on chunked inputs with NaN (issue 17, item 5's prediction side) -------

def test_predictions_and_impute_on_a_memmap_with_nan_are_those_in_memory(tmp_path):
    from emcore._missing import as_source_with_nan
    _, X = _two_clusters(n=3000, d=3, rate=0.2, seed=21)
    X[7] = np.nan                                   # an all-missing row: log 1 = 0
    with pytest.warns(UserWarning, match="1 row"):
        g = GaussianMixture(2, missing="marginalize", tol=0.0, max_iter=5,
                            random_state=0).fit(X)
    mm = _memmap(tmp_path, X)
    several = as_source_with_nan(mm)
    several.block_rows = 1024                       # 3 blocks of 4 tiles
    want = (g.score_samples(X), g.predict_proba(X), g.predict(X),
            *g.impute(X, return_std=True))
    assert abs(want[0][7]) <= 2 * (2 + 2) * 2.0 ** -53   # log sum_k w_k, as above
    for source in (mm, several):
        got = (g.score_samples(source), g.predict_proba(source), g.predict(source),
               *g.impute(source, return_std=True))
        # each row's outputs come from that row alone (its pattern's factorisation
        # and its row of the tile's product, tiles of 256 rows aligned with the
        # blocks): bitwise the in-memory values, whatever the blocks
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
    assert g.score(mm) == g.score(X)


def test_predictions_on_a_dask_array_with_nan_are_those_in_memory():
    da = pytest.importorskip("dask.array")
    _, X = _two_clusters(n=2000, d=3, rate=0.2, seed=22)
    g = GaussianMixture(2, missing="marginalize", tol=0.0, max_iter=5,
                        random_state=0).fit(X)
    dx = da.from_array(X, chunks=(700, 3))
    np.testing.assert_array_equal(g.score_samples(dx), g.score_samples(X))
    np.testing.assert_array_equal(g.predict_proba(dx), g.predict_proba(X))
    np.testing.assert_array_equal(g.impute(dx), g.impute(X))
    # without missing='marginalize' a chunked input with NaN is still refused
    h = GaussianMixture(2, random_state=0, max_iter=2, tol=0.0).fit(np.nan_to_num(X))
    with pytest.raises(ValueError, match="finite"):
        h.score_samples(dx)


# --- the Gaussian family's own capability ('diag', 'spherical') vs the compiled path ---

@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_the_gaussian_family_through_the_capability_reaches_the_gaussian_paths_fit(
        covariance_type):
    from emcore._missing import ObservedRows, ObservedMixture
    from emcore.engine import run_em
    from emcore.plugins.gaussian import GaussianFamily
    from emcore.registry import get_registry

    family = GaussianFamily(2, 3, covariance_type=covariance_type, reg_covar=0.0)
    _, X = _two_clusters(n=200, d=3, rate=0.2, seed=23)
    means = np.array([np.zeros(3), np.full(3, 2.0)])
    g = GaussianMixture(2, covariance_type=covariance_type, missing="marginalize", tol=0.0,
                        max_iter=400, reg_covar=0.0, weights_init=[0.5, 0.5],
                        means_init=means, precisions_init=np.ones(
                            (2, 3) if covariance_type == "diag" else 2)).fit(X)
    # the plugin API's route (what HiddenMarkovModel and a 'product' with Gaussian
    # parts run): complete rows by the compiled kernel, the others by the family's
    # log_density_observed / chunk_stats_observed
    rule = get_registry().posterior_rule("soft").factory()
    fit = run_em(ObservedRows(X), family, rule, np.array([0.5, 0.5]),
                 family.params_from_covariances(means, np.broadcast_to(np.eye(3), (2, 3, 3))),
                 max_iter=400, tol=0.0, structure=ObservedMixture(2))
    assert all(it.chain_holds() for it in fit.history)
    # two different exact EMs for the same observed-data likelihood (the compiled
    # path also treats the missing coordinates as latent, so it steps more slowly)
    # from the same start: the same fixed point. After 400 steps both have stopped
    # moving (parameter change below 1e-12; EM's rate here is < 0.9, so each is
    # within 1e-11 of its fixed point), hence rtol 1e-9 on the parameters
    assert g.history_[-1].param_change < 1e-12 and fit.history[-1].param_change < 1e-12
    np.testing.assert_allclose(fit.params["means"], g.means_, rtol=1e-9, atol=1e-10)
    variances = np.einsum("kjj->kj", fit.params["covariances"])
    np.testing.assert_allclose(variances if covariance_type == "diag" else variances[:, 0],
                               g.covariances_, rtol=1e-9)
    np.testing.assert_allclose(fit.weights, g.weights_, rtol=1e-9)
    assert fit.value == pytest.approx(g.lower_bound_ * X.shape[0], rel=1e-12)
    # the product-form EM takes fewer steps to get there (no imputation drag)
    steps = [next(t for t, it in enumerate(h) if it.param_change < 1e-8)
             for h in (fit.history, g.history_)]
    assert steps[0] < steps[1]


# --- HiddenMarkovModel with a product-form emission ----------------------------------

def _forward_loglik(X, lengths, pi, A, log_terms):
    """log p(X) of an HMM by the forward recursion, each row's emission the product
    over its observed entries, written independently: ``log_terms(rows)`` gives the
    per-entry log-densities (L, K, d) by scipy (rows with NaN read as 0)."""
    total, start = 0.0, 0
    for L in lengths:
        seq = X[start:start + L]
        start += L
        terms = log_terms(np.nan_to_num(seq))
        log_b = np.where(np.isnan(seq)[:, None, :], 0.0, terms).sum(axis=2)
        alpha = np.log(pi) + log_b[0]
        for t in range(1, L):
            alpha = logsumexp(alpha[:, None] + np.log(A), axis=0) + log_b[t]
        total += logsumexp(alpha)
    return total


# ~2 s under load (15 forward-backward passes through the Python emission path)
def test_a_hidden_markov_model_marginalizes_missing_emissions():
    from emcore import HiddenMarkovModel
    rng = np.random.default_rng(24)
    A = np.array([[0.9, 0.1], [0.2, 0.8]])
    states = [0]
    for _ in range(299):
        states.append(rng.choice(2, p=A[states[-1]]))
    X = rng.poisson(np.array([[1.0, 6.0], [7.0, 1.5]])[states]).astype(float)
    X[rng.random(X.shape) < 0.25] = np.nan
    X[10] = np.nan                     # a step with nothing observed: emission density 1
    lengths = [150, 150]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # tol=0 runs max_iter steps on purpose (HiddenMarkovModel still says so)
        warnings.filterwarnings("ignore", "HiddenMarkovModel stopped after")
        h = HiddenMarkovModel(2, family="poisson", missing="marginalize", tol=0.0,
                              max_iter=15, random_state=0).fit(X, lengths=lengths)
    assert all(it.chain_holds() for it in h.history_)
    # the objective is the observed-data likelihood of the chain: 300 forward steps
    # of terms ~|log p| < 20, summed in another order, agree to ~300 * 20 * 8 u
    rates = h.params_["rates"]
    direct = _forward_loglik(X, lengths, h.startprob_, h.transmat_,
                             lambda rows: scipy.stats.poisson.logpmf(rows[:, None, :],
                                                                     rates[None]))
    assert h.score(X, lengths=lengths) == pytest.approx(direct, rel=1e-11)
    assert h.history_[-1].value_next == pytest.approx(direct, rel=1e-11)
    with pytest.raises(ValueError, match="family 'student_t' does not support missing"):
        HiddenMarkovModel(2, family="student_t", missing="marginalize").fit(
            X, lengths=lengths)
    with pytest.raises(ValueError):
        HiddenMarkovModel(2, family="poisson").fit(X, lengths=lengths)


# ~1 s per type (15 forward-backward passes through the Python emission path)
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_a_hidden_markov_model_marginalizes_missing_gaussian_emissions(covariance_type):
    from emcore import HiddenMarkovModel
    rng = np.random.default_rng(25)
    A = np.array([[0.9, 0.1], [0.2, 0.8]])
    states = [0]
    for _ in range(299):
        states.append(rng.choice(2, p=A[states[-1]]))
    X = np.array([[0.0, 3.0, 1.0], [4.0, -1.0, 2.0]])[states] + rng.normal(size=(300, 3))
    X[rng.random(X.shape) < 0.25] = np.nan
    X[10] = np.nan                     # a step with nothing observed: emission density 1
    lengths = [150, 150]
    options = {"covariance_type": covariance_type}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "HiddenMarkovModel stopped after")
        h = HiddenMarkovModel(2, family="gaussian", family_options=options,
                              missing="marginalize", tol=0.0, max_iter=15,
                              random_state=0).fit(X, lengths=lengths)
    assert all(it.chain_holds() for it in h.history_)
    means = h.params_["means"]
    sd = np.sqrt(np.einsum("kjj->kj", h.params_["covariances"]))
    if covariance_type == "spherical":
        assert np.all(sd == sd[:, :1])             # one variance per state
    # the observed-data likelihood of the chain by scipy.stats.norm on the observed
    # coordinates: 300 forward steps of terms |log p| < 20 summed in another order
    # agree to ~300 * 20 * 8 u, as for the Poisson emissions above
    direct = _forward_loglik(X, lengths, h.startprob_, h.transmat_,
                             lambda rows: scipy.stats.norm.logpdf(rows[:, None, :],
                                                                  means[None], sd[None]))
    assert h.score(X, lengths=lengths) == pytest.approx(direct, rel=1e-11)
    assert h.history_[-1].value_next == pytest.approx(direct, rel=1e-11)
    # 'full' correlates the coordinates: refused, naming the type and the way out
    with pytest.raises(ValueError, match=r"family 'gaussian' with covariance_type='full' "
                                         r"does not support missing values.*'diag' or "
                                         r"'spherical'.*GaussianMixture"):
        HiddenMarkovModel(2, family="gaussian", missing="marginalize").fit(
            X, lengths=lengths)


# --- MixtureModel on chunked sources with NaN (issue 17, item 5) -----------------------

def _product_data(name, n, seed, rate=0.25):
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        return _two_clusters(n=n, d=3, rate=rate, seed=seed)[1]
    options, draw = PRODUCT_FORMS[name]
    return _mask(draw(n, rng), rate, rng)


_SOURCE_STARTS = {   # given starts (the start's own reading of a source is tested apart)
    "poisson": {"rates": [[1.0, 4.0, 2.0], [5.0, 2.0, 3.0]]},
    "gamma": {"shapes": [[2.0, 4.0, 3.0], [4.0, 3.0, 6.0]],
              "rates": [[1.0, 1.0, 1.0], [1.0, 1.5, 0.8]]},
}


@pytest.mark.parametrize("name", ["poisson", "gamma", "gaussian"])
def test_mixture_model_fits_a_memmap_with_nan_bitwise_as_in_memory(tmp_path, name):
    # n below one block: the same pass on the same rows, and the same start (the
    # observed value nearest each column's mean, or the column mean for the
    # Gaussian, computed from the source's blocks)
    X = _product_data(name, 3000, seed=31)
    mm = _memmap(tmp_path, X)
    kw = dict(family=name, family_options=PRODUCT_FORMS.get(name, ({},))[0],
              missing="marginalize", tol=0.0, max_iter=8, random_state=0)
    a = MixtureModel(2, **kw).fit(X)
    b = MixtureModel(2, **kw).fit(mm)
    for key in a.params_:
        np.testing.assert_array_equal(a.params_[key], b.params_[key])
    np.testing.assert_array_equal(a.weights_, b.weights_)
    assert a.lower_bound_ == b.lower_bound_
    # predictions on the memmap: each row's outputs from that row alone
    for method in ("score_samples", "predict_proba", "predict"):
        np.testing.assert_array_equal(getattr(a, method)(X), getattr(a, method)(mm))


@pytest.mark.parametrize("name", ["poisson", "gamma"])
def test_mixture_model_fits_a_memmap_with_nan_over_several_blocks(tmp_path, name):
    from emcore._missing import as_source_with_nan
    X = _product_data(name, 3000, seed=32)
    X[5] = np.nan                          # an all-missing row: skipped by the pass
    source = as_source_with_nan(_memmap(tmp_path, X))
    source.block_rows = 1024               # 3 blocks
    kw = dict(family=name, missing="marginalize", tol=0.0, max_iter=8,
              params_init=_SOURCE_STARTS[name], weights_init=[0.5, 0.5])
    with pytest.warns(UserWarning, match="1 row"):
        a = MixtureModel(2, **kw).fit(X)
    with pytest.warns(UserWarning, match="1 row"):
        b = MixtureModel(2, **kw).fit(source)
    assert a.n_rows_dropped_ == b.n_rows_dropped_ == 1
    assert all(it.chain_holds() for it in b.history_)
    # the same terms summed in another grouping (blocks, and the complete / incomplete
    # split per block): statistics within ~depth u ~ 1e-13 relative; 8 EM steps of a
    # contraction near the fit keep the parameters within 1e-10
    for key in a.params_:
        np.testing.assert_allclose(a.params_[key], b.params_[key], rtol=1e-10)
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=1e-10)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=1e-12)
    # predictions over the blocks: per row, bitwise the in-memory ones
    for method in ("score_samples", "predict_proba", "predict"):
        np.testing.assert_array_equal(getattr(a, method)(X), getattr(a, method)(source))


def test_mixture_model_fits_a_dask_array_with_nan_as_in_memory():
    da = pytest.importorskip("dask.array")
    X = _product_data("poisson", 3000, seed=33)
    kw = dict(family="poisson", missing="marginalize", tol=0.0, max_iter=6,
              params_init=_SOURCE_STARTS["poisson"], weights_init=[0.5, 0.5])
    a = MixtureModel(2, **kw).fit(X)
    dx = da.from_array(X, chunks=(700, 3))
    # read a block at a time (no cluster): one block of 3000 rows, the same pass
    b = MixtureModel(2, **kw).fit(dx)
    np.testing.assert_array_equal(a.params_["rates"], b.params_["rates"])
    np.testing.assert_array_equal(a.score_samples(X), a.score_samples(dx))
    # the default start (the nearest observed values, from the Dask blocks) runs too
    c = MixtureModel(2, family="poisson", missing="marginalize", max_iter=3, tol=0.0,
                     random_state=0).fit(dx)
    d = MixtureModel(2, family="poisson", missing="marginalize", max_iter=3, tol=0.0,
                     random_state=0).fit(X)
    np.testing.assert_array_equal(c.params_["rates"], d.params_["rates"])
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None):
        e = MixtureModel(2, **kw).fit(dx)         # the pass on the worker
        np.testing.assert_array_equal(a.predict_proba(X), a.predict_proba(dx))
    np.testing.assert_array_equal(a.params_["rates"], e.params_["rates"])


@pytest.mark.parametrize("name", ["poisson", "gaussian"])
def test_fit_predict_with_missing_values_is_fit_then_predict(tmp_path, name):
    # fit_predict re-read X without NaN allowed after a fit that took them
    X = _product_data(name, 300, seed=35)
    kw = dict(family=name, missing="marginalize", random_state=0, max_iter=5, tol=0.0)
    labels = MixtureModel(2, **kw).fit_predict(X)
    np.testing.assert_array_equal(labels, MixtureModel(2, **kw).fit(X).predict(X))
    np.testing.assert_array_equal(labels, MixtureModel(2, **kw).fit_predict(
        _memmap(tmp_path, X)))

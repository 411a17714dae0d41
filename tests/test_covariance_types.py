"""'tied', 'diag' and 'spherical' beside 'full': scikit-learn as oracle, the (MAP)
chain, the constrained M-step and the log priors."""

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import invgamma, invwishart, multivariate_normal, norm
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from emcore import DegenerateComponentError, GaussianMixture, GaussianPrior
from emcore.exceptions import ConvergenceWarning
from emcore.registry import get_registry

from _strategies import gaussian_mixtures, sample_mixture

TYPES = ("full", "tied", "diag", "spherical")


def _quiet(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", SkConvergenceWarning)
        return model.fit(X, **kwargs)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(41)
    X = np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(4, 0.5, (200, 3)),
                        rng.normal([0, 5, 0], 0.7, (200, 3))])
    return X[rng.permutation(len(X))]


# scikit-learn computes diag/spherical/tied covariances from raw second moments
# (E[x^2] - mu^2): relative error ~ n u (1 + |mu|^2 / sigma^2) ~ 700 * 1.1e-16 * 100
# ~ 1e-11 per step on these blobs; ours are centred. 'full' is centred in both.
RTOL = {"full": 1e-10, "tied": 1e-9, "diag": 1e-9, "spherical": 1e-9}


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("max_iter", [1, 30])
def test_scikit_learn_as_oracle(blobs, covariance_type, max_iter):
    X = blobs
    start = _quiet(SkGaussianMixture(3, covariance_type=covariance_type, max_iter=2,
                                     random_state=0), X)
    kw = dict(weights_init=start.weights_, means_init=start.means_,
              precisions_init=start.precisions_, covariance_type=covariance_type,
              tol=0.0, max_iter=max_iter)
    sk = _quiet(SkGaussianMixture(3, **kw), X)
    em = _quiet(GaussianMixture(3, n_jobs=1, **kw), X)
    rtol = RTOL[covariance_type]
    # the log-likelihood itself agrees to 1e-10 for every type (observed ~1e-15)
    assert em.score(X) == pytest.approx(sk.score(X), rel=1e-10)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_"):
        ours, theirs = getattr(em, name), getattr(sk, name)
        assert ours.shape == theirs.shape, name
        assert np.allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max()), name
    assert em.bic(X) == pytest.approx(sk.bic(X), rel=rtol)
    assert em._n_parameters() == sk._n_parameters()
    assert np.array_equal(em.predict(X), sk.predict(X))


@given(mixture=gaussian_mixtures(min_k=1, max_k=3, max_d=3, separation=8.0),
       n_per=st.integers(8, 30), seed=st.integers(0, 2**32 - 1),
       covariance_type=st.sampled_from(TYPES), prior=st.booleans(),
       reg_covar=st.sampled_from([0.0, 1e-6, 0.1]),
       offset=st.sampled_from([0.0, 0.0, 1e4]), weighted=st.booleans())
def test_chain_holds_for_every_type(mixture, n_per, seed, covariance_type, prior,
                                    reg_covar, offset, weighted):
    w, means, covs = mixture
    k, d = means.shape
    X = sample_mixture((w, means + offset, covs), n_per * k * (d + 1), seed)
    sample_weight = None
    if weighted:   # exponential weights, a few exact zeros
        rng = np.random.default_rng(seed)
        sample_weight = rng.exponential(1.0, len(X)) * (rng.random(len(X)) > 0.1)
        sample_weight[:k] = 1.0
    gm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar,
                         prior="default" if prior else None, max_iter=20, tol=0.0,
                         random_state=seed % 991, n_jobs=1)
    try:
        _quiet(gm, X, sample_weight=sample_weight)
    except DegenerateComponentError:
        assert not prior and reg_covar == 0.0     # only without both remedies
        return
    for it in gm.history_:
        assert it.chain_holds(), (covariance_type, it.chain_slacks())
        if reg_covar == 0.0:
            assert it.objective >= it.value + it.log_prior - it.tolerance


def _family(covariance_type, k, d, prior=None, reg_covar=0.0):
    return get_registry().family("gaussian").factory(
        k, d, covariance_type=covariance_type, reg_covar=reg_covar, prior=prior)


def _random_params(family, covariance_type, rng, k, d):
    """Parameters satisfying the type's constraint."""
    means = rng.normal(0, 2, (k, d))
    if covariance_type == "full":
        A = rng.normal(size=(k, d, d))
        covs = A @ np.swapaxes(A, 1, 2) + np.eye(d)
    elif covariance_type == "tied":
        A = rng.normal(size=(d, d))
        covs = np.broadcast_to(A @ A.T + np.eye(d), (k, d, d)).copy()
    elif covariance_type == "diag":
        covs = rng.uniform(0.3, 3, (k, d))[:, :, None] * np.eye(d)
    else:
        covs = rng.uniform(0.3, 3, k)[:, None, None] * np.eye(d)
    return family.params_from_covariances(means, covs)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("with_prior", [False, True])
def test_m_step_is_the_constrained_maximiser(covariance_type, with_prior):
    rng = np.random.default_rng(7)
    k, d = 2, 3
    X = rng.normal(size=(40, d)) * [1.0, 0.5, 2.0] + [1.0, 0.0, -1.0]
    prior = GaussianPrior(shrinkage=0.2).resolve(X, k, None, covariance_type) \
        if with_prior else None
    family = _family(covariance_type, k, d, prior=prior)
    q = rng.dirichlet(np.ones(k), size=len(X))
    stats = family.chunk_stats(X, q)
    best = family.m_step(stats, None)

    def objective(p):
        return family.expected_log_likelihood(stats, p) + family.log_prior(p)[0]

    top = objective(best)
    for _ in range(40):
        other = _random_params(family, covariance_type, rng, k, d)
        # also small moves around the optimum, inside the constraint set
        t = rng.uniform(0.0, 0.05)
        means = best["means"] + t * (other["means"] - best["means"])
        covs = best["covariances"] + t * (other["covariances"] - best["covariances"])
        near = family.params_from_covariances(means, covs)
        for p in (other, near):
            assert objective(p) <= top + 1e-10 * abs(top)
    # Targeted moves inside every type's constraint set: scale all covariances (or
    # one component's, unless tied) by 1 +- 1e-3, shift one mean coordinate by
    # +-1e-3. At the maximiser none may gain; a wrong M-step (say a prior scale
    # counted twice) is off by more than that and gains along one of them.
    for factor in (1 - 1e-3, 1 + 1e-3):
        scales = [np.full(k, factor)]
        if covariance_type != "tied":
            scales += [np.where(np.arange(k) == j, factor, 1.0) for j in range(k)]
        for c in scales:
            moved = family.params_from_covariances(
                best["means"], best["covariances"] * c[:, None, None])
            assert objective(moved) <= top + 1e-12 * abs(top)
        for j in range(k):
            for a in range(d):
                shift = np.zeros((k, d))
                shift[j, a] = (factor - 1.0) * max(1.0, abs(best["means"][j, a]))
                moved = family.params_from_covariances(best["means"] + shift,
                                                       best["covariances"])
                assert objective(moved) <= top + 1e-12 * abs(top)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "tied"])
def test_log_prior_matches_scipy(covariance_type):
    rng = np.random.default_rng(8)
    k, d = 2, 3
    X = rng.normal(size=(30, d))
    prior = GaussianPrior(shrinkage=0.4, dof=5.5).resolve(X, k, None, covariance_type)
    family = _family(covariance_type, k, d, prior=prior)
    params = _random_params(family, covariance_type, rng, k, d)
    mu, covs = params["means"], params["covariances"]
    if covariance_type == "tied":
        expected = invwishart(df=prior.dof, scale=prior.scale).logpdf(covs[0]) + sum(
            multivariate_normal(prior.mean, covs[0] / prior.shrinkage).logpdf(mu[j])
            for j in range(k))
    elif covariance_type == "diag":
        var = np.einsum("kjj->kj", covs)
        expected = np.sum(invgamma(prior.dof / 2, scale=prior.scale_scalar / 2).logpdf(var)
                          + norm(prior.mean, np.sqrt(var / prior.shrinkage)).logpdf(mu))
    else:
        var = covs[:, 0, 0]
        expected = np.sum(invgamma(prior.dof / 2, scale=prior.scale_scalar / 2).logpdf(var))
        expected += sum(multivariate_normal(prior.mean, var[j] / prior.shrinkage * np.eye(d))
                        .logpdf(mu[j]) for j in range(k))
    assert family.log_prior(params)[0] == pytest.approx(expected, rel=1e-12)


def test_default_scalar_scale_for_diagonal_types_is_mclusts():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(100, 4)) * [1, 2, 3, 4]
    for t in ("diag", "spherical"):
        p = GaussianPrior().resolve(X, 3, None, t)
        assert p.scale_scalar == pytest.approx(np.mean(np.var(X, axis=0, ddof=1))
                                               / 3 ** (2 / 4), rel=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_degenerate_data_fit_with_a_prior_for_every_type(covariance_type):
    X = np.r_[np.ones((8, 2)), np.zeros((8, 2)), [[5.0, 5.0]]]
    gm = _quiet(GaussianMixture(3, covariance_type=covariance_type, prior="default",
                                reg_covar=0.0, random_state=0), X)
    assert all(np.all(np.isfinite(a)) for a in (gm.weights_, gm.means_, gm.covariances_))
    assert all(it.chain_holds() for it in gm.history_)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_sample_weights_act_as_repetition_for_every_type(blobs, covariance_type):
    X = blobs[:200]
    w = np.random.default_rng(10).integers(0, 3, len(X)).astype(float)
    start = _quiet(SkGaussianMixture(2, covariance_type=covariance_type, max_iter=2,
                                     random_state=0), X)
    kw = dict(weights_init=start.weights_, means_init=start.means_,
              precisions_init=start.precisions_, covariance_type=covariance_type,
              tol=0.0, max_iter=20, n_jobs=1)
    a = _quiet(GaussianMixture(2, **kw), X, sample_weight=w)
    b = _quiet(GaussianMixture(2, **kw), np.repeat(X, w.astype(int), axis=0))
    assert np.allclose(a.covariances_, b.covariances_, rtol=1e-9, atol=1e-12)
    assert np.allclose(a.means_, b.means_, rtol=1e-9, atol=1e-12)

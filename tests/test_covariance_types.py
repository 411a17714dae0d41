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


# --- mclust's fourteen models (docs/gaussian.md#mclust-models) ---------------------

MCLUST = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV",
          "VEV", "EVV", "VVV")
ALIASES = {"full": "VVV", "tied": "EEE", "diag": "VVI", "spherical": "VII"}


def _scatters(seed: int, k: int = 3, d: int = 3):
    """Weights n_k and centred scatters W_k of k unequal, differently shaped and
    rotated clusters (so that every constraint binds)."""
    rng = np.random.default_rng(seed)
    n = np.array([40.0, 25.0, 60.0])[:k]
    W = []
    for j in range(k):
        A = rng.standard_normal((d, d)) * (1.0 + j)
        Y = rng.standard_normal((int(n[j]), d)) @ A
        Y -= Y.mean(axis=0)
        W.append(Y.T @ Y)
    return n, np.array(W)


def _objective(n, W, S):
    # sum_k n_k log|Sigma_k| + tr(W_k Sigma_k^{-1}): minus twice Q's covariance part
    return float(sum(n[j] * np.linalg.slogdet(S[j])[1] + np.trace(np.linalg.solve(S[j], W[j]))
                     for j in range(len(n))))


def _decompose(model: str, S: np.ndarray):
    """(volumes, log-shapes, orientations) of covariances of ``model``, one entry
    per distinct ('E') or per-component ('V') factor; 'I' factors are None."""
    k, d = S.shape[0], S.shape[1]
    vol = np.exp(np.linalg.slogdet(S)[1] / d)
    if model[2] == "I":
        D = np.broadcast_to(np.eye(d), (k, d, d))
    elif model[2] == "E":
        # the shared eigenvectors: those of a generic combination
        D = np.broadcast_to(np.linalg.eigh(np.einsum("k,kij->ij", np.arange(1.0, k + 1),
                                                     S))[1], (k, d, d))
    else:
        D = np.linalg.eigh(S)[1]
    shape = np.einsum("kji,kjl,kli->ki", D, S, D) / vol[:, None]
    pick = {"E": slice(0, 1), "V": slice(None), "I": slice(0, 0)}
    return (np.log(vol[pick[model[0]]]), np.log(shape[pick[model[1]]]),
            D[pick[model[2]]] if model[2] != "I" else None)


def _compose(model, k, d, log_vol, log_shape, D, skew):
    """Covariances from the factors, each orientation turned by the Cayley
    transform (I - A)^-1 (I + A) of the skew-symmetric A with upper triangle skew."""
    vol = np.broadcast_to(np.exp(log_vol), (k,))
    if model[1] == "I":
        shape = np.ones((k, d))
    else:
        ls = log_shape - log_shape.mean(axis=1, keepdims=True)          # |A| = 1
        shape = np.broadcast_to(np.exp(ls), (k, d))
    if D is None:
        R = np.broadcast_to(np.eye(d), (k, d, d))
    else:
        iu = np.triu_indices(d, 1)
        R = []
        for j, s in enumerate(skew):
            A = np.zeros((d, d))
            A[iu] = s
            A -= A.T
            R.append(D[j] @ np.linalg.solve(np.eye(d) - A, np.eye(d) + A))
        R = np.array(R)
        R = np.broadcast_to(R, (k, d, d))
    return vol[:, None, None] * np.einsum("kij,kj,klj->kil", R, shape, R)


@pytest.mark.parametrize("model", MCLUST)
@pytest.mark.parametrize("seed", [0, 1])
def test_mclust_m_step_is_the_constrained_minimiser(model, seed):
    # The M-step's covariances (i) satisfy the model's constraint: they are
    # rebuilt from their volume / shape / orientation factors, shared as the name
    # says, to rounding; (ii) no move of those factors lowers the objective: a
    # quasi-Newton minimiser started there finds nothing (an M-step stopped short,
    # as mclust's VVE, is improved by ~1 here). Tolerance: the objective is a sum
    # of k terms of size n_k (d + |log|Sigma_k||) ~ 1e3 computed to ~1e-13 relative;
    # BFGS's own gains below 1e-7 are its line-search noise.
    from scipy.optimize import minimize
    n, W = _scatters(seed)
    k, d = W.shape[0], W.shape[1]
    family = get_registry().family("gaussian").factory(k, d, covariance_type=model,
                                                        reg_covar=0.0)
    stats = family.chunk_stats(*_rows_of(n, W))
    S = family.m_step(stats, None)["covariances"]
    f0 = _objective(n, W, S)
    log_vol, log_shape, D = _decompose(model, S)
    n_skew = 0 if D is None else D.shape[0]
    sizes = (log_vol.size, log_shape.size, n_skew * d * (d - 1) // 2)

    def unpack(theta):
        a, b = sizes[0], sizes[0] + sizes[1]
        return (theta[:a], theta[a:b].reshape(log_shape.shape),
                theta[b:].reshape(n_skew, d * (d - 1) // 2))

    def f(theta):
        lv, ls, skew = unpack(theta)
        return _objective(n, W, _compose(model, k, d, lv, ls, D, skew))

    theta0 = np.concatenate([log_vol, log_shape.ravel(), np.zeros(sizes[2])])
    rebuilt = _compose(model, k, d, *unpack(theta0)[:2], D, unpack(theta0)[2])
    assert np.allclose(rebuilt, S, rtol=1e-9, atol=1e-12 * np.max(np.abs(S)))
    best = minimize(f, theta0, method="BFGS").fun
    assert best >= f0 - 1e-7 * abs(f0), (f0, best)


def _rows_of(n, W):
    """Rows X and one-hot responsibilities whose weights and centred scatters are
    n and W (each cluster: points m_k +- the scaled eigenvectors of W_k)."""
    k, d = W.shape[0], W.shape[1]
    rows, resp = [], []
    for j in range(k):
        w, V = np.linalg.eigh(W[j])
        # 2d points m +- s_i v_i with weights n_k / (2d): scatter (n_k / d) sum_i
        # s_i^2 v_i v_i^T = W_k for s_i^2 = d w_i / n_k
        s = V * np.sqrt(d * np.maximum(w, 0.0) / n[j])
        pts = np.concatenate([s, -s], axis=1).T + 10.0 * j
        rows.append(pts)
        r = np.zeros((2 * d, k))
        r[:, j] = n[j] / (2 * d)
        resp.append(r)
    return np.concatenate(rows), np.concatenate(resp)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_sklearn_names_are_the_mclust_models_bit_for_bit(blobs, alias):
    fits = [GaussianMixture(3, covariance_type=t, random_state=0, n_jobs=1).fit(blobs)
            for t in (alias, ALIASES[alias])]
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(fits[0], name), getattr(fits[1], name)), name
    assert fits[0].lower_bound_ == fits[1].lower_bound_
    assert fits[0].bic(blobs) == fits[1].bic(blobs)


# mclust 6.0.0: nVarParams(m, d = 3, G = 4) (covariance parameters only)
MCLUST_N_VAR_PARAMS = {"EII": 1, "VII": 4, "EEI": 3, "VEI": 6, "EVI": 9, "VVI": 12,
                       "EEE": 6, "VEE": 9, "EVE": 12, "VVE": 15, "EEV": 15, "VEV": 18,
                       "EVV": 21, "VVV": 24}
SHAPES = {**{m: (4,) for m in ("EII", "VII")},
          **{m: (4, 3) for m in ("EEI", "VEI", "EVI", "VVI")}, "EEE": (3, 3),
          **{m: (4, 3, 3) for m in ("VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")}}


@pytest.mark.parametrize("model", MCLUST)
def test_mclust_model_sizes_shapes_and_constraints(blobs, model):
    family = get_registry().family("gaussian").factory(4, 3, covariance_type=model)
    assert family.n_parameters() == 4 * 3 + MCLUST_N_VAR_PARAMS[model]
    # max_iter: from this seed some of the iterative M-steps need more than 100 steps
    gm = GaussianMixture(4, covariance_type=model, reg_covar=0.0, random_state=1,
                         max_iter=1000, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no chain violation, converged
        gm.fit(blobs)
    assert gm.covariances_.shape == gm.precisions_.shape == SHAPES[model]
    # mclust's nMclustParams: weights, means and the covariances' count
    n = len(blobs)
    assert gm.bic(blobs) == pytest.approx(-2 * gm.score(blobs) * n
                                          + (3 + 12 + MCLUST_N_VAR_PARAMS[model]) * np.log(n),
                                          rel=1e-12)
    cov = np.linalg.inv(np.array([gm.precisions_cholesky_[j] @ gm.precisions_cholesky_[j].T
                                  for j in range(4)])) if len(SHAPES[model]) == 3 else None
    if cov is not None:
        vol = np.exp(np.linalg.slogdet(cov)[1] / 3)
        if model[0] == "E":          # equal volumes, to the rounding of an inverse
            assert np.allclose(vol, vol[0], rtol=1e-10)
    family.validate_params({"means": gm.means_, **{
        "covariances": _expand_cov(gm.covariances_, 4, 3),
        "precisions_cholesky": _expand_cov(gm.precisions_cholesky_, 4, 3)}})
    # the iterative M-steps are declared generalized: their records say so
    steps = {it.step for it in gm.history_}
    assert steps == ({"gem"} if model in ("VEI", "VEE", "VEV", "EVE", "VVE") else {"em"})
    assert all(it.chain_holds() for it in gm.history_)


def _expand_cov(a, k, d):
    a = np.asarray(a)
    if a.ndim == 1:
        return a[:, None, None] * np.eye(d)
    if a.shape == (k, d):
        return a[:, :, None] * np.eye(d)
    if a.ndim == 2:
        return np.broadcast_to(a, (k, d, d)).copy()
    return a


@pytest.mark.parametrize("model", ["EEI", "VEE", "EVE", "EEV", "EVV"])
def test_mclust_models_take_sample_weights(blobs, model):
    # a weight of 2 fits as the row repeated (same start: given parameters)
    X = blobs[:200]
    w = np.where(np.arange(200) % 3 == 0, 2.0, 1.0)
    start = GaussianMixture(2, covariance_type=model, reg_covar=0.0, max_iter=0,
                            random_state=0).fit(X)
    kw = dict(covariance_type=model, reg_covar=0.0, tol=0.0, max_iter=15,
              weights_init=start.weights_, means_init=start.means_,
              precisions_init=start.precisions_, n_jobs=1)
    weighted = GaussianMixture(2, **kw).fit(X, sample_weight=w)
    repeated = GaussianMixture(2, **kw).fit(np.repeat(X, w.astype(int), axis=0))
    # two sums of the same terms in another order: rounding, and the inner
    # iterations' stopping rule (1e-14 of the objective) seen through 15 steps
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name),
                                   rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("model", ["VEI", "EVE", "EVV"])
def test_mclust_models_refuse_a_prior_of_the_wrong_kind(blobs, model):
    # every model takes a prior (docs/gaussian.md#mclust-prior), resolved for its kind
    # of scale: a number for the diagonal models, a matrix for the others
    wrong = "spherical" if model != "VEI" else "full"
    with pytest.raises(ValueError, match=f"'prior'.*covariance_type='{model}'"):
        get_registry().family("gaussian").factory(
            2, 3, covariance_type=model,
            prior=GaussianPrior().resolve(blobs, 2, None, wrong))
    gm = GaussianMixture(2, covariance_type=model, prior="default", random_state=0).fit(blobs)
    assert gm.prior_.covariance_type == ("diag" if model == "VEI" else "full")


def test_singular_scatter_is_a_degenerate_component_error():
    # EVV needs each component's scatter nonsingular: two points in 3-D
    X = np.array([[0.0, 0, 0], [1, 1, 1], [10, 0, 0], [11, 2, 0], [10, 1, 3], [12, 0, 1]])
    family = get_registry().family("gaussian").factory(2, 3, covariance_type="EVV",
                                                        reg_covar=0.0)
    z = np.zeros((6, 2))
    z[:2, 0] = z[2:, 1] = 1.0
    with pytest.raises(DegenerateComponentError, match="covariance_type='EVV'"):
        family.m_step(family.chunk_stats(X, z), None)


def _overlapping_2d() -> np.ndarray:
    """Three overlapping, differently shaped and rotated clusters in 2-D (330 rows),
    where plain EM is slow (~100-300 passes to tol = 1e-8)."""
    rng = np.random.default_rng(0)

    def turn(t):
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    return np.concatenate([rng.normal(size=(150, 2)) * [2.0, 0.5] @ turn(0.3).T,
                           rng.normal(size=(100, 2)) * [1.0, 0.4] @ turn(1.2).T + [1.5, 1.0],
                           rng.normal(size=(80, 2)) * [1.5, 1.0] + [-1.0, 2.0]])


def _in_model(model: str, S: np.ndarray) -> bool:
    """The non-linear constraint of VEE, EVE, VVE, EEV or VEV holds to rounding."""
    k, d = S.shape[0], S.shape[1]
    vol = np.exp(np.linalg.slogdet(S)[1] / d)
    shape = S / vol[:, None, None]
    eig = np.linalg.eigvalsh(S)
    scale = np.max(np.abs(S))
    if model == "VEE":                       # one matrix of determinant 1
        return np.allclose(shape, shape[0], rtol=0, atol=1e-9 * np.max(np.abs(shape)))
    if model in ("EVE", "VVE"):              # shared eigenvectors: they commute
        ok = all(np.allclose(S[i] @ S[j], S[j] @ S[i], rtol=0, atol=1e-9 * scale ** 2)
                 for i in range(k) for j in range(i))
        return ok and (model == "VVE" or np.allclose(vol, vol[0], rtol=1e-9))
    # EEV: equal eigenvalues; VEV: equal eigenvalues over the volume
    e = eig if model == "EEV" else eig / vol[:, None]
    return np.allclose(e, e[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("model", ["VEE", "EVE", "VVE", "EEV", "VEV"])
def test_squarem_extrapolates_mclusts_non_linear_models(model):
    # Their constraint is not linear in the log-Cholesky coordinates: the
    # extrapolated covariances are projected back onto the model
    # (from_unconstrained). SQUAREM then takes (and the safeguard checks) jumps that
    # stay in the model, keeps the chain, and needs fewer passes than plain EM on
    # overlapping clusters (passes over the data, measured: 52 -> 19, 46 -> 25,
    # 80 -> 24, 73 -> 28, 116 -> 27 for VEE, EVE, VVE, EEV, VEV).
    X = _overlapping_2d()
    fits = {}
    for accelerate in (None, "squarem"):
        gm = GaussianMixture(3, covariance_type=model, accelerate=accelerate, tol=1e-8,
                             max_iter=2000, random_state=0, n_jobs=1)
        fits[accelerate] = _quiet(gm, X)
        assert fits[accelerate].converged_
        assert all(it.chain_holds() for it in gm.history_)
    plain, fast = fits[None], fits["squarem"]
    steps = [it.step for it in fast.history_]
    assert steps.count("squarem") >= 1
    passes = sum(step not in ("squarem", "squarem-fallback") for step in steps)
    assert passes < 0.7 * plain.n_iter_, (passes, plain.n_iter_)
    assert _in_model(model, fast.covariances_)
    family = get_registry().family("gaussian").factory(3, 2, covariance_type=model)
    params = family.params_from_covariances(fast.means_, fast.covariances_)
    assert _in_model(model, family.from_unconstrained(family.to_unconstrained(params))[
        "covariances"])


@pytest.mark.slow      # plain EM to its fixed point: 1500 passes, ~5 s per model
@pytest.mark.parametrize("model, seed", [("VEE", 0), ("EVE", 1), ("VVE", 0), ("EEV", 0),
                                         ("VEV", 1)])
def test_squarem_reaches_plain_ems_fixed_point(model, seed):
    # Both run to the rounding of their fixed point (tol = 0): the same parameters
    # to 1e-8. (From other starts an extrapolation can land in another basin of
    # these multimodal likelihoods, e.g. EVE from random_state=0, as any jump can;
    # the seeds are ones where the two paths share one.)
    X = _overlapping_2d()
    plain, fast = (_quiet(GaussianMixture(3, covariance_type=model, accelerate=a, tol=0.0,
                                          max_iter=m, random_state=seed, n_jobs=1), X)
                   for a, m in ((None, 1500), ("squarem", 150)))
    for name in ("weights_", "means_", "covariances_"):
        ours, theirs = getattr(fast, name), getattr(plain, name)
        assert np.allclose(ours, theirs, rtol=0, atol=1e-8 * np.max(np.abs(theirs))), name


def test_select_model_all_is_mclusts_fourteen(blobs):
    from emcore.model_selection import select_model
    result = select_model(blobs[::4], n_components=[1, 2], covariance_types="all",
                          random_state=0, n_init=1)
    assert result.covariance_types == MCLUST
    assert [(r.n_components, r.covariance_type) for r in result.table] == [
        (k, t) for k in (1, 2) for t in MCLUST]
    for row in result.table:
        assert row.mclust_bic == -row.bic and row.mclust_icl == -row.icl


def test_summary_names_mclust_models(blobs):
    gm = GaussianMixture(2, covariance_type="VEV", random_state=0).fit(blobs)
    summary = gm.summary(blobs)
    assert summary.model_name == "gaussian, mclust VEV covariance"
    assert "mclust VEV" in str(summary)


def test_the_estimators_list_of_mclust_models_is_the_familys():
    """GaussianMixture keeps its own copy of mclust's names and attribute shapes (an
    estimator does not import plugins): it must be the family's list, in mclust's
    order, with each model's attribute shape its representation's."""
    from emcore import gaussian_mixture as gmm
    from emcore.plugins import _mclust_models as mclust
    assert gmm._MCLUST_MODELS == mclust.MODELS
    shape_of = {"spherical": {"spherical"}, "diagonal": {"diag"}, "full": {"tied", "full"}}
    for model in mclust.MODELS:
        assert gmm._SHAPE_KIND[model] in shape_of[mclust.REPRESENTATION[model]], model
    # one matrix for all components exactly where mclust's model shares it
    assert [m for m in mclust.MODELS if gmm._SHAPE_KIND[m] == "tied"] == ["EEE"]

"""emcore.GaussianMixture follows scikit-learn's estimator conventions and API.

Constructor, parameters, cloning, repr, fitted attributes (names, shapes,
conventions), the prediction methods against independent computations (scipy
and scikit-learn evaluating emcore's parameters), information criteria,
sampling, seeding, n_init, warm_start, the initialisations, the stopping rule,
pickling and verbose output. Numerical agreement of the *fit* with
scikit-learn is in test_sklearn_oracle.py; input validation in
test_validation.py. ``check_estimator`` is not expected to pass yet.
"""

import itertools
import pickle
import warnings

import numpy as np
import pytest
import scipy.stats
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import emcore
from emcore import GaussianMixture
from emcore.exceptions import ConvergenceWarning

FITTED_ATTRIBUTES = ("weights_", "means_", "covariances_", "precisions_",
                     "precisions_cholesky_", "converged_", "stop_reason_", "n_iter_",
                     "lower_bound_", "history_", "n_features_in_", "prior_")

# --- data ---------------------------------------------------------------------------

_CENTRES3 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def _blobs3():
    """Three well-separated unit-variance blobs in 2-D, 60 rows each."""
    rng = np.random.default_rng(2024)
    X = np.vstack([rng.normal(c, 1.0, (60, 2)) for c in _CENTRES3])
    labels = np.repeat(np.arange(3), 60)
    return X, labels


X3, LABELS3 = _blobs3()
N3, D3 = X3.shape
CLUSTER_MEANS3 = np.array([X3[LABELS3 == j].mean(axis=0) for j in range(3)])


def _blobs2():
    """Two well-separated blobs of different sizes and shapes (40 and 80 rows)."""
    rng = np.random.default_rng(77)
    a = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.6], [0.6, 2.0]], 40)
    b = rng.multivariate_normal([12.0, 3.0], [[0.5, -0.2], [-0.2, 0.8]], 80)
    return np.vstack([a, b]), np.repeat([0, 1], [40, 80])


X2, LABELS2 = _blobs2()


def GM(n_components=3, **kwargs):
    """GaussianMixture with one thread unless told otherwise (fast on a busy box)."""
    kwargs.setdefault("n_jobs", 1)
    return GaussianMixture(n_components, **kwargs)


def quiet_fit(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


def match_components(found_means, true_means):
    """Permutation p with found_means[p[j]] closest to true_means[j] (max-norm)."""
    k = len(true_means)
    return min(itertools.permutations(range(k)),
               key=lambda p: np.abs(found_means[list(p)] - true_means).max())


def mixture_log_prob(X, weights, means, covariances):
    """(n, k) log pi_k + log N(x_i | mu_k, Sigma_k), from scipy."""
    return np.column_stack([
        np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(X)
        for w, m, c in zip(weights, means, covariances)])


def mixture_loglik(X, weights, means, covariances):
    return float(np.sum(logsumexp(mixture_log_prob(X, weights, means, covariances), axis=1)))


@pytest.fixture(scope="module")
def fitted3():
    """3 components on the 3 blobs; n_init=3 so the fit is the right one."""
    return quiet_fit(GM(3, random_state=0, n_init=3), X3)


# --- construction and parameters -----------------------------------------------------

def test_constructor_only_stores_its_arguments():
    args = dict(n_components=-7, covariance_type="bogus", tol="not a number",
                reg_covar=-1.0, max_iter=0, n_init=2.5, init_params="kmeans",
                weights_init=object(), means_init=[[1, 2]], precisions_init="p",
                random_state="seed", warm_start="yes", n_jobs=0, verbose=-3,
                prior="nonsense", online_step_exponent="fast", posterior="nonsense",
                accelerate="nonsense", callback="not callable", missing="nonsense",
                resp_init="z", progress="maybe")
    model = GaussianMixture(**args)          # no validation here
    for name, value in args.items():
        assert getattr(model, name) is value, name
    assert model.get_params() == args
    for name in FITTED_ATTRIBUTES:
        assert not hasattr(model, name), name
    assert [a for a in vars(model) if a not in args] == []


def test_parameters_are_scikit_learns_plus_n_jobs_and_prior():
    ours = GaussianMixture().get_params()
    theirs = SkGaussianMixture().get_params()
    assert set(ours) == (set(theirs) - {"verbose_interval"}) | {"n_jobs", "prior",
                                                                  "online_step_exponent",
                                                                  "posterior",
                                                                  "accelerate",
                                                                  "callback",
                                                                  "missing", "resp_init",
                                                                  "progress"}
    # Same defaults except the documented differences (README: stopping rule and
    # 'kmeans' initialisation).
    for name in set(ours) & set(theirs) - {"tol", "init_params"}:
        assert ours[name] == theirs[name], name
    assert ours["tol"] == 1e-6 and ours["init_params"] == "k-means++"
    assert ours["n_jobs"] is None and ours["prior"] is None
    assert ours["online_step_exponent"] == 0.6


def test_fit_returns_self_and_sets_fitted_attributes_ending_in_underscore():
    model = GM(2, random_state=0)
    params_before = dict(vars(model))
    for name in FITTED_ATTRIBUTES:
        assert not hasattr(model, name), name
    assert quiet_fit(model, X2) is model
    for name in FITTED_ATTRIBUTES:
        assert hasattr(model, name), name
    new = set(vars(model)) - set(params_before)
    # Public attributes set by fit end with "_" (private ones start with "_").
    assert all(a.endswith("_") or a.startswith("_") for a in new), new
    # fit does not change the parameters.
    assert model.get_params() == params_before
    assert model.n_features_in_ == X2.shape[1]


def test_get_params_set_params_round_trip():
    means = np.array([[0.0, 0.0], [12.0, 3.0]])
    model = GM(2, tol=1e-4, max_iter=7, random_state=3, means_init=means, verbose=0)
    params = model.get_params()
    assert params["n_components"] == 2 and params["tol"] == 1e-4
    assert params["means_init"] is means
    assert model.get_params(deep=False) == params
    rebuilt = GaussianMixture(**params)
    assert rebuilt.get_params() == params

    other = GaussianMixture()
    assert other.set_params(**params) is other
    assert other.get_params() == params
    assert other.set_params(n_components=5, init_params="random") is other
    assert other.n_components == 5 and other.init_params == "random"
    assert other.get_params()["n_components"] == 5
    with pytest.raises(ValueError, match="bogus"):
        other.set_params(bogus=1)


def test_set_params_then_fit_uses_the_new_values():
    model = GM(1, random_state=0)
    quiet_fit(model, X2)
    model.set_params(n_components=2)
    quiet_fit(model, X2)
    assert model.means_.shape == (2, 2)


def test_sklearn_clone():
    means = np.array([[0.0, 0.0], [12.0, 3.0]])
    model = GM(2, random_state=5, means_init=means, tol=1e-5)
    copy = clone(model)
    assert type(copy) is GaussianMixture and copy is not model
    params, copy_params = model.get_params(), copy.get_params()
    assert params.keys() == copy_params.keys()
    for name in params:
        np.testing.assert_array_equal(copy_params[name], params[name], err_msg=name)
    # A clone of a fitted model is an unfitted model with the same parameters.
    quiet_fit(model, X2)
    copy = clone(model)
    assert not any(hasattr(copy, name) for name in FITTED_ATTRIBUTES)
    np.testing.assert_array_equal(
        quiet_fit(copy, X2).means_, model.means_)


def _normalise(text):
    return " ".join(text.split())


@pytest.mark.parametrize("params", [
    {},
    {"n_components": 3},
    {"n_components": 3, "random_state": 0},
    {"n_components": 2, "reg_covar": 1e-4, "max_iter": 50, "warm_start": True,
     "init_params": "random"},
    {"means_init": np.zeros((2, 2)), "n_components": 2},
])
def test_repr_like_scikit_learn(params):
    # Only non-default parameters, sorted by name, as scikit-learn prints them.
    ours = repr(GaussianMixture(**params))
    theirs = repr(SkGaussianMixture(**params))
    assert _normalise(ours) == _normalise(theirs)


def test_repr_shows_only_non_default_parameters():
    assert repr(GaussianMixture()) == "GaussianMixture()"
    assert repr(GaussianMixture(tol=1e-6, n_jobs=None)) == "GaussianMixture()"
    assert repr(GaussianMixture(n_jobs=2, tol=1e-3)) == "GaussianMixture(n_jobs=2, tol=0.001)"
    assert repr(quiet_fit(GM(2, random_state=0, max_iter=3), X2)) == \
        "GaussianMixture(max_iter=3, n_components=2, n_jobs=1, random_state=0)"


@pytest.mark.parametrize("change", [
    pytest.param({"n_components": 3}, id="n_components-3"),
    pytest.param({"n_components": 1}, id="n_components-1"),
    pytest.param({"reg_covar": 1.0}, id="reg_covar"),
    pytest.param({"covariance_type": "spherical"}, id="covariance_type"),
    pytest.param({"posterior": "hard"}, id="posterior"),
    pytest.param({"tol": 0.5, "max_iter": 1, "n_init": 4}, id="loop-parameters"),
    pytest.param({"init_params": "random", "means_init": np.zeros((4, 2))},
                 id="init-parameters"),
])
def test_methods_of_a_fitted_model_use_the_fitted_state(change):
    # As in scikit-learn: set_params changes what the next fit does, not what the
    # fitted model predicts.
    model = quiet_fit(GM(2, random_state=0), X2)
    Xnew = X2[::9]
    methods = ("predict", "predict_proba", "score_samples", "score", "bic", "aic")
    before = {name: getattr(model, name)(Xnew) for name in methods}
    sample_before = model.sample(6)
    model.set_params(**change)
    for name in methods:
        np.testing.assert_array_equal(getattr(model, name)(Xnew), before[name],
                                      err_msg=name)
    for got, want in zip(model.sample(6), sample_before):
        np.testing.assert_array_equal(got, want)


def test_warm_start_after_changing_n_components_starts_afresh():
    model = quiet_fit(GM(2, warm_start=True, random_state=0, max_iter=5), X3)
    model.set_params(n_components=3)
    quiet_fit(model, X3)
    assert model.means_.shape == (3, 2) and model.weights_.shape == (3,)


# --- fitted attributes: shapes and conventions --------------------------------------

def test_shapes_and_types_match_scikit_learn(fitted3):
    sk = SkGaussianMixture(3, random_state=0).fit(X3)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_"):
        ours, theirs = getattr(fitted3, name), getattr(sk, name)
        assert ours.shape == theirs.shape, name
        assert ours.dtype == np.float64, name
    assert fitted3.n_features_in_ == sk.n_features_in_ == D3
    assert isinstance(fitted3.converged_, bool)
    assert isinstance(fitted3.n_iter_, int)
    assert isinstance(fitted3.lower_bound_, float)
    assert fitted3.stop_reason_ in ("tol", "max_iter", "interrupted")
    Xnew = X3[:7]
    for name in ("predict", "predict_proba", "score_samples"):
        ours, theirs = getattr(fitted3, name)(Xnew), getattr(sk, name)(Xnew)
        assert ours.shape == theirs.shape, name
        assert ours.dtype.kind == theirs.dtype.kind, name
    assert isinstance(fitted3.score(Xnew), float)
    assert np.ndim(fitted3.bic(Xnew)) == np.ndim(fitted3.aic(Xnew)) == 0
    (Xs, ys), (Xs_sk, ys_sk) = fitted3.sample(5), sk.sample(5)
    assert Xs.shape == Xs_sk.shape and ys.shape == ys_sk.shape
    assert ys.dtype.kind == "i"


def test_weights_form_a_distribution(fitted3):
    assert np.all(fitted3.weights_ >= 0)
    assert fitted3.weights_.sum() == pytest.approx(1.0, abs=1e-12)


def test_precisions_are_inverse_covariances_with_upper_cholesky(fitted3):
    cov, prec, U = (fitted3.covariances_, fitted3.precisions_,
                    fitted3.precisions_cholesky_)
    d = cov.shape[1]
    for k in range(len(cov)):
        np.testing.assert_allclose(cov[k], cov[k].T, rtol=1e-14, atol=0)
        np.testing.assert_allclose(prec[k], np.linalg.inv(cov[k]),
                                   rtol=1e-10, atol=1e-12 * np.abs(prec[k]).max())
        np.testing.assert_allclose(prec[k] @ cov[k], np.eye(d), atol=1e-10)
        # scikit-learn's convention: upper-triangular U with precision U U^T.
        assert np.all(np.tril(U[k], -1) == 0), U[k]
        assert np.all(np.diag(U[k]) > 0)
        np.testing.assert_allclose(U[k] @ U[k].T, prec[k], rtol=1e-12,
                                   atol=1e-14 * np.abs(prec[k]).max())
        assert np.all(np.linalg.eigvalsh(cov[k]) > 0)


def test_fitted_parameters_recover_the_blobs(fitted3):
    perm = list(match_components(fitted3.means_, CLUSTER_MEANS3))
    np.testing.assert_allclose(fitted3.means_[perm], CLUSTER_MEANS3, atol=1e-4)
    np.testing.assert_allclose(fitted3.weights_[perm], [1 / 3] * 3, atol=1e-4)
    for j in range(3):
        np.testing.assert_allclose(fitted3.covariances_[perm[j]],
                                   np.cov(X3[LABELS3 == j].T, bias=True) + 1e-6 * np.eye(2),
                                   atol=1e-4)


# --- prediction methods ------------------------------------------------------------

def test_predict_proba_rows_sum_to_one_and_predict_is_argmax(fitted3):
    Xnew = np.vstack([X3, [[5.0, 5.0], [-30.0, 40.0], [1e3, -1e3]]])
    proba = fitted3.predict_proba(Xnew)
    assert proba.shape == (len(Xnew), 3)
    assert np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fitted3.predict(Xnew), np.argmax(proba, axis=1))


def test_predict_recovers_the_blob_labels(fitted3):
    perm = match_components(fitted3.means_, CLUSTER_MEANS3)
    np.testing.assert_array_equal(fitted3.predict(X3), np.asarray(perm)[LABELS3])


def test_score_is_the_mean_of_score_samples(fitted3):
    for X in (X3, X3[:5], X3[::7] + 0.5):
        assert fitted3.score(X) == pytest.approx(np.mean(fitted3.score_samples(X)),
                                                 rel=1e-13)
    assert fitted3.score(X3, y=None) == fitted3.score(X3)


def test_methods_match_scipy_at_the_fitted_parameters(fitted3):
    Xnew = np.vstack([X3[::5], [[5.0, 5.0], [-3.0, 14.0]]])
    log_prob = mixture_log_prob(Xnew, fitted3.weights_, fitted3.means_,
                                fitted3.covariances_)
    log_p = logsumexp(log_prob, axis=1)
    np.testing.assert_allclose(fitted3.score_samples(Xnew), log_p, rtol=1e-10)
    np.testing.assert_allclose(fitted3.predict_proba(Xnew),
                               np.exp(log_prob - log_p[:, None]), rtol=1e-8, atol=1e-14)


def _sklearn_with_our_parameters(model, X):
    """A scikit-learn model carrying emcore's fitted parameters."""
    sk = SkGaussianMixture(model.n_components, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_"):
        setattr(sk, name, getattr(model, name).copy())
    return sk


def test_scikit_learn_evaluates_our_parameters_the_same(fitted3):
    # scikit-learn's methods read precisions_cholesky_: same convention, same numbers.
    sk = _sklearn_with_our_parameters(fitted3, X3)
    Xnew = np.vstack([X3[1::3], [[5.0, 5.0]]])
    np.testing.assert_allclose(fitted3.score_samples(Xnew), sk.score_samples(Xnew),
                               rtol=1e-10)
    np.testing.assert_allclose(fitted3.predict_proba(Xnew), sk.predict_proba(Xnew),
                               rtol=1e-8, atol=1e-14)
    np.testing.assert_array_equal(fitted3.predict(Xnew), sk.predict(Xnew))
    assert fitted3.score(Xnew) == pytest.approx(sk.score(Xnew), rel=1e-10)
    assert fitted3.bic(Xnew) == pytest.approx(sk.bic(Xnew), rel=1e-10)
    assert fitted3.aic(Xnew) == pytest.approx(sk.aic(Xnew), rel=1e-10)


def test_fit_predict_equals_fit_then_predict():
    a = GM(3, random_state=4, init_params="random", max_iter=15)
    b = clone(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = a.fit_predict(X3)
        np.testing.assert_array_equal(labels, b.fit(X3).predict(X3))
        assert a.fit_predict(X3, y=None).shape == (N3,)
    np.testing.assert_array_equal(a.means_, b.means_)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bic_aic_use_scikit_learns_formula_and_parameter_count(k):
    model = quiet_fit(GM(k, random_state=0, max_iter=20), X3)
    sk = SkGaussianMixture(k, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X3)
    p = sk._n_parameters()
    assert p == k * D3 + k * D3 * (D3 + 1) // 2 + k - 1
    for X in (X3, X3[::4]):                  # n is the rows of the X passed
        n = X.shape[0]
        loglik = model.score(X) * n
        assert model.bic(X) == pytest.approx(-2 * loglik + p * np.log(n), rel=1e-12)
        assert model.aic(X) == pytest.approx(-2 * loglik + 2 * p, rel=1e-12)
        assert model.bic(X.tolist()) == pytest.approx(model.bic(X), rel=1e-14)


def test_bic_selects_the_true_number_of_components():
    bics = [quiet_fit(GM(k, random_state=0, n_init=2, max_iter=50), X3).bic(X3)
            for k in (1, 2, 3, 4)]
    assert int(np.argmin(bics)) + 1 == 3, bics


# --- sample ------------------------------------------------------------------------

def test_sample_shapes_and_labels(fitted3):
    for n in (1, 2, 17):
        Xs, ys = fitted3.sample(n)
        assert Xs.shape == (n, D3) and ys.shape == (n,)
        assert Xs.dtype == np.float64
        assert np.all((ys >= 0) & (ys < 3))
    Xs, ys = fitted3.sample(np.int64(4))
    assert Xs.shape == (4, D3)


def test_sample_moments_approximate_the_model():
    # Sample moments against the fitted parameters, each within z standard errors
    # (the draw is seeded, so this is deterministic; z = 5 leaves ~1e-5 odds of a
    # false alarm over the ~30 comparisons for a correct sampler and a new seed).
    # Unequal weights (1/3, 2/3) and correlated, different covariances.
    model = quiet_fit(GM(2, random_state=1, max_iter=20), X2)
    n = 30000
    Xs, ys = model.sample(n)
    w, mu, cov = model.weights_, model.means_, model.covariances_
    assert abs(w[0] - w[1]) > 0.3
    z = 5.0                                  # standard errors allowed per quantity
    counts = np.bincount(ys, minlength=2)
    assert counts.sum() == n
    np.testing.assert_array_less(np.abs(counts - n * w), z * np.sqrt(n * w * (1 - w)))
    for k in range(2):
        Xk = Xs[ys == k]
        nk = len(Xk)
        se_mean = np.sqrt(np.diag(cov[k]) / nk)
        np.testing.assert_array_less(np.abs(Xk.mean(axis=0) - mu[k]), z * se_mean)
        # Var of a Gaussian sample covariance entry: (S_ii S_jj + S_ij^2) / n.
        var = np.diag(cov[k])
        se_cov = np.sqrt((np.outer(var, var) + cov[k] ** 2) / nk)
        S = np.cov(Xk.T, bias=True)
        np.testing.assert_array_less(np.abs(S - cov[k]), z * se_cov)
    # The mixture's overall mean and covariance.
    mean = w @ mu
    total = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu)) - np.outer(mean, mean)
    np.testing.assert_array_less(np.abs(Xs.mean(axis=0) - mean),
                                 z * np.sqrt(np.diag(total) / n))
    # Standard error of each covariance entry from the sample's own fourth moments
    # (the mixture is not Gaussian).
    centred = Xs - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_total = products.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(products.mean(axis=0) - total), z * se_total)


def test_sample_is_reproducible_with_an_int_random_state(fitted3):
    # As in scikit-learn: an int random_state re-seeds each call.
    a, b = fitted3.sample(10), fitted3.sample(10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --- the fitted attributes are the model ---------------------------------------------

def test_editing_means_changes_the_predictions_as_the_edited_model_says():
    model = quiet_fit(GM(2, random_state=0), X2)
    Xnew = np.vstack([X2[::7], [[6.0, 1.5]]])
    before = model.score_samples(Xnew)
    model.means_ = model.means_ + np.array([[1.0, -0.5], [0.0, 2.0]])
    log_prob = mixture_log_prob(Xnew, model.weights_, model.means_, model.covariances_)
    log_p = logsumexp(log_prob, axis=1)
    # the same comparison (and tolerance) as at the fitted parameters above
    np.testing.assert_allclose(model.score_samples(Xnew), log_p, rtol=1e-10)
    np.testing.assert_allclose(model.predict_proba(Xnew), np.exp(log_prob - log_p[:, None]),
                               rtol=1e-8, atol=1e-14)
    assert not np.allclose(model.score_samples(Xnew), before)
    # an edit in place is the model too
    model.means_[1, 0] += 3.0
    log_p = logsumexp(mixture_log_prob(Xnew, model.weights_, model.means_,
                                       model.covariances_), axis=1)
    np.testing.assert_allclose(model.score_samples(Xnew), log_p, rtol=1e-10)


@pytest.mark.parametrize("representation", ["covariances_", "precisions_",
                                            "precisions_cholesky_"])
def test_assigning_one_covariance_form_updates_the_others_and_the_predictions(
        representation):
    model = quiet_fit(GM(2, random_state=0), X2)
    new_cov = np.array([[[2.0, 0.3], [0.3, 1.0]], [[0.5, -0.1], [-0.1, 3.0]]])
    new_prec = np.linalg.inv(new_cov)
    new_chol = np.linalg.cholesky(new_prec[:, ::-1, ::-1])[:, ::-1, ::-1]  # upper U
    value = {"covariances_": new_cov, "precisions_": new_prec,
             "precisions_cholesky_": new_chol}[representation]
    setattr(model, representation, value)
    # inversions of matrices with condition number < 10: rounding far below 1e-12
    np.testing.assert_allclose(model.covariances_, new_cov, rtol=1e-12)
    np.testing.assert_allclose(model.precisions_, new_prec, rtol=1e-12)
    np.testing.assert_allclose(model.precisions_cholesky_, new_chol, rtol=1e-12, atol=1e-15)
    log_p = logsumexp(mixture_log_prob(X2, model.weights_, model.means_, new_cov), axis=1)
    np.testing.assert_allclose(model.score_samples(X2), log_p, rtol=1e-10)
    # in place, only the model's own form could change: read-only instead of ignored
    with pytest.raises(ValueError, match="read-only"):
        getattr(model, representation)[0, 0, 0] = 5.0


def test_set_params_after_fit_leaves_the_covariance_forms_of_the_fitted_type():
    model = quiet_fit(GM(2, covariance_type="diag", random_state=0), X2)
    model.set_params(covariance_type="full")
    assert model.covariances_.shape == (2, 2)
    model.covariances_ = model.covariances_ * 2.0     # still read as 'diag'
    assert model.precisions_.shape == (2, 2)


@pytest.mark.parametrize("name,value,match", [
    ("weights_", np.array([0.5, 0.6]), "'weights_' attribute .* summing to 1"),
    ("weights_", np.array([0.2, 0.3, 0.5]), "'means_' attribute .* n_components=3"),
    ("means_", np.zeros((2, 3)), "'means_' attribute .* n_features_in_=2"),
    ("means_", np.array([[0.0, np.nan], [1.0, 1.0]]), "'means_' attribute .* finite"),
    ("means_", "abc", "'means_' attribute"),
])
def test_an_invalid_fitted_attribute_is_named_at_predict_time(name, value, match):
    model = quiet_fit(GM(2, random_state=0), X2)
    setattr(model, name, value)
    for method in ("predict", "score_samples", "score"):
        with pytest.raises(ValueError, match=match):
            getattr(model, method)(X2)
    with pytest.raises(ValueError, match=match):
        model.sample(3)


@pytest.mark.parametrize("name,value,match", [
    ("covariances_", np.array([[[1.0, 0.0], [0.0, -1.0]]] * 2), "not numerically positive"),
    ("covariances_", np.array([[[1.0, 0.5], [0.0, 1.0]]] * 2), "not symmetric"),
    ("covariances_", np.ones((2, 2)), "shape \\(n_components, n_features, n_features\\)"),
    ("precisions_", np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2), "not numerically positive"),
    ("precisions_cholesky_", np.array([[[1.0, 0.0], [0.5, 1.0]]] * 2), "upper triangular"),
    ("precisions_cholesky_", np.array([[[1.0, 0.0], [0.0, -1.0]]] * 2), "positive diagonal"),
    ("covariances_", np.array([[[1.0, 0.0], [0.0, np.inf]]] * 2), "non-finite"),
])
def test_an_invalid_covariance_is_rejected_when_assigned(name, value, match):
    model = quiet_fit(GM(2, random_state=0), X2)
    before = model.score_samples(X2)
    with pytest.raises(ValueError, match=f"'{name}' attribute.*{match}"):
        setattr(model, name, value)
    np.testing.assert_array_equal(model.score_samples(X2), before)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_a_model_built_from_scikit_learns_parameters_predicts_what_it_predicts(
        covariance_type):
    sk = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X2)
    Xnew = np.vstack([X2[1::3], [[6.0, 1.5]]])
    built = GaussianMixture.from_parameters(sk.weights_, sk.means_, sk.covariances_,
                                            covariance_type=covariance_type)
    # scikit-learn's way: assign the fitted attributes of an unfitted estimator
    by_hand = GaussianMixture(2, covariance_type=covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(by_hand, name, getattr(sk, name))
    for model in (built, by_hand):
        np.testing.assert_array_equal(model.predict(Xnew), sk.predict(Xnew))
        # the same evaluation in two implementations: rounding, far below 1e-10
        np.testing.assert_allclose(model.score_samples(Xnew), sk.score_samples(Xnew),
                                   rtol=1e-10)
        np.testing.assert_allclose(model.predict_proba(Xnew), sk.predict_proba(Xnew),
                                   rtol=1e-8, atol=1e-14)
        assert model.bic(Xnew) == pytest.approx(sk.bic(Xnew), rel=1e-10)
        np.testing.assert_allclose(model.precisions_, sk.precisions_, rtol=1e-8)
    assert built.n_components == 2 and built.n_features_in_ == 2
    Xs, ys = built.sample(50)
    assert Xs.shape == (50, 2) and ys.shape == (50,)


def test_a_model_from_parameters_warm_starts_a_fit():
    model = GaussianMixture.from_parameters([0.5, 0.5], [[0.0, 0.0], [12.0, 3.0]],
                                            np.array([np.eye(2)] * 2), warm_start=True,
                                            max_iter=1, tol=0.0, n_jobs=1)
    loglik = mixture_loglik(X2, [0.5, 0.5], [[0.0, 0.0], [12.0, 3.0]], [np.eye(2)] * 2)
    model.fit(X2)                       # tol=0: max_iter asked for, no warning
    assert model.history_[0].value == pytest.approx(loglik, rel=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    ({"weights": [0.5, 0.6]}, "'weights' parameter"),
    ({"weights": "ab"}, "'weights' parameter"),
    ({"means": np.zeros((3, 2))}, "'means' parameter"),
    ({"covariances": np.zeros((2, 2, 2))}, "'covariances' parameter"),
    ({"covariances": np.array([np.eye(3)] * 2)}, "'covariances' parameter .* shape"),
    ({"covariance_type": "banana"}, "'covariance_type' parameter"),
])
def test_from_parameters_names_the_bad_argument(kwargs, match):
    args = dict(weights=[0.5, 0.5], means=np.zeros((2, 2)),
                covariances=np.array([np.eye(2)] * 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GaussianMixture.from_parameters(**args)


def test_mixture_model_predicts_from_params_and_from_parameters():
    gm = quiet_fit(GM(2, random_state=0), X2)
    mm = quiet_fit(emcore.MixtureModel(2, random_state=0, n_jobs=1), X2)
    np.testing.assert_allclose(mm.score_samples(X2), gm.score_samples(X2), rtol=1e-10)
    built = emcore.MixtureModel.from_parameters(
        gm.weights_, {"means": gm.means_ + 1.0, "covariances": gm.covariances_,
                      "precisions_cholesky": gm.precisions_cholesky_}, n_features=2)
    gm.means_ = gm.means_ + 1.0
    np.testing.assert_allclose(built.score_samples(X2), gm.score_samples(X2), rtol=1e-10)
    mm.params_ = dict(mm.params_, means=mm.params_["means"] + 1.0)
    np.testing.assert_allclose(mm.score_samples(X2), gm.score_samples(X2), rtol=1e-10)
    mm.set_params(family="kmeans", n_components=5)
    np.testing.assert_allclose(mm.score_samples(X2), gm.score_samples(X2), rtol=1e-10)
    mm.params_ = {"means": np.zeros((3, 2))}
    with pytest.raises(ValueError, match="'params_' attribute"):
        mm.predict(X2)


# --- random_state, n_init, warm_start ---------------------------------------------

def _fit_record(model):
    return (model.weights_, model.means_, model.covariances_,
            np.array([it.value for it in model.history_]), model.n_iter_)


def _assert_identical(a, b):
    for x, y in zip(_fit_record(a), _fit_record(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("init", ["k-means++", "random", "random_from_data"])
def test_same_random_state_gives_identical_fits(init):
    kw = dict(init_params=init, max_iter=10)
    _assert_identical(quiet_fit(GM(3, random_state=11, **kw), X3),
                      quiet_fit(GM(3, random_state=11, **kw), X3))
    _assert_identical(quiet_fit(GM(3, random_state=np.random.RandomState(11), **kw), X3),
                      quiet_fit(GM(3, random_state=np.random.RandomState(11), **kw), X3))
    _assert_identical(quiet_fit(GM(3, random_state=np.random.default_rng(11), **kw), X3),
                      quiet_fit(GM(3, random_state=np.random.default_rng(11), **kw), X3))


@pytest.mark.parametrize("init", ["k-means++", "random", "random_from_data"])
def test_different_random_states_usually_give_different_starts(init):
    # Unstructured data, so that different seeds give different partitions.
    X = np.random.default_rng(5).normal(size=(80, 2))
    starts = {quiet_fit(GM(3, random_state=seed, init_params=init, max_iter=1),
                        X).history_[0].value
              for seed in range(5)}
    assert len(starts) >= 3, starts


def test_a_generator_random_state_is_consumed_across_fits():
    gen = np.random.default_rng(3)
    model = GM(3, random_state=gen, init_params="random", max_iter=1)
    first = quiet_fit(model, X3).history_[0].value
    second = quiet_fit(model, X3).history_[0].value
    assert first != second


def test_n_init_keeps_the_best_log_likelihood():
    kw = dict(init_params="random_from_data", max_iter=30)
    one = quiet_fit(GM(3, random_state=0, n_init=1, **kw), X3)
    many = quiet_fit(GM(3, random_state=0, n_init=6, **kw), X3)
    assert many.lower_bound_ >= one.lower_bound_
    # The n_init draws come from one stream: the same as successive n_init=1 fits
    # sharing a Generator; n_init keeps the best of them.
    gen = np.random.default_rng(0)
    singles = [quiet_fit(GM(3, random_state=gen, **kw), X3) for _ in range(6)]
    best = max(singles, key=lambda m: m.lower_bound_)
    combined = quiet_fit(GM(3, random_state=np.random.default_rng(0), n_init=6, **kw), X3)
    assert combined.lower_bound_ == best.lower_bound_
    np.testing.assert_array_equal(combined.means_, best.means_)
    assert len({m.lower_bound_ for m in singles}) > 1     # the inits did differ


def test_warm_start_continues_from_the_fitted_parameters():
    # tol=0: max_iter iterations asked for, so no ConvergenceWarning
    model = GM(3, warm_start=True, random_state=0, init_params="random", max_iter=3, tol=0)
    model.fit(X3)
    first_final = model.history_[-1].value_next
    first_means = model.means_.copy()
    model.set_params(max_iter=1)
    model.fit(X3)
    assert model.n_iter_ == 1
    assert model.history_[0].value == pytest.approx(first_final, rel=1e-14)
    # The same as running 4 iterations in one go.
    straight = quiet_fit(GM(3, random_state=0, init_params="random", max_iter=4, tol=0), X3)
    np.testing.assert_allclose(model.means_, straight.means_, rtol=1e-12)
    assert not np.allclose(model.means_, first_means, rtol=0, atol=0)
    # warm_start=False starts afresh: its first loglik is the cold start's.
    cold = quiet_fit(GM(3, random_state=0, init_params="random", max_iter=1, tol=0), X3)
    model.set_params(warm_start=False)
    quiet_fit(model, X3)
    assert model.history_[0].value == cold.history_[0].value


def test_warm_start_with_different_n_features_raises():
    # other data cannot continue the model: scikit-learn's feature-count error,
    # not a silent fresh start
    model = quiet_fit(GM(2, warm_start=True, random_state=0, max_iter=5), X3)
    means = model.means_.copy()
    X3d = np.c_[X3, X3[:, :1]]
    X3d[:, 2] += np.random.default_rng(0).normal(size=N3)
    with pytest.raises(ValueError, match="'X' parameter .*warm_start=True.* X has 3 "
                                         "features, but GaussianMixture is expecting 2"):
        model.fit(X3d)
    np.testing.assert_array_equal(model.means_, means)
    model.set_params(warm_start=False)
    quiet_fit(model, X3d)
    assert model.means_.shape == (2, 3) and model.n_features_in_ == 3


def test_warm_start_after_changing_covariance_type_starts_afresh():
    model = quiet_fit(GM(2, warm_start=True, random_state=0, max_iter=5), X2)
    model.set_params(covariance_type="diag", max_iter=1)
    quiet_fit(model, X2)
    cold = quiet_fit(GM(2, covariance_type="diag", random_state=0, max_iter=1), X2)
    assert model.history_[0].value == cold.history_[0].value


def _interrupt_on_m_step(monkeypatch, call):
    """Make the Gaussian family's m_step raise KeyboardInterrupt on its call-th call
    (counting from 1), as Ctrl-C there would."""
    family_type = type(emcore.registry.get_registry().family("gaussian").factory(1, 1))
    original = family_type.m_step
    calls = []

    def m_step(self, stats, previous):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self, stats, previous)
    monkeypatch.setattr(family_type, "m_step", m_step)


@pytest.mark.parametrize("call", [
    pytest.param(7, id="in-the-loop-of-the-second-start"),
    pytest.param(5, id="initialising-the-second-start"),
])
def test_ctrl_c_during_n_init_reports_interrupted(monkeypatch, call):
    # n_init=3, max_iter=3, tol=0: the first start is m_step calls 1 (its
    # initialisation) to 4; the second start initialises at call 5
    _interrupt_on_m_step(monkeypatch, call)
    model = quiet_fit(GM(2, n_init=3, max_iter=3, tol=0.0, random_state=0), X2)
    assert model.stop_reason_ == "interrupted" and not model.converged_
    assert model.n_iter_ >= 1 and np.all(np.isfinite(model.means_))


def test_warm_start_of_a_converged_fit_stops_at_once():
    model = quiet_fit(GM(3, random_state=0, n_init=3, warm_start=True), X3)
    assert model.stop_reason_ == "tol"
    before = model.lower_bound_
    quiet_fit(model, X3)
    assert model.stop_reason_ == "tol" and model.n_iter_ == 1
    assert model.lower_bound_ == pytest.approx(before, rel=1e-9)


# --- initialisations ---------------------------------------------------------------

@pytest.mark.parametrize("init", ["k-means++", "random", "random_from_data"])
def test_every_init_params_finds_the_well_separated_clusters(init):
    model = quiet_fit(GM(3, init_params=init, random_state=0, n_init=5), X3)
    perm = list(match_components(model.means_, CLUSTER_MEANS3))
    np.testing.assert_allclose(model.means_[perm], CLUSTER_MEANS3, atol=1e-3)
    np.testing.assert_array_equal(model.predict(X3), np.asarray(perm)[LABELS3])


_W2 = np.array([0.7, 0.3])
_M2 = np.array([[1.0, -1.0], [11.0, 4.0]])
_P2 = np.array([np.linalg.inv([[2.0, 0.3], [0.3, 1.0]]),
                np.linalg.inv([[0.4, 0.1], [0.1, 0.9]])])


def _default_initial_parameters(random_state):
    """Independent computation of the default initial parameters on X2.

    The nearest-seed partition of two well-separated blobs is the blobs; one
    M-step gives their fractions, means and (biased) covariances + reg_covar I.
    The component order follows the seeds: read it from a one-step fit.
    """
    ref = quiet_fit(GM(2, random_state=random_state, max_iter=1), X2)
    order = match_components(ref.means_, np.array(
        [X2[LABELS2 == j].mean(axis=0) for j in range(2)]))
    blob = {order[j]: j for j in range(2)}  # component -> blob
    weights = np.array([np.mean(LABELS2 == blob[c]) for c in range(2)])
    means = np.array([X2[LABELS2 == blob[c]].mean(axis=0) for c in range(2)])
    covs = np.array([np.cov(X2[LABELS2 == blob[c]].T, bias=True) + 1e-6 * np.eye(2)
                     for c in range(2)])
    # The partition is the blobs: the reference fit started from these parameters.
    assert ref.history_[0].value == pytest.approx(
        mixture_loglik(X2, weights, means, covs), rel=1e-10)
    return weights, means, covs


@pytest.mark.parametrize("given", [("w",), ("m",), ("p",), ("w", "m"), ("w", "p"),
                                   ("m", "p"), ("w", "m", "p")],
                         ids=lambda g: "+".join(g))
def test_given_initial_parameters_are_honoured(given):
    seed = 0
    weights, means, covs = _default_initial_parameters(seed)
    kwargs = {}
    if "w" in given:
        kwargs["weights_init"], weights = _W2, _W2
    if "m" in given:
        kwargs["means_init"], means = _M2, _M2
    if "p" in given:
        kwargs["precisions_init"], covs = _P2, np.linalg.inv(_P2)
    model = GM(2, random_state=seed, max_iter=1, tol=0, **kwargs).fit(X2)
    assert model.history_[0].value == pytest.approx(
        mixture_loglik(X2, weights, means, covs), rel=1e-10)


def test_all_three_given_ignore_init_params():
    kw = dict(weights_init=_W2, means_init=_M2, precisions_init=_P2, max_iter=2, tol=0)
    fits = [quiet_fit(GM(2, init_params=init, random_state=seed, **kw), X2)
            for init, seed in (("k-means++", 0), ("random", 1), ("random_from_data", 2))]
    for other in fits[1:]:
        _assert_identical(fits[0], other)


def test_given_initial_parameters_are_not_modified():
    w, m, p = _W2.copy(), _M2.copy(), _P2.copy()
    model = quiet_fit(GM(2, weights_init=w, means_init=m, precisions_init=p,
                         random_state=0), X2)
    np.testing.assert_array_equal(w, _W2)
    np.testing.assert_array_equal(m, _M2)
    np.testing.assert_array_equal(p, _P2)
    assert model.means_ is not m and model.weights_ is not w


# --- stopping rule and history ----------------------------------------------------

def test_easy_problem_stops_on_tol_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = GM(3, random_state=0, n_init=3).fit(X3)
    assert model.stop_reason_ == "tol"
    assert model.converged_ is True
    assert model.n_iter_ < model.max_iter
    assert model.history_[-1].relative_change <= model.tol


def test_max_iter_stops_with_a_convergence_warning():
    model = GM(3, random_state=0, init_params="random", max_iter=1, tol=1e-12)
    with pytest.warns(ConvergenceWarning, match="max_iter=1") as record:
        model.fit(X3)
    assert issubclass(record[0].category, emcore.exceptions.ConvergenceWarning)
    assert issubclass(ConvergenceWarning, UserWarning)
    assert model.stop_reason_ == "max_iter"
    assert model.converged_ is False
    assert model.n_iter_ == 1 == len(model.history_)


@pytest.mark.parametrize("max_iter", [1, 4, 100])
def test_n_iter_is_the_length_of_history(max_iter):
    model = quiet_fit(GM(3, random_state=0, init_params="random", max_iter=max_iter), X3)
    assert model.n_iter_ == len(model.history_) <= max_iter
    assert [it.iteration for it in model.history_] == list(range(model.n_iter_))
    for a, b in zip(model.history_, model.history_[1:]):
        assert b.value == a.value_next
    # The stopping rule fired where history_ says.
    if model.stop_reason_ == "tol":
        assert model.history_[-1].relative_change <= model.tol
        assert all(it.relative_change > model.tol for it in model.history_[:-1])
    else:
        assert model.n_iter_ == max_iter


def test_lower_bound_is_the_score_on_the_training_data(fitted3):
    assert fitted3.lower_bound_ == pytest.approx(fitted3.score(X3), rel=1e-12)
    assert fitted3.lower_bound_ == pytest.approx(
        fitted3.history_[-1].value_next / N3, rel=1e-14)
    model = quiet_fit(GM(3, random_state=0, init_params="random", max_iter=2), X3)
    assert model.lower_bound_ == pytest.approx(model.score(X3), rel=1e-12)


def test_log_likelihood_never_decreases_without_reg_covar():
    model = quiet_fit(GM(3, random_state=2, init_params="random", reg_covar=0.0,
                         max_iter=30), X3)
    logliks = [it.value for it in model.history_] + [model.history_[-1].value_next]
    slack = [1e-12 * abs(v) for v in logliks[1:]]
    assert all(b >= a - s for a, b, s in zip(logliks, logliks[1:], slack)), logliks


# --- persistence and output -------------------------------------------------------

def test_pickle_round_trip(fitted3):
    copy = pickle.loads(pickle.dumps(fitted3))
    assert type(copy) is GaussianMixture
    assert copy.get_params().keys() == fitted3.get_params().keys()
    for name in FITTED_ATTRIBUTES:
        a, b = getattr(copy, name), getattr(fitted3, name)
        if name == "history_":
            assert a == b
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    Xnew = np.vstack([X3[::3], [[5.0, 5.0]]])
    np.testing.assert_array_equal(copy.predict(Xnew), fitted3.predict(Xnew))
    np.testing.assert_array_equal(copy.predict_proba(Xnew), fitted3.predict_proba(Xnew))
    np.testing.assert_array_equal(copy.score_samples(Xnew), fitted3.score_samples(Xnew))
    np.testing.assert_array_equal(copy.sample(5)[0], fitted3.sample(5)[0])
    # An unfitted model pickles too.
    unfitted = pickle.loads(pickle.dumps(GM(4, tol=1e-3)))
    assert unfitted.get_params() == GM(4, tol=1e-3).get_params()


def test_verbose_prints_one_line_per_iteration(capsys):
    model = quiet_fit(GM(3, random_state=0, init_params="random", max_iter=6, verbose=1),
                      X3)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == model.n_iter_
    assert all("iteration" in line for line in lines)


def test_not_verbose_prints_nothing(capsys):
    quiet_fit(GM(3, random_state=0, max_iter=6), X3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


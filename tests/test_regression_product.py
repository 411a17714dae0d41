"""The 'linear_regression' and 'product' families (plugins/regression.py,
plugins/product.py): closed forms, direct maximisation, identities, validation,
and `emcore plugins` describing every family."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
from scipy.special import logsumexp, log_softmax

from emcore import DegenerateComponentError, MixtureModel, _cli
from emcore import registry as registry_mod
from emcore._version import DISTRIBUTION
from emcore.plugin_api import FamilyRecord, UNIT_ROUNDOFF
from emcore.registry import Registered, get_registry

from _categorical import RECORD as CATEGORICAL_RECORD, latent_class_data


def _regression_data(seed=0, n=400):
    """Two regression lines y = b0 + b1 x1 + b2 x2 + e with different noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2.0, 2.0, (n, 2))
    z = rng.integers(0, 2, n)
    beta = np.array([[1.0, 2.0, -1.0], [-1.0, -2.0, 0.5]])
    sd = np.array([0.3, 0.5])
    y = beta[z, 0] + np.einsum("ij,ij->i", X, beta[z, 1:]) + sd[z] * rng.standard_normal(n)
    return X, y


def _regression_loglik(X, y, weights, beta, var):
    Z = np.hstack([np.ones((X.shape[0], 1)), X])
    r = y[:, None] - Z @ beta.T
    logp = -0.5 * (np.log(2 * np.pi * var) + r * r / var) + np.log(weights)
    return float(np.sum(logsumexp(logp, axis=1)))


# --- linear_regression -------------------------------------------------------------------

def test_one_component_is_ordinary_least_squares():
    X, y = _regression_data()
    m = MixtureModel(1, family="linear_regression", random_state=0).fit(X, y)
    Z = np.hstack([np.ones((X.shape[0], 1)), X])
    beta, rss, *_ = np.linalg.lstsq(Z, y, rcond=None)
    # both are backward-stable least-squares solutions (QR here, SVD in lstsq):
    # they agree to a few u cond(Z) relative (cond(Z) ~ 2 for this design)
    cond = np.linalg.cond(Z)
    tol = 16 * UNIT_ROUNDOFF * cond * np.linalg.norm(beta)
    np.testing.assert_allclose(m.params_["coefficients"][0], beta, rtol=0, atol=tol)
    # the maximum-likelihood variance RSS / n (not RSS / (n - p))
    np.testing.assert_allclose(m.params_["variances"][0], rss[0] / X.shape[0],
                               rtol=16 * UNIT_ROUNDOFF * cond ** 2)
    assert m.n_iter_ <= 2


def test_one_component_weighted_is_weighted_least_squares():
    X, y = _regression_data(seed=1, n=200)
    w = np.random.default_rng(2).uniform(0.1, 3.0, X.shape[0])
    m = MixtureModel(1, family="linear_regression", random_state=0).fit(X, y,
                                                                      sample_weight=w)
    Z = np.hstack([np.ones((X.shape[0], 1)), X])
    beta = np.linalg.lstsq(Z * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    rss = float(w @ (y - Z @ beta) ** 2)
    cond = np.linalg.cond(Z * np.sqrt(w)[:, None])
    np.testing.assert_allclose(m.params_["coefficients"][0], beta, rtol=0,
                               atol=16 * UNIT_ROUNDOFF * cond * np.linalg.norm(beta))
    np.testing.assert_allclose(m.params_["variances"][0], rss / w.sum(),
                               rtol=16 * UNIT_ROUNDOFF * cond ** 2)


def _negloglik_and_gradient(theta, X, y, k):
    """-log L of a K-component regression mixture and its exact gradient, in the
    unconstrained parameters (logits of the weights, coefficients, log variances)."""
    n, p = X.shape[0], X.shape[1] + 1
    a, beta, s = theta[:k], theta[k:k + k * p].reshape(k, p), theta[k + k * p:]
    Z = np.hstack([np.ones((n, 1)), X])
    var = np.exp(s)
    r = y[:, None] - Z @ beta.T
    logp = -0.5 * (np.log(2 * np.pi) + s + r * r / var) + log_softmax(a)
    L = logsumexp(logp, axis=1)
    q = np.exp(logp - L[:, None])
    g_a = q.sum(axis=0) - n * np.exp(log_softmax(a))
    g_beta = ((q * r / var).T @ Z)
    g_s = np.sum(q * (-0.5 + 0.5 * r * r / var), axis=0)
    return -float(L.sum()), -np.concatenate([g_a, g_beta.ravel(), g_s])


def test_fixed_start_fit_agrees_with_direct_maximisation():
    X, y = _regression_data(seed=3)
    k = 2
    start = {"coefficients": np.array([[0.5, 1.0, 0.0], [-0.5, -1.0, 0.0]]),
             "variances": np.array([1.0, 1.0])}
    weights0 = np.array([0.5, 0.5])
    m = MixtureModel(k, family="linear_regression", params_init=start,
                     weights_init=weights0, tol=1e-10, max_iter=2000).fit(X, y)
    assert m.converged_ and all(it.chain_holds() for it in m.history_)
    theta0 = np.concatenate([np.log(weights0), start["coefficients"].ravel(),
                             np.log(start["variances"])])
    opt = scipy.optimize.minimize(_negloglik_and_gradient, theta0, args=(X, y, k),
                                  jac=True, method="BFGS", options={"gtol": 1e-9})
    em = _regression_loglik(X, y, m.weights_, m.params_["coefficients"],
                            m.params_["variances"])
    theta_em = np.concatenate([np.log(m.weights_), m.params_["coefficients"].ravel(),
                               np.log(m.params_["variances"])])
    f_em, _ = _negloglik_and_gradient(theta_em, X, y, k)
    assert opt.status in (0, 2)      # converged, or stopped at the precision limit
    # EM stops when the relative change c_T <= tol; converging linearly at rate
    # r = c_T / c_{T-1}, it is at most c_T r / (1 - r) below its limit. The two
    # values then agree to that plus the rounding of L (n terms, each to a few u
    # |log p_i|: n u max|log p| ~ 400 * 1.1e-16 * 10, below 1e-12 |L|)
    changes = [it.value_next - it.value for it in m.history_]
    r = changes[-1] / changes[-2]
    assert 0 <= r < 1
    tol = changes[-1] * r / (1 - r) + 1e-12 * abs(em)
    assert abs(em - (-opt.fun)) <= tol
    # the same maximum: parameters within sqrt(2 tol / h) for curvature h >= 1
    # (per unit of the log-variance and coefficients here)
    assert np.max(np.abs(theta_em - opt.x)) <= np.sqrt(2 * tol)
    assert abs(f_em + em) <= 1e-12 * abs(em)
    # the model's score is this log-likelihood
    np.testing.assert_allclose(m.score(np.column_stack([X, y])) * X.shape[0], em,
                               rtol=1e-13)


def test_fit_X_y_is_fit_of_the_stacked_array():
    X, y = _regression_data(seed=4, n=300)
    # one start for all three: seeds are drawn in an order of the rows' values
    # (emcore._init.distinct_rows), so another column order draws other seeds
    start = np.eye(2)[np.random.default_rng(5).integers(2, size=300)]
    a = MixtureModel(2, family="linear_regression", resp_init=start).fit(X, y)
    b = MixtureModel(2, family="linear_regression", resp_init=start).fit(
        np.column_stack([X, y]))
    # the response may sit in any column: the same fit with y first
    c = MixtureModel(2, family="linear_regression", family_options={"response": 0},
                     resp_init=start).fit(np.column_stack([y, X]))
    for other in (b, c):
        np.testing.assert_array_equal(a.params_["coefficients"], other.params_["coefficients"])
        np.testing.assert_array_equal(a.params_["variances"], other.params_["variances"])
    assert a.n_features_in_ == 3
    labels = MixtureModel(2, family="linear_regression", resp_init=start).fit_predict(X, y)
    np.testing.assert_array_equal(labels, a.predict(np.column_stack([X, y])))


def test_fit_X_y_errors():
    X, y = _regression_data(n=50)
    with pytest.raises(ValueError, match="'y' parameter of MixtureModel.fit must be an "
                                         "array of 50 finite"):
        MixtureModel(1, family="linear_regression").fit(X, y[:-1])
    with pytest.raises(ValueError, match="models column 0"):
        MixtureModel(1, family="linear_regression",
                     family_options={"response": 0}).fit(X, y)
    with pytest.raises(ValueError, match="'response' parameter of LinearRegressionFamily"):
        MixtureModel(1, family="linear_regression",
                     family_options={"response": 5}).fit(X, y)
    # a family without a response ignores y (scikit-learn's unsupervised convention)
    g = MixtureModel(1, random_state=0).fit(X, y)
    assert g.n_features_in_ == 2


def test_rank_deficient_design_is_a_clear_error():
    X, y = _regression_data(n=100)
    collinear = np.column_stack([X[:, 0], 2.0 * X[:, 0]])
    with pytest.raises(DegenerateComponentError, match="component 0: its weighted design"
                                                       ".* is rank deficient"):
        MixtureModel(1, family="linear_regression").fit(collinear, y)
    # an exact fit: the variance would be 0
    with pytest.raises(DegenerateComponentError, match="lie on a hyperplane"):
        MixtureModel(1, family="linear_regression").fit(X, 1.0 + X @ [2.0, -1.0])


def test_conditional_density_integrates_to_one_over_the_response():
    fam = get_registry().family("linear_regression").factory(2, 3, response=1)
    params = fam.random_params(np.random.default_rng(6))
    for x0, x2 in ((0.3, -1.2), (2.0, 0.5)):
        for k in range(2):
            def density(yv):
                return float(np.exp(fam.log_density(np.array([[x0, yv, x2]]), params)[0, k]))
            mean = params["coefficients"][k] @ [1.0, x0, x2]
            sd = np.sqrt(params["variances"][k])
            mass = scipy.integrate.quad(density, mean - 40 * sd, mean + 40 * sd,
                                        epsabs=0, epsrel=1e-12)[0]
            # quad's own error estimate is below 1e-12 relative; the tails beyond
            # 40 sd hold < 1e-300
            assert abs(mass - 1.0) <= 1e-10


def test_regression_n_parameters_and_bic():
    X, y = _regression_data(seed=7, n=200)
    m = MixtureModel(2, family="linear_regression", random_state=0).fit(X, y)
    assert m.family_.n_parameters() == 2 * (3 + 1)
    Xy = np.column_stack([X, y])
    L = m.score(Xy) * X.shape[0]
    p = 2 * 4 + 1
    np.testing.assert_allclose(m.bic(Xy), -2 * L + p * np.log(X.shape[0]), rtol=1e-14)
    np.testing.assert_allclose(m.aic(Xy), -2 * L + 2 * p, rtol=1e-14)


@pytest.mark.filterwarnings("ignore::emcore.ConvergenceWarning")   # tol=0: max_iter steps
def test_regression_sample_weights_are_repetitions():
    X, y = _regression_data(seed=8, n=120)
    w = np.random.default_rng(9).integers(1, 4, X.shape[0])
    start = {"coefficients": np.array([[0.5, 1.0, 0.0], [-0.5, -1.0, 0.0]]),
             "variances": np.array([1.0, 1.0])}
    kw = dict(family="linear_regression", params_init=start, tol=0, max_iter=15)
    a = MixtureModel(2, **kw).fit(X, y, sample_weight=w.astype(float))
    b = MixtureModel(2, **kw).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    # the same statistics up to rounding (the QR of different rows): 15 iterations
    # of a contraction keep the difference at rounding level times cond ~ 1e2
    np.testing.assert_allclose(a.params_["coefficients"], b.params_["coefficients"],
                               atol=1e-10)
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-12)


def test_sampled_regression_mixture_is_recovered():
    fam_params = {"coefficients": np.array([[4.0, 1.0], [-4.0, -1.0]]),
                  "variances": np.array([0.25, 0.25])}
    true = MixtureModel.from_parameters([0.4, 0.6], fam_params, n_features=2,
                                        family="linear_regression", random_state=10)
    Xy, labels = true.sample(4000)
    m = MixtureModel(2, family="linear_regression", random_state=0, n_init=2).fit(Xy)
    order = np.argsort(m.params_["coefficients"][:, 0])[::-1]
    # 4000 draws: standard errors ~ 0.5 / sqrt(1600) ~ 0.013; 6 se
    np.testing.assert_allclose(m.params_["coefficients"][order],
                               fam_params["coefficients"], atol=0.08)
    np.testing.assert_allclose(m.weights_[order], [0.4, 0.6], atol=6 * 0.008)


# --- product -------------------------------------------------------------------------------

@pytest.fixture
def with_categorical(monkeypatch):
    """The test categorical family registered as 'categorical-test' for this test."""
    monkeypatch.setitem(get_registry().families, CATEGORICAL_RECORD.name,
                        Registered(CATEGORICAL_RECORD, "categorical-test", "tests"))
    return CATEGORICAL_RECORD


def _mixed_data(seed=0, n=500):
    """Columns 0-1 Gaussian, 2-6 categorical codes (5 levels)."""
    rng = np.random.default_rng(seed)
    codes = latent_class_data(seed=seed, n=n, n_classes=2, n_features=5, n_levels=5)
    z = (codes[:, 0] > 2).astype(int)
    gauss = rng.normal(size=(n, 2)) + np.array([[0.0, 0.0], [4.0, 4.0]])[z]
    return np.column_stack([gauss, codes])


def _product(k, d, parts):
    return get_registry().family("product").factory(k, d, parts=parts)


def test_product_log_density_is_the_sum_of_its_parts(with_categorical):
    X = _mixed_data()
    parts = [("gaussian", [1, 0], {"covariance_type": "full"}),
             ("categorical-test", [2, 3, 4, 5, 6], {"n_levels": 5})]
    fam = _product(3, 7, parts)
    params = fam.random_params(np.random.default_rng(1))
    gauss = get_registry().family("gaussian").factory(3, 2)
    cat = CATEGORICAL_RECORD.factory(3, 5, n_levels=5)
    direct = (gauss.log_density(np.ascontiguousarray(X[:, [1, 0]]),
                                {k[6:]: v for k, v in params.items() if k.startswith("part0.")})
              + cat.log_density(X[:, 2:], {"probabilities": params["part1.probabilities"]}))
    np.testing.assert_array_equal(fam.log_density(X, params), direct)
    assert fam.n_parameters() == gauss.n_parameters() + cat.n_parameters()


@pytest.mark.filterwarnings("ignore::emcore.ConvergenceWarning")   # tol=0: max_iter steps
def test_product_of_diagonal_gaussians_is_one_diagonal_gaussian():
    # the identity: a diag Gaussian on columns {0, 1, 2} is the product of diag
    # Gaussians on {0, 2} and {1}; from the same start, the fits are the same
    X = np.random.default_rng(2).normal(size=(300, 3)) * [1.0, 3.0, 0.5]
    X[150:] += [3.0, -2.0, 1.0]
    means = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]]) + 0.3
    var = np.array([[1.0, 2.0, 0.5], [1.5, 1.0, 1.0]])
    one = MixtureModel(2, family="gaussian", family_options={
        "covariance_type": "diag", "reg_covar": 0.0},
        params_init=get_registry().family("gaussian").factory(
            2, 3, covariance_type="diag").params_from_covariances(
            means, var[:, :, None] * np.eye(3)), tol=0, max_iter=30).fit(X)
    gfam = get_registry().family("gaussian").factory(2, 2, covariance_type="diag")
    g1 = get_registry().family("gaussian").factory(2, 1, covariance_type="diag")
    p0 = gfam.params_from_covariances(means[:, [0, 2]], var[:, [0, 2], None] * np.eye(2))
    p1 = g1.params_from_covariances(means[:, [1]], var[:, [1], None] * np.eye(1))
    start = {**{f"part0.{k}": v for k, v in p0.items()},
             **{f"part1.{k}": v for k, v in p1.items()}}
    prod = MixtureModel(2, family="product", family_options={"parts": [
        ("gaussian", [0, 2], {"covariance_type": "diag", "reg_covar": 0.0}),
        ("gaussian", [1], {"covariance_type": "diag", "reg_covar": 0.0})]},
        params_init=start, tol=0, max_iter=30).fit(X)
    # the same arithmetic per column up to summation order: rounding level,
    # 30 iterations of a contraction
    np.testing.assert_allclose(prod.params_["part0.means"], one.params_["means"][:, [0, 2]],
                               rtol=1e-12)
    np.testing.assert_allclose(prod.params_["part1.means"], one.params_["means"][:, [1]],
                               rtol=1e-12)
    np.testing.assert_allclose(prod.weights_, one.weights_, rtol=1e-12)
    np.testing.assert_allclose(prod.score(X), one.score(X), rtol=1e-13)
    assert prod.family_.n_parameters() == one.family_.n_parameters()
    assert all(it.chain_holds() for it in prod.history_)


def test_product_fit_of_mixed_data_chain_and_criteria(with_categorical):
    X = _mixed_data(seed=3)
    parts = [("gaussian", [0, 1], {"covariance_type": "diag"}),
             ("categorical-test", [2, 3, 4, 5, 6], {"n_levels": 5})]
    m = MixtureModel(2, family="product", family_options={"parts": parts},
                     random_state=0).fit(X)
    assert m.converged_ and all(it.chain_holds() for it in m.history_)
    # the parts start from one partition through their own initial_params: the
    # categorical part's default start is smoothed, so no probability starts at an
    # exact zero (the MLE may have some: a level a class never uses)
    hard = np.eye(2)[(X[:, 0] > 2).astype(int)]        # a hard partition
    start = m.family_.initial_params(X, np.random.default_rng(0), resp=hard)
    present = X[:, 2:, None] == np.arange(5)                    # (n, 5 features, 5 levels)
    assert np.all(start["part1.probabilities"][:, present.any(axis=0)] > 0)
    p = 2 * (2 + 2) + 2 * 5 * 4 + 1
    L = m.score(X) * X.shape[0]
    np.testing.assert_allclose(m.bic(X), -2 * L + p * np.log(X.shape[0]), rtol=1e-14)
    # the two groups are recovered from the Gaussian columns
    truth = (X[:, 2] > 2).astype(int)
    labels = m.predict(X)
    assert max(np.mean(labels == truth), np.mean(labels != truth)) > 0.95
    Y, z = m.sample(50)
    assert Y.shape == (50, 7) and np.all(Y[:, 2:] == np.round(Y[:, 2:]))


@pytest.mark.parametrize("parts, match", [
    (None, "must be a non-empty list"),
    ([], "must be a non-empty list"),
    ([("gaussian", [0, 1]), ("gaussian", [1, 2])], "Got column 1 in parts 0 and 1"),
    ([("gaussian", [0, 1])], "Got no part for column 2"),
    ([("gaussian", [0, 1, 3])], r"column indices in \[0, 2\]"),
    ([("gaussian", [0, 1, 1, 2])], "distinct column indices"),
    ([("no-such-family", [0, 1, 2])], "part 0: no family named 'no-such-family'"),
    ([("gaussian", [0, 1, 2], {"covariance_typ": "diag"})], "the options of part 0"),
    ([("gaussian", [0, 1, 2], "diag")], "options as a mapping"),
    (["gaussian"], r"Got 'gaussian' in part 0"),
])
def test_product_parts_are_validated(parts, match):
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=match):
        MixtureModel(1, family="product", family_options={"parts": parts}).fit(X)


def test_product_checks_each_parts_support(with_categorical):
    X = _mixed_data(n=40)
    X[7, 4] = 1.5
    parts = [("gaussian", [0, 1]), ("categorical-test", [2, 3, 4, 5, 6], {"n_levels": 5})]
    with pytest.raises(ValueError, match=r"part 1 models columns \[2, 3, 4, 5, 6\].*"
                                         r"Got X\[7, 2\] = 1\.5"):
        MixtureModel(2, family="product", family_options={"parts": parts},
                     random_state=0).fit(X)
    good = _mixed_data(n=40)
    m = MixtureModel(2, family="product", family_options={"parts": parts},
                     random_state=0).fit(good)
    with pytest.raises(ValueError, match="support of family 'categorical-test'"):
        m.score(X)


def test_product_with_a_regression_part():
    # a part may be conditional: the regression of column 2 on column 1, times a
    # Gaussian for column 0 (independent given the component)
    X, y = _regression_data(seed=11, n=300)
    data = np.column_stack([X, y])
    m = MixtureModel(2, family="product", family_options={"parts": [
        ("gaussian", [0]), ("linear_regression", [1, 2])]}, random_state=0).fit(data)
    assert all(it.chain_holds() for it in m.history_)
    assert m.family_.n_parameters() == 2 * 2 + 2 * 3


def test_product_passes_the_pass_parameters_to_a_part_that_needs_them():
    # a Student t part's statistics depend on the parameters of the pass (its latent
    # scales' posterior means): the product must hand them on, or the part's E-step
    # weights are wrong and the ELBO at the pass's parameters is not the loglik
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.standard_t(3, size=(400, 2)), rng.normal(size=400)])
    X[200:] += [4.0, -3.0, 2.0]
    fam = _product(2, 3, [("student_t", [0, 1], {"covariance_type": "diag", "dof": 3.0}),
                          ("gaussian", [2], {"covariance_type": "diag"})])
    assert fam.stats_need_params
    params = fam.random_params(np.random.default_rng(5))
    W = np.random.default_rng(6).dirichlet(np.ones(2), size=400)
    t_fam = get_registry().family("student_t").factory(2, 2, covariance_type="diag", dof=3.0)
    t_params = {k[6:]: v for k, v in params.items() if k.startswith("part0.")}
    stats = fam.chunk_stats(X, W, params=params)
    direct = t_fam.chunk_stats(np.ascontiguousarray(X[:, :2]), W, params=t_params)
    np.testing.assert_array_equal(t_fam.m_step(stats[0], t_params)["means"],
                                  t_fam.m_step(direct, t_params)["means"])
    m = MixtureModel(2, family="product", family_options={"parts": [
        ("student_t", [0, 1], {"covariance_type": "diag", "dof": 3.0}),
        ("gaussian", [2], {"covariance_type": "diag"})]}, random_state=0,
        init_params="random_from_data").fit(X)
    assert all(it.chain_holds() for it in m.history_)


# --- emcore plugins -------------------------------------------------------------------------

def test_plugins_lists_every_family_with_a_description(capsys, monkeypatch):
    monkeypatch.setattr(registry_mod, "get_registry", registry_mod.load_registry)
    assert _cli.main(["plugins"]) == 0
    families = capsys.readouterr().out.split("Posterior rules:")[0]
    reg = registry_mod.load_registry()
    for name, entry in reg.families.items():
        if entry.distribution != DISTRIBUTION:
            continue
        assert entry.record.description, name
        head = re.search(rf"^  {re.escape(name)} +from {re.escape(DISTRIBUTION)} .*\n +(.+)\n",
                         families, re.M)
        assert head and head.group(1) == entry.record.description, name
    for name in ("linear_regression", "product"):
        assert name in reg.families


def test_plugins_description_defaults_to_the_factory_docstring(capsys, monkeypatch):
    def factory(n_components, n_features):
        """A family without a record description.

        More text that is not printed.
        """
    reg = registry_mod.load_registry()
    reg.families["undescribed"] = Registered(FamilyRecord(name="undescribed",
                                                          factory=factory), "x", "third")
    monkeypatch.setattr(registry_mod, "get_registry", lambda: reg)
    assert _cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  undescribed +from third .*\n +A family without a record "
                     r"description\.\n", out, re.M)
    assert "More text" not in out



def test_regression_statistics_are_centred():
    # y near 1e4 and covariates near 1e3: uncentred statistics (the factor of the raw
    # design) lose the residuals to the offsets, and the derived rounding bound of
    # the objective exceeded tol |objective| (a ConvergenceWarning at iteration 0);
    # centred at reference points the intercept absorbs, the fit is as on centred data
    X, y = _regression_data(seed=12, n=500)
    fits = []
    for offset in (0.0, 1e3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # one start for both (seeds are drawn in an order of the rows' values)
            start = np.eye(2)[np.random.default_rng(0).integers(2, size=500)]
            fits.append(MixtureModel(2, family="linear_regression",
                                     resp_init=start).fit(X + offset, y + 1e4))
    centred, shifted = fits
    assert all(it.chain_holds() for it in shifted.history_)
    # the slopes do not depend on the covariates' offset: equal to the rounding of
    # the shifted data (|x| ~ 1e3 holds x to 1e3 u) amplified by the iterations
    np.testing.assert_allclose(shifted.params_["coefficients"][:, 1:],
                               centred.params_["coefficients"][:, 1:], atol=1e-8)


def test_regression_without_intercept_conformance():
    from emcore.testing import check_family
    record = get_registry().family("linear_regression")
    report = check_family(lambda k, d: record.factory(k, d, intercept=False, response=0),
                          n_features=3, capabilities=record.capabilities)
    assert report.passed, str(report)

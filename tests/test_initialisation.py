"""Starting values: the starting partitions (emcore/_init.py), ``Family.initial_params``
and ``MixtureModel``'s ``params_init``/``weights_init``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import emcore
from emcore._init import distinct_rows, random_rows, starting_partition
from emcore.plugin_api import Family
from emcore.registry import Registered, get_registry

from _categorical import RECORD, CategoricalFamily, latent_class_data


@pytest.fixture
def categorical(monkeypatch):
    """The README-style categorical family, registered for the test only."""
    monkeypatch.setitem(get_registry().families, RECORD.name,
                        Registered(RECORD, "categorical-test", "tests"))
    return RECORD.name


def _fit_categorical(X, seed, init_params="k-means++"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
        model = emcore.MixtureModel(4, family=RECORD.name, family_options={"n_levels": 5},
                                    init_params=init_params, random_state=seed,
                                    tol=1e-10, max_iter=3000).fit(X)
    return model.lower_bound_ * X.shape[0], model


def test_a_categorical_family_reaches_the_optimum_from_the_default_start(categorical):
    # Four latent classes, five features of five levels, each class using three
    # levels per feature: every component of a k-means++ partition misses some level
    # of the data. From that partition's plain M-step (exact zeros, absorbing for
    # EM) 0 of these 10 default fits reached the optimum (140-506 nats below it, with
    # 10-20 exact zeros each); Family.initial_params' smoothing removes the zeros.
    X = latent_class_data(2)
    # "The optimum": the best of 20 starts from random responsibilities (never an
    # exact zero), all of which reach the same value here (asserted: no other local
    # optimum competes).
    random_starts = [_fit_categorical(X, seed, "random")[0] for seed in range(20)]
    best = max(random_starts)
    # Each fit stops when the relative change of the log-likelihood is below 1e-10,
    # i.e. a step of at most 1e-10 |L| ~ 4e-7 nats; at EM's linear rate r the
    # remainder is at most that step times r / (1 - r): below 4e-4 nats for any
    # r <= 0.999 (these fits converge in <= 60 iterations, r far below that).
    # Other optima (the stuck fits) are >= 100 nats away, so 1e-3 separates them.
    reach = 1e-3
    assert all(abs(v - best) <= reach for v in random_starts)
    default = [_fit_categorical(X, seed)[0] for seed in range(10)]
    reached = sum(abs(v - best) <= reach for v in default)
    assert reached >= 9, [round(v - best, 3) for v in default]


def test_initial_params_puts_no_exact_zero_where_the_data_has_mass():
    X = latent_class_data(2)
    family = CategoricalFamily(4, X.shape[1], n_levels=5)
    P = family.initial_params(X, np.random.default_rng(0))["probabilities"]
    seen = np.stack([np.isin(np.arange(5), X[:, j]) for j in range(X.shape[1])])
    assert np.all(P[:, seen] > 0)
    # a level absent from the data stays at its maximum-likelihood value 0
    Y = X.copy()
    Y[Y == 4] = 3
    P = family.initial_params(Y, np.random.default_rng(0))["probabilities"]
    assert np.all(P[:, :, 4] == 0) and np.all(P[:, :, :4] > 0)


def test_initial_params_takes_responsibilities_as_an_array_or_a_callable():
    X = latent_class_data(1, n=200)
    family = CategoricalFamily(3, X.shape[1], n_levels=5)
    R = np.random.default_rng(0).dirichlet(np.ones(3), size=X.shape[0])
    a = family.initial_params(X, np.random.default_rng(1), resp=R)
    b = family.initial_params(X, np.random.default_rng(1), resp=lambda i, j: R[i:j])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    # one M-step on (1 - eps) R + eps / K
    eps = family.init_smoothing
    expected = family.m_step(family.chunk_stats(X, (1 - eps) * R + eps / 3), None)
    np.testing.assert_allclose(a["probabilities"], expected["probabilities"],
                               rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="'resp' parameter of CategoricalFamily"):
        family.initial_params(X, np.random.default_rng(1), resp=R[:5])


def test_the_gaussian_family_starts_from_the_plain_partition():
    # its parameter space is open: no smoothing, so its fits are unchanged
    family = get_registry().family("gaussian").factory(2, 2)
    assert family.init_smoothing == 0.0 and Family.init_smoothing > 0


def _repeated_rows():
    # 6 distinct rows, each repeated 10-40 times: two random seed rows often coincide
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(6, 2)) * 5
    return np.repeat(distinct, rng.integers(10, 40, 6), axis=0)


def test_random_from_data_draws_distinct_seed_rows():
    X = _repeated_rows()
    for seed in range(20):
        seeds = random_rows(X, 4, np.random.default_rng(seed))
        assert np.unique(X[seeds], axis=0).shape[0] == 4
    # fewer distinct rows than seeds: duplicates only then, no error
    seeds = random_rows(X[:30], 3, np.random.default_rng(0))
    assert seeds.shape == (3,)


@pytest.mark.parametrize("estimator", ["gaussian_mixture", "mixture_model"])
def test_random_from_data_fits_data_with_repeated_rows(estimator):
    # before: a DegenerateComponentError in 4-9 of 20 seeds (two identical seeds)
    X = _repeated_rows()
    for seed in range(20):
        if estimator == "gaussian_mixture":
            model = emcore.GaussianMixture(4, init_params="random_from_data", max_iter=5,
                                           tol=0, reg_covar=1e-3, random_state=seed)
        else:
            model = emcore.MixtureModel(4, init_params="random_from_data", max_iter=5,
                                        tol=0, family_options={"reg_covar": 1e-3},
                                        random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
            model.fit(X)
        assert np.all(model.weights_ > 0)


def test_random_from_data_is_unchanged_without_repeated_rows():
    # rows all distinct and of equal weight: a uniform draw
    # without replacement (over the rows in the order of their values, so that
    # weights and repeated rows draw alike: emcore._init.distinct_rows)
    X = np.random.default_rng(0).normal(size=(50, 2))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    rows, _ = distinct_rows(X)
    np.testing.assert_array_equal(random_rows(X, 3, rng_a),
                                  rows[rng_b.choice(50, size=3, replace=False,
                                                    p=np.full(50, 1 / 50))])


# --- params_init / weights_init -------------------------------------------------------------

@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, 300)
    return rng.poisson(np.array([[1.0, 8.0], [9.0, 2.0]])[z]).astype(np.float64)


def test_params_init_and_weights_init_are_the_start(categorical):
    X = latent_class_data(2, n=300)
    P = np.random.default_rng(0).dirichlet(np.ones(5), size=(4, X.shape[1]))
    w = np.array([0.1, 0.2, 0.3, 0.4])
    model = emcore.MixtureModel(4, family=RECORD.name, family_options={"n_levels": 5},
                                params_init={"probabilities": P}, weights_init=w,
                                max_iter=1, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
        model.fit(X)
    family = model.family_
    a = family.log_density(X, {"probabilities": P}) + np.log(w)
    loglik0 = float(np.sum(np.log(np.sum(np.exp(a), axis=1))))
    # the first iteration's log-likelihood is that of the given start: two sums of
    # 300 logsumexps of K = 4 terms, all of one sign, each within (n + K + 4) u
    # ~ 3.5e-14 relative of the exact sum: 1e-12 is above twice that
    assert model.history_[0].value == pytest.approx(loglik0, rel=1e-12)
    assert P.sum() == pytest.approx(4 * X.shape[1])        # the given array untouched


def test_only_weights_init_keeps_the_partition_start(categorical):
    X = latent_class_data(2, n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
        model = emcore.MixtureModel(4, family=RECORD.name, family_options={"n_levels": 5},
                                    max_iter=1, tol=0, random_state=0,
                                    weights_init=[0.25] * 4).fit(X)
    # the same draws: the k-means++ partition, then the family's initial_params
    rng = np.random.default_rng(0)
    family = CategoricalFamily(4, X.shape[1], n_levels=5)
    params = family.initial_params(X, rng, resp=starting_partition(X, 4, "k-means++", rng))
    a = family.log_density(X, params) + np.log(0.25)
    loglik0 = float(np.sum(np.log(np.sum(np.exp(a), axis=1))))
    assert model.history_[0].value == pytest.approx(loglik0, rel=1e-12)   # as above


@pytest.mark.parametrize("weights_init", ["abc", [0.5, 0.6], [1.0], [-0.5, 1.5],
                                          [np.nan, 1.0], [[0.5, 0.5]]])
def test_weights_init_is_validated(weights_init):
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="'weights_init' parameter of MixtureModel"):
        emcore.MixtureModel(2, weights_init=weights_init).fit(X)


def test_weights_init_must_be_equal_for_a_family_with_fixed_weights():
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="fixes the mixture weights"):
        emcore.MixtureModel(2, family="kmeans", weights_init=[0.3, 0.7]).fit(X)


@pytest.mark.parametrize("params_init, match", [
    # the message names the argument and what was wrong with it (the "Got" part)
    ("abc", "Got 'abc' instead"),
    ({}, r"Got \{\} instead"),
    ({1: np.zeros((2, 2))}, r"Got \{1: "),
    ({"means": "x"}, "Got 'x' instead"),
    ({"means": np.zeros((3, 2))}, r"Got 'means' of shape \(3, 2\) instead"),
    ({"means": np.full((2, 2), np.inf)}, "with non-finite entries"),
])
def test_params_init_is_validated(params_init, match):
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match=f"'params_init' parameter of MixtureModel.*{match}"):
        emcore.MixtureModel(2, family="kmeans", params_init=params_init).fit(X)


def test_params_init_is_checked_by_the_family(categorical):
    X = latent_class_data(2, n=100)
    P = np.full((4, X.shape[1], 5), 0.3)                 # rows sum to 1.5
    with pytest.raises(ValueError, match="'params_init' parameter of MixtureModel is not "
                                         "valid for family 'categorical-test'.*sum"):
        emcore.MixtureModel(4, family=RECORD.name, family_options={"n_levels": 5},
                            params_init={"probabilities": P}).fit(X)

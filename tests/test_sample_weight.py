"""Sample weights scale the sufficient statistics: weight 2 = the row twice,
weight 0 = the row removed (same start, so only the data differ)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

from emcore import GaussianMixture
from emcore._init import kmeans_plusplus
from emcore.exceptions import ConvergenceWarning

from _strategies import gaussian_mixtures, sample_mixture

# Same EM map on the same multiset of rows, summed in a different order: one step
# differs by gamma_n relative (n ~ 600 rows: ~1e-13 worst case); over 30 steps of a
# contracting map the difference stays at u / (1 - rho) times the conditioning.
RTOL = 1e-9


def _start(k, d, rng):
    return dict(weights_init=np.full(k, 1.0 / k), means_init=rng.normal(0, 3, (k, d)),
                precisions_init=np.stack([np.eye(d) * 0.5] * k))


def _fit(X, start, sample_weight=None, **kwargs):
    gm = GaussianMixture(len(start["weights_init"]), tol=0.0, max_iter=30, n_jobs=1,
                         **start, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X, sample_weight=sample_weight)


def _same_fit(a, b, rtol=RTOL):
    assert a.n_iter_ == b.n_iter_
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=rtol)
    for name in ("weights_", "means_", "covariances_"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max()), name


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(31)
    X = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(4, 0.7, (200, 2)),
                        rng.normal([0, 5], 0.5, (200, 2))])
    return X[rng.permutation(600)], _start(3, 2, rng)


def test_weight_two_is_the_row_repeated(blobs):
    X, start = blobs
    rng = np.random.default_rng(1)
    w = rng.integers(1, 3, X.shape[0]).astype(float)        # 1 or 2
    repeated = np.repeat(X, w.astype(int), axis=0)
    _same_fit(_fit(X, start, w), _fit(repeated, start))


def test_weight_zero_is_the_row_removed(blobs):
    X, start = blobs
    keep = np.random.default_rng(2).random(X.shape[0]) < 0.7
    _same_fit(_fit(X, start, keep.astype(float)), _fit(X[keep], start))


def test_constant_weights_change_nothing_but_the_scale(blobs):
    X, start = blobs
    plain, scaled = _fit(X, start), _fit(X, start, np.full(X.shape[0], 3.5))
    _same_fit(plain, scaled)
    # the recorded log-likelihood is the weighted sum: 3.5 times the plain one
    assert scaled.history_[-1].value_next == pytest.approx(
        3.5 * plain.history_[-1].value_next, rel=RTOL)


def test_weighted_score_is_the_weighted_mean(blobs):
    X, start = blobs
    gm = _fit(X, start)
    w = np.random.default_rng(3).random(X.shape[0])
    assert gm.score(X, sample_weight=w) == pytest.approx(
        np.sum(w * gm.score_samples(X)) / w.sum(), rel=1e-12)


@given(mixture=gaussian_mixtures(min_k=1, max_k=3, max_d=3, separation=8.0),
       n_per=st.integers(10, 30), seed=st.integers(0, 2**32 - 1),
       zero_fraction=st.sampled_from([0.0, 0.3]))
def test_chain_holds_on_weighted_data(mixture, n_per, seed, zero_fraction):
    k, d = mixture[1].shape
    n = n_per * k * (d + 1)
    X = sample_mixture(mixture, n, seed)
    rng = np.random.default_rng(seed)
    w = rng.exponential(1.0, n) * (rng.random(n) >= zero_fraction)
    w[:k] = 1.0     # enough positive weights for the seeds
    gm = GaussianMixture(k, reg_covar=1e-6, max_iter=20, tol=0.0, random_state=0, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X, sample_weight=w)
    assert all(it.chain_holds() for it in gm.history_)


def test_seeding_never_picks_a_row_of_weight_zero():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    w = (rng.random(300) < 0.2).astype(float)
    for seed in range(20):
        seeds = kmeans_plusplus(X, 5, np.random.default_rng(seed), w)
        assert np.all(w[seeds] > 0)
    gm = GaussianMixture(3, init_params="random_from_data", random_state=0, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X, sample_weight=w)
    assert np.all(np.isfinite(gm.means_))


@pytest.mark.parametrize("bad, words", [
    (-np.ones(40), "-1.0 at row 0"),
    (np.r_[np.ones(39), np.nan], "nan at row 39"),
    (np.r_[np.ones(39), np.inf], "inf at row 39"),
    (np.zeros(40), "all zero"),
    (np.r_[1.0, np.zeros(39)], "1 positive"),
    (np.ones(39), "shape (39,)"),
    (np.ones((40, 1)), "shape (40, 1)"),
    (np.array(["a"] * 40), "dtype"),
])
def test_bad_sample_weight_names_the_argument(bad, words):
    X = np.random.default_rng(5).normal(size=(40, 2))
    with pytest.raises(ValueError, match="sample_weight") as info:
        GaussianMixture(2).fit(X, sample_weight=bad)
    assert words in str(info.value)

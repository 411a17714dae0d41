"""The first-party discrete families (plugins/discrete.py): categorical, bernoulli,
poisson.

Against outside references: the compiled log-densities against scipy.stats, a
fixed-start fit against a direct maximisation of the mixture log-likelihood
(scipy.optimize from the same start), a K = 1 fit against the closed form; and the
families' own promises: code validation naming the column, no probability stuck
at 0 (smoothed start, Dirichlet prior), the ELBO chain, BIC's parameter count,
sample weights as repetitions.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from hypothesis import example, given, note, settings, strategies as st

import emcore
from emcore._version import DISTRIBUTION
from emcore.plugins.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from emcore.registry import get_registry


def _lca_data(n, rng, levels=(2, 3, 4), K=2):
    """Latent class data: K classes, independent categorical features."""
    z = rng.integers(K, size=n)
    P = [rng.dirichlet(np.ones(L), size=K) for L in levels]
    cols = [np.array([rng.choice(L, p=P[j][k]) for k in z]) for j, L in enumerate(levels)]
    return np.stack(cols, axis=1).astype(np.float64)


def _poisson_data(n, rng):
    rates = np.array([[1.0, 6.0], [7.0, 2.0]])
    z = rng.integers(2, size=n)
    return rng.poisson(rates[z]).astype(np.float64)


def _two_class_codes(n, rng):
    """Two latent classes, three 3-level items, every probability >= 0.1 (an
    interior maximum: no probability runs to 0, where EM crawls)."""
    P = np.array([[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
                  [[0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]])
    z = rng.integers(2, size=n)
    u = rng.random((n, 3, 1))
    return (u >= np.cumsum(P[z], axis=2)[:, :, :2]).sum(axis=2).astype(np.float64)


def _binary_data(n, rng, d=4):
    p = np.array([[0.9, 0.8, 0.2, 0.1][:d], [0.2, 0.3, 0.7, 0.9][:d]])
    z = rng.integers(2, size=n)
    return (rng.random((n, d)) < p[z]).astype(np.float64)


# --- the kernels against scipy.stats ------------------------------------------------------

def test_categorical_log_density_matches_direct_sum_over_many_groups():
    # levels chosen so that features fall into several pattern groups (8 binary
    # features per group, a 300-level feature alone): the grouping must be invisible
    rng = np.random.default_rng(0)
    levels = (2,) * 11 + (3, 7, 300, 2)
    fam = CategoricalFamily(3, len(levels), n_levels=levels)
    params = fam.random_params(rng)
    X = fam.sample(params, np.array([20, 20, 20]), rng)
    P = params["probabilities"]
    expected, magnitude = np.zeros((X.shape[0], 3)), np.zeros((X.shape[0], 3))
    for j in range(len(levels)):
        term = np.log(P[:, j, X[:, j].astype(int)]).T
        expected += term
        magnitude += np.abs(term)
    # a sum of d logs, each correctly rounded, in another order: within
    # 2 d u sum_j |term_j| of each other
    got = fam.log_density(X, params)
    assert np.all(np.abs(got - expected) <= 2 * len(levels) * 2.0 ** -53 * magnitude)
    # statistics: the expanded pattern tables equal the one-hot counts
    W = rng.random((X.shape[0], 3))
    stats = fam.chunk_stats(X, W)
    onehot = X[:, :, None] == np.arange(300)
    counts = np.einsum("ik,ijl->kjl", W, onehot)
    np.testing.assert_allclose(stats.counts, counts, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(stats.weight, W.sum(axis=0), rtol=1e-13)


def test_bernoulli_and_poisson_log_density_match_scipy():
    rng = np.random.default_rng(1)
    fam = BernoulliFamily(2, 20)
    p = fam.random_params(rng)
    X = fam.sample(p, np.array([30, 30]), rng)
    expected = np.stack([scipy.stats.bernoulli.logpmf(X, p["probabilities"][k]).sum(axis=1)
                         for k in range(2)], axis=1)
    np.testing.assert_allclose(fam.log_density(X, p), expected, rtol=1e-13)
    pf = PoissonFamily(2, 3)
    r = pf.random_params(rng)
    Y = pf.sample(r, np.array([30, 30]), rng)
    Y[0, 0] = 2000.0                      # beyond the log-factorial table
    expected = np.stack([scipy.stats.poisson.logpmf(Y, r["rates"][k]).sum(axis=1)
                         for k in range(2)], axis=1)
    np.testing.assert_allclose(pf.log_density(Y, r), expected, rtol=1e-12)


def test_codes_outside_the_support_have_probability_zero():
    fam = CategoricalFamily(2, 2, n_levels=3)
    params = fam.random_params(np.random.default_rng(2))
    X = np.array([[0.0, 3.0], [-1.0, 0.0], [0.5, 1.0], [np.nan, 0.0], [2.0, 2.0]])
    a = fam.log_density(X, params)
    assert np.all(a[:4] == -np.inf) and np.all(np.isfinite(a[4]))
    pf = PoissonFamily(1, 1)
    assert np.all(pf.log_density(np.array([[-1.0], [0.5]]), {"rates": np.ones((1, 1))})
                  == -np.inf)


# --- fixed-start fits against a direct maximisation ------------------------------------

def _mixture_loglik(family, weights, params, X):
    a = family.log_density(X, params) + np.log(weights)
    return float(np.sum(scipy.special.logsumexp(a, axis=1)))


def _direct_maximum(family, X, weights, params, key, to_params, from_params):
    """scipy.optimize (BFGS) of the mixture log-likelihood over unconstrained
    coordinates (softmax weights, family-specific maps), from the given start."""
    theta0 = np.concatenate([np.log(weights), from_params(params[key]).ravel()])
    k = weights.shape[0]
    shape = params[key].shape

    def unpack(theta):
        w = scipy.special.softmax(theta[:k])
        return w, {key: to_params(theta[k:].reshape(from_params(params[key]).shape))}

    def f(theta):
        w, p = unpack(theta)
        return -_mixture_loglik(family, w, p, X)
    res = scipy.optimize.minimize(f, theta0, method="BFGS", options={"gtol": 1e-9,
                                                                     "maxiter": 10000})
    w, p = unpack(res.x)
    assert p[key].shape == shape
    return -res.fun


def _softmax_last(z):
    # categorical: per (k, j) a softmax over the levels (all features share L here)
    return scipy.special.softmax(z, axis=-1)


CASES = {
    "poisson": (lambda: PoissonFamily(2, 2), _poisson_data, "rates", np.exp, np.log),
    "bernoulli": (lambda: BernoulliFamily(2, 4), _binary_data, "probabilities",
                  scipy.special.expit, scipy.special.logit),
    "categorical": (lambda: CategoricalFamily(2, 3, n_levels=3),
                    _two_class_codes, "probabilities",
                    _softmax_last, np.log),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_start_fit_reaches_the_direct_maximum(name):
    make, data, key, to_params, from_params = CASES[name]
    rng = np.random.default_rng(4)
    X = data(400, rng)
    family = make()
    start = family.random_params(np.random.default_rng(5))
    weights = np.array([0.45, 0.55])
    model = emcore.MixtureModel(2, family=name, weights_init=weights, params_init=start,
                                tol=1e-10, max_iter=5000, random_state=0).fit(X)
    assert model.converged_
    em = _mixture_loglik(model.family_, model.weights_, model.params_, X)
    direct = _direct_maximum(family, X, weights, start, key, to_params, from_params)
    # What EM leaves: it converges linearly; with its last gain g_T and rate r (the
    # largest ratio of successive gains over its last iterations), the gain still
    # to come is at most g_T r / (1 - r).
    # BFGS stops at a gradient norm below 1e-9 (unconstrained coordinates), within
    # O(gtol^2) of the maximum. Both climb to the same local maximum from the same
    # start; rounding: n u |ll| per evaluation.
    gains = np.array([it.value_next - it.value for it in model.history_[-6:]])
    r = min(float(np.max(gains[1:] / gains[:-1])), 1 - 1e-12)  # the slowest recent rate
    left = max(gains[-1], 0.0) * r / (1 - r)
    rounding = 2 * X.shape[0] * 2.0 ** -53 * abs(em)
    assert em <= direct + rounding and direct - em <= left + rounding, (em, direct, left)


def test_k1_fits_equal_the_closed_form():
    rng = np.random.default_rng(6)
    X = _lca_data(200, rng, levels=(2, 3, 4))
    m = emcore.MixtureModel(1, family="categorical", random_state=0).fit(X)
    for j, L in enumerate((2, 3, 4)):
        freq = np.bincount(X[:, j].astype(int), minlength=L) / X.shape[0]
        np.testing.assert_allclose(m.params_["probabilities"][0, j, :L], freq, rtol=1e-14)
    Y = _poisson_data(200, rng)
    m = emcore.MixtureModel(1, family="poisson", random_state=0).fit(Y)
    np.testing.assert_allclose(m.params_["rates"][0], Y.mean(axis=0), rtol=1e-14)
    ll = scipy.stats.poisson.logpmf(Y, Y.mean(axis=0)).sum()
    assert m.score(Y) * Y.shape[0] == pytest.approx(ll, rel=1e-13)
    B = _binary_data(200, rng)
    m = emcore.MixtureModel(1, family="bernoulli", random_state=0).fit(B)
    np.testing.assert_allclose(m.params_["probabilities"][0], B.mean(axis=0), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fits_keep_the_chain_and_count_parameters(name):
    make, data, *_ = CASES[name]
    X = data(300, np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = emcore.MixtureModel(2, family=name, random_state=0, n_init=2).fit(X)
    assert all(it.chain_holds() for it in m.history_)
    p = make().n_parameters() if name != "categorical" else 2 * 3 * 2
    assert m.family_.n_parameters() == p
    ll = m.score(X) * X.shape[0]
    assert m.bic(X) == pytest.approx(-2 * ll + (p + 1) * np.log(X.shape[0]), rel=1e-12)
    assert m.aic(X) == pytest.approx(-2 * ll + 2 * (p + 1), rel=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_weight_two_is_a_repeated_row(name):
    make, data, *_ = CASES[name]
    X = data(120, np.random.default_rng(8))
    start = make().random_params(np.random.default_rng(9))
    kw = dict(weights_init=[0.5, 0.5], params_init=start, max_iter=20, tol=0.0,
              random_state=0)
    w = np.ones(X.shape[0])
    w[:10] = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        a = emcore.MixtureModel(2, family=name, **kw).fit(X, sample_weight=w)
        b = emcore.MixtureModel(2, family=name, **kw).fit(np.concatenate([X, X[:10]]))
    key = next(iter(a.params_))
    np.testing.assert_allclose(a.params_[key], b.params_[key], rtol=1e-10)


# --- categorical validation and zeros ---------------------------------------------------

def test_categorical_codes_are_validated_naming_the_column():
    X = np.array([[0.0, 1.0], [1.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    for bad, what in (((1, 1), -1.0), ((2, 0), 0.5)):
        Y = X.copy()
        Y[bad] = what
        with pytest.raises(ValueError, match=rf"column {bad[1]}"):
            emcore.MixtureModel(2, family="categorical", random_state=0).fit(Y)
    with pytest.raises(ValueError, match=r"X\[1, 1\] = 2\.0 in column 1, which has 2 levels"):
        emcore.MixtureModel(2, family="categorical", family_options={"n_levels": 2},
                            random_state=0).fit(X)
    # levels inferred at fit (largest code + 1): a larger code later is rejected
    m = emcore.MixtureModel(2, family="categorical", random_state=0).fit(X)
    assert m.family_.levels == (2, 3)
    with pytest.raises(ValueError, match=r"column 0, which has 2 levels"):
        m.predict(np.array([[2.0, 0.0]]))
    for bad in (0, -1, [2, 2, 2], 2.5):
        with pytest.raises(ValueError, match="'n_levels' parameter"):
            CategoricalFamily(2, 2, n_levels=bad)
    with pytest.raises(ValueError, match="'alpha' parameter"):
        CategoricalFamily(2, 2, alpha=-1.0)


def test_no_probability_starts_or_stays_at_zero():
    # component 0's rows never show level 2 of feature 0: a hard start would give it
    # probability exactly 0 there, forever; the smoothed start does not
    rng = np.random.default_rng(10)
    z = rng.integers(2, size=200)
    X = np.stack([z + rng.integers(2, size=200),                  # class 0: {0, 1}
                  (rng.random(200) < np.where(z == 0, 0.2, 0.8))], axis=1).astype(float)
    resp = np.zeros((200, 2))
    resp[X[:, 0] < 2, 0] = 1.0
    resp[X[:, 0] == 2, 1] = 1.0
    fam = CategoricalFamily(2, 2, n_levels=(3, 2))
    start = fam.initial_params(X, rng, resp=resp)
    assert np.all(start["probabilities"][:, 0, :] > 0)
    # a level no row shows: maximum likelihood puts exactly 0 there, the prior does not
    ml = emcore.MixtureModel(2, family="categorical", family_options={"n_levels": (4, 2)},
                             random_state=0).fit(X)
    assert np.all(ml.params_["probabilities"][:, 0, 3] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mp = emcore.MixtureModel(2, family="categorical",
                                 family_options={"n_levels": (4, 2), "alpha": 0.5},
                                 random_state=0, max_iter=1000).fit(X)   # converged
    assert np.all(mp.params_["probabilities"][:, 0, :] > 0)
    assert all(it.chain_holds() for it in mp.history_)


def test_the_families_are_listed_with_descriptions():
    for name in ("categorical", "bernoulli", "poisson"):
        entry = get_registry().families[name]
        assert entry.distribution == DISTRIBUTION and entry.record.description
        assert "compiled_kernel" in entry.record.capabilities


def test_categorical_map_passes_the_conformance_suite():
    # the MAP variant (alpha > 0): its M-step maximises Q + log prior, and the
    # chain checks hold in their MAP form; with per-feature levels
    from emcore.testing import check_family
    report = check_family(lambda k, d: CategoricalFamily(k, d, n_levels=(2, 4), alpha=0.5),
                          capabilities={"sampling", "support:nonnegative_integers"})
    assert not report.failed


def test_engine_pass_statistics_equal_the_direct_ones():
    # the compiled pass reuses each chunk's pattern indices from its log-densities
    # for its statistics: they must be those of the chunk's own rows
    from emcore.engine import data_pass
    rng = np.random.default_rng(11)
    fam = BernoulliFamily(3, 20)
    params = fam.random_params(rng)
    X = fam.sample(params, np.array([3000, 2000, 1000]), rng)
    X = X[rng.permutation(X.shape[0])]
    weights = np.array([0.5, 0.3, 0.2])
    log_resp = np.empty((X.shape[0], 3))
    rule = get_registry().posterior_rule("soft").factory()
    res = data_pass(X, fam, rule, weights, params, n_jobs=2, out_log_resp=log_resp,
                    chunk_rows=512)
    direct = fam.chunk_stats(X, np.exp(log_resp))
    # the same sums of the same weights in another order: n u relative
    np.testing.assert_allclose(res.stats.counts, direct.counts, rtol=X.shape[0] * 2.0 ** -52)
    np.testing.assert_allclose(res.stats.weight, direct.weight, rtol=X.shape[0] * 2.0 ** -52)


@pytest.mark.parametrize("d", [3, 13, 20, 70])
def test_binary_bit_path_equals_the_direct_sums(d):
    # all-binary data take the bit path (a group's pattern is byte g of the row's
    # bits, formed 64 codes at a time): widths below 4, not a multiple of 4 or 8,
    # and above 64 (two words); invalid codes (non-integer, out of range, NaN,
    # inf) give -inf and their rows are refused in the statistics; -0.0 is code 0
    from emcore.plugins._discrete_kernel import CodesKernel
    rng = np.random.default_rng(d)
    K = 5
    P = rng.uniform(0.05, 0.95, (K, d))
    log_probs = np.stack([np.log1p(-P), np.log(P)], axis=-1)
    kernel = CodesKernel(log_probs, (2,) * d)
    assert kernel.binary
    X = (rng.random((300, d)) < 0.5).astype(np.float64)
    X[7, d - 1] = -0.0
    bad_rows = {11: 0.5, 12: 2.0, 13: -1.0, 14: np.nan, 15: np.inf, 16: 1.0 + 2.0 ** -52}
    for i, value in bad_rows.items():
        X[i, (i * 7) % d] = value
    good = np.ones(X.shape[0], dtype=bool)
    good[list(bad_rows)] = False
    codes = np.where(good[:, None], X, 0.0).astype(np.intp)
    direct = log_probs[:, np.arange(d), codes].sum(axis=-1).T   # (n, K), in feature order
    got = kernel.log_density(X)
    assert np.all(got[~good] == -np.inf)
    # the same d terms (|log p| <= -log 0.05 < 3) summed in another grouping: each
    # order is within (d - 1) u sum|t| <= (d - 1) u 3 d of the exact sum
    np.testing.assert_allclose(got[good], direct[good], rtol=0,
                               atol=2 * (d - 1) * 2.0 ** -53 * 3.0 * d)
    # the statistics from the same indices: the weighted counts of ones
    W = rng.dirichlet(np.ones(K), size=X.shape[0])
    weight, counts = kernel.expand(kernel.accumulate(X[good], W[good]))
    ones = W[good].T @ X[good]
    np.testing.assert_allclose(counts[..., 1], ones, rtol=X.shape[0] * 2.0 ** -52)
    np.testing.assert_allclose(weight, W[good].sum(axis=0), rtol=X.shape[0] * 2.0 ** -52)
    with pytest.raises(FloatingPointError):
        kernel.accumulate(X, W)
    # a bad row with zero weight is no error
    W0 = W.copy()
    W0[~good] = 0.0
    kernel.accumulate(X, W0)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_soft_posterior_across_rows_equals_the_formula(K, T):
    # the soft posterior takes fewer than 8 components four rows at a time, one
    # row per lane (the LCA benchmark's K = 5), the last n mod 4 rows by row:
    # against the formula, with -inf entries (q = 0), an exp below -745
    # (q = +0), zero row weights, and the first failing row named
    from emcore.plugins._posterior_kernels import SoftPosteriorKernel
    kernel = SoftPosteriorKernel(T)
    rng = np.random.default_rng(K)
    n = 23
    A = rng.uniform(-50.0, 0.0, (n, K))
    A[3, 0] = -np.inf if K > 1 else A[3, 0]
    A[9, -1] = A[9].max() - 800.0
    w = rng.uniform(0.5, 2.0, n)
    w[5] = 0.0
    log_q, q, f, totals = kernel.posterior(A, w)
    B = A / T
    m = B.max(axis=1, keepdims=True)
    log_s = np.log(np.exp(B - m).sum(axis=1, keepdims=True))
    ref_lq = (B - m) - log_s
    ref_q = np.exp(ref_lq)
    ref_f = T * (m[:, 0] + log_s[:, 0])
    # |m| <= 50 / 0.7 < 72 and log s <= log 8: the rounding of m and log s is at most
    # a few units of 72 u absolute in log q, and that of b - m (up to 800 / 0.7 for
    # row 9's entry) a few units of u |log q| (the plain-C build rounds that entry
    # 1 ulp apart from the vector code), so q agrees to 2^8 u relative
    u = 2.0 ** -52
    fin = np.isfinite(ref_lq)
    np.testing.assert_array_equal(np.isfinite(log_q), fin)
    np.testing.assert_allclose(log_q[fin], ref_lq[fin], rtol=4 * u, atol=4 * 72 * u)
    np.testing.assert_allclose(q, ref_q, rtol=2 ** 8 * u, atol=0)
    np.testing.assert_allclose(f, ref_f, rtol=0, atol=4 * 72 * u)
    pos = ref_q > 0
    H = -np.where(pos, ref_q * np.where(pos, ref_lq, 0.0), 0.0).sum(axis=1)
    E = np.where(pos, ref_q * np.where(pos, A, 0.0), 0.0).sum(axis=1)
    ref_totals = [w @ ref_f, w @ E, w @ (T * H)]
    # n rows of terms below 72 K in size, each within 2^8 u relative
    np.testing.assert_allclose(totals[:3], ref_totals, rtol=0,
                               atol=2 ** 8 * u * n * 72 * K * w.max())
    for bad_row, value in ((6, np.nan), (2, -np.inf), (21, np.inf)):
        A_bad = A.copy()
        A_bad[bad_row] = value
        with pytest.raises(ValueError, match=f"row {bad_row} "):
            kernel.posterior(A_bad, w)


# --- compression: EM over the distinct rows (docs/discrete.md#compression) ------------

def test_row_patterns_are_the_distinct_rows_with_their_weights():
    from emcore._patterns import row_patterns
    rng = np.random.default_rng(31)
    X = rng.integers(-2, 3, size=(500, 4)).astype(np.float64)   # negative codes too
    w = rng.uniform(0.0, 2.0, X.shape[0])
    for codes in (True, False):
        P = row_patterns(X, w, integer_codes=codes)
        np.testing.assert_array_equal(P.rows[P.inverse], X)
        assert np.unique(P.rows, axis=0).shape[0] == P.n_patterns   # each once
        # a pattern's weight sums its rows' weights in a different order: the
        # sum of at most 500 terms in [0, 2] differs by at most 500 u times its size
        ref = np.array([w[P.inverse == p].sum() for p in range(P.n_patterns)])
        np.testing.assert_allclose(P.weight, ref, rtol=500 * 2.0 ** -52)
    # without weights: counts; a NaN (a missing value) is compared by its bytes
    X[3, 1] = np.nan
    P = row_patterns(X, integer_codes=True)
    np.testing.assert_array_equal(P.rows[P.inverse], X)
    assert P.weight.sum() == X.shape[0] and np.all(P.weight == np.round(P.weight))


def _em_rows(monkeypatch):
    """The rows each run_em of MixtureModel.fit is given, recorded."""
    import emcore._mixture
    seen, run_em = [], emcore._mixture.run_em

    def spy(X, *args, **kwargs):
        seen.append(X.shape[0])
        return run_em(X, *args, **kwargs)
    monkeypatch.setattr(emcore._mixture, "run_em", spy)
    return seen


@pytest.mark.parametrize("name", sorted(CASES))
def test_compressed_fit_is_the_per_row_fit(name, monkeypatch):
    make, data, key, *_ = CASES[name]
    rng = np.random.default_rng(32)
    X = data(400, rng)
    w = rng.uniform(0.5, 2.0, X.shape[0])
    seen = _em_rows(monkeypatch)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        for compress in (False, True):
            fits[compress] = emcore.MixtureModel(
                2, family=name, random_state=3, max_iter=20, tol=0.0,
                compress=compress).fit(X, sample_weight=w)
    n_patterns = np.unique(X, axis=0).shape[0]
    assert seen == [X.shape[0], n_patterns] and n_patterns < X.shape[0] / 2
    a, b = fits[False], fits[True]
    # the same start (drawn from the rows) and the same sums in another order:
    # as test_sample_weight_two_is_a_repeated_row, 20 iterations agree to 1e-10
    np.testing.assert_allclose(b.params_[key], a.params_[key], rtol=1e-10)
    np.testing.assert_allclose(b.weights_, a.weights_, rtol=1e-10)
    assert b.lower_bound_ == pytest.approx(a.lower_bound_, rel=1e-10)
    # the history reports the rows' log-likelihood and the chain holds
    assert len(b.history_) == len(a.history_) and b.n_iter_ == a.n_iter_
    assert all(it.chain_holds() for it in b.history_)
    for ra, rb in zip(a.history_, b.history_):
        assert rb.value == pytest.approx(ra.value, rel=1e-10)
    np.testing.assert_array_equal(b.predict(X), a.predict(X))


def test_compress_auto_is_on_for_repeated_discrete_rows_only(monkeypatch):
    rng = np.random.default_rng(33)
    seen = _em_rows(monkeypatch)
    binary = _binary_data(300, rng)                        # at most 16 patterns
    emcore.MixtureModel(2, family="bernoulli", random_state=0).fit(binary)
    assert seen[-1] == np.unique(binary, axis=0).shape[0]
    spread = rng.integers(0, 40, size=(300, 3)).astype(np.float64)  # rows distinct
    emcore.MixtureModel(2, family="poisson", random_state=0).fit(spread)
    assert seen[-1] == 300
    # a continuous family: not even when rows repeat
    gauss = np.repeat(rng.normal(size=(30, 2)), 10, axis=0)
    emcore.MixtureModel(2, random_state=0).fit(gauss)
    assert seen[-1] == 300
    # nor with a Monte-Carlo rule, which draws z per row
    emcore.MixtureModel(2, family="bernoulli", posterior="stochastic", max_iter=5,
                        random_state=0).fit(binary)
    assert seen[-1] == 300


def test_compress_is_validated(tmp_path, monkeypatch):
    X = _binary_data(50, np.random.default_rng(34))
    with pytest.raises(ValueError, match="'compress' parameter of MixtureModel must be"):
        emcore.MixtureModel(2, family="bernoulli", compress="yes").fit(X)
    with pytest.raises(ValueError, match="'compress' parameter of MixtureModel needs a "
                                         "posterior rule"):
        emcore.MixtureModel(2, family="bernoulli", posterior="stochastic",
                            compress=True).fit(X)
    # a chunked source (a memory map) is read a block at a time: no patterns
    mm = np.memmap(tmp_path / "X.dat", dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    with pytest.raises(ValueError, match="'compress' parameter of MixtureModel needs X "
                                         "in memory"):
        emcore.MixtureModel(2, family="bernoulli", compress=True).fit(mm)
    seen = _em_rows(monkeypatch)
    emcore.MixtureModel(2, family="bernoulli", random_state=0).fit(mm)     # 'auto'
    assert seen == [X.shape[0]]


# --- the codes path (group codes made once per fit, docs/discrete.md#group-codes) ---------

# categorical levels whose groups are mixed radix (3 * 4 * 2 * 5 = 120 <= 256, then
# 7 * 3 * 6 = 126, then 9 * 9 = 81) and binary items over three groups
_CODE_LEVELS = {"categorical": (3, 4, 2, 5, 7, 3, 6, 9, 9), "bernoulli": (2,) * 20}


def _codes_case(name, n, rng, K=3):
    levels = _CODE_LEVELS[name]
    log_probs = np.full((K, len(levels), max(levels)), -np.inf)
    for j, L in enumerate(levels):
        log_probs[:, j, :L] = np.log(rng.dirichlet(np.ones(L), size=K))
    X = np.stack([rng.integers(L, size=n) for L in levels], axis=1).astype(np.float64)
    return log_probs, levels, X


@pytest.mark.parametrize("name", sorted(_CODE_LEVELS))
def test_codes_path_gives_the_rows_path_sums_in_every_chunk(name):
    # the codes are the indices the rows path derives from the float64 rows, so
    # log-densities, statistics and totals are the same bits; a pass over many
    # chunks (each kernel call locates its chunk within the rows) on 1 and 2
    # threads, and a chunk of other memory (a copy), which is read as rows
    from emcore.engine import data_pass
    from emcore.plugins._discrete_kernel import CodesKernel, GroupCodes
    rng = np.random.default_rng(41)
    log_probs, levels, X = _codes_case(name, 3000, rng)
    codes = GroupCodes(X, levels)
    assert codes.valid and codes.codes.shape == (X.shape[0], 3)
    rows_kernel = CodesKernel(log_probs, levels)
    codes_kernel = CodesKernel(log_probs, levels, codes)
    np.testing.assert_array_equal(codes_kernel.log_density(X), rows_kernel.log_density(X))
    W = rng.dirichlet(np.ones(3), size=X.shape[0])
    np.testing.assert_array_equal(codes_kernel.accumulate(X, W),
                                  rows_kernel.accumulate(X, W))
    fam = (BernoulliFamily(3, len(levels)) if name == "bernoulli"
           else CategoricalFamily(3, len(levels), n_levels=levels))
    p = np.exp(log_probs)
    params = {"probabilities": p[..., 1] if name == "bernoulli" else np.nan_to_num(p)}
    rule = get_registry().posterior_rule("soft").factory()
    weights = np.array([0.5, 0.3, 0.2])
    sw = rng.uniform(0.5, 2.0, X.shape[0])

    def run(n_jobs, rows=X):
        res = data_pass(rows, fam, rule, weights, params, n_jobs=n_jobs, sample_weight=sw,
                        chunk_rows=128)
        return res.value, res.entropy, res.resp_sum, res.stats.counts

    plain = run(1)
    with fam.codes_for(X):
        assert fam.compiled_kernel(params).codes is not None
        for n_jobs in (1, 2):
            got = run(n_jobs)
            for a, b in zip(got, plain):
                np.testing.assert_array_equal(a, b)
        copied = run(2, X.copy())
        for a, b in zip(copied, plain):
            np.testing.assert_array_equal(a, b)
    assert fam.compiled_kernel(params).codes is None        # released


def test_codes_path_reads_the_codes_not_the_rows():
    # rows changed after their codes were made: a kernel with the codes still
    # gives the old rows' values (it does not read the rows), for the whole array
    # and for a chunk inside it; a chunk that is not whole rows of it is read as rows
    from emcore.plugins._discrete_kernel import CodesKernel, GroupCodes
    rng = np.random.default_rng(42)
    log_probs, levels, X = _codes_case("categorical", 200, rng)
    before = CodesKernel(log_probs, levels).log_density(X)
    codes = GroupCodes(X, levels)
    kernel = CodesKernel(log_probs, levels, codes)
    X[:] = X[::-1]
    np.testing.assert_array_equal(kernel.log_density(X), before)
    np.testing.assert_array_equal(kernel.log_density(X[50:90]), before[50:90])
    shifted = X.reshape(-1)[1:1 + 10 * X.shape[1]].reshape(10, X.shape[1])
    np.testing.assert_array_equal(kernel.log_density(shifted),
                                  CodesKernel(log_probs, levels).log_density(shifted))


def test_group_codes_refuse_bad_rows_and_wide_groups():
    # no codes (the kernel reads the rows) for a row outside its levels, or for a
    # feature of more than 256 levels (its group's index does not fit a byte)
    from emcore.plugins._discrete_kernel import CodesKernel, GroupCodes
    rng = np.random.default_rng(43)
    log_probs, levels, X = _codes_case("categorical", 50, rng)
    X[17, 2] = 2.0                                   # feature 2 has 2 levels
    bad = GroupCodes(X, levels)
    assert not bad.valid and bad.codes is None
    assert CodesKernel(log_probs, levels, bad).codes is None
    assert np.all(CodesKernel(log_probs, levels, bad).log_density(X)[17] == -np.inf)
    wide = GroupCodes(np.array([[300.0, 1.0], [2.0, 0.0]]), (301, 2))
    assert not wide.valid
    with pytest.raises(ValueError, match="other levels"):
        CodesKernel(log_probs, levels[:-1] + (8,), GroupCodes(X[:5], levels))


@pytest.mark.parametrize("compress", [False, True])
def test_fits_read_the_group_codes_of_their_em_rows(compress, monkeypatch):
    # MixtureModel.fit makes the codes of the rows its EM iterations run over
    # (the patterns when compressed) once, and the fit is the one without codes
    import emcore.plugins.discrete as discrete
    rng = np.random.default_rng(44)
    X = _binary_data(600, rng, d=4)
    made = []

    def counting(rows, levels):
        made.append(rows.shape[0])
        return GroupCodes(rows, levels)

    GroupCodes = discrete.GroupCodes

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", emcore.ConvergenceWarning)
            return emcore.MixtureModel(2, family="bernoulli", random_state=5, max_iter=15,
                                       tol=0.0, compress=compress).fit(X)

    monkeypatch.setattr(discrete, "GroupCodes", counting)
    with_codes = fit()
    assert made == [np.unique(X, axis=0).shape[0] if compress else X.shape[0]]
    monkeypatch.setattr(discrete.CategoricalFamily, "codes_for",
                        lambda self, rows: contextlib.nullcontext())
    without = fit()
    assert made == made[:1]
    assert with_codes.lower_bound_ == without.lower_bound_
    np.testing.assert_array_equal(with_codes.params_["probabilities"],
                                  without.params_["probabilities"])
    assert with_codes.family_.compiled_kernel(with_codes.params_).codes is None


# --- the fused soft step (docs/discrete.md#the-fused-soft-step) ---------------------------

_U = 2.0 ** -53


def _pass_pair(fam, params, X, weights, sw, n_jobs=1, chunk_rows=128):
    """(fused, unfused) passes: asking for log q keeps the posterior kernel."""
    from emcore.engine import data_pass
    rule = get_registry().posterior_rule("soft").factory()
    fused = data_pass(X, fam, rule, weights, params, n_jobs=n_jobs, sample_weight=sw,
                      chunk_rows=chunk_rows)
    plain = data_pass(X, fam, rule, weights, params, n_jobs=n_jobs, sample_weight=sw,
                      chunk_rows=chunk_rows,
                      out_log_resp=np.empty((X.shape[0], len(weights))))
    return fused, plain


def _assert_same_pass(fused, plain, G, sw, fam, params, X, weights):
    # per row, the fused step's exp(a_k - m) is a product of G + 1 table entries
    # (each exp within 2 u) and G roundings, the soft kernel's one vector exp
    # (within 4 u): q and s differ by at most 8 (G + 2) u relative, log s and so
    # f = m + log s by 8 (G + 2) u + u |f|; both sum the rows in the same order,
    # so the totals differ by at most 16 (G + 2) u (sum_i w_i + magnitude)
    # (magnitude >= sum_i w_i |f_i| and sum_i w_i q_ik |a_ik|)
    tol = 16 * (G + 2) * _U * (sw.sum() + plain.magnitude)
    assert abs(fused.value - plain.value) <= tol
    assert abs(fused.expected_log_joint - plain.expected_log_joint) <= tol
    assert abs(fused.entropy - plain.entropy) <= tol
    assert abs(fused.magnitude - plain.magnitude) <= 2 * tol
    # The statistics, entry by entry. Beyond the exps' roundings above, each
    # path rounds the exponent a_ik = sum_j log p_kj(x_ij) + log pi_k itself
    # (the unfused one in its log-density's at most d + G + 1 additions, the
    # fused one in its tables' sums before their exps): each within
    # (d + G + 1) u M_ik absolutely, M_ik = sum_j |log p_kj(x_ij)| + |log pi_k|
    # (every log p <= 0: the first sum is |log p(x_i | k)|), and an exponent's
    # absolute error is the exp's relative one. So e_ik differs by at most
    # delta_ik = 2 (d + G + 1) u M_ik + 8 (G + 2) u, and q_ik = e_ik / sum_k e_ik
    # by delta_ik + max_k delta_ik + (K + 2) u. A statistic is a sum of
    # w_i q_ik (one more rounding each) over its rows, in another order in the
    # run step (a run's high groups summed in registers first): a sum of n
    # positive terms in any order is within (n - 1) u of the exact one, so the
    # two differ by at most sum_i w_i q_ik (rq_ik + 2 u) + 2 (n - 1) u S (1.01
    # for the second-order terms). A term at a small q_ik carries the largest
    # exponent error: a count made of one such row shows it (K = 5, d = 23, a
    # row with q = 2.6e-5: 56 u against the 50 u of a relative-only bound).
    n, d = X.shape
    K = len(weights)
    with np.errstate(divide="ignore"):
        log_pi = np.log(weights)
        a = np.asarray(fam.log_density(X, params), dtype=np.float64)
    joint = a + log_pi
    m = np.max(joint, axis=1, keepdims=True)
    finite = np.isfinite(joint)
    q = np.where(finite, np.exp(np.where(finite, joint - m, 0.0)), 0.0)
    q /= q.sum(axis=1, keepdims=True)
    M = np.where(finite, np.abs(np.where(finite, a, 0.0)) + np.abs(log_pi), 0.0)
    delta = 2 * (d + G + 1) * _U * M + 8 * (G + 2) * _U
    rq = delta + np.max(np.where(finite, delta, 0.0), axis=1, keepdims=True) + (K + 2) * _U
    wq = sw[:, None] * q
    wq_err = wq * (rq + 2 * _U)
    sum_rule = 2 * max(n - 1, 0) * _U

    def check(got, ref, bound, what):
        excess = np.abs(got - ref) - 1.01 * (bound + sum_rule * np.abs(ref))
        assert np.all(excess <= 0), (what, float(np.max(excess)))

    check(fused.resp_sum, plain.resp_sum, wq_err.sum(axis=0), "resp_sum")
    check(fused.stats.weight, plain.stats.weight, wq_err.sum(axis=0), "weight")
    L = plain.stats.counts.shape[2]
    codes = np.asarray(X).astype(np.int64)
    onehot = (codes[:, :, None] == np.arange(L)).astype(np.float64)
    check(fused.stats.counts, plain.stats.counts,
          np.einsum("ik,ijl->kjl", wq_err, onehot), "counts")


@pytest.mark.parametrize("name", sorted(_CODE_LEVELS))
def test_fused_soft_step_is_the_soft_posterior_and_its_statistics(name):
    # exp free (the tables' ranges are far below the guard), with and without the
    # codes, on 1 and 2 threads (the same bits: blocks of chunks, merged in order)
    rng = np.random.default_rng(45)
    log_probs, levels, X = _codes_case(name, 2000, rng)
    p = np.exp(log_probs)
    if name == "bernoulli":
        fam, params = BernoulliFamily(3, len(levels)), {"probabilities": p[..., 1]}
    else:
        fam = CategoricalFamily(3, len(levels), n_levels=levels)
        params = {"probabilities": np.nan_to_num(p)}
    kernel = fam.compiled_kernel(params)
    assert kernel.fused_soft_step and kernel.exp_range <= 700
    assert get_registry().posterior_rule("soft").factory().compiled_kernel().exact_soft
    weights = np.array([0.5, 0.3, 0.2])
    sw = rng.uniform(0.5, 2.0, X.shape[0])
    fused, plain = _pass_pair(fam, params, X, weights, sw)
    _assert_same_pass(fused, plain, kernel.n_groups, sw, fam, params, X, weights)
    with fam.codes_for(X):
        for n_jobs in (1, 2):
            again, _ = _pass_pair(fam, params, X, weights, sw, n_jobs=n_jobs)
            assert again.value == fused.value and again.entropy == fused.entropy
            np.testing.assert_array_equal(again.stats.counts, fused.stats.counts)
            np.testing.assert_array_equal(again.resp_sum, fused.resp_sum)


@pytest.mark.parametrize("K", [3, 6])
@pytest.mark.parametrize("d", [5, 20, 40])
def test_fused_soft_blocks_and_their_row_tail_are_the_soft_posterior(K, d):
    # the exp-free step runs blocks of 4 rows (one vector log per block, the
    # entropy and magnitude from per-row sums, _discrete.h emdc_soft_blocks)
    # and the last n % 4 rows of a chunk one by one: chunks of 126 rows leave a
    # tail of 2 in each. K = 3 and 6 (one and two vectors of components), d = 5,
    # 20 and 40 binary items (G = 1 and 3, compiled per G, and G = 5, the
    # generic loop); zero sample weights among the rows. Against the unfused
    # pass with the same derived bound, the same bits on 1 and 2 threads, and
    # the codes path the same bits as the rows path
    rng = np.random.default_rng(47)
    n = 1001
    p = rng.uniform(0.05, 0.95, (K, d))
    X = (rng.random((n, d)) < p[rng.integers(K, size=n)]).astype(np.float64)
    fam, params = BernoulliFamily(K, d), {"probabilities": p}
    kernel = fam.compiled_kernel(params)
    assert kernel.exp_range <= 700 and kernel.n_groups == -(-d // 8)
    weights = rng.dirichlet(np.ones(K))
    sw = rng.uniform(0.5, 2.0, n)
    sw[::9] = 0.0
    fused, plain = _pass_pair(fam, params, X, weights, sw, chunk_rows=126)
    _assert_same_pass(fused, plain, kernel.n_groups, sw, fam, params, X, weights)
    with fam.codes_for(X):
        for n_jobs in (1, 2):
            again, _ = _pass_pair(fam, params, X, weights, sw, n_jobs=n_jobs,
                                  chunk_rows=126)
            assert again.value == fused.value and again.entropy == fused.entropy
            assert again.magnitude == fused.magnitude
            np.testing.assert_array_equal(again.stats.counts, fused.stats.counts)
            np.testing.assert_array_equal(again.resp_sum, fused.resp_sum)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 8), d=st.integers(9, 26), n=st.integers(1, 700),
       seed=st.integers(0, 2 ** 32 - 1), chunk_rows=st.sampled_from([4, 37, 128, 1024]),
       sorted_rows=st.booleans(), zeros=st.booleans(), heavy=st.booleans())
@example(K=5, d=12, n=700, seed=1, chunk_rows=128, sorted_rows=True, zeros=False,
         heavy=False)
@example(K=3, d=12, n=500, seed=3, chunk_rows=128, sorted_rows=True, zeros=True,
         heavy=True)
@example(K=3, d=16, n=9, seed=2, chunk_rows=4, sorted_rows=True, zeros=False, heavy=False)
@example(K=5, d=23, n=5, seed=225, chunk_rows=4, sorted_rows=False, zeros=False, heavy=False)
def test_fused_soft_runs_are_the_soft_posterior(K, d, n, seed, chunk_rows, sorted_rows,
                                                zeros, heavy):
    # the run step (_discrete.h emdc_soft_runs: sorted group codes, G = 2..4
    # groups, K <= 8) against the unfused pass, for each form of the step
    # (_set_run_step: 0 blocks, 1 runs, 2 runs compiled for AVX-512 where the CPU
    # has it): a compressed fit's distinct rows, sorted with the last feature the
    # most significant (row_patterns), so that the high groups' codes come in
    # runs; or the same rows shuffled (runs of length 1: the blocks step).
    # Random K, d, n, chunk sizes (tails of n % 4 rows, chunks shorter than a
    # block), pattern weights with zeros among them; with zeros (K >= 2),
    # component 0 gives items 0 and 8 probability 0 (tables with -inf entries:
    # the step's masked sums; otherwise every e_k > 0, unmasked); heavy: the
    # mixing weights times 4 (some log pi_k > 0: the magnitude's sum of
    # e_k |a_k| is formed, not taken as -sum e_k a_k). The same bits on 1 and 2
    # threads; the same derived bound as the blocks step (_assert_same_pass:
    # the same G + 1 factors per entry, the statistics summed in another order)
    from emcore._patterns import row_patterns
    from emcore.engine import data_pass
    from emcore.plugins._discrete_kernel import _set_run_step
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, (K, d))
    if zeros and K >= 2:
        p[0, [0, 8]] = 0.0
    X = (rng.random((n, d)) < p[rng.integers(K, size=n)]).astype(np.float64)
    pat = row_patterns(X, integer_codes=True)
    P, sw = pat.rows, pat.weight * rng.uniform(0.5, 2.0, pat.n_patterns)
    sw[rng.random(sw.shape[0]) < 0.1] = 0.0
    if not sorted_rows:
        order = rng.permutation(P.shape[0])
        P, sw = np.ascontiguousarray(P[order]), sw[order]
    fam, params = BernoulliFamily(K, d), {"probabilities": p}
    kernel = fam.compiled_kernel(params)
    assert kernel.exp_range <= 700 and kernel.n_groups == -(-d // 8)
    assert kernel.finite_tables == (not zeros or K == 1)
    weights = rng.dirichlet(np.ones(K)) * (4.0 if heavy else 1.0)
    note(f"patterns {P.shape[0]}, groups {kernel.n_groups}")
    old = _set_run_step(2)
    try:
        results = {}
        with fam.codes_for(P):
            for mode in (0, 1, 2):
                _set_run_step(mode)
                fused, plain = _pass_pair(fam, params, P, weights, sw, chunk_rows=chunk_rows)
                _assert_same_pass(fused, plain, kernel.n_groups, sw, fam, params, P, weights)
                again, _ = _pass_pair(fam, params, P, weights, sw, n_jobs=2,
                                      chunk_rows=chunk_rows)
                assert again.value == fused.value and again.entropy == fused.entropy
                assert again.magnitude == fused.magnitude
                np.testing.assert_array_equal(again.stats.counts, fused.stats.counts)
                np.testing.assert_array_equal(again.resp_sum, fused.resp_sum)
                # without statistics (a log-likelihood pass: the step's own loop
                # with no statistics rows): the same totals bit for bit (the
                # same per-block work), and resp_sum summed row by row instead
                # of by runs: two orders of the same n positive terms w_i q_ik,
                # each within (n - 1) u of the exact sum
                bare = data_pass(P, fam, get_registry().posterior_rule("soft").factory(),
                                 weights, params, sample_weight=sw, chunk_rows=chunk_rows,
                                 with_stats=False)
                assert bare.stats is None
                assert (bare.value, bare.entropy, bare.expected_log_joint,
                        bare.magnitude) == (fused.value, fused.entropy,
                                            fused.expected_log_joint, fused.magnitude)
                n_rows = P.shape[0]
                assert np.all(np.abs(bare.resp_sum - fused.resp_sum)
                              <= 2 * max(n_rows - 1, 0) * _U * fused.resp_sum)
                results[mode] = fused
    finally:
        _set_run_step(old)
    from emcore.kernel import _compiled_paths
    if sorted_rows and d == 12 and n >= 500 and chunk_rows == 128 and \
            _compiled_paths()["gnu_vectors"]:
        # the examples above take the run step (their 4 high bits take 16 values:
        # runs of dozens of patterns): its statistics are summed in another order
        # (the plain-C build, without GNU vector extensions, has no run step)
        assert not np.array_equal(results[1].stats.counts, results[0].stats.counts)


def test_fused_soft_blocks_report_the_first_bad_row():
    # a code outside the levels inside a block of 4 (rows path: the block is
    # handed to the row-by-row step, which names the row), and a row with
    # probability 0 under every component (s = 0 in its block)
    from emcore.engine import data_pass
    rule = get_registry().posterior_rule("soft").factory()
    fam = BernoulliFamily(2, 6)
    p = np.array([[0.9, 0.8, 0.2, 0.7, 0.5, 0.0], [0.2, 0.3, 0.6, 0.9, 0.5, 0.0]])
    X = np.zeros((400, 6))
    X[::5, :3] = 1.0
    bad = X.copy()
    bad[213, 2] = 2.0
    with pytest.raises(ValueError, match="row 213 of X has no finite likelihood"):
        data_pass(bad, fam, rule, np.array([0.5, 0.5]), {"probabilities": p}, chunk_rows=64)
    zero = X.copy()
    zero[298, 5] = 1.0
    with pytest.raises(ValueError, match="row 298 of X has no finite likelihood"):
        data_pass(zero, fam, rule, np.array([0.5, 0.5]), {"probabilities": p}, chunk_rows=64)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_fused_soft_runs_report_the_first_bad_row(mode):
    # the run step on sorted group codes (G = 2, runs of up to 256 rows) in
    # chunks of 256 rows, which it takes in stretches of 64 in three stages
    # (_discrete.h emdc_soft_runs): rows with probability 0 under every
    # component (item 11 has probability 0; they sort last), the first in
    # the third stretch of its chunk and not in the chunk's last n % 4 rows:
    # stage 1 stops at its block, the rows before it are finished, the
    # row-by-row step names it; the pass before it is the unfused one's
    from emcore._patterns import row_patterns
    from emcore.engine import data_pass
    from emcore.plugins._discrete_kernel import _set_run_step
    rng = np.random.default_rng(8)
    d = 12
    X = (rng.random((4000, d)) < 0.5).astype(np.float64)
    X[:, 11] = 0.0
    P = row_patterns(X, integer_codes=True).rows[: 3 * 256 + 150]
    bad = np.zeros((10, d))
    bad[:, 11] = 1.0
    bad[:, :4] = (np.arange(10)[:, None] >> np.arange(4)) & 1     # sorted
    P = np.ascontiguousarray(np.vstack([P, bad]))
    row = 3 * 256 + 150                         # the chunk's rows 150 .. 159 are bad
    p = rng.uniform(0.05, 0.95, (3, d))
    p[:, 11] = 0.0
    fam, params = BernoulliFamily(3, d), {"probabilities": p}
    rule = get_registry().posterior_rule("soft").factory()
    weights = np.array([0.5, 0.3, 0.2])
    old = _set_run_step(mode)
    try:
        with fam.codes_for(P):
            with pytest.raises(ValueError, match=f"row {row} of X has no finite likelihood"):
                data_pass(P, fam, rule, weights, params, chunk_rows=256)
            sw = np.ones(row)
            fused, plain = _pass_pair(fam, params, P[:row], weights, sw, chunk_rows=256)
    finally:
        _set_run_step(old)
    _assert_same_pass(fused, plain, 2, sw, fam, params, P[:row], weights)


def test_fused_soft_step_falls_back_to_exp_beyond_the_guard():
    # component 0 gives every item probability tiny, component 1 probability
    # 1 - tiny, component 2 alternates them; the last row answers 1 to the even
    # items and 0 to the odd ones: under every component its likelihood is at
    # most tiny^(d / 2). A group of 8 items spans 8 log(1 / tiny) in its table.
    # d = 16, tiny = 1e-18: the ranges sum to 663 <= 700, exp free, that row's
    # products e^-331 and e^-663 (normal doubles). d = 48, tiny = 1e-30: 3316 > 700,
    # and that row's products would be e^-1658 (0 in double): the step takes
    # exp(a - max) per entry instead. Both agree with the soft posterior
    rng = np.random.default_rng(46)
    K = 3
    for d, tiny, exp_free in ((16, 1e-18, True), (48, 1e-30, False)):
        p = np.empty((K, d))
        p[0], p[1] = tiny, 1.0 - tiny
        p[2] = np.where(np.arange(d) % 2 == 0, tiny, 1.0 - tiny)
        fam = BernoulliFamily(K, d)
        params = {"probabilities": p}
        kernel = fam.compiled_kernel(params)
        assert (kernel.exp_range <= 700) == exp_free
        z = rng.integers(K, size=600)
        X = (rng.random((600, d)) < p[z]).astype(np.float64)
        X[-1] = np.arange(d) % 2 == 0
        sw = np.ones(X.shape[0])
        weights = np.array([0.4, 0.3, 0.3])
        fused, plain = _pass_pair(fam, params, X, weights, sw)
        _assert_same_pass(fused, plain, kernel.n_groups, sw, fam, params, X, weights)
        assert np.isfinite(fused.value)


def test_fused_soft_step_refuses_a_row_without_likelihood():
    # a row every component gives probability 0: the same error as the posterior
    X = np.zeros((300, 4))
    X[::7, :2] = 1.0
    X[123] = [1.0, 1.0, 1.0, 1.0]
    fam = BernoulliFamily(2, 4)
    params = {"probabilities": np.array([[0.9, 0.8, 0.2, 0.0], [0.2, 0.3, 0.0, 0.9]])}
    for out in (None, np.empty((300, 2))):
        with pytest.raises(ValueError, match="row 123 of X has no finite likelihood"):
            from emcore.engine import data_pass
            data_pass(X, fam, get_registry().posterior_rule("soft").factory(),
                      np.array([0.5, 0.5]), params, chunk_rows=64, out_log_resp=out)

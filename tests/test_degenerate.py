"""Degenerate data, as a permanent property test (issue 15): constant columns,
identical rows, duplicated clusters, few distinct rows, offsets up to 1e12 times
the spread, scales from 1e-6 to 1e6, extreme sample weights, every covariance type,
with and without prior='default'.

Every fit either succeeds or (without a prior only) raises DegenerateComponentError;
a fit has no NaN, keeps its ELBO chain (a ChainViolationWarning is an error here)
and, with a prior, a monotone MAP objective. On small cases each link of the chain
is recomputed in exact (50-digit) arithmetic from the float parameters, so the
chain check is tested in both directions: the engine's computed links are within
their derived tolerances of the exact ones (no false failures), and a planted
M-step error the exact links show is reported (no false passes).

``HYPOTHESIS_PROFILE=heavy`` (tests/conftest.py) runs thousands of examples:
ci/heavy.sh.
"""

import warnings

import mpmath
import numpy as np
import pytest
from hypothesis import assume, given, note, strategies as st

from emcore import (ChainViolationWarning, ConvergenceWarning, DegenerateComponentError,
                    GaussianMixture, GaussianPrior)
from emcore.engine import run_em
from emcore.plugins.gaussian import GaussianFamily
from emcore.registry import get_registry

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_SMALLEST_DOUBLE = mpmath.mpf(2) ** -1074
KINDS = ("blobs", "constant_columns", "identical_rows", "duplicated_clusters",
         "few_distinct_rows")


@st.composite
def degenerate_data(draw, max_n=40, max_k=3, max_d=3):
    """(X, sample_weight or None, n_components, scale) of one degenerate kind."""
    k = draw(st.integers(1, max_k))
    d = draw(st.integers(1, max_d))
    n = draw(st.integers(k + 1, max(k + 1, max_n)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(KINDS))
    X = rng.normal(size=(n, d)) + 6.0 * rng.integers(0, k, n)[:, None]
    if kind == "constant_columns":
        columns = draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=d, unique=True))
        # 0, or a value of data size (a constant of 1e-296 times weights of 2^-400
        # underflows, which is not a degenerate-data property)
        value = draw(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)))
        X[:, columns] = value * draw(st.sampled_from([-1.0, 1.0]))
    elif kind == "identical_rows":
        X[:] = X[0]
    elif kind == "duplicated_clusters":
        half = n // 2
        X[half:] = X[:n - half]                 # every row of one half twice
    elif kind == "few_distinct_rows":
        X = X[rng.integers(0, draw(st.integers(1, k)), n)]
    # offsets in units of the spread (the relative precision of the data), any scale
    offset = draw(st.sampled_from([0.0, 1.0, -1e4, 1e8, 1e12]))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    X = (X + offset) * scale
    weighting = draw(st.sampled_from(["none", "uniform", "spread", "zeros"]))
    if weighting == "none":
        w = None
    elif weighting == "uniform":
        w = np.full(n, 2.0 ** draw(st.integers(-400, 400)) / n)
    elif weighting == "spread":
        w = 10.0 ** rng.uniform(-6.0, 6.0, n)
    else:
        w = rng.integers(0, 3, n).astype(float)
        assume(np.count_nonzero(w) > k)
    return X, w, k, scale


def _fit(X, w, k, scale, covariance_type, prior, **kw):
    # scale-free: reg_covar in the data's units squared (without a prior)
    gm = GaussianMixture(k, covariance_type=covariance_type,
                         prior="default" if prior else None,
                         reg_covar=0.0 if prior else 1e-6 * scale ** 2,
                         random_state=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ChainViolationWarning)
        return gm.fit(X, sample_weight=w)


@given(data=degenerate_data(), covariance_type=st.sampled_from(COVARIANCE_TYPES),
       prior=st.booleans())
def test_degenerate_data_fit_cleanly_with_a_chain_that_holds(data, covariance_type, prior):
    X, w, k, scale = data
    if prior and w is not None:
        # with a prior the weights are repetitions: 1e60 of them leave the prior's
        # covariance floor (scale / (total weight)) below the rounding of the data,
        # where degenerate components are real again; keep the total near n
        w = w * (X.shape[0] / np.sum(w))
    note(f"X = {X.tolist()}, w = {None if w is None else w.tolist()}")
    try:
        gm = _fit(X, w, k, scale, covariance_type, prior, max_iter=20, tol=0.0)
    except DegenerateComponentError:
        assert not prior         # a prior makes degenerate components impossible
        return
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    worst = max(max(it.chain_slacks().values()) for it in gm.history_)
    note(f"worst link / tolerance = {worst}")
    assert all(it.chain_holds() for it in gm.history_)
    if prior:
        # MAP-EM (reg_covar = 0): loglik + log prior never decreases, up to the
        # ascent and bound links' tolerances
        for it in gm.history_:
            assert it.objective >= it.value + it.log_prior - 2 * it.tolerance


# --- extreme sample weights: scale invariance, or a clear error ---------------------------------

@given(data=degenerate_data(max_n=30), covariance_type=st.sampled_from(COVARIANCE_TYPES),
       exponent=st.integers(-400, 400))
def test_weights_times_a_power_of_two_give_the_same_fit_bit_for_bit(data, covariance_type,
                                                                     exponent):
    # without a prior the weights' scale is irrelevant; a power of two scales every
    # weighted sum exactly, so on any data, however degenerate, the same bits
    X, w, k, scale = data
    w = np.ones(X.shape[0]) if w is None else w / np.max(w)
    try:
        a = _fit(X, w, k, scale, covariance_type, False, max_iter=5, tol=0.0)
    except DegenerateComponentError:
        with pytest.raises(DegenerateComponentError):
            _fit(X, np.ldexp(w, exponent), k, scale, covariance_type, False, max_iter=5,
                 tol=0.0)
        return
    b = _fit(X, np.ldexp(w, exponent), k, scale, covariance_type, False, max_iter=5, tol=0.0)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.lower_bound_ == b.lower_bound_


@given(c=st.floats(1e-140, 1e140), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_weights_times_any_c_give_the_same_fit(c, covariance_type):
    # any c: the weighted sums round differently, by ~u relative, on well-conditioned
    # data an M-step amplifies that by at most ~kappa(Sigma) ~ 10 over 5 iterations
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0.0, 1.0, (40, 2)), rng.normal(4.0, 0.7, (30, 2))])
    w = rng.uniform(0.5, 2.0, X.shape[0])
    a = _fit(X, w, 2, 1.0, covariance_type, False, max_iter=5, tol=0.0)
    b = _fit(X, w * c, 2, 1.0, covariance_type, False, max_iter=5, tol=0.0)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
    assert b.lower_bound_ == pytest.approx(a.lower_bound_, rel=1e-12)


@pytest.mark.parametrize("c", [1e300, 1e200, 1e-200, 1e-320])
def test_unrepresentable_weights_are_rejected_naming_the_argument(c):
    # uniform weights of 1e300 raised a DegenerateComponentError, 1e-320 silently
    # changed the fit: both are outside what the statistics can hold
    X = np.random.default_rng(0).normal(size=(50, 2))
    for prior in (None, "default"):
        with pytest.raises(ValueError, match="'sample_weight'.*whose sum is between"):
            GaussianMixture(2, prior=prior).fit(X, sample_weight=np.full(50, c))


# --- the chain check against exact arithmetic ----------------------------------------------------

class _OffMStep(GaussianFamily):
    """The M-step's means moved by ``shift`` standard deviations (a planted bug)."""

    shift = 0.0

    def m_step(self, stats, previous):
        params = super().m_step(stats, previous)
        if self.shift == 0.0 or previous is None:
            return params
        sd = np.sqrt(np.einsum("kjj->kj", params["covariances"]))
        return self.params_from_covariances(params["means"] + self.shift * sd,
                                            params["covariances"])


def _exact_log_joint(X, weights, params):
    """a_ik = log pi_k + log N(x_i | mu_k, (U_k U_k^T)^-1) in 50 digits, from the
    float parameters as exact numbers (the density the engine evaluates)."""
    n, d = X.shape
    rows = []
    for i in range(n):
        row = []
        for k, (mu, U) in enumerate(zip(params["means"], params["precisions_cholesky"])):
            r = [mpmath.mpf(float(X[i, j])) - mpmath.mpf(float(mu[j])) for j in range(d)]
            y = [mpmath.fsum(r[j] * mpmath.mpf(float(U[j, m])) for j in range(d))
                 for m in range(d)]
            log_det = mpmath.fsum(mpmath.log(mpmath.mpf(float(U[j, j]))) for j in range(d))
            if weights[k] == 0:
                row.append(-mpmath.inf)
                continue
            row.append(mpmath.log(mpmath.mpf(float(weights[k]))) + log_det
                       - d * mpmath.log(2 * mpmath.pi) / 2 - mpmath.fsum(v * v for v in y) / 2)
        rows.append(row)
    return rows


def _exact_links(X, w, before, after, record):
    """(equality, ascent, bound) violations in exact arithmetic, q_t the exact
    posterior at theta_t; the log priors and the penalty are the recorded ones
    (their rounding is within the tolerance's prior and penalty magnitudes)."""
    a_t = _exact_log_joint(X, *before)
    a_next = _exact_log_joint(X, *after)
    F_t = F_next = elbo = mpmath.mpf(0)
    for i, (row_t, row_next) in enumerate(zip(a_t, a_next)):
        wi = mpmath.mpf(1.0 if w is None else float(w[i]))
        if wi == 0:
            continue
        lse_t = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row_t))
        F_t += wi * lse_t
        F_next += wi * mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row_next))
        # q_t as doubles hold it: a responsibility below the smallest double is 0 to
        # the engine (its component may then get pi_k = 0, log pi_k = -inf), and adds
        # nothing, 0 log 0 = 0; above it, q (a - log q) is the exact term
        q_row = [mpmath.exp(v - lse_t) for v in row_t]
        elbo += wi * mpmath.fsum(q * (u - (v - lse_t)) for q, v, u in zip(q_row, row_t, row_next)
                                 if q >= _SMALLEST_DOUBLE)
    ascent = (F_t + record.log_prior + record.penalty_change) - (elbo + record.log_prior_next)
    return 0.0, float(ascent), float(elbo - F_next)


@given(data=degenerate_data(max_n=10, max_k=2, max_d=2),
       covariance_type=st.sampled_from(COVARIANCE_TYPES), prior=st.booleans(),
       shift=st.sampled_from([0.0, 0.0, 1e-9, 1e-6, 1e-3, 0.1]))
def test_chain_verdicts_agree_with_exact_arithmetic(data, covariance_type, prior, shift):
    mpmath.mp.dps = 50
    X, w, k, scale = data
    n, d = X.shape
    if prior and w is not None:
        w = w * (n / np.sum(w))           # repetitions (see the test above)
    resolved = (GaussianPrior().resolve(X, k, w, covariance_type) if prior else None)
    family = _OffMStep(k, d, covariance_type=covariance_type, prior=resolved,
                       reg_covar=0.0 if prior else 1e-6 * scale ** 2)
    rule = get_registry().posterior_rule("soft").factory()
    resp = np.random.default_rng(0).dirichlet(np.ones(k), n)
    try:
        params = family.m_step(family.chunk_stats(X, resp if w is None else resp * w[:, None]),
                               None)
    except DegenerateComponentError:
        assume(False)
    weights = np.full(k, 1.0 / k)
    family.shift = shift
    for _ in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ChainViolationWarning)
                result = run_em(X, family, rule, weights, params, max_iter=1, tol=0.0,
                                sample_weight=w, weight_concentration=(
                                    None if resolved is None else resolved.weight_concentration))
        except DegenerateComponentError:
            assert not prior
            return
        record = result.history[0]
        exact = _exact_links(X, w, (weights, params), (result.weights, result.params),
                             record)
        computed = ((record.elbo_at_start - record.value),
                    (record.value + record.log_prior + record.penalty_change)
                    - (record.elbo + record.log_prior_next),
                    record.elbo - record.value_next)
        bounds = (record.tolerance_equality, record.tolerance,
                  record.tolerance + record.tolerance_rule)
        note(f"exact {exact}, computed {computed}, tolerances {bounds}")
        for name, e, c, tau in zip(("equality", "ascent", "bound"), exact, computed, bounds):
            # the tolerance bounds the rounding of each computed link ...
            assert abs(c - e) <= tau, name
        # ... so the verdict is right both ways: an exact violation beyond twice the
        # tolerance is reported, and a chain that holds exactly is not
        if any(e > 2 * tau for e, tau in zip(exact, bounds)):
            assert not record.chain_holds()
        if all(e <= 0.0 for e in exact):
            assert record.chain_holds()
        weights, params = result.weights, result.params

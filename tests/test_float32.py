"""float32 data end to end (docs/elbo_chain.md#float32).

KMeans: float32 X stays float32, the Lloyd step scores in float32 (only the
labels), every sum in float64, attributes in float32. GaussianMixture: float32 X
stays float32, attributes in float32; 'diag' and 'spherical' compute the
log-density's quadratic form in float32 (statistics float64), and so do 'full'
and 'tied' (the full-covariance kernel). Checked here: the dtype of every fitted attribute, agreement with the
float64 fit of the same (widened) data within the derived bounds, the float32
score bound itself, thread invariance, and the chain on hypothesis-drawn data.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, note, settings, strategies as st

import emcore
from emcore._chunks import chunk_rows_for
from emcore._core._passes import data_pass as compiled_pass
from emcore._input import check_input
from emcore.exceptions import ChainViolationWarning
from emcore.kernel import _compiled_paths
from emcore.plugin_api import FLOAT32_UNIT_ROUNDOFF as U32, UNIT_ROUNDOFF as U64
from emcore.plugins._gaussian_diag_kernel import (GaussianDiagKernel,
                                                 STATISTICS_ROWS_F32 as DIAG_ROWS_F32,
                                                 _avx512_float32 as _diag_avx512)
from emcore.plugins._gaussian_kernel import (GaussianFullKernel,
                                            STATISTICS_ROWS_F32 as FULL_ROWS_F32,
                                            _avx512_float32)
from emcore.plugins._kmeans_kernel import KMeansKernel, _float32_labelling
from emcore.plugins._posterior_kernels import (EXP_F32_ERROR, SoftPosteriorKernel,
                                               _SoftPosteriorKernelF32, _log_rows)
from emcore.plugins.gaussian import (GaussianFamily, _diag_float32_statistics_rounding,
                                     _float32_posterior_rounding,
                                     _full_float32_form_constant,
                                     _full_float32_log_density_rounding,
                                     _full_float32_statistics_rounding)
from emcore.testing import tolerance_across
from emcore.registry import get_registry
from emcore.testing._tolerances import tolerance_across

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _blobs(rng, n, d, k, offset=0.0, spread=0.3):
    centres = 4.0 * rng.standard_normal((k, d)) + offset
    labels = rng.integers(0, k, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)


# --- input: no copy, float32 kept only where asked ------------------------------------

def test_float32_input_is_kept_without_a_copy():
    X = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    kept = check_input(X, keep_float32=True)
    assert kept.dtype == np.float32 and np.shares_memory(kept, X)
    assert check_input(X).dtype == np.float64          # the other estimators: float64


# --- KMeans ---------------------------------------------------------------------------

def test_kmeans_float32_attributes_and_outputs_are_float32():
    X = _blobs(np.random.default_rng(1), 600, 5, 4)
    km = emcore.KMeans(4, n_init=1, random_state=0).fit(X)
    assert km.cluster_centers_.dtype == np.float32
    assert km.transform(X).dtype == np.float32
    assert km.labels_.dtype == np.intp and isinstance(km.inertia_, float)
    # labels_ and inertia_ are those of the rounded centres, as predict and score see them
    np.testing.assert_array_equal(km.labels_, km.predict(X))
    assert km.inertia_ == -km.score(X)
    # float64 data keeps float64 attributes
    km64 = emcore.KMeans(4, n_init=1, random_state=0).fit(X.astype(np.float64))
    assert km64.cluster_centers_.dtype == np.float64


def test_kmeans_sparse_float32_gives_float32_attributes():
    # a sparse X is densified a block at a time as float64; scikit-learn's
    # convention still holds: the attributes in X's dtype (the test of
    # scikit-learn's test_float_precision that failed on sparse input)
    sparse = pytest.importorskip("scipy.sparse")
    X = _blobs(np.random.default_rng(9), 300, 4, 3)
    km = emcore.KMeans(3, n_init=1, random_state=0).fit(sparse.csr_matrix(X))
    assert km.cluster_centers_.dtype == np.float32
    assert km.transform(sparse.csr_matrix(X)).dtype == np.float32
    dense = emcore.KMeans(3, n_init=1, random_state=0).fit(X.astype(np.float64))
    np.testing.assert_array_equal(km.cluster_centers_,
                                  dense.cluster_centers_.astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 20), k=st.integers(1, 20),
       offset=st.sampled_from([0.0, 1e3, -1e4]))
def test_kmeans_float32_labels_are_within_the_float32_score_bound(seed, d, k, offset):
    # The float32 Lloyd step's label loses at most err_z* + err_z' against the
    # exact best component, err_k <= 1.01 (d + 3) u32 h (|x - c32| + |mu_k - c32|)^2
    # (docs/elbo_chain.md#float32); the exact scores are computed here in float64.
    rng = np.random.default_rng(seed)
    n = 300
    X = (offset + rng.standard_normal((n, d))).astype(np.float32)
    means = X[rng.choice(n, k, replace=False)].astype(np.float64)
    means[-1] = means[0] + 1e-5 * rng.standard_normal(d)     # near-ties
    family = get_registry().family("kmeans").factory(k, d, dtype="float32")
    rule = get_registry().posterior_rule("hard").factory()
    labels = np.empty(n, dtype=np.intp)
    compiled_pass(family.compiled_kernel({"means": means}), rule.compiled_kernel(), X,
                  np.full(k, np.log(1.0 / k)), None, 64, 1, False, out_labels=labels)
    Xd = X.astype(np.float64)
    d2 = ((Xd[:, None, :] - means[None]) ** 2).sum(axis=2)
    h = 1.0                                                  # variance 0.5
    c32 = means.mean(axis=0).astype(np.float32).astype(np.float64)
    radius = np.sqrt(((means - c32) ** 2).sum(axis=1)).max()
    row = np.sqrt(((Xd - c32) ** 2).sum(axis=1))
    bound = 2 * 1.01 * (d + 3) * U32 * h * (row + radius) ** 2
    loss = h * (d2[np.arange(n), labels] - d2.min(axis=1))
    assert np.all(loss <= bound), float(np.max(loss / bound))


_TRANSPOSED = pytest.mark.skipif(
    _float32_labelling() != "transposed",
    reason="the CPU (or this build) has no x86-64-v4 loop: the row step runs")


def _hard_pass(X, means, log_weights, sample_weight):
    """labels, row values and (stats, resp_sum, totals) of one float32 Lloyd pass"""
    n, d = X.shape
    family = get_registry().family("kmeans").factory(len(means), d, dtype="float32")
    rule = get_registry().posterior_rule("hard").factory()
    labels, values = np.empty(n, dtype=np.intp), np.empty(n)
    out = compiled_pass(family.compiled_kernel({"means": means}), rule.compiled_kernel(), X,
                        log_weights, sample_weight, 64, 1, True, out_labels=labels,
                        out_row_value=values)
    return labels, values, out


@_TRANSPOSED
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n=st.integers(1, 150), d=st.integers(1, 40),
       k=st.integers(1, 21), offset=st.sampled_from([0.0, 1e3, -1e4]),
       weighted=st.booleans())
@example(seed=1, n=150, d=16, k=21, offset=0.0, weighted=False)   # the in-register d = 16
@example(seed=2, n=37, d=16, k=3, offset=1e3, weighted=True)
@example(seed=3, n=100, d=33, k=40, offset=0.0, weighted=False)  # 3 pieces of 16 columns
def test_kmeans_float32_transposed_labelling_is_the_row_steps(seed, n, d, k, offset,
                                                             weighted):
    # The transposed step (16 rows in the lanes, plugins/_lloyd.h) computes each
    # score with the row step's expression in the same order, so its labels, and
    # through them the row values and the statistics, must be the same bits, not
    # merely close. Drawn so that every path is crossed: n past whole 16-row
    # blocks and 64-row chunks, d past whole 16-column transpositions, k past
    # groups of 8 and 4 components (d = 16 keeps a block's columns in registers,
    # other d go through memory; d > 32 with k < d takes the row step in both
    # modes, EMC_LLOYD_T_SHAPE); exact ties (a duplicated centre, which the
    # lowest index must win) and near ties (1e-5 apart) among the components.
    rng = np.random.default_rng(seed)
    X = (offset + rng.standard_normal((n, d))).astype(np.float32)
    means = (offset + rng.standard_normal((k, d)))
    means[: min(k, n)] = X[rng.choice(n, min(k, n), replace=False)]
    if k >= 3:
        means[-1] = means[0]                                    # an exact tie
        means[-2] = means[1] + 1e-5 * rng.standard_normal(d)   # a near tie
    log_weights = np.log(rng.dirichlet(np.ones(k)))
    if k >= 3:
        log_weights[-1] = log_weights[0]
    sample_weight = rng.random(n) if weighted else None
    try:
        _float32_labelling("rows")
        ref = _hard_pass(X, means, log_weights, sample_weight)
        _float32_labelling("transposed")
        new = _hard_pass(X, means, log_weights, sample_weight)
    finally:
        _float32_labelling("transposed")
    np.testing.assert_array_equal(new[0], ref[0])
    if k >= 3:
        assert not np.any(new[0] == k - 1)                      # the tie goes to 0
    np.testing.assert_array_equal(new[1], ref[1])
    for a, b in zip(new[2], ref[2]):
        np.testing.assert_array_equal(a, b)


@_TRANSPOSED
def test_kmeans_float32_transposed_labelling_reports_the_rows_first_bad_row():
    # A row whose best score is not finite stops the pass with the same error
    # (naming the same first such row) as the row step.
    rng = np.random.default_rng(7)
    X = rng.standard_normal((100, 5)).astype(np.float32)
    X[37, 2] = np.inf
    X[81, 0] = np.nan
    means = rng.standard_normal((3, 5))
    errors = []
    try:
        for mode in ("rows", "transposed"):
            _float32_labelling(mode)
            with pytest.raises((ValueError, FloatingPointError)) as info:
                _hard_pass(X, means, np.log(np.full(3, 1 / 3)), None)
            errors.append(str(info.value))
    finally:
        _float32_labelling("transposed")
    assert errors[0] == errors[1]


def test_float32_labelling_mode_is_checked():
    with pytest.raises(ValueError, match="'mode' parameter of _float32_labelling"):
        _float32_labelling("columns")


def test_kmeans_float32_fit_matches_float64_fit_of_the_same_data():
    # Well separated: the same labels every iteration, so the same float64 centres,
    # then rounded once to float32 (|c32 - c64| <= u32 |c64| elementwise).
    X = _blobs(np.random.default_rng(2), 3000, 6, 5, offset=100.0)
    init = X[:5].astype(np.float64)
    km32 = emcore.KMeans(5, init=init, random_state=0).fit(X)
    km64 = emcore.KMeans(5, init=init, random_state=0).fit(X.astype(np.float64))
    np.testing.assert_array_equal(km32.labels_, km64.labels_)
    assert km32.n_iter_ == km64.n_iter_
    np.testing.assert_array_equal(km32.cluster_centers_,
                                  km64.cluster_centers_.astype(np.float32))


def test_kmeans_float32_is_bitwise_the_same_for_any_n_jobs():
    X = _blobs(np.random.default_rng(3), 20_000, 4, 6)
    assert X.shape[0] > 4 * chunk_rows_for(4)            # several blocks
    fits = [emcore.KMeans(6, n_init=1, random_state=0, n_jobs=j, max_iter=20).fit(X)
            for j in (1, 2)]
    np.testing.assert_array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
    np.testing.assert_array_equal(fits[0].labels_, fits[1].labels_)
    assert fits[0].history_ == fits[1].history_


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 12), k=st.integers(2, 12),
       offset=st.sampled_from([0.0, 50.0, 1e4]), spread=st.sampled_from([0.05, 1.0, 5.0]))
def test_kmeans_float32_chain_holds(seed, d, k, offset, spread):
    X = _blobs(np.random.default_rng(seed), 400, d, k, offset=offset, spread=spread)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        km = emcore.KMeans(k, n_init=1, random_state=seed % 1000, max_iter=30).fit(X)
    assert km.history_ and all(it.chain_holds() for it in km.history_)


def test_kmeans_float32_agrees_with_scikit_learn_float32():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    X = _blobs(np.random.default_rng(4), 2000, 8, 4, offset=10.0)
    init = X[[0, 1, 2, 3]]
    ours = emcore.KMeans(4, init=init, n_init=1).fit(X)
    theirs = sklearn_cluster.KMeans(4, init=init, n_init=1, algorithm="lloyd").fit(X)
    assert theirs.cluster_centers_.dtype == ours.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    # scikit-learn sums in float32 (pairwise, chunked): its centres are within a few
    # hundred u32 of the exact means; ours within u32
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_,
                               rtol=512 * U32, atol=0)


def test_kmeans_kernel_log_density_of_float32_rows_is_that_of_the_widened_rows():
    # the soft rules' path: float32 rows widened to double, the same arithmetic
    rng = np.random.default_rng(5)
    X = rng.standard_normal((100, 7)).astype(np.float32)
    kernel = KMeansKernel(rng.standard_normal((3, 7)), 0.7)
    assert kernel.float32_rows
    np.testing.assert_array_equal(kernel.log_density(X), kernel.log_density(X.astype(float)))
    w = rng.random((100, 3))
    np.testing.assert_array_equal(kernel.accumulate(X, w), kernel.accumulate(X.astype(float), w))


# --- GaussianMixture ------------------------------------------------------------------

@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_float32_attributes_are_float32(covariance_type):
    X = _blobs(np.random.default_rng(6), 500, 3, 3)
    gm = emcore.GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_"):
        assert getattr(gm, name).dtype == np.float32, name
    # predictions use the fitted (rounded) model and agree with its float64 copy
    copy = emcore.GaussianMixture.from_parameters(
        gm.weights_.astype(float), gm.means_.astype(float), gm.covariances_.astype(float),
        covariance_type=covariance_type)
    np.testing.assert_array_equal(gm.predict(X), copy.predict(X))
    np.testing.assert_allclose(gm.score_samples(X), copy.score_samples(X), rtol=0,
                               atol=64 * U32 * np.max(np.abs(copy.score_samples(X))))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_outputs_follow_the_dtype_of_x(covariance_type):
    # scikit-learn's convention (its test_score[float32]): score_samples and
    # predict_proba of a float32 X are float32 -- the float64 values of the same
    # (exactly widened) rows rounded once; a float64 X keeps float64 outputs.
    X = _blobs(np.random.default_rng(8), 400, 3, 3)
    gm = emcore.GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    wide = X.astype(np.float64)
    for method in ("score_samples", "predict_proba"):
        out32, out64 = getattr(gm, method)(X), getattr(gm, method)(wide)
        assert out32.dtype == np.float32 and out64.dtype == np.float64, method
        np.testing.assert_array_equal(out32, out64.astype(np.float32))


def test_pass_widens_float32_chunks_for_a_kernel_without_float32_rows():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((1000, 3)).astype(np.float32)
    means = rng.standard_normal((2, 3))
    U = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    kernel = GaussianFullKernel(means, U)
    assert not kernel.float32_rows
    rule = get_registry().posterior_rule("soft").factory().compiled_kernel()
    lw = np.log(np.full(2, 0.5))
    a = compiled_pass(kernel, rule, X, lw, None, 128, 2, True)
    b = compiled_pass(kernel, rule, X.astype(np.float64), lw, None, 128, 1, True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --- the diagonal kernel's float32 rows ('diag', 'spherical') ------------------------

def _diag_v4_choices():
    return (False, True) if _compiled_paths().get("clones") and _diag_avx512() else (False,)


def _by_diag_loop(compute):
    # compute() with each of the diagonal kernel's float32 loops this CPU has (the
    # AVX2 clone's, and the AVX-512 ones where the CPU has x86-64-v4)
    before = _diag_avx512()
    try:
        got = []
        for v4 in _diag_v4_choices():
            _diag_avx512(v4)
            got.append(compute())
    finally:
        _diag_avx512(before)
    return got


@pytest.mark.parametrize("k", (1, 3, 8, 9, 16, 20, 24, 33))
@pytest.mark.parametrize("n", (1, 2, 5, 203))
def test_diag_kernel_float32_loops_give_the_same_bits(k, n):
    # The AVX-512 loops (16 components per vector, the log-density 4 rows per
    # block; t negated) and the AVX2 clone's (8 per vector) do the same operations
    # per component in the same order: the same log-density, the same float32
    # statistics (about float(mu): a settled chunk) and the same fused step (log
    # pi added as stored, the posterior and the statistics after it), for every
    # remainder of rows (n mod 4, n mod 32) and of components (k mod 16, k mod 8).
    rng = np.random.default_rng(100 + k + n)
    d = 7
    means = 1e3 + 3.0 * rng.standard_normal((k, d))
    u_diag = rng.uniform(0.5, 2.0, (k, d))
    X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
    W = rng.dirichlet(np.ones(k), size=n)
    mu = (W.T @ X.astype(np.float64)) / W.sum(axis=0)[:, None]
    kernel = GaussianDiagKernel(mu, u_diag, float32=True)
    lw = np.log(rng.dirichlet(np.ones(k)))

    def outputs():
        f = np.empty(n)
        passed = compiled_pass(kernel, SoftPosteriorKernel(), X, lw, None, 64, 1, True,
                               out_row_value=f)
        return (kernel.log_density(X), kernel.accumulate(X, W), f) + passed

    got = _by_diag_loop(outputs)
    # the float32 sweep ran: the chunk's reference points are float(mu)
    fam = GaussianFamily(k, d, covariance_type="diag", dtype="float32")
    np.testing.assert_array_equal(fam.stats_from_buffer(got[0][1]).mean,
                                  mu.astype(np.float32).astype(np.float64))
    for other in got[1:]:
        for a, b in zip(got[0], other):
            np.testing.assert_array_equal(a, b)


def _diag_row_bound(X, means, u_diag):
    # docs/elbo_chain.md#float32: |log p~ - log p| <= 1/2 1.011 (d + 6) u32
    # sum_j p_kj (|x_ij - mu_kj| + u32 |mu_kj|)^2, the exact value from float64
    Xd = X.astype(np.float64)
    a = np.abs(Xd[:, None, :] - means[None]) + U32 * np.abs(means)[None]
    d = X.shape[1]
    return 0.5 * 1.011 * (d + 6) * U32 * np.sum((u_diag ** 2)[None] * a * a, axis=2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 20), k=st.integers(1, 20),
       offset=st.sampled_from([0.0, 1e3, -1e4, 1e5]),
       scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_diag_kernel_float32_log_density_is_within_the_derived_bound(seed, d, k, offset,
                                                                     scale):
    rng = np.random.default_rng(seed)
    means = offset + 3.0 * scale * rng.standard_normal((k, d))
    u_diag = 1.0 / (scale * rng.uniform(0.5, 2.0, (k, d)))
    X = (means[rng.integers(0, k, 60)] + scale * rng.standard_normal((60, d))).astype(
        np.float32)
    kernel = GaussianDiagKernel(means, u_diag, float32=True)
    assert kernel.float32_rows
    exact = GaussianDiagKernel(means, u_diag).log_density(X.astype(np.float64))
    got = _by_diag_loop(lambda: kernel.log_density(X))
    for other in got[1:]:           # the AVX-512 loop: the AVX2 clone's bits
        np.testing.assert_array_equal(got[0], other)
    err = np.abs(got[0] - exact)
    bound = _diag_row_bound(X, means, u_diag)
    note(f"max error / bound {float(np.max(err / bound)):.3g}")
    assert np.all(err <= bound), float(np.max(err / bound))


def test_diag_kernel_float32_statistics_are_those_of_the_widened_rows():
    # where the float32 sweep is not used the statistics read float32 rows widened
    # exactly: bitwise the float64 ones. Here the chunk's weighted means are ~1
    # standard deviation from the pass's means (not settled: the two sweeps about
    # its own means), for two sets of weights.
    rng = np.random.default_rng(11)
    X = (1e3 + rng.standard_normal((1001, 5))).astype(np.float32)
    means = 1e3 + rng.standard_normal((3, 5))
    u_diag = rng.uniform(0.5, 2.0, (3, 5))
    k32 = GaussianDiagKernel(means, u_diag, float32=True)
    k64 = GaussianDiagKernel(means, u_diag)
    for w in (rng.random((1001, 3)), np.exp(k64.log_density(X.astype(np.float64)))):
        np.testing.assert_array_equal(k32.accumulate(X, w),
                                      k64.accumulate(X.astype(np.float64), w))
    # settled (the pass's means are the weighted means): the float32 sweep, unless
    # a nonzero weight is outside float's normal range once scaled by 2^64 (below
    # 2^-190 or above 2^63), where its rounding would not be relative: then the
    # chunk takes the double sweep, bitwise
    wide = X.astype(np.float64)
    w = rng.random((1001, 3))
    for out_of_range in (None, 1e-60, 2.0 ** 64):
        w_out = w.copy()
        if out_of_range is not None:
            w_out[500, 1] = out_of_range
        settled = (w_out.T @ wide) / w_out.sum(axis=0)[:, None]
        k32 = GaussianDiagKernel(settled, u_diag, float32=True)
        k64 = GaussianDiagKernel(settled, u_diag)
        same = np.array_equal(k32.accumulate(X, w_out), k64.accumulate(wide, w_out))
        assert same == (out_of_range is not None), out_of_range
    # float64 rows, and a kernel built without float32=True, never compute in float32
    assert not k64.float32_rows
    np.testing.assert_array_equal(k64.log_density(X),
                                  k64.log_density(X.astype(np.float64)))


def test_gaussian_family_dtype_option_is_checked():
    factory = get_registry().family("gaussian").factory
    with pytest.raises(ValueError, match="'dtype' option of the Gaussian family"):
        factory(2, 3, covariance_type="diag", dtype="float16")


@pytest.mark.parametrize("covariance_type", ("diag", "spherical"))
def test_gaussian_mixture_float32_fit_loglik_is_the_float64_fits_within_the_bound(
        covariance_type):
    # Both fits run to the same fixed point (well separated, tol=0, same start). The
    # float32 pass's log-likelihood is within sum_i max_k of the rows' derived
    # bounds of the float64 value at the same parameters (log-sum-exp is
    # 1-Lipschitz in the max norm); the parameters' own difference costs only
    # second order at a maximum.
    X = _blobs(np.random.default_rng(12), 4000, 4, 3, offset=1e3)
    kwargs = dict(covariance_type=covariance_type, init_params="random_from_data",
                  random_state=0, max_iter=60, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        gm32 = emcore.GaussianMixture(3, **kwargs).fit(X)
        gm64 = emcore.GaussianMixture(3, **kwargs).fit(X.astype(np.float64))
    means = gm32.means_.astype(np.float64)
    u_diag = np.sqrt(1.0 / gm32.covariances_.astype(np.float64))
    if u_diag.ndim == 1:                                   # spherical: (k,)
        u_diag = np.repeat(u_diag[:, None], X.shape[1], axis=1)
    # + the float32-exp posterior's per-row bound (docs/elbo_chain.md#float32; it
    # takes the double exps below 8 components, still within it)
    bound = float(np.sum(np.max(_diag_row_bound(X, means, u_diag), axis=1))
                  + X.shape[0] * _float32_posterior_rounding(3))
    gap = abs(gm32.lower_bound_ - gm64.lower_bound_) * X.shape[0]
    assert gap > 0.0                          # float32 arithmetic, not the float64 fit
    assert gap <= bound, (gap, bound)


@pytest.mark.parametrize("covariance_type", ("diag", "spherical"))
@pytest.mark.parametrize("k", (4, 10))          # 10: the posterior's float32 exps
def test_gaussian_mixture_float32_diag_is_bitwise_the_same_for_any_n_jobs(covariance_type,
                                                                         k):
    X = _blobs(np.random.default_rng(13), 20_000, 4, k)
    assert X.shape[0] > 4 * chunk_rows_for(4)            # several blocks
    kwargs = dict(covariance_type=covariance_type, random_state=0, max_iter=10, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        fits = [emcore.GaussianMixture(k, n_jobs=j, **kwargs).fit(X) for j in (1, 2)]
    assert fits[0].history_ == fits[1].history_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(fits[0], name), getattr(fits[1], name))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 10), k=st.integers(1, 12),
       offset=st.sampled_from([0.0, 50.0, 1e4]), spread=st.sampled_from([0.05, 1.0, 5.0]),
       covariance_type=st.sampled_from(["diag", "spherical"]),
       tol=st.sampled_from([0.0, 1e-6]))
def test_gaussian_mixture_float32_diag_chain_holds(seed, d, k, offset, spread,
                                                   covariance_type, tol):
    # the chain's ascent and bound links with the family's log_density_rounding
    # (docs/elbo_chain.md#float32), which bounds the float32 log-density and, from
    # k = 8 on, the posterior's float32 exps: a violation warns, made an error here
    X = _blobs(np.random.default_rng(seed), 400, d, k, offset=offset, spread=spread)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        # tol 0: float32_level 'all' (the statistics' float sums, and for 'full'
        # its float32 form); the default 1e-6: 'log_density'
        # (docs/elbo_chain.md#float32-level)
        gm = emcore.GaussianMixture(k, covariance_type=covariance_type, tol=tol,
                                    random_state=seed % 1000, max_iter=30,
                                    reg_covar=1e-4).fit(X)
    assert gm.history_ and all(it.chain_holds() for it in gm.history_)


def test_diag_kernel_float32_overflow_is_recomputed_in_double():
    # a quadratic form beyond float's range (p t^2 ~ 1e60, 4e44) would be +inf in
    # float32 (a log-density of -inf, a row with no finite likelihood); those
    # entries are recomputed in double
    means = np.array([[0.0, 0.0], [1e20, 1e20]])
    u_diag = np.array([[1.0, 1.0], [1e10, 1e10]])
    X = np.array([[0.0, 0.5], [1e20, 1e20], [3.0, -1.0]], dtype=np.float32)
    kernel = GaussianDiagKernel(means, u_diag, float32=True)
    assert kernel.float32_rows
    got = kernel.log_density(X)
    exact = GaussianDiagKernel(means, u_diag).log_density(X.astype(np.float64))
    assert np.all(np.isfinite(got))
    assert np.all(np.abs(got - exact) <= _diag_row_bound(X, means, u_diag))


def test_diag_kernel_float32_falls_back_to_double_outside_floats_range():
    # a precision beyond float's range (U^2 = 1e40) has no float32 bound: the
    # kernel widens the rows instead (the float64 arithmetic, bitwise)
    means = np.zeros((2, 3))
    u_diag = np.array([[1.0, 1.0, 1.0], [1e20, 1.0, 1.0]])
    kernel = GaussianDiagKernel(means, u_diag, float32=True)
    assert not kernel.float32_rows
    X = np.random.default_rng(14).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        kernel.log_density(X),
        GaussianDiagKernel(means, u_diag).log_density(X.astype(np.float64)))


# --- the float32-exp soft posterior (the diagonal kernel's fused step) ----------------

@pytest.mark.skipif(not _compiled_paths()["gnu_vectors"],
                    reason="the plain-C build has no float32 exp (it takes double exps)")
def test_float32_exp_is_within_its_stated_error():
    # rows [0, x, -inf, ...] (K = 8, so emc_soft_rows_f32 takes its float32 exps):
    # q_1 / q_0 = e~(x) / e~(0) = e~(x), e~(0) = 1 exactly, up to the two double
    # divisions (2 u64). x float32 numbers (exact after the cast to float), so the
    # exp's own error alone: |e~(x) - exp(x)| <= EXP_F32_ERROR u32 exp(x); below
    # -87 the entry is flushed to 0 (exp(x) < 2^-125), never a subnormal.
    x = np.linspace(-87.0, 0.0, 400_001).astype(np.float32).astype(np.float64)
    lj = np.full((x.size, 8), -np.inf)
    lj[:, 0] = 0.0
    lj[:, 1] = x
    _, resp, _, _ = _SoftPosteriorKernelF32().posterior(lj)
    ratio = resp[:, 1] / resp[:, 0]
    rel = np.abs(ratio - np.exp(x)) / np.exp(x)
    assert np.max(rel) <= EXP_F32_ERROR * U32 + 4 * U64, np.max(rel) / U32
    assert np.max(rel) > 0.25 * U32          # float32 arithmetic, not double exps
    low = np.array([[0.0, -87.01, -100.0, -745.0, -1e300, -np.inf, 0.0, 0.0]])
    _, q, _, _ = _SoftPosteriorKernelF32().posterior(low)
    np.testing.assert_array_equal(q[0, 1:6], 0.0)


def test_float32_posterior_log_is_within_one_ulp():
    # emc_log_rows, the float32 posterior's log s (fdlibm's log on 4 lanes where GNU
    # vectors exist, libm's otherwise), is within 1 ulp of log x (fdlibm's bound: a
    # libm last-place error, which docs/elbo_chain.md#error-model allows). np.log is
    # glibc's, itself within 1 ulp, so the two differ by at most 2 ulps of log x.
    # x: dense over [1, 64] (s of a row of K <= 64 entries, each e <= 1, the maximum
    # 1) and normal doubles of every binade; n not a multiple of 4 (the padded tail).
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(1.0, 64.0, 200_003),
                        np.ldexp(1.0 + rng.random(20_001), rng.integers(-1022, 1024, 20_001)),
                        [1.0, 2.0, np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 2.0),
                         np.finfo(np.float64).tiny, np.finfo(np.float64).max]])
    out = np.empty_like(x)
    _log_rows(x, out)
    ref = np.log(x)
    assert np.all(np.abs(out - ref) <= 2 * np.spacing(np.abs(ref))), \
        np.max(np.abs(out - ref) / np.spacing(np.abs(ref)))
    assert out[np.flatnonzero(x == 1.0)[0]] == 0.0
    # lanes are independent: each value is that of the row alone (a row's log s
    # does not depend on which block or chunk, so on which thread, it falls in)
    one = np.empty(1)
    for i in rng.integers(0, x.size, 50):
        _log_rows(x[i:i + 1], one)
        assert one[0] == out[i]


@pytest.mark.parametrize("k", (8, 16, 37))
def test_float32_posterior_row_value_takes_its_log_from_the_vector_log(k):
    # rows of c zeros and K - c entries -inf: every e is exactly 1 or 0 (exp(0) = 1
    # exactly, below -87 flushed), so s = c exactly and f = 0 + log s is the log
    # itself: bitwise emc_log_rows(c), whatever block of 16 rows the row is in.
    rng = np.random.default_rng(k)
    c = rng.integers(1, k + 1, 103)
    lj = np.where(np.arange(k)[None, :] < c[:, None], 0.0, -np.inf)
    _, _, f32, _ = _SoftPosteriorKernelF32().posterior(lj)
    expected = np.empty(c.size)
    _log_rows(c.astype(np.float64), expected)
    np.testing.assert_array_equal(f32, expected)
    assert np.all(np.abs(f32 - np.log(c)) <= 2 * np.spacing(np.log(c)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), k=st.integers(1, 40), n=st.integers(1, 70),
       offset=st.sampled_from([0.0, -30.0, 1e3, -1e6]),
       spread=st.sampled_from([0.1, 3.0, 30.0, 300.0]), weighted=st.booleans())
def test_float32_exp_posterior_is_the_double_one_within_the_derived_bound(
        seed, k, n, offset, spread, weighted):
    # docs/elbo_chain.md#float32: each e~_k = e_k (1 + eps_k), |eps_k| <=
    # (|t_k| + EXP_F32_ERROR) u32 (t_k = a_k - m), flushed entries below 2^-125;
    # since q_k |t_k| <= 1/e, a row's log p moves by at most rho =
    # _float32_posterior_rounding(K), and sum_k |q~_k - q_k| <= 2 rho / (1 - rho).
    # Both sides also carry the double posterior's own rounding (section 4.2):
    # (K + 2) u64 (1 + |f|) on f, 2 (K + 2) u64 (1 + max |log q|) on a row of q.
    rng = np.random.default_rng(seed)
    lj = offset + spread * rng.standard_normal((n, k))
    lj[rng.random((n, k)) < 0.1] = -np.inf
    lj[:, 0] = offset                                    # a finite entry per row
    w = rng.random(n) if weighted else None
    lq64, q64, f64, t64 = SoftPosteriorKernel().posterior(lj, w)
    lq32, q32, f32, t32 = _SoftPosteriorKernelF32().posterior(lj, w)
    rho = _float32_posterior_rounding(k)
    slack = 2 * (k + 2) * U64 * (1.0 + np.abs(f64))
    assert np.all(np.abs(f32 - f64) <= rho + slack)
    if k < 8:            # emc_soft_rows itself (test_float32_exp_is_within_its_stated_error
        np.testing.assert_array_equal(f32, f64)      # shows the float32 exps at k >= 8)
    finite = np.where(np.isfinite(lq64), np.abs(lq64), 0.0).max(axis=1)
    dq = np.abs(q32 - q64).sum(axis=1)
    assert np.all(dq <= 2.0 * rho / (1.0 - rho) + 4 * (k + 2) * U64 * (1.0 + finite))
    # the totals' identity E + H = F sum(q~) (the equality link, section 4.3):
    # exact but for the double rounding of the totals (tau_A)
    ww = np.ones(n) if w is None else w
    M = float(np.sum(ww * (np.abs(f32) + np.sum(np.where(q32 > 0, q32 * (
        np.abs(np.where(q32 > 0, lj, 0.0)) + np.abs(np.where(q32 > 0, lq32, 0.0))), 0.0),
        axis=1))))
    assert abs(t32[1] + t32[2] - t32[0]) <= 2 * (k + 3 + n) * U64 * M


@pytest.mark.parametrize("k", (3, 9, 16))
@pytest.mark.parametrize("weighted", (False, True))
def test_diag_kernel_fused_float32_step_is_the_unfused_pass_with_float32_exps(k, weighted):
    # The fused step (the pass on float32 rows, exact soft rule, no log q asked) is
    # the unfused steps with emc_soft_rows_f32: the log joint is bitwise the
    # kernel's float32 log-density plus log pi, the q and row values those of the
    # float32-exp posterior, the statistics bitwise those of the kernel's own
    # accumulate with the weights w_i q~_ik. Against the unfused pass (double
    # exps, log q asked for), the row values differ by at most rho.
    rng = np.random.default_rng(20 + k)
    d, n = 5, 700                                        # one chunk: one block
    means = 50.0 + 3.0 * rng.standard_normal((k, d))
    u_diag = rng.uniform(0.5, 2.0, (k, d))
    X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
    kernel = GaussianDiagKernel(means, u_diag, float32=True)
    assert kernel.float32_rows and kernel.fused_soft_step_f32
    lw = np.log(rng.dirichlet(np.ones(k)))
    sw = rng.random(n) if weighted else None
    soft = SoftPosteriorKernel()
    f_fused = np.empty(n)
    stats, resp_sum, totals = compiled_pass(kernel, soft, X, lw, sw, 1024, 1, True,
                                            out_row_value=f_fused)
    lj = kernel.log_density(X) + lw
    _, q, f, t = _SoftPosteriorKernelF32().posterior(lj, sw)
    np.testing.assert_array_equal(f_fused, f)
    np.testing.assert_array_equal(totals, t)
    wq = q if sw is None else q * sw[:, None]
    np.testing.assert_array_equal(stats, kernel.accumulate(X, wq))
    np.testing.assert_allclose(resp_sum, wq.sum(axis=0), rtol=4 * n * U64, atol=0)
    f_unfused = np.empty(n)
    compiled_pass(kernel, soft, X, lw, sw, 1024, 1, True, out_row_value=f_unfused,
                  out_log_resp=np.empty((n, k)))
    rho = _float32_posterior_rounding(k)
    slack = 2 * (k + 2) * U64 * (1.0 + np.abs(f_unfused))
    assert np.all(np.abs(f_fused - f_unfused) <= rho + slack)


# --- the full kernel's float32 rows ('full', 'tied') -------------------------------

def _full_params(rng, k, d, offset, scale, log10_condition):
    # means and the upper Cholesky factor U of the precision (P = U U^T) of
    # covariances with condition number 10^log10_condition
    means = offset + 3.0 * scale * rng.standard_normal((k, d))
    U = np.empty((k, d, d))
    for j in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        ev = scale ** 2 * np.logspace(0.0, log10_condition, d)
        cov = (q * ev) @ q.T
        U[j] = np.linalg.inv(np.linalg.cholesky(cov)).T
    return means, U


def _full_row_bound(X, means, U):
    # docs/elbo_chain.md#float32: |log p~ - log p| <= c_d / 2 || |U_k|^T a_ik ||^2
    # + d (d + 1) 2^-149, a_ik = |x_i - mu_k| + u32 |mu_k|, from float64
    Xd = X.astype(np.float64)
    a = np.abs(Xd[:, None, :] - means[None]) + U32 * np.abs(means)[None]
    b = np.einsum("ikl,klj->ikj", a, np.abs(np.triu(U)))
    d = X.shape[1]
    return (0.5 * _full_float32_form_constant(d) * np.sum(b * b, axis=2)
            + d * (d + 1) * 2.0 ** -149)


def _v4_choices():
    return (False, True) if _compiled_paths().get("clones") and _avx512_float32() else (False,)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 20), k=st.integers(1, 12),
       n=st.integers(1, 90), offset=st.sampled_from([0.0, 1e3, -1e4, 1e5]),
       scale=st.sampled_from([1e-3, 1.0, 100.0]), log10_condition=st.sampled_from([0, 2, 5]))
@example(seed=1, d=16, k=16, n=90, offset=0.0, scale=1.0, log10_condition=2)
def test_full_kernel_float32_log_density_is_within_the_derived_bound(
        seed, d, k, n, offset, scale, log10_condition):
    # row by row against the float64 kernel (whose own error, ~(d + 3) u64 of the
    # same magnitude, is 2^-29 of the bound's): observed / bound noted; the
    # AVX-512 and the other loop give the same bits
    rng = np.random.default_rng(seed)
    means, U = _full_params(rng, k, d, offset, scale, log10_condition)
    X = (means[rng.integers(0, k, n)]
         + scale * rng.standard_normal((n, d))).astype(np.float32)
    kernel = GaussianFullKernel(means, U, float32=True)
    assert kernel.float32_rows
    exact = GaussianFullKernel(means, U).log_density(X.astype(np.float64))
    before = _avx512_float32()
    try:
        got = []
        for v4 in _v4_choices():
            _avx512_float32(v4)
            got.append(kernel.log_density(X))
    finally:
        _avx512_float32(before)
    for other in got[1:]:
        np.testing.assert_array_equal(got[0], other)
    err = np.abs(got[0] - exact)
    bound = _full_row_bound(X, means, U)
    note(f"max error / bound {float(np.max(err / bound)):.3g}")
    assert np.all(err <= bound), float(np.max(err / bound))


def _full_q_gap(fam, stats32, stats64, theta):
    """|Q(stats32, theta) - Q(stats64, theta)| and the float64 rounding of the two
    evaluations and of the float64 statistics (tolerance_across with both M_Q;
    docs/elbo_chain.md#check-b), for one chunk of rows."""
    q32 = fam.expected_log_likelihood(stats32, theta)
    q64 = fam.expected_log_likelihood(stats64, theta)
    m_q = (fam.expected_log_likelihood_magnitude(stats32, theta)
           + fam.expected_log_likelihood_magnitude(stats64, theta))
    n = max(1, int(round(float(np.sum(stats64.weight)))))
    return abs(q32 - q64), tolerance_across(fam.n_components, n, fam.n_features, 1.0, 0.0,
                                            m_q)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 18), k=st.integers(1, 12),
       offset=st.sampled_from([0.0, 1e3, -1e4, 1e5]),
       scale=st.sampled_from([1e-3, 1.0, 100.0]), move=st.sampled_from([0.0, 0.3, 30.0]),
       log10_condition=st.sampled_from([0, 2, 4]))
@example(seed=3, d=16, k=16, offset=1e5, scale=1.0, move=30.0, log10_condition=2)
def test_full_kernel_float32_statistics_are_within_the_derived_bound(
        seed, d, k, offset, scale, move, log10_condition):
    # The float32 statistics (moments about float(mu) summed in float, 16 lanes of
    # FULL_ROWS_F32 / 16 rows) against the float64 statistics of the same rows
    # and weights, through what the chain uses: Q at parameters moved by `move`
    # standard deviations, with other precisions. The gap is within
    # statistics_rounding plus the float64 rounding of both sides.
    rng = np.random.default_rng(seed)
    n = 2 * FULL_ROWS_F32 + 37                   # whole float sums and a partial one
    centres, U = _full_params(rng, k, d, offset, scale, log10_condition)
    X = (centres[rng.integers(0, k, n)] + scale * rng.standard_normal((n, d))).astype(np.float32)
    Wt = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 2.0, (n, 1))
    # the pass's means: the rows' weighted means (a settled chunk), as a fit has them
    means = (Wt.T @ X.astype(np.float64)) / Wt.sum(axis=0)[:, None]
    fam = get_registry().family("gaussian").factory(k, d, covariance_type="full",
                                                    dtype="float32")
    k32 = GaussianFullKernel(means, U, float32=True)
    assert k32.float32_rows
    stats32 = fam.stats_from_buffer(k32.accumulate(X, Wt))
    stats64 = fam.stats_from_buffer(GaussianFullKernel(means, U).accumulate(
        X.astype(np.float64), Wt))
    # the float32 sums ran: the chunk's reference points are float(mu)
    np.testing.assert_array_equal(stats32.mean, means.astype(np.float32).astype(np.float64))
    params = {"means": means, "precisions_cholesky": U}
    new_means, new_U = _full_params(rng, k, d, 0.0, scale, log10_condition)
    new = {"means": means + move * scale * rng.standard_normal((k, d)),
           "precisions_cholesky": new_U}
    bound = fam.statistics_rounding(stats32, params, new)
    assert bound == _full_float32_statistics_rounding(stats32, params, new) > 0.0
    for theta in (params, new):
        gap, slack = _full_q_gap(fam, stats32, stats64, theta)
        note(f"observed / bound {gap / (bound + slack):.3g} (float64 slack {slack:.3g})")
        assert gap <= bound + slack, (gap, bound, slack)


def test_full_kernel_float32_statistics_fall_back_to_the_widened_rows():
    # outside the range the bound needs (|x| + |mu| > 2^20, a weight > 2^42) or for
    # means that moved (random weights: each weighted mean far from its mu) the
    # chunk is summed in double: the statistics of X.astype(float64), bitwise
    rng = np.random.default_rng(31)
    n, k, d = 3001, 3, 7
    for offset, wscale in ((2e6, 1.0), (1e3, 2.0 ** 43), (1e3, 1.0)):
        means, U = _full_params(rng, k, d, offset, 1.0, 2)
        X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
        k32 = GaussianFullKernel(means, U, float32=True)
        k64 = GaussianFullKernel(means, U)
        w = rng.random((n, k)) * wscale
        np.testing.assert_array_equal(k32.accumulate(X, w),
                                      k64.accumulate(X.astype(np.float64), w))
    # settled means (the float sums would run), but a weight of -0 or NaN: in double
    for bad in (-0.0, np.nan):
        w = rng.random((n, k))
        settled = (w.T @ X.astype(np.float64)) / w.sum(axis=0)[:, None]
        k32 = GaussianFullKernel(settled, U, float32=True)
        k64 = GaussianFullKernel(settled, U)
        assert not np.array_equal(k32.accumulate(X, w),
                                  k64.accumulate(X.astype(np.float64), w))
        w[n // 2, 1] = bad
        np.testing.assert_array_equal(k32.accumulate(X, w),
                                      k64.accumulate(X.astype(np.float64), w))
    # a kernel built without float32=True never computes in float32
    assert not k64.float32_rows
    np.testing.assert_array_equal(k64.log_density(X), k64.log_density(X.astype(np.float64)))


def test_full_kernel_float32_statistics_are_the_same_bits_with_either_tile_width():
    # the AVX-512 tiles (4 rows) and the AVX2 ones (2 rows): the same operations per
    # entry and lane
    if len(_v4_choices()) < 2:
        pytest.skip("no x86-64-v4 loop on this CPU or build")
    rng = np.random.default_rng(32)
    n, k, d = 1500, 4, 13
    means, U = _full_params(rng, k, d, 1e3, 1.0, 2)
    X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
    w = rng.random((n, k))
    means = (w.T @ X.astype(np.float64)) / w.sum(axis=0)[:, None]      # settled
    k32 = GaussianFullKernel(means, U, float32=True)
    assert not np.array_equal(k32.accumulate(X, w), GaussianFullKernel(means, U).accumulate(
        X.astype(np.float64), w))                                       # float sums ran
    try:
        _avx512_float32(False)
        narrow = k32.accumulate(X, w)
    finally:
        _avx512_float32(True)
    np.testing.assert_array_equal(k32.accumulate(X, w), narrow)


def test_full_float32_log_density_rounding_bounds_the_rows_weighted_errors():
    # the family's chain term from the statistics (Minkowski over the rows) is at
    # least the q-weighted sum of the rows' own bounds, and 0 for float64 families
    rng = np.random.default_rng(40)
    d, k, n = 6, 3, 5000
    means, U = _full_params(rng, k, d, 50.0, 1.0, 3)
    X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
    fam = get_registry().family("gaussian").factory(k, d, covariance_type="full",
                                                    dtype="float32")
    params = {"means": means, "precisions_cholesky": U}
    lp = GaussianFullKernel(means, U).log_density(X.astype(np.float64))
    q = np.exp(lp - lp.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    stats = fam.chunk_stats(X, q)
    got = fam.log_density_rounding(stats, params)
    assert got == _full_float32_log_density_rounding(stats, params, k)
    rows = float(np.sum(q * (_full_row_bound(X, means, U)
                             + _float32_posterior_rounding(k))))
    assert rows <= got * (1.0 + 1e-9), (rows, got)
    fam64 = get_registry().family("gaussian").factory(k, d, covariance_type="full")
    assert fam64.log_density_rounding(fam64.chunk_stats(X.astype(np.float64), q),
                                      params) == 0.0


@pytest.mark.parametrize("covariance_type", ("full", "tied"))
def test_gaussian_mixture_float32_full_fit_loglik_is_the_float64_fits_within_the_bound(
        covariance_type):
    # as for 'diag': the same fixed point (well separated, tol=0, same start); the
    # float32 pass's log-likelihood within sum_i max_k of the rows' bounds of the
    # float64 value at the same parameters, plus the posterior's rho per row (the
    # parameters' own difference costs only second order at a maximum)
    X = _blobs(np.random.default_rng(12), 4000, 4, 3, offset=1e3)
    kwargs = dict(covariance_type=covariance_type, init_params="random_from_data",
                  random_state=0, max_iter=60, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        gm32 = emcore.GaussianMixture(3, **kwargs).fit(X)
        gm64 = emcore.GaussianMixture(3, **kwargs).fit(X.astype(np.float64))
    means = gm32.means_.astype(np.float64)
    U = gm32.precisions_cholesky_.astype(np.float64)
    if U.ndim == 2:                                        # tied: (d, d)
        U = np.broadcast_to(U, (3,) + U.shape)
    bound = float(np.sum(np.max(_full_row_bound(X, means, U), axis=1))
                  + X.shape[0] * _float32_posterior_rounding(3))
    gap = abs(gm32.lower_bound_ - gm64.lower_bound_) * X.shape[0]
    assert gap > 0.0                          # float32 arithmetic, not the float64 fit
    assert gap <= bound, (gap, bound)


@pytest.mark.parametrize("covariance_type", ("full", "tied"))
def test_gaussian_mixture_float32_full_is_bitwise_the_same_for_any_n_jobs(covariance_type):
    X = _blobs(np.random.default_rng(13), 20_000, 4, 10)
    assert X.shape[0] > 4 * chunk_rows_for(4)            # several blocks
    kwargs = dict(covariance_type=covariance_type, random_state=0, max_iter=10, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        fits = [emcore.GaussianMixture(10, n_jobs=j, **kwargs).fit(X) for j in (1, 2)]
    assert fits[0].history_ == fits[1].history_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(fits[0], name), getattr(fits[1], name))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 10), k=st.integers(1, 12),
       offset=st.sampled_from([0.0, 50.0, 1e4, 1e5]), spread=st.sampled_from([0.05, 1.0, 5.0]),
       covariance_type=st.sampled_from(["full", "tied", "EEE", "VEV"]),
       tol=st.sampled_from([0.0, 1e-6]))
def test_gaussian_mixture_float32_full_chain_holds(seed, d, k, offset, spread,
                                                   covariance_type, tol):
    # the chain's links with log_density_rounding (the float32 quadratic form and,
    # from k = 8 on, the posterior's float32 exps) and statistics_rounding (the
    # settled chunks' float sums, with the move mu_t -> mu_{t+1}): a violation
    # warns, made an error here; mclust's non-diagonal models run the same full kernel
    X = _blobs(np.random.default_rng(seed), 400, d, k, offset=offset, spread=spread)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        # tol 0: float32_level 'all' (the statistics' float sums, and for 'full'
        # its float32 form); the default 1e-6: 'log_density'
        # (docs/elbo_chain.md#float32-level)
        gm = emcore.GaussianMixture(k, covariance_type=covariance_type, tol=tol,
                                    random_state=seed % 1000, max_iter=30,
                                    reg_covar=1e-4).fit(X)
    assert gm.history_ and all(it.chain_holds() for it in gm.history_)


def test_full_kernel_float32_overflow_is_recomputed_in_double():
    # a form beyond float's range (||t U||^2 ~ 1e60) would be +inf in float32:
    # the chunk is recomputed in double
    means = np.array([[0.0, 0.0], [1e20, 1e20]])
    U = np.stack([np.eye(2), 1e10 * np.eye(2)])
    X = np.array([[0.0, 0.5], [1e20, 1e20], [3.0, -1.0]], dtype=np.float32)
    kernel = GaussianFullKernel(means, U, float32=True)
    assert kernel.float32_rows
    got = kernel.log_density(X)
    np.testing.assert_array_equal(
        got, GaussianFullKernel(means, U).log_density(X.astype(np.float64)))
    assert np.all(np.isfinite(got))


def test_full_kernel_float32_falls_back_to_double_outside_floats_range():
    means = np.zeros((2, 3))
    U = np.stack([np.eye(3), np.eye(3)])
    U[1, 0, 1] = 1e-45                    # a subnormal float: no float32 bound
    kernel = GaussianFullKernel(means, U, float32=True)
    assert not kernel.float32_rows
    X = np.random.default_rng(14).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        kernel.log_density(X), GaussianFullKernel(means, U).log_density(X.astype(np.float64)))


@pytest.mark.parametrize("k", (3, 9))
@pytest.mark.parametrize("weighted", (False, True))
def test_full_kernel_fused_float32_step_is_the_unfused_pass_with_float32_exps(k, weighted):
    # as the diagonal kernel's: the fused step is its float32 log-density + log pi,
    # the float32-exp posterior, and its own float32 accumulate of w_i q~_ik (the
    # fused step's statistics reuse the float X^T its log-density made; accumulate
    # makes its own)
    rng = np.random.default_rng(50 + k)
    d, n = 5, 700                                        # one chunk: one block
    means, U = _full_params(rng, k, d, 50.0, 1.0, 1)
    X = (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)
    lw = np.log(rng.dirichlet(np.ones(k)))
    sw = rng.random(n) if weighted else None
    # the pass's means: the rows' weighted means (a settled chunk, summed in float)
    _, q0, _, _ = _SoftPosteriorKernelF32().posterior(
        GaussianFullKernel(means, U).log_density(X.astype(np.float64)) + lw, sw)
    w0 = q0 if sw is None else q0 * sw[:, None]
    means = (w0.T @ X.astype(np.float64)) / w0.sum(axis=0)[:, None]
    kernel = GaussianFullKernel(means, U, float32=True)
    assert kernel.float32_rows and kernel.fused_soft_step_f32
    soft = SoftPosteriorKernel()
    f_fused = np.empty(n)
    stats, resp_sum, totals = compiled_pass(kernel, soft, X, lw, sw, 1024, 1, True,
                                            out_row_value=f_fused)
    _, q, f, t = _SoftPosteriorKernelF32().posterior(kernel.log_density(X) + lw, sw)
    np.testing.assert_array_equal(f_fused, f)
    np.testing.assert_array_equal(totals, t)
    wq = q if sw is None else q * sw[:, None]
    np.testing.assert_array_equal(stats, kernel.accumulate(X, wq))
    assert not np.array_equal(stats, GaussianFullKernel(means, U).accumulate(
        X.astype(np.float64), wq))                                      # float sums ran
    np.testing.assert_allclose(resp_sum, wq.sum(axis=0), rtol=4 * n * U64, atol=0)
# --- the diagonal kernel's float32 statistics ---------------------------------------

def _diag_params(means, u_diag):
    U = np.zeros(u_diag.shape + (u_diag.shape[1],))
    i = np.arange(u_diag.shape[1])
    U[:, i, i] = u_diag
    return {"means": means, "precisions_cholesky": U,
            "covariances": np.zeros_like(U)}      # (unused by Q)


def _q_gap(fam, stats32, stats64, new):
    """|Q(stats32, new) - Q(stats64, new)| and the float64 rounding of the two
    evaluations and of the float64 statistics (tolerance_across with both M_Q;
    docs/elbo_chain.md#check-b), for one chunk of n rows."""
    q32 = fam.expected_log_likelihood(stats32, new)
    q64 = fam.expected_log_likelihood(stats64, new)
    m_q = (fam.expected_log_likelihood_magnitude(stats32, new)
           + fam.expected_log_likelihood_magnitude(stats64, new))
    n = int(round(float(np.sum(stats64.weight))))
    return abs(q32 - q64), tolerance_across(fam.n_components, n, fam.n_features, 1.0, 0.0,
                                            m_q)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 20), k=st.integers(1, 20),
       offset=st.sampled_from([0.0, 1e3, -1e4, 1e5]),
       scale=st.sampled_from([1e-3, 1.0, 100.0]), move=st.sampled_from([0.0, 0.3, 30.0]))
@example(seed=3, d=16, k=16, offset=1e5, scale=1.0, move=30.0)
def test_diag_kernel_float32_statistics_are_within_the_derived_bound(seed, d, k, offset,
                                                                     scale, move):
    # The float32 sweep (about float(mu), blocks of DIAG_ROWS_F32 rows) against
    # the float64 statistics of the same rows and weights, through what the chain
    # uses: Q at parameters moved by `move` standard deviations from the pass's
    # means, with other precisions. The gap is within statistics_rounding (the
    # float32 sums) plus the float64 rounding of both sides.
    rng = np.random.default_rng(seed)
    n = 3 * DIAG_ROWS_F32 + 5                    # whole blocks and a partial one
    means = offset + 3.0 * scale * rng.standard_normal((k, d))
    u_diag = 1.0 / (scale * rng.uniform(0.5, 2.0, (k, d)))
    labels = rng.integers(0, k, n)
    X = (means[labels] + scale * rng.standard_normal((n, d))).astype(np.float32)
    W = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 2.0, (n, 1))
    # the pass's means: the rows' weighted means (a settled chunk), as a fit has them
    mu = (W.T @ X.astype(np.float64)) / W.sum(axis=0)[:, None]
    fam = GaussianFamily(k, d, covariance_type="diag", dtype="float32")
    k32 = GaussianDiagKernel(mu, u_diag, float32=True)
    assert k32.float32_rows
    got = _by_diag_loop(lambda: k32.accumulate(X, W))
    for other in got[1:]:           # the AVX-512 sweep: the AVX2 clone's bits
        np.testing.assert_array_equal(got[0], other)
    stats32 = fam.stats_from_buffer(got[0])
    stats64 = fam.stats_from_buffer(GaussianDiagKernel(mu, u_diag).accumulate(
        X.astype(np.float64), W))
    # the float32 sweep ran: the chunk's reference points are float(mu)
    np.testing.assert_array_equal(stats32.mean, mu.astype(np.float32).astype(np.float64))
    params = _diag_params(mu, u_diag)
    new = _diag_params(mu + move * scale * rng.standard_normal((k, d)),
                       u_diag * rng.uniform(0.5, 2.0, (k, d)))
    gap, slack = _q_gap(fam, stats32, stats64, new)
    bound = fam.statistics_rounding(stats32, params, new)
    assert bound == _diag_float32_statistics_rounding(stats32, params, new) > 0.0
    note(f"observed / bound {gap / (bound + slack):.3g} (float64 slack {slack:.3g})")
    assert gap <= bound + slack, (gap, bound, slack)


def test_diag_float32_statistics_bound_needs_the_move_term():
    # The residual's float32 error enters Q through the move from the pass's means
    # to the new ones, 2 (h - mu') p' dR: a bound with only the scatter's term
    # (1/2 sum p' |dS|, all that one parameter set would show) is exceeded by the
    # observed gap once the means move far, with the float64 terms far below.
    # Weights 1/3 round to float with the same relative error (~0.5 u32) on every
    # row, and the rows' weighted mean lies 0.6 standard deviations from the pass's
    # means (a settled chunk: the float32 sweep), so dR ~ 0.5 u32 sum_i w t is a
    # systematic error, not a random walk.
    rng = np.random.default_rng(31)
    n, d, k = 4000, 4, 1
    X = (1e4 + rng.standard_normal((n, d))).astype(np.float32)
    W = np.full((n, k), 1.0 / 3.0)
    mu = (W.T @ X.astype(np.float64)) / W.sum(axis=0)[:, None] - 0.6
    u_diag = np.ones((k, d))
    fam = GaussianFamily(k, d, covariance_type="diag", dtype="float32")
    stats32 = fam.stats_from_buffer(GaussianDiagKernel(mu, u_diag, float32=True)
                                    .accumulate(X, W))
    stats64 = fam.stats_from_buffer(GaussianDiagKernel(mu, u_diag).accumulate(
        X.astype(np.float64), W))
    np.testing.assert_array_equal(stats32.mean, mu.astype(np.float32).astype(np.float64))
    params = _diag_params(mu, u_diag)
    new = _diag_params(mu + 1e3, u_diag)              # moved by 1e3 standard deviations
    gap, slack = _q_gap(fam, stats32, stats64, new)
    full = fam.statistics_rounding(stats32, params, new)
    scatter_only = fam.statistics_rounding(stats32, params, params)   # no move
    assert gap <= full + slack
    assert gap > 2.0 * (scatter_only + slack), (gap, scatter_only, slack)


def test_float32_statistics_rounding_is_zero_where_nothing_is_float32():
    # float64 data: every kernel sums its statistics in double ('full' and 'diag'
    # on float32 rows have their own bounds, tested above)
    rng = np.random.default_rng(32)
    X = rng.standard_normal((300, 3))
    W = rng.dirichlet(np.ones(2), size=300)
    mu, u_diag = rng.standard_normal((2, 3)), np.ones((2, 3))
    params = _diag_params(mu, u_diag)
    for dtype, cov in (("float64", "diag"), ("float64", "full")):
        fam = GaussianFamily(2, 3, covariance_type=cov, dtype=dtype)
        stats = fam.chunk_stats(X, W)
        assert fam.statistics_rounding(stats, params, params) == 0.0


class _StatisticsPathSpy(GaussianFamily):
    """Records whether the statistics of a pass came from the float32 sweep (all
    references float(mu_t) for some component)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.float32_passes = 0

    def statistics_rounding(self, stats, params, new_params):
        h = np.asarray(params["means"]).astype(np.float32).astype(np.float64)
        if np.any(np.all(stats.mean == h, axis=1) & (stats.weight > 0)):
            self.float32_passes += 1
        return super().statistics_rounding(stats, params, new_params)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(1, 8), k=st.integers(8, 12),
       offset=st.sampled_from([0.0, 1e3, 1e4, 1e5]), spread=st.sampled_from([0.3, 1.0, 5.0]),
       covariance_type=st.sampled_from(["diag", "spherical"]))
def test_float32_statistics_chain_holds(seed, d, k, offset, spread, covariance_type):
    # Fits whose statistics come from the float32 sweep (k >= 8: the fused step's
    # float32 posterior keeps the weights in float's range once scaled; data far
    # from the origin, where the reference float(mu) matters), run through the
    # engine: every ascent and bound link holds within tau_B, which now carries
    # statistics_rounding (docs/elbo_chain.md#float32). A violation warns: an error here.
    from emcore.engine import run_em
    X = _blobs(np.random.default_rng(seed), 2000, d, k, offset=offset, spread=spread)
    fam = _StatisticsPathSpy(k, d, covariance_type=covariance_type, reg_covar=1e-4,
                             dtype="float32")
    rng = np.random.default_rng(seed + 1)
    start = fam.m_step(fam.chunk_stats(X.astype(np.float64),
                                       rng.dirichlet(np.ones(k), size=X.shape[0])), None)
    rule = get_registry().posterior_rule("soft").factory()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        fit = run_em(X, fam, rule, np.full(k, 1.0 / k), start, max_iter=25, tol=0.0)
    assert all(it.chain_holds() for it in fit.history)
    note(f"passes with float32 statistics: {fam.float32_passes} of {len(fit.history)}")
    assert fam.float32_passes > 0


# --- float32_level (docs/elbo_chain.md#float32-level) ------------------------------

def test_float32_level_log_density_keeps_statistics_and_full_form_in_double():
    rng = np.random.default_rng(51)
    X = rng.standard_normal((500, 4)).astype(np.float32)
    W = rng.dirichlet(np.ones(2), size=500)
    for cov in ("diag", "full"):
        every = GaussianFamily(2, 4, covariance_type=cov, dtype="float32")
        some = GaussianFamily(2, 4, covariance_type=cov, dtype="float32",
                              float32_level="log_density")
        params = every.m_step(every.chunk_stats(X.astype(np.float64), W), None)
        k_every, k_some = every.compiled_kernel(params), some.compiled_kernel(params)
        assert k_every.float32_statistics and not k_some.float32_statistics
        # the diagonal kernel keeps its float32 form; the full one widens the rows
        assert k_some.float32_rows == (cov == "diag")
        stats = some.chunk_stats(X.astype(np.float64), W)
        assert some.statistics_rounding(stats, params, params) == 0.0
        assert every.statistics_rounding(stats, params, params) > 0.0
    with pytest.raises(ValueError, match="float32_level"):
        GaussianFamily(2, 4, dtype="float32", float32_level="everything")


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_gaussian_mixture_takes_all_of_float32_only_where_tol_allows(covariance_type):
    # d = 16, two unit clusters: with every part in float32 the chain's bound is
    # ~1.7e-6 ('diag') / 2.9e-6 ('full') of |F|, above the default tol 1e-6 (the
    # stopping rule would test rounding noise: the engine warns at iteration 0);
    # GaussianMixture then keeps to 'log_density' (no warning, tau_B < tol |F|),
    # and takes 'all' with tol >= 1e-5 (a larger tau_B, still below tol |F|)
    rng = np.random.default_rng(52)
    n, d = 4000, 16
    X = np.concatenate([rng.standard_normal((n // 2, d)),
                        4.0 + rng.standard_normal((n // 2, d))]).astype(np.float32)
    ratios = {}
    for tol in (1e-6, 1e-5):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gm = emcore.GaussianMixture(2, covariance_type=covariance_type, tol=tol,
                                        max_iter=3, random_state=0).fit(X)
        assert not [w for w in caught if "known only" in str(w.message)], tol
        ratios[tol] = max(it.tolerance / abs(it.objective) for it in gm.history_)
        assert ratios[tol] < tol
    # 'all' adds the statistics' (and the full form's) bounds: a larger tau_B
    assert ratios[1e-5] > 1.5 * ratios[1e-6]


class _NoWiderGaussian(GaussianFamily):
    """The Gaussian family without its double-precision version (the engine then
    keeps float32 arithmetic whatever its bound)."""

    def widened(self):
        return None


@pytest.mark.parametrize("covariance_type, level", [("diag", "log_density"),
                                                   ("full", "all")])
def test_engine_fits_in_double_where_the_float32_bound_exceeds_what_tol_resolves(
        covariance_type, level):
    # Three tight blobs (spread 0.3, d = 3): |log p| per row ~1.7, small beside the
    # quadratic form the float32 bound scales with, so the float32 chain bound at
    # the start is above tol x |F| for tol = 1e-6 (the family without widened()
    # warns that the stopping rule tests rounding noise: that is what the engine
    # avoids). With widened() the engine fits in double on the same float32 rows:
    # the fit of the rows widened exactly, bitwise, plus the one float32 pass that
    # measured the bound. With tol 1e-3 (bound within) or 0 (no stopping rule) the
    # fit stays in float32. ('full' at the 'log_density' level widens its rows
    # itself: its level 'all' here.)
    from emcore.engine import run_em
    X = _blobs(np.random.default_rng(6), 500, 3, 3)
    options = dict(covariance_type=covariance_type, reg_covar=1e-6)
    fam32 = GaussianFamily(3, 3, dtype="float32", float32_level=level, **options)
    fam64 = GaussianFamily(3, 3, **options)
    # the start: the float64 fit's parameters moved a little (near the optimum,
    # where |F| is smallest beside the bound)
    _, weights, start = emcore.GaussianMixture(
        3, random_state=0, **options).fit(X.astype(np.float64))._fitted_model("test")
    start = dict(start, means=start["means"] + 0.01)
    rule = get_registry().posterior_rule("soft").factory()
    with pytest.warns(emcore.ConvergenceWarning, match="known only"):
        run_em(X, _NoWiderGaussian(3, 3, dtype="float32", float32_level=level, **options),
               rule, weights, start, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = run_em(X, fam32, rule, weights, start, tol=1e-6)
        ref = run_em(X.astype(np.float64), fam64, rule, weights, start, tol=1e-6)
    assert wide.widened and not ref.widened
    for name in ("means", "precisions_cholesky"):
        np.testing.assert_array_equal(wide.params[name], ref.params[name])
    np.testing.assert_array_equal(wide.weights, ref.weights)
    assert wide.value == ref.value and wide.n_passes == ref.n_passes + 1
    for tol in (1e-3, 0.0):
        kept = run_em(X, fam32, rule, weights, start, tol=tol, max_iter=5)
        assert not kept.widened
        assert kept.value != run_em(X.astype(np.float64), fam64, rule, weights, start,
                                    tol=tol, max_iter=5).value

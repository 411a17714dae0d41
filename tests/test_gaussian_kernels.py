"""The compiled Gaussian kernels (register-tiled full, diagonal) against references,
and the statistics slots every compiled family declares (k-means too).

The full kernel processes 8 rows and 4 columns at a time and the diagonal kernel
4 components at a time, so shapes that are not multiples of those (padding) and
d larger than one tile are drawn on purpose. Tolerances are derived per test.
"""

import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from emcore import GaussianMixture
from emcore.engine import UNIT_ROUNDOFF as U
from emcore.exceptions import ConvergenceWarning
from emcore.plugins._gaussian_diag_kernel import GaussianDiagKernel
from emcore.plugins._gaussian_kernel import GaussianFullKernel, _avx512_tiles
from emcore.plugins._kmeans_kernel import KMeansKernel
from emcore.plugins.gaussian import GaussianFamily
from emcore.plugins.kmeans import KMeansFamily


def _quad_extended(X, mean, U_factor):
    """||(x - mean) U||^2 per row in long double (80-bit on x86-64)."""
    dev = X.astype(np.longdouble) - mean.astype(np.longdouble)
    y = dev @ U_factor.astype(np.longdouble)
    return np.sum(y * y, axis=1)


def _random_upper(rng, d):
    A = np.triu(rng.normal(size=(d, d)) * 0.3)
    A[np.diag_indices(d)] = rng.uniform(0.5, 2.0, d)
    return A


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 37), d=st.integers(1, 19), k=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e3, -1e6]))
def test_full_log_density_matches_extended_precision(n, d, k, seed, offset):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) + offset
    Us = np.stack([_random_upper(rng, d) for _ in range(k)])
    X = means[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    got = GaussianFullKernel(means, Us).log_density(X)
    for j in range(k):
        quad = _quad_extended(X, means[j], Us[j])
        log_norm = -0.5 * d * np.log(2 * np.pi) + np.sum(np.log(np.diag(Us[j])))
        ref = (log_norm - 0.5 * quad).astype(np.float64)
        # x - mu rounds once (relative u), each entry of (x - mu) U is a sum of at
        # most d products (gamma_d times the sum of |products|, which is at most
        # sqrt(d kappa) times |entry| with kappa the condition of U), the squares
        # and their sum another gamma_{d+1}; log_norm: d logs and d adds.
        kappa = np.linalg.cond(Us[j])
        bound = 2.0 * (2 * d + 3) * U * (1.0 + np.sqrt(d * kappa)) * quad.astype(np.float64)
        bound += 2.0 * (d + 2) * U * (abs(log_norm) + d)
        assert np.all(np.abs(got[:, j] - ref) <= bound)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 37), d=st.integers(1, 11), k=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e4, -1e6]))
def test_diagonal_kernel_equals_the_full_kernel_on_diagonal_precisions(n, d, k, seed,
                                                                       offset):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) + offset
    u = rng.uniform(0.3, 3.0, (k, d))
    X = means[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    diag = GaussianDiagKernel(means, u).log_density(X)
    full = GaussianFullKernel(means, np.stack([np.diag(r) for r in u])).log_density(X)
    # both form x - mu first; each term p (x - mu)^2 within 3u, a sum of d
    # non-negative terms within gamma_d: |difference| <= 2 (d + 3) u (|a| + d)
    assert np.all(np.abs(diag - full) <= 2.0 * (d + 3) * U * (np.abs(full) + d))


def _centred_reference(X, w):
    """Weighted mean and per-feature centred second moments with correctly rounded sums."""
    W = math.fsum(w)
    mean = np.array([math.fsum(w * X[:, j]) for j in range(X.shape[1])]) / W
    D = X - mean
    r = np.array([math.fsum(w * D[:, j]) for j in range(X.shape[1])])
    second = np.array([math.fsum(np.concatenate([w * D[:, j] ** 2, [-r[j] ** 2 / W]]))
                       for j in range(X.shape[1])])
    return W, mean + r / W, second


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 90), d=st.integers(1, 6), k=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1), split=st.integers(0, 90),
       offset=st.sampled_from([0.0, 1e4, 1e8]), spread=st.sampled_from([1.0, 1e-3]),
       covariance_type=st.sampled_from(["diag", "spherical"]))
def test_diagonal_statistics_are_exact_moments_and_merge_like_the_union(
        n, d, k, seed, split, offset, spread, covariance_type):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, spread, (n, d)) + offset
    weights = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0, 2, (n, 1))
    family = GaussianFamily(k, d, covariance_type=covariance_type, reg_covar=0.0)
    split = min(split, n)
    whole = family.chunk_stats(X, weights)
    merged = family.merge_stats(family.chunk_stats(X[:split], weights[:split]),
                                family.chunk_stats(X[split:], weights[split:]))
    for stats in (whole, merged):
        assert stats.diagonal and stats.scatter.shape == (k, d)
        mean, second = stats.centred()
        for j in range(k):
            W, ref_mean, ref_second = _centred_reference(X, weights[:, j])
            sd = np.sqrt(ref_second / W)
            # sums of n + d terms of the size of the spread about the mean (the
            # offset cancels exactly in x - c): gamma_{n+d} relative to the scale
            tol = 4.0 * (n + d) * U
            assert stats.weight[j] == pytest.approx(W, rel=tol)
            assert np.all(np.abs(mean[j] - ref_mean) <= tol * (np.abs(ref_mean) + sd))
            assert np.all(np.abs(second[j] - ref_second) <= tol * W * sd * sd)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), d=st.integers(1, 13), k=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e4]))
def test_diagonal_statistics_are_the_diagonal_of_the_full_ones(n, d, k, seed, offset):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + offset
    weights = rng.dirichlet(np.ones(k), size=n)
    full = GaussianFamily(k, d, covariance_type="full").chunk_stats(X, weights)
    diag = GaussianFamily(k, d, covariance_type="diag").chunk_stats(X, weights)
    mf, sf = full.centred()
    md, sd = diag.centred()
    sf = np.einsum("kjj->kj", sf)
    # the same sums in different orders: gamma_n relative to the centred scale
    tol = 4.0 * (n + d) * U
    scale = np.sqrt(sf / full.weight[:, None])
    assert np.array_equal(full.weight > 0, diag.weight > 0)
    assert np.allclose(diag.weight, full.weight, rtol=tol, atol=0)
    assert np.all(np.abs(md - mf) <= tol * (np.abs(mf) + scale))
    assert np.all(np.abs(sd - sf) <= tol * sf + tol * full.weight[:, None] * scale ** 2)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_m_step_from_diagonal_statistics_equals_the_one_from_full_statistics(
        covariance_type):
    """The M-step of 'diag'/'spherical' from the diagonal kernel's statistics or from
    the full kernel's (whose diagonal it takes): equal up to rounding."""
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0, 1, (400, 5)), rng.normal(3, 0.5, (300, 5)),
                        rng.normal(-2, 0.7, (300, 5))]) + 100.0
    kw = dict(covariance_type=covariance_type, tol=0.0, max_iter=8, random_state=0,
              n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(3, **kw).fit(X)
    family = GaussianFamily(3, 5, covariance_type=covariance_type)
    full = GaussianFamily(3, 5, covariance_type="full")
    params = family.params_from_covariances(a.means_, _full_covariances(a, covariance_type))
    weights = rng.dirichlet(np.ones(3), size=len(X))
    from_diag = family.m_step(family.chunk_stats(X, weights), params)
    from_full = family.m_step(full.chunk_stats(X, weights), params)
    # one pass of sums over n rows in two orders: gamma_n relative
    tol = 4.0 * len(X) * U
    for name in ("means", "covariances"):
        assert np.allclose(from_diag[name], from_full[name], rtol=tol,
                           atol=tol * np.abs(from_full[name]).max()), name


def _full_covariances(model, covariance_type):
    k, d = model.means_.shape
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in model.covariances_])
    return np.stack([v * np.eye(d) for v in model.covariances_])


def test_diagonal_kernel_pickles():
    rng = np.random.default_rng(0)
    kern = GaussianDiagKernel(rng.normal(size=(3, 4)), rng.uniform(0.5, 2, (3, 4)))
    X = rng.normal(size=(9, 4))
    assert np.array_equal(pickle.loads(pickle.dumps(kern)).log_density(X),
                          kern.log_density(X))


def _slot_kernels(means):
    d = means.shape[1]
    return {"full": GaussianFullKernel(means, np.broadcast_to(np.eye(d), (len(means), d, d))),
            "diag": GaussianDiagKernel(means, np.ones_like(means)),
            "kmeans": KMeansKernel(means, 1.0)}


@pytest.mark.parametrize("name", ["full", "diag", "kmeans"])
def test_slot_layouts_name_what_the_kernels_write(name):
    """Each field of a kernel's declared slot layout (the C header's offsets, read by
    the families' stats_from_buffer) holds what its name says after the kernel has
    accumulated a chunk; the fields tile the slot exactly."""
    rng = np.random.default_rng(3)
    n, d, k = 50, 3, 2
    X = rng.normal(size=(n, d)) + 5.0
    w = rng.uniform(0.5, 2.0, n)
    weights = np.zeros((n, k))
    weights[:, 1] = w                       # component 0 gets no rows
    means = np.array([[0.0, 0.0, 0.0], [5.1, 4.9, 5.0]])
    kern = _slot_kernels(means)[name]
    layout = kern.slot_layout(d)
    size = kern.n_stats // k
    covered = np.zeros(size, dtype=int)
    for where in layout.values():
        covered[where] += 1
    assert np.all(covered == 1), layout
    slots = kern.accumulate(X, weights).reshape(k, size)
    W = w.sum()
    # sums of n terms of size |x - c| <= ~5 sd: gamma_{n+d} relative to that scale
    tol = 4.0 * (n + d) * U
    if name == "kmeans":
        ref = means[1]
        dev = X - ref
        dist = np.sum(dev * dev, axis=1)
        assert slots[0, layout["far_dist"]] == -1.0 and slots[0, layout["weight"]] == 0.0
        assert slots[1, layout["weight"]] == pytest.approx(W, rel=tol)
        assert np.array_equal(slots[1, layout["ref"]], ref)
        assert np.allclose(slots[1, layout["shift_sum"]], w @ dev, rtol=0,
                           atol=tol * W * np.abs(dev).max())
        assert slots[1, layout["scatter"]] == pytest.approx(w @ dist, rel=tol)
        assert slots[1, layout["far_dist"]] == pytest.approx(dist.max(), rel=tol)
        assert np.array_equal(slots[1, layout["far_point"]], X[np.argmax(dist)])
        return
    # the reference point c: the chunk's weighted mean as rounded (full), or this
    # pass's mean when the chunk's lies within a standard deviation of it (diag)
    c = slots[1, layout["mean"]]
    expected_c = means[1] if name == "diag" else (w @ X) / W
    assert np.allclose(c, expected_c, rtol=tol, atol=0)
    dev = X - c
    assert slots[0, layout["weight"]] == 0.0
    assert slots[1, layout["weight"]] == pytest.approx(W, rel=tol)
    assert np.allclose(slots[1, layout["residual"]], w @ dev, rtol=0,
                       atol=tol * W * np.abs(dev).max())
    scatter = np.einsum("i,ij,il->jl", w, dev, dev)
    expected = scatter if name == "full" else np.diag(scatter)
    got = slots[1, layout["scatter"]].reshape(expected.shape)
    assert np.allclose(got, expected, rtol=tol, atol=tol * np.abs(scatter).max())


@pytest.mark.parametrize("family", [GaussianFamily(2, 3, covariance_type="full"),
                                    GaussianFamily(2, 3, covariance_type="diag"),
                                    KMeansFamily(2, 3)], ids=["full", "diag", "kmeans"])
def test_stats_from_buffer_reads_the_kernels_slots_and_back(family):
    """The family's statistics object read from a kernel's buffer through the
    declared layout, and written back, give the same bits."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 3))
    weights = rng.dirichlet(np.ones(2), size=40)
    params = {"means": rng.normal(size=(2, 3)),
              "precisions_cholesky": np.broadcast_to(np.eye(3), (2, 3, 3))}
    buffer = family.compiled_kernel(params).accumulate(X, weights)
    stats = family.stats_from_buffer(buffer)
    assert np.array_equal(family._to_buffer(stats), buffer)
    if isinstance(family, KMeansFamily):
        assert np.array_equal(stats.ref, params["means"])
    else:
        assert np.all(stats.weight == pytest.approx(weights.sum(axis=0)))


def test_moment_slot_layout_of_each_scatter_shape():
    """emcore.kernel.moment_slot_layout: [W, c (d), r (d), S], S sized by its shape;
    an unknown shape is refused by name."""
    from emcore.kernel import moment_slot_layout
    d = 3
    for scatter, size in [("full", d * d), ("diagonal", d), ("trace", 1)]:
        layout = moment_slot_layout(d, scatter)
        assert layout["weight"] == 0
        assert (layout["mean"], layout["residual"]) == (slice(1, 1 + d), slice(1 + d, 1 + 2 * d))
        assert layout["scatter"] == slice(1 + 2 * d, 1 + 2 * d + size)
    with pytest.raises(ValueError, match="'scatter' parameter of moment_slot_layout"):
        moment_slot_layout(d, "diag")


_AVX512 = pytest.mark.skipif(
    not _avx512_tiles(), reason="the CPU (or this build) has no x86-64-v4 loop")


@_AVX512
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), d=st.integers(1, 19), k=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e3, -1e6]))
def test_full_statistics_of_the_avx512_tiles_are_the_same_bits(n, d, k, seed, offset):
    # Every lane of the AVX-512 tiles does the multiply-adds of the 2 x 4 tiles
    # in the same order (plugins/_gaussian_full.h), so the statistics must be
    # identical, not merely close: n crosses row blocks (32 to 128 rows), d tiles.
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) + offset
    Us = np.stack([_random_upper(rng, d) for _ in range(k)])
    X = means[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    W = rng.dirichlet(np.ones(k), size=n)
    kernel = GaussianFullKernel(means, Us)
    try:
        _avx512_tiles(True)
        wide = kernel.accumulate(X, W)
        _avx512_tiles(False)
        narrow = kernel.accumulate(X, W)
    finally:
        _avx512_tiles(True)
    assert np.array_equal(wide, narrow)

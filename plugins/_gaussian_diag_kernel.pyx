# cython: language_level=3
"""Compiled kernel of the Gaussian family for 'diag' and 'spherical' covariances.

With a diagonal precision P_k = diag(p_k) (p_kj = U_kj^2, U the diagonal of the
precision's Cholesky factor):

    log N(x | mu_k) = -d/2 log(2 pi) + sum_j log U_kj - 1/2 sum_j p_kj (x_j - mu_kj)^2

with x_j - mu_kj formed first (no cancellation for offset data; never the
expanded x^2 p - 2 x p mu + p mu^2). Rows go two at a time against the (d x K)
tables of means and precisions, vectorised over the components.

Statistics slot per component k: [W, c (d), r (d), s (d)], the per-feature
moments about a reference point c:

    W = sum_i w_ik,  r = sum_i w_ik (x_i - c),  s_j = sum_i w_ik (x_ij - c_j)^2

the diagonal of the full kernel's statistics (same residual, same exact
re-shifting merge: emcore/moments.h), so the M-step and the expected log-likelihood read them the
same way. k x d numbers instead of k x d x d. The reference point is this pass's
mean of component k (one sweep over the chunk) when, for every component and
feature, the chunk's weighted mean lies within one standard deviation of it: the
variance's rounding error is then at most twice the two-sweep formula's
(docs/gaussian.md#cancellation, remedy 2). Otherwise (means still moving,
``chunk_stats`` with no means) the chunk is swept again twice, about its own
weighted means, as the full kernel always does.

Flops per row and component (benchmarks/bench_gaussian.py counts them): the
log-density 4d (subtract, scale, multiply-add); the statistics 5d (subtract,
weight, residual, multiply-add), plus 2d (the weighted sum for the chunk's own
reference point) and another 5d when the chunk is swept twice.

float32 rows (``GaussianDiagKernel(..., float32=True)``, built by
``GaussianFamily(dtype='float32')``; the ``_f32`` methods of emcore/kernel.pxd):
the log-density's quadratic form is computed in float32 on 8-float vectors,
each mean held as two floats (hi + lo) so that x - mu carries a relative error
only (docs/elbo_chain.md#float32 derives the bound, which the family's
``log_density_rounding`` gives the chain); the constant and the result are
double. On x86-64-v4 (AVX-512) CPUs this loop and the float32 statistics' sweep
below have a third version taking 16 components per vector (the log-density 4
rows per block) with the same operations per component (t formed negated,
exactly): the same bits (``_avx512_float32`` chooses, for the tests). The
statistics' sweep about the pass's means is float32 too: about the means
rounded to float (the chunk's reference points), t = x - float(mu) in
float, the weights scaled by 2^64 and rounded to float, and per block of
``STATISTICS_ROWS_F32`` rows the sums of w t and w t^2 taken in float on 8-float
vectors, then widened, scaled back and added to the double tables (the weights'
sums stay double); ``GaussianFamily.statistics_rounding`` bounds what that costs
the chain. A chunk whose weights leave float's range once scaled, or whose float
sums overflow, and the two-sweep path of a chunk whose means moved, read the
rows widened exactly to double, as float64 rows. With the exact
soft rule the pass calls the fused ``chunk_soft_step_f32``: the same steps as
the pass's (log-density, + log pi, posterior, q times the row weights,
statistics), with the posterior's exps in float32 (``emc_soft_rows_f32`` of
_soft_posterior.h; its per-row bound is in ``log_density_rounding`` too).

The loops (_gaussian_diag.h) use GNU vector extensions (4 doubles) compiled
twice with target_clones on x86-64 Linux (glibc) with GCC (AVX2/FMA at load time
where the CPU has it, baseline x86-64 otherwise), with a plain-C fallback
elsewhere. Every sum is taken in a fixed order: the same chunk gives the same
bits on any thread.
"""
from cython cimport floating
from libc.math cimport INFINITY
from emcore.kernel cimport (FamilyKernel, TOTAL_OBJECTIVE, TOTAL_EXPECTED_LOG_JOINT,
                            TOTAL_ENTROPY, TOTAL_MAGNITUDE)
from emcore.moments cimport (EMC_SCATTER_DIAGONAL, emc_merge_moment_slot_arrays,
                             emc_merge_moment_slots,
                             EMC_SLOT_REFERENCE, EMC_SLOT_RESIDUAL, EMC_SLOT_SCATTER,
                             EMC_SLOT_WEIGHT, emc_moment_slot_size)

import numpy as np

from emcore.kernel import moment_slot_layout
from emcore.plugins._dispatch import loop_choice

#: rows per block of the float32 statistics' float partial sums
#: (docs/elbo_chain.md#float32: their rounding grows with it)
STATISTICS_ROWS_F32 = EMD_ROWS32


cdef extern from "_gaussian_diag.h":
    void emd_log_density(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                         Py_ssize_t Kp, const double* M, const double* P,
                         const double* base, double* acc, double* out) noexcept nogil
    void emd_moments(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                     Py_ssize_t Kp, const double* w, int which, const double* C,
                     double* wrow, double* T0, double* T1, double* T2) noexcept nogil
    void emd_moments_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                         Py_ssize_t Kp, const double* w, int which, const double* C,
                         double* wrow, double* T0, double* T1, double* T2,
                         double* xblk) noexcept nogil
    int emd_log_density_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                             Py_ssize_t Kp, const float* H, const float* L,
                             const float* P, const double* base, const double* lw,
                             double* out) noexcept nogil
    int emd_moments_about_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                              Py_ssize_t Kp, Py_ssize_t Kp8, const double* w,
                              const float* H, float* wblk, double* T0, double* T1,
                              double* T2) noexcept nogil
    int EMD_ROWS32
    int emd_f32_use_v4
    int emd_v4_available() noexcept nogil


def _avx512_float32(enable=None):
    """Whether the float32 log-density and statistics run their AVX-512 loops (16
    components per vector, the log-density 4 rows per block; x86-64-v4 CPUs)
    rather than the AVX2 clone's.

    ``enable`` True or False chooses (True only where the CPU and build have it);
    for the tests, which check that both loops give the same bits. Returns the
    choice."""
    global emd_f32_use_v4
    emd_f32_use_v4 = loop_choice(emd_f32_use_v4, emd_v4_available(), enable,
                                 "_avx512_float32")
    return bool(emd_f32_use_v4)


_avx512_float32()   # decided once, at import: no thread of a pass writes the choice


cdef extern from "_soft_posterior.h":
    Py_ssize_t emc_soft_rows_f32(double* log_joint, double* resp, double* row_value,
                                 const double* row_weights, Py_ssize_t n, Py_ssize_t K,
                                 double T, double* objective, double* log_joint_total,
                                 double* entropy, double* magnitude,
                                 int write_log_q) noexcept nogil
    void emc_weighted_column_sums(double* q, const double* rw, Py_ssize_t n,
                                  Py_ssize_t K, double* acc) noexcept nogil


cdef class GaussianDiagKernel(FamilyKernel):
    """Kernel for fixed means (k, d) and diagonal precision Cholesky factors, given
    as their diagonals (k, d) (U_kj = 1 / sigma_kj)."""
    cdef const double[:, ::1] means
    cdef const double[:, ::1] prec_chol_diag
    cdef const double[:, ::1] mean_table   # (d, Kp): means, transposed, padded
    cdef const double[:, ::1] prec_table   # (d, Kp): U_kj^2, transposed, zero padded
    cdef const double[::1] log_norm        # (Kp,): -d/2 log(2 pi) + sum_j log U_kj
    cdef Py_ssize_t Kp
    # float32 rows (float32=True): the log-density's tables in float, d x Kp8,
    # transposed, zero padded: each mean as two floats (hi + lo), the precisions
    cdef const float[:, ::1] mean_hi32     # float(mu)
    cdef const float[:, ::1] mean_lo32     # float(mu - float(mu))
    cdef const float[:, ::1] prec_table32  # float(U_kj^2)
    cdef Py_ssize_t Kp8                    # K rounded up to a multiple of 8
    cdef const double[:, ::1] mean_hi64    # (d, Kp): float(mu) as doubles, the
                                           # float32 statistics' reference points
    cdef readonly bint float32_statistics  # float32 rows: the statistics' sweep in float32

    def __init__(self, means, precisions_cholesky_diagonal, float32=False,
                 float32_statistics=True):
        means = np.ascontiguousarray(means, dtype=np.float64)
        u = np.ascontiguousarray(precisions_cholesky_diagonal, dtype=np.float64)
        if means.ndim != 2 or u.shape != means.shape:
            raise ValueError("means and precisions_cholesky_diagonal must both be (k, d)")
        K, d = means.shape
        self.n_components = K
        self.n_features = d
        self.n_stats = K * emc_moment_slot_size(d, EMC_SCATTER_DIAGONAL)
        self.means = means
        self.prec_chol_diag = u
        self.Kp = ((K + 3) // 4) * 4
        mt = np.zeros((d, self.Kp))
        mt[:, :K] = means.T
        pt = np.zeros((d, self.Kp))
        pt[:, :K] = (u * u).T
        self.mean_table = mt
        self.prec_table = pt
        ln = np.zeros(self.Kp)
        ln[:K] = -0.5 * d * np.log(2.0 * np.pi) + np.sum(np.log(u), axis=1)
        self.log_norm = ln
        # float32 rows: the quadratic form in float, each mean as float(mu) +
        # float(mu - float(mu)) (the difference is exact in double); the precisions
        # computed in double, then rounded once (docs/elbo_chain.md#float32). Where
        # a mean or a precision is outside float's normal range the bound does not
        # hold: float32 rows are then widened to double like any kernel's.
        self.Kp8 = ((K + 7) // 8) * 8
        p = u * u
        tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
        self.float32_rows = bool(float32) and bool(
            np.all((p == 0.0) | ((p >= tiny) & (p <= big)))
            and np.all(np.abs(means) <= big))
        cols = self.Kp8 if self.float32_rows else 8
        hi = np.zeros((d, cols), dtype=np.float32)
        lo = np.zeros((d, cols), dtype=np.float32)
        pt32 = np.zeros((d, cols), dtype=np.float32)
        if self.float32_rows:
            hi[:, :K] = means.T
            lo[:, :K] = means.T - hi[:, :K].astype(np.float64)
            pt32[:, :K] = p.T
        self.mean_hi32 = hi
        hi64 = np.zeros((d, self.Kp))
        if self.float32_rows:
            hi64[:, :K] = hi[:, :K]
        self.mean_hi64 = hi64
        self.mean_lo32 = lo
        self.prec_table32 = pt32
        # the exact soft rule fused on float32 rows, its exps in float32
        self.fused_soft_step_f32 = self.float32_rows
        # float32_statistics=False: the statistics read the rows widened exactly
        # (their float32 sums add GaussianFamily.statistics_rounding to the chain)
        self.float32_statistics = self.float32_rows and bool(float32_statistics)

    def __reduce__(self):
        return (GaussianDiagKernel, (np.asarray(self.means), np.asarray(self.prec_chol_diag),
                                     self.float32_rows, self.float32_statistics))

    cdef void _overflowed_in_double(self, const float* X, Py_ssize_t n_rows,
                                    const double* lw, double* out) noexcept nogil:
        # the float32 quadratic forms that overflowed (-inf in out), in double
        # (+ lw[k] when given, as emd_log_density_f32 adds it)
        cdef Py_ssize_t i, j, k, d = self.n_features, K = self.n_components
        cdef double q, t, u
        for i in range(n_rows):
            for k in range(K):
                if out[i * K + k] == -INFINITY:
                    q = 0.0
                    for j in range(d):
                        u = self.prec_chol_diag[k, j]
                        t = u * (<double>X[i * d + j] - self.means[k, j])
                        q += t * t
                    out[i * K + k] = self.log_norm[k] - 0.5 * q
                    if lw != NULL:
                        out[i * K + k] += lw[k]

    @staticmethod
    def slot_layout(Py_ssize_t n_features):
        """One component's statistics slot: {field: index or slice}, the moments
        slot of emcore/moments.h with a diagonal scatter."""
        return moment_slot_layout(n_features, "diagonal")

    cdef Py_ssize_t _accumulate_scratch(self) noexcept nogil:
        # a row of results or a block of weights (EMD_ROWS = 8 rows x Kp) + the
        # weights' sums (Kp)
        # + three d x Kp tables + one slot + the merge's scratch (2 d) + a block of
        # float32 rows widened (EMD_ROWS = 8 rows x d) + a block of float32 weights
        # (EMD_ROWS32 rows x Kp8 floats)
        return (9 * self.Kp + 3 * self.n_features * self.Kp
                + emc_moment_slot_size(self.n_features, EMC_SCATTER_DIAGONAL)
                + 10 * self.n_features + (EMD_ROWS32 * self.Kp8 + 1) // 2)

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        # + the fused float32 step's log joint and weighted q (n_rows x K each)
        return (self._accumulate_scratch()
                + (2 * n_rows * self.n_components if self.float32_rows else 0))

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        emd_log_density(X, n_rows, self.n_features, self.n_components, self.Kp,
                        &self.mean_table[0, 0], &self.prec_table[0, 0],
                        &self.log_norm[0], scratch, out)
        return 0

    cdef int chunk_log_density_f32(self, const float* X, Py_ssize_t n_rows,
                                   double* out, double* scratch) noexcept nogil:
        if emd_log_density_f32(X, n_rows, self.n_features, self.n_components, self.Kp8,
                               &self.mean_hi32[0, 0], &self.mean_lo32[0, 0],
                               &self.prec_table32[0, 0], &self.log_norm[0], NULL, out):
            self._overflowed_in_double(X, n_rows, NULL, out)
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        return _accumulate(self, X, n_rows, weights, stats, scratch)

    cdef int chunk_accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                                  const double* weights, double* stats,
                                  double* scratch) noexcept nogil:
        # the rows widened exactly in registers: the statistics of X.astype(float64)
        return _accumulate(self, X, n_rows, weights, stats, scratch)

    cdef int chunk_soft_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* resp_sum, double* row_value, double* totals,
                                 double* stats, double* scratch) noexcept nogil:
        # the pass's unfused steps in its order (log-density, + log pi, posterior,
        # q scaled by the row weights, their column sums into resp_sum row after
        # row, statistics), with the posterior's exps in float32
        # (emc_soft_rows_f32; docs/elbo_chain.md#float32 bounds them)
        cdef Py_ssize_t i, k, K = self.n_components
        cdef double* log_joint = scratch + self._accumulate_scratch()
        cdef double* weights = log_joint + n_rows * K
        cdef Py_ssize_t status
        # the log-density with log pi added as it is stored (the same two roundings
        # as the pass's sweep adding it after)
        if emd_log_density_f32(X, n_rows, self.n_features, K, self.Kp8,
                               &self.mean_hi32[0, 0], &self.mean_lo32[0, 0],
                               &self.prec_table32[0, 0], &self.log_norm[0], log_weights,
                               log_joint):
            self._overflowed_in_double(X, n_rows, log_weights, log_joint)
        status = emc_soft_rows_f32(log_joint, weights, row_value, row_weights, n_rows, K,
                                   1.0, &totals[TOTAL_OBJECTIVE],
                                   &totals[TOTAL_EXPECTED_LOG_JOINT],
                                   &totals[TOTAL_ENTROPY], &totals[TOTAL_MAGNITUDE], 0)
        if status != 0:
            return <int>status
        # q times the row weights, their column sums in a private copy (scratch: the
        # statistics' weight block, free until _accumulate), rows in the same order
        # (the same bits), then stored once: resp_sum is the block's row of a table
        # whose rows share cache lines with the blocks other threads run, so a
        # store per row there could make the threads contend for those lines
        cdef double* acc = scratch
        for k in range(K):
            acc[k] = resp_sum[k]
        emc_weighted_column_sums(weights, row_weights, n_rows, K, acc)
        for k in range(K):
            resp_sum[k] = acc[k]
        if stats == NULL:
            return 0
        return _accumulate(self, X, n_rows, weights, stats, scratch)

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        emc_merge_moment_slot_arrays(self.n_components, self.n_features, EMC_SCATTER_DIAGONAL,
                                     into, other)


cdef inline void _moments(const floating* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                          Py_ssize_t Kp, const double* w, int which, const double* C,
                          double* wrow, double* T0, double* T1, double* T2,
                          double* xblk) noexcept nogil:
    if floating is float:
        emd_moments_f32(X, n, d, K, Kp, w, which, C, wrow, T0, T1, T2, xblk)
    else:
        emd_moments(X, n, d, K, Kp, w, which, C, wrow, T0, T1, T2)


cdef inline void _zero_moments(double* R, double* S, double* Wk, Py_ssize_t d,
                              Py_ssize_t Kp) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(d * Kp):
        R[i] = 0.0
        S[i] = 0.0
    for i in range(Kp):
        Wk[i] = 0.0


cdef int _accumulate(GaussianDiagKernel self, const floating* X, Py_ssize_t n_rows,
                     const double* weights, double* stats, double* scratch) noexcept nogil:
    cdef Py_ssize_t d = self.n_features, K = self.n_components, Kp = self.Kp
    cdef Py_ssize_t slot = emc_moment_slot_size(d, EMC_SCATTER_DIAGONAL)
    cdef Py_ssize_t i, j, k
    cdef double* wrow = scratch
    cdef double* Wk = wrow + 8 * Kp
    cdef double* C = Wk + Kp
    cdef double* R = C + d * Kp
    cdef double* S = R + d * Kp
    cdef double* chunk = S + d * Kp
    cdef double* xblk = chunk + slot + 2 * d    # float32 rows: a block widened
    cdef float* wblk32 = <float*>(xblk + 8 * d)  # float32 rows: weights as floats
    cdef double W, shift
    cdef bint settled = True, single = False
    cdef const double* ref = &self.mean_table[0, 0]   # the reference points
    # One sweep about this pass's means. The variance's rounding error is
    # amplified by 1 + shift^2 / var, shift = the chunk's weighted mean minus the
    # reference: accept if shift^2 <= var (2 shift^2 <= S / W) for every
    # component and feature, i.e. at most twice the two-sweep error.
    if floating is float:
        if self.float32_statistics:
            # in float32 about float(mu) (mean_hi64), EMD_ROWS32 rows at a time
            # (docs/elbo_chain.md#float32; GaussianFamily.statistics_rounding
            # bounds it); the double sweep if a weight or a sum leaves float's range
            _zero_moments(R, S, Wk, d, Kp)
            single = emd_moments_about_f32(X, n_rows, d, K, Kp, self.Kp8, weights,
                                           &self.mean_hi32[0, 0], wblk32, Wk, R, S) == 0
            if single:
                ref = &self.mean_hi64[0, 0]
    if not single:
        _zero_moments(R, S, Wk, d, Kp)
        _moments(X, n_rows, d, K, Kp, weights, 2, &self.mean_table[0, 0], wrow, Wk,
                 R, S, xblk)
    for k in range(K):
        W = Wk[k]
        if W <= 0.0:
            continue
        for j in range(d):
            shift = R[j * Kp + k] / W
            if not 2.0 * shift * shift <= S[j * Kp + k] / W:
                settled = False
    if not settled:
        # the means moved (early iterations, or no means: chunk_stats): two
        # sweeps, about the chunk's weighted means
        for i in range(d * Kp):
            C[i] = 0.0
            R[i] = 0.0
            S[i] = 0.0
        _moments(X, n_rows, d, K, Kp, weights, 1, NULL, wrow, NULL, C, NULL, xblk)
        for k in range(K):
            W = Wk[k]
            for j in range(d):
                C[j * Kp + k] = C[j * Kp + k] / W if W > 0.0 else 0.0
        _moments(X, n_rows, d, K, Kp, weights, 2, C, wrow, NULL, R, S, xblk)
        ref = C
    for k in range(K):
        W = Wk[k]
        if W <= 0.0:
            continue
        chunk[EMC_SLOT_WEIGHT(d)] = W
        for j in range(d):
            chunk[EMC_SLOT_REFERENCE(d) + j] = ref[j * Kp + k]
            chunk[EMC_SLOT_RESIDUAL(d) + j] = R[j * Kp + k]
            chunk[EMC_SLOT_SCATTER(d) + j] = S[j * Kp + k]
        emc_merge_moment_slots(d, EMC_SCATTER_DIAGONAL, stats + k * slot, chunk,
                               chunk + slot)
    return 0

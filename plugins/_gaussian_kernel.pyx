# cython: language_level=3
"""Compiled kernel of the full-covariance Gaussian family.

Log-density through the Cholesky factor U of the precision (P = U U^T, U upper
triangular, scikit-learn's ``precisions_cholesky_``):

    log N(x | mu, Sigma) = -d/2 log(2 pi) + sum_j log U_jj - 1/2 ||(x - mu) U||^2

with (x - mu) formed before the multiply (no cancellation for offset data).

Statistics slot per component k: [W, c (d), r (d), S (d x d)], the moments about
a reference point c (the chunk's weighted mean, as rounded):

    W = sum_i w_ik,  r = sum_i w_ik (x_i - c),  S = sum_i w_ik (x_i - c)(x_i - c)^T

r is the rounding residual of c (zero in exact arithmetic); keeping it makes the
statistics exact moments about c, so the expected log-likelihood from statistics
stays accurate at any parameters and any data offset. Each chunk's moments are
computed in two passes over the chunk (in cache); two slots merge by re-shifting
both to a common reference point exactly (the weighted Chan-Golub-LeVeque update
plus the residual terms: the moment merge and slot layout of emcore/moments.h,
shared with the diagonal and k-means kernels). Never raw E[xx^T] - mu mu^T.

The two dense products run in register-tiled C loops (_gaussian_full.h) rather than
BLAS. The chunk is transposed once (d x rows); the E-step takes 8 rows (two
4-double vectors) and 4 columns of (x - mu) U at a time, only the triangle's
non-zero terms, fused with the subtraction and the row norms; the statistics
take the upper triangle of S in 2 x 4 tiles over row blocks that stay in L1,
each sum in 4 interleaved partial sums added in a fixed order. The loops are
compiled twice on x86-64 Linux (glibc) with GCC (``target_clones``): an
AVX2/FMA version chosen at load time on CPUs that have it, and the baseline
x86-64 one, so the wheel still runs on any x86-64; other compilers get the
same code with a plain-C 4-double type. On x86-64-v4 (AVX-512) CPUs the
statistics' tiles are 4 x 4 instead, each 8-double vector holding two of the
2 x 4 tiles' accumulators side by side: the same multiply-adds in the same
order in every lane, so the same bits as the AVX2 clone, at twice the width
(tested). The same chunk gives the same bits on any thread (the clone and the
tiles are chosen once per process).

float32 rows (``GaussianFullKernel(..., float32=True)``, built by
``GaussianFamily(dtype='float32')``; the ``_f32`` methods of emcore/kernel.pxd):
the chunk is transposed as floats and the quadratic form computed in float32,
the same loop on 16-float vectors of rows (two in AVX-512 registers where the
CPU has them, chosen once per process: the same bits either way), each mean
held as two floats (hi + lo) so that x - mu carries a relative error only, the
triangle of U rounded to float; the constant and the result double
(docs/elbo_chain.md#float32 derives the bound the family's
``log_density_rounding`` gives the chain). The statistics of a settled chunk
(each weighted mean near float(mu)) are one sweep in float32 about h = float(mu)
(the chunk's reference point): t = x - h and w t from the float transposed chunk,
256 rows at a time, the products summed in 16 float lanes of 256 rows each (a
tile's sums held in registers over the 256 rows), then widened into double lanes
(``GaussianFamily.statistics_rounding`` bounds them); other chunks, data beyond
2^20 and weights beyond 2^42 (or -0, NaN) read the rows widened exactly into the
double transposed chunk (bitwise those of X.astype(float64)). With the exact soft
rule the pass calls the fused ``chunk_soft_step_f32``, the posterior's exps in
float32 as for the diagonal kernel; its statistics read the float transposed
chunk its log-density made (one transposition per chunk).

Flops per row and component (counted in benchmarks/bench_gaussian.py): the
E-step d (subtraction) + d(d+1) (the triangular product: column j has j+1
multiply-adds) + 2d (squares and sum); the statistics 2d (weighted sum for c)
+ 3d (subtraction, weighting, residual) + d(d+1) (the upper triangle of S).
"""
from emcore.kernel cimport (FamilyKernel, TOTAL_OBJECTIVE, TOTAL_EXPECTED_LOG_JOINT,
                            TOTAL_ENTROPY, TOTAL_MAGNITUDE)
from emcore.moments cimport (EMC_SCATTER_FULL, emc_merge_moment_slot_arrays,
                             emc_merge_moment_slots,
                             EMC_SLOT_REFERENCE, EMC_SLOT_RESIDUAL, EMC_SLOT_SCATTER,
                             EMC_SLOT_WEIGHT, emc_moment_slot_size)

import numpy as np

from emcore.kernel import moment_slot_layout
from emcore.plugins._dispatch import loop_choice


cdef extern from "_gaussian_full.h":
    void emc_transpose(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t ld,
                       double* Xt) noexcept nogil
    void emc_weighted_sums(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                           const double* w, double* out) noexcept nogil
    void emc_full_log_density(const double* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d,
                              Py_ssize_t dp, Py_ssize_t K, const double* means,
                              const double* U, const double* log_norm, double* Dt,
                              double* out) noexcept nogil
    void emc_full_moments(const double* Xt, Py_ssize_t ld, Py_ssize_t d, Py_ssize_t da,
                          Py_ssize_t blk, const double* w, const double* c, double* Dt,
                          double* WDt, double* rp, double* S4, double* r,
                          double* S) noexcept nogil
    Py_ssize_t EMC_ROWS
    int emc_full_use_v4
    int emc_full_v4_available() noexcept nogil
    void emc_transpose_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t ld,
                           float* Xt) noexcept nogil
    void emc_transpose_widen(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t ld,
                             double* Xt) noexcept nogil
    Py_ssize_t EMC_ROWS_F32
    int emc_full_f32_use_v4
    int emc_full_log_density_f32(const float* Xt, Py_ssize_t ld, Py_ssize_t n,
                                 Py_ssize_t d, Py_ssize_t dp, Py_ssize_t K,
                                 const float* H, const float* L, const float* U,
                                 const double* log_norm, float* Dt,
                                 double* out) noexcept nogil
    Py_ssize_t EMC_STAT_ROWS_F32
    int emc_full_f32_stats_ok(const float* X, Py_ssize_t n, Py_ssize_t d,
                              const double* weights, Py_ssize_t K,
                              const float* h) noexcept nogil
    void emc_weights_f32(const double* weights, Py_ssize_t n, Py_ssize_t K, Py_ssize_t ld,
                         float* wt) noexcept nogil
    void emc_full_moments_f32(const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d,
                              Py_ssize_t da, const float* wf, const float* h, float* D,
                              float* WD, double* rp16, double* S16,
                              double* r, double* S) noexcept nogil


cdef extern from "_soft_posterior.h":
    Py_ssize_t emc_soft_rows_f32(double* log_joint, double* resp, double* row_value,
                                 const double* row_weights, Py_ssize_t n, Py_ssize_t K,
                                 double T, double* objective, double* log_joint_total,
                                 double* entropy, double* magnitude,
                                 int write_log_q) noexcept nogil
    void emc_weighted_column_sums(double* q, const double* rw, Py_ssize_t n,
                                  Py_ssize_t K, double* acc) noexcept nogil


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t m) noexcept nogil:
    return ((a + m - 1) // m) * m


def _avx512_tiles(enable=None):
    """Whether the statistics' tiles run the AVX-512 loop (x86-64-v4 CPUs).

    ``enable`` True or False chooses (True only where the CPU has it); for the
    tests, which check that both loops give the same bits. Returns the choice."""
    global emc_full_use_v4
    emc_full_use_v4 = loop_choice(emc_full_use_v4, emc_full_v4_available(), enable,
                                  "_avx512_tiles")
    return bool(emc_full_use_v4)


_avx512_tiles()   # decided once, at import: no thread of a pass writes the choice


def _avx512_float32(enable=None):
    """Whether the float32 log-density runs two 16-float vectors of rows in
    AVX-512 registers (x86-64-v4 CPUs) rather than one.

    As :func:`_avx512_tiles`, for the tests (the same bits either way)."""
    global emc_full_f32_use_v4
    emc_full_f32_use_v4 = loop_choice(emc_full_f32_use_v4, emc_full_v4_available(),
                                      enable, "_avx512_float32")
    return bool(emc_full_f32_use_v4)


_avx512_float32()

#: rows per block of the float32 statistics (their float sums have depth
#: STATISTICS_ROWS_F32 / 16 per lane: docs/elbo_chain.md#float32)
STATISTICS_ROWS_F32 = EMC_STAT_ROWS_F32


cdef inline Py_ssize_t _stride(Py_ssize_t n_rows) noexcept nogil:
    """Rows of X^T: n_rows rounded up to EMC_ROWS, plus EMC_ROWS zero rows, so
    that the d rows of X^T are not a multiple of 4 KiB apart (2048-row chunks
    would put them all in one L1 cache set); the zero rows have zero weight."""
    return _round_up(n_rows, EMC_ROWS) + EMC_ROWS


cdef inline Py_ssize_t _stride_f32(Py_ssize_t n_rows) noexcept nogil:
    """Rows of the float X^T: n_rows rounded up to EMC_ROWS_F32, plus EMC_ROWS_F32
    zero rows (not a multiple of 4 KiB apart either)."""
    return _round_up(n_rows, EMC_ROWS_F32) + EMC_ROWS_F32


cdef class GaussianFullKernel(FamilyKernel):
    """Kernel for fixed means (k, d) and precision Cholesky factors (k, d, d).

    ``float32=True`` (``GaussianFamily(dtype='float32')``): on float32 rows the
    log-density's quadratic form is computed in float32 (the ``_f32`` methods,
    docs/elbo_chain.md#float32), the statistics of settled chunks in float32
    about float(mu) (bounded by ``GaussianFamily.statistics_rounding``)."""
    cdef const double[:, ::1] means
    cdef const double[:, :, ::1] prec_chol
    cdef const double[:, :, ::1] prec_pad   # upper U_k zero padded to (d, da)
    cdef double[::1] log_norm   # -d/2 log(2 pi) + sum_j log U_jj, per component
    cdef Py_ssize_t da          # d rounded up to 4
    cdef Py_ssize_t blk         # rows per block of the statistics (a multiple of 4)
    # float32 rows (float32=True): each mean as two floats (hi + lo), K x d, and
    # the upper U_k rounded to float, zero padded to (d, da)
    cdef const float[:, ::1] mean_hi32
    cdef const float[:, ::1] mean_lo32
    cdef const float[:, :, ::1] prec_pad32
    cdef readonly bint float32_statistics  # float32 rows: settled chunks' moments in float32

    def __init__(self, means, precisions_cholesky, float32=False, float32_statistics=True):
        means = np.ascontiguousarray(means, dtype=np.float64)
        prec_chol = np.ascontiguousarray(precisions_cholesky, dtype=np.float64)
        if means.ndim != 2 or prec_chol.shape != (means.shape[0], means.shape[1],
                                                  means.shape[1]):
            raise ValueError("means must be (k, d) and precisions_cholesky (k, d, d)")
        self.n_components = means.shape[0]
        self.n_features = means.shape[1]
        d = self.n_features
        self.n_stats = self.n_components * emc_moment_slot_size(d, EMC_SCATTER_FULL)
        self.means = means
        self.prec_chol = prec_chol
        self.da = _round_up(d, 4)
        # D and w D of a block of rows, da x blk each: about 8 KiB together, so
        # that they stay in L1 between their build and the tiles while X^T's
        # rows stream through (at (2048, 16, 16), blk 32 against 128: the build's
        # stores waited on the cache, 0.7 against 1.8 of the tiles' time); at
        # least 32 rows (the tiles load and store their accumulators per block)
        self.blk = max(32, (512 // self.da) // 4 * 4)
        pad = np.zeros((self.n_components, d, self.da))
        pad[:, :, :d] = np.triu(prec_chol)   # the product uses the upper triangle
        self.prec_pad = pad
        diag = np.diagonal(prec_chol, axis1=1, axis2=2)
        self.log_norm = (-0.5 * d * np.log(2.0 * np.pi)
                         + np.sum(np.log(diag), axis=1)).astype(np.float64)
        # float32 rows: the bound (docs/elbo_chain.md#float32) needs every mean and
        # every non-zero entry of U in float's normal range; otherwise the rows
        # are widened to double like any kernel's
        tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
        au = np.abs(pad)
        self.float32_rows = bool(float32) and bool(
            np.all((au == 0.0) | ((au >= tiny) & (au <= big)))
            and np.all(np.abs(means) <= big) and np.all(np.isfinite(self.log_norm)))
        shape = (self.n_components, d) if self.float32_rows else (1, 1)
        hi = np.zeros(shape, dtype=np.float32)
        lo = np.zeros(shape, dtype=np.float32)
        pad32 = np.zeros(shape + ((int(self.da) if self.float32_rows else 1),),
                         dtype=np.float32)
        if self.float32_rows:
            hi[:] = means
            lo[:] = means - hi.astype(np.float64)     # exact in double, then rounded
            pad32[:] = pad
        self.mean_hi32 = hi
        self.mean_lo32 = lo
        self.prec_pad32 = pad32
        # the exact soft rule fused on float32 rows, its exps in float32
        self.fused_soft_step_f32 = self.float32_rows
        # float32_statistics=False: the statistics read the rows widened exactly
        # (their float32 sums add GaussianFamily.statistics_rounding to the chain)
        self.float32_statistics = self.float32_rows and bool(float32_statistics)

    def __reduce__(self):
        return (GaussianFullKernel, (np.asarray(self.means), np.asarray(self.prec_chol),
                                     self.float32_rows, self.float32_statistics))

    @staticmethod
    def slot_layout(Py_ssize_t n_features):
        """One component's statistics slot: {field: index or slice}, the moments
        slot of emcore/moments.h with a full scatter."""
        return moment_slot_layout(n_features, "full")

    cdef Py_ssize_t _base_scratch(self, Py_ssize_t n_rows) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, da = self.da
        cdef Py_ssize_t ld = _stride(n_rows)
        cdef Py_ssize_t K = self.n_components
        # X^T (d x ld); then an 8-row block (d x 8), or the weights transposed
        # (K x ld) and their sums (K) + D and w D of a block (da x blk each) + the
        # partial sums (4 d + 4 da^2) + S (da x da) + one chunk slot + merge scratch
        cdef Py_ssize_t size = d * ld + max(d * EMC_ROWS,
                                            K * ld + K + 2 * da * self.blk + 4 * d
                                            + 5 * da * da
                                            + emc_moment_slot_size(d, EMC_SCATTER_FULL)
                                            + 2 * d)
        # float32 rows: the float X^T (d x ld32) and a group's t (EMC_ROWS_F32 x d);
        # the float32 statistics: the float X^T, the scaled weights transposed, a
        # block's D (da x EMC_STAT_ROWS_F32 floats) and w D of a tile's rows (4 x
        # EMC_STAT_ROWS_F32), the 16 lanes of r
        # and S (16 d + 16 da^2), S, the weights' sums (K), K chunk slots + merge
        # scratch
        if self.float32_rows:
            size = max(size, (d * (_stride_f32(n_rows) + EMC_ROWS_F32) + 1) // 2,
                       _round_up((d * _stride_f32(n_rows) + 1) // 2, 8)
                       + (K * _stride_f32(n_rows) + (da + 4) * EMC_STAT_ROWS_F32) // 2 + 8
                       + 16 * d + 17 * da * da + K
                       + K * emc_moment_slot_size(d, EMC_SCATTER_FULL) + 2 * d)
        return size

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        # + the fused float32 step's log joint and weighted q (n_rows x K each) and
        # its column sums (K)
        return (self._base_scratch(n_rows)
                + ((2 * n_rows + 1) * self.n_components if self.float32_rows else 0))

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features
        cdef Py_ssize_t ld = _stride(n_rows)
        cdef double* Xt = scratch
        emc_transpose(X, n_rows, d, ld, Xt)
        emc_full_log_density(Xt, ld, n_rows, d, self.da, self.n_components,
                             &self.means[0, 0], &self.prec_pad[0, 0, 0],
                             &self.log_norm[0], Xt + d * ld, out)
        return 0

    cdef int chunk_log_density_f32(self, const float* X, Py_ssize_t n_rows,
                                   double* out, double* scratch) noexcept nogil:
        self._log_density_f32(X, n_rows, out, scratch)
        return 0

    cdef bint _log_density_f32(self, const float* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        # chunk_log_density_f32; True if the float X^T it made is still at the
        # start of scratch (for the fused step's statistics), False if the chunk
        # was recomputed in double over it
        cdef Py_ssize_t d = self.n_features
        cdef Py_ssize_t ld32 = _stride_f32(n_rows)
        cdef Py_ssize_t ld = _stride(n_rows)
        cdef float* Xt32 = <float*>scratch
        cdef double* Xt
        emc_transpose_f32(X, n_rows, d, ld32, Xt32)
        if emc_full_log_density_f32(Xt32, ld32, n_rows, d, self.da, self.n_components,
                                    &self.mean_hi32[0, 0], &self.mean_lo32[0, 0],
                                    &self.prec_pad32[0, 0, 0], &self.log_norm[0],
                                    Xt32 + d * ld32, out):
            # some float32 form overflowed (a row ~1e19 standard deviations from a
            # component): the chunk again in double, never -inf
            Xt = scratch
            emc_transpose_widen(X, n_rows, d, ld, Xt)
            emc_full_log_density(Xt, ld, n_rows, d, self.da, self.n_components,
                                 &self.means[0, 0], &self.prec_pad[0, 0, 0],
                                 &self.log_norm[0], Xt + d * ld, out)
            return False
        return True

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        emc_transpose(X, n_rows, self.n_features, _stride(n_rows), scratch)
        return self._accumulate_transposed(n_rows, weights, stats, scratch)

    cdef int chunk_accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                                  const double* weights, double* stats,
                                  double* scratch) noexcept nogil:
        if self.float32_statistics:
            emc_transpose_f32(X, n_rows, self.n_features, _stride_f32(n_rows),
                              <float*>scratch)
            return self._accumulate_f32(X, n_rows, weights, stats, scratch)
        emc_transpose_widen(X, n_rows, self.n_features, _stride(n_rows), scratch)
        return self._accumulate_transposed(n_rows, weights, stats, scratch)

    cdef int _accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                             const double* weights, double* stats,
                             double* scratch) noexcept nogil:
        # chunk_accumulate_f32 once the float X^T (d x ld32) is at the start of
        # scratch (float32_statistics): moments about h = float32(mu_t) summed in float over blocks of rows
        # (docs/elbo_chain.md#float32; GaussianFamily.statistics_rounding bounds
        # them); weights or data outside the range that bound needs, or means
        # that moved: the rows widened exactly, the statistics of
        # X.astype(float64) bitwise
        cdef Py_ssize_t d = self.n_features, K = self.n_components, da = self.da
        cdef Py_ssize_t ld32 = _stride_f32(n_rows)
        cdef Py_ssize_t slot = emc_moment_slot_size(d, EMC_SCATTER_FULL)
        cdef Py_ssize_t i, j, k
        cdef float* Xt32 = <float*>scratch
        cdef float* wf
        cdef float* D
        cdef float* WD
        cdef double* rp16
        cdef double* S16
        cdef double* Sp
        cdef double* Wk
        cdef double* slots
        cdef double* chunk
        cdef double* S
        cdef double* tmp
        cdef double shift
        cdef bint settled = True
        if self.float32_statistics:
            if emc_full_f32_stats_ok(X, n_rows, d, weights, K, &self.mean_hi32[0, 0]):
                wf = <float*>(scratch + _round_up((d * ld32 + 1) // 2, 8))
                D = wf + K * ld32
                WD = D + da * EMC_STAT_ROWS_F32
                rp16 = <double*>(WD + 4 * EMC_STAT_ROWS_F32) + 8
                S16 = rp16 + 16 * d
                Sp = S16 + 16 * da * da
                Wk = Sp + da * da
                slots = Wk + K
                tmp = slots + K * slot
                emc_weights_f32(weights, n_rows, K, ld32, wf)
                for k in range(K):
                    Wk[k] = 0.0
                for i in range(n_rows):
                    for k in range(K):
                        Wk[k] += weights[i * K + k]
                # every component's chunk slot first; the chunk is "settled" if
                # each weighted mean is close to float(mu): 2 shift^2 <= S_jj / W
                # per feature, shift = r_j / W (as the diagonal kernel's test; the
                # rounding error of the scatter about the mean is then at most
                # about twice the float sums'); else the means moved (early
                # iterations, chunk_stats) and the chunk is summed in double
                for k in range(K):
                    chunk = slots + k * slot
                    if Wk[k] <= 0.0:
                        continue
                    for j in range(d):
                        chunk[EMC_SLOT_REFERENCE(d) + j] = self.mean_hi32[k, j]
                    emc_full_moments_f32(Xt32, ld32, n_rows, d, da, wf + k * ld32,
                                         &self.mean_hi32[k, 0], D, WD, rp16,
                                         S16, chunk + EMC_SLOT_RESIDUAL(d), Sp)
                    S = chunk + EMC_SLOT_SCATTER(d)
                    for i in range(d):
                        shift = chunk[EMC_SLOT_RESIDUAL(d) + i] / Wk[k]
                        if not 2.0 * shift * shift <= Sp[i * da + i] / Wk[k]:
                            settled = False
                        for j in range(i, d):
                            S[i * d + j] = Sp[i * da + j]
                            S[j * d + i] = Sp[i * da + j]
                    chunk[EMC_SLOT_WEIGHT(d)] = Wk[k]
                    if not settled:
                        break
                if settled:
                    for k in range(K):
                        if Wk[k] > 0.0:
                            emc_merge_moment_slots(d, EMC_SCATTER_FULL, stats + k * slot,
                                                   slots + k * slot, tmp)
                    return 0
        emc_transpose_widen(X, n_rows, d, _stride(n_rows), scratch)
        return self._accumulate_transposed(n_rows, weights, stats, scratch)

    cdef int chunk_soft_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* resp_sum, double* row_value, double* totals,
                                 double* stats, double* scratch) noexcept nogil:
        # the pass's unfused steps in its order (log-density, + log pi, posterior,
        # q scaled by the row weights, their column sums into resp_sum row after
        # row, statistics), with the posterior's exps in float32
        # (emc_soft_rows_f32; docs/elbo_chain.md#float32 bounds them)
        cdef Py_ssize_t i, k, K = self.n_components
        cdef double* log_joint = scratch + self._base_scratch(n_rows)
        cdef double* weights = log_joint + n_rows * K
        cdef Py_ssize_t status
        cdef bint transposed = self._log_density_f32(X, n_rows, log_joint, scratch)
        for i in range(n_rows):
            for k in range(K):
                log_joint[i * K + k] += log_weights[k]
        status = emc_soft_rows_f32(log_joint, weights, row_value, row_weights, n_rows, K,
                                   1.0, &totals[TOTAL_OBJECTIVE],
                                   &totals[TOTAL_EXPECTED_LOG_JOINT],
                                   &totals[TOTAL_ENTROPY], &totals[TOTAL_MAGNITUDE], 0)
        if status != 0:
            return <int>status
        # q times the row weights, their column sums added row after row (the
        # pass's order: the same bits), in a private copy stored once
        cdef double* acc = weights + n_rows * K
        for k in range(K):
            acc[k] = resp_sum[k]
        emc_weighted_column_sums(weights, row_weights, n_rows, K, acc)
        for k in range(K):
            resp_sum[k] = acc[k]
        if stats == NULL:
            return 0
        if transposed and self.float32_statistics:
            # the float X^T the log-density made, not made again
            return self._accumulate_f32(X, n_rows, weights, stats, scratch)
        return self.chunk_accumulate_f32(X, n_rows, weights, stats, scratch)

    cdef int _accumulate_transposed(self, Py_ssize_t n_rows, const double* weights,
                                    double* stats, double* scratch) noexcept nogil:
        # chunk_accumulate once X^T (d x ld, double) is at the start of scratch
        cdef Py_ssize_t d = self.n_features, K = self.n_components, da = self.da
        cdef Py_ssize_t ld = _stride(n_rows)
        cdef Py_ssize_t slot = emc_moment_slot_size(d, EMC_SCATTER_FULL)
        cdef Py_ssize_t i, j, k
        cdef double* Xt = scratch
        cdef double* wt = Xt + d * ld       # the weights transposed, K x ld
        cdef double* Wk = wt + K * ld       # their sums, K
        cdef double* Dt = Wk + K
        cdef double* WDt = Dt + da * self.blk
        cdef double* rp = WDt + da * self.blk
        cdef double* S4 = rp + 4 * d
        cdef double* Sp = S4 + 4 * da * da
        cdef double* chunk = Sp + da * da
        cdef double* c = chunk + EMC_SLOT_REFERENCE(d)
        cdef double* r = chunk + EMC_SLOT_RESIDUAL(d)
        cdef double* S = chunk + EMC_SLOT_SCATTER(d)
        cdef double* tmp = chunk + slot
        cdef double* wk
        cdef double W
        emc_transpose(weights, n_rows, K, ld, wt)   # rows n_rows..ld-1 zero
        # each W_k sums its rows in order; the K sums run side by side (one pass)
        for k in range(K):
            Wk[k] = 0.0
        for i in range(n_rows):
            for k in range(K):
                Wk[k] += weights[i * K + k]
        for k in range(K):
            W = Wk[k]
            if W <= 0.0:
                continue
            wk = wt + k * ld
            # pass 1: the reference point c, the chunk's weighted mean
            emc_weighted_sums(Xt, ld, d, wk, c)
            for j in range(d):
                c[j] = c[j] / W
            # pass 2: r = sum_i w_i (x_i - c) (the rounding residual of c) and the
            # upper triangle of S = sum_i w_i (x_i - c)(x_i - c)^T; then mirror
            emc_full_moments(Xt, ld, d, da, self.blk, wk, c, Dt, WDt, rp, S4, r, Sp)
            for i in range(d):
                for j in range(i, d):
                    S[i * d + j] = Sp[i * da + j]
                    S[j * d + i] = Sp[i * da + j]
            chunk[EMC_SLOT_WEIGHT(d)] = W
            emc_merge_moment_slots(d, EMC_SCATTER_FULL, stats + k * slot, chunk, tmp)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        emc_merge_moment_slot_arrays(self.n_components, self.n_features, EMC_SCATTER_FULL,
                                     into, other)

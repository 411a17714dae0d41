# cython: language_level=3
"""Compiled kernel of the k-means family: the Lloyd step as a CEM pass.

Log-density of the equal-weight, shared-variance spherical Gaussian:

    log p(x | k) = -h ||x - mu_k||^2 + const,   h = 1 / (2 sigma^2),
    const = -d/2 log(2 pi sigma^2)

with the squared distances through the GEMM identity on *centred* data,

    ||x - mu||^2 = ||x~||^2 - 2 x~ . mu~ + ||mu~||^2,   x~ = x - c, mu~ = mu - c,

c the mean of the centres: centring keeps the cancellation proportional to the
spread of the data around the centres, not to their distance from the origin.
The log-densities (soft rules) take the cross products from one DGEMM per chunk.
The Lloyd step (the hard rule, ``chunk_hard_step``) needs only the argmax of
2h x~.mu~_k + offset_k: a register kernel computes those scores for two rows
at a time, 16 centres at a time, in C on 4-double vectors, and keeps each
lane's running maximum, so no n x k array is written; a second sweep over the
chunk's rows (still in cache) adds each row to its component's statistics.
By callgrind at (n, d, k) = (1e5, 16, 16) one Lloyd iteration is 33 M
instructions in this kernel, against 63 M for DGEMM + argmax + statistics.

Statistics slot per component k: [W, SS, D, ref (d), s (d), far (d)]:

    W = sum_i w_ik,  s = sum_i w_ik (x_i - ref),  SS = sum_i w_ik ||x_i - ref||^2,
    far = the row farthest from ref among the rows with w_ik > 0, D its squared
    distance (-1 with no rows);

ref is the centre of the pass (the previous iteration's mean), so s is small and
the shifted second moment SS - |s|^2 / W is accurate (never raw E||x||^2 - |mu|^2).
The distances here are exact differences, not the GEMM identity: the statistics,
and through them the M-step and the inertia, carry no cancellation error.
Slots with different references merge by re-shifting exactly (the moment merge
of emcore/moments.h, the scatter as its trace); the slot layout is declared in
_lloyd.h, with the Lloyd step's C.

float32 rows (``float32_rows``; the ``_f32`` methods of emcore/kernel.pxd): the
Lloyd step's scores are computed in float32 (the centring point, the scaled
centres and the offsets rounded to float32; 8-float vectors, or on x86-64-v4
CPUs 16 rows in the lanes of a 16-float vector with the components in a loop:
the same scores, bit for bit, ``_float32_labelling``), so only the labels see
float32 rounding; the row values, the statistics and the
log-densities of the soft rules come from the rows widened exactly to double,
as for float64 data (docs/elbo_chain.md#float32 derives the labels' effect on
the chain).
"""
from libc.math cimport INFINITY, log, M_PI
from libc.stdlib cimport free, malloc
from cython cimport floating

from emcore.blas cimport gemm_nt
from emcore.kernel cimport (FamilyKernel, TOTAL_EXPECTED_LOG_JOINT, TOTAL_MAGNITUDE,
                            TOTAL_OBJECTIVE)
from emcore.moments cimport EMC_SCATTER_TRACE, emc_merge_moments

import numpy as np

cdef extern from "_lloyd.h":
    # one component's slot: [W, SS, D, ref (d), s (d), far (d)]
    Py_ssize_t EMC_KM_WEIGHT(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_SCATTER(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_FAR_DIST(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_REFERENCE(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_SHIFT_SUM(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_FAR_POINT(Py_ssize_t d) noexcept nogil
    Py_ssize_t EMC_KM_SLOT_SIZE(Py_ssize_t d) noexcept nogil
    double emc_add_row(double* slot, const double* x, double w, Py_ssize_t d) noexcept nogil
    double emc_add_row_f32(double* slot, const float* x, double w, Py_ssize_t d) noexcept nogil
    double emc_sq_dist(const double* x, const double* y, Py_ssize_t d) noexcept nogil
    Py_ssize_t emc_lloyd_rows(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                              Py_ssize_t Kp, const double* c, const double* mt,
                              const double* off, double* xc, const double* row_weights,
                              const double* means, const double* row_const, double h,
                              double* stats, Py_ssize_t* labels, double* row_value,
                              double* objective, double* log_joint,
                              double* magnitude) noexcept nogil
    Py_ssize_t emc_lloyd_rows_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                                  Py_ssize_t Kp, const float* c, const float* mt,
                                  const float* off, float* xc, const double* row_weights,
                                  const double* means, const double* row_const, double h,
                                  double* stats, Py_ssize_t* labels, double* row_value,
                                  double* objective, double* log_joint,
                                  double* magnitude) noexcept nogil
    Py_ssize_t emc_lloyd_rows_t_f32(const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                                    Py_ssize_t Kp, const float* c, const float* mt,
                                    const float* off, float* work, const double* row_weights,
                                    const double* means, const double* row_const, double h,
                                    double* stats, Py_ssize_t* labels, double* row_value,
                                    double* objective, double* log_joint,
                                    double* magnitude) noexcept nogil
    Py_ssize_t emc_lloyd_t_workspace(Py_ssize_t d, Py_ssize_t K) noexcept nogil
    int emc_lloyd_f32_mode
    int emc_lloyd_f32_best_mode() noexcept nogil


def _float32_labelling(mode=None):
    """Which float32 Lloyd labelling runs: "transposed" (16 rows in the lanes of
    an AVX-512 vector, the components in a loop; x86-64-v4 CPUs, for d <= 32 or
    k >= d, the shapes where it measured faster; the row step at other shapes)
    or "rows" (the row step, components in the lanes: the reference, and the
    step elsewhere). Both compute the same scores, so the same labels.

    ``mode`` chooses (for the tests and benchmarks, which compare them;
    "transposed" only where the CPU has it); None leaves the choice made at
    import. Returns the choice."""
    global emc_lloyd_f32_mode
    names = ("rows", "transposed")
    if mode is not None:
        if mode not in names:
            raise ValueError(f"The 'mode' parameter of _float32_labelling must be one of "
                             f"{names}, got {mode!r}.")
        if mode == "transposed" and not emc_lloyd_f32_best_mode():
            raise ValueError("The 'mode' parameter of _float32_labelling is 'transposed' "
                             "but this CPU (or build) has no x86-64-v4 loop.")
        emc_lloyd_f32_mode = names.index(mode)
    elif emc_lloyd_f32_mode < 0:
        emc_lloyd_f32_mode = emc_lloyd_f32_best_mode()
    return names[emc_lloyd_f32_mode]


_float32_labelling()   # decided once, at import: no thread of a pass writes the choice


cdef class KMeansKernel(FamilyKernel):
    """Log-densities and statistics of the k-means family at fixed centres.

    Parameters
    ----------
    means : (k, d) array
    variance : float
        The shared variance sigma^2 > 0 (fixed, not estimated).
    """
    cdef double[:, ::1] means          # (k, d)
    cdef double[:, ::1] centred_means  # (k, d) mu - c
    cdef double[::1] centre            # (d,) c
    cdef double[::1] mean_sq_norms     # (k,) ||mu - c||^2
    cdef double[::1] offsets           # (k,) const - h ||mu - c||^2
    cdef double[:, ::1] scaled_means_t  # (d, kp) 2h (mu - c)^T, zero columns k..kp-1
    cdef Py_ssize_t kp                 # k rounded up to a multiple of 4
    cdef float[::1] centre32           # (d,) c32, c rounded to float32
    cdef float[:, ::1] scaled_means_t32  # (d, kp32) 2h (mu - c32)^T rounded to float32
    cdef double[::1] offsets32         # (k,) -h ||mu - c32||^2 (no const: see below)
    cdef Py_ssize_t kp32               # k rounded up to a multiple of 8
    cdef readonly double variance
    cdef double h, const

    def __init__(self, means, double variance):
        means = np.ascontiguousarray(means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ValueError("means must have shape (n_components, n_features)")
        if not variance > 0.0:
            raise ValueError(f"variance must be positive; got {variance}")
        k, d = means.shape
        self.n_components = k
        self.n_features = d
        self.n_stats = k * EMC_KM_SLOT_SIZE(d)
        self.means = means.copy()
        c = means.mean(axis=0)
        self.centre = c
        self.centred_means = means - c
        self.mean_sq_norms = np.einsum("kj,kj->k", means - c, means - c)
        self.variance = variance
        self.h = 0.5 / variance
        self.const = -0.5 * d * log(2.0 * M_PI * variance)
        self.offsets = self.const - self.h * np.asarray(self.mean_sq_norms)
        self.kp = -(-k // 4) * 4
        mt = np.zeros((d, self.kp))
        mt[:, :k] = (2.0 * self.h) * (means - c).T
        self.scaled_means_t = mt
        self.fused_hard_step = True
        # the float32 Lloyd step's copies (8-float vectors: columns to a multiple of
        # 8), about c32 = float32(c) so that the identity holds for the centring
        # point the step subtracts; computed in double, then rounded
        self.kp32 = -(-k // 8) * 8
        c32 = c.astype(np.float32)
        cm32 = means - c32.astype(np.float64)
        mt32 = np.zeros((d, self.kp32), dtype=np.float32)
        mt32[:, :k] = (2.0 * self.h) * cm32.T
        self.scaled_means_t32 = mt32
        self.centre32 = c32
        self.offsets32 = -self.h * np.einsum("kj,kj->k", cm32, cm32)
        self.float32_rows = True

    def __reduce__(self):
        return (KMeansKernel, (np.asarray(self.means), self.variance))

    @staticmethod
    def slot_layout(Py_ssize_t n_features):
        """One component's statistics slot: {field: index or slice} (see the
        module docstring; declared once, in _lloyd.h)."""
        d = n_features
        return {"weight": EMC_KM_WEIGHT(d), "scatter": EMC_KM_SCATTER(d),
                "far_dist": EMC_KM_FAR_DIST(d),
                "ref": slice(EMC_KM_REFERENCE(d), EMC_KM_REFERENCE(d) + d),
                "shift_sum": slice(EMC_KM_SHIFT_SUM(d), EMC_KM_SHIFT_SUM(d) + d),
                "far_point": slice(EMC_KM_FAR_POINT(d), EMC_KM_FAR_POINT(d) + d)}

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        # kp32 >= kp: the float32 step's offsets (kp32 floats) fit where the
        # float64 step's (kp doubles) go; then the Lloyd step's 2 centred rows,
        # or the transposed float32 step's table and block (in floats)
        return (n_rows * self.n_features + max(n_rows, self.kp32 + self.n_components)
                + max(2 * self.n_features,
                      (emc_lloyd_t_workspace(self.n_features, self.n_components) + 1) // 2))

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        return _log_density(self, X, n_rows, out, scratch)

    cdef int chunk_log_density_f32(self, const float* X, Py_ssize_t n_rows,
                                   double* out, double* scratch) noexcept nogil:
        return _log_density(self, X, n_rows, out, scratch)

    cdef int _log_density_centred(self, Py_ssize_t n_rows, double* out,
                                  double* scratch) noexcept nogil:
        # out from the centred rows Xc and their norms qn (in scratch, _log_density)
        cdef Py_ssize_t i, k, K = self.n_components
        cdef double* Xc = scratch
        cdef double* qn = scratch + n_rows * self.n_features
        cdef double s, h = self.h
        # out = 2h Xc @ mu~.T, then + (-h ||x~||^2) + (const - h ||mu~||^2)
        gemm_nt(n_rows, K, self.n_features, 2.0 * h, Xc, &self.centred_means[0, 0], 0.0, out)
        for i in range(n_rows):
            s = -h * qn[i]
            for k in range(K):
                out[i * K + k] = out[i * K + k] + (s + self.offsets[k])
        return 0

    cdef int chunk_hard_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* work, double* scratch, Py_ssize_t* labels,
                             double* row_value, double* totals,
                             double* stats) noexcept nogil:
        # Lloyd's E-step and the accumulation (emc_lloyd_rows). The argmax needs
        # only score_ik = 2h x~.mu~_k + (const - h ||mu~_k||^2 + log pi_k), computed
        # in registers (work is not used). The row's value
        # f_i = log pi_z + const - h ||x_i - mu_z||^2 then comes from the exact
        # difference to the chosen centre, not from the GEMM identity.
        cdef Py_ssize_t k, d = self.n_features, K = self.n_components
        cdef double* off = scratch                 # (kp) score offsets, -inf padded
        cdef double* row_const = scratch + self.kp  # (k) const + log pi_k
        for k in range(self.kp):
            off[k] = self.offsets[k] + log_weights[k] if k < K else -INFINITY
        for k in range(K):
            row_const[k] = self.const + log_weights[k]
        return <int>emc_lloyd_rows(X, n_rows, d, K, self.kp, &self.centre[0],
                                   &self.scaled_means_t[0, 0], off,
                                   scratch + self.kp32 + K, row_weights,
                                   &self.means[0, 0], row_const, self.h, stats, labels,
                                   row_value, &totals[TOTAL_OBJECTIVE],
                                   &totals[TOTAL_EXPECTED_LOG_JOINT],
                                   &totals[TOTAL_MAGNITUDE])

    cdef int chunk_hard_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* work, double* scratch, Py_ssize_t* labels,
                                 double* row_value, double* totals,
                                 double* stats) noexcept nogil:
        # chunk_hard_step on float32 rows: the scores in float32, less the constant
        # const + max_k log pi_k that does not move the argmax (so that float32
        # rounds only what differs between components: docs/elbo_chain.md#float32);
        # the offsets computed in double, then rounded. The rest in double.
        cdef Py_ssize_t k, d = self.n_features, K = self.n_components
        cdef double* row_const = scratch                 # (k) const + log pi_k
        cdef float* off = <float*>(scratch + K)          # (kp32) score offsets
        cdef double top = -INFINITY
        for k in range(K):
            if log_weights[k] > top:
                top = log_weights[k]
        if not (top > -INFINITY and top < INFINITY):
            top = 0.0
        for k in range(self.kp32):
            off[k] = <float>(self.offsets32[k] + (log_weights[k] - top)) if k < K else -INFINITY
        for k in range(K):
            row_const[k] = self.const + log_weights[k]
        return <int>emc_lloyd_rows_t_f32(X, n_rows, d, K, self.kp32, &self.centre32[0],
                                       &self.scaled_means_t32[0, 0], off,
                                       <float*>(scratch + self.kp32 + K), row_weights,
                                       &self.means[0, 0], row_const, self.h, stats, labels,
                                       row_value, &totals[TOTAL_OBJECTIVE],
                                       &totals[TOTAL_EXPECTED_LOG_JOINT],
                                       &totals[TOTAL_MAGNITUDE])

    cdef void clear_stats(self, double* stats) noexcept nogil:
        cdef Py_ssize_t k, j, d = self.n_features, S = EMC_KM_SLOT_SIZE(d)
        cdef double* slot
        for k in range(self.n_components):
            slot = stats + k * S
            slot[EMC_KM_WEIGHT(d)] = 0.0
            slot[EMC_KM_SCATTER(d)] = 0.0
            slot[EMC_KM_FAR_DIST(d)] = -1.0
            for j in range(d):
                slot[EMC_KM_REFERENCE(d) + j] = self.means[k, j]
                slot[EMC_KM_SHIFT_SUM(d) + j] = 0.0
                slot[EMC_KM_FAR_POINT(d) + j] = 0.0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        return _accumulate(X, n_rows, self.n_features, self.n_components, weights, stats)

    cdef int chunk_accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                                  const double* weights, double* stats,
                                  double* scratch) noexcept nogil:
        return _accumulate(X, n_rows, self.n_features, self.n_components, weights, stats)

    cdef int chunk_accumulate_hard(self, const double* X, Py_ssize_t n_rows,
                                   const Py_ssize_t* labels, const double* row_weights,
                                   double* one_hot, double* stats,
                                   double* scratch) noexcept nogil:
        return _accumulate_hard(X, n_rows, self.n_features, labels, row_weights, stats)

    cdef int chunk_accumulate_hard_f32(self, const float* X, Py_ssize_t n_rows,
                                       const Py_ssize_t* labels, const double* row_weights,
                                       double* one_hot, double* stats,
                                       double* scratch) noexcept nogil:
        return _accumulate_hard(X, n_rows, self.n_features, labels, row_weights, stats)

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t k, d = self.n_features, S = EMC_KM_SLOT_SIZE(d)
        cdef double stack_tmp[64]
        cdef double* tmp = stack_tmp
        if 2 * d > 64:
            tmp = <double*>malloc(2 * d * sizeof(double))
            if tmp == NULL:
                return
        for k in range(self.n_components):
            _merge_slot(d, into + k * S, other + k * S, tmp)
        if tmp != stack_tmp:
            free(tmp)


# --- the row loops, on float64 or float32 rows (the slots are float64) ------------

cdef int _log_density(KMeansKernel kernel, const floating* X, Py_ssize_t n_rows,
                      double* out, double* scratch) noexcept nogil:
    # scratch: Xc = X - c (n_rows x d, in double), then qn[i] = ||x_i - c||^2
    cdef Py_ssize_t i, j, d = kernel.n_features
    cdef const double* c = &kernel.centre[0]
    cdef double* Xc = scratch
    cdef double* qn = scratch + n_rows * d
    cdef double s, t
    for i in range(n_rows):
        s = 0.0
        for j in range(d):
            t = X[i * d + j] - c[j]
            Xc[i * d + j] = t
            s += t * t
        qn[i] = s
    return kernel._log_density_centred(n_rows, out, scratch)


cdef inline double _add_row(double* slot, const floating* x, double w,
                            Py_ssize_t d) noexcept nogil:
    if floating is float:
        return emc_add_row_f32(slot, x, w, d)
    else:
        return emc_add_row(slot, x, w, d)


cdef int _accumulate(const floating* X, Py_ssize_t n_rows, Py_ssize_t d, Py_ssize_t K,
                     const double* weights, double* stats) noexcept nogil:
    cdef Py_ssize_t i, k, S = EMC_KM_SLOT_SIZE(d)
    cdef double w
    for i in range(n_rows):
        for k in range(K):
            w = weights[i * K + k]
            if w > 0.0:
                _add_row(stats + k * S, X + i * d, w, d)
    return 0


cdef int _accumulate_hard(const floating* X, Py_ssize_t n_rows, Py_ssize_t d,
                          const Py_ssize_t* labels, const double* row_weights,
                          double* stats) noexcept nogil:
    cdef Py_ssize_t i, S = EMC_KM_SLOT_SIZE(d)
    cdef double w
    for i in range(n_rows):
        w = row_weights[i] if row_weights != NULL else 1.0
        if w > 0.0:
            _add_row(stats + labels[i] * S, X + i * d, w, d)
    return 0


cdef void _merge_slot(Py_ssize_t d, double* a, const double* b, double* tmp) noexcept nogil:
    # a <- statistics of the union, about a's reference point (b's if a is empty):
    # the moment merge with b moved to a's reference, the scatter as its trace
    # (SS). tmp: 2 d doubles of scratch.
    cdef Py_ssize_t j
    cdef Py_ssize_t D = EMC_KM_FAR_DIST(d), REF = EMC_KM_REFERENCE(d)
    cdef Py_ssize_t SHIFT = EMC_KM_SHIFT_SUM(d), FAR = EMC_KM_FAR_POINT(d)
    cdef double dd = 0.0
    if b[D] < 0.0:
        return
    if a[D] < 0.0:
        for j in range(EMC_KM_SLOT_SIZE(d)):
            a[j] = b[j]
        return
    emc_merge_moments(d, EMC_SCATTER_TRACE, True, &a[EMC_KM_WEIGHT(d)], &a[REF], &a[SHIFT],
                      &a[EMC_KM_SCATTER(d)], b[EMC_KM_WEIGHT(d)], &b[REF], &b[SHIFT],
                      &b[EMC_KM_SCATTER(d)], tmp)
    for j in range(d):      # |delta|^2, delta = ref_b - ref_a (the merge's shift of b)
        dd += tmp[d + j] * tmp[d + j]
    # farthest points compared about a's reference (b's distance re-measured)
    if dd != 0.0:
        dd = emc_sq_dist(b + FAR, a + REF, d)
    else:
        dd = b[D]
    if dd > a[D]:
        a[D] = dd
        for j in range(d):
            a[FAR + j] = b[FAR + j]

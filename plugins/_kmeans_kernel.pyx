# cython: language_level=3
"""Compiled kernel of the k-means family: the Lloyd step as a CEM pass.

Log-density of the equal-weight, shared-variance spherical Gaussian:

    log p(x | k) = -h ||x - mu_k||^2 + const,   h = 1 / (2 sigma^2),
    const = -d/2 log(2 pi sigma^2)

with the squared distances through the GEMM identity on *centred* data,

    ||x - mu||^2 = ||x~||^2 - 2 x~ . mu~ + ||mu~||^2,   x~ = x - c, mu~ = mu - c,

c the mean of the centres: centring keeps the cancellation proportional to the
spread of the data around the centres, not to their distance from the origin.
One DGEMM per chunk gives all the cross products.

Statistics slot per component k: [W, SS, D, ref (d), s (d), far (d)]:

    W = sum_i w_ik,  s = sum_i w_ik (x_i - ref),  SS = sum_i w_ik ||x_i - ref||^2,
    far = the row farthest from ref among the rows with w_ik > 0, D its squared
    distance (-1 with no rows);

ref is the centre of the pass (the previous iteration's mean), so s is small and
the shifted second moment SS - |s|^2 / W is accurate (never raw E||x||^2 - |mu|^2).
The distances here are exact differences, not the GEMM identity: the statistics,
and through them the M-step and the inertia, carry no cancellation error.
Slots with different references merge by re-shifting exactly.
"""
from libc.math cimport fabs, isfinite, log, M_PI

from emcore.blas cimport gemm_nt
from emcore.kernel cimport (FamilyKernel, TOTAL_EXPECTED_LOG_JOINT, TOTAL_MAGNITUDE,
                            TOTAL_OBJECTIVE)

import numpy as np

cdef extern from *:
    """
    /* Small loops in C with restrict-qualified pointers, so that the compiler
       vectorises them (SSE2 at least, no -march needed). Each keeps a fixed
       order of operations: the same bits on any thread. */
    static inline void emc_centre_fill(const double* restrict X, const double* restrict c,
                                       const double* restrict off, double* restrict Xc,
                                       double* restrict work, Py_ssize_t n, Py_ssize_t d,
                                       Py_ssize_t K) {
        for (Py_ssize_t i = 0; i < n; i++) {
            for (Py_ssize_t j = 0; j < d; j++) Xc[i * d + j] = X[i * d + j] - c[j];
            for (Py_ssize_t k = 0; k < K; k++) work[i * K + k] = off[k];
        }
    }
    static inline Py_ssize_t emc_argmax(const double* restrict row, Py_ssize_t K,
                                        double* restrict value) {
        /* the first index of the maximum (strict '>'); NaN never wins */
        double m = row[0];
        Py_ssize_t best = 0;
        for (Py_ssize_t k = 1; k < K; k++) {
            if (row[k] > m) { m = row[k]; best = k; }
        }
        *value = m;
        return best;
    }
    static inline double emc_shift_add(const double* restrict x, const double* restrict ref,
                                       double* restrict s, double w, Py_ssize_t d) {
        /* s += w (x - ref); returns ||x - ref||^2 summed in two interleaved partial
           sums (even and odd coordinates), then added: a fixed order */
        double d0 = 0.0, d1 = 0.0;
        Py_ssize_t j = 0;
        for (; j + 1 < d; j += 2) {
            double t0 = x[j] - ref[j], t1 = x[j + 1] - ref[j + 1];
            s[j] += w * t0;
            s[j + 1] += w * t1;
            d0 += t0 * t0;
            d1 += t1 * t1;
        }
        if (j < d) {
            double t0 = x[j] - ref[j];
            s[j] += w * t0;
            d0 += t0 * t0;
        }
        return d0 + d1;
    }
    static inline double emc_sq_dist(const double* restrict x, const double* restrict y,
                                     Py_ssize_t d) {
        double d0 = 0.0, d1 = 0.0;
        Py_ssize_t j = 0;
        for (; j + 1 < d; j += 2) {
            double t0 = x[j] - y[j], t1 = x[j + 1] - y[j + 1];
            d0 += t0 * t0;
            d1 += t1 * t1;
        }
        if (j < d) { double t0 = x[j] - y[j]; d0 += t0 * t0; }
        return d0 + d1;
    }
    """
    void emc_centre_fill(const double* X, const double* c, const double* off, double* Xc,
                         double* work, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K) noexcept nogil
    Py_ssize_t emc_argmax(const double* row, Py_ssize_t K, double* value) noexcept nogil
    double emc_shift_add(const double* x, const double* ref, double* s, double w,
                         Py_ssize_t d) noexcept nogil
    double emc_sq_dist(const double* x, const double* y, Py_ssize_t d) noexcept nogil


# offsets inside one component's slot
cdef enum:
    _W = 0
    _SS = 1
    _D = 2
    _REF = 3


cdef inline double _sq_dist(Py_ssize_t d, const double* a, const double* b) noexcept nogil:
    cdef Py_ssize_t j
    cdef double s = 0.0, t
    for j in range(d):
        t = a[j] - b[j]
        s += t * t
    return s


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
        self.n_stats = k * (3 + 3 * d)
        self.means = means.copy()
        c = means.mean(axis=0)
        self.centre = c
        self.centred_means = means - c
        self.mean_sq_norms = np.einsum("kj,kj->k", means - c, means - c)
        self.variance = variance
        self.h = 0.5 / variance
        self.const = -0.5 * d * log(2.0 * M_PI * variance)
        self.offsets = self.const - self.h * np.asarray(self.mean_sq_norms)
        self.fused_hard_step = True

    def __reduce__(self):
        return (KMeansKernel, (np.asarray(self.means), self.variance))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        return n_rows * self.n_features + max(n_rows, self.n_components)

    cdef inline void _centre_rows(self, const double* X, Py_ssize_t n_rows, double* Xc,
                                  double* qn) noexcept nogil:
        # Xc = X - c, qn[i] = ||x_i - c||^2
        cdef Py_ssize_t i, j, d = self.n_features
        cdef const double* c = &self.centre[0]
        cdef double s, t
        for i in range(n_rows):
            s = 0.0
            for j in range(d):
                t = X[i * d + j] - c[j]
                Xc[i * d + j] = t
                s += t * t
            qn[i] = s

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t i, k, K = self.n_components
        cdef double* Xc = scratch
        cdef double* qn = scratch + n_rows * self.n_features
        cdef double s, h = self.h
        self._centre_rows(X, n_rows, Xc, qn)
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
        # Lloyd's E-step and the accumulation in one sweep. The argmax needs only
        # score_ik = 2h x~.mu~_k + (const - h ||mu~_k||^2 + log pi_k): work is filled
        # with the offsets and the DGEMM adds the products to them (beta = 1). The
        # row's value f_i = log pi_z + const - h ||x_i - mu_z||^2 then comes from
        # the exact difference to the chosen centre, not from the GEMM identity.
        cdef Py_ssize_t i, j, k, best, d = self.n_features, K = self.n_components
        cdef Py_ssize_t S = 3 + 3 * d
        cdef double* Xc = scratch
        cdef double* off = scratch + n_rows * d
        cdef const double* c = &self.centre[0]
        cdef const double* mu
        cdef const double* x
        cdef double* row
        cdef double m, a, f, w, t, dist, h = self.h
        for k in range(K):
            off[k] = self.offsets[k] + log_weights[k]
        emc_centre_fill(X, c, off, Xc, work, n_rows, d, K)
        gemm_nt(n_rows, K, d, 2.0 * h, Xc, &self.centred_means[0, 0], 1.0, work)
        for i in range(n_rows):
            best = emc_argmax(work + i * K, K, &m)   # ties: the lowest index
            if not isfinite(m):
                return <int>(i + 1)
            labels[i] = best
            x = X + i * d
            w = row_weights[i] if row_weights != NULL else 1.0
            if stats != NULL and w > 0.0:
                dist = self._add_row(stats + best * S, x, w)
            else:
                dist = emc_sq_dist(x, &self.means[best, 0], d)
            f = (self.const + log_weights[best]) - h * dist
            row_value[i] = f
            if w != 0.0:
                totals[TOTAL_OBJECTIVE] += w * f
                totals[TOTAL_EXPECTED_LOG_JOINT] += w * f
                totals[TOTAL_MAGNITUDE] += w * (2.0 * fabs(f))
        return 0

    cdef void clear_stats(self, double* stats) noexcept nogil:
        cdef Py_ssize_t k, j, d = self.n_features, S = 3 + 3 * d
        cdef double* slot
        for k in range(self.n_components):
            slot = stats + k * S
            slot[_W] = 0.0
            slot[_SS] = 0.0
            slot[_D] = -1.0
            for j in range(d):
                slot[_REF + j] = self.means[k, j]
                slot[_REF + d + j] = 0.0
                slot[_REF + 2 * d + j] = 0.0

    cdef inline double _add_row(self, double* slot, const double* x, double w) noexcept nogil:
        # adds row x with weight w to the slot; returns ||x - ref||^2
        cdef Py_ssize_t j, d = self.n_features
        cdef double dist = emc_shift_add(x, slot + _REF, slot + _REF + d, w, d)
        slot[_W] += w
        slot[_SS] += w * dist
        if dist > slot[_D]:      # strict: the first such row in row order wins
            slot[_D] = dist
            for j in range(d):
                slot[_REF + 2 * d + j] = x[j]
        return dist

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t i, k, d = self.n_features, K = self.n_components, S = 3 + 3 * d
        cdef double w
        for i in range(n_rows):
            for k in range(K):
                w = weights[i * K + k]
                if w > 0.0:
                    self._add_row(stats + k * S, X + i * d, w)
        return 0

    cdef int chunk_accumulate_hard(self, const double* X, Py_ssize_t n_rows,
                                   const Py_ssize_t* labels, const double* row_weights,
                                   double* one_hot, double* stats,
                                   double* scratch) noexcept nogil:
        cdef Py_ssize_t i, d = self.n_features, S = 3 + 3 * self.n_features
        cdef double w
        for i in range(n_rows):
            w = row_weights[i] if row_weights != NULL else 1.0
            if w > 0.0:
                self._add_row(stats + labels[i] * S, X + i * d, w)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t k, d = self.n_features, S = 3 + 3 * d
        for k in range(self.n_components):
            _merge_slot(d, into + k * S, other + k * S)


cdef void _merge_slot(Py_ssize_t d, double* a, const double* b) noexcept nogil:
    # a <- statistics of the union, about a's reference point (b's if a is empty).
    # Re-shifting b by delta = ref_b - ref_a:  s_b' = s_b + W_b delta,
    # SS_b' = SS_b + 2 delta . s_b + W_b |delta|^2 (exact; delta = 0 within a pass).
    cdef Py_ssize_t j
    cdef double delta, cross = 0.0, dd = 0.0, Wb = b[_W]
    if b[_D] < 0.0:
        return
    if a[_D] < 0.0:
        for j in range(3 + 3 * d):
            a[j] = b[j]
        return
    for j in range(d):
        delta = b[_REF + j] - a[_REF + j]
        cross += delta * b[_REF + d + j]
        dd += delta * delta
        a[_REF + d + j] += b[_REF + d + j] + Wb * delta
    a[_W] += Wb
    a[_SS] += b[_SS] + 2.0 * cross + Wb * dd
    # farthest points compared about a's reference (b's distance re-measured)
    if dd != 0.0:
        dd = _sq_dist(d, b + _REF + 2 * d, a + _REF)
    else:
        dd = b[_D]
    if dd > a[_D]:
        a[_D] = dd
        for j in range(d):
            a[_REF + 2 * d + j] = b[_REF + 2 * d + j]

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
from libc.math cimport log, M_PI

from emcore.blas cimport gemm_nt
from emcore.kernel cimport FamilyKernel

import numpy as np

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

    def __reduce__(self):
        return (KMeansKernel, (np.asarray(self.means), self.variance))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        return n_rows * self.n_features + n_rows

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t i, j, k, d = self.n_features, K = self.n_components
        cdef double* Xc = scratch
        cdef double* qn = scratch + n_rows * d
        cdef double s, t, h = self.h, two_h = 2.0 * self.h
        cdef const double* c = &self.centre[0]
        for i in range(n_rows):
            s = 0.0
            for j in range(d):
                t = X[i * d + j] - c[j]
                Xc[i * d + j] = t
                s += t * t
            qn[i] = s
        # out = 2h Xc @ mu~.T, then + (-h ||x~||^2) + (const - h ||mu~||^2)
        gemm_nt(n_rows, K, d, two_h, Xc, &self.centred_means[0, 0], out)
        for i in range(n_rows):
            s = -h * qn[i]
            for k in range(K):
                out[i * K + k] = out[i * K + k] + (s + self.offsets[k])
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

    cdef inline void _add_row(self, double* slot, const double* x, double w) noexcept nogil:
        cdef Py_ssize_t j, d = self.n_features
        cdef double t, dist = 0.0
        cdef double* ref = slot + _REF
        cdef double* s = slot + _REF + d
        for j in range(d):
            t = x[j] - ref[j]
            s[j] += w * t
            dist += t * t
        slot[_W] += w
        slot[_SS] += w * dist
        if dist > slot[_D]:      # strict: the first such row in row order wins
            slot[_D] = dist
            for j in range(d):
                slot[_REF + 2 * d + j] = x[j]

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

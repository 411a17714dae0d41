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
plus the residual terms). Never raw E[xx^T] - mu mu^T.
"""
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from emcore.blas cimport gemv_t, row_sq_norms, syrk_t, trmm_right_upper
from emcore.kernel cimport FamilyKernel

import numpy as np


cdef inline void _reshift(Py_ssize_t d, double W, double* r, double* S,
                          const double* delta) noexcept nogil:
    # moments about c -> moments about c - delta:  r += W delta,
    # S += r delta^T + delta r^T + W delta delta^T  (with the old r)
    cdef Py_ssize_t j, l
    for j in range(d):
        for l in range(d):
            S[j * d + l] += r[j] * delta[l] + delta[j] * r[l] + W * delta[j] * delta[l]
    for j in range(d):
        r[j] += W * delta[j]


cdef inline void _merge_slot(Py_ssize_t d, double* into, const double* other,
                             double* tmp) noexcept nogil:
    # into, other: [W, c (d), r (d), S (d*d)]; into <- moments of the union.
    # tmp: 2 d doubles of scratch.
    cdef double Wa = into[0], Wb = other[0], W, f, c
    cdef Py_ssize_t j, l
    cdef double* ca = into + 1
    cdef double* ra = into + 1 + d
    cdef double* Sa = into + 1 + 2 * d
    cdef const double* cb = other + 1
    cdef const double* rb = other + 1 + d
    cdef const double* Sb = other + 1 + 2 * d
    cdef double* da = tmp
    cdef double* db = tmp + d
    if Wb <= 0.0:
        return
    if Wa <= 0.0:
        for j in range(1 + 2 * d + d * d):
            into[j] = other[j]
        return
    W = Wa + Wb
    f = Wb / W
    # New reference point c (a double, stored as is), then the shifts against it:
    # da = ca - c and db = cb - c are exact when the points are close (Sterbenz).
    for j in range(d):
        c = ca[j] + f * (cb[j] - ca[j])
        da[j] = ca[j] - c
        db[j] = cb[j] - c
        ca[j] = c
    _reshift(d, Wa, ra, Sa, da)
    for j in range(d):
        for l in range(d):
            Sa[j * d + l] += (Sb[j * d + l] + rb[j] * db[l] + db[j] * rb[l]
                              + Wb * db[j] * db[l])
    for j in range(d):
        ra[j] += rb[j] + Wb * db[j]
    into[0] = W


cdef class GaussianFullKernel(FamilyKernel):
    """Kernel for fixed means (k, d) and precision Cholesky factors (k, d, d)."""
    cdef const double[:, ::1] means
    cdef const double[:, :, ::1] prec_chol
    cdef double[::1] log_norm   # -d/2 log(2 pi) + sum_j log U_jj, per component

    def __init__(self, means, precisions_cholesky):
        means = np.ascontiguousarray(means, dtype=np.float64)
        prec_chol = np.ascontiguousarray(precisions_cholesky, dtype=np.float64)
        if means.ndim != 2 or prec_chol.shape != (means.shape[0], means.shape[1],
                                                  means.shape[1]):
            raise ValueError("means must be (k, d) and precisions_cholesky (k, d, d)")
        self.n_components = means.shape[0]
        self.n_features = means.shape[1]
        d = self.n_features
        self.n_stats = self.n_components * (1 + 2 * d + d * d)
        self.means = means
        self.prec_chol = prec_chol
        diag = np.diagonal(prec_chol, axis1=1, axis2=2)
        self.log_norm = (-0.5 * d * np.log(2.0 * np.pi)
                         + np.sum(np.log(diag), axis=1)).astype(np.float64)

    def __reduce__(self):
        return (GaussianFullKernel, (np.asarray(self.means), np.asarray(self.prec_chol)))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        cdef Py_ssize_t d = self.n_features
        # Y or D (n_rows x d), then row norms or one chunk slot + merge scratch
        return n_rows * d + max(n_rows, 1 + 4 * d + d * d)

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, K = self.n_components
        cdef Py_ssize_t i, j, k
        cdef double* Y = scratch
        cdef double* q = scratch + n_rows * d
        cdef const double* mu
        cdef double c
        for k in range(K):
            mu = &self.means[k, 0]
            for i in range(n_rows):
                for j in range(d):
                    Y[i * d + j] = X[i * d + j] - mu[j]
            trmm_right_upper(n_rows, d, &self.prec_chol[k, 0, 0], Y)
            row_sq_norms(n_rows, d, Y, q)
            c = self.log_norm[k]
            for i in range(n_rows):
                out[i * K + k] = c - 0.5 * q[i]
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, K = self.n_components
        cdef Py_ssize_t slot = 1 + 2 * d + d * d
        cdef Py_ssize_t i, j, k
        cdef double* D = scratch
        cdef double* chunk = scratch + n_rows * d
        cdef double* c = chunk + 1
        cdef double* r = chunk + 1 + d
        cdef double* S = chunk + 1 + 2 * d
        cdef double* tmp = chunk + slot
        cdef double W, s
        for k in range(K):
            W = 0.0
            for i in range(n_rows):
                W += weights[i * K + k]
            if W <= 0.0:
                continue
            # pass 1: the reference point c, the chunk's weighted mean
            gemv_t(n_rows, d, 1.0 / W, X, weights + k, K, c)
            # pass 2: D = X - c; r = D^T w (the rounding residual of c);
            # S = (sqrt(w) D)^T (sqrt(w) D)
            for i in range(n_rows):
                for j in range(d):
                    D[i * d + j] = X[i * d + j] - c[j]
            gemv_t(n_rows, d, 1.0, D, weights + k, K, r)
            for i in range(n_rows):
                s = sqrt(weights[i * K + k])
                for j in range(d):
                    D[i * d + j] = s * D[i * d + j]
            syrk_t(n_rows, d, D, S)
            chunk[0] = W
            _merge_slot(d, stats + k * slot, chunk, tmp)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, k
        cdef Py_ssize_t slot = 1 + 2 * d + d * d
        cdef double tmp[64]
        cdef double* buf = tmp
        if 2 * d > 64:
            buf = <double*>malloc(2 * d * sizeof(double))
        for k in range(self.n_components):
            _merge_slot(d, into + k * slot, other + k * slot, buf)
        if buf != tmp:
            free(buf)

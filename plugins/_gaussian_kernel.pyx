# cython: language_level=3
"""Compiled kernel of the full-covariance Gaussian family.

Log-density through the Cholesky factor U of the precision (P = U U^T, U upper
triangular, scikit-learn's ``precisions_cholesky_``):

    log N(x | mu, Sigma) = -d/2 log(2 pi) + sum_j log U_jj - 1/2 ||(x - mu) U||^2

with (x - mu) formed before the multiply (no cancellation for offset data).

Statistics slot per component k: [W_k, m_k (d), M_k (d x d)], the centred triple
W = sum_i w_ik, m = sum_i w_ik x_i / W, M = sum_i w_ik (x_i - m)(x_i - m)^T.
Each chunk's triple is computed in two passes over the chunk (in cache) and
merged with the weighted Chan-Golub-LeVeque rule; never raw E[xx^T] - mu mu^T.
"""
from libc.math cimport sqrt

from emcore.blas cimport gemv_t, row_sq_norms, syrk_t, trmm_right_upper
from emcore.kernel cimport FamilyKernel

import numpy as np


cdef inline void _chan_merge(Py_ssize_t d, double* into, const double* other) noexcept nogil:
    # into, other: [W, m (d), M (d*d)]; into <- merge(into, other)
    cdef double Wa = into[0], Wb = other[0], W, f, g
    cdef Py_ssize_t j, l
    cdef double* ma = into + 1
    cdef const double* mb = other + 1
    cdef double* Ma = into + 1 + d
    cdef const double* Mb = other + 1 + d
    if Wb <= 0.0:
        return
    if Wa <= 0.0:
        for j in range(1 + d + d * d):
            into[j] = other[j]
        return
    W = Wa + Wb
    f = Wb / W
    g = Wa * Wb / W
    for j in range(d):
        for l in range(d):
            Ma[j * d + l] += Mb[j * d + l] + g * (mb[j] - ma[j]) * (mb[l] - ma[l])
    for j in range(d):
        ma[j] += f * (mb[j] - ma[j])
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
        self.n_stats = self.n_components * (1 + d + d * d)
        self.means = means
        self.prec_chol = prec_chol
        diag = np.diagonal(prec_chol, axis1=1, axis2=2)
        self.log_norm = (-0.5 * d * np.log(2.0 * np.pi)
                         + np.sum(np.log(diag), axis=1)).astype(np.float64)

    def __reduce__(self):
        return (GaussianFullKernel, (np.asarray(self.means), np.asarray(self.prec_chol)))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        cdef Py_ssize_t d = self.n_features
        # Y (n_rows x d) + row norms / one chunk triple [W, m, M]
        return n_rows * d + max(n_rows, 1 + d + d * d)

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
        cdef Py_ssize_t slot = 1 + d + d * d
        cdef Py_ssize_t i, j, k
        cdef double* D = scratch
        cdef double* triple = scratch + n_rows * d
        cdef double* m = triple + 1
        cdef double W, s
        for k in range(K):
            W = 0.0
            for i in range(n_rows):
                W += weights[i * K + k]
            if W <= 0.0:
                continue
            # pass 1: the chunk's weighted mean
            gemv_t(n_rows, d, 1.0 / W, X, weights + k, K, m)
            # pass 2: centred, sqrt-weighted rows, then M = D^T D
            for i in range(n_rows):
                s = sqrt(weights[i * K + k])
                for j in range(d):
                    D[i * d + j] = s * (X[i * d + j] - m[j])
            syrk_t(n_rows, d, D, triple + 1 + d)
            triple[0] = W
            _chan_merge(d, stats + k * slot, triple)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, k
        cdef Py_ssize_t slot = 1 + d + d * d
        for k in range(self.n_components):
            _chan_merge(d, into + k * slot, other + k * slot)

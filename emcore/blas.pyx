# cython: language_level=3
"""Row-major wrappers over scipy's BLAS/LAPACK (see blas.pxd for the contract).

The ``_py_*`` functions exist only so the test suite can check each wrapper
against numpy; kernels call the ``cdef`` functions.
"""
cimport scipy.linalg.cython_blas as fblas

import numpy as np


cdef void row_sq_norms(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* A,
                       double* out) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double s, v
    for i in range(n_rows):
        s = 0.0
        for j in range(n_cols):
            v = A[i * n_cols + j]
            s += v * v
        out[i] = s


cdef void trmm_right_upper(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* U,
                           double* B) noexcept nogil:
    # Row-major B (n x d) is column-major B.T (d x n); row-major U is column-major
    # U.T, which is lower triangular. (B U).T = U.T B.T: side L, uplo L, no transpose.
    cdef char side = b'L', uplo = b'L', transa = b'N', diag = b'N'
    cdef int m = <int>n_cols, n = <int>n_rows, lda = <int>n_cols, ldb = <int>n_cols
    cdef double alpha = 1.0
    if n_rows == 0 or n_cols == 0:
        return
    fblas.dtrmm(&side, &uplo, &transa, &diag, &m, &n, &alpha, <double*>U, &lda,
                B, &ldb)


cdef void gemv_t(Py_ssize_t n_rows, Py_ssize_t n_cols, double alpha, const double* A,
                 const double* x, Py_ssize_t incx, double* y) noexcept nogil:
    # Row-major A (n x d) is column-major A.T (d x n): y = (A.T) x is trans 'N'.
    cdef char trans = b'N'
    cdef int m = <int>n_cols, n = <int>n_rows, lda = <int>n_cols
    cdef int ix = <int>incx, iy = 1
    cdef double beta = 0.0
    cdef Py_ssize_t j
    if n_rows == 0:
        for j in range(n_cols):
            y[j] = 0.0
        return
    fblas.dgemv(&trans, &m, &n, &alpha, <double*>A, &lda, <double*>x, &ix, &beta,
                y, &iy)


cdef void gemm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t p, double alpha,
                  const double* A, const double* B, double beta, double* C) noexcept nogil:
    # Row-major C = A B.T is column-major C.T (n x m) = B A.T: row-major B (n x p)
    # is column-major B.T (p x n), so op 'T'; row-major A is column-major A.T, 'N'.
    cdef char ta = b'T', tb = b'N'
    cdef int M = <int>n, N = <int>m, K = <int>p, ldb = <int>p, lda = <int>p, ldc = <int>n
    cdef Py_ssize_t i
    if m == 0 or n == 0:
        return
    if p == 0:
        for i in range(m * n):
            C[i] = 0.0 if beta == 0.0 else beta * C[i]
        return
    fblas.dgemm(&ta, &tb, &M, &N, &K, &alpha, <double*>B, &ldb, <double*>A, &lda,
                &beta, C, &ldc)


cdef void syrk_t(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* A,
                 double* C) noexcept nogil:
    # Column-major view of row-major A is A.T (d x n); C = (A.T)(A.T).T, trans 'N'.
    # dsyrk fills the column-major upper triangle = row-major lower; mirror it.
    cdef char uplo = b'U', trans = b'N'
    cdef int n = <int>n_cols, k = <int>n_rows, lda = <int>n_cols, ldc = <int>n_cols
    cdef double alpha = 1.0, beta = 0.0
    cdef Py_ssize_t i, j
    if n_rows == 0:
        for i in range(n_cols * n_cols):
            C[i] = 0.0
        return
    fblas.dsyrk(&uplo, &trans, &n, &k, &alpha, <double*>A, &lda, &beta, C, &ldc)
    for i in range(n_cols):
        for j in range(i + 1, n_cols):
            C[i * n_cols + j] = C[j * n_cols + i]


# --- thin Python entry points, for the wrapper tests only -----------------------

def _py_row_sq_norms(const double[:, ::1] A):
    out = np.empty(A.shape[0])
    cdef double[::1] o = out
    if A.shape[0]:
        row_sq_norms(A.shape[0], A.shape[1], &A[0, 0], &o[0])
    return out


def _py_trmm_right_upper(double[:, ::1] B, const double[:, ::1] U):
    if B.shape[0] and B.shape[1]:
        trmm_right_upper(B.shape[0], B.shape[1], &U[0, 0], &B[0, 0])


def _py_gemv_t(const double[:, ::1] A, const double[::1] x, double alpha=1.0):
    out = np.empty(A.shape[1])
    cdef double[::1] o = out
    gemv_t(A.shape[0], A.shape[1], alpha, &A[0, 0], &x[0], 1, &o[0])
    return out


def _py_syrk_t(const double[:, ::1] A):
    out = np.empty((A.shape[1], A.shape[1]))
    cdef double[:, ::1] o = out
    syrk_t(A.shape[0], A.shape[1], &A[0, 0], &o[0, 0])
    return out


def _py_gemm_nt(const double[:, ::1] A, const double[:, ::1] B, double alpha=1.0,
                double beta=0.0, C=None):
    if A.shape[1] != B.shape[1]:
        raise ValueError("A and B must have the same number of columns")
    out = (np.empty((A.shape[0], B.shape[0])) if C is None
           else np.array(C, dtype=np.float64, order="C", copy=True))
    cdef double[:, ::1] o = out
    if out.size:
        gemm_nt(A.shape[0], B.shape[0], A.shape[1], alpha,
                &A[0, 0] if A.size else NULL, &B[0, 0] if B.size else NULL, beta, &o[0, 0])
    return out

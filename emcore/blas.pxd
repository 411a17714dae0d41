# emcore's one BLAS layer (public: compiled families cimport it).
#
# Every routine takes ROW-MAJOR (C-contiguous) arrays and translates to the
# column-major Fortran BLAS of scipy.linalg.cython_blas / cython_lapack in one
# place, so kernels never juggle transposes. All are `noexcept nogil`.
# Call them only with BLAS limited to one thread when inside a parallel region
# (the engine does that for the chunk loop).

cdef void row_sq_norms(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* A,
                       double* out) noexcept nogil
    # out[i] = sum_j A[i, j]**2

cdef void trmm_right_upper(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* U,
                           double* B) noexcept nogil
    # B <- B @ U, B (n_rows x n_cols), U (n_cols x n_cols) upper triangular

cdef void gemv_t(Py_ssize_t n_rows, Py_ssize_t n_cols, double alpha, const double* A,
                 const double* x, Py_ssize_t incx, double* y) noexcept nogil
    # y <- alpha * A.T @ x, A (n_rows x n_cols), x strided by incx, y (n_cols,)

cdef void syrk_t(Py_ssize_t n_rows, Py_ssize_t n_cols, const double* A,
                 double* C) noexcept nogil
    # C <- A.T @ A, A (n_rows x n_cols), C (n_cols x n_cols), both triangles filled

cdef void gemm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t p, double alpha,
                  const double* A, const double* B, double beta, double* C) noexcept nogil
    # C <- alpha * A @ B.T + beta * C, A (m x p), B (n x p), C (m x n); beta = 0
    # ignores C's contents (NaN included)

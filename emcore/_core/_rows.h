/* The chunk loop's row loops (emcore/_core/_passes.pyx). */
#ifndef EMCORE_CORE_ROWS_H
#define EMCORE_CORE_ROWS_H

/* The pass's per-row loops over an n x K array m (row-major), in C with
   restrict so that the compiler vectorises them along k; each entry's
   operations and each sum's order are those of the plain loops (rows in
   order). m[i, k] += v[k]; m[i, k] *= w[i]; out[k] += sum_i m[i, k]. */
static void emc_add_row_vector(double* restrict m, const double* restrict v,
                               Py_ssize_t n, Py_ssize_t K) {
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t k = 0; k < K; k++) m[i * K + k] = m[i * K + k] + v[k];
}
static void emc_scale_rows(double* restrict m, const double* restrict w,
                           Py_ssize_t n, Py_ssize_t K) {
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t k = 0; k < K; k++) m[i * K + k] = m[i * K + k] * w[i];
}
static void emc_sum_rows(const double* restrict m, double* restrict out,
                         Py_ssize_t n, Py_ssize_t K) {
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t k = 0; k < K; k++) out[k] += m[i * K + k];
}

#endif

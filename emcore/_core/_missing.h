/* emcore/_core/_missing.h: the missing-value pass's row loops
   (emcore/_core/_missing_kernel.pyx), compiled twice (EMC_CLONES: an AVX2/FMA
   clone chosen at load time, and baseline x86-64), as the other kernels' loops. */
#ifndef EMCORE_MISSING_H
#define EMCORE_MISSING_H
#include <math.h>
#include <Python.h>   /* Py_ssize_t */
#include "emcore/vec4.h"
#include "emcore/vexp.h"

/* out[i] = exp(x[i]) for x[i] <= 0 */
EMC_ALWAYS_INLINE void emc_miss_exp(const double* x, Py_ssize_t n, double* out)
{
    Py_ssize_t i = 0;
#if EMC_GNUC
    for (; i + 4 <= n; i += 4) emc_store(out + i, emc_exp_nonpos(emc_load(x + i)));
#endif
    for (; i < n; i++) out[i] = exp(x[i]);
}

/* D (n x d) = X0 - mu, row by row */
EMC_CLONES
static void emc_miss_centre(const double* restrict X0, const double* restrict mu,
                            Py_ssize_t n, Py_ssize_t d, double* restrict D)
{
    Py_ssize_t i, j;
    for (i = 0; i < n; i++)
        for (j = 0; j < d; j++) D[i * d + j] = X0[i * d + j] - mu[j];
}

/* out[i] = ||Y[i, :]||^2 */
EMC_CLONES
static void emc_miss_row_sq(const double* Y, Py_ssize_t n, Py_ssize_t d, double* out)
{
    Py_ssize_t i, j;
    for (i = 0; i < n; i++) {
        const double* y = Y + i * d;
        emc_v4 acc = emc_set1(0.0);
        double s;
        for (j = 0; j + 4 <= d; j += 4) {
            emc_v4 v = emc_load(y + j);
            EMC_FMA(acc, v, v);
        }
        s = EMC_HSUM(acc);
        for (; j < d; j++) s += y[j] * y[j];
        out[i] = s;
    }
}

/* B[i, :] = w[i * stride] D[i, :], racc += sum_i B[i, :] */
EMC_CLONES
static void emc_miss_weigh(const double* restrict D, const double* restrict w,
                           Py_ssize_t stride, Py_ssize_t n, Py_ssize_t d,
                           double* restrict B, double* restrict racc)
{
    Py_ssize_t i, j;
    for (i = 0; i < n; i++) {
        double wi = w[i * stride];
        for (j = 0; j < d; j++) {
            double b = wi * D[i * d + j];
            B[i * d + j] = b;
            racc[j] += b;
        }
    }
}

/* Per row of a (n x K): lse[i] = log sum_k exp a_ik, lr = a - lse computed as
   (a - max) - log sum exp(a - max), r = exp(lr); tmp (K). Returns 0, or i + 1
   for the first row whose every a_ik is -inf or NaN (or whose max is +inf). */
EMC_CLONES
static Py_ssize_t emc_miss_posterior(const double* a, Py_ssize_t n, Py_ssize_t K,
                                     double* lr, double* r, double* lse, double* tmp)
{
    Py_ssize_t i, k;
    for (i = 0; i < n; i++) {
        const double* ai = a + i * K;
        double mx = -INFINITY, tot = 0.0, lt;
        for (k = 0; k < K; k++) if (ai[k] > mx) mx = ai[k];
        if (!(mx > -INFINITY && mx < INFINITY)) return i + 1;
        for (k = 0; k < K; k++) tmp[k] = ai[k] - mx;
        emc_miss_exp(tmp, K, r + i * K);
        for (k = 0; k < K; k++) tot += r[i * K + k];
        lt = log(tot);
        for (k = 0; k < K; k++) lr[i * K + k] = tmp[k] - lt;
        emc_miss_exp(lr + i * K, K, r + i * K);
        lse[i] = mx + lt;
    }
    return 0;
}

/* sum_i x[i] y[i], four lanes then the tail */
EMC_ALWAYS_INLINE double emc_miss_dot(const double* x, const double* y, Py_ssize_t n)
{
    Py_ssize_t i;
    emc_v4 acc = emc_set1(0.0);
    double s;
    for (i = 0; i + 4 <= n; i += 4) EMC_FMA(acc, emc_load(x + i), emc_load(y + i));
    s = EMC_HSUM(acc);
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

/* --- a run of rows with the same missing coordinates (|m| x |m| algebra) ------------ */

/* A = L L^T, L lower (row-major m x m, upper part zeroed) with its diagonal stored
   inverted (1 / L_jj); *log_det = log det A = log prod_j L_jj^2. 0, or 1 if A is
   not numerically positive definite. */
EMC_ALWAYS_INLINE int emc_miss_cholesky(const double* A, double* L, int m, double* log_det)
{
    int i, j, l;
    double s, r, prod = 1.0, logs = 0.0;
    for (i = 0; i < m * m; i++) L[i] = 0.0;
    for (j = 0; j < m; j++) {
        s = A[j * m + j];
        for (l = 0; l < j; l++) s -= L[j * m + l] * L[j * m + l];
        if (!(s > 0.0)) return 1;
        prod *= s;
        if (!(prod > 1e-250 && prod < 1e250)) {   /* one log per few factors */
            logs += log(prod);
            prod = 1.0;
        }
        r = 1.0 / sqrt(s);
        L[j * m + j] = r;
        for (i = j + 1; i < m; i++) {
            s = A[i * m + j];
            for (l = 0; l < j; l++) s -= L[i * m + l] * L[j * m + l];
            L[i * m + j] = s * r;
        }
    }
    *log_det = logs + log(prod);
    return 0;
}

/* x <- (L L^T)^-1 x: forward then back substitution (L's diagonal inverted) */
EMC_ALWAYS_INLINE void emc_miss_solve(const double* L, double* x, int m)
{
    int i, l;
    double s;
    for (i = 0; i < m; i++) {
        s = x[i];
        for (l = 0; l < i; l++) s -= L[i * m + l] * x[l];
        x[i] = s * L[i * m + i];
    }
    for (i = m - 1; i >= 0; i--) {
        s = x[i];
        for (l = i + 1; l < m; l++) s -= L[l * m + i] * x[l];
        x[i] = s * L[i * m + i];
    }
}

/* For n rows sharing the missing coordinates idx[0..m) (m >= 1), component with the
   upper Cholesky factor U (d x d) of its precision: A = P_mm = U_m U_m^T (row j of
   U is zero left of column j), its factor and C = A^-1 into LC (L: m x m, then C:
   m x m), log det A into *log_det; then for each row i, with Y[i] = (x0 - mu) U
   and D[i] = x0 - mu (0 at the missing coordinates): delta = -A^-1 (Y[i] U_m^T),
   D[i, idx] = delta (the conditional mean's deviation), Y[i] += delta U_m (so
   Y[i] = (xhat - mu) U). A (m x m) and g (m) are scratch. 0, or 1 if A is not
   numerically positive definite. */
EMC_CLONES
static int emc_miss_run(const double* U, Py_ssize_t d, const int* idx, int m,
                        Py_ssize_t n, double* Y, double* D, double* LC, double* log_det,
                        double* A, double* g)
{
    int a, b, c;
    Py_ssize_t i, l;
    double* L = LC;
    double* C = LC + m * m;
    for (a = 0; a < m; a++) {
        const double* ua = U + idx[a] * d;
        for (b = 0; b <= a; b++) {
            const double* ub = U + idx[b] * d;
            /* idx[a] >= idx[b]: row idx[a] of U is zero left of idx[a] */
            double acc = emc_miss_dot(ua + idx[a], ub + idx[a], d - idx[a]);
            A[a * m + b] = acc;
            A[b * m + a] = acc;
        }
    }
    if (emc_miss_cholesky(A, L, m, log_det)) return 1;
    for (c = 0; c < m; c++) {                 /* C = A^-1, column by column */
        for (a = 0; a < m; a++) g[a] = a == c ? 1.0 : 0.0;
        emc_miss_solve(L, g, m);
        for (a = 0; a < m; a++) C[a * m + c] = g[a];
    }
    for (a = 0; a < m; a++)
        for (c = a + 1; c < m; c++) {
            C[a * m + c] = 0.5 * (C[a * m + c] + C[c * m + a]);
            C[c * m + a] = C[a * m + c];
        }
    for (i = 0; i < n; i++) {
        double* y = Y + i * d;
        double* dd = D + i * d;
        for (a = 0; a < m; a++) {
            const double* ua = U + idx[a] * d;
            g[a] = -emc_miss_dot(y + idx[a], ua + idx[a], d - idx[a]);
        }
        emc_miss_solve(L, g, m);
        for (a = 0; a < m; a++) {
            const double* ua = U + idx[a] * d;
            double ga = g[a];
            dd[idx[a]] = ga;
            for (l = idx[a]; l < d; l++) y[l] += ga * ua[l];
        }
    }
    return 0;
}

#endif

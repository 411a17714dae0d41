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
static void emc_miss_centre(const double* X0, const double* mu, Py_ssize_t n,
                            Py_ssize_t d, double* D)
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
static void emc_miss_weigh(const double* D, const double* w, Py_ssize_t stride,
                           Py_ssize_t n, Py_ssize_t d, double* B, double* racc)
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

#endif

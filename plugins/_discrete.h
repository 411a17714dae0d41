/* The loops of the discrete families' kernels (plugins/_discrete_kernel.pyx,
   whose docstring describes the pattern tables). */
#ifndef EMCORE_DISCRETE_H
#define EMCORE_DISCRETE_H
#include <math.h>
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES */

/* The pattern index of each group of one row x (d codes stored as doubles), into
   idx[g] (offset of the group's first pattern included). Returns 0 if every
   code is an integer in [0, L_j), 1 otherwise (NaN included). Group g covers
   features first[g] .. first[g + 1] - 1; stride[j] is the product of the levels
   of the group's earlier features. */
EMC_ALWAYS_INLINE int emdc_patterns(const double* x, Py_ssize_t G, const Py_ssize_t* first,
                                    const double* top, const int* stride,
                                    const Py_ssize_t* offset, Py_ssize_t* idx)
{
    /* branch-free, in 32-bit integers (the loop over a group's features
       vectorises: truncation to int32 and integer sums are vector operations,
       a sum of doubles in order is not); levels < 2^31 and patterns per group
       below MAX_PATTERNS keep every value exact */
    int bad = 0;
    for (Py_ssize_t g = 0; g < G; g++) {
        int s = 0;
        for (Py_ssize_t j = first[g]; j < first[g + 1]; j++) {
            double v = x[j];
            double t = v > 0.0 ? v : 0.0;                  /* NaN -> 0 */
            t = t < top[j] ? t : top[j];                   /* top = L_j - 1 */
            int c = (int)t;
            bad |= (double)c != v;                         /* outside, non-integer, NaN */
            s += c * stride[j];
        }
        idx[g] = offset[g] + s;
    }
    return bad;
}

/* out[i, k] = sum_g T[idx_g(x_i), k] for k < K (T: patterns x Kp, the log
   probability of each group's pattern under each component), -inf for a row
   with a code outside its feature's levels. acc: Kp doubles; idx: n x G, the
   rows' pattern indices, kept for emdc_accumulate (-1 first for a bad row). */
EMC_CLONES
static void emdc_log_density(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                             Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                             const double* top, const int* stride,
                             const Py_ssize_t* offset, const double* T, double* acc,
                             Py_ssize_t* idx, double* out)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t* ix = idx + i * G;
        int bad = emdc_patterns(X + i * d, G, first, top, stride, offset, ix);
        double* o = out + i * K;
        if (bad) {
            ix[0] = -1;
            for (Py_ssize_t k = 0; k < K; k++) o[k] = -INFINITY;
            continue;
        }
        for (Py_ssize_t v = 0; v < Kp; v += 4) {
            emc_v4 a = emc_load(T + ix[0] * Kp + v);
            for (Py_ssize_t g = 1; g < G; g++)
                a = EMC_ADD(a, emc_load(T + ix[g] * Kp + v));
            emc_store(acc + v, a);
        }
        for (Py_ssize_t k = 0; k < K; k++) o[k] = acc[k];
    }
}

/* A[idx_g(x_i), k] += w[i, k] for every group g (A: patterns x Kp); w is n x K,
   copied into wrow (Kp, zero padded). idx (n x G): the indices emdc_log_density
   kept for these rows if cached, else room to compute them. Returns 0, or 1 +
   the first row with a code outside its levels and a positive weight (such a
   row has no density). */
EMC_CLONES
static Py_ssize_t emdc_accumulate(const double* X, Py_ssize_t n, Py_ssize_t d,
                                  Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G,
                                  const Py_ssize_t* first, const double* top,
                                  const int* stride, const Py_ssize_t* offset,
                                  const double* w, double* wrow, Py_ssize_t* idx,
                                  int cached, double* A)
{
    for (Py_ssize_t k = K; k < Kp; k++) wrow[k] = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t* ix = idx + i * G;
        int bad = cached ? ix[0] < 0
                         : emdc_patterns(X + i * d, G, first, top, stride, offset, ix);
        int any = 0;
        for (Py_ssize_t k = 0; k < K; k++) {
            wrow[k] = w[i * K + k];
            any |= wrow[k] != 0.0;
        }
        if (!any) continue;
        if (bad) return 1 + i;
        for (Py_ssize_t g = 0; g < G; g++) {
            double* a = A + ix[g] * Kp;
            for (Py_ssize_t v = 0; v < Kp; v += 4)
                emc_store(a + v, EMC_ADD(emc_load(a + v), emc_load(wrow + v)));
        }
    }
    return 0;
}

#endif

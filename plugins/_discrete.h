/* The loops of the discrete families' kernels (plugins/_discrete_kernel.pyx,
   whose docstring describes the pattern tables). */
#ifndef EMCORE_DISCRETE_H
#define EMCORE_DISCRETE_H
#include <math.h>
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES */
#include "emcore/vexp.h"   /* emc_exp_nonpos */

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

/* emdc_patterns when every feature has 2 levels (bernoulli, categorical with 2
   levels): the groups are features 8g .. 8g + 7 (pattern_groups), stride[j] =
   2^(j - 8g), so group g's pattern index is byte g of the row's bit string
   (bit j = code j). A code is valid if it is exactly 0.0 or 1.0 (-0.0
   included, as emdc_patterns takes it). The bits are formed 64 features at a
   time, four codes per vector compare (x == 1 gives the bits, x == 0 | x == 1
   the check), with no per-group loop: a handful of vector operations per row
   instead of a clamp, a truncation and a multiply-add per code. The same
   indices and the same verdict as emdc_patterns. */
EMC_ALWAYS_INLINE int emdc_patterns_binary(const double* x, Py_ssize_t d,
                                           const Py_ssize_t* offset, Py_ssize_t* idx)
{
    int bad = 0;
#if EMC_GNUC
    const emc_v4 one = emc_set1(1.0), zero = emc_set1(0.0);
    const emc_m4 place = {1, 2, 4, 8};
    emc_m4 ok = {-1, -1, -1, -1};
#endif
    for (Py_ssize_t w0 = 0; w0 < d; w0 += 64) {
        Py_ssize_t w1 = w0 + 64 < d ? w0 + 64 : d, j = w0;
        unsigned long long s = 0;
#if EMC_GNUC
        emc_m4 sv = {0, 0, 0, 0};
        for (; j + 4 <= w1; j += 4) {
            emc_v4 v = emc_load(x + j);
            emc_m4 is_one = (emc_m4)(v == one);
            ok &= is_one | (emc_m4)(v == zero);
            sv |= is_one & (place << (j - w0));
        }
        s = (unsigned long long)((sv[0] | sv[1]) | (sv[2] | sv[3]));
#endif
        for (; j < w1; j++) {
            double v = x[j];
            s |= (unsigned long long)(v == 1.0) << (j - w0);
            bad |= !(v == 1.0 || v == 0.0);
        }
        for (Py_ssize_t g = w0 / 8; g * 8 < w1; g++)
            idx[g] = offset[g] + (Py_ssize_t)((s >> (8 * g - w0)) & 255u);
    }
#if EMC_GNUC
    bad |= !((ok[0] & ok[1]) & (ok[2] & ok[3]));
#endif
    return bad;
}

/* The pattern indices of row x by the binary path or the general one. */
EMC_ALWAYS_INLINE int emdc_row_patterns(const double* x, Py_ssize_t d, Py_ssize_t G,
                                        const Py_ssize_t* first, const double* top,
                                        const int* stride, const Py_ssize_t* offset,
                                        int binary, Py_ssize_t* idx)
{
    return binary ? emdc_patterns_binary(x, d, offset, idx)
                  : emdc_patterns(x, G, first, top, stride, offset, idx);
}

/* The pattern indices of a row from its precomputed group codes (codes: G
   bytes, the pattern index of each group within the group, as emdc_patterns
   computes it, stored once per fit by CodesKernel's codes path): idx[g] =
   offset[g] + codes[g]. The row was checked when its codes were made. */
EMC_ALWAYS_INLINE void emdc_codes_patterns(const unsigned char* codes, Py_ssize_t G,
                                           const Py_ssize_t* offset, Py_ssize_t* idx)
{
    for (Py_ssize_t g = 0; g < G; g++) idx[g] = offset[g] + (Py_ssize_t)codes[g];
}

/* One row's sum of its groups' table rows into o (Kp doubles): nv vectors of
   4, a constant where the callers below pass one (so the loop over them is
   unrolled and the sums stay in registers). */
EMC_ALWAYS_INLINE void emdc_sum_tables(const double* T, Py_ssize_t Kp, Py_ssize_t nv,
                                       Py_ssize_t G, const Py_ssize_t* ix, double* o)
{
    for (Py_ssize_t v = 0; v < nv; v++) {
        emc_v4 a = emc_load(T + ix[0] * Kp + 4 * v);
        for (Py_ssize_t g = 1; g < G; g++)
            a = EMC_ADD(a, emc_load(T + ix[g] * Kp + 4 * v));
        emc_store(o + 4 * v, a);
    }
}

/* out[i, k] = sum_g T[idx_g(x_i), k] for k < K (T: patterns x Kp, the log
   probability of each group's pattern under each component), -inf for a row
   with a code outside its feature's levels. acc: Kp doubles; idx: n x G, the
   rows' pattern indices, kept for emdc_accumulate (-1 first for a bad row).
   A row's Kp sums are stored whole into out at the row's place when they fit
   in out: the Kp - K padding lanes land on the next row's first entries,
   which that row overwrites next (rows go in order); the last rows go
   through acc. With codes (n x G bytes, emdc_codes_patterns) the rows are not
   read and idx is not kept: its first G entries hold the current row's. */
EMC_ALWAYS_INLINE void emdc_log_density_rows(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, double* acc, Py_ssize_t* idx, double* out)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t* ix = codes ? idx : idx + i * G;
        int bad = 0;
        if (codes)
            emdc_codes_patterns(codes + i * G, G, offset, ix);
        else
            bad = emdc_row_patterns(X + i * d, d, G, first, top, stride, offset, binary, ix);
        double* o = out + i * K;
        if (bad) {
            ix[0] = -1;
            for (Py_ssize_t k = 0; k < K; k++) o[k] = -INFINITY;
            continue;
        }
        int whole = i * K + Kp <= n * K;
        double* dst = whole ? o : acc;
        if (Kp == 4) emdc_sum_tables(T, 4, 1, G, ix, dst);
        else if (Kp == 8) emdc_sum_tables(T, 8, 2, G, ix, dst);
        else emdc_sum_tables(T, Kp, Kp / 4, G, ix, dst);
        if (!whole)
            for (Py_ssize_t k = 0; k < K; k++) o[k] = acc[k];
    }
}

/* (the row loop is compiled once per path, so that each path's constants
   stay out of it; codes: NULL, or the chunk's precomputed group codes) */
EMC_CLONES
static void emdc_log_density(const double* X, const unsigned char* codes, Py_ssize_t n,
                             Py_ssize_t d, Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G,
                             const Py_ssize_t* first, const double* top,
                             const int* stride, const Py_ssize_t* offset, int binary,
                             const double* T, double* acc, Py_ssize_t* idx, double* out)
{
    if (codes)
        emdc_log_density_rows(NULL, codes, n, d, K, Kp, G, first, top, stride, offset, 0,
                              T, acc, idx, out);
    else if (binary)
        emdc_log_density_rows(X, NULL, n, d, K, Kp, G, first, top, stride, offset, 1, T,
                              acc, idx, out);
    else
        emdc_log_density_rows(X, NULL, n, d, K, Kp, G, first, top, stride, offset, 0, T,
                              acc, idx, out);
}

/* A[p, :] += wrow (nv vectors of 4) for each of the row's G patterns p. */
EMC_ALWAYS_INLINE void emdc_add_tables(double* A, Py_ssize_t Kp, Py_ssize_t nv,
                                       Py_ssize_t G, const Py_ssize_t* ix,
                                       const double* wrow)
{
    for (Py_ssize_t g = 0; g < G; g++) {
        double* a = A + ix[g] * Kp;
        for (Py_ssize_t v = 0; v < nv; v++)
            emc_store(a + 4 * v, EMC_ADD(emc_load(a + 4 * v), emc_load(wrow + 4 * v)));
    }
}

/* A[idx_g(x_i), k] += w[i, k] for every group g (A: patterns x Kp); w is n x K,
   copied into wrow (Kp, zero padded). idx (n x G): the indices emdc_log_density
   kept for these rows if cached, else room to compute them; with codes (n x G
   bytes) the indices come from them (cached and X unused). Returns 0, or 1 +
   the first row with a code outside its levels and a positive weight (such a
   row has no density). */
EMC_CLONES
static Py_ssize_t emdc_accumulate(const double* X, const unsigned char* codes,
                                  Py_ssize_t n, Py_ssize_t d,
                                  Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G,
                                  const Py_ssize_t* first, const double* top,
                                  const int* stride, const Py_ssize_t* offset, int binary,
                                  const double* w, double* wrow, Py_ssize_t* idx,
                                  int cached, double* A)
{
    for (Py_ssize_t k = K; k < Kp; k++) wrow[k] = 0.0;
#if EMC_GNUC
    /* the last vector's lanes k >= K: zero (the row's weights are read whole,
       with the next row's first ones in those lanes, where they fit in w) */
    emc_m4 tail;
    for (int l = 0; l < 4; l++) tail[l] = Kp - 4 + l < K ? -1 : 0;
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t* ix = codes ? idx : idx + i * G;
        int bad = 0;
        if (codes)
            emdc_codes_patterns(codes + i * G, G, offset, ix);
        else
            bad = cached ? ix[0] < 0
                         : emdc_row_patterns(X + i * d, d, G, first, top, stride, offset,
                                             binary, ix);
        if (bad) {
            /* a row without density is an error only if it has weight */
            for (Py_ssize_t k = 0; k < K; k++)
                if (w[i * K + k] != 0.0) return 1 + i;
            continue;
        }
#if EMC_GNUC
        if (i * K + Kp <= n * K) {
            const double* wi = w + i * K;
            for (Py_ssize_t v = 0; v + 4 < Kp; v += 4) emc_store(wrow + v, emc_load(wi + v));
            emc_store(wrow + Kp - 4, EMC_SEL(tail, emc_load(wi + Kp - 4), emc_set1(0.0)));
        } else
#endif
        for (Py_ssize_t k = 0; k < K; k++) wrow[k] = w[i * K + k];
        /* zero weights add +0.0: the sums are those of the rows with weight */
        if (Kp == 4) emdc_add_tables(A, 4, 1, G, ix, wrow);
        else if (Kp == 8) emdc_add_tables(A, 8, 2, G, ix, wrow);
        else emdc_add_tables(A, Kp, Kp / 4, G, ix, wrow);
    }
    return 0;
}

/* The group codes of n rows into codes (n x G bytes): emdc_row_patterns's
   indices without the offsets. Every group must have at most 256 patterns.
   Returns 0, or 1 + the first row with a code outside its levels (codes then
   incomplete). idx: G entries of room. */
EMC_CLONES
static Py_ssize_t emdc_make_codes(const double* X, Py_ssize_t n, Py_ssize_t d,
                                  Py_ssize_t G, const Py_ssize_t* first, const double* top,
                                  const int* stride, const Py_ssize_t* offset, int binary,
                                  Py_ssize_t* idx, unsigned char* codes)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (emdc_row_patterns(X + i * d, d, G, first, top, stride, offset, binary, idx))
            return 1 + i;
        for (Py_ssize_t g = 0; g < G; g++)
            codes[i * G + g] = (unsigned char)(idx[g] - offset[g]);
    }
    return 0;
}

/* The pattern tables of log-probabilities lp (K x d x L) into T (n_patterns x Kp,
   the padding lanes left as they are): T[offset_g + p, k] = sum over group g's
   features j, in feature order from 0.0, of lp[k, j, digit_j(p)], the digits of
   p walked by a mixed-radix counter (dig: d ints of room, no division per
   entry); then, when E is not NULL, E[offset_g + p, k] = exp(T - s_g) with s_g
   the group's largest finite entry (-inf gives 0). shift_range[0] += sum_g s_g,
   shift_range[1] += sum_g (s_g - smallest finite entry), or +inf when a group
   has no finite entry (that group's E stays as it is); shift_range[2] = 0 when
   an entry of T (k < K) is not finite (a probability 0), shift_range[3] = 0
   when one is positive, else they are left as they are. */
static void emdc_tables(const double* lp, Py_ssize_t K, Py_ssize_t d, Py_ssize_t L,
                        Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                        const Py_ssize_t* offset, Py_ssize_t total, const int* levels,
                        int* dig, double* T, double* E, double* shift_range)
{
    for (Py_ssize_t g = 0; g < G; g++) {
        Py_ssize_t j0 = first[g], j1 = first[g + 1];
        Py_ssize_t end = g + 1 < G ? offset[g + 1] : total;
        for (Py_ssize_t j = j0; j < j1; j++) dig[j] = 0;
        for (Py_ssize_t p = offset[g]; p < end; p++) {
            for (Py_ssize_t k = 0; k < K; k++) {
                double s = 0.0;
                for (Py_ssize_t j = j0; j < j1; j++) s += lp[(k * d + j) * L + dig[j]];
                T[p * Kp + k] = s;
            }
            for (Py_ssize_t j = j0; j < j1; j++) {      /* the next pattern's digits */
                if (++dig[j] < levels[j]) break;
                dig[j] = 0;
            }
        }
        if (E == NULL) continue;
        double hi = -HUGE_VAL, lo = HUGE_VAL;
        for (Py_ssize_t p = offset[g]; p < end; p++)
            for (Py_ssize_t k = 0; k < K; k++) {
                double t = T[p * Kp + k];
                if (t > -HUGE_VAL && t < HUGE_VAL) {
                    hi = t > hi ? t : hi;
                    lo = t < lo ? t : lo;
                } else {
                    shift_range[2] = 0.0;
                }
            }
        if (!(hi > -HUGE_VAL)) {
            shift_range[1] = HUGE_VAL;
            continue;
        }
        shift_range[0] += hi;
        shift_range[1] += hi - lo;
        if (hi > 0.0) shift_range[3] = 0.0;
        for (Py_ssize_t p = offset[g]; p < end; p++)
            for (Py_ssize_t k = 0; k < K; k++) E[p * Kp + k] = exp(T[p * Kp + k] - hi);
    }
}

/* The statistics of the pattern tables A (n_patterns x Kp) as weights (K) and
   level counts (K x d x L, zeroed here): counts[k, j, l] = sum of A[offset_g +
   p, k] over group g's patterns p whose digit j is l, in pattern order (the
   digits walked as in emdc_tables; dig: d ints of room); weight[k] = sum of
   group 0's rows, in pattern order (every group's rows sum to it). */
static void emdc_expand(const double* A, Py_ssize_t K, Py_ssize_t d, Py_ssize_t L,
                        Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                        const Py_ssize_t* offset, Py_ssize_t total, const int* levels,
                        int* dig, double* weight, double* counts)
{
    for (Py_ssize_t i = 0; i < K * d * L; i++) counts[i] = 0.0;
    for (Py_ssize_t k = 0; k < K; k++) weight[k] = 0.0;
    for (Py_ssize_t g = 0; g < G; g++) {
        Py_ssize_t j0 = first[g], j1 = first[g + 1];
        Py_ssize_t end = g + 1 < G ? offset[g + 1] : total;
        for (Py_ssize_t j = j0; j < j1; j++) dig[j] = 0;
        for (Py_ssize_t p = offset[g]; p < end; p++) {
            const double* a = A + p * Kp;
            if (g == 0)
                for (Py_ssize_t k = 0; k < K; k++) weight[k] += a[k];
            for (Py_ssize_t j = j0; j < j1; j++)
                for (Py_ssize_t k = 0; k < K; k++) counts[(k * d + j) * L + dig[j]] += a[k];
            for (Py_ssize_t j = j0; j < j1; j++) {      /* the next pattern's digits */
                if (++dig[j] < levels[j]) break;
                dig[j] = 0;
            }
        }
    }
}

/* ---- The fused soft step (CodesKernel.chunk_soft_step) ----------------------

   The exact soft posterior of each row fused with its statistics, as the
   engine's soft posterior kernel and emdc_accumulate compute them
   (plugins/_soft_posterior.h; docs/discrete.md#the-fused-soft-step):
   a_k = sum_g T_g[p_g, k] + log pi_k (the log joint), f = m + log s with
   s = sum_k exp(a_k - m), q_k = exp(a_k - m) / s, log q_k = (a_k - m) - log s,
   the four totals from q, a and log q (entries with q_k = 0 add nothing), and
   A_g[p_g, :] += w_i q. Exp-free when E is given: E_g = exp(T_g - s_g) per
   group (s_g its largest entry) and ew_k = exp(log pi_k - max log pi), so
   exp(a_k - m) = ew_k prod_g E_g[p_g, k] with m = shift = max log pi + sum_g s_g:
   G + 1 table lookups and G multiplies per component instead of an exp. Every
   factor is in [exp(-range), 1] or exactly 0 (a zero probability), so a product
   is 0 or >= exp(-sum of the ranges), a normal double when that sum is <= 700
   (the caller's guard: exp(-700) = 9.9e-305 > DBL_MIN = 2.2e-308, and G + 1
   roundings move it by a relative (G + 1) u); otherwise E is NULL and
   e_k = exp(a_k - m) with m the row's largest a_k, as the soft kernel does.
   Kp: a constant at the call sites below (the loops over k unroll). ix: G
   indices of room; a, e, h, el, mg: Kp doubles each. Returns 0, or 1 + the first row with
   no finite likelihood (every a_k = -inf, or a code outside its levels). */
/* v[0] + ... + v[Kp - 1] as four lanes l = k mod 4 summed in k order, then
   (l0 + l1) + (l2 + l3): a fixed order whose lanes vectorise */
EMC_ALWAYS_INLINE double emdc_hsum(const double* v, Py_ssize_t Kp)
{
    double l0 = v[0], l1 = v[1], l2 = v[2], l3 = v[3];
    for (Py_ssize_t j = 4; j < Kp; j += 4) {
        l0 += v[j]; l1 += v[j + 1]; l2 += v[j + 2]; l3 += v[j + 3];
    }
    return (l0 + l1) + (l2 + l3);
}

EMC_ALWAYS_INLINE Py_ssize_t emdc_soft_rows(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp_sum, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* a, double* e, double* h,
        double* el, double* mg)
{
    double sum_f = 0.0, sum_E = 0.0, sum_H = 0.0, sum_mag = 0.0;
    Py_ssize_t status = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (codes)
            emdc_codes_patterns(codes + i * G, G, offset, ix);
        else if (emdc_row_patterns(X + i * d, d, G, first, top, stride, offset, binary,
                                   ix)) {
            status = 1 + i;
            break;
        }
        for (Py_ssize_t k = 0; k < Kp; k++) a[k] = T[ix[0] * Kp + k];
        for (Py_ssize_t g = 1; g < G; g++)
            for (Py_ssize_t k = 0; k < Kp; k++) a[k] += T[ix[g] * Kp + k];
        for (Py_ssize_t k = 0; k < Kp; k++) a[k] += lw[k];     /* padding: -inf */
        double m = shift;
        if (E) {
            for (Py_ssize_t k = 0; k < Kp; k++) e[k] = ew[k] * E[ix[0] * Kp + k];
            for (Py_ssize_t g = 1; g < G; g++)
                for (Py_ssize_t k = 0; k < Kp; k++) e[k] *= E[ix[g] * Kp + k];
        } else {
            m = -HUGE_VAL;
            for (Py_ssize_t k = 0; k < K; k++) m = a[k] > m ? a[k] : m;
            if (!(m > -HUGE_VAL)) {
                status = 1 + i;
                break;
            }
            for (Py_ssize_t k = 0; k < Kp; k++) e[k] = k < K ? exp(a[k] - m) : 0.0;
        }
        double s = emdc_hsum(e, Kp);                          /* padding: 0 */
        if (!(s > 0.0)) {
            status = 1 + i;
            break;
        }
        double log_s = log(s), inv_s = 1.0 / s, f = m + log_s;
        /* per lane, then summed (emdc_hsum): the terms of entries with q > 0
           (padding lanes have q = 0, a = -inf) */
        for (Py_ssize_t k = 0; k < Kp; k++) {
            double q = e[k] * inv_s, lq = (a[k] - m) - log_s;
            int pos = q > 0.0;
            h[k] = pos ? -(q * lq) : 0.0;
            el[k] = pos ? q * a[k] : 0.0;
            mg[k] = pos ? q * (fabs(a[k]) + fabs(lq)) : 0.0;
            e[k] = q;
        }
        double H = emdc_hsum(h, Kp), El = emdc_hsum(el, Kp), mag = emdc_hsum(mg, Kp);
        mag += fabs(f);
        row_value[i] = f;
        double w = row_weights != NULL ? row_weights[i] : 1.0;
        if (w != 0.0) {
            sum_f += w * f;
            sum_E += w * El;
            sum_H += w * H;
            sum_mag += w * mag;
        }
        /* the weights w q_k (padding lanes 0), added to resp_sum as the chunk
           loop adds w_i q_ik (q times 1 is q); zero weights add +0.0 */
        for (Py_ssize_t k = 0; k < Kp; k++) e[k] *= w;           /* padding: 0 */
        for (Py_ssize_t k = 0; k < K; k++) resp_sum[k] += e[k];
        if (A) {
            for (Py_ssize_t g = 0; g < G; g++) {
                double* t = A + ix[g] * Kp;
                for (Py_ssize_t k = 0; k < Kp; k++) t[k] += e[k];
            }
        }
    }
    totals[0] += sum_f;
    totals[1] += sum_E;
    totals[2] += sum_H;
    totals[3] += sum_mag;
    return status;
}

#if EMC_GNUC
/* emdc_soft_rows on nv (a constant, 1 or 2) vectors of 4 lanes held in
   registers: the same operations per entry, the row's sums over k as lanes
   l = k mod 4 then (l0 + l1) + (l2 + l3), as emdc_hsum; resp_sum's K running
   sums held in lanes too (tmp: Kp doubles of room). */
EMC_ALWAYS_INLINE Py_ssize_t emdc_soft_rows_v(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t nv, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp_sum, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* tmp)
{
    const Py_ssize_t Kp = 4 * nv;
    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    const emc_v4 zero = emc_set1(0.0);
    emc_v4 lwv[2], ewv[2], a[2], e[2];
    for (Py_ssize_t v = 0; v < nv; v++) {
        lwv[v] = emc_load(lw + 4 * v);
        ewv[v] = emc_load(ew + 4 * v);
    }
    double sum_f = 0.0, sum_E = 0.0, sum_H = 0.0, sum_mag = 0.0;
    /* resp_sum's running sums in lanes (tmp: Kp doubles, the padding 0) */
    emc_v4 rs[2];
    for (Py_ssize_t k = 0; k < Kp; k++) tmp[k] = k < K ? resp_sum[k] : 0.0;
    for (Py_ssize_t v = 0; v < nv; v++) rs[v] = emc_load(tmp + 4 * v);
    Py_ssize_t status = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (codes)
            emdc_codes_patterns(codes + i * G, G, offset, ix);
        else if (emdc_row_patterns(X + i * d, d, G, first, top, stride, offset, binary,
                                   ix)) {
            status = 1 + i;
            break;
        }
        for (Py_ssize_t v = 0; v < nv; v++) a[v] = emc_load(T + ix[0] * Kp + 4 * v);
        for (Py_ssize_t g = 1; g < G; g++)
            for (Py_ssize_t v = 0; v < nv; v++) a[v] += emc_load(T + ix[g] * Kp + 4 * v);
        for (Py_ssize_t v = 0; v < nv; v++) a[v] += lwv[v];    /* padding: -inf */
        double m = shift;
        if (E) {
            for (Py_ssize_t v = 0; v < nv; v++)
                e[v] = ewv[v] * emc_load(E + ix[0] * Kp + 4 * v);
            for (Py_ssize_t g = 1; g < G; g++)
                for (Py_ssize_t v = 0; v < nv; v++) e[v] *= emc_load(E + ix[g] * Kp + 4 * v);
        } else {
            emc_v4 mv = a[0];
            for (Py_ssize_t v = 1; v < nv; v++) mv = EMC_SEL((emc_m4)(a[v] > mv), a[v], mv);
            m = mv[0] > mv[1] ? mv[0] : mv[1];
            m = mv[2] > m ? mv[2] : m;
            m = mv[3] > m ? mv[3] : m;
            if (!(m > -HUGE_VAL)) {
                status = 1 + i;
                break;
            }
            for (Py_ssize_t v = 0; v < nv; v++) e[v] = emc_exp_nonpos(a[v] - emc_set1(m));
        }
        emc_v4 sv = e[0];
        for (Py_ssize_t v = 1; v < nv; v++) sv += e[v];
        double s = EMC_HSUM(sv);                                 /* padding: 0 */
        if (!(s > 0.0)) {
            status = 1 + i;
            break;
        }
        double log_s = log(s), inv_s = 1.0 / s, f = m + log_s;
        emc_v4 Hv = zero, Ev = zero, Mv = zero;
        emc_v4 mm = emc_set1(m), ls = emc_set1(log_s), is = emc_set1(inv_s);
        for (Py_ssize_t v = 0; v < nv; v++) {
            emc_v4 q = e[v] * is, lq = (a[v] - mm) - ls;
            emc_m4 pos = (emc_m4)(q > zero);
            emc_v4 abs_a = (emc_v4)((emc_m4)a[v] & abs_mask);
            emc_v4 abs_lq = (emc_v4)((emc_m4)lq & abs_mask);
            Hv -= EMC_SEL(pos, q * lq, zero);
            Ev += EMC_SEL(pos, q * a[v], zero);
            Mv += EMC_SEL(pos, q * (abs_a + abs_lq), zero);
            e[v] = q;
        }
        double H = EMC_HSUM(Hv), El = EMC_HSUM(Ev), mag = EMC_HSUM(Mv) + fabs(f);
        row_value[i] = f;
        double w = row_weights != NULL ? row_weights[i] : 1.0;
        if (w != 0.0) {
            sum_f += w * f;
            sum_E += w * El;
            sum_H += w * H;
            sum_mag += w * mag;
        }
        emc_v4 wv = emc_set1(w);
        for (Py_ssize_t v = 0; v < nv; v++) {
            e[v] *= wv;                                         /* padding: 0 */
            rs[v] += e[v];
        }
        if (A) {
            for (Py_ssize_t g = 0; g < G; g++) {
                double* t = A + ix[g] * Kp;
                for (Py_ssize_t v = 0; v < nv; v++)
                    emc_store(t + 4 * v, emc_load(t + 4 * v) + e[v]);
            }
        }
    }
    totals[0] += sum_f;
    totals[1] += sum_E;
    totals[2] += sum_H;
    totals[3] += sum_mag;
    for (Py_ssize_t v = 0; v < nv; v++) emc_store(tmp + 4 * v, rs[v]);
    for (Py_ssize_t k = 0; k < K; k++) resp_sum[k] = tmp[k];
    return status;
}
#endif

#if EMC_GNUC
/* (hsum a, hsum b, hsum c, hsum d), each as EMC_HSUM: (l0 + l1) + (l2 + l3) */
EMC_ALWAYS_INLINE emc_v4 emdc_hsum4(emc_v4 a, emc_v4 b, emc_v4 c, emc_v4 d)
{
    const emc_m4 lo = {0, 4, 2, 6}, hi = {1, 5, 3, 7}, lo2 = {0, 1, 4, 5}, hi2 = {2, 3, 6, 7};
    emc_v4 ab = __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
    emc_v4 cd = __builtin_shuffle(c, d, lo) + __builtin_shuffle(c, d, hi);
    return __builtin_shuffle(ab, cd, lo2) + __builtin_shuffle(ab, cd, hi2);
}

/* The exp-free soft step (E given) on blocks of 4 rows, nv (1 or 2) vectors of
   4 components per row: each row's a_k and e_k = exp(a_k - m) as
   emdc_soft_rows_v forms them, then the block's per-row sums over k side by
   side in one vector each (emdc_hsum4): s = sum_k e_k, P = sum_k e_k a_k and
   Q = sum_k e_k |a_k| (entries with e_k > 0), and per block one vector log and
   one vector division. The row's terms follow from those without a log per
   entry (docs/discrete.md#the-fused-soft-step): f = m + log s,
   El = sum_k q_k a_k = P / s, H = -sum_k q_k log q_k = f - El (as
   sum_k q_k = 1 and log q_k = a_k - f), mag = Q / s + H + |f| (log q_k <= 0:
   sum_k q_k |log q_k| = H); they equal the per-entry forms up to rounding
   (tests/test_discrete_families.py derives the bound). The block's
   weighted totals are summed per lane (lane r: rows = r mod 4 of the chunk),
   the lanes added at the end, (l0 + l1) + (l2 + l3). Rows n4 = 4 floor(n / 4)
   onwards go to emdc_soft_rows_v, and so does a block with a bad row (a code
   outside its levels on the rows path, or s = 0), which reports it. ix: 4 G
   indices of room (the callers' scratch holds n_rows G). */
EMC_ALWAYS_INLINE Py_ssize_t emdc_soft_blocks(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t nv, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp_sum, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* tmp)
{
    const Py_ssize_t Kp = 4 * nv;
    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    const emc_v4 zero = emc_set1(0.0), mm = emc_set1(shift);
    emc_v4 lwv[2], ewv[2];
    for (Py_ssize_t v = 0; v < nv; v++) {
        lwv[v] = emc_load(lw + 4 * v);
        ewv[v] = emc_load(ew + 4 * v);
    }
    emc_v4 Fv = zero, Ev = zero, Hv = zero, Mv = zero, rs[2];
    for (Py_ssize_t k = 0; k < Kp; k++) tmp[k] = k < K ? resp_sum[k] : 0.0;
    for (Py_ssize_t v = 0; v < nv; v++) rs[v] = emc_load(tmp + 4 * v);
    Py_ssize_t n4 = n - n % 4, i0, status = 0;
    for (i0 = 0; i0 < n4; i0 += 4) {
        int bad = 0;
        for (int r = 0; r < 4; r++) {
            if (codes)
                emdc_codes_patterns(codes + (i0 + r) * G, G, offset, ix + r * G);
            else
                bad |= emdc_row_patterns(X + (i0 + r) * d, d, G, first, top, stride,
                                         offset, binary, ix + r * G);
        }
        if (bad) break;
        emc_v4 e[4][2], S[4], Pv[4], Qv[4];
        for (int r = 0; r < 4; r++) {
            const Py_ssize_t* x = ix + r * G;
            emc_v4 a[2];
            for (Py_ssize_t v = 0; v < nv; v++) {
                a[v] = emc_load(T + x[0] * Kp + 4 * v);
                e[r][v] = ewv[v] * emc_load(E + x[0] * Kp + 4 * v);
            }
            for (Py_ssize_t g = 1; g < G; g++)
                for (Py_ssize_t v = 0; v < nv; v++) {
                    a[v] += emc_load(T + x[g] * Kp + 4 * v);
                    e[r][v] *= emc_load(E + x[g] * Kp + 4 * v);
                }
            S[r] = e[r][0];
            for (Py_ssize_t v = 1; v < nv; v++) S[r] += e[r][v];    /* padding: 0 */
            Pv[r] = zero;
            Qv[r] = zero;
            for (Py_ssize_t v = 0; v < nv; v++) {
                emc_v4 av = a[v] + lwv[v];                           /* padding: -inf */
                emc_m4 pos = (emc_m4)(e[r][v] > zero);
                emc_v4 abs_a = (emc_v4)((emc_m4)av & abs_mask);
                Pv[r] += EMC_SEL(pos, e[r][v] * av, zero);
                Qv[r] += EMC_SEL(pos, e[r][v] * abs_a, zero);
            }
        }
        emc_v4 s = emdc_hsum4(S[0], S[1], S[2], S[3]);
        emc_m4 ok = (emc_m4)(s > zero);
        if (!((ok[0] & ok[1]) & (ok[2] & ok[3]))) break;
        emc_v4 inv = emc_set1(1.0) / s;
        emc_v4 f = mm + emc_log_pos(s);
        emc_v4 El = emdc_hsum4(Pv[0], Pv[1], Pv[2], Pv[3]) * inv;
        emc_v4 H = f - El;
        emc_v4 mag = (emdc_hsum4(Qv[0], Qv[1], Qv[2], Qv[3]) * inv + H)
                     + (emc_v4)((emc_m4)f & abs_mask);
        emc_v4 wv = row_weights != NULL ? emc_load(row_weights + i0) : emc_set1(1.0);
        Fv += wv * f;
        Ev += wv * El;
        Hv += wv * H;
        Mv += wv * mag;
        emc_store(row_value + i0, f);
        for (int r = 0; r < 4; r++) {
            /* the weights w q_k (padding lanes 0), into resp_sum row after row
               as emdc_soft_rows_v adds them; zero weights add +0.0 */
            emc_v4 is = emc_set1(inv[r]), wr = emc_set1(wv[r]), q[2];
            for (Py_ssize_t v = 0; v < nv; v++) {
                q[v] = (e[r][v] * is) * wr;
                rs[v] += q[v];
            }
            if (A) {
                for (Py_ssize_t g = 0; g < G; g++) {
                    double* t = A + ix[r * G + g] * Kp;
                    for (Py_ssize_t v = 0; v < nv; v++)
                        emc_store(t + 4 * v, emc_load(t + 4 * v) + q[v]);
                }
            }
        }
    }
    totals[0] += EMC_HSUM(Fv);
    totals[1] += EMC_HSUM(Ev);
    totals[2] += EMC_HSUM(Hv);
    totals[3] += EMC_HSUM(Mv);
    for (Py_ssize_t v = 0; v < nv; v++) emc_store(tmp + 4 * v, rs[v]);
    for (Py_ssize_t k = 0; k < K; k++) resp_sum[k] = tmp[k];
    /* the last n % 4 rows, or from a bad block on (which it reports) */
    status = emdc_soft_rows_v(X ? X + i0 * d : NULL, codes ? codes + i0 * G : NULL,
                              n - i0, d, K, nv, G, first, top, stride, offset, binary, T,
                              E, shift, lw, ew, row_weights ? row_weights + i0 : NULL,
                              resp_sum, row_value + i0, totals, A, ix, tmp);
    return status ? status + i0 : 0;
}

/* 1 if rows b and c (G group codes each) have the same codes in groups 1 .. G - 1 */
EMC_ALWAYS_INLINE int emdc_same_high(const unsigned char* b, const unsigned char* c,
                                     Py_ssize_t G)
{
    int diff = 0;
    for (Py_ssize_t g = 1; g < G; g++) diff |= b[g] ^ c[g];
    return diff == 0;
}

/* 1 if the first rows of codes (up to 64) come in runs of the same codes in
   groups 1 .. G - 1 at least 4 rows long on average (emdc_soft_runs pays
   off): sorted distinct rows do (docs/discrete.md#the-fused-soft-step), rows
   in data order do not. A function of the chunk only. */
static int emdc_long_runs(const unsigned char* codes, Py_ssize_t n, Py_ssize_t G)
{
    Py_ssize_t breaks = 0, m = n < 64 ? n : 64;
    for (Py_ssize_t i = 1; i < m; i++)
        breaks += !emdc_same_high(codes + (i - 1) * G, codes + i * G, G);
    return 4 * (breaks + 1) <= m;
}

/* The key of a row's codes in groups 1 .. G - 1 (G <= 4): one byte each */
EMC_ALWAYS_INLINE unsigned int emdc_high_key(const unsigned char* c, Py_ssize_t G)
{
    unsigned int key = 0;
    for (Py_ssize_t g = 1; g < G; g++) key |= (unsigned int)c[g] << (8 * (g - 1));
    return key;
}

/* out = ((ew E_1[c_1]) E_2[c_2]) ... E_{G-1}[c_{G-1}], nv vectors of 4 */
EMC_ALWAYS_INLINE void emdc_high_product(const double* E, const Py_ssize_t* offset,
                                         const unsigned char* c, Py_ssize_t Kp,
                                         Py_ssize_t nv, Py_ssize_t G, const emc_v4* ew,
                                         emc_v4* out)
{
    for (Py_ssize_t v = 0; v < nv; v++)
        out[v] = ew[v] * emc_load(E + (offset[1] + c[1]) * Kp + 4 * v);
    for (Py_ssize_t g = 2; g < G; g++)
        for (Py_ssize_t v = 0; v < nv; v++)
            out[v] *= emc_load(E + (offset[g] + c[g]) * Kp + 4 * v);
}

/* A run's end: its sum of w q (acc) into resp_sum's lanes (rs) and into the
   rows of A of its high groups' codes h */
EMC_ALWAYS_INLINE void emdc_run_end(double* A, const Py_ssize_t* offset,
                                    const unsigned char* h, Py_ssize_t Kp, Py_ssize_t nv,
                                    Py_ssize_t G, const emc_v4* acc, emc_v4* rs)
{
    for (Py_ssize_t v = 0; v < nv; v++) rs[v] += acc[v];
    for (Py_ssize_t g = 1; g < G; g++) {
        double* t = A + (offset[g] + h[g]) * Kp;
        for (Py_ssize_t v = 0; v < nv; v++)
            emc_store(t + 4 * v, emc_load(t + 4 * v) + acc[v]);
    }
}

/* emdc_soft_blocks on group codes whose rows come in runs with the same codes
   in groups 1 .. G - 1 (G >= 2; the distinct rows of a compressed fit are
   sorted with the last feature the most significant, so the groups of the
   later features change every few dozen rows). Per run, once: the high
   groups' sum Th = ((T_1 + ... + T_{G-1}) + log pi) and product
   Eh = ((ew E_1) ... E_{G-1}); per row: a = T_0 + Th, e = E_0 Eh (one load
   and one add or multiply per vector instead of G), then the block's sums,
   log and division as emdc_soft_blocks. The statistics: each row adds w q to
   its group-0 row of A (within a run the group-0 codes of distinct rows
   differ: no store-to-load chain), and to registers for the run's high
   groups, added to their rows of A at the run's end (one read-add-write per
   run and group instead of one per row); resp_sum takes the run's sum too
   (the first high group's), not each row's q. The same G + 1 factors and G sums
   per entry as emdc_soft_blocks in another order, and the statistics summed
   in another order: equal up to rounding (tests/test_discrete_families.py
   derives the bound). A chunk restarts its runs: the results depend on the
   chunk only, not on the threads. The last n % 4 rows and a bad block on go
   to emdc_soft_rows_v (which reports a bad row). */
#define EMDC_STRETCH 64
EMC_ALWAYS_INLINE Py_ssize_t emdc_soft_runs(
        const unsigned char* codes, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
        Py_ssize_t nv, Py_ssize_t G, const Py_ssize_t* first, const double* top,
        const int* stride, const Py_ssize_t* offset, const double* T, const double* E,
        double shift, const double* lw, const double* ew, const double* row_weights,
        double* resp_sum, double* row_value, double* totals, double* A, Py_ssize_t* ix,
        double* tmp, int fin)
{
    const Py_ssize_t Kp = 4 * nv;
    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    const emc_v4 zero = emc_set1(0.0), mm = emc_set1(shift);
    const double* T0 = T + offset[0] * Kp;
    const double* E0 = E + offset[0] * Kp;
    emc_v4 lwv[2], ewv[2];
    /* fin & 1: every table entry and log pi_k (k < K) finite, so every e_k > 0
       (k < K): the padding lanes take log pi = 0 (a = 0, e = 0: e a = 0) and
       the sums need no masks. fin & 2: none of them positive, so every a_k <= 0
       (a sum of non-positive numbers rounds to one), |a_k| = -a_k and
       Q = sum_k e_k |a_k| = -P, the same bits (rounding is symmetric) */
    for (Py_ssize_t k = 0; k < Kp; k++) tmp[k] = k < K || !(fin & 1) ? lw[k] : 0.0;
    for (Py_ssize_t v = 0; v < nv; v++) {
        lwv[v] = emc_load(tmp + 4 * v);
        ewv[v] = emc_load(ew + 4 * v);
    }
    emc_v4 Fv = zero, Ev = zero, Hv = zero, Mv = zero, rs[2];
    for (Py_ssize_t k = 0; k < Kp; k++) tmp[k] = k < K ? resp_sum[k] : 0.0;
    for (Py_ssize_t v = 0; v < nv; v++) rs[v] = emc_load(tmp + 4 * v);
    /* Rows go in stretches of up to EMDC_STRETCH (a multiple of 4) in three
       stages, each a loop whose blocks do not wait on one another (the
       out-of-order core overlaps them; one loop doing all three per block
       waited on each block's log and division in turn): (1) per block of 4
       rows, s = sum_k e_k, P and Q, kept in arrays, and each row's group-0
       table offset (ob); (2) per block, the log and division, the totals and
       the row values, and w / s per row; (3) per row, e again (the same
       products) times w / s, into the statistics. The same operations on the
       same operands as one loop would do. The table side's run (th_key: its
       high groups' codes, emdc_high_key; Eh is formed again in stage 3 at
       each run start, fr[r] set) and the statistics side's (sh: a row of it)
       with the run's sum of w q (acc + acc2, its rows at even and odd places
       in the stretch, so that neither sum waits on a multiply-add per row:
       every high group adds the same sum).
       Stage 3 is the hottest loop: it reads only ob, fr and w / s per row, so
       that its few pointers stay in registers (its first form, reading each
       row's codes, kept A and the tables' offsets on the stack: 40 % slower) */
    emc_v4 Th[2] = {zero, zero}, Eh[2] = {zero, zero}, Eh3[2] = {zero, zero};
    emc_v4 acc[2] = {zero, zero}, acc2[2] = {zero, zero};
    Py_ssize_t sh = -1;
    unsigned int th_key = 0xffffffffu;     /* no key: a key has at most 24 bits */
    Py_ssize_t n4 = n - n % 4, i0 = 0, status = 0;
    double sb[EMDC_STRETCH], Pb[EMDC_STRETCH], Qb[EMDC_STRETCH], iwb[EMDC_STRETCH];
    unsigned char fr[EMDC_STRETCH];
    int ob[EMDC_STRETCH];                  /* c_0 Kp: at most 255 * 8 */
    double* A0 = A ? A + offset[0] * Kp : NULL;
    int bad = 0;
    while (i0 < n4 && !bad) {
        Py_ssize_t m = n4 - i0 < EMDC_STRETCH ? n4 - i0 : EMDC_STRETCH, b;
        /* stage 1 */
        for (b = 0; b < m; b += 4) {
            emc_v4 S[4], Pv[4], Qv[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                const unsigned char* c = codes + (i0 + b + r) * G;
                unsigned int key = emdc_high_key(c, G);
                fr[b + r] = key != th_key;
                if (key != th_key) {
                    th_key = key;
                    for (Py_ssize_t v = 0; v < nv; v++)
                        Th[v] = emc_load(T + (offset[1] + c[1]) * Kp + 4 * v);
                    for (Py_ssize_t g = 2; g < G; g++)
                        for (Py_ssize_t v = 0; v < nv; v++)
                            Th[v] += emc_load(T + (offset[g] + c[g]) * Kp + 4 * v);
                    for (Py_ssize_t v = 0; v < nv; v++) Th[v] += lwv[v];  /* padding: -inf */
                    emdc_high_product(E, offset, c, Kp, nv, G, ewv, Eh);
                }
                emc_v4 a[2], e[2];
                ob[b + r] = (int)c[0] * (int)Kp;
                for (Py_ssize_t v = 0; v < nv; v++) {
                    a[v] = emc_load(T0 + c[0] * Kp + 4 * v) + Th[v];
                    e[v] = emc_load(E0 + c[0] * Kp + 4 * v) * Eh[v];
                }
                S[r] = e[0];
                for (Py_ssize_t v = 1; v < nv; v++) S[r] += e[v];        /* padding: 0 */
                Pv[r] = zero;
                Qv[r] = zero;
                for (Py_ssize_t v = 0; v < nv; v++) {
                    emc_v4 abs_a = (emc_v4)((emc_m4)a[v] & abs_mask);
                    if (fin & 1) {
                        Pv[r] += e[v] * a[v];
                        if (!(fin & 2)) Qv[r] += e[v] * abs_a;
                    } else {
                        emc_m4 pos = (emc_m4)(e[v] > zero);
                        Pv[r] += EMC_SEL(pos, e[v] * a[v], zero);
                        if (!(fin & 2)) Qv[r] += EMC_SEL(pos, e[v] * abs_a, zero);
                    }
                }
            }
            emc_v4 s = emdc_hsum4(S[0], S[1], S[2], S[3]);
            emc_m4 ok = (emc_m4)(s > zero);
            if (!((ok[0] & ok[1]) & (ok[2] & ok[3]))) {
                bad = 1;        /* the rows from this block on go to the tail */
                break;
            }
            emc_store(sb + b, s);
            emc_store(Pb + b, emdc_hsum4(Pv[0], Pv[1], Pv[2], Pv[3]));
            if (!(fin & 2)) emc_store(Qb + b, emdc_hsum4(Qv[0], Qv[1], Qv[2], Qv[3]));
        }
        m = b;
        /* stage 2 */
        for (b = 0; b < m; b += 4) {
            emc_v4 s = emc_load(sb + b), Ps = emc_load(Pb + b);
            emc_v4 inv = emc_set1(1.0) / s;
            emc_v4 f = mm + emc_log_pos(s);
            emc_v4 El = Ps * inv;
            emc_v4 H = f - El;
            emc_v4 Qs = (fin & 2) ? -Ps : emc_load(Qb + b);
            emc_v4 mag = (Qs * inv + H) + (emc_v4)((emc_m4)f & abs_mask);
            emc_v4 wv = row_weights != NULL ? emc_load(row_weights + i0 + b)
                                            : emc_set1(1.0);
            Fv += wv * f;
            Ev += wv * El;
            Hv += wv * H;
            Mv += wv * mag;
            emc_store(row_value + i0 + b, f);
            emc_store(iwb + b, inv * wv);       /* w / s: q w = e (w / s) */
        }
        /* stage 3 */
        if (A) {
            /* rows in pairs, the run's sum in two halves (acc: the stretch's
               even rows, acc2: its odd rows; added at the run's end), so that
               each half takes one multiply-add per two rows */
            for (b = 0; b < m; b += 2) {
#pragma GCC unroll 2
                for (int r = 0; r < 2; r++) {
                    if (fr[b + r]) {
                        emdc_high_product(E, offset, codes + (i0 + b + r) * G, Kp, nv, G, ewv,
                                          Eh3);
                        if (sh >= 0) {
                            for (Py_ssize_t v = 0; v < nv; v++) acc[v] += acc2[v];
                            emdc_run_end(A, offset, codes + sh * G, Kp, nv, G, acc, rs);
                        }
                        sh = i0 + b + r;
                        for (Py_ssize_t v = 0; v < nv; v++) acc[v] = acc2[v] = zero;
                    }
                    const double* e0 = E0 + ob[b + r];
                    double* t = A0 + ob[b + r];
                    emc_v4 is = emc_set1(iwb[b + r]);
                    for (Py_ssize_t v = 0; v < nv; v++) {
                        emc_v4 q = (emc_load(e0 + 4 * v) * Eh3[v]) * is;
                        emc_store(t + 4 * v, emc_load(t + 4 * v) + q);
                        if (r == 0) acc[v] += q; else acc2[v] += q;
                    }
                }
            }
        } else {
            for (b = 0; b < m; b++) {
                if (fr[b])
                    emdc_high_product(E, offset, codes + (i0 + b) * G, Kp, nv, G, ewv, Eh3);
                emc_v4 is = emc_set1(iwb[b]);
                for (Py_ssize_t v = 0; v < nv; v++)
                    rs[v] += (emc_load(E0 + ob[b] + 4 * v) * Eh3[v]) * is;
            }
        }
        i0 += m;
    }
    if (A && sh >= 0) {
        for (Py_ssize_t v = 0; v < nv; v++) acc[v] += acc2[v];
        emdc_run_end(A, offset, codes + sh * G, Kp, nv, G, acc, rs);
    }
    totals[0] += EMC_HSUM(Fv);
    totals[1] += EMC_HSUM(Ev);
    totals[2] += EMC_HSUM(Hv);
    totals[3] += EMC_HSUM(Mv);
    for (Py_ssize_t v = 0; v < nv; v++) emc_store(tmp + 4 * v, rs[v]);
    for (Py_ssize_t k = 0; k < K; k++) resp_sum[k] = tmp[k];
    status = emdc_soft_rows_v(NULL, codes + i0 * G, n - i0, d, K, nv, G, first, top,
                              stride, offset, 0, T, E, shift, lw, ew,
                              row_weights ? row_weights + i0 : NULL, resp_sum,
                              row_value + i0, totals, A, ix, tmp);
    return status ? status + i0 : 0;
}

/* emdc_soft_runs per (nv, G), 2 <= G <= 4 */
#define EMDC_RUNS_BODY \
    switch (G + 8 * nv + 32 * fin) { \
        EMDC_RUNS_CASES(0) EMDC_RUNS_CASES(1) EMDC_RUNS_CASES(2) EMDC_RUNS_CASES(3) \
        default: return 0; \
    }
#define EMDC_RUNS_CASES(F) \
        case 2 + 8 + 32 * F: return EMDC_RUNS(1, 2, F); \
        case 3 + 8 + 32 * F: return EMDC_RUNS(1, 3, F); \
        case 4 + 8 + 32 * F: return EMDC_RUNS(1, 4, F); \
        case 2 + 16 + 32 * F: return EMDC_RUNS(2, 2, F); \
        case 3 + 16 + 32 * F: return EMDC_RUNS(2, 3, F); \
        case 4 + 16 + 32 * F: return EMDC_RUNS(2, 4, F);
#define EMDC_RUNS(NV, NG, FIN) emdc_soft_runs(codes, n, d, K, NV, NG, first, top, \
        stride, offset, T, E, shift, lw, ew, row_weights, resp_sum, row_value, totals, A, \
        ix, tmp, FIN)
#define EMDC_RUNS_ARGS \
        const unsigned char* codes, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K, \
        Py_ssize_t nv, Py_ssize_t G, const Py_ssize_t* first, const double* top, \
        const int* stride, const Py_ssize_t* offset, const double* T, const double* E, \
        double shift, const double* lw, const double* ew, const double* row_weights, \
        double* resp_sum, double* row_value, double* totals, double* A, Py_ssize_t* ix, \
        double* tmp, int fin
#if EMC_HAVE_CLONES
/* compiled for AVX-512 CPUs (x86-64-v4): the same code with 32 vector
   registers (the AVX2 clone spills the block's rows to the stack), chosen at
   run time as plugins/_lloyd.h chooses its transposed step */
__attribute__((target("arch=x86-64-v4")))
static Py_ssize_t emdc_soft_runs_v4(EMDC_RUNS_ARGS) { EMDC_RUNS_BODY }
#define EMDC_RUNS_V4_AVAILABLE() (__builtin_cpu_supports("x86-64-v4") ? 1 : 0)
#else
#define EMDC_RUNS_V4_AVAILABLE() 0
#endif
EMC_CLONES
static Py_ssize_t emdc_soft_runs_any(EMDC_RUNS_ARGS) { EMDC_RUNS_BODY }
#undef EMDC_RUNS
#undef EMDC_RUNS_BODY
#undef EMDC_RUNS_CASES
#undef EMDC_RUNS_ARGS
#endif

EMC_CLONES
static Py_ssize_t emdc_soft_step(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp_sum, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* a, double* e, double* h,
        double* el, double* mg, int runs, int table_flags)
{
    /* runs: which step a chunk of sorted group codes takes, 0 the blocks
       (emdc_soft_blocks), 1 the runs (emdc_soft_runs), 2 the runs compiled for
       AVX-512 where the CPU has it (_discrete_kernel.pyx's _set_run_step) */
#define EMDC_SOFT(KP) emdc_soft_rows(X, codes, n, d, K, KP, G, first, top, stride, \
        offset, binary, T, E, shift, lw, ew, row_weights, resp_sum, row_value, totals, A, \
        ix, a, e, h, el, mg)
#if EMC_GNUC
#define EMDC_SOFT_V(NV) emdc_soft_rows_v(X, codes, n, d, K, NV, G, first, top, stride, \
        offset, binary, T, E, shift, lw, ew, row_weights, resp_sum, row_value, totals, A, \
        ix, a)
#define EMDC_BLOCKS(NV, NG) emdc_soft_blocks(X, codes, n, d, K, NV, NG, first, top, stride, \
        offset, binary, T, E, shift, lw, ew, row_weights, resp_sum, row_value, totals, A, \
        ix, a)
    /* the block loop compiled per (nv, G) for G <= 4 (d <= 32 binary items):
       the loops over the groups unroll and the rows' vectors stay in registers */
    /* sorted rows (a compressed fit's distinct rows): the run step */
    if (runs && E && codes && (Kp == 4 || Kp == 8) && G >= 2 && G <= 4
            && emdc_long_runs(codes, n, G)) {
        /* table_flags: 1 no table entry is -inf, 2 none is positive (emdc_tables);
           the same asked of log pi */
        int fin = table_flags;
        for (Py_ssize_t k = 0; k < K; k++) {
            if (!(lw[k] > -HUGE_VAL)) fin &= ~1;
            if (lw[k] > 0.0) fin &= ~2;
        }
#if EMC_HAVE_CLONES
        if (runs > 1 && EMDC_RUNS_V4_AVAILABLE())
            return emdc_soft_runs_v4(codes, n, d, K, Kp / 4, G, first, top, stride, offset,
                                     T, E, shift, lw, ew, row_weights, resp_sum, row_value,
                                     totals, A, ix, a, fin);
#endif
        return emdc_soft_runs_any(codes, n, d, K, Kp / 4, G, first, top, stride, offset, T,
                                  E, shift, lw, ew, row_weights, resp_sum, row_value, totals,
                                  A, ix, a, fin);
    }
    if (E && (Kp == 4 || Kp == 8)) {
        switch (G + 8 * (Kp / 4)) {
            case 1 + 8: return EMDC_BLOCKS(1, 1);
            case 2 + 8: return EMDC_BLOCKS(1, 2);
            case 3 + 8: return EMDC_BLOCKS(1, 3);
            case 4 + 8: return EMDC_BLOCKS(1, 4);
            case 1 + 16: return EMDC_BLOCKS(2, 1);
            case 2 + 16: return EMDC_BLOCKS(2, 2);
            case 3 + 16: return EMDC_BLOCKS(2, 3);
            case 4 + 16: return EMDC_BLOCKS(2, 4);
            default: return Kp == 4 ? EMDC_BLOCKS(1, G) : EMDC_BLOCKS(2, G);
        }
    }
    if (Kp == 4) return EMDC_SOFT_V(1);
    if (Kp == 8) return EMDC_SOFT_V(2);
#undef EMDC_BLOCKS
#undef EMDC_SOFT_V
#endif
    return EMDC_SOFT(Kp);
#undef EMDC_SOFT
}

#endif

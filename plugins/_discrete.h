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
        const double* ew, const double* row_weights, double* resp, double* row_value,
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
        double* q_row = resp + i * K;
        for (Py_ssize_t k = 0; k < K; k++) q_row[k] = e[k];
        mag += fabs(f);
        row_value[i] = f;
        double w = row_weights != NULL ? row_weights[i] : 1.0;
        if (w != 0.0) {
            sum_f += w * f;
            sum_E += w * El;
            sum_H += w * H;
            sum_mag += w * mag;
        }
        if (A) {
            /* the weights w q_k (padding lanes 0); zero weights add +0.0 */
            for (Py_ssize_t k = 0; k < Kp; k++) e[k] *= w;       /* padding: 0 */
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
   l = k mod 4 then (l0 + l1) + (l2 + l3), as emdc_hsum. The row's K
   posteriors are stored as whole vectors where they fit in resp (the padding
   lanes land on the next row's entries, which that row overwrites). */
EMC_ALWAYS_INLINE Py_ssize_t emdc_soft_rows_v(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t nv, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp, double* row_value,
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
        if (i * K + Kp <= n * K) {
            for (Py_ssize_t v = 0; v < nv; v++) emc_store(resp + i * K + 4 * v, e[v]);
        } else {
            for (Py_ssize_t v = 0; v < nv; v++) emc_store(tmp + 4 * v, e[v]);
            for (Py_ssize_t k = 0; k < K; k++) resp[i * K + k] = tmp[k];
        }
        row_value[i] = f;
        double w = row_weights != NULL ? row_weights[i] : 1.0;
        if (w != 0.0) {
            sum_f += w * f;
            sum_E += w * El;
            sum_H += w * H;
            sum_mag += w * mag;
        }
        if (A) {
            emc_v4 wv = emc_set1(w);
            for (Py_ssize_t v = 0; v < nv; v++) e[v] *= wv;     /* padding: 0 */
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
    return status;
}
#endif

EMC_CLONES
static Py_ssize_t emdc_soft_step(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* a, double* e, double* h,
        double* el, double* mg)
{
#define EMDC_SOFT(KP) emdc_soft_rows(X, codes, n, d, K, KP, G, first, top, stride, \
        offset, binary, T, E, shift, lw, ew, row_weights, resp, row_value, totals, A, \
        ix, a, e, h, el, mg)
#if EMC_GNUC
#define EMDC_SOFT_V(NV) emdc_soft_rows_v(X, codes, n, d, K, NV, G, first, top, stride, \
        offset, binary, T, E, shift, lw, ew, row_weights, resp, row_value, totals, A, \
        ix, a)
    if (Kp == 4) return EMDC_SOFT_V(1);
    if (Kp == 8) return EMDC_SOFT_V(2);
#undef EMDC_SOFT_V
#endif
    return EMDC_SOFT(Kp);
#undef EMDC_SOFT
}

#endif

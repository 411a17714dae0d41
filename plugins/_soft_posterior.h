/* The soft (tempered) posterior's row loop of plugins/_posterior_kernels.pyx
   (SoftPosteriorKernel). */
#ifndef EMCORE_SOFT_POSTERIOR_H
#define EMCORE_SOFT_POSTERIOR_H
#include <math.h>
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES, EMC_GNUC */
#include "emcore/vexp.h"   /* emc_exp_nonpos, emc_log_pos */

/* the float32 exp's relative error bound in u32 (emc_exp_nonpos_f8 below; the
   plain-C build has no float32 exp and takes double exps, within it too) */
#define EMC_EXP_F32_ERROR 3.0

#if EMC_GNUC
/* exp on 8 floats for x <= 0, the float32 posterior's (emc_soft_rows_f32):
   x = n ln2 + r, n = round(x / ln2) (ln2 in two parts, n ln2_hi exact for
   |n| < 2^15), |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 / 7!
   (truncation r^8 / 8! < 6e-9 relative, 0.1 u32), Horner with FMAs, times 2^n
   built in the exponent bits. Relative error below EMC_EXP_F32_ERROR u32
   (tests/test_float32.py measures it against libm's double exp); exp(0) = 1
   exactly. Below -87 (exp < 2^-125, about float's least normal) +0: never a
   subnormal, whose relative error is unbounded (docs/elbo_chain.md#float32
   counts those entries apart). */
typedef float emc_v8f __attribute__((vector_size(32)));
typedef float emc_v4f __attribute__((vector_size(16)));
typedef int emc_m8i __attribute__((vector_size(32)));
#define EMC_EXP_F32_LOW (-87.0f)
static inline emc_v8f emc_set1_f8(float x) { return (emc_v8f){0} + x; }
static inline emc_v8f emc_exp_nonpos_f8(emc_v8f x) {
    const emc_v8f lo = emc_set1_f8(EMC_EXP_F32_LOW);
    emc_v8f xc = (emc_v8f)(((emc_m8i)(x > lo) & (emc_m8i)x) | (~(emc_m8i)(x > lo) & (emc_m8i)lo));
    const emc_v8f shifter = emc_set1_f8(12582912.0f);          /* 1.5 * 2^23 */
    emc_v8f t = xc * 1.44269504088896341f + shifter;
    emc_v8f n = t - shifter;
    emc_v8f r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;  /* ln2 = hi + lo */
    emc_v8f p = emc_set1_f8(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    emc_m8i k = (emc_m8i)t - (emc_m8i)shifter;                   /* n as an integer */
    emc_v8f e = p * (emc_v8f)((k + 127) << 23);
    return (emc_v8f)(~(emc_m8i)(x < lo) & (emc_m8i)e);          /* +0 below -87 */
}
#endif

/* out[r] = log x[r] for r < n, each x[r] a positive normal finite double: four
   at a time by emc_log_pos (within 1 ulp, as libm's; the padding lanes 1)
   where GNU vectors exist, libm's log otherwise. The float32 posterior's log s
   (emc_soft_rows_f32). */
EMC_ALWAYS_INLINE void emc_log_rows(const double* restrict x, Py_ssize_t n,
                                    double* restrict out) {
    Py_ssize_t r = 0;
#if EMC_GNUC
    for (; r + 4 <= n; r += 4) {
        emc_v4 v = emc_log_pos(emc_load(x + r));
        emc_store(out + r, v);
    }
    if (r < n) {
        emc_v4 v = emc_set1(1.0);
        for (Py_ssize_t l = 0; r + l < n; l++) v[l] = x[r + l];
        v = emc_log_pos(v);
        for (Py_ssize_t l = 0; r + l < n; l++) out[r + l] = v[l];
    }
    r = n;
#endif
    for (; r < n; r++) out[r] = log(x[r]);
}

/* A fused float32 step's q (n x K; the diagonal and full Gaussian kernels'): scaled by the row weights rw (NULL: none),
   then its column sums added to acc row after row: the operations and the
   order of the pass's emc_scale_rows and emc_sum_rows (the same bits), in a
   clone the CPU's vectors fit (Cython's loop compiled for baseline SSE2). */
#if defined(__GNUC__)
__attribute__((unused))
#endif
EMC_CLONES static void emc_weighted_column_sums(double* restrict q, const double* restrict rw,
                                     Py_ssize_t n, Py_ssize_t K, double* restrict acc)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        double* restrict row = q + i * K;
        if (rw != NULL) {
            const double w = rw[i];
            for (Py_ssize_t k = 0; k < K; k++) row[k] = row[k] * w;
        }
        for (Py_ssize_t k = 0; k < K; k++) acc[k] += row[k];
    }
}

/* emc_log_rows in the clone the posterior's runs in (the tests' _log_rows,
   plugins/_posterior_kernels.pyx, compare it with libm's log; the other
   kernels that include this file do not call it) */
#if defined(__GNUC__)
__attribute__((unused))
#endif
EMC_CLONES static void emc_log_rows_cloned(const double* x, Py_ssize_t n, double* out) {
    emc_log_rows(x, n, out);
}

/* The soft (tempered) posterior of n rows of K log joints, in place (see
   SoftPosteriorKernel): log_joint <- log q, resp <- q, row_value <- f_i, and
   the four totals (rows' sums formed in order, added once). On 4-double
   vectors where GNU vectors exist (lanes k = l mod 4 summed separately,
   then added: a fixed order), plain C otherwise. Rows go in blocks of
   EMC_SOFT_ROWS, one phase at a time (max; exps and their sum; log; the
   totals): a row's steps depend on each other, the rows of a block do not,
   so the block's rows overlap instead of waiting on each other's latency.
   The same operations per row either way. Returns 0, or i + 1 for the
   first row with a NaN or no finite entry. */
#define EMC_SOFT_ROWS 16
EMC_ALWAYS_INLINE Py_ssize_t emc_soft_rows_by_row(
        double* restrict log_joint, double* restrict resp,
        double* restrict row_value, const double* restrict row_weights,
        Py_ssize_t n, Py_ssize_t K, double T, double* objective,
        double* log_joint_total, double* entropy, double* magnitude, const int f32,
        const int write_log_q) {
    double inv_T = 1.0 / T;
    double sum_f = 0.0, sum_E = 0.0, sum_H = 0.0, sum_mag = 0.0;
    double mb[EMC_SOFT_ROWS], sb[EMC_SOFT_ROWS], lb[EMC_SOFT_ROWS];
    Py_ssize_t kv = K & ~(Py_ssize_t)3;
#if !EMC_GNUC
    kv = 0;
#endif
    for (Py_ssize_t i0 = 0; i0 < n; i0 += EMC_SOFT_ROWS) {
        Py_ssize_t nb = n - i0 < EMC_SOFT_ROWS ? n - i0 : EMC_SOFT_ROWS;
        /* phase 1: each row's maximum m (NaN and all -inf rows fail) */
        for (Py_ssize_t r = 0; r < nb; r++) {
            const double* row = log_joint + (i0 + r) * K;
            double m = -HUGE_VAL;
            Py_ssize_t k = 0;
            int nan = 0;
#if EMC_GNUC
            if (kv) {
                emc_v4 mv = emc_set1(-HUGE_VAL);
                emc_m4 nv = {0, 0, 0, 0};
                for (k = 0; k < kv; k += 4) {
                    emc_v4 a = emc_load(row + k);
                    nv |= (emc_m4)(a != a);
                    mv = EMC_SEL((emc_m4)(a > mv), a, mv);
                }
                nan = (nv[0] | nv[1] | nv[2] | nv[3]) != 0;
                m = mv[0] > mv[1] ? mv[0] : mv[1];
                m = mv[2] > m ? mv[2] : m;
                m = mv[3] > m ? mv[3] : m;
            }
#endif
            for (; k < K; k++) {
                double a = row[k];
                nan |= isnan(a);
                if (a > m) m = a;
            }
            if (nan || !isfinite(m)) return i0 + r + 1;
            mb[r] = m * inv_T;
        }
        /* phase 2: e_k = exp(b_k - m) (<= 1, the max entry gives 1), s = sum */
        for (Py_ssize_t r = 0; r < nb; r++) {
            const double* row = log_joint + (i0 + r) * K;
            double* q_row = resp + (i0 + r) * K;
            double m = mb[r], s = 0.0;
            Py_ssize_t k = 0;
#if EMC_GNUC
            if (f32) {
                /* b - m in double, rounded to float, exp in float32 on 8 lanes,
                   widened back: the same lanes (k mod 4) summed as below */
                emc_v4 sv = emc_set1(0.0), it = emc_set1(inv_T), mm = emc_set1(m);
                for (k = 0; k < K; k += 8) {
                    emc_v4 b0, b1;
                    if (k + 8 <= K) {
                        b0 = emc_load(row + k);
                        b1 = emc_load(row + k + 4);
                    } else {             /* the last K mod 8: -inf lanes give 0 */
                        double tail[8];
                        for (int l = 0; l < 8; l++)
                            tail[l] = k + l < K ? row[k + l] : -HUGE_VAL;
                        b0 = emc_load(tail);
                        b1 = emc_load(tail + 4);
                    }
                    emc_v4f f0 = __builtin_convertvector(b0 * it - mm, emc_v4f);
                    emc_v4f f1 = __builtin_convertvector(b1 * it - mm, emc_v4f);
                    emc_v8f e = emc_exp_nonpos_f8(
                        __builtin_shufflevector(f0, f1, 0, 1, 2, 3, 4, 5, 6, 7));
                    /* widened lane by lane: GCC 12 makes these one vcvtps2pd
                       each (__builtin_convertvector went through the stack) */
                    emc_v4 e0 = {e[0], e[1], e[2], e[3]};
                    emc_v4 e1 = {e[4], e[5], e[6], e[7]};
                    if (k + 8 <= K) {
                        emc_store(q_row + k, e0);
                        emc_store(q_row + k + 4, e1);
                    } else {
                        for (int l = 0; l < 4 && k + l < K; l++) q_row[k + l] = e0[l];
                        for (int l = 0; l < 4 && k + 4 + l < K; l++) q_row[k + 4 + l] = e1[l];
                    }
                    sv += e0;
                    sv += e1;
                }
                s = EMC_HSUM(sv);
            } else if (kv) {
                emc_v4 sv = emc_set1(0.0), it = emc_set1(inv_T), mm = emc_set1(m);
                for (k = 0; k < kv; k += 4) {
                    emc_v4 e = emc_exp_nonpos(emc_load(row + k) * it - mm);
                    emc_store(q_row + k, e);
                    sv += e;
                }
                s = EMC_HSUM(sv);
            }
#endif
            for (; k < K; k++) {
                q_row[k] = exp(row[k] * inv_T - m);
                s += q_row[k];
            }
            sb[r] = s;
        }
        /* the float32 path's log s, four rows to a vector log (libm's scalar
           log per row was ~8 % of a float32 pass): s >= 1 (the maximum entry's
           e is 1) and s <= K, a positive normal double */
        if (f32) emc_log_rows(sb, nb, lb);
        /* phase 3: log q, q, f and the totals, rows in order */
        for (Py_ssize_t r = 0; r < nb; r++) {
            Py_ssize_t i = i0 + r;
            double* row = log_joint + i * K;
            double* q_row = resp + i * K;
            double m = mb[r], s = sb[r], H = 0.0, E = 0.0, mag = 0.0;
            double log_s = f32 ? lb[r] : log(s), inv_s = 1.0 / s;
            double f = T * (m + log_s);
            Py_ssize_t k = 0;
#if EMC_GNUC
            if (kv) {
                emc_v4 Hv = emc_set1(0.0), Ev = Hv, Mv = Hv, zero = Hv;
                emc_v4 it = emc_set1(inv_T), mm = emc_set1(m), ls = emc_set1(log_s);
                emc_v4 is = emc_set1(inv_s), Tv = emc_set1(T);
                const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                                         0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
                for (k = 0; k < kv; k += 4) {
                    emc_v4 a = emc_load(row + k);
                    emc_v4 lq = (a * it - mm) - ls;
                    emc_v4 q = emc_load(q_row + k) * is;
                    emc_m4 pos = (emc_m4)(q > zero);
                    emc_v4 abs_a = (emc_v4)((emc_m4)a & abs_mask);
                    emc_v4 abs_lq = (emc_v4)((emc_m4)lq & abs_mask);
                    Hv -= EMC_SEL(pos, q * lq, zero);
                    Ev += EMC_SEL(pos, q * a, zero);
                    Mv += EMC_SEL(pos, q * (abs_a + Tv * abs_lq), zero);
                    if (write_log_q) emc_store(row + k, lq);
                    emc_store(q_row + k, q);
                }
                H = EMC_HSUM(Hv);
                E = EMC_HSUM(Ev);
                mag = EMC_HSUM(Mv);
            }
#endif
            for (; k < K; k++) {
                double a = row[k];
                double lq = (a * inv_T - m) - log_s;
                double q = q_row[k] * inv_s;
                if (q > 0.0) {
                    H -= q * lq;
                    E += q * a;
                    mag += q * (fabs(a) + T * fabs(lq));
                }
                if (write_log_q) row[k] = lq;
                q_row[k] = q;
            }
            mag += fabs(f);
            row_value[i] = f;
            double w = row_weights != NULL ? row_weights[i] : 1.0;
            if (w != 0.0) {
                sum_f += w * f;
                sum_E += w * E;
                sum_H += w * (T * H);
                sum_mag += w * mag;
            }
        }
    }
    *objective += sum_f;
    *log_joint_total += sum_E;
    *entropy += sum_H;
    *magnitude += sum_mag;
    return 0;
}

#if EMC_GNUC
/* Fewer than 8 components (K < EMC_SOFT_ACROSS): four rows at a time, one row
   per lane, so that every exp is a vector one (by row, K = 5 costs one vector
   exp and one of libm's per row, K = 2 or 3 only libm's). The same steps per
   entry as by row (m, e = exp(b - m) <= 1, s, log s, log q = (b - m) - log s,
   q = e / s, the totals' terms of the entries with q > 0); a row's sums over k
   in k order, the rows' totals in row order. Returns as emc_soft_rows. */
#define EMC_SOFT_ACROSS 8
EMC_ALWAYS_INLINE Py_ssize_t emc_soft_rows_across(
        double* restrict log_joint, double* restrict resp,
        double* restrict row_value, const double* restrict row_weights,
        Py_ssize_t n, Py_ssize_t K, double T, double* objective,
        double* log_joint_total, double* entropy, double* magnitude) {
    double sum_f = 0.0, sum_E = 0.0, sum_H = 0.0, sum_mag = 0.0;
    const emc_v4 zero = emc_set1(0.0), it = emc_set1(1.0 / T), Tv = emc_set1(T);
    const emc_v4 inf = emc_set1(HUGE_VAL);
    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    for (Py_ssize_t i = 0; i < n; i += 4) {
        emc_v4 a[EMC_SOFT_ACROSS], e[EMC_SOFT_ACROSS];
        for (Py_ssize_t k = 0; k < K; k++)
            for (int l = 0; l < 4; l++) a[k][l] = log_joint[(i + l) * K + k];
        /* each row's maximum; a NaN or no finite maximum fails the row */
        emc_v4 m = emc_set1(-HUGE_VAL);
        emc_m4 nan = {0, 0, 0, 0};
        for (Py_ssize_t k = 0; k < K; k++) {
            nan |= (emc_m4)(a[k] != a[k]);
            m = EMC_SEL((emc_m4)(a[k] > m), a[k], m);
        }
        emc_v4 abs_m = (emc_v4)((emc_m4)m & abs_mask);
        emc_m4 fail = nan | ~(emc_m4)(abs_m < inf);
        for (int l = 0; l < 4; l++)
            if (fail[l]) return i + l + 1;
        emc_v4 mm = m * it, sv = zero;
        for (Py_ssize_t k = 0; k < K; k++) {
            e[k] = emc_exp_nonpos(a[k] * it - mm);
            sv += e[k];
        }
        emc_v4 ls;
        for (int l = 0; l < 4; l++) ls[l] = log(sv[l]);
        emc_v4 is = emc_set1(1.0) / sv, f = Tv * (mm + ls);
        emc_v4 H = zero, E = zero, mag = zero;
        for (Py_ssize_t k = 0; k < K; k++) {
            emc_v4 lq = (a[k] * it - mm) - ls;
            emc_v4 q = e[k] * is;
            emc_m4 pos = (emc_m4)(q > zero);
            emc_v4 abs_a = (emc_v4)((emc_m4)a[k] & abs_mask);
            emc_v4 abs_lq = (emc_v4)((emc_m4)lq & abs_mask);
            H -= EMC_SEL(pos, q * lq, zero);
            E += EMC_SEL(pos, q * a[k], zero);
            mag += EMC_SEL(pos, q * (abs_a + Tv * abs_lq), zero);
            for (int l = 0; l < 4; l++) {
                log_joint[(i + l) * K + k] = lq[l];
                resp[(i + l) * K + k] = q[l];
            }
        }
        mag += (emc_v4)((emc_m4)f & abs_mask);
        for (int l = 0; l < 4; l++) {
            row_value[i + l] = f[l];
            double w = row_weights != NULL ? row_weights[i + l] : 1.0;
            if (w != 0.0) {
                sum_f += w * f[l];
                sum_E += w * E[l];
                sum_H += w * (T * H[l]);
                sum_mag += w * mag[l];
            }
        }
    }
    *objective += sum_f;
    *log_joint_total += sum_E;
    *entropy += sum_H;
    *magnitude += sum_mag;
    return 0;
}
#endif

/* The soft posterior of n rows (see emc_soft_rows_by_row): with fewer than 8
   components, the rows in fours across lanes, the last n mod 4 by row. */
EMC_CLONES static Py_ssize_t emc_soft_rows(
        double* restrict log_joint, double* restrict resp,
        double* restrict row_value, const double* restrict row_weights,
        Py_ssize_t n, Py_ssize_t K, double T, double* objective,
        double* log_joint_total, double* entropy, double* magnitude) {
    Py_ssize_t n4 = 0;
#if EMC_GNUC
    if (K < EMC_SOFT_ACROSS) {
        n4 = n & ~(Py_ssize_t)3;
        Py_ssize_t status = emc_soft_rows_across(
            log_joint, resp, row_value, row_weights, n4, K, T, objective,
            log_joint_total, entropy, magnitude);
        if (status) return status;
    }
#endif
    Py_ssize_t status = emc_soft_rows_by_row(
        log_joint + n4 * K, resp + n4 * K, row_value + n4,
        row_weights != NULL ? row_weights + n4 : NULL, n - n4, K, T, objective,
        log_joint_total, entropy, magnitude, 0, 1);
    return status ? n4 + status : 0;
}

/* emc_soft_rows with each e = exp(b - m) in float32: b - m formed in double,
   rounded to float, emc_exp_nonpos_f8, widened exactly; the maximum, the sum s,
   log s (emc_log_rows: the block's rows four to a vector log, within 1 ulp as
   libm's), log q = (b - m) - log s, q = e / s and every total in double, as in
   emc_soft_rows (so the totals' identity E + H = F sum(q) holds as there);
   log q is written over log_joint only if write_log_q (the fused step reads
   only q).
   For float32 rows (the diagonal Gaussian kernel's fused step): each e carries
   a relative error of at most (|b - m| + EMC_EXP_F32_ERROR) u32, and
   docs/elbo_chain.md#float32 bounds what that moves F and the entropy by.
   Fewer than 8 components, or no GNU vectors: emc_soft_rows itself (double
   exps, within the same bound). */
EMC_CLONES static Py_ssize_t emc_soft_rows_f32(
        double* restrict log_joint, double* restrict resp,
        double* restrict row_value, const double* restrict row_weights,
        Py_ssize_t n, Py_ssize_t K, double T, double* objective,
        double* log_joint_total, double* entropy, double* magnitude, int write_log_q) {
#if EMC_GNUC
    if (K >= EMC_SOFT_ACROSS)
        return emc_soft_rows_by_row(log_joint, resp, row_value, row_weights, n, K, T,
                                    objective, log_joint_total, entropy, magnitude, 1,
                                    write_log_q != 0);
#endif
    (void)write_log_q;
    return emc_soft_rows(log_joint, resp, row_value, row_weights, n, K, T, objective,
                         log_joint_total, entropy, magnitude);
}

#endif

/* The HMM recursions' small-K loops (emcore/_core/_markov.pyx), in C with
   restrict so that they vectorise along the inner index; each sum's order is
   fixed by the loop (never by threads). */
#ifndef EMCORE_MARKOV_H
#define EMCORE_MARKOV_H
#include <math.h>
#include "emcore/vec4.h"   /* EMC_CLONES: an AVX2/FMA clone and the baseline one */
#include "emcore/vexp.h"   /* emc_exp_nonpos: exp of 4 lanes, x <= 0 */

static void emm_fwd_step(const double* restrict A, const double* restrict a,
                         double* restrict out, Py_ssize_t K) {
    /* out[j] = sum_i a[i] A[i, j] */
    for (Py_ssize_t j = 0; j < K; j++) out[j] = a[0] * A[j];
    for (Py_ssize_t i = 1; i < K; i++) {
        const double ai = a[i];
        const double* restrict Ai = A + i * K;
        for (Py_ssize_t j = 0; j < K; j++) out[j] += ai * Ai[j];
    }
}
static void emm_bwd_step(const double* restrict AT, const double* restrict w,
                         double* restrict out, Py_ssize_t K) {
    /* out[i] = sum_j A[i, j] w[j], with AT = A.T (row-major) */
    for (Py_ssize_t i = 0; i < K; i++) out[i] = w[0] * AT[i];
    for (Py_ssize_t j = 1; j < K; j++) {
        const double wj = w[j];
        const double* restrict ATj = AT + j * K;
        for (Py_ssize_t i = 0; i < K; i++) out[i] += wj * ATj[i];
    }
}
static void emm_outer_acc(const double* restrict a, const double* restrict w,
                          double* restrict S, Py_ssize_t n, Py_ssize_t K) {
    /* S[i, j] += sum_r a[r, i] w[r, j], rows r in order */
    for (Py_ssize_t r = 0; r < n; r++) {
        const double* restrict ar = a + r * K;
        const double* restrict wr = w + r * K;
        for (Py_ssize_t i = 0; i < K; i++) {
            const double ai = ar[i];
            double* restrict Si = S + i * K;
            for (Py_ssize_t j = 0; j < K; j++) Si[j] += ai * wr[j];
        }
    }
}
static void emm_viterbi_step(const double* restrict lA, const double* restrict d,
                             double* restrict best, int* restrict arg,
                             Py_ssize_t K) {
    /* best[j] = max_i d[i] + lA[i, j], arg[j] = the lowest maximising i */
    for (Py_ssize_t j = 0; j < K; j++) { best[j] = d[0] + lA[j]; arg[j] = 0; }
    for (Py_ssize_t i = 1; i < K; i++) {
        const double di = d[i];
        const double* restrict lAi = lA + i * K;
        for (Py_ssize_t j = 0; j < K; j++) {
            const double v = di + lAi[j];
            if (v > best[j]) { best[j] = v; arg[j] = (int)i; }
        }
    }
}


/* --- the scaled pass of one sequence, small K (no BLAS) ------------------------
   The same recursions and checks as the BLAS form in _markov.pyx
   (_forward_backward_one), each a single loop over the rows so that a row's
   work stays in registers and L1: the forward pass fuses the row maximum, the
   shifted exp, the K^2 step, the product with b~, c_t and the division; the
   backward pass fuses the K^2 step of beta, the rank-one update of S with
   the forward row still in place, w, and the posterior row that overwrites
   the forward row. Return codes as _markov.pyx's enum. */

enum { EMM_ZERO = 1, EMM_INVALID = 2, EMM_RANGE = 4 };

/* out[j] = exp(row[j] - mt) (row[j] - mt <= 0; -inf gives 0) */
EMC_ALWAYS_INLINE void emm_exp_shift(const double* restrict row, double mt,
                                     double* restrict out, Py_ssize_t K) {
    Py_ssize_t j = 0;
#if EMC_GNUC
    const emc_v4 m = emc_set1(mt);
    for (; j + 4 <= K; j += 4) emc_store(out + j, emc_exp_nonpos(emc_load(row + j) - m));
#endif
    for (; j < K; j++) out[j] = exp(row[j] - mt);
}

/* Forward: a_t into G, b~_t into W, c_t into c, m_t into m; sums = (sum log c_t,
   sum m_t, sum |log c_t| + |m_t|). */
EMC_CLONES
static int emm_forward_scaled(Py_ssize_t T, Py_ssize_t K, const double* restrict lb,
                              const double* restrict pi, const double* restrict A,
                              double* restrict G, double* restrict W,
                              double* restrict c, double* restrict m,
                              double* restrict sums, Py_ssize_t* restrict bad_row) {
    double sum_logc = 0.0, sum_m = 0.0, mag = 0.0;
    for (Py_ssize_t t = 0; t < T; t++) {
        const double* restrict row = lb + t * K;
        double mt = -INFINITY;
        int bad = 0;
        for (Py_ssize_t j = 0; j < K; j++) {
            const double v = row[j];
            bad |= !(v < INFINITY);               /* NaN or +inf */
            mt = v > mt ? v : mt;
        }
        if (bad) { *bad_row = t; return EMM_INVALID; }
        if (mt == -INFINITY) { *bad_row = t; return EMM_ZERO; }
        double* restrict bt = W + t * K;
        emm_exp_shift(row, mt, bt, K);
        double* restrict a = G + t * K;
        if (t == 0) {
            for (Py_ssize_t j = 0; j < K; j++) a[j] = pi[j] * bt[j];
        } else {
            const double* restrict ap = G + (t - 1) * K;
            for (Py_ssize_t j = 0; j < K; j++) a[j] = ap[0] * A[j];
            for (Py_ssize_t i = 1; i < K; i++) {
                const double ai = ap[i];
                const double* restrict Ai = A + i * K;
                for (Py_ssize_t j = 0; j < K; j++) a[j] += ai * Ai[j];
            }
            for (Py_ssize_t j = 0; j < K; j++) a[j] *= bt[j];
        }
        double ct = 0.0;
        for (Py_ssize_t j = 0; j < K; j++) ct += a[j];
        if (!(ct > 0.0)) return EMM_RANGE;     /* the log-space pass decides */
        for (Py_ssize_t j = 0; j < K; j++) a[j] /= ct;
        c[t] = ct;
        m[t] = mt;
        const double v = log(ct);
        sum_logc += v;
        sum_m += mt;
        mag += fabs(v) + fabs(mt);
    }
    sums[0] = sum_logc;
    sums[1] = sum_m;
    sums[2] = mag;
    return 0;
}

/* Backward over the forward pass's G (a_t), W (b~_t), c and m: S += sum_{t<T-1}
   a_t w_{t+1}^T, W becomes w, G the posteriors. work: 3 K doubles. sums =
   (sum_t sum_j gamma_t(j) log b~_t(j), sum gamma |log b_t(j)|, the underflow
   bound D). EMM_RANGE for a non-finite w or a posterior row off 1 by more than
   max_drift. */
EMC_CLONES
static int emm_backward_scaled(Py_ssize_t T, Py_ssize_t K, const double* restrict lb,
                               const double* restrict AT, double* restrict G,
                               double* restrict W, const double* restrict c,
                               const double* restrict m, double* restrict S,
                               double* restrict work, double C, double max_drift,
                               double* restrict sums) {
    double* restrict b = work;
    double* restrict accE = work + K;
    double* restrict accM = work + 2 * K;
    double D = 0.0;
    for (Py_ssize_t j = 0; j < K; j++) { accE[j] = 0.0; accM[j] = 0.0; }
    for (Py_ssize_t t = T - 1; t >= 0; t--) {
        double* restrict a = G + t * K;
        double* restrict wt = W + t * K;
        const double* restrict row = lb + t * K;
        const double ct = c[t], mt = m[t];
        if (t == T - 1) {
            for (Py_ssize_t j = 0; j < K; j++) b[j] = 1.0;
        } else {
            const double* restrict wn = W + (t + 1) * K;
            /* b_t(i) = sum_j A_ij w_{t+1}(j), and S += a_t w_{t+1}^T */
            for (Py_ssize_t i = 0; i < K; i++) b[i] = wn[0] * AT[i];
            for (Py_ssize_t j = 1; j < K; j++) {
                const double wj = wn[j];
                const double* restrict ATj = AT + j * K;
                for (Py_ssize_t i = 0; i < K; i++) b[i] += wj * ATj[i];
            }
            for (Py_ssize_t i = 0; i < K; i++) {
                const double ai = a[i];
                double* restrict Si = S + i * K;
                for (Py_ssize_t j = 0; j < K; j++) Si[j] += ai * wn[j];
            }
        }
        /* the underflow bound over every state (see _markov.pyx) */
        double sb = 0.0;
        for (Py_ssize_t j = 0; j < K; j++) sb += b[j];
        D += (C / ct + 1.0) * sb;
        int bad = 0;
        for (Py_ssize_t j = 0; j < K; j++) {
            const double w = wt[j] * b[j] / ct;
            wt[j] = w;
            bad |= !(w < INFINITY);               /* beyond the largest double, or NaN */
        }
        if (bad) return EMM_RANGE;
        double rs = 0.0;
        for (Py_ssize_t j = 0; j < K; j++) {
            const double g = a[j] != 0.0 ? a[j] * b[j] : 0.0;
            a[j] = g;
            rs += g;
            /* 0 log 0 = 0 (row[j] may be -inf where g is 0) */
            accE[j] += g != 0.0 ? g * (row[j] - mt) : 0.0;
            accM[j] += g != 0.0 ? g * fabs(row[j]) : 0.0;
        }
        if (!(fabs(rs - 1.0) <= max_drift)) return EMM_RANGE;
    }
    double e = 0.0, mg = 0.0;
    for (Py_ssize_t j = 0; j < K; j++) { e += accE[j]; mg += accM[j]; }
    sums[0] = e;
    sums[1] = mg;
    sums[2] = D;
    return 0;
}

#endif

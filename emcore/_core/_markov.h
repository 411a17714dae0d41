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

#if EMC_GNUC
/* --- K = 4 NV states (NV = 1..4): the whole row in NV vectors -----------------
   The generic loops below keep each K-vector in memory and chain the K^2 step
   through loads and stores (a[j] += a_i A_ij for i = 0..K-1, one multiply-add
   after the other); forward and backward are each a chain from one row to the
   next, so that latency, not the arithmetic, set their speed. Here NV is a
   compile-time constant: a row's vectors (log_b, b~, the forward or backward
   vector, the posterior and the per-state accumulators) stay in registers, the
   K^2 products run as two independent partial sums (i < K/2, i >= K/2, added
   at the end), and the row's sum is formed in every lane at once. The same
   recursions, checks and bound D as the generic loops; only the order of the
   additions inside a row's dot products and sums differs (each still a sum of
   the same K terms: the tests' (K + 4) u per step covers any order). */
#if defined(__clang__)
#define EMM_SWAP(v, a, b, c, d) __builtin_shufflevector(v, v, a, b, c, d)
#else
#define EMM_SWAP(v, a, b, c, d) __builtin_shuffle(v, (emc_m4){a, b, c, d})
#endif

/* every lane = (s0 + s2) + (s1 + s3) (additions commute exactly: equal lanes) */
EMC_ALWAYS_INLINE emc_v4 emm_allsum(emc_v4 s) {
    s = s + EMM_SWAP(s, 2, 3, 0, 1);
    return s + EMM_SWAP(s, 1, 0, 3, 2);
}
/* every lane = the largest lane (no NaN: the callers have rejected them) */
EMC_ALWAYS_INLINE emc_v4 emm_allmax(emc_v4 s) {
    emc_v4 o = EMM_SWAP(s, 2, 3, 0, 1);
    s = EMC_SEL((emc_m4)(o > s), o, s);
    o = EMM_SWAP(s, 1, 0, 3, 2);
    return EMC_SEL((emc_m4)(o > s), o, s);
}
/* out[v] = sum_i x_i M[i, 4v..4v+3], M row-major K x K, x in NV vectors: two
   partial sums over i < K/2 and i >= K/2 (independent chains), then added */
EMC_ALWAYS_INLINE void emm_matvec_nv(const emc_v4* x, const double* restrict M,
                                     emc_v4* out, const int NV) {
    const int K = 4 * NV, H = 2 * NV;
    emc_v4 p[4], q[4];
    const emc_v4 x0 = emc_set1(x[0][0]), xh = emc_set1(x[H / 4][H % 4]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        p[v] = x0 * emc_load(M + 4 * v);
        q[v] = xh * emc_load(M + H * K + 4 * v);
    }
#pragma GCC unroll 8
    for (int i = 1; i < H; i++) {
        const emc_v4 xi = emc_set1(x[i / 4][i % 4]), xj = emc_set1(x[(H + i) / 4][(H + i) % 4]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            EMC_FMA(p[v], xi, emc_load(M + i * K + 4 * v));
            EMC_FMA(q[v], xj, emc_load(M + (H + i) * K + 4 * v));
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) out[v] = p[v] + q[v];
}

EMC_ALWAYS_INLINE int emm_forward_nv(Py_ssize_t T, const double* restrict lb,
                                     const double* restrict pi, const double* restrict A,
                                     double* restrict G, double* restrict W,
                                     double* restrict c, double* restrict m,
                                     double* restrict sums, Py_ssize_t* restrict bad_row,
                                     const int NV) {
    const Py_ssize_t K = 4 * NV;
    const emc_v4 inf = emc_set1(INFINITY);
    double sum_logc = 0.0, sum_m = 0.0, mag = 0.0;
    emc_v4 a[4], r[4], bt[4], at[4];
    for (Py_ssize_t t = 0; t < T; t++) {
        const double* restrict row = lb + t * K;
        r[0] = emc_load(row);
        emc_m4 ok = (emc_m4)(r[0] < inf);            /* NaN or +inf: not ok */
        emc_v4 mx = r[0];
#pragma GCC unroll 4
        for (int v = 1; v < NV; v++) {
            r[v] = emc_load(row + 4 * v);
            ok &= (emc_m4)(r[v] < inf);
            mx = EMC_SEL((emc_m4)(r[v] > mx), r[v], mx);
        }
        if (!(ok[0] & ok[1] & ok[2] & ok[3])) { *bad_row = t; return EMM_INVALID; }
        const emc_v4 mtv = emm_allmax(mx);
        const double mt = mtv[0];
        if (mt == -INFINITY) { *bad_row = t; return EMM_ZERO; }
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            bt[v] = emc_exp_nonpos(r[v] - mtv);
            emc_store(W + t * K + 4 * v, bt[v]);
        }
        if (t == 0) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) at[v] = emc_load(pi + 4 * v) * bt[v];
        } else {
            emm_matvec_nv(a, A, at, NV);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) at[v] = at[v] * bt[v];
        }
        emc_v4 s = at[0];
#pragma GCC unroll 4
        for (int v = 1; v < NV; v++) s = s + at[v];
        const emc_v4 ctv = emm_allsum(s);
        const double ct = ctv[0];
        if (!(ct > 0.0)) return EMM_RANGE;     /* the log-space pass decides */
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            a[v] = at[v] / ctv;
            emc_store(G + t * K + 4 * v, a[v]);
        }
        c[t] = ct;
        m[t] = mt;
        const double lc = log(ct);
        sum_logc += lc;
        sum_m += mt;
        mag += fabs(lc) + fabs(mt);
    }
    sums[0] = sum_logc;
    sums[1] = sum_m;
    sums[2] = mag;
    return 0;
}

EMC_ALWAYS_INLINE int emm_backward_nv(Py_ssize_t T, const double* restrict lb,
                                      const double* restrict AT, double* restrict G,
                                      double* restrict W, const double* restrict c,
                                      const double* restrict m, double* restrict S,
                                      double C, double max_drift, double* restrict sums,
                                      double* restrict gsum, const int NV) {
    const Py_ssize_t K = 4 * NV;
    const emc_v4 zero = emc_set1(0.0), inf = emc_set1(INFINITY);
    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
    emc_v4 accE[4], accM[4], accR[4], accL[4], wn[4], b[4], av[4];
    double D = 0.0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) accE[v] = accM[v] = accR[v] = accL[v] = wn[v] = zero;
    for (Py_ssize_t t = T - 1; t >= 0; t--) {
        double* restrict ga = G + t * K;
        double* restrict wt = W + t * K;
        const double* restrict row = lb + t * K;
        const double ct = c[t];
        const emc_v4 ctv = emc_set1(ct), mtv = emc_set1(m[t]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) av[v] = emc_load(ga + 4 * v);
        if (t == T - 1) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) b[v] = emc_set1(1.0);
        } else {
            /* b_t(i) = sum_j A_ij w_{t+1}(j), and S += a_t w_{t+1}^T */
            emm_matvec_nv(wn, AT, b, NV);
#pragma GCC unroll 16
            for (int i = 0; i < K; i++) {
                const emc_v4 ai = emc_set1(av[i / 4][i % 4]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) {
                    double* Si = S + i * K + 4 * v;
                    emc_store(Si, emc_load(Si) + ai * wn[v]);
                }
            }
        }
        /* the underflow bound over every state (see _markov.pyx) */
        emc_v4 sbv = b[0];
#pragma GCC unroll 4
        for (int v = 1; v < NV; v++) sbv = sbv + b[v];
        D += (C / ct + 1.0) * EMC_HSUM(sbv);
        emc_m4 ok = (emc_m4)(zero == zero);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            wn[v] = emc_load(wt + 4 * v) * b[v] / ctv;
            emc_store(wt + 4 * v, wn[v]);
            ok &= (emc_m4)(wn[v] < inf);       /* beyond the largest double, or NaN */
        }
        if (!(ok[0] & ok[1] & ok[2] & ok[3])) return EMM_RANGE;
        emc_v4 rsv = zero;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            const emc_v4 g = EMC_SEL((emc_m4)(av[v] != zero), av[v] * b[v], zero);
            emc_store(ga + 4 * v, g);
            rsv = rsv + g;
            /* 0 log 0 = 0 (row[j] may be -inf where g is 0) */
            const emc_m4 pos = (emc_m4)(g != zero);
            const emc_v4 rv = emc_load(row + 4 * v);
            accE[v] += EMC_SEL(pos, g * (rv - mtv), zero);
            accM[v] += EMC_SEL(pos, g * (emc_v4)((emc_m4)rv & abs_mask), zero);
            accL[v] += EMC_SEL(pos, g * rv, zero);
            accR[v] += g;
        }
        if (!(fabs(EMC_HSUM(rsv) - 1.0) <= max_drift)) return EMM_RANGE;
    }
    double e = 0.0, mg = 0.0;
#pragma GCC unroll 16
    for (int j = 0; j < K; j++) { e += accE[j / 4][j % 4]; mg += accM[j / 4][j % 4]; }
    sums[0] = e;
    sums[1] = mg;
    sums[2] = D;
    if (gsum) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            emc_store(gsum + 4 * v, accR[v]);
            emc_store(gsum + K + 4 * v, accL[v]);
            emc_store(gsum + 2 * K + 4 * v, accM[v]);
        }
    }
    return 0;
}
#endif  /* EMC_GNUC */

/* Forward: a_t into G, b~_t into W, c_t into c, m_t into m; sums = (sum log c_t,
   sum m_t, sum |log c_t| + |m_t|). */
EMC_CLONES
static int emm_forward_scaled(Py_ssize_t T, Py_ssize_t K, const double* restrict lb,
                              const double* restrict pi, const double* restrict A,
                              double* restrict G, double* restrict W,
                              double* restrict c, double* restrict m,
                              double* restrict sums, Py_ssize_t* restrict bad_row) {
#if EMC_GNUC
    switch (K) {
        case 4: return emm_forward_nv(T, lb, pi, A, G, W, c, m, sums, bad_row, 1);
        case 8: return emm_forward_nv(T, lb, pi, A, G, W, c, m, sums, bad_row, 2);
        case 12: return emm_forward_nv(T, lb, pi, A, G, W, c, m, sums, bad_row, 3);
        case 16: return emm_forward_nv(T, lb, pi, A, G, W, c, m, sums, bad_row, 4);
        default: break;
    }
#endif
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
   a_t w_{t+1}^T, W becomes w, G the posteriors. work: 5 K doubles. sums =
   (sum_t sum_j gamma_t(j) log b~_t(j), sum gamma |log b_t(j)|, the underflow
   bound D). Unless NULL, gsum (3 K) = per state j: sum_t gamma_t(j),
   sum_t gamma_t(j) log b_t(j) and sum_t gamma_t(j) |log b_t(j)| (entries with
   gamma > 0), as emm_gamma_sums. EMM_RANGE for a non-finite w or a posterior
   row off 1 by more than max_drift. */
EMC_CLONES
static int emm_backward_scaled(Py_ssize_t T, Py_ssize_t K, const double* restrict lb,
                               const double* restrict AT, double* restrict G,
                               double* restrict W, const double* restrict c,
                               const double* restrict m, double* restrict S,
                               double* restrict work, double C, double max_drift,
                               double* restrict sums, double* restrict gsum) {
#if EMC_GNUC
    switch (K) {
        case 4: return emm_backward_nv(T, lb, AT, G, W, c, m, S, C, max_drift, sums, gsum, 1);
        case 8: return emm_backward_nv(T, lb, AT, G, W, c, m, S, C, max_drift, sums, gsum, 2);
        case 12: return emm_backward_nv(T, lb, AT, G, W, c, m, S, C, max_drift, sums, gsum, 3);
        case 16: return emm_backward_nv(T, lb, AT, G, W, c, m, S, C, max_drift, sums, gsum, 4);
        default: break;
    }
#endif
    double* restrict b = work;
    double* restrict accE = work + K;
    double* restrict accM = work + 2 * K;
    double* restrict accR = work + 3 * K;
    double* restrict accL = work + 4 * K;
    double D = 0.0;
    for (Py_ssize_t j = 0; j < K; j++) {
        accE[j] = 0.0; accM[j] = 0.0; accR[j] = 0.0; accL[j] = 0.0;
    }
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
            accL[j] += g != 0.0 ? g * row[j] : 0.0;
            accR[j] += g;
        }
        if (!(fabs(rs - 1.0) <= max_drift)) return EMM_RANGE;
    }
    double e = 0.0, mg = 0.0;
    for (Py_ssize_t j = 0; j < K; j++) { e += accE[j]; mg += accM[j]; }
    sums[0] = e;
    sums[1] = mg;
    sums[2] = D;
    if (gsum) {
        for (Py_ssize_t j = 0; j < K; j++) {
            gsum[j] = accR[j]; gsum[K + j] = accL[j]; gsum[2 * K + j] = accM[j];
        }
    }
    return 0;
}

/* The posteriors' sums of a sequence already computed (the BLAS and log-space
   passes): gsum (3 K) = per state j, sum_t gamma_t(j), sum_t gamma_t(j)
   log b_t(j) and sum_t gamma_t(j) |log b_t(j)| over the entries with
   gamma > 0 (0 log 0 = 0), rows in order. */
static void emm_gamma_sums(Py_ssize_t T, Py_ssize_t K, const double* restrict G,
                           const double* restrict lb, double* restrict gsum) {
    for (Py_ssize_t j = 0; j < 3 * K; j++) gsum[j] = 0.0;
    for (Py_ssize_t t = 0; t < T; t++) {
        const double* restrict g = G + t * K;
        const double* restrict row = lb + t * K;
        for (Py_ssize_t j = 0; j < K; j++) {
            gsum[j] += g[j];
            if (g[j] > 0.0) {
                gsum[K + j] += g[j] * row[j];
                gsum[2 * K + j] += g[j] * fabs(row[j]);
            }
        }
    }
}

#endif

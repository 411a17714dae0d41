/* The k-means kernel's Lloyd step and row statistics (plugins/_kmeans_kernel.pyx,
   whose docstring describes them). */
#ifndef EMCORE_LLOYD_H
#define EMCORE_LLOYD_H
#include <math.h>
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES, EMC_GNUC */

/* One component's statistics slot (the kernel's docstring says what each is):
   [W, SS, D, ref (d), s (d), far (d)]; D < 0 means no rows. */
#define EMC_KM_WEIGHT(d) 0
#define EMC_KM_SCATTER(d) 1
#define EMC_KM_FAR_DIST(d) 2
#define EMC_KM_REFERENCE(d) 3
#define EMC_KM_SHIFT_SUM(d) (3 + (d))
#define EMC_KM_FAR_POINT(d) (3 + 2 * (d))
#define EMC_KM_SLOT_SIZE(d) (3 + 3 * (d))
/* ref, s and far follow each other: the row loops below address s and far from
   ref (slot + EMC_KM_REFERENCE(d) + d, ...), the pointer sums the loops always
   had, so that GCC emits the same code for them */

/* The per-row work of the Lloyd step in C on 4-double vectors, compiled
   twice (AVX2/FMA and baseline x86-64, EMC_CLONES): a fixed order of
   operations for each build, so the same bits on any thread count. Slot of
   component k: [W, SS, D, ref (d), s (d), far (d)] (see the docstring). */

/* 4-double lanes: lane l of bv holds its first maximum, bi its index. Pair
   lanes (0, 2) and (1, 3), then (0, 1): the larger value, on equal values
   the lower index; lane 0 then holds the first index of the maximum. */
#if EMC_GNUC
#if defined(__clang__)
#define EMC_SWAPPED(v, a, b, c, d) __builtin_shufflevector(v, v, a, b, c, d)
#else
#define EMC_SWAPPED(v, a, b, c, d) __builtin_shuffle(v, (emc_m4){a, b, c, d})
#endif
#define EMC_LANE_MAX(bv, bi, a, b, c, d) do {                                        \
        emc_v4 ov_ = EMC_SWAPPED(bv, a, b, c, d), oi_ = EMC_SWAPPED(bi, a, b, c, d); \
        emc_m4 take_ = (emc_m4)(ov_ > bv) | ((emc_m4)(ov_ == bv) & (emc_m4)(oi_ < bi)); \
        bv = EMC_SEL(take_, ov_, bv);                                                   \
        bi = EMC_SEL(take_, oi_, bi);                                                   \
    } while (0)
#endif

/* s += w (x - ref); returns ||x - ref||^2 (4 partial sums, then added) */
static inline double emc_shift_add(const double* restrict x, const double* restrict ref,
                                   double* restrict s, double w, Py_ssize_t d) {
    emc_v4 acc = emc_set1(0.0), wv = emc_set1(w);
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        emc_v4 t = EMC_SUB(emc_load(x + j), emc_load(ref + j));
        emc_store(s + j, EMC_ADD(emc_load(s + j), EMC_MUL(wv, t)));
        EMC_FMA(acc, t, t);
    }
    double r = EMC_HSUM(acc);
    for (; j < d; j++) {
        double t = x[j] - ref[j];
        s[j] += w * t;
        r += t * t;
    }
    return r;
}

static inline double emc_sq_dist(const double* restrict x, const double* restrict y,
                                 Py_ssize_t d) {
    emc_v4 acc = emc_set1(0.0);
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        emc_v4 t = EMC_SUB(emc_load(x + j), emc_load(y + j));
        EMC_FMA(acc, t, t);
    }
    double r = EMC_HSUM(acc);
    for (; j < d; j++) { double t = x[j] - y[j]; r += t * t; }
    return r;
}

#if EMC_GNUC
#define EMC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define EMC_NOINLINE __attribute__((noinline))
#else
#define EMC_UNLIKELY(x) (x)
#define EMC_NOINLINE
#endif
/* out of line: the hot loop stays small (a new farthest row is rare) */
EMC_NOINLINE static void emc_new_farthest(double* slot, const double* x, double dist,
                                          Py_ssize_t d) {
    slot[EMC_KM_FAR_DIST(d)] = dist;
    memcpy(slot + EMC_KM_REFERENCE(d) + 2 * d, x, (size_t)d * sizeof(double));
}

/* adds row x with weight w to a slot; returns ||x - ref||^2 */
static inline double emc_add_row(double* restrict slot, const double* restrict x,
                                  double w, Py_ssize_t d) {
    double dist = emc_shift_add(x, slot + EMC_KM_REFERENCE(d), slot + EMC_KM_REFERENCE(d) + d,
                                w, d);
    slot[EMC_KM_WEIGHT(d)] += w;
    slot[EMC_KM_SCATTER(d)] += w * dist;
    if (EMC_UNLIKELY(dist > slot[EMC_KM_FAR_DIST(d)])) {   /* strict: the first such row wins */
        emc_new_farthest(slot, x, dist, d);
    }
    return dist;
}

/* The second sweep of the Lloyd step, labels known: each row added to its
   component's slot (w_i > 0; stats may be NULL), the row value
   f_i = row_const[z] - h ||x_i - mu_z||^2 from the exact difference, and the
   chunk's objective, expected log joint and magnitude sums (rows in order)
   added to the totals once. */
EMC_ALWAYS_INLINE void emc_lloyd_accumulate(
        const double* restrict X, Py_ssize_t n, Py_ssize_t d,
        const Py_ssize_t* restrict labels, const double* restrict row_weights,
        const double* restrict means, const double* restrict row_const, double h,
        double* restrict stats, double* restrict row_value, double* objective,
        double* log_joint, double* magnitude) {
    Py_ssize_t S = EMC_KM_SLOT_SIZE(d);
    double sum_f = 0.0, sum_mag = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double* x = X + i * d;
        Py_ssize_t best = labels[i];
        double w = row_weights != NULL ? row_weights[i] : 1.0, dist;
        if (stats != NULL && w > 0.0)
            dist = emc_add_row(stats + best * S, x, w, d);
        else
            dist = emc_sq_dist(x, means + best * d, d);
        double f = row_const[best] - h * dist;
        row_value[i] = f;
        if (w != 0.0) {
            sum_f += w * f;
            sum_mag += w * (2.0 * fabs(f));
        }
    }
    *objective += sum_f;
    *log_joint += sum_f;
    *magnitude += sum_mag;
}

#if EMC_GNUC
/* One block of up to 16 centres (nv vectors of 4) for R rows (1 or 2): the
   scores off_k + sum_j (x_j - c_j) MT[j, k] accumulated in registers in j
   order, then folded into each row's running per-lane maximum (bv, bi):
   strict '>', so each lane keeps its first maximum. R and nv are constants
   at every call; two rows give the FMA chains room to overlap. */
EMC_ALWAYS_INLINE void emc_score_block(
        const double* restrict x, Py_ssize_t d, const int R,
        const double* restrict c, const double* restrict mt, Py_ssize_t ld,
        const double* restrict off, const int nv, double first,
        emc_v4* restrict bv, emc_v4* restrict bi) {
    emc_v4 acc[2][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = emc_load(off + 4 * v);
    for (Py_ssize_t j = 0; j < d; j++) {
        emc_v4 t[2];
        for (int r = 0; r < R; r++) t[r] = emc_set1(x[r * d + j] - c[j]);
        for (int v = 0; v < nv; v++) {
            emc_v4 m = emc_load(mt + j * ld + 4 * v);
            for (int r = 0; r < R; r++) EMC_FMA(acc[r][v], t[r], m);
        }
    }
    for (int r = 0; r < R; r++) {
        emc_v4 idx = {first, first + 1.0, first + 2.0, first + 3.0};
        for (int v = 0; v < nv; v++) {
            emc_m4 gt = (emc_m4)(acc[r][v] > bv[r]);
            bv[r] = EMC_SEL(gt, acc[r][v], bv[r]);
            bi[r] = EMC_SEL(gt, idx, bi[r]);
            idx = idx + emc_set1(4.0);
        }
    }
}

/* labels of R rows (1 or 2) starting at x; 0, or 1 + the first row (of the
   R) whose best score is not finite */
EMC_ALWAYS_INLINE int emc_label_rows(
        const double* restrict x, Py_ssize_t d, const int R, Py_ssize_t Kp,
        const double* restrict c, const double* restrict mt,
        const double* restrict off, Py_ssize_t* restrict labels) {
    emc_v4 bv[2], bi[2];
    for (int r = 0; r < R; r++) { bv[r] = emc_set1(-HUGE_VAL); bi[r] = emc_set1(0.0); }
    for (Py_ssize_t kb = 0; kb < Kp; kb += 16) {
#define EMC_SCORES(NV) emc_score_block(x, d, R, c, mt + kb, Kp, off + kb, NV, (double)kb, bv, bi)
        EMC_WITH_NV(Kp - kb, EMC_SCORES);
#undef EMC_SCORES
    }
    for (int r = 0; r < R; r++) {
        EMC_LANE_MAX(bv[r], bi[r], 2, 3, 0, 1);
        EMC_LANE_MAX(bv[r], bi[r], 1, 0, 3, 2);
        if (!isfinite(bv[r][0])) return r + 1;
        labels[r] = (Py_ssize_t)bi[r][0];
    }
    return 0;
}

/* One Lloyd step over n rows, fused: the scores through the GEMM identity
   on centred data, score_k = off_k + 2h (x - c).(mu_k - c) with MT (d x Kp)
   = 2h (mu - c)^T (columns K..Kp-1 zero, their offsets -inf: they never
   win), computed in registers a block of 16 centres at a time; label = the
   first index of the maximum (lanes compared as in EMC_LANE_MAX); the row
   added to its component's slot (w_i > 0; stats may be NULL); the row
   value f_i = row_const[z] - h ||x_i - mu_z||^2 from the exact difference;
   the chunk's objective, expected log joint and magnitude sums (rows in
   order) added to the totals. Returns 0, or i + 1 for the first row whose
   best score is not finite. */
EMC_CLONES static Py_ssize_t emc_lloyd_rows(
        const double* restrict X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
        Py_ssize_t Kp, const double* restrict c, const double* restrict mt,
        const double* restrict off, const double* restrict row_weights,
        const double* restrict means, const double* restrict row_const, double h,
        double* restrict stats, Py_ssize_t* restrict labels,
        double* restrict row_value, double* objective, double* log_joint,
        double* magnitude) {
    for (Py_ssize_t i = 0; i < n; i += 2) {
        int bad = (i + 1 < n) ? emc_label_rows(X + i * d, d, 2, Kp, c, mt, off, labels + i)
                              : emc_label_rows(X + i * d, d, 1, Kp, c, mt, off, labels + i);
        if (bad) return i + bad;
    }
    emc_lloyd_accumulate(X, n, d, labels, row_weights, means, row_const, h, stats,
                         row_value, objective, log_joint, magnitude);
    return 0;
}
#else
/* without GNU vectors (EMC_GNUC 0): the same step, one score at a time (j order) */
static Py_ssize_t emc_lloyd_rows(
        const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K, Py_ssize_t Kp,
        const double* c, const double* mt, const double* off,
        const double* row_weights, const double* means, const double* row_const,
        double h, double* stats, Py_ssize_t* labels, double* row_value,
        double* objective, double* log_joint, double* magnitude) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const double* x = X + i * d;
        double m = -HUGE_VAL;
        Py_ssize_t best = 0;
        for (Py_ssize_t k = 0; k < K; k++) {
            double a = off[k];
            for (Py_ssize_t j = 0; j < d; j++) a += (x[j] - c[j]) * mt[j * Kp + k];
            if (a > m) { m = a; best = k; }
        }
        if (!isfinite(m)) return i + 1;
        labels[i] = best;
    }
    emc_lloyd_accumulate(X, n, d, labels, row_weights, means, row_const, h, stats,
                         row_value, objective, log_joint, magnitude);
    return 0;
}
#endif

#endif

/* The k-means kernel's Lloyd step and row statistics (plugins/_kmeans_kernel.pyx,
   whose docstring describes them).

   One source for two element types of the rows: this file includes itself
   twice, with EMC_LLOYD_REAL = double (the functions' plain names) and = float
   (the same names + _f32). The rows, the centring point, the scaled centres and
   the score offsets are REAL: the scores (and so the labels) are computed in
   REAL on 32-byte vectors of REAL (4 doubles or 8 floats). Everything that is
   summed is double whatever REAL is: the rows are widened (exactly) to double
   before their differences to the double reference points, the row values,
   the slots and the totals (docs/elbo_chain.md#float32). */
#ifndef EMC_LLOYD_REAL
#ifndef EMCORE_LLOYD_H
#define EMCORE_LLOYD_H
#include <math.h>
#include <stdint.h>
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

#if EMC_GNUC
/* the lanes of v permuted (a GNU vector of REAL, M the mask type of its width) */
#if defined(__clang__)
#define EMC_SWAPPED(v, M, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define EMC_SWAPPED(v, M, ...) __builtin_shuffle(v, (M){__VA_ARGS__})
#endif
/* mask ? a : b for vector type V with mask type M */
#define EMC_VSEL(V, M, mask, a, b) ((V)(((mask) & (M)(a)) | (~(mask) & (M)(b))))
/* lane l of bv holds its first maximum, bi its index: pair each lane with the
   lane the permutation names; the larger value wins, on equal values the
   lower index. The permutations of EMC_LLOYD_FOLD end with lane 0 holding the
   first index of the maximum. */
#define EMC_LANE_MAX(V, M, bv, bi, ...) do {                                       \
        V ov_ = EMC_SWAPPED(bv, M, __VA_ARGS__), oi_ = EMC_SWAPPED(bi, M, __VA_ARGS__); \
        M take_ = (M)(ov_ > bv) | ((M)(ov_ == bv) & (M)(oi_ < bi));                 \
        bv = EMC_VSEL(V, M, take_, ov_, bv);                                        \
        bi = EMC_VSEL(V, M, take_, oi_, bi);                                        \
    } while (0)
/* 8 floats (one ymm with AVX2), and their lane masks */
typedef float emc_v8f __attribute__((vector_size(32)));
typedef int emc_m8 __attribute__((vector_size(32)));
/* x in every lane: scalar + vector is one vbroadcastss in GCC 12's AVX2 clone,
   where the initialiser {x, x, ...} becomes a chain of vinsertps (callgrind:
   a third of the float32 step); + 0 changes only the sign of a zero */
static inline emc_v8f emc_set1_f8(float x) { return (emc_v8f){0} + x; }
#define EMC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define EMC_NOINLINE __attribute__((noinline))
#else
#define EMC_UNLIKELY(x) (x)
#define EMC_NOINLINE
#endif

/* 4 row entries as doubles (exact for float) */
static inline emc_v4 emc_load_row(const double* p) { return emc_load(p); }
static inline emc_v4 emc_load_row_f32(const float* p) {
    emc_v4 v;
    EMC_LANE(v, 0) = p[0]; EMC_LANE(v, 1) = p[1];
    EMC_LANE(v, 2) = p[2]; EMC_LANE(v, 3) = p[3];
    return v;
}

#define EMC_LLOYD_PASTE_(a, b) a##b
#define EMC_LLOYD_PASTE(a, b) EMC_LLOYD_PASTE_(a, b)

#define EMC_LLOYD_REAL double
#define EMC_T(name) name
#define EMC_LLOYD_LANES 4
#define EMC_LLOYD_ROWS 2      /* rows scored together (the register budget: below) */
#if EMC_GNUC
#define EMC_LLOYD_V emc_v4
#define EMC_LLOYD_M emc_m4
#define EMC_LLOYD_IOTA {0.0, 1.0, 2.0, 3.0}
#define EMC_LLOYD_SET1 emc_set1
#define EMC_LLOYD_FOLD(bv, bi) do {                                \
        EMC_LANE_MAX(emc_v4, emc_m4, bv, bi, 2, 3, 0, 1);          \
        EMC_LANE_MAX(emc_v4, emc_m4, bv, bi, 1, 0, 3, 2); } while (0)
#endif
#include "_lloyd.h"
#undef EMC_LLOYD_REAL
#undef EMC_T
#undef EMC_LLOYD_LANES
#undef EMC_LLOYD_ROWS
#undef EMC_LLOYD_V
#undef EMC_LLOYD_M
#undef EMC_LLOYD_IOTA
#undef EMC_LLOYD_SET1
#undef EMC_LLOYD_FOLD

#define EMC_LLOYD_REAL float
#define EMC_T(name) EMC_LLOYD_PASTE(name, _f32)
#define EMC_LLOYD_LANES 8
#define EMC_LLOYD_ROWS 4
#if EMC_GNUC
#define EMC_LLOYD_V emc_v8f
#define EMC_LLOYD_M emc_m8
#define EMC_LLOYD_IOTA {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f}
#define EMC_LLOYD_SET1 emc_set1_f8
#define EMC_LLOYD_FOLD(bv, bi) do {                                          \
        EMC_LANE_MAX(emc_v8f, emc_m8, bv, bi, 4, 5, 6, 7, 0, 1, 2, 3);      \
        EMC_LANE_MAX(emc_v8f, emc_m8, bv, bi, 2, 3, 0, 1, 6, 7, 4, 5);      \
        EMC_LANE_MAX(emc_v8f, emc_m8, bv, bi, 1, 0, 3, 2, 5, 4, 7, 6); } while (0)
#endif
#include "_lloyd.h"
#undef EMC_LLOYD_REAL
#undef EMC_T
#undef EMC_LLOYD_LANES
#undef EMC_LLOYD_ROWS
#undef EMC_LLOYD_V
#undef EMC_LLOYD_M
#undef EMC_LLOYD_IOTA
#undef EMC_LLOYD_SET1
#undef EMC_LLOYD_FOLD

/* The transposed float32 labelling (issue 21; docs/elbo_chain.md#float32), with
   AVX-512 (x86-64-v4 CPUs; elsewhere the row step above): the same scores as
   emc_lloyd_rows_f32's, 16 rows in the lanes of a 16-float vector instead of
   components. A block's centred rows are transposed in registers, xt[j][r] =
   x_rj - c_j (the same float subtraction); the table tb holds, per component
   k, its offset and its column of MT, tb[k (d + 1)] = off_k,
   tb[k (d + 1) + 1 + j] = MT[j, k], each entry broadcast to the 16 lanes by
   the FMA that reads it (a memory operand: no broadcast instruction, and a
   table of (d + 1) K floats). Each lane computes off_k + sum_j xc_j MT[j, k]
   as acc = acc + xc_j MT[j, k] in j order, the row step's expression (one
   FMA, as in its AVX2 code): the same bits, so the same labels. The
   components go in increasing order with a strict '>' per lane (the first
   maximum, the lowest index on ties), kept in the lanes: no horizontal fold.
   Used where it measured faster than the row step (EMC_LLOYD_T_SHAPE). */
#if EMC_HAVE_CLONES
#include <immintrin.h>
#define EMC_TB 16
typedef float emc_v16f __attribute__((vector_size(64)));
typedef int emc_m16 __attribute__((vector_size(64)));

/* floats of workspace emc_lloyd_rows_t_f32 needs (a block's transposed
   rows, d rounded up to 16 columns, the table, 64-byte alignment slack) */
static inline Py_ssize_t emc_lloyd_t_workspace(Py_ssize_t d, Py_ssize_t K) {
    return (d + 1) * K + (d + 15) / 16 * 16 * EMC_TB + EMC_TB;
}

/* NK components k0..k0+NK-1 (NK a constant at every call) for one block:
   their scores, then the running first maximum per lane (bv, bi) */
__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emc_score_group_t_f32(const emc_v16f* restrict xt, Py_ssize_t d, const float* restrict tb,
                      Py_ssize_t k0, const int NK, emc_v16f* restrict bv,
                      emc_v16f* restrict bi) {
    const Py_ssize_t S = d + 1;
    emc_v16f a[8];
    for (int q = 0; q < NK; q++) a[q] = (emc_v16f)_mm512_set1_ps(tb[(k0 + q) * S]);
#pragma GCC unroll 16
    for (Py_ssize_t j = 0; j < d; j++) {
        emc_v16f t = xt[j];
        for (int q = 0; q < NK; q++)   /* a broadcast memory operand of the FMA */
            a[q] = a[q] + t * (emc_v16f)_mm512_set1_ps(tb[(k0 + q) * S + 1 + j]);
    }
    for (int q = 0; q < NK; q++) {
        emc_m16 gt = (emc_m16)(a[q] > *bv);
        *bv = EMC_VSEL(emc_v16f, emc_m16, gt, a[q], *bv);
        *bi = EMC_VSEL(emc_v16f, emc_m16, gt, (emc_v16f)_mm512_set1_ps((float)(k0 + q)), *bi);
    }
}

/* r[s] = (x_rj - c_j) over the rows r < nr (lanes; zero past nr), j = j0 + s,
   for the w <= 16 columns from j0 (zero past w): the 16 rows' columns loaded
   (masked past w), centred, then transposed in registers (unpack 32- and
   64-bit pairs, then 128-bit lanes twice) */
__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emc_transpose16_f32(const float* restrict x, Py_ssize_t d, int nr, const float* restrict c,
                    Py_ssize_t j0, int w, emc_v16f* restrict out) {
    __mmask16 m = (__mmask16)((1u << w) - 1u);
    __m512 cv = _mm512_maskz_loadu_ps(m, c + j0), r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = i < nr ? _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i * d + j0), cv)
                      : _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* r[4a + b], 128-bit lane L: rows 4a..4a+3 of column 4L + b; then t[b]
       (b < 4) holds columns b and 8 + b (rows 0..7), t[4 + b] columns 4 + b
       and 12 + b, t[8..15] the same for rows 8..15 */
    for (int h = 0; h < 16; h += 8)
        for (int b = 0; b < 4; b++) {
            t[h + b] = _mm512_shuffle_f32x4(r[h + b], r[h + 4 + b], 0x88);
            t[h + 4 + b] = _mm512_shuffle_f32x4(r[h + b], r[h + 4 + b], 0xdd);
        }
    for (int b = 0; b < 8; b++) {   /* column b, then column 8 + b */
        out[b] = (emc_v16f)_mm512_shuffle_f32x4(t[b], t[8 + b], 0x88);
        out[8 + b] = (emc_v16f)_mm512_shuffle_f32x4(t[b], t[8 + b], 0xdd);
    }
}

/* the labels of the nr (<= 16) rows at x, from their D centred columns xt
   (D = d, or the constant 16 for d = 16: then xt stays in registers) */
__attribute__((target("arch=x86-64-v4"), always_inline)) static inline int
emc_label_block_t_f32(const emc_v16f* restrict xt, Py_ssize_t D, Py_ssize_t K, int nr,
                      const float* restrict tb, Py_ssize_t* restrict labels) {
    emc_v16f bv = (emc_v16f)_mm512_set1_ps(-HUGE_VALF), bi = (emc_v16f){0};
    Py_ssize_t k = 0;
    for (; k + 8 <= K; k += 8) emc_score_group_t_f32(xt, D, tb, k, 8, &bv, &bi);
    for (; k + 4 <= K; k += 4) emc_score_group_t_f32(xt, D, tb, k, 4, &bv, &bi);
    for (; k < K; k++) emc_score_group_t_f32(xt, D, tb, k, 1, &bv, &bi);
    for (int r = 0; r < nr; r++) {
        if (!isfinite(bv[r])) return r + 1;
        labels[r] = (Py_ssize_t)bi[r];
    }
    return 0;
}

/* emc_lloyd_rows_f32 with the transposed labelling; the same arguments, but
   work holds emc_lloyd_t_workspace(d, K) floats: the table, the labels by
   blocks of 16 rows (8 components at a time: 8 + 2 of the 32 registers),
   then the same accumulation (emc_lloyd_accumulate_f32). */
__attribute__((target("arch=x86-64-v4")))
static Py_ssize_t emc_lloyd_rows_t_f32_v4(
        const float* restrict X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
        Py_ssize_t Kp, const float* restrict c, const float* restrict mt,
        const float* restrict off, float* restrict work,
        const double* restrict row_weights, const double* restrict means,
        const double* restrict row_const, double h, double* restrict stats,
        Py_ssize_t* restrict labels, double* restrict row_value, double* objective,
        double* log_joint, double* magnitude) {
    float* xt = (float*)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float* tb = xt + (d + 15) / 16 * 16 * EMC_TB;
    for (Py_ssize_t k = 0; k < K; k++) {
        float* p = tb + k * (d + 1);
        p[0] = off[k];
        for (Py_ssize_t j = 0; j < d; j++) p[1 + j] = mt[j * Kp + k];
    }
    for (Py_ssize_t i = 0; i < n; i += EMC_TB) {
        int nr = n - i < EMC_TB ? (int)(n - i) : EMC_TB, bad;
        if (d == 16) {   /* the block's columns stay in 16 of the 32 registers */
            emc_v16f xr[16];
            emc_transpose16_f32(X + i * d, d, nr, c, 0, 16, xr);
            bad = emc_label_block_t_f32(xr, 16, K, nr, tb, labels + i);
        } else {
            emc_v16f* xv = (emc_v16f*)xt;
            for (Py_ssize_t j0 = 0; j0 < d; j0 += 16)
                emc_transpose16_f32(X + i * d, d, nr, c, j0, d - j0 < 16 ? (int)(d - j0) : 16,
                                    xv + j0);
            bad = emc_label_block_t_f32(xv, d, K, nr, tb, labels + i);
        }
        if (bad) return i + bad;
    }
    if (d == 16)   /* the same code with its loops over d unrolled */
        emc_lloyd_accumulate_f32(X, n, 16, labels, row_weights, means, row_const, h, stats,
                                 row_value, objective, log_joint, magnitude);
    else
        emc_lloyd_accumulate_f32(X, n, d, labels, row_weights, means, row_const, h, stats,
                                 row_value, objective, log_joint, magnitude);
    return 0;
}
#define EMC_LLOYD_T_AVAILABLE() (__builtin_cpu_supports("x86-64-v4") ? 1 : 0)
/* the shapes where the transposed step measured faster than the row step
   (benchmarks/README.md, float32 section): d <= 32 (at d = 16 a block's
   columns stay in registers), or K >= d; at larger d with fewer components
   the transposition costs more than the row step's broadcasts */
#define EMC_LLOYD_T_SHAPE(d, K) ((d) <= 32 || (K) >= (d))
#else
static inline Py_ssize_t emc_lloyd_t_workspace(Py_ssize_t d, Py_ssize_t K) { return 4 * d; }
#define EMC_LLOYD_T_AVAILABLE() 0
#endif

/* which float32 labelling emc_lloyd_rows_t_f32 runs: 1 the transposed one
   (AVX-512), 0 the row step emc_lloyd_rows_f32 (the reference the tests
   compare with); -1 not decided yet (the kernel's module decides at import) */
static int emc_lloyd_f32_mode = -1;
static int emc_lloyd_f32_best_mode(void) { return EMC_LLOYD_T_AVAILABLE(); }
static Py_ssize_t emc_lloyd_rows_t_f32(
        const float* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K, Py_ssize_t Kp,
        const float* c, const float* mt, const float* off, float* work,
        const double* row_weights, const double* means, const double* row_const, double h,
        double* stats, Py_ssize_t* labels, double* row_value, double* objective,
        double* log_joint, double* magnitude) {
#if EMC_HAVE_CLONES
    if (emc_lloyd_f32_mode > 0 && EMC_LLOYD_T_SHAPE(d, K))
        return emc_lloyd_rows_t_f32_v4(X, n, d, K, Kp, c, mt, off, work, row_weights, means,
                                       row_const, h, stats, labels, row_value, objective,
                                       log_joint, magnitude);
#endif
    return emc_lloyd_rows_f32(X, n, d, K, Kp, c, mt, off, work, row_weights, means,
                              row_const, h, stats, labels, row_value, objective,
                              log_joint, magnitude);
}

#endif  /* EMCORE_LLOYD_H */
#else   /* EMC_LLOYD_REAL defined: the functions for rows of EMC_LLOYD_REAL */
#define REAL EMC_LLOYD_REAL
#define LANES EMC_LLOYD_LANES
#define ROWS EMC_LLOYD_ROWS

/* The per-row work of the Lloyd step in C on 32-byte vectors, compiled
   twice (AVX2/FMA and baseline x86-64, EMC_CLONES): a fixed order of
   operations for each build, so the same bits on any thread count. Slot of
   component k: [W, SS, D, ref (d), s (d), far (d)] (see the docstring). */

/* s += w (x - ref); returns ||x - ref||^2 (4 partial sums, then added), in double */
static inline double EMC_T(emc_shift_add)(const REAL* restrict x, const double* restrict ref,
                                          double* restrict s, double w, Py_ssize_t d) {
    emc_v4 acc = emc_set1(0.0), wv = emc_set1(w);
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        emc_v4 t = EMC_SUB(EMC_T(emc_load_row)(x + j), emc_load(ref + j));
        emc_store(s + j, EMC_ADD(emc_load(s + j), EMC_MUL(wv, t)));
        EMC_FMA(acc, t, t);
    }
    double r = EMC_HSUM(acc);
    for (; j < d; j++) {
        double t = (double)x[j] - ref[j];
        s[j] += w * t;
        r += t * t;
    }
    return r;
}

/* ||x - y||^2 in double */
static inline double EMC_T(emc_sq_dist)(const REAL* restrict x, const double* restrict y,
                                        Py_ssize_t d) {
    emc_v4 acc = emc_set1(0.0);
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        emc_v4 t = EMC_SUB(EMC_T(emc_load_row)(x + j), emc_load(y + j));
        EMC_FMA(acc, t, t);
    }
    double r = EMC_HSUM(acc);
    for (; j < d; j++) { double t = (double)x[j] - y[j]; r += t * t; }
    return r;
}

/* out of line: the hot loop stays small (a new farthest row is rare) */
EMC_NOINLINE static void EMC_T(emc_new_farthest)(double* slot, const REAL* x, double dist,
                                                 Py_ssize_t d) {
    slot[EMC_KM_FAR_DIST(d)] = dist;
    for (Py_ssize_t j = 0; j < d; j++) slot[EMC_KM_REFERENCE(d) + 2 * d + j] = x[j];
}

/* adds row x with weight w to a slot; returns ||x - ref||^2 */
static inline double EMC_T(emc_add_row)(double* restrict slot, const REAL* restrict x,
                                        double w, Py_ssize_t d) {
    double dist = EMC_T(emc_shift_add)(x, slot + EMC_KM_REFERENCE(d),
                                       slot + EMC_KM_REFERENCE(d) + d, w, d);
    slot[EMC_KM_WEIGHT(d)] += w;
    slot[EMC_KM_SCATTER(d)] += w * dist;
    if (EMC_UNLIKELY(dist > slot[EMC_KM_FAR_DIST(d)])) {   /* strict: the first such row wins */
        EMC_T(emc_new_farthest)(slot, x, dist, d);
    }
    return dist;
}

/* The second sweep of the Lloyd step, labels known: each row added to its
   component's slot (w_i > 0; stats may be NULL), the row value
   f_i = row_const[z] - h ||x_i - mu_z||^2 from the exact difference, and the
   chunk's objective, expected log joint and magnitude sums (rows in order)
   added to the totals once. */
EMC_ALWAYS_INLINE void EMC_T(emc_lloyd_accumulate)(
        const REAL* restrict X, Py_ssize_t n, Py_ssize_t d,
        const Py_ssize_t* restrict labels, const double* restrict row_weights,
        const double* restrict means, const double* restrict row_const, double h,
        double* restrict stats, double* restrict row_value, double* objective,
        double* log_joint, double* magnitude) {
    Py_ssize_t S = EMC_KM_SLOT_SIZE(d);
    double sum_f = 0.0, sum_mag = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const REAL* x = X + i * d;
        Py_ssize_t best = labels[i];
        double w = row_weights != NULL ? row_weights[i] : 1.0, dist;
        if (stats != NULL && w > 0.0)
            dist = EMC_T(emc_add_row)(stats + best * S, x, w, d);
        else
            dist = EMC_T(emc_sq_dist)(x, means + best * d, d);
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
/* One block of up to 4 LANES centres (nv vectors of LANES) for R rows (1 or
   2): the scores off_k + sum_j xc_j MT[j, k] (xc = x - c, the centred rows)
   accumulated in registers in j order, in REAL, then folded into each row's
   running per-lane maximum (bv, bi): strict '>', so each lane keeps its first
   maximum. R and nv are constants at every call; two rows give the FMA
   chains room to overlap. */
EMC_ALWAYS_INLINE void EMC_T(emc_score_block)(
        const REAL* restrict xc, Py_ssize_t d, const int R,
        const REAL* restrict mt, Py_ssize_t ld,
        const REAL* restrict off, const int nv, REAL first,
        EMC_LLOYD_V* restrict bv, EMC_LLOYD_V* restrict bi) {
    EMC_LLOYD_V acc[ROWS][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < nv; v++) memcpy(&acc[r][v], off + LANES * v, sizeof acc[r][v]);
    for (Py_ssize_t j = 0; j < d; j++) {
        EMC_LLOYD_V t[ROWS];
        for (int r = 0; r < R; r++) t[r] = EMC_LLOYD_SET1(xc[r * d + j]);
        for (int v = 0; v < nv; v++) {
            EMC_LLOYD_V m;
            memcpy(&m, mt + j * ld + LANES * v, sizeof m);
            for (int r = 0; r < R; r++) EMC_FMA(acc[r][v], t[r], m);
        }
    }
    for (int r = 0; r < R; r++) {
        EMC_LLOYD_V idx = (EMC_LLOYD_V)EMC_LLOYD_IOTA + first;
        for (int v = 0; v < nv; v++) {
            EMC_LLOYD_M gt = (EMC_LLOYD_M)(acc[r][v] > bv[r]);
            bv[r] = EMC_VSEL(EMC_LLOYD_V, EMC_LLOYD_M, gt, acc[r][v], bv[r]);
            bi[r] = EMC_VSEL(EMC_LLOYD_V, EMC_LLOYD_M, gt, idx, bi[r]);
            idx = idx + (REAL)LANES;
        }
    }
}

/* labels of R rows (1 or ROWS) starting at x; 0, or 1 + the first row (of
   the R) whose best score is not finite. xc: R d REALs of workspace, the
   centred rows x - c (formed once here, then each entry broadcast). Blocks
   of NB vectors of centres, NB = 4 for up to 2 rows, 2 for 4 rows: R NB
   accumulators + R broadcasts + 1 table vector stay within 16 registers.
   The blocking never changes a label: lane l meets the components k = l
   (mod LANES) in increasing order whatever the blocks. */
EMC_ALWAYS_INLINE int EMC_T(emc_label_rows)(
        const REAL* restrict x, Py_ssize_t d, const int R, Py_ssize_t Kp,
        const REAL* restrict c, const REAL* restrict mt,
        const REAL* restrict off, REAL* restrict xc, Py_ssize_t* restrict labels) {
    EMC_LLOYD_V bv[ROWS], bi[ROWS];
    const int NB = R > 2 ? 2 : 4;
    for (int r = 0; r < R; r++)
        for (Py_ssize_t j = 0; j < d; j++) xc[r * d + j] = x[r * d + j] - c[j];
    for (int r = 0; r < R; r++) {
        bv[r] = EMC_LLOYD_SET1(-(REAL)HUGE_VAL);
        bi[r] = EMC_LLOYD_SET1(0);
    }
    for (Py_ssize_t kb = 0; kb < Kp; kb += NB * LANES) {
#define EMC_SCORES(NV) EMC_T(emc_score_block)(xc, d, R, mt + kb, Kp, off + kb, NV, \
                                              (REAL)kb, bv, bi)
        switch ((Kp - kb) >= NB * LANES ? NB : (int)((Kp - kb) / LANES)) {
            case 4: EMC_SCORES(4); break;
            case 3: EMC_SCORES(3); break;
            case 2: EMC_SCORES(2); break;
            default: EMC_SCORES(1); break;
        }
#undef EMC_SCORES
    }
    for (int r = 0; r < R; r++) {
        EMC_LLOYD_FOLD(bv[r], bi[r]);
        if (!isfinite(bv[r][0])) return r + 1;
        labels[r] = (Py_ssize_t)bi[r][0];
    }
    return 0;
}

/* One Lloyd step over n rows, fused: the scores through the GEMM identity
   on centred data, score_k = off_k + 2h (x - c).(mu_k - c) with MT (d x Kp)
   = 2h (mu - c)^T (columns K..Kp-1 zero, their offsets -inf: they never
   win; Kp a multiple of LANES), computed in registers a block of (up to) 4 LANES
   centres at a time; label = the first index of the maximum (lanes compared
   as in EMC_LANE_MAX); the row added to its component's slot (w_i > 0; stats
   may be NULL); the row value f_i = row_const[z] - h ||x_i - mu_z||^2 from the
   exact difference; the chunk's objective, expected log joint and magnitude
   sums (rows in order) added to the totals. xc: ROWS d REALs of workspace
   (ROWS = 2 doubles or 4 floats: 2 d doubles either way).
   Returns 0, or i + 1 for the first row whose best score is not finite. */
EMC_CLONES static Py_ssize_t EMC_T(emc_lloyd_rows)(
        const REAL* restrict X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
        Py_ssize_t Kp, const REAL* restrict c, const REAL* restrict mt,
        const REAL* restrict off, REAL* restrict xc, const double* restrict row_weights,
        const double* restrict means, const double* restrict row_const, double h,
        double* restrict stats, Py_ssize_t* restrict labels,
        double* restrict row_value, double* objective, double* log_joint,
        double* magnitude) {
    Py_ssize_t i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        int bad = EMC_T(emc_label_rows)(X + i * d, d, ROWS, Kp, c, mt, off, xc, labels + i);
        if (bad) return i + bad;
    }
    for (; i < n; i++) {
        int bad = EMC_T(emc_label_rows)(X + i * d, d, 1, Kp, c, mt, off, xc, labels + i);
        if (bad) return i + bad;
    }
    EMC_T(emc_lloyd_accumulate)(X, n, d, labels, row_weights, means, row_const, h, stats,
                                row_value, objective, log_joint, magnitude);
    return 0;
}
#else
/* without GNU vectors (EMC_GNUC 0): the same step, one score at a time (j order) */
static Py_ssize_t EMC_T(emc_lloyd_rows)(
        const REAL* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K, Py_ssize_t Kp,
        const REAL* c, const REAL* mt, const REAL* off, REAL* xc,
        const double* row_weights, const double* means, const double* row_const,
        double h, double* stats, Py_ssize_t* labels, double* row_value,
        double* objective, double* log_joint, double* magnitude) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const REAL* x = X + i * d;
        REAL m = -(REAL)HUGE_VAL;
        Py_ssize_t best = 0;
        for (Py_ssize_t k = 0; k < K; k++) {
            REAL a = off[k];
            for (Py_ssize_t j = 0; j < d; j++) a += (REAL)(x[j] - c[j]) * mt[j * Kp + k];
            if (a > m) { m = a; best = k; }
        }
        if (!isfinite(m)) return i + 1;
        labels[i] = best;
    }
    EMC_T(emc_lloyd_accumulate)(X, n, d, labels, row_weights, means, row_const, h, stats,
                                row_value, objective, log_joint, magnitude);
    return 0;
}
#endif

#undef REAL
#undef LANES
#undef ROWS
#endif  /* EMC_LLOYD_REAL */

/* The register-tiled loops of the full-covariance Gaussian kernel
   (plugins/_gaussian_kernel.pyx, whose docstring describes them). */
#ifndef EMCORE_GAUSSIAN_FULL_H
#define EMCORE_GAUSSIAN_FULL_H
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES */

#define EMC_ROWS 8    /* rows per group: two vectors */

/* Xt (d x ld) = X^T for n rows, rows n..ld-1 zero (ld >= n rounded up to EMC_ROWS). */
static void emc_transpose(const double* X, Py_ssize_t n, Py_ssize_t d,
                          Py_ssize_t ld, double* Xt)
{
    Py_ssize_t i, l;
    for (i = 0; i < n; i++)
        for (l = 0; l < d; l++) Xt[l * ld + i] = X[i * d + l];
    for (l = 0; l < d; l++)
        for (i = n; i < ld; i++) Xt[l * ld + i] = 0.0;
}

/* out[l] = sum_i w[i] Xt[l, i] over ld rows, in 4 interleaved partial sums;
   4 columns at a time (independent chains). */
EMC_CLONES
static void emc_weighted_sums(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                              const double* w, double* out)
{
    Py_ssize_t i, l, m;
    for (l = 0; l < d; l += 4) {
        emc_v4 s0 = emc_set1(0.0), s1 = s0, s2 = s0, s3 = s0;
        const double* x0 = Xt + l * ld;
        const double* x1 = l + 1 < d ? x0 + ld : x0;
        const double* x2 = l + 2 < d ? x0 + 2 * ld : x0;
        const double* x3 = l + 3 < d ? x0 + 3 * ld : x0;
        for (i = 0; i < ld; i += 4) {
            emc_v4 wi = emc_load(w + i);
            EMC_FMA(s0, wi, emc_load(x0 + i)); EMC_FMA(s1, wi, emc_load(x1 + i));
            EMC_FMA(s2, wi, emc_load(x2 + i)); EMC_FMA(s3, wi, emc_load(x3 + i));
        }
        m = d - l < 4 ? d - l : 4;
        out[l] = EMC_HSUM(s0);
        if (m > 1) out[l + 1] = EMC_HSUM(s1);
        if (m > 2) out[l + 2] = EMC_HSUM(s2);
        if (m > 3) out[l + 3] = EMC_HSUM(s3);
    }
}

/* out[i, k] = log_norm[k] - q_k[i] / 2 (out n x K, row-major) for the n rows of
   Xt (d x ld) and the K components (means K x d, U K x d x dp: each upper
   triangular, zero padded to dp = d rounded up to 4), q_k[i] = ||(x_i - mu_k)
   U_k||^2. Groups of 8 rows (two vectors) outer, components inner: the group's
   x - mu (Dt, 8 d doubles of scratch) and its 8 x K block of out stay in L1.
   4 columns of (x - mu) U at a time (8 independent multiply-add chains),
   column j summing only its j + 1 terms of the triangle. */
EMC_CLONES
static void emc_full_log_density(const double* Xt, Py_ssize_t ld, Py_ssize_t n,
                                 Py_ssize_t d, Py_ssize_t dp, Py_ssize_t K,
                                 const double* means, const double* U,
                                 const double* log_norm, double* Dt, double* out)
{
    Py_ssize_t i0, k, l, j0, lmax, r;
    double q[EMC_ROWS];
    for (i0 = 0; i0 < n; i0 += EMC_ROWS) {
        Py_ssize_t rows = n - i0 < EMC_ROWS ? n - i0 : EMC_ROWS;
        for (k = 0; k < K; k++) {
            const double* mu = means + k * d;
            const double* Uk = U + k * d * dp;
            for (l = 0; l < d; l++) {
                emc_v4 m = emc_set1(mu[l]);
                emc_store(Dt + 8 * l, EMC_SUB(emc_load(Xt + l * ld + i0), m));
                emc_store(Dt + 8 * l + 4, EMC_SUB(emc_load(Xt + l * ld + i0 + 4), m));
            }
            emc_v4 sq0 = emc_set1(0.0), sq1 = emc_set1(0.0);
            for (j0 = 0; j0 < d; j0 += 4) {
                emc_v4 a00 = emc_set1(0.0), a01 = a00, a10 = a00, a11 = a00,
                       a20 = a00, a21 = a00, a30 = a00, a31 = a00;
                lmax = j0 + 4 < d ? j0 + 4 : d;
                for (l = 0; l < lmax; l++) {
                    const double* u = Uk + l * dp + j0;
                    emc_v4 d0 = emc_load(Dt + 8 * l), d1 = emc_load(Dt + 8 * l + 4);
                    emc_v4 u0 = emc_set1(u[0]), u1 = emc_set1(u[1]),
                           u2 = emc_set1(u[2]), u3 = emc_set1(u[3]);
                    EMC_FMA(a00, u0, d0); EMC_FMA(a01, u0, d1);
                    EMC_FMA(a10, u1, d0); EMC_FMA(a11, u1, d1);
                    EMC_FMA(a20, u2, d0); EMC_FMA(a21, u2, d1);
                    EMC_FMA(a30, u3, d0); EMC_FMA(a31, u3, d1);
                }
                EMC_FMA(sq0, a00, a00); EMC_FMA(sq1, a01, a01);
                EMC_FMA(sq0, a10, a10); EMC_FMA(sq1, a11, a11);
                EMC_FMA(sq0, a20, a20); EMC_FMA(sq1, a21, a21);
                EMC_FMA(sq0, a30, a30); EMC_FMA(sq1, a31, a31);
            }
            emc_store(q, sq0);
            emc_store(q + 4, sq1);
            for (r = 0; r < rows; r++) out[(i0 + r) * K + k] = log_norm[k] - 0.5 * q[r];
        }
    }
}

#if EMC_HAVE_CLONES
/* The 4 x 4 tiles of emc_full_moments with AVX-512 (x86-64-v4): each 8-double
   vector holds two of the 2 x 4 tiles' 4-double accumulators side by side,
   (a, b) and (a, b + 1), so every lane does the same multiply-adds in the same
   order as there (the same bits), two tiles per instruction; 8 accumulators of
   the 32 registers. Chosen at run time by emc_full_use_v4. */
#include <immintrin.h>
typedef double emc_v8 __attribute__((vector_size(64)));
__attribute__((target("arch=x86-64-v4")))
static void emc_full_tiles_v4(const double* WDt, const double* Dt, Py_ssize_t d,
                              Py_ssize_t da, Py_ssize_t blk, Py_ssize_t nb, double* S4)
{
    Py_ssize_t a0, b0, i;
    for (a0 = 0; a0 < d; a0 += 4) {
        const double* w0 = WDt + a0 * blk;
        const double* w1 = w0 + blk;
        const double* w2 = w1 + blk;
        const double* w3 = w2 + blk;
        for (b0 = a0; b0 < d; b0 += 4) {
            const double* e01 = Dt + b0 * blk;      /* the pair b0, b0 + 1 */
            const double* e23 = e01 + 2 * blk;      /* the pair b0 + 2, b0 + 3 */
            double* p0 = S4 + 4 * (a0 * da + b0);
            double* p1 = p0 + 4 * da;
            double* p2 = p1 + 4 * da;
            double* p3 = p2 + 4 * da;
            emc_v8 s00, s01, s10, s11, s20, s21, s30, s31;
            memcpy(&s00, p0, 64); memcpy(&s01, p0 + 8, 64);
            memcpy(&s10, p1, 64); memcpy(&s11, p1 + 8, 64);
            memcpy(&s20, p2, 64); memcpy(&s21, p2 + 8, 64);
            memcpy(&s30, p3, 64); memcpy(&s31, p3 + 8, 64);
            for (i = 0; i < nb; i += 4) {
                emc_v8 y01, y23, x0, x1, x2, x3;
                memcpy(&y01, e01 + 2 * i, 64); memcpy(&y23, e23 + 2 * i, 64);
                x0 = (emc_v8)_mm512_broadcast_f64x4(_mm256_loadu_pd(w0 + i));
                x1 = (emc_v8)_mm512_broadcast_f64x4(_mm256_loadu_pd(w1 + i));
                x2 = (emc_v8)_mm512_broadcast_f64x4(_mm256_loadu_pd(w2 + i));
                x3 = (emc_v8)_mm512_broadcast_f64x4(_mm256_loadu_pd(w3 + i));
                s00 = s00 + x0 * y01; s01 = s01 + x0 * y23;
                s10 = s10 + x1 * y01; s11 = s11 + x1 * y23;
                s20 = s20 + x2 * y01; s21 = s21 + x2 * y23;
                s30 = s30 + x3 * y01; s31 = s31 + x3 * y23;
            }
            memcpy(p0, &s00, 64); memcpy(p0 + 8, &s01, 64);
            memcpy(p1, &s10, 64); memcpy(p1 + 8, &s11, 64);
            memcpy(p2, &s20, 64); memcpy(p2 + 8, &s21, 64);
            memcpy(p3, &s30, 64); memcpy(p3 + 8, &s31, 64);
        }
    }
}

#endif

/* 1: the moments' tiles run emc_full_tiles_v4 (the CPU has x86-64-v4);
   0: the 2 x 4 tiles; -1: not decided yet (the kernel's module decides at
   import, before any pass; the first call would ask the CPU otherwise).
   The same bits either way; set to 0 by tests to compare the two. */
static int emc_full_use_v4 = -1;
static int emc_full_v4_available(void)
{
#if EMC_HAVE_CLONES
    return __builtin_cpu_supports("x86-64-v4") ? 1 : 0;
#else
    return 0;
#endif
}

/* Moments about c of the ld rows of Xt (d x ld) weighted by w (ld, zero on
   padding rows): r = sum_i w_i (x_i - c), and the upper triangle (in 2 x 4
   tiles) of S = sum_i w_i (x_i - c)(x_i - c)^T, S being da x da (da = d
   rounded up to 4). Rows go blk at a time (a multiple of 4 chosen so that
   the block's D and w D, da x blk each in Dt and WDt, stay in L1; the tiles
   are emc_full_tiles_v4's 4 x 4 ones on x86-64-v4 CPUs, the same sums). Every
   sum runs in 4 interleaved partial sums (vector lanes: rp, d x 4, and
   S4, da x da x 4, of scratch), added in a fixed order at the end. D is
   stored in pairs of coordinates (2l, 2l + 1), 4 rows of each in turn:
   D[l, i] at Dt[(l / 2) 2 blk + 2 (i - i mod 4) + 4 (l mod 2) + i mod 4], so
   that (a, b) and (a, b + 1) are one 8-double load for the AVX-512 tiles. */
EMC_CLONES
static void emc_full_moments(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                             Py_ssize_t da, Py_ssize_t blk, const double* w,
                             const double* c, double* Dt, double* WDt,
                             double* rp, double* S4, double* r, double* S)
{
    Py_ssize_t i, i0, nb, l, a0, b0, a, b;
    for (i = 0; i < 4 * d; i++) rp[i] = 0.0;
    for (i = 0; i < 4 * da * da; i++) S4[i] = 0.0;
    for (i = 0; i < (da - d) * blk; i++) WDt[d * blk + i] = 0.0;
    for (l = d; l < da; l++)
        for (i = 0; i < blk; i += 4) emc_store(Dt + (l / 2) * 2 * blk + 2 * i + 4 * (l % 2),
                                               emc_set1(0.0));
    if (emc_full_use_v4 < 0) emc_full_use_v4 = emc_full_v4_available();
    for (i0 = 0; i0 < ld; i0 += blk) {
        nb = ld - i0 < blk ? ld - i0 : blk;
        /* D and w D of the block, 4 coordinates at a time: 4 independent
           chains of the residual sums (one chain would wait on each add) */
        for (l = 0; l < d; l += 4) {
            const Py_ssize_t l1 = l + 1 < d ? l + 1 : l, l2 = l + 2 < d ? l + 2 : l,
                             l3 = l + 3 < d ? l + 3 : l;
            const double* x0 = Xt + l * ld + i0;
            const double* x1 = Xt + l1 * ld + i0;
            const double* x2 = Xt + l2 * ld + i0;
            const double* x3 = Xt + l3 * ld + i0;
            emc_v4 p0 = emc_load(rp + 4 * l), p1 = emc_load(rp + 4 * l1),
                   p2 = emc_load(rp + 4 * l2), p3 = emc_load(rp + 4 * l3);
            emc_v4 c0 = emc_set1(c[l]), c1 = emc_set1(c[l1]),
                   c2 = emc_set1(c[l2]), c3 = emc_set1(c[l3]);
            for (i = 0; i < nb; i += 4) {
                emc_v4 wi = emc_load(w + i0 + i);
                emc_v4 t0 = EMC_SUB(emc_load(x0 + i), c0), t1 = EMC_SUB(emc_load(x1 + i), c1),
                       t2 = EMC_SUB(emc_load(x2 + i), c2), t3 = EMC_SUB(emc_load(x3 + i), c3);
                emc_v4 v0 = EMC_MUL(wi, t0), v1 = EMC_MUL(wi, t1),
                       v2 = EMC_MUL(wi, t2), v3 = EMC_MUL(wi, t3);
                emc_store(Dt + (l / 2) * 2 * blk + 2 * i + 4 * (l % 2), t0);
                emc_store(Dt + (l1 / 2) * 2 * blk + 2 * i + 4 * (l1 % 2), t1);
                emc_store(Dt + (l2 / 2) * 2 * blk + 2 * i + 4 * (l2 % 2), t2);
                emc_store(Dt + (l3 / 2) * 2 * blk + 2 * i + 4 * (l3 % 2), t3);
                emc_store(WDt + l * blk + i, v0); emc_store(WDt + l1 * blk + i, v1);
                emc_store(WDt + l2 * blk + i, v2); emc_store(WDt + l3 * blk + i, v3);
                p0 = EMC_ADD(p0, v0); p1 = EMC_ADD(p1, v1);
                p2 = EMC_ADD(p2, v2); p3 = EMC_ADD(p3, v3);
            }
            /* past d, l1..l3 repeat l: the same values, stored last to first */
            emc_store(rp + 4 * l3, p3); emc_store(rp + 4 * l2, p2);
            emc_store(rp + 4 * l1, p1); emc_store(rp + 4 * l, p0);
        }
#if EMC_HAVE_CLONES
        if (emc_full_use_v4) {
            emc_full_tiles_v4(WDt, Dt, d, da, blk, nb, S4);
            continue;
        }
#endif
        for (a0 = 0; a0 < d; a0 += 2) {
            const double* w0 = WDt + a0 * blk;
            const double* w1 = w0 + blk;
            for (b0 = (a0 / 4) * 4; b0 < d; b0 += 4) {
                const double* e0 = Dt + b0 * blk;   /* b0 even: pairs */
                const double* e1 = e0 + 4;
                const double* e2 = e0 + 2 * blk;
                const double* e3 = e2 + 4;
                double* p0 = S4 + 4 * (a0 * da + b0);
                double* p1 = p0 + 4 * da;
                emc_v4 s00 = emc_load(p0), s01 = emc_load(p0 + 4),
                       s02 = emc_load(p0 + 8), s03 = emc_load(p0 + 12),
                       s10 = emc_load(p1), s11 = emc_load(p1 + 4),
                       s12 = emc_load(p1 + 8), s13 = emc_load(p1 + 12);
                for (i = 0; i < nb; i += 4) {
                    emc_v4 x0 = emc_load(w0 + i), x1 = emc_load(w1 + i);
                    emc_v4 y0 = emc_load(e0 + 2 * i), y1 = emc_load(e1 + 2 * i),
                           y2 = emc_load(e2 + 2 * i), y3 = emc_load(e3 + 2 * i);
                    EMC_FMA(s00, x0, y0); EMC_FMA(s01, x0, y1);
                    EMC_FMA(s02, x0, y2); EMC_FMA(s03, x0, y3);
                    EMC_FMA(s10, x1, y0); EMC_FMA(s11, x1, y1);
                    EMC_FMA(s12, x1, y2); EMC_FMA(s13, x1, y3);
                }
                emc_store(p0, s00); emc_store(p0 + 4, s01);
                emc_store(p0 + 8, s02); emc_store(p0 + 12, s03);
                emc_store(p1, s10); emc_store(p1 + 4, s11);
                emc_store(p1 + 8, s12); emc_store(p1 + 12, s13);
            }
        }
    }
    for (l = 0; l < d; l++) r[l] = EMC_HSUM(emc_load(rp + 4 * l));
    for (a = 0; a < da; a++)
        for (b = 0; b < da; b++) S[a * da + b] = EMC_HSUM(emc_load(S4 + 4 * (a * da + b)));
}


/* ---- float32 rows (GaussianFullKernel(..., float32=True)) ------------------ */

/* Xt (d x ld, float) = X^T for n float rows, rows n..ld-1 zero. */
static void emc_transpose_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                              Py_ssize_t ld, float* Xt)
{
    Py_ssize_t i, l;
    for (i = 0; i < n; i++)
        for (l = 0; l < d; l++) Xt[l * ld + i] = X[i * d + l];
    for (l = 0; l < d; l++)
        for (i = n; i < ld; i++) Xt[l * ld + i] = 0.0f;
}

/* Xt (d x ld, double) = X^T widened exactly, for the statistics: the same
   numbers as emc_transpose of X.astype(float64), so the same sums after. */
static void emc_transpose_widen(const float* X, Py_ssize_t n, Py_ssize_t d,
                                Py_ssize_t ld, double* Xt)
{
    Py_ssize_t i, l;
    for (i = 0; i < n; i++)
        for (l = 0; l < d; l++) Xt[l * ld + i] = (double)X[i * d + l];
    for (l = 0; l < d; l++)
        for (i = n; i < ld; i++) Xt[l * ld + i] = 0.0;
}

/* Rows per group of the float32 log-density: EMC_ROWS_F32 = 32 (two 16-float
   vectors of rows on x86-64-v4, one elsewhere, which then takes two groups of
   16); X^T's stride is a multiple of it. */
#define EMC_ROWS_F32 32

/* out[i, k] = log_norm[k] - q_k[i] / 2 for the n float rows of Xt (d x ld), the
   quadratic form q_k[i] = ||t_i U_k||^2 computed in float: t = (x - H_k) - L_k,
   the mean held as two floats (H = float(mu), L = float(mu - H)), U_k the upper
   triangle rounded to float (K x d x dp, dp = d rounded up to 4, zero padded);
   log_norm and the result in double (docs/elbo_chain.md#float32 bounds the
   error). The float64 kernel's loop on 16-float vectors of rows: NR (1 or 2,
   a constant) vectors of rows, 4 columns of t U at a time, column j summing
   only its j + 1 terms of the triangle, each lane the same operations in the
   same order (so NR = 1 and 2 give the same bits). Dt: 16 NR d floats.
   Returns 1 if some q is not finite (overflowed float), else 0. */
#if EMC_GNUC
typedef float emc_v16f __attribute__((vector_size(64)));
/* x in every lane (scalar + vector: one broadcast; + 0 changes only the sign
   of a zero, which the products and squares remove); a macro, so that no
   64-byte vector is returned by value from a function compiled without AVX-512 */
#define emc_set1_f16(x) ((emc_v16f){0} + (x))

EMC_ALWAYS_INLINE int emc_full_log_density_f32_rows(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t dp,
        Py_ssize_t K, const float* H, const float* L, const float* U,
        const double* log_norm, float* Dt, double* out, const int NR)
{
    Py_ssize_t i0, k, l, j0, lmax, r;
    const Py_ssize_t G = 16 * NR;       /* rows per group */
    float q[32];
    int bad = 0;
    for (i0 = 0; i0 < n; i0 += G) {
        Py_ssize_t rows = n - i0 < G ? n - i0 : G;
        for (k = 0; k < K; k++) {
            const float* h = H + k * d;
            const float* lo = L + k * d;
            const float* Uk = U + k * d * dp;
            for (l = 0; l < d; l++) {
                for (int v = 0; v < NR; v++) {
                    emc_v16f x;
                    memcpy(&x, Xt + l * ld + i0 + 16 * v, sizeof x);
                    x = (x - h[l]) - lo[l];
                    memcpy(Dt + G * l + 16 * v, &x, sizeof x);
                }
            }
            emc_v16f sq[2];
            for (int v = 0; v < NR; v++) sq[v] = (emc_v16f){0};
            for (j0 = 0; j0 < d; j0 += 4) {
                emc_v16f a[4][2];
                for (int c = 0; c < 4; c++)
                    for (int v = 0; v < NR; v++) a[c][v] = (emc_v16f){0};
                lmax = j0 + 4 < d ? j0 + 4 : d;
                for (l = 0; l < lmax; l++) {
                    const float* u = Uk + l * dp + j0;
                    emc_v16f t[2];
                    for (int v = 0; v < NR; v++) memcpy(&t[v], Dt + G * l + 16 * v, sizeof t[v]);
                    for (int c = 0; c < 4; c++) {
                        emc_v16f uc = emc_set1_f16(u[c]);
                        for (int v = 0; v < NR; v++) a[c][v] = a[c][v] + uc * t[v];
                    }
                }
                for (int c = 0; c < 4; c++)
                    for (int v = 0; v < NR; v++) sq[v] = sq[v] + a[c][v] * a[c][v];
            }
            for (int v = 0; v < NR; v++) memcpy(q + 16 * v, &sq[v], sizeof sq[v]);
            for (r = 0; r < rows; r++) {       /* (the padding rows are not looked at) */
                if (!(q[r] <= FLT_MAX)) bad = 1;       /* overflowed: inf */
                out[(i0 + r) * K + k] = log_norm[k] - 0.5 * (double)q[r];
            }
        }
    }
    return bad;
}

#if EMC_HAVE_CLONES
/* the same loop with two 16-float vectors of rows in zmm registers (x86-64-v4) */
__attribute__((target("arch=x86-64-v4")))
static int emc_full_log_density_f32_v4(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t dp,
        Py_ssize_t K, const float* H, const float* L, const float* U,
        const double* log_norm, float* Dt, double* out)
{
    return emc_full_log_density_f32_rows(Xt, ld, n, d, dp, K, H, L, U, log_norm, Dt,
                                         out, 2);
}
#endif

EMC_CLONES
static int emc_full_log_density_f32_v3(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t dp,
        Py_ssize_t K, const float* H, const float* L, const float* U,
        const double* log_norm, float* Dt, double* out)
{
    return emc_full_log_density_f32_rows(Xt, ld, n, d, dp, K, H, L, U, log_norm, Dt,
                                         out, 1);
}

/* 1: the float32 log-density runs two vectors of rows in AVX-512 registers;
   0: one (the AVX2 clone, or baseline x86-64); -1: not decided yet (decided
   at the module's import). The same bits either way (tests compare them). */
static int emc_full_f32_use_v4 = -1;

static int emc_full_log_density_f32(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t dp,
        Py_ssize_t K, const float* H, const float* L, const float* U,
        const double* log_norm, float* Dt, double* out)
{
    if (emc_full_f32_use_v4 < 0) emc_full_f32_use_v4 = emc_full_v4_available();
#if EMC_HAVE_CLONES
    if (emc_full_f32_use_v4)
        return emc_full_log_density_f32_v4(Xt, ld, n, d, dp, K, H, L, U, log_norm, Dt, out);
#endif
    return emc_full_log_density_f32_v3(Xt, ld, n, d, dp, K, H, L, U, log_norm, Dt, out);
}
#else
/* without GNU vectors: the same operations in the same order, one row at a time */
static int emc_full_f32_use_v4 = 0;
static int emc_full_log_density_f32(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t dp,
        Py_ssize_t K, const float* H, const float* L, const float* U,
        const double* log_norm, float* Dt, double* out)
{
    Py_ssize_t i, k, l, j0, lmax;
    int c, bad = 0;
    for (i = 0; i < n; i++)
        for (k = 0; k < K; k++) {
            const float* Uk = U + k * d * dp;
            float sq = 0.0f;
            for (l = 0; l < d; l++) Dt[l] = (Xt[l * ld + i] - H[k * d + l]) - L[k * d + l];
            for (j0 = 0; j0 < d; j0 += 4) {
                float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                lmax = j0 + 4 < d ? j0 + 4 : d;
                for (l = 0; l < lmax; l++)
                    for (c = 0; c < 4; c++) a[c] = a[c] + Uk[l * dp + j0 + c] * Dt[l];
                for (c = 0; c < 4; c++) sq = sq + a[c] * a[c];
            }
            if (!(sq <= FLT_MAX)) bad = 1;       /* overflowed: inf */
            out[i * K + k] = log_norm[k] - 0.5 * (double)sq;
        }
    return bad;
}
#endif

/* ---- float32 statistics (GaussianFullKernel(..., float32=True)) ------------ */

/* Rows of the float32 statistics' float sums (EMC_STAT_ROWS_F32 / 16 terms
   per lane, then added to double), and the exact scale of the weights (2^40)
   that keeps most w t and w t t above float's normal range;
   docs/elbo_chain.md#float32 derives the bound from both. */
#define EMC_STAT_ROWS_F32 256
#define EMC_STAT_SCALE_F32 1099511627776.0

/* The largest of the m floats' |x| as bits (sign cleared: non-negative
   floats' bits order as their values), above 0x7f800000 (inf) if some x is
   NaN; integer maxima, which the compiler vectorizes. */
EMC_CLONES
static uint32_t emc_abs_max_bits_f32(const float* x, Py_ssize_t m)
{
    uint32_t best = 0, b;
    Py_ssize_t i;
    for (i = 0; i < m; i++) {
        memcpy(&b, x + i, sizeof b);
        b &= 0x7fffffffu;
        best = b > best ? b : best;
    }
    return best;
}

/* The largest bits of the m doubles, sign kept: the largest value if all are
   non-negative numbers; a negative one (-0 too) or NaN gives bits above those
   of any non-negative number. */
EMC_CLONES
static uint64_t emc_max_bits_f64(const double* x, Py_ssize_t m)
{
    uint64_t best = 0, b;
    Py_ssize_t i;
    for (i = 0; i < m; i++) {
        memcpy(&b, x + i, sizeof b);
        best = b > best ? b : best;
    }
    return best;
}

/* 1 if the float32 statistics may run on the n float rows X (n x d) with
   weights (n x K) about the floats h (K x d): every weight in [0, 2^42] (-0
   excluded), |x| + |h| <= 2^20 and no float sum of EMC_STAT_ROWS_F32 / 16
   terms that can overflow (w 2^40 max(t, t^2) EMC_STAT_ROWS_F32 / 16 <=
   2^126); else 0 (the chunk is summed in double). Weights below float's
   normal range once scaled (w < 2^-166) and products that underflow carry an
   absolute error, which |t| <= 2^20 bounds (docs/elbo_chain.md#float32). NaN
   gives 0. */
static int emc_full_f32_stats_ok(const float* X, Py_ssize_t n, Py_ssize_t d,
                                 const double* weights, Py_ssize_t K, const float* h)
{
    const double wlim = 0x1p42;
    uint32_t xb = emc_abs_max_bits_f32(X, n * d);
    uint64_t wb = emc_max_bits_f64(weights, n * K), lb;
    Py_ssize_t i;
    double hm = 0.0, wmax, tm, a;
    float xf;
    memcpy(&lb, &wlim, sizeof lb);
    if (xb > 0x7f800000u || wb > lb) return 0;
    memcpy(&xf, &xb, sizeof xf);
    memcpy(&wmax, &wb, sizeof wmax);
    for (i = 0; i < K * d; i++) {
        a = fabs((double)h[i]);
        if (!(a <= hm)) hm = a;
    }
    tm = (double)xf + hm;
    if (!(tm <= 0x1p20)) return 0;
    a = tm > 1.0 ? tm * tm : 1.0;
    return wmax * EMC_STAT_SCALE_F32 * a * (EMC_STAT_ROWS_F32 / 16) <= 0x1p126;
}

/* Moments about h (d floats, the pass's mean rounded to float) of component k
   of the ld rows of the float X^T (d x ld, ld a multiple of EMC_ROWS_F32, rows
   n..ld-1 zero), weighted by column k of weights (n x K): r = sum_i w_i t_i and
   the upper triangle (in 4-column tiles) of S = sum_i w_i t_i t_i^T (da x da),
   t = x - h. Blocks of F = EMC_STAT_ROWS_F32 rows: wf = float(w 2^40), t in
   float (D: da x F floats), then per TA rows of tiles their wf t (WD: TA x F
   floats; r's sums) and the tiles; the block's sums of wf t and (wf t) t_b in
   float over 16 lanes (lane i mod 16, in row order, depth F / 16), each
   widened and added to its lane of the double rp16 (16 d) and S16 (16 da da),
   summed at the end in a fixed tree and scaled back by 2^-40. A tile's TA x 4
   float sums stay in registers over the whole block (rows inner) and are
   widened once per block: nothing of them is loaded or stored between rows.
   TA (2 or 4, a constant) rows of a tile and V4 (the AVX-512 widening): the
   same operations per entry and lane either way (the same bits). */
#if EMC_GNUC
typedef double emc_v8d __attribute__((vector_size(64)));
typedef float emc_v8f __attribute__((vector_size(32)));

/* + the 16 float lanes of x, widened, to the 16 doubles at p */
#define EMC_ADD_WIDENED_16(p, x) do {                                      \
        emc_v8f lo_, hi_; emc_v8d s0_, s1_;                                \
        memcpy(&lo_, &(x), 32); memcpy(&hi_, (const char*)&(x) + 32, 32);  \
        memcpy(&s0_, (p), 64); memcpy(&s1_, (p) + 8, 64);                  \
        s0_ = s0_ + __builtin_convertvector(lo_, emc_v8d);                 \
        s1_ = s1_ + __builtin_convertvector(hi_, emc_v8d);                 \
        memcpy((p), &s0_, 64); memcpy((p) + 8, &s1_, 64);                  \
    } while (0)

#if EMC_HAVE_CLONES
/* EMC_ADD_WIDENED_16 in AVX-512 intrinsics: the same sums (each lane widened
   exactly, one double add), two vcvtps2pd ymm -> zmm, where GCC 12 makes four
   4-lane conversions and inserts of the generic one (a third of the float32
   moments' time in perf); only the x86-64-v4 loop calls it */
__attribute__((target("arch=x86-64-v4")))
static inline void emc_add_widened_16_v4(double* p, const emc_v16f* x)
{
    __m512 v;
    memcpy(&v, x, 64);
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), lo));
    _mm512_storeu_pd(p + 8, _mm512_add_pd(_mm512_loadu_pd(p + 8), hi));
}
#define EMC_ADD_WIDENED(V4, p, x) do {                                     \
        if (V4) emc_add_widened_16_v4((p), &(x));                          \
        else EMC_ADD_WIDENED_16((p), (x));                                 \
    } while (0)
#else
#define EMC_ADD_WIDENED(V4, p, x) EMC_ADD_WIDENED_16((p), (x))
#endif

EMC_ALWAYS_INLINE void emc_full_moments_f32_body(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t da,
        const float* wf, const float* h,
        float* D, float* WD, double* rp16, double* S16, const int TA, const int V4)
{
    const Py_ssize_t F = EMC_STAT_ROWS_F32;
    Py_ssize_t i, i0, nb, l, v, a0, b0;
    for (l = d; l < da; l++)
        for (i = 0; i < F; i++) D[l * F + i] = 0.0f;
    for (i0 = 0; i0 < ld; i0 += F) {
        nb = ld - i0 < F ? ld - i0 : F;      /* a multiple of 16 */
        for (l = 0; l < d; l++) {
            emc_v16f hl = emc_set1_f16(h[l]);
            for (v = 0; v < nb; v += 16) {
                emc_v16f x;
                memcpy(&x, Xt + l * ld + i0 + v, 64);
                x = x - hl;
                memcpy(D + l * F + v, &x, 64);
            }
        }
        for (a0 = 0; a0 < d; a0 += TA) {
            /* w t of the tiles' TA rows (and their sums r), then the tiles */
            for (int ta = 0; ta < TA; ta++) {
                emc_v16f racc = (emc_v16f){0};
                for (v = 0; v < nb; v += 16) {
                    emc_v16f t, w;
                    memcpy(&t, D + (a0 + ta) * F + v, 64);
                    memcpy(&w, wf + i0 + v, 64);
                    t = w * t;
                    memcpy(WD + ta * F + v, &t, 64);
                    racc = racc + t;
                }
                if (a0 + ta < d) EMC_ADD_WIDENED(V4, rp16 + 16 * (a0 + ta), racc);
            }
            b0 = (a0 / 4) * 4;
            if (TA == 4) {
                /* the diagonal tile (b0 = a0): its upper triangle only, c >= ta
                   (10 of the 16 sums, each the same operations as in a full
                   tile; the others are never read) */
                emc_v16f acc[4][4];
                for (int ta = 0; ta < 4; ta++)
                    for (int c = ta; c < 4; c++) acc[ta][c] = (emc_v16f){0};
                for (v = 0; v < nb; v += 16) {
                    emc_v16f x[4], y[4];
                    for (int ta = 0; ta < 4; ta++) memcpy(&x[ta], WD + ta * F + v, 64);
                    for (int c = 0; c < 4; c++) memcpy(&y[c], D + (b0 + c) * F + v, 64);
                    for (int ta = 0; ta < 4; ta++)
                        for (int c = ta; c < 4; c++) acc[ta][c] = acc[ta][c] + x[ta] * y[c];
                }
                for (int ta = 0; ta < 4; ta++)
                    for (int c = ta; c < 4; c++)
                        EMC_ADD_WIDENED(V4, S16 + 16 * ((a0 + ta) * da + b0 + c), acc[ta][c]);
                b0 += 4;
            }
            for (; b0 < d; b0 += 4) {
                emc_v16f acc[4][4];
                for (int ta = 0; ta < TA; ta++)
                    for (int c = 0; c < 4; c++) acc[ta][c] = (emc_v16f){0};
                for (v = 0; v < nb; v += 16) {
                    emc_v16f x[4], y[4];
                    for (int ta = 0; ta < TA; ta++) memcpy(&x[ta], WD + ta * F + v, 64);
                    for (int c = 0; c < 4; c++) memcpy(&y[c], D + (b0 + c) * F + v, 64);
                    for (int ta = 0; ta < TA; ta++)
                        for (int c = 0; c < 4; c++) acc[ta][c] = acc[ta][c] + x[ta] * y[c];
                }
                for (int ta = 0; ta < TA; ta++)
                    for (int c = 0; c < 4; c++)
                        EMC_ADD_WIDENED(V4, S16 + 16 * ((a0 + ta) * da + b0 + c), acc[ta][c]);
            }
        }
    }
}

#if EMC_HAVE_CLONES
__attribute__((target("arch=x86-64-v4")))
static void emc_full_moments_f32_v4(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t da,
        const float* wf, const float* h, float* D, float* WD, double* rp16, double* S16)
{
    emc_full_moments_f32_body(Xt, ld, n, d, da, wf, h, D, WD, rp16, S16, 4, 1);
}
#endif

EMC_CLONES
static void emc_full_moments_f32_v3(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t da,
        const float* wf, const float* h, float* D, float* WD, double* rp16, double* S16)
{
    emc_full_moments_f32_body(Xt, ld, n, d, da, wf, h, D, WD, rp16, S16, 2, 0);
}
#else
/* without GNU vectors: the same operations per entry and lane, one lane at a
   time (w t made again for each entry rather than kept: WD is unused) */
static void emc_full_moments_f32_v3(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t da,
        const float* wf, const float* h, float* D, float* WD, double* rp16, double* S16)
{
    const Py_ssize_t F = EMC_STAT_ROWS_F32;
    Py_ssize_t i0, nb, l, v, a, b;
    int e;
    for (i0 = 0; i0 < ld; i0 += F) {
        nb = ld - i0 < F ? ld - i0 : F;
        for (l = 0; l < d; l++)
            for (e = 0; e < 16; e++) {
                float racc = 0.0f;
                for (v = 0; v < nb; v += 16) {
                    float t = Xt[l * ld + i0 + v + e] - h[l];
                    float wt = wf[i0 + v + e] * t;
                    D[l * F + v + e] = t;
                    racc = racc + wt;
                }
                rp16[16 * l + e] += (double)racc;
            }
        for (a = 0; a < d; a++)
            for (b = (a / 4) * 4; b < d; b++)
                for (e = 0; e < 16; e++) {
                    float acc = 0.0f;
                    for (v = 0; v < nb; v += 16) {
                        float wt = wf[i0 + v + e] * D[a * F + v + e];   /* w t, rounded */
                        acc = acc + wt * D[b * F + v + e];
                    }
                    S16[16 * (a * da + b) + e] += (double)acc;
                }
    }
}
#endif

/* wt (K x ld floats) = the weights (n x K) transposed, scaled by 2^40 and
   rounded to float; rows n..ld-1 zero. */
static void emc_weights_f32(const double* weights, Py_ssize_t n, Py_ssize_t K,
                            Py_ssize_t ld, float* wt)
{
    Py_ssize_t i, k;
    for (i = 0; i < n; i++)
        for (k = 0; k < K; k++) wt[k * ld + i] = (float)(weights[i * K + k] * EMC_STAT_SCALE_F32);
    for (k = 0; k < K; k++)
        for (i = n; i < ld; i++) wt[k * ld + i] = 0.0f;
}

/* emc_full_moments_f32_v3/_v4 for one component (wf: its row of
   emc_weights_f32, ld floats), then r (d) and the upper triangle of S (da x
   da, entries a <= b < d; the others 0) added up from the lanes in a fixed
   tree and scaled back; rp16, S16 are zeroed here. */
static void emc_full_moments_f32(
        const float* Xt, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t d, Py_ssize_t da,
        const float* wf, const float* h,
        float* D, float* WD, double* rp16, double* S16, double* r, double* S)
{
    Py_ssize_t i, e;
    for (i = 0; i < 16 * d; i++) rp16[i] = 0.0;
    for (i = 0; i < 16 * da * da; i++) S16[i] = 0.0;
    if (emc_full_f32_use_v4 < 0) emc_full_f32_use_v4 = emc_full_v4_available();
#if EMC_GNUC && EMC_HAVE_CLONES
    if (emc_full_f32_use_v4)
        emc_full_moments_f32_v4(Xt, ld, n, d, da, wf, h, D, WD, rp16, S16);
    else
#endif
        emc_full_moments_f32_v3(Xt, ld, n, d, da, wf, h, D, WD, rp16, S16);
    for (e = 0; e < d + da * da; e++) {
        const double* t = e < d ? rp16 + 16 * e : S16 + 16 * (e - d);
        double s8[8], s4[4];
        int j;
        if (e >= d && ((e - d) / da >= d || (e - d) % da >= d || (e - d) % da < (e - d) / da)) {
            S[e - d] = 0.0;     /* below the diagonal or padding: not summed, not read */
            continue;
        }
        for (j = 0; j < 8; j++) s8[j] = t[j] + t[j + 8];
        for (j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
        s4[0] = ((s4[0] + s4[2]) + (s4[1] + s4[3])) / EMC_STAT_SCALE_F32;
        if (e < d) r[e] = s4[0]; else S[e - d] = s4[0];
    }
}

#endif

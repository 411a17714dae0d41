/* The loops of the diagonal Gaussian kernel (plugins/_gaussian_diag_kernel.pyx,
   whose docstring describes them). */
#ifndef EMCORE_GAUSSIAN_DIAG_H
#define EMCORE_GAUSSIAN_DIAG_H
#include "emcore/vec4.h"   /* emc_v4 and its operations, EMC_CLONES */

/* R rows (1 or 2) against components k0..k0+4nv-1: acc[r][v] accumulates
   P (x_j - M)^2 over j in order, then base - acc / 2 goes to out (row i's
   K entries; only k < K stored). R and nv are constants at every call: two
   rows give the dependent multiply-add chains over j room to overlap. */
EMC_ALWAYS_INLINE void emd_log_density_block(
        const double* x, Py_ssize_t d, const int R, Py_ssize_t K, Py_ssize_t Kp,
        const double* M, const double* P, const double* base, Py_ssize_t k0,
        const int nv, double* acc_out, double* out)
{
    emc_v4 a[2][4];
    emc_v4 half = emc_set1(-0.5);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < nv; v++) a[r][v] = emc_set1(0.0);
    for (Py_ssize_t j = 0; j < d; j++) {
        const double* m = M + j * Kp + k0;
        const double* p = P + j * Kp + k0;
        emc_v4 xj[2];
        for (int r = 0; r < R; r++) xj[r] = emc_set1(x[r * d + j]);
        for (int v = 0; v < nv; v++) {
            emc_v4 mv = emc_load(m + 4 * v), pv = emc_load(p + 4 * v);
            for (int r = 0; r < R; r++) {
                emc_v4 t = EMC_SUB(xj[r], mv);
                EMC_FMA(a[r][v], EMC_MUL(pv, t), t);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        for (int v = 0; v < nv; v++)
            emc_store(acc_out + 4 * v, EMC_ADD(emc_load(base + k0 + 4 * v),
                                               EMC_MUL(half, a[r][v])));
        Py_ssize_t top = K - k0 < 4 * nv ? K - k0 : 4 * nv;
        for (Py_ssize_t k = 0; k < top; k++) out[r * K + k0 + k] = acc_out[k];
    }
}

/* out[i, k] = base[k] - 1/2 sum_j P[j, k] (x_ij - M[j, k])^2 for k < K; the
   tables M, P are d x Kp (Kp = K rounded up to 4, padded). acc: Kp doubles.
   Rows two at a time, components 16 at a time. */
EMC_CLONES
static void emd_log_density(const double* X, Py_ssize_t n, Py_ssize_t d,
                            Py_ssize_t K, Py_ssize_t Kp, const double* M,
                            const double* P, const double* base, double* acc,
                            double* out)
{
    for (Py_ssize_t i = 0; i < n; i += 2) {
        const double* x = X + i * d;
        double* o = out + i * K;
        for (Py_ssize_t k0 = 0; k0 < Kp; k0 += 16) {
#define EMD_LD2(NV) emd_log_density_block(x, d, 2, K, Kp, M, P, base, k0, NV, acc, o)
#define EMD_LD1(NV) emd_log_density_block(x, d, 1, K, Kp, M, P, base, k0, NV, acc, o)
            if (i + 1 < n)
                EMC_WITH_NV(Kp - k0, EMD_LD2);
            else
                EMC_WITH_NV(Kp - k0, EMD_LD1);
#undef EMD_LD2
#undef EMD_LD1
        }
    }
}

/* float32 rows: out[i, k] = base[k] - 1/2 q_ik, the quadratic form
   q_ik = sum_j P[j, k] t_ijk^2 in float on 8-float vectors, with the difference
   t = (x_ij - H[j, k]) - L[j, k] to the mean held as two floats, H = float(mu),
   L = float(mu - H) (so t carries a relative error, ~2 u32 |t|, however far the
   data are from the origin), P = float(U^2); tables d x Kp (Kp = K rounded up
   to 8, zero padded); base and the result in double (docs/elbo_chain.md#float32
   bounds the error). Rows two at a time, components 16 at a
   time. lw (K doubles) or NULL: added to each result (the log joint of the
   fused step: the same two roundings as a sweep adding it after). Returns 1
   if some q overflowed float (then -inf in out: the caller recomputes those
   entries in double), else 0. */
#if EMC_GNUC
typedef float emd_v8f __attribute__((vector_size(32)));
typedef float emd_v4f __attribute__((vector_size(16)));
/* 8 doubles: a float vector widened whole is two 4-lane vcvtps2pd in the AVX2
   clone (GCC 12 widens a 4-float vector two lanes at a time) */
typedef double emd_v8d __attribute__((vector_size(64)));
/* x in every lane: scalar + vector is one vbroadcastss in GCC 12's AVX2 clone
   (an initialiser {x, x, ...} becomes a chain of vinsertps); + 0 changes only
   the sign of a zero, which the difference and the square remove */
static inline emd_v8f emd_set1_f8(float x) { return (emd_v8f){0} + x; }

/* out[k] = base[k] - 1/2 av[k] (+ lw[k] when lw is not NULL: a second rounding,
   as a sweep adding it after) for k < min(8, m): the 8 float sums widened in two
   halves (exact); chk collects NaN in a lane once a sum overflowed to inf */
EMC_ALWAYS_INLINE void emd_store_widened(double* o, emd_v8f av, const double* base,
                                         const double* lw, Py_ssize_t m, emd_v8f* chk)
{
    *chk += av * 0.0f;
    const emc_v4 half = emc_set1(-0.5);
    if (m >= 8) {
        emd_v8d wide = __builtin_convertvector(av, emd_v8d);
        emc_v4 lo = __builtin_shufflevector(wide, wide, 0, 1, 2, 3);
        emc_v4 hi = __builtin_shufflevector(wide, wide, 4, 5, 6, 7);
        emc_v4 rl = EMC_ADD(emc_load(base), EMC_MUL(half, lo));
        emc_v4 rh = EMC_ADD(emc_load(base + 4), EMC_MUL(half, hi));
        if (lw != NULL) {
            rl = EMC_ADD(rl, emc_load(lw));
            rh = EMC_ADD(rh, emc_load(lw + 4));
        }
        emc_store(o, rl);
        emc_store(o + 4, rh);
    } else {
        for (Py_ssize_t k = 0; k < m; k++) {
            double value = base[k] - 0.5 * (double)av[k];
            o[k] = lw != NULL ? value + lw[k] : value;
        }
    }
}

EMC_ALWAYS_INLINE void emd_log_density_block_f32(
        const float* x, Py_ssize_t d, const int R, Py_ssize_t K, Py_ssize_t Kp,
        const float* H, const float* L, const float* P, const double* base,
        Py_ssize_t k0, const int nv, const double* lw, double* out, emd_v8f* chk)
{
    emd_v8f a[2][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < nv; v++) a[r][v] = (emd_v8f){0};
    for (Py_ssize_t j = 0; j < d; j++) {
        const float* h = H + j * Kp + k0;
        const float* l = L + j * Kp + k0;
        const float* p = P + j * Kp + k0;
        emd_v8f xj[2];
        for (int r = 0; r < R; r++) xj[r] = emd_set1_f8(x[r * d + j]);
        for (int v = 0; v < nv; v++) {
            emd_v8f hv, lv, pv;
            memcpy(&hv, h + 8 * v, sizeof hv);
            memcpy(&lv, l + 8 * v, sizeof lv);
            memcpy(&pv, p + 8 * v, sizeof pv);
            for (int r = 0; r < R; r++) {
                emd_v8f t = (xj[r] - hv) - lv;
                a[r][v] += (pv * t) * t;
            }
        }
    }
    /* widened in registers, each accumulator as it is (the rows' and vectors'
       loops unrolled: an array of vectors indexed in a loop went to the stack,
       and the halves through 2-lane conversions) */
#pragma GCC unroll 2
    for (int r = 0; r < R; r++) {
        double* o = out + r * K + k0;
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++)
            emd_store_widened(o + 8 * v, a[r][v], base + k0 + 8 * v,
                              lw != NULL ? lw + k0 + 8 * v : NULL, K - k0 - 8 * v, chk);
    }
}

EMC_CLONES
static int emd_log_density_f32_v3(const float* X, Py_ssize_t n, Py_ssize_t d,
                                  Py_ssize_t K, Py_ssize_t Kp, const float* H,
                                  const float* L, const float* P, const double* base,
                                  const double* lw, double* out)
{
    emd_v8f chk = {0};
    for (Py_ssize_t i = 0; i < n; i += 2) {
        const float* x = X + i * d;
        double* o = out + i * K;
        for (Py_ssize_t k0 = 0; k0 < Kp; k0 += 16) {
            const int nv = Kp - k0 >= 16 ? 2 : 1;
            const int R = i + 1 < n ? 2 : 1;   /* constants for the inlined block */
            if (R == 2 && nv == 2)
                emd_log_density_block_f32(x, d, 2, K, Kp, H, L, P, base, k0, 2, lw, o, &chk);
            else if (R == 2)
                emd_log_density_block_f32(x, d, 2, K, Kp, H, L, P, base, k0, 1, lw, o, &chk);
            else if (nv == 2)
                emd_log_density_block_f32(x, d, 1, K, Kp, H, L, P, base, k0, 2, lw, o, &chk);
            else
                emd_log_density_block_f32(x, d, 1, K, Kp, H, L, P, base, k0, 1, lw, o, &chk);
        }
    }
    for (int l = 0; l < 8; l++)
        if (chk[l] != 0.0f) return 1;
    return 0;
}

#if EMC_HAVE_CLONES
/* The same loop with AVX-512 (x86-64-v4): components 16 at a time in one
   16-float vector (the 8-float block for a last 8), each lane's operations those
   of the AVX2 clone in the same order, so the same bits; per j and pair of rows
   half the instructions. Chosen at run time by emd_f32_use_v4. */
#define EMD_V4_ROWS 4      /* rows per block: 4 accumulators, 4 chains over j */
typedef float emd_v16f __attribute__((vector_size(64)));
typedef double emd_v16d __attribute__((vector_size(128)));
typedef double emd_v8dd __attribute__((vector_size(64)));

__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emd_store_widened16(double* o, emd_v16f av, const double* base, const double* lw,
                    Py_ssize_t m, emd_v16f* chk)
{
    *chk += av * 0.0f;
    if (m >= 16) {
        emd_v16d wide = __builtin_convertvector(av, emd_v16d);
        emd_v8dd lo = __builtin_shufflevector(wide, wide, 0, 1, 2, 3, 4, 5, 6, 7);
        emd_v8dd hi = __builtin_shufflevector(wide, wide, 8, 9, 10, 11, 12, 13, 14, 15);
        emd_v8dd b0, b1;
        memcpy(&b0, base, sizeof b0);
        memcpy(&b1, base + 8, sizeof b1);
        emd_v8dd rl = b0 + -0.5 * lo, rh = b1 + -0.5 * hi;
        if (lw != NULL) {
            emd_v8dd l0, l1;
            memcpy(&l0, lw, sizeof l0);
            memcpy(&l1, lw + 8, sizeof l1);
            rl = rl + l0;
            rh = rh + l1;
        }
        memcpy(o, &rl, sizeof rl);
        memcpy(o + 8, &rh, sizeof rh);
    } else {
        for (Py_ssize_t k = 0; k < m; k++) {
            double value = base[k] - 0.5 * (double)av[k];
            o[k] = lw != NULL ? value + lw[k] : value;
        }
    }
}

__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emd_log_density_block16(const float* x, Py_ssize_t d, const int R, Py_ssize_t K,
                        Py_ssize_t Kp, const float* H, const float* L, const float* P,
                        const double* base, Py_ssize_t k0, const double* lw, double* out,
                        emd_v16f* chk)
{
    emd_v16f a[8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) a[r] = (emd_v16f){0};
    for (Py_ssize_t j = 0; j < d; j++) {
        emd_v16f hv, lv, pv;
        memcpy(&hv, H + j * Kp + k0, sizeof hv);
        memcpy(&lv, L + j * Kp + k0, sizeof lv);
        memcpy(&pv, P + j * Kp + k0, sizeof pv);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            emd_v16f t = (hv - x[r * d + j]) + lv;   /* -t exactly: the same (p t) t */
            a[r] += (pv * t) * t;
        }
    }
    Py_ssize_t m = K - k0;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        emd_store_widened16(out + r * K + k0, a[r], base + k0, lw != NULL ? lw + k0 : NULL, m, chk);
}

__attribute__((target("arch=x86-64-v4")))
static int emd_log_density_f32_v4(const float* X, Py_ssize_t n, Py_ssize_t d,
                                  Py_ssize_t K, Py_ssize_t Kp, const float* H,
                                  const float* L, const float* P, const double* base,
                                  const double* lw, double* out)
{
    emd_v16f chk16 = {0};
    emd_v8f chk = {0};
    Py_ssize_t i = 0;
    for (; i < n; i += EMD_V4_ROWS) {
        const float* x = X + i * d;
        double* o = out + i * K;
        Py_ssize_t k0 = 0;
        for (; k0 + 16 <= Kp; k0 += 16) {
            if (i + EMD_V4_ROWS <= n)
                emd_log_density_block16(x, d, EMD_V4_ROWS, K, Kp, H, L, P, base, k0, lw, o, &chk16);
            else
                for (Py_ssize_t r = 0; r < n - i; r++)
                    emd_log_density_block16(x + r * d, d, 1, K, Kp, H, L, P, base, k0, lw,
                                            o + r * K, &chk16);
        }
        if (k0 < Kp)            /* a last 8 components: the AVX2 clone's block */
            for (Py_ssize_t r = 0; r < EMD_V4_ROWS && i + r < n; r += 2) {
                if (i + r + 1 < n)
                    emd_log_density_block_f32(x + r * d, d, 2, K, Kp, H, L, P, base, k0, 1, lw, o + r * K, &chk);
                else
                    emd_log_density_block_f32(x + r * d, d, 1, K, Kp, H, L, P, base, k0, 1, lw, o + r * K, &chk);
            }
    }
    for (int l = 0; l < 16; l++)
        if (chk16[l] != 0.0f) return 1;
    for (int l = 0; l < 8; l++)
        if (chk[l] != 0.0f) return 1;
    return 0;
}
#endif

/* 1 if this build and CPU have emd_log_density_f32_v4 */
static int emd_v4_available(void)
{
#if EMC_HAVE_CLONES
    return __builtin_cpu_supports("x86-64-v4") ? 1 : 0;
#else
    return 0;
#endif
}

/* 1: the float32 log-density and statistics run their AVX-512 loops
   (emd_log_density_f32_v4, emd_moments_about_f32_v4); 0: the clones the CPU
   has; -1: not decided yet (decided at the module's import, before any pass).
   The same bits either way (the tests compare them). */
static int emd_f32_use_v4 = -1;

static int emd_log_density_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                               Py_ssize_t K, Py_ssize_t Kp, const float* H,
                               const float* L, const float* P, const double* base,
                               const double* lw, double* out)
{
    if (emd_f32_use_v4 < 0) emd_f32_use_v4 = emd_v4_available();
#if EMC_HAVE_CLONES
    if (emd_f32_use_v4)
        return emd_log_density_f32_v4(X, n, d, K, Kp, H, L, P, base, lw, out);
#endif
    return emd_log_density_f32_v3(X, n, d, K, Kp, H, L, P, base, lw, out);
}
#else
static int emd_f32_use_v4 = 0;
static int emd_v4_available(void) { return 0; }
/* without GNU vectors: the same sums, one component at a time (j order) */
static int emd_log_density_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                               Py_ssize_t K, Py_ssize_t Kp, const float* H,
                               const float* L, const float* P, const double* base,
                               const double* lw, double* out)
{
    int overflow = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t k = 0; k < K; k++) {
            float q = 0.0f;
            for (Py_ssize_t j = 0; j < d; j++) {
                float t = (X[i * d + j] - H[j * Kp + k]) - L[j * Kp + k];
                q += (P[j * Kp + k] * t) * t;
            }
            if (q - q != 0.0f) overflow = 1;       /* inf */
            out[i * K + k] = base[k] - 0.5 * (double)q;
            if (lw != NULL) out[i * K + k] += lw[k];
        }
    return overflow;
}
#endif

#define EMD_ROWS 8

/* The moments of one block of nb rows for the components kb..kb+4nv-1:
   each table entry in a register for the whole block, each x_ij broadcast
   once for the nv vectors. nv and pass are constants at every call. */
EMC_ALWAYS_INLINE void emd_moments_block(
        const double* x, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t Kp,
        const double* wblk, const int pass, const double* C, double* T1,
        double* T2, Py_ssize_t kb, const int nv)
{
    for (Py_ssize_t j = 0; j < d; j++) {
        double* t1 = T1 + j * Kp + kb;
        double* t2 = T2 + j * Kp + kb;
        emc_v4 a1[4], a2[4], c[4];
        for (int v = 0; v < nv; v++) {
            a1[v] = emc_load(t1 + 4 * v);
            if (pass == 2) {
                a2[v] = emc_load(t2 + 4 * v);
                c[v] = emc_load(C + j * Kp + kb + 4 * v);
            }
        }
        for (Py_ssize_t r = 0; r < nb; r++) {
            emc_v4 xb = emc_set1(x[r * d + j]);
            const double* wr = wblk + r * Kp + kb;
            for (int v = 0; v < nv; v++) {
                if (pass == 1) {
                    a1[v] = EMC_ADD(a1[v], EMC_MUL(emc_load(wr + 4 * v), xb));
                } else {
                    emc_v4 t = EMC_SUB(xb, c[v]);
                    emc_v4 wt = EMC_MUL(emc_load(wr + 4 * v), t);
                    a1[v] = EMC_ADD(a1[v], wt);
                    EMC_FMA(a2[v], wt, t);
                }
            }
        }
        for (int v = 0; v < nv; v++) {
            emc_store(t1 + 4 * v, a1[v]);
            if (pass == 2) emc_store(t2 + 4 * v, a2[v]);
        }
    }
}

/* Per-feature weighted moments of n rows, for all K components at once, as
   d x Kp tables (w is n x K): T0[k] += w_ik (unless T0 is NULL); pass 1
   (pass == 1) T1[j, k] += w_ik x_ij;
   pass 2, about the reference points C (d x Kp): T1[j, k] += w_ik (x_ij - C[j, k])
   and T2[j, k] += w_ik (x_ij - C[j, k])^2. Rows go EMD_ROWS at a time (their
   weights copied into wblk, EMD_ROWS x Kp, zero padded) so that each table
   entry is loaded and stored once per block; within it rows are added in
   order; components go 16 at a time (four vectors in registers). */
EMC_ALWAYS_INLINE void emd_moments_rows(const double* X, Py_ssize_t n, Py_ssize_t d,
                                         Py_ssize_t K, Py_ssize_t Kp, const double* w,
                                         int pass, const double* C, double* wblk,
                                         double* T0, double* T1, double* T2)
{
    Py_ssize_t i0, nb, r, k, kb;
    for (i0 = 0; i0 < n; i0 += EMD_ROWS) {
        nb = n - i0 < EMD_ROWS ? n - i0 : EMD_ROWS;
        for (r = 0; r < nb; r++) {
            for (k = 0; k < K; k++) wblk[r * Kp + k] = w[(i0 + r) * K + k];
            for (k = K; k < Kp; k++) wblk[r * Kp + k] = 0.0;
        }
        if (T0 != NULL)      /* the weights' sums, rows in order */
            for (r = 0; r < nb; r++)
                for (k = 0; k < K; k++) T0[k] += wblk[r * Kp + k];
        const double* x = X + i0 * d;
        for (kb = 0; kb < Kp; kb += 16) {
#define EMD_SUMS(NV) emd_moments_block(x, nb, d, Kp, wblk, 1, C, T1, T2, kb, NV)
#define EMD_MOMENTS(NV) emd_moments_block(x, nb, d, Kp, wblk, 2, C, T1, T2, kb, NV)
            if (pass == 1)
                EMC_WITH_NV(Kp - kb, EMD_SUMS);
            else
                EMC_WITH_NV(Kp - kb, EMD_MOMENTS);
#undef EMD_SUMS
#undef EMD_MOMENTS
        }
    }
}

EMC_CLONES
static void emd_moments(const double* X, Py_ssize_t n, Py_ssize_t d,
                        Py_ssize_t K, Py_ssize_t Kp, const double* w, int pass,
                        const double* C, double* wblk, double* T0, double* T1,
                        double* T2)
{
    emd_moments_rows(X, n, d, K, Kp, w, pass, C, wblk, T0, T1, T2);
}

/* The same moments of float rows: each block of EMD_ROWS rows widened
   (exactly) into xblk (EMD_ROWS d doubles, in L1), then the double block's
   code: the same sums in the same order as for X.astype(float64), so the
   same bits (no widened copy of the chunk). */
EMC_CLONES
static void emd_moments_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                            Py_ssize_t K, Py_ssize_t Kp, const double* w, int pass,
                            const double* C, double* wblk, double* T0, double* T1,
                            double* T2, double* xblk)
{
    for (Py_ssize_t i0 = 0; i0 < n; i0 += EMD_ROWS) {
        Py_ssize_t nb = n - i0 < EMD_ROWS ? n - i0 : EMD_ROWS;
        const float* x = X + i0 * d;
        for (Py_ssize_t t = 0; t < nb * d; t++) xblk[t] = (double)x[t];
        emd_moments_rows(xblk, nb, d, K, Kp, w + i0 * K, pass, C, wblk, T0, T1, T2);
    }
}

/* float32 moments of float rows about the pass's means rounded to float
   (docs/elbo_chain.md#float32): for each block of EMD_ROWS32 rows,
   t = x_ij - H[j, k] (H = float(mu), d x Kp8 floats, zero padded; one
   rounding), the weights scaled by EMD_W32_SCALE = 2^64 (exact) and rounded
   to float into wblk (EMD_ROWS32 x Kp8 floats), then
       r = sum_rows (w t),  s = sum_rows (w t) t
   in float on 8-float vectors, rows in order, each (r, s) widened exactly,
   scaled back by 2^-64 (exact) and added to the double tables T1, T2 (d x Kp,
   Kp = K rounded up to 4); T0[k] += w_ik in double, rows in order, as the
   double code does. The chunk's moments are then about the reference points
   H (as doubles). Returns 0, or 1 (nothing usable in T0, T1, T2: the caller
   takes the double path) when a nonzero weight is outside float's normal
   range once scaled (w < 2^-190 or w > 2^63: its rounding would not be
   relative) or a float sum overflowed (inf or NaN). */
#define EMD_ROWS32 32
#define EMD_W32_SCALE 18446744073709551616.0          /* 2^64 */
#define EMD_W32_UNSCALE (1.0 / 18446744073709551616.0)

/* the weights of rows i0.. (nb of them) into wblk as scaled floats, their
   double sums into T0 (rows in order); 1 if a nonzero one is out of float's
   normal range once scaled (2^-126 is float's least normal; 2^127 leaves the
   float sums room) or is NaN */
#define EMD_W32_LOW 0x1p-126
#define EMD_W32_HIGH 0x1p127
EMC_ALWAYS_INLINE int emd_weights_f32(const double* restrict w, Py_ssize_t nb,
                                      Py_ssize_t K, Py_ssize_t Kp8,
                                      float* restrict wblk, double* restrict T0)
{
    int bad = 0;
#if EMC_GNUC
    const emc_v4 scale = emc_set1(EMD_W32_SCALE), lo = emc_set1(EMD_W32_LOW),
                 hi = emc_set1(EMD_W32_HIGH), zero = emc_set1(0.0);
    emc_m4 out = {0};           /* the block's lanes out of range, reduced once */
#endif
    for (Py_ssize_t r = 0; r < nb; r++) {
        const double* restrict wr = w + r * K;
        float* restrict o = wblk + r * Kp8;
        Py_ssize_t k = 0;
#if EMC_GNUC
        for (; k + 4 <= K; k += 4) {
            emc_v4 v;
            memcpy(&v, wr + k, sizeof v);
            emc_v4 sv = v * scale;
            out |= (v != zero) & ~((sv >= lo) & (sv <= hi));
            emd_v4f f = __builtin_convertvector(sv, emd_v4f);
            memcpy(o + k, &f, sizeof f);
        }
#endif
        for (; k < K; k++) {
            double v = wr[k], sv = v * EMD_W32_SCALE;
            bad |= (v != 0.0) & !(sv >= EMD_W32_LOW && sv <= EMD_W32_HIGH);
            o[k] = (float)sv;
        }
        for (k = K; k < Kp8; k++) o[k] = 0.0f;
        for (k = 0; k < K; k++) T0[k] += wr[k];
    }
#if EMC_GNUC
    bad |= (out[0] | out[1] | out[2] | out[3]) != 0;
#endif
    return bad;
}

#if EMC_GNUC
/* widen 8 float sums, scale back and add them to the double table row t
   (only the lanes below Kp: Kp8 - Kp is 0 or 4) */
EMC_ALWAYS_INLINE void emd_add_widened(double* t, emd_v8f v, int high)
{
    const emc_v4 unscale = emc_set1(EMD_W32_UNSCALE);
    emd_v8d wide = __builtin_convertvector(v, emd_v8d);
    emc_v4 l = __builtin_shufflevector(wide, wide, 0, 1, 2, 3);
    emc_v4 h = __builtin_shufflevector(wide, wide, 4, 5, 6, 7);
    emc_store(t, EMC_ADD(emc_load(t), EMC_MUL(unscale, l)));
    if (high)
        emc_store(t + 4, EMC_ADD(emc_load(t + 4), EMC_MUL(unscale, h)));
}

/* one feature j, the components kb..kb+8nv-1: even and odd rows of the block
   summed apart (two chains of adds, so one row's add need not wait for the
   previous row's), the two halves added at the end; every value in a register
   (no array of vectors indexed in a loop: GCC kept those on the stack, and
   their 16-byte stores and 32-byte loads stalled on store forwarding) */
EMC_ALWAYS_INLINE void emd_moments_block_f32(
        const float* x, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t Kp, Py_ssize_t Kp8,
        const float* wblk, const float* H, double* T1, double* T2, Py_ssize_t kb,
        const int nv, Py_ssize_t j, emd_v8f* chk)
{
    emd_v8f h0, h1 = {0}, ra0 = {0}, ra1 = {0}, sa0 = {0}, sa1 = {0};
    emd_v8f rb0 = {0}, rb1 = {0}, sb0 = {0}, sb1 = {0};
    memcpy(&h0, H + j * Kp8 + kb, sizeof h0);
    if (nv == 2) memcpy(&h1, H + j * Kp8 + kb + 8, sizeof h1);
    Py_ssize_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const float* wr = wblk + i * Kp8 + kb;
        emd_v8f xa = emd_set1_f8(x[i * d + j]), xb = emd_set1_f8(x[(i + 1) * d + j]);
        emd_v8f w, t, wt;
        memcpy(&w, wr, sizeof w);
        t = xa - h0; wt = w * t; ra0 += wt; sa0 += wt * t;
        memcpy(&w, wr + Kp8, sizeof w);
        t = xb - h0; wt = w * t; rb0 += wt; sb0 += wt * t;
        if (nv == 2) {
            memcpy(&w, wr + 8, sizeof w);
            t = xa - h1; wt = w * t; ra1 += wt; sa1 += wt * t;
            memcpy(&w, wr + Kp8 + 8, sizeof w);
            t = xb - h1; wt = w * t; rb1 += wt; sb1 += wt * t;
        }
    }
    if (i < nb) {
        const float* wr = wblk + i * Kp8 + kb;
        emd_v8f xa = emd_set1_f8(x[i * d + j]), w, t, wt;
        memcpy(&w, wr, sizeof w);
        t = xa - h0; wt = w * t; ra0 += wt; sa0 += wt * t;
        if (nv == 2) {
            memcpy(&w, wr + 8, sizeof w);
            t = xa - h1; wt = w * t; ra1 += wt; sa1 += wt * t;
        }
    }
    ra0 += rb0; sa0 += sb0;
    *chk += (ra0 + sa0) * 0.0f;         /* NaN in a lane once a sum is inf */
    Py_ssize_t at = j * Kp + kb;
    emd_add_widened(T1 + at, ra0, kb + 4 < Kp);
    emd_add_widened(T2 + at, sa0, kb + 4 < Kp);
    if (nv == 2) {
        ra1 += rb1; sa1 += sb1;
        *chk += (ra1 + sa1) * 0.0f;
        emd_add_widened(T1 + at + 8, ra1, kb + 12 < Kp);
        emd_add_widened(T2 + at + 8, sa1, kb + 12 < Kp);
    }
}

EMC_CLONES
static int emd_moments_about_f32_v3(const float* X, Py_ssize_t n, Py_ssize_t d,
                                    Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t Kp8,
                                    const double* w, const float* H, float* wblk,
                                    double* T0, double* T1, double* T2)
{
    emd_v8f chk = {0};
    for (Py_ssize_t i0 = 0; i0 < n; i0 += EMD_ROWS32) {
        Py_ssize_t nb = n - i0 < EMD_ROWS32 ? n - i0 : EMD_ROWS32;
        if (emd_weights_f32(w + i0 * K, nb, K, Kp8, wblk, T0)) return 1;
        const float* x = X + i0 * d;
        for (Py_ssize_t kb = 0; kb < Kp8; kb += 16) {
            if (Kp8 - kb >= 16)          /* nv a constant for the inlined block */
                for (Py_ssize_t j = 0; j < d; j++)
                    emd_moments_block_f32(x, nb, d, Kp, Kp8, wblk, H, T1, T2, kb, 2, j, &chk);
            else
                for (Py_ssize_t j = 0; j < d; j++)
                    emd_moments_block_f32(x, nb, d, Kp, Kp8, wblk, H, T1, T2, kb, 1, j, &chk);
        }
    }
    for (int l = 0; l < 8; l++)
        if (chk[l] != 0.0f) return 1;
    return 0;
}

#if EMC_HAVE_CLONES
/* emd_moments_block_f32 for 16 components in one 16-float vector (x86-64-v4):
   each lane's operations those of the 8-float block in the same order, with
   -t = h - x formed instead of t (x a broadcast operand of the subtraction;
   rounding is symmetric, so -t, -(w t) and the sum of the -(w t) are the
   negatives of t, w t and their sum exactly, and (w (-t)) (-t) = (w t) t):
   the same bits. */
__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emd_add_widened16(double* T1, double* T2, Py_ssize_t at, Py_ssize_t Kp, Py_ssize_t kb,
                  emd_v16f ra, emd_v16f sa, emd_v16f* chk)
{
    ra = -ra;                           /* the sum of w t */
    *chk += (ra + sa) * 0.0f;           /* NaN in a lane once a sum is inf */
    emd_add_widened(T1 + at, __builtin_shufflevector(ra, ra, 0, 1, 2, 3, 4, 5, 6, 7),
                    kb + 4 < Kp);
    emd_add_widened(T2 + at, __builtin_shufflevector(sa, sa, 0, 1, 2, 3, 4, 5, 6, 7),
                    kb + 4 < Kp);
    emd_add_widened(T1 + at + 8,
                    __builtin_shufflevector(ra, ra, 8, 9, 10, 11, 12, 13, 14, 15),
                    kb + 12 < Kp);
    emd_add_widened(T2 + at + 8,
                    __builtin_shufflevector(sa, sa, 8, 9, 10, 11, 12, 13, 14, 15),
                    kb + 12 < Kp);
}

/* features j and j + 1 (nj = 2) or j alone: each feature's sums those of the
   8-float block, two features at once only for more independent add chains */
__attribute__((target("arch=x86-64-v4"), always_inline)) static inline void
emd_moments_block16_f32(const float* x, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t Kp,
                        Py_ssize_t Kp8, const float* wblk, const float* H, double* T1,
                        double* T2, Py_ssize_t kb, Py_ssize_t j, const int nj,
                        emd_v16f* chk)
{
    emd_v16f h, g = {0}, ra = {0}, sa = {0}, rb = {0}, sb = {0};
    emd_v16f rc = {0}, sc = {0}, rd = {0}, sd = {0};
    memcpy(&h, H + j * Kp8 + kb, sizeof h);
    if (nj == 2) memcpy(&g, H + (j + 1) * Kp8 + kb, sizeof g);
    Py_ssize_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const float* wr = wblk + i * Kp8 + kb;
        const float* xa = x + i * d + j;
        emd_v16f w, v, t, wt;
        memcpy(&w, wr, sizeof w);
        memcpy(&v, wr + Kp8, sizeof v);
        t = h - xa[0]; wt = w * t; ra += wt; sa += wt * t;
        t = h - xa[d]; wt = v * t; rb += wt; sb += wt * t;
        if (nj == 2) {
            t = g - xa[1];     wt = w * t; rc += wt; sc += wt * t;
            t = g - xa[d + 1]; wt = v * t; rd += wt; sd += wt * t;
        }
    }
    if (i < nb) {
        const float* xa = x + i * d + j;
        emd_v16f w, t, wt;
        memcpy(&w, wblk + i * Kp8 + kb, sizeof w);
        t = h - xa[0]; wt = w * t; ra += wt; sa += wt * t;
        if (nj == 2) { t = g - xa[1]; wt = w * t; rc += wt; sc += wt * t; }
    }
    emd_add_widened16(T1, T2, j * Kp + kb, Kp, kb, ra + rb, sa + sb, chk);
    if (nj == 2) emd_add_widened16(T1, T2, (j + 1) * Kp + kb, Kp, kb, rc + rd, sc + sd, chk);
}

/* emd_moments_about_f32_v3 with AVX-512: 16 components per vector (a last 8
   by the 8-float block); the same bits */
__attribute__((target("arch=x86-64-v4")))
static int emd_moments_about_f32_v4(const float* X, Py_ssize_t n, Py_ssize_t d,
                                    Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t Kp8,
                                    const double* w, const float* H, float* wblk,
                                    double* T0, double* T1, double* T2)
{
    emd_v16f chk16 = {0};
    emd_v8f chk = {0};
    for (Py_ssize_t i0 = 0; i0 < n; i0 += EMD_ROWS32) {
        Py_ssize_t nb = n - i0 < EMD_ROWS32 ? n - i0 : EMD_ROWS32;
        if (emd_weights_f32(w + i0 * K, nb, K, Kp8, wblk, T0)) return 1;
        const float* x = X + i0 * d;
        for (Py_ssize_t kb = 0; kb < Kp8; kb += 16) {
            if (Kp8 - kb >= 16) {
                Py_ssize_t j = 0;
                for (; j + 2 <= d; j += 2)
                    emd_moments_block16_f32(x, nb, d, Kp, Kp8, wblk, H, T1, T2, kb, j, 2, &chk16);
                if (j < d)
                    emd_moments_block16_f32(x, nb, d, Kp, Kp8, wblk, H, T1, T2, kb, j, 1, &chk16);
            } else
                for (Py_ssize_t j = 0; j < d; j++)
                    emd_moments_block_f32(x, nb, d, Kp, Kp8, wblk, H, T1, T2, kb, 1, j, &chk);
        }
    }
    for (int l = 0; l < 16; l++)
        if (chk16[l] != 0.0f) return 1;
    for (int l = 0; l < 8; l++)
        if (chk[l] != 0.0f) return 1;
    return 0;
}
#endif

/* the float32 statistics' sweep: emd_moments_about_f32_v4 where emd_f32_use_v4
   chose it (the same bits), else the clone the CPU has */
static int emd_moments_about_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                                 Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t Kp8,
                                 const double* w, const float* H, float* wblk,
                                 double* T0, double* T1, double* T2)
{
    if (emd_f32_use_v4 < 0) emd_f32_use_v4 = emd_v4_available();
#if EMC_HAVE_CLONES
    if (emd_f32_use_v4)
        return emd_moments_about_f32_v4(X, n, d, K, Kp, Kp8, w, H, wblk, T0, T1, T2);
#endif
    return emd_moments_about_f32_v3(X, n, d, K, Kp, Kp8, w, H, wblk, T0, T1, T2);
}
#else
/* without GNU vectors: the same sums, one component at a time */
static int emd_moments_about_f32(const float* X, Py_ssize_t n, Py_ssize_t d,
                                 Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t Kp8,
                                 const double* w, const float* H, float* wblk,
                                 double* T0, double* T1, double* T2)
{
    for (Py_ssize_t i0 = 0; i0 < n; i0 += EMD_ROWS32) {
        Py_ssize_t nb = n - i0 < EMD_ROWS32 ? n - i0 : EMD_ROWS32;
        if (emd_weights_f32(w + i0 * K, nb, K, Kp8, wblk, T0)) return 1;
        const float* x = X + i0 * d;
        for (Py_ssize_t j = 0; j < d; j++)
            for (Py_ssize_t k = 0; k < K; k++) {
                float r = 0.0f, s = 0.0f, h = H[j * Kp8 + k];
                for (Py_ssize_t i = 0; i < nb; i++) {
                    float t = x[i * d + j] - h;
                    float wt = wblk[i * Kp8 + k] * t;
                    r += wt;
                    s += wt * t;
                }
                if ((r + s) - (r + s) != 0.0f) return 1;       /* inf or NaN */
                T1[j * Kp + k] += EMD_W32_UNSCALE * (double)r;
                T2[j * Kp + k] += EMD_W32_UNSCALE * (double)s;
            }
    }
    return 0;
}
#endif

#endif

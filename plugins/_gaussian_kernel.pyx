# cython: language_level=3
"""Compiled kernel of the full-covariance Gaussian family.

Log-density through the Cholesky factor U of the precision (P = U U^T, U upper
triangular, scikit-learn's ``precisions_cholesky_``):

    log N(x | mu, Sigma) = -d/2 log(2 pi) + sum_j log U_jj - 1/2 ||(x - mu) U||^2

with (x - mu) formed before the multiply (no cancellation for offset data).

Statistics slot per component k: [W, c (d), r (d), S (d x d)], the moments about
a reference point c (the chunk's weighted mean, as rounded):

    W = sum_i w_ik,  r = sum_i w_ik (x_i - c),  S = sum_i w_ik (x_i - c)(x_i - c)^T

r is the rounding residual of c (zero in exact arithmetic); keeping it makes the
statistics exact moments about c, so the expected log-likelihood from statistics
stays accurate at any parameters and any data offset. Each chunk's moments are
computed in two passes over the chunk (in cache); two slots merge by re-shifting
both to a common reference point exactly (the weighted Chan-Golub-LeVeque update
plus the residual terms). Never raw E[xx^T] - mu mu^T.

The two dense products run in register-tiled C loops (below) rather than
BLAS. The chunk is transposed once (d x rows); the E-step takes 8 rows (two
4-double vectors) and 4 columns of (x - mu) U at a time, only the triangle's
non-zero terms, fused with the subtraction and the row norms; the statistics
take the upper triangle of S in 2 x 4 tiles over row blocks that stay in L1,
each sum in 4 interleaved partial sums added in a fixed order. The loops are
compiled twice on x86-64 Linux (glibc) with GCC (``target_clones``): an
AVX2/FMA version chosen at load time on CPUs that have it, and the baseline
x86-64 one, so the wheel still runs on any x86-64; other compilers get the
same code with a plain-C 4-double type. The same chunk gives the same bits on
any thread (the clone is chosen once per process).

Flops per row and component (counted in benchmarks/bench_gaussian.py): the
E-step d (subtraction) + d(d+1) (the triangular product: column j has j+1
multiply-adds) + 2d (squares and sum); the statistics 2d (weighted sum for c)
+ 3d (subtraction, weighting, residual) + d(d+1) (the upper triangle of S).
"""
from libc.stdlib cimport malloc, free

from emcore.kernel cimport FamilyKernel

import numpy as np


cdef extern from *:
    """
    #include "_vec4.h"   /* emc_v4 and its operations, EMC_CLONES (shared) */
    #define EMC_ROWS 8    /* rows per group: two vectors */

    /* Xt (d x ld) = X^T for n rows, rows n..ld-1 zero (ld a multiple of EMC_ROWS). */
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

    /* q[i] = ||(x_i - mu) U||^2 for the ld rows of Xt (d x ld); U is d x dp
       (dp = d rounded up to 4, zero padded), upper triangular. Dt: 8 d doubles
       of scratch. 8 rows at a time (two vectors), 4 columns of (x - mu) U at a
       time (8 independent multiply-add chains), column j summing only its j + 1
       terms of the triangle. */
    EMC_CLONES
    static void emc_full_quad(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                              Py_ssize_t dp, const double* mu, const double* U,
                              double* Dt, double* q)
    {
        Py_ssize_t i0, l, j0, lmax;
        for (i0 = 0; i0 < ld; i0 += EMC_ROWS) {
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
                    const double* u = U + l * dp + j0;
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
            emc_store(q + i0, sq0);
            emc_store(q + i0 + 4, sq1);
        }
    }

    /* Moments about c of the ld rows of Xt (d x ld) weighted by w (ld, zero on
       padding rows): r = sum_i w_i (x_i - c), and the upper triangle (in 2 x 4
       tiles) of S = sum_i w_i (x_i - c)(x_i - c)^T, S being da x da (da = d
       rounded up to 4). Rows go blk at a time (a multiple of 4 chosen so that
       the block's D and w D, da x blk each in Dt and WDt, stay in L1). Every
       sum runs in 4 interleaved partial sums (vector lanes: rp, d x 4, and
       S4, da x da x 4, of scratch), added in a fixed order at the end. */
    EMC_CLONES
    static void emc_full_moments(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                                 Py_ssize_t da, Py_ssize_t blk, const double* w,
                                 const double* c, double* Dt, double* WDt,
                                 double* rp, double* S4, double* r, double* S)
    {
        Py_ssize_t i, i0, nb, l, a0, b0, a, b;
        for (i = 0; i < 4 * d; i++) rp[i] = 0.0;
        for (i = 0; i < 4 * da * da; i++) S4[i] = 0.0;
        for (i = 0; i < (da - d) * blk; i++) { Dt[d * blk + i] = 0.0; WDt[d * blk + i] = 0.0; }
        for (i0 = 0; i0 < ld; i0 += blk) {
            nb = ld - i0 < blk ? ld - i0 : blk;
            for (l = 0; l < d; l++) {
                emc_v4 part = emc_load(rp + 4 * l), cl = emc_set1(c[l]);
                for (i = 0; i < nb; i += 4) {
                    emc_v4 t = EMC_SUB(emc_load(Xt + l * ld + i0 + i), cl);
                    emc_v4 wt = EMC_MUL(emc_load(w + i0 + i), t);
                    emc_store(Dt + l * blk + i, t);
                    emc_store(WDt + l * blk + i, wt);
                    part = EMC_ADD(part, wt);
                }
                emc_store(rp + 4 * l, part);
            }
            for (a0 = 0; a0 < d; a0 += 2) {
                const double* w0 = WDt + a0 * blk;
                const double* w1 = w0 + blk;
                for (b0 = (a0 / 4) * 4; b0 < d; b0 += 4) {
                    const double* e0 = Dt + b0 * blk;
                    const double* e1 = e0 + blk;
                    const double* e2 = e1 + blk;
                    const double* e3 = e2 + blk;
                    double* p0 = S4 + 4 * (a0 * da + b0);
                    double* p1 = p0 + 4 * da;
                    emc_v4 s00 = emc_load(p0), s01 = emc_load(p0 + 4),
                           s02 = emc_load(p0 + 8), s03 = emc_load(p0 + 12),
                           s10 = emc_load(p1), s11 = emc_load(p1 + 4),
                           s12 = emc_load(p1 + 8), s13 = emc_load(p1 + 12);
                    for (i = 0; i < nb; i += 4) {
                        emc_v4 x0 = emc_load(w0 + i), x1 = emc_load(w1 + i);
                        emc_v4 y0 = emc_load(e0 + i), y1 = emc_load(e1 + i),
                               y2 = emc_load(e2 + i), y3 = emc_load(e3 + i);
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
    """
    void emc_transpose(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t ld,
                       double* Xt) noexcept nogil
    void emc_weighted_sums(const double* Xt, Py_ssize_t ld, Py_ssize_t d,
                           const double* w, double* out) noexcept nogil
    void emc_full_quad(const double* Xt, Py_ssize_t ld, Py_ssize_t d, Py_ssize_t dp,
                       const double* mu, const double* U, double* Dt,
                       double* q) noexcept nogil
    void emc_full_moments(const double* Xt, Py_ssize_t ld, Py_ssize_t d, Py_ssize_t da,
                          Py_ssize_t blk, const double* w, const double* c, double* Dt,
                          double* WDt, double* rp, double* S4, double* r,
                          double* S) noexcept nogil
    Py_ssize_t EMC_ROWS


cdef inline void _reshift(Py_ssize_t d, double W, double* r, double* S,
                          const double* delta) noexcept nogil:
    # moments about c -> moments about c - delta:  r += W delta,
    # S += r delta^T + delta r^T + W delta delta^T  (with the old r)
    cdef Py_ssize_t j, l
    for j in range(d):
        for l in range(d):
            S[j * d + l] += r[j] * delta[l] + delta[j] * r[l] + W * delta[j] * delta[l]
    for j in range(d):
        r[j] += W * delta[j]


cdef inline void _merge_slot(Py_ssize_t d, double* into, const double* other,
                             double* tmp) noexcept nogil:
    # into, other: [W, c (d), r (d), S (d*d)]; into <- moments of the union.
    # tmp: 2 d doubles of scratch.
    cdef double Wa = into[0], Wb = other[0], W, f, c
    cdef Py_ssize_t j, l
    cdef double* ca = into + 1
    cdef double* ra = into + 1 + d
    cdef double* Sa = into + 1 + 2 * d
    cdef const double* cb = other + 1
    cdef const double* rb = other + 1 + d
    cdef const double* Sb = other + 1 + 2 * d
    cdef double* da = tmp
    cdef double* db = tmp + d
    if Wb <= 0.0:
        return
    if Wa <= 0.0:
        for j in range(1 + 2 * d + d * d):
            into[j] = other[j]
        return
    W = Wa + Wb
    f = Wb / W
    # New reference point c (a double, stored as is), then the shifts against it:
    # da = ca - c and db = cb - c are exact when the points are close (Sterbenz).
    for j in range(d):
        c = ca[j] + f * (cb[j] - ca[j])
        da[j] = ca[j] - c
        db[j] = cb[j] - c
        ca[j] = c
    _reshift(d, Wa, ra, Sa, da)
    for j in range(d):
        for l in range(d):
            Sa[j * d + l] += (Sb[j * d + l] + rb[j] * db[l] + db[j] * rb[l]
                              + Wb * db[j] * db[l])
    for j in range(d):
        ra[j] += rb[j] + Wb * db[j]
    into[0] = W


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t m) noexcept nogil:
    return ((a + m - 1) // m) * m


cdef class GaussianFullKernel(FamilyKernel):
    """Kernel for fixed means (k, d) and precision Cholesky factors (k, d, d)."""
    cdef const double[:, ::1] means
    cdef const double[:, :, ::1] prec_chol
    cdef const double[:, :, ::1] prec_pad   # upper U_k zero padded to (d, da)
    cdef double[::1] log_norm   # -d/2 log(2 pi) + sum_j log U_jj, per component
    cdef Py_ssize_t da          # d rounded up to 4
    cdef Py_ssize_t blk         # rows per block of the statistics (a multiple of 4)

    def __init__(self, means, precisions_cholesky):
        means = np.ascontiguousarray(means, dtype=np.float64)
        prec_chol = np.ascontiguousarray(precisions_cholesky, dtype=np.float64)
        if means.ndim != 2 or prec_chol.shape != (means.shape[0], means.shape[1],
                                                  means.shape[1]):
            raise ValueError("means must be (k, d) and precisions_cholesky (k, d, d)")
        self.n_components = means.shape[0]
        self.n_features = means.shape[1]
        d = self.n_features
        self.n_stats = self.n_components * (1 + 2 * d + d * d)
        self.means = means
        self.prec_chol = prec_chol
        self.da = _round_up(d, 4)
        # D and w D of a block of rows, da x blk each: about 32 KiB together (L1)
        self.blk = max(4, (2048 // self.da) // 4 * 4)
        pad = np.zeros((self.n_components, d, self.da))
        pad[:, :, :d] = np.triu(prec_chol)   # the product uses the upper triangle
        self.prec_pad = pad
        diag = np.diagonal(prec_chol, axis1=1, axis2=2)
        self.log_norm = (-0.5 * d * np.log(2.0 * np.pi)
                         + np.sum(np.log(diag), axis=1)).astype(np.float64)

    def __reduce__(self):
        return (GaussianFullKernel, (np.asarray(self.means), np.asarray(self.prec_chol)))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, da = self.da
        cdef Py_ssize_t ld = _round_up(n_rows, EMC_ROWS)
        # X^T (d x ld); then row norms (ld) + an 8-row block (d x 8), or one
        # component's weights (ld) + D and w D of a block (da x blk each) + the
        # partial sums (4 d + 4 da^2) + S (da x da) + one chunk slot + merge scratch
        return d * ld + max(ld + d * EMC_ROWS,
                            ld + 2 * da * self.blk + 4 * d + 5 * da * da
                            + 1 + 4 * d + d * d)

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, K = self.n_components
        cdef Py_ssize_t ld = _round_up(n_rows, EMC_ROWS)
        cdef Py_ssize_t i, k
        cdef double* Xt = scratch
        cdef double* q = Xt + d * ld
        cdef double* blk = q + ld
        cdef double c
        emc_transpose(X, n_rows, d, ld, Xt)
        for k in range(K):
            emc_full_quad(Xt, ld, d, self.da, &self.means[k, 0], &self.prec_pad[k, 0, 0],
                          blk, q)
            c = self.log_norm[k]
            for i in range(n_rows):
                out[i * K + k] = c - 0.5 * q[i]
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, K = self.n_components, da = self.da
        cdef Py_ssize_t ld = _round_up(n_rows, EMC_ROWS)
        cdef Py_ssize_t slot = 1 + 2 * d + d * d
        cdef Py_ssize_t i, j, k
        cdef double* Xt = scratch
        cdef double* wk = Xt + d * ld
        cdef double* Dt = wk + ld
        cdef double* WDt = Dt + da * self.blk
        cdef double* rp = WDt + da * self.blk
        cdef double* S4 = rp + 4 * d
        cdef double* Sp = S4 + 4 * da * da
        cdef double* chunk = Sp + da * da
        cdef double* c = chunk + 1
        cdef double* r = chunk + 1 + d
        cdef double* S = chunk + 1 + 2 * d
        cdef double* tmp = chunk + slot
        cdef double W
        emc_transpose(X, n_rows, d, ld, Xt)
        for i in range(n_rows, ld):
            wk[i] = 0.0
        for k in range(K):
            W = 0.0
            for i in range(n_rows):
                wk[i] = weights[i * K + k]
                W += wk[i]
            if W <= 0.0:
                continue
            # pass 1: the reference point c, the chunk's weighted mean
            emc_weighted_sums(Xt, ld, d, wk, c)
            for j in range(d):
                c[j] = c[j] / W
            # pass 2: r = sum_i w_i (x_i - c) (the rounding residual of c) and the
            # upper triangle of S = sum_i w_i (x_i - c)(x_i - c)^T; then mirror
            emc_full_moments(Xt, ld, d, da, self.blk, wk, c, Dt, WDt, rp, S4, r, Sp)
            for i in range(d):
                for j in range(i, d):
                    S[i * d + j] = Sp[i * da + j]
                    S[j * d + i] = Sp[i * da + j]
            chunk[0] = W
            _merge_slot(d, stats + k * slot, chunk, tmp)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, k
        cdef Py_ssize_t slot = 1 + 2 * d + d * d
        cdef double tmp[64]
        cdef double* buf = tmp
        if 2 * d > 64:
            buf = <double*>malloc(2 * d * sizeof(double))
        for k in range(self.n_components):
            _merge_slot(d, into + k * slot, other + k * slot, buf)
        if buf != tmp:
            free(buf)

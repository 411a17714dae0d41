# cython: language_level=3
"""Compiled kernel of the Gaussian family for 'diag' and 'spherical' covariances.

With a diagonal precision P_k = diag(p_k) (p_kj = U_kj^2, U the diagonal of the
precision's Cholesky factor):

    log N(x | mu_k) = -d/2 log(2 pi) + sum_j log U_kj - 1/2 sum_j p_kj (x_j - mu_kj)^2

with x_j - mu_kj formed first (no cancellation for offset data; never the
expanded x^2 p - 2 x p mu + p mu^2). Rows go two at a time against the (d x K)
tables of means and precisions, vectorised over the components.

Statistics slot per component k: [W, c (d), r (d), s (d)], the per-feature
moments about a reference point c:

    W = sum_i w_ik,  r = sum_i w_ik (x_i - c),  s_j = sum_i w_ik (x_ij - c_j)^2

the diagonal of the full kernel's statistics (same residual, same exact
re-shifting merge), so the M-step and the expected log-likelihood read them the
same way. k x d numbers instead of k x d x d. The reference point is this pass's
mean of component k (one sweep over the chunk) when, for every component and
feature, the chunk's weighted mean lies within one standard deviation of it: the
variance's rounding error is then at most twice the two-sweep formula's
(notes/gaussian_mixture.md section 5, remedy 2). Otherwise (means still moving,
``chunk_stats`` with no means) the chunk is swept again twice, about its own
weighted means, as the full kernel always does.

Flops per row and component (benchmarks/bench_gaussian.py counts them): the
log-density 4d (subtract, scale, multiply-add); the statistics 5d (subtract,
weight, residual, multiply-add), plus 2d (the weighted sum for the chunk's own
reference point) and another 5d when the chunk is swept twice.

The loops use GNU vector extensions (4 doubles) compiled twice with
target_clones on x86-64 Linux (glibc) with GCC (AVX2/FMA at load time where the CPU has it,
baseline x86-64 otherwise), with a plain-C fallback elsewhere. Every sum is
taken in a fixed order: the same chunk gives the same bits on any thread.
"""
from emcore.kernel cimport FamilyKernel

import numpy as np


cdef extern from *:
    """
    #include "_vec4.h"   /* emc_v4 and its operations, EMC_CLONES (shared) */

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
    EMC_CLONES
    static void emd_moments(const double* X, Py_ssize_t n, Py_ssize_t d,
                            Py_ssize_t K, Py_ssize_t Kp, const double* w, int pass,
                            const double* C, double* wblk, double* T0, double* T1,
                            double* T2)
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
    """
    void emd_log_density(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                         Py_ssize_t Kp, const double* M, const double* P,
                         const double* base, double* acc, double* out) noexcept nogil
    void emd_moments(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                     Py_ssize_t Kp, const double* w, int which, const double* C,
                     double* wrow, double* T0, double* T1, double* T2) noexcept nogil


cdef inline void _merge_slot(Py_ssize_t d, double* into, const double* other) noexcept nogil:
    # into, other: [W, c (d), r (d), s (d)]; into <- per-feature moments of the
    # union: the diagonal of the full kernel's exact re-shifting merge.
    cdef double Wa = into[0], Wb = other[0], W, f, c, da, db
    cdef Py_ssize_t j
    cdef double* ca = into + 1
    cdef double* ra = into + 1 + d
    cdef double* sa = into + 1 + 2 * d
    cdef const double* cb = other + 1
    cdef const double* rb = other + 1 + d
    cdef const double* sb = other + 1 + 2 * d
    if Wb <= 0.0:
        return
    if Wa <= 0.0:
        for j in range(1 + 3 * d):
            into[j] = other[j]
        return
    W = Wa + Wb
    f = Wb / W
    for j in range(d):
        c = ca[j] + f * (cb[j] - ca[j])
        da = ca[j] - c
        db = cb[j] - c
        ca[j] = c
        sa[j] += 2.0 * ra[j] * da + Wa * da * da
        ra[j] += Wa * da
        sa[j] += sb[j] + 2.0 * rb[j] * db + Wb * db * db
        ra[j] += rb[j] + Wb * db
    into[0] = W


cdef class GaussianDiagKernel(FamilyKernel):
    """Kernel for fixed means (k, d) and diagonal precision Cholesky factors, given
    as their diagonals (k, d) (U_kj = 1 / sigma_kj)."""
    cdef const double[:, ::1] means
    cdef const double[:, ::1] prec_chol_diag
    cdef const double[:, ::1] mean_table   # (d, Kp): means, transposed, padded
    cdef const double[:, ::1] prec_table   # (d, Kp): U_kj^2, transposed, zero padded
    cdef const double[::1] log_norm        # (Kp,): -d/2 log(2 pi) + sum_j log U_kj
    cdef Py_ssize_t Kp

    def __init__(self, means, precisions_cholesky_diagonal):
        means = np.ascontiguousarray(means, dtype=np.float64)
        u = np.ascontiguousarray(precisions_cholesky_diagonal, dtype=np.float64)
        if means.ndim != 2 or u.shape != means.shape:
            raise ValueError("means and precisions_cholesky_diagonal must both be (k, d)")
        K, d = means.shape
        self.n_components = K
        self.n_features = d
        self.n_stats = K * (1 + 3 * d)
        self.means = means
        self.prec_chol_diag = u
        self.Kp = ((K + 3) // 4) * 4
        mt = np.zeros((d, self.Kp))
        mt[:, :K] = means.T
        pt = np.zeros((d, self.Kp))
        pt[:, :K] = (u * u).T
        self.mean_table = mt
        self.prec_table = pt
        ln = np.zeros(self.Kp)
        ln[:K] = -0.5 * d * np.log(2.0 * np.pi) + np.sum(np.log(u), axis=1)
        self.log_norm = ln

    def __reduce__(self):
        return (GaussianDiagKernel, (np.asarray(self.means), np.asarray(self.prec_chol_diag)))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        # a row of results or a block of weights (EMD_ROWS = 8 rows x Kp) + the
        # weights' sums (Kp)
        # + three d x Kp tables + one slot
        return 9 * self.Kp + 3 * self.n_features * self.Kp + 1 + 3 * self.n_features

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        emd_log_density(X, n_rows, self.n_features, self.n_components, self.Kp,
                        &self.mean_table[0, 0], &self.prec_table[0, 0],
                        &self.log_norm[0], scratch, out)
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, K = self.n_components, Kp = self.Kp
        cdef Py_ssize_t slot = 1 + 3 * d
        cdef Py_ssize_t i, j, k
        cdef double* wrow = scratch
        cdef double* Wk = wrow + 8 * Kp
        cdef double* C = Wk + Kp
        cdef double* R = C + d * Kp
        cdef double* S = R + d * Kp
        cdef double* chunk = S + d * Kp
        cdef double W, shift
        cdef bint settled = True
        for i in range(d * Kp):
            R[i] = 0.0
            S[i] = 0.0
        for k in range(Kp):
            Wk[k] = 0.0
        # One sweep about this pass's means (mean_table). The variance's rounding
        # error is amplified by 1 + shift^2 / var, shift = the chunk's weighted
        # mean minus the reference: accept if shift^2 <= var (2 shift^2 <= S / W)
        # for every component and feature, i.e. at most twice the two-sweep error.
        emd_moments(X, n_rows, d, K, Kp, weights, 2, &self.mean_table[0, 0], wrow, Wk,
                    R, S)
        for k in range(K):
            W = Wk[k]
            if W <= 0.0:
                continue
            for j in range(d):
                shift = R[j * Kp + k] / W
                if not 2.0 * shift * shift <= S[j * Kp + k] / W:
                    settled = False
        cdef const double* ref = &self.mean_table[0, 0]   # the reference points
        if not settled:
            # the means moved (early iterations, or no means: chunk_stats): two
            # sweeps, about the chunk's weighted means
            for i in range(d * Kp):
                C[i] = 0.0
                R[i] = 0.0
                S[i] = 0.0
            emd_moments(X, n_rows, d, K, Kp, weights, 1, NULL, wrow, NULL, C, NULL)
            for k in range(K):
                W = Wk[k]
                for j in range(d):
                    C[j * Kp + k] = C[j * Kp + k] / W if W > 0.0 else 0.0
            emd_moments(X, n_rows, d, K, Kp, weights, 2, C, wrow, NULL, R, S)
            ref = C
        for k in range(K):
            W = Wk[k]
            if W <= 0.0:
                continue
            chunk[0] = W
            for j in range(d):
                chunk[1 + j] = ref[j * Kp + k]
                chunk[1 + d + j] = R[j * Kp + k]
                chunk[1 + 2 * d + j] = S[j * Kp + k]
            _merge_slot(d, stats + k * slot, chunk)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t d = self.n_features, k
        for k in range(self.n_components):
            _merge_slot(d, into + k * (1 + 3 * d), other + k * (1 + 3 * d))

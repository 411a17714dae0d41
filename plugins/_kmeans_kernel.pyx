# cython: language_level=3
"""Compiled kernel of the k-means family: the Lloyd step as a CEM pass.

Log-density of the equal-weight, shared-variance spherical Gaussian:

    log p(x | k) = -h ||x - mu_k||^2 + const,   h = 1 / (2 sigma^2),
    const = -d/2 log(2 pi sigma^2)

with the squared distances through the GEMM identity on *centred* data,

    ||x - mu||^2 = ||x~||^2 - 2 x~ . mu~ + ||mu~||^2,   x~ = x - c, mu~ = mu - c,

c the mean of the centres: centring keeps the cancellation proportional to the
spread of the data around the centres, not to their distance from the origin.
The log-densities (soft rules) take the cross products from one DGEMM per chunk.
The Lloyd step (the hard rule, ``chunk_hard_step``) needs only the argmax of
2h x~.mu~_k + offset_k: a register kernel computes those scores for two rows
at a time, 16 centres at a time, in C on 4-double vectors, and keeps each
lane's running maximum, so no n x k array is written; a second sweep over the
chunk's rows (still in cache) adds each row to its component's statistics.
By callgrind at (n, d, k) = (1e5, 16, 16) one Lloyd iteration is 33 M
instructions in this kernel, against 63 M for DGEMM + argmax + statistics.

Statistics slot per component k: [W, SS, D, ref (d), s (d), far (d)]:

    W = sum_i w_ik,  s = sum_i w_ik (x_i - ref),  SS = sum_i w_ik ||x_i - ref||^2,
    far = the row farthest from ref among the rows with w_ik > 0, D its squared
    distance (-1 with no rows);

ref is the centre of the pass (the previous iteration's mean), so s is small and
the shifted second moment SS - |s|^2 / W is accurate (never raw E||x||^2 - |mu|^2).
The distances here are exact differences, not the GEMM identity: the statistics,
and through them the M-step and the inertia, carry no cancellation error.
Slots with different references merge by re-shifting exactly.
"""
from libc.math cimport INFINITY, log, M_PI

from emcore.blas cimport gemm_nt
from emcore.kernel cimport (FamilyKernel, TOTAL_EXPECTED_LOG_JOINT, TOTAL_MAGNITUDE,
                            TOTAL_OBJECTIVE)

import numpy as np

cdef extern from *:
    """
    #include <math.h>
    #include "_vec4.h"   /* emc_v4 and its operations, EMC_CLONES (shared) */

    /* The per-row work of the Lloyd step in C on 4-double vectors, compiled
       twice (AVX2/FMA and baseline x86-64, EMC_CLONES): a fixed order of
       operations for each build, so the same bits on any thread count. Slot of
       component k: [W, SS, D, ref (d), s (d), far (d)] (see the docstring). */

    /* 4-double lanes: lane l of bv holds its first maximum, bi its index. Pair
       lanes (0, 2) and (1, 3), then (0, 1): the larger value, on equal values
       the lower index; lane 0 then holds the first index of the maximum. */
    #if defined(__GNUC__)
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

    #if defined(__GNUC__)
    #define EMC_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define EMC_NOINLINE __attribute__((noinline))
    #else
    #define EMC_UNLIKELY(x) (x)
    #define EMC_NOINLINE
    #endif
    /* out of line: the hot loop stays small (a new farthest row is rare) */
    EMC_NOINLINE static void emc_new_farthest(double* slot, const double* x, double dist,
                                              Py_ssize_t d) {
        slot[2] = dist;
        memcpy(slot + 3 + 2 * d, x, (size_t)d * sizeof(double));
    }

    /* adds row x with weight w to a slot; returns ||x - ref||^2 */
    static inline double emc_add_row(double* restrict slot, const double* restrict x,
                                      double w, Py_ssize_t d) {
        double dist = emc_shift_add(x, slot + 3, slot + 3 + d, w, d);
        slot[0] += w;
        slot[1] += w * dist;
        if (EMC_UNLIKELY(dist > slot[2])) {   /* strict: the first such row wins */
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
        Py_ssize_t S = 3 + 3 * d;
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

    #if defined(__GNUC__)
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
    /* without GNU vectors: the same step, one score at a time (j order) */
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
    """
    double emc_add_row(double* slot, const double* x, double w, Py_ssize_t d) noexcept nogil
    double emc_sq_dist(const double* x, const double* y, Py_ssize_t d) noexcept nogil
    Py_ssize_t emc_lloyd_rows(const double* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t K,
                              Py_ssize_t Kp, const double* c, const double* mt,
                              const double* off, const double* row_weights,
                              const double* means, const double* row_const, double h,
                              double* stats, Py_ssize_t* labels, double* row_value,
                              double* objective, double* log_joint,
                              double* magnitude) noexcept nogil


# offsets inside one component's slot
cdef enum:
    _W = 0
    _SS = 1
    _D = 2
    _REF = 3


cdef class KMeansKernel(FamilyKernel):
    """Log-densities and statistics of the k-means family at fixed centres.

    Parameters
    ----------
    means : (k, d) array
    variance : float
        The shared variance sigma^2 > 0 (fixed, not estimated).
    """
    cdef double[:, ::1] means          # (k, d)
    cdef double[:, ::1] centred_means  # (k, d) mu - c
    cdef double[::1] centre            # (d,) c
    cdef double[::1] mean_sq_norms     # (k,) ||mu - c||^2
    cdef double[::1] offsets           # (k,) const - h ||mu - c||^2
    cdef double[:, ::1] scaled_means_t  # (d, kp) 2h (mu - c)^T, zero columns k..kp-1
    cdef Py_ssize_t kp                 # k rounded up to a multiple of 4
    cdef readonly double variance
    cdef double h, const

    def __init__(self, means, double variance):
        means = np.ascontiguousarray(means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ValueError("means must have shape (n_components, n_features)")
        if not variance > 0.0:
            raise ValueError(f"variance must be positive; got {variance}")
        k, d = means.shape
        self.n_components = k
        self.n_features = d
        self.n_stats = k * (3 + 3 * d)
        self.means = means.copy()
        c = means.mean(axis=0)
        self.centre = c
        self.centred_means = means - c
        self.mean_sq_norms = np.einsum("kj,kj->k", means - c, means - c)
        self.variance = variance
        self.h = 0.5 / variance
        self.const = -0.5 * d * log(2.0 * M_PI * variance)
        self.offsets = self.const - self.h * np.asarray(self.mean_sq_norms)
        self.kp = -(-k // 4) * 4
        mt = np.zeros((d, self.kp))
        mt[:, :k] = (2.0 * self.h) * (means - c).T
        self.scaled_means_t = mt
        self.fused_hard_step = True

    def __reduce__(self):
        return (KMeansKernel, (np.asarray(self.means), self.variance))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        return n_rows * self.n_features + max(n_rows, self.kp + self.n_components)

    cdef inline void _centre_rows(self, const double* X, Py_ssize_t n_rows, double* Xc,
                                  double* qn) noexcept nogil:
        # Xc = X - c, qn[i] = ||x_i - c||^2
        cdef Py_ssize_t i, j, d = self.n_features
        cdef const double* c = &self.centre[0]
        cdef double s, t
        for i in range(n_rows):
            s = 0.0
            for j in range(d):
                t = X[i * d + j] - c[j]
                Xc[i * d + j] = t
                s += t * t
            qn[i] = s

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t i, k, K = self.n_components
        cdef double* Xc = scratch
        cdef double* qn = scratch + n_rows * self.n_features
        cdef double s, h = self.h
        self._centre_rows(X, n_rows, Xc, qn)
        # out = 2h Xc @ mu~.T, then + (-h ||x~||^2) + (const - h ||mu~||^2)
        gemm_nt(n_rows, K, self.n_features, 2.0 * h, Xc, &self.centred_means[0, 0], 0.0, out)
        for i in range(n_rows):
            s = -h * qn[i]
            for k in range(K):
                out[i * K + k] = out[i * K + k] + (s + self.offsets[k])
        return 0

    cdef int chunk_hard_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* work, double* scratch, Py_ssize_t* labels,
                             double* row_value, double* totals,
                             double* stats) noexcept nogil:
        # Lloyd's E-step and the accumulation (emc_lloyd_rows). The argmax needs
        # only score_ik = 2h x~.mu~_k + (const - h ||mu~_k||^2 + log pi_k), computed
        # in registers (work is not used). The row's value
        # f_i = log pi_z + const - h ||x_i - mu_z||^2 then comes from the exact
        # difference to the chosen centre, not from the GEMM identity.
        cdef Py_ssize_t k, d = self.n_features, K = self.n_components
        cdef double* off = scratch                 # (kp) score offsets, -inf padded
        cdef double* row_const = scratch + self.kp  # (k) const + log pi_k
        for k in range(self.kp):
            off[k] = self.offsets[k] + log_weights[k] if k < K else -INFINITY
        for k in range(K):
            row_const[k] = self.const + log_weights[k]
        return <int>emc_lloyd_rows(X, n_rows, d, K, self.kp, &self.centre[0],
                                   &self.scaled_means_t[0, 0], off, row_weights,
                                   &self.means[0, 0], row_const, self.h, stats, labels,
                                   row_value, &totals[TOTAL_OBJECTIVE],
                                   &totals[TOTAL_EXPECTED_LOG_JOINT],
                                   &totals[TOTAL_MAGNITUDE])

    cdef void clear_stats(self, double* stats) noexcept nogil:
        cdef Py_ssize_t k, j, d = self.n_features, S = 3 + 3 * d
        cdef double* slot
        for k in range(self.n_components):
            slot = stats + k * S
            slot[_W] = 0.0
            slot[_SS] = 0.0
            slot[_D] = -1.0
            for j in range(d):
                slot[_REF + j] = self.means[k, j]
                slot[_REF + d + j] = 0.0
                slot[_REF + 2 * d + j] = 0.0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t i, k, d = self.n_features, K = self.n_components, S = 3 + 3 * d
        cdef double w
        for i in range(n_rows):
            for k in range(K):
                w = weights[i * K + k]
                if w > 0.0:
                    emc_add_row(stats + k * S, X + i * d, w, d)
        return 0

    cdef int chunk_accumulate_hard(self, const double* X, Py_ssize_t n_rows,
                                   const Py_ssize_t* labels, const double* row_weights,
                                   double* one_hot, double* stats,
                                   double* scratch) noexcept nogil:
        cdef Py_ssize_t i, d = self.n_features, S = 3 + 3 * self.n_features
        cdef double w
        for i in range(n_rows):
            w = row_weights[i] if row_weights != NULL else 1.0
            if w > 0.0:
                emc_add_row(stats + labels[i] * S, X + i * d, w, d)
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t k, d = self.n_features, S = 3 + 3 * d
        for k in range(self.n_components):
            _merge_slot(d, into + k * S, other + k * S)


cdef void _merge_slot(Py_ssize_t d, double* a, const double* b) noexcept nogil:
    # a <- statistics of the union, about a's reference point (b's if a is empty).
    # Re-shifting b by delta = ref_b - ref_a:  s_b' = s_b + W_b delta,
    # SS_b' = SS_b + 2 delta . s_b + W_b |delta|^2 (exact; delta = 0 within a pass).
    cdef Py_ssize_t j
    cdef double delta, cross = 0.0, dd = 0.0, Wb = b[_W]
    if b[_D] < 0.0:
        return
    if a[_D] < 0.0:
        for j in range(3 + 3 * d):
            a[j] = b[j]
        return
    for j in range(d):
        delta = b[_REF + j] - a[_REF + j]
        cross += delta * b[_REF + d + j]
        dd += delta * delta
        a[_REF + d + j] += b[_REF + d + j] + Wb * delta
    a[_W] += Wb
    a[_SS] += b[_SS] + 2.0 * cross + Wb * dd
    # farthest points compared about a's reference (b's distance re-measured)
    if dd != 0.0:
        dd = emc_sq_dist(b + _REF + 2 * d, a + _REF, d)
    else:
        dd = b[_D]
    if dd > a[_D]:
        a[_D] = dd
        for j in range(d):
            a[_REF + 2 * d + j] = b[_REF + 2 * d + j]

# cython: language_level=3
"""One E-step pass of a Gaussian mixture over rows with missing entries (NaN).

The mathematics is docs/missing_values.md; this is its compiled path
(docs/missing_values.md#the-compiled-pass). For a row with observed coordinates o
and missing ones m, component k with precision P = U U^T (U = the precision's
upper Cholesky factor, as the family stores it) and A = P_mm:

    conditional mean   xhat_m = mu_m - A^-1 (P (x0 - mu))_m   (x0: x with x_m = mu_m)
    conditional cov    C = A^-1
    log N(x_o | mu_o, Sigma_oo) = sum_j log U_jj - 1/2 log det A
                                  - |o|/2 log 2 pi - 1/2 ||(xhat - mu) U||^2

(the Schur complement: Sigma_oo^-1 = P_oo - P_om A^-1 P_mo, det Sigma_oo =
det Sigma det A). So the per-row work is one (rows x d)(d x d) triangular
product per component over a whole tile of rows (BLAS, as the complete-data
kernel), plus an |m| x |m| factorisation: rows are sorted by missingness
pattern inside each tile, and one factorisation of A serves every row of a run
of equal patterns (3 fixed patterns: a handful per tile; random patterns at
d = 16 with 10% missing: |m| is about 1.6, so A is tiny).

Rows are cut into tiles of ``TILE_ROWS``; tiles are grouped into at most
``MAX_BLOCKS`` contiguous blocks, each with its own statistics slot, processed by
one thread tile after tile; the slots are merged in block order. The grouping
depends only on n, never on the thread count: results are bitwise the same for
any ``n_threads`` (BLAS single-threaded, which the caller arranges).

Statistics per component, about the reference point mu_k (the current mean):
N_k = sum_i w_i r_ik, R_k = sum_i w_i r_ik (xhat_ik - mu_k) and
S_k = sum_i w_i r_ik [(xhat_ik - mu_k)(xhat_ik - mu_k)^T + C_ik]
(C_ik zero outside the (m, m) block), and the observed mass
sum_i w_i r_ik [j observed in i]. Totals, per row from the one log-joint array
a_ik = log w_k + log N(x_io | ...): the value sum_i w_i log sum_k exp a_ik, the
expected complete-data log joint sum_i w_i sum_k r_ik (a_ik - h_ik), the entropy
sum_i w_i [-sum_k r_ik log r_ik + sum_k r_ik h_ik] with h_ik the entropy of the
missing coordinates' conditional normal, and the rounding magnitude.
Rows with every coordinate missing carry no information: they add nothing to
the statistics or totals (their outputs are still written: the prior weights,
the mixture's mean and variance).
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY, exp, fabs, log, sqrt
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from emcore.blas cimport gemm_nt
cimport scipy.linalg.cython_blas as fblas

import numpy as np

cdef extern from "_missing.h":
    void emc_miss_centre(const double* X0, const double* mu, Py_ssize_t n, Py_ssize_t d,
                         double* D) noexcept nogil
    void emc_miss_row_sq(const double* Y, Py_ssize_t n, Py_ssize_t d,
                         double* out) noexcept nogil
    void emc_miss_weigh(const double* D, const double* w, Py_ssize_t stride, Py_ssize_t n,
                        Py_ssize_t d, double* B, double* racc) noexcept nogil
    Py_ssize_t emc_miss_posterior(const double* a, Py_ssize_t n, Py_ssize_t K, double* lr,
                                  double* r, double* lse, double* tmp) noexcept nogil
    int emc_miss_run(const double* U, Py_ssize_t d, const int* idx, int m, Py_ssize_t n,
                     double* Y, double* D, double* LC, double* log_det, double* A,
                     double* g) noexcept nogil

cdef enum:
    _TILE = 256          # rows per tile

MAX_BLOCKS = 16
TILE_ROWS = _TILE

cdef double _LOG_2PI = 1.8378770664093453
cdef double _INF = INFINITY

# status codes of a block (0 = ok)
cdef enum:
    _FAILED_ALLOC = 1
    _FAILED_FACTOR = 2
    _FAILED_LIKELIHOOD = 3

N_TOTALS = 4     # value, expected log joint, entropy, magnitude


cdef struct _Pass:
    const double* X            # (n, d), NaN at missing entries
    Py_ssize_t n, d, K
    Py_ssize_t n_tiles, n_blocks, tiles_per_block
    const double* log_w        # (K,) log pi_k (-inf for pi_k = 0)
    const double* means        # (K, d)
    const double* U            # (K, d, d) upper Cholesky factors of the precisions
    const double* Ut           # (K, d, d) their transposes
    const double* log_det_u    # (K,) sum_j log U_jj
    const double* sw           # (n,) sample weights, or NULL (all 1)
    double* out_log_resp       # (n, K) log r, or NULL
    double* out_row_value      # (n,) log p(x_io), or NULL
    double* out_mean           # (n, d) E[x | x_o], or NULL
    double* out_var            # (n, d) Var[x_j | x_o], or NULL


cdef struct _Slot:
    double* N                  # (K,)
    double* R                  # (K, d)
    double* S                  # (K, d, d)
    double* OM                 # (K, d)
    double* T                  # (N_TOTALS,)
    int status
    Py_ssize_t failed_row
    Py_ssize_t failed_component


cdef struct _Work:
    # one block's buffers, for one tile at a time
    int* cnt                   # (TILE,) |m| of each row (tile order)
    int* idx                   # (TILE, d) its missing coordinates, ascending
    Py_ssize_t* perm           # (TILE,) tile row of each sorted position
    Py_ssize_t* tmp            # (TILE,) merge sort's buffer
    Py_ssize_t* run_start      # (TILE + 1,) sorted positions where runs start
    Py_ssize_t* arena_off      # (TILE,) each run's offset in the arena
    double* arena              # per (run, k): L (m x m) then C = A^-1 (m x m)
    Py_ssize_t arena_size
    double* log_det_a          # (TILE, K) per (run, k)
    double* D                  # (K, TILE, d) xhat - mu_k (sorted order)
    double* Y                  # (TILE, d) (xhat - mu_k) U_k
    double* X0                 # (TILE, d) the tile's rows, sorted, NaN -> 0
    double* B                  # (TILE, d) w r (xhat - mu_k)
    double* G                  # (d, d) a tile's scatter
    double* a                  # (TILE, K) log joint
    double* h                  # (TILE, K) the missing coordinates' entropy
    double* r                  # (TILE, K) responsibilities
    double* lr                 # (TILE, K) log responsibilities
    double* g                  # (d,)
    double* racc               # (d,) a tile's residual sum
    double* quad               # (TILE,) ||row of Y||^2; then log p(x_io)
    double* A                  # (d, d)
    char* seen                 # (d,)


cdef bint _allocate(_Work* w, Py_ssize_t K, Py_ssize_t d) noexcept nogil:
    cdef Py_ssize_t T = _TILE
    w.cnt = <int*>malloc(T * sizeof(int))
    w.idx = <int*>malloc(T * d * sizeof(int))
    w.perm = <Py_ssize_t*>malloc(T * sizeof(Py_ssize_t))
    w.tmp = <Py_ssize_t*>malloc(T * sizeof(Py_ssize_t))
    w.run_start = <Py_ssize_t*>malloc((T + 1) * sizeof(Py_ssize_t))
    w.arena_off = <Py_ssize_t*>malloc(T * sizeof(Py_ssize_t))
    w.arena_size = 2 * K * T * 4 + 1          # grown on demand
    w.arena = <double*>malloc(w.arena_size * sizeof(double))
    w.log_det_a = <double*>malloc(T * K * sizeof(double))
    w.D = <double*>malloc(K * T * d * sizeof(double))
    w.Y = <double*>malloc(T * d * sizeof(double))
    w.X0 = <double*>malloc(T * d * sizeof(double))
    w.B = <double*>malloc(T * d * sizeof(double))
    w.G = <double*>malloc(d * d * sizeof(double))
    w.a = <double*>malloc(T * K * sizeof(double))
    w.h = <double*>malloc(T * K * sizeof(double))
    w.r = <double*>malloc(T * K * sizeof(double))
    w.lr = <double*>malloc(T * K * sizeof(double))
    w.g = <double*>malloc(max(d, K) * sizeof(double))
    w.racc = <double*>malloc(d * sizeof(double))
    w.quad = <double*>malloc(T * sizeof(double))
    w.A = <double*>malloc(d * d * sizeof(double))
    w.seen = <char*>malloc(d * sizeof(char))
    return not (w.cnt == NULL or w.idx == NULL or w.perm == NULL or w.tmp == NULL
                or w.run_start == NULL or w.arena_off == NULL or w.arena == NULL
                or w.log_det_a == NULL or w.D == NULL or w.Y == NULL or w.X0 == NULL or w.B == NULL
                or w.G == NULL or w.a == NULL or w.h == NULL or w.r == NULL
                or w.lr == NULL or w.g == NULL or w.racc == NULL or w.quad == NULL or w.A == NULL or w.seen == NULL)


cdef void _release(_Work* w) noexcept nogil:
    free(w.cnt)
    free(w.idx)
    free(w.perm)
    free(w.tmp)
    free(w.run_start)
    free(w.arena_off)
    free(w.arena)
    free(w.log_det_a)
    free(w.D)
    free(w.Y)
    free(w.X0)
    free(w.B)
    free(w.G)
    free(w.a)
    free(w.h)
    free(w.r)
    free(w.lr)
    free(w.g)
    free(w.racc)
    free(w.quad)
    free(w.A)
    free(w.seen)


# --- sorting rows by pattern --------------------------------------------------------

cdef inline int _compare(const _Work* w, Py_ssize_t d, Py_ssize_t p, Py_ssize_t q) noexcept nogil:
    # patterns by |m|, then by their missing coordinates; equal patterns by row
    # (a total order: the sorted tile is unique)
    cdef int j
    if w.cnt[p] != w.cnt[q]:
        return -1 if w.cnt[p] < w.cnt[q] else 1
    for j in range(w.cnt[p]):
        if w.idx[p * d + j] != w.idx[q * d + j]:
            return -1 if w.idx[p * d + j] < w.idx[q * d + j] else 1
    return -1 if p < q else (1 if p > q else 0)


cdef void _sort_rows(_Work* w, Py_ssize_t d, Py_ssize_t nr) noexcept nogil:
    # bottom-up merge sort of w.perm (nr log nr comparisons)
    cdef Py_ssize_t width = 1, lo, mid, hi, i, j, o
    cdef Py_ssize_t* src = w.perm
    cdef Py_ssize_t* dst = w.tmp
    cdef Py_ssize_t* t
    while width < nr:
        lo = 0
        while lo < nr:
            mid = min(lo + width, nr)
            hi = min(lo + 2 * width, nr)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                if _compare(w, d, src[i], src[j]) <= 0:
                    dst[o] = src[i]
                    i += 1
                else:
                    dst[o] = src[j]
                    j += 1
                o += 1
            while i < mid:
                dst[o] = src[i]
                i += 1
                o += 1
            while j < hi:
                dst[o] = src[j]
                j += 1
                o += 1
            lo = hi
        t = src
        src = dst
        dst = t
        width *= 2
    if src != w.perm:
        memcpy(w.perm, src, nr * sizeof(Py_ssize_t))


cdef inline bint _same_pattern(const _Work* w, Py_ssize_t d, Py_ssize_t p,
                               Py_ssize_t q) noexcept nogil:
    cdef int j
    if w.cnt[p] != w.cnt[q]:
        return False
    for j in range(w.cnt[p]):
        if w.idx[p * d + j] != w.idx[q * d + j]:
            return False
    return True


cdef void _gemm_tn_add(Py_ssize_t n, Py_ssize_t d, const double* A, const double* B,
                       double* C) noexcept nogil:
    # C += A^T B, A and B (n x d) row-major, C (d x d) row-major. Column-major, A is
    # A^T (d x n) and C is C^T: C^T += B^T A = (B^T)(A^T)^T, op ('N', 'T').
    cdef char ta = b'N', tb = b'T'
    cdef int M = <int>d, N = <int>d, K = <int>n, ld = <int>d
    cdef double alpha = 1.0, beta = 1.0
    if n == 0:
        return
    fblas.dgemm(&ta, &tb, &M, &N, &K, &alpha, <double*>B, &ld, <double*>A, &ld, &beta,
                C, &ld)


# --- one tile -----------------------------------------------------------------------

cdef int _tile(const _Pass* p, _Work* w, _Slot* slot, Py_ssize_t r0,
               Py_ssize_t nr) noexcept nogil:
    cdef Py_ssize_t d = p.d, K = p.K
    cdef Py_ssize_t i, j, l, k, q, s, e, run, n_runs, need, off
    cdef int m, a, b, ja, jb
    cdef const double* x
    cdef const double* Uk
    cdef const double* mu
    cdef double* Dk
    cdef double* Dp
    cdef double* Yp
    cdef double* L
    cdef double* C
    cdef double v, acc, quad, lda, mx, tot, lse, wt, rr, wr, sw_run, mean, dev
    cdef double value = 0.0, elj = 0.0, ent = 0.0, mag = 0.0
    cdef bint empty

    # patterns of the tile's rows, then the tile sorted by pattern
    for i in range(nr):
        x = p.X + (r0 + i) * d
        m = 0
        for j in range(d):
            if x[j] != x[j]:
                w.idx[i * d + m] = <int>j
                m += 1
        w.cnt[i] = m
        w.perm[i] = i
    _sort_rows(w, d, nr)
    # runs of equal patterns (sorted positions), and their arena offsets
    n_runs = 0
    need = 0
    for q in range(nr):
        if q == 0 or not _same_pattern(w, d, w.perm[q - 1], w.perm[q]):
            w.run_start[n_runs] = q
            w.arena_off[n_runs] = need
            m = w.cnt[w.perm[q]]
            need += 2 * K * m * m
            n_runs += 1
    w.run_start[n_runs] = nr
    # the tile's rows in sorted order, NaN read as 0 (never used at missing entries)
    for q in range(nr):
        x = p.X + (r0 + w.perm[q]) * d
        for j in range(d):
            v = x[j]
            w.X0[q * d + j] = v if v == v else 0.0
    if need > w.arena_size:
        L = <double*>realloc(w.arena, need * sizeof(double))
        if L == NULL:
            slot.status = _FAILED_ALLOC
            slot.failed_row = r0
            return _FAILED_ALLOC
        w.arena = L
        w.arena_size = need

    # --- per component: conditional means, log-densities, entropies ---------------
    for k in range(K):
        Uk = p.U + k * d * d
        mu = p.means + k * d
        Dk = w.D + k * _TILE * d
        emc_miss_centre(w.X0, mu, nr, d, Dk)       # missing entries zeroed below
        for q in range(w.run_start[1] if w.cnt[w.perm[0]] == 0 else 0, nr):
            i = w.perm[q]
            for a in range(w.cnt[i]):
                Dk[q * d + w.idx[i * d + a]] = 0.0
        # Y = (x0 - mu) U as D (U^T)^T: DGEMM beats DTRMM on these small shapes
        gemm_nt(nr, d, d, 1.0, Dk, p.Ut + k * d * d, 0.0, w.Y)
        for run in range(n_runs):
            s = w.run_start[run]
            e = w.run_start[run + 1]
            i = w.perm[s]
            m = w.cnt[i]
            if m == 0:
                w.log_det_a[run * K + k] = 0.0
                continue
            # A = P_mm, its factor and inverse, then the run's conditional means
            if emc_miss_run(Uk, d, w.idx + i * d, m, e - s, w.Y + s * d, Dk + s * d,
                            w.arena + w.arena_off[run] + 2 * k * m * m,
                            &w.log_det_a[run * K + k], w.A, w.g):
                slot.status = _FAILED_FACTOR
                slot.failed_row = r0 + i
                slot.failed_component = k
                return _FAILED_FACTOR
        emc_miss_row_sq(w.Y, nr, d, w.quad)
        for run in range(n_runs):
            m = w.cnt[w.perm[w.run_start[run]]]
            lda = w.log_det_a[run * K + k]
            for q in range(w.run_start[run], w.run_start[run + 1]):
                quad = w.quad[q]
                w.a[q * K + k] = (p.log_w[k] + p.log_det_u[k] - 0.5 * lda
                                  - 0.5 * (d - m) * _LOG_2PI - 0.5 * quad)
                w.h[q * K + k] = 0.5 * (m * (_LOG_2PI + 1.0) - lda) if m else 0.0

    # --- posteriors and totals ------------------------------------------------------
    q = emc_miss_posterior(w.a, nr, K, w.lr, w.r, w.quad, w.g)
    if q:
        slot.status = _FAILED_LIKELIHOOD
        slot.failed_row = r0 + w.perm[q - 1]
        return _FAILED_LIKELIHOOD
    for q in range(nr):
        i = w.perm[q]
        lse = w.quad[q]
        if p.out_log_resp != NULL:
            memcpy(p.out_log_resp + (r0 + i) * K, w.lr + q * K, K * sizeof(double))
        if p.out_row_value != NULL:
            p.out_row_value[r0 + i] = lse
        empty = w.cnt[i] == d
        wt = 1.0 if p.sw == NULL else p.sw[r0 + i]
        if empty or not wt > 0.0:
            continue
        value += wt * lse
        mag += wt * fabs(lse)
        for k in range(K):
            rr = w.r[q * K + k]
            if rr > 0.0:
                elj += wt * rr * (w.a[q * K + k] - w.h[q * K + k])
                ent += wt * (-rr * w.lr[q * K + k] + rr * w.h[q * K + k])
                mag += wt * rr * (fabs(w.a[q * K + k]) + fabs(w.lr[q * K + k])
                                  + fabs(w.h[q * K + k]))
    slot.T[0] += value
    slot.T[1] += elj
    slot.T[2] += ent
    slot.T[3] += mag

    # --- statistics about mu_k --------------------------------------------------------
    for k in range(K):
        Dk = w.D + k * _TILE * d
        acc = 0.0
        for j in range(d):
            w.racc[j] = 0.0
        for q in range(nr):
            i = w.perm[q]
            wt = 1.0 if p.sw == NULL else p.sw[r0 + i]
            wr = wt * w.r[q * K + k] if (wt > 0.0 and w.cnt[i] < d) else 0.0
            w.lr[q * K + k] = wr                  # (log r no longer needed)
            acc += wr
        emc_miss_weigh(Dk, w.lr + k, K, nr, d, w.B, w.racc)
        slot.N[k] += acc
        for j in range(d):
            slot.R[k * d + j] += w.racc[j]
        _gemm_tn_add(nr, d, w.B, Dk, slot.S + k * d * d)     # S_k += (w r D)^T D
        for run in range(n_runs):
            s = w.run_start[run]
            e = w.run_start[run + 1]
            i = w.perm[s]
            m = w.cnt[i]
            sw_run = 0.0
            for q in range(s, e):
                sw_run += w.lr[q * K + k]
            if not sw_run > 0.0:
                continue
            # the conditional covariance, once per run: sum_i w_i r_ik C_ik
            C = w.arena + w.arena_off[run] + 2 * k * m * m + m * m
            for a in range(m):
                ja = w.idx[i * d + a]
                for b in range(m):
                    jb = w.idx[i * d + b]
                    slot.S[(k * d + ja) * d + jb] += sw_run * C[a * m + b]
            memset(w.seen, 1, d)
            for a in range(m):
                w.seen[w.idx[i * d + a]] = 0
            for j in range(d):
                if w.seen[j]:
                    slot.OM[k * d + j] += sw_run

    # --- imputation: E[x_j | x_o] and Var[x_j | x_o] (law of total variance) -----------
    if p.out_mean != NULL:
        for run in range(n_runs):
            s = w.run_start[run]
            e = w.run_start[run + 1]
            m = w.cnt[w.perm[s]]
            for q in range(s, e):
                i = w.perm[q]
                x = p.X + (r0 + i) * d
                for j in range(d):
                    p.out_mean[(r0 + i) * d + j] = x[j]
                    if p.out_var != NULL:
                        p.out_var[(r0 + i) * d + j] = 0.0
                for a in range(m):
                    ja = w.idx[i * d + a]
                    mean = 0.0
                    for k in range(K):
                        mean += w.r[q * K + k] * (p.means[k * d + ja]
                                                  + w.D[(k * _TILE + q) * d + ja])
                    p.out_mean[(r0 + i) * d + ja] = mean
                    if p.out_var == NULL:
                        continue
                    acc = 0.0
                    for k in range(K):
                        C = w.arena + w.arena_off[run] + 2 * k * m * m + m * m
                        dev = p.means[k * d + ja] + w.D[(k * _TILE + q) * d + ja] - mean
                        acc += w.r[q * K + k] * (C[a * m + a] + dev * dev)
                    p.out_var[(r0 + i) * d + ja] = acc
    return 0


cdef void _run_block(const _Pass* p, Py_ssize_t b, _Slot* slot) noexcept nogil:
    cdef _Work w
    cdef Py_ssize_t t, t0 = b * p.tiles_per_block
    cdef Py_ssize_t t1 = min(p.n_tiles, t0 + p.tiles_per_block)
    cdef Py_ssize_t r0
    if not _allocate(&w, p.K, p.d):
        slot.status = _FAILED_ALLOC
        slot.failed_row = t0 * _TILE
        _release(&w)
        return
    for t in range(t0, t1):
        r0 = t * _TILE
        if _tile(p, &w, slot, r0, min(<Py_ssize_t>_TILE, p.n - r0)) != 0:
            break
    _release(&w)


def missing_pass(const double[:, ::1] X, const double[::1] log_weights,
                 const double[:, ::1] means, const double[:, :, ::1] precisions_cholesky,
                 sample_weight=None, int n_threads=1, out_log_resp=None,
                 out_row_value=None, out_mean=None, out_var=None):
    """One E-step over X (NaN = missing); see the module docstring.

    Returns (N (K,), R (K, d), S (K, d, d), observed_mass (K, d), totals (4,)),
    the blocks merged in block order, or raises: ``DegenerateComponent`` as
    ('factor', row, component) through a ValueError subclass the caller maps,
    FloatingPointError for a row without a finite likelihood.
    Optional outputs (filled in place): ``out_log_resp`` (n, K), ``out_row_value``
    (n,), ``out_mean`` and ``out_var`` (n, d) (``out_var`` needs ``out_mean``).
    BLAS must be single-threaded when ``n_threads`` > 1 (the caller's job).
    """
    cdef _Pass p
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = means.shape[0], b
    if means.shape[1] != d or precisions_cholesky.shape[0] != K or \
            precisions_cholesky.shape[1] != d or precisions_cholesky.shape[2] != d or \
            log_weights.shape[0] != K:
        raise ValueError("data, weights and parameters disagree on the shapes")
    log_det_u = np.array([np.sum(np.log(np.diagonal(precisions_cholesky[k])))
                          for k in range(K)], dtype=np.float64)
    cdef const double[::1] ldu = log_det_u
    cdef const double[::1] swv
    cdef double[:, ::1] lrv
    cdef double[::1] rvv
    cdef double[:, ::1] omv
    cdef double[:, ::1] ovv
    p.X = &X[0, 0] if n else NULL
    p.n, p.d, p.K = n, d, K
    p.log_w = &log_weights[0]
    p.means = &means[0, 0]
    p.U = &precisions_cholesky[0, 0, 0]
    Ut = np.ascontiguousarray(np.swapaxes(np.asarray(precisions_cholesky), 1, 2))
    cdef const double[:, :, ::1] utv = Ut
    p.Ut = &utv[0, 0, 0]
    p.log_det_u = &ldu[0]
    p.sw = NULL
    p.out_log_resp = p.out_row_value = p.out_mean = p.out_var = NULL
    if sample_weight is not None:
        swv = sample_weight
        if swv.shape[0] != n:
            raise ValueError("sample_weight must have one entry per row")
        if n:
            p.sw = &swv[0]
    if out_log_resp is not None:
        lrv = out_log_resp
        if lrv.shape[0] != n or lrv.shape[1] != K:
            raise ValueError("out_log_resp has the wrong shape")
        if n:
            p.out_log_resp = &lrv[0, 0]
    if out_row_value is not None:
        rvv = out_row_value
        if rvv.shape[0] != n:
            raise ValueError("out_row_value has the wrong shape")
        if n:
            p.out_row_value = &rvv[0]
    if out_mean is not None:
        omv = out_mean
        if omv.shape[0] != n or omv.shape[1] != d:
            raise ValueError("out_mean has the wrong shape")
        if n:
            p.out_mean = &omv[0, 0]
        if out_var is not None:
            ovv = out_var
            if ovv.shape[0] != n or ovv.shape[1] != d:
                raise ValueError("out_var has the wrong shape")
            if n:
                p.out_var = &ovv[0, 0]
    p.n_tiles = (n + _TILE - 1) // _TILE
    p.n_blocks = min(p.n_tiles, MAX_BLOCKS)
    p.tiles_per_block = (p.n_tiles + p.n_blocks - 1) // p.n_blocks if p.n_blocks else 0
    cdef Py_ssize_t n_slots = max(p.n_blocks, 1)
    bN = np.zeros((n_slots, K))
    bR = np.zeros((n_slots, K, d))
    bS = np.zeros((n_slots, K, d, d))
    bOM = np.zeros((n_slots, K, d))
    bT = np.zeros((n_slots, N_TOTALS))
    cdef double[:, ::1] vN = bN
    cdef double[:, :, ::1] vR = bR
    cdef double[:, :, :, ::1] vS = bS
    cdef double[:, :, ::1] vOM = bOM
    cdef double[:, ::1] vT = bT
    cdef _Slot* slots = <_Slot*>calloc(n_slots, sizeof(_Slot))
    if slots == NULL:
        raise MemoryError("could not allocate the blocks of a pass")
    try:
        for b in range(n_slots):
            slots[b].N = &vN[b, 0]
            slots[b].R = &vR[b, 0, 0]
            slots[b].S = &vS[b, 0, 0, 0]
            slots[b].OM = &vOM[b, 0, 0]
            slots[b].T = &vT[b, 0]
            slots[b].failed_row = -1
            slots[b].failed_component = -1
        if n:
            n_threads = <int>min(<Py_ssize_t>max(n_threads, 1), p.n_blocks)
            for b in prange(p.n_blocks, nogil=True, schedule="dynamic",
                            num_threads=n_threads):
                _run_block(&p, b, &slots[b])
        for b in range(p.n_blocks):
            if slots[b].status == _FAILED_ALLOC:
                raise MemoryError("could not allocate the buffers of a missing-value pass")
            if slots[b].status == _FAILED_FACTOR:
                raise _FactorError(slots[b].failed_row, slots[b].failed_component)
            if slots[b].status == _FAILED_LIKELIHOOD:
                raise FloatingPointError(
                    f"row {slots[b].failed_row} of X has no finite likelihood under any "
                    "component (every log p(x_o, z=k) is -inf or NaN)")
    finally:
        free(slots)
    # merge in block order: the fixed order that makes threads invisible
    N, R, S, OM, T = bN[0].copy(), bR[0].copy(), bS[0].copy(), bOM[0].copy(), bT[0].copy()
    for b in range(1, p.n_blocks):
        N += bN[b]
        R += bR[b]
        S += bS[b]
        OM += bOM[b]
        T += bT[b]
    return N, R, S, OM, T


class _FactorError(ValueError):
    """P_mm of a component is not numerically positive definite at a row."""

    def __init__(self, row, component):
        super().__init__(f"row {row}, component {component}")
        self.row = int(row)
        self.component = int(component)

# cython: language_level=3
"""One pass over the data at fixed parameters: the engine's chunk loop.

Rows are cut into chunks of ``chunk_rows``; chunks are grouped into at most
``MAX_BLOCKS`` contiguous blocks. Each block owns one statistics slot and is
processed by one thread, chunk after chunk, in row order; the slots are then
merged in block order. The grouping depends only on (n_rows, chunk_rows), never
on the thread count, so the result is bitwise the same for any ``n_threads``
(given that BLAS runs single-threaded, which the caller arranges).
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from emcore.kernel cimport FamilyKernel, PosteriorKernel, N_TOTALS

import numpy as np

MAX_BLOCKS = 16

cdef extern from "_rows.h":
    void emc_add_row_vector(double* A, const double* v, Py_ssize_t n,
                            Py_ssize_t K) noexcept nogil
    void emc_scale_rows(double* R, const double* w, Py_ssize_t n, Py_ssize_t K) noexcept nogil
    void emc_sum_rows(const double* R, double* out, Py_ssize_t n, Py_ssize_t K) noexcept nogil


# status codes of a block (0 = ok)
cdef enum:
    _FAILED_ALLOC = 1
    _FAILED_DENSITY = 2
    _FAILED_POSTERIOR = 3
    _FAILED_ACCUMULATE = 4


def data_pass(FamilyKernel family, PosteriorKernel rule, const double[:, ::1] X,
              const double[::1] log_weights, sample_weight, Py_ssize_t chunk_rows,
              int n_threads, bint with_stats, out_log_resp=None, out_row_value=None,
              out_labels=None):
    """Run one E-step pass; return (stats, resp_sum, totals).

    stats      (family.n_stats,)  merged sufficient statistics (zeros if not with_stats)
    resp_sum   (n_components,)    sum_i w_i q_ik
    totals     (N_TOTALS,)        see emcore/kernel.pxd
    Optionally fills out_log_resp (n, k) with log q and out_row_value (n,) with the
    rule's row objective f_i (log p(x_i) for the soft rule), and, for a hard rule,
    out_labels (n,) with each row's component. A hard rule hands
    over labels, and the family accumulates by label (no n x k weights).
    Raises ValueError / FloatingPointError on a kernel failure.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = family.n_components
    cdef Py_ssize_t S = family.n_stats
    if d != family.n_features or log_weights.shape[0] != K:
        raise ValueError("data, weights and family disagree on the shapes")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows
    cdef Py_ssize_t n_blocks = min(n_chunks, MAX_BLOCKS)
    cdef Py_ssize_t n_slots = max(n_blocks, 1)

    block_stats = np.zeros((n_slots, S))
    block_resp = np.zeros((n_slots, K))
    block_totals = np.zeros((n_slots, N_TOTALS))
    block_status = np.zeros(n_slots, dtype=np.intc)
    block_row = np.full(n_slots, -1, dtype=np.intp)
    cdef double[:, ::1] bs = block_stats
    cdef double[:, ::1] br = block_resp
    cdef double[:, ::1] bt = block_totals
    cdef int[::1] bstat = block_status
    cdef Py_ssize_t[::1] brow = block_row

    cdef const double* sw = NULL
    cdef const double[::1] swv
    if sample_weight is not None:
        swv = sample_weight
        if swv.shape[0] != n:
            raise ValueError("sample_weight must have one entry per row")
        if n:
            sw = &swv[0]

    cdef double* lr_out = NULL
    cdef double* ll_out = NULL
    cdef double[:, ::1] lrv
    cdef double[::1] llv
    if out_log_resp is not None:
        lrv = out_log_resp
        if lrv.shape[0] != n or lrv.shape[1] != K:
            raise ValueError("out_log_resp has the wrong shape")
        if n:
            lr_out = &lrv[0, 0]
    cdef Py_ssize_t* lab_out = NULL
    cdef Py_ssize_t[::1] labv
    if out_labels is not None:
        if not rule.hard:
            raise ValueError("out_labels needs a hard posterior rule")
        labv = out_labels
        if labv.shape[0] != n:
            raise ValueError("out_labels has the wrong shape")
        if n:
            lab_out = &labv[0]
    if out_row_value is not None:
        llv = out_row_value
        if llv.shape[0] != n:
            raise ValueError("out_row_value has the wrong shape")
        if n:
            ll_out = &llv[0]

    cdef Py_ssize_t fam_scratch = family.scratch_size(chunk_rows)
    cdef Py_ssize_t b, c, c0, c1, r0, nr, i, k
    cdef double* A
    cdef double* R
    cdef double* L
    cdef double* F
    cdef double* T
    cdef Py_ssize_t* Z
    cdef double* Rq
    cdef bint hard = rule.hard
    # a hard rule with a family that fuses it (k-means), unless log q is asked for
    cdef bint fused = hard and family.fused_hard_step and lr_out == NULL
    cdef int status
    cdef const double* lw = &log_weights[0] if K else NULL
    cdef const double* Xp = &X[0, 0] if n else NULL

    if n:
        # never more threads than blocks: idle OpenMP threads spin (measured: a fit
        # on 180 rows was 10-25x slower with 2 threads for its 1 block)
        n_threads = <int>min(<Py_ssize_t>n_threads, n_blocks)
        for b in prange(n_blocks, nogil=True, schedule="dynamic", num_threads=n_threads):
            A = <double*>malloc(chunk_rows * K * sizeof(double))
            R = <double*>malloc(chunk_rows * K * sizeof(double))
            L = <double*>malloc(chunk_rows * sizeof(double))
            F = <double*>malloc((fam_scratch + 1) * sizeof(double))
            T = <double*>malloc(N_TOTALS * sizeof(double))
            Z = <Py_ssize_t*>malloc(chunk_rows * sizeof(Py_ssize_t))
            # a hard rule writes q (one-hot) only when log q is asked for
            Rq = NULL if (hard and lr_out == NULL) else R
            if A == NULL or R == NULL or L == NULL or F == NULL or T == NULL or Z == NULL:
                bstat[b] = _FAILED_ALLOC
            else:
                family.clear_stats(&bs[b, 0])
                c0 = b * n_chunks // n_blocks
                c1 = (b + 1) * n_chunks // n_blocks
                for c in range(c0, c1):
                    r0 = c * chunk_rows
                    nr = min(chunk_rows, n - r0)
                    # chunk totals first, then into the block: summation depth
                    # (chunk rows) + (chunks per block) + (blocks), see engine.py
                    for i in range(N_TOTALS):
                        T[i] = 0.0
                    if fused:
                        # the family's own hard E-step, fused with its accumulation
                        status = family.chunk_hard_step(
                            Xp + r0 * d, nr, lw, (sw + r0) if sw != NULL else NULL, A, F,
                            Z, L, T, &bs[b, 0] if with_stats else NULL)
                    else:
                        status = family.chunk_log_density(Xp + r0 * d, nr, A, F)
                        if status != 0:
                            bstat[b] = _FAILED_DENSITY
                            brow[b] = r0
                            break
                        emc_add_row_vector(A, lw, nr, K)
                        status = rule.chunk_posterior(
                            A, Rq, L, (sw + r0) if sw != NULL else NULL, nr, K, T,
                            Z if hard else NULL)
                    for i in range(N_TOTALS):
                        bt[b, i] += T[i]
                    if status != 0:
                        bstat[b] = _FAILED_POSTERIOR
                        brow[b] = r0 + status - 1
                        break
                    if lr_out != NULL:      # never with fused (see above)
                        memcpy(lr_out + r0 * K, A, nr * K * sizeof(double))
                    if ll_out != NULL:
                        memcpy(ll_out + r0, L, nr * sizeof(double))
                    if lab_out != NULL:
                        memcpy(lab_out + r0, Z, nr * sizeof(Py_ssize_t))
                    if hard:
                        for i in range(nr):
                            br[b, Z[i]] += sw[r0 + i] if sw != NULL else 1.0
                    else:
                        if sw != NULL:
                            emc_scale_rows(R, sw + r0, nr, K)
                        emc_sum_rows(R, &br[b, 0], nr, K)
                    if with_stats and not fused:
                        if hard:
                            status = family.chunk_accumulate_hard(
                                Xp + r0 * d, nr, Z, (sw + r0) if sw != NULL else NULL, R,
                                &bs[b, 0], F)
                        else:
                            status = family.chunk_accumulate(Xp + r0 * d, nr, R,
                                                             &bs[b, 0], F)
                        if status != 0:
                            bstat[b] = _FAILED_ACCUMULATE
                            brow[b] = r0
                            break
            free(A)
            free(R)
            free(L)
            free(F)
            free(T)
            free(Z)

    for b in range(n_blocks):
        if bstat[b] == _FAILED_ALLOC:
            raise MemoryError("could not allocate chunk buffers")
        if bstat[b] == _FAILED_DENSITY:
            raise FloatingPointError(
                f"{type(family).__name__} failed to compute log-densities for the "
                f"chunk starting at row {brow[b]}")
        if bstat[b] == _FAILED_POSTERIOR:
            raise ValueError(
                f"row {brow[b]} of X has no finite likelihood under any component "
                "(every log p(x, z=k) is -inf or NaN)")
        if bstat[b] == _FAILED_ACCUMULATE:
            raise FloatingPointError(
                f"{type(family).__name__} failed to accumulate statistics for the "
                f"chunk starting at row {brow[b]}")

    # Merge the blocks in block order: the fixed order that makes threads invisible.
    stats = np.empty(S)
    cdef double[::1] sv = stats
    family.clear_stats(&sv[0])
    resp_sum = np.zeros(K)
    totals = np.zeros(N_TOTALS)
    cdef double[::1] rs = resp_sum
    cdef double[::1] ts = totals
    for b in range(n_blocks):
        if with_stats:
            family.merge_stats(&sv[0], &bs[b, 0])
        for k in range(K):
            rs[k] += br[b, k]
        for i in range(N_TOTALS):
            ts[i] += bt[b, i]
    return stats, resp_sum, totals

# cython: language_level=3
"""One pass over the data at fixed parameters: the engine's chunk loop.

Rows are cut into chunks of ``chunk_rows``; chunks are grouped into at most
``MAX_BLOCKS`` contiguous blocks. Each block owns one statistics slot and is
processed by one thread, chunk after chunk, in row order; the slots are then
merged in block order. The grouping depends only on (n_rows, chunk_rows), never
on the thread count, so the result is bitwise the same for any ``n_threads``
(given that BLAS runs single-threaded, which the caller arranges).

X is float64 or float32. A float32 X goes to the family kernel's ``_f32``
methods when it has them (``float32_rows``; with the exact soft rule its
fused ``chunk_soft_step_f32`` when it has that), else each chunk is converted to
float64 into the block's own buffer (never the whole array); everything else
(log joints, q, statistics, totals) is float64 either way.
"""
from cython.parallel cimport prange
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from emcore.kernel cimport FamilyKernel, PosteriorKernel, N_TOTALS

import numpy as np

MAX_BLOCKS = 16

cdef extern from "_rows.h":
    # m (n x K): m[i, k] += v[k]; m[i, k] *= w[i]; out[k] += sum_i m[i, k]
    void emc_add_row_vector(double* m, const double* v, Py_ssize_t n,
                            Py_ssize_t K) noexcept nogil
    void emc_scale_rows(double* m, const double* w, Py_ssize_t n, Py_ssize_t K) noexcept nogil
    void emc_sum_rows(const double* m, double* out, Py_ssize_t n, Py_ssize_t K) noexcept nogil


# status codes of a block (0 = ok)
cdef enum:
    _FAILED_ALLOC = 1
    _FAILED_DENSITY = 2
    _FAILED_POSTERIOR = 3
    _FAILED_ACCUMULATE = 4


cdef struct _Pass:
    # What every block of one pass reads, and the optional outputs (rows disjoint
    # between blocks, NULL when not asked for).
    const double* X               # (n, d) the data (float64), or NULL
    const float* X32              # (n, d) the data (float32), or NULL
    bint convert                  # X32 converted a chunk at a time (no _f32 kernel)
    Py_ssize_t n, d, K
    Py_ssize_t chunk_rows, n_chunks, n_blocks
    const double* log_weights     # (K,) log pi_k
    const double* sample_weight   # (n,) w_i, or NULL (all 1)
    bint hard                     # the rule writes labels, not q
    bint fused                    # the family's chunk_hard_step does the E-step
    bint fused_soft               # the family's chunk_soft_step does it (soft rule)
    bint with_stats
    Py_ssize_t scratch_size       # the family's scratch for chunk_rows rows
    double* out_log_resp          # (n, K) log q
    double* out_row_value         # (n,) f_i
    Py_ssize_t* out_labels        # (n,) a hard rule's components


cdef struct _ChunkBuffers:
    # One block's working arrays, for one chunk at a time.
    double* log_joint       # (chunk_rows, K) log p(x_i, z_i = k); then log q (soft)
    double* resp            # (chunk_rows, K) q; then the weights w_i q_ik (soft)
    double* row_value       # (chunk_rows,) the rule's row objective f_i
    double* scratch         # the family's scratch (+ 1, never empty)
    double* totals          # (N_TOTALS,) the chunk's totals
    Py_ssize_t* labels      # (chunk_rows,) the components of a hard rule's rows
    double* rows            # (chunk_rows, d) a float32 chunk as float64 (convert)


cdef struct _Block:
    # One block's results: its own statistics slot and sums, and how it failed.
    double* stats           # (n_stats,)
    double* resp_sum        # (K,) sum_i w_i q_ik
    double* totals          # (N_TOTALS,)
    int status              # 0 or a _FAILED_ code
    Py_ssize_t failed_row   # the chunk's first row, or the row without a likelihood


cdef bint _allocate(_ChunkBuffers* buf, const _Pass* p) noexcept nogil:
    cdef Py_ssize_t rows = p.chunk_rows, K = p.K
    buf.log_joint = <double*>malloc(rows * K * sizeof(double))
    buf.resp = <double*>malloc(rows * K * sizeof(double))
    buf.row_value = <double*>malloc(rows * sizeof(double))
    buf.scratch = <double*>malloc((p.scratch_size + 1) * sizeof(double))
    buf.totals = <double*>malloc(N_TOTALS * sizeof(double))
    buf.labels = <Py_ssize_t*>malloc(rows * sizeof(Py_ssize_t))
    buf.rows = <double*>malloc(rows * p.d * sizeof(double)) if p.convert else NULL
    return not (buf.log_joint == NULL or buf.resp == NULL or buf.row_value == NULL
                or buf.scratch == NULL or buf.totals == NULL or buf.labels == NULL
                or (p.convert and buf.rows == NULL))


cdef void _release(_ChunkBuffers* buf) noexcept nogil:
    free(buf.log_joint)
    free(buf.resp)
    free(buf.row_value)
    free(buf.scratch)
    free(buf.totals)
    free(buf.labels)
    free(buf.rows)


cdef inline const double* _row_weights(const _Pass* p, Py_ssize_t r0) noexcept nogil:
    return (p.sample_weight + r0) if p.sample_weight != NULL else NULL


cdef const double* _chunk_rows(const _Pass* p, _ChunkBuffers* buf, Py_ssize_t r0,
                               Py_ssize_t nr) noexcept nogil:
    # the chunk's rows as float64: in place, converted into buf.rows, or NULL when
    # the family reads the float32 rows itself (p.X32 + r0 d)
    cdef Py_ssize_t i
    cdef const float* xs
    if p.X != NULL:
        return p.X + r0 * p.d
    if not p.convert:
        return NULL
    xs = p.X32 + r0 * p.d
    for i in range(nr * p.d):
        buf.rows[i] = xs[i]
    return buf.rows


cdef int _chunk_e_step(FamilyKernel family, PosteriorKernel rule, const _Pass* p,
                       _ChunkBuffers* buf, const double* x, Py_ssize_t r0, Py_ssize_t nr,
                       _Block* block) noexcept nogil:
    # The chunk's E-step into buf: log joint, q (or labels), row values and the
    # chunk's totals, which are added to the block's (even on failure). Returns 0,
    # or records the failure in block and returns its code. x: the chunk's rows
    # (_chunk_rows), NULL for the family's float32 methods.
    cdef const float* xs = p.X32 + r0 * p.d if x == NULL else NULL
    cdef Py_ssize_t i, K = p.K
    cdef int status
    # a hard rule writes q (one-hot) only when log q is asked for
    cdef double* resp = NULL if (p.hard and p.out_log_resp == NULL) else buf.resp
    # chunk totals first, then into the block: summation depth
    # (chunk rows) + (chunks per block) + (blocks), see engine.py
    for i in range(N_TOTALS):
        buf.totals[i] = 0.0
    if p.fused:
        # the family's own hard E-step, fused with its accumulation
        if x == NULL:
            status = family.chunk_hard_step_f32(
                xs, nr, p.log_weights, _row_weights(p, r0), buf.log_joint, buf.scratch,
                buf.labels, buf.row_value, buf.totals,
                block.stats if p.with_stats else NULL)
        else:
            status = family.chunk_hard_step(
                x, nr, p.log_weights, _row_weights(p, r0), buf.log_joint, buf.scratch,
                buf.labels, buf.row_value, buf.totals,
                block.stats if p.with_stats else NULL)
    elif p.fused_soft:
        # the family's own exact soft E-step, fused with its accumulation and
        # with the block's sum_i w_i q_ik (no q written, see _add_resp_sum)
        if x == NULL:
            status = family.chunk_soft_step_f32(
                xs, nr, p.log_weights, _row_weights(p, r0), block.resp_sum,
                buf.row_value, buf.totals, block.stats if p.with_stats else NULL,
                buf.scratch)
        else:
            status = family.chunk_soft_step(
                x, nr, p.log_weights, _row_weights(p, r0), block.resp_sum,
                buf.row_value, buf.totals, block.stats if p.with_stats else NULL,
                buf.scratch)
    else:
        if x == NULL:
            status = family.chunk_log_density_f32(xs, nr, buf.log_joint, buf.scratch)
        else:
            status = family.chunk_log_density(x, nr, buf.log_joint, buf.scratch)
        if status != 0:
            block.status = _FAILED_DENSITY
            block.failed_row = r0
            return block.status
        emc_add_row_vector(buf.log_joint, p.log_weights, nr, K)
        status = rule.chunk_posterior(
            buf.log_joint, resp, buf.row_value, _row_weights(p, r0), nr, K, buf.totals,
            buf.labels if p.hard else NULL)
    for i in range(N_TOTALS):
        block.totals[i] += buf.totals[i]
    if status != 0:
        block.status = _FAILED_POSTERIOR
        block.failed_row = r0 + status - 1
        return block.status
    return 0


cdef void _write_outputs(const _Pass* p, const _ChunkBuffers* buf, Py_ssize_t r0,
                         Py_ssize_t nr) noexcept nogil:
    # the chunk's rows of the asked-for outputs
    if p.out_log_resp != NULL:      # never with fused (see data_pass)
        memcpy(p.out_log_resp + r0 * p.K, buf.log_joint, nr * p.K * sizeof(double))
    if p.out_row_value != NULL:
        memcpy(p.out_row_value + r0, buf.row_value, nr * sizeof(double))
    if p.out_labels != NULL:
        memcpy(p.out_labels + r0, buf.labels, nr * sizeof(Py_ssize_t))


cdef void _add_resp_sum(const _Pass* p, _ChunkBuffers* buf, Py_ssize_t r0, Py_ssize_t nr,
                        double* resp_sum) noexcept nogil:
    # resp_sum[k] += sum_i w_i q_ik; a soft rule's q becomes the weights w_i q_ik
    cdef Py_ssize_t i
    cdef const double* sw = p.sample_weight
    if p.hard:
        for i in range(nr):
            resp_sum[buf.labels[i]] += sw[r0 + i] if sw != NULL else 1.0
    else:
        if sw != NULL:
            emc_scale_rows(buf.resp, sw + r0, nr, p.K)
        emc_sum_rows(buf.resp, resp_sum, nr, p.K)


cdef int _accumulate(FamilyKernel family, const _Pass* p, _ChunkBuffers* buf,
                     const double* x, Py_ssize_t r0, Py_ssize_t nr,
                     _Block* block) noexcept nogil:
    # the chunk's statistics into the block's slot (by label for a hard rule);
    # x as in _chunk_e_step
    cdef const float* xs = p.X32 + r0 * p.d if x == NULL else NULL
    cdef int status
    if p.hard and x == NULL:
        status = family.chunk_accumulate_hard_f32(xs, nr, buf.labels, _row_weights(p, r0),
                                                  buf.resp, block.stats, buf.scratch)
    elif p.hard:
        status = family.chunk_accumulate_hard(x, nr, buf.labels, _row_weights(p, r0),
                                              buf.resp, block.stats, buf.scratch)
    elif x == NULL:
        status = family.chunk_accumulate_f32(xs, nr, buf.resp, block.stats, buf.scratch)
    else:
        status = family.chunk_accumulate(x, nr, buf.resp, block.stats, buf.scratch)
    if status != 0:
        block.status = _FAILED_ACCUMULATE
        block.failed_row = r0
    return block.status


cdef void _run_block(FamilyKernel family, PosteriorKernel rule, const _Pass* p,
                     Py_ssize_t b, _Block* block) noexcept nogil:
    # Block b's chunks, in row order, into its own slot and sums (one thread).
    cdef _ChunkBuffers buf
    cdef Py_ssize_t c, r0, nr
    cdef const double* x
    if not _allocate(&buf, p):
        block.status = _FAILED_ALLOC
    else:
        family.clear_stats(block.stats)
        for c in range(b * p.n_chunks // p.n_blocks, (b + 1) * p.n_chunks // p.n_blocks):
            r0 = c * p.chunk_rows
            nr = min(p.chunk_rows, p.n - r0)
            x = _chunk_rows(p, &buf, r0, nr)
            if _chunk_e_step(family, rule, p, &buf, x, r0, nr, block) != 0:
                break
            _write_outputs(p, &buf, r0, nr)
            if not p.fused_soft:         # (the fused step adds its own)
                _add_resp_sum(p, &buf, r0, nr, block.resp_sum)
            if p.with_stats and not p.fused and not p.fused_soft:
                if _accumulate(family, p, &buf, x, r0, nr, block) != 0:
                    break
    _release(&buf)


def data_pass(FamilyKernel family, PosteriorKernel rule, X,
              const double[::1] log_weights, sample_weight, Py_ssize_t chunk_rows,
              int n_threads, bint with_stats, out_log_resp=None, out_row_value=None,
              out_labels=None):
    """Run one E-step pass over X (C-contiguous float64 or float32, (n, d));
    return (stats, resp_sum, totals).

    stats      (family.n_stats,)  merged sufficient statistics (zeros if not with_stats)
    resp_sum   (n_components,)    sum_i w_i q_ik
    totals     (N_TOTALS,)        see emcore/kernel.pxd
    Optionally fills out_log_resp (n, k) with log q and out_row_value (n,) with the
    rule's row objective f_i (log p(x_i) for the soft rule), and, for a hard rule,
    out_labels (n,) with each row's component. A hard rule hands
    over labels, and the family accumulates by label (no n x k weights).
    Raises ValueError / FloatingPointError on a kernel failure.
    """
    cdef _Pass p
    p.n = X.shape[0]
    p.d = X.shape[1]
    p.K = family.n_components
    cdef Py_ssize_t n = p.n, K = p.K, S = family.n_stats
    if p.d != family.n_features or log_weights.shape[0] != K:
        raise ValueError("data, weights and family disagree on the shapes")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    p.chunk_rows = chunk_rows
    p.n_chunks = (n + chunk_rows - 1) // chunk_rows
    p.n_blocks = min(p.n_chunks, MAX_BLOCKS)
    cdef Py_ssize_t n_slots = max(p.n_blocks, 1)

    # each block clears its own slot (_run_block, in its thread): not zeroed here
    block_stats = np.empty((n_slots, S))
    block_resp = np.zeros((n_slots, K))
    block_totals = np.zeros((n_slots, N_TOTALS))
    cdef double[:, ::1] bs = block_stats
    cdef double[:, ::1] br = block_resp
    cdef double[:, ::1] bt = block_totals
    cdef _Block* blocks = <_Block*>calloc(n_slots, sizeof(_Block))
    if blocks == NULL:
        raise MemoryError("could not allocate the blocks of a pass")
    cdef Py_ssize_t b
    for b in range(n_slots):
        blocks[b].stats = &bs[b, 0] if S else NULL
        blocks[b].resp_sum = &br[b, 0] if K else NULL
        blocks[b].totals = &bt[b, 0]
        blocks[b].failed_row = -1
    try:
        _fill_pass(&p, family, rule, X, log_weights, sample_weight, with_stats,
                   out_log_resp, out_row_value, out_labels)
        if n:
            # never more threads than blocks: idle OpenMP threads spin (measured: a
            # fit on 180 rows was 10-25x slower with 2 threads for its 1 block)
            n_threads = <int>min(<Py_ssize_t>n_threads, p.n_blocks)
            for b in prange(p.n_blocks, nogil=True, schedule="dynamic",
                            num_threads=n_threads):
                _run_block(family, rule, &p, b, &blocks[b])
        for b in range(p.n_blocks):
            _raise_on_failure(family, blocks[b].status, blocks[b].failed_row)
    finally:
        free(blocks)
    return _merge_blocks(family, bs, br, bt, p.n_blocks, with_stats)


cdef void _fill_pass(_Pass* p, FamilyKernel family, PosteriorKernel rule,
                     X, const double[::1] log_weights,
                     sample_weight, bint with_stats, out_log_resp, out_row_value,
                     out_labels) except *:
    # the inputs' and the optional outputs' pointers, checked against the shapes
    cdef Py_ssize_t n = p.n, K = p.K
    cdef const double[:, ::1] Xv
    cdef const float[:, ::1] Xs
    cdef const double[::1] swv
    cdef double[:, ::1] lrv
    cdef double[::1] llv
    cdef Py_ssize_t[::1] labv
    p.X = NULL
    p.X32 = NULL
    p.convert = False
    if X.dtype == np.float32:
        Xs = X
        p.X32 = &Xs[0, 0] if n else NULL
        p.convert = not family.float32_rows
    else:
        Xv = X
        p.X = &Xv[0, 0] if n else NULL
    p.log_weights = &log_weights[0] if K else NULL
    p.sample_weight = NULL
    if sample_weight is not None:
        swv = sample_weight
        if swv.shape[0] != n:
            raise ValueError("sample_weight must have one entry per row")
        if n:
            p.sample_weight = &swv[0]
    p.out_log_resp = NULL
    p.out_row_value = NULL
    p.out_labels = NULL
    if out_log_resp is not None:
        lrv = out_log_resp
        if lrv.shape[0] != n or lrv.shape[1] != K:
            raise ValueError("out_log_resp has the wrong shape")
        if n:
            p.out_log_resp = &lrv[0, 0]
    if out_labels is not None:
        if not rule.hard:
            raise ValueError("out_labels needs a hard posterior rule")
        labv = out_labels
        if labv.shape[0] != n:
            raise ValueError("out_labels has the wrong shape")
        if n:
            p.out_labels = &labv[0]
    if out_row_value is not None:
        llv = out_row_value
        if llv.shape[0] != n:
            raise ValueError("out_row_value has the wrong shape")
        if n:
            p.out_row_value = &llv[0]
    p.hard = rule.hard
    # a hard rule with a family that fuses it (k-means), unless log q is asked for
    p.fused = p.hard and family.fused_hard_step and p.out_log_resp == NULL
    # the exact soft rule with a family that fuses it (for float64 rows, or for
    # float32 rows it reads itself), the same way
    p.fused_soft = (not p.hard and rule.exact_soft and p.out_log_resp == NULL
                    and ((p.X != NULL and family.fused_soft_step)
                         or (p.X32 != NULL and not p.convert
                             and family.fused_soft_step_f32)))
    p.with_stats = with_stats
    p.scratch_size = family.scratch_size(p.chunk_rows)


cdef _raise_on_failure(FamilyKernel family, int status, Py_ssize_t row):
    if status == _FAILED_ALLOC:
        raise MemoryError("could not allocate chunk buffers")
    if status == _FAILED_DENSITY:
        raise FloatingPointError(
            f"{type(family).__name__} failed to compute log-densities for the "
            f"chunk starting at row {row}")
    if status == _FAILED_POSTERIOR:
        raise ValueError(
            f"row {row} of X has no finite likelihood under any component "
            "(every log p(x, z=k) is -inf or NaN)")
    if status == _FAILED_ACCUMULATE:
        raise FloatingPointError(
            f"{type(family).__name__} failed to accumulate statistics for the "
            f"chunk starting at row {row}")


cdef tuple _merge_blocks(FamilyKernel family, double[:, ::1] bs, double[:, ::1] br,
                         double[:, ::1] bt, Py_ssize_t n_blocks, bint with_stats):
    # Merge the blocks in block order: the fixed order that makes threads invisible.
    cdef Py_ssize_t b, i, k, K = br.shape[1]
    stats = np.empty(bs.shape[1])
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

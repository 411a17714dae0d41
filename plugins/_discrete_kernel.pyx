# cython: language_level=3
"""Compiled kernels of the discrete families (plugins/discrete.py).

**Codes (categorical, bernoulli): pattern tables.** Features are cut into groups
of consecutive features whose level counts multiply to at most ``MAX_PATTERNS``
(8 binary features, 5 ternary ones; a feature with more levels is a group of its
own). A row's codes in a group form one pattern index (mixed radix), and

    log p(x | z = k) = sum_g T_g[pattern_g(x), k],   T_g[p, k] = sum_{j in g} log P_{k j p_j}

so a row costs G = ceil(d / 8) table lookups of K numbers (binary data), not the
d K multiply-adds of ``X @ log(P).T``. The statistics are the same tables of
weights, A_g[p, k] += w_ik (one add of K numbers per group and row); the level
counts C_kjl = sum_{p: p_j = l} A_g[p, k] are expanded once per pass, in
``stats_from_buffer``. A code that is not an integer in [0, L_j) (NaN included)
gives the row log-density -inf (probability 0); the estimators reject such data
before (``check_support``, ``Family.check_data``). Codes arrive as float64 (the
engine's chunk loop reads float64 rows): comparing, truncating and checking them
costs a few vector operations per code, and the pass reads 8 bytes per code.
When every feature is binary (``CodesKernel.binary``) the groups are bytes of
the row's bit string, formed four codes per vector compare (docs/discrete.md,
"The bit path").

**Group codes (the codes path).** The rows an EM fit iterates over do not
change between its passes, nor do their pattern indices: ``GroupCodes(rows,
levels)`` computes them once, one byte per group and row (the index within the
group; offsets are added at use), for rows that are all valid and groups of at
most 256 patterns (every binary or categorical grouping with levels <= 256;
otherwise there are no codes and the kernel reads the rows). A kernel made with
``codes=`` reads a chunk's codes instead of its float64 rows whenever the chunk
lies inside those rows (same array, whole rows; the engine's chunks of them do):
G bytes per row instead of 8 d, the same indices, hence the same sums. Any other
X is read as rows. The family makes the codes for the fit's rows
(``CategoricalFamily.codes_for``, docs/discrete.md#group-codes).

**The fused soft step (``chunk_soft_step``).** With the exact soft rule the
engine lets the kernel form q, the totals and the statistics in one loop: the
log joint a_k by table sums, exp(a_k - shift) as a product of per-group exp
tables (no exp per entry) when the tables' ranges sum to at most 700 (every
product a normal double), else by a vector exp, one log per row; the exp-free
step runs blocks of 4 rows with one vector log per block and adds the pass's
sum_i w_i q_ik itself; on group codes that come in runs of equal later groups
(sorted distinct rows) it forms those groups' sums and statistics once per run
(docs/discrete.md#the-fused-soft-step).

**Counts (poisson).** log p(x | k) = sum_j x_j log lambda_kj - sum_j lambda_kj -
sum_j log x_j!, the last term from a table for counts below 1024, lgamma
otherwise. Statistics per component: N_k, S_kj = sum_i w_ik x_ij and
L_k = sum_i w_ik sum_j log x_ij!, stored as (d + 2) x Kp tables.

Every sum is taken in row order within a chunk: the same chunk gives the same
bits on any thread.
"""
from libc.math cimport INFINITY, exp, floor, lgamma

from emcore.kernel cimport FamilyKernel

import numpy as np

MAX_PATTERNS = 256
# the fused soft step is exp free while the ranges of its factors sum to at most
# this: exp(-700) = 9.9e-305 is a normal double (> 2.2e-308), _discrete.h
cdef double _EXP_FREE_RANGE = 700.0
cdef enum:
    _LOG_FACTORIAL_TABLE = 1024   # log x! tabulated below this count

cdef extern from "_discrete.h":
    void emdc_log_density(const double* X, const unsigned char* codes, Py_ssize_t n,
                          Py_ssize_t d, Py_ssize_t K,
                          Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                          const double* top, const int* stride,
                          const Py_ssize_t* offset, int binary, const double* T,
                          double* acc, Py_ssize_t* idx, double* out) noexcept nogil
    Py_ssize_t emdc_accumulate(const double* X, const unsigned char* codes,
                               Py_ssize_t n, Py_ssize_t d,
                               Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G,
                               const Py_ssize_t* first, const double* top,
                               const int* stride, const Py_ssize_t* offset, int binary,
                               const double* w, double* wrow, Py_ssize_t* idx,
                               int cached, double* A) noexcept nogil
    Py_ssize_t emdc_soft_step(
        const double* X, const unsigned char* codes, Py_ssize_t n, Py_ssize_t d,
        Py_ssize_t K, Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
        const double* top, const int* stride, const Py_ssize_t* offset, int binary,
        const double* T, const double* E, double shift, const double* lw,
        const double* ew, const double* row_weights, double* resp_sum, double* row_value,
        double* totals, double* A, Py_ssize_t* ix, double* a, double* e, double* h,
        double* el, double* mg, int runs, int table_flags) noexcept nogil
    void emdc_tables(const double* lp, Py_ssize_t K, Py_ssize_t d, Py_ssize_t L,
                     Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                     const Py_ssize_t* offset, Py_ssize_t total, const int* levels,
                     int* dig, double* T, double* E, double* shift_range) noexcept nogil
    void emdc_expand(const double* A, Py_ssize_t K, Py_ssize_t d, Py_ssize_t L,
                     Py_ssize_t Kp, Py_ssize_t G, const Py_ssize_t* first,
                     const Py_ssize_t* offset, Py_ssize_t total, const int* levels,
                     int* dig, double* weight, double* counts) noexcept nogil
    Py_ssize_t emdc_make_codes(const double* X, Py_ssize_t n, Py_ssize_t d,
                               Py_ssize_t G, const Py_ssize_t* first, const double* top,
                               const int* stride, const Py_ssize_t* offset, int binary,
                               Py_ssize_t* idx, unsigned char* codes) noexcept nogil


def pattern_groups(levels):
    """Return (first, stride, offset, n_patterns) of the groups of ``levels``.

    first (G + 1,): group g covers features first[g]:first[g + 1]; stride (d,): the
    place value of feature j's code in its group's pattern index; offset (G,): the
    group's first row in the stacked tables; n_patterns: their total.
    """
    levels = [int(v) for v in levels]
    # (no negative indices: this module is compiled with wraparound=False)
    first, stride, offset = [0], [], []
    size, total, begin = 1, 0, 0
    for j, L in enumerate(levels):
        if j > begin and size * L > MAX_PATTERNS:
            offset.append(total)
            total += size
            first.append(j)
            begin, size = j, 1
        stride.append(size)
        size *= L
    offset.append(total)
    total += size
    first.append(len(levels))
    return (np.array(first, dtype=np.intp), np.array(stride, dtype=np.intp),
            np.array(offset, dtype=np.intp), total)


# the groups of each levels tuple seen (pattern_groups, made once: kernels are
# made every EM iteration)
cdef dict _groups_cache = {}


def _groups_of(levels):
    """pattern_groups(levels) and the stride as int32, cached per levels tuple."""
    got = _groups_cache.get(levels)
    if got is None:
        first, stride, offset, total = pattern_groups(levels)
        got = (first, stride, offset, total, stride.astype(np.intc),
               np.asarray(levels, dtype=np.intc))
        if len(_groups_cache) < 64:
            _groups_cache[levels] = got
    return got


# the fused soft step's form for sorted group codes (_discrete.h emdc_soft_step):
# 2 the runs, compiled for AVX-512 where the CPU has it (the default), 1 the
# runs without AVX-512, 0 the blocks (benchmarks/bench_lca.py's A/B, the tests)
cdef int _run_step = 2


def _set_run_step(int mode):
    """Set the fused soft step's form for sorted group codes (0, 1 or 2, see
    above); returns the old one."""
    global _run_step
    if mode not in (0, 1, 2):
        raise ValueError("mode must be 0, 1 or 2")
    old = _run_step
    _run_step = mode
    return old


cdef long long _serial = 0      # kernels made so far (CodesKernel.serial)


cdef class GroupCodes:
    """The group codes of the rows of one array (the codes path, see above).

    ``GroupCodes(rows, levels)``: rows (n, d) C-contiguous float64 (kept, by
    reference: they must not change while the codes are in use); ``valid`` is
    False, and there are no codes, when a row holds a code outside its feature's
    levels or a group has more than 256 patterns.
    """
    cdef readonly object rows
    cdef readonly object levels
    cdef readonly object codes        # (n, G) uint8, or None
    cdef readonly bint valid
    cdef const double* base
    cdef const unsigned char* data
    cdef Py_ssize_t n_rows, d, G

    def __init__(self, rows, levels):
        if not (isinstance(rows, np.ndarray) and rows.dtype == np.float64
                and rows.ndim == 2 and rows.flags.c_contiguous):
            raise TypeError("rows must be a C-contiguous float64 (n, d) array")
        self.levels = tuple(int(v) for v in levels)
        if rows.shape[1] != len(self.levels):
            raise ValueError("rows and levels disagree on the number of features")
        self.rows = rows
        self.n_rows, self.d = rows.shape[0], rows.shape[1]
        first, stride, offset, total = pattern_groups(self.levels)
        self.G = len(offset)
        sizes = np.diff(np.append(offset, total))     # patterns per group
        self.valid = False
        self.codes = None
        if self.n_rows == 0 or sizes.max() > 256:
            return
        codes = np.empty((self.n_rows, self.G), dtype=np.uint8)
        cdef const double[:, ::1] Xv = rows
        cdef unsigned char[:, ::1] cv = codes
        cdef const Py_ssize_t[::1] fv = first
        cdef const Py_ssize_t[::1] ov = offset
        cdef const int[::1] sv = stride.astype(np.intc)
        cdef const double[::1] tv = np.asarray(self.levels, dtype=np.float64) - 1.0
        cdef Py_ssize_t[::1] idx = np.empty(self.G, dtype=np.intp)
        cdef bint binary = all(v == 2 for v in self.levels)
        cdef Py_ssize_t bad
        with nogil:
            bad = emdc_make_codes(&Xv[0, 0], self.n_rows, self.d, self.G, &fv[0], &tv[0],
                                  &sv[0], &ov[0], binary, &idx[0], &cv[0, 0])
        if bad:
            return
        self.codes = codes
        self.valid = True
        self.base = &Xv[0, 0]
        self.data = &cv[0, 0]

    cdef inline const unsigned char* chunk(self, const double* X,
                                           Py_ssize_t n_rows) noexcept nogil:
        # the codes of the chunk X (n_rows rows) when it is whole rows of these
        # rows, else NULL
        cdef size_t at = <size_t>X, start = <size_t>self.base, r
        if not self.valid or at < start:
            return NULL
        r = (at - start) // sizeof(double)
        if r % self.d != 0 or <Py_ssize_t>(r // self.d) + n_rows > self.n_rows:
            return NULL
        return self.data + (r // self.d) * self.G


cdef class CodesKernel(FamilyKernel):
    """Kernel for K components of independent categorical features at fixed
    log-probabilities ``log_probs`` (K, d, L) (entries beyond a feature's levels
    unused), with ``levels`` (d,) level counts."""
    cdef const double[:, ::1] log_probs_flat
    cdef object levels_list
    cdef const double[::1] top         # (d,) L_j - 1, the largest code, as doubles
    cdef const Py_ssize_t[::1] first
    cdef const int[::1] stride         # (d,) place values (int32: they vectorise)
    cdef const Py_ssize_t[::1] offset
    cdef const double[:, ::1] table    # (n_patterns, Kp)
    cdef readonly Py_ssize_t n_groups
    cdef readonly Py_ssize_t n_patterns
    cdef Py_ssize_t Kp
    cdef readonly bint binary          # every feature has 2 levels (the bit path)
    cdef long long serial              # unique per kernel object (the scratch tag)
    cdef readonly GroupCodes codes     # the codes path's codes, or None
    # the fused soft step's exp tables: exp(T_g - s_g) per group (s_g its largest
    # finite entry), sum_g s_g, and sum_g (s_g - smallest finite entry)
    cdef const double[:, ::1] exp_table
    cdef readonly double exp_shift
    cdef readonly double exp_range
    cdef readonly bint finite_tables   # no table entry is -inf (no probability 0)
    cdef readonly bint nonpositive_tables   # no table entry is positive

    def __init__(self, log_probs, levels, GroupCodes codes=None):
        lp = np.ascontiguousarray(log_probs, dtype=np.float64)
        if lp.ndim != 3 or lp.shape[1] != len(levels) or max(levels) > lp.shape[2]:
            raise ValueError("log_probs must be (k, d, L) with L >= every level count")
        if max(levels) >= 2 ** 31:
            raise ValueError("a feature has 2^31 levels or more (codes are indexed in int32)")
        K, d, _ = lp.shape
        global _serial
        _serial += 1
        self.serial = _serial
        self.n_components = K
        self.n_features = d
        self.Kp = ((K + 3) // 4) * 4
        self.levels_list = [int(v) for v in levels]
        if codes is not None and codes.levels != tuple(self.levels_list):
            raise ValueError("codes were made for other levels")
        self.codes = codes if codes is not None and codes.valid else None
        self.log_probs_flat = lp.reshape(K, -1)
        first, stride, offset, total, stride_c, levels_c = _groups_of(tuple(self.levels_list))
        self.first, self.offset = first, offset
        self.stride = stride_c
        self.top = levels_c - 1.0
        self.n_groups = len(offset)
        self.binary = all(v == 2 for v in self.levels_list)
        self.n_patterns = total
        self.n_stats = total * self.Kp
        # the tables in C (emdc_tables): sums in feature order, as
        # sum_j lp[:, j, digits_j] would add them
        table = np.zeros((total, self.Kp))
        exp_table = np.zeros((total, self.Kp))
        cdef double[:, ::1] tv = table
        cdef double[:, ::1] ev = exp_table
        cdef const double[:, :, ::1] lv = lp
        cdef const Py_ssize_t[::1] fv = first
        cdef const Py_ssize_t[::1] ov = offset
        cdef const int[::1] levv = levels_c
        cdef int[::1] dig = np.empty(d, dtype=np.intc)
        cdef double[4] shift_range
        shift_range[0] = 0.0
        shift_range[1] = 0.0
        shift_range[2] = 1.0
        shift_range[3] = 1.0
        if total > 0 and K > 0:
            emdc_tables(&lv[0, 0, 0], K, d, lp.shape[2], self.Kp, self.n_groups, &fv[0],
                        &ov[0], total, &levv[0], &dig[0], &tv[0, 0], &ev[0, 0], shift_range)
        self.exp_shift, self.exp_range = shift_range[0], shift_range[1]
        self.finite_tables = shift_range[2] != 0.0
        self.nonpositive_tables = shift_range[3] != 0.0
        self.table = table
        self.exp_table = exp_table
        self.fused_soft_step = True

    def __reduce__(self):
        K = self.n_components
        return (CodesKernel, (np.asarray(self.log_probs_flat).reshape(K, self.n_features, -1),
                              self.levels_list))

    def expand(self, buffer):
        """(weights (K,), counts (K, d, L)) from a statistics slot (pattern tables)."""
        cdef Py_ssize_t K = self.n_components, d = self.n_features
        cdef Py_ssize_t L = max(self.levels_list)
        cdef const double[::1] A = np.ascontiguousarray(buffer, dtype=np.float64).reshape(-1)
        if A.shape[0] != self.n_patterns * self.Kp:
            raise ValueError("buffer must hold n_stats doubles")
        weight = np.empty(K)
        counts = np.empty((K, d, L))
        cdef double[::1] wv = weight
        cdef double[:, :, ::1] cv = counts
        cdef const int[::1] levv = _groups_of(tuple(self.levels_list))[5]
        cdef int[::1] dig = np.empty(max(d, 1), dtype=np.intc)
        if K > 0 and d > 0:
            emdc_expand(&A[0], K, d, L, self.Kp, self.n_groups, &self.first[0],
                        &self.offset[0], self.n_patterns, &levv[0], &dig[0], &wv[0],
                        &cv[0, 0, 0])
        else:
            weight[:] = 0.0
            counts[...] = 0.0
        return weight, counts

    # Scratch: [acc or wrow (Kp) | tag (3) | pattern indices (n_rows x G)]. The
    # engine's chunk loop calls chunk_log_density, then chunk_accumulate, on the
    # same chunk with the same scratch: the second reuses the indices the first
    # kept, when the tag (this kernel's serial number, the chunk's address and
    # row count) says they are this chunk's. The serial is unique per kernel
    # object (a new one per pass), the data do not change within a pass.

    def _scratch(self, Py_ssize_t n_rows):
        # the Python faces: zeroed, so that no stale tag can match
        return np.zeros(max(1, self.scratch_size(n_rows)))

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        # (+ 7 Kp: chunk_soft_step's log pi, exp weights and per-lane work)
        return self.Kp + 3 + max(n_rows, 1) * self.n_groups + 7 * self.Kp

    cdef inline bint _tagged(self, const double* X, Py_ssize_t n_rows,
                             const double* scratch) noexcept nogil:
        cdef const double* tag = scratch + self.Kp
        return (tag[0] == <double>self.serial and tag[1] == <double><size_t>X
                and tag[2] == <double>n_rows)

    cdef inline const unsigned char* _chunk_codes(self, const double* X,
                                                  Py_ssize_t n_rows) noexcept nogil:
        if self.codes is None:
            return NULL
        return self.codes.chunk(X, n_rows)

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef double* tag = scratch + self.Kp
        emdc_log_density(X, self._chunk_codes(X, n_rows), n_rows, self.n_features, self.n_components, self.Kp,
                         self.n_groups, &self.first[0], &self.top[0], &self.stride[0],
                         &self.offset[0], self.binary, &self.table[0, 0], scratch,
                         <Py_ssize_t*>(tag + 3), out)
        tag[0] = <double>self.serial
        tag[1] = <double><size_t>X
        tag[2] = <double>n_rows
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef bint cached = self._tagged(X, n_rows, scratch)
        cdef Py_ssize_t bad = emdc_accumulate(
            X, self._chunk_codes(X, n_rows), n_rows, self.n_features, self.n_components, self.Kp, self.n_groups,
            &self.first[0], &self.top[0], &self.stride[0], &self.offset[0], self.binary,
            weights,
            scratch, <Py_ssize_t*>(scratch + self.Kp + 3), cached, stats)
        return 1 if bad else 0

    cdef int chunk_soft_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* resp_sum, double* row_value, double* totals,
                             double* stats, double* scratch) noexcept nogil:
        # the exact soft posterior fused with the statistics (emdc_soft_rows): exp
        # free when the tables' and the weights' ranges sum to at most
        # _EXP_FREE_RANGE (every product a normal double, see _discrete.h)
        cdef Py_ssize_t k, K = self.n_components, Kp = self.Kp
        cdef double* tag = scratch + Kp
        cdef Py_ssize_t* ix = <Py_ssize_t*>(tag + 3)
        cdef double* lw = scratch + Kp + 3 + max(n_rows, 1) * self.n_groups
        cdef double* ew = lw + Kp
        cdef double top = -INFINITY, low = INFINITY
        cdef Py_ssize_t status
        tag[0] = 0.0                 # the indices below are not this chunk's
        for k in range(Kp):
            lw[k] = log_weights[k] if k < K else -INFINITY
            if lw[k] > top:
                top = lw[k]
            if lw[k] > -INFINITY and lw[k] < low:
                low = lw[k]
        for k in range(Kp):
            ew[k] = exp(lw[k] - top) if k < K else 0.0
        cdef bint exp_free = top > -INFINITY and self.exp_range + (top - low) <= _EXP_FREE_RANGE
        status = emdc_soft_step(
            X, self._chunk_codes(X, n_rows), n_rows, self.n_features, K, Kp, self.n_groups,
            &self.first[0], &self.top[0], &self.stride[0], &self.offset[0], self.binary,
            &self.table[0, 0], &self.exp_table[0, 0] if exp_free else NULL,
            self.exp_shift + top, lw, ew, row_weights, resp_sum, row_value, totals, stats,
            ix, ew + Kp, ew + 2 * Kp, ew + 3 * Kp, ew + 4 * Kp, ew + 5 * Kp, _run_step,
            self.finite_tables + 2 * self.nonpositive_tables)
        return <int>status

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.n_stats):
            into[i] += other[i]


cdef double[::1] _log_factorials = np.array(
    [lgamma(v + 1.0) for v in range(_LOG_FACTORIAL_TABLE)], dtype=np.float64)


cdef inline double _log_factorial(double x) noexcept nogil:
    # log x! for a count x; +inf for anything else (negative, non-integer, NaN), so
    # that a row outside the support gets log-density -inf
    cdef Py_ssize_t c
    if x >= 0.0 and x < _LOG_FACTORIAL_TABLE:
        c = <Py_ssize_t>x
        if <double>c == x:
            return _log_factorials[c]
        return INFINITY
    if x >= 0.0 and x == floor(x) and x < INFINITY:
        return lgamma(x + 1.0)
    return INFINITY


cdef class PoissonKernel(FamilyKernel):
    """Kernel for K components of independent Poisson counts with rates (K, d)."""
    cdef const double[:, ::1] rates
    cdef const double[:, ::1] log_rates   # (d, Kp): log lambda, transposed, zero padded
    cdef const double[::1] base           # (Kp,): -sum_j lambda_kj
    cdef Py_ssize_t Kp

    def __init__(self, rates):
        rates = np.ascontiguousarray(rates, dtype=np.float64)
        K, d = rates.shape
        self.n_components = K
        self.n_features = d
        self.Kp = ((K + 3) // 4) * 4
        self.n_stats = (d + 2) * self.Kp
        self.rates = rates
        lr = np.zeros((d, self.Kp))
        with np.errstate(divide="ignore"):
            lr[:, :K] = np.log(rates).T
        self.log_rates = lr
        base = np.zeros(self.Kp)
        base[:K] = -rates.sum(axis=1)
        self.base = base

    def __reduce__(self):
        return (PoissonKernel, (np.asarray(self.rates),))

    def expand(self, buffer):
        """(weights (K,), sums (K, d), log-factorial sums (K,)) from a statistics slot."""
        K, d = self.n_components, self.n_features
        B = np.asarray(buffer, dtype=np.float64).reshape(d + 2, self.Kp)[:, :K]
        return B[0].copy(), B[1:d + 1].T.copy(), B[d + 1].copy()

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        return self.Kp

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        cdef Py_ssize_t i, j, k, d = self.n_features, K = self.n_components, Kp = self.Kp
        cdef double x, lf
        cdef const double* lr = &self.log_rates[0, 0]
        for i in range(n_rows):
            lf = 0.0
            for k in range(Kp):
                scratch[k] = self.base[k]
            for j in range(d):
                x = X[i * d + j]
                lf += _log_factorial(x)
                if x != 0.0:         # 0 log 0 = 0: a zero rate allows a zero count
                    for k in range(Kp):
                        scratch[k] += x * lr[j * Kp + k]
            for k in range(K):
                # a code outside the support: lf = +inf, log-density -inf
                out[i * K + k] = scratch[k] - lf if lf < INFINITY else -INFINITY
        return 0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        cdef Py_ssize_t i, j, k, d = self.n_features, K = self.n_components, Kp = self.Kp
        cdef double x, lf, w
        for i in range(n_rows):
            lf = 0.0
            for j in range(d):
                lf += _log_factorial(X[i * d + j])
            for k in range(K):
                w = weights[i * K + k]
                if w == 0.0:
                    continue
                if not lf < INFINITY:
                    return 1          # a row outside the support with positive weight
                stats[k] += w
                for j in range(d):
                    stats[(j + 1) * Kp + k] += w * X[i * d + j]
                stats[(d + 1) * Kp + k] += w * lf
        return 0

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.n_stats):
            into[i] += other[i]

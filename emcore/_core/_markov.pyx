# cython: language_level=3
"""Forward-backward and Viterbi for first-order hidden Markov chains.

The input is what a family already computes for a mixture: the per-row
emission log-densities ``log_b[t, j] = log p(x_t | z_t = j)`` of a batch of
sequences laid end to end (``starts`` holds the row offsets, ``n_seq + 1``
entries), with the chain's ``log_startprob`` (K,) and ``log_transmat`` (K, K).

Scaled, not log-space
---------------------
Forward-backward is the *scaled* recursion (Rabiner 1989, section V.A), not
the log-space one. Log-space needs a log-sum-exp for every (t, j), that is
T K^2 ``exp`` and T K ``log`` calls; the scaled recursion needs T K ``exp``
(the emissions) and T ``log`` calls (the scale factors), and its K^2 part is
plain multiply-adds that vectorise or go to BLAS. Underflow is prevented by
two shifts: each row of emissions is shifted by its maximum,
``b~_t(j) = exp(log_b[t, j] - m_t)`` with ``m_t = max_j log_b[t, j]``, so
``b~`` lies in [0, 1] with at least one entry equal to 1 (emission
log-densities of -1e3 per step are fine), and the forward vector is
renormalised every step:

    a~_1(j) = pi_j b~_1(j),                   c_1 = sum_j a~_1(j),   a_1 = a~_1 / c_1
    a~_t(j) = (sum_i a_{t-1}(i) A_ij) b~_t(j), c_t = sum_j a~_t(j),   a_t = a~_t / c_t
    log p(x_1..T) = sum_t log c_t + sum_t m_t

    b_T(i) = 1,   w_t(j) = b~_t(j) b_t(j) / c_t,   b_t(i) = sum_j A_ij w_{t+1}(j)
    gamma_t(i) = a_t(i) b_t(i),      xi_t(i, j) = a_t(i) A_ij w_{t+1}(j)

Zeros in ``pi`` and ``A`` (log 0 = -inf) are exact zeros after ``exp`` and
never produce NaN: the scaled pass takes no logarithm of a posterior quantity
(see the entropy below), and a state the chain cannot be in (forward value 0)
gets posterior 0 and contributes nothing to another state's xi or beta (every
factor on that way is an exact zero), whatever its backward value.

Only a sequence the log-space pass also finds impossible (every path has a
zero factor) is reported as of probability zero, with its first impossible
row; a NaN or +inf in ``log_b`` is reported with its row.

Leaving the double range
------------------------
The scaled recursion is exact up to relative round-off only while the numbers
it forms are normal doubles (>= DBL_MIN = 2^-1022). Below, a subnormal keeps
fewer significant bits and a product under eta = 2^-1075 is 0: with gradual
underflow a product carries an absolute error <= eta besides its relative u
(an ``exp`` of a subnormal result 2 eta); additions are exact there. Such
losses are detected, and the sequence is recomputed by a log-space
forward-backward (T K^2 exp/log, no range limit), in three places:

1. Parameters. A non-zero start or transition probability below DBL_MIN is
   itself a subnormal (e^-713 ~ 1e-310 is stored to ~20 bits): then every
   sequence goes to the log-space pass, in both passes (checked once a call).

2. Underflow in the data. The row shift makes max_j b~_t(j) = 1, so the
   state with the largest density of *row t* never underflows in b~; it does
   not protect the dominant *path*, which is decided by all rows. A forward
   value can underflow (b~ below e^-745, or a value decaying row after row
   with no transition to replenish it) and belong to the state that later rows
   favour: two absorbing states, data favouring state 0 by e^30 a row for 30
   rows then state 1 for 60; state 1's forward value is exactly 0 after ~25
   rows, every c_t is ordinary, and the scaled pass alone returns a log p 900
   too low. No test of the emission rows alone can see this, so the loss is
   bounded instead.

   Forward-backward measures it. The computed a_t differs from the exact step
   applied to the computed a_{t-1} by relative round-off plus an absolute
   e_t(j) <= (C / c_t + 1) eta, C = K + 1 + 2 max(1, max pi, max A) (K
   products in the dot product, the product with b~, exp's 2 eta times the dot
   product <= max A, then the division by c_t). Adding e to a_t(j) multiplies
   the likelihood by 1 + e b_t(j), as sum_j a_t(j) b_t(j) = 1; so log p moves
   by at most D eta with

       D = sum_t (C / c_t + 1) sum_j b_t(j),

   summed in the backward pass, whose w is computed for every state, also
   those of forward value 0 (an underflowed state's beta is exactly what its
   loss costs; for a state the chain truly cannot be in, every factor on its
   way into xi and beta is an exact zero). D > u / eta = 2^1022 sends the
   sequence to log space. Ordinary data give D eta ~ 1e-300; in the example
   b_t(1) ~ e^1800 overflows. (First order: terms with two losses are
   products of such bounds. Underflow in the backward pass moves a_t(i) b_t(i)
   by <= K eta: negligible.) The posteriors, ratios of such sums, move by
   <= 2 D eta <= 2u.

   The forward-only pass (no beta) uses a sufficient test per step: with
   alpha the smallest non-zero a_{t-1}(i) (1 at t = 1), p the smallest non-zero
   start or transition probability and beta = exp(min finite log_b[t] - m_t)
   the smallest non-zero b~_t, every non-zero product a_{t-1}(i) A_ij b~_t(j)
   is >= alpha p beta; if that is >= 2 DBL_MIN max(1, c_t) and beta >= DBL_MIN
   nothing in the step underflows and, by induction, every computed zero is an
   exact zero. Otherwise the log-space forward pass (O(K) memory) decides. The
   test is more conservative than D (emission ratios beyond ~e^-350 a row
   fail it without any loss): a cost in time, never in accuracy.

3. Overflow and lost mass, as before: a zero ``c_t``, a non-finite ``w`` (a
   backward value beyond the largest double), a posterior row whose sum is off
   1 by more than 8 T (K + 4) u (twice the round-off bound).

The log-space pass shifts the emissions by m_t too (log alpha stays of the
size of the shifted model's path terms) and takes the entropy in the
pairwise form below from log xi and log gamma themselves, never from the
ELBO form: that multiplies each posterior's error, u |log alpha| relative in
log space, by |log b_t(j)|, quadratic in the data's scale (1.6e-4 for
log-densities of -1e6, where the pairwise form's error is u |log alpha|).

Expected transition counts
--------------------------
``sum_t xi_t(i, j) = A_ij * S_ij`` with ``S = sum_{t<T} a_t w_{t+1}^T``: the
per-step K x K work is a rank-one update, done in blocks of ``_TIME_BLOCK``
steps as one ``dgemm`` of the stored forward rows against the stored ``w``
rows when K is large, and by vectorised loops when K is small. The Hadamard
product with A is applied once, to the sum over all sequences.

Memory
------
Per sequence in flight: the forward rows are written into the caller's
``gamma`` rows (then turned into posteriors in place), plus one T x K scratch
holding ``b~`` (overwritten by ``w`` during the backward pass), two length-T
vectors (``c_t``, ``m_t``) and ``_TIME_BLOCK`` x K backward rows. The
likelihood-only pass (``posteriors=False``) keeps O(K).

``forward_backward_stats`` fuses the E-step with the family: per group of whole
sequences (at most ``group_rows`` rows, or one longer sequence), the family
kernel's log-densities of the group, the posteriors, and the kernel's weighted
statistics, in sub-chunks of at most ``group_rows`` rows. Its memory per block
in flight is three (group rows) x K arrays plus the kernel's scratch for
``group_rows`` rows: bounded by the group size for short sequences, O(T K) for
a sequence longer than ``group_rows`` (its forward rows must be kept for the
backward pass), never O(n_rows K) for the whole data.

Small K
-------
Below the BLAS switch (emcore/_markov.py) the scaled pass of a sequence runs as
two single loops over the rows in C (_markov.h: ``emm_forward_scaled``,
``emm_backward_scaled``), compiled for AVX2/FMA and for baseline x86-64
(``EMC_CLONES``) with the 4-lane exp of emcore/vexp.h: the same recursions,
checks and bound D as the BLAS form, but a row's whole work (its maximum, the
exp, the K^2 step, the scaling; then beta, the rank-one update of S with the
forward row still in place, w and the posterior row) is done while the row is
in registers, instead of one pass over the rows per step. The per-state
entropy and magnitude terms are summed per state over t and then over states
(a fixed order). For K = 4, 8, 12 and 16 (``K = 4 NV``, NV = 1..4 vectors of 4
doubles) the two passes are compiled once per NV with the row held in registers
(``emm_forward_nv``, ``emm_backward_nv``): the generic loops chain each K^2 step
through memory (``a[j] += a_i A_ij``, one load-add-store after the other), and
forward and backward are each one chain from row to row, so that latency, not
the arithmetic, set their speed. The register form splits each K-term dot
product into two independent partial sums and forms a row's sum in every lane at
once; the same terms in another order, inside the (K + 4) u per step of the
round-off bound. The backward pass also sums the posteriors per state (sum_t
gamma, sum_t gamma log b and its magnitude) for the fused pass, which used to
read every posterior row and log-density again for them.

Entropy of the chain posterior
------------------------------
The posterior q(z) = p(z | x) is a Markov chain, so

    q(z) = q(z_1) prod_{t<T} q(z_{t+1} | z_t) = prod_{t<T} xi_t(z_t, z_{t+1})
                                              / prod_{t=2}^{T-1} gamma_t(z_t)

and its entropy from the pairwise marginals is (first-order chains, T >= 2)

    H(q) = - sum_{t=1}^{T-1} sum_ij xi_t(i,j) log xi_t(i,j)
           + sum_{t=2}^{T-1} sum_i gamma_t(i) log gamma_t(i).

Evaluated as written it costs T K^2 logarithms. Substituting the factorisation
``log xi_t(i,j) = log a_t(i) + log A_ij + log b~_{t+1}(j) + log b_{t+1}(j) - log c_{t+1}``
and summing out with ``sum_j xi_t(i,j) = gamma_t(i)``, ``sum_i xi_t(i,j) =
gamma_{t+1}(j)``, ``sum_ij xi_t(i,j) = 1``:

    sum_ij xi_t log xi_t = sum_i gamma_t(i) log a_t(i) + sum_ij xi_t(i,j) log A_ij
                         + sum_j gamma_{t+1}(j) [log b~_{t+1}(j) + log b_{t+1}(j)]
                         - log c_{t+1};
    sum_i gamma_t log gamma_t = sum_i gamma_t(i) [log a_t(i) + log b_t(i)].

In the difference the log a_t terms telescope to t = 1, the log b_t terms to
t = T (where b_T = 1, log b_T = 0), and log a_1 = log pi + log b~_1 - log c_1,
leaving

    H(q) = sum_{t=1}^T log c_t - sum_i gamma_1(i) log pi_i
           - sum_ij Xi_ij log A_ij - sum_t sum_j gamma_t(j) log b~_t(j),

with ``Xi = sum_t xi_t``. This is the pairwise-marginal entropy exactly (it is
also ``log p(x) - E_q[log p(x, z)]``, the ELBO identity at the posterior), it
costs O(T K) and no extra logarithms, every term is a product of a
probability and the log of a *model* quantity, and terms whose weight is an
exact zero are skipped (0 log 0 = 0), so -inf parameters give no NaN. It holds
for T = 1 too (then H = log c_1 - sum gamma_1 (log pi + log b~_1), the
mixture entropy). The shifted log b~ keeps the terms small: the state with the
largest emission contributes 0.

Alongside, each sequence's ``magnitude``

    M = sum_t (|log c_t| + |m_t|) + sum_t sum_j gamma_t(j) |log b_t(j)|
        + sum_ij Xi_ij |log A_ij| + sum_i gamma_1(i) |log pi_i|

bounds the size of the terms summed into the log-likelihood and the ELBO, so
callers can derive round-off tolerances (docs/: the EM chain tolerances) as a
multiple of ``u * M``.

Viterbi
-------
Log space: ``d_t(j) = max_i [d_{t-1}(i) + log A_ij] + log b_t(j)`` with
back-pointers in an int32 T x K scratch. Ties go to the lowest state index
(strict ``>`` over increasing i, and for the final state). A sequence of zero
probability gets score -inf and the path those tie rules give.

Threads and reproducibility
---------------------------
Sequences are grouped into at most ``MAX_BLOCKS`` contiguous blocks, fixed by
the number of sequences alone. A block is processed by one thread, sequence
after sequence; per-sequence outputs (log-likelihood, entropy, magnitude,
Viterbi score) go to their own slots, the summed statistics (``S``, start
counts) to the block's slot, and the block slots are added in block order
after the parallel loop. Results are therefore bitwise identical for any
thread count, provided BLAS runs single-threaded inside the loop (the Python
wrapper arranges that).
"""
from cython.parallel cimport prange
from libc.math cimport exp, log, fabs, INFINITY
from libc.stdlib cimport malloc, free
cimport scipy.linalg.cython_blas as fblas
from emcore.kernel cimport FamilyKernel

import numpy as np

# at most this many sequence blocks (slots of K^2 + K doubles each)
MAX_BLOCKS = 64
# backward steps whose rank-one xi updates are flushed together
DEF _TIME_BLOCK = 64

# status codes of a sequence (0 = ok); the row is in fail_row
STATUS_ZERO_PROBABILITY = 1
STATUS_INVALID_LOG_B = 2
STATUS_NO_MEMORY = 3
STATUS_KERNEL = 5
cdef enum:
    _ZERO = 1
    _INVALID = 2
    _NOMEM = 3
    _KERNEL = 5       # the family kernel returned a non-zero code
    _RANGE = 4        # internal: the scaled recursion left double range (see below)

cdef double _U = 2.0 ** -53
# smallest normal double; u / eta with eta = 2^-1075 the underflow unit (half the
# smallest subnormal), the largest D the scaled pass accepts
cdef double _DBL_MIN = 2.0 ** -1022
cdef double _U_OVER_ETA = 2.0 ** 1022


cdef extern from "_markov.h":
    void emm_fwd_step(const double* A, const double* a, double* out,
                      Py_ssize_t K) noexcept nogil
    void emm_bwd_step(const double* AT, const double* w, double* out,
                      Py_ssize_t K) noexcept nogil
    void emm_outer_acc(const double* a, const double* w, double* S, Py_ssize_t n,
                       Py_ssize_t K) noexcept nogil
    void emm_viterbi_step(const double* lA, const double* d, double* best, int* arg,
                          Py_ssize_t K) noexcept nogil
    int emm_forward_scaled(Py_ssize_t T, Py_ssize_t K, const double* lb, const double* pi,
                           const double* A, double* G, double* W, double* c, double* m,
                           double* sums, Py_ssize_t* bad_row) noexcept nogil
    int emm_backward_scaled(Py_ssize_t T, Py_ssize_t K, const double* lb, const double* AT,
                            double* G, double* W, const double* c, const double* m,
                            double* S, double* work, double C, double max_drift,
                            double* sums, double* gsum) noexcept nogil
    void emm_gamma_sums(Py_ssize_t T, Py_ssize_t K, const double* G, const double* lb,
                        double* gsum) noexcept nogil


# --- BLAS forms of the three K^2 steps (row-major arrays, see emcore/blas.pxd) ---

cdef inline void _fwd_blas(const double* A, const double* a, double* out,
                           Py_ssize_t K) noexcept nogil:
    # out = A.T a; row-major A is column-major A.T: trans 'N'
    cdef char trans = b'N'
    cdef int n = <int>K, one = 1
    cdef double alpha = 1.0, beta = 0.0
    fblas.dgemv(&trans, &n, &n, &alpha, <double*>A, &n, <double*>a, &one, &beta,
                out, &one)


cdef inline void _bwd_blas(const double* A, const double* w, double* out,
                           Py_ssize_t K) noexcept nogil:
    # out = A w; row-major A is column-major A.T: trans 'T'
    cdef char trans = b'T'
    cdef int n = <int>K, one = 1
    cdef double alpha = 1.0, beta = 0.0
    fblas.dgemv(&trans, &n, &n, &alpha, <double*>A, &n, <double*>w, &one, &beta,
                out, &one)


cdef inline void _outer_blas(const double* a, const double* w, double* S,
                             Py_ssize_t n_rows, Py_ssize_t K) noexcept nogil:
    # S += a.T w with a, w (n_rows x K) row-major. Column-major, S is S.T and
    # S.T += w.T a: w (row-major) is column-major w.T, trans 'N'; a is a.T, 'T'.
    cdef char ta = b'N', tb = b'T'
    cdef int k = <int>K, r = <int>n_rows
    cdef double one = 1.0
    fblas.dgemm(&ta, &tb, &k, &k, &r, &one, <double*>w, &k, <double*>a, &k, &one,
                S, &k)


# --- one sequence ----------------------------------------------------------------

cdef int _forward_backward_one(
        Py_ssize_t T, Py_ssize_t K, const double* lb, const double* pi,
        const double* lpi, const double* A, const double* AT, const double* lA,
        double* G, double* W, double* c, double* m, double* Bb, double* S,
        double* res, Py_ssize_t* bad_row, bint blas, double C,
        double* gsum) noexcept nogil:
    """Posteriors of one sequence into G (T x K); S += sum_t a_t w_{t+1}^T.

    res[0:3] = (log-likelihood, entropy, magnitude); unless NULL, gsum (3 K) the
    posteriors' per-state sums (emm_gamma_sums in _markov.h). Returns a status
    code; _RANGE when the underflow bound D (module docstring, with this C)
    exceeds u / eta.
    """
    cdef Py_ssize_t t, j, s, e, e2, r
    cdef double mt, v, ct, sum_logc = 0.0, sum_m = 0.0, mag = 0.0
    cdef double ent_b = 0.0, g, rs, sb, D = 0.0
    cdef double max_drift = 8.0 * T * (K + 4) * _U
    cdef const double* row
    cdef double* a
    cdef double* bt
    cdef double* bcur
    cdef double* wt
    cdef double sums[3]
    cdef int code

    if not blas:
        # small K: the fused single-loop passes of _markov.h (the same
        # recursions and checks as below, Bb as their 5 K work doubles)
        code = emm_forward_scaled(T, K, lb, pi, A, G, W, c, m, sums, bad_row)
        if code != 0:
            return code
        sum_logc = sums[0]
        sum_m = sums[1]
        mag = sums[2]
        code = emm_backward_scaled(T, K, lb, AT, G, W, c, m, S, Bb, C, max_drift, sums,
                                   gsum)
        if code != 0:
            return code
        ent_b = sums[0]
        mag = mag + sums[1]
        D = sums[2]
        if not (D <= _U_OVER_ETA):
            return _RANGE
        return _finish_one(K, G, lpi, sum_logc, sum_m, ent_b, mag, res)

    # forward
    for t in range(T):
        row = lb + t * K
        mt = -INFINITY
        for j in range(K):
            v = row[j]
            if not (v < INFINITY):          # NaN or +inf
                bad_row[0] = t
                return _INVALID
            if v > mt:
                mt = v
        if mt == -INFINITY:
            bad_row[0] = t
            return _ZERO
        bt = W + t * K
        for j in range(K):
            bt[j] = exp(row[j] - mt)
        a = G + t * K
        if t == 0:
            for j in range(K):
                a[j] = pi[j] * bt[j]
        else:
            if blas:
                _fwd_blas(A, G + (t - 1) * K, a, K)
            else:
                emm_fwd_step(A, G + (t - 1) * K, a, K)
            for j in range(K):
                a[j] = a[j] * bt[j]
        ct = 0.0
        for j in range(K):
            ct = ct + a[j]
        if not (ct > 0.0):
            # zero here, or only below the smallest double: the log-space
            # recursion decides
            return _RANGE
        for j in range(K):
            a[j] = a[j] / ct
        c[t] = ct
        m[t] = mt
        v = log(ct)
        sum_logc = sum_logc + v
        sum_m = sum_m + mt
        mag = mag + fabs(v) + fabs(mt)

    # backward, in time blocks [s, e) from the end
    e = T
    s = e - _TIME_BLOCK if e > _TIME_BLOCK else 0
    t = T - 1
    while t >= 0:
        bcur = Bb + (t - s) * K
        if t == T - 1:
            for j in range(K):
                bcur[j] = 1.0
        elif blas:
            _bwd_blas(A, W + (t + 1) * K, bcur, K)
        else:
            emm_bwd_step(AT, W + (t + 1) * K, bcur, K)
        wt = W + t * K
        ct = c[t]
        # the underflow bound: D = sum_t (C / c_t + 1) sum_j b_t(j), over every
        # state, also those whose forward value is 0 (underflow may be what
        # made it 0, and their beta is what such a loss costs)
        sb = 0.0
        for j in range(K):
            sb = sb + bcur[j]
        D = D + (C / ct + 1.0) * sb
        for j in range(K):
            # w of every state: one the forward pass cannot be in meets only
            # zero factors on its way into xi and beta (a_t(i) = 0, A_ij = 0 or
            # b~_{t+1}(j) = 0), so it contributes exactly nothing there
            wt[j] = wt[j] * bcur[j] / ct
            if not (wt[j] < INFINITY):
                return _RANGE           # beta beyond the largest double (or NaN)
        if t == s:
            # xi of the block's rows r (r + 1 < T), before the forward rows change
            e2 = e if e < T - 1 else T - 1
            if e2 > s:
                if blas:
                    _outer_blas(G + s * K, W + (s + 1) * K, S, e2 - s, K)
                else:
                    emm_outer_acc(G + s * K, W + (s + 1) * K, S, e2 - s, K)
            for r in range(s, e):
                a = G + r * K
                bcur = Bb + (r - s) * K
                row = lb + r * K
                mt = m[r]
                rs = 0.0
                for j in range(K):
                    g = a[j] * bcur[j] if a[j] != 0.0 else 0.0
                    a[j] = g
                    rs = rs + g
                    if g != 0.0:            # 0 log 0 = 0 (row[j] may be -inf)
                        ent_b = ent_b + g * (row[j] - mt)
                        mag = mag + g * fabs(row[j])
                # each row sums to 1 up to round-off (4 T (K + 4) u, the tests'
                # derivation, times 2); more is posterior mass lost to underflow
                if not (fabs(rs - 1.0) <= max_drift):
                    return _RANGE
            e = s
            s = e - _TIME_BLOCK if e > _TIME_BLOCK else 0
        t = t - 1

    # underflow in the forward pass may have moved log p by up to D eta relative
    # (module docstring): more than u, and the log-space pass decides
    if not (D <= _U_OVER_ETA):
        return _RANGE
    if gsum != NULL:
        emm_gamma_sums(T, K, G, lb, gsum)
    return _finish_one(K, G, lpi, sum_logc, sum_m, ent_b, mag, res)


cdef inline int _finish_one(Py_ssize_t K, const double* G, const double* lpi,
                            double sum_logc, double sum_m, double ent_b, double mag,
                            double* res) noexcept nogil:
    # start term (the transition term needs A * S, done by the caller)
    cdef Py_ssize_t j
    cdef double g, ent_pi = 0.0
    for j in range(K):
        g = G[j]
        if g != 0.0:
            ent_pi = ent_pi + g * lpi[j]
            mag = mag + g * fabs(lpi[j])
    res[0] = sum_logc + sum_m
    res[1] = sum_logc - ent_pi - ent_b
    res[2] = mag
    return 0


cdef int _forward_one(Py_ssize_t T, Py_ssize_t K, const double* lb, const double* pi,
                      const double* A, double* a0, double* a1, double* bt,
                      double* res, Py_ssize_t* bad_row, bint blas,
                      double p) noexcept nogil:
    """Log-likelihood of one sequence in O(K) memory: res[0]. _RANGE unless every
    product of the step is provably a normal double (alpha p beta test of the
    module docstring, p the smallest non-zero start or transition probability);
    the caller then runs the log-space pass."""
    cdef Py_ssize_t t, j
    cdef double mt, lo, v, ct, sum_logc = 0.0, sum_m = 0.0
    cdef double alpha = 1.0, beta
    cdef const double* row
    cdef double* tmp
    for t in range(T):
        row = lb + t * K
        mt = -INFINITY
        lo = INFINITY
        for j in range(K):
            v = row[j]
            if not (v < INFINITY):
                bad_row[0] = t
                return _INVALID
            if v > mt:
                mt = v
            if v < lo and v > -INFINITY:
                lo = v
        if mt == -INFINITY:
            bad_row[0] = t
            res[0] = -INFINITY
            return _ZERO
        for j in range(K):
            bt[j] = exp(row[j] - mt)
        if t == 0:
            for j in range(K):
                a1[j] = pi[j] * bt[j]
        else:
            if blas:
                _fwd_blas(A, a0, a1, K)
            else:
                emm_fwd_step(A, a0, a1, K)
            for j in range(K):
                a1[j] = a1[j] * bt[j]
        ct = 0.0
        for j in range(K):
            ct = ct + a1[j]
        if not (ct > 0.0):
            return _RANGE
        # every non-zero product a_{t-1}(i) A_ij b~_t(j) (pi_j b~_1(j) at t = 0)
        # is at least alpha p beta, and a_t(j) = a~_t(j) / c_t: no underflow
        # anywhere in the step when that is >= DBL_MIN max(1, c_t) (twice, for
        # the rounding of the test itself)
        beta = exp(lo - mt)
        if not (beta >= _DBL_MIN and
                alpha * p * beta >= 2.0 * _DBL_MIN * (ct if ct > 1.0 else 1.0)):
            return _RANGE
        alpha = INFINITY
        for j in range(K):
            a1[j] = a1[j] / ct
            if a1[j] != 0.0 and a1[j] < alpha:
                alpha = a1[j]
        sum_logc = sum_logc + log(ct)
        sum_m = sum_m + mt
        tmp = a0
        a0 = a1
        a1 = tmp
    res[0] = sum_logc + sum_m
    return 0


# --- log-space fallback ----------------------------------------------------------
# The scaled recursion is accurate while its numbers stay normal doubles (module
# docstring, "Leaving the double range"): subnormal parameters, an underflow
# bound D beyond u / eta, the forward-only alpha p beta test, a zero scale
# factor, an overflowing backward value or lost posterior mass send a sequence
# here (_RANGE). Log space has no such limit and costs T K^2 exp/log.

cdef inline double _lse(const double* x, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    cdef Py_ssize_t i
    cdef double mx = -INFINITY, acc = 0.0
    for i in range(n):
        if x[i * stride] > mx:
            mx = x[i * stride]
    if mx == -INFINITY:
        return -INFINITY
    for i in range(n):
        acc = acc + exp(x[i * stride] - mx)
    return mx + log(acc)


cdef int _forward_log(Py_ssize_t T, Py_ssize_t K, const double* lb, const double* lpi,
                      const double* lA, double* L, Py_ssize_t step, double* tmp,
                      double* m, double* sum_m, double* mag,
                      Py_ssize_t* bad_row) noexcept nogil:
    """log alpha of the row-shifted emissions (log b - m_t) into L (row t at
    L + t * step; step 0 keeps one row), m_t into m (unless NULL) and their sum
    into sum_m. Returns _INVALID (a NaN or +inf in log_b) or _ZERO (no state
    possible) with bad_row set."""
    cdef Py_ssize_t t, i, j
    cdef double v, mx, mt
    cdef const double* row
    cdef double* cur
    cdef double* prev
    for t in range(T):
        row = lb + t * K
        mt = -INFINITY
        for j in range(K):
            v = row[j]
            if not (v < INFINITY):          # NaN or +inf
                bad_row[0] = t
                return _INVALID
            if v > mt:
                mt = v
        if mt == -INFINITY:
            bad_row[0] = t
            return _ZERO
        if m != NULL:
            m[t] = mt
        sum_m[0] = sum_m[0] + mt
        mag[0] = mag[0] + fabs(mt)
        cur = L + t * step
        if t == 0:
            for j in range(K):
                cur[j] = lpi[j] + (row[j] - mt)
        else:
            prev = L + (t - 1) * step
            for j in range(K):
                for i in range(K):
                    tmp[i] = prev[i] + lA[i * K + j]
                tmp[K + j] = _lse(tmp, K, 1) + (row[j] - mt)
            for j in range(K):
                cur[j] = tmp[K + j]
        mx = -INFINITY
        for j in range(K):
            if cur[j] > mx:
                mx = cur[j]
        if mx == -INFINITY:
            bad_row[0] = t
            return _ZERO
        mag[0] = mag[0] + fabs(mx)
    return 0


cdef int _forward_backward_log_one(
        Py_ssize_t T, Py_ssize_t K, const double* lb, const double* lpi,
        const double* lA, double* G, double* W, double* m, double* tmp, double* X,
        double* res, Py_ssize_t* bad_row) noexcept nogil:
    """The log-space pass: posteriors into G, X = sum_t xi_t (not A * S), m_t
    into m, res as _forward_backward_one's except that res[1] is the whole
    entropy (the pairwise-marginal form, see the module docstring)."""
    cdef Py_ssize_t t, i, j
    cdef double ll, v, x, g, sum_m = 0.0, mag = 0.0, h = 0.0
    cdef int code = _forward_log(T, K, lb, lpi, lA, G, K, tmp, m, &sum_m, &mag,
                                 bad_row)
    if code != 0:
        return code
    # ll of the shifted model; the data's is ll + sum_t m_t
    ll = _lse(G + (T - 1) * K, K, 1)
    # log beta of the shifted model into W
    for j in range(K):
        W[(T - 1) * K + j] = 0.0
    t = T - 2
    while t >= 0:
        for j in range(K):
            tmp[j] = (lb[(t + 1) * K + j] - m[t + 1]) + W[(t + 1) * K + j]
        for i in range(K):
            for j in range(K):
                tmp[K + j] = lA[i * K + j] + tmp[j]
            W[t * K + i] = _lse(tmp + K, K, 1)
        t = t - 1
    # xi and - sum xi log xi from log xi itself (never log of a rounded xi)
    for i in range(K * K):
        X[i] = 0.0
    for t in range(T - 1):
        for i in range(K):
            if G[t * K + i] == -INFINITY:
                continue
            for j in range(K):
                v = G[t * K + i] + lA[i * K + j] + (lb[(t + 1) * K + j] - m[t + 1]) \
                    + W[(t + 1) * K + j] - ll
                x = exp(v)
                if x != 0.0:
                    X[i * K + j] += x
                    h = h - x * v
                    mag = mag + x * fabs(v)
    # gamma, + sum gamma log gamma over the inner rows (T = 1: - over the only
    # row, the mixture entropy)
    for t in range(T):
        for j in range(K):
            v = G[t * K + j] + W[t * K + j] - ll
            g = exp(v)
            G[t * K + j] = g
            if g != 0.0:
                mag = mag + g * fabs(lb[t * K + j])
                if T == 1:
                    h = h - g * v
                    mag = mag + g * fabs(v)
                elif 0 < t < T - 1:
                    h = h + g * v
                    mag = mag + g * fabs(v)
    for j in range(K):
        g = G[j]
        if g != 0.0:
            mag = mag + g * fabs(lpi[j])
    res[0] = ll + sum_m
    res[1] = h
    res[2] = mag + fabs(ll) + fabs(res[0])
    return 0


cdef int _viterbi_one(Py_ssize_t T, Py_ssize_t K, const double* lb, const double* lpi,
                      const double* lA, double* d0, double* d1, int* psi,
                      Py_ssize_t* path, double* res, Py_ssize_t* bad_row) noexcept nogil:
    cdef Py_ssize_t t, j, best_j
    cdef double v, best
    cdef const double* row
    cdef double* tmp
    cdef int* arg
    for t in range(T):
        row = lb + t * K
        for j in range(K):
            if not (row[j] < INFINITY):
                bad_row[0] = t
                return _INVALID
        if t == 0:
            for j in range(K):
                d1[j] = lpi[j] + row[j]
        else:
            arg = psi + t * K
            emm_viterbi_step(lA, d0, d1, arg, K)
            for j in range(K):
                d1[j] = d1[j] + row[j]
        tmp = d0
        d0 = d1
        d1 = tmp
    best = d0[0]
    best_j = 0
    for j in range(1, K):
        if d0[j] > best:
            best = d0[j]
            best_j = j
    res[0] = best
    t = T - 1
    path[t] = best_j
    while t > 0:
        best_j = psi[t * K + best_j]
        t = t - 1
        path[t] = best_j
    return 0


cdef int _posterior_one(
        Py_ssize_t T, Py_ssize_t K, const double* lb, const double* pi,
        const double* lpi, const double* A, const double* AT, const double* lA,
        double* G, double* W, double* c, double* m, double* Bb, double* S,
        double* lt, double* res, Py_ssize_t* bad_row, bint blas, double C,
        bint tiny_params, bint* direct, double* gsum) noexcept nogil:
    """One sequence's posteriors into G, its transition counts Xi into S (K x K,
    overwritten), res = (log-likelihood, entropy, magnitude) complete: the scaled
    pass, or the log-space one when it leaves the range (direct[0] says which).
    Unless NULL, gsum (3 K) the posteriors' per-state sums (emm_gamma_sums)."""
    cdef Py_ssize_t i
    cdef int code
    cdef double x, hA = 0.0, mA = 0.0
    for i in range(K * K):
        S[i] = 0.0
    if tiny_params:
        code = _RANGE
    else:
        code = _forward_backward_one(T, K, lb, pi, lpi, A, AT, lA, G, W, c, m, Bb, S,
                                     res, bad_row, blas, C, gsum)
    direct[0] = code == _RANGE
    if direct[0]:
        # S becomes the transition counts themselves
        bad_row[0] = -1
        code = _forward_backward_log_one(T, K, lb, lpi, lA, G, W, m, lt, S, res,
                                         bad_row)
        if code == 0 and gsum != NULL:
            emm_gamma_sums(T, K, G, lb, gsum)
    if code != 0:
        return code
    # transition counts Xi = A * S (S itself from the log pass), and the entropy's
    # transition term (the log pass's res[1] is the whole entropy already)
    for i in range(K * K):
        x = S[i] if direct[0] else A[i] * S[i]
        S[i] = x
        if x != 0.0:
            hA = hA + x * lA[i]
            mA = mA + x * fabs(lA[i])
    if not direct[0]:
        res[1] = res[1] - hA
    res[2] = res[2] + mA
    return 0


# --- the batch --------------------------------------------------------------------

def _check_starts(starts, Py_ssize_t n):
    """The recursions index rows through ``starts``: never trust it blindly."""
    st = np.asarray(starts)
    if st.shape[0] < 1 or st[0] != 0 or st[st.shape[0] - 1] != n or np.any(np.diff(st) < 1):
        raise ValueError("starts must rise strictly from 0 to the number of rows")


def _blocks(Py_ssize_t n_seq):
    """Number of sequence blocks: a function of n_seq only (never of threads)."""
    return min(n_seq, MAX_BLOCKS)


def _chain_constants(log_startprob, log_transmat, Py_ssize_t K):
    """(pi, A, A^T, p, C) of a chain for the scaled passes.

    The parameters' range (module docstring, "Leaving the double range"): p is
    the smallest non-zero start or transition probability (below DBL_MIN it is a
    subnormal with fewer significant bits, and every sequence goes to the
    log-space pass); C is the underflow bound's constant for the others.
    """
    pi_arr = np.exp(np.asarray(log_startprob))
    A_arr = np.ascontiguousarray(np.exp(np.asarray(log_transmat)))
    AT_arr = np.ascontiguousarray(A_arr.T)
    lpos = np.concatenate([np.asarray(log_startprob), np.asarray(log_transmat).ravel()])
    lpos = lpos[lpos > -np.inf]
    p_min = float(np.exp(lpos.min())) if lpos.size else 1.0
    C = K + 1.0 + 2.0 * max(1.0, float(pi_arr.max(initial=0.0)), float(A_arr.max(initial=0.0)))
    return pi_arr, A_arr, AT_arr, p_min, C


def forward_backward(const double[:, ::1] log_b, const Py_ssize_t[::1] starts,
                     const double[::1] log_startprob, const double[:, ::1] log_transmat,
                     double[:, ::1] gamma, int n_threads, bint use_blas,
                     bint posteriors=True):
    """Scaled forward-backward over a batch of sequences (see the module docstring).

    ``starts`` (n_seq + 1,) are row offsets, strictly increasing from 0 to n_rows
    (checked by the caller). With ``posteriors`` fills ``gamma`` (n_rows, K) and
    returns (loglik, entropy, magnitude, xi, start, status, fail_row, used_log);
    without, only loglik, status, fail_row and used_log are meaningful (the rest
    are zeros) and ``gamma`` is not touched (may be None). ``used_log[q]`` says
    that sequence q left the scaled recursion's range and was computed in log
    space.
    """
    cdef Py_ssize_t n = log_b.shape[0], K = log_b.shape[1]
    cdef Py_ssize_t n_seq = starts.shape[0] - 1
    if log_startprob.shape[0] != K or log_transmat.shape[0] != K \
            or log_transmat.shape[1] != K:
        raise ValueError("log_b, log_startprob and log_transmat disagree on K")
    if posteriors and (gamma.shape[0] != n or gamma.shape[1] != K):
        raise ValueError("gamma must have the shape of log_b")
    _check_starts(starts, n)
    cdef Py_ssize_t n_blocks = _blocks(n_seq)
    cdef Py_ssize_t n_slots = max(n_blocks, 1)

    pi_arr, A_arr, AT_arr, smallest, bound_constant = _chain_constants(log_startprob,
                                                                       log_transmat, K)
    cdef const double[::1] pi = pi_arr
    cdef const double[:, ::1] A = A_arr
    cdef const double[:, ::1] AT = AT_arr
    cdef double p_min = smallest
    cdef bint tiny_params = not (p_min >= _DBL_MIN)
    cdef double C = bound_constant

    loglik = np.zeros(n_seq)
    entropy = np.zeros(n_seq)
    magnitude = np.zeros(n_seq)
    status = np.zeros(n_seq, dtype=np.intc)
    fail_row = np.full(n_seq, -1, dtype=np.intp)
    used_log = np.zeros(n_seq, dtype=np.intc)
    cdef int[::1] ul = used_log
    block_S = np.zeros((n_slots, K, K))
    block_start = np.zeros((n_slots, K))
    cdef double[::1] ll = loglik, ent = entropy, mg = magnitude
    cdef int[::1] st = status
    cdef Py_ssize_t[::1] fr = fail_row
    cdef double[:, :, ::1] bS = block_S
    cdef double[:, ::1] bst = block_start

    cdef Py_ssize_t b, q, q0, q1, T, Tmax, i, j, r0
    cdef double* W
    cdef double* c
    cdef double* mm
    cdef double* Bb
    cdef double* S
    cdef double* res
    cdef double* a0
    cdef double* a1
    cdef double* lt
    cdef double dummy, sum_m
    cdef int code
    cdef bint direct
    cdef const double* lbp = &log_b[0, 0] if n else NULL
    cdef double* gp = &gamma[0, 0] if (posteriors and n) else NULL
    cdef const double* lpi = &log_startprob[0] if K else NULL
    cdef const double* lA = &log_transmat[0, 0] if K else NULL

    if n_seq and K:
        n_threads = <int>min(<Py_ssize_t>max(n_threads, 1), n_blocks)
        for b in prange(n_blocks, nogil=True, schedule="dynamic", num_threads=n_threads):
            q0 = b * n_seq // n_blocks
            q1 = (b + 1) * n_seq // n_blocks
            Tmax = 0
            for q in range(q0, q1):
                Tmax = max(Tmax, starts[q + 1] - starts[q])
            res = <double*>malloc(3 * sizeof(double))
            lt = <double*>malloc(2 * K * sizeof(double))
            if posteriors:
                W = <double*>malloc(Tmax * K * sizeof(double))
                c = <double*>malloc(Tmax * sizeof(double))
                mm = <double*>malloc(Tmax * sizeof(double))
                Bb = <double*>malloc(_TIME_BLOCK * K * sizeof(double))
                S = <double*>malloc(K * K * sizeof(double))
                a0 = NULL
                a1 = NULL
            else:
                W = <double*>malloc(K * sizeof(double))
                a0 = <double*>malloc(K * sizeof(double))
                a1 = <double*>malloc(K * sizeof(double))
                c = NULL
                mm = NULL
                Bb = NULL
                S = NULL
            if res == NULL or lt == NULL or W == NULL or (posteriors and (
                    c == NULL or mm == NULL or Bb == NULL or S == NULL)) or (
                    not posteriors and (a0 == NULL or a1 == NULL)):
                for q in range(q0, q1):
                    st[q] = _NOMEM
            else:
                for q in range(q0, q1):
                    r0 = starts[q]
                    T = starts[q + 1] - r0
                    if posteriors:
                        code = _posterior_one(T, K, lbp + r0 * K, &pi[0], lpi, &A[0, 0],
                                              &AT[0, 0], lA, gp + r0 * K, W, c, mm, Bb,
                                              S, lt, res, &fr[q], use_blas, C,
                                              tiny_params, &direct, NULL)
                    else:
                        if tiny_params:
                            code = _RANGE
                        else:
                            code = _forward_one(T, K, lbp + r0 * K, &pi[0], &A[0, 0],
                                                a0, a1, W, res, &fr[q], use_blas, p_min)
                        direct = code == _RANGE
                        if direct:
                            dummy = 0.0
                            sum_m = 0.0
                            fr[q] = -1
                            code = _forward_log(T, K, lbp + r0 * K, lpi, lA, a0, 0, lt,
                                                NULL, &sum_m, &dummy, &fr[q])
                            if code == 0:
                                res[0] = _lse(a0, K, 1) + sum_m
                    st[q] = code
                    ul[q] = direct
                    if code != 0:
                        if fr[q] >= 0:
                            fr[q] = fr[q] + r0
                        if code == _ZERO:
                            ll[q] = -INFINITY
                        continue
                    ll[q] = res[0]
                    if posteriors:
                        for i in range(K * K):
                            (&bS[b, 0, 0])[i] += S[i]
                        for j in range(K):
                            bst[b, j] += gp[r0 * K + j]
                        ent[q] = res[1]
                        mg[q] = res[2]
            free(res)
            free(lt)
            free(W)
            free(c)
            free(mm)
            free(Bb)
            free(S)
            free(a0)
            free(a1)

    # block slots in block order
    xi = np.zeros((K, K))
    start = np.zeros(K)
    for b in range(n_blocks):
        xi += block_S[b]
        start += block_start[b]
    return loglik, entropy, magnitude, xi, start, status, fail_row, used_log


def forward_backward_stats(FamilyKernel kernel, const double[:, ::1] X,
                           const Py_ssize_t[::1] starts, const double[::1] log_startprob,
                           const double[:, ::1] log_transmat, int n_threads,
                           bint use_blas, Py_ssize_t group_rows):
    """The E-step of a hidden Markov model fused with the family's statistics.

    Per block of sequences (as forward_backward's), a group of whole sequences of
    at most ``group_rows`` rows at a time (one sequence alone when longer): the
    family kernel's log-densities of the group's rows, forward-backward of each
    sequence into the group's posterior rows, then the kernel's weighted
    statistics of the group, in sub-chunks of at most ``group_rows`` rows. No
    array over all rows is formed: memory per block in flight is O(rows of the
    group x K), O(T K) for a sequence longer than ``group_rows``. The groups
    depend only on the lengths and ``group_rows``, block slots are merged in
    block order: bitwise the same for any thread count.

    Returns (loglik, entropy, magnitude, xi, start, stats, status, fail_row,
    used_log, resp_sum, emission); ``stats`` is the kernel's merged statistics
    slot, ``resp_sum`` (K,) the posteriors summed over the rows, ``emission`` (2,)
    the sum of gamma log b over the entries with gamma > 0 and the sum of its
    terms' absolute values (what the unfused pass computes from its gamma array).
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = kernel.n_components
    cdef Py_ssize_t NS = kernel.n_stats
    cdef Py_ssize_t n_seq = starts.shape[0] - 1
    if d != kernel.n_features:
        raise ValueError("X and the kernel disagree on n_features")
    if log_startprob.shape[0] != K or log_transmat.shape[0] != K \
            or log_transmat.shape[1] != K:
        raise ValueError("the kernel, log_startprob and log_transmat disagree on K")
    if group_rows < 1:
        raise ValueError("group_rows must be >= 1")
    _check_starts(starts, n)
    cdef Py_ssize_t n_blocks = _blocks(n_seq)
    cdef Py_ssize_t n_slots = max(n_blocks, 1)

    pi_arr, A_arr, AT_arr, smallest, bound_constant = _chain_constants(log_startprob,
                                                                       log_transmat, K)
    cdef const double[::1] pi = pi_arr
    cdef const double[:, ::1] A = A_arr
    cdef const double[:, ::1] AT = AT_arr
    cdef double p_min = smallest
    cdef bint tiny_params = not (p_min >= _DBL_MIN)
    cdef double C = bound_constant

    loglik = np.zeros(n_seq)
    entropy = np.zeros(n_seq)
    magnitude = np.zeros(n_seq)
    status = np.zeros(n_seq, dtype=np.intc)
    fail_row = np.full(n_seq, -1, dtype=np.intp)
    used_log = np.zeros(n_seq, dtype=np.intc)
    block_S = np.zeros((n_slots, K, K))
    block_start = np.zeros((n_slots, K))
    block_stats = np.zeros((n_slots, max(NS, 1)))
    block_resp = np.zeros((n_slots, K))
    block_emis = np.zeros((n_slots, 2))
    cdef double[:, ::1] brs = block_resp
    cdef double[:, ::1] bem = block_emis
    cdef Py_ssize_t k
    cdef int[::1] ul = used_log
    cdef double[::1] ll = loglik, ent = entropy, mg = magnitude
    cdef int[::1] st = status
    cdef Py_ssize_t[::1] fr = fail_row
    cdef double[:, :, ::1] bS = block_S
    cdef double[:, ::1] bst = block_start
    cdef double[:, ::1] bstat = block_stats

    cdef Py_ssize_t b, q, q0, q1, g0, R, Rmax, Tmax, T, i, j, r0, rg, o, nr, sub
    cdef double* LB
    cdef double* G
    cdef double* W
    cdef double* c
    cdef double* mm
    cdef double* Bb
    cdef double* S
    cdef double* res
    cdef double* lt
    cdef double* scratch
    cdef double* gs
    cdef int code, kcode
    cdef bint direct, failed
    cdef const double* xp = &X[0, 0] if n else NULL
    cdef const double* lpi = &log_startprob[0] if K else NULL
    cdef const double* lA = &log_transmat[0, 0] if K else NULL

    if n_seq and K:
        n_threads = <int>min(<Py_ssize_t>max(n_threads, 1), n_blocks)
        for b in prange(n_blocks, nogil=True, schedule="dynamic", num_threads=n_threads):
            q0 = b * n_seq // n_blocks
            q1 = (b + 1) * n_seq // n_blocks
            kernel.clear_stats(&bstat[b, 0])
            # the groups' sizes: the same walk as below
            Rmax = 0
            Tmax = 0
            for q in range(q0, q1):
                Tmax = max(Tmax, starts[q + 1] - starts[q])
            q = q0
            while q < q1:
                R = starts[q + 1] - starts[q]
                q = q + 1
                while q < q1 and R + starts[q + 1] - starts[q] <= group_rows:
                    R = R + starts[q + 1] - starts[q]
                    q = q + 1
                Rmax = max(Rmax, R)
            sub = min(Rmax, group_rows)
            # one allocation for the block's arrays: a single large request is
            # what glibc's malloc keeps on its heap once the first call has freed
            # it (its mmap and trim thresholds adapt to the largest freed block),
            # so later passes reuse the pages instead of faulting in ~3 T K
            # fresh doubles each time (5000 page faults a pass at T = 1e5, K = 8)
            LB = <double*>malloc(((2 * Rmax + Tmax) * K + 2 * Tmax + _TIME_BLOCK * K
                                  + K * K + 3 + 5 * K + kernel.scratch_size(sub) + 1)
                                 * sizeof(double))
            if LB != NULL:
                G = LB + Rmax * K
                W = G + Rmax * K
                c = W + Tmax * K
                mm = c + Tmax
                Bb = mm + Tmax
                S = Bb + _TIME_BLOCK * K
                res = S + K * K
                lt = res + 3
                gs = lt + 2 * K
                scratch = gs + 3 * K
            if LB == NULL:
                for q in range(q0, q1):
                    st[q] = _NOMEM
            else:
                q = q0
                while q < q1:
                    g0 = q
                    R = starts[q + 1] - starts[q]
                    q = q + 1
                    while q < q1 and R + starts[q + 1] - starts[q] <= group_rows:
                        R = R + starts[q + 1] - starts[q]
                        q = q + 1
                    rg = starts[g0]
                    # the family's log-densities of the group, sub-chunk by sub-chunk
                    kcode = 0
                    o = 0
                    while o < R and kcode == 0:
                        nr = min(sub, R - o)
                        kcode = kernel.chunk_log_density(xp + (rg + o) * d, nr, LB + o * K,
                                                         scratch)
                        o = o + nr
                    if kcode != 0:
                        for i in range(g0, q):
                            st[i] = _KERNEL
                        continue
                    failed = False
                    for i in range(g0, q):
                        r0 = starts[i] - rg
                        T = starts[i + 1] - starts[i]
                        code = _posterior_one(T, K, LB + r0 * K, &pi[0], lpi, &A[0, 0],
                                              &AT[0, 0], lA, G + r0 * K, W, c, mm, Bb, S,
                                              lt, res, &fr[i], use_blas, C, tiny_params,
                                              &direct, gs)
                        st[i] = code
                        ul[i] = direct
                        if code != 0:
                            failed = True
                            if fr[i] >= 0:
                                fr[i] = fr[i] + starts[i]
                            if code == _ZERO:
                                ll[i] = -INFINITY
                            continue
                        ll[i] = res[0]
                        ent[i] = res[1]
                        mg[i] = res[2]
                        for j in range(K * K):
                            (&bS[b, 0, 0])[j] += S[j]
                        for j in range(K):
                            bst[b, j] += G[r0 * K + j]
                        # sum_t gamma_t and sum gamma log b (0 log 0 = 0), per
                        # state from the pass, then over the states in order
                        for k in range(K):
                            brs[b, k] += gs[k]
                            bem[b, 0] += gs[K + k]
                            bem[b, 1] += gs[2 * K + k]
                    if failed:
                        continue
                    # the family's statistics weighted by the posteriors
                    o = 0
                    while o < R and kcode == 0:
                        nr = min(sub, R - o)
                        kcode = kernel.chunk_accumulate(xp + (rg + o) * d, nr, G + o * K,
                                                        &bstat[b, 0], scratch)
                        o = o + nr
                    if kcode != 0:
                        for i in range(g0, q):
                            st[i] = _KERNEL
            free(LB)

    # block slots in block order
    xi = np.zeros((K, K))
    start = np.zeros(K)
    stats = np.zeros(max(NS, 1))
    resp_sum = np.zeros(K)
    emission = np.zeros(2)
    cdef double[::1] sv = stats
    kernel.clear_stats(&sv[0])
    for b in range(n_blocks):
        xi += block_S[b]
        start += block_start[b]
        resp_sum += block_resp[b]
        emission += block_emis[b]
        kernel.merge_stats(&sv[0], &bstat[b, 0])
    return (loglik, entropy, magnitude, xi, start, stats[:NS], status, fail_row,
            used_log, resp_sum, emission)


def viterbi(const double[:, ::1] log_b, const Py_ssize_t[::1] starts,
            const double[::1] log_startprob, const double[:, ::1] log_transmat,
            int n_threads):
    """Most probable state path of each sequence: (path (n_rows,) intp,
    log_prob (n_seq,), status, fail_row). Ties go to the lowest state index."""
    cdef Py_ssize_t n = log_b.shape[0], K = log_b.shape[1]
    cdef Py_ssize_t n_seq = starts.shape[0] - 1
    if log_startprob.shape[0] != K or log_transmat.shape[0] != K \
            or log_transmat.shape[1] != K:
        raise ValueError("log_b, log_startprob and log_transmat disagree on K")
    _check_starts(starts, n)
    cdef Py_ssize_t n_blocks = _blocks(n_seq)
    path = np.zeros(n, dtype=np.intp)
    log_prob = np.zeros(n_seq)
    status = np.zeros(n_seq, dtype=np.intc)
    fail_row = np.full(n_seq, -1, dtype=np.intp)
    cdef Py_ssize_t[::1] pa = path
    cdef double[::1] lp = log_prob
    cdef int[::1] st = status
    cdef Py_ssize_t[::1] fr = fail_row
    cdef Py_ssize_t b, q, q0, q1, T, Tmax, r0
    cdef double* d0
    cdef double* d1
    cdef double* res
    cdef int* psi
    cdef int code
    cdef const double* lbp = &log_b[0, 0] if n else NULL
    cdef const double* lpi = &log_startprob[0] if K else NULL
    cdef const double* lA = &log_transmat[0, 0] if K else NULL
    if n_seq and K:
        n_threads = <int>min(<Py_ssize_t>max(n_threads, 1), n_blocks)
        for b in prange(n_blocks, nogil=True, schedule="dynamic", num_threads=n_threads):
            q0 = b * n_seq // n_blocks
            q1 = (b + 1) * n_seq // n_blocks
            Tmax = 0
            for q in range(q0, q1):
                Tmax = max(Tmax, starts[q + 1] - starts[q])
            d0 = <double*>malloc(K * sizeof(double))
            d1 = <double*>malloc(K * sizeof(double))
            res = <double*>malloc(sizeof(double))
            psi = <int*>malloc(Tmax * K * sizeof(int))
            if d0 == NULL or d1 == NULL or res == NULL or psi == NULL:
                for q in range(q0, q1):
                    st[q] = _NOMEM
            else:
                for q in range(q0, q1):
                    r0 = starts[q]
                    T = starts[q + 1] - r0
                    code = _viterbi_one(T, K, lbp + r0 * K, lpi, lA, d0, d1, psi,
                                        &pa[r0], res, &fr[q])
                    st[q] = code
                    if code != 0:
                        fr[q] = fr[q] + r0
                    else:
                        lp[q] = res[0]
            free(d0)
            free(d1)
            free(res)
            free(psi)
    return path, log_prob, status, fail_row

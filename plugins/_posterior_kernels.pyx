# cython: language_level=3
"""Compiled posterior rules (first-party plugins)."""
from libc.math cimport fabs, isnan, isfinite, INFINITY

from emcore.kernel cimport (PosteriorKernel, TOTAL_OBJECTIVE, TOTAL_EXPECTED_LOG_JOINT,
                            TOTAL_ENTROPY, TOTAL_MAGNITUDE)


cdef extern from "_soft_posterior.h":
    Py_ssize_t emc_soft_rows(double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n, Py_ssize_t K,
                             double T, double* objective, double* log_joint_total,
                             double* entropy, double* magnitude) noexcept nogil
    Py_ssize_t emc_soft_rows_f32(double* log_joint, double* resp, double* row_value,
                                 const double* row_weights, Py_ssize_t n, Py_ssize_t K,
                                 double T, double* objective, double* log_joint_total,
                                 double* entropy, double* magnitude,
                                 int write_log_q) noexcept nogil
    double EMC_EXP_F32_ERROR
    void emc_log_rows_cloned(const double* x, Py_ssize_t n, double* out) noexcept nogil


cdef class SoftPosteriorKernel(PosteriorKernel):
    """Tempered posterior q_ik proportional to exp(a_ik / T); T = 1 is the exact posterior.

    With b_ik = a_ik / T and m_i = max_k b_ik:
    log q_ik = (b_ik - m_i) - log sum_k exp(b_ik - m_i), one exp per entry. The
    shifted form keeps rows normalised to a few ulps even when |a| is huge (never
    a - logsumexp(a), never exp of an unnormalised log). The row objective is
    f_i = T (m_i + log sum_k exp(b_ik - m_i)) = max_q sum_k q_k a_ik + T H(q)
    (log p(x_i) at T = 1), and the entropy total is T H(q_i). Terms with q_ik = 0
    contribute 0 to every total (0 log 0 = 0, 0 * -inf = 0). At T = 1 every
    operation involving T is exact, so soft EM's numbers do not depend on it.
    """
    cdef readonly double temperature

    def __cinit__(self, double temperature=1.0):
        if not (temperature > 0.0 and isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number; got {temperature}")
        self.temperature = temperature
        self.hard = False
        self.exact_soft = temperature == 1.0   # a family may fuse it (kernel.pxd)

    def __reduce__(self):
        return (SoftPosteriorKernel, (self.temperature,))

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals,
                             Py_ssize_t* labels) noexcept nogil:
        return <int>emc_soft_rows(log_joint, resp, row_value, row_weights, n_rows,
                                  n_components, self.temperature,
                                  &totals[TOTAL_OBJECTIVE],
                                  &totals[TOTAL_EXPECTED_LOG_JOINT],
                                  &totals[TOTAL_ENTROPY], &totals[TOTAL_MAGNITUDE])


#: the float32 exp's relative error bound in units of u32 (_soft_posterior.h)
EXP_F32_ERROR = EMC_EXP_F32_ERROR


def _log_rows(const double[::1] x, double[::1] out):
    """out = log x by the float32 posterior's vector log (emc_log_rows; every x a
    positive normal finite double), for tests against libm's log."""
    if out.shape[0] != x.shape[0]:
        raise ValueError("x and out differ in length")
    if x.shape[0]:
        emc_log_rows_cloned(&x[0], x.shape[0], &out[0])


cdef class _SoftPosteriorKernelF32(SoftPosteriorKernel):
    """The soft posterior with its exps in float32 (emc_soft_rows_f32): what the
    diagonal Gaussian kernel's fused step on float32 rows computes, here on a given
    log joint, for tests against :class:`SoftPosteriorKernel`
    (docs/elbo_chain.md#float32). Not a rule: nothing registers it."""

    def __reduce__(self):
        return (_SoftPosteriorKernelF32, (self.temperature,))

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals,
                             Py_ssize_t* labels) noexcept nogil:
        return <int>emc_soft_rows_f32(log_joint, resp, row_value, row_weights, n_rows,
                                      n_components, self.temperature,
                                      &totals[TOTAL_OBJECTIVE],
                                      &totals[TOTAL_EXPECTED_LOG_JOINT],
                                      &totals[TOTAL_ENTROPY], &totals[TOTAL_MAGNITUDE], 1)


cdef class HardPosteriorKernel(PosteriorKernel):
    """Point mass on the most probable component, ties to the lowest index.

    f_i = max_k a_ik (the row's classification log-likelihood), entropy 0.
    """

    def __cinit__(self):
        self.hard = True

    def __reduce__(self):
        return (HardPosteriorKernel, ())

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals,
                             Py_ssize_t* labels) noexcept nogil:
        cdef Py_ssize_t i, k, best, K = n_components
        cdef double m, a, w
        cdef bint nan
        cdef double* row
        for i in range(n_rows):
            row = log_joint + i * K
            # branch-free scan (conditional moves): strict '>' keeps the lowest
            # index on ties; NaN never compares greater, so it is tracked apart
            m = row[0]
            best = 0
            nan = isnan(m)
            for k in range(1, K):
                a = row[k]
                nan = nan | isnan(a)
                best = k if a > m else best
                m = a if a > m else m
            if nan or not isfinite(m):
                return <int>(i + 1)
            if labels != NULL:
                labels[i] = best
            if resp != NULL:
                for k in range(K):
                    resp[i * K + k] = 0.0
                    row[k] = -INFINITY
                resp[i * K + best] = 1.0
                row[best] = 0.0
            row_value[i] = m
            w = row_weights[i] if row_weights != NULL else 1.0
            if w != 0.0:
                totals[TOTAL_OBJECTIVE] += w * m
                totals[TOTAL_EXPECTED_LOG_JOINT] += w * m
                totals[TOTAL_MAGNITUDE] += w * (2.0 * fabs(m))
        return 0

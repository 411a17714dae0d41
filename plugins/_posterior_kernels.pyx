# cython: language_level=3
"""Compiled posterior rules (first-party plugins)."""
from libc.math cimport exp, log, fabs, isnan, isfinite, INFINITY

from emcore.kernel cimport (PosteriorKernel, TOTAL_LOGLIK, TOTAL_EXPECTED_LOG_JOINT,
                            TOTAL_ENTROPY, TOTAL_MAGNITUDE)


cdef class SoftPosteriorKernel(PosteriorKernel):
    """Exact posterior: log q_ik = (a_ik - m_i) - log sum_k exp(a_ik - m_i).

    The shifted form keeps rows normalised to a few ulps even when |a| is huge
    (never a - logsumexp(a), never exp of an unnormalised log). Terms with
    q_ik = 0 contribute 0 to every total (0 log 0 = 0, 0 * -inf = 0).
    """

    def __reduce__(self):
        return (SoftPosteriorKernel, ())

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_loglik,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals) noexcept nogil:
        cdef Py_ssize_t i, k, K = n_components
        cdef double m, s, log_s, inv_s, ell, a, lq, q, H, E, mag, w
        cdef double* row
        for i in range(n_rows):
            row = log_joint + i * K
            m = -INFINITY
            for k in range(K):
                a = row[k]
                if isnan(a):
                    return <int>(i + 1)
                if a > m:
                    m = a
            if not isfinite(m):
                return <int>(i + 1)
            # one exp per entry: e_k = exp(a_k - m) (<= 1, the max row entry is 1)
            s = 0.0
            for k in range(K):
                q = exp(row[k] - m)
                resp[i * K + k] = q
                s += q
            log_s = log(s)
            inv_s = 1.0 / s
            ell = m + log_s
            H = 0.0
            E = 0.0
            mag = fabs(ell)
            for k in range(K):
                a = row[k]
                lq = (a - m) - log_s
                q = resp[i * K + k] * inv_s
                if q > 0.0:
                    H -= q * lq
                    E += q * a
                    mag += q * (fabs(a) + fabs(lq))
                row[k] = lq
                resp[i * K + k] = q
            row_loglik[i] = ell
            w = row_weights[i] if row_weights != NULL else 1.0
            if w != 0.0:
                totals[TOTAL_LOGLIK] += w * ell
                totals[TOTAL_EXPECTED_LOG_JOINT] += w * E
                totals[TOTAL_ENTROPY] += w * H
                totals[TOTAL_MAGNITUDE] += w * mag
        return 0

# cython: language_level=3
"""Compiled posterior rules (first-party plugins)."""
from libc.math cimport fabs, isnan, isfinite, INFINITY

from emcore.kernel cimport (PosteriorKernel, TOTAL_OBJECTIVE, TOTAL_EXPECTED_LOG_JOINT,
                            TOTAL_ENTROPY, TOTAL_MAGNITUDE)


cdef extern from *:
    """
    #include <math.h>
    #include "_vec4.h"   /* emc_v4 and its operations, EMC_CLONES (shared) */

    #if defined(__GNUC__)

    /* exp(x) on 4 lanes for x <= 0 (x = -inf gives 0): x = n ln2 + r with
       n = round(x / ln2) (ln2 in two parts, n ln2_hi exact), |r| <= ln2 / 2,
       exp(r) by its Taylor series to r^13 / 13! (truncation < 1e-17 relative),
       Horner, then times 2^n built in the exponent bits. Error about 1 ulp
       (glibc's is below 1); exp(0) = 1 exactly. Lanes in [-745.2, -708.39)
       (2^n not normal) take libm's exp, so subnormal results are libm's; below,
       +0 as libm gives. */
    static inline emc_v4 emc_exp_nonpos(emc_v4 x) {
        const emc_v4 shifter = emc_set1(6755399441055744.0);   /* 1.5 * 2^52 */
        const emc_v4 log2e = emc_set1(1.4426950408889634);
        const emc_v4 ln2_hi = emc_set1(0.693147180369123816490);
        const emc_v4 ln2_lo = emc_set1(1.90821492927058770002e-10);
        emc_v4 xc = EMC_SEL((emc_m4)(x > emc_set1(-708.39)), x, emc_set1(-708.39));
        emc_v4 t = xc * log2e + shifter;
        emc_v4 n = t - shifter;
        emc_v4 r = (xc - n * ln2_hi) - n * ln2_lo;
        emc_v4 p = emc_set1(1.0 / 6227020800.0);                /* 1/13! */
        p = p * r + emc_set1(1.0 / 479001600.0);
        p = p * r + emc_set1(1.0 / 39916800.0);
        p = p * r + emc_set1(1.0 / 3628800.0);
        p = p * r + emc_set1(1.0 / 362880.0);
        p = p * r + emc_set1(1.0 / 40320.0);
        p = p * r + emc_set1(1.0 / 5040.0);
        p = p * r + emc_set1(1.0 / 720.0);
        p = p * r + emc_set1(1.0 / 120.0);
        p = p * r + emc_set1(1.0 / 24.0);
        p = p * r + emc_set1(1.0 / 6.0);
        p = p * r + emc_set1(0.5);
        p = p * r + emc_set1(1.0);
        p = p * r + emc_set1(1.0);
        emc_m4 k = (emc_m4)t - (emc_m4)shifter;                 /* n as an integer */
        emc_v4 scale = (emc_v4)((k + 1023) << 52);
        emc_v4 e = p * scale;
        /* below -745.2 libm's exp is +0 too: zero without calling it (a few
           percent of the entries of separated clusters are there) */
        e = EMC_SEL((emc_m4)(x < emc_set1(-745.2)), emc_set1(0.0), e);
        emc_m4 low = (emc_m4)(x < emc_set1(-708.39)) & (emc_m4)(x >= emc_set1(-745.2));
        if (low[0] | low[1] | low[2] | low[3]) {
            for (int l = 0; l < 4; l++)
                if (low[l]) e[l] = exp(x[l]);
        }
        return e;
    }
    #endif

    /* The soft (tempered) posterior of n rows of K log joints, in place (see
       SoftPosteriorKernel): log_joint <- log q, resp <- q, row_value <- f_i, and
       the four totals (rows' sums formed in order, added once). On 4-double
       vectors where GNU vectors exist (lanes k = l mod 4 summed separately,
       then added: a fixed order), plain C otherwise. Rows go in blocks of
       EMC_SOFT_ROWS, one phase at a time (max; exps and their sum; log; the
       totals): a row's steps depend on each other, the rows of a block do not,
       so the block's rows overlap instead of waiting on each other's latency.
       The same operations per row either way. Returns 0, or i + 1 for the
       first row with a NaN or no finite entry. */
    #define EMC_SOFT_ROWS 16
    EMC_CLONES static Py_ssize_t emc_soft_rows(
            double* restrict log_joint, double* restrict resp,
            double* restrict row_value, const double* restrict row_weights,
            Py_ssize_t n, Py_ssize_t K, double T, double* objective,
            double* log_joint_total, double* entropy, double* magnitude) {
        double inv_T = 1.0 / T;
        double sum_f = 0.0, sum_E = 0.0, sum_H = 0.0, sum_mag = 0.0;
        double mb[EMC_SOFT_ROWS], sb[EMC_SOFT_ROWS];
        Py_ssize_t kv = K & ~(Py_ssize_t)3;
    #if !defined(__GNUC__)
        kv = 0;
    #endif
        for (Py_ssize_t i0 = 0; i0 < n; i0 += EMC_SOFT_ROWS) {
            Py_ssize_t nb = n - i0 < EMC_SOFT_ROWS ? n - i0 : EMC_SOFT_ROWS;
            /* phase 1: each row's maximum m (NaN and all -inf rows fail) */
            for (Py_ssize_t r = 0; r < nb; r++) {
                const double* row = log_joint + (i0 + r) * K;
                double m = -HUGE_VAL;
                Py_ssize_t k = 0;
                int nan = 0;
    #if defined(__GNUC__)
                if (kv) {
                    emc_v4 mv = emc_set1(-HUGE_VAL);
                    emc_m4 nv = {0, 0, 0, 0};
                    for (k = 0; k < kv; k += 4) {
                        emc_v4 a = emc_load(row + k);
                        nv |= (emc_m4)(a != a);
                        mv = EMC_SEL((emc_m4)(a > mv), a, mv);
                    }
                    nan = (nv[0] | nv[1] | nv[2] | nv[3]) != 0;
                    m = mv[0] > mv[1] ? mv[0] : mv[1];
                    m = mv[2] > m ? mv[2] : m;
                    m = mv[3] > m ? mv[3] : m;
                }
    #endif
                for (; k < K; k++) {
                    double a = row[k];
                    nan |= isnan(a);
                    if (a > m) m = a;
                }
                if (nan || !isfinite(m)) return i0 + r + 1;
                mb[r] = m * inv_T;
            }
            /* phase 2: e_k = exp(b_k - m) (<= 1, the max entry gives 1), s = sum */
            for (Py_ssize_t r = 0; r < nb; r++) {
                const double* row = log_joint + (i0 + r) * K;
                double* q_row = resp + (i0 + r) * K;
                double m = mb[r], s = 0.0;
                Py_ssize_t k = 0;
    #if defined(__GNUC__)
                if (kv) {
                    emc_v4 sv = emc_set1(0.0), it = emc_set1(inv_T), mm = emc_set1(m);
                    for (k = 0; k < kv; k += 4) {
                        emc_v4 e = emc_exp_nonpos(emc_load(row + k) * it - mm);
                        emc_store(q_row + k, e);
                        sv += e;
                    }
                    s = EMC_HSUM(sv);
                }
    #endif
                for (; k < K; k++) {
                    q_row[k] = exp(row[k] * inv_T - m);
                    s += q_row[k];
                }
                sb[r] = s;
            }
            /* phase 3: log q, q, f and the totals, rows in order */
            for (Py_ssize_t r = 0; r < nb; r++) {
                Py_ssize_t i = i0 + r;
                double* row = log_joint + i * K;
                double* q_row = resp + i * K;
                double m = mb[r], s = sb[r], H = 0.0, E = 0.0, mag = 0.0;
                double log_s = log(s), inv_s = 1.0 / s;
                double f = T * (m + log_s);
                Py_ssize_t k = 0;
    #if defined(__GNUC__)
                if (kv) {
                    emc_v4 Hv = emc_set1(0.0), Ev = Hv, Mv = Hv, zero = Hv;
                    emc_v4 it = emc_set1(inv_T), mm = emc_set1(m), ls = emc_set1(log_s);
                    emc_v4 is = emc_set1(inv_s), Tv = emc_set1(T);
                    const emc_m4 abs_mask = {0x7fffffffffffffffLL, 0x7fffffffffffffffLL,
                                             0x7fffffffffffffffLL, 0x7fffffffffffffffLL};
                    for (k = 0; k < kv; k += 4) {
                        emc_v4 a = emc_load(row + k);
                        emc_v4 lq = (a * it - mm) - ls;
                        emc_v4 q = emc_load(q_row + k) * is;
                        emc_m4 pos = (emc_m4)(q > zero);
                        emc_v4 abs_a = (emc_v4)((emc_m4)a & abs_mask);
                        emc_v4 abs_lq = (emc_v4)((emc_m4)lq & abs_mask);
                        Hv -= EMC_SEL(pos, q * lq, zero);
                        Ev += EMC_SEL(pos, q * a, zero);
                        Mv += EMC_SEL(pos, q * (abs_a + Tv * abs_lq), zero);
                        emc_store(row + k, lq);
                        emc_store(q_row + k, q);
                    }
                    H = EMC_HSUM(Hv);
                    E = EMC_HSUM(Ev);
                    mag = EMC_HSUM(Mv);
                }
    #endif
                for (; k < K; k++) {
                    double a = row[k];
                    double lq = (a * inv_T - m) - log_s;
                    double q = q_row[k] * inv_s;
                    if (q > 0.0) {
                        H -= q * lq;
                        E += q * a;
                        mag += q * (fabs(a) + T * fabs(lq));
                    }
                    row[k] = lq;
                    q_row[k] = q;
                }
                mag += fabs(f);
                row_value[i] = f;
                double w = row_weights != NULL ? row_weights[i] : 1.0;
                if (w != 0.0) {
                    sum_f += w * f;
                    sum_E += w * E;
                    sum_H += w * (T * H);
                    sum_mag += w * mag;
                }
            }
        }
        *objective += sum_f;
        *log_joint_total += sum_E;
        *entropy += sum_H;
        *magnitude += sum_mag;
        return 0;
    }
    """
    Py_ssize_t emc_soft_rows(double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n, Py_ssize_t K,
                             double T, double* objective, double* log_joint_total,
                             double* entropy, double* magnitude) noexcept nogil


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

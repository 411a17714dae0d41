"""Derived rounding tolerances (notes/em_variants_and_testing.md, section 9).

u = 2**-53. Sums in emcore are chunked: rows add sequentially within a chunk,
chunks within a block, blocks in order, so the depth of the longest addition
chain, ``emcore.engine.summation_depth``, replaces ceil(log2 n) of the pairwise
bound. The factor 2 covers the gamma denominators and libm ulps.
"""

import math

import numpy as np

from emcore.engine import UNIT_ROUNDOFF as U, chunk_rows_for, summation_depth


def depth(n, d):
    return summation_depth(n, chunk_rows_for(d))


def magnitude(a, log_q):
    """M = sum_i [ |l_i| + sum_k q_ik (|a_ik| + |log q_ik|) ] (Check A, 9.3)."""
    q = np.exp(log_q)
    ell = np.logaddexp.reduce(a, axis=1)
    terms = np.where(q > 0, q * (np.abs(a) + np.abs(log_q)), 0.0)
    return math.fsum(np.abs(ell)) + math.fsum(terms.ravel())


def tau_same_array(k, n, d, M):
    """Check A: ELBO and loglik from the same computed log-joint array."""
    return 2.0 * (k + 3 + depth(n, d)) * U * M


def tau_across(k, n, d, amplification, M):
    """Check B: quantities from different computations (statistics vs a pass,
    two parameter values); amplification = 1 + sqrt(d kappa_max)."""
    return 2.0 * (k + d + 4 + depth(n, d)) * amplification * U * M


def direct_elbo(a, log_q):
    """sum_ik q_ik (a_ik - log q_ik) with 0 log 0 = 0, correctly rounded sum."""
    q = np.exp(log_q)
    terms = np.where(q > 0, q * (a - log_q), 0.0)
    return math.fsum(terms.ravel())

"""Derived rounding tolerances (docs/elbo_chain.md#tolerances).

u = 2**-53 is the unit roundoff. Sums in emcore are chunked: rows add
sequentially within a chunk, chunks within a block, blocks in order, so the
depth of the longest addition chain, :func:`emcore.engine.summation_depth`,
replaces ceil(log2 n) of the pairwise bound. The formulas are the engine's
(:func:`emcore.engine.equality_tolerance`, :func:`emcore.engine.chain_tolerance`),
written once there; this module gives them by (n_samples, n_features).
"""

from __future__ import annotations

import math

import numpy as np

from emcore.engine import (chain_tolerance, chunk_rows_for, equality_tolerance,
                           summation_depth)
from emcore.plugin_api import UNIT_ROUNDOFF

__all__ = ["UNIT_ROUNDOFF", "summation_depth_for", "rounding_magnitude",
           "tolerance_same_array", "tolerance_across", "elbo_direct"]


def summation_depth_for(n_samples: int, n_features: int) -> int:
    """Longest chain of additions behind a pass total over ``n_samples`` rows."""
    return summation_depth(n_samples, chunk_rows_for(n_features))


def rounding_magnitude(log_joint: np.ndarray, log_q: np.ndarray) -> float:
    """``M = sum_i [ |l_i| + sum_k q_ik (|a_ik| + |log q_ik|) ]`` (docs/elbo_chain.md#magnitude).

    The magnitude of the terms behind ELBO(q, theta) and loglik(theta) computed
    from the log joint ``a`` (n, k); terms with q_ik = 0 contribute nothing.
    """
    log_joint = np.asarray(log_joint, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    q = np.exp(log_q)
    ell = np.logaddexp.reduce(log_joint, axis=1)
    with np.errstate(invalid="ignore"):
        terms = np.where(q > 0, q * (np.abs(log_joint) + np.abs(log_q)), 0.0)
    return math.fsum(np.abs(ell)) + math.fsum(terms.ravel())


def tolerance_same_array(n_components: int, n_samples: int, n_features: int,
                         magnitude: float) -> float:
    """Check A: ELBO and loglik computed from the same log-joint array.

    tau_A = 2 (K + 3 + depth) u M: the row logsumexp (K + 2 operations), the row
    ELBO (K + 1) and the chunked sum over rows (depth); the family's own errors
    cancel because both sides see the same computed array (docs/elbo_chain.md#check-a).
    """
    return equality_tolerance(n_components, summation_depth_for(n_samples, n_features),
                              magnitude)


def tolerance_across(n_components: int, n_samples: int, n_features: int,
                     amplification: float, magnitude: float,
                     stats_magnitude: float = 0.0) -> float:
    """Check B: the two sides come from different computations.

    Statistics against a pass over the data, or two parameter values:
    tau_B = 2 (K + d + 4 + depth) a u M, with ``amplification`` a the family's
    bound on how much its log-density amplifies rounding (1 + sqrt(d kappa) for a
    Gaussian, ``Family.rounding_amplification``) and M the magnitude of the terms
    on both sides (docs/elbo_chain.md#check-b); plus 2 (K + d + 4 + depth) u M_Q when one side is a
    statistics-based expected log-likelihood, ``stats_magnitude`` M_Q its
    ``Family.expected_log_likelihood_magnitude``.
    """
    return chain_tolerance(n_components, n_features,
                           summation_depth_for(n_samples, n_features), amplification,
                           magnitude, stats_magnitude)


def elbo_direct(log_joint: np.ndarray, log_q: np.ndarray) -> float:
    """sum_ik q_ik (a_ik - log q_ik) with 0 log 0 = 0, as a correctly rounded sum."""
    log_joint = np.asarray(log_joint, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    q = np.exp(log_q)
    with np.errstate(invalid="ignore"):
        terms = np.where(q > 0, q * (log_joint - log_q), 0.0)
    return math.fsum(terms.ravel())

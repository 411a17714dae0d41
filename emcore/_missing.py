"""Exact EM for Gaussian mixtures on data with missing entries (NaN).

The objective is the observed-data log-likelihood
L(theta) = sum_i log sum_k w_k N(x_i,o | mu_k,o, Sigma_k,oo), o = o(i) the
coordinates observed in row i. The E-step's q_t(z, x_m) = p(z, x_m | x_o, theta_t)
is the exact posterior of the component *and* the missing coordinates, so
ELBO(q_t, theta_t) = L(theta_t) and the chain of docs/elbo_chain.md holds for L
(derivation: docs/missing_values.md; why a loop of its own:
docs/missing_values.md#design).

Rows are grouped by missingness pattern: each pattern's factorisation (the
Cholesky factor of Sigma_k,oo, the regression Sigma_k,mo Sigma_k,oo^-1 and the
conditional covariance) is computed once per component per pass, and the rows
of the pattern are processed together (numpy, vectorised).

This is a self-contained loop beside :func:`emcore.engine.run_em` (the compiled
pass takes complete rows only): it produces the engine's
:class:`emcore.engine.Iteration` records with the engine's tolerances
(:func:`emcore.engine.equality_tolerance`, :func:`emcore.engine.chain_tolerance`)
and warns as the engine does when the chain breaks.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

from emcore.engine import (FitResult, Iteration, _param_change, _relative,
                           _warn_if_the_chain_fails, chain_tolerance, equality_tolerance)
from emcore.exceptions import DegenerateComponentError

__all__ = ["MissingData", "prepare", "missing_pass", "run_missing_em", "conditionals"]

_LOG_2PI = np.log(2.0 * np.pi)


@dataclass(frozen=True)
class MissingData:
    """X with its missingness patterns. ``X`` has NaN replaced by 0 (never read at
    missing entries); ``observed`` (n, d) bool; ``patterns`` a list of
    (observed coordinates (d,) bool, row indices)."""
    X: np.ndarray
    observed: np.ndarray
    patterns: tuple


def prepare(X: np.ndarray) -> MissingData:
    """Group the rows of X (no all-NaN row) by missingness pattern."""
    observed = ~np.isnan(X)
    uniq, inverse = np.unique(observed, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(uniq.shape[0] + 1))
    patterns = tuple((uniq[p], order[bounds[p]:bounds[p + 1]]) for p in range(uniq.shape[0]))
    return MissingData(np.where(observed, X, 0.0), observed, patterns)


def conditionals(means: np.ndarray, covariances: np.ndarray, obs: np.ndarray,
                 X_o: np.ndarray):
    """For rows X_o (n, p) with observed coordinates ``obs`` (d,) bool, per component:
    log N(x_o | mu_o, Sigma_oo) (n, k), the conditional means of the missing
    coordinates (n, k, m) and their conditional covariances (k, m, m)."""
    k = means.shape[0]
    o, m = np.flatnonzero(obs), np.flatnonzero(~obs)
    n = X_o.shape[0]
    log_dens = np.empty((n, k))
    cond_mean = np.empty((n, k, m.size))
    cond_cov = np.empty((k, m.size, m.size))
    if o.size == 0:          # nothing observed: the prior of every coordinate
        log_dens[:] = 0.0
        cond_mean[:] = means[None, :, :]
        cond_cov[:] = covariances
        return log_dens, cond_mean, cond_cov
    for j in range(k):
        S = covariances[j]
        S_oo = S[np.ix_(o, o)]
        try:
            L = scipy.linalg.cholesky(S_oo, lower=True)
        except np.linalg.LinAlgError:
            raise DegenerateComponentError(
                f"The covariance matrix of component {j} restricted to the observed "
                f"coordinates {o.tolist()} is not positive definite.", component=j) from None
        diff = X_o - means[j, o]                                   # (n, p)
        y = np.linalg.solve(L, diff.T)        # L^-1 (x - mu), (p, n)
        log_dens[:, j] = (-0.5 * np.sum(y * y, axis=0) - np.sum(np.log(np.diag(L)))
                          - 0.5 * o.size * _LOG_2PI)
        if m.size:
            # B = Sigma_mo Sigma_oo^-1 = (L^-1 Sigma_om)^T L^-1
            G = np.linalg.solve(L, S[np.ix_(o, m)])   # L^-1 Sigma_om, (p, m)
            cond_mean[:, j] = means[j, m] + (G.T @ y).T
            C = S[np.ix_(m, m)] - G.T @ G
            cond_cov[j] = 0.5 * (C + C.T)
    return log_dens, cond_mean, cond_cov


@dataclass
class MissingPass:
    """One E-step over all rows at (weights, params)."""
    value: float            #: observed-data log-likelihood L(theta)
    elbo: float             #: ELBO(q, theta) from the statistics (= value up to rounding)
    row_loglik: np.ndarray  #: (n,)
    log_resp: np.ndarray    #: (n, k)
    weight: np.ndarray      #: N_k
    mean: np.ndarray        #: (k, d): sum_i r_ik E[x_i | x_o, k] / N_k
    scatter: np.ndarray     #: (k, d, d): centred, conditional covariances added
    observed_mass: np.ndarray  #: (k, d): sum_i r_ik [x_ij observed]
    entropy: float          #: H(q): the component's and the missing coordinates'
    magnitude: float        #: rounding magnitude of the pass (docs/elbo_chain.md)


def missing_pass(data: MissingData, weights: np.ndarray, means: np.ndarray,
                 covariances: np.ndarray) -> MissingPass:
    n, d = data.X.shape
    k = weights.shape[0]
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    log_joint = np.empty((n, k))
    xhat = np.empty((n, k, d))
    cov_by_pattern = []
    entropy_missing = np.zeros((n, k))
    for obs, rows in data.patterns:
        X_o = data.X[np.ix_(rows, np.flatnonzero(obs))]
        ld, cm, cc = conditionals(means, covariances, obs, X_o)
        log_joint[rows] = ld + log_w
        xhat[rows] = data.X[rows][:, None, :]
        if (~obs).any():
            xhat[np.ix_(rows, np.arange(k), np.flatnonzero(~obs))] = cm
            # entropy of N(., C_k): 1/2 (m log(2 pi e) + log det C_k)
            logdet = np.linalg.slogdet(cc)[1] if cc.shape[1] else np.zeros(k)
            entropy_missing[rows] = 0.5 * ((~obs).sum() * (_LOG_2PI + 1.0) + logdet)
        cov_by_pattern.append(cc)
    row_loglik = logsumexp(log_joint, axis=1)
    log_resp = log_joint - row_loglik[:, None]
    resp = np.exp(log_resp)
    N = resp.sum(axis=0)
    safe = np.where(N > 0, N, 1.0)
    mean = np.einsum("nk,nkd->kd", resp, xhat) / safe[:, None]
    dev = xhat - mean[None]
    scatter = np.einsum("nk,nkd,nke->kde", resp, dev, dev)
    for (obs, rows), cc in zip(data.patterns, cov_by_pattern):
        if cc.shape[1]:
            m = np.flatnonzero(~obs)
            scatter[np.ix_(np.arange(k), m, m)] += resp[rows].sum(axis=0)[:, None, None] * cc
    with np.errstate(invalid="ignore"):
        rlogr = np.where(resp > 0, resp * log_resp, 0.0)
    entropy = float(-np.sum(rlogr) + np.sum(resp * entropy_missing))
    observed_mass = resp.T @ data.observed.astype(np.float64)
    magnitude = float(np.sum(np.abs(row_loglik)) + np.sum(resp * np.abs(log_joint))
                      - np.sum(rlogr) + np.sum(resp * np.abs(entropy_missing)))
    value = float(np.sum(row_loglik))
    ps = MissingPass(value, 0.0, row_loglik, log_resp, N, mean, scatter, observed_mass,
                     entropy, magnitude)
    return ps


def _check_observed(ps: MissingPass, feature_names=None) -> None:
    """A component whose responsibility mass never sees a coordinate has no data on it."""
    # below eps times the component's mass: numerically no observation (a mass the
    # rounding of N_k alone can produce)
    tiny = np.finfo(np.float64).eps * ps.weight[:, None]
    bad = np.argwhere((ps.observed_mass <= tiny) & (ps.weight[:, None] > 0))
    if bad.size:
        j, c = (int(a) for a in bad[0])
        name = f"{c}" if feature_names is None else f"{c} ({feature_names[c]!r})"
        raise ValueError(
            f"Component {j} has no observed value of coordinate {name}: the rows it "
            "is responsible for all miss that coordinate, so the data say nothing about "
            "its mean or variance there. Use fewer components, another initialisation, "
            "or drop the coordinate.")


def _stats(family, ps: MissingPass):
    # the family's own statistics type (emcore.plugins.gaussian.GaussianStats)
    GaussianStats = type(family.empty_stats())
    diag = family.covariance_type in ("diag", "spherical")
    scatter = np.einsum("kjj->kj", ps.scatter).copy() if diag else ps.scatter
    return GaussianStats(weight=ps.weight.copy(), mean=ps.mean.copy(),
                         residual=np.zeros_like(ps.mean), scatter=scatter)


def _elbo(family, ps: MissingPass, stats, weights, params) -> float:
    with np.errstate(divide="ignore"):
        log_w = np.where(ps.weight > 0, np.log(weights), 0.0)
    return float(family.expected_log_likelihood(stats, params) + np.dot(ps.weight, log_w)
                 + ps.entropy)


def run_missing_em(data: MissingData, family, weights: np.ndarray, params: dict, *,
                   max_iter: int, tol: float,
                   callback: Optional[Callable[[Iteration], object]] = None,
                   feature_names=None) -> FitResult:
    """EM for the observed-data likelihood from (weights, params); the engine's
    records, tolerances and chain warning."""
    t_start = time.perf_counter()
    k, d = family.n_components, family.n_features
    n = data.X.shape[0]
    depth = n + 2          # sequential-sum bound (numpy sums pairwise: smaller)

    def at(w, p):
        ps = missing_pass(data, w, p["means"], p["covariances"])
        _check_observed(ps, feature_names)
        return ps

    ps = at(weights, params)
    history = []
    stop_reason = "max_iter"
    for t in range(max_iter):
        t0 = time.perf_counter()
        stats = _stats(family, ps)
        elbo_start = _elbo(family, ps, stats, weights, params)
        new_params = family.m_step(stats, params)
        new_weights = ps.weight / ps.weight.sum()
        elbo = _elbo(family, ps, stats, new_weights, new_params)
        pen_old = family.m_step_penalty(stats, params)
        pen_new = family.m_step_penalty(stats, new_params)
        nxt = at(new_weights, new_params)
        amp = max(family.rounding_amplification(params),
                  family.rounding_amplification(new_params))
        tol_eq = equality_tolerance(k, depth, ps.magnitude)
        tol_chain = (chain_tolerance(k, d, depth, amp,
                                     ps.magnitude + nxt.magnitude + abs(pen_old) + abs(pen_new),
                                     family.expected_log_likelihood_magnitude(stats, new_params))
                     + 2.0 * family.parameter_rounding(stats, new_params))
        again = family.m_step(stats, new_params)
        gain = 0.0
        if not all(np.array_equal(again[key], new_params[key]) for key in new_params):
            def q(p):
                return family.expected_log_likelihood(stats, p) - family.m_step_penalty(stats, p)
            gain = q(again) - q(new_params)
        record = Iteration(
            iteration=t, value=ps.value, elbo_at_start=elbo_start, elbo=elbo,
            value_next=nxt.value, objective=nxt.value,
            relative_change=_relative(ps.value, nxt.value),
            penalty_change=pen_new - pen_old,
            param_change=_param_change(weights, params, new_weights, new_params),
            tolerance_equality=max(tol_eq, np.finfo(float).tiny),
            tolerance=max(tol_chain, np.finfo(float).tiny),
            empty_components=tuple(int(j) for j in np.flatnonzero(~(ps.weight > 0))),
            seconds=time.perf_counter() - t0, step="em", m_step_gain=gain)
        history.append(record)
        weights, params, ps = new_weights, new_params, nxt
        if callback is not None and callback(record) is False:
            stop_reason = "callback"
            break
        if record.relative_change < tol:
            stop_reason = "tol"
            break
    _warn_if_the_chain_fails(history)
    return FitResult(weights=weights, params=params, history=tuple(history),
                     n_iter=len(history), stop_reason=stop_reason, value=ps.value,
                     objective=ps.value, objective_name="observed-data log-likelihood",
                     n_samples=float(n), seconds=time.perf_counter() - t_start,
                     resp_sum=ps.weight, n_passes=len(history) + 1)


def drop_empty_rows(X: np.ndarray, owner: str) -> tuple:
    """(X without its all-NaN rows, the number dropped), warning when some are."""
    empty = np.all(np.isnan(X), axis=1)
    n_dropped = int(empty.sum())
    if n_dropped:
        warnings.warn(f"{owner}: {n_dropped} row(s) with every coordinate missing carry "
                      "no information and were dropped (n_rows_dropped_).", UserWarning,
                      stacklevel=3)
    return X[~empty], n_dropped

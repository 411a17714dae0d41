"""Families for positive data: ``exponential`` and ``gamma`` (independent features).

Component k models a row of d positive values as independent variables:

* ``exponential``, rates lambda_k (k, d):
  log p(x | k) = sum_j [log lambda_kj - lambda_kj x_j];
* ``gamma``, shapes a_k and rates b_k (k, d):
  log p(x | k) = sum_j [a_kj log b_kj - lgamma(a_kj) + (a_kj - 1) log x_j - b_kj x_j].

Statistics of weighted rows (w_ik = q_ik times the row's weight), all additive:
N_k = sum_i w_ik, S_k = sum_i w_ik x_i and (gamma) L_k = sum_i w_ik log x_i, with
A_k = sum_i w_ik |log x_i| for the rounding bound. The exponential M-step is
lambda = N / S. The gamma M-step has no closed form in the shape: for each
(k, j), b = a N / S, and a solves log a - psi(a) = log(S / N) - L / N (> 0 by
Jensen's inequality unless every x is equal), by Newton's method on 1/a from
Minka's starting value (Minka 2002, "Estimating a gamma distribution") until the
relative step is at most ``SHAPE_RTOL`` = 1e-13; Newton then has at most its
square left, so the shape is the maximiser to a relative error below 1e-13, and
the objective, concave in a with curvature N (psi'(a) - 1/a) <= N / a^2, is
within N (1e-13)^2 / 2 = 5e-27 N of its maximum: far below the rounding of Q,
and added to ``parameter_rounding`` (so to the chain's tolerance) all the same.
This is a full M-step, not a generalized one. Derivations: docs/positive.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import digamma, gammaln, polygamma

from emcore import DegenerateComponentError
from emcore.plugin_api import UNIT_ROUNDOFF, Family, FamilyRecord, Params, hookimpl

__all__ = ["ExponentialFamily", "GammaFamily", "PositiveStats", "SHAPE_RTOL"]

SHAPE_RTOL = 1e-13
"""The gamma M-step's Newton iteration stops at a relative step of the shape <= this."""

_MAX_NEWTON = 100      # never reached: from Minka's start, 3-6 steps reach SHAPE_RTOL


@dataclass(frozen=True)
class PositiveStats:
    """Statistics of K components of positive data (all additive).

    ``weight`` (k,) N_k; ``total`` (k, d) S_k = sum_i w_ik x_i; ``log_total`` (k, d)
    L_k = sum_i w_ik log x_i and ``abs_log_total`` (k, d) sum_i w_ik |log x_i| (both
    zero-sized for the exponential, which needs neither); ``observed`` (k, d) the
    weight of component k on feature j when rows miss some (None: N_k on every
    feature; the sums are then over the observed entries only).
    """
    weight: np.ndarray
    total: np.ndarray
    log_total: np.ndarray
    abs_log_total: np.ndarray
    observed: Optional[np.ndarray] = None


def _per_feature(stats: PositiveStats) -> np.ndarray:
    """The weight of each component on each feature (k, d)."""
    if stats.observed is not None:
        return stats.observed
    return np.repeat(stats.weight[:, None], stats.total.shape[1], axis=1)


def _check_shape(params: Params, key: str, shape: tuple) -> np.ndarray:
    value = np.asarray(params[key], dtype=np.float64)
    if value.shape != shape:
        raise ValueError(f"{key!r} must have shape {shape}; got {value.shape}")
    bad = ~(np.isfinite(value) & (value > 0))
    if bad.any():
        k, j = np.unravel_index(int(np.argmax(bad)), shape)
        raise ValueError(f"{key!r} of component {k}, feature {j} must be finite and > 0; "
                         f"got {value[k, j]!r}")
    return value


class _PositiveFamily(Family):
    """What the two families share: statistics, merging, empty components."""

    _needs_logs = False

    def empty_stats(self) -> PositiveStats:
        k, d = self.n_components, self.n_features
        m = d if self._needs_logs else 0
        return PositiveStats(np.zeros(k), np.zeros((k, d)), np.zeros((k, m)),
                             np.zeros((k, m)))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> PositiveStats:
        W = np.asarray(weights, dtype=np.float64)
        if self._needs_logs:
            log_x = np.log(X)
            return PositiveStats(W.sum(axis=0), W.T @ X, W.T @ log_x, W.T @ np.abs(log_x))
        empty = np.zeros((self.n_components, 0))
        return PositiveStats(W.sum(axis=0), W.T @ X, empty, empty)

    def merge_stats(self, a: PositiveStats, b: PositiveStats) -> PositiveStats:
        observed = (None if a.observed is None and b.observed is None
                    else _per_feature(a) + _per_feature(b))
        return PositiveStats(a.weight + b.weight, a.total + b.total,
                             a.log_total + b.log_total, a.abs_log_total + b.abs_log_total,
                             observed)

    def scale_stats(self, stats: PositiveStats, factor: float) -> PositiveStats:
        return PositiveStats(stats.weight * factor, stats.total * factor,
                             stats.log_total * factor, stats.abs_log_total * factor,
                             None if stats.observed is None else stats.observed * factor)

    def _weight(self, stats: PositiveStats) -> np.ndarray:
        """N_k as (k, 1), or N_kj (k, d) when rows miss entries."""
        return stats.weight[:, None] if stats.observed is None else stats.observed

    def _keep_empty(self, stats: PositiveStats, new: dict,
                    previous: Optional[Params]) -> dict:
        """N_k = 0 (N_kj = 0 with missing entries): the objective does not depend on
        component k (on its feature j); keep ``previous``."""
        has = np.broadcast_to(self._weight(stats) > 0, new[next(iter(new))].shape)
        if has.all():
            return new
        k = int(np.argwhere(~has)[0][0])
        if previous is None:
            raise DegenerateComponentError(
                f"Component {k} received no data at initialisation; reduce "
                "n_components or choose another initialisation.", component=k)
        return {key: np.where(has, value, np.asarray(previous[key]))
                for key, value in new.items()}

    def _safe_ratio(self, stats: PositiveStats) -> np.ndarray:
        """S_k / N_k, the weighted means (1 where N_k = 0: replaced by previous)."""
        if stats.observed is not None:
            n = stats.observed
            return stats.total / np.where(n > 0, n, 1.0)
        has = stats.weight > 0
        return stats.total / np.where(has, stats.weight, 1.0)[:, None]

    # --- missing entries (supports_missing; docs/missing_values.md) ---------------------
    supports_missing = True

    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """The log-density of each row's observed features (vectorised numpy: the
        rows with a missing entry only)."""
        return self._observed_terms(np.where(observed, X, 1.0), observed, params)

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> PositiveStats:
        """The statistics of the observed entries; ``observed`` (k, d) their weights."""
        W = np.asarray(weights, dtype=np.float64)
        mask = observed.astype(np.float64)
        x = np.where(observed, X, 0.0)
        if self._needs_logs:
            log_x = np.where(observed, np.log(np.where(observed, X, 1.0)), 0.0)
            logs = (W.T @ log_x, W.T @ np.abs(log_x))
        else:
            logs = (np.zeros((self.n_components, 0)),) * 2
        return PositiveStats(W.sum(axis=0), W.T @ x, *logs, W.T @ mask)

    def marginal(self, columns, params: Params) -> tuple:
        """The same family on ``columns`` and their parameters."""
        cols = np.atleast_1d(np.asarray(columns))
        d = self.n_features
        if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or \
                np.any(cols < 0) or np.any(cols >= d) or np.unique(cols).size != cols.size:
            raise ValueError(f"The 'columns' parameter of {type(self).__name__}.marginal "
                             f"must be distinct column indices in [0, {d - 1}]. Got "
                             f"{columns!r} instead.")
        return (type(self)(self.n_components, cols.size),
                {key: np.asarray(value)[:, cols] for key, value in params.items()})


class ExponentialFamily(_PositiveFamily):
    """Independent exponential features per component; ``params = {"rates": (k, d)}``.

    Parameters
    ----------
    n_components, n_features : int
        K and d.

    X must be positive (``support:positive``). The M-step is closed-form:
    lambda_kj = N_k / S_kj (the inverse of the weighted mean).
    """

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        return np.sum(np.log(rates), axis=1) - X @ rates.T

    def _observed_terms(self, X: np.ndarray, observed: np.ndarray,
                        params: Params) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        return observed.astype(np.float64) @ np.log(rates).T - np.where(
            observed, X, 0.0) @ rates.T

    def m_step(self, stats: PositiveStats, previous: Optional[Params]) -> dict:
        mean = self._safe_ratio(stats)
        return self._keep_empty(stats, {"rates": 1.0 / mean}, previous)

    def expected_log_likelihood(self, stats: PositiveStats, params: Params) -> float:
        rates = np.asarray(params["rates"], dtype=np.float64)
        if stats.observed is not None:
            n = stats.observed
            return float(np.sum(np.where(n > 0, n * np.log(rates), 0.0))
                         - np.sum(rates * stats.total))
        per = stats.weight * np.sum(np.log(rates), axis=1) - np.sum(rates * stats.total, 1)
        return float(np.sum(np.where(stats.weight > 0, per, 0.0)))

    def expected_log_likelihood_magnitude(self, stats: PositiveStats,
                                          params: Params) -> float:
        # the terms of Q before they cancel: N_k sum_j |log lambda_kj| + sum_j lambda S;
        # they also bound the per-row terms |log lambda| + lambda x of log_density
        rates = np.asarray(params["rates"], dtype=np.float64)
        return float(np.sum(_per_feature(stats) * np.abs(np.log(rates)))
                     + np.sum(rates * stats.total))

    def validate_params(self, params: Params) -> None:
        """``rates`` (k, d), finite and > 0."""
        _check_shape(params, "rates", (self.n_components, self.n_features))

    def n_parameters(self) -> int:
        return self.n_components * self.n_features

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        parts = [rng.exponential(1.0 / rates[k], size=(int(c), self.n_features))
                 for k, c in enumerate(np.asarray(counts, dtype=np.int64))]
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def parameter_rounding(self, stats: PositiveStats, params: Params) -> float:
        # lambda = 1 / (S / N): two roundings, |delta| <= 2 u lambda; Q's curvature in
        # lambda_kj is N_k / lambda^2, so the loss is <= 1/2 N_k (2u)^2 per entry
        return float(0.5 * np.sum(stats.weight) * self.n_features * (2 * UNIT_ROUNDOFF) ** 2)

    def rounding_amplification(self, params: Params) -> float:
        # log p = sum_j (log lambda_j - lambda_j x_j) cancels near the mode, where the
        # terms are ~ |log lambda_j| + 1 (E[lambda x] = 1) and |log p| can be ~0
        rates = np.asarray(params["rates"], dtype=np.float64)
        return 1.0 + float(np.max(np.sum(np.abs(np.log(rates)) + 1.0, axis=1)))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        # rates log-uniform on [0.1, 10]; nearly degenerate: half of them on
        # [1e-6, 1e-4] or [1e4, 1e6] (scales far from 1)
        rates = 10.0 ** rng.uniform(-1.0, 1.0, (self.n_components, self.n_features))
        if nearly_degenerate:
            far = rng.random(rates.shape) < 0.5
            rates[far] = 10.0 ** (rng.uniform(4.0, 6.0, int(far.sum()))
                                  * rng.choice([-1.0, 1.0], int(far.sum())))
        return {"rates": rates}


#: from this shape on, log a - psi(a) and its derivative by their asymptotic series
#: (the direct difference loses u log(a) / (1 / 2a) of its value: 4e-7 at a = 5e7)
_SERIES_FROM = 12.0


def _log_minus_digamma(a: np.ndarray) -> tuple:
    """(log a - psi(a), its derivative 1/a - psi'(a)), each to a relative ~1e-14.

    Below ``_SERIES_FROM`` directly; from there by the asymptotic series
    1/(2a) + sum_k B_2k / (2k a^2k) and its derivative, to the a^-14 (a^-15)
    term, whose successor is below 1e-16 of the value at a = 12.
    """
    direct = a < _SERIES_FROM
    ad = np.where(direct, a, 1.0)
    f = np.log(ad) - digamma(ad)
    fp = 1.0 / ad - polygamma(1, ad)
    big = np.where(direct, _SERIES_FROM, a)
    z = 1.0 / (big * big)
    f_big = 0.5 / big + z * (1 / 12 - z * (1 / 120 - z * (1 / 252 - z * (
        1 / 240 - z * (1 / 132 - z * (691 / 32760 - z / 12))))))
    fp_big = -0.5 * z - z / big * (1 / 6 - z * (1 / 30 - z * (1 / 42 - z * (
        1 / 30 - z * (5 / 66 - z * (691 / 2730 - z * 7 / 6))))))
    return np.where(direct, f, f_big), np.where(direct, fp, fp_big)


def _solve_shape(s: np.ndarray) -> np.ndarray:
    """The a > 0 with log a - psi(a) = s (s > 0), elementwise, to relative SHAPE_RTOL.

    Minka's start a0 = (3 - s + sqrt((s - 3)^2 + 24 s)) / (12 s), then Newton's
    method on 1/a (Minka 2002, eq. 7): 1/a <- 1/a + f(a) / (a^2 f'(a)), with
    f(a) = log a - psi(a) - s decreasing and convex, from which it converges
    monotonically and quadratically. A step is halved while it leaves a > 0.
    """
    a = (3.0 - s + np.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(_MAX_NEWTON):
        f, fp = _log_minus_digamma(a)
        f = f - s
        inv = 1.0 / a + f / (a * a * fp)
        inv = np.where(inv > 0, inv, 0.5 / a)
        new = 1.0 / inv
        step = np.abs(new - a) / new
        a = new
        if np.all(step <= SHAPE_RTOL):
            return a
    raise FloatingPointError("the gamma shape's Newton iteration did not converge "
                             f"(relative step {float(np.max(step)):.3g})")


class GammaFamily(_PositiveFamily):
    """Independent gamma features per component; ``params = {"shapes": (k, d),
    "rates": (k, d)}`` (density b^a x^(a-1) e^(-b x) / Gamma(a)).

    Parameters
    ----------
    n_components, n_features : int
        K and d.

    X must be positive (``support:positive``). The M-step maximises the expected
    log-likelihood in each (k, j): the rate in closed form given the shape,
    b = a N / S, and the shape by Newton's method to a relative accuracy of
    ``SHAPE_RTOL`` = 1e-13 (a loss of Q below 5e-27 N, which ``parameter_rounding``
    adds to the chain's tolerance): a maximiser to that accuracy, so fits keep
    the exact EM chain. A component whose values are all equal has no finite
    shape: DegenerateComponentError.
    """

    _needs_logs = True

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        const = np.sum(a * np.log(b) - gammaln(a), axis=1)
        return const + np.log(X) @ (a - 1.0).T - X @ b.T

    def _observed_terms(self, X: np.ndarray, observed: np.ndarray,
                        params: Params) -> np.ndarray:
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        log_x = np.where(observed, np.log(X), 0.0)
        return (observed.astype(np.float64) @ (a * np.log(b) - gammaln(a)).T
                + log_x @ (a - 1.0).T - np.where(observed, X, 0.0) @ b.T)

    def m_step(self, stats: PositiveStats, previous: Optional[Params]) -> dict:
        has = self._weight(stats) > 0                      # (k, 1) or (k, d)
        n = np.where(has, self._weight(stats), 1.0)
        mean = self._safe_ratio(stats)
        # s = log(mean x) - mean(log x) >= 0 (Jensen), 0 only for equal values
        s = np.log(mean) - stats.log_total / n
        s = np.where(has, s, 1.0)
        bad = ~(s > 0)
        if bad.any():
            k, j = np.unravel_index(int(np.argmax(bad)), s.shape)
            raise DegenerateComponentError(
                f"Gamma component {k} has (numerically) one value in feature {j} "
                f"(log of the mean minus the mean of the logs is {s[k, j]:.3g}), so its "
                "shape has no finite maximiser; reduce n_components or choose another "
                "initialisation.", component=int(k))
        shapes = _solve_shape(s)
        return self._keep_empty(stats, {"shapes": shapes, "rates": shapes / mean},
                                previous)

    def expected_log_likelihood(self, stats: PositiveStats, params: Params) -> float:
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        if stats.observed is not None:
            n = stats.observed
            return float(np.sum(np.where(n > 0, n * (a * np.log(b) - gammaln(a)), 0.0))
                         + np.sum((a - 1.0) * stats.log_total - b * stats.total))
        per = (stats.weight * np.sum(a * np.log(b) - gammaln(a), axis=1)
               + np.sum((a - 1.0) * stats.log_total - b * stats.total, axis=1))
        return float(np.sum(np.where(stats.weight > 0, per, 0.0)))

    def expected_log_likelihood_magnitude(self, stats: PositiveStats,
                                          params: Params) -> float:
        # the terms of Q before they cancel; they bound the per-row terms of
        # log_density (|a log b| + |lgamma a| + |a - 1| |log x| + b x) as well
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        per_row = np.abs(a * np.log(b)) + np.abs(gammaln(a))
        return float(np.sum(_per_feature(stats) * per_row)
                     + np.sum(np.abs(a - 1.0) * stats.abs_log_total) + np.sum(b * stats.total))

    def validate_params(self, params: Params) -> None:
        """``shapes`` and ``rates`` (k, d), finite and > 0."""
        shape = (self.n_components, self.n_features)
        _check_shape(params, "shapes", shape)
        _check_shape(params, "rates", shape)

    def n_parameters(self) -> int:
        return 2 * self.n_components * self.n_features

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        parts = [rng.gamma(a[k], 1.0 / b[k], size=(int(c), self.n_features))
                 for k, c in enumerate(np.asarray(counts, dtype=np.int64))]
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def parameter_rounding(self, stats: PositiveStats, params: Params) -> float:
        # The computed (a, b) are off the maximiser by |da| <= (SHAPE_RTOL + 4 u) a
        # (Newton's stopping rule, then its last rounded steps) and |db| <= 4 u b
        # beyond what da moves it (b = a N / S: three roundings). Q's Hessian in
        # (a, b) per entry is N [[-psi'(a), 1/b], [1/b, -a/b^2]], whose quadratic
        # form at (da, db) is <= N (psi'(a) da^2 + 2 |da db| / b + a db^2 / b^2).
        u = UNIT_ROUNDOFF
        a = np.asarray(params["shapes"], dtype=np.float64)
        ra, rb = SHAPE_RTOL + 4 * u, 4 * u
        per = (polygamma(1, a) * (ra * a) ** 2 + 2.0 * ra * a * rb + a * rb ** 2)
        return float(0.5 * np.sum(stats.weight[:, None] * per))

    def rounding_amplification(self, params: Params) -> float:
        # the terms of log p at a typical x (E log x = psi(a) - log b, E b x = a)
        # against |log p|, which can be ~0 near the mode
        a = np.asarray(params["shapes"], dtype=np.float64)
        b = np.asarray(params["rates"], dtype=np.float64)
        terms = (np.abs(a * np.log(b)) + np.abs(gammaln(a))
                 + np.abs(a - 1.0) * np.abs(digamma(a) - np.log(b)) + a)
        return 1.0 + float(np.max(np.sum(terms, axis=1)))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        # shapes log-uniform on [2, 20] (a bounded density, which the conformance
        # suite's importance sampling integrates well), rates on [0.1, 10]; nearly
        # degenerate: half the shapes on [1e3, 1e5] (nearly a point mass) or
        # [1e-3, 1e-2] (a density unbounded at 0, nearly all mass there)
        shape = (self.n_components, self.n_features)
        a = 10.0 ** rng.uniform(np.log10(2.0), np.log10(20.0), shape)
        b = 10.0 ** rng.uniform(-1.0, 1.0, shape)
        if nearly_degenerate:
            far = rng.random(shape) < 0.5
            m = int(far.sum())
            a[far] = np.where(rng.random(m) < 0.5, 10.0 ** rng.uniform(3.0, 5.0, m),
                              10.0 ** rng.uniform(-3.0, -2.0, m))
        return {"shapes": a, "rates": b}


@hookimpl
def emcore_register_families():
    return [
        FamilyRecord(name="exponential", factory=ExponentialFamily,
                     capabilities=frozenset({"sampling", "support:positive"}),
                     description="independent exponential features (positive data; "
                                 "rates)"),
        FamilyRecord(name="gamma", factory=GammaFamily,
                     capabilities=frozenset({"sampling", "support:positive"}),
                     description="independent gamma features (positive data; shapes "
                                 "and rates, Newton M-step)"),
    ]

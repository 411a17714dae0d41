"""emcore-poisson: an example third-party emcore plugin, a Poisson component family.

Component k models a row of d non-negative counts as independent Poisson
variables with rates lambda_k = (lambda_k1, ..., lambda_kd):

    log p(x | z = k) = sum_j [ x_j log lambda_kj - lambda_kj - log x_j! ].

Sufficient statistics of weighted rows (w_ik = q_ik times the row's weight) are
N_k = sum_i w_ik, S_kj = sum_i w_ik x_ij and L_k = sum_i w_ik sum_j log x_ij!;
all three add, so merging is addition. The M-step is lambda_k = S_k / N_k (the
weighted mean), and the expected complete-data log-likelihood is
sum_k [ sum_j S_kj log lambda_kj - N_k sum_j lambda_kj - L_k ].

Written only against emcore's public plugin API (``emcore.plugin_api``, and
``emcore.DegenerateComponentError`` that the API tells families to raise), and
registered through the ``emcore`` entry-point group (see pyproject.toml), as any
third-party plugin would be::

    import emcore
    model = emcore.MixtureModel(n_components=2, family="example_poisson").fit(counts)
    model.params_["rates"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import gammaln

from emcore import DegenerateComponentError
from emcore.plugin_api import Family, FamilyRecord, Params, hookimpl

__all__ = ["PoissonFamily", "PoissonStats", "__version__"]

__version__ = "0.1.0"


@dataclass(frozen=True)
class PoissonStats:
    """Statistics of K Poisson components (all additive)."""
    weight: np.ndarray      #: (k,) N_k = sum_i w_ik
    counts: np.ndarray      #: (k, d) S_k = sum_i w_ik x_i
    log_fact: np.ndarray    #: (k,) L_k = sum_i w_ik sum_j log x_ij!


def _xlogy_rates(counts: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """counts @ log(rates).T with 0 log 0 = 0 and c log 0 = -inf for c > 0.

    ``counts`` (n, d), ``rates`` (k, d); returns (n, k). A rate of exactly 0 (a
    component whose rows all had a zero in that column) gives probability 1 to a
    zero count and 0 to any other.
    """
    zero = rates <= 0
    log_rates = np.log(np.where(zero, 1.0, rates))
    out = counts @ log_rates.T
    if zero.any():
        impossible = (counts > 0).astype(np.float64) @ zero.T.astype(np.float64) > 0
        out[impossible] = -np.inf
    return out


class PoissonFamily(Family):
    """Independent Poisson counts per component; ``params = {"rates": (k, d)}``.

    Parameters
    ----------
    n_components, n_features : int
        K and d.

    Data must be non-negative integer counts (stored as floats): the record
    declares ``support:nonnegative_integers``, so emcore's estimators reject any
    other X. Rates are >= 0.
    """

    # --- E-step -------------------------------------------------------------------
    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        return (_xlogy_rates(X, rates) - rates.sum(axis=1)
                - gammaln(X + 1.0).sum(axis=1)[:, None])

    # --- sufficient statistics ----------------------------------------------------
    def empty_stats(self) -> PoissonStats:
        k, d = self.n_components, self.n_features
        return PoissonStats(np.zeros(k), np.zeros((k, d)), np.zeros(k))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> PoissonStats:
        return PoissonStats(weights.sum(axis=0), weights.T @ X,
                            weights.T @ gammaln(X + 1.0).sum(axis=1))

    def merge_stats(self, a: PoissonStats, b: PoissonStats) -> PoissonStats:
        return PoissonStats(a.weight + b.weight, a.counts + b.counts,
                            a.log_fact + b.log_fact)

    # --- M-step -------------------------------------------------------------------
    def m_step(self, stats: PoissonStats, previous: Optional[Params]) -> dict:
        has = stats.weight > 0
        rates = stats.counts / np.where(has, stats.weight, 1.0)[:, None]
        if not has.all():
            # N_k = 0: the objective does not depend on lambda_k; keep the previous one
            k = int(np.flatnonzero(~has)[0])
            if previous is None:
                raise DegenerateComponentError(
                    f"Poisson component {k} received no data at initialisation; "
                    "reduce n_components or choose another initialisation.", component=k)
            rates = np.where(has[:, None], rates, previous["rates"])
        return {"rates": rates}

    def expected_log_likelihood(self, stats: PoissonStats, params: Params) -> float:
        rates = np.asarray(params["rates"], dtype=np.float64)
        zero = rates <= 0
        if np.any(zero & (stats.counts > 0)):
            return -np.inf
        log_rates = np.log(np.where(zero, 1.0, rates))
        return float(np.sum(stats.counts * log_rates)
                     - np.sum(stats.weight * rates.sum(axis=1)) - np.sum(stats.log_fact))

    def validate_params(self, params: Params) -> None:
        rates = np.asarray(params["rates"])
        shape = (self.n_components, self.n_features)
        if rates.shape != shape:
            raise ValueError(f"'rates' must have shape {shape}; got {rates.shape}")
        if not np.all(np.isfinite(rates) & (rates >= 0)):
            raise ValueError("'rates' must be finite and non-negative")

    # --- size, sampling, numerics -------------------------------------------------
    def n_parameters(self) -> int:
        return self.n_components * self.n_features

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        parts = [rng.poisson(rates[k], size=(int(c), self.n_features))
                 for k, c in enumerate(np.asarray(counts, dtype=np.int64))]
        return np.concatenate(parts).astype(np.float64) if parts else \
            np.empty((0, self.n_features))

    def rounding_amplification(self, params: Params) -> float:
        # log p = sum_j (x log lambda - lambda - log x!) cancels where the mass is:
        # at x ~ lambda the terms are ~ lambda (2 |log lambda| + 1) per coordinate
        # while |log p| is only ~ log(2 pi lambda) / 2. Their ratio, summed over the
        # coordinates, bounds the amplification of rounding (>= 1).
        rates = np.asarray(params["rates"], dtype=np.float64)
        # a rate 0 (a component whose rows are all 0) contributes 0, not 0 * inf
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(rates > 0, rates * (2.0 * np.abs(np.log(rates)) + 1.0), 0.0)
        return 1.0 + float(np.max(np.sum(terms, axis=1)))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        # rates log-uniform on [0.5, 20]; nearly degenerate: about half of them
        # log-uniform on [1e-8, 1e-4] (a count almost surely 0)
        rates = np.exp(rng.uniform(np.log(0.5), np.log(20.0),
                                   (self.n_components, self.n_features)))
        if nearly_degenerate:
            tiny = rng.random(rates.shape) < 0.5
            rates[tiny] = 10.0 ** rng.uniform(-8.0, -4.0, int(tiny.sum()))
        return {"rates": rates}


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="example_poisson", factory=PoissonFamily,
        capabilities=frozenset({"sampling", "support:nonnegative_integers"}),
        description="independent Poisson counts per component (example plugin)")]

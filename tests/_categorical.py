"""A categorical component family written as the README's "Writing a family" says:
the seven required methods and the optional ``sample``, ``random_params`` and
``validate_params``; no initialisation of its own (the default ``initial_params``).

Feature j of a row is an integer code in {0, ..., n_levels - 1}; component k gives
it level l with probability p_kjl, independently across features:

    log p(x | z = k) = sum_j log p_{k, j, x_j}.

Statistics: N_k = sum_i w_ik and the level counts C_kjl = sum_i w_ik [x_ij = l],
both additive. The M-step is p_kjl = C_kjl / N_k. A level a component's rows
never show gets probability exactly 0, an absorbing value for EM (a row with that
level then has zero density in that component, so its responsibility there stays
0): the reason a family's starting values must not put exact zeros where the
data does not (``Family.initial_params``).

Not registered: tests build it directly or register it through a fake entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from emcore import DegenerateComponentError
from emcore.plugin_api import Family, FamilyRecord, Params

__all__ = ["CategoricalFamily", "CategoricalStats", "RECORD", "latent_class_data"]


@dataclass(frozen=True)
class CategoricalStats:
    weight: np.ndarray      #: (K,) N_k
    counts: np.ndarray      #: (K, d, L) C_kjl


class CategoricalFamily(Family):
    """Independent categorical features per component; ``params = {"probabilities":
    (K, d, L)}``, each (k, j) row summing to 1."""

    def __init__(self, n_components: int, n_features: int, n_levels: int = 4):
        super().__init__(n_components, n_features)
        self.n_levels = int(n_levels)

    def _one_hot(self, X: np.ndarray) -> np.ndarray:
        codes = np.asarray(X, dtype=np.intp)
        return (codes[:, :, None] == np.arange(self.n_levels)).astype(np.float64)

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        P = np.asarray(params["probabilities"], dtype=np.float64)
        codes = np.asarray(X, dtype=np.intp)
        with np.errstate(divide="ignore"):
            logP = np.log(P)                                     # (K, d, L)
        inside = (codes >= 0) & (codes < self.n_levels)
        codes = np.where(inside, codes, 0)
        out = np.zeros((X.shape[0], self.n_components))
        for j in range(self.n_features):
            out += logP[:, j, codes[:, j]].T
        out[~inside.all(axis=1)] = -np.inf          # a code no level has: probability 0
        return out

    def empty_stats(self) -> CategoricalStats:
        k, d, L = self.n_components, self.n_features, self.n_levels
        return CategoricalStats(np.zeros(k), np.zeros((k, d, L)))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> CategoricalStats:
        return CategoricalStats(weights.sum(axis=0),
                                np.einsum("ik,ijl->kjl", weights, self._one_hot(X)))

    def merge_stats(self, a: CategoricalStats, b: CategoricalStats) -> CategoricalStats:
        return CategoricalStats(a.weight + b.weight, a.counts + b.counts)

    def m_step(self, stats: CategoricalStats, previous: Optional[Params]) -> dict:
        has = stats.weight > 0
        P = stats.counts / np.where(has, stats.weight, 1.0)[:, None, None]
        if not has.all():
            k = int(np.flatnonzero(~has)[0])
            if previous is None:
                raise DegenerateComponentError(
                    f"categorical component {k} received no data at initialisation",
                    component=k)
            P = np.where(has[:, None, None], P, previous["probabilities"])
        return {"probabilities": P}

    def expected_log_likelihood(self, stats: CategoricalStats, params: Params) -> float:
        P = np.asarray(params["probabilities"], dtype=np.float64)
        if np.any((P <= 0) & (stats.counts > 0)):
            return -np.inf
        with np.errstate(divide="ignore"):
            logP = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
        return float(np.sum(stats.counts * logP))

    def validate_params(self, params: Params) -> None:
        P = np.asarray(params["probabilities"], dtype=np.float64)
        shape = (self.n_components, self.n_features, self.n_levels)
        if P.shape != shape:
            raise ValueError(f"'probabilities' must have shape {shape}; got {P.shape}")
        if not np.all((P >= 0) & (P <= 1)):
            raise ValueError("'probabilities' must lie in [0, 1]")
        # each p_kj. is C_kj. / N_k, with N_k and the C_kjl sums of the same weights
        # in different orders: |sum_l p_kjl - 1| <= (2 depth + L + 1) u, below
        # sqrt(u) = 1.5e-8 for any summation depth up to ~1e7; a real normalisation
        # error (a missing or wrong divisor) is orders of magnitude larger
        error = np.abs(P.sum(axis=2) - 1.0)
        if np.any(error > np.sqrt(np.finfo(np.float64).eps / 2)):
            k, j = np.unravel_index(int(np.argmax(error)), error.shape)
            raise ValueError(f"'probabilities' of component {k}, feature {j} sum to "
                             f"{P[k, j].sum()!r}, not 1")

    def n_parameters(self) -> int:
        return self.n_components * self.n_features * (self.n_levels - 1)

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        P = np.asarray(params["probabilities"], dtype=np.float64)
        rows = []
        for k, c in enumerate(np.asarray(counts, dtype=np.int64)):
            u = rng.random((int(c), self.n_features, 1))
            rows.append(np.sum(u > np.cumsum(P[k], axis=1)[None], axis=2))
        out = np.concatenate(rows) if rows else np.empty((0, self.n_features))
        return np.minimum(out, self.n_levels - 1).astype(np.float64)

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        shape = (self.n_components, self.n_features, self.n_levels)
        return {"probabilities": rng.dirichlet(np.full(self.n_levels, 2.0),
                                               size=shape[:2])}


RECORD = FamilyRecord(name="categorical-test", factory=CategoricalFamily,
                      capabilities=frozenset({"sampling", "support:nonnegative_integers"}),
                      description="independent categorical features (tests)")


def latent_class_data(seed: int = 0, n: int = 600, n_classes: int = 4,
                      n_features: int = 5, n_levels: int = 5) -> np.ndarray:
    """Rows of a latent-class model whose classes each use only some levels of each
    feature (a level absent from a class is common in another), so a component of
    a k-means++ partition misses some level of the data: the case where a start
    with exact zeros gets stuck."""
    rng = np.random.default_rng(seed)
    P = np.zeros((n_classes, n_features, n_levels))
    for k in range(n_classes):
        for j in range(n_features):
            used = rng.choice(n_levels, size=3, replace=False)
            P[k, j, used] = rng.dirichlet(np.full(3, 3.0))
    z = rng.integers(0, n_classes, n)
    u = rng.random((n, n_features, 1))
    X = np.sum(u > np.cumsum(P[z], axis=2), axis=2)
    return np.minimum(X, n_levels - 1).astype(np.float64)

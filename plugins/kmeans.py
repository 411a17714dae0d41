"""The k-means family: equal weights, one shared, fixed spherical variance.

k-means is classification EM (the ``hard`` posterior rule) for this model: the
E-step assigns each row to its nearest centre, the M-step moves each centre to
the mean of its rows, and the classification log-likelihood

    sum_i log p(x_i, z_i) = -h * inertia - n (d/2 log(2 pi sigma^2) + log K),
    h = 1 / (2 sigma^2),

is a decreasing function of the inertia, so "CEM never decreases it" is "Lloyd
never increases the inertia". The variance sigma^2 is an option, not estimated: it
does not move the partition or the centres, and it sets the scale of the
posterior for the soft and tempered rules (soft EM tends to k-means as it
shrinks).

Empty clusters. A component whose statistics hold no weight after an E-step is
moved to a data point: the empty components, in index order, take the farthest
points (from their own centre) of the non-empty components, in decreasing order
of that distance (ties: the lower component). ``Iteration.empty_components``
lists them. This keeps the chain: the empty component carries no weight in q_t,
so ELBO(q_t, theta_{t+1}) does not depend on where it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from emcore import DegenerateComponentError
from emcore.plugin_api import (FLOAT32_UNIT_ROUNDOFF as _U32, UNIT_ROUNDOFF as _U, Family,
                               FamilyRecord, Params, hookimpl)
from emcore.plugins._kmeans_kernel import KMeansKernel

__all__ = ["KMeansFamily", "KMeansStats"]


@dataclass
class KMeansStats:
    """Statistics of K clusters, shifted about reference points.

    weight (k,) = sum_i w_ik; ref (k, d) the reference points; shift_sum (k, d) =
    sum_i w_ik (x_i - ref_k); scatter (k,) = sum_i w_ik ||x_i - ref_k||^2;
    far_point (k, d) the row farthest from ref_k among the rows with w_ik > 0,
    far_dist (k,) its squared distance (-1 when there is none).
    """
    weight: np.ndarray
    ref: np.ndarray
    shift_sum: np.ndarray
    scatter: np.ndarray
    far_dist: np.ndarray
    far_point: np.ndarray

    def within_scatter(self, means: np.ndarray) -> np.ndarray:
        """sum_i w_ik ||x_i - means_k||^2 per cluster (shifted second moments)."""
        delta = means - self.ref
        return (self.scatter - 2.0 * np.einsum("kj,kj->k", delta, self.shift_sum)
                + self.weight * np.einsum("kj,kj->k", delta, delta))


class KMeansFamily(Family):
    """Spherical Gaussians with equal weights and one fixed variance (k-means' model;
    ``emcore.plugin_api.CentroidFamilyProtocol``).

    Parameters
    ----------
    n_components, n_features : int
    variance : float, default 0.5
        The shared variance sigma^2 > 0. With 0.5, log p(x | k) =
        -||x - mu_k||^2 - d/2 log(pi), so the classification log-likelihood is
        minus the inertia plus a constant.
    dtype : {'float64', 'float32'}, default 'float64'
        The data's: with 'float32' the Lloyd step's scores (so the labels) are
        computed in float32, and :meth:`log_density_rounding` bounds what that
        costs the chain (docs/elbo_chain.md#float32). Statistics and parameters
        are float64 either way.

    Parameters of a fit: ``{"means": (k, d)}``.
    """

    fixed_weights = True
    #: the parameter space is open: start from the plain partition (Family.initial_params)
    init_smoothing = 0.0


    def __init__(self, n_components: int, n_features: int, variance: float = 0.5,
                 dtype: str = "float64"):
        super().__init__(n_components, n_features)
        if isinstance(variance, bool) or not isinstance(variance, (int, float)) or \
                not (np.isfinite(variance) and variance > 0):
            raise ValueError("The 'variance' option of the kmeans family must be a positive "
                             f"finite number. Got {variance!r} instead.")
        if dtype not in ("float64", "float32"):
            raise ValueError("The 'dtype' option of the kmeans family must be 'float64' or "
                             f"'float32'. Got {dtype!r} instead.")
        self.variance = float(variance)
        self.dtype = dtype

    # --- kernel and statistics ------------------------------------------------------
    def compiled_kernel(self, params: Params) -> KMeansKernel:
        return KMeansKernel(params["means"], self.variance)

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        return self.compiled_kernel(params).log_density(X)

    def stats_from_buffer(self, buffer: np.ndarray) -> KMeansStats:
        # one slot per component, laid out as the kernel declares it (_lloyd.h)
        layout = KMeansKernel.slot_layout(self.n_features)
        slots = np.asarray(buffer, dtype=np.float64).reshape(self.n_components, -1)
        return KMeansStats(**{field: slots[:, where].copy() for field, where in layout.items()})

    def _to_buffer(self, stats: KMeansStats) -> np.ndarray:
        # the inverse of stats_from_buffer
        layout = KMeansKernel.slot_layout(self.n_features)
        size = max(w.stop if isinstance(w, slice) else w + 1 for w in layout.values())
        slots = np.empty((self.n_components, size))
        for field, where in layout.items():
            slots[:, where] = getattr(stats, field)
        return slots.ravel()

    def empty_stats(self) -> KMeansStats:
        k, d = self.n_components, self.n_features
        return KMeansStats(np.zeros(k), np.zeros((k, d)), np.zeros((k, d)), np.zeros(k),
                           np.full(k, -1.0), np.zeros((k, d)))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> KMeansStats:
        # about each cluster's weighted mean in this chunk (any point would do;
        # the mean keeps the shifted moments small)
        X = np.asarray(X, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        W = weights.sum(axis=0)
        safe = np.where(W > 0, W, 1.0)
        ref = (weights.T @ X) / safe[:, None]
        return self.stats_from_buffer(KMeansKernel(ref, self.variance).accumulate(X, weights))

    def merge_stats(self, a: KMeansStats, b: KMeansStats) -> KMeansStats:
        kernel = KMeansKernel(np.zeros((self.n_components, self.n_features)), self.variance)
        return self.stats_from_buffer(kernel.merge(self._to_buffer(a), self._to_buffer(b)))

    def scale_stats(self, stats: KMeansStats, factor: float) -> KMeansStats:
        # the sums over rows scale; reference and farthest points (and distances) stay
        return KMeansStats(stats.weight * factor, stats.ref, stats.shift_sum * factor,
                           stats.scatter * factor, stats.far_dist, stats.far_point)

    # --- M-step -----------------------------------------------------------------------
    def m_step(self, stats: KMeansStats, previous: Optional[Params]) -> dict:
        W = stats.weight
        full = W > 0
        means = np.empty((self.n_components, self.n_features))
        means[full] = stats.ref[full] + stats.shift_sum[full] / W[full, None]
        empty = np.flatnonzero(~full)
        if empty.size:
            donors = sorted((j for j in np.flatnonzero(full) if stats.far_dist[j] > 0),
                            key=lambda j: (-stats.far_dist[j], j))
            for m, j in enumerate(empty):
                if m < len(donors):
                    means[j] = stats.far_point[donors[m]]
                elif previous is not None:
                    means[j] = previous["means"][j]
                else:
                    raise DegenerateComponentError(
                        f"component {j} has no data and there is no distinct point to "
                        "move it to (fewer distinct rows than components?); use fewer "
                        "components or another initialisation")
        return {"means": means}

    def within_scatter(self, stats: KMeansStats, params: Params) -> np.ndarray:
        """sum_i w_ik ||x_i - mu_k||^2 per cluster (KMeans' inertia), from the shifted
        moments: exactly the accumulated scatter when the statistics were taken about
        the centres themselves (the engine's pass at ``params``)."""
        return stats.within_scatter(np.asarray(params["means"], dtype=np.float64))

    def validate_params(self, params: Params) -> None:
        means = np.asarray(params["means"])
        shape = (self.n_components, self.n_features)
        if means.shape != shape or not np.all(np.isfinite(means)):
            raise ValueError(f"'means' must be a finite array of shape {shape}; got shape "
                             f"{means.shape}")

    def expected_log_likelihood(self, stats: KMeansStats, params: Params) -> float:
        d = self.n_features
        h = 0.5 / self.variance
        const = -0.5 * d * np.log(2.0 * np.pi * self.variance)
        full = stats.weight > 0
        within = stats.within_scatter(params["means"])[full]
        return float(np.sum(-h * within + stats.weight[full] * const))

    # --- model size, sampling, numerics ---------------------------------------------
    def n_parameters(self) -> int:
        return self.n_components * self.n_features

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        means = params["means"]
        rows = np.repeat(np.arange(self.n_components), np.asarray(counts, dtype=np.int64))
        return means[rows] + np.sqrt(self.variance) * rng.standard_normal(
            (rows.shape[0], self.n_features))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        means = 3.0 * rng.standard_normal((self.n_components, self.n_features))
        if nearly_degenerate:       # two centres a hair apart: near-ties everywhere
            means[-1] = means[0] + 1e-9
        return {"means": means}

    def log_density_rounding(self, stats: KMeansStats, params: Params) -> float:
        # The kernel's a_ik = 2h x~.mu~ - h (|x~|^2 + |mu~|^2) + const (x~ = x - c,
        # mu~ = mu - c, c = mean of the centres) carries an absolute error of at most
        # gamma_{d+3} h (|x~_i| + |mu~_k|)^2 (the dot product and the two norms, then
        # three more roundings), gamma_n = n u / (1 - n u) <= 1.01 n u. For the rows
        # behind the statistics (reference points ref_j), |x~_i| <= |x_i - ref_j| +
        # |ref_j - c| and |mu~_k| <= R = max_k |mu~_k|, so by (a + b + c)^2 <=
        # 3 (a^2 + b^2 + c^2) the q-weighted sum of the errors is at most
        # 1.01 (d + 3) u h 3 sum_j (SS_j + W_j |ref_j - c|^2 + W_j R^2).
        # float32 rows (docs/elbo_chain.md#float32): only the Lloyd step's argmax
        # is float32, its scores about c32 = float32(c) with the same error
        # bound at u32 = 2**-24 (the constant common to all components removed);
        # a row given component z' for z* loses a_iz* - a_iz' <= err_z* + err_z',
        # so twice that bound, at u32.
        means = np.asarray(params["means"], dtype=np.float64)
        c = means.mean(axis=0)
        if self.dtype == "float32":
            c = c.astype(np.float32).astype(np.float64)
        R2 = float(np.max(np.sum((means - c) ** 2, axis=1)))
        full = stats.weight > 0
        ref_off = np.sum((stats.ref[full] - c) ** 2, axis=1)
        total = np.sum(stats.scatter[full] + stats.weight[full] * (ref_off + R2))
        h = 0.5 / self.variance
        u = 2.0 * _U32 if self.dtype == "float32" else _U
        return float(1.01 * (self.n_features + 3) * u * h * 3.0 * total)

    def parameter_rounding(self, stats: KMeansStats, params: Params) -> float:
        # Rounding mu_k to doubles moves it by |delta_j| <= u |mu_kj|; Q is stationary
        # at the mean, so it drops by h W_k |delta|^2 <= h W_k u^2 |mu_k|^2.
        h = 0.5 / self.variance
        mu2 = np.sum(params["means"] ** 2, axis=1)
        return float(h * np.sum(stats.weight * _U * _U * mu2))


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="kmeans", factory=KMeansFamily,
        capabilities=frozenset({"compiled_kernel", "sampling", "support:real"}),
        description="equal-weight spherical Gaussians with one fixed variance: "
                    "k-means with the 'hard' rule")]

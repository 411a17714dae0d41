"""The Gaussian component family (``gaussian``); full covariance matrices.

Parameters (a dict, scikit-learn's names and shapes):
``means`` (k, d), ``covariances`` (k, d, d) and ``precisions_cholesky`` (k, d, d),
the upper-triangular U with precision P = U U^T. Statistics: per component the
centred triple (weight, mean, scatter) -- see ``_gaussian_kernel.pyx``.
Formulas: ../shared/notes/gaussian_mixture.md sections 1-7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.linalg

from emcore.exceptions import DegenerateComponentError
from emcore.plugin_api import Family, FamilyRecord, Params, hookimpl
from emcore.plugins._gaussian_kernel import GaussianFullKernel

__all__ = ["GaussianFamily", "GaussianStats", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full",)
_LOG_2PI = np.log(2.0 * np.pi)


@dataclass(frozen=True)
class GaussianStats:
    """Centred sufficient statistics of K components.

    weight (k,) = sum_i w_ik; mean (k, d) = weighted means; scatter (k, d, d) =
    sum_i w_ik (x_i - mean_k)(x_i - mean_k)^T.
    """
    weight: np.ndarray
    mean: np.ndarray
    scatter: np.ndarray


class GaussianFamily(Family):
    """Multivariate normal components.

    Parameters
    ----------
    n_components, n_features : int
        K and d.
    covariance_type : {'full'}
        Only ``'full'`` so far.
    reg_covar : float, default 1e-6
        Added to the diagonal of every covariance after the M-step (scikit-learn's
        ``reg_covar``). This is the exact maximiser of the expected log-likelihood
        minus ``reg_covar/2 * sum_k N_k tr(P_k)``, a penalty that depends on the
        current N_k: not a fixed objective (see ``m_step_penalty``).
    """

    def __init__(self, n_components: int, n_features: int, *,
                 covariance_type: str = "full", reg_covar: float = 1e-6):
        super().__init__(n_components, n_features)
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {', '.join(map(repr, COVARIANCE_TYPES))}; "
                f"got {covariance_type!r}")
        reg_covar = float(reg_covar)
        if not np.isfinite(reg_covar) or reg_covar < 0:
            raise ValueError(f"reg_covar must be a finite number >= 0; got {reg_covar!r}")
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        d = self.n_features
        self._stats_kernel = GaussianFullKernel(
            np.zeros((self.n_components, d)),
            np.broadcast_to(np.eye(d), (self.n_components, d, d)))

    # --- parameters ---------------------------------------------------------------
    def params_from_covariances(self, means: np.ndarray, covariances: np.ndarray) -> dict:
        """Return parameters from means and covariances (Cholesky of each covariance)."""
        means = np.array(means, dtype=np.float64)
        covariances = np.array(covariances, dtype=np.float64)
        prec_chol = np.empty_like(covariances)
        eye = np.eye(self.n_features)
        for k, cov in enumerate(covariances):
            L = self._cholesky(cov, k)
            prec_chol[k] = scipy.linalg.solve_triangular(L, eye, lower=True).T
        return {"means": means, "covariances": covariances,
                "precisions_cholesky": prec_chol}

    def params_from_precisions(self, means: np.ndarray, precisions: np.ndarray) -> dict:
        """Return parameters from means and precision matrices (scikit-learn's
        ``precisions_init``)."""
        covariances = np.empty_like(np.asarray(precisions, dtype=np.float64))
        eye = np.eye(self.n_features)
        for k, prec in enumerate(np.asarray(precisions, dtype=np.float64)):
            Lp = self._cholesky(prec, k, what="precision")
            covariances[k] = scipy.linalg.cho_solve((Lp, True), eye)
            covariances[k] = 0.5 * (covariances[k] + covariances[k].T)
        return self.params_from_covariances(means, covariances)

    @staticmethod
    def precisions(params: Params) -> np.ndarray:
        """Return the precision matrices P_k = U_k U_k^T."""
        U = params["precisions_cholesky"]
        return U @ np.swapaxes(U, 1, 2)

    def _cholesky(self, matrix: np.ndarray, k: int, n_k: Optional[float] = None,
                  what: str = "covariance") -> np.ndarray:
        try:
            if not np.all(np.isfinite(matrix)):
                raise np.linalg.LinAlgError("non-finite entries")
            return scipy.linalg.cholesky(matrix, lower=True)
        except (np.linalg.LinAlgError, ValueError):
            held = (f" It holds {n_k:.6g} effective points in {self.n_features} "
                    "dimensions." if n_k is not None else "")
            raise DegenerateComponentError(
                f"The {what} matrix of component {k} is not positive definite, so "
                f"its Gaussian is not defined.{held} A full covariance needs more "
                f"than {self.n_features} distinct points per component; increase "
                f"reg_covar (now {self.reg_covar:g}), reduce n_components, or "
                "choose another initialisation.", component=k) from None

    # --- E-step -------------------------------------------------------------------
    def compiled_kernel(self, params: Params) -> GaussianFullKernel:
        return GaussianFullKernel(params["means"], params["precisions_cholesky"])

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        return self.compiled_kernel(params).log_density(X)

    # --- statistics ---------------------------------------------------------------
    def empty_stats(self) -> GaussianStats:
        return self.stats_from_buffer(self._stats_kernel.empty_stats())

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> GaussianStats:
        return self.stats_from_buffer(self._stats_kernel.accumulate(X, weights))

    def stats_from_buffer(self, buffer: np.ndarray) -> GaussianStats:
        k, d = self.n_components, self.n_features
        slots = np.asarray(buffer, dtype=np.float64).reshape(k, 1 + d + d * d)
        return GaussianStats(weight=slots[:, 0].copy(), mean=slots[:, 1:1 + d].copy(),
                             scatter=slots[:, 1 + d:].reshape(k, d, d).copy())

    def merge_stats(self, a: GaussianStats, b: GaussianStats) -> GaussianStats:
        # Weighted Chan-Golub-LeVeque merge of centred triples, per component.
        W = a.weight + b.weight
        safe = np.where(W > 0, W, 1.0)
        delta = b.mean - a.mean
        mean = np.where((b.weight > 0)[:, None],
                        a.mean + (b.weight / safe)[:, None] * delta, a.mean)
        mean = np.where((a.weight > 0)[:, None], mean, b.mean)
        g = np.where((a.weight > 0) & (b.weight > 0), a.weight * b.weight / safe, 0.0)
        scatter = a.scatter + b.scatter + g[:, None, None] * (
            delta[:, :, None] * delta[:, None, :])
        return GaussianStats(weight=W, mean=mean, scatter=scatter)

    # --- M-step -------------------------------------------------------------------
    def m_step(self, stats: GaussianStats, previous: Optional[Params]) -> dict:
        k_, d = self.n_components, self.n_features
        means = np.empty((k_, d))
        covariances = np.empty((k_, d, d))
        prec_chol = np.empty((k_, d, d))
        eye = np.eye(d)
        for k in range(k_):
            w = stats.weight[k]
            if not w > 0:
                if previous is None:
                    raise DegenerateComponentError(
                        f"Component {k} received no data at initialisation; reduce "
                        "n_components or choose another initialisation.", component=k)
                means[k] = previous["means"][k]
                covariances[k] = previous["covariances"][k]
                prec_chol[k] = previous["precisions_cholesky"][k]
                continue
            cov = stats.scatter[k] / w
            cov = 0.5 * (cov + cov.T)
            cov.flat[::d + 1] += self.reg_covar
            L = self._cholesky(cov, k, n_k=w)
            means[k] = stats.mean[k]
            covariances[k] = cov
            prec_chol[k] = scipy.linalg.solve_triangular(L, eye, lower=True).T
        return {"means": means, "covariances": covariances,
                "precisions_cholesky": prec_chol}

    def expected_log_likelihood(self, stats: GaussianStats, params: Params) -> float:
        # sum_k [ -W_k/2 (d log 2pi + log|Sigma_k|) - 1/2 (tr(P_k C_k)
        #         + W_k (m_k - mu_k)^T P_k (m_k - mu_k)) ], centred form (note section 6)
        U = params["precisions_cholesky"]
        d = self.n_features
        log_det_u = np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
        trace = np.sum((stats.scatter @ U) * U, axis=(1, 2))
        y = np.einsum("kj,kjl->kl", stats.mean - params["means"], U)
        quad = np.sum(y * y, axis=1)
        per_component = (stats.weight * (log_det_u - 0.5 * d * _LOG_2PI)
                         - 0.5 * (trace + stats.weight * quad))
        per_component = np.where(stats.weight > 0, per_component, 0.0)
        return float(np.sum(per_component))

    def m_step_penalty(self, stats: GaussianStats, params: Params) -> float:
        # reg_covar/2 * sum_k N_k tr(P_k), tr(P_k) = ||U_k||_F^2 (note section 7)
        if self.reg_covar == 0.0:
            return 0.0
        U = params["precisions_cholesky"]
        return float(0.5 * self.reg_covar * np.sum(stats.weight * np.sum(U * U, axis=(1, 2))))

    # --- size, sampling, numerics -------------------------------------------------
    def n_parameters(self) -> int:
        k, d = self.n_components, self.n_features
        return k * d + k * d * (d + 1) // 2

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        parts = []
        for k, c in enumerate(np.asarray(counts, dtype=np.int64)):
            L = np.linalg.cholesky(params["covariances"][k])
            z = rng.standard_normal((int(c), self.n_features))
            parts.append(params["means"][k] + z @ L.T)
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def rounding_amplification(self, params: Params) -> float:
        # 1 + sqrt(d kappa_max) (../shared/notes/em_variants_and_testing.md, 9.4)
        eig = np.linalg.eigvalsh(params["covariances"])
        kappa = float(np.max(eig[:, -1] / eig[:, 0]))
        return 1.0 + float(np.sqrt(self.n_features * kappa))


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="gaussian", factory=GaussianFamily,
        capabilities=frozenset({"compiled_kernel", "sampling", "covariance_type:full"}),
        description="multivariate normal components (covariance_type: full)")]

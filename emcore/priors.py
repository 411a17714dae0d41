"""Conjugate priors for MAP-EM (Fraley & Raftery 2007), and a Dirichlet prior on the weights.

Per covariance type (docs/gaussian.md#map):

    full:      Sigma_k ~ InverseWishart(dof, scale),  mu_k | Sigma_k ~ N(mean, Sigma_k / kappa)
    tied:      one Sigma ~ InverseWishart(dof, scale), mu_k | Sigma ~ N(mean, Sigma / kappa)
    diag:      sigma^2_kj ~ InverseGamma(dof/2, scale/2), mu_kj | . ~ N(mean_j, sigma^2_kj / kappa)
    spherical: sigma^2_k ~ InverseGamma(dof/2, scale/2),  mu_k | . ~ N(mean, sigma^2_k I / kappa)
    weights:   pi ~ Dirichlet(weight_concentration).

mclust's ten other models take the same hyperparameters in the form mclust's
``priorControl`` gives them (docs/gaussian.md#mclust-prior): a number varsigma^2 for
EII, EEI, VEI, EVI, a matrix for the others (``resolve``'s ``covariance_type``).

With a prior, EM maximises log-likelihood + log prior (MAP-EM) and keeps that sum
non-decreasing; degenerate components (identical points, a component collapsing
on one point, fewer points than dimensions) cannot occur, since every covariance
is at least scale / (dof + N_k + d + 2).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from emcore._float import UNIT_ROUNDOFF

__all__ = ["GaussianPrior", "ResolvedGaussianPrior"]


@dataclass(frozen=True)
class ResolvedGaussianPrior:
    """A :class:`GaussianPrior` with every hyperparameter filled in for the data."""
    shrinkage: float                  #: kappa >= 0
    mean: np.ndarray                  #: mu_0, shape (d,)
    dof: float                        #: nu > d - 1
    scale: np.ndarray                 #: Lambda, symmetric positive definite (d, d)
    weight_concentration: np.ndarray  #: alpha, shape (n_components,), all >= 1
    covariance_type: str = "full"     #: the model the prior is for
    #: varsigma^2 of the inverse-gamma priors ('diag', 'spherical'); None otherwise
    scale_scalar: Optional[float] = None


@dataclass(frozen=True)
class GaussianPrior:
    """Hyperparameters of the conjugate prior; None means mclust's default.

    Parameters
    ----------
    shrinkage : float, default 0.01
        kappa >= 0, the prior's weight on ``mean`` in points (0: no prior on the means).
    mean : array of shape (n_features,), optional
        mu_0; default: the column means of X.
    dof : float, optional
        nu > n_features - 1; default: n_features + 2. (mclust's VEV prior has no
        power term: nu does not enter that model's M-step; docs/gaussian.md#mclust-prior.)
    scale : array of shape (n_features, n_features), or float, optional
        For 'full' and 'tied': Lambda of the inverse-Wishart prior, symmetric
        positive definite; for 'diag' and 'spherical': varsigma^2 > 0 of the
        inverse-gamma priors, default (sum_j var(x_j) / d) / n_components^(2/d).
        Default for 'full'/'tied': cov(X) / n_components^(2/d)
        (the diagonal of cov(X) when n_samples <= n_features; where cov(X) is
        singular, e.g. a constant column, its diagonal with zero variances replaced
        by the mean positive variance, or 1 if X has no spread at all).
    weight_concentration : float or array of shape (n_components,), default 1.0
        Dirichlet alpha, every entry >= 1 (the posterior mode is undefined below
        1); 1 gives the maximum-likelihood weights, as mclust.

    These are mclust's ``defaultPrior`` values (mclust 6), which
    ``GaussianMixture(prior='default')`` uses.
    """
    shrinkage: float = 0.01
    mean: Optional[Any] = None
    dof: Optional[float] = None
    scale: Optional[Any] = None
    weight_concentration: Any = 1.0

    def resolve(self, X: np.ndarray, n_components: int,
                sample_weight: Optional[np.ndarray] = None,
                covariance_type: str = "full") -> ResolvedGaussianPrior:
        """Fill in the defaults from the data (weights act as repetitions).

        ``covariance_type`` is the kind of scale: 'full' or 'tied' (a matrix), 'diag'
        or 'spherical' (a number); for mclust's models, the kind their prior takes
        ('spherical' for EII and VII, 'diag' for EEI, VEI, EVI and VVI, 'tied' for
        EEE, 'full' for the others; docs/gaussian.md#mclust-prior).

        Raises ValueError naming the hyperparameter that is invalid.
        """
        n, d = X.shape
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float(w.sum())

        def bad(name, what, value):
            return ValueError(f"The 'prior' parameter's {name} must be {what}. "
                              f"Got {value!r} instead.")

        kappa = self.shrinkage
        if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or \
                not np.isfinite(kappa) or kappa < 0:
            raise bad("shrinkage", "a finite number >= 0", kappa)
        centre, D = _centred(X, w, total)
        # the unbiased variance of frequency weights (weight 2 = the row twice), as R's
        # var: total - 1; it breaks down below a total of 2 (weights that sum to 1 or
        # less divided by ~0), where total / 2 takes over (continuous at 2)
        denominator = total - 1.0 if total > 2.0 else total / 2.0
        if self.mean is None:
            mean = centre
        else:
            mean = np.asarray(self.mean, dtype=np.float64)
            if mean.shape != (d,) or not np.all(np.isfinite(mean)):
                raise bad("mean", f"a finite array of shape ({d},)", self.mean)
        dof = d + 2.0 if self.dof is None else self.dof
        if isinstance(dof, bool) or not isinstance(dof, numbers.Real) or \
                not np.isfinite(dof) or dof <= d - 1:
            raise bad("dof", f"a finite number > n_features - 1 = {d - 1}", self.dof)
        scalar = None
        if covariance_type in ("diag", "spherical"):
            var = (w @ (D * D)) / denominator
            if self.scale is None:
                mean_var = float(np.mean(var))
                scalar = (mean_var if mean_var > 0 else 1.0) / n_components ** (2.0 / d)
            else:
                scalar = self.scale
                if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real) or \
                        not np.isfinite(scalar) or scalar <= 0:
                    raise bad("scale", f"a finite number > 0 for covariance_type="
                                       f"{covariance_type!r}", self.scale)
                scalar = float(scalar)
            # the matrix the M-step adds: varsigma^2 per variance ('diag'), or spread
            # over the trace ('spherical': tr = varsigma^2)
            scale = np.eye(d) * (scalar if covariance_type == "diag" else scalar / d)
        elif self.scale is None:
            # unbiased covariance, frequency weights (weight 2 = the row twice), as R's var
            cov = (D * w[:, None]).T @ D / denominator
            if n <= d or not _is_positive_definite(cov, n_rows=n):
                # mclust takes the diagonal when n <= d; a constant column (or all rows
                # identical) leaves mclust's default undefined: zero variances become
                # the mean positive variance, or 1 if the data have no spread at all
                var = np.diag(cov).copy()
                positive = var > 0
                var[~positive] = var[positive].mean() if positive.any() else 1.0
                cov = np.diag(var)
            scale = cov / n_components ** (2.0 / d)
        else:
            scale = np.asarray(self.scale, dtype=np.float64)
            if scale.shape != (d, d) or not np.all(np.isfinite(scale)) or \
                    not np.allclose(scale, scale.T):
                raise bad("scale", f"a finite symmetric ({d}, {d}) matrix", self.scale)
        scale = 0.5 * (scale + scale.T)
        if not _is_positive_definite(scale):
            raise bad("scale", "positive definite", self.scale)
        try:
            alpha = np.broadcast_to(np.asarray(self.weight_concentration, dtype=np.float64),
                                    (n_components,)).copy()
        except (TypeError, ValueError):
            alpha = None
        if alpha is None or not np.all(np.isfinite(alpha)) or np.any(alpha < 1):
            raise bad("weight_concentration",
                      f"a number or ({n_components},) array of numbers >= 1",
                      self.weight_concentration)
        return ResolvedGaussianPrior(float(kappa), mean, float(dof), scale, alpha,
                                     covariance_type, scalar)


def _centred(X: np.ndarray, w: np.ndarray, total: float):
    """The weighted column means and the rows about them, D = X - mean.

    A column that is exactly constant over the rows of positive weight gets that
    constant as its mean and a column of exact zeros in D, so its variance is
    exactly 0 (a mean rounded by w @ X / total leaves ~u |x| in every row, a
    variance of rounding noise, ~1e-33 for x = 0.1). The other columns get the
    two-pass corrected mean (Higham 2002, 1.9): the first pass's rounding is
    removed by subtracting the weighted mean of the residuals.
    """
    rows = X[w > 0] if X.shape[0] else X
    constant = (np.all(rows == rows[0], axis=0) if rows.shape[0]
                else np.zeros(X.shape[1], dtype=bool))
    centre = (w @ X) / total
    centre = centre + (w @ (X - centre)) / total
    centre[constant] = rows[0, constant]
    D = X - centre
    D[:, constant] = 0.0
    return centre, D


def _is_positive_definite(matrix: np.ndarray, n_rows: int = 0) -> bool:
    """Numerically positive definite: condition number below 1 / (d eps), the
    threshold the Gaussian family applies to covariances; for a covariance summed
    over ``n_rows`` rows, also smallest eigenvalue above its rounding: each entry
    is off by up to gamma_(n+2) sum_i w_i |d_ij| |d_il|, the eigenvalues by up to d
    times that, so below 2 d (n + 2) u lambda_max an eigenvalue is indistinguishable
    from 0 (two distinct points in 2-D gave a 'scale' of condition 7e15)."""
    if not np.all(np.isfinite(matrix)):
        return False
    d = matrix.shape[0]
    eig = np.linalg.eigvalsh(matrix)
    floor = max(d * np.finfo(np.float64).eps, 2.0 * d * (n_rows + 2) * UNIT_ROUNDOFF)
    return bool(eig[0] > eig[-1] * floor)

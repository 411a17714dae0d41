"""Mixtures of Gaussian linear regressions (``linear_regression``).

Component k says y = z^T beta_k + e, e ~ N(0, sigma_k^2), where y is one column
of X (the *response*) and z the other columns (the *covariates*), with a leading
1 when ``intercept``: the model of R's flexmix ``FLXMRglm()`` and mixtools'
``regmixEM``. The density is conditional, p(y | z), normalised over y only: the
covariates are not modelled (BIC and AIC count the coefficients and variances
only, as flexmix does).

Parameters: ``coefficients`` (K, p), p = number of covariates (+ 1 with the
intercept, first), and ``variances`` (K,).

Statistics: per component the weight N_k = sum_i w_ik and the upper-triangular
factor R_k of the weighted augmented design sqrt(w_ik) ([z_i, y_i] - c_k), centred
at reference points c_k (the intercept absorbs them exactly) (a QR
factorisation by LAPACK's geqrf, never the normal equations, whose condition
number is the square of the design's). Merging stacks two factors and takes the
factor of the stack (the tall-skinny QR, TSQR): the statistics of the union of
the rows, to rounding. With R_k = [[R_zz, r_zy], [0, rho]], the weighted
residual sum of squares at any beta is ||R_zz beta - r_zy||^2 + rho^2, so the
M-step is a triangular solve (weighted least squares; beta's intercept then moved
back from c_k), sigma_k^2 = rho^2 / N_k,
and the expected log-likelihood needs no second pass over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.linalg

from emcore import DegenerateComponentError
from emcore.plugin_api import UNIT_ROUNDOFF, Family, FamilyRecord, Params, hookimpl

__all__ = ["LinearRegressionFamily", "RegressionStats"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class RegressionStats:
    """Sufficient statistics of K regression components.

    weight (K,) = sum_i w_ik; shift (K, p + 1): reference points c_k of the
    augmented rows a_i = [z_i, y_i] (the weighted means, as rounded; 0 in the
    intercept's column, and everywhere without an intercept); factor (K, p + 1,
    p + 1): upper-triangular R_k with R_k^T R_k = sum_i w_ik (a_i - c_k)(a_i - c_k)^T,
    each row of R_k with a non-negative diagonal entry. The intercept absorbs the
    shift exactly (column 0 is the weights' square roots), so the rows are
    centred, and nothing is lost to the data's offset.
    """
    weight: np.ndarray
    shift: np.ndarray
    factor: np.ndarray


def _triangular_factor(A: np.ndarray, size: int) -> np.ndarray:
    """The (size, size) upper-triangular R of A = Q R (A has ``size`` columns), rows
    signed so that the diagonal is non-negative; zero rows below A's row count."""
    R = np.zeros((size, size))
    if A.shape[0]:
        top = scipy.linalg.qr(A, mode="r", check_finite=False)[0][:size]
        R[:top.shape[0]] = top
    sign = np.where(np.diagonal(R) < 0, -1.0, 1.0)
    return R * sign[:, None]


class LinearRegressionFamily(Family):
    """Gaussian linear regression components on one response column of X.

    Parameters
    ----------
    n_components, n_features : int
        K, and the columns of X (the response and the covariates).
    response : int, optional
        The column of X holding the response y (negative counts from the end).
        Default: the last column (where ``MixtureModel.fit(X, y)`` puts y).
    intercept : bool, default True
        Give each component an intercept (a first coefficient on a column of ones).
    """

    #: start from the plain partition mixed with a 5% uniform share: every
    #: component then sees every row, so no starting weighted design is rank
    #: deficient merely because the partition left a component few rows
    init_smoothing = 0.05

    def __init__(self, n_components: int, n_features: int, *,
                 response: Optional[int] = None, intercept: bool = True):
        super().__init__(n_components, n_features)
        d = self.n_features
        if response is None:
            response = d - 1
        if isinstance(response, bool) or not isinstance(response, (int, np.integer)) \
                or not -d <= response < d:
            raise ValueError(f"The 'response' parameter of LinearRegressionFamily must be "
                             f"a column index in [{-d}, {d - 1}] (n_features={d}). Got "
                             f"{response!r} instead.")
        if not isinstance(intercept, (bool, np.bool_)):
            raise ValueError("The 'intercept' parameter of LinearRegressionFamily must be "
                             f"a bool. Got {intercept!r} instead.")
        self.response = int(response)
        self.intercept = bool(intercept)
        #: the column of X the family models given the others (plugin_api.Family)
        self.response_column = int(response) % d
        self.covariate_columns = np.array([j for j in range(d) if j != self.response_column],
                                          dtype=np.intp)
        self.n_coefficients = self.covariate_columns.size + int(self.intercept)
        if self.n_coefficients == 0:
            raise ValueError("LinearRegressionFamily needs at least one coefficient: with "
                             "intercept=False, X must have a covariate column besides the "
                             f"response. Got n_features={d} instead.")

    # --- the design -----------------------------------------------------------------
    def _design(self, X: np.ndarray) -> tuple:
        """(Z, y): the design (n, p) (ones first with the intercept) and the response."""
        X = np.asarray(X, dtype=np.float64)
        Z = X[:, self.covariate_columns]
        if self.intercept:
            Z = np.hstack([np.ones((X.shape[0], 1)), Z])
        return Z, X[:, self.response_column]

    # --- E-step -------------------------------------------------------------------------
    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        Z, y = self._design(X)
        beta = np.asarray(params["coefficients"], dtype=np.float64)
        var = np.asarray(params["variances"], dtype=np.float64)
        resid = y[:, None] - Z @ beta.T                         # (n, K)
        return -0.5 * (_LOG_2PI + np.log(var)) - 0.5 * resid * resid / var

    # --- statistics -----------------------------------------------------------------
    def empty_stats(self) -> RegressionStats:
        k, m = self.n_components, self.n_coefficients + 1
        return RegressionStats(np.zeros(k), np.zeros((k, m)), np.zeros((k, m, m)))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> RegressionStats:
        Z, y = self._design(X)
        A = np.hstack([Z, y[:, None]])
        W = np.asarray(weights, dtype=np.float64)
        m = A.shape[1]
        n_k = W.sum(axis=0)
        shift = np.zeros((self.n_components, m))
        factor = np.empty((self.n_components, m, m))
        for k in range(self.n_components):
            root = np.sqrt(W[:, k])
            keep = root > 0
            if self.intercept and n_k[k] > 0:
                shift[k, 1:] = (W[:, k] @ A[:, 1:]) / n_k[k]
            factor[k] = _triangular_factor((A[keep] - shift[k]) * root[keep, None], m)
        return RegressionStats(n_k, shift, factor)

    def _moved(self, R: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The factor of the same rows about the reference point ``new`` instead of
        ``old``: A - 1 new^T = (A - 1 old^T)(I - e_0 (new - old)^T), and R's first
        column is R_00 e_0, so only R's first row changes (exact up to one rounding)."""
        if not self.intercept:
            return R
        out = R.copy()
        out[0, 1:] -= R[0, 0] * (new[1:] - old[1:])
        return out

    def merge_stats(self, a: RegressionStats, b: RegressionStats) -> RegressionStats:
        m = a.factor.shape[1]
        weight = a.weight + b.weight
        shift = np.where(weight[:, None] > 0,
                         (a.weight[:, None] * a.shift + b.weight[:, None] * b.shift)
                         / np.where(weight > 0, weight, 1.0)[:, None], a.shift)
        factor = np.stack([_triangular_factor(np.vstack([self._moved(ra, ca, c),
                                                         self._moved(rb, cb, c)]), m)
                           for ra, ca, rb, cb, c in zip(a.factor, a.shift, b.factor,
                                                        b.shift, shift)])
        return RegressionStats(weight, shift, factor)

    def scale_stats(self, stats: RegressionStats, factor: float) -> RegressionStats:
        return RegressionStats(stats.weight * factor, stats.shift,
                               stats.factor * math.sqrt(factor))

    # --- M-step -------------------------------------------------------------------------
    def _split(self, R: np.ndarray) -> tuple:
        p = self.n_coefficients
        return R[:p, :p], R[:p, p], R[p, p]

    def _shifted(self, beta: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Coefficients about the reference point c: the intercept becomes
        beta_0 + c_z . beta_z - c_y (the other coefficients are unchanged)."""
        if not self.intercept:
            return beta
        out = np.array(beta, dtype=np.float64)
        out[0] = beta[0] + c[1:-1] @ beta[1:] - c[-1]
        return out

    def m_step(self, stats: RegressionStats, previous: Optional[Params]) -> dict:
        k_all, p = self.n_components, self.n_coefficients
        beta = np.empty((k_all, p))
        var = np.empty(k_all)
        for k in range(k_all):
            n_k = float(stats.weight[k])
            if n_k <= 0 and previous is not None:
                beta[k] = previous["coefficients"][k]
                var[k] = previous["variances"][k]
                continue
            Rzz, rzy, rho = self._split(stats.factor[k])
            s = np.linalg.svd(Rzz, compute_uv=False)
            # Householder QR is backward stable: R is the exact factor of A + dA with
            # ||dA|| <= gamma ||A|| (Higham, thm 19.4), so singular values of R_zz
            # below p u s_max (numpy's matrix_rank default) are rounding noise: the
            # component's weighted design is rank deficient and beta is not identified
            if n_k <= 0 or s[-1] <= p * UNIT_ROUNDOFF * s[0] or s[0] == 0:
                raise DegenerateComponentError(
                    f"component {k}: its weighted design (weight {n_k:.6g}, {p} "
                    f"coefficients) is rank deficient (singular values "
                    f"{s[0]:.3g} ... {s[-1]:.3g}): the regression coefficients are not "
                    "identified (collinear covariates, or fewer rows than coefficients "
                    "in the component)", k)
            b = scipy.linalg.solve_triangular(Rzz, rzy, check_finite=False)
            c = stats.shift[k]
            if self.intercept:      # back from the reference point (see _shifted)
                b[0] = b[0] - c[1:-1] @ b[1:] + c[-1]
            beta[k] = b
            # rho is the residual norm to u ||A||_F (the same backward error): a
            # smaller residual is an exact fit, whose variance 0 is not a density
            scale = float(np.linalg.norm(stats.factor[k]))
            if not abs(rho) > (p + 1) * UNIT_ROUNDOFF * scale:
                raise DegenerateComponentError(
                    f"component {k}: its rows lie on a hyperplane (residual sum of "
                    f"squares {rho * rho:.3g} at rounding level): the variance would be "
                    "0", k)
            var[k] = rho * rho / n_k
        return {"coefficients": beta, "variances": var}

    def _rss(self, stats: RegressionStats, params: Params) -> np.ndarray:
        """Weighted residual sum of squares per component at ``params``, from R:
        ||R_zz beta' - r_zy||^2 + rho^2 with beta' the coefficients about the shift."""
        beta = np.asarray(params["coefficients"], dtype=np.float64)
        out = np.empty(self.n_components)
        for k in range(self.n_components):
            Rzz, rzy, rho = self._split(stats.factor[k])
            r = Rzz @ self._shifted(beta[k], stats.shift[k]) - rzy
            out[k] = float(r @ r) + rho * rho
        return out

    def expected_log_likelihood(self, stats: RegressionStats, params: Params) -> float:
        var = np.asarray(params["variances"], dtype=np.float64)
        rss = self._rss(stats, params)
        return float(np.sum(-0.5 * stats.weight * (_LOG_2PI + np.log(var))
                            - 0.5 * rss / var))

    # --- rounding bounds (docs/elbo_chain.md#tolerances) ---------------------------
    def _raw_norms(self, stats: RegressionStats) -> tuple:
        """Upper bounds on ||y||_w and ||Z||_w = sqrt(sum_i w_i |z_i|^2) of the rows
        (not centred): A = A_c + sqrt(w) c^T, so ||A e_j|| <= ||R e_j|| + sqrt(N) |c_j|."""
        p = self.n_coefficients
        root_n = np.sqrt(np.maximum(stats.weight, 0.0))
        y = np.linalg.norm(stats.factor[:, :, p], axis=1) + root_n * np.abs(stats.shift[:, p])
        z = (np.sqrt(np.sum(stats.factor[:, :, :p] ** 2, axis=(1, 2)))
             + root_n * np.linalg.norm(stats.shift[:, :p], axis=1))
        return y, z

    def log_density_rounding(self, stats: RegressionStats, params: Params) -> float:
        """The residual y - z^T beta cancels: its error is at most (p + 2) u
        (|y| + |z| |beta|) per row (a dot product and a subtraction, Higham eq.
        3.5), which moves r^2 / (2 sigma^2) by |r| times that over sigma^2; by
        Cauchy-Schwarz the q-weighted sum over the rows is at most
        (p + 2) u (||y||_w + ||Z||_w ||beta||) sqrt(RSS_w) / sigma^2 per component."""
        y, z = self._raw_norms(stats)
        b = np.linalg.norm(np.asarray(params["coefficients"], dtype=np.float64), axis=1)
        var = np.asarray(params["variances"], dtype=np.float64)
        rss = np.maximum(self._rss(stats, params), 0.0)
        p = self.n_coefficients
        return float(np.sum((p + 2) * UNIT_ROUNDOFF * (y + z * b) * np.sqrt(rss) / var))

    def expected_log_likelihood_magnitude(self, stats: RegressionStats,
                                          params: Params) -> float:
        """R_k is the exact factor of the centred rows perturbed by u ||A_k||_F
        (backward error of the QR), which moves the residual norm
        ||R_zz beta' - r_zy|| (and rho) by about u ||A_k|| (1 + ||beta'_k||); the
        shifted intercept beta'_0 carries (p + 1) u (|beta_0| + |c_z||beta_z| + |c_y|),
        moving it by R_00 times that. With s_k the sum of the two, RSS_k / (2 sigma_k^2)
        moves by u s_k sqrt(RSS_k) / sigma_k^2 plus a second-order u^2 s_k^2 /
        (2 sigma_k^2); the log terms N_k |log(2 pi sigma_k^2)| / 2 are rounded
        relatively. M_Q is the sum of these over u."""
        beta = np.asarray(params["coefficients"], dtype=np.float64)
        var = np.asarray(params["variances"], dtype=np.float64)
        rss = np.maximum(self._rss(stats, params), 0.0)
        p = self.n_coefficients
        scale = np.empty(self.n_components)
        for k in range(self.n_components):
            c, R = stats.shift[k], stats.factor[k]
            shifted = self._shifted(beta[k], c)
            scale[k] = np.linalg.norm(R) * (1.0 + np.linalg.norm(shifted))
            if self.intercept:
                scale[k] += abs(R[0, 0]) * (p + 1) * (abs(beta[k, 0]) + np.abs(c[1:-1])
                                                      @ np.abs(beta[k, 1:]) + abs(c[-1]))
        return float(np.sum(scale * np.sqrt(rss) / var
                            + UNIT_ROUNDOFF * scale * scale / (2.0 * var)
                            + 0.5 * stats.weight * (_LOG_2PI + np.abs(np.log(var)))))

    def parameter_rounding(self, stats: RegressionStats, params: Params) -> float:
        """Q is quadratic in beta with Hessian Z_w^T Z_w / sigma^2: rounding beta
        (|d beta| <= u |beta|) costs at most u^2 ||Z||_w^2 ||beta||^2 / (2 sigma^2); the
        variance's rounding costs N_k u^2 (second order in d sigma^2 / sigma^2)."""
        _, z = self._raw_norms(stats)
        b = np.linalg.norm(np.asarray(params["coefficients"], dtype=np.float64), axis=1)
        var = np.asarray(params["variances"], dtype=np.float64)
        u2 = UNIT_ROUNDOFF ** 2
        return float(np.sum(u2 * (z * b) ** 2 / (2.0 * var) + u2 * stats.weight))

    # --- parameter space, size, sampling -------------------------------------------
    def validate_params(self, params: Params) -> None:
        """coefficients: finite (K, p); variances: finite and > 0, (K,)."""
        k, p = self.n_components, self.n_coefficients
        for key, shape in (("coefficients", (k, p)), ("variances", (k,))):
            value = np.asarray(params[key])
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ValueError(f"{key!r} must be a finite array of shape {shape}; got "
                                 f"shape {value.shape}")
        var = np.asarray(params["variances"])
        if np.any(var <= 0):
            j = int(np.argmax(var <= 0))
            raise ValueError(f"'variances' of component {j} must be > 0; got {var[j]!r}")

    def n_parameters(self) -> int:
        """K (p + 1): the coefficients and the variance of each component."""
        return self.n_components * (self.n_coefficients + 1)

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """``counts[k]`` rows from component k: covariates standard normal (the family
        does not model them; any design serves), the response drawn from
        N(z^T beta_k, sigma_k^2) given them."""
        counts = np.asarray(counts, dtype=np.intp)
        beta = np.asarray(params["coefficients"], dtype=np.float64)
        sd = np.sqrt(np.asarray(params["variances"], dtype=np.float64))
        X = np.empty((int(counts.sum()), self.n_features))
        start = 0
        for k, c in enumerate(counts):
            block = X[start:start + c]
            block[:, self.covariate_columns] = rng.standard_normal(
                (c, self.covariate_columns.size))
            Z, _ = self._design(block)
            block[:, self.response_column] = Z @ beta[k] + sd[k] * rng.standard_normal(c)
            start += c
        return X

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """Coefficients uniform in [-3, 3]; variances 10^U(-1, 1), or 10^U(-8, -6)
        (nearly degenerate: almost exact fits)."""
        k = self.n_components
        low, high = (-8.0, -6.0) if nearly_degenerate else (-1.0, 1.0)
        return {"coefficients": rng.uniform(-3.0, 3.0, (k, self.n_coefficients)),
                "variances": 10.0 ** rng.uniform(low, high, k)}


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="linear_regression", factory=LinearRegressionFamily,
        capabilities=frozenset({"sampling", "response"}),
        description="Gaussian linear regressions of a response column on the others "
                    "(flexmix FLXMRglm, mixtools regmixEM); fit(X, y)")]

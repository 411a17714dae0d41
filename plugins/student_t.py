"""The multivariate Student-t family (``student_t``): full or diagonal scale matrices,
a per-component degrees of freedom nu_k, fixed or estimated.

A t component is a Gaussian scale mixture: u ~ Gamma(nu/2, rate nu/2) and
x | u ~ N(mu, Sigma / u). EM runs on (z, u): given the pass's parameters theta_0,
the posterior of u_ik is Gamma((nu_k + d)/2, rate (nu_k + delta_ik)/2), delta_ik the
squared Mahalanobis distance of x_i from component k, so the E-step weights a
row's Gaussian statistics by q_ik E[u_ik] = q_ik (nu_k + d) / (nu_k + delta_ik),
and a far outlier gets a weight near 0. The statistics therefore depend on
theta_0 (``stats_need_params``, emcore.plugin_api.Family), and the expected
complete-data log-likelihood from them includes the entropy of q(u):

    Q(theta) = sum_ik q_ik { E_q(u) log p(x_i, u_ik | theta_k) + H(q(u_ik)) },

a function of the statistics and theta that equals sum_ik q_ik log t(x_i | theta_k)
at theta = theta_0 (the identity of the ELBO with the exact posterior of u) and
lies below it elsewhere. So the engine's chain loglik(theta_t) = ELBO(q_t, theta_t)
<= ELBO(q_t, theta_{t+1}) <= loglik(theta_{t+1}) holds exactly as for any family.
The M-step maximises Q jointly: mu and Sigma in closed form (weighted by E[u]),
and each estimated nu_k as the root of a decreasing function of one variable
(the ECM step of Liu & Rubin 1995: Q separates, so this is the joint maximiser),
found by Brent's method on log nu to a relative accuracy ``DOF_RTOL``, in the box
``DOF_BOUNDS``, where the concave objective's maximiser is the clipped root.
Derivation: docs/student_t.md.

Parameters: ``means`` (k, d), ``covariances`` (k, d, d) (the scale matrices
Sigma_k; the covariance of x is nu/(nu - 2) Sigma for nu > 2),
``precisions_cholesky`` (k, d, d) (U with Sigma^{-1} = U U^T, as the Gaussian
family) and ``dofs`` (k,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import scipy.optimize
from scipy.special import digamma, gammaln, polygamma

from emcore import DegenerateComponentError
from emcore.plugin_api import UNIT_ROUNDOFF, Family, FamilyRecord, Params, hookimpl
from emcore.plugins.gaussian import GaussianFamily, GaussianStats

__all__ = ["DOF_BOUNDS", "DOF_RTOL", "StudentTFamily", "StudentTStats"]

DOF_BOUNDS = (0.1, 1000.0)
"""The box an estimated nu lies in: beyond 1000 a t is a Gaussian to within
about 1e-3 nats per point; below 0.1 its tails are heavier than any data need."""

DOF_RTOL = 1e-13
"""Relative accuracy of an estimated nu (Brent's method on log nu)."""

DOF_START = 10.0
"""An estimated nu's starting value in ``initial_params``."""

SEED_TRIM = 0.05
"""The share of the row weight, farthest from the data's robust centre, that draws
no seed of a starting partition (``seeding_weights``): the trimming level of
trimmed k-means and tclust's default (García-Escudero et al. 2008)."""

_ROBUST_ROWS = 100_000
"""The robust centre and scales are taken from at most about this many rows
(every m-th row of a larger X): medians to a relative rank error ~ 1/sqrt(rows)."""

_BLOCK = 65536
"""Rows read at a time from X (a chunked source) for the robust distances."""

_LOG_2PI = np.log(2.0 * np.pi)


@dataclass(frozen=True)
class StudentTStats:
    """Statistics of K t components, at the parameters theta_0 of the pass.

    ``gauss``: the Gaussian family's statistics of the rows weighted by
    q_ik E[u_ik] (its ``weight`` is U_k = sum_i q_ik E[u_ik]); ``weight`` (k,) N_k =
    sum_i q_ik; ``log_scale`` (k,) sum_i q_ik E[log u_ik]; ``entropy`` (k,)
    sum_i q_ik H(q(u_ik)); ``abs_log_scale`` and ``abs_entropy`` (k,) the same sums
    of the magnitudes of their terms (the rounding bound). All additive.
    Without parameters (a starting partition) u = 1: E[log u] = 0 and no entropy.
    """
    gauss: GaussianStats
    weight: np.ndarray
    log_scale: np.ndarray
    entropy: np.ndarray
    abs_log_scale: np.ndarray
    abs_entropy: np.ndarray


class StudentTFamily(Family):
    """Multivariate Student-t components, fitted by EM over the latent scales.

    Parameters
    ----------
    n_components, n_features : int
        K and d.
    covariance_type : {'full', 'diag'}, default 'full'
        Full or diagonal scale matrices Sigma_k.
    dof : None, float or array-like of shape (n_components,), default None
        The degrees of freedom nu_k: None estimates each in ``DOF_BOUNDS`` (an
        M-step to relative accuracy ``DOF_RTOL``, starting at ``DOF_START``); a
        number (or one per component, each > 0) fixes them.

    The statistics depend on the pass's parameters (``stats_need_params``): the
    engine hands them to ``chunk_stats``.
    """

    #: the E-step's scale weights E[u_ik] need the pass's parameters
    stats_need_params = True
    #: the start mixes a uniform share into the starting partition
    #: (Family.init_smoothing), so a cell of few rows does not start singular; the
    #: seeds and the start's moments leave out the farthest rows (seeding_weights,
    #: initial_params; docs/student_t.md#start)
    init_smoothing = 0.05

    def __init__(self, n_components: int, n_features: int, *,
                 covariance_type: str = "full",
                 dof: Union[None, float, np.ndarray] = None):
        super().__init__(n_components, n_features)
        if covariance_type not in ("full", "diag"):
            raise ValueError("The 'covariance_type' parameter of StudentTFamily must be "
                             f"'full' or 'diag'. Got {covariance_type!r} instead.")
        if dof is not None:
            arr = np.broadcast_to(np.asarray(dof, dtype=np.float64),
                                  (self.n_components,)).copy()
            if not np.all(np.isfinite(arr) & (arr > 0)):
                raise ValueError("The 'dof' parameter of StudentTFamily must be None, a "
                                 "finite number > 0 or one per component. Got "
                                 f"{dof!r} instead.")
            dof = arr
        self.covariance_type = covariance_type
        self.dof = dof
        self._gauss = GaussianFamily(self.n_components, self.n_features,
                                     covariance_type=covariance_type, reg_covar=0.0)

    @property
    def estimates_dof(self) -> bool:
        """True if the M-step estimates nu (``dof=None``)."""
        return self.dof is None

    # --- E-step -------------------------------------------------------------------
    def _mahalanobis(self, X: np.ndarray, params: Params) -> np.ndarray:
        """delta_ik = ||(x_i - mu_k) U_k||^2, shape (n, k)."""
        means, U = params["means"], params["precisions_cholesky"]
        out = np.empty((X.shape[0], self.n_components))
        for k in range(self.n_components):
            if self.covariance_type == "diag":
                y = (X - means[k]) * np.diagonal(U[k])
            else:
                y = (X - means[k]) @ U[k]
            out[:, k] = np.einsum("ij,ij->i", y, y)
        return out

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        d = self.n_features
        nu = np.asarray(params["dofs"], dtype=np.float64)
        U = params["precisions_cholesky"]
        log_det_u = np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
        const = (gammaln(0.5 * (nu + d)) - gammaln(0.5 * nu)
                 - 0.5 * d * np.log(nu * np.pi) + log_det_u)
        delta = self._mahalanobis(X, params)
        return const - 0.5 * (nu + d) * np.log1p(delta / nu)

    # --- statistics ---------------------------------------------------------------
    def empty_stats(self) -> StudentTStats:
        z = np.zeros(self.n_components)
        return StudentTStats(self._gauss.empty_stats(), z, z.copy(), z.copy(), z.copy(),
                             z.copy())

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray,
                    params: Optional[Params] = None) -> StudentTStats:
        W = np.asarray(weights, dtype=np.float64)
        if params is None:
            # a starting partition: u = 1 (the Gaussian's statistics)
            z = np.zeros(self.n_components)
            return StudentTStats(self._gauss.chunk_stats(X, W), W.sum(axis=0), z,
                                 z.copy(), z.copy(), z.copy())
        d = self.n_features
        nu = np.asarray(params["dofs"], dtype=np.float64)
        a = 0.5 * (nu + d)                                   # posterior shape (k,)
        log_b = np.log(0.5 * (nu + self._mahalanobis(X, params)))   # log rate (n, k)
        mean_u = a * np.exp(-log_b)                          # E[u] = a / b
        psi_a, lg_a = digamma(a), gammaln(a)
        log_u = psi_a - log_b                                # E[log u]
        # H(Gamma(a, b)) = a - log b + lgamma(a) + (1 - a) psi(a)
        entropy = (a + lg_a + (1.0 - a) * psi_a) - log_b
        abs_log = np.abs(psi_a) + np.abs(log_b)
        abs_ent = (a + np.abs(lg_a) + np.abs((1.0 - a) * psi_a)) + np.abs(log_b)
        return StudentTStats(self._gauss.chunk_stats(X, W * mean_u), W.sum(axis=0),
                             np.sum(W * log_u, axis=0), np.sum(W * entropy, axis=0),
                             np.sum(W * abs_log, axis=0), np.sum(W * abs_ent, axis=0))

    def merge_stats(self, a: StudentTStats, b: StudentTStats) -> StudentTStats:
        return StudentTStats(self._gauss.merge_stats(a.gauss, b.gauss), a.weight + b.weight,
                             a.log_scale + b.log_scale, a.entropy + b.entropy,
                             a.abs_log_scale + b.abs_log_scale, a.abs_entropy + b.abs_entropy)

    def scale_stats(self, stats: StudentTStats, factor: float) -> StudentTStats:
        return StudentTStats(self._gauss.scale_stats(stats.gauss, factor),
                             stats.weight * factor, stats.log_scale * factor,
                             stats.entropy * factor, stats.abs_log_scale * factor,
                             stats.abs_entropy * factor)

    # --- M-step -------------------------------------------------------------------
    def m_step(self, stats: StudentTStats, previous: Optional[Params]) -> dict:
        d, k = self.n_features, self.n_components
        n = stats.weight
        has = n > 0
        if not has.all() and previous is None:
            j = int(np.flatnonzero(~has)[0])
            raise DegenerateComponentError(
                f"Student-t component {j} received no data at initialisation; reduce "
                "n_components or choose another initialisation.", component=j)
        mean, scatter = stats.gauss.centred()
        den = np.where(has, n, 1.0)
        if self.covariance_type == "diag":
            cov = (scatter / den[:, None])[:, :, None] * np.eye(d)
        else:
            cov = scatter / den[:, None, None]
            cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        means = mean.copy()
        if not has.all():
            # N_k = 0: Q does not depend on theta_k; keep the previous values
            means[~has] = previous["means"][~has]
            cov[~has] = previous["covariances"][~has]
        try:
            out = self._gauss.params_from_covariances(means, cov, n_k=n)
        except DegenerateComponentError as exc:
            raise DegenerateComponentError(
                f"The scale matrix of Student-t component {exc.component} is not "
                "numerically positive definite: the rows it holds, weighted by their "
                "latent scales, span fewer than n_features dimensions (a component "
                "collapsing on a few points, where the t-mixture likelihood is unbounded "
                "as the Gaussian's is); reduce n_components or choose another "
                "initialisation.",
                component=exc.component) from None
        if not self.estimates_dof:
            dofs = self.dof.copy()
        else:
            dofs = np.empty(k)
            for j in range(k):
                if has[j]:
                    # c = (sum q E[log u] - sum q E[u]) / N <= -1 (Jensen, log x - x <= -1)
                    c = (stats.log_scale[j] - stats.gauss.weight[j]) / n[j]
                    dofs[j] = _solve_dof(c)
                else:
                    dofs[j] = previous["dofs"][j]
        out["dofs"] = dofs
        return out

    def expected_log_likelihood(self, stats: StudentTStats, params: Params) -> float:
        # Q = sum_k { N (log|U| - d/2 log 2pi + h log h - lgamma h) + (h + d/2 - 1) L
        #             - h U_k - quad_k / 2 + H_k },  h = nu_k / 2 (docs/student_t.md#q)
        d = self.n_features
        h = 0.5 * np.asarray(params["dofs"], dtype=np.float64)
        log_det_u = np.sum(np.log(np.diagonal(params["precisions_cholesky"], axis1=1,
                                              axis2=2)), axis=1)
        n = stats.weight
        per = (n * (log_det_u - 0.5 * d * _LOG_2PI + h * np.log(h) - gammaln(h))
               + (h + 0.5 * d - 1.0) * stats.log_scale - h * stats.gauss.weight
               - 0.5 * self._quad(stats.gauss, params) + stats.entropy)
        return float(np.sum(np.where(n > 0, per, 0.0)))

    def _quad(self, g: GaussianStats, params: Params) -> np.ndarray:
        """sum_i q_ik E[u_ik] delta_ik(theta) per component, from the statistics about
        their reference points (the Gaussian family's formula, docs/gaussian.md#q-from-stats)."""
        U = params["precisions_cholesky"]
        if g.diagonal:
            diag_u = np.diagonal(U, axis1=1, axis2=2)
            trace = np.sum(g.scatter * diag_u * diag_u, axis=1)
        else:
            trace = np.sum((g.scatter @ U) * U, axis=(1, 2))
        e = np.einsum("kj,kjl->kl", g.mean - params["means"], U)
        f = np.einsum("kj,kjl->kl", g.residual, U)
        return trace + 2.0 * np.sum(e * f, axis=1) + g.weight * np.sum(e * e, axis=1)

    def expected_log_likelihood_magnitude(self, stats: StudentTStats,
                                          params: Params) -> float:
        # the Gaussian part's own bound (scatter accuracy), plus the magnitudes of
        # the other terms of Q before they cancel (at nu = 1000: h log h ~ 3100,
        # lgamma(h) ~ 2600, h U ~ 500 N, the entropies ~ lgamma(a) each)
        d = self.n_features
        h = 0.5 * np.asarray(params["dofs"], dtype=np.float64)
        log_det_u = np.sum(np.log(np.diagonal(params["precisions_cholesky"], axis1=1,
                                              axis2=2)), axis=1)
        n = stats.weight
        per = (n * (np.abs(log_det_u) + 0.5 * d * _LOG_2PI + np.abs(h * np.log(h))
                    + np.abs(gammaln(h)))
               + np.abs(h + 0.5 * d - 1.0) * stats.abs_log_scale + h * stats.gauss.weight
               + stats.abs_entropy)
        return (float(np.sum(np.where(n > 0, per, 0.0)))
                + self._gauss.expected_log_likelihood_magnitude(stats.gauss, params))

    # --- starting values and the parameter space ---------------------------------
    def initial_params(self, X: Any, rng: np.random.Generator,
                       sample_weight: Optional[np.ndarray] = None, resp: Any = None) -> dict:
        """The Gaussian moments of each cell of the starting partition (u = 1,
        smoothed by ``init_smoothing``) without the rows :meth:`seeding_weights`
        trims: the trimmed k-means start (docs/student_t.md#start). An estimated nu
        starts at ``DOF_START``, a fixed nu as given. (With ``resp=None``, the
        default partition's k-means++ seeds are drawn from the kept rows, trimmed
        once more.)"""
        kept = self.seeding_weights(X, sample_weight)
        params = super().initial_params(X, rng, sample_weight if kept is None else kept,
                                        resp)
        if self.estimates_dof:
            params["dofs"] = np.full(self.n_components, DOF_START)
        return params

    def seeding_weights(self, X: Any, sample_weight: Optional[np.ndarray] = None
                        ) -> Optional[np.ndarray]:
        """``sample_weight`` (or ones) with 0 on the rows farthest from the data's
        robust centre, holding a share ``SEED_TRIM`` of the total weight.

        k-means++ draws seeds in proportion to the squared distance, so a far
        outlier seeds a component almost surely, and that component collapses on
        it (docs/student_t.md#start). The distance is sum_j ((x_j - m_j) / s_j)^2
        about the coordinate-wise median m with the scaled median absolute
        deviations s (robust to any share of outliers below one half). None (no
        trimming) if fewer than K rows would keep a positive weight.
        """
        n = X.shape[0]
        w = (np.ones(n) if sample_weight is None
             else np.asarray(sample_weight, dtype=np.float64).copy())
        delta = _robust_distances(X)
        far_first = np.argsort(delta, kind="stable")[::-1]
        trimmed = far_first[np.cumsum(w[far_first]) <= SEED_TRIM * w.sum()]
        w[trimmed] = 0.0
        if np.count_nonzero(w) < self.n_components:
            return None
        return w

    def validate_params(self, params: Params) -> None:
        """The Gaussian family's means, covariances and precisions_cholesky (of this
        covariance type), and ``dofs`` (k,): > 0, in ``DOF_BOUNDS`` when estimated,
        equal to the fixed values otherwise."""
        self._gauss.validate_params(params)
        dofs = np.asarray(params["dofs"], dtype=np.float64)
        if dofs.shape != (self.n_components,) or not np.all(np.isfinite(dofs) & (dofs > 0)):
            raise ValueError(f"'dofs' must be a finite positive array of shape "
                             f"({self.n_components},); got {dofs!r}")
        if self.estimates_dof:
            lo, hi = DOF_BOUNDS
            if np.any((dofs < lo) | (dofs > hi)):
                raise ValueError(f"'dofs' must lie in [{lo:g}, {hi:g}] (estimated); "
                                 f"got {dofs!r}")
        elif not np.array_equal(dofs, self.dof):
            raise ValueError(f"'dofs' must equal the fixed dof {self.dof!r}; got {dofs!r}")

    # --- size, sampling, numerics -------------------------------------------------
    def n_parameters(self) -> int:
        return self._gauss.n_parameters() + (self.n_components if self.estimates_dof else 0)

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        parts = []
        for k, c in enumerate(np.asarray(counts, dtype=np.int64)):
            nu = float(params["dofs"][k])
            L = np.linalg.cholesky(params["covariances"][k])
            z = rng.standard_normal((int(c), self.n_features))
            u = rng.gamma(0.5 * nu, 2.0 / nu, int(c))          # Gamma(nu/2, rate nu/2)
            parts.append(params["means"][k] + (z @ L.T) / np.sqrt(u)[:, None])
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def parameter_rounding(self, stats: StudentTStats, params: Params) -> float:
        # The Gaussian part as the Gaussian family's (its means are the same weighted
        # means, of weight U_k), plus nu: off its maximiser by |dnu| <= (DOF_RTOL + 4u) nu;
        # Q's curvature in nu is N (psi'(nu/2)/4 - 1/(2 nu)) <= N psi'(nu/2) / 4.
        rounding = self._gauss.parameter_rounding(stats.gauss, params)
        if self.estimates_dof:
            nu = np.asarray(params["dofs"], dtype=np.float64)
            r = DOF_RTOL + 4 * UNIT_ROUNDOFF
            rounding += float(0.5 * np.sum(stats.weight * polygamma(1, 0.5 * nu) / 4.0
                                           * (r * nu) ** 2))
        return rounding

    def rounding_amplification(self, params: Params) -> float:
        # the Gaussian's 1 + sqrt(d kappa) for the Mahalanobis distance (the lgamma
        # and log terms are per-component constants: expected_log_likelihood_magnitude)
        return self._gauss.rounding_amplification(params)

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """The Gaussian family's random means and scale matrices; nu log-uniform on
        [6, 40] (finite fourth moments: the conformance suite's moment check), or
        the fixed values. Nearly degenerate: near-singular scale matrices, and nu
        near the ends of ``DOF_BOUNDS`` ([0.1, 0.3] or [300, 1000])."""
        params = self._gauss.random_params(rng, nearly_degenerate=nearly_degenerate)
        k = self.n_components
        if not self.estimates_dof:
            params["dofs"] = self.dof.copy()
        elif nearly_degenerate:
            low = rng.random(k) < 0.5
            params["dofs"] = np.where(low, 10.0 ** rng.uniform(-1.0, np.log10(0.3), k),
                                      10.0 ** rng.uniform(np.log10(300.0), 3.0, k))
        else:
            params["dofs"] = 10.0 ** rng.uniform(np.log10(6.0), np.log10(40.0), k)
        return params


def _robust_distances(X: Any) -> np.ndarray:
    """sum_j ((x_ij - m_j) / s_j)^2 for every row, m the coordinate-wise median and
    s = 1.4826 MAD (the standard deviation for Gaussian data); a feature whose MAD
    is 0 (more than half its values equal) is scaled by its standard deviation, or
    not at all if that is 0 too. Read a block of rows at a time (a chunked source)."""
    n = X.shape[0]
    step = max(1, n // _ROBUST_ROWS)
    sub = np.concatenate([np.asarray(X[a:min(n, a + _BLOCK)], dtype=np.float64)
                          [(-a) % step::step] for a in range(0, n, _BLOCK)])
    centre = np.median(sub, axis=0)
    scale = 1.4826 * np.median(np.abs(sub - centre), axis=0)
    sd = np.std(sub, axis=0)
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))
    out = np.empty(n)
    for a in range(0, n, _BLOCK):
        z = (np.asarray(X[a:min(n, a + _BLOCK)], dtype=np.float64) - centre) / scale
        out[a:a + z.shape[0]] = np.einsum("ij,ij->i", z, z)
    return out


def _dof_score(log_nu: float, c: float) -> float:
    """2/N dQ/dnu at nu = exp(log_nu): log(nu/2) - psi(nu/2) + 1 + c, decreasing."""
    h = 0.5 * np.exp(log_nu)
    return float(np.log(h) - digamma(h) + 1.0 + c)


def _solve_dof(c: float) -> float:
    """The nu in DOF_BOUNDS maximising N [h log h - lgamma h] + h N c (h = nu / 2).

    The objective is concave in nu (psi'(h) > 1/h), its derivative N/2 times
    ``_dof_score``, so the maximiser over the box is the root clipped to it: the
    lower end if the score is <= 0 there, the upper end if it is >= 0 there,
    else Brent's root on log nu to relative accuracy DOF_RTOL.
    """
    lo, hi = np.log(DOF_BOUNDS[0]), np.log(DOF_BOUNDS[1])
    if _dof_score(lo, c) <= 0:
        return DOF_BOUNDS[0]
    if _dof_score(hi, c) >= 0:
        return DOF_BOUNDS[1]
    root = scipy.optimize.brentq(_dof_score, lo, hi, args=(c,), xtol=DOF_RTOL / 2,
                                 rtol=4 * np.finfo(float).eps, maxiter=200)
    return float(np.exp(root))


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="student_t", factory=StudentTFamily,
        capabilities=frozenset({"sampling", "support:real", "covariance_type:full",
                                "covariance_type:diag"}),
        description="multivariate Student-t, robust to outliers (covariance_type: full, "
                    "diag; dof fixed or estimated)")]

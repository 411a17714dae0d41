"""The Gaussian component family (``gaussian``): full, tied, diag, spherical, and
mclust's fourteen parametrisations (EII ... VVV, plugins/_mclust_models.py).

Parameters (a dict, scikit-learn's names and shapes):
``means`` (k, d), ``covariances`` (k, d, d) and ``precisions_cholesky`` (k, d, d),
the upper-triangular U with precision P = U U^T. Statistics: per component the
exact moments about a reference point (see ``GaussianStats``), computed by
``_gaussian_kernel.pyx`` ('full', 'tied': d x d second moments) or
``_gaussian_diag_kernel.pyx`` ('diag', 'spherical': only the d per-feature ones).
Formulas: docs/gaussian.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.linalg
import scipy.special
from scipy.linalg.lapack import dpotrf as _dpotrf, dtrtrs as _dtrtrs

from emcore import DegenerateComponentError
from emcore.plugin_api import (FLOAT32_UNIT_ROUNDOFF, UNIT_ROUNDOFF, Family, FamilyRecord,
                               Params, ResolvedGaussianPrior, hookimpl)
from emcore.plugins._gaussian_diag_kernel import (GaussianDiagKernel,
                                                 STATISTICS_ROWS_F32 as _DIAG_STATISTICS_ROWS)
from emcore.plugins._gaussian_kernel import (GaussianFullKernel,
                                            STATISTICS_ROWS_F32 as _FULL_STATISTICS_ROWS)
from emcore.plugins._posterior_kernels import EXP_F32_ERROR
from emcore.plugins import _mclust_models as _mclust

__all__ = ["GaussianFamily", "GaussianStats", "COVARIANCE_TYPES"]

#: scikit-learn's four names (aliases of VVV, EEE, VVI, VII: the same code, bit for
#: bit), then mclust's fourteen models
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical") + _mclust.MODELS

#: GaussianFamily's float32_level options (docs/elbo_chain.md#float32-level)
FLOAT32_LEVELS = ("all", "log_density")
_DIAGONAL_TYPES = ("diag", "spherical")   # diagonal precisions: the diagonal kernel
#: the internal name of each type: the scikit-learn name for the four it has
_INTERNAL = {**{m: m for m in _mclust.MODELS},
             **{m: t for t, m in _mclust.SKLEARN_ALIASES.items()},
             **{t: t for t in _mclust.SKLEARN_ALIASES}}
_LOG_2PI = np.log(2.0 * np.pi)
#: the models whose constraint is not linear in the log-Cholesky coordinates (their
#: extrapolated covariances are projected back onto the model: from_unconstrained)
_NONLINEAR = frozenset({"VEE", "EVE", "VVE", "EEV", "VEV"})


@dataclass(frozen=True)
class GaussianStats:
    """Sufficient statistics of K components: moments about reference points.

    weight (k,) = sum_i w_ik; mean (k, d) = the reference points c_k (the
    weighted means, as rounded); residual (k, d) = sum_i w_ik (x_i - c_k), the
    rounding residual of c_k; scatter (k, d, d) = sum_i w_ik (x_i - c_k)(x_i - c_k)^T,
    or only its diagonal (k, d) (``diagonal``: what 'diag' and 'spherical' need).
    Exact moments about c_k, so nothing is lost to the data's offset.

    ``observed`` (k, d), diagonal statistics only: rows with missing coordinates
    (``GaussianFamily.chunk_stats_observed``). Coordinate j of component k then
    has its own weight observed[k, j] = sum_i w_ik [j observed in i], and mean,
    residual and scatter sum over those rows only. None: every coordinate has
    the weight ``weight``.
    """
    weight: np.ndarray
    mean: np.ndarray
    residual: np.ndarray
    scatter: np.ndarray
    observed: Optional[np.ndarray] = None

    @property
    def diagonal(self) -> bool:
        """True if ``scatter`` holds only the per-feature second moments (k, d)."""
        return self.scatter.ndim == 2

    def coordinate_weight(self) -> np.ndarray:
        """The weight of each coordinate (k, d): ``observed``, or ``weight`` on each."""
        if self.observed is not None:
            return self.observed
        return np.repeat(self.weight[:, None], self.mean.shape[1], axis=1)

    def centred(self):
        """Return (weighted mean, centred scatter) per component (weight > 0)."""
        if self.observed is not None:       # per coordinate: its own weight
            w = np.where(self.observed > 0, self.observed, 1.0)
            return (self.mean + self.residual / w,
                    self.scatter - self.residual * self.residual / w)
        w = np.where(self.weight > 0, self.weight, 1.0)
        mean = self.mean + self.residual / w[:, None]
        shape = (-1, 1) if self.diagonal else (-1, 1, 1)
        scatter = self.scatter - (_outer(self.residual, self.residual, self.diagonal)
                                  / w.reshape(shape))
        return mean, scatter


def _merge_observed(a: GaussianStats, b: GaussianStats) -> GaussianStats:
    """The merge of diagonal statistics with per-coordinate weights (at least one
    side from rows with missing coordinates): emcore/moments.h's exact merge
    coordinate by coordinate, the common reference point the weighted mean of
    the two, c_a + (W_b / W) (c_b - c_a) as rounded, each side moved to it."""
    wa, wb = a.coordinate_weight(), b.coordinate_weight()
    w = wa + wb
    both = (wa > 0) & (wb > 0)
    f = np.where(both, wb / np.where(w > 0, w, 1.0), 0.0)
    ref = np.where(wa > 0, np.where(both, a.mean + f * (b.mean - a.mean), a.mean), b.mean)
    residual = np.zeros_like(ref)
    scatter = np.zeros_like(ref)
    for side, ws in ((a, wa), (b, wb)):
        delta = np.where(ws > 0, side.mean - ref, 0.0)       # c_old - c_new
        # r <- r + W delta, S <- S + 2 r delta + W delta^2 (the old r)
        scatter += np.where(ws > 0, side.scatter + 2.0 * side.residual * delta
                            + ws * delta * delta, 0.0)
        residual += np.where(ws > 0, side.residual + ws * delta, 0.0)
    return GaussianStats(a.weight + b.weight, ref, residual, scatter, w)


def _outer(u: np.ndarray, v: np.ndarray, diagonal: bool) -> np.ndarray:
    """Per component u_k v_k^T (k, d, d), or only its diagonal u_k * v_k (k, d)."""
    return u * v if diagonal else u[:, :, None] * v[:, None, :]


class GaussianFamily(Family):
    """Multivariate normal components (``emcore.plugin_api.GaussianFamilyProtocol``).

    Parameters
    ----------
    n_components, n_features : int
        K and d.
    covariance_type : {'full', 'tied', 'diag', 'spherical'} or an mclust model name
        Parameters are stored in full form for every type (``covariances`` (k, d, d),
        diagonal or scalar multiples of I, or all equal). 'full' and 'tied' run
        through the full-covariance kernel (d x d statistics), 'diag' and
        'spherical' through the diagonal kernel (per-feature statistics); the
        M-step, the log prior and the parameter count apply the constraint.
        mclust's names: 'VVV', 'EEE', 'VVI', 'VII' are 'full', 'tied', 'diag',
        'spherical'; EII, EEI, VEI, EVI run through the diagonal kernel, VEE, EVE,
        VVE, EEV, VEV, EVV through the full one (docs/gaussian.md#mclust-models).
        VEI, VEE, VEV, EVE and VVE iterate in their M-step and declare it a
        generalized-EM step (``generalized_m_step``).
    reg_covar : float, default 1e-6
        Added to the diagonal of every covariance after the M-step (scikit-learn's
        ``reg_covar``). This is the exact maximiser of the expected log-likelihood
        minus ``reg_covar/2 * sum_k N_k tr(P_k)``, a penalty that depends on the
        current N_k: not a fixed objective (see ``m_step_penalty``).
    prior : emcore.priors.ResolvedGaussianPrior, optional
        The conjugate prior; ``m_step`` then returns the posterior mode (MAP-EM).
        mclust's models take it resolved for their kind of scale
        (``_mclust_models.PRIOR_KIND``; docs/gaussian.md#mclust-prior).
    dtype : {'float64', 'float32'}, default 'float64'
        The data's. With 'float32' the kernels compute in float32 on float32 rows
        what ``float32_level`` allows; :meth:`log_density_rounding` and
        :meth:`statistics_rounding` bound what that costs the chain
        (docs/elbo_chain.md#float32). Statistics totals and parameters stay float64.
    float32_level : {'all', 'log_density'}, default 'all'
        With dtype 'float32': 'log_density' computes only the diagonal kernel's
        ('diag', 'spherical', mclust's diagonal models) quadratic form and the
        posterior's exps in float32; 'all' also the full-covariance kernel's
        quadratic form and both kernels' statistics (float32 partial sums over
        blocks of rows). 'all' is faster, and its bounds are larger: about 1e-6
        of the log-likelihood at d = 16, near what a tol of 1e-6 resolves, so
        :class:`emcore.GaussianMixture` asks for it only with ``tol`` 0 or at least
        1e-5 (docs/elbo_chain.md#float32-level).
    """

    #: the parameter space is open: start from the plain partition (Family.initial_params)
    init_smoothing = 0.0

    def __init__(self, n_components: int, n_features: int, *,
                 covariance_type: str = "full", reg_covar: float = 1e-6,
                 prior: Optional[ResolvedGaussianPrior] = None, dtype: str = "float64",
                 float32_level: str = "all"):
        super().__init__(n_components, n_features)
        if dtype not in ("float64", "float32"):
            raise ValueError("The 'dtype' option of the Gaussian family must be 'float64' "
                             f"or 'float32'. Got {dtype!r} instead.")
        if float32_level not in FLOAT32_LEVELS:
            raise ValueError("The 'float32_level' option of the Gaussian family must be one "
                             f"of {', '.join(map(repr, FLOAT32_LEVELS))}. Got "
                             f"{float32_level!r} instead.")
        self.dtype = dtype
        self.float32_level = float32_level
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {', '.join(map(repr, COVARIANCE_TYPES))}; "
                f"got {covariance_type!r}")
        self._type = _INTERNAL[covariance_type]
        reg_covar = float(reg_covar)
        if not np.isfinite(reg_covar) or reg_covar < 0:
            raise ValueError(f"reg_covar must be a finite number >= 0; got {reg_covar!r}")
        if prior is not None and not isinstance(prior, ResolvedGaussianPrior):
            raise TypeError("prior must be an emcore.priors.ResolvedGaussianPrior "
                            "(GaussianPrior(...).resolve(X, n_components)) or None")
        if prior is not None and self._type in _mclust.MODELS:
            kind = _mclust.PRIOR_KIND[self._type]
            if prior.covariance_type != kind:
                raise ValueError(
                    f"The 'prior' parameter of the Gaussian family must be resolved for "
                    f"covariance_type={covariance_type!r} (its {kind!r} kind of scale: "
                    f"GaussianPrior(...).resolve(X, n_components, None, {kind!r})). "
                    f"Got a prior resolved for {prior.covariance_type!r} instead.")
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.prior = prior
        d, k = self.n_features, self.n_components
        self._diagonal = (self._type in _DIAGONAL_TYPES
                          or _mclust.REPRESENTATION.get(self._type) in ("spherical",
                                                                        "diagonal"))
        self._stats_kernel = self._kernel({
            "means": np.zeros((k, d)),
            "precisions_cholesky": np.broadcast_to(np.eye(d), (k, d, d))})

    # --- parameters ---------------------------------------------------------------

    @property
    def supports_missing(self) -> bool:
        """'diag' and 'spherical' (and their mclust names VVI, VII): independent
        coordinates given the component, so a row's missing coordinates are
        marginalised by dropping their terms (docs/missing_values.md#gaussian-family)."""
        return self._type in _DIAGONAL_TYPES

    @property
    def generalized_m_step(self) -> bool:
        """The iterative mclust M-steps only increase Q (docs/gaussian.md#mclust-models).
        A property, not an instance attribute, so that a subclass's own class-level
        ``generalized_m_step`` (e.g. an ECM variant of a closed-form type) still wins."""
        return self._type in _mclust.ITERATIVE
    def params_from_covariances(self, means: np.ndarray, covariances: np.ndarray,
                                n_k: Optional[np.ndarray] = None) -> dict:
        """Return parameters from means and covariances: U_k = L_k^{-T} with
        Sigma_k = L_k L_k^T. ``n_k`` (the components' weights) only enriches the
        DegenerateComponentError a singular covariance raises."""
        means = np.array(means, dtype=np.float64)
        covariances = np.array(covariances, dtype=np.float64)
        prec_chol = np.empty_like(covariances)
        eye = np.eye(self.n_features)
        for k, cov in enumerate(covariances):
            L = self._cholesky(cov, k, n_k=None if n_k is None else n_k[k])
            # L^{-1} by LAPACK's triangular solve L Y = I, called as
            # scipy.linalg.solve_triangular(L, eye, lower=True) calls it (on the
            # Fortran-ordered L^T, transposed): the same numbers without its
            # per-call checks, a third of an M-step of a small model (d = 8, k = 5)
            inverse, _ = _dtrtrs(L.T, eye, lower=0, trans=1)
            prec_chol[k] = inverse.T
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

    def to_unconstrained(self, params: Params) -> dict:
        """Means, and the lower Cholesky factor L of each covariance (Sigma = L L^T)
        with the log of its diagonal: any real values give a positive definite
        matrix (docs/variants.md#squarem). Zeros of the covariance type ('diag',
        'spherical': off the diagonal) and equalities ('tied', 'spherical') are
        kept by a linear extrapolation, since they hold in every input."""
        L = np.linalg.cholesky(np.asarray(params["covariances"], dtype=np.float64))
        i = np.arange(self.n_features)
        L[:, i, i] = np.log(L[:, i, i])
        return {"means": np.array(params["means"], dtype=np.float64), "log_cholesky": L}

    def from_unconstrained(self, coords) -> dict:
        """The inverse of :meth:`to_unconstrained`; DegenerateComponentError (a
        ValueError) for a covariance beyond the condition-number limit. mclust's VEE,
        EVE, VVE, EEV and VEV constrain the Cholesky factors non-linearly (a product
        of a volume and a shared matrix, shared eigenvalues or eigenvectors), which a
        linear extrapolation does not keep: their covariances are projected back
        onto the model, the model's M-step with unit weights and scatters the
        extrapolated covariances S_k (the model's covariances nearest to S in
        sum_k KL(N(0, S_k) || N(0, Sigma_k)), which leaves a point of the model where
        it is; docs/gaussian.md#mclust-models). ValueError (SQUAREM then takes its EM
        step) when that has no finite answer."""
        L = np.tril(np.asarray(coords["log_cholesky"], dtype=np.float64))
        i = np.arange(self.n_features)
        with np.errstate(over="ignore"):
            L[:, i, i] = np.exp(L[:, i, i])
        cov = L @ np.swapaxes(L, 1, 2)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        if self._type in _NONLINEAR:
            try:
                with np.errstate(divide="raise", invalid="raise", over="raise"):
                    cov = _mclust.constrained_covariances(
                        self._type, np.ones(self.n_components), cov)
            except (np.linalg.LinAlgError, FloatingPointError) as exc:
                raise ValueError(f"the extrapolated covariances have no projection onto "
                                 f"covariance_type={self.covariance_type!r}: {exc}") from exc
            cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        return self.params_from_covariances(coords["means"], cov)

    def validate_params(self, params: Params) -> None:
        """Means finite (k, d); covariances (k, d, d) symmetric, positive definite and of
        the family's type; precisions_cholesky upper triangular with a positive diagonal
        and U U^T the inverse of the covariance. (mclust's models: their representation,
        diagonal or multiples of I, and the exact equalities of EII and EEI; the
        volume, shape and orientation constraints of the others hold only to rounding
        and are not checked.)"""
        k, d, t = self.n_components, self.n_features, self.covariance_type
        it = self._type
        rep = _representation(it)
        for key, shape in (("means", (k, d)), ("covariances", (k, d, d)),
                           ("precisions_cholesky", (k, d, d))):
            value = np.asarray(params[key])
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ValueError(f"{key!r} must be a finite array of shape {shape}; got "
                                 f"shape {value.shape}")
        cov, U = np.asarray(params["covariances"]), np.asarray(params["precisions_cholesky"])
        eye = np.eye(d)
        for j in range(k):
            self._cholesky(cov[j], j)        # positive definite, or DegenerateComponentError
            # symmetric to rounding: the M-step symmetrises; u |S|
            if np.any(np.abs(cov[j] - cov[j].T) > 4 * UNIT_ROUNDOFF * np.max(np.abs(cov[j]))):
                raise ValueError(f"'covariances' of component {j} is not symmetric")
            if np.any(np.tril(U[j], -1) != 0) or np.any(np.diagonal(U[j]) <= 0):
                raise ValueError(f"'precisions_cholesky' of component {j} is not upper "
                                 "triangular with a positive diagonal")
            # U^T Sigma U = I to the accuracy of a triangular solve: |error| <=
            # c d u kappa (Higham, thm 8.5); c = 8 and kappa of Sigma
            kappa = _condition_of_factor(U[j])
            resid = float(np.max(np.abs(U[j].T @ cov[j] @ U[j] - eye)))
            if not resid <= 8.0 * d * UNIT_ROUNDOFF * max(kappa, 1.0):
                raise ValueError(f"'precisions_cholesky' of component {j} is not the "
                                 f"Cholesky factor of the inverse covariance (U^T Sigma U "
                                 f"differs from I by {resid:.3g})")
            off = cov[j] - np.diag(np.diagonal(cov[j]))
            if rep != "full" and np.any(off != 0):
                raise ValueError(f"'covariances' of component {j} is not diagonal "
                                 f"(covariance_type={t!r})")
            if rep == "spherical" and np.any(np.diagonal(cov[j]) != cov[j, 0, 0]):
                raise ValueError(f"'covariances' of component {j} is not a multiple of "
                                 f"the identity (covariance_type={t!r})")
            if it in ("tied", "EII", "EEI") and np.any(cov[j] != cov[0]):
                raise ValueError(f"'covariances' of component {j} differs from component "
                                 f"0's (covariance_type={t!r})")

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """Random valid parameters of the family's covariance type (for emcore.testing).

        Well-conditioned: condition numbers <= 100, variances 0.1-10 around means in
        [-10, 10]. Nearly degenerate: condition numbers 1e6-1e9 (full, tied, diag),
        or variances ~1e-8 times the squared offset of the means (spherical, where
        the condition number is always 1); far inside the limit 1 / (d eps).
        """
        k, d, kind = self.n_components, self.n_features, self._type
        means = rng.uniform(-10.0, 10.0, (k, d))
        if kind in _mclust.MODELS:
            return self.params_from_covariances(
                means, _random_mclust_covariances(rng, kind, k, d, nearly_degenerate))

        def matrix():
            scale = 10.0 ** rng.uniform(-1.0, 1.0)
            cond = rng.uniform(6.0, 9.0) if nearly_degenerate else rng.uniform(0.0, 2.0)
            if kind == "diag":
                e = rng.uniform(0.0, cond, d)
                if d > 1:
                    e[:2] = 0.0, cond
                    rng.shuffle(e)
                return np.diag(scale * 10.0 ** e)
            return _random_spd_matrix(rng, d, cond, scale)

        if kind == "spherical":
            var = 10.0 ** (rng.uniform(-9.0, -7.0, k) if nearly_degenerate
                           else rng.uniform(-1.0, 1.0, k))
            covariances = var[:, None, None] * np.eye(d)
        elif kind == "tied":
            covariances = np.broadcast_to(matrix(), (k, d, d)).copy()
        else:
            covariances = np.stack([matrix() for _ in range(k)])
        return self.params_from_covariances(means, covariances)

    def _cholesky(self, matrix: np.ndarray, k: int, n_k: Optional[float] = None,
                  what: str = "covariance") -> np.ndarray:
        """Lower Cholesky factor of a covariance (or precision) matrix, or raise
        DegenerateComponentError if the matrix is not numerically positive definite.

        Numerically singular means condition number >= 1 / (d eps): below that the
        smallest eigenvalue is within the rounding of the largest one, Cholesky may
        still "succeed" by accident, and the density is meaningless.
        """
        d = self.n_features
        kappa = np.inf
        L = None
        if np.all(np.isfinite(matrix)):
            # LAPACK's potrf, called as scipy.linalg.cholesky(lower=True) calls it
            L, info = _dpotrf(matrix, lower=1, clean=1)
            if info == 0:
                kappa = _condition_of_factor(L)
            else:
                L = None
        if L is None or not kappa < 1.0 / (d * np.finfo(np.float64).eps):
            held = (f" It holds {n_k:.6g} effective points in {d} dimensions."
                    if n_k is not None else "")
            cond = f" (condition number {kappa:.3g})" if L is not None else ""
            raise DegenerateComponentError(
                f"The {what} matrix of component {k} is not numerically positive "
                f"definite{cond}, so its Gaussian is not defined.{held} A full "
                f"covariance needs more than {d} distinct points per component; "
                "use a prior (prior='default' makes degenerate components "
                f"impossible), increase reg_covar (now {self.reg_covar:g}), reduce "
                "n_components, or choose another initialisation.", component=k)
        return L

    # --- E-step -------------------------------------------------------------------
    def _kernel(self, params: Params):
        U = params["precisions_cholesky"]
        single, every = self.dtype == "float32", self.float32_level == "all"
        if self._diagonal:
            return GaussianDiagKernel(params["means"], np.diagonal(U, axis1=1, axis2=2),
                                      float32=single, float32_statistics=every)
        return GaussianFullKernel(params["means"], U, float32=single and every)

    def compiled_kernel(self, params: Params):
        return self._kernel(params)

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        return self._kernel(params).log_density(X)

    # --- missing coordinates (supports_missing: 'diag', 'spherical') -----------------
    def _require_missing(self, what: str) -> None:
        if not self.supports_missing:
            raise NotImplementedError(
                f"GaussianFamily.{what}: covariance_type={self.covariance_type!r} "
                "correlates the coordinates given the component, so a missing "
                "coordinate is not dropped but integrated out (its conditional "
                "distribution given the observed ones): use GaussianMixture or "
                "MixtureModel(family='gaussian') with missing='marginalize', or "
                "covariance_type 'diag' or 'spherical' (docs/missing_values.md)")

    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """sum over the observed j of log N(x_ij | mu_kj, sigma_kj^2): the marginal
        density of a row's observed coordinates ('diag', 'spherical'), with
        (x_ij - mu_kj) / sigma_kj formed directly (exact at any offset)."""
        self._require_missing("log_density_observed")
        X = np.asarray(X, dtype=np.float64)
        observed = np.asarray(observed, dtype=bool)
        u = np.diagonal(params["precisions_cholesky"], axis1=1, axis2=2)   # 1 / sigma
        means = np.asarray(params["means"], dtype=np.float64)
        x = np.where(observed, X, 0.0)
        out = observed.astype(np.float64) @ (np.log(u) - 0.5 * _LOG_2PI).T
        for k in range(self.n_components):
            z = np.where(observed, (x - means[k]) * u[k], 0.0)
            out[:, k] -= 0.5 * np.einsum("ij,ij->i", z, z)
        return out

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> GaussianStats:
        """Per coordinate, the moments of the rows observing it about their weighted
        mean c_kj (as rounded), with the rounding residual; ``observed`` (k, d)
        their weights (:class:`GaussianStats`)."""
        self._require_missing("chunk_stats_observed")
        W = np.asarray(weights, dtype=np.float64)
        observed = np.asarray(observed, dtype=bool)
        x = np.where(observed, np.asarray(X, dtype=np.float64), 0.0)
        n_kj = W.T @ observed.astype(np.float64)
        has = n_kj > 0
        ref = np.where(has, (W.T @ x) / np.where(has, n_kj, 1.0), 0.0)
        residual, scatter = np.empty_like(ref), np.empty_like(ref)
        for k in range(self.n_components):
            dx = np.where(observed, x - ref[k], 0.0)
            residual[k] = W[:, k] @ dx
            scatter[k] = W[:, k] @ (dx * dx)
        return GaussianStats(W.sum(axis=0), ref, residual, scatter, n_kj)

    def marginal(self, columns, params: Params) -> tuple:
        """The Gaussian family of the same type on ``columns`` (a prior restricted to
        them), with the means and (diagonal) covariances of those coordinates."""
        from emcore.plugins.discrete import _check_columns
        self._require_missing("marginal")
        cols = _check_columns(columns, self.n_features, "GaussianFamily")
        prior = self.prior
        if prior is not None:
            prior = dataclasses.replace(prior, mean=np.asarray(prior.mean)[cols],
                                        scale=np.asarray(prior.scale)[np.ix_(cols, cols)])
        sub = GaussianFamily(self.n_components, cols.size,
                             covariance_type=self.covariance_type,
                             reg_covar=self.reg_covar, prior=prior)
        block = np.ix_(np.arange(self.n_components), cols, cols)
        return sub, {"means": np.asarray(params["means"])[:, cols].copy(),
                     "covariances": np.asarray(params["covariances"])[block],
                     "precisions_cholesky": np.asarray(params["precisions_cholesky"])[block]}

    # --- statistics ---------------------------------------------------------------
    def empty_stats(self) -> GaussianStats:
        return self.stats_from_buffer(self._stats_kernel.empty_stats())

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> GaussianStats:
        return self.stats_from_buffer(self._stats_kernel.accumulate(X, weights))

    def stats_from_buffer(self, buffer: np.ndarray) -> GaussianStats:
        # one slot per component, laid out as the kernel declares it (emcore/moments.h)
        k, d = self.n_components, self.n_features
        layout = self._stats_kernel.slot_layout(d)
        shape = (k, d) if self._diagonal else (k, d, d)
        slots = np.asarray(buffer, dtype=np.float64).reshape(k, -1)
        return GaussianStats(weight=slots[:, layout["weight"]].copy(),
                             mean=slots[:, layout["mean"]].copy(),
                             residual=slots[:, layout["residual"]].copy(),
                             scatter=slots[:, layout["scatter"]].reshape(shape).copy())

    def scale_stats(self, stats: GaussianStats, factor: float) -> GaussianStats:
        # the reference points stay; the sums over rows scale
        return GaussianStats(stats.weight * factor, stats.mean, stats.residual * factor,
                             stats.scatter * factor,
                             None if stats.observed is None else stats.observed * factor)

    def _to_buffer(self, stats: GaussianStats) -> np.ndarray:
        # the inverse of stats_from_buffer
        k, d = self.n_components, self.n_features
        layout = self._stats_kernel.slot_layout(d)
        slots = np.empty((k, self._stats_kernel.n_stats // k))
        slots[:, layout["weight"]] = stats.weight
        slots[:, layout["mean"]] = stats.mean
        slots[:, layout["residual"]] = stats.residual
        slots[:, layout["scatter"]] = stats.scatter.reshape(k, -1)
        return slots.ravel()

    def merge_stats(self, a: GaussianStats, b: GaussianStats) -> GaussianStats:
        # the kernel's merge (an exact re-shift of both sides to a common reference
        # point): the same code, and the same bits, as the compiled chunk loop's
        if a.diagonal != b.diagonal or a.diagonal != self._diagonal:
            raise ValueError("cannot merge full (k, d, d) and per-feature (k, d) statistics")
        if a.observed is not None or b.observed is not None:
            return _merge_observed(a, b)
        return self.stats_from_buffer(self._stats_kernel.merge(self._to_buffer(a),
                                                               self._to_buffer(b)))

    # --- M-step -------------------------------------------------------------------
    def m_step(self, stats: GaussianStats, previous: Optional[Params]) -> dict:
        """Maximum likelihood, or the posterior mode with a prior (docs/gaussian.md#m-step).

        Every covariance type is the constrained maximiser of the same expected
        log-likelihood: 'full' B_k / D_k, 'diag' its diagonal, 'spherical'
        tr(B_k) / D_k, 'tied' (sum_k B_k) / D, with B the (prior scale +) centred
        scatter and D the counts (ML) or the posterior's powers of Sigma (MAP).
        """
        if stats.observed is not None:
            return self._m_step_observed(stats, previous)
        d = self.n_features
        mean, scatter = stats.centred()
        diag = self._diagonal
        if diag and not stats.diagonal:        # full statistics (a Python family path)
            scatter = np.einsum("kjj->kj", scatter)
        elif stats.diagonal and not diag:
            raise ValueError(f"covariance_type={self.covariance_type!r} needs d x d "
                             "statistics; got per-feature ones")
        wshape = (-1, 1) if diag else (-1, 1, 1)
        w = np.where(stats.weight > 0, stats.weight, 0.0)
        has = w > 0
        if self.prior is None:
            means = mean.copy()
            numerator = np.where(has.reshape(wshape), scatter, 0.0)
        else:
            p = self.prior
            kappa = p.shrinkage
            mean = np.where(has[:, None], mean, p.mean)          # N_k = 0: no data term
            means = ((w[:, None] * mean + kappa * p.mean) / (w + kappa)[:, None]
                     if kappa > 0 else mean.copy())
            shrink = kappa * w / (kappa + w) if kappa > 0 else np.zeros_like(w)
            delta = mean - p.mean
            numerator = (np.where(has.reshape(wshape), scatter, 0.0)
                         + shrink.reshape(wshape) * _outer(delta, delta, diag))
        if self._type in _mclust.MODELS:
            counts, scale = self._mclust_prior_inputs(w, diag)
            covariances = self._mclust_covariances(numerator + scale, counts, previous)
            if self.prior is not None and not np.all(counts > 0):
                # VEV's prior has no power (c_k = 0): an empty component's covariance
                # has no maximiser (log p grows without bound as Sigma_k does); it
                # keeps its previous value, which leaves the objective where it was
                if previous is None:
                    raise DegenerateComponentError(
                        f"Component {int(np.argmin(counts))} received no data at "
                        f"initialisation, and covariance_type={self.covariance_type!r}'s "
                        "prior (mclust's) does not define its covariance; reduce "
                        "n_components or choose another initialisation.",
                        component=int(np.argmin(counts)))
                covariances[counts <= 0] = previous["covariances"][counts <= 0]
        else:
            denominator = self._denominator(w)
            covariances = self._constrained(
                numerator, 0.0 if self.prior is None else self.prior.scale, denominator)
            covariances = 0.5 * (covariances + np.swapaxes(covariances, 1, 2))
            covariances += self.reg_covar * np.eye(d)
        if self.prior is None and not has.all():
            # N_k = 0: the objective does not depend on (mu_k, Sigma_k); keeping the
            # previous values is a valid M-step (a tied covariance is shared anyway)
            k = int(np.flatnonzero(~has)[0])
            if previous is None:
                raise DegenerateComponentError(
                    f"Component {k} received no data at initialisation (X may have "
                    "fewer distinct rows than n_components); reduce n_components, "
                    "use a prior (prior='default'), or choose another "
                    "initialisation.", component=k)
            means[~has] = previous["means"][~has]
            if self._type not in ("tied", "EII", "EEI"):
                covariances[~has] = previous["covariances"][~has]
        return self.params_from_covariances(means, covariances, n_k=w)

    def _observed_denominator(self, n_kj: np.ndarray) -> np.ndarray:
        """D of sigma^2 = B / D for statistics with per-coordinate weights n_kj:
        'diag' (k, d), :meth:`_denominator` with each coordinate's own weight (as
        for a column alone); 'spherical' (k,), the observed-entry mass sum_j n_kj
        (ML), or with the prior's powers (_denominator's, with w d replaced by
        sum_j n_kj)."""
        d = self.n_features
        if self._type == "diag":
            return self._denominator(n_kj)
        mass = np.sum(n_kj, axis=1)
        if self.prior is None:
            return mass
        return self.prior.dof + mass + (d if self.prior.shrinkage > 0 else 0.0) + 2.0

    def _m_step_observed(self, stats: GaussianStats, previous: Optional[Params]) -> dict:
        """The M-step of statistics from rows with missing coordinates ('diag',
        'spherical'; docs/missing_values.md#gaussian-family): each mean over the
        rows observing its coordinate; 'diag' each variance likewise, 'spherical'
        the scatter over the observed entries divided by the observed-entry mass
        (ML), or the posterior mode. A coordinate no row of a component observes
        keeps its previous mean and variance (ML; MAP: the prior's mode)."""
        d = self.n_features
        n_kj = np.where(stats.observed > 0, stats.observed, 0.0)
        has = n_kj > 0
        mean, scatter = stats.centred()
        numerator = np.where(has, scatter, 0.0)
        scale = 0.0
        if self.prior is None:
            means = np.where(has, mean, 0.0)
        else:
            p = self.prior
            kappa = p.shrinkage
            mean = np.where(has, mean, p.mean)
            if kappa > 0:
                means = (n_kj * mean + kappa * p.mean) / (n_kj + kappa)
                numerator = numerator + kappa * n_kj / (kappa + n_kj) * (mean - p.mean) ** 2
            else:
                means = mean.copy()
            scale = np.diagonal(p.scale)
        den = self._observed_denominator(n_kj)
        safe = np.where(den > 0, den, 1.0)
        if self._type == "diag":
            var = (numerator + scale) / safe
        else:
            var = np.repeat((np.sum(numerator + scale, axis=1) / safe)[:, None], d, axis=1)
        covariances = var[:, :, None] * np.eye(d) + self.reg_covar * np.eye(d)
        if self.prior is None and not has.all():
            # no observed entry of coordinate j in component k: the objective does
            # not depend on mu_kj (nor, for 'diag', on sigma_kj); keep them
            if previous is None:
                c, j = (int(a) for a in np.argwhere(~has)[0])
                raise DegenerateComponentError(
                    f"Component {c} received no observed value of coordinate {j} at "
                    "initialisation; reduce n_components or choose another "
                    "initialisation.", component=c)
            prev_cov = np.asarray(previous["covariances"], dtype=np.float64)
            means = np.where(has, means, previous["means"])
            keep = ~has if self._type == "diag" else ~has.any(axis=1, keepdims=True) & ~has
            i = np.arange(d)
            diag_cov = covariances[:, i, i]
            covariances[:, i, i] = np.where(keep, prev_cov[:, i, i], diag_cov)
        return self.params_from_covariances(means, covariances, n_k=stats.weight)

    def _mclust_prior_inputs(self, w: np.ndarray, diagonal: bool) -> tuple:
        """(counts, scale) of an mclust model's M-step: the components' weights and
        0 without a prior; with one, the weights plus the prior's powers c_k and its
        scale matrix (its diagonal for the diagonal kernel) times its share, as
        ``_mclust.prior_terms`` says (docs/gaussian.md#mclust-prior)."""
        if self.prior is None:
            return w, 0.0
        p, k, d = self.prior, self.n_components, self.n_features
        c, share = _mclust.prior_terms(self._type, k, d, p.dof, p.shrinkage > 0)
        scale = share * (np.diagonal(p.scale) if diagonal else p.scale)
        return w + c, np.broadcast_to(scale, (k,) + scale.shape)

    def _mclust_covariances(self, scatter: np.ndarray, w: np.ndarray,
                            previous: Optional[Params]) -> np.ndarray:
        """The covariances of an mclust model from the centred scatters (k, d, d), or
        their diagonals (k, d), and the counts w (with a prior: the scatters plus the
        prior's scale, the weights plus its powers), of the components with a
        positive count (the others get the first one's, replaced by their previous
        values unless all are shared).

        reg_covar enters as reg_covar * w_k I added to each scatter: the exact
        constrained maximiser of Q - reg_covar / 2 sum_k w_k tr(P_k), the penalty
        ``m_step_penalty`` records (for the four scikit-learn types this is the same
        as adding reg_covar * I after the M-step)."""
        k, d, t = self.n_components, self.n_features, self._type
        has = w > 0
        W = scatter[has]
        if self.reg_covar > 0:
            W = W + self.reg_covar * (w[has, None] if W.ndim == 2
                                      else w[has, None, None] * np.eye(d))
        prev = None
        if previous is not None:
            prev = np.asarray(previous["covariances"], dtype=np.float64)[has]
        try:
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                active = _mclust.constrained_covariances(t, w[has], W, prev)
        except (np.linalg.LinAlgError, FloatingPointError):
            active = None
        if active is None or not np.all(np.isfinite(active)):
            raise DegenerateComponentError(
                f"The M-step of covariance_type={self.covariance_type!r} has no finite "
                "maximiser: a component's scatter matrix is singular (it holds too few "
                f"distinct points in {d} dimensions). Increase reg_covar (now "
                f"{self.reg_covar:g}), reduce n_components, choose a more constrained "
                "covariance type, or choose another initialisation.",
                component=int(np.argmin(np.where(has, w, np.inf))))
        covariances = np.empty((k, d, d))
        covariances[has] = active
        covariances[~has] = active[0]
        return 0.5 * (covariances + np.swapaxes(covariances, 1, 2))

    def _denominator(self, w: np.ndarray):
        """D of Sigma = B / D: counts (ML), or the powers of Sigma in the joint
        posterior (MAP: likelihood, inverse Wishart / gamma, and the normal prior
        on the means when shrinkage > 0). 'tied' returns one number."""
        d, k, t = self.n_features, self.n_components, self._type
        if self.prior is None:
            return {"full": w, "diag": w, "spherical": d * w, "tied": np.sum(w)}[t]
        nu, mean_prior = self.prior.dof, self.prior.shrinkage > 0
        if t == "full":
            return nu + w + d + (2.0 if mean_prior else 1.0)
        if t == "diag":
            return nu + w + (3.0 if mean_prior else 2.0)
        if t == "spherical":
            return nu + (w + (1.0 if mean_prior else 0.0)) * d + 2.0
        return nu + np.sum(w) + d + 1.0 + (k if mean_prior else 0.0)

    def _constrained(self, numerator: np.ndarray, scale, denominator) -> np.ndarray:
        """B / D under the type's constraint, B = prior scale + numerator (the prior's
        scale enters once per covariance matrix: once in all for 'tied'). The
        numerator is (k, d, d) for 'full'/'tied' and its diagonal (k, d) for
        'diag'/'spherical' (scale: a (d, d) matrix, or 0 without a prior)."""
        d, k, t = self.n_features, self.n_components, self._type
        if t == "tied":
            cov = (scale + np.sum(numerator, axis=0)) / denominator
            return np.broadcast_to(cov, (k, d, d)).copy()
        den = np.where(denominator > 0, denominator, 1.0)   # N_k = 0 (ML): replaced
        if t == "full":
            return (numerator + scale) / den[:, None, None]
        numerator = numerator + (np.diagonal(scale) if np.ndim(scale) else scale)
        if t == "diag":
            return (numerator / den[:, None])[:, :, None] * np.eye(d)
        trace = np.sum(numerator, axis=1)
        return (trace / den)[:, None, None] * np.eye(d)

    def _penalty_weights(self, w: np.ndarray) -> np.ndarray:
        """c_k with pen = reg_covar / 2 sum_k c_k tr(P_k) (see m_step_penalty)."""
        if self.prior is None:
            return w
        t, k, d = self._type, self.n_components, self.n_features
        if t in _mclust.MODELS:
            return self._mclust_prior_inputs(w, self._diagonal)[0]
        den = self._denominator(w)
        if t == "spherical":
            return den / d
        if t == "tied":
            return np.full(k, den / k)
        return den

    def log_prior(self, params: Params):
        """(log p(theta), sum of its terms' magnitudes) for the type's conjugate prior."""
        if self.prior is None:
            return 0.0, 0.0
        p, d, k, t = self.prior, self.n_features, self.n_components, self._type
        kappa = p.shrinkage
        terms = []
        if t in _mclust.MODELS:
            # -1/2 sum_k [c_k log|Sigma_k| + share tr(Lambda P_k) + kappa |(mu_k - mu_0) U_k|^2]
            # (_mclust.prior_terms; up to a constant: not normalised on the model's set)
            U = params["precisions_cholesky"]
            c, share = _mclust.prior_terms(t, k, d, p.dof, kappa > 0)
            log_det = -2.0 * np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
            terms += [-0.5 * c * log_det,
                      -0.5 * share * np.sum((p.scale @ U) * U, axis=(1, 2))]
            if kappa > 0:
                y = np.einsum("kj,kjl->kl", params["means"] - p.mean, U)
                terms.append(-0.5 * kappa * np.sum(y * y, axis=1))
        elif t in ("full", "tied"):
            U = params["precisions_cholesky"]
            log_det = -2.0 * np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
            trace = np.sum((p.scale @ U) * U, axis=(1, 2))      # tr(Lambda P_k)
            m = 1 if t == "tied" else k                          # inverse Wishart(s)
            terms += [np.full(m, 0.5 * p.dof * np.linalg.slogdet(p.scale)[1]),
                      np.full(m, -0.5 * p.dof * d * np.log(2.0)),
                      np.full(m, -scipy.special.multigammaln(0.5 * p.dof, d)),
                      -0.5 * (p.dof + d + 1) * log_det[:m], -0.5 * trace[:m]]
            if kappa > 0:
                y = np.einsum("kj,kjl->kl", params["means"] - p.mean, U)
                terms += [np.full(k, -0.5 * d * _LOG_2PI + 0.5 * d * np.log(kappa)),
                          -0.5 * log_det, -0.5 * kappa * np.sum(y * y, axis=1)]
        else:
            var = np.einsum("kjj->kj", params["covariances"])
            if t == "spherical":
                var = var[:, :1]                                  # one sigma^2 per k
            a, b = 0.5 * p.dof, 0.5 * p.scale_scalar              # inverse gamma(a, b)
            terms += [np.full(var.size, a * np.log(b) - scipy.special.gammaln(a)),
                      -(a + 1.0) * np.log(var).ravel(), -(b / var).ravel()]
            if kappa > 0:
                dev2 = (params["means"] - p.mean) ** 2
                if t == "spherical":
                    dev2 = np.sum(dev2, axis=1, keepdims=True)
                per = d if t == "spherical" else 1
                terms += [np.full(var.size, per * (-0.5 * _LOG_2PI + 0.5 * np.log(kappa))),
                          -0.5 * per * np.log(var).ravel(), -0.5 * kappa * (dev2 / var).ravel()]
        terms = np.concatenate(terms)
        return float(np.sum(terms)), float(np.sum(np.abs(terms)))

    def expected_log_likelihood(self, stats: GaussianStats, params: Params) -> float:
        # sum_i w_ik (x_i - mu)^T P (x_i - mu) about the reference point c:
        #   tr(U^T S U) + 2 ((c - mu) U).(r U) + W ||(c - mu) U||^2
        # then sum_k [ W_k (sum_j log U_jj - d/2 log 2pi) - 1/2 (that) ]
        # (docs/gaussian.md#q-from-stats)
        U = params["precisions_cholesky"]
        d = self.n_features
        diag_u = np.diagonal(U, axis1=1, axis2=2)
        if stats.observed is not None:
            # per-coordinate weights n_kj (diagonal U): the same sum coordinate by
            # coordinate, each over the rows observing it
            n_kj = stats.observed
            e, f = (stats.mean - params["means"]) * diag_u, stats.residual * diag_u
            quad = np.sum(stats.scatter * diag_u * diag_u + 2.0 * e * f + n_kj * e * e,
                          axis=1)
            per_component = (np.sum(n_kj * (np.log(diag_u) - 0.5 * _LOG_2PI), axis=1)
                             - 0.5 * quad)
            return float(np.sum(np.where(stats.weight > 0, per_component, 0.0)))
        log_det_u = np.sum(np.log(diag_u), axis=1)
        if stats.diagonal:     # only for diagonal U ('diag', 'spherical')
            trace = np.sum(stats.scatter * diag_u * diag_u, axis=1)
        else:
            trace = np.sum((stats.scatter @ U) * U, axis=(1, 2))
        e = np.einsum("kj,kjl->kl", stats.mean - params["means"], U)
        f = np.einsum("kj,kjl->kl", stats.residual, U)
        quad = trace + 2.0 * np.sum(e * f, axis=1) + stats.weight * np.sum(e * e, axis=1)
        per_component = stats.weight * (log_det_u - 0.5 * d * _LOG_2PI) - 0.5 * quad
        per_component = np.where(stats.weight > 0, per_component, 0.0)
        return float(np.sum(per_component))

    def expected_log_likelihood_magnitude(self, stats: GaussianStats,
                                          params: Params) -> float:
        # The quadratic term of expected_log_likelihood, tr(U^T S U) with S the
        # scatter about c accumulated over the rows, loses up to u kappa(Sigma) of
        # its value, not the u sqrt(d kappa) of the per-row path: S itself holds
        # its small-eigenvalue directions only to u ||S|| (one component over
        # clusters 1e6 apart, kappa = 1e12: 0.03 nats; issue 15). With d_i = x_i - c
        # and s_j = sqrt(S_jj):
        #   accumulation |dS_jl| <= gamma_(depth+2) sum_i w_i |d_ij| |d_il|
        #                        <= gamma_(depth+2) s_j s_l   (Cauchy-Schwarz),
        #   so |tr(U^T dS U)| <= gamma sum_jl s_j s_l (|U| |U|^T)_jl = gamma || |U|^T s ||^2;
        #   evaluation (S @ U) * U summed: gamma_(2d+1) sum_jlm |S_jm| |U_ml| |U_jl|
        #                        <= gamma_(2d+1) || |U|^T s ||^2 (the same bound).
        # The cross and offset terms 2 e.f + W ||e||^2 have relative error gamma_(d+2).
        # Half the quadratic enters Q: |error of Q| <= (depth + 2d + 3) u M / 2 (x 2
        # for the gamma denominators) with M = sum_k || |U_k|^T s_k ||^2
        # + 2 |e_k|.|f_k| + W_k ||e_k||^2 over components with weight, this value.
        U = params["precisions_cholesky"]
        e = np.einsum("kj,kjl->kl", stats.mean - params["means"], U)
        f = np.einsum("kj,kjl->kl", stats.residual, U)
        if stats.diagonal:     # diagonal U: || |U|^T s ||^2 = sum_j S_jj U_jj^2
            quad = np.sum(np.abs(stats.scatter) * np.diagonal(U, axis1=1, axis2=2) ** 2,
                          axis=1)
        else:
            s = np.sqrt(np.abs(np.einsum("kjj->kj", stats.scatter)))
            quad = np.sum(np.einsum("kj,kjl->kl", s, np.abs(U)) ** 2, axis=1)
        if stats.observed is not None:      # per-coordinate weights
            offset = np.sum(stats.observed * e * e, axis=1)
        else:
            offset = stats.weight * np.sum(e * e, axis=1)
        per = quad + 2.0 * np.sum(np.abs(e * f), axis=1) + offset
        return float(np.sum(np.where(stats.weight > 0, per, 0.0)))

    def m_step_penalty(self, stats: GaussianStats, params: Params) -> float:
        # reg_covar/2 * sum_k D_k tr(P_k), tr(P_k) = ||U_k||_F^2, with D_k = N_k
        # (docs/gaussian.md#reg-covar), or the MAP denominator with a prior: adding reg_covar * I
        # to B_k / D_k maximises the objective minus this penalty
        if self.reg_covar == 0.0:
            return 0.0
        U = params["precisions_cholesky"]
        if stats.observed is not None:
            # per-coordinate weights: reg_covar/2 sum_kj c_kj P_kjj with c_kj the
            # denominator of sigma_kj^2 ('diag'), or D_k / d on each ('spherical')
            n_kj = np.where(stats.observed > 0, stats.observed, 0.0)
            c = self._observed_denominator(n_kj)
            if self._type == "spherical":
                c = np.repeat((c / self.n_features)[:, None], self.n_features, axis=1)
            u = np.diagonal(U, axis1=1, axis2=2)
            return float(0.5 * self.reg_covar * np.sum(c * u * u))
        c = self._penalty_weights(np.where(stats.weight > 0, stats.weight, 0.0))
        return float(0.5 * self.reg_covar * np.sum(c * np.sum(U * U, axis=(1, 2))))

    # --- size, sampling, numerics -------------------------------------------------
    def n_parameters(self) -> int:
        k, d = self.n_components, self.n_features
        if self._type in _mclust.MODELS:        # mclust's nMclustParams without weights
            return k * d + _mclust.n_covariance_parameters(self._type, k, d)
        covariance = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2,
                      "diag": k * d, "spherical": k}[self._type]
        return k * d + covariance

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        parts = []
        for k, c in enumerate(np.asarray(counts, dtype=np.int64)):
            L = np.linalg.cholesky(params["covariances"][k])
            z = rng.standard_normal((int(c), self.n_features))
            parts.append(params["means"][k] + z @ L.T)
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def parameter_rounding(self, stats: GaussianStats, params: Params) -> float:
        # The computed mean is off the maximiser by |delta_j| <= m u a_j, a_j the
        # size of the numbers the formula rounds: ML mu = c + r / W, m = 2 (the sum
        # and r / W) with a_j = |mu_kj|; MAP with shrinkage kappa > 0,
        # mu = (W mean + kappa mu_0) / (W + kappa) after that sum: m = 6 (two more
        # products, a sum, a division) with a_j = |mu_kj| + |mu_0j| (the prior's
        # mean enters the sum). (m = 1 was too small: at 1e12 the MAP means were
        # ~2 ulps off and the chain failed by 2.3 times its tolerance.) The MAP
        # objective's curvature in mu_k is (W_k + kappa) P_k, so it drops by
        # 1/2 (W_k + kappa) delta^T P_k delta <= 1/2 (W_k + kappa) m^2 u^2 ||a_k||^2
        # lambda_max(P_k), lambda_max(P_k) = s_max(U_k)^2. (Covariance rounding costs
        # O(W d (u kappa)^2): negligible beside the tolerance's first-order terms.)
        u = UNIT_ROUNDOFF
        s_max = np.linalg.svd(params["precisions_cholesky"], compute_uv=False)[:, 0]
        size = np.abs(params["means"])
        kappa = 0.0 if self.prior is None else self.prior.shrinkage
        m = 6.0 if kappa > 0 else 2.0
        if kappa > 0:
            size = size + np.abs(self.prior.mean)
        a2 = np.sum(size ** 2, axis=1)
        return float(0.5 * np.sum((stats.weight + kappa) * (m * u) ** 2 * a2 * s_max ** 2))

    def log_density_rounding(self, stats: GaussianStats, params: Params) -> float:
        # float32 rows through the diagonal kernel (docs/elbo_chain.md#float32): the
        # quadratic form q_ik = sum_j p_kj t_ij^2, t_ij = x_ij - mu_kj, in float32
        # with each mean held as two floats (hi + lo). The computed t carries
        # |e_ij| <= 2.01 u32 a_ij, a_ij = |t_ij| + u32 |mu_kj| (two subtractions, hi
        # and lo rounded), so with the rounding of p, the products and the d-term
        # sum, |q~ - q| <= 1.011 (d + 6) u32 sum_j p_kj a_ij^2; the log-density
        # carries half of it. Over the rows behind the statistics with weights
        # w_ik, by Minkowski, sum_i w_ik a_ij^2 <= (sqrt(T_kj) + u32 |mu_kj|
        # sqrt(W_kj))^2, T_kj = sum_i w_ik t_ij^2 = s_kj + 2 (m_kj - mu_kj) r_kj +
        # W_kj (m_kj - mu_kj)^2 from the moments about the reference points m_k.
        # The kernel's fused soft step also takes the posterior's exps in float32
        # (emc_soft_rows_f32): each e_ik = exp(a_ik - m_i) within (|a_ik - m_i| +
        # EXP_F32_ERROR) u32 relative, entries below exp(-87) flushed to 0, so a
        # row's log p (and the entropy the chain uses) moves by at most
        # rho = 1.0001 u32 ((K - 1) / e + EXP_F32_ERROR) + K 2^-125, since
        # q_ik |a_ik - m_i| <= |t| e^t <= 1/e; times the rows' total weight.
        # float64 rows, or a kernel that widens them: 0 (the relative error is
        # covered by rounding_amplification). The full kernel's float32 rows: its
        # own bound, _full_float32_log_density_rounding.
        if self.dtype == "float32" and not self._diagonal and not stats.diagonal:
            if self.float32_level != "all":      # the full kernel widens the rows
                return 0.0
            return _full_float32_log_density_rounding(stats, params, self.n_components)
        if self.dtype != "float32" or not self._diagonal or not stats.diagonal:
            return 0.0
        u = FLOAT32_UNIT_ROUNDOFF
        means = np.asarray(params["means"], dtype=np.float64)
        p = np.diagonal(np.asarray(params["precisions_cholesky"], dtype=np.float64),
                        axis1=1, axis2=2) ** 2
        W = stats.coordinate_weight()
        T = _spread_about(stats, means, W)
        a2 = (np.sqrt(T) + u * np.abs(means) * np.sqrt(W)) ** 2
        return float(0.5 * 1.011 * (self.n_features + 6) * u * np.sum(p * a2)
                     + _float32_posterior_rounding(self.n_components)
                     * float(np.sum(stats.weight)))

    def widened(self) -> Optional["GaussianFamily"]:
        # float32 rows: the same model computed in double on the rows widened
        # exactly (the engine fits with it where the float32 bounds exceed what the
        # stopping rule resolves; docs/elbo_chain.md#float32-level)
        if self.dtype != "float32":
            return None
        return GaussianFamily(self.n_components, self.n_features,
                              covariance_type=self.covariance_type,
                              reg_covar=self.reg_covar, prior=self.prior)

    def statistics_rounding(self, stats: GaussianStats, params: Params,
                            new_params: Params) -> float:
        # float32 statistics (docs/elbo_chain.md#float32), by the kernel that sums them
        if self.dtype != "float32" or self.float32_level != "all":
            return 0.0
        if self._diagonal:
            return _diag_float32_statistics_rounding(stats, params, new_params)
        return _full_float32_statistics_rounding(stats, params, new_params)

    def rounding_amplification(self, params: Params) -> float:
        # 1 + sqrt(d kappa_max) (docs/elbo_chain.md#check-b, item 2)
        kappa = max(_condition_of_factor(U) for U in params["precisions_cholesky"])
        return 1.0 + float(np.sqrt(self.n_features * kappa))


def _spread_about(stats: GaussianStats, point: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """sum_i w_ik (x_ij - point_kj)^2, (k, d), from the moments about the
    reference points c: S_jj + 2 (c - point) r + W (c - point)^2, clipped at 0
    (the float32 bounds' T; docs/elbo_chain.md#float32). ``weight``: W as (k, 1),
    or (k, d) per coordinate."""
    S = stats.scatter if stats.diagonal else np.einsum("kjj->kj", stats.scatter)
    off = stats.mean - point
    return np.maximum(S + 2.0 * off * stats.residual + weight * off * off, 0.0)


def _diag_float32_statistics_rounding(stats: GaussianStats, params: Params,
                                      new_params: Params) -> float:
    """Bound on what the diagonal kernel's float32 statistics move Q.

    The kernel sums the moments of float32 rows about h = float32(mu_t), the
    pass's means rounded to float, in float over blocks of B =
    ``_gaussian_diag_kernel.STATISTICS_ROWS_F32`` rows
    (docs/elbo_chain.md#float32): per component k and feature j, with
    t_i = x_ij - h_kj and weights w_ik,

        |dR_kj| <= 1.001 (B + 2) u32 sum_i w_ik |t_i|,
        |dS_kj| <= 1.001 (B + 4) u32 sum_i w_ik t_i^2,

    plus, per (k, j), at most 2^-140 from products that underflowed (weights
    are scaled by 2^64 into float's normal range; far below any tolerance).
    ``expected_log_likelihood(stats, theta)`` carries -1/2 sum_kj p_kj (S_kj +
    2 (c_kj - mu_kj) r_kj + W_k (c_kj - mu_kj)^2) (p = U^2 of theta), and
    the exact re-shifting merges carry each chunk's errors to the merged
    reference c unchanged in sum: the error of Q(theta) is at most

        E(theta) = 1/2 sum_kj p_kj (|dS_kj| + 2 |h_kj - mu_kj| |dR_kj|).

    The M-step maximises the Q of the computed statistics, so the ascent link
    needs E(theta_t) and the bound link E(theta_{t+1}): this returns the larger.
    sum_i w t^2 = T_kj = S + 2 (c - h) r + W (c - h)^2 from the statistics
    themselves (their own error, ~(B + 4) u32 relative, inside the 1.001), and
    sum_i w |t| <= sqrt(W_k T_kj) (Cauchy-Schwarz). Chunks the kernel summed in
    double (weights outside float's range, means still moving) have no float32
    error: the bound covers them.

    Parameters
    ----------
    stats : GaussianStats
        Diagonal statistics from the pass at ``params``.
    params, new_params : dict
        theta_t (the pass's parameters) and theta_{t+1} (the M-step's).

    Returns
    -------
    float
        The bound, an absolute error of the expected log-likelihood; 0 for
        statistics of rows with missing coordinates (the missing-data kernel
        sums in float64).
    """
    if not stats.diagonal or stats.observed is not None:
        return 0.0
    u = FLOAT32_UNIT_ROUNDOFF
    B = _DIAG_STATISTICS_ROWS
    h = np.asarray(params["means"], dtype=np.float64).astype(np.float32).astype(np.float64)
    W = stats.weight[:, None]
    T = 1.001 * _spread_about(stats, h, W)
    dS = 1.001 * (B + 4) * u * T + 2.0 ** -140
    dR = 1.001 * (B + 2) * u * np.sqrt(W * T) + 2.0 ** -140
    worst = 0.0
    for theta in (params, new_params):
        p = np.diagonal(np.asarray(theta["precisions_cholesky"], dtype=np.float64),
                        axis1=1, axis2=2) ** 2
        move = np.abs(h - np.asarray(theta["means"], dtype=np.float64))
        worst = max(worst, float(0.5 * np.sum(np.where(W > 0, p * (dS + 2.0 * move * dR),
                                                       0.0))))
    return worst


def _float32_posterior_rounding(n_components: int) -> float:
    """Bound on how far the float32-exp soft posterior moves one row's log p(x_i).

    Per unit row weight (docs/elbo_chain.md#float32): ``1.0001 u32 ((K - 1) / e +
    EXP_F32_ERROR) + K 2^-125``, for the diagonal Gaussian kernel's fused step on
    float32 rows; the same bound holds for the entropy the chain's links use.

    Parameters
    ----------
    n_components : int
        K, the number of components.

    Returns
    -------
    float
        The bound, an absolute change of log p(x_i) per unit weight.
    """
    K = int(n_components)
    return (1.0001 * FLOAT32_UNIT_ROUNDOFF * ((K - 1) / np.e + EXP_F32_ERROR)
            + K * 2.0 ** -125)


def _full_float32_form_constant(n_features: int) -> float:
    """c_d of the full kernel's float32 quadratic form: |q~ - q| <= c_d ||b||^2.

    docs/elbo_chain.md#float32: t = (x - hi) - lo carries at most 2.0001 u32 a_l
    (a_l = |t_l| + u32 |mu_l|), U rounded to float u32 more, so each term of
    y_j = sum_l t_l U_lj is off by at most 3.0002 u32 |U_lj| a_l, and the (at most
    d)-term float sum adds gamma_d: |y~_j - y_j| <= eps b_j, b = |U|^T a, eps =
    3.0002 u32 + gamma_d (1 + 4 u32). Squaring and the d-term sum of the squares:
    c_d = 2 eps + eps^2 + gamma_d (1 + eps)^2, plus d 2^-149 (underflow).

    Parameters
    ----------
    n_features : int
        d.

    Returns
    -------
    float
        c_d, relative to ``||b||^2``.
    """
    u = FLOAT32_UNIT_ROUNDOFF
    d = int(n_features)
    gamma = d * u / (1.0 - d * u)
    eps = 3.0002 * u + gamma * (1.0 + 4.0 * u)
    return 2.0 * eps + eps * eps + gamma * (1.0 + eps) ** 2 + d * 2.0 ** -149


def _full_float32_log_density_rounding(stats: GaussianStats, params: Params,
                                       n_components: int) -> float:
    """The full kernel's float32 rounding of the rows behind ``stats``, summed.

    Each row's log-density is off by at most ``c_d / 2 ||b_ik||^2 + d (d + 1)
    2^-149`` (:func:`_full_float32_form_constant`, b_ik = |U_k|^T a_ik, a_ikl =
    |x_il - mu_kl| + u32 |mu_kl|); summed with the weights w_ik, by Minkowski
    ``sum_i w_ik ||b_ik||^2 <= || |U_k|^T s_k ||^2``, s_kl = sqrt(T_kl) + u32
    |mu_kl| sqrt(W_k), T_kl = sum_i w_ik (x_il - mu_kl)^2 from the moments about
    the reference points; plus the float32-exp posterior's per-row bound times
    the weight (docs/elbo_chain.md#float32).

    Parameters
    ----------
    stats : GaussianStats
        Full statistics (scatter (k, d, d)) of the rows, weights w_ik.
    params : dict
        ``means`` (k, d) and ``precisions_cholesky`` (k, d, d).
    n_components : int
        K.

    Returns
    -------
    float
        An absolute bound on the change of the rows' weighted log-densities.
    """
    u = FLOAT32_UNIT_ROUNDOFF
    means = np.asarray(params["means"], dtype=np.float64)
    U = np.abs(np.triu(np.asarray(params["precisions_cholesky"], dtype=np.float64)))
    d = means.shape[1]
    W = np.asarray(stats.weight, dtype=np.float64)
    T = _spread_about(stats, means, W[:, None])
    s = np.sqrt(T) + u * np.abs(means) * np.sqrt(W)[:, None]
    b2 = np.sum(np.einsum("kl,klj->kj", s, U) ** 2)
    per_row = _float32_posterior_rounding(n_components) + d * (d + 1) * 2.0 ** -149
    return float(0.5 * _full_float32_form_constant(d) * b2 + per_row * np.sum(W))


def _full_float32_statistics_rounding(stats: GaussianStats, params: Params,
                                      new_params: Params) -> float:
    """Bound on what the full kernel's float32 statistics move Q.

    The kernel sums the moments of float32 rows about h = float32(mu_t), the
    pass's means rounded to float, in float (docs/elbo_chain.md#float32): t =
    x - h, w scaled by 2^40 and rounded, w t and (w t) t_b each rounded, summed
    in 16 lanes of m = ``_gaussian_kernel.STATISTICS_ROWS_F32`` / 16 rows each
    before they are added in double. Per component k and entries a, b (gamma_j = j u32 / (1 - j
    u32)), with T_a = sum_i w_i t_ia^2,

        |dS_ab| <= gamma_{m+3} sum_i w_i |t_ia t_ib| + 2^-85
                <= gamma_{m+3} sqrt(T_a T_b) + 2^-85,
        |dR_a|  <= gamma_{m+2} sum_i w_i |t_ia| + 2^-85
                <= gamma_{m+2} sqrt(W T_a) + 2^-85

    (Cauchy-Schwarz; 2^-85 bounds the absolute error of weights and products
    below float's normal range for any n < 2^63 rows, since the kernel sums in
    float only where |x| + |h| <= 2^20). The exact re-shifting merges carry each
    chunk's errors to the merged reference c unchanged in sum, and
    ``expected_log_likelihood(stats, theta)`` reads -1/2 tr(P (S + (c - mu) r^T
    + r (c - mu)^T + W (c - mu)(c - mu)^T)), P = U U^T of theta: Q(theta) moves
    by at most

        E(theta) = sum_k (1/2 sum_ab |P_ab| |dS_ab| + sum_a |(P (h - mu))_a| |dR_a|).

    The ascent link needs E(theta_t), the bound link E(theta_{t+1}): this
    returns the larger. T_a comes from the statistics themselves (their own
    error, ~gamma_{m+3} relative, is inside a factor 1.001): the smaller of S_aa +
    2 (c_a - h_a) r_a + W (c_a - h_a)^2 and twice the scatter about the mean, S_aa
    - r_a^2 / W, since the kernel sums in float only chunks whose weighted means
    are "settled" (2 shift^2 <= S_aa / W about h: their sum_i w t_a^2 is at most
    twice their own scatter, and the chunks' scatters add up to at most the
    component's). Chunks the kernel summed in double (means that moved, data or
    weights outside that range) have no float32 error: the bound covers them.

    Parameters
    ----------
    stats : GaussianStats
        Full statistics (scatter (k, d, d)) from the pass at ``params``.
    params, new_params : dict
        theta_t (the pass's parameters) and theta_{t+1} (the M-step's):
        ``means`` (k, d) and ``precisions_cholesky`` (k, d, d).

    Returns
    -------
    float
        The bound, an absolute error of the expected log-likelihood; 0 for
        diagonal statistics.
    """
    if stats.diagonal:
        return 0.0
    u = FLOAT32_UNIT_ROUNDOFF
    m = _FULL_STATISTICS_ROWS // 16
    g_s, g_r = ((j * u) / (1.0 - j * u) for j in (m + 3, m + 2))
    h = np.asarray(params["means"], dtype=np.float64).astype(np.float32).astype(np.float64)
    W = np.asarray(stats.weight, dtype=np.float64)
    S_diag = np.einsum("kjj->kj", stats.scatter)
    T = _spread_about(stats, h, W[:, None])
    # only settled chunks were summed in float (2 shift^2 <= S_jj / W about h, so
    # their sum_i w t^2 <= 2 W var per chunk), and within-chunk variances add up
    # to at most the component's scatter about its mean: T <= 2 (S - r r / W)
    with np.errstate(divide="ignore", invalid="ignore"):
        scat = np.where(W[:, None] > 0, S_diag - stats.residual ** 2 / W[:, None], 0.0)
    T = 1.001 * np.minimum(T, 2.0 * np.maximum(scat, 0.0))
    dS = g_s * np.sqrt(T[:, :, None] * T[:, None, :]) + 2.0 ** -85
    dR = g_r * np.sqrt(W[:, None] * T) + 2.0 ** -85
    live = W > 0
    worst = 0.0
    for theta in (params, new_params):
        U = np.triu(np.asarray(theta["precisions_cholesky"], dtype=np.float64))
        P = U @ np.swapaxes(U, 1, 2)
        move = np.einsum("kab,kb->ka", P, h - np.asarray(theta["means"], dtype=np.float64))
        per_k = 0.5 * np.sum(np.abs(P) * dS, axis=(1, 2)) + np.sum(np.abs(move) * dR, axis=1)
        worst = max(worst, float(np.sum(per_k[live])))
    return worst


def _random_spd_matrix(rng: np.random.Generator, n_features: int,
                       log10_condition: float, scale: float) -> np.ndarray:
    """A symmetric positive definite matrix with the given condition number: a random
    orthogonal basis (QR of a Gaussian matrix) and eigenvalues ``scale * 10**e``, e
    spread over [0, log10_condition] with both ends included (for d > 1)."""
    d = n_features
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    e = rng.uniform(0.0, log10_condition, d)
    if d > 1:
        e[0], e[1] = 0.0, log10_condition
    S = scale * (Q * 10.0 ** e) @ Q.T
    return 0.5 * (S + S.T)


def _condition_of_factor(factor: np.ndarray) -> float:
    """Condition number of F F^T from the singular values of the factor F."""
    s = np.linalg.svd(factor, compute_uv=False)
    return float((s[0] / s[-1]) ** 2) if s[-1] > 0 else np.inf


def _representation(internal_type: str) -> str:
    """'spherical', 'diagonal' or 'full': how a type's covariances are stored."""
    if internal_type in _mclust.MODELS:
        return _mclust.REPRESENTATION[internal_type]
    return {"spherical": "spherical", "diag": "diagonal"}.get(internal_type, "full")


def _random_mclust_covariances(rng: np.random.Generator, model: str, k: int, d: int,
                               nearly_degenerate: bool) -> np.ndarray:
    """Random covariances lambda_k D_k A_k D_k^T of an mclust model: volumes
    10^U(-1, 1) (equal or per component), shapes with log10 condition number U(0, 2)
    (nearly degenerate: U(6, 9), both ends of the range included; for the spherical
    models, whose condition number is 1, volumes 1e-9-1e-7 instead), orientations
    random orthogonal (equal or per component, I for the diagonal models)."""
    def count(letter):
        return 1 if letter == "E" else k

    if _mclust.REPRESENTATION[model] == "spherical" and nearly_degenerate:
        vol = 10.0 ** rng.uniform(-9.0, -7.0, count(model[0]))
    else:
        vol = 10.0 ** rng.uniform(-1.0, 1.0, count(model[0]))
    vol = np.broadcast_to(vol, (k,))
    if model[1] == "I":
        shape = np.ones((k, d))
    else:
        shape = np.empty((count(model[1]), d))
        for row in shape:
            cond = rng.uniform(6.0, 9.0) if nearly_degenerate else rng.uniform(0.0, 2.0)
            e = rng.uniform(0.0, cond, d)
            if d > 1:
                e[:2] = 0.0, cond
            e = np.sort(e)[::-1]
            row[:] = 10.0 ** (e - np.mean(e))               # |A| = 1, decreasing
        shape = np.broadcast_to(shape, (k, d))
    if model[2] == "I":
        orient = np.broadcast_to(np.eye(d), (k, d, d))
    else:
        orient = np.empty((count(model[2]), d, d))
        for m in range(orient.shape[0]):
            Q, R = np.linalg.qr(rng.standard_normal((d, d)))
            orient[m] = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
        orient = np.broadcast_to(orient, (k, d, d))
    cov = vol[:, None, None] * np.einsum("kij,kj,klj->kil", orient, shape, orient)
    return 0.5 * (cov + np.swapaxes(cov, 1, 2))


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="gaussian", factory=GaussianFamily,
        capabilities=frozenset({"compiled_kernel", "sampling", "support:real",
                                "covariance_type:full", "covariance_type:tied",
                                "covariance_type:diag", "covariance_type:spherical"}),
        description="multivariate normal components (covariance_type: full, tied, "
                    "diag, spherical, or mclust's EII ... VVV)")]

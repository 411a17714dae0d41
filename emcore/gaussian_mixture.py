"""``emcore.GaussianMixture``: scikit-learn's GaussianMixture, on emcore's engine."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from emcore import _validation as v
from emcore._input import check_input
from emcore._mixture import _MixtureBase
from emcore.constraints import Constraints
from emcore.engine import FitResult
from emcore.plugin_api import PosteriorRule
from emcore.priors import GaussianPrior, ResolvedGaussianPrior
from emcore.registry import get_registry

__all__ = ["GaussianMixture"]

_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _parameter_shape(covariance_type: str, k: int, d: int) -> tuple:
    """scikit-learn's shape of covariances_/precisions_ for a covariance type."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        covariance_type]


def _compact(full: np.ndarray, covariance_type: str) -> np.ndarray:
    """(k, d, d) -> scikit-learn's shape for the type (a copy)."""
    if covariance_type == "full":
        return full.copy()
    if covariance_type == "tied":
        return full[0].copy()
    if covariance_type == "diag":
        return np.einsum("kjj->kj", full).copy()
    return full[:, 0, 0].copy()


def _expand(compact: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """scikit-learn's shape for the type -> (k, d, d)."""
    compact = np.asarray(compact, dtype=np.float64)
    if covariance_type == "full":
        return compact.copy()
    if covariance_type == "tied":
        return np.broadcast_to(compact, (k, d, d)).copy()
    if covariance_type == "diag":
        return compact[:, :, None] * np.eye(d)
    return compact[:, None, None] * np.eye(d)


class GaussianMixture(_MixtureBase):
    """Gaussian mixture fitted by EM, with a recorded and checked ELBO chain.

    Same parameters, methods and fitted attributes as
    ``sklearn.mixture.GaussianMixture``, plus ``n_jobs``, ``history_`` and
    ``stop_reason_``. The Gaussian family and the posterior rule come from the
    plugin registry (``gaussian`` and ``soft``).

    Parameters
    ----------
    n_components : int, default 1
        Number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default 'full'
        As in scikit-learn: each component its own covariance matrix ('full'), one
        shared matrix ('tied'), diagonal matrices ('diag'), or one variance per
        component ('spherical'). Fitted attributes have scikit-learn's shapes.
    tol : float, default 1e-6
        Stop when the relative change of the log-likelihood between two
        iterations, |L_{t+1} - L_t| / |L_{t+1}|, is below ``tol`` (0: never, run
        max_iter iterations).
        (scikit-learn stops on the *absolute* change of the per-sample mean.)
    reg_covar : float, default 1e-6
        Added to the diagonal of each covariance after the M-step. Not a fixed
        objective: ``history_`` records the penalty change so the ELBO chain is
        checked in its penalised form. Use 0 for the plain maximum-likelihood EM.
    max_iter : int, default 100
        Maximum number of M-steps.
    n_init : int, default 1
        Number of initialisations; the fit with the highest log-likelihood is kept.
    init_params : {'k-means++', 'random', 'random_from_data'}, default 'k-means++'
        'k-means++': D^2-sampled seeds, each row assigned to the nearest seed, then
        one M-step. 'random_from_data': uniformly drawn distinct rows as seeds, the
        same assignment. 'random': responsibilities drawn uniformly and normalised.
    weights_init : array of shape (n_components,), optional
    means_init : array of shape (n_components, n_features), optional
    precisions_init : array, optional
        Initial parameters, as scikit-learn defines them (precision = inverse
        covariance; shape (k, d, d) for 'full', (d, d) 'tied', (k, d) 'diag', (k,)
        'spherical'). When all three are given, ``init_params`` is not used.
    random_state : None, int, numpy RandomState or Generator
        Seeds the initialisation and ``sample``.
    warm_start : bool, default False
        If True and already fitted, ``fit`` starts from the fitted parameters
        (and ``n_init`` is ignored).
    n_jobs : int or None, default None
        Threads for the chunk loop: None = all available CPUs, -1 = all. Results
        are bitwise identical for every value.
    verbose : int, default 0
        Print one line per iteration if > 0.
    prior : None, 'default' or emcore.GaussianPrior, default None
        None: maximum likelihood. 'default': the conjugate prior of Fraley & Raftery
        (2007) with mclust's default hyperparameters, and a flat Dirichlet prior on
        the weights; a :class:`emcore.GaussianPrior` sets them. With a prior the
        fit is MAP-EM: log-likelihood + log prior never decreases (``history_``
        records both, ``objective`` is their sum), and degenerate components
        (identical points, n_k < d) fit without error.
    online_step_exponent : float in (0.5, 1], default 0.6
        alpha of the step sizes rho_t = (t + 2)^(-alpha) of online EM
        (:meth:`partial_fit`); smaller forgets older batches faster.
    posterior : None, emcore.Constraints, str or PosteriorRule, default None
        The E-step. None: the exact posterior (standard EM). An
        :class:`emcore.Constraints`: posterior regularization, the KL projection
        of the posterior onto the constraints (bounds on component shares,
        partial labels, per-point bounds, general expectation constraints); the
        fit then keeps the PR objective J = loglik - KL(q || p) non-decreasing
        (``lower_bound_`` is J per sample, ``history_[t].rule_state`` records J,
        the log-likelihood, the constraint violations, the duality gap and
        lambda), runs on one thread, and ``predict_proba(X, constrained=True)``
        gives the constrained posterior of the training rows. A registry name or
        rule object uses that rule (see :class:`emcore.MixtureModel`).

    Attributes
    ----------
    weights_ : ndarray (n_components,)
    means_ : ndarray (n_components, n_features)
    covariances_ : ndarray
        Shape (k, d, d) 'full', (d, d) 'tied', (k, d) 'diag', (k,) 'spherical'.
    precisions_ : ndarray
        Inverses of the covariances, same shapes.
    precisions_cholesky_ : ndarray
        Upper-triangular U with precision U U^T (scikit-learn's convention); for
        'diag' and 'spherical' the inverse standard deviations.
    converged_ : bool
        True if the ``tol`` rule fired.
    stop_reason_ : {'tol', 'max_iter', 'interrupted', 'partial_fit'}
        Which stopping rule fired ('partial_fit' after online EM).
    n_iter_ : int
        Number of M-steps of the best fit.
    lower_bound_ : float
        Per-sample log-likelihood at the fitted parameters (there, the ELBO
        with the exact posterior equals it).
    history_ : tuple of emcore.engine.Iteration
        Per iteration: loglik(theta_t), ELBO(q_t, theta_t), ELBO(q_t, theta_{t+1}),
        loglik(theta_{t+1}), penalty change, parameter change and the derived
        rounding tolerances; ``it.chain_holds()`` checks the chain.
    n_features_in_ : int
    prior_ : emcore.priors.ResolvedGaussianPrior or None
        The prior with its defaults filled in from the training data.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full",
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_init: int = 1, init_params: str = "k-means++",
                 weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None,
                 warm_start: bool = False, n_jobs: Optional[int] = None,
                 verbose: int = 0, prior: Any = None, posterior: Any = None,
                 online_step_exponent: float = 0.6):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.prior = prior
        self.online_step_exponent = online_step_exponent
        self.posterior = posterior

    # --- resolution and validation --------------------------------------------------
    def _family(self, n_features: int, n_components: Optional[int] = None, prior=None):
        record = get_registry().family("gaussian")
        return record.factory(self.n_components if n_components is None else n_components,
                              n_features, covariance_type=self.covariance_type,
                              reg_covar=self.reg_covar, prior=prior)

    def _resolved_prior(self, X: np.ndarray, sample_weight) -> Optional[ResolvedGaussianPrior]:
        # self.prior was checked in _check_parameters: None, 'default' or GaussianPrior
        if self.prior is None:
            return None
        prior = GaussianPrior() if isinstance(self.prior, str) else self.prior
        if not isinstance(X, np.ndarray):
            raise ValueError("The 'prior' parameter of GaussianMixture must be None when X "
                             "is a chunked source (memmap, h5py, zarr, Dask): the prior's "
                             "defaults are computed from all rows in memory.")
        return prior.resolve(X, self.n_components, sample_weight, self.covariance_type)

    def _fit_rule(self):
        return self._resolve_rule(self.posterior)

    def _check_parameters(self, X: np.ndarray) -> None:
        owner = "GaussianMixture"
        k = self._check_common(X)
        v.check_choice(self.covariance_type, "covariance_type", owner, _COVARIANCE_TYPES)
        v.check_float(self.reg_covar, "reg_covar", owner)
        if not (self.prior is None or isinstance(self.prior, GaussianPrior)
                or (isinstance(self.prior, str) and self.prior == "default")):
            raise ValueError("The 'prior' parameter of GaussianMixture must be None, "
                             f"'default' or an emcore.GaussianPrior. Got {self.prior!r} "
                             "instead.")
        if not (self.posterior is None or isinstance(self.posterior, (str, Constraints,
                                                                        PosteriorRule))):
            raise ValueError("The 'posterior' parameter of GaussianMixture must be None, an "
                             "emcore.Constraints, a registry name (str) or a PosteriorRule. "
                             f"Got {self.posterior!r} instead.")
        d = X.shape[1]
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or \
                    abs(w.sum() - 1.0) > 1e-6:
                raise ValueError(f"The 'weights_init' parameter of GaussianMixture must be "
                                 f"an array of shape ({k},) of non-negative numbers summing "
                                 f"to 1. Got {self.weights_init!r} instead.")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, d) or not np.all(np.isfinite(m)):
                raise ValueError(f"The 'means_init' parameter of GaussianMixture must be a "
                                 f"finite array of shape ({k}, {d}). Got shape {m.shape} "
                                 "instead.")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            shape = _parameter_shape(self.covariance_type, k, d)
            symmetric = (self.covariance_type in ("diag", "spherical") or p.shape != shape
                         or np.allclose(p, np.swapaxes(p, -1, -2)))
            if p.shape != shape or not np.all(np.isfinite(p)) or not symmetric or \
                    (self.covariance_type in ("diag", "spherical") and np.any(p <= 0)):
                what = {"full": "symmetric matrices", "tied": "a symmetric matrix",
                        "diag": "positive precisions", "spherical": "positive precisions"}
                raise ValueError(f"The 'precisions_init' parameter of GaussianMixture must "
                                 f"be a finite array of {what[self.covariance_type]} of "
                                 f"shape {shape} for covariance_type="
                                 f"{self.covariance_type!r}. Got shape {p.shape} instead.")

    # --- initialisation -------------------------------------------------------------
    def _initial_parameters(self, X: np.ndarray, family, rng: np.random.Generator,
                            sample_weight: Optional[np.ndarray] = None):
        k, d = self.n_components, X.shape[1]
        given_weights = None
        if self.weights_init is not None:
            given_weights = np.asarray(self.weights_init, dtype=np.float64)
            given_weights = given_weights / given_weights.sum()
        if all(x is not None for x in (self.weights_init, self.means_init,
                                       self.precisions_init)):
            params = family.params_from_precisions(
                self.means_init, _expand(self.precisions_init, self.covariance_type, k, d))
            return given_weights, params
        weights, params = super()._initial_parameters(X, family, rng, sample_weight)
        if given_weights is not None:
            weights = given_weights
        if self.means_init is not None:
            params = family.params_from_covariances(self.means_init, params["covariances"])
        if self.precisions_init is not None:
            params = family.params_from_precisions(
                params["means"], _expand(self.precisions_init, self.covariance_type, k, d))
        return weights, params

    # --- fitting --------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "GaussianMixture":
        """Fit the mixture by EM; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers; n_samples >= n_components.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weight of each row (at least n_components positive). The
            weights scale the sufficient statistics: a weight of 2 fits like the row
            repeated twice, a weight of 0 like the row removed; seeding draws rows
            in proportion to their weight. ``lower_bound_`` is then the weighted
            mean log-likelihood.
        """
        X = check_input(X, owner="GaussianMixture.fit")
        self._check_parameters(X)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0],
                                              owner="GaussianMixture.fit",
                                              min_positive=self.n_components)
        prior = self._resolved_prior(X, sample_weight)
        family = self._family(X.shape[1], prior=prior)
        rng = v.check_random_state(self.random_state, "GaussianMixture")
        warm = (bool(self.warm_start) and hasattr(self, "weights_")
                and self.n_features_in_ == X.shape[1]
                and self.weights_.shape[0] == self.n_components)
        rule = self._fit_rule()
        best = self._run_starts(X, family, rule, sample_weight, rng, warm=warm,
                                weight_concentration=(None if prior is None
                                                      else prior.weight_concentration))
        self._set_fitted(best, X.shape[1])
        self._fitted_rule = rule
        self.prior_ = prior
        self._online = None          # fit discards partial_fit's running state
        return self

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        # the family keeps full (k, d, d) arrays for every type; users see
        # scikit-learn's shapes per covariance_type
        super()._set_fitted(result, n_features)
        t = self.covariance_type
        U = result.params["precisions_cholesky"]
        self.means_ = result.params["means"]
        self.covariances_ = _compact(result.params["covariances"], t)
        self.precisions_cholesky_ = _compact(U, t)
        self.precisions_ = _compact(U @ np.swapaxes(U, 1, 2), t)

    # --- online EM ------------------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None
                    ) -> "GaussianMixture":
        """One step of online (stepwise) EM on the mini-batch X; returns self.

        Keeps a running average s of the per-row sufficient statistics,
        s <- (1 - rho_t) s + rho_t s_batch, with s_batch the batch's E-step
        statistics divided by its total weight and rho_t = (t + 2)^(-alpha),
        alpha = ``online_step_exponent``, then the M-step from s (Cappé &
        Moulines 2009; Liang & Klein 2009). The first call initialises from its
        batch (``init_params`` or the given ``*_init``) and sets s from it.

        Guarantee: no step is monotone (a batch may lower any likelihood); on a
        stationary stream the step sizes satisfy Robbins-Monro (sum rho_t = inf,
        sum rho_t^2 < inf for alpha in (0.5, 1]) and s converges to a stationary
        point of the expected log-likelihood (Cappé & Moulines 2009, Thm. 1).
        ``lower_bound_`` is the mean log-likelihood of the last batch at the
        parameters before its step; ``n_iter_`` counts the batches; ``history_``
        is empty. ``fit`` discards the online state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The batch (in memory); the first batch needs n_samples >= n_components.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
        """
        from emcore._online import check_exponent, stepwise_update
        owner = "GaussianMixture.partial_fit"
        X = check_input(X, owner=owner,
                         n_features=getattr(self, "n_features_in_", None)
                         if getattr(self, "_online", None) is not None else None)
        if not isinstance(X, np.ndarray):
            X = np.ascontiguousarray(X[0:X.shape[0]])        # a batch fits in memory
        alpha = check_exponent(self.online_step_exponent, "GaussianMixture")
        state = getattr(self, "_online", None)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner)
        if state is None:
            if self.prior is not None:
                raise ValueError("The 'prior' parameter of GaussianMixture must be None "
                                 "for partial_fit (online EM is maximum likelihood).")
            if self.posterior is not None:
                raise ValueError("The 'posterior' parameter of GaussianMixture must be "
                                 "None for partial_fit (online EM uses the exact "
                                 "posterior).")
            self._check_parameters(X)
            family = self._family(X.shape[1])
            rng = v.check_random_state(self.random_state, "GaussianMixture")
            weights, params = self._initial_parameters(X, family, rng, sample_weight)
            self._online_rule = self._likelihood_rule()
        else:
            family = self._family(X.shape[1])
            weights, params = state.weights, state.params
        state = stepwise_update(state, X, family, self._online_rule, weights, params,
                                sample_weight, alpha, n_jobs=self.n_jobs)
        self._online = state
        self._set_fitted(FitResult(weights=state.weights, params=state.params, history=(),
                                   n_iter=state.t, stop_reason="max_iter",
                                   value=state.batch_loglik, objective=state.batch_loglik,
                                   objective_name="batch log-likelihood", n_samples=1.0),
                         X.shape[1])
        self._fitted_rule = self._online_rule
        self.stop_reason_ = "partial_fit"
        self.prior_ = None
        return self


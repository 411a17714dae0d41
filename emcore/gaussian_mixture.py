"""``emcore.GaussianMixture``: scikit-learn's GaussianMixture, on emcore's engine."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Union

import numpy as np

import scipy.linalg

from emcore import _validation as v
from emcore._feature_names import check_feature_names, record_feature_names
from emcore import _missing
from emcore._init import check_resp_conflicts
from emcore._input import check_input, is_chunked, is_float32, refuse_sparse
from emcore._logging import progress_bar
from emcore._mixture import _MixtureBase, _check_weights
from emcore._online import check_exponent, stepwise_update
from emcore.constraints import Constraints
from emcore.engine import FitResult, Iteration
from emcore.exceptions import (ConvergenceWarning, DegenerateComponentError,
                               _sklearn_compatible)
from emcore.plugin_api import PosteriorRule
from emcore.priors import GaussianPrior, ResolvedGaussianPrior
from emcore.registry import get_registry

__all__ = ["GaussianMixture"]

#: mclust's fourteen models (the Gaussian family's covariance types beyond
#: scikit-learn's four, which are VVV, EEE, VVI and VII; docs/gaussian.md#mclust-models)
_MCLUST_MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE",
                  "EEV", "VEV", "EVV", "VVV")
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical") + _MCLUST_MODELS
#: the scikit-learn shape each type's fitted attributes take: one variance per
#: component (k,) for EII, VII; per-feature variances (k, d) for EEI, VEI, EVI, VVI;
#: one matrix (d, d) for EEE; matrices (k, d, d) for the others. Also the kind of
#: conjugate prior each takes (GaussianPrior.resolve's covariance_type)
_SHAPE_KIND = {"full": "full", "tied": "tied", "diag": "diag", "spherical": "spherical",
               "EII": "spherical", "VII": "spherical", "EEI": "diag", "VEI": "diag",
               "EVI": "diag", "VVI": "diag", "EEE": "tied",
               **{m: "full" for m in ("VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")}}

# the smallest tol for which GaussianMixture asks for float32_level 'all' on
# float32 rows. That level's bounds (the float32 statistics' blocks, the full
# kernel's float32 form) grow like (B + d) d u32 per row near a maximum, against
# |l| ~ d per row: at (n, d, K) = (2e4, 16, 2), two unit clusters, tau_B was
# 1.7e-6 ('diag') and 2.9e-6 ('full') of |objective| (measured), above a tol of
# 1e-6: the stopping rule would test rounding noise and the fit warns at
# iteration 0. 'log_density' stays below it there (0.9e-6 'diag', 'full' exact);
# from 1e-5 'all' leaves a margin of about 3 (docs/elbo_chain.md#float32-level)
_FLOAT32_ALL_MIN_TOL = 1e-5


def _parameter_shape(covariance_type: str, k: int, d: int) -> tuple:
    """scikit-learn's shape of covariances_/precisions_ for a covariance type."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        _SHAPE_KIND[covariance_type]]


def _compact(full: np.ndarray, covariance_type: str) -> np.ndarray:
    """(k, d, d) -> scikit-learn's shape for the type (a copy)."""
    covariance_type = _SHAPE_KIND[covariance_type]
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
    covariance_type = _SHAPE_KIND[covariance_type]
    if covariance_type == "full":
        return compact.copy()
    if covariance_type == "tied":
        return np.broadcast_to(compact, (k, d, d)).copy()
    if covariance_type == "diag":
        return compact[:, :, None] * np.eye(d)
    return compact[:, None, None] * np.eye(d)


# The three representations of the covariances (scikit-learn's fitted attributes):
# each is computed from whichever was last assigned, so they always agree.
_REPRESENTATIONS = ("covariances_", "precisions_", "precisions_cholesky_")
_WHAT = {
    "covariances_": {"full": "symmetric positive definite matrices",
                     "tied": "a symmetric positive definite matrix",
                     "diag": "positive variances", "spherical": "positive variances"},
    "precisions_": {"full": "symmetric positive definite matrices",
                    "tied": "a symmetric positive definite matrix",
                    "diag": "positive precisions", "spherical": "positive precisions"},
    "precisions_cholesky_": {
        "full": "upper-triangular matrices with a positive diagonal",
        "tied": "an upper-triangular matrix with a positive diagonal",
        "diag": "positive inverse standard deviations",
        "spherical": "positive inverse standard deviations"},
}


_SHAPE_NAMES = {"full": "(n_components, n_features, n_features)",
                "tied": "(n_features, n_features)", "diag": "(n_components, n_features)",
                "spherical": "(n_components,)"}


def _kind(name: str) -> str:
    return "attribute" if name.endswith("_") else "parameter"


def _representations(value: Any, name: str, representation: str, covariance_type: str,
                     owner: str) -> tuple:
    """(covariances, precisions, precisions_cholesky) in scikit-learn's shapes for
    the type, from ``value`` given as ``representation`` (one of _REPRESENTATIONS),
    or a ValueError naming ``name``.

    Matrices must be symmetric (to the tolerance ``precisions_init`` has always had,
    numpy's allclose; they are then symmetrised) and numerically positive definite
    (the Gaussian family's criterion: condition number below 1 / (d eps)); a
    Cholesky factor upper triangular with a positive diagonal, as scikit-learn's.
    """
    t = _SHAPE_KIND[covariance_type]
    prefix = (f"The {name!r} {_kind(name)} of {owner} must be a finite array of "
              f"{_WHAT[representation][t]} for covariance_type={covariance_type!r}, of "
              f"shape {_SHAPE_NAMES[t]}")
    arr = v.as_float_array(value, prefix)
    ndim = {"full": 3, "tied": 2, "diag": 2, "spherical": 1}[t]
    if arr.ndim != ndim or 0 in arr.shape or (t in ("full", "tied")
                                               and arr.shape[-1] != arr.shape[-2]):
        raise ValueError(f"{prefix}. Got an array of shape {arr.shape} instead.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{prefix}. Got non-finite entries instead.")
    if t in ("diag", "spherical"):
        if np.any(arr <= 0):
            raise ValueError(f"{prefix}. Got an entry {float(arr.min())!r} <= 0 instead.")
        with np.errstate(over="ignore", divide="ignore", under="ignore"):
            if representation == "covariances_":
                out = (arr, 1.0 / arr, 1.0 / np.sqrt(arr))
            elif representation == "precisions_":
                out = (1.0 / arr, arr, np.sqrt(arr))
            else:
                out = (1.0 / (arr * arr), arr * arr, arr)
        if not all(np.all(np.isfinite(a) & (a > 0)) for a in out):
            raise ValueError(f"{prefix}. Got entries whose reciprocals or squares over- "
                             "or underflow in float64 instead.")
        return tuple(a.copy() for a in out)
    mats = arr if t == "full" else arr[None]
    if representation == "precisions_cholesky_":
        if np.any(np.tril(mats, -1) != 0) or \
                not np.all(np.diagonal(mats, axis1=1, axis2=2) > 0):
            raise ValueError(f"{prefix}. Got a matrix that is not upper triangular with "
                             "a positive diagonal instead.")
    elif not np.allclose(mats, np.swapaxes(mats, 1, 2)):
        raise ValueError(f"{prefix}. Got a matrix that is not symmetric instead.")
    else:
        mats = 0.5 * (mats + np.swapaxes(mats, 1, 2))
    k, d = mats.shape[0], mats.shape[1]
    family = get_registry().family("gaussian").factory(k, d, covariance_type="full")
    zeros = np.zeros((k, d))
    eye = np.eye(d)
    try:
        if representation == "covariances_":
            params = family.params_from_covariances(zeros, mats)
        elif representation == "precisions_":
            params = family.params_from_precisions(zeros, mats)
        else:
            inv = np.array([scipy.linalg.solve_triangular(U, eye, lower=False)
                            for U in mats])
            cov = np.swapaxes(inv, 1, 2) @ inv              # (U U^T)^-1 = U^-T U^-1
            cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
            # the check of positive definiteness; U itself stays as given
            params = dict(family.params_from_covariances(zeros, cov),
                          precisions_cholesky=mats)
    except DegenerateComponentError as exc:
        raise ValueError(f"{prefix}. Got a matrix that is not numerically positive "
                         f"definite (component {exc.component}; condition number >= "
                         "1 / (n_features eps)) instead.") from None
    U = params["precisions_cholesky"]
    prec = mats if representation == "precisions_" else U @ np.swapaxes(U, 1, 2)
    out = (params["covariances"], prec, U)
    return tuple(a.copy() if t == "full" else a[0].copy() for a in out)


def _check_means(means: Any, k: int, name: str, owner: str,
                 n_features: Optional[int] = None) -> np.ndarray:
    """Means as a finite float64 (k, d) array (d = ``n_features`` when given), or a
    ValueError naming ``name``: fitted, given and starting means alike."""
    prefix = (f"The {name!r} {_kind(name)} of {owner} must be a finite array of shape "
              + (f"(n_components, n_features) with n_components={k} (the length of the "
                 "weights)" if n_features is None else f"({k}, {n_features})"))
    m = v.as_float_array(means, prefix)
    if m.ndim != 2 or m.shape[0] != k or m.shape[1] == 0 or (
            n_features is not None and m.shape[1] != n_features):
        raise ValueError(f"{prefix}. Got an array of shape {m.shape} instead.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{prefix}. Got non-finite entries instead.")
    return m


def _representation_property(name: str) -> property:
    key = "_" + name.rstrip("_")

    def fget(self):
        try:
            value = self.__dict__[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute "
                                 f"{name!r} (not fitted)") from None
        view = value.view()
        view.flags.writeable = False        # assign a whole array to change the model
        return view

    def fset(self, value):
        self._set_representation(name, value)

    return property(fget, fset, doc=f"Fitted ``{name}`` (assigning it updates the "
                                    "other two representations of the covariances).")


def _in_dtype_of(X: Any, out: np.ndarray) -> np.ndarray:
    """``out`` (computed in float64) as float32 for a float32 X: the outputs follow
    the input's precision, as the fitted attributes do (docs/elbo_chain.md#float32)."""
    return out.astype(np.float32) if is_float32(X) else out


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
    covariance_type : {'full', 'tied', 'diag', 'spherical'} or an mclust name, default 'full'
        As in scikit-learn: each component its own covariance matrix ('full'), one
        shared matrix ('tied'), diagonal matrices ('diag'), or one variance per
        component ('spherical'). Fitted attributes have scikit-learn's shapes.
        Or one of mclust's fourteen models 'EII', 'VII', 'EEI', 'VEI', 'EVI',
        'VVI', 'EEE', 'VEE', 'EVE', 'VVE', 'EEV', 'VEV', 'EVV', 'VVV' (volume,
        shape and orientation Equal or Variable across components, 'I' for none;
        'VVV', 'EEE', 'VVI', 'VII' are 'full', 'tied', 'diag', 'spherical'); their
        fitted attributes take the shape of their representation: (k,) for EII
        and VII, (k, d) for EEI, VEI, EVI, VVI, (d, d) for EEE, (k, d, d) for the
        others (docs/gaussian.md#mclust-models); each takes a ``prior``
        (docs/gaussian.md#mclust-prior).
    tol : float, default 1e-6
        Stop when the relative change of the log-likelihood between two
        iterations, ``|L_{t+1} - L_t| / |L_{t+1}|``, is below ``tol`` (0: never, run
        max_iter iterations).
        (scikit-learn stops on the *absolute* change of the per-sample mean.)
    reg_covar : float, default 1e-6
        Added to the diagonal of each covariance after the M-step. Not a fixed
        objective: ``history_`` records the penalty change so the ELBO chain is
        checked in its penalised form. Use 0 for the plain maximum-likelihood EM.
    max_iter : int, default 100
        Maximum number of M-steps (0: the initial parameters, as scikit-learn).
        Reaching it warns (ConvergenceWarning) unless ``tol`` or ``max_iter`` is 0.
    n_init : int, default 1
        Number of initialisations; the fit with the highest log-likelihood is kept.
    init_params : {'k-means++', 'random', 'random_from_data', 'hc'}, default 'k-means++'
        'k-means++': D^2-sampled seeds, each row assigned to the nearest seed, then
        one M-step. 'random_from_data': uniformly drawn distinct rows as seeds, the
        same assignment. 'random': responsibilities drawn uniformly and normalised.
        'hc': mclust's default start, model-based hierarchical agglomeration
        (VVV criterion, on the data scaled and rotated as mclust's ``hcUse="SVD"``;
        above 2000 rows on a random subset of 2000) cut at ``n_components``
        groups, then one M-step (docs/gaussian.md#hierarchical-start).
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
        (and ``n_init`` is ignored); X must then have the fitted number of
        features (else ValueError). After a change of ``n_components`` or
        ``covariance_type`` the fit starts afresh.
    n_jobs : int or None, default None
        Threads for the chunk loop: None = all available CPUs, -1 = all. Results
        are bitwise identical for every value.
    verbose : int, default 0
        Print one line per iteration if > 0.
    callback : callable, optional
        Called after each iteration with its :class:`emcore.engine.Iteration`
        record; returning False stops the fit (``stop_reason_ == 'callback'``,
        the other starts are not run). Lines per iteration go to the logger
        ``emcore`` (INFO with ``verbose``, labelled with the start; 2 adds the
        ELBO chain's links).
    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the starts,
        or the iterations of a single start.
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
    accelerate : None or 'squarem', default None
        'squarem': SQUAREM (Varadhan & Roland 2008) around the EM map: the same
        fixed point in fewer passes over the data, the objective still
        non-decreasing (an extrapolation that would lower it falls back to the EM
        step); ``history_[t].step`` says which kind of step each record is
        (docs/variants.md#squarem).
    missing : {'error', 'marginalize'}, default 'error'
        What NaN entries of X mean. 'error': they are refused (ValueError).
        'marginalize': they are missing values: ``fit`` runs exact EM for the
        observed-data likelihood (each row's observed coordinates; the missing
        ones enter through their conditional distribution given the observed ones),
        and ``score_samples``/``predict_proba``/``predict`` use each row's marginal
        density; :meth:`impute` fills them in. ``sample_weight``, ``prior``,
        ``accelerate`` and chunked inputs take NaN as they take complete data; a
        ``posterior`` rule and ``partial_fit`` refuse it (docs/missing_values.md).

    resp_init : array of shape (n_samples, n_components), optional
        A starting partition (one-hot rows) or responsibilities, as mclust's
        ``me(z=...)``: the fit's first step is the M-step from them (the
        weights, means and covariances they give, with ``reg_covar`` and the
        prior). Finite, non-negative rows summing to 1 (within n_components
        eps), every component with some responsibility. It is the start, so it
        cannot come with ``init_params`` (other than the default), the
        ``*_init`` parameters or ``warm_start=True`` (ValueError naming both);
        each of the ``n_init`` starts is this one.

    Attributes
    ----------
    weights_ : ndarray (n_components,)
    means_ : ndarray (n_components, n_features)
    covariances_ : ndarray
        Shape (k, d, d) 'full', (d, d) 'tied', (k, d) 'diag', (k,) 'spherical'
        (mclust's models: see ``covariance_type``).
    precisions_ : ndarray
        Inverses of the covariances, same shapes.
    precisions_cholesky_ : ndarray
        Upper-triangular U with precision U U^T (scikit-learn's convention); for
        'diag' and 'spherical' the inverse standard deviations.
    converged_ : bool
        True if the ``tol`` rule fired.
    stop_reason_ : {'tol', 'max_iter', 'interrupted', 'callback', 'partial_fit'}
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
    n_rows_dropped_ : int
        Rows of the last ``fit`` with every coordinate missing (dropped, with a
        warning); 0 without NaN.
    prior_ : emcore.priors.ResolvedGaussianPrior or None
        The prior with its defaults filled in from the training data.

    Notes
    -----
    The fitted attributes are the model. Predictions, scores, ``sample``,
    ``bic``/``aic`` and a warm start read ``weights_``, ``means_`` and
    ``precisions_cholesky_`` (as scikit-learn's predictions do; ``sample`` reads
    ``covariances_``) each time, validated (a ValueError names the attribute), so
    assigning them, or editing ``weights_``/``means_`` in place, changes the
    model. The three forms of the covariances always agree: assigning any of
    ``covariances_``, ``precisions_`` or ``precisions_cholesky_`` checks it
    (shape for the covariance type, symmetric, numerically positive definite;
    a Cholesky factor upper triangular with a positive diagonal) and recomputes
    the other two; they read as read-only arrays (assign a whole array to change
    them). The covariance type and the posterior rule are frozen at fit (or, for
    an unfitted estimator, at the first assignment of a covariance attribute):
    ``set_params`` after fit changes what the next ``fit`` does, never what the
    fitted model predicts. :meth:`from_parameters` builds a model from given
    parameters without data.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full",
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_init: int = 1, init_params: str = "k-means++",
                 weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None,
                 warm_start: bool = False, n_jobs: Optional[int] = None,
                 verbose: int = 0, prior: Any = None, posterior: Any = None,
                 online_step_exponent: float = 0.6, accelerate: Optional[str] = None,
                 callback: Optional[Callable[[Iteration], Any]] = None,
                 missing: str = "error", resp_init: Any = None, progress: bool = False):
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
        self.accelerate = accelerate
        self.callback = callback
        self.missing = missing
        self.resp_init = resp_init
        self.progress = progress

    # --- resolution and validation --------------------------------------------------
    def _family(self, n_features: int, n_components: Optional[int] = None, prior=None,
                dtype: str = "float64"):
        record = get_registry().family("gaussian")
        options = {}
        if dtype == "float32":
            # float32 statistics and the full kernel's float32 form only where the
            # stopping rule's tol stays above what their bounds resolve (tol 0:
            # no stopping rule): docs/elbo_chain.md#float32-level
            every = self.tol == 0 or self.tol >= _FLOAT32_ALL_MIN_TOL
            options["float32_level"] = "all" if every else "log_density"
        return record.factory(self.n_components if n_components is None else n_components,
                              n_features, covariance_type=self.covariance_type,
                              reg_covar=self.reg_covar, prior=prior, dtype=dtype, **options)

    def _resolved_prior(self, X: np.ndarray, sample_weight) -> Optional[ResolvedGaussianPrior]:
        # self.prior was checked in _check_parameters: None, 'default' or GaussianPrior
        if self.prior is None:
            return None
        prior = GaussianPrior() if isinstance(self.prior, str) else self.prior
        if not isinstance(X, np.ndarray):
            raise ValueError("The 'prior' parameter of GaussianMixture must be None when X "
                             "is a chunked source (memmap, h5py, zarr, Dask): the prior's "
                             "defaults are computed from all rows in memory.")
        return prior.resolve(X, self.n_components, sample_weight,
                             _SHAPE_KIND[self.covariance_type])

    def _fit_rule(self):
        return self._resolve_rule(self.posterior)

    # --- the fitted model: its public attributes ------------------------------------
    covariances_ = _representation_property("covariances_")
    precisions_ = _representation_property("precisions_")
    precisions_cholesky_ = _representation_property("precisions_cholesky_")

    def _model_covariance_type(self) -> str:
        """The covariance type of the fitted attributes: frozen at fit (or at the
        first assignment of a covariance attribute of an unfitted estimator)."""
        t = self.__dict__.get("_fitted_covariance_type")
        if t is None:
            t = v.check_choice(self.covariance_type, "covariance_type", "GaussianMixture",
                               _COVARIANCE_TYPES)
            self._fitted_covariance_type = t
        return t

    def _set_representation(self, representation: str, value: Any,
                            name: Optional[str] = None, owner: str = "GaussianMixture"
                            ) -> None:
        cov, prec, U = _representations(value, name or representation, representation,
                                        self._model_covariance_type(), owner)
        self.__dict__.update(_covariances=cov, _precisions=prec, _precisions_cholesky=U)

    def _fitted_model(self, owner: Optional[str] = None) -> tuple:
        owner = owner or "GaussianMixture"
        weights = self._checked_weights(owner)
        self._check_fitted("means_")
        self._check_fitted("covariances_")
        k = weights.shape[0]
        means = _check_means(self.means_, k, "means_", owner)
        d = means.shape[1]
        n_in = getattr(self, "n_features_in_", None)
        if n_in is not None and n_in != d:
            raise ValueError(f"The 'means_' attribute of {owner} must have n_features_in_="
                             f"{n_in} columns. Got shape {means.shape} instead (set "
                             "n_features_in_ too when the model changes dimension).")
        t = self._fitted_covariance_type
        shape = _parameter_shape(t, k, d)
        if self._covariances.shape != shape:
            raise ValueError(f"The 'covariances_' attribute of {owner} must have shape "
                             f"{shape} for covariance_type={t!r} with weights_ of {k} "
                             f"components and means_ of {d} features. Got shape "
                             f"{self._covariances.shape} instead.")
        cov, U = self._covariances, self._precisions_cholesky
        if cov.dtype == np.float32 or U.dtype == np.float32:
            # float32 attributes (a float32 fit): each representation was rounded
            # on its own, so they agree only to u32; the model is the covariances,
            # the factor derived from them in float64
            cov, _, U = _representations(np.asarray(cov, dtype=np.float64), "covariances_",
                                         "covariances_", t, owner)
        params = {"means": means, "covariances": _expand(cov, t, k, d),
                  "precisions_cholesky": _expand(U, t, k, d)}
        family = get_registry().family("gaussian").factory(k, d, covariance_type=t)
        return family, weights, params

    @classmethod
    def from_parameters(cls, weights: Any, means: Any, covariances: Any, *,
                        covariance_type: str = "full", **params: Any) -> "GaussianMixture":
        """A GaussianMixture whose fitted model is the given one, without data.

        Parameters
        ----------
        weights : array of shape (n_components,)
            Mixture weights, non-negative, summing to 1.
        means : array of shape (n_components, n_features)
        covariances : array
            In scikit-learn's shape for ``covariance_type`` (see ``covariances_``).
        covariance_type : {'full', 'tied', 'diag', 'spherical'}, default 'full'
        **params
            Other constructor parameters (``random_state`` seeds :meth:`sample`).

        Returns
        -------
        GaussianMixture
            With ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
            ``precisions_cholesky_``, ``n_features_in_`` and ``prior_`` (None) set,
            and ``n_components`` and ``covariance_type`` as given; it predicts,
            scores and samples, and ``fit`` with ``warm_start=True`` starts from it.
            Attributes that describe a fit (``converged_``, ``n_iter_``,
            ``lower_bound_``, ``history_``) are absent.
        """
        owner = "GaussianMixture.from_parameters"
        t = v.check_choice(covariance_type, "covariance_type", owner, _COVARIANCE_TYPES)
        w = _check_weights(weights, "weights", owner)
        m = _check_means(means, w.shape[0], "means", owner)
        model = cls(w.shape[0], covariance_type=t, **params)
        model._fitted_covariance_type = t
        model._set_representation("covariances_", covariances, "covariances", owner)
        shape = _parameter_shape(t, *m.shape)
        if model._covariances.shape != shape:
            raise ValueError(f"The 'covariances' parameter of {owner} must have shape "
                             f"{shape} for covariance_type={t!r} with {m.shape[0]} "
                             f"components in {m.shape[1]} features. Got shape "
                             f"{model._covariances.shape} instead.")
        model.weights_, model.means_, model.n_features_in_ = w, m, m.shape[1]
        model.prior_ = None
        return model

    def _check_parameters(self, X: np.ndarray) -> None:
        owner = "GaussianMixture"
        k = self._check_common(X)
        v.check_choice(self.covariance_type, "covariance_type", owner, _COVARIANCE_TYPES)
        v.check_float(self.reg_covar, "reg_covar", owner)
        v.check_bool(self.warm_start, "warm_start", owner)
        check_exponent(self.online_step_exponent, owner)      # (used by partial_fit)
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
        if self.resp_init is not None:
            check_resp_conflicts(owner, {name: getattr(self, name) is not None for name in
                                         ("weights_init", "means_init", "precisions_init")})
        if self.weights_init is not None:
            _check_weights(self.weights_init, "weights_init", owner, k)
        if self.means_init is not None:
            _check_means(self.means_init, k, "means_init", owner, d)
        if self.precisions_init is not None:
            # checked as the precisions_ attribute is (symmetric, positive definite),
            # up front: a bad parameter is not a degenerate component
            shape = _parameter_shape(self.covariance_type, k, d)
            cov = _representations(self.precisions_init, "precisions_init", "precisions_",
                                   self.covariance_type, "GaussianMixture")[0]
            if cov.shape != shape:
                raise ValueError(f"The 'precisions_init' parameter of GaussianMixture must "
                                 f"have shape {shape} for covariance_type="
                                 f"{self.covariance_type!r}. Got shape {cov.shape} instead.")

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
            Finite numbers; n_samples >= n_components. Dense, as scikit-learn's
            (a scipy.sparse X raises TypeError: docs/guide/using.md, *Sparse input*).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weight of each row (at least n_components positive). The
            weights scale the sufficient statistics: a weight of 2 fits like the row
            repeated twice, a weight of 0 like the row removed; seeding draws rows
            in proportion to their weight. ``lower_bound_`` is then the weighted
            mean log-likelihood.
        """
        record_feature_names(self, X)
        X = self._checked_input(X, "GaussianMixture.fit")
        if getattr(X, "has_nan", False) or (isinstance(X, np.ndarray) and np.isnan(X).any()):
            return self._fit_missing(X, sample_weight)
        self._check_parameters(X)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0],
                                              owner="GaussianMixture.fit",
                                              min_positive=self.n_components)
        prior = self._resolved_prior(X, sample_weight)
        # float32 rows in memory: the kernels' float32 arithmetic where they have it
        # (docs/elbo_chain.md#float32)
        single = isinstance(X, np.ndarray) and X.dtype == np.float32
        family = self._family(X.shape[1], prior=prior,
                              dtype="float32" if single else "float64")
        rng = v.check_random_state(self.random_state, "GaussianMixture")
        warm = self.warm_start and hasattr(self, "weights_")
        if warm:
            fitted = self._fitted_model("GaussianMixture.fit")[0]
            # other data cannot continue the model (scikit-learn raises too); a
            # different n_components or covariance_type asks for a new model
            v._check_n_features(X.shape[1], fitted.n_features, "X",
                                "GaussianMixture.fit (warm_start=True)")
            warm = (fitted.n_components == self.n_components
                    and self._fitted_covariance_type == self.covariance_type)
        rule = self._fit_rule()
        with progress_bar(getattr(self, "progress", False), "GaussianMixture",
                          starts=1 if warm else self.n_init, max_iter=self.max_iter):
            best = self._run_starts(X, family, rule, sample_weight, rng, warm=warm,
                                    weight_concentration=(None if prior is None
                                                          else prior.weight_concentration))
        self._set_fitted(best, X.shape[1])
        if X.dtype == np.float32:
            self._round_to_float32()
        self._fitted_rule = rule
        self.prior_ = prior
        self._online = None          # fit discards partial_fit's running state
        self.n_rows_dropped_ = 0
        return self

    def _round_to_float32(self) -> None:
        # scikit-learn's convention: a float32 X gives float32 parameters. The fit
        # ran in float64 (statistics and parameters); its result is rounded once,
        # each representation from its own float64 value. The weights then sum to
        # 1 within u32 = 2**-24 (sum_k w_k |delta_k| <= u32).
        self.weights_ = np.asarray(self.weights_, dtype=np.float32)
        self.means_ = np.asarray(self.means_, dtype=np.float32)
        for key in ("_covariances", "_precisions_cholesky", "_precisions"):
            self.__dict__[key] = np.asarray(self.__dict__[key], dtype=np.float32)

    # --- missing values (docs/missing_values.md) -------------------------------------
    def _checked_input(self, X: Any, owner: str, n_features: Optional[int] = None):
        """X as check_input gives it; with missing='marginalize', in-memory X may
        hold NaN (every other check unchanged). A scipy.sparse X is refused, as
        scikit-learn's GaussianMixture refuses it (docs/guide/using.md, *Sparse input*)."""
        refuse_sparse(X, owner=owner)
        missing = v.check_choice(self.missing, "missing", "GaussianMixture",
                                 ("error", "marginalize"))
        if missing == "error":     # float32 kept (docs/elbo_chain.md#float32)
            return check_input(X, owner=owner, n_features=n_features,
                               keep_float32=True)
        if is_chunked(X):
            return _missing.as_source_with_nan(X, owner=owner, n_features=n_features)
        return _missing.check_input_with_nan(X, owner, n_features)

    def _fit_missing(self, X: np.ndarray, sample_weight: Any) -> "GaussianMixture":
        owner = "GaussianMixture.fit"
        if self.posterior is not None:
            raise ValueError(f"The 'posterior' parameter of {owner} must be None when X has "
                             "missing values (the E-step is the exact posterior of the "
                             "component and the missing coordinates). Got "
                             f"{self.posterior!r} instead.")
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner)
        if isinstance(X, np.ndarray):
            X, sample_weight, n_dropped = _missing.drop_empty_rows(X, owner, sample_weight)
        else:       # a source: the pass skips them (docs/missing_values.md#chunked)
            n_dropped = _missing.warn_empty_rows(X.n_empty_rows, owner)
        self._check_parameters(X)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner,
                                              min_positive=self.n_components)
        # the start (and a prior's data-based defaults) see each missing entry set to
        # its column's (weighted) mean; EM then treats them as missing
        if isinstance(X, np.ndarray):
            filled = _missing.filled_array(X, sample_weight)
        else:
            filled = _missing.filled_source(X)
        prior = self._resolved_prior(filled, sample_weight)
        family = self._family(X.shape[1], prior=prior)
        rng = v.check_random_state(self.random_state, "GaussianMixture")
        warm = self.warm_start and hasattr(self, "weights_")
        if warm:
            fitted = self._fitted_model(owner)[0]
            v._check_n_features(X.shape[1], fitted.n_features, "X",
                                "GaussianMixture.fit (warm_start=True)")
            warm = (fitted.n_components == self.n_components
                    and self._fitted_covariance_type == self.covariance_type)

        def start():
            if warm:
                return self._fitted_model(owner)[1:]
            return self._initial_parameters(filled, family, rng, sample_weight)

        # run_em's reporter advances the bar (a start, each iteration)
        n_starts = 1 if warm else self.n_init
        with progress_bar(getattr(self, "progress", False), "GaussianMixture",
                          starts=n_starts, max_iter=self.max_iter):
            best = _missing.fit_starts(
                self, X, family, start, n_starts,
                feature_names=getattr(self, "feature_names_in_", None),
                sample_weight=sample_weight,
                weight_concentration=None if prior is None else prior.weight_concentration)
        if best.stop_reason == "max_iter" and self.max_iter > 0 and self.tol > 0:
            warnings.warn(f"GaussianMixture stopped after max_iter={self.max_iter} "
                          "iterations before the relative change fell to "
                          f"tol={self.tol:g}; increase max_iter or tol.",
                          _sklearn_compatible(ConvergenceWarning), stacklevel=3)
        self._set_fitted(best, X.shape[1])
        self._fitted_rule = self._likelihood_rule()
        self.prior_ = prior
        self._online = None
        self.n_rows_dropped_ = n_dropped
        return self

    def _evaluate(self, X: Any, method: str, log_resp: bool = False, rule=None):
        owner = f"{self._owner}.{method}"
        refuse_sparse(X, owner=owner)
        if self.missing == "marginalize" and not is_chunked(X):
            family, weights, params = self._fitted_model(owner)
            check_feature_names(self, X)
            X = self._checked_input(X, owner, n_features=family.n_features)
            if np.isnan(X).any():
                # the marginal density of each row's observed coordinates (the
                # exact posterior: rules other than soft need complete rows)
                out = _missing.row_pass(X, weights, params, log_resp=log_resp,
                                        n_jobs=self.n_jobs)
                return out["row_value"], out.get("log_resp")
        if self.missing == "marginalize" and is_chunked(X):
            # a chunked input with NaN: the same kernel a block at a time
            # (docs/missing_values.md#chunked); without NaN, the ordinary pass
            family, weights, params = self._fitted_model(owner)
            check_feature_names(self, X)
            source = _missing.as_source_with_nan(X, owner=owner,
                                                 n_features=family.n_features)
            if source.has_nan:
                out = _missing.source_row_pass(source, weights, params,
                                               log_resp=log_resp, n_jobs=self.n_jobs)
                return out["row_value"], out.get("log_resp")
        return super()._evaluate(X, method, log_resp=log_resp, rule=rule)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood log p(x_i) of each row, shape (n_samples,); the marginal
        density of the observed coordinates for a row with NaN
        (``missing='marginalize'``). float32 for a float32 X (scikit-learn's
        convention): computed in float64, rounded once."""
        return _in_dtype_of(X, super().score_samples(X))

    def predict_proba(self, X: Any, *, constrained: bool = False) -> np.ndarray:
        """Posterior probabilities of the components, shape (n_samples, n_components),
        as :meth:`emcore.MixtureModel.predict_proba` (``constrained=True``: the
        constrained posterior of a model fitted with ``posterior=
        emcore.Constraints(...)``). float32 for a float32 X (scikit-learn's
        convention): computed in float64, rounded once."""
        return _in_dtype_of(X, super().predict_proba(X, constrained=constrained))

    def impute(self, X: Any, return_std: bool = False) -> Union[np.ndarray, tuple]:
        """The missing (NaN) entries of X filled with their conditional means
        E[x_m | x_o] under the fitted mixture (observed entries unchanged).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN marks a missing entry (needs ``missing='marginalize'``).
        return_std : bool, default False
            Also return the conditional standard deviations sqrt(Var[x_m | x_o])
            (0 at observed entries; the law of total variance over the components).

        Returns
        -------
        X_imputed : ndarray of shape (n_samples, n_features)
        std : ndarray of shape (n_samples, n_features), if ``return_std``
        """
        owner = "GaussianMixture.impute"
        v.check_bool(return_std, "return_std", owner)
        family, weights, params = self._fitted_model(owner)
        check_feature_names(self, X)
        X = self._checked_input(X, owner, n_features=family.n_features)
        if not isinstance(X, np.ndarray):
            # a chunked input (docs/missing_values.md#chunked): block by block into
            # in-memory outputs; observed entries come back as they are
            out = _missing.source_row_pass(X, weights, params, impute=True,
                                           n_jobs=self.n_jobs)
            X, std = out["mean"], np.sqrt(np.maximum(out["var"], 0.0))
            return (X, std) if return_std else X
        X = np.array(X)
        std = np.zeros_like(X)
        if np.isnan(X).any():
            out = _missing.row_pass(X, weights, params, impute=True, n_jobs=self.n_jobs)
            X, std = out["mean"], np.sqrt(np.maximum(out["var"], 0.0))
        return (X, std) if return_std else X

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        # the family keeps full (k, d, d) arrays for every type; users see
        # scikit-learn's shapes per covariance_type
        # (the family's own output: stored as is, not re-derived)
        super()._set_fitted(result, n_features)
        t = self._fitted_covariance_type = self.covariance_type
        U = result.params["precisions_cholesky"]
        self.means_ = result.params["means"]
        self.__dict__.update(_covariances=_compact(result.params["covariances"], t),
                             _precisions_cholesky=_compact(U, t),
                             _precisions=_compact(U @ np.swapaxes(U, 1, 2), t))

    # --- online EM ------------------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None
                    ) -> "GaussianMixture":
        """One step of online (stepwise) EM on the mini-batch X; returns self.

        Keeps a running average s of the per-row sufficient statistics,
        s <- (1 - rho_t) s + rho_t s_batch, with s_batch the batch's E-step
        statistics divided by its total weight and rho_t = (t + 2)^(-alpha),
        alpha = ``online_step_exponent``, then the M-step from s (Cappé &
        Moulines 2009; Liang & Klein 2009). On an unfitted estimator the first
        call initialises from its batch (``init_params`` or the given ``*_init``)
        and sets s from it. On a fitted model (by ``fit``, by
        :meth:`from_parameters` or by assigning its fitted attributes) the first
        call continues from it: s is set from the E-step of its batch at the
        fitted parameters, then the M-step. Each step starts from the fitted
        attributes as they are, so edits between calls are the model. Changing
        ``n_components`` or ``covariance_type`` between calls raises; call
        ``fit`` (or use a new estimator) to start a new model.

        Guarantee: no step is monotone (a batch may lower any likelihood); on a
        stationary stream the step sizes satisfy Robbins-Monro (sum rho_t = inf,
        sum rho_t^2 < inf for alpha in (0.5, 1]) and s converges to a stationary
        point of the expected log-likelihood (Cappé & Moulines 2009, Thm. 1).
        ``lower_bound_`` is the mean log-likelihood of the last batch at the
        parameters before its step; ``n_iter_`` counts the batches; ``history_``
        is empty. ``fit`` discards the online state (its fitted model is where
        the next ``partial_fit`` starts).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The batch (in memory); the first batch needs n_samples >= n_components.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
        """
        owner = "GaussianMixture.partial_fit"
        state = getattr(self, "_online", None)
        # a fitted model (by fit, partial_fit, from_parameters or its attributes)
        # is where online EM continues from; only an unfitted one initialises
        fitted = self._fitted_model(owner) if hasattr(self, "weights_") else None
        if fitted is None:
            record_feature_names(self, X)
        else:
            check_feature_names(self, X)
        X = self._checked_input(X, owner,
                                n_features=None if fitted is None else fitted[0].n_features)
        if getattr(X, "has_nan", False) or (isinstance(X, np.ndarray) and np.isnan(X).any()):
            raise ValueError(f"The 'X' parameter of {owner} must not have missing values "
                             "(NaN): online EM with missing='marginalize' is not "
                             "implemented; use fit, or impute the batch first.")
        if not isinstance(X, np.ndarray):
            X = np.ascontiguousarray(X[0:X.shape[0]])        # a batch fits in memory
        alpha = check_exponent(self.online_step_exponent, "GaussianMixture")
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner)
        if self.prior is not None:
            raise ValueError("The 'prior' parameter of GaussianMixture must be None "
                             "for partial_fit (online EM is maximum likelihood).")
        if self.posterior is not None:
            raise ValueError("The 'posterior' parameter of GaussianMixture must be "
                             "None for partial_fit (online EM uses the exact "
                             "posterior).")
        if fitted is None:
            self._check_parameters(X)
            family = self._family(X.shape[1])
            rng = v.check_random_state(self.random_state, "GaussianMixture")
            weights, params = self._initial_parameters(X, family, rng, sample_weight)
        else:
            family, weights, params = fitted
            for name, now, then in (
                    ("n_components", self.n_components, family.n_components),
                    ("covariance_type", self.covariance_type,
                     self._fitted_covariance_type)):
                if now != then:
                    raise ValueError(
                        f"The {name!r} parameter of {owner} must stay {then!r}, the "
                        f"fitted model's, to continue from it. Got {now!r} instead: "
                        "call fit, or partial_fit on a new estimator "
                        "(sklearn.base.clone), to start a new model.")
        # after fit (no running state yet) the first step sets the running
        # statistics from the E-step of this batch at the fitted model
        state = stepwise_update(state, X, family, self._likelihood_rule(), weights, params,
                                sample_weight, alpha, n_jobs=self.n_jobs)
        self._online = state
        self._set_fitted(FitResult(weights=state.weights, params=state.params, history=(),
                                   n_iter=state.t, stop_reason="max_iter",
                                   value=state.batch_loglik, objective=state.batch_loglik,
                                   objective_name="batch log-likelihood", n_samples=1.0),
                         X.shape[1])
        self._fitted_rule = self._likelihood_rule()
        self.stop_reason_ = "partial_fit"
        self.prior_ = None
        return self


"""``emcore.MixtureModel``: any registered family, fitted with any posterior rule."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from emcore import _missing
from emcore import _validation as v
from emcore._feature_names import check_feature_names, record_feature_names
from emcore._init import check_resp_conflicts
from emcore._input import check_input, is_chunked, is_sparse
from emcore._logging import progress_bar
from emcore._mixture import _MixtureBase, _check_weights
from emcore._patterns import RowPatterns, row_patterns
from emcore.constraints import Constraints
from emcore.engine import FitResult, Iteration
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import PosteriorRule, check_support, support_of
from emcore.registry import get_registry

__all__ = ["MixtureModel"]

# compress='auto' packs the rows of a family with one of these supports (integer
# codes, checked at fit) ...
_DISCRETE_SUPPORTS = ("support:binary", "support:integers",
                      "support:nonnegative_integers")
# ... and runs over the patterns when at most this fraction of the rows is
# distinct: the packing costs about one pass over X (docs/discrete.md#compression),
# each iteration then saves at least half of one
_AUTO_DISTINCT = 0.5


def _check_family_params(params: Any, k: int, name: str, owner: str) -> dict:
    """A family's parameters as a dict of finite float64 arrays whose first axis is
    the component (the plugin API's contract for parameters), or a ValueError."""
    prefix = (f"The {name!r} {'attribute' if name.endswith('_') else 'parameter'} of "
              f"{owner} must be a non-empty mapping of names (str) to finite arrays of "
              f"numbers whose first axis has n_components={k} entries")
    if not isinstance(params, Mapping) or not params or \
            not all(isinstance(key, str) for key in params):
        raise ValueError(f"{prefix}. Got {params!r} instead.")
    out = {}
    for key, value in params.items():
        arr = v.as_float_array(value, f"{prefix} ({key!r})")
        finite = bool(np.all(np.isfinite(arr)))
        if arr.ndim == 0 or arr.shape[0] != k or not finite:
            raise ValueError(f"{prefix}. Got {key!r} of shape {arr.shape}"
                             f"{'' if finite else ' with non-finite entries'} instead.")
        out[key] = arr
    return out


def _has_nan(X: Any) -> bool:
    """True if X (an array, or a source from ``_input_with_nan``) has a NaN entry."""
    if isinstance(X, np.ndarray):
        return bool(np.isnan(X).any())
    return bool(getattr(X, "has_nan", False))


class MixtureModel(_MixtureBase):
    """A mixture of any registered component family, fitted by an EM variant.

    The family and the posterior rule are looked up by name in the plugin
    registry (``emcore plugins`` lists them), so a third-party family installed
    next to emcore fits like a first-party one::

        MixtureModel(3, family="gaussian", posterior="hard").fit(X)   # CEM

    Parameters
    ----------
    n_components : int, default 1
        Number of mixture components.
    family : str, default 'gaussian'
        Registry name of the component family.
    family_options : mapping, optional
        Keyword arguments of the family's factory (e.g. ``{"covariance_type":
        "diag"}`` for 'gaussian').
    posterior : str, emcore.Constraints or emcore.plugin_api.PosteriorRule, default 'soft'
        The E-step: a registry name ('soft': standard EM; 'hard': classification
        EM; 'tempered': deterministic annealing), an :class:`emcore.Constraints`
        (posterior regularization: the 'constrained' rule; ``objective_`` is then
        the PR objective J and ``history_[t].rule_state`` records J, the
        log-likelihood, the constraint violations, the duality gap and lambda) or
        a rule object.
    posterior_options : mapping, optional
        Keyword arguments of the rule's factory (e.g. ``{"temperature": 2.0}``).
    tol : float, default 1e-6
        Stop when the relative change of the rule's objective between two
        iterations is below ``tol`` (0: never, run ``max_iter`` iterations).
    max_iter : int, default 100
        Maximum number of M-steps (0: the initial parameters). Reaching it warns
        (ConvergenceWarning) unless ``tol`` or ``max_iter`` is 0.
    n_init : int, default 1
        Number of initialisations; the fit with the highest objective is kept.
    init_params : {'k-means++', 'random', 'random_from_data', 'hc'}, default 'k-means++'
        The starting partition, as in :class:`emcore.GaussianMixture`: rows
        assigned to the nearest (Euclidean) of K seed rows (k-means++ or distinct
        random rows), random responsibilities, or mclust's hierarchical
        agglomeration ('hc'). The family's
        ``initial_params`` turns it into starting parameters (by default one
        M-step on it, mixed with a small uniform share: ``Family.init_smoothing``).
    weights_init : array-like of shape (n_components,), optional
        Starting mixture weights (non-negative, summing to 1; normalised).
        Default: the shares of the starting partition.
    params_init : mapping of str to array-like, optional
        Starting parameters of the family (its keys and shapes, e.g.
        ``{"rates": (k, d)}`` for 'poisson'), checked by the family's
        ``validate_params``; then ``init_params`` is not used and every one of
        the ``n_init`` starts is this one. Default: from ``init_params``.
    random_state : None, int, numpy RandomState or Generator
    n_jobs : int or None, default None
        Threads for the chunk loop (results are identical for every value).
    verbose : int, default 0
    accelerate : None or 'squarem', default None
        'squarem': SQUAREM (Varadhan & Roland 2008) around the EM map: the same
        fixed point in fewer passes over the data, the objective still
        non-decreasing (an extrapolation that would lower it falls back to the EM
        step); ``history_[t].step`` says which kind of step each record is
        (docs/variants.md#squarem).
    callback : callable, optional
        Called after each iteration with its :class:`emcore.engine.Iteration`
        record; returning False stops the fit (``stop_reason_ == 'callback'``,
        the other starts are not run). Lines per iteration go to the logger
        ``emcore`` (INFO with ``verbose``, labelled with the start; 2 adds the
        ELBO chain's links).

    resp_init : array of shape (n_samples, n_components), optional
        A starting partition (one-hot rows) or responsibilities (mclust's
        ``me(z=...)``): the first step is the family's M-step from them (no
        ``init_smoothing``), the weights their column shares. As in
        :class:`emcore.GaussianMixture`; cannot come with ``init_params`` (other
        than the default), ``weights_init`` or ``params_init``.
    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the starts,
        or the iterations of a single start.
    compress : 'auto', True or False, default 'auto'
        Run the EM iterations over the distinct rows of X with their counts
        (summed sample weights) instead of every row: the same statistics and
        log-likelihood up to summation order, so the same fit from the same
        start (the starts are drawn from the rows of X), with fewer rows per
        pass when rows repeat (discrete data: latent class analysis; see
        docs/discrete.md#compression). 'auto': when the family's support is
        discrete and at most half the rows are distinct. It needs X in memory and
        a posterior rule that treats rows one by one (not a Monte-Carlo rule
        or constraints): 'auto' is then off, True a ValueError. Scores,
        predictions and ``history_`` are per row as without it.
    missing : {'error', 'marginalize'}, default 'error'
        What NaN entries of X mean. 'error': they are refused (ValueError).
        'marginalize': they are missing values, and ``fit`` runs exact EM for the
        observed-data likelihood; ``score_samples``, ``predict_proba`` and
        ``predict`` use each row's observed entries. For 'gaussian' (every
        covariance type), as :class:`emcore.GaussianMixture` (its compiled path);
        for a family with ``Family.supports_missing`` (a product form: 'poisson',
        'categorical', 'bernoulli', 'exponential', 'gamma', a 'product' of such
        parts, 'diag' or 'spherical' Gaussian parts included) by dropping the
        missing entries' terms; other families refuse it, naming the family. X in
        memory or a chunked source (memmap, h5py, zarr, Dask: a block at a
        time), the 'soft' posterior (docs/missing_values.md#product-form-families).

    Attributes
    ----------
    weights_ : ndarray (n_components,)
    params_ : dict of ndarray
        The family's parameters (keys chosen by the family). With ``weights_``
        and ``family_`` this is the model: predictions read them each time
        (validated: finite arrays whose first axis is the component), so
        assigning or editing them changes the model; ``set_params`` after fit
        does not. :meth:`from_parameters` builds a model without data.
    family_ : emcore.plugin_api.Family
        The fitted family object (frozen at fit).
    objective_ : float
        The rule's objective at the fitted parameters (log-likelihood for 'soft',
        classification log-likelihood for 'hard'), plus the log prior if any.
    converged_, stop_reason_, n_iter_, history_, n_features_in_
        As in :class:`emcore.GaussianMixture`.
    lower_bound_ : float
        The rule's objective per sample at the fitted parameters.
    n_rows_dropped_ : int
        Rows of the last ``fit`` with every entry missing (dropped, with a
        warning); 0 without NaN.
    """

    def __init__(self, n_components: int = 1, *, family: str = "gaussian",
                 family_options: Optional[Mapping[str, Any]] = None,
                 posterior: Union[str, PosteriorRule] = "soft",
                 posterior_options: Optional[Mapping[str, Any]] = None,
                 tol: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "k-means++", weights_init: Any = None,
                 params_init: Optional[Mapping[str, Any]] = None, random_state: Any = None,
                 n_jobs: Optional[int] = None, verbose: int = 0,
                 accelerate: Optional[str] = None,
                 callback: Optional[Callable[[Iteration], Any]] = None,
                 resp_init: Any = None, progress: bool = False,
                 compress: Union[str, bool] = "auto", missing: str = "error"):
        self.n_components = n_components
        self.family = family
        self.family_options = family_options
        self.posterior = posterior
        self.posterior_options = posterior_options
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.params_init = params_init
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.accelerate = accelerate
        self.callback = callback
        self.resp_init = resp_init
        self.progress = progress
        self.compress = compress
        self.missing = missing

    # --- resolution -----------------------------------------------------------------
    def _family(self, n_features: int, n_components: Optional[int] = None, prior=None):
        try:
            record = get_registry().family(self.family)
        except ValueError as exc:
            raise ValueError(f"The 'family' parameter of MixtureModel: {exc}") from None
        options = self._keyword_options(self.family_options, "family_options")
        k = self.n_components if n_components is None else n_components
        try:
            return record.factory(k, n_features, **options)
        except TypeError as exc:
            raise ValueError(f"The 'family_options' parameter of MixtureModel does not fit "
                             f"family {self.family!r}: {exc}") from None

    def _fitted_model(self, owner: Optional[str] = None) -> tuple:
        owner = owner or "MixtureModel"
        weights = self._checked_weights(owner)
        self._check_fitted("params_")
        self._check_fitted("family_")
        family = self.family_
        k = weights.shape[0]
        if family.n_components != k:
            raise ValueError(f"The 'weights_' attribute of {owner} must have "
                             f"{family.n_components} entries, the components of family_. "
                             f"Got {k} instead.")
        return family, weights, _check_family_params(self.params_, k, "params_", owner)

    @classmethod
    def from_parameters(cls, weights: Any, params: Mapping[str, Any], *, n_features: int,
                        family: str = "gaussian",
                        family_options: Optional[Mapping[str, Any]] = None,
                        **options: Any) -> "MixtureModel":
        """A MixtureModel whose fitted model is the given one, without data.

        Parameters
        ----------
        weights : array of shape (n_components,)
            Mixture weights, non-negative, summing to 1.
        params : mapping of str to array
            The family's parameters, as its ``m_step`` returns them (first axis =
            component; e.g. ``{"rates": ...}`` for the example Poisson family).
            They are passed to the family as given: for a family that keeps
            redundant forms ('gaussian': ``covariances`` and
            ``precisions_cholesky``), give them consistent
            (:meth:`emcore.GaussianMixture.from_parameters` derives them).
        n_features : int
            Dimension of one observation.
        family, family_options
            As in the constructor.
        **options
            Other constructor parameters.
        """
        owner = "MixtureModel.from_parameters"
        w = _check_weights(weights, "weights", owner)
        d = v.check_int(n_features, "n_features", owner, low=1)
        p = _check_family_params(params, w.shape[0], "params", owner)
        model = cls(w.shape[0], family=family, family_options=family_options, **options)
        model.family_ = model._family(d)
        model.weights_, model.params_, model.n_features_in_ = w, p, d
        return model

    def _fit_rule(self) -> PosteriorRule:
        return self._resolve_rule(self.posterior, self.posterior_options)

    # --- initialisation -------------------------------------------------------------
    def _check_init(self, family) -> tuple:
        """(weights_init, params_init) as float arrays, or None, validated."""
        k = family.n_components
        if self.resp_init is not None:
            check_resp_conflicts("MixtureModel", {"weights_init": self.weights_init is not None,
                                                  "params_init": self.params_init is not None})
        weights = None
        if self.weights_init is not None:
            weights = _check_weights(self.weights_init, "weights_init", "MixtureModel", k)
            weights = weights / weights.sum()
            if family.fixed_weights and np.any(weights != 1.0 / k):
                raise ValueError(f"The 'weights_init' parameter of MixtureModel must be None "
                                 f"or equal weights for family {self.family!r}, whose model "
                                 f"fixes the mixture weights. Got {self.weights_init!r} "
                                 "instead.")
        params = None
        if self.params_init is not None:
            params = _check_family_params(self.params_init, k, "params_init",
                                          "MixtureModel")
            try:
                family.validate_params(params)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"The 'params_init' parameter of MixtureModel is not valid "
                                 f"for family {self.family!r}: {exc}") from None
        return weights, params

    def _initial_parameters(self, X: np.ndarray, family, rng: np.random.Generator,
                            sample_weight: Optional[np.ndarray] = None):
        weights, params = self._init
        if params is None:
            partition_weights, params = super()._initial_parameters(X, family, rng,
                                                                    sample_weight)
            return (partition_weights if weights is None else weights), params
        k = family.n_components
        return (np.full(k, 1.0 / k) if weights is None else weights), {
            key: value.copy() for key, value in params.items()}

    # --- fitting --------------------------------------------------------------------
    def _with_response(self, X: Any, y: Any, owner: str) -> Any:
        """X with y appended as its last column, for a family declaring the
        ``response`` capability (a regression); X alone otherwise (y is ignored, as
        by every unsupervised estimator)."""
        if y is None or not isinstance(self.family, str):
            return X
        try:
            record = get_registry().family(self.family)
        except ValueError:
            return X                                 # reported by _family at fit
        if "response" not in record.capabilities:
            return X
        if not isinstance(X, np.ndarray):
            raise ValueError(f"The 'y' parameter of {owner} needs X in memory (an array): "
                             f"stack the response into X and name its column with "
                             f"family_options={{'response': j}}. Got X of type "
                             f"{type(X).__name__} instead.")
        y = v.as_float_array(y, f"The 'y' parameter of {owner} must be an array of "
                                f"{X.shape[0]} finite numbers (the response)")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (X.shape[0],) or not np.all(np.isfinite(y)):
            raise ValueError(f"The 'y' parameter of {owner} must be an array of "
                             f"{X.shape[0]} finite numbers (the response), one per row of "
                             f"X. Got shape {y.shape} instead.")
        return np.ascontiguousarray(np.column_stack([X, y]))

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MixtureModel":
        """Fit by the chosen EM variant; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), optional
            The response, for a family declaring the ``response`` capability
            ('linear_regression'): appended to X as its last column, which must be
            the family's response column (its default), so that ``fit(X, y)`` is
            ``fit(np.column_stack([X, y]))``; the fitted model (``score``,
            ``predict``, ...) then takes the stacked array. Ignored by other
            families.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights; a weight of 2 fits like the row repeated.
        """
        record_feature_names(self, X)
        if self._marginalizes(X):
            checked = self._input_with_nan(X, "MixtureModel.fit")
            if _has_nan(checked):
                return self._fit_missing(checked, y, sample_weight)
            if not isinstance(checked, np.ndarray):
                X = checked                      # a source validated once
        X_in = check_input(X, owner="MixtureModel.fit")
        X = self._with_response(X_in, y, "MixtureModel.fit")
        self._check_common(X)
        if not isinstance(self.family, str):
            raise ValueError("The 'family' parameter of MixtureModel must be a registry "
                             f"name (str). Got {self.family!r} instead.")
        if not isinstance(self.posterior, (str, PosteriorRule, Constraints)):
            raise ValueError("The 'posterior' parameter of MixtureModel must be a registry "
                             "name (str), an emcore.Constraints or a PosteriorRule. Got "
                             f"{self.posterior!r} instead.")
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0],
                                              owner="MixtureModel.fit",
                                              min_positive=self.n_components)
        family = self._family(X.shape[1])
        if X is not X_in and family.response_column != X.shape[1] - 1:
            raise ValueError(f"The 'y' parameter of MixtureModel.fit is appended to X as "
                             f"column {X.shape[1] - 1}, but family {self.family!r} models "
                             f"column {family.response_column} (family_options "
                             "'response'): give y, or the response's column, not both.")
        support = support_of(get_registry().family(self.family).capabilities)
        check_support(X, support, family=self.family, owner="MixtureModel.fit")
        family.check_data(X, owner="MixtureModel.fit")
        rule = self._fit_rule()
        rng = v.check_random_state(self.random_state, "MixtureModel")
        self._init = self._check_init(family)      # read by _initial_parameters
        try:
            patterns = self._patterns(X, support, rule, sample_weight)
            em_rows = patterns.rows if patterns is not None else X
            # the discrete families read the EM rows' group codes, made once
            # (docs/discrete.md#group-codes)
            codes_for = getattr(family, "codes_for", None)
            with progress_bar(getattr(self, "progress", False), "MixtureModel",
                              starts=self.n_init, max_iter=self.max_iter), \
                    (codes_for(em_rows) if codes_for is not None
                     else contextlib.nullcontext()):
                best = self._run_starts(X, family, rule, sample_weight, rng,
                                        patterns=patterns)
        finally:
            del self._init
        self.family_ = family
        self._support = support
        self._fitted_rule = rule
        self._set_fitted(best, X.shape[1])
        self.n_rows_dropped_ = 0
        return self

    def _patterns(self, X: Any, support: Optional[str], rule: PosteriorRule,
                  sample_weight: Optional[np.ndarray]) -> Optional[RowPatterns]:
        """The distinct rows the EM iterations run over (``compress``), or None."""
        compress = self.compress
        if not (isinstance(compress, (bool, np.bool_)) or compress == "auto"):
            raise ValueError("The 'compress' parameter of MixtureModel must be 'auto', "
                             f"True or False. Got {compress!r} instead.")
        if compress is False or compress is np.False_:
            return None
        if not isinstance(X, np.ndarray):
            why = "needs X in memory (an array), not a chunked source"
        elif rule.needs_all_rows or getattr(rule, "stochastic", None):
            why = (f"needs a posterior rule that treats rows one by one; "
                   f"{type(rule).__name__} draws or constrains them jointly")
        else:
            why = None
        if why is not None:
            if compress == "auto":
                return None
            raise ValueError(f"The 'compress' parameter of MixtureModel {why}: set it to "
                             "'auto' or False. Got True instead.")
        discrete = support in _DISCRETE_SUPPORTS
        if compress == "auto" and not discrete:
            return None
        patterns = row_patterns(X, sample_weight, integer_codes=discrete)
        if compress == "auto" and patterns.n_patterns > _AUTO_DISTINCT * X.shape[0]:
            return None
        return patterns
    # --- missing values (docs/missing_values.md) -------------------------------------
    def _marginalizes(self, X: Any) -> bool:
        """True when NaN in X (in memory or a chunked source) are missing values
        (missing='marginalize')."""
        missing = v.check_choice(getattr(self, "missing", "error"), "missing",
                                 "MixtureModel", ("error", "marginalize"))
        return missing == "marginalize" and not is_sparse(X)

    @staticmethod
    def _input_with_nan(X: Any, owner: str, n_features: Optional[int] = None) -> Any:
        """X checked with NaN allowed: a float64 array, or a chunked input as a
        validated source recording ``has_nan`` (docs/missing_values.md#chunked)."""
        if is_chunked(X):
            return _missing.as_source_with_nan(X, owner=owner, n_features=n_features)
        return _missing.check_input_with_nan(X, owner, n_features)

    def _missing_family(self, family, owner: str) -> bool:
        """True for the Gaussian path (emcore._missing.MissingValues); a product-form
        family (supports_missing) takes the observed-entry pass; others: ValueError."""
        if self.family == "gaussian":
            return True
        _missing.check_supports_missing(family, self.family, owner)
        return False

    def _fit_missing(self, X: Any, y: Any, sample_weight: Any) -> "MixtureModel":
        owner = "MixtureModel.fit"
        X = self._with_response(X, y, owner)
        in_memory = isinstance(X, np.ndarray)
        if not isinstance(self.family, str):
            raise ValueError("The 'family' parameter of MixtureModel must be a registry "
                             f"name (str). Got {self.family!r} instead.")
        if not (isinstance(self.posterior, str) and self.posterior == "soft"):
            raise ValueError(f"The 'posterior' parameter of {owner} must be 'soft' when X "
                             "has missing values (the E-step is the exact posterior given "
                             f"each row's observed entries). Got {self.posterior!r} "
                             "instead.")
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner)
        if in_memory:
            X, sample_weight, n_dropped = _missing.drop_empty_rows(X, owner, sample_weight)
        else:       # a source: the passes skip them (docs/missing_values.md#chunked)
            n_dropped = _missing.warn_empty_rows(X.n_empty_rows, owner)
        self._check_common(X)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], owner=owner,
                                              min_positive=self.n_components)
        d = X.shape[1]
        family = self._family(d)
        gaussian = self._missing_family(family, owner)
        never = np.flatnonzero(np.all(np.isnan(X), axis=0) if in_memory
                               else X.column_counts == 0)
        if never.size:
            raise ValueError(f"The 'X' parameter of {owner} has no observed value in "
                             f"column {int(never[0])}: the data say nothing about it. Drop "
                             "the column.")
        # the start sees each missing entry filled (the Gaussian: the column's mean;
        # otherwise the observed value nearest it, which is in the family's
        # support); EM then treats them as missing
        if in_memory:
            filled = (_missing.filled_array(X, sample_weight) if gaussian
                      else _missing.observed_fill(X, sample_weight))
        else:
            filled = _missing.filled_source(
                X, None if gaussian else _missing.observed_fill_values(X))
        support = support_of(get_registry().family(self.family).capabilities)
        check_support(filled, support, family=self.family, owner=owner)
        family.check_data(filled, owner=owner)
        rng = v.check_random_state(self.random_state, "MixtureModel")
        self._init = self._check_init(family)      # read by _initial_parameters
        names = getattr(self, "feature_names_in_", None)
        try:
            def start():
                return self._initial_parameters(filled, family, rng, sample_weight)

            with progress_bar(getattr(self, "progress", False), "MixtureModel",
                              starts=self.n_init, max_iter=self.max_iter):
                if gaussian:
                    best = _missing.fit_starts(self, X, family, start, self.n_init,
                                               feature_names=names,
                                               sample_weight=sample_weight)
                else:
                    best = _missing.fit_observed_starts(
                        self, _missing.ObservedRows(X, sample_weight) if in_memory else X,
                        family, start, self.n_init, feature_names=names,
                        sample_weight=sample_weight)
        finally:
            del self._init
        if best.stop_reason == "max_iter" and self.max_iter > 0 and self.tol > 0:
            warnings.warn(f"MixtureModel stopped after max_iter={self.max_iter} "
                          "iterations before the relative change fell to "
                          f"tol={self.tol:g}; increase max_iter or tol.",
                          _sklearn_compatible(ConvergenceWarning), stacklevel=3)
        self.family_ = family
        self._support = support
        self._fitted_rule = self._likelihood_rule()
        self._set_fitted(best, d)
        self.n_rows_dropped_ = n_dropped
        return self

    def _evaluate(self, X: Any, method: str, log_resp: bool = False, rule=None):
        if self._marginalizes(X):
            owner = f"MixtureModel.{method}"
            family, weights, params = self._fitted_model(owner)
            check_feature_names(self, X)
            X = self._input_with_nan(X, owner, n_features=family.n_features)
            if _has_nan(X):
                # the marginal density of each row's observed entries and the exact
                # posterior given them (rules other than soft need complete rows);
                # a source a block at a time (docs/missing_values.md#chunked)
                in_memory = isinstance(X, np.ndarray)
                if self._missing_family(family, owner):
                    out = (_missing.row_pass if in_memory else _missing.source_row_pass)(
                        X, weights, params, log_resp=log_resp, n_jobs=self.n_jobs)
                    return out["row_value"], out.get("log_resp")
                # the support of the observed entries (columns with one)
                values = _missing.observed_fill_values(X)
                seen = ~np.isnan(values)
                filled = (np.where(np.isnan(X), values, X)[:, seen] if in_memory
                          else _missing.filled_source(X, values, columns=seen))
                check_support(filled, self._support, family=str(self.family), owner=owner)
                if seen.all():
                    family.check_data(filled, owner=owner)
                return _missing.observed_rows_pass(
                    X, family, self._likelihood_rule(), weights, params,
                    log_resp=log_resp, n_jobs=self.n_jobs)
        return super()._evaluate(X, method, log_resp=log_resp, rule=rule)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return the labels of the training rows (with y for a family
        with a response, as in :meth:`fit`)."""
        self.fit(X, y, sample_weight=sample_weight)
        owner = "MixtureModel.fit"
        checked = (self._input_with_nan(X, owner) if self._marginalizes(X)
                   else check_input(X, owner=owner))        # NaN: missing values
        return self.predict(self._with_response(checked, y, "MixtureModel.fit_predict"))

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        super()._set_fitted(result, n_features)
        self.params_ = result.params            # the model: predictions read it
        self.objective_ = result.objective

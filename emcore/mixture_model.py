"""``emcore.MixtureModel``: any registered family, fitted with any posterior rule."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import numpy as np

from emcore import _validation as v
from emcore._input import check_input
from emcore._mixture import _MixtureBase
from emcore.constraints import Constraints
from emcore.engine import FitResult
from emcore.plugin_api import PosteriorRule
from emcore.registry import get_registry

__all__ = ["MixtureModel"]


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
        Maximum number of M-steps.
    n_init : int, default 1
        Number of initialisations; the fit with the highest objective is kept.
    init_params : {'k-means++', 'random', 'random_from_data'}, default 'k-means++'
        Seeds as in :class:`emcore.GaussianMixture`: rows assigned to the nearest
        (Euclidean) seed, or random responsibilities, then one M-step.
    random_state : None, int, numpy RandomState or Generator
    n_jobs : int or None, default None
        Threads for the chunk loop (results are identical for every value).
    verbose : int, default 0

    Attributes
    ----------
    weights_ : ndarray (n_components,)
    params_ : dict of ndarray
        The family's parameters (keys chosen by the family).
    family_ : emcore.plugin_api.Family
        The fitted family object.
    objective_ : float
        The rule's objective at the fitted parameters (log-likelihood for 'soft',
        classification log-likelihood for 'hard'), plus the log prior if any.
    converged_, stop_reason_, n_iter_, history_, n_features_in_
        As in :class:`emcore.GaussianMixture`.
    lower_bound_ : float
        The rule's objective per sample at the fitted parameters.
    """

    def __init__(self, n_components: int = 1, *, family: str = "gaussian",
                 family_options: Optional[Mapping[str, Any]] = None,
                 posterior: Union[str, PosteriorRule] = "soft",
                 posterior_options: Optional[Mapping[str, Any]] = None,
                 tol: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "k-means++", random_state: Any = None,
                 n_jobs: Optional[int] = None, verbose: int = 0):
        self.n_components = n_components
        self.family = family
        self.family_options = family_options
        self.posterior = posterior
        self.posterior_options = posterior_options
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

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

    def _fitted_family(self):
        return self.family_

    def _fit_rule(self) -> PosteriorRule:
        return self._resolve_rule(self.posterior, self.posterior_options)

    # --- fitting --------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MixtureModel":
        """Fit by the chosen EM variant; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights; a weight of 2 fits like the row repeated.
        """
        X = check_input(X, owner="MixtureModel.fit")
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
        rule = self._fit_rule()
        rng = v.check_random_state(self.random_state, "MixtureModel")
        best = self._run_starts(X, family, rule, sample_weight, rng)
        self.family_ = family
        self._fitted_rule = rule
        self._set_fitted(best, X.shape[1])
        return self

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        super()._set_fitted(result, n_features)
        self.params_ = result.params
        self.objective_ = result.objective

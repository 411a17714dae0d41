"""What emcore's mixture estimators share: initialisation, the n_init loop, and the
methods of a fitted mixture (scores, posteriors, sampling, information criteria).

A subclass says which family and which posterior rule it fits with
(``_family``, ``_fit_rule``) and checks its own parameters; everything else is here,
once.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping, Optional

import numpy as np

from emcore import _validation as v
from emcore._estimator import BaseEstimator
from emcore._init import kmeans_plusplus, nearest_centre, one_hot
from emcore.constraints import Constraints
from emcore.engine import (FitResult, best_of_starts, chunk_rows_for, data_pass, run_em,
                           stats_from_assignments)
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import PosteriorRule
from emcore.registry import get_registry

INIT_PARAMS = ("k-means++", "random", "random_from_data")


class _MixtureBase(BaseEstimator):
    """Base of the mixture estimators. Not public."""

    # --- what a subclass provides ---------------------------------------------------
    def _family(self, n_features: int, n_components: Optional[int] = None, prior=None):
        raise NotImplementedError

    def _fit_rule(self) -> PosteriorRule:
        """The posterior rule of the fit (from the subclass's ``posterior`` parameter)."""
        raise NotImplementedError

    def _keyword_options(self, value: Any, name: str) -> dict:
        """A ``*_options`` parameter: None or a mapping of keyword arguments, as a dict."""
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"The {name!r} parameter of {self._owner} must be None or a "
                             f"mapping of keyword arguments. Got {value!r} instead.")
        return dict(value)

    def _resolve_rule(self, posterior: Any, options: Optional[Mapping[str, Any]] = None
                      ) -> PosteriorRule:
        """The rule of a ``posterior`` parameter: None or a registry name (with the
        factory's keyword ``options``), an :class:`emcore.Constraints` (the
        ``constrained`` rule, built afresh for each fit) or a rule object."""
        owner = self._owner
        options = self._keyword_options(options, "posterior_options")
        if isinstance(posterior, (Constraints, PosteriorRule)):
            if options:
                raise ValueError(f"The 'posterior_options' parameter of {owner} must be "
                                 "None when 'posterior' is a rule object or an "
                                 "emcore.Constraints.")
            if isinstance(posterior, PosteriorRule):
                return posterior
            return get_registry().posterior_rule("constrained").factory(constraints=posterior)
        if posterior is not None and not isinstance(posterior, str):
            raise ValueError(f"The 'posterior' parameter of {owner} must be None, a registry "
                             "name (str), an emcore.Constraints or a PosteriorRule. Got "
                             f"{posterior!r} instead.")
        name = "soft" if posterior is None else posterior
        try:
            record = get_registry().posterior_rule(name)
        except ValueError as exc:
            raise ValueError(f"The 'posterior' parameter of {owner}: {exc}") from None
        try:
            return record.factory(**options)
        except TypeError as exc:
            raise ValueError(f"The 'posterior_options' parameter of {owner} does not fit "
                             f"rule {name!r}: {exc}") from None

    @staticmethod
    def _likelihood_rule():
        # scores are the model's log-likelihood whatever rule fitted it
        return get_registry().posterior_rule("soft").factory()

    def _fitted_family(self):
        # the fitted state, not the current parameters (set_params after fit)
        return self._family(self.n_features_in_, self.weights_.shape[0])

    def _params(self) -> dict:
        return self._fitted_params

    @property
    def _owner(self) -> str:
        return type(self).__name__

    # --- shared parameter checks ----------------------------------------------------
    def _check_common(self, X: np.ndarray) -> int:
        owner = self._owner
        k = v.check_int(self.n_components, "n_components", owner, low=1)
        v.check_float(self.tol, "tol", owner)
        v.check_int(self.max_iter, "max_iter", owner, low=1)
        v.check_int(self.n_init, "n_init", owner, low=1)
        v.check_choice(self.init_params, "init_params", owner, INIT_PARAMS)
        v.check_int(self.verbose, "verbose", owner, low=0)
        n_jobs = v.check_int(self.n_jobs, "n_jobs", owner, allow_none=True)
        if n_jobs == 0:
            raise ValueError(f"The 'n_jobs' parameter of {owner} must be None, a "
                             "positive int or a negative int (-1 = all CPUs). Got 0 instead.")
        n = X.shape[0]
        if n < k:
            raise ValueError(f"The 'n_components' parameter of {owner} must be at "
                             f"most n_samples={n} (the rows of X). Got n_components={k} "
                             "instead.")
        return k

    # --- initialisation -------------------------------------------------------------
    def _initial_parameters(self, X: np.ndarray, family, rng: np.random.Generator,
                            sample_weight: Optional[np.ndarray] = None):
        """(weights, params) from ``init_params``: seeds and one M-step.

        'k-means++': D^2-sampled seed rows, each row assigned to the nearest seed;
        'random_from_data': seed rows drawn in proportion to their weight, the same
        assignment; 'random': responsibilities drawn uniformly and normalised.
        """
        k = self.n_components
        n = X.shape[0]
        if self.init_params == "random":
            def responsibilities(start, stop):
                r = rng.random((stop - start, k))
                return r / r.sum(axis=1, keepdims=True)
        else:
            if self.init_params == "k-means++":
                seeds = kmeans_plusplus(X, k, rng, sample_weight)
            else:
                p = None if sample_weight is None else sample_weight / sample_weight.sum()
                seeds = rng.choice(n, size=k, replace=False, p=p)
            centres = X[seeds]

            def responsibilities(start, stop):
                return one_hot(nearest_centre(X, centres, start, stop), k)

        stats, resp_sum = stats_from_assignments(X, family, responsibilities,
                                                 sample_weight=sample_weight)
        weights = (np.full(k, 1.0 / k) if family.fixed_weights
                   else resp_sum / resp_sum.sum())
        return weights, family.m_step(stats, None)

    # --- fitting --------------------------------------------------------------------
    def _run_starts(self, X: np.ndarray, family, rule, sample_weight, rng, *,
                    warm: bool = False, weight_concentration=None,
                    converged=None) -> FitResult:
        """Run EM from ``n_init`` starts (one if warm) and keep the best objective."""
        def start():
            if warm:
                return self.weights_, self._params()
            return self._initial_parameters(X, family, rng, sample_weight)

        def run(weights, params):
            return run_em(X, family, rule, weights, params, max_iter=self.max_iter,
                          tol=self.tol, n_jobs=self.n_jobs, verbose=self.verbose,
                          sample_weight=sample_weight,
                          weight_concentration=weight_concentration, converged=converged)

        best = best_of_starts(1 if warm else self.n_init, start, run)
        if best.stop_reason == "max_iter":
            warnings.warn(f"{self._owner} stopped after max_iter={self.max_iter} "
                          f"iterations before the relative change fell to tol={self.tol:g}; "
                          "increase max_iter or tol.", _sklearn_compatible(ConvergenceWarning),
                          stacklevel=3)
        return best

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        self._fitted_params = result.params
        self.weights_ = result.weights
        self.converged_ = result.converged
        self.stop_reason_ = result.stop_reason
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.value / result.n_samples
        self.history_ = result.history
        self.n_features_in_ = n_features

    # --- using the fitted model -----------------------------------------------------
    def _evaluate(self, X: Any, method: str, log_resp: bool = False, rule=None):
        """(row values, log q or None) of X at the fitted parameters, one pass.

        With the default ``rule`` (the soft rule) the row values are log p(x_i).
        """
        self._check_fitted("weights_")
        X = v.check_data(X, owner=f"{self._owner}.{method}", n_features=self.n_features_in_)
        out_log_resp = np.empty((X.shape[0], self.weights_.shape[0])) if log_resp else None
        row_value = np.empty(X.shape[0])
        data_pass(X, self._fitted_family(), rule or self._likelihood_rule(), self.weights_,
                  self._params(), n_jobs=self.n_jobs, with_stats=False,
                  out_log_resp=out_log_resp, out_row_value=row_value,
                  chunk_rows=chunk_rows_for(X.shape[1]))
        return row_value, out_log_resp

    def _posterior_rule(self) -> PosteriorRule:
        """The rule behind predict_proba and predict: the fitted rule, except one that
        needs all rows (constraints), which has no meaning for new data: the model's
        posterior there (``predict_proba(X, constrained=True)`` gives the q*)."""
        self._check_fitted("weights_")
        if self._fitted_rule.needs_all_rows:
            return self._likelihood_rule()
        return self._fitted_rule

    def _constrained_proba(self, X: Any) -> np.ndarray:
        """q* of the rows of X under the fitted constraints, at the fitted parameters."""
        self._check_fitted("weights_")
        rule = getattr(self, "_fitted_rule", None)
        if rule is None or not rule.needs_all_rows:
            raise ValueError(f"{self._owner}.predict_proba(constrained=True) needs a model "
                             "fitted with constraints (posterior=emcore.Constraints(...)).")
        # a copy: the projection must not move the fitted rule's state (its lambda)
        return np.exp(self._evaluate(X, "predict_proba", log_resp=True,
                                     rule=copy.copy(rule))[1])

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood log p(x_i) of each row, shape (n_samples,)."""
        return self._evaluate(X, "score_samples")[0]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean per-row log-likelihood of X (weighted by ``sample_weight`` if given)."""
        loglik, n = self._weighted_loglik(X, "score", sample_weight)
        return loglik / n

    def predict_proba(self, X: Any, *, constrained: bool = False) -> np.ndarray:
        """Posterior probabilities of the components, shape (n_samples, n_components).

        With ``constrained=True``, for a model fitted with ``posterior=
        emcore.Constraints(...)``: the constrained posterior, the KL projection of
        p(z | x, theta) at the fitted parameters onto the constraints, with X
        taken as the training rows (row i of X is row i of the constraints; X must
        have as many rows as they name; rows count once each, as in a fit
        without ``sample_weight``). Without it (the default), the model's
        posterior p(z | x, theta), which is what new data gets: per-point and
        proportion constraints are statements about the training rows.
        """
        if not isinstance(constrained, (bool, np.bool_)):
            raise ValueError(f"The 'constrained' parameter of {self._owner}.predict_proba "
                             f"must be a bool. Got {constrained!r} instead.")
        if constrained:
            return self._constrained_proba(X)
        return np.exp(self._evaluate(X, "predict_proba", log_resp=True,
                                     rule=self._posterior_rule())[1])

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row (ties to the lowest index)."""
        return np.argmax(self._evaluate(X, "predict", log_resp=True,
                                        rule=self._posterior_rule())[1], axis=1)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return the labels of X under the fitted parameters."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def sample(self, n_samples: int = 1):
        """Draw samples; returns (X, y) with y the component of each row."""
        self._check_fitted("weights_")
        n_samples = v.check_int(n_samples, "n_samples", f"{self._owner}.sample", low=1)
        rng = v.check_random_state(self.random_state, self._owner)
        counts = rng.multinomial(n_samples, self.weights_)
        X = self._fitted_family().sample(self._params(), counts, rng)
        y = np.repeat(np.arange(self.weights_.shape[0]), counts)
        return X, y

    def _n_parameters(self) -> int:
        free_weights = 0 if self._fitted_family().fixed_weights else self.weights_.shape[0] - 1
        return self._fitted_family().n_parameters() + free_weights

    def _weighted_loglik(self, X: Any, method: str, sample_weight: Any):
        row_loglik = self._evaluate(X, method)[0]
        w = v.check_sample_weight(sample_weight, row_loglik.shape[0],
                                  owner=f"{self._owner}.{method}")
        if w is None:
            return float(np.sum(row_loglik)), float(row_loglik.shape[0])
        return float(np.dot(w, row_loglik)), float(w.sum())

    def _information_criteria(self, loglik: float, n: float) -> tuple:
        """(BIC, AIC) = (-2 L + p ln n, -2 L + 2 p), lower is better."""
        p = self._n_parameters()
        return -2.0 * loglik + p * np.log(n), -2.0 * loglik + 2.0 * p

    def bic(self, X: Any, sample_weight: Any = None) -> float:
        """Bayesian information criterion -2 L + p log n (lower is better, scikit-learn's
        sign; mclust reports minus this). With weights, L is the weighted
        log-likelihood and n the sum of the weights. With a prior, L is the
        log-likelihood at the MAP estimate (Fraley & Raftery)."""
        return float(self._information_criteria(
            *self._weighted_loglik(X, "bic", sample_weight))[0])

    def aic(self, X: Any, sample_weight: Any = None) -> float:
        """Akaike information criterion -2 L + 2 p (lower is better)."""
        return float(self._information_criteria(
            *self._weighted_loglik(X, "aic", sample_weight))[1])

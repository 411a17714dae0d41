"""What emcore's mixture estimators share: initialisation, the n_init loop, and the
methods of a fitted mixture (scores, posteriors, sampling, information criteria).

A subclass says which family and which posterior rule it fits with
(``_family``, ``_fit_rule``) and checks its own parameters; everything else is here,
once.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from emcore import _validation as v
from emcore._estimator import BaseEstimator
from emcore._feature_names import check_feature_names
from emcore._init import (CountedPartition, check_resp_conflicts, check_resp_init,
                          m_step_from_resp, starting_partition)
from emcore._input import check_input
from emcore._logging import check_callback
from emcore.constraints import Constraints
from emcore.engine import FitResult, best_of_starts, chunk_rows_for, data_pass, run_em
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import PosteriorRule, _validate_in_debug, check_support
from emcore.registry import get_registry

if TYPE_CHECKING:                    # what summary() returns
    from emcore.summary import Summary

INIT_PARAMS = ("k-means++", "random", "random_from_data", "hc")

# sum(weights_) may differ from 1 by this much: the contract of ``weights_init``
# (probabilities as a user types them, e.g. to six decimals), not a rounding bound
_WEIGHTS_SUM_TOL = 1e-6


def _check_weights(weights: Any, name: str, owner: str,
                   n_components: Optional[int] = None) -> np.ndarray:
    """Mixture weights as a float64 1-D array of non-negative numbers summing to 1
    (within ``_WEIGHTS_SUM_TOL``), of length ``n_components`` when given, or a
    ValueError naming ``name``: the one check of fitted, given and starting weights."""
    shape = "a 1-D array" if n_components is None else f"an array of shape ({n_components},)"
    prefix = (f"The {name!r} {'attribute' if name.endswith('_') else 'parameter'} of "
              f"{owner} must be {shape} of non-negative numbers summing to 1")
    w = v.as_float_array(weights, prefix)
    if w.ndim != 1 or w.shape[0] == 0 or (n_components is not None
                                          and w.shape[0] != n_components):
        raise ValueError(f"{prefix}. Got an array of shape {w.shape} instead.")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or \
            not abs(float(np.sum(w)) - 1.0) <= _WEIGHTS_SUM_TOL:
        raise ValueError(f"{prefix}. Got {w!r} (sum {float(np.sum(w))!r}) instead.")
    return w


class _MixtureBase(BaseEstimator):
    """Base of the mixture estimators. Not public."""

    #: the fitted family's support (emcore.plugin_api.SUPPORTS), checked on new data
    _support: Optional[str] = None

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

    # --- the fitted model: read from the public fitted attributes -----------------
    def _fitted_model(self, owner: Optional[str] = None) -> tuple:
        """(family, weights, params) of the model the fitted attributes describe,
        validated (a ValueError names the attribute); NotFittedError before fit.

        Everything that uses the fitted model (predictions, scores, sampling,
        information criteria, warm starts) reads it here, so an edited fitted
        attribute is the model, and the constructor parameters (set_params after
        fit) are not: the family's kind is frozen at fit."""
        raise NotImplementedError

    def _fitted_family(self):
        return self._fitted_model()[0]

    def _params(self) -> dict:
        return self._fitted_model()[2]

    def _checked_weights(self, owner: str, name: str = "weights_") -> np.ndarray:
        """The fitted mixture weights: a 1-D array of non-negative numbers summing to 1."""
        self._check_fitted("weights_")
        return _check_weights(self.weights_, name, owner)

    @property
    def _owner(self) -> str:
        return type(self).__name__

    # --- shared parameter checks ----------------------------------------------------
    def _check_common(self, X: np.ndarray) -> int:
        owner = self._owner
        k = v.check_int(self.n_components, "n_components", owner, low=1)
        v.check_float(self.tol, "tol", owner)
        v.check_int(self.max_iter, "max_iter", owner, low=0)
        v.check_int(self.n_init, "n_init", owner, low=1)
        v.check_choice(self.init_params, "init_params", owner, INIT_PARAMS)
        v.check_int(self.verbose, "verbose", owner, low=0)
        check_callback(self.callback, owner)
        v.check_n_jobs(self.n_jobs, owner)
        accelerate = getattr(self, "accelerate", None)
        if accelerate is not None and accelerate != "squarem":
            raise ValueError(f"The 'accelerate' parameter of {owner} must be None or "
                             f"'squarem'. Got {accelerate!r} instead.")
        n = X.shape[0]
        if n < k:
            raise ValueError(f"The 'n_components' parameter of {owner} must be at "
                             f"most n_samples={n} (the rows of X). Got n_components={k} "
                             "instead.")
        if getattr(self, "resp_init", None) is not None:
            check_resp_init(self.resp_init, n, k, owner)
            check_resp_conflicts(owner, {"init_params": self.init_params != "k-means++",
                                         "warm_start": bool(getattr(self, "warm_start",
                                                                    False))})
        return k

    # --- initialisation -------------------------------------------------------------
    def _initial_parameters(self, X: np.ndarray, family, rng: np.random.Generator,
                            sample_weight: Optional[np.ndarray] = None):
        """(weights, params): the partition of ``init_params`` (emcore._init.
        starting_partition), the family's ``initial_params`` on it, and the weights
        of the partition. With ``resp_init``: the M-step from it (checked in
        ``_check_common``)."""
        k = self.n_components
        if getattr(self, "resp_init", None) is not None:
            resp = check_resp_init(self.resp_init, X.shape[0], k, self._owner)
            weights, params = m_step_from_resp(X, family, resp, sample_weight)
            _validate_in_debug(family, params, "from resp_init")
            return weights, params
        seeding = family.seeding_weights(X, sample_weight)
        partition = CountedPartition(starting_partition(X, k, self.init_params, rng,
                                                        sample_weight if seeding is None
                                                        else seeding),
                                     X.shape[0], k, sample_weight)
        params = family.initial_params(X, rng, sample_weight, resp=partition)
        _validate_in_debug(family, params, "from initial_params")
        resp_sum = partition.totals(chunk_rows_for(X.shape[1]))
        weights = (np.full(k, 1.0 / k) if family.fixed_weights
                   else resp_sum / resp_sum.sum())
        return weights, params

    # --- fitting --------------------------------------------------------------------
    def _run_starts(self, X: np.ndarray, family, rule, sample_weight, rng, *,
                    warm: bool = False, weight_concentration=None,
                    converged=None, patterns=None) -> FitResult:
        """Run EM from ``n_init`` starts (one if warm) and keep the best objective.

        With ``patterns`` (emcore._patterns.RowPatterns of X): the starts are drawn
        from the rows of X, the EM iterations run over the distinct rows with
        their summed weights (the same sums, docs/discrete.md#compression)."""
        em_X, em_weight = ((X, sample_weight) if patterns is None
                           else (patterns.rows, patterns.weight))

        def start():
            if warm:
                _, weights, params = self._fitted_model(f"{self._owner}.fit")
                return weights, params
            return self._initial_parameters(X, family, rng, sample_weight)

        n_starts = 1 if warm else self.n_init
        started = []

        def run(weights, params):
            started.append(None)
            return run_em(em_X, family, rule, weights, params, max_iter=self.max_iter,
                          tol=self.tol, n_jobs=self.n_jobs, verbose=self.verbose,
                          sample_weight=em_weight,
                          weight_concentration=weight_concentration, converged=converged,
                          accelerate=getattr(self, "accelerate", None), random_state=rng,
                          callback=self.callback,
                          label=f"start {len(started)}/{n_starts}" if n_starts > 1 else "")

        best = best_of_starts(n_starts, start, run)
        # max_iter=0 asks for the initial parameters (scikit-learn's), tol=0 for
        # exactly max_iter iterations, and stochastic EM is a Markov chain that runs
        # max_iter by design: none of them is a fit that failed to converge
        if (best.stop_reason == "max_iter" and self.max_iter > 0 and self.tol > 0
                and getattr(rule, "stochastic", None) != "sem"):
            warnings.warn(f"{self._owner} stopped after max_iter={self.max_iter} "
                          f"iterations before the relative change fell to tol={self.tol:g}; "
                          "increase max_iter or tol.", _sklearn_compatible(ConvergenceWarning),
                          stacklevel=3)
        return best

    def _set_fitted(self, result: FitResult, n_features: int) -> None:
        # the subclass stores the family's parameters (result.params)
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
        owner = f"{self._owner}.{method}"
        family, weights, params = self._fitted_model(owner)
        check_feature_names(self, X)
        X = check_input(X, owner=owner, n_features=family.n_features)
        out_log_resp = np.empty((X.shape[0], weights.shape[0])) if log_resp else None
        check_support(X, self._support, family=str(getattr(self, "family", self._owner)),
                      owner=owner)
        family.check_data(X, owner=owner)
        row_value = np.empty(X.shape[0])
        data_pass(X, family, rule or self._likelihood_rule(), weights,
                  params, n_jobs=self.n_jobs, with_stats=False,
                  out_log_resp=out_log_resp, out_row_value=row_value,
                  chunk_rows=chunk_rows_for(X.shape[1]))
        return row_value, out_log_resp

    def _posterior_rule(self) -> PosteriorRule:
        """The rule behind predict_proba and predict: the fitted rule, except one that
        needs all rows (constraints), which has no meaning for new data: the model's
        posterior there (``predict_proba(X, constrained=True)`` gives the q*)."""
        self._check_fitted("weights_")
        # a model built from its parameters (no fit) has the exact posterior
        rule = getattr(self, "_fitted_rule", None)
        if rule is None or rule.needs_all_rows:
            return self._likelihood_rule()
        return rule

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

    def sample(self, n_samples: int = 1) -> tuple:
        """Draw samples; returns (X, y) with y the component of each row."""
        family, weights, params = self._fitted_model(f"{self._owner}.sample")
        n_samples = v.check_int(n_samples, "n_samples", f"{self._owner}.sample", low=1)
        rng = v.check_random_state(self.random_state, self._owner)
        # weights summing to 1 within the tolerance _check_weights allows
        counts = rng.multinomial(n_samples, weights / weights.sum())
        X = family.sample(params, counts, rng)
        y = np.repeat(np.arange(weights.shape[0]), counts)
        return X, y

    def _n_parameters(self) -> int:
        family, weights, _ = self._fitted_model()
        free_weights = 0 if family.fixed_weights else weights.shape[0] - 1
        return family.n_parameters() + free_weights

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

    def icl(self, X: Any, sample_weight: Any = None) -> float:
        """Integrated completed likelihood BIC - 2 sum_i log max_k q_ik (lower is better).

        The hard-label ICL of Biernacki, Celeux & Govaert (2000) as mclust's
        ``icl()`` computes it, in scikit-learn's sign (mclust's value is minus
        this), with q_ik the model's posterior p(z_i = k | x_i) at the fitted
        parameters (whatever rule fitted them). Since log q_{i, z_i} <= 0, ICL >=
        BIC, with equality exactly when every posterior is one-hot: ICL adds a
        penalty for rows the model cannot classify confidently. log max_k q_ik
        comes straight from the log-space posterior: exactly 0 when the other
        components' posteriors are below half an ulp of 1, and accurate for tiny
        q (log of ``predict_proba`` would lose it). With weights, every sum is
        weighted and n in ``p ln n`` is the sum of the weights. L and BIC are
        computed as in :meth:`bic` (the same sums in the same order), so
        ``icl(X) - bic(X)`` is the classification penalty alone.
        """
        row_loglik, log_resp = self._evaluate(X, "icl", log_resp=True)
        w = v.check_sample_weight(sample_weight, row_loglik.shape[0],
                                  owner=f"{self._owner}.icl")
        log_max_q = np.max(log_resp, axis=1)
        if w is None:
            loglik, n = float(np.sum(row_loglik)), float(row_loglik.shape[0])
            classification = float(np.sum(log_max_q))
        else:
            loglik, n = float(np.dot(w, row_loglik)), float(w.sum())
            classification = float(np.dot(w, log_max_q))
        return float(self._information_criteria(loglik, n)[0]) - 2.0 * classification

    def summary(self, X: Any, parameters: bool = False) -> Summary:
        """What was fitted, in ten lines: an :class:`emcore.summary.Summary`.

        Like mclust's ``summary()``: the model (family, covariance type), n, d, G,
        log-likelihood, degrees of freedom, BIC, AIC, ICL (lower is better, as
        :meth:`bic`), the clustering table (rows of X per component, from
        :meth:`predict`) and the stopping rule; ``print(model.summary(X))`` shows
        the report, and its fields are data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Usually the training data: the fit keeps no data, so n, the criteria
            and the clustering table are computed on X (equal to ``bic(X)``,
            ``aic(X)``, ``icl(X)`` and ``predict(X)``).
        parameters : bool, default False
            Also the weights and the family's parameters (for a Gaussian mixture
            the means and the (G, d, d) covariances), labelled by
            ``feature_names_in_`` (else x0, x1, ...).
        """
        from emcore.summary import summarise
        return summarise(self, X, parameters)

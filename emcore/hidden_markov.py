"""``emcore.HiddenMarkovModel``: a first-order hidden Markov model whose emission is
any registered family, fitted by EM (Baum-Welch) or Viterbi training.

The latent structure is the registry's ``markov_chain`` (emcore/plugins/
structures.py); the loop, the ELBO chain records and the stopping rule are the
engine's (:func:`emcore.engine.run_em`), as for the mixtures. The mathematics,
the chain's ELBO and its tolerances: docs/hidden_markov.md.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

import numpy as np

from emcore import _markov, _missing
from emcore import _validation as v
from emcore._estimator import BaseEstimator
from emcore._init import (CountedPartition, check_resp_conflicts, check_resp_init,
                          m_step_from_resp, starting_partition)
from emcore._input import check_input
from emcore._mixture import INIT_PARAMS, _check_weights
from emcore._sequences import read_rows, sequence_groups
from emcore._logging import progress_bar
from emcore.engine import FitResult, best_of_starts, run_em
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import (GaussianFamilyProtocol, _validate_in_debug, check_support,
                               support_of)
from emcore.registry import get_registry

if TYPE_CHECKING:                    # what summary() returns
    from emcore.summary import HMMSummary

__all__ = ["HiddenMarkovModel"]

_OWNER = "HiddenMarkovModel"
_FIXABLE = ("startprob", "transmat")


def _chain_from_resp(resp: np.ndarray, starts: np.ndarray, startprob, transmat
                     ) -> np.ndarray:
    """The (K + 1, K) chain (start probabilities, transition rows) of the M-step from
    state posteriors: the mean of the sequences' first rows, and the normalised
    sum of gamma_t gamma_{t+1}^T over consecutive rows of a sequence (rows no
    transition leaves: uniform). Given ``startprob``/``transmat`` are kept."""
    K = resp.shape[1]
    chain = np.empty((K + 1, K))
    first = resp[starts[:-1]]
    chain[0] = first.sum(axis=0) / first.sum() if startprob is None else startprob
    if transmat is not None:
        chain[1:] = transmat
        return chain
    follows = np.ones(resp.shape[0], dtype=bool)      # row t + 1 continues row t's sequence
    follows[starts[1:] - 1] = False
    counts = resp[:-1][follows[:-1]].T @ resp[1:][follows[:-1]]
    total = counts.sum(axis=1, keepdims=True)
    chain[1:] = np.where(total > 0, counts / np.where(total > 0, total, 1.0), 1.0 / K)
    return chain


class HiddenMarkovModel(BaseEstimator):
    """Hidden Markov model with any registered emission family.

    z_1 ~ startprob, z_{t+1} | z_t ~ transmat[z_t], x_t | z_t = k ~ family(theta_k),
    independently for each sequence. Fitted by EM over the chain (Baum-Welch:
    forward-backward E-step, the family's own M-step on the state posteriors), or
    with ``posterior='hard'`` by Viterbi training (hard EM on the chain: the E-step
    is the most probable path). Every iteration records the ELBO chain
    (``history_``) as for the mixtures (docs/hidden_markov.md).

    Parameters
    ----------
    n_states : int, default 1
        Number of hidden states K.
    family : str, default 'gaussian'
        Registry name of the emission family (``emcore plugins`` lists them).
    family_options : mapping, optional
        Keyword arguments of the family's factory (``{"covariance_type": "diag"}``
        for 'gaussian').
    posterior : {'soft', 'hard'}, default 'soft'
        'soft': Baum-Welch, keeps the log-likelihood non-decreasing; 'hard':
        Viterbi training, keeps log p(x, z*) of the best paths non-decreasing.
        Other rules (tempered, constrained) are rejected.
    startprob_prior, transmat_prior : float or array, default 1.0
        Dirichlet concentrations (>= 1) of the start probabilities (K,) and of each
        transition row (K, K). 1 is maximum likelihood; above, MAP-EM, and
        ``objective_`` is the log-likelihood plus the log prior.
    startprob_init : array of shape (n_states,), optional
        Starting start probabilities (default uniform, as hmmlearn).
    transmat_init : array of shape (n_states, n_states), optional
        Starting transition matrix, rows summing to 1 (default uniform).
    params_init : mapping of str to array, optional
        Starting emission parameters (the family's keys; for 'gaussian' ``means`` and
        ``covariances`` suffice). Default: the family's ``initial_params`` on the
        ``init_params`` partition of the rows.
    fixed : iterable of {'startprob', 'transmat'}, default ()
        Chain parameters the fit keeps at their ``*_init`` value (which must then
        be given). E.g. ``transmat_init=A, fixed=("transmat",)`` fits a model with a
        known transition matrix.
    init_params : {'k-means++', 'random', 'random_from_data', 'hc'}, default 'k-means++'
        The starting partition of the rows (as :class:`emcore.MixtureModel`).
    tol : float, default 1e-6
        Stop when the relative change of the objective is below ``tol``.
    max_iter : int, default 100
    n_init : int, default 1
        Starts; the fit with the highest objective is kept.
    random_state : None, int, numpy RandomState or Generator
    n_jobs : int or None
        Threads over sequences (results are identical for every value).
    verbose : int, default 0
    accelerate : None or 'squarem', default None
        'squarem': SQUAREM (Varadhan & Roland 2008) around the Baum-Welch map: the
        same fixed point in fewer passes over the data, the objective still
        non-decreasing (an extrapolation that would lower it falls back to the EM
        step); the start and transition rows are extrapolated row by row and
        fixed rows are kept (docs/hidden_markov.md#squarem).

    resp_init : array of shape (n_samples, n_states), optional
        Starting state posteriors, one row per row of X (one-hot rows: a
        labelling), checked as in :class:`emcore.GaussianMixture`. The first
        step is the M-step from them: the emission parameters the family's
        M-step gives, the start probabilities the mean of the first rows of the
        sequences, the transition matrix the normalised sum over consecutive
        rows of gamma_t gamma_{t+1}^T (the counted transitions for one-hot rows;
        for soft rows the pair posteriors are not given, and this product is
        the estimate); a state no row leaves gets a uniform row.
        ``startprob_init``/``transmat_init``, when given, are used instead.
        Cannot come with ``params_init`` or ``init_params`` (other than the
        default).

    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the starts,
        or the iterations of a single start.
    missing : {'error', 'marginalize'}, default 'error'
        What NaN entries of X mean. 'error': refused. 'marginalize': missing
        values of an emission family with ``Family.supports_missing`` (a product
        form: 'poisson', 'categorical', 'bernoulli', 'exponential', 'gamma',
        'gaussian' with covariance_type 'diag' or 'spherical', a 'product' of
        them): each row's emission density is that of its observed
        entries (a row with none observed has density 1), so EM is exact for the
        observed-data likelihood; in-memory X, the soft posterior; ``family_`` is
        then the family wrapped to route rows with NaN
        (docs/missing_values.md#product-form-families). Other families refuse it,
        naming the family.
    Attributes
    ----------
    startprob_ : ndarray (n_states,)
    transmat_ : ndarray (n_states, n_states)
    params_ : dict of ndarray
        The emission family's parameters, also readable under their names with a
        trailing underscore (``means_``, ``covariances_`` for 'gaussian';
        ``rates_`` for 'poisson').
    family_ : emcore.plugin_api.Family
    history_ : tuple of emcore.engine.Iteration
        The ELBO chain of every iteration (``chain_holds()``).
    stop_reason_, converged_, n_iter_, n_features_in_
    objective_ : float
        The objective at the fitted parameters (log-likelihood for 'soft', log
        p(x, z*) for 'hard', plus the log prior with a prior).

    Notes
    -----
    ``fit``, ``score``, ``predict``... take ``lengths`` (the sequences laid end to
    end in X; None: one sequence), or X as a list of 2-D arrays (one per
    sequence). A memmap, h5py or zarr X is read a group of whole sequences at a
    time: a sequence is never split, and no n x K array is built during fit.
    ``score`` returns the total log-likelihood (hmmlearn's convention), not a
    mean per row.
    """

    def __init__(self, n_states: int = 1, *, family: str = "gaussian",
                 family_options: Optional[Mapping[str, Any]] = None,
                 posterior: str = "soft", startprob_prior: Any = 1.0,
                 transmat_prior: Any = 1.0, startprob_init: Any = None,
                 transmat_init: Any = None, params_init: Optional[Mapping[str, Any]] = None,
                 fixed: Iterable[str] = (), init_params: str = "k-means++",
                 tol: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 random_state: Any = None, n_jobs: Optional[int] = None, verbose: int = 0,
                 accelerate: Optional[str] = None, resp_init: Any = None,
                 progress: bool = False, missing: str = "error"):
        self.n_states = n_states
        self.missing = missing
        self.family = family
        self.family_options = family_options
        self.posterior = posterior
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.startprob_init = startprob_init
        self.transmat_init = transmat_init
        self.params_init = params_init
        self.fixed = fixed
        self.init_params = init_params
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.accelerate = accelerate
        self.resp_init = resp_init
        self.progress = progress

    # --- the family's parameters under their names ----------------------------------
    def __getattr__(self, name: str):
        # means_, covariances_, rates_, ...: read from params_ (the model)
        params = self.__dict__.get("params_")
        if name.endswith("_") and not name.startswith("_") and params is not None \
                and name[:-1] in params:
            return params[name[:-1]]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- checks ---------------------------------------------------------------------
    def _data(self, X: Any, lengths: Any, owner: str, n_features: Optional[int] = None):
        """(X checked, row offsets of the sequences)."""
        if isinstance(X, (list, tuple)) and X and all(np.ndim(x) == 2 for x in X):
            # a list of sequences (a plain nested list of rows is one 2-D array)
            if lengths is not None:
                raise ValueError(f"The 'lengths' parameter of {owner} must be None when X "
                                 "is a list of sequences (their lengths are the lengths).")
            parts = [np.asarray(x) for x in X]
            lengths = [p.shape[0] for p in parts]
            X = np.concatenate(parts) if len(parts) > 1 else parts[0]
        # getattr: a model saved before the parameter existed predicts as before
        missing = v.check_choice(getattr(self, "missing", "error"), "missing", _OWNER,
                                 ("error", "marginalize"))
        if missing == "marginalize" and isinstance(X, (np.ndarray, list, tuple)) and \
                not isinstance(X, np.memmap):
            X = _missing.check_input_with_nan(X, owner, n_features=n_features)
        else:
            X = check_input(X, owner=owner, n_features=n_features)
        starts = _markov._check_lengths(lengths, X.shape[0], owner)
        return X, starts

    def _check_chain(self, value: Any, name: str, K: int, owner: str) -> np.ndarray:
        """(K,) start probabilities or (K, K) rows, each summing to 1."""
        if name.startswith("startprob"):
            return _check_weights(value, name, owner, K)
        arr = v.as_float_array(value, f"The {name!r} parameter of {owner} must be an "
                                      f"array of shape ({K}, {K})")
        if arr.shape != (K, K):
            kind = "attribute" if name.endswith("_") else "parameter"
            raise ValueError(f"The {name!r} {kind} of {owner} must be an array of shape "
                             f"({K}, {K}) whose rows are probabilities. Got shape "
                             f"{arr.shape} instead.")
        return np.array([_check_weights(row, f"{name}[{i}]", owner, K)
                         for i, row in enumerate(arr)])

    def _concentration(self, value: Any, name: str, shape: tuple) -> Optional[np.ndarray]:
        prefix = (f"The {name!r} parameter of {_OWNER} must be a number or an array of "
                  f"shape {shape} of Dirichlet concentrations >= 1")
        arr = v.as_float_array(value, prefix)
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ValueError(f"{prefix}. Got shape {arr.shape} instead.") from None
        if not (np.all(np.isfinite(arr)) and np.all(arr >= 1.0)):
            raise ValueError(f"{prefix}. Got {value!r} instead.")
        return None if np.all(arr == 1.0) else np.array(arr)

    def _fixed(self) -> frozenset:
        fixed = self.fixed
        if isinstance(fixed, str) or not all(isinstance(f, str) for f in fixed) \
                or not set(fixed) <= set(_FIXABLE):
            raise ValueError(f"The 'fixed' parameter of {_OWNER} must be a collection of "
                             f"names among {_FIXABLE}. Got {fixed!r} instead.")
        fixed = frozenset(fixed)
        for name in fixed:
            if getattr(self, f"{name}_init") is None:
                raise ValueError(f"The 'fixed' parameter of {_OWNER} names {name!r}, so "
                                 f"'{name}_init' must be given. Got None instead.")
        return fixed

    def _rule(self):
        if self.posterior not in ("soft", "hard"):
            raise ValueError(f"The 'posterior' parameter of {_OWNER} must be 'soft' "
                             "(Baum-Welch) or 'hard' (Viterbi training): a chain posterior "
                             "is exact or a path. Got "
                             f"{self.posterior!r} instead.")
        return get_registry().posterior_rule(self.posterior).factory()

    def _family(self, n_features: int):
        if not isinstance(self.family, str):
            raise ValueError(f"The 'family' parameter of {_OWNER} must be a registry name "
                             f"(str). Got {self.family!r} instead.")
        try:
            record = get_registry().family(self.family)
        except ValueError as exc:
            raise ValueError(f"The 'family' parameter of {_OWNER}: {exc}") from None
        options = self.family_options
        if options is None:
            options = {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"The 'family_options' parameter of {_OWNER} must be None or a "
                             f"mapping of keyword arguments. Got {options!r} instead.")
        try:
            family = record.factory(self.n_states, n_features, **options)
        except TypeError as exc:
            raise ValueError(f"The 'family_options' parameter of {_OWNER} does not fit "
                             f"family {self.family!r}: {exc}") from None
        return family, support_of(record.capabilities)

    def _family_params(self, family, params: Any, name: str, owner: str) -> dict:
        """The family's parameters from a mapping (for a Gaussian family, means and
        covariances suffice), validated by the family."""
        K = family.n_components
        if not isinstance(params, Mapping) or not params:
            raise ValueError(f"The {name!r} parameter of {owner} must be a non-empty "
                             f"mapping of the family's parameter names to arrays. Got "
                             f"{params!r} instead.")
        params = {key: np.array(value, dtype=np.float64) for key, value in params.items()}
        if isinstance(family, GaussianFamilyProtocol) and "precisions_cholesky" not in params \
                and {"means", "covariances"} <= set(params):
            params = family.params_from_covariances(params["means"], params["covariances"])
        for key, value in params.items():
            if value.ndim == 0 or value.shape[0] != K or not np.all(np.isfinite(value)):
                raise ValueError(f"The {name!r} parameter of {owner} must hold finite arrays "
                                 f"whose first axis has n_states={K} entries. Got {key!r} "
                                 f"of shape {value.shape} instead.")
        try:
            family.validate_params(params)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"The {name!r} parameter of {owner} is not valid for family "
                             f"{self.family!r}: {exc}") from None
        return params

    # --- fitting --------------------------------------------------------------------
    def fit(self, X: Any, lengths: Any = None, y: Any = None) -> "HiddenMarkovModel":
        """Fit the model by EM over the chain; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a list of such arrays
            The sequences laid end to end (or one array per sequence). A memmap is
            read a group of whole sequences at a time.
        lengths : array of int of shape (n_sequences,), optional
            The length of each sequence (each >= 1, summing to n_samples). None:
            one sequence.
        y : ignored
        """
        owner = f"{_OWNER}.fit"
        X, starts = self._data(X, lengths, owner)
        K = v.check_int(self.n_states, "n_states", _OWNER, low=1)
        v.check_float(self.tol, "tol", _OWNER)
        v.check_int(self.max_iter, "max_iter", _OWNER, low=1)
        v.check_int(self.n_init, "n_init", _OWNER, low=1)
        v.check_choice(self.init_params, "init_params", _OWNER, INIT_PARAMS)
        v.check_int(self.verbose, "verbose", _OWNER, low=0)
        if self.accelerate is not None and self.accelerate != "squarem":
            raise ValueError(f"The 'accelerate' parameter of {_OWNER} must be None or "
                             f"'squarem'. Got {self.accelerate!r} instead.")
        n_jobs = v.check_n_jobs(self.n_jobs, _OWNER)
        if X.shape[0] < K:
            raise ValueError(f"The 'n_states' parameter of {_OWNER} must be at most "
                             f"n_samples={X.shape[0]} (the rows of X). Got n_states={K} "
                             "instead.")
        rule = self._rule()
        fixed = self._fixed()
        family, support = self._family(X.shape[1])
        X_start = X                     # what the start sees (NaN filled)
        if isinstance(X, np.ndarray) and np.isnan(X).any():
            family, X_start = self._masked(family, X, owner)
        check_support(X_start, support, family=self.family, owner=owner)
        startprob = (None if self.startprob_init is None else
                     self._check_chain(self.startprob_init, "startprob_init", K, _OWNER))
        transmat = (None if self.transmat_init is None else
                    self._check_chain(self.transmat_init, "transmat_init", K, _OWNER))
        params_init = (None if self.params_init is None else
                       self._family_params(family, self.params_init, "params_init", _OWNER))
        structure = get_registry().structure("markov_chain").factory(
            K, startprob_prior=self._concentration(self.startprob_prior,
                                                   "startprob_prior", (K,)),
            transmat_prior=self._concentration(self.transmat_prior, "transmat_prior",
                                               (K, K)),
            fixed=fixed)
        rng = v.check_random_state(self.random_state, _OWNER)
        lengths = np.diff(starts)
        resp = None
        if self.resp_init is not None:
            resp = check_resp_init(self.resp_init, X.shape[0], K, _OWNER)
            check_resp_conflicts(_OWNER, {"params_init": self.params_init is not None,
                                          "init_params": self.init_params != "k-means++"})

        def start():
            chain = np.empty((K + 1, K))
            chain[0] = np.full(K, 1.0 / K) if startprob is None else startprob
            chain[1:] = np.full((K, K), 1.0 / K) if transmat is None else transmat
            if resp is not None:
                return _chain_from_resp(resp, starts, startprob, transmat), \
                    m_step_from_resp(X_start, family, resp)[1]
            if params_init is not None:
                return chain, {key: value.copy() for key, value in params_init.items()}
            # seeds drawn with the family's seeding weights, as MixtureModel's
            # (a heavy-tailed emission keeps them off far outliers)
            partition = CountedPartition(starting_partition(
                X_start, K, self.init_params, rng, family.seeding_weights(X_start)),
                X.shape[0], K)
            params = family.initial_params(X_start, rng, None, resp=partition)
            _validate_in_debug(family, params, "from initial_params")
            return chain, params

        def run(chain, params):
            return run_em(X, family, rule, chain, params, max_iter=self.max_iter,
                          tol=self.tol, n_jobs=n_jobs, verbose=self.verbose,
                          structure=structure, lengths=lengths,
                          accelerate=self.accelerate)

        with progress_bar(getattr(self, "progress", False), "HiddenMarkovModel",
                          starts=self.n_init, max_iter=self.max_iter):
            best = best_of_starts(self.n_init, start, run)
        if best.stop_reason == "max_iter":
            warnings.warn(f"{_OWNER} stopped after max_iter={self.max_iter} iterations "
                          f"before the relative change fell to tol={self.tol:g}; increase "
                          "max_iter or tol.", _sklearn_compatible(ConvergenceWarning),
                          stacklevel=2)
        self._set_fitted(best, family, support, X.shape[1])
        return self

    def _masked(self, family, X: np.ndarray, owner: str) -> tuple:
        """(the family wrapped to marginalise NaN entries, X with them filled for the
        start), or a ValueError (docs/missing_values.md#product-form-families)."""
        _missing.check_supports_missing(family, self.family, owner)
        if self.posterior != "soft":
            raise ValueError(f"The 'posterior' parameter of {owner} must be 'soft' when X "
                             f"has missing values. Got {self.posterior!r} instead.")
        never = np.flatnonzero(np.all(np.isnan(X), axis=0))
        if never.size:
            raise ValueError(f"The 'X' parameter of {owner} has no observed value in "
                             f"column {int(never[0])}: the data say nothing about it. Drop "
                             "the column.")
        filled = _missing.observed_fill(X)
        family.check_data(filled, owner=owner)
        return _missing.MaskedFamily(family), filled

    def _set_fitted(self, result: FitResult, family, support, n_features: int) -> None:
        self.startprob_ = result.weights[0].copy()
        self.transmat_ = result.weights[1:].copy()
        self.params_ = result.params
        self.family_ = family
        self._support = support
        self.history_ = result.history
        self.stop_reason_ = result.stop_reason
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.objective_ = result.objective
        self.n_features_in_ = n_features

    # --- the fitted model -----------------------------------------------------------
    def _fitted_model(self, owner: str) -> tuple:
        """(family, log startprob, log transmat, params), read from the fitted
        attributes (an edited attribute is the model)."""
        self._check_fitted("startprob_")
        family = self.family_
        K = family.n_components
        pi = self._check_chain(self.startprob_, "startprob_", K, owner)
        A = self._check_chain(self.transmat_, "transmat_", K, owner)
        with np.errstate(divide="ignore"):
            return family, np.log(pi), np.log(A), self.params_

    def _groups(self, X: Any, lengths: Any, owner: str):
        """(rows, log_b, lengths of the group, first row) of each group of sequences."""
        family, lpi, lA, params = self._fitted_model(owner)
        X, starts = self._data(X, lengths, owner, n_features=family.n_features)
        if isinstance(X, np.ndarray) and np.isnan(X).any():
            # rows with NaN (missing='marginalize'): their observed entries' density
            seen = ~np.all(np.isnan(X), axis=0)
            check_support(_missing.observed_fill(X)[:, seen], self._support,
                          family=str(self.family), owner=owner)
            if not isinstance(family, _missing.MaskedFamily):
                _missing.check_supports_missing(family, self.family, owner,
                                                parameter="X", state="has missing values")
                family = _missing.MaskedFamily(family)
        else:
            check_support(X, self._support, family=str(self.family), owner=owner)
        for i, j in sequence_groups(starts):
            s, e = int(starts[i]), int(starts[j])
            rows = read_rows(X, s, e)
            log_b = family.log_density(rows, params)
            yield log_b, np.diff(starts[i:j + 1]), lpi, lA, s, X.shape[0]

    def score(self, X: Any, lengths: Any = None) -> float:
        """Total log-likelihood log p(X) of the sequences (hmmlearn's convention)."""
        total = 0.0
        for log_b, lens, lpi, lA, _, _ in self._groups(X, lengths, f"{_OWNER}.score"):
            total += float(np.sum(_markov.log_likelihood(log_b, lens, lpi, lA, self.n_jobs)))
        return total

    def _posteriors(self, X: Any, lengths: Any, owner: str) -> tuple:
        total, gamma = 0.0, None
        for log_b, lens, lpi, lA, s, n in self._groups(X, lengths, owner):
            if gamma is None:
                gamma = np.empty((n, log_b.shape[1]))
            fb = _markov.forward_backward(log_b, lens, lpi, lA, self.n_jobs,
                                          out=gamma[s:s + log_b.shape[0]])
            total += float(np.sum(fb.log_likelihood))
        return total, gamma

    def score_samples(self, X: Any, lengths: Any = None) -> tuple:
        """(total log-likelihood, state posteriors (n_samples, n_states)), as hmmlearn."""
        return self._posteriors(X, lengths, f"{_OWNER}.score_samples")

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """State posteriors p(z_t = k | the sequence), shape (n_samples, n_states)."""
        return self._posteriors(X, lengths, f"{_OWNER}.predict_proba")[1]

    def decode(self, X: Any, lengths: Any = None, algorithm: str = "viterbi") -> tuple:
        """(log-probability, states): 'viterbi': the most probable path and
        log p(X, path); 'map': each row's most probable state (argmax of the
        posteriors, which need not form a possible path) and log p(X) (hmmlearn
        0.3 returns the sum of the largest posteriors there, not a log-probability)."""
        owner = f"{_OWNER}.decode"
        v.check_choice(algorithm, "algorithm", owner, ("viterbi", "map"))
        if algorithm == "map":
            total, gamma = self._posteriors(X, lengths, owner)
            return total, np.argmax(gamma, axis=1)
        total, path = 0.0, None
        for log_b, lens, lpi, lA, s, n in self._groups(X, lengths, owner):
            if path is None:
                path = np.empty(n, dtype=np.intp)
            p, log_prob = _markov.viterbi(log_b, lens, lpi, lA, self.n_jobs)
            path[s:s + p.shape[0]] = p
            total += float(np.sum(log_prob))
        return total, path

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """The most probable state path (Viterbi), shape (n_samples,)."""
        return self.decode(X, lengths, algorithm="viterbi")[1]

    def summary(self, X: Any, lengths: Any = None,
                parameters: bool = False) -> HMMSummary:
        """What was fitted, in a few lines: an :class:`emcore.summary.HMMSummary` (the
        log-likelihood of X, BIC and AIC, the start and transition probabilities,
        the state counts of the Viterbi path ``predict(X)``, iterations and the
        stopping rule); ``print`` shows the report, its fields are data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a list of such arrays
            Usually the training sequences (the fit keeps no data).
        lengths : array of int, optional
            As in :meth:`fit`.
        parameters : bool, default False
            Also the emission parameters, labelled by the columns of a DataFrame X
            (else x0, x1, ...).
        """
        from emcore.summary import summarise_hmm
        return summarise_hmm(self, X, lengths, parameters)

    def sample(self, n_samples: int = 1, random_state: Any = None) -> tuple:
        """Draw one sequence of ``n_samples`` rows; returns (X, states).

        ``random_state`` (default: the estimator's) seeds the draw.
        """
        owner = f"{_OWNER}.sample"
        family, lpi, lA, params = self._fitted_model(owner)
        n = v.check_int(n_samples, "n_samples", owner, low=1)
        rng = v.check_random_state(self.random_state if random_state is None
                                   else random_state, _OWNER)
        pi, A = np.exp(lpi), np.exp(lA)
        K = pi.shape[0]
        states = np.empty(n, dtype=np.intp)
        cum_pi, cum_A = np.cumsum(pi), np.cumsum(A, axis=1)
        u = rng.random(n)
        z = min(int(np.searchsorted(cum_pi, u[0] * cum_pi[-1], side="right")), K - 1)
        states[0] = z
        for t in range(1, n):
            row = cum_A[z]
            z = min(int(np.searchsorted(row, u[t] * row[-1], side="right")), K - 1)
            states[t] = z
        counts = np.bincount(states, minlength=K)
        draws = family.sample(params, counts, rng)      # stacked in state order
        X = np.empty_like(draws)
        X[np.argsort(states, kind="stable")] = draws
        return X, states

"""The public API a plugin implements: families, posterior rules, their records.

A **family** is the component distribution p(x | z = k, theta_k). The engine
drives it through the methods of :class:`Family` only, a chunk of rows at a
time, and never looks inside its parameters or statistics:

1. ``log_density(X, params)`` gives log p(x_i | z_i = k) for a chunk;
2. ``chunk_stats(X, weights)`` gives the weighted sufficient statistics of a
   chunk and ``merge_stats`` adds two of them (statistics of the union of rows);
3. ``m_step(stats, previous)`` maximises the expected complete-data
   log-likelihood, and ``expected_log_likelihood(stats, params)`` evaluates it
   from the statistics alone (so ELBO(q_t, theta_{t+1}) needs no second pass).

Parameters are a ``dict`` of numpy arrays whose keys the family chooses;
statistics are any object the family's own methods understand.

A family may hand the engine a compiled kernel (a subclass of
``emcore.kernel.FamilyKernel``, declared in the public ``emcore/kernel.pxd``) from
``compiled_kernel(params)``; the chunk loop then runs in parallel without the
GIL. A pure-Python family (``compiled_kernel`` returning None) runs through the
same engine, a chunk at a time.

A **posterior rule** turns a chunk's log joint probabilities into q (soft: the
exact posterior; hard, tempered, constrained). A rule whose q needs all rows
(posterior regularization) sets ``needs_all_rows``; the engine then calls its
``prepare`` with every chunk's log joint before the pass.

Starting values come from ``Family.initial_params`` (default: one M-step on the
statistics of the starting partition, mixed with a small uniform share so that no
parameter starts at an exact zero the data does not force); the parameter space
is declared by ``Family.validate_params``, which the conformance suite calls on
every M-step output and the engine too in debug mode (:func:`set_debug`, or the
environment variable ``EMCORE_DEBUG=1``).

**Support.** A family says where x lives with one ``support:*`` capability of its
record (:data:`SUPPORTS`); the estimators check X against it (:func:`check_support`)
at fit, score and predict, and the conformance suite integrates or sums the
density over it. Without one, any finite X is accepted.

**What estimators need beyond** :class:`Family`: ``GaussianMixture`` builds
parameters from means and covariances or precisions through
:class:`GaussianFamilyProtocol`; ``KMeans`` reads the within-cluster sums of squares
through :class:`CentroidFamilyProtocol`. Both are typing protocols: a family
satisfies them by having the methods.

Plugins publish them with records returned from the registration hooks of
:mod:`emcore.hookspecs`::

    from emcore.plugin_api import FamilyRecord, hookimpl

    @hookimpl
    def emcore_register_families():
        return [FamilyRecord(name="my_poisson", factory=PoissonFamily,
                             capabilities=frozenset({"sampling",
                                                     "support:nonnegative_integers"}),
                             description="independent Poisson counts")]
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Union, runtime_checkable

import numpy as np
import pluggy

from emcore._chunks import family_chunk_stats
from emcore._float import FLOAT32_UNIT_ROUNDOFF, UNIT_ROUNDOFF
from emcore._markov import ForwardBackward, forward_backward, viterbi
from emcore._markov import forward_backward_stats
from emcore._markov import _check_lengths as check_lengths
from emcore._sequences import read_rows, sequence_groups
from emcore.constraints import ResolvedConstraints
from emcore.priors import ResolvedGaussianPrior

__all__ = [
    "CAPABILITIES",
    "CentroidFamilyProtocol",
    "Family",
    "FamilyRecord",
    "GaussianFamilyProtocol",
    "ForwardBackward",
    "LatentStructure",
    "MixtureStructure",
    "Params",
    "PassResult",
    "PosteriorRule",
    "PosteriorRuleRecord",
    "StructureRecord",
    "categorical_expected",
    "categorical_m_step",
    "check_lengths",
    "dirichlet_log_prior",
    "forward_backward",
    "read_rows",
    "sequence_groups",
    "viterbi",
    "ResolvedConstraints",
    "ResolvedGaussianPrior",
    "SUPPORTS",
    "check_support",
    "family_chunk_stats",
    "debug_enabled",
    "hookimpl",
    "set_debug",
    "support_of",
    "UNIT_ROUNDOFF",
    "forward_backward_stats",
    "FLOAT32_UNIT_ROUNDOFF",
]


hookimpl = pluggy.HookimplMarker("emcore")
"""Marker for plugin functions that implement an emcore hook."""

Params = Mapping[str, np.ndarray]
"""A family's parameters: a mapping of names to arrays (first axis = component)."""

SUPPORTS = {
    "support:real": "x in R^d (any finite value)",
    "support:nonnegative": "x in [0, inf)^d",
    "support:positive": "x in (0, inf)^d",
    "support:unit_interval": "x in [0, 1]^d",
    "support:integers": "x in Z^d (integer values stored as floats)",
    "support:nonnegative_integers": "x in {0, 1, 2, ...}^d (counts, category codes)",
    "support:binary": "x in {0, 1}^d",
}
"""The ``support:*`` capabilities: where a family's x lives. A family declares at
most one; the estimators reject X outside it (:func:`check_support`) and the
conformance suite integrates (real) or sums (integer supports) the density over it."""

CAPABILITIES = {
    "sampling": "the family implements sample() (the conformance suite draws data "
                "from it and checks its moments)",
    "compiled_kernel": "the family/rule can hand the engine a compiled kernel "
                       "(informational, listed by `emcore plugins`: the engine asks "
                       "compiled_kernel() itself)",
    "covariance_type:full": "Gaussian family with full covariance matrices (informational)",
    "covariance_type:tied": "Gaussian family with one covariance matrix shared by all "
                            "components (informational)",
    "covariance_type:diag": "Gaussian family with diagonal covariance matrices "
                            "(informational)",
    "covariance_type:spherical": "Gaussian family with one variance per component "
                                 "(informational)",
    **SUPPORTS,
    "response": "the family models one column of X (its ``response_column``) given the "
                "others: a conditional density, normalised over that column only, so "
                "the conformance suite's normalisation and moment checks do not apply; "
                "MixtureModel.fit(X, y) appends y to X as that (last) column",
}
"""The capability vocabulary. A record declaring a string outside it is rejected
(ValueError naming the record and the string; the registry then reports the plugin
as broken), so a typo never silently turns a check off. ``sampling`` and the
supports are read (by the conformance suite and the estimators); the others are
informational, listed by ``emcore plugins``. The engine reads what it runs from the
family's own methods and attributes (``compiled_kernel()``, ``fixed_weights``),
never from a capability, so a declaration cannot disagree with the code."""


class Family(abc.ABC):
    """A component family p(x | z = k, theta_k) with K components in d dimensions.

    Parameters
    ----------
    n_components : int
        Number of mixture components K.
    n_features : int
        Dimension d of one observation.
    """

    #: True when the model fixes the mixture weights (k-means: equal weights); the
    #: engine then keeps the initial weights instead of estimating them.
    fixed_weights: bool = False

    #: True for a generalized-EM family, whose ``m_step`` only increases the
    #: (penalised) expected log-likelihood Q instead of maximising it (an ECM
    #: sequence of conditional maximisations, a gradient or Newton step where Q has
    #: no closed-form maximiser). The engine then checks the ascent
    #: ELBO(q_t, theta_{t+1}) >= ELBO(q_t, theta_t), records the step as 'gem', and
    #: does not check maximality; for a family that leaves this False it also checks
    #: that a second ``m_step`` from the first's output gains nothing (a
    #: ChainViolationWarning otherwise). docs/variants.md#gem.
    generalized_m_step: bool = False

    #: The uniform share epsilon the default :meth:`initial_params` mixes into the
    #: starting responsibilities, q -> (1 - epsilon) q + epsilon / K: every component
    #: then starts with a positive weight on every row, so no parameter starts at an
    #: exact zero (a probability, a rate) that only the partition, not the data,
    #: forces. Exact zeros are absorbing for EM (a row of zero density in a component
    #: never moves there), which left discrete families stuck far below the optimum
    #: from a hard partition. 0 for a family whose parameter space is open (emcore's
    #: Gaussian), which then starts from the plain partition.
    init_smoothing: float = 0.05

    #: For a family declaring the ``response`` capability (a regression): the column
    #: of X it models given the other columns. ``MixtureModel.fit(X, y)`` appends y
    #: to X as the last column and requires that column here. None: x is modelled
    #: whole (every other family).
    response_column: Optional[int] = None
    #: True for a family whose statistics depend on the parameters of the pass as
    #: well as on q: a scale mixture (the Student t, whose E-step also weights each
    #: row by its latent scale's posterior mean at the current parameters). Every
    #: caller of :meth:`chunk_stats` then passes ``params=`` the parameters the
    #: chunk's q was computed at (the engine's pass, the conformance suite), or
    #: ``params=None`` where there are none yet (statistics of a starting
    #: partition, :meth:`initial_params`). False (the default): ``chunk_stats(X,
    #: weights)`` only, as before.
    stats_need_params: bool = False
    #: True for a family whose coordinates are independent given z (a product
    #: form: log p(x | z = k) = sum_j log p_j(x_j | theta_kj)) and that marginalises
    #: missing coordinates by dropping their terms: it implements
    #: :meth:`log_density_observed`, :meth:`chunk_stats_observed` and
    #: :meth:`marginal`. ``MixtureModel(missing="marginalize")`` then fits rows
    #: with NaN entries by exact EM for the observed-data likelihood
    #: (docs/missing_values.md#product-form-families); the conformance suite checks
    #: it (``check_missing_values``). False: such a fit is refused, naming the family.
    supports_missing: bool = False

    def __init__(self, n_components: int, n_features: int):
        self.n_components = int(n_components)
        self.n_features = int(n_features)

    # --- E-step -------------------------------------------------------------------
    @abc.abstractmethod
    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        """Return log p(x_i | z_i = k, theta_k), shape (n_rows, n_components)."""

    # --- sufficient statistics ----------------------------------------------------
    @abc.abstractmethod
    def empty_stats(self) -> Any:
        """Return the statistics of no data (the identity of ``merge_stats``)."""

    @abc.abstractmethod
    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> Any:
        """Return the statistics of a chunk.

        ``weights[i, k]`` is q_ik times the sample weight of row i. Use centred or
        shifted second moments, never raw E[x x^T] - mu mu^T. A family with
        :attr:`stats_need_params` takes a keyword ``params`` too
        (``chunk_stats(X, weights, params=None)``): see there.
        """

    @abc.abstractmethod
    def merge_stats(self, a: Any, b: Any) -> Any:
        """Return the statistics of the union of the rows behind ``a`` and ``b``.

        Must not modify its inputs. Merging is associative in exact arithmetic;
        the engine always merges in a fixed order.
        """

    # --- M-step -------------------------------------------------------------------
    @abc.abstractmethod
    def m_step(self, stats: Any, previous: Optional[Params]) -> dict[str, np.ndarray]:
        """Return the parameters maximising the (penalised) expected log-likelihood.

        ``previous`` is None at initialisation. A component whose statistics hold
        zero weight keeps its ``previous`` parameters (a valid maximiser: the
        objective does not depend on them). Raise
        :class:`emcore.DegenerateComponentError` naming the component when its
        parameters cannot be estimated.
        """

    @abc.abstractmethod
    def expected_log_likelihood(self, stats: Any, params: Params) -> float:
        """Return sum_i sum_k q_ik log p(x_i | z_i = k, theta_k) from statistics alone."""

    def m_step_penalty(self, stats: Any, params: Params) -> float:
        """Penalty the M-step subtracts from the expected log-likelihood.

        ``m_step(stats)`` maximises ``expected_log_likelihood(stats, .) -
        m_step_penalty(stats, .)``. Zero for an unpenalised (maximum-likelihood)
        M-step. A penalty that depends on the statistics (scikit-learn-style
        ``reg_covar``) is not a fixed objective: the engine records its change so
        that the ELBO chain can be checked in its penalised form.
        """
        return 0.0

    # --- starting values and the parameter space ---------------------------------
    def initial_params(self, X: Any, rng: np.random.Generator,
                       sample_weight: Optional[np.ndarray] = None,
                       resp: Union[None, np.ndarray, Callable[[int, int], np.ndarray]] = None
                       ) -> dict[str, np.ndarray]:
        """Return starting parameters of the K components.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), or a chunked source
            The training data (rows may be read a block at a time: ``X[start:stop]``).
        rng : numpy.random.Generator
            The fit's generator (``random_state``); use it for every random choice.
        sample_weight : array of shape (n_samples,), optional
            Non-negative row weights.
        resp : array of shape (n_samples, K), or callable, optional
            The starting partition the estimator chose (its ``init_params``):
            responsibilities, or ``resp(start, stop)`` returning those of rows
            ``start:stop``. Default: each row on the nearest of K k-means++ seeds.

        Returns
        -------
        dict
            Valid parameters (:meth:`validate_params`).

        Notes
        -----
        The default is one M-step (``m_step(stats, None)``) on the statistics of
        the partition smoothed by :attr:`init_smoothing`: q -> (1 - epsilon) q +
        epsilon / K. Override it for a family with a better start of its own.
        """
        from emcore._init import kmeans_plusplus, nearest_centre, one_hot
        from emcore._chunks import stats_from_assignments

        k = self.n_components
        if resp is None:
            seeding = self.seeding_weights(X, sample_weight)
            centres = X[kmeans_plusplus(X, k, rng,
                                        sample_weight if seeding is None else seeding)]

            def resp(start: int, stop: int) -> np.ndarray:
                return one_hot(nearest_centre(X, centres, start, stop), k)
        elif not callable(resp):
            given = np.asarray(resp, dtype=np.float64)
            if given.shape != (X.shape[0], k):
                raise ValueError(f"The 'resp' parameter of {type(self).__name__}."
                                 f"initial_params must have shape ({X.shape[0]}, {k}). "
                                 f"Got {given.shape} instead.")

            def resp(start: int, stop: int) -> np.ndarray:
                return given[start:stop]
        eps = float(self.init_smoothing)

        def smoothed(start: int, stop: int) -> np.ndarray:
            return (1.0 - eps) * np.asarray(resp(start, stop), dtype=np.float64) + eps / k
        stats, _ = stats_from_assignments(X, self, smoothed if eps > 0 else resp,
                                          sample_weight=sample_weight)
        return self.m_step(stats, None)

    def seeding_weights(self, X: Any, sample_weight: Optional[np.ndarray] = None
                        ) -> Optional[np.ndarray]:
        """Return the row weights the seeds of a starting partition are drawn with.

        The estimators draw the seed rows of ``init_params`` 'k-means++' and
        'random_from_data' (and the default :meth:`initial_params` its k-means++
        seeds) in proportion to these weights; every row is still assigned to its
        nearest seed, and the starting mixture weights still count ``sample_weight``.

        Returns
        -------
        array of shape (n_samples,) or None
            Non-negative weights, positive on at least K rows; None (the
            default) draws with ``sample_weight``. A heavy-tailed family returns
            0 on far outliers, which would otherwise seed a component of one row
            (the Student t: docs/student_t.md#start).
        """
        return None

    def check_data(self, X: Any, *, owner: str) -> None:
        """Raise ValueError if X holds values the family cannot model within its support.

        The estimators call it at fit, score and predict, after :func:`check_support`
        (``owner`` names the method, e.g. ``"MixtureModel.fit"``), for a limit the
        support cannot state (a categorical family's number of levels). The message
        names the entry and its column. X is an array or a chunked source. Default:
        nothing beyond the support.
        """

    def validate_params(self, params: Params) -> None:
        """Raise ValueError if ``params`` lie outside the family's parameter space.

        Names the parameter, the component and what is wrong (probabilities that
        do not sum to 1, a negative rate, a covariance that is not positive
        definite, ...). The conformance suite (``check_params_valid``) calls it on
        every M-step output; the engine calls it after every M-step in debug mode
        (:func:`set_debug`). Default: accepts anything (no declared space).
        """

    # --- model size, sampling, numerics ------------------------------------------
    @abc.abstractmethod
    def n_parameters(self) -> int:
        """Number of free parameters of the K components (mixture weights excluded)."""

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """Return ``counts[k]`` draws from each component k, stacked in component order."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def rounding_amplification(self, params: Params) -> float:
        """Bound on how much the log-density computation amplifies rounding errors.

        Used in the derived tolerance of the ELBO chain checks (1 + sqrt(d kappa)
        for a Gaussian with covariance condition number kappa). Default 1.
        """
        return 1.0

    def log_prior(self, params: Params) -> tuple[float, float]:
        """Return (log p(theta), sum of the magnitudes of its terms) for MAP-EM.

        A family with a prior makes ``m_step`` return the posterior mode given the
        statistics (maximising expected log-likelihood + log prior); the engine
        then keeps loglik + log prior non-decreasing and checks the MAP chain. The
        magnitude enters the rounding tolerance. Default (0.0, 0.0): no prior.
        """
        return 0.0, 0.0

    def parameter_rounding(self, stats: Any, params: Params) -> float:
        """Bound on what rounding ``params`` to float64 can cost the expected log-likelihood.

        The M-step's exact maximiser is rounded to the nearest doubles; Q is
        stationary there, so the loss is second order, but it is amplified by the
        parameters' magnitude relative to their scale (for a Gaussian mean,
        ``(|mu| / sigma)^2 u^2`` per point). Added to the chain tolerance. Default 0.
        """
        return 0.0

    def scale_stats(self, stats: Any, factor: float) -> Any:
        """Return the statistics of the same rows with every weight multiplied by ``factor``.

        Sums over rows (weights, weighted sums, scatters) scale; reference points
        do not. Online EM (``partial_fit``) keeps its running average this way,
        never subtracting statistics. Default: NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement scale_stats() "
                                  "(online EM needs it)")

    def log_density_rounding(self, stats: Any, params: Params) -> float:
        """Bound on the summed rounding error of sum_ik q_ik log p(x_i | k) from ``log_density``.

        For a log-density computed through a cancelling formula (k-means' distances
        by the GEMM identity ||x||^2 - 2 x.mu + ||mu||^2), an absolute bound for the
        rows behind ``stats``; it is added to the chain tolerance. Default 0 (the
        relative error is covered by ``rounding_amplification``).
        """
        return 0.0

    def widened(self) -> Optional["Family"]:
        """The same family computing in double precision throughout, or None.

        A family whose kernels compute partly in a lower precision (float32 rows:
        ``log_density_rounding`` and ``statistics_rounding`` bound what that costs)
        returns the family that computes the same model in float64 on the same rows
        (widened exactly). The engine fits with it instead when the lower
        precision's bound at the initial parameters exceeds ``tol * |objective|``, the
        resolution the stopping rule needs (else the rule tests rounding noise);
        ``FitResult.widened`` records it (docs/elbo_chain.md#float32-level).
        Default None: no wider version (the engine then warns, as for any fit whose
        bound exceeds ``tol * |objective|``).
        """
        return None

    def statistics_rounding(self, stats: Any, params: Params, new_params: Params) -> float:
        """Bound on what the statistics' own rounding moves ``expected_log_likelihood(stats, new_params)``.

        ``stats`` were accumulated in the pass at ``params`` (for a Gaussian,
        moments about its means); the chain evaluates them at ``new_params``. A
        family that accumulates part of its statistics in a lower precision
        (float32 partial sums of a block of rows, then added to float64 totals)
        returns an absolute bound on the resulting error of that value; it is
        added to the chain tolerance of the ascent and bound links
        (docs/elbo_chain.md#float32). It may depend on both parameter sets: a
        residual's error enters through the move from ``params`` to
        ``new_params``. Default 0 (statistics summed in float64 only, whose
        rounding ``expected_log_likelihood_magnitude`` covers).
        """
        return 0.0

    def expected_log_likelihood_magnitude(self, stats: Any, params: Params) -> float:
        """Magnitude M_Q bounding the rounding of ``expected_log_likelihood(stats, params)``.

        For a family whose statistics lose accuracy that the per-row log-density
        does not (a Gaussian scatter matrix holds its small-eigenvalue directions
        only to u ||S||, an error amplified by cond(Sigma), not sqrt(cond)): the
        error of the statistics-based value is at most (depth + 2 d + 3) u M_Q,
        depth the summation depth of the pass. The engine adds
        2 (K + d + 4 + depth) u M_Q to the chain tolerance. Default 0 (the per-row
        magnitudes and ``rounding_amplification`` cover it).
        """
        return 0.0

    # --- coordinates for extrapolation and averaging -------------------------------
    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """The parameters in coordinates where any real values are valid parameters.

        SQUAREM extrapolates linearly in them and stochastic EM averages in them
        (docs/variants.md#squarem). Returns a dict of float arrays;
        :meth:`from_unconstrained` is its inverse. Default: the parameters
        themselves, so an extrapolation that leaves the parameter space is
        rejected by :meth:`validate_params` and SQUAREM falls back to its EM
        step; a family with constraints (positive rates, probabilities,
        covariances) accelerates better with its own coordinates (log rates,
        log-probabilities, a log-diagonal Cholesky factor).
        """
        return {key: np.array(value, dtype=np.float64) for key, value in params.items()}

    def from_unconstrained(self, coords: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The parameters of :meth:`to_unconstrained` coordinates (its inverse).
        Raise ValueError when they give no valid parameters. Default: as given."""
        return {key: np.array(value, dtype=np.float64) for key, value in coords.items()}

    # --- missing coordinates (supports_missing) -------------------------------------
    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """Return log p(x_io | z_i = k, theta_k), shape (n_rows, n_components): the
        log-density of each row's observed coordinates only.

        ``observed`` (n_rows, n_features) is a boolean mask, True where X holds a
        value; X is float64 with NaN where it is False (never read there). For a
        product-form family (:attr:`supports_missing`) this is the sum of the
        observed coordinates' terms; with every entry observed it equals
        :meth:`log_density`. The engine calls it only for rows with a missing entry.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support missing "
                                  "values (supports_missing is False)")

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> Any:
        """Return the statistics of a chunk whose rows miss the entries where
        ``observed`` is False, mergeable with :meth:`chunk_stats`'s.

        Each coordinate's statistics count only the rows that observe it (with
        their own weight per coordinate: the weight of component k on coordinate j
        is sum_i weights[i, k] [observed[i, j]]), so that :meth:`m_step` maximises
        the expected log-likelihood of the observed entries:
        sum_i sum_k q_ik sum_{j observed in i} log p_j(x_ij | theta_kj), which is
        what :meth:`expected_log_likelihood` then returns. A component with zero
        weight on a coordinate keeps its ``previous`` parameters there.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support missing "
                                  "values (supports_missing is False)")

    def marginal(self, columns: Any, params: Params) -> tuple["Family", dict[str, np.ndarray]]:
        """Return ``(family, params)``: the model of the coordinates ``columns``
        alone (a sequence of column indices), the same family on fewer columns
        with the matching parameters. For a product form this is the marginal
        distribution; the conformance suite compares :meth:`log_density_observed`
        and :meth:`chunk_stats_observed` with it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement marginal()")

    # --- compiled path ------------------------------------------------------------
    def compiled_kernel(self, params: Params) -> Any:
        """Return an ``emcore.kernel.FamilyKernel`` for ``params``, or None."""
        return None

    def stats_from_buffer(self, buffer: np.ndarray) -> Any:
        """Turn a compiled kernel's merged statistics slot into a statistics object."""
        raise NotImplementedError(
            f"{type(self).__name__} returns a compiled kernel but not stats_from_buffer()")

    # --- testing --------------------------------------------------------------------
    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict[str, np.ndarray]:
        """Return random valid parameters of the K components (optional).

        Used by :mod:`emcore.testing` (``family_parameters``, ``check_family``) to
        test the family from many parameter values. Well-conditioned by default;
        with ``nearly_degenerate=True``, valid but close to the edge of the
        parameter space (near-singular covariances, rates near zero, ...).
        Families that do not implement it can still be tested with parameters
        passed explicitly.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement random_params()")


@runtime_checkable
class GaussianFamilyProtocol(Protocol):
    """What :class:`emcore.GaussianMixture` needs from the family registered as
    ``"gaussian"`` beyond :class:`Family`: its covariance type, and parameters built
    from scikit-learn's ``means_init``/``precisions_init``.

    The parameters are ``{"means": (K, d), "covariances": (K, d, d),
    "precisions_cholesky": (K, d, d)}`` (upper-triangular U_k with precision
    U_k U_k^T) for every covariance type. The factory takes
    ``factory(n_components, n_features, covariance_type=..., reg_covar=...,
    prior=ResolvedGaussianPrior or None)``.
    """

    covariance_type: str

    def params_from_covariances(self, means: np.ndarray, covariances: np.ndarray,
                                n_k: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Parameters from means (K, d) and covariances (K, d, d); raise
        DegenerateComponentError for a matrix that is not positive definite."""

    def params_from_precisions(self, means: np.ndarray, precisions: np.ndarray
                               ) -> dict[str, np.ndarray]:
        """Parameters from means (K, d) and precision matrices (K, d, d)."""


@runtime_checkable
class CentroidFamilyProtocol(Protocol):
    """What :class:`emcore.KMeans` needs from the family registered as ``"kmeans"``
    beyond :class:`Family`: the within-cluster sums of squares, for ``inertia_`` and
    ``score``. Parameters are ``{"means": (K, d)}``."""

    def within_scatter(self, stats: Any, params: Params) -> np.ndarray:
        """Return sum_i w_ik ||x_i - mu_k||^2 per component, shape (K,), from the
        statistics ``stats`` (the rows' weights) at the centres ``params["means"]``."""


# --- support ---------------------------------------------------------------------------

def support_of(capabilities: frozenset[str]) -> Optional[str]:
    """The ``support:*`` capability among ``capabilities``, or None if none is declared."""
    found = sorted(set(capabilities) & set(SUPPORTS))
    return found[0] if found else None


def _outside(block: np.ndarray, support: str) -> np.ndarray:
    """Boolean mask of the entries of ``block`` outside ``support`` (finite values)."""
    if support == "support:real":
        return np.zeros(block.shape, dtype=bool)
    integer = support in ("support:integers", "support:nonnegative_integers",
                          "support:binary")
    bad = (block != np.round(block)) if integer else np.zeros(block.shape, dtype=bool)
    if support in ("support:nonnegative", "support:nonnegative_integers",
                   "support:unit_interval", "support:binary"):
        bad |= block < 0
    if support == "support:positive":
        bad |= block <= 0
    if support in ("support:unit_interval", "support:binary"):
        bad |= block > 1
    return bad


def check_support(X: Any, support: Optional[str], *, family: str, owner: str) -> None:
    """Raise ValueError if a value of X lies outside the family's declared support.

    The one check the estimators call at fit, score and predict (after the
    finiteness checks). ``support`` is a key of :data:`SUPPORTS` or None (nothing
    to check); ``family`` and ``owner`` (e.g. ``"MixtureModel.fit"``) name the
    family and the method in the message, which gives the first offending entry
    (row-major). X is an array or a chunked source, read a block at a time.
    """
    if support is None or support == "support:real":
        return
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; the supports are "
                         f"{', '.join(sorted(SUPPORTS))}")
    n = X.shape[0]
    step = int(getattr(X, "block_rows", 0) or 65536)
    for start in range(0, n, step):
        block = np.asarray(X[start:start + step], dtype=np.float64)
        bad = _outside(block, support)
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise ValueError(
                f"The 'X' parameter of {owner} must lie in the support of family "
                f"{family!r} ({support}: {SUPPORTS[support]}). Got X[{start + i}, {j}] = "
                f"{float(block[i, j])!r} (column {j}) instead.")


# --- debug mode --------------------------------------------------------------------------

_debug = [os.environ.get("EMCORE_DEBUG", "") not in ("", "0")]


def set_debug(enabled: bool = True) -> None:
    """Turn emcore's debug mode on or off (default: the environment variable
    ``EMCORE_DEBUG``, on unless unset, empty or ``0``).

    In debug mode the engine calls ``family.validate_params`` on every M-step's
    output (and on the starting parameters), so a family that leaves its
    parameter space fails at the iteration that did it, not later or never.
    """
    _debug[0] = bool(enabled)


def debug_enabled() -> bool:
    """True if debug mode is on (:func:`set_debug`)."""
    return _debug[0]


def _validate_in_debug(family: "Family", params: Params, where: str) -> None:
    """``family.validate_params(params)`` when debug mode is on, naming ``where``."""
    if _debug[0]:
        try:
            family.validate_params(params)
        except ValueError as exc:
            raise ValueError(f"{type(family).__name__} returned invalid parameters "
                             f"{where}: {exc}") from exc


class PosteriorRule(abc.ABC):
    """Turns log joint probabilities a_ik = log p(x_i, z_i = k) into q.

    Attributes
    ----------
    objective : str
        Name of the quantity the resulting EM variant keeps non-decreasing.
    """

    objective: str = "log-likelihood"

    #: tau in ELBO_tau(q) = sum_k q_k a_k + tau H(q): 1 for the exact posterior, 0 for
    #: a point mass, T for tempering.
    entropy_weight: float = 1.0

    #: True for a rule whose q of a row depends on the other rows or on the row's
    #: index (corpus-level or per-row constraints: posterior regularization). The
    #: engine runs it through its Python chunk loop, calling :meth:`prepare` with
    #: all rows before each pass; estimators use the soft rule for new data.
    needs_all_rows: bool = False

    #: None for a rule whose q is computed; 'mcem' for a rule averaging draws
    #: of z from the posterior (Monte-Carlo EM), 'sem' for one drawing a single z
    #: per row (stochastic EM). The engine then checks the chain of the drawn q
    #: (not a monotone objective), uses the rule's stopping rule, and seeds the
    #: draws through :meth:`set_random_state` (docs/variants.md#mcem).
    stochastic: Optional[str] = None

    def set_random_state(self, random_state: np.random.Generator) -> None:
        """Seed the draws of a stochastic rule from a fit's generator. Default: nothing."""

    @abc.abstractmethod
    def posterior(self, log_joint: np.ndarray, row_weights: Optional[np.ndarray] = None,
                  *, start: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(log_resp, resp, row_value, totals)`` for a chunk.

        The rule picks, row by row, the q of its set maximising
        ELBO_tau(q_i) = sum_k q_ik a_ik + tau H(q_i) with tau = ``entropy_weight``;
        ``row_value[i]`` is that maximum f_i (log p(x_i) for the exact posterior).
        ``totals`` has ``emcore.kernel.N_TOTALS_`` entries: the row-weighted sums of
        f_i, sum_k q_ik a_ik, tau H(q_i), and the rounding magnitude
        ``|f_i| + sum_k q_ik (|a_ik| + tau |log q_ik|)``. ``start`` is the index of the
        chunk's first row in the data of the pass (rules that are functions of the
        row alone ignore it).
        """

    def prepare(self, log_joint_chunks: Callable[[], Any],
                sample_weight: Optional[np.ndarray]) -> None:
        """Called by the engine at the start of every Python pass, before ``posterior``.

        ``log_joint_chunks()`` yields ``(start, stop, log_joint)`` for each chunk of
        the pass, ``log_joint`` the (stop - start, n_components) array
        a_ik = log p(x_i, z_i = k) at the pass's parameters; for a rule with
        ``needs_all_rows`` these are the very arrays the pass then hands to
        ``posterior`` (computed once per pass: do not modify them);
        ``sample_weight`` is the (n_samples,) row weights or None. A
        rule with corpus-level state (``needs_all_rows``) solves it here. Default:
        nothing.
        """

    def report(self) -> Optional[dict[str, Any]]:
        """What the rule has to say about the last pass (recorded per iteration), or None."""
        return None

    def bound_tolerance(self, before: Optional[dict[str, Any]],
                        after: Optional[dict[str, Any]]) -> float:
        """Extra tolerance of the chain link ELBO(q_t, theta_{t+1}) <= F(theta_{t+1}).

        For a rule whose q is the maximiser over its set only to a solver's
        accuracy; ``before`` and ``after`` are :meth:`report` after the passes at
        theta_t and theta_{t+1}. Default 0 (q is exact up to rounding).
        """
        return 0.0

    def compiled_kernel(self) -> Any:
        """Return an ``emcore.kernel.PosteriorKernel``, or None."""
        return None


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def _check_record(kind: str, name: Any, factory: Any, capabilities: Any) -> None:
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise TypeError(f"{kind} name must be a non-empty lower-case string of "
                        f"letters, digits, '_', '-' or '.'; got {name!r}")
    if not callable(factory):
        raise TypeError(f"{kind} {name!r}: factory must be callable; got {factory!r}")
    if not isinstance(capabilities, frozenset) or not all(
            isinstance(c, str) for c in capabilities):
        raise TypeError(f"{kind} {name!r}: capabilities must be a frozenset of strings")
    unknown = sorted(capabilities - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"{kind} {name!r} declares unknown capabilit"
                         f"{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(map(repr, unknown))}; the vocabulary is "
                         f"{', '.join(sorted(CAPABILITIES))} "
                         "(emcore.plugin_api.CAPABILITIES)")
    supports = sorted(capabilities & set(SUPPORTS))
    if len(supports) > 1:
        raise ValueError(f"{kind} {name!r} declares {len(supports)} supports "
                         f"({', '.join(supports)}); declare at most one")


@dataclass(frozen=True)
class FamilyRecord:
    """What a plugin registers for one family.

    Attributes
    ----------
    name : str
        Registry name (``MixtureModel(family=name)`` in later versions).
    factory : callable
        ``factory(n_components, n_features, **options) -> Family``.
    capabilities : frozenset of str
        Declared capabilities (see :data:`CAPABILITIES`).
    description : str
        One line for ``emcore plugins``.
    """
    name: str
    factory: Callable[..., Family]
    capabilities: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    def __post_init__(self) -> None:
        _check_record("family", self.name, self.factory, self.capabilities)


@dataclass(frozen=True)
class PosteriorRuleRecord:
    """What a plugin registers for one posterior rule.

    ``factory(**options) -> PosteriorRule``; other fields as in :class:`FamilyRecord`.
    """
    name: str
    factory: Callable[..., PosteriorRule]
    capabilities: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    def __post_init__(self) -> None:
        _check_record("posterior rule", self.name, self.factory, self.capabilities)



# --- latent structures -------------------------------------------------------------

@dataclass(frozen=True)
class PassResult:
    """What one pass over the data at fixed parameters returns."""
    stats: Any                  #: the family's merged statistics (None if not asked)
    resp_sum: np.ndarray        #: sum_i w_i q_ik, shape (n_components,)
    value: float                #: F = sum_i w_i f_i, the rule's objective (soft: loglik)
    expected_log_joint: float   #: sum_i w_i sum_k q_ik log p(x_i, z_i=k)
    entropy: float              #: sum_i w_i H(q_i)
    magnitude: float            #: rounding magnitude M (docs/elbo_chain.md#magnitude)
    rule_state: Optional[dict[str, Any]] = None  #: the rule's report() after the pass (Python path)
    #: what the latent structure's M-step needs beyond resp_sum (a Markov chain's
    #: expected start and transition counts); None for the mixture
    structure_stats: Any = None

    @property
    def elbo(self) -> float:
        """ELBO(q, theta) at the parameters of the pass."""
        return self.expected_log_joint + self.entropy



def categorical_m_step(resp_sum: np.ndarray, concentration: Optional[np.ndarray]) -> np.ndarray:
    """Probabilities maximising sum_k N_k log p_k (+ log Dir(p | alpha)): the mixture
    weights' M-step, and a Markov chain's start probabilities and transition rows'."""
    # ML: N_k / n; with a Dirichlet(alpha) prior, alpha_k >= 1, the posterior mode
    # (N_k + alpha_k - 1) / (n + sum(alpha) - K) (docs/gaussian.md#map-m-step)
    if concentration is None:
        return resp_sum / float(np.sum(resp_sum))
    # (alpha - 1) first: exactly 0 for a flat prior, so a tiny N_k (a component
    # nearly emptied, e.g. by a constrained E-step) is not rounded away to pi_k = 0
    # while N_k log pi_k still counts it
    counts = resp_sum + (concentration - 1.0)
    return counts / float(np.sum(counts))


def dirichlet_log_prior(weights: np.ndarray, concentration: Optional[np.ndarray]) -> tuple[float, float]:
    """(log Dir(pi | alpha), sum of the terms' magnitudes); (0, 0) without a prior."""
    if concentration is None:
        return 0.0, 0.0
    a = concentration
    mask = a != 1.0            # (alpha - 1) log pi is 0 for alpha = 1, even at pi = 0
    with np.errstate(divide="ignore"):
        terms = np.concatenate([[math.lgamma(float(np.sum(a)))], -np.array(
            [math.lgamma(float(x)) for x in a]), (a[mask] - 1.0) * np.log(weights[mask])])
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def categorical_expected(resp_sum: np.ndarray, weights: np.ndarray) -> float:
    """sum_k N_k log p_k with 0 log 0 = 0.

    A p_k that the M-step's N_k / N rounded to 0 (N_k below N times the smallest
    subnormal, 2^-1074) counts as that smallest subnormal: the term is then at most
    N x 2^-1074 x 745 in size, far below any tolerance, where log 0 would make the
    ELBO -inf for a count that is merely tiny (a transition seen with probability
    1e-320 in a chain posterior)."""
    mask = resp_sum > 0
    p = np.maximum(weights[mask], np.nextafter(0.0, 1.0))
    return float(np.sum(resp_sum[mask] * np.log(p)))



class LatentStructure(abc.ABC):
    """How the latent variables z are linked: the third plugin kind, next to the
    family (p(x | z)) and the posterior rule (how q is formed).

    A structure owns its parameters (one float64 array: the mixture weights pi (K,);
    for a Markov chain the start probabilities stacked over the transition matrix,
    (K + 1, K)), its E-step over a unit of data (a row; a whole sequence), the
    statistics of that E-step (sum_i q_ik; expected start and transition counts)
    and its M-step. The family is unchanged: the structure hands the family's
    ``chunk_stats`` the posteriors q as weights. :func:`emcore.engine.run_em` drives
    a structure through these methods only (docs/hidden_markov.md#the-structure).
    """

    #: what one E-step unit is: 'row' (independent rows) or 'sequence'
    unit: str = "row"

    def __init__(self, n_components: int):
        self.n_components = int(n_components)

    def data_pass(self, X: Any, family: "Family", rule: "PosteriorRule",
                  weights: np.ndarray, params: Params, *, n_jobs: Optional[int] = 1,
                  chunk_rows: Optional[int] = None, lengths: Any = None) -> PassResult:
        """One E-step pass over X at (weights, params): a :class:`PassResult` whose
        ``resp_sum`` is sum_i q_ik and whose ``structure_stats`` are what
        :meth:`m_step` needs; ``lengths`` are the sequences' lengths (None: one).
        A structure whose unit is a row does not implement it: the engine runs its
        own compiled row pass (``emcore.engine.data_pass``) with the structure's
        weights."""
        raise NotImplementedError(f"{type(self).__name__}: the engine runs the row pass")

    @abc.abstractmethod
    def m_step(self, result: Any, previous: np.ndarray) -> np.ndarray:
        """The structure's parameters maximising its part of E_q[log p(x, z)] (+ log
        prior) from the pass ``result``; ``previous`` where the statistics leave
        them free."""

    @abc.abstractmethod
    def expected_log_likelihood(self, result: Any, weights: np.ndarray) -> float:
        """The structure's part of E_q[log p(x, z | theta)] from the pass statistics
        (0 log 0 = 0)."""

    def log_prior(self, weights: np.ndarray) -> tuple[float, float]:
        """(log p(weights), sum of its terms' magnitudes); (0.0, 0.0) without a prior."""
        return 0.0, 0.0

    @property
    def has_prior(self) -> bool:
        """True if :meth:`log_prior` is not identically 0 (MAP-EM)."""
        return False

    def summation_depth(self, X: Any, chunk_rows: int, lengths: Any = None) -> int:
        """The error count of a pass total (the ``depth`` of
        ``emcore.engine.equality_tolerance`` and ``chain_tolerance``) for a structure
        with its own :meth:`data_pass`; the engine's own for a row unit."""
        raise NotImplementedError(f"{type(self).__name__}: the engine runs the row pass")


class MixtureStructure(LatentStructure):
    """The independent mixture: z_i ~ pi row by row (the registry's 'mixture').

    Today's engine described as a structure: the E-step is the engine's row pass,
    the statistics ``resp_sum`` = sum_i q_ik, the M-step N_k / n (or the Dirichlet
    posterior mode with ``concentration``); with ``fixed`` (k-means' family) the
    weights stay as given.
    """

    unit = "row"

    def __init__(self, n_components: int, *, concentration: Optional[np.ndarray] = None,
                 fixed: bool = False):
        super().__init__(n_components)
        self.concentration = (None if concentration is None
                              else np.asarray(concentration, dtype=np.float64))
        self.fixed = bool(fixed)

    def m_step(self, result: PassResult, previous: np.ndarray) -> np.ndarray:
        if self.fixed:
            return previous
        return categorical_m_step(result.resp_sum, self.concentration)

    def expected_log_likelihood(self, result: PassResult, weights: np.ndarray) -> float:
        return categorical_expected(result.resp_sum, weights)

    def log_prior(self, weights: np.ndarray) -> tuple[float, float]:
        return dirichlet_log_prior(weights, self.concentration)

    @property
    def has_prior(self) -> bool:
        return self.concentration is not None


@dataclass(frozen=True)
class StructureRecord:
    """What a plugin registers for one latent structure ('mixture', 'markov_chain').

    ``factory(n_components, **options) -> LatentStructure``; other fields as in
    :class:`FamilyRecord`.
    """
    name: str
    factory: Callable[..., LatentStructure]
    capabilities: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    def __post_init__(self) -> None:
        _check_record("latent structure", self.name, self.factory, self.capabilities)

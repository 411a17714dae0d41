"""Hypothesis strategies for mixture models (docs/property_tests.md).

In hypothesis's style: plural nouns, keyword-only options, and invalid arguments
rejected with :class:`hypothesis.errors.InvalidArgument` when the strategy is
*built*, not when it is drawn from. Inputs are constructed valid (bounded
condition numbers, normalised q, feasible constraints) rather than filtered.
Small structured values (logits, means, eigenvalues) are hypothesis primitives,
so they shrink; bulk data comes from a drawn seed (good coverage, poor
shrinking), as docs/property_tests.md#principles explains.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra.numpy import arrays
from scipy.special import log_softmax

from emcore.plugin_api import Family
from emcore.testing._params import can_draw_params, draw_params

__all__ = ["FINITE", "ConstraintSet", "MixtureDataset", "constraint_sets",
           "family_parameters", "gaussian_mixtures", "mixture_datasets", "posteriors",
           "sample_gaussian_mixture", "spd_matrices"]

FINITE = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)
"""Keyword arguments of ``st.floats`` for finite, normal floats."""

_SEEDS = st.integers(0, 2 ** 32 - 1)


# --- eager argument validation ---------------------------------------------------------

def _check_integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name}={value!r} must be an integer")
    if value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be at least {minimum}")
    return int(value)


def _check_number(name: str, value, *, minimum: Optional[float] = None,
                  strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise InvalidArgument(f"{name}={value!r} must be a finite number")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise InvalidArgument(f"{name}={value!r} must be "
                              f"{'greater than' if strict else 'at least'} {minimum}")
    return float(value)


def _check_order(low_name: str, low, high_name: str, high) -> None:
    if low > high:
        raise InvalidArgument(f"{low_name}={low!r} must not exceed {high_name}={high!r}")


def _check_family(family, *, needs_sampling: bool = False) -> Family:
    if not isinstance(family, Family):
        raise InvalidArgument(f"family={family!r} must be an emcore.plugin_api.Family "
                              "instance (e.g. registry.family(name).factory(k, d))")
    if not can_draw_params(family):
        raise InvalidArgument(
            f"family={family!r}: {type(family).__name__} cannot draw its own parameters; "
            "implement Family.random_params(rng, *, nearly_degenerate=False)")
    if needs_sampling and type(family).sample is Family.sample:
        raise InvalidArgument(f"family={family!r}: {type(family).__name__} does not "
                              "implement sample(), so no data set can be drawn from it")
    return family


# --- matrices, mixtures, posteriors -------------------------------------------------------

def spd_matrices(n_features: int, *, max_log10_condition: float = 3.0,
                 log10_scale: tuple = (-1.0, 1.0)) -> st.SearchStrategy:
    """Symmetric positive definite ``(n_features, n_features)`` matrices.

    The condition number is at most ``10**max_log10_condition`` and the
    eigenvalues lie in ``10**log10_scale[0] .. 10**(log10_scale[1] +
    max_log10_condition)``.
    """
    d = _check_integer("n_features", n_features, 1)
    cond = _check_number("max_log10_condition", max_log10_condition, minimum=0.0)
    try:
        lo, hi = (_check_number("log10_scale", v) for v in log10_scale)
    except TypeError:
        raise InvalidArgument(f"log10_scale={log10_scale!r} must be a pair of numbers") \
            from None
    _check_order("log10_scale[0]", lo, "log10_scale[1]", hi)

    @st.composite
    def _draw(draw):
        A = draw(arrays(np.float64, (d, d), elements=st.floats(-1, 1, **FINITE)))
        Q, R = np.linalg.qr(A + 3.0 * np.eye(d))          # well away from singular
        Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
        e = draw(arrays(np.float64, (d,), elements=st.floats(0, cond, **FINITE)))
        s = 10.0 ** draw(st.floats(lo, hi, **FINITE))
        S = s * (Q * 10.0 ** e) @ Q.T
        return 0.5 * (S + S.T)

    return _draw()


def gaussian_mixtures(*, min_components: int = 1, max_components: int = 4,
                      max_features: int = 4, separation: float = 10.0,
                      max_log10_condition: float = 3.0) -> st.SearchStrategy:
    """``(weights, means, covariances)`` of Gaussian mixtures of drawn size.

    K in ``[min_components, max_components]``, d in ``[1, max_features]``;
    weights are the softmax of logits in [-2, 2], means lie in
    ``[-separation, separation]``, covariances come from :func:`spd_matrices`.
    """
    lo = _check_integer("min_components", min_components, 1)
    hi = _check_integer("max_components", max_components, 1)
    _check_order("min_components", lo, "max_components", hi)
    max_d = _check_integer("max_features", max_features, 1)
    sep = _check_number("separation", separation, minimum=0.0, strict=True)
    cond = _check_number("max_log10_condition", max_log10_condition, minimum=0.0)

    @st.composite
    def _draw(draw):
        k = draw(st.integers(lo, hi))
        d = draw(st.integers(1, max_d))
        logits = draw(arrays(np.float64, (k,), elements=st.floats(-2, 2, **FINITE)))
        means = draw(arrays(np.float64, (k, d), elements=st.floats(-sep, sep, **FINITE)))
        covs = np.stack([draw(spd_matrices(d, max_log10_condition=cond))
                         for _ in range(k)])
        return np.exp(log_softmax(logits)), means, covs

    return _draw()


def sample_gaussian_mixture(mixture: tuple, n_samples: int, seed) -> np.ndarray:
    """``n_samples`` rows drawn from a ``(weights, means, covariances)`` mixture.

    ``seed`` is anything ``numpy.random.default_rng`` accepts. Returns a
    C-contiguous ``(n_samples, d)`` float64 array.
    """
    w, means, covs = mixture
    rng = np.random.default_rng(seed)
    k, d = means.shape
    z = rng.choice(k, size=n_samples, p=w)
    L = np.linalg.cholesky(covs)
    X = means[z] + np.einsum("nij,nj->ni", L[z], rng.standard_normal((n_samples, d)))
    return np.ascontiguousarray(X)


def posteriors(n_samples: int, n_components: int, *, max_logit: float = 30.0,
               allow_zeros: bool = False) -> st.SearchStrategy:
    """Arbitrary q as ``log q``, shape ``(n_samples, n_components)``.

    Each row is the log-softmax of logits in ``[-max_logit, max_logit]``,
    normalised in log space ((a - max) - log sum exp(a - max)). With
    ``allow_zeros=True`` some rows are one-hot (log q = -inf off the chosen
    component), which exercises the 0 log 0 = 0 rules.
    """
    n = _check_integer("n_samples", n_samples, 1)
    k = _check_integer("n_components", n_components, 1)
    m = _check_number("max_logit", max_logit, minimum=0.0)
    if not isinstance(allow_zeros, bool):
        raise InvalidArgument(f"allow_zeros={allow_zeros!r} must be a bool")
    logits = arrays(np.float64, (n, k), elements=st.floats(-m, m, **FINITE))
    if not allow_zeros:
        return logits.map(lambda L: log_softmax(L, axis=1))

    @st.composite
    def _draw(draw):
        lq = log_softmax(draw(logits), axis=1)
        hot = draw(arrays(np.bool_, (n,)))
        pick = draw(arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
        lq[hot] = -np.inf
        lq[np.flatnonzero(hot), pick[hot]] = 0.0
        return lq

    return _draw()


# --- families ------------------------------------------------------------------------

def family_parameters(family: Family, *, nearly_degenerate: bool = False) -> st.SearchStrategy:
    """Valid parameters (a dict of arrays) of ``family``.

    Drawn from the family's ``random_params(rng, nearly_degenerate=...)`` with a
    drawn seed. ``nearly_degenerate=True`` gives valid parameters near
    the edge of the parameter space (condition numbers 1e6-1e9, rates near 0).
    """
    _check_family(family)
    if not isinstance(nearly_degenerate, bool):
        raise InvalidArgument(f"nearly_degenerate={nearly_degenerate!r} must be a bool")
    return _SEEDS.map(lambda seed: draw_params(
        family, np.random.default_rng(seed), nearly_degenerate=nearly_degenerate))


@dataclass(frozen=True)
class MixtureDataset:
    """Rows drawn from a mixture, with what generated them."""
    X: np.ndarray          #: (n, d) float64, C-contiguous
    labels: np.ndarray     #: (n,) the component each row was drawn from
    weights: np.ndarray    #: (k,) mixture weights
    params: dict           #: the family's parameters


def mixture_datasets(family: Family, *, min_samples: int = 1, max_samples: int = 60,
                     params: Optional[dict] = None, nearly_degenerate: bool = False,
                     duplicate_rows: bool = False) -> st.SearchStrategy:
    """:class:`MixtureDataset` s drawn from a mixture of ``family``'s components.

    Weights are the softmax of logits in [-2, 2]; parameters are ``params`` or
    drawn by :func:`family_parameters`; rows come from ``family.sample`` in
    shuffled order. With ``duplicate_rows=True`` some rows may be repeated (ties,
    fewer distinct points than components).
    """
    _check_family(family, needs_sampling=True)
    lo = _check_integer("min_samples", min_samples, 1)
    hi = _check_integer("max_samples", max_samples, 1)
    _check_order("min_samples", lo, "max_samples", hi)
    if params is not None and not isinstance(params, dict):
        raise InvalidArgument(f"params={params!r} must be a dict of arrays or None")
    for name, flag in (("nearly_degenerate", nearly_degenerate),
                       ("duplicate_rows", duplicate_rows)):
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{name}={flag!r} must be a bool")
    k = family.n_components
    param_strategy = (st.just(params) if params is not None
                      else family_parameters(family, nearly_degenerate=nearly_degenerate))

    @st.composite
    def _draw(draw):
        logits = draw(arrays(np.float64, (k,), elements=st.floats(-2, 2, **FINITE)))
        weights = np.exp(log_softmax(logits))
        theta = draw(param_strategy)
        n = draw(st.integers(lo, hi))
        rng = np.random.default_rng(draw(_SEEDS))
        counts = rng.multinomial(n, weights)
        X = np.asarray(family.sample(theta, counts, rng), dtype=np.float64)
        labels = np.repeat(np.arange(k), counts)
        order = rng.permutation(n)
        X, labels = X[order], labels[order]
        if duplicate_rows and draw(st.booleans()):
            idx = np.asarray(draw(st.lists(st.integers(0, n - 1), min_size=1,
                                           max_size=n)), dtype=np.intp)
            X, labels = np.concatenate([X, X[idx]]), np.concatenate([labels, labels[idx]])
        return MixtureDataset(np.ascontiguousarray(X), labels, weights, theta)

    return _draw()


# --- constraint sets (posterior regularization) -------------------------------------------

CONSTRAINT_KINDS = ("<=", "==")


@dataclass(frozen=True)
class ConstraintSet:
    """Constraints E_q[phi_j] <= b_j (or == b_j) on q, feasible by construction.

    ``phi`` has shape (n, k, m): phi[i, k, j] is feature j of row i under
    component k, and E_q[phi_j] = sum_ik q_ik phi[i, k, j] (the additive form of
    docs/posterior_regularization.md#per-example-features). ``witness_log_q`` (n, k) is a
    q that satisfies every constraint: E_witness[phi_j] equals ``b_j`` minus a
    slack >= 0 (zero for equalities and for active inequalities), up to the
    rounding of that sum (at most ``2 n k u sum_ik q_ik |phi_ikj|``).
    """
    phi: np.ndarray                 #: (n, k, m) constraint features
    bounds: np.ndarray              #: (m,) b
    kinds: tuple                    #: m entries, each '<=' or '=='
    witness_log_q: np.ndarray       #: (n, k) log q of a feasible q

    @property
    def n_constraints(self) -> int:
        return int(self.bounds.shape[0])


def constraint_sets(n_samples: int, n_components: int, *, min_constraints: int = 1,
                    max_constraints: int = 3,
                    kinds: Sequence[str] = CONSTRAINT_KINDS) -> st.SearchStrategy:
    """Feasible :class:`ConstraintSet` s for n rows and k components.

    Each feature is either a proportion indicator (phi[i, k, j] = 1[k = c_j], the
    count form: "component c_j holds at most b_j points") or arbitrary values in
    [-1, 1]. The bound is E_witness[phi_j] plus a slack that is zero (an active
    constraint) or positive (inactive), for a drawn witness q.
    """
    n = _check_integer("n_samples", n_samples, 1)
    k = _check_integer("n_components", n_components, 1)
    lo = _check_integer("min_constraints", min_constraints, 1)
    hi = _check_integer("max_constraints", max_constraints, 1)
    _check_order("min_constraints", lo, "max_constraints", hi)
    kinds = tuple(kinds)
    if not kinds or not set(kinds) <= set(CONSTRAINT_KINDS):
        raise InvalidArgument(f"kinds={kinds!r} must be a non-empty subset of "
                              f"{CONSTRAINT_KINDS!r}")

    @st.composite
    def _draw(draw):
        m = draw(st.integers(lo, hi))
        witness = draw(posteriors(n, k))
        q = np.exp(witness)
        phi = np.empty((n, k, m))
        bounds = np.empty(m)
        chosen = []
        for j in range(m):
            if draw(st.booleans()):
                phi[:, :, j] = np.arange(k) == draw(st.integers(0, k - 1))
            else:
                phi[:, :, j] = draw(arrays(np.float64, (n, k),
                                           elements=st.floats(-1, 1, **FINITE)))
            kind = draw(st.sampled_from(kinds))
            slack = 0.0 if kind == "==" else draw(st.sampled_from([0.0, 0.5, 2.0]))
            bounds[j] = math.fsum((q * phi[:, :, j]).ravel()) + slack
            chosen.append(kind)
        return ConstraintSet(phi, bounds, tuple(chosen), witness)

    return _draw()

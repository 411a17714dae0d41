"""The conformance suite for component families: ``check_family`` and
``parametrize_with_family_checks``.

Each check states a mathematical property every family must have and compares
the two sides within a tolerance derived in the comments (rounding bounds from
docs/elbo_chain.md#tolerances; statistical bounds for the checks
that integrate or sample). The checks run on parameters drawn by the family's
``random_params`` (or given), on data sampled from the family (or given), all
from one seeded generator: a run is reproducible.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import pickle
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy.special import gammaln, log_softmax, logsumexp

from emcore.plugin_api import SUPPORTS, Family, FamilyRecord, family_chunk_stats, _outside
from emcore.testing._params import can_draw_params, draw_params
from emcore.testing._tolerances import (UNIT_ROUNDOFF as U, elbo_direct,
                                        rounding_magnitude, tolerance_across,
                                        tolerance_same_array)

__all__ = ["CAPABILITY_CHECKS", "FAMILY_CHECKS", "SUPPORT_CAPABILITIES", "CheckResult", "FamilyCheckReport",
           "check_family", "parametrize_with_family_checks"]

SUPPORT_CAPABILITIES = dict(SUPPORTS)
"""Capabilities that tell the normalisation and moment checks where x lives
(``emcore.plugin_api.SUPPORTS``). Continuous supports are integrated by importance
sampling, at any n_features; mass functions are summed exactly on a grid ({0, 1}^d
for d <= 16, counts for d <= 2), else by importance sampling."""

_CONTINUOUS = ("support:real", "support:nonnegative", "support:positive",
               "support:unit_interval")

_N_ROWS = 240              # rows of the data the checks use (when not given)
_N_DRAWS = 20000           # draws per component for integration and moments
_Z_SCORE = 6.0             # statistical checks: 6 standard errors (see _within_se)
_SQRT_U = math.sqrt(U)


class _Failed(AssertionError):
    pass


class _NotApplicable(Exception):
    pass


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: 'passed', 'failed', 'not applicable' or 'known failure'."""
    name: str
    status: str
    detail: str = ""


@dataclass
class FamilyCheckReport:
    """What :func:`check_family` ran, and how each check ended."""
    family: str
    results: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        width = max((len(r.name) for r in self.results), default=0)
        lines = [f"conformance of {self.family}:"]
        for r in self.results:
            detail = f": {r.detail}" if r.detail and r.status != "passed" else ""
            lines.append(f"  {r.name:<{width}}  {r.status}{detail}")
        return "\n".join(lines)


# --- the context every check gets -------------------------------------------------------

@dataclass
class _Context:
    family: Family
    capabilities: frozenset
    params: list            # [(label, params, well_conditioned)]
    weights: np.ndarray     # mixture weights
    X: np.ndarray
    random_state: int

    def rng(self, salt: int) -> np.random.Generator:
        # one independent stream per check: reordering or skipping checks never
        # changes what another check sees
        return np.random.default_rng([self.random_state, salt])

    @property
    def well_conditioned(self) -> list:
        return [(label, p) for label, p, ok in self.params if ok]

    @property
    def can_sample(self) -> bool:
        return "sampling" in self.capabilities

    @property
    def support(self) -> Optional[str]:
        found = sorted(self.capabilities & set(SUPPORT_CAPABILITIES))
        return found[0] if found else None


def _describe(family: Family) -> str:
    """The class name with n_components, n_features and the instance's public options
    (scalars shown, other objects as 'set')."""
    extra = ""
    for name, value in vars(family).items():
        if name.startswith("_") or name in ("n_components", "n_features") or value is None:
            continue
        shown = (repr(value) if isinstance(value, (str, int, float, bool, np.number))
                 else "set")
        extra += f", {name}={shown}"
    return f"{type(family).__name__}(n_components={family.n_components}, " \
           f"n_features={family.n_features}{extra})"


def _resolve(spec, capabilities, n_components, n_features):
    """(family instance, capabilities) from an instance, a record or a factory."""
    if isinstance(spec, FamilyRecord):
        family = spec.factory(n_components, n_features)
        declared = spec.capabilities
    elif isinstance(spec, Family):
        family, declared = spec, _registered_capabilities(type(spec))
    elif callable(spec):
        family, declared = spec(n_components, n_features), _registered_capabilities(spec)
    else:
        raise TypeError(f"expected a Family instance, a FamilyRecord or a factory "
                        f"factory(n_components, n_features); got {spec!r}")
    if not isinstance(family, Family):
        raise TypeError(f"the factory returned {family!r}, not an emcore.plugin_api.Family")
    if capabilities is None:
        capabilities = declared
    if capabilities is None:
        # not registered: infer what can be seen from the class
        capabilities = frozenset({"sampling"} if type(family).sample is not Family.sample
                                 else ())
    return family, frozenset(capabilities)


def _registered_capabilities(cls) -> Optional[frozenset]:
    from emcore.registry import get_registry
    for entry in get_registry().families.values():
        if entry.record.factory is cls:
            return entry.record.capabilities
    return None


def _build_context(family, capabilities, params, X, random_state) -> _Context:
    rng = np.random.default_rng([random_state, 0])
    k, d = family.n_components, family.n_features
    if params is None:
        if not can_draw_params(family):
            raise ValueError(f"{type(family).__name__} cannot draw its own parameters: "
                             "implement Family.random_params() or pass params=[...]")
        sets = [(f"random #{j}", draw_params(family, rng), True) for j in range(2)]
        try:
            sets.append(("nearly degenerate",
                         draw_params(family, rng, nearly_degenerate=True), False))
        except NotImplementedError:
            pass
    else:
        given = [params] if isinstance(params, Mapping) else list(params)
        if not given:
            raise ValueError("params must be a dict of arrays or a non-empty list of them")
        sets = [(f"given #{j}", dict(p), True) for j, p in enumerate(given)]
    weights = rng.dirichlet(np.full(k, 4.0))
    if X is None:
        if type(family).sample is Family.sample:
            raise ValueError(f"{type(family).__name__} cannot sample: pass X (data in the "
                             "family's support)")
        counts = rng.multinomial(_N_ROWS, weights)
        X = np.asarray(family.sample(sets[0][1], counts, rng), dtype=np.float64)
        X = X[rng.permutation(X.shape[0])]
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != d:
        raise ValueError(f"X must have shape (n, {d}); got {X.shape}")
    return _Context(family, capabilities, sets, weights, X, random_state)


# --- shared helpers ------------------------------------------------------------------------

def _soft_rule():
    from emcore.registry import get_registry
    return get_registry().posterior_rule("soft").factory()


def _random_responsibilities(rng, n, k, zeros=False):
    """Dirichlet rows times a per-row weight in [0.5, 2]; some exact zeros if asked."""
    W = rng.dirichlet(np.ones(k), size=n) * rng.uniform(0.5, 2.0, (n, 1))
    if zeros:
        W[rng.random((n, k)) < 0.1] = 0.0
        W[rng.integers(n)] = 0.0          # a row of weight 0
    return W


def _log_density(family, X, params):
    a = np.asarray(family.log_density(X, params), dtype=np.float64)
    if a.shape != (X.shape[0], family.n_components):
        raise _Failed(f"log_density returned shape {a.shape}, expected "
                      f"{(X.shape[0], family.n_components)}")
    return a


def _weighted_magnitude(W, a):
    """sum_ik W_ik |log p_ik| (terms with W = 0 excluded)."""
    with np.errstate(invalid="ignore"):
        return math.fsum(np.where(W > 0, W * np.abs(a), 0.0).ravel())


def _weighted_sum(W, a):
    """sum_ik W_ik log p_ik, correctly rounded, with 0 * log p = 0."""
    with np.errstate(invalid="ignore"):
        return math.fsum(np.where(W > 0, W * a, 0.0).ravel())


def _tau_stats(family, X, W, params, *extra_params, stats=None):
    """tau_B for comparing sum_ik W_ik log p_ik computed two ways (statistics vs
    direct, or two statistics): 2 (K + d + 4 + depth) a u M, with M the
    magnitude of the weighted log-densities at every parameter set involved and
    a the largest rounding amplification (docs/elbo_chain.md#check-b). When one side comes from
    ``log_density`` (``stats`` given: the other side's statistics), plus the
    family's absolute bound ``log_density_rounding`` for a cancelling formula and
    its statistics' magnitude ``expected_log_likelihood_magnitude``."""
    n, d = X.shape
    amp, M, M_Q, extra = 1.0, 0.0, 0.0, 0.0
    for p in (params,) + extra_params:
        amp = max(amp, float(family.rounding_amplification(p)))
        M += _weighted_magnitude(W, _log_density(family, X, p))
        if stats is not None:
            extra += float(family.log_density_rounding(stats, p))
            M_Q += float(family.expected_log_likelihood_magnitude(stats, p))
    return tolerance_across(family.n_components, n, d, amp, M, M_Q) + extra


def _fmt(x) -> str:
    return f"{x:.6g}"


# --- the checks --------------------------------------------------------------------------
# Each takes the context, raises _Failed with what went wrong, or _NotApplicable.

def check_pickle_roundtrip(ctx: _Context) -> None:
    """The family, its parameters and its statistics survive pickling unchanged.

    Same code on the same inputs gives the same bits: compared exactly.
    """
    fam, X = ctx.family, ctx.X
    try:
        fam2 = pickle.loads(pickle.dumps(fam))
    except Exception as exc:
        raise _Failed(f"the family does not pickle: {type(exc).__name__}: {exc}") from None
    if type(fam2) is not type(fam) or fam2.n_parameters() != fam.n_parameters():
        raise _Failed("the unpickled family differs (type or n_parameters)")
    W = _random_responsibilities(ctx.rng(1), X.shape[0], fam.n_components)
    for label, params, _ in ctx.params:
        try:
            params2 = pickle.loads(pickle.dumps(params))
            stats = family_chunk_stats(fam, X, W, params)
            stats2 = pickle.loads(pickle.dumps(stats))
        except Exception as exc:
            raise _Failed(f"parameters or statistics do not pickle: "
                          f"{type(exc).__name__}: {exc}") from None
        a, b = fam.log_density(X, params), fam2.log_density(X, params2)
        if not np.array_equal(a, b, equal_nan=True):
            raise _Failed(f"log_density differs after pickling ({label} parameters)")
        e1 = fam.expected_log_likelihood(stats, params)
        e2 = fam2.expected_log_likelihood(stats2, params2)
        if not (e1 == e2 or (math.isnan(e1) and math.isnan(e2))):
            raise _Failed(f"expected_log_likelihood differs after pickling: {e1!r} vs {e2!r}")


def check_log_density_rows(ctx: _Context) -> None:
    """log_density: shape (n, K), no NaN, finite on the family's own samples,
    inputs left unmodified, and each row independent of the others (the engine
    calls it one chunk at a time).

    Rows computed in different chunks may round differently (BLAS blocking):
    each entry is a few d-term dot products and logs, so it is accurate to
    2 (d + 4) a u times the magnitude of its terms; a point near the mode can
    have |log p| ~ 0 while its terms are O(d), so the bound is taken norm-wise,
    with max |log p| over the array, doubled for the two computations.
    """
    fam, X = ctx.family, ctx.X
    d = fam.n_features
    for label, params, _ in ctx.params:
        X_copy = X.copy()
        p_copy = {key: np.array(v, copy=True) for key, v in params.items()}
        a = _log_density(fam, X, params)
        if not np.array_equal(X, X_copy) or any(
                not np.array_equal(np.asarray(params[key]), p_copy[key]) for key in p_copy):
            raise _Failed("log_density modified its input X or params")
        if np.isnan(a).any():
            raise _Failed(f"log_density returned NaN ({label} parameters)")
        if label == ctx.params[0][0] and not np.isfinite(a).all():
            # X was sampled from (or given for) these parameters: every row in the support
            raise _Failed("log_density is not finite on data in the family's support")
        cuts = sorted({1, X.shape[0] // 3, X.shape[0] - 2} - {0, X.shape[0]})
        pieces = np.concatenate([_log_density(fam, c, params)
                                 for c in np.split(X, cuts) if c.shape[0]])
        finite = np.isfinite(a)
        if not np.array_equal(finite, np.isfinite(pieces)) or not np.array_equal(
                a[~finite], pieces[~finite]):
            raise _Failed("log_density of a chunk depends on the other rows of the chunk")
        if finite.any():
            amp = float(fam.rounding_amplification(params))
            tau = 4.0 * (d + 4) * amp * U * float(np.max(np.abs(a[finite])))
            diff = float(np.max(np.abs(a[finite] - pieces[finite])))
            if diff > tau:
                raise _Failed(f"log_density of a chunk depends on the other rows: rows "
                              f"differ by {_fmt(diff)} > tolerance {_fmt(tau)} ({label})")


def _component_draws(ctx, params, k, n, rng):
    counts = np.zeros(ctx.family.n_components, dtype=np.int64)
    counts[k] = n
    Y = np.asarray(ctx.family.sample(params, counts, rng), dtype=np.float64)
    if Y.shape != (n, ctx.family.n_features):
        raise _Failed(f"sample(params, counts) returned shape {Y.shape}, expected "
                      f"{(n, ctx.family.n_features)} for counts {counts.tolist()}")
    return Y


def _moment_features(Y):
    """x_j, x_j^2 and, for d = 2, x_1 x_2: the moments compared with sampling."""
    cols = [Y, Y * Y]
    if Y.shape[1] == 2:
        cols.append(Y[:, :1] * Y[:, 1:])
    return np.concatenate(cols, axis=1)


def _grid(support, d, size):
    if support == "support:binary":
        axes = [np.array([0.0, 1.0])] * d
    else:
        axes = [np.arange(size + 1, dtype=np.float64)] * d
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)


def _discrete_mass(ctx, params, k):
    """(mass, tail, grid, p) of component k summed over the support grid.

    {0, 1}^d is summed exactly. For counts the grid [0, G]^d doubles from G = 16
    until the mass added by the last doubling is below u (or G reaches the cap:
    2^16 in d = 1, 2^9 in d = 2); the tail beyond 2G is at most that last
    increment for a mass function that decays at least geometrically past G
    (any family with a finite moment generating function, once G is past the
    mode). A missing or wrong normaliser shows as a mass far from 1, or as a
    mass that keeps growing (a divergent series).
    """
    fam, support, d = ctx.family, ctx.support, ctx.family.n_features
    if support == "support:binary":
        grid = _grid(support, d, 1)
        with np.errstate(under="ignore", over="ignore"):
            p = np.exp(_log_density(fam, grid, params)[:, k])
        return math.fsum(p), 0.0, grid, p
    cap = 2 ** 16 if d == 1 else 2 ** 9
    G, prev = 16, None
    while True:
        grid = _grid(support, d, G)
        with np.errstate(under="ignore", over="ignore"):
            p = np.exp(_log_density(fam, grid, params)[:, k])
        mass = math.fsum(p)
        if not math.isfinite(mass):
            raise _Failed(f"component {k}: the mass over [0, {G}]^{d} is {mass}")
        if prev is not None and abs(mass - prev) <= U:
            return mass, abs(mass - prev), grid, p
        if G >= cap:
            raise _Failed(f"component {k}: the mass over [0, G]^{d} keeps changing "
                          f"({_fmt(prev)} at G = {G // 2}, {_fmt(mass)} at G = {G}): "
                          "the mass function does not sum to a finite value")
        prev, G = mass, 2 * G


def _importance_proposal(Y):
    """A Student-t (nu = 3) proposal centred at the sample mean with the sample
    covariance as scale: heavier tails than any density with a finite variance,
    so the weights p / g are bounded and the estimate has finite variance."""
    m = Y.mean(axis=0)
    C = np.atleast_2d(np.cov(Y, rowvar=False))
    try:
        L = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        raise _Failed("the component's samples have a singular covariance: cannot "
                      "place an importance proposal") from None
    return m, L


def _t_draws_and_logpdf(m, L, n, rng, nu=3.0):
    d = m.shape[0]
    z = rng.standard_normal((n, d))
    s = np.sqrt(rng.chisquare(nu, n) / nu)
    Y = m + (z @ L.T) / s[:, None]
    r = np.linalg.solve(L, (Y - m).T).T
    log_g = (gammaln((nu + d) / 2) - gammaln(nu / 2) - 0.5 * d * math.log(nu * math.pi)
             - np.sum(np.log(np.diag(L))) - 0.5 * (nu + d) * np.log1p(np.sum(r * r, 1) / nu))
    return Y, log_g


def _importance_weights(ctx, params, k, Y, log_g):
    """p(Y | k) / g(Y), with weight 0 (no log_density call) outside the support."""
    out = _outside(Y, ctx.support).any(axis=1)
    log_w = np.full(Y.shape[0], -np.inf)
    if (~out).any():
        log_w[~out] = _log_density(ctx.family, Y[~out], params)[:, k] - log_g[~out]
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise _Failed(f"component {k}: log_density is NaN or +inf inside its support")
    with np.errstate(under="ignore"):
        return np.exp(log_w)


def _continuous_mass(ctx, params, k, rng):
    """(Z, se(Z), draws, weights) by importance sampling from a Student-t proposal
    placed with the component's own samples (so this needs 'sampling')."""
    m, L = _importance_proposal(_component_draws(ctx, params, k, 4000, rng))
    Y, log_g = _t_draws_and_logpdf(m, L, _N_DRAWS, rng)
    w = _importance_weights(ctx, params, k, Y, log_g)
    return float(np.mean(w)), float(np.std(w, ddof=1) / math.sqrt(w.size)), Y, w


#: share of the heavy-tailed part in the discrete proposal (_product_proposal)
_TAIL_SHARE = 0.1


def _product_proposal(Y, support, n, rng):
    """n draws from, and the log pmf of, a product of per-coordinate mass functions
    fitted to the component's samples Y: (1 - a) x the empirical frequencies + a x
    a heavy tail covering the whole support (a = 0.1): {0, 1} uniform (binary); a
    geometric law of mean 2 (max + 1) (counts; two-sided about the median for
    integers), whose tail is heavier than the component's own wherever its samples
    reach. g > 0 on the whole support, so mean(p / g) is unbiased for the mass,
    and close to p for a product-form family (a small variance)."""
    m, d = Y.shape
    a = _TAIL_SHARE
    cols, logs = [], []
    for j in range(d):
        values, counts = np.unique(Y[:, j], return_counts=True)
        freq = counts / m
        if support == "support:binary":
            centre, r = 0.0, None
        elif support == "support:integers":
            centre = float(np.median(Y[:, j]))
            spread = 2.0 * (float(np.max(np.abs(Y[:, j] - centre))) + 1.0)
            r = spread / (1.0 + spread)
        else:
            centre = 0.0
            spread = 2.0 * (float(np.max(Y[:, j])) + 1.0)
            r = spread / (1.0 + spread)
        pick = rng.random(n) < a
        x = values[rng.choice(values.size, size=n, p=freq)]
        if support == "support:binary":
            tail_draw = rng.integers(0, 2, n).astype(np.float64)
        else:
            tail_draw = rng.geometric(1.0 - r, n) - 1.0          # {0, 1, ...}
            if support == "support:integers":
                sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
                tail_draw = centre + np.where(tail_draw == 0, 0.0, sign * tail_draw)
        x = np.where(pick, tail_draw, x)
        # the pmf of the mixture at x
        at = np.searchsorted(values, x)
        hit = (at < values.size) & (values[np.minimum(at, values.size - 1)] == x)
        emp = np.where(hit, freq[np.minimum(at, values.size - 1)], 0.0)
        if support == "support:binary":
            tail = np.full(n, 0.5)
        elif support == "support:integers":
            dist = np.abs(x - centre)
            tail = (1.0 - r) / (1.0 + r) * r ** dist
        else:
            tail = (1.0 - r) * r ** x
        cols.append(x)
        logs.append(np.log((1.0 - a) * emp + a * tail))
    return np.stack(cols, axis=1), np.sum(logs, axis=0)


def _exact_grid(ctx) -> bool:
    d = ctx.family.n_features
    return (ctx.support == "support:binary" and d <= 16
            or ctx.support == "support:nonnegative_integers" and d <= 2)


def _mass(ctx, params, k, rng):
    """(Z, tolerance half-width, se, points, weights) of component k's total mass:
    exact on a grid (:func:`_discrete_mass`, se = 0), else by importance sampling
    (continuous: :func:`_continuous_mass`; discrete: :func:`_product_proposal`)."""
    if _exact_grid(ctx):
        mass, tail, grid, p = _discrete_mass(ctx, params, k)
        return mass, tail + _SQRT_U, 0.0, grid, p
    if ctx.support in _CONTINUOUS:
        Z, se, Y, w = _continuous_mass(ctx, params, k, rng)
    else:
        Y, log_g = _product_proposal(_component_draws(ctx, params, k, 4000, rng),
                                     ctx.support, _N_DRAWS, rng)
        w = _importance_weights(ctx, params, k, Y, log_g)
        Z, se = float(np.mean(w)), float(np.std(w, ddof=1) / math.sqrt(w.size))
    return Z, _Z_SCORE * se + _SQRT_U, se, Y, w


def _normalisation_applicable(ctx):
    support = ctx.support
    if support is None:
        raise _NotApplicable("the family declares no support capability ("
                             + ", ".join(sorted(SUPPORT_CAPABILITIES)) + ")")
    if not _exact_grid(ctx) and not ctx.can_sample:
        raise _NotApplicable(f"integrating over {support} in {ctx.family.n_features} "
                             "dimensions needs 'sampling' to place the importance-sampling "
                             "proposal")
    return support


def check_log_density_normalises(ctx: _Context) -> None:
    """sum_x p(x | k) = 1 (discrete) or the integral of p(x | k) = 1 (continuous),
    for any number of features.

    Exact grid ({0, 1}^d for d <= 16, counts for d <= 2): the grid sum of
    :func:`_discrete_mass`; tolerance = the tail bound + sqrt(u). A rounding
    bound needs the magnitudes of the terms inside the family's log-density,
    which a black-box check cannot see; sqrt(u) allows per-point errors of
    log p up to 1.5e-8 (terms ~1e7 times |log p|), far more than the moderate
    parameters here produce, while any missing or wrong constant changes the
    mass by far more (a missing log x! diverges; an off-by-one in a count
    changes it by >= 1e-3).
    Otherwise, importance sampling: Z = mean(p / g) over 20000 draws from a
    proposal g placed with 4000 of the component's own samples (a Student-t on
    R^d, draws outside the support weighted 0; a product of smoothed marginals
    for mass functions, see :func:`_product_proposal`). Tolerance 6 standard
    errors of that mean (a false alarm has probability < 2e-9 per comparison
    under the central limit theorem, and the run is seeded) + sqrt(u); the
    standard error must itself be below 0.05 (else the proposal is too poor for
    the check to mean anything, and that is reported). The standard error is
    d-dependent but stays small for these proposals (measured for the Gaussian:
    0.0033, 0.0041, 0.0052 at d = 3, 5, 8), so a constant off by a few percent
    is caught at any d.
    """
    _normalisation_applicable(ctx)
    rng = ctx.rng(3)
    for label, params in ctx.well_conditioned:
        for k in range(ctx.family.n_components):
            Z, tau, se, _, _ = _mass(ctx, params, k, rng)
            if se > 0.05:
                raise _Failed(f"component {k} ({label}): importance sampling too "
                              f"noisy (Z = {_fmt(Z)} +- {_fmt(se)})")
            if not abs(Z - 1.0) <= tau:
                what = "mass function sums" if se == 0 else "density integrates"
                raise _Failed(f"component {k} ({label}): the {what} to {Z!r}"
                              + (f" +- {_fmt(se)}" if se else "") + ", not 1")


def _within_se(a, se_a, b, se_b, what):
    # |a - b| <= 6 sqrt(se_a^2 + se_b^2) + sqrt(u) (1 + |b|): two independent
    # estimates, each normal to first order; 6 standard errors make a false alarm
    # rarer than 2e-9 per comparison (~1e-7 over all comparisons of a run).
    tau = _Z_SCORE * np.sqrt(se_a ** 2 + se_b ** 2) + _SQRT_U * (1.0 + np.abs(b))
    bad = np.abs(a - b) > tau
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise _Failed(f"{what}: moment #{j} is {_fmt(a[j])} from sampling but "
                      f"{_fmt(b[j])} from the density (tolerance {_fmt(tau[j])})")


def check_sampling_moments(ctx: _Context) -> None:
    """sample() draws from the density: the moments E[x_j], E[x_j^2] (and
    E[x_1 x_2]) of 20000 draws per component agree with those of log_density
    (exact on a discrete grid; self-normalised importance sampling otherwise),
    within 6 combined standard errors (see ``_within_se``). Draws must lie in
    the declared support, and sample() must return sum(counts) rows in
    component order.
    """
    if not ctx.can_sample:
        raise _NotApplicable("the family does not declare 'sampling'")
    support = _normalisation_applicable(ctx)
    fam, rng = ctx.family, ctx.rng(4)
    k_all = fam.n_components
    for label, params in ctx.well_conditioned:
        counts = np.arange(1, k_all + 1)
        both = np.asarray(fam.sample(params, counts, rng))
        if both.shape != (int(counts.sum()), fam.n_features):
            raise _Failed(f"sample(params, {counts.tolist()}) returned shape {both.shape}")
        for k in range(k_all):
            Y = _component_draws(ctx, params, k, _N_DRAWS, rng)
            if _outside(Y, support).any():
                raise _Failed(f"component {k}: samples outside the declared {support}")
            F = _moment_features(Y)
            m_s = F.mean(axis=0)
            se_s = F.std(axis=0, ddof=1) / math.sqrt(F.shape[0])
            _, _, se, Yg, w = _mass(ctx, params, k, rng)
            Fg = _moment_features(Yg)
            m_p = (w @ Fg) / w.sum()
            # exact on a grid; else the delta method for a self-normalised
            # importance-sampling mean
            se_p = (np.zeros_like(m_p) if se == 0 else
                    np.sqrt(((w[:, None] * (Fg - m_p)) ** 2).sum(axis=0)) / w.sum())
            _within_se(m_s, se_s, m_p, se_p, f"component {k} ({label})")


def _q_objective(fam, stats, params):
    """Q(theta) = E_q log p(x | z, theta) - penalty + log prior: what m_step maximises,
    and the magnitude of its penalty and prior terms."""
    pen = float(fam.m_step_penalty(stats, params))
    prior, prior_mag = fam.log_prior(params)
    return (float(fam.expected_log_likelihood(stats, params)) - pen + float(prior),
            abs(pen) + float(prior_mag))


def _compare_stats(ctx, s1, s2, X, W, what):
    """Two statistics of the same weighted rows must give the same expected
    log-likelihood at every parameter set (it is linear in the statistics), and
    M-steps of equal objective value."""
    fam = ctx.family
    for label, params, _ in ctx.params:
        e1 = float(fam.expected_log_likelihood(s1, params))
        e2 = float(fam.expected_log_likelihood(s2, params))
        tau = _tau_stats(fam, X, W, params)
        if not abs(e1 - e2) <= tau:
            raise _Failed(f"{what}: expected_log_likelihood {e1!r} vs {e2!r} at {label} "
                          f"parameters (tolerance {_fmt(tau)})")
    previous = ctx.params[0][1]
    t1, t2 = fam.m_step(s1, previous), fam.m_step(s2, previous)
    q11, m11 = _q_objective(fam, s1, t1)
    q12, m12 = _q_objective(fam, s1, t2)
    # both are maximisers of the same Q: equal up to the rounding of Q at two
    # parameter values and the second-order loss of rounding each maximiser
    tau = (_tau_stats(fam, X, W, t1, t2) + 2.0 * U * (m11 + m12)
           + 2.0 * (fam.parameter_rounding(s1, t1) + fam.parameter_rounding(s1, t2)))
    if not abs(q11 - q12) <= tau:
        raise _Failed(f"{what}: the M-steps differ: Q = {q11!r} vs {q12!r} "
                      f"(tolerance {_fmt(tau)})")


def _snapshot(stats):
    """A deep copy of statistics, to compare by value after a call (None if the
    object cannot be copied)."""
    try:
        return copy.deepcopy(stats)
    except Exception:
        return None


def _same_value(a, b) -> bool:
    """Equal by value, bit for bit: arrays (NaN equal to NaN), numbers, and the fields
    of dataclasses, mappings, sequences and plain objects, recursively."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
            a, b, equal_nan=a.dtype.kind in "fc")
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (int, str, bytes, bool, type(None), np.generic)):
        return bool(a == b) or (isinstance(a, np.floating) and np.isnan(a) and np.isnan(b))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if dataclasses.is_dataclass(a):
        return all(_same_value(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if hasattr(a, "__dict__"):
        return _same_value(vars(a), vars(b))
    return bool(a == b)


def _merge_checked(fam, a, b):
    """merge_stats(a, b), failing if it changed either argument's values."""
    before = (_snapshot(a), _snapshot(b))
    out = fam.merge_stats(a, b)
    for which, old, now in (("first", before[0], a), ("second", before[1], b)):
        if old is not None and not _same_value(old, now):
            raise _Failed(f"merge_stats modified its {which} argument (it must return new "
                          "statistics and leave both inputs unchanged)")
    return out


def check_stats_merge(ctx: _Context) -> None:
    """Merging the statistics of chunks equals the statistics of their union,
    in any order and grouping; ``empty_stats()`` is the identity; merge_stats
    leaves both its inputs unchanged, compared by value (every array bit for
    bit) before and after each call. Compared through expected_log_likelihood
    and the M-step (tolerance: tau_B, docs/elbo_chain.md#check-b, see ``_tau_stats``).
    """
    fam, X = ctx.family, ctx.X
    rng = ctx.rng(5)
    n = X.shape[0]
    W = _random_responsibilities(rng, n, fam.n_components, zeros=True)
    cuts = np.sort(rng.choice(np.arange(1, n), size=3, replace=False))
    chunks = [(X[a:b], W[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, n])]
    at = ctx.params[0][1]       # the parameters of the statistics (stats_need_params)
    parts = [family_chunk_stats(fam, x, w, at) for x, w in chunks]
    union = family_chunk_stats(fam, X, W, at)
    chain = fam.empty_stats()
    for s in parts:
        chain = _merge_checked(fam, chain, s)
    tree = _merge_checked(fam, _merge_checked(fam, parts[3], parts[2]),
                          _merge_checked(fam, parts[1], parts[0]))
    _compare_stats(ctx, chain, union, X, W, "chunks merged left to right vs the union")
    _compare_stats(ctx, tree, union, X, W, "chunks merged as a tree vs the union")
    _compare_stats(ctx, _merge_checked(fam, union, fam.empty_stats()), union, X, W,
                   "merge with empty_stats() vs the statistics alone")


def check_params_valid(ctx: _Context) -> None:
    """Every parameter value the family produces lies in its declared parameter space
    (``Family.validate_params``): ``initial_params`` (default start), M-steps of
    random responsibilities (with exact zeros, with and without ``previous``), the
    iterates of a 20-iteration EM run, and ``random_params``. An M-step whose output
    is out of the space (probabilities not summing to 1, a negative rate) passes
    every objective-based check when its expected log-likelihood is evaluated
    consistently; this check catches it. Not applicable to a family that declares
    no space (the default ``validate_params``).
    """
    from emcore.engine import data_pass

    fam, X = ctx.family, ctx.X
    if type(fam).validate_params is Family.validate_params:
        raise _NotApplicable("the family declares no parameter space "
                             "(Family.validate_params)")
    rng = ctx.rng(12)
    n, k = X.shape[0], fam.n_components

    def valid(params, what):
        try:
            fam.validate_params(params)
        except ValueError as exc:
            raise _Failed(f"{what} is outside the parameter space: {exc}") from None

    for label, params, _ in ctx.params:
        valid(params, f"the {label} parameter set")
    valid(fam.initial_params(X, rng), "initial_params(X, rng)")
    previous = ctx.params[0][1]
    for j in range(3):
        stats = family_chunk_stats(fam, X, _random_responsibilities(rng, n, k, zeros=j > 0),
                             previous)
        valid(fam.m_step(stats, previous), f"the M-step of random responsibilities (#{j})")
    params = fam.m_step(family_chunk_stats(fam, X, _random_responsibilities(rng, n, k), None),
                        None)
    valid(params, "the M-step of random responsibilities without previous")
    # EM with the mixture weights held equal: every M-step is the family's own
    weights, rule = np.full(k, 1.0 / k), _soft_rule()
    for t in range(20):
        params = fam.m_step(data_pass(X, fam, rule, weights, params).stats, params)
        valid(params, f"the M-step at EM iteration {t}")


def check_weights_are_repetitions(ctx: _Context) -> None:
    """A weight of 2 on a row equals the row twice, a weight of 0 the row removed:
    in chunk_stats, and through the engine's pass with sample weights (which uses
    a compiled kernel when the family has one). Tolerance tau_B (``_tau_stats``).
    """
    from emcore.engine import data_pass

    fam, X = ctx.family, ctx.X
    rng = ctx.rng(6)
    n, k = X.shape[0], fam.n_components
    W = _random_responsibilities(rng, n, k)
    mult = rng.integers(0, 4, n)              # each row 0, 1, 2 or 3 times
    mult[:2] = (2, 0)
    X_rep, W_rep = np.repeat(X, mult, axis=0), np.repeat(W, mult, axis=0)
    W_weighted = W * mult[:, None]
    at = ctx.params[0][1]
    _compare_stats(ctx, family_chunk_stats(fam, X, W_weighted, at),
                   family_chunk_stats(fam, X_rep, W_rep, at),
                   X, W_weighted, "weighted rows vs repeated rows (chunk_stats)")

    rule = _soft_rule()
    for label, params, _ in ctx.params[:1]:
        a = fam.log_density(X, params) + np.log(ctx.weights)
        if not np.isfinite(a).all():
            continue
        weighted = data_pass(X, fam, rule, ctx.weights, params,
                             sample_weight=mult.astype(np.float64))
        repeated = data_pass(X_rep, fam, rule, ctx.weights, params)
        log_post = log_softmax(a, axis=1)
        Wp = np.exp(log_post) * mult[:, None]
        M = (_weighted_magnitude(Wp, a) + _weighted_magnitude(Wp, np.abs(log_post))
             + float(np.abs(logsumexp(a, axis=1)) @ mult))
        tau = tolerance_across(k, int(mult.sum()), X.shape[1],
                               float(fam.rounding_amplification(params)), 2.0 * M)
        if not abs(weighted.value - repeated.value) <= tau:
            raise _Failed(f"the pass with sample weights gives loglik {weighted.value!r}, "
                          f"with repeated rows {repeated.value!r} (tolerance {_fmt(tau)})")
        _compare_stats(ctx, weighted.stats, repeated.stats, X, Wp,
                       "the pass with sample weights vs repeated rows")


def check_expected_log_likelihood(ctx: _Context) -> None:
    """expected_log_likelihood(chunk_stats(X, W), theta) equals the direct
    sum_ik W_ik log p(x_i | k), for arbitrary weights (with exact zeros) and for
    the posterior through the engine's pass (the compiled path, when there is
    one), at every parameter set, nearly degenerate ones included.
    Tolerance (docs/elbo_chain.md#check-b): 2 (K + d + 4 + depth) a u sum_ik W_ik |log p_ik|.
    """
    from emcore.engine import data_pass

    fam, X = ctx.family, ctx.X
    rng = ctx.rng(7)
    W = _random_responsibilities(rng, X.shape[0], fam.n_components, zeros=True)
    rule = _soft_rule()
    for label, params, _ in ctx.params:
        a = _log_density(fam, X, params)
        direct = _weighted_sum(W, a)
        stats = family_chunk_stats(fam, X, W, params)
        got = float(fam.expected_log_likelihood(stats, params))
        tau = _tau_stats(fam, X, W, params, stats=stats)
        if not abs(got - direct) <= tau:
            raise _Failed(f"{label} parameters: from the statistics {got!r}, directly "
                          f"{direct!r} (difference {_fmt(got - direct)}, tolerance "
                          f"{_fmt(tau)})")
        if not np.isfinite(a + np.log(ctx.weights)).all():
            continue
        log_resp = np.empty_like(a)
        res = data_pass(X, fam, rule, ctx.weights, params, out_log_resp=log_resp)
        Q = np.exp(log_resp)
        direct = _weighted_sum(Q, a)
        got = float(fam.expected_log_likelihood(res.stats, params))
        tau = _tau_stats(fam, X, Q, params, stats=res.stats)
        if not abs(got - direct) <= tau:
            raise _Failed(f"{label} parameters, statistics of the engine's pass: "
                          f"{got!r}, directly {direct!r} (tolerance {_fmt(tau)})")


def check_m_step_maximises(ctx: _Context) -> None:
    """m_step(stats) maximises Q(theta) = expected_log_likelihood(stats, theta)
    - m_step_penalty(stats, theta) + log_prior(theta): no other valid parameters
    do better. The others are M-steps of perturbed weights (every direction the
    family's own parameterisation can move in, at relative sizes 0.3, 0.03 and
    0.003) and the random parameter sets. Tolerance: tau_B at both parameter
    values plus the magnitudes of the penalty and prior terms, plus twice the
    family's parameter_rounding (the maximiser is rounded to doubles), as the
    engine's chain (docs/elbo_chain.md#check-b).
    """
    fam, X = ctx.family, ctx.X
    rng = ctx.rng(8)
    n, k = X.shape[0], fam.n_components
    W = _random_responsibilities(rng, n, k)
    previous = ctx.params[0][1]
    stats = family_chunk_stats(fam, X, W, previous)
    best = fam.m_step(stats, previous)
    q_best, mag_best = _q_objective(fam, stats, best)
    candidates = [(lab, p) for lab, p, _ in ctx.params]
    for eps in (0.3, 0.03, 0.003):
        for j in range(4):
            W2 = W * np.exp(eps * rng.standard_normal((n, k)))
            candidates.append((f"M-step of weights perturbed by {eps} (#{j})",
                               fam.m_step(family_chunk_stats(fam, X, W2, previous), previous)))
    for label, other in candidates:
        q_other, mag_other = _q_objective(fam, stats, other)
        tau = (_tau_stats(fam, X, W, best, other) + 2.0 * U * (mag_best + mag_other)
               + 2.0 * fam.parameter_rounding(stats, best))
        if q_other > q_best + tau:
            raise _Failed(f"Q at the M-step's output is {q_best!r}, but {q_other!r} at the "
                          f"{label} (better by {_fmt(q_other - q_best)}, tolerance "
                          f"{_fmt(tau)})")


def check_elbo_bound(ctx: _Context) -> None:
    """ELBO(q, theta) <= loglik(theta) for arbitrary q (random logits, one-hot
    rows), with equality at the posterior; loglik - ELBO = sum_i KL(q_i || r_i).
    The ELBO is computed from the family's statistics, loglik by the engine's
    pass (compiled kernels included) and checked against the direct
    logsumexp of log_density. Tolerances: tau_A for the engine's own ELBO and
    loglik (one computed array), tau_B otherwise, with M the magnitude of
    docs/elbo_chain.md#magnitude at q and at the posterior.
    """
    from emcore.engine import data_pass

    fam, X = ctx.family, ctx.X
    n, d = X.shape
    k = fam.n_components
    rng = ctx.rng(9)
    rule = _soft_rule()
    log_pi = np.log(ctx.weights)
    for label, params, _ in ctx.params:
        a = _log_density(fam, X, params) + log_pi
        if not np.isfinite(a).all():
            continue
        log_post = np.empty((n, k))
        res = data_pass(X, fam, rule, ctx.weights, params, out_log_resp=log_post)
        tau_a = tolerance_same_array(k, n, d, res.magnitude)
        if not abs(res.elbo - res.value) <= tau_a:
            raise _Failed(f"{label}: the engine's ELBO at the posterior {res.elbo!r} "
                          f"differs from its loglik {res.value!r} (tau_A {_fmt(tau_a)})")
        amp = float(fam.rounding_amplification(params))
        loglik_direct = math.fsum(logsumexp(a, axis=1))
        tau = tolerance_across(k, n, d, amp, 2.0 * res.magnitude)
        if not abs(loglik_direct - res.value) <= tau:
            raise _Failed(f"{label}: the engine's loglik {res.value!r} differs from "
                          f"sum_i logsumexp_k log_density {loglik_direct!r} "
                          f"(tolerance {_fmt(tau)})")
        logits = rng.uniform(-30.0, 30.0, (n, k))
        log_q = log_softmax(logits, axis=1)
        hot = rng.random(n) < 0.2
        log_q[hot] = -np.inf
        log_q[hot, rng.integers(0, k, int(hot.sum()))] = 0.0
        for name, lq in (("a random q", log_q), ("the posterior", log_post)):
            q = np.exp(lq)
            with np.errstate(invalid="ignore"):
                entropy = -math.fsum(np.where(q > 0, q * lq, 0.0).ravel())
            n_k = q.sum(axis=0)
            stats = family_chunk_stats(fam, X, q, params)
            elbo = (float(fam.expected_log_likelihood(stats, params))
                    + math.fsum(np.where(n_k > 0, n_k * log_pi, 0.0)) + entropy)
            M = rounding_magnitude(a, lq) + rounding_magnitude(a, log_post)
            # the ELBO from statistics, loglik from log_density: plus the family's
            # absolute bound for a cancelling log-density formula
            tau = (tolerance_across(k, n, d, amp, M,
                                    float(fam.expected_log_likelihood_magnitude(stats, params)))
                   + float(fam.log_density_rounding(stats, params)))
            if elbo > res.value + tau:
                raise _Failed(f"{label}: ELBO({name}) = {elbo!r} exceeds loglik "
                              f"{res.value!r} by {_fmt(elbo - res.value)} (tolerance "
                              f"{_fmt(tau)})")
            gap = res.value - elbo_direct(a, lq)
            with np.errstate(invalid="ignore"):
                kl = math.fsum(np.where(q > 0, q * (lq - log_post), 0.0).ravel())
            if not abs(gap - kl) <= tau:
                raise _Failed(f"{label}: loglik - ELBO({name}) = {gap!r} but "
                              f"sum_i KL(q_i || r_i) = {kl!r} (tolerance {_fmt(tau)})")
            if name == "the posterior" and not abs(elbo - res.value) <= tau:
                raise _Failed(f"{label}: ELBO at the posterior, from the statistics, is "
                              f"{elbo!r}, loglik {res.value!r} (tolerance {_fmt(tau)})")


def check_em_chain(ctx: _Context) -> None:
    """A real fit through ``emcore.engine.run_em`` (30 iterations, tol = 0, from
    the M-step of random responsibilities; once without and once with integer
    sample weights) satisfies the ELBO chain at every iteration, each link
    within the engine's own derived tolerance (``Iteration.chain_holds()``).
    """
    from emcore.engine import run_em
    from emcore.exceptions import ChainViolationWarning

    fam, X = ctx.family, ctx.X
    rng = ctx.rng(10)
    n, k = X.shape[0], fam.n_components
    rule = _soft_rule()
    start = fam.m_step(family_chunk_stats(fam, X, _random_responsibilities(rng, n, k), None),
                       None)
    for what, sw in (("", None), (" with sample weights",
                                  rng.integers(1, 4, n).astype(np.float64))):
        try:
            with warnings.catch_warnings():    # this check reports the chain itself
                warnings.simplefilter("ignore", ChainViolationWarning)
                fit = run_em(X, fam, rule, np.full(k, 1.0 / k), start, max_iter=30,
                             tol=0.0, sample_weight=sw)
        except Exception as exc:
            raise _Failed(f"the fit{what} raised {type(exc).__name__}: {exc}") from None
        bad = [it for it in fit.history if not it.chain_holds()]
        if bad:
            it = bad[0]
            slacks = ", ".join(f"{key} {_fmt(v)}" for key, v in it.chain_slacks().items())
            raise _Failed(f"the chain fails{what} at {len(bad)} of {len(fit.history)} "
                          f"iterations; first at t = {it.iteration} (violation / "
                          f"tolerance: {slacks})")


def check_n_parameters(ctx: _Context) -> None:
    """n_parameters() equals the number of free parameters: the dimension of the
    set of parameters the M-step can reach, measured as the numerical rank of
    the derivative of theta -> log_density(X, theta) along P random directions
    of the M-step's input weights (P = max(2p + 4, p + 10), p the declared count,
    so an undercount of up to p shows too).

    Central differences with step eps = u^(1/3) have truncation error
    ~ eps^2 |f'''| and rounding error ~ u |f| / eps, both ~ u^(2/3) = 4e-11
    relative to the signal; singular values above sqrt(u) = 1.5e-8 times the
    largest count as rank: ~400 times above that noise, ~1e8 below the signal.
    """
    fam, X = ctx.family, ctx.X
    rng = ctx.rng(11)
    n, k = X.shape[0], fam.n_components
    p = int(fam.n_parameters())
    P = max(2 * p + 4, p + 10)
    if P > n * k:
        raise _NotApplicable(f"{p} parameters need more than {n} rows")
    W = _random_responsibilities(rng, n, k)
    previous = ctx.params[0][1]
    eps = U ** (1.0 / 3.0)

    def f(W2):
        theta = fam.m_step(family_chunk_stats(fam, X, W2, previous), previous)
        return _log_density(fam, X, theta).ravel()

    D = np.empty((P, n * k))
    for j in range(P):
        G = rng.standard_normal((n, k))
        D[j] = (f(W * np.exp(eps * G)) - f(W * np.exp(-eps * G))) / (2.0 * eps)
    if not np.isfinite(D).all():
        raise _Failed("log_density is not finite at M-step outputs near the data")
    s = np.linalg.svd(D, compute_uv=False)
    rank = int(np.sum(s > s[0] * _SQRT_U)) if s[0] > 0 else 0
    if rank != p:
        around = s[max(0, min(rank, p) - 2): max(rank, p) + 2] / (s[0] or 1.0)
        raise _Failed(f"n_parameters() is {p}, but the M-step's parameters move in "
                      f"{rank} independent directions (relative singular values "
                      f"around the cut: {np.array2string(around, precision=2)})")


def _observed_mask(rng, n, d, rate=0.35):
    """A random mask (n, d) of observed entries, at least one per row."""
    observed = rng.random((n, d)) >= rate
    observed[~observed.any(axis=1), 0] = True
    return observed


def _tau_observed(fam, X, observed, W, *params_sets, stats=None):
    """tau_B (docs/elbo_chain.md#check-b) for sums of W_ik log p(x_io | k) computed
    two ways: the magnitude from ``log_density_observed`` at every parameter set,
    the family's amplification and, with ``stats``, its statistics' magnitude."""
    n, d = X.shape
    amp, M, M_Q = 1.0, 0.0, 0.0
    for p in params_sets:
        amp = max(amp, float(fam.rounding_amplification(p)))
        M += _weighted_magnitude(W, np.asarray(fam.log_density_observed(X, observed, p)))
        if stats is not None:
            M_Q += float(fam.expected_log_likelihood_magnitude(stats, p))
    return tolerance_across(fam.n_components, n, d, amp, M, M_Q)


def check_missing_values(ctx: _Context) -> None:
    """For a family with ``supports_missing`` (a product form that marginalises
    missing coordinates): ``log_density_observed`` with every entry observed is
    ``log_density``; with a random mask, each row's value is the log-density of
    the marginal model on its observed columns (``Family.marginal``); the
    expected log-likelihood of ``chunk_stats_observed``'s statistics is the
    direct sum_ik W_ik log p(x_io | k); their M-step maximises it (minus the
    penalty, plus the log prior): no point on the lines from it towards the
    other parameter sets, in ``to_unconstrained`` coordinates, does better;
    each one-column marginal model's expected log-likelihood on the rows
    observing its column is the direct sum; and the statistics of complete rows
    (``chunk_stats``) merged with those of incomplete rows equal the statistics
    of all rows through ``chunk_stats_observed``. Tolerances: per entry 4 (d + 4) a
    u max |log p| (as ``check_log_density_rows``), sums tau_B (``_tau_observed``,
    ``_tau_stats``), the M-step's Q as ``check_m_step_maximises``'s.
    """
    fam, X = ctx.family, ctx.X
    if not getattr(fam, "supports_missing", False):
        raise _NotApplicable("the family does not declare supports_missing")
    rng = ctx.rng(12)
    n, d = X.shape
    k = fam.n_components
    everything = np.ones((n, d), dtype=bool)
    observed = _observed_mask(rng, n, d)
    Xm = np.where(observed, X, np.nan)
    W = _random_responsibilities(rng, n, k)
    previous = ctx.params[0][1]
    for label, params, _ in ctx.params:
        amp = float(fam.rounding_amplification(params))
        full = np.asarray(fam.log_density_observed(X, everything, params), dtype=np.float64)
        a = _log_density(fam, X, params)
        finite = np.isfinite(a)
        if full.shape != a.shape or not np.array_equal(finite, np.isfinite(full)):
            raise _Failed(f"{label}: log_density_observed with every entry observed is "
                          "not log_density (shape or infinite entries differ)")
        if finite.any():
            tau = 4.0 * (d + 4) * amp * U * float(np.max(np.abs(a[finite])))
            diff = float(np.max(np.abs(full[finite] - a[finite])))
            if diff > tau:
                raise _Failed(f"{label}: log_density_observed with every entry observed "
                              f"differs from log_density by {_fmt(diff)} (tolerance "
                              f"{_fmt(tau)})")
        X_copy = Xm.copy()
        got = np.asarray(fam.log_density_observed(Xm, observed, params), dtype=np.float64)
        if not np.array_equal(Xm, X_copy, equal_nan=True):
            raise _Failed("log_density_observed modified its input X")
        if got.shape != (n, k) or np.isnan(got).any():
            raise _Failed(f"{label}: log_density_observed returned shape {got.shape} or NaN")
        patterns, which = np.unique(observed, axis=0, return_inverse=True)
        for p_index, pattern in enumerate(patterns):
            rows = np.flatnonzero(which.ravel() == p_index)
            cols = np.flatnonzero(pattern)
            sub, sub_params = fam.marginal(cols, params)
            want = _log_density(sub, np.ascontiguousarray(X[np.ix_(rows, cols)]), sub_params)
            mine = got[rows]
            ok = np.isfinite(want)
            if not np.array_equal(ok, np.isfinite(mine)):
                raise _Failed(f"{label}: rows observing columns {cols.tolist()}: "
                              "log_density_observed and the marginal model's log_density "
                              "differ in their infinite entries")
            if ok.any():
                amp_m = max(amp, float(sub.rounding_amplification(sub_params)))
                tau = 4.0 * (d + 4) * amp_m * U * float(np.max(np.abs(want[ok])))
                diff = float(np.max(np.abs(mine[ok] - want[ok])))
                if diff > tau:
                    raise _Failed(f"{label}: rows observing columns {cols.tolist()}: "
                                  f"log_density_observed differs from the marginal "
                                  f"model's log_density by {_fmt(diff)} (tolerance "
                                  f"{_fmt(tau)})")
        if not np.isfinite(got).all():
            continue
        stats = fam.chunk_stats_observed(Xm, observed, W)
        ell = float(fam.expected_log_likelihood(stats, params))
        direct = _weighted_sum(W, got)
        tau = _tau_observed(fam, Xm, observed, W, params, stats=stats)
        if not abs(ell - direct) <= tau:
            raise _Failed(f"{label}: expected_log_likelihood of chunk_stats_observed is "
                          f"{ell!r}, directly sum_ik W_ik log p(x_io | k) = {direct!r} "
                          f"(tolerance {_fmt(tau)})")
    # coordinate by coordinate: the one-column marginal model on the rows observing it
    stats = fam.chunk_stats_observed(Xm, observed, W)
    for j in range(d):
        rows = observed[:, j]
        Xj, Wj = np.ascontiguousarray(X[rows][:, [j]]), W[rows]
        sub, sub_prev = fam.marginal([j], previous)
        sub_stats = family_chunk_stats(sub, Xj, Wj, sub_prev)
        for label, params, _ in ctx.params:
            _, p_j = fam.marginal([j], params)
            e_sub = float(sub.expected_log_likelihood(sub_stats, p_j))
            direct = _weighted_sum(Wj, _log_density(sub, Xj, p_j))
            tau = _tau_stats(sub, Xj, Wj, p_j, stats=sub_stats)
            if not abs(e_sub - direct) <= tau:
                raise _Failed(f"column {j}: the marginal model's expected log-likelihood "
                              f"{e_sub!r} vs direct {direct!r} ({label})")
    # the M-step of chunk_stats_observed maximises Q_obs = sum_ik W_ik log p(x_io | k)
    # - penalty + log prior (its expected log-likelihood was checked against the
    # direct sum above): nothing on the lines from it towards the other parameter
    # sets does better, in the family's unconstrained coordinates (where linear
    # constraints, a shared variance, hold along the line), both ways, at relative
    # steps 0.1, 0.01, 0.001. This does not assume the parameters separate by
    # coordinate (a spherical Gaussian's variance is shared by all of them).
    theta = fam.m_step(stats, previous)
    q_best, mag_best = _q_objective(fam, stats, theta)
    base = fam.to_unconstrained(theta)
    for label, params, _ in ctx.params:
        towards = fam.to_unconstrained(params)
        for eps in (0.1, -0.1, 0.01, -0.01, 0.001, -0.001):
            try:
                other = fam.from_unconstrained(
                    {key: base[key] + eps * (towards[key] - base[key]) for key in base})
                fam.validate_params(other)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                continue        # the line leaves the parameter space there
            if not np.isfinite(fam.log_density_observed(Xm, observed, other)).all():
                continue
            q_other, mag_other = _q_objective(fam, stats, other)
            tau = (_tau_observed(fam, Xm, observed, W, theta, other, stats=stats)
                   + 2.0 * U * (mag_best + mag_other)
                   + 2.0 * fam.parameter_rounding(stats, theta))
            if q_other > q_best + tau:
                raise _Failed(f"the M-step of chunk_stats_observed gives Q = {q_best!r}, "
                              f"but {q_other!r} at {eps:g} of the way towards {label} "
                              f"(better by {_fmt(q_other - q_best)}, tolerance "
                              f"{_fmt(tau)})")
    # complete rows by chunk_stats merged with the others: the same statistics
    complete = observed.all(axis=1)
    merged = fam.merge_stats(family_chunk_stats(fam, X[complete], W[complete], previous),
                             fam.chunk_stats_observed(Xm[~complete], observed[~complete],
                                                      W[~complete]))
    for label, params, _ in ctx.params:
        if not np.isfinite(fam.log_density_observed(Xm, observed, params)).all():
            continue
        e1 = float(fam.expected_log_likelihood(merged, params))
        e2 = float(fam.expected_log_likelihood(stats, params))
        tau = _tau_observed(fam, Xm, observed, W, params, stats=stats)
        if not abs(e1 - e2) <= tau:
            raise _Failed(f"{label}: complete rows' chunk_stats merged with the others' "
                          f"chunk_stats_observed give expected log-likelihood {e1!r}, "
                          f"chunk_stats_observed of all rows {e2!r} (tolerance "
                          f"{_fmt(tau)})")


#: checks run only for a family declaring what they check (its ``supports_missing``);
#: :func:`check_family` adds them for such a family, after :data:`FAMILY_CHECKS`
CAPABILITY_CHECKS: tuple = ("check_missing_values",)


_CHECKS: dict = {f.__name__: f for f in (
    check_pickle_roundtrip, check_log_density_rows, check_log_density_normalises,
    check_sampling_moments, check_stats_merge, check_weights_are_repetitions,
    check_expected_log_likelihood, check_m_step_maximises, check_params_valid,
    check_elbo_bound, check_em_chain, check_n_parameters, check_missing_values)}

FAMILY_CHECKS: tuple = tuple(name for name in _CHECKS if name not in CAPABILITY_CHECKS)
"""Names of the conformance checks, in the order :func:`check_family` runs them."""


# --- public entry points -------------------------------------------------------------------

def _validate_known_failures(known_failures) -> dict:
    if known_failures is None:
        return {}
    if not isinstance(known_failures, Mapping):
        raise TypeError("known_failures must be a mapping {check name: reason}")
    unknown = set(known_failures) - set(_CHECKS)
    if unknown:
        raise ValueError(f"known_failures names unknown checks {sorted(unknown)}; "
                         f"the checks are {', '.join(FAMILY_CHECKS)}")
    for name, reason in known_failures.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"known_failures[{name!r}] must be a non-empty reason")
    return dict(known_failures)


def _capability_checks(family: Family) -> list:
    """The :data:`CAPABILITY_CHECKS` that apply to ``family``."""
    return ["check_missing_values"] if getattr(family, "supports_missing", False) else []


def _validate_checks(checks) -> list:
    if checks is None:
        return list(FAMILY_CHECKS)
    names = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in names if c not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {', '.join(FAMILY_CHECKS)}")
    return names


FamilySpec = Union[Family, FamilyRecord, Callable[..., Family]]


def check_family(family: FamilySpec, *, params: Union[None, Mapping, Sequence[Mapping]] = None,
                 X: Optional[np.ndarray] = None, capabilities: Optional[Iterable[str]] = None,
                 known_failures: Optional[Mapping[str, str]] = None,
                 checks: Union[None, str, Sequence[str]] = None,
                 n_components: int = 2, n_features: int = 2,
                 random_state: int = 0) -> FamilyCheckReport:
    """Run the conformance checks on a component family.

    Parameters
    ----------
    family : Family, FamilyRecord or callable
        An instance, a registry record, or a factory called as
        ``factory(n_components, n_features)``.
    params : dict or sequence of dict, optional
        Parameter sets to check at. Default: two drawn by the family's
        ``random_params`` (plus a nearly degenerate one if it supports that).
    X : array of shape (n, n_features), optional
        Data in the family's support. Default: 240 rows sampled from the family.
    capabilities : iterable of str, optional
        Default: the record's, else the registered record of the instance's
        class, else ``{'sampling'}`` if the class implements ``sample``. A
        support capability (:data:`SUPPORT_CAPABILITIES`) enables the
        normalisation and moment checks.
    known_failures : mapping {check name: reason}, optional
        Checks not run, reported as known failures.
    checks : str or sequence of str, optional
        Run only these (names from :data:`FAMILY_CHECKS` and
        :data:`CAPABILITY_CHECKS`). Default: every check of :data:`FAMILY_CHECKS`,
        then those of :data:`CAPABILITY_CHECKS` the family declares
        (``check_missing_values`` for ``Family.supports_missing``).
    n_components, n_features : int, default 2
        Size of the family built from a record or a factory.
    random_state : int, default 0
        Seed of every random choice; a run is reproducible.

    Returns
    -------
    FamilyCheckReport
        Every check's outcome; returned only when none failed.

    Raises
    ------
    AssertionError
        Naming every failing check and what it found.
    """
    known = _validate_known_failures(known_failures)
    names = _validate_checks(checks)
    fam, caps = _resolve(family, capabilities, n_components, n_features)
    if checks is None:
        names += _capability_checks(fam)
    ctx = _build_context(fam, caps, params, X, random_state)
    report = FamilyCheckReport(_describe(fam))
    for name in names:
        report.results.append(_run_check(name, ctx, known))
    if report.failed:
        lines = [f"{len(report.failed)} of {len(report.results)} conformance checks "
                 f"failed for {report.family}:"]
        lines += [f"  {r.name}: {r.detail}" for r in report.failed]
        raise AssertionError("\n".join(lines))
    return report


def _run_check(name, ctx, known) -> CheckResult:
    if name in known:
        return CheckResult(name, "known failure", known[name])
    try:
        _CHECKS[name](ctx)
    except _NotApplicable as exc:
        return CheckResult(name, "not applicable", str(exc))
    except _Failed as exc:
        return CheckResult(name, "failed", str(exc))
    except Exception as exc:          # the family raised: that is a failure of the check
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return CheckResult(name, "failed", f"raised {type(exc).__name__}: {exc} "
                                           f"(at {where.filename}:{where.lineno})")
    return CheckResult(name, "passed")


class _FamilyCheck:
    """One check as a callable for :func:`parametrize_with_family_checks`."""

    def __init__(self, name: str, options: dict):
        self.name = name
        self.options = options
        functools.update_wrapper(self, _CHECKS[name])

    def __call__(self, family: FamilySpec) -> None:
        import pytest

        report = check_family(family, checks=[self.name], **self.options)
        result = report.results[0]
        if result.status == "not applicable":
            pytest.skip(f"{self.name}: {result.detail}")

    def __repr__(self) -> str:
        return self.name


def _family_id(spec) -> str:
    if isinstance(spec, FamilyRecord):
        return spec.name
    if isinstance(spec, Family):
        return _describe(spec).replace(" ", "")
    return getattr(spec, "__name__", repr(spec))


def parametrize_with_family_checks(families: Union[Sequence[FamilySpec],
                                                   Mapping[str, FamilySpec]], *,
                                   known_failures: Optional[Mapping[str, str]] = None,
                                   capabilities: Optional[Iterable[str]] = None,
                                   random_state: int = 0):
    """A ``pytest.mark.parametrize`` over every family and every check.

    Like scikit-learn's ``parametrize_with_checks``: pytest is imported only
    when this is called. The decorated test takes ``family`` and ``check`` and
    calls ``check(family)``::

        from emcore.testing import parametrize_with_family_checks

        @parametrize_with_family_checks([PoissonFamily(2, 2)])
        def test_conformance(family, check):
            check(family)

    A check that does not apply to a family (see its capabilities) is skipped
    with the reason; a known failure is marked ``xfail(reason, run=False)``:
    reported as an expected failure, never run as an ordinary test.

    Parameters
    ----------
    families : sequence of family specs, or mapping {test id: spec}
        Specs as for :func:`check_family` (instances, records or factories).
    known_failures : mapping {check name: reason}, optional
        For all the families given.
    capabilities : iterable of str, optional
        For all the families given (default as in :func:`check_family`).
    random_state : int, default 0
    """
    import pytest

    known = _validate_known_failures(known_failures)
    if isinstance(families, Mapping):
        items = list(families.items())
    else:
        items = [(_family_id(spec), spec) for spec in families]
    options = dict(random_state=random_state,
                   capabilities=None if capabilities is None else frozenset(capabilities))
    cases = []
    for fid, spec in items:
        try:
            extra = _capability_checks(_resolve(spec, options["capabilities"], 2, 2)[0])
        except Exception:               # reported by the checks themselves
            extra = []
        for name in list(FAMILY_CHECKS) + extra:
            # a declared known failure is reported as an expected failure and not
            # run (run=False): it is neither a pass nor an ordinary test
            marks = ([pytest.mark.xfail(reason=known[name], run=False)]
                     if name in known else [])
            cases.append(pytest.param(spec, _FamilyCheck(name, options), marks=marks,
                                      id=f"{fid}-{name}"))
    return pytest.mark.parametrize("family, check", cases)

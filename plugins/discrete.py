"""Discrete component families: ``categorical``, ``bernoulli`` and ``poisson``.

**categorical** (latent class analysis): d independent categorical features, feature
j with L_j levels coded 0, ..., L_j - 1; component k gives level l of feature j
probability P_kjl:

    log p(x | z = k) = sum_j log P_{k j x_j}.

Statistics: N_k = sum_i w_ik and the level counts C_kjl = sum_i w_ik [x_ij = l].
M-step: P_kjl = (C_kjl + alpha) / (N_k + L_j alpha), the posterior mode under a
symmetric Dirichlet(alpha + 1) prior on each (k, j) (``alpha = 0``, the default:
maximum likelihood). With ``alpha > 0`` no probability is ever 0: a level a
component has not (yet) seen keeps a positive probability, so EM can still move
rows there.

**bernoulli**: d binary features, P(x_j = 1 | z = k) = p_kj; the categorical
family with two levels per feature (same kernel), parameters p (K, d).

**poisson**: d independent counts, rates lambda_kj:
log p(x | z = k) = sum_j [x_j log lambda_kj - lambda_kj - log x_j!]. Statistics N_k,
S_kj = sum_i w_ik x_ij, L_k = sum_i w_ik sum_j log x_ij!; M-step lambda_k = S_k / N_k.
(The example third-party plugin, examples/emcore-poisson, is the same model in pure
Python: the example of how to write a family.)

All three start (``Family.initial_params``) from one M-step on a partition
smoothed by ``init_smoothing`` (every row gives every component a share): no
probability or rate starts at an exact zero the data does not force. The kernels
(``_discrete_kernel.pyx``) compute log-densities and statistics without the GIL;
the pure-Python methods delegate to them (one implementation). Formulas, the
pattern-table kernel and what float64 codes cost: docs/discrete.md.

Missing values (``Family.supports_missing``): NaN in a float array marks a missing
code or count (an integer array, e.g. uint8 codes, cannot hold NaN). Rows with a
NaN go through ``log_density_observed`` / ``chunk_stats_observed`` (vectorised
NumPy; complete rows keep the kernels), which drop the missing entries' terms and
count each feature over the rows observing it (the statistics' ``observed``):
docs/missing_values.md#product-form-families.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import scipy.special

from emcore import DegenerateComponentError
from emcore.plugin_api import UNIT_ROUNDOFF, Family, FamilyRecord, Params, hookimpl
from emcore.plugins._discrete_kernel import CodesKernel, GroupCodes, PoissonKernel

__all__ = ["BernoulliFamily", "BernoulliStats", "CategoricalFamily", "CategoricalStats",
           "PoissonFamily", "PoissonStats"]


def _blocks(X: Any, step: int = 65536):
    """(start, float64 block) over the rows of an array or a chunked source."""
    step = int(getattr(X, "block_rows", 0) or step)
    for start in range(0, X.shape[0], step):
        yield start, np.asarray(X[start:start + step], dtype=np.float64)


def _xlogy(c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """c log p with 0 log 0 = 0 and c log 0 = -inf for c > 0."""
    with np.errstate(divide="ignore"):
        return np.where(c > 0, c * np.log(np.where(p > 0, p, 1.0)) + np.where(
            p > 0, 0.0, -np.inf), 0.0)


def _keep_empty(value: np.ndarray, weight: np.ndarray, previous: Optional[Params],
                key: str, what: str) -> np.ndarray:
    """``value`` with the components of zero weight keeping ``previous[key]``."""
    has = weight > 0
    if has.all():
        return value
    k = int(np.argwhere(~has)[0][0])
    if previous is None:
        raise DegenerateComponentError(
            f"{what} component {k} received no data at initialisation; reduce "
            "n_components or choose another initialisation.", component=k)
    shape = weight.shape + (1,) * (value.ndim - weight.ndim)
    return np.where(has.reshape(shape), value, previous[key])


# --- missing coordinates (Family.supports_missing; docs/missing_values.md) ------------------

def _merged_observed(a: Any, b: Any, d: int) -> Optional[np.ndarray]:
    """The per-coordinate weights (K, d) of merged statistics: None when neither
    side has rows with missing entries, else each side's ``observed`` (N_k on every
    coordinate for a side of complete rows) added."""
    if a.observed is None and b.observed is None:
        return None
    per = [s.observed if s.observed is not None else
           np.repeat(s.weight[:, None], d, axis=1) for s in (a, b)]
    return per[0] + per[1]


def _observed_weights(observed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_i weights[i, k] [observed[i, j]], (K, d)."""
    return np.asarray(weights, dtype=np.float64).T @ observed.astype(np.float64)


def _check_columns(columns: Any, d: int, owner: str) -> np.ndarray:
    cols = np.atleast_1d(np.asarray(columns))
    if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or \
            np.any(cols < 0) or np.any(cols >= d) or np.unique(cols).size != cols.size:
        raise ValueError(f"The 'columns' parameter of {owner}.marginal must be distinct "
                         f"column indices in [0, {d - 1}]. Got {columns!r} instead.")
    return cols.astype(np.intp)


# --- categorical and bernoulli -----------------------------------------------------------

@dataclass(frozen=True)
class CategoricalStats:
    """N_k (K,) and the level counts C_kjl (K, d, L) (zero beyond a feature's levels);
    ``observed`` (K, d) the weight of component k on coordinate j when rows miss
    some (None: N_k on every coordinate)."""
    weight: np.ndarray
    counts: np.ndarray
    observed: Optional[np.ndarray] = None


def _check_alpha(alpha: Any, owner: str) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"The 'alpha' parameter of {owner} must be a finite number >= 0. "
                         f"Got {alpha!r} instead.")
    return value


class CategoricalFamily(Family):
    """Independent categorical features per component (latent class analysis).

    Parameters
    ----------
    n_components, n_features : int
        K and d.
    n_levels : int or sequence of int, optional
        Number of levels of each feature (one int: the same for all). Default:
        inferred from the data at fit as the largest code + 1 of each column (a
        level above every observed code is then not part of the model; give
        ``n_levels`` when it is). Codes are integers 0, ..., n_levels - 1: the
        estimators reject negative or non-integer codes (the record's support) and
        codes >= n_levels (:meth:`check_data`), naming the column.
    alpha : float, default 0
        Dirichlet pseudo-count added to every level count: the M-step returns the
        posterior mode under a symmetric Dirichlet(alpha + 1) prior (MAP-EM), and
        every probability stays positive. 0: maximum likelihood.

    Parameters of the model: ``{"probabilities": (K, d, L)}``, L the largest
    number of levels; P[k, j, l] for l < L_j sums to 1 over l, and is 0 beyond.
    The levels, once known, are fixed for the family: given, inferred from the
    data by :meth:`initial_params`, or, for parameters given without ``n_levels``
    (``params_init``, ``from_parameters``), L for every feature.
    """

    def __init__(self, n_components: int, n_features: int, *,
                 n_levels: Union[None, int, Sequence[int]] = None, alpha: float = 0.0):
        super().__init__(n_components, n_features)
        owner = type(self).__name__
        self.alpha = _check_alpha(alpha, owner)
        self.n_levels = n_levels
        self._levels: Optional[tuple] = None
        self._code_rows: Optional[np.ndarray] = None     # codes_for's rows
        self._codes: Optional[GroupCodes] = None
        if n_levels is not None:
            self._set_levels(self._check_levels(n_levels, owner))

    # --- levels ---------------------------------------------------------------------
    def _check_levels(self, n_levels: Any, owner: str) -> tuple:
        d = self.n_features
        values = np.atleast_1d(np.asarray(n_levels))
        if values.size == 1:
            values = np.repeat(values, d)
        ok = (values.ndim == 1 and values.shape[0] == d
              and np.issubdtype(values.dtype, np.integer) and np.all(values >= 1))
        if not ok:
            raise ValueError(f"The 'n_levels' parameter of {owner} must be an int >= 1 or "
                             f"{d} ints >= 1 (one per feature). Got {n_levels!r} instead.")
        return tuple(int(v) for v in values)

    def _set_levels(self, levels: tuple) -> None:
        if self._levels is not None and self._levels != levels:
            raise ValueError(f"{type(self).__name__} has levels {self._levels}; got "
                             f"{levels}")
        self._levels = levels
        self._stats_kernel = CodesKernel(np.zeros((self.n_components, self.n_features,
                                                   max(levels))), levels)

    @property
    def levels(self) -> Optional[tuple]:
        """Number of levels of each feature, or None before they are known (given,
        inferred from the data by :meth:`initial_params`, or drawn by
        :meth:`random_params`)."""
        return self._levels

    def _levels_of(self, params: Params) -> tuple:
        if self._levels is not None:
            return self._levels
        return (int(self._table(params).shape[2]),) * self.n_features

    def _fix_levels(self, params: Params) -> tuple:
        """The levels, fixed from the parameters' shape if not known yet (a fit from
        ``params_init`` or a model from its parameters: L levels for every feature)."""
        if self._levels is None:
            self._set_levels(self._levels_of(params))
        return self._levels

    def _require_levels(self, what: str) -> tuple:
        if self._levels is None:
            raise ValueError(f"{type(self).__name__}.{what} needs the number of levels of "
                             "each feature: give family_options={'n_levels': ...} or fit "
                             "first")
        return self._levels

    # --- parameters <-> the (K, d, L) table (overridden by the Bernoulli family) ----
    def _table(self, params: Params) -> np.ndarray:
        return np.asarray(params["probabilities"], dtype=np.float64)

    def _params(self, table: np.ndarray) -> dict:
        return {"probabilities": table}

    def _level_mask(self, levels: tuple) -> np.ndarray:
        """(d, L) True where level l exists for feature j."""
        return np.arange(max(levels))[None, :] < np.asarray(levels)[:, None]

    # --- E-step and statistics (the compiled kernel) ---------------------------------
    @contextlib.contextmanager
    def codes_for(self, rows: np.ndarray) -> Iterator[None]:
        """Within the block, the kernels read the group codes of ``rows`` (made once,
        when the levels are known) instead of their float64 values, for passes over
        ``rows`` or chunks of them (docs/discrete.md#group-codes): what a fit
        does with the rows its EM iterations run over. ``rows`` must not change
        within the block; other arrays are read as rows. A no-op for rows that are
        not C-contiguous float64."""
        usable = (isinstance(rows, np.ndarray) and rows.dtype == np.float64
                  and rows.ndim == 2 and rows.flags.c_contiguous)
        self._code_rows, self._codes = (rows if usable else None), None
        try:
            yield
        finally:
            self._code_rows, self._codes = None, None

    def _group_codes(self, levels: tuple) -> Optional[GroupCodes]:
        if self._code_rows is None:
            return None
        if self._codes is None or self._codes.levels != levels:
            self._codes = GroupCodes(self._code_rows, levels)
        return self._codes

    def compiled_kernel(self, params: Params) -> CodesKernel:
        levels = self._fix_levels(params)
        with np.errstate(divide="ignore"):
            return CodesKernel(np.log(self._table(params)), levels,
                               self._group_codes(levels))

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        return self.compiled_kernel(params).log_density(X)

    def empty_stats(self) -> CategoricalStats:
        levels = self._require_levels("empty_stats")
        k, d = self.n_components, self.n_features
        return CategoricalStats(np.zeros(k), np.zeros((k, d, max(levels))))

    def stats_from_buffer(self, buffer: np.ndarray) -> CategoricalStats:
        self._require_levels("stats_from_buffer")
        return CategoricalStats(*self._stats_kernel.expand(buffer))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> CategoricalStats:
        self._require_levels("chunk_stats")
        try:
            buffer = self._stats_kernel.accumulate(X, weights)
        except FloatingPointError:
            raise ValueError(f"{type(self).__name__}.chunk_stats: a row with positive "
                             "weight holds a code outside its feature's levels") from None
        return self.stats_from_buffer(buffer)

    def merge_stats(self, a: CategoricalStats, b: CategoricalStats) -> CategoricalStats:
        return type(a)(a.weight + b.weight, a.counts + b.counts,
                       _merged_observed(a, b, self.n_features))

    def scale_stats(self, stats: CategoricalStats, factor: float) -> CategoricalStats:
        return type(stats)(stats.weight * factor, stats.counts * factor,
                           None if stats.observed is None else stats.observed * factor)

    # --- missing codes (supports_missing): NaN in a float array marks a missing code -----
    supports_missing = True

    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """sum over the observed features of log P_{k j x_j} (vectorised numpy: the
        rows with a missing code only; complete rows take the compiled kernel)."""
        self._fix_levels(params)
        table = self._table(params)
        codes = np.where(observed, X, 0.0).astype(np.intp)
        with np.errstate(divide="ignore"):
            log_table = np.log(table)                                  # (K, d, L)
        j = np.arange(self.n_features)
        terms = log_table[:, j[None, :], codes]                        # (K, n, d)
        return np.where(observed[None], terms, 0.0).sum(axis=2).T

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> CategoricalStats:
        """Level counts of the observed codes; ``observed`` (K, d) their weights."""
        levels = self._require_levels("chunk_stats_observed")
        W = np.asarray(weights, dtype=np.float64)
        codes = np.where(observed, X, 0.0).astype(np.intp)
        counts = np.zeros((self.n_components, self.n_features, max(levels)))
        for level in range(max(levels)):
            counts[:, :, level] = W.T @ (observed & (codes == level)).astype(np.float64)
        cls = BernoulliStats if isinstance(self, BernoulliFamily) else CategoricalStats
        return cls(W.sum(axis=0), counts, _observed_weights(observed, W))

    def marginal(self, columns: Any, params: Params) -> tuple:
        """The same family on ``columns`` (their levels, alpha) and their probabilities."""
        cols = _check_columns(columns, self.n_features, type(self).__name__)
        levels = self._levels_of(params)
        if isinstance(self, BernoulliFamily):
            fam = BernoulliFamily(self.n_components, cols.size, alpha=self.alpha)
            return fam, {"probabilities": np.asarray(params["probabilities"])[:, cols]}
        sub = tuple(levels[j] for j in cols)
        fam = CategoricalFamily(self.n_components, cols.size, n_levels=list(sub),
                                alpha=self.alpha)
        return fam, {"probabilities": self._table(params)[:, cols, :max(sub)]}

    # --- M-step ------------------------------------------------------------------------
    def m_step(self, stats: CategoricalStats, previous: Optional[Params]) -> dict:
        levels = self._require_levels("m_step")
        mask = self._level_mask(levels)
        a = self.alpha
        # N_k, or N_kj when rows miss codes (each feature counts the rows observing it)
        n = (stats.weight[:, None, None] if stats.observed is None
             else stats.observed[:, :, None])
        denom = n + a * np.asarray(levels)[None, :, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            table = np.where(mask, (stats.counts + a) / denom, 0.0)
        weight = stats.weight if stats.observed is None else stats.observed
        weight = weight if a == 0 else np.ones_like(weight)
        params = self._params(table)
        key = next(iter(params))
        prev = None if previous is None else {key: np.asarray(previous[key])}
        return {key: _keep_empty(params[key], weight, prev, key, type(self).__name__)}

    def expected_log_likelihood(self, stats: CategoricalStats, params: Params) -> float:
        return float(np.sum(_xlogy(stats.counts, self._table(params))))

    def log_prior(self, params: Params) -> tuple:
        """log Dir(P_kj | alpha + 1) summed over components and features; (0, 0)
        without a prior (alpha = 0)."""
        if self.alpha == 0:
            return 0.0, 0.0
        a = self.alpha
        levels = np.asarray(self._levels_of(params), dtype=np.float64)
        table = self._table(params)
        norm = scipy.special.gammaln(levels * (a + 1.0)) - levels * scipy.special.gammaln(
            a + 1.0)
        with np.errstate(divide="ignore"):
            terms = np.where(self._level_mask(tuple(levels.astype(int))),
                             a * np.log(np.where(table > 0, table, 0.0)), 0.0)
        k = self.n_components
        value = k * float(np.sum(norm)) + float(np.sum(terms))
        return value, k * float(np.sum(np.abs(norm))) + float(np.sum(np.abs(terms)))

    # --- starting values, the parameter space -------------------------------------------
    def initial_params(self, X: Any, rng: np.random.Generator,
                       sample_weight: Optional[np.ndarray] = None, resp: Any = None) -> dict:
        """The default start (one M-step on the smoothed starting partition); when the
        levels are not given, they are first inferred: the largest code + 1 of
        each column."""
        if self._levels is None:
            top = np.zeros(self.n_features)
            for _, block in _blocks(X):
                if block.shape[0]:
                    top = np.maximum(top, block.max(axis=0))
            self._set_levels(tuple(int(v) + 1 for v in top))
        return super().initial_params(X, rng, sample_weight, resp)

    def check_data(self, X: Any, *, owner: str) -> None:
        """Raise ValueError naming the first code at or above its column's number of
        levels (when the levels are known)."""
        if self._levels is None:
            return
        levels = np.asarray(self._levels, dtype=np.float64)
        for start, block in _blocks(X):
            bad = block >= levels
            if bad.any():
                i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
                raise ValueError(
                    f"The 'X' parameter of {owner} must hold codes 0, ..., n_levels - 1 "
                    f"of each column for family {type(self).__name__}. Got "
                    f"X[{start + i}, {j}] = {float(block[i, j])!r} in column {j}, which has "
                    f"{self._levels[j]} levels, instead.")

    def validate_params(self, params: Params) -> None:
        """probabilities (K, d, L): finite, in [0, 1], 0 beyond a feature's levels,
        summing to 1 over each feature's levels (to 2 L u: each of the L quotients
        of the M-step is within u, their sum adds (L - 1) u more)."""
        table = self._table(params)
        k, d = self.n_components, self.n_features
        if table.ndim != 3 or table.shape[:2] != (k, d):
            raise ValueError(f"'probabilities' must have shape ({k}, {d}, n_levels); got "
                             f"{table.shape}")
        levels = self._levels_of(params)
        if table.shape[2] != max(levels):
            raise ValueError(f"'probabilities' must have {max(levels)} levels; got "
                             f"{table.shape[2]}")
        if not np.all(np.isfinite(table) & (table >= 0) & (table <= 1)):
            raise ValueError("'probabilities' must be finite and in [0, 1]")
        mask = self._level_mask(levels)
        if np.any(table[:, ~mask] != 0):
            raise ValueError("'probabilities' must be 0 beyond a feature's levels")
        L = max(levels)
        sums = table.sum(axis=2)
        bad = np.abs(sums - 1.0) > 2 * L * UNIT_ROUNDOFF
        if bad.any():
            c, j = np.argwhere(bad)[0]
            raise ValueError(f"'probabilities' of component {c}, feature {j} sum to "
                             f"{sums[c, j]!r}, not 1")

    def n_parameters(self) -> int:
        levels = self._require_levels("n_parameters")
        return self.n_components * int(sum(L - 1 for L in levels))

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        table = self._table(params)
        parts = []
        for k, c in enumerate(np.asarray(counts, dtype=np.int64)):
            cdf = np.cumsum(table[k], axis=1)                     # (d, L)
            u = rng.random((int(c), self.n_features, 1))
            codes = np.minimum((u >= cdf[None, :, :-1]).sum(axis=2),
                               np.asarray(self._levels_of(params)) - 1)
            parts.append(codes.astype(np.float64))
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """Dirichlet(2) probabilities per component and feature (nearly degenerate:
        Dirichlet(0.05), floored at 1e-12 and renormalised). Without known levels,
        3 per feature (then fixed for this family)."""
        if self._levels is None:
            self._set_levels((3,) * self.n_features)
        levels = self._levels
        table = np.zeros((self.n_components, self.n_features, max(levels)))
        for j, L in enumerate(levels):
            p = rng.dirichlet(np.full(L, 0.05 if nearly_degenerate else 2.0),
                              size=self.n_components)
            if nearly_degenerate:
                p = np.maximum(p, 1e-12)
            table[:, j, :L] = p / p.sum(axis=1, keepdims=True)
        return self._params(table)


@dataclass(frozen=True)
class BernoulliStats(CategoricalStats):
    """N_k (K,) and the level counts C_kjl (K, d, 2): C[..., 1] = sum_i w_ik x_ij."""


class BernoulliFamily(CategoricalFamily):
    """Independent binary features per component: P(x_j = 1 | z = k) = p_kj.

    Parameters
    ----------
    n_components, n_features : int
        K and d.
    alpha : float, default 0
        Beta(alpha + 1, alpha + 1) prior on each p_kj (MAP-EM): p = (S + alpha) /
        (N + 2 alpha), never 0 or 1. 0: maximum likelihood.

    Parameters of the model: ``{"probabilities": (K, d)}``. The categorical
    family's kernel with two levels per feature: log-densities by pattern tables
    (8 features per lookup), not a d x K matrix product per row.
    """

    def __init__(self, n_components: int, n_features: int, *, alpha: float = 0.0):
        super().__init__(n_components, n_features, n_levels=2, alpha=alpha)

    def _table(self, params: Params) -> np.ndarray:
        p = np.asarray(params["probabilities"], dtype=np.float64)
        return np.stack([1.0 - p, p], axis=-1)

    def _params(self, table: np.ndarray) -> dict:
        return {"probabilities": table[..., 1]}

    def compiled_kernel(self, params: Params) -> CodesKernel:
        p = np.asarray(params["probabilities"], dtype=np.float64)
        levels = (2,) * p.shape[1]
        with np.errstate(divide="ignore"):
            # log(1 - p) by log1p: accurate for small p
            return CodesKernel(np.stack([np.log1p(-p), np.log(p)], axis=-1), levels,
                               self._group_codes(levels))

    def stats_from_buffer(self, buffer: np.ndarray) -> BernoulliStats:
        return BernoulliStats(*self._stats_kernel.expand(buffer))

    def expected_log_likelihood(self, stats: CategoricalStats, params: Params) -> float:
        p = np.asarray(params["probabilities"], dtype=np.float64)
        ones = stats.counts[..., 1]
        zeros = stats.counts[..., 0]
        with np.errstate(divide="ignore"):
            log_q = np.log1p(-p)
        return float(np.sum(_xlogy(ones, p)) + np.sum(
            np.where(zeros > 0, zeros * log_q, 0.0)))

    def validate_params(self, params: Params) -> None:
        """probabilities (K, d), finite, in [0, 1]."""
        p = np.asarray(params["probabilities"])
        shape = (self.n_components, self.n_features)
        if p.shape != shape:
            raise ValueError(f"'probabilities' must have shape {shape}; got {p.shape}")
        if not np.all(np.isfinite(p) & (p >= 0) & (p <= 1)):
            raise ValueError("'probabilities' must be finite and in [0, 1]")

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        p = np.asarray(params["probabilities"], dtype=np.float64)
        parts = [(rng.random((int(c), self.n_features)) < p[k]).astype(np.float64)
                 for k, c in enumerate(np.asarray(counts, dtype=np.int64))]
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """p uniform on [0.1, 0.9]; nearly degenerate: half of them within 1e-8-1e-4
        of 0 or 1."""
        p = rng.uniform(0.1, 0.9, (self.n_components, self.n_features))
        if nearly_degenerate:
            edge = rng.random(p.shape) < 0.5
            tiny = 10.0 ** rng.uniform(-8.0, -4.0, p.shape)
            p = np.where(edge, np.where(rng.random(p.shape) < 0.5, tiny, 1.0 - tiny), p)
        return {"probabilities": p}


# --- poisson -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PoissonStats:
    """N_k (K,), S_kj = sum_i w_ik x_ij (K, d), L_k = sum_i w_ik sum_j log x_ij! (K,);
    ``observed`` (K, d) the weight of component k on coordinate j when rows miss
    some (None: N_k on every coordinate; the sums are then over observed entries)."""
    weight: np.ndarray
    sums: np.ndarray
    log_fact: np.ndarray
    observed: Optional[np.ndarray] = None


class PoissonFamily(Family):
    """Independent Poisson counts per component; ``params = {"rates": (K, d)}``.

    Parameters
    ----------
    n_components, n_features : int
        K and d.

    Rates are >= 0 (a rate of 0, forced by a column of zeros, gives probability 1
    to a zero count).
    """

    def __init__(self, n_components: int, n_features: int):
        super().__init__(n_components, n_features)
        self._stats_kernel = PoissonKernel(np.ones((self.n_components, self.n_features)))

    def compiled_kernel(self, params: Params) -> PoissonKernel:
        return PoissonKernel(params["rates"])

    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        return self.compiled_kernel(params).log_density(X)

    def empty_stats(self) -> PoissonStats:
        k, d = self.n_components, self.n_features
        return PoissonStats(np.zeros(k), np.zeros((k, d)), np.zeros(k))

    def stats_from_buffer(self, buffer: np.ndarray) -> PoissonStats:
        return PoissonStats(*self._stats_kernel.expand(buffer))

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray) -> PoissonStats:
        try:
            buffer = self._stats_kernel.accumulate(X, weights)
        except FloatingPointError:
            raise ValueError("PoissonFamily.chunk_stats: a row with positive weight holds "
                             "a value that is not a count") from None
        return self.stats_from_buffer(buffer)

    def merge_stats(self, a: PoissonStats, b: PoissonStats) -> PoissonStats:
        return PoissonStats(a.weight + b.weight, a.sums + b.sums, a.log_fact + b.log_fact,
                            _merged_observed(a, b, self.n_features))

    def scale_stats(self, stats: PoissonStats, factor: float) -> PoissonStats:
        return PoissonStats(stats.weight * factor, stats.sums * factor,
                            stats.log_fact * factor,
                            None if stats.observed is None else stats.observed * factor)

    def m_step(self, stats: PoissonStats, previous: Optional[Params]) -> dict:
        if stats.observed is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                rates = stats.sums / stats.weight[:, None]
            return {"rates": _keep_empty(np.where(stats.weight[:, None] > 0, rates, 0.0),
                                         stats.weight, previous, "rates", "Poisson")}
        # rows missing counts: each rate over the rows observing its coordinate
        n = stats.observed
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = stats.sums / n
        return {"rates": _keep_empty(np.where(n > 0, rates, 0.0), n, previous, "rates",
                                     "Poisson")}

    def expected_log_likelihood(self, stats: PoissonStats, params: Params) -> float:
        rates = np.asarray(params["rates"], dtype=np.float64)
        if stats.observed is None:
            lam = np.sum(stats.weight * rates.sum(axis=1))
        else:
            lam = np.sum(stats.observed * rates)
        return float(np.sum(_xlogy(stats.sums, rates)) - lam - np.sum(stats.log_fact))

    # --- missing counts (supports_missing): NaN in a float array marks a missing count ---
    supports_missing = True

    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """sum over the observed coordinates of x log lambda - lambda - log x!
        (vectorised numpy: rows with a missing count only)."""
        rates = np.asarray(params["rates"], dtype=np.float64)
        x = np.where(observed, X, 0.0)
        with np.errstate(divide="ignore"):
            log_r = np.log(rates)
        # x log lambda with 0 log 0 = 0: a product over finite logs, then -inf where a
        # positive count meets a zero rate
        out = x @ np.where(rates > 0, log_r, 0.0).T - observed.astype(np.float64) @ rates.T
        out -= scipy.special.gammaln(x + 1.0).sum(axis=1)[:, None]
        zero = (x > 0).astype(np.float64) @ (rates == 0).astype(np.float64).T
        return np.where(zero > 0, -np.inf, out)

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> PoissonStats:
        """Sums and log x! of the observed counts; ``observed`` (K, d) their weights."""
        W = np.asarray(weights, dtype=np.float64)
        x = np.where(observed, X, 0.0)
        return PoissonStats(W.sum(axis=0), W.T @ x,
                            W.T @ scipy.special.gammaln(x + 1.0).sum(axis=1),
                            _observed_weights(observed, W))

    def marginal(self, columns: Any, params: Params) -> tuple:
        """A Poisson family on ``columns`` and their rates."""
        cols = _check_columns(columns, self.n_features, "PoissonFamily")
        return (PoissonFamily(self.n_components, cols.size),
                {"rates": np.asarray(params["rates"])[:, cols]})

    def validate_params(self, params: Params) -> None:
        """rates (K, d), finite and >= 0."""
        rates = np.asarray(params["rates"])
        shape = (self.n_components, self.n_features)
        if rates.shape != shape:
            raise ValueError(f"'rates' must have shape {shape}; got {rates.shape}")
        if not np.all(np.isfinite(rates) & (rates >= 0)):
            raise ValueError("'rates' must be finite and non-negative")

    def n_parameters(self) -> int:
        return self.n_components * self.n_features

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        rates = np.asarray(params["rates"], dtype=np.float64)
        parts = [rng.poisson(rates[k], size=(int(c), self.n_features)).astype(np.float64)
                 for k, c in enumerate(np.asarray(counts, dtype=np.int64))]
        return np.concatenate(parts) if parts else np.empty((0, self.n_features))

    def rounding_amplification(self, params: Params) -> float:
        # log p = sum_j (x log lambda - lambda - log x!) cancels where the mass is:
        # at x ~ lambda the terms are ~ lambda (2 |log lambda| + 1) per coordinate
        # while |log p| is only ~ log(2 pi lambda) / 2; their ratio, summed over
        # the coordinates, bounds the amplification of rounding (>= 1)
        rates = np.asarray(params["rates"], dtype=np.float64)
        with np.errstate(divide="ignore"):
            terms = np.where(rates > 0, rates * (2.0 * np.abs(np.log(rates)) + 1.0), 0.0)
        return 1.0 + float(np.max(np.sum(terms, axis=1)))

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """Rates log-uniform on [0.5, 20]; nearly degenerate: about half of them
        log-uniform on [1e-8, 1e-4]."""
        rates = np.exp(rng.uniform(np.log(0.5), np.log(20.0),
                                   (self.n_components, self.n_features)))
        if nearly_degenerate:
            tiny = rng.random(rates.shape) < 0.5
            rates[tiny] = 10.0 ** rng.uniform(-8.0, -4.0, int(tiny.sum()))
        return {"rates": rates}


@hookimpl
def emcore_register_families():
    caps = frozenset({"compiled_kernel", "sampling"})
    return [
        FamilyRecord(name="categorical", factory=CategoricalFamily,
                     capabilities=caps | {"support:nonnegative_integers"},
                     description="independent categorical features, integer codes "
                                 "(latent class analysis; n_levels, Dirichlet alpha)"),
        FamilyRecord(name="bernoulli", factory=BernoulliFamily,
                     capabilities=caps | {"support:binary"},
                     description="independent binary features (multivariate Bernoulli; "
                                 "Beta alpha)"),
        FamilyRecord(name="poisson", factory=PoissonFamily,
                     capabilities=caps | {"support:nonnegative_integers"},
                     description="independent Poisson counts (compiled)"),
    ]

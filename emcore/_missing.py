"""Exact EM for Gaussian mixtures on data with missing entries (NaN).

The objective is the observed-data log-likelihood
L(theta) = sum_i w_i log sum_k pi_k N(x_i,o | mu_k,o, Sigma_k,oo), o = o(i) the
coordinates observed in row i (w_i the sample weights, 1 by default). The E-step's
q_t(z, x_m) = p(z, x_m | x_o, theta_t) is the exact posterior of the component
*and* the missing coordinates, so ELBO(q_t, theta_t) = L(theta_t) and the chain of
docs/elbo_chain.md holds for L (derivation: docs/missing_values.md).

The E-step is the compiled pass :mod:`emcore._core._missing_kernel`
(docs/missing_values.md#the-compiled-pass). The loop is the engine's
:func:`emcore.engine.run_em`: :class:`MissingValues` is a latent structure (the
independent mixture) with its own pass, so the records, the tolerances, the chain
warning, MAP priors, SQUAREM, callbacks and Ctrl-C are the engine's
(docs/missing_values.md#design). In-memory arrays and chunked sources (memmap,
h5py, zarr, Dask) run the same kernel, a block at a time for a source.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import numpy as np

from emcore._core._missing_kernel import TILE_ROWS, _FactorError
from emcore._sources import ChunkedSource
from emcore._validation import check_blocks
from emcore._core._missing_kernel import missing_pass as _compiled_pass
from emcore._threads import effective_n_threads, single_threaded_blas
from emcore.engine import (FitResult, Iteration, _log_weights, best_of_starts, run_em,
                           summation_depth)
from emcore.exceptions import DegenerateComponentError
from emcore.plugin_api import Family, MixtureStructure, PassResult

__all__ = ["MissingValues", "MissingData", "prepare", "row_pass", "run_missing_em",
           "drop_empty_rows", "warn_empty_rows", "fit_starts", "as_source_with_nan",
           "filled_array", "filled_source", "ObservedRows", "ObservedMixture",
           "observed_pass", "fit_observed_starts", "observed_fill", "check_input_with_nan",
           "observed_fill_values", "observed_rows_pass",
           "source_row_pass", "MaskedFamily"]


class MissingData:
    """X (n, d) float64 with NaN at the missing entries (in memory), as the pass
    reads it."""

    def __init__(self, X: np.ndarray):
        self.X = np.ascontiguousarray(X, dtype=np.float64)


def prepare(X: np.ndarray) -> MissingData:
    """X as the missing-value pass reads it (C-contiguous float64, NaN = missing)."""
    return MissingData(X)


def _kernel(X: np.ndarray, weights: np.ndarray, params: dict, sample_weight=None,
            n_jobs: Optional[int] = 1, **outputs) -> tuple:
    """The compiled pass over in-memory rows; (N, R, S, observed mass, totals)."""
    U = np.ascontiguousarray(params["precisions_cholesky"], dtype=np.float64)
    means = np.ascontiguousarray(params["means"], dtype=np.float64)
    sw = None if sample_weight is None else np.ascontiguousarray(sample_weight,
                                                                 dtype=np.float64)
    try:
        with single_threaded_blas():
            return _compiled_pass(np.ascontiguousarray(X, dtype=np.float64),
                                  _log_weights(weights), means, U, sw,
                                  effective_n_threads(n_jobs), **outputs)
    except _FactorError as exc:
        raise DegenerateComponentError(
            f"The precision matrix of component {exc.component} restricted to the "
            f"coordinates missing in row {exc.row} is not positive definite.",
            component=exc.component) from None


def _row_outputs(shape: tuple, k: int, log_resp: bool, impute: bool) -> dict:
    """The kernel's per-row output arrays for an (n, d) input, by keyword: 'row_value'
    always, 'log_resp' and 'mean'/'var' when asked."""
    n, d = shape
    out = {"out_row_value": np.empty(n)}
    if log_resp:
        out["out_log_resp"] = np.empty((n, k))
    if impute:
        out["out_mean"] = np.empty((n, d))
        out["out_var"] = np.empty((n, d))
    return out


def row_pass(X: np.ndarray, weights: np.ndarray, params: dict, *, log_resp: bool = False,
             impute: bool = False, n_jobs: Optional[int] = 1) -> dict:
    """Per-row outputs at fixed parameters: 'row_value' log p(x_io) (n,), and
    'log_resp' (n, k) and/or 'mean', 'var' (n, d): E[x | x_o] and Var[x_j | x_o]
    (0 at observed entries) when asked."""
    out = _row_outputs(X.shape, np.shape(weights)[0], log_resp, impute)
    _kernel(X, weights, params, None, n_jobs, **out)
    return {key[4:]: value for key, value in out.items()}


def _block_outputs(rows: np.ndarray, start: int, shared: tuple, *outputs) -> None:
    """The kernel's per-row outputs for one block of a source, written in place
    into the block's slices of the output arrays (what ``map_blocks`` maps)."""
    weights, params, n_jobs, names = shared
    given = {name: out for name, out in zip(names, outputs)}
    try:
        _kernel(rows, weights, params, None, n_jobs, **given)
    except DegenerateComponentError as exc:
        raise ValueError(f"{exc} (row numbers from row {start})") from None


def source_row_pass(source: ChunkedSource, weights: np.ndarray, params: dict, *,
                    log_resp: bool = False, impute: bool = False,
                    n_jobs: Optional[int] = 1) -> dict:
    """:func:`row_pass` over a chunked source with NaN (memmap, h5py, zarr, Dask), a
    block at a time: the same kernel on each block's rows, writing the block's
    slices of in-memory (n, ...) outputs (docs/missing_values.md#chunked)."""
    out = _row_outputs(source.shape, np.shape(weights)[0], log_resp, impute)
    names = tuple(out)
    for _ in source.map_blocks(_block_outputs,
                               (np.asarray(weights, dtype=np.float64), params, n_jobs,
                                names), row_outputs=tuple(out.values())):
        pass
    return {key[4:]: value for key, value in out.items()}


# --- statistics, checks --------------------------------------------------------------

def _stats(family, N, R, S, means):
    """The family's statistics (emcore.plugins.gaussian.GaussianStats) about the
    reference points mu_k: weight N, residual R, scatter S (its diagonal for
    'diag' and 'spherical')."""
    GaussianStats = type(family.empty_stats())
    diag = family.covariance_type in ("diag", "spherical")
    scatter = np.einsum("kjj->kj", S).copy() if diag else S
    return GaussianStats(weight=N.copy(), mean=np.array(means, dtype=np.float64),
                         residual=R, scatter=scatter)


def _check_observed(N: np.ndarray, observed_mass: np.ndarray, feature_names=None) -> None:
    """A component whose responsibility mass never sees a coordinate has no data on it."""
    # below eps times the component's mass: numerically no observation (a mass the
    # rounding of N_k alone can produce)
    tiny = np.finfo(np.float64).eps * N[:, None]
    bad = np.argwhere((observed_mass <= tiny) & (N[:, None] > 0))
    if bad.size:
        j, c = (int(a) for a in bad[0])
        name = f"{c}" if feature_names is None else f"{c} ({feature_names[c]!r})"
        raise ValueError(
            f"Component {j} has no observed value of coordinate {name}: the rows it "
            "is responsible for all miss that coordinate, so the data say nothing about "
            "its mean or variance there. Use fewer components, another initialisation, "
            "or drop the coordinate.")


def _block_pass(rows: np.ndarray, start: int, shared: tuple,
                sample_weight: Optional[np.ndarray] = None) -> tuple:
    """The kernel over one block of a source (what ``map_blocks`` maps; runs on a
    Dask worker for a DaskSource): only the block's sums come back."""
    weights, params, n_jobs = shared
    try:
        return _kernel(rows, weights, params, sample_weight, n_jobs)
    except DegenerateComponentError as exc:
        raise ValueError(f"{exc} (row numbers from row {start})") from None


class MissingValues(MixtureStructure):
    """The independent mixture over rows with missing entries: the engine's loop
    with this pass (docs/missing_values.md#design).

    Parameters
    ----------
    n_components : int
    concentration : array of shape (n_components,), optional
        Dirichlet prior on the weights (MAP), as :class:`MixtureStructure`'s.
    sample_weight : array of shape (n_samples,), optional
        w_i: row i counts w_i times.
    feature_names : sequence of str, optional
        For the error naming a coordinate a component never observes.
    """

    unit = "row with missing entries"

    def __init__(self, n_components: int, *, concentration: Optional[np.ndarray] = None,
                 sample_weight: Optional[np.ndarray] = None, feature_names=None):
        super().__init__(n_components, concentration=concentration)
        self.sample_weight = sample_weight
        self.feature_names = feature_names

    def data_pass(self, X: Any, family, rule, weights: np.ndarray, params, *,
                  n_jobs: Optional[int] = 1, chunk_rows: Optional[int] = None,
                  lengths: Any = None) -> PassResult:
        if isinstance(X, MissingData):
            X = X.X
        if isinstance(X, np.ndarray):
            N, R, S, OM, T = _kernel(X, weights, params, self.sample_weight, n_jobs)
        else:
            # a source: blocks merged in block order (on a cluster, each block where
            # it lives); within a block, the kernel's own tiles and sub-blocks
            parts = X.map_blocks(_block_pass, (np.asarray(weights, dtype=np.float64),
                                               params, n_jobs),
                                 row_inputs=(self.sample_weight,))
            N = R = S = OM = T = None
            for part in parts:
                if N is None:
                    N, R, S, OM, T = (np.array(a) for a in part)
                else:
                    for total, a in zip((N, R, S, OM, T), part):
                        total += a
        _check_observed(N, OM, self.feature_names)
        stats = _stats(family, N, R, S, params["means"])
        return PassResult(stats, N, float(T[0]), float(T[1]), float(T[2]), float(T[3]))

    def summation_depth(self, X: Any, chunk_rows: int, lengths: Any = None) -> int:
        # the kernel's tiles grouped into blocks as the engine's chunks are
        if isinstance(X, MissingData):
            X = X.X
        if isinstance(X, np.ndarray):
            return summation_depth(X.shape[0], TILE_ROWS)
        return X.summation_depth(TILE_ROWS)


def run_missing_em(data: Any, family, weights: np.ndarray, params: dict, *,
                   max_iter: int, tol: float,
                   callback: Optional[Callable[[Iteration], object]] = None,
                   feature_names=None, sample_weight: Optional[np.ndarray] = None,
                   weight_concentration: Optional[np.ndarray] = None,
                   accelerate: Optional[str] = None, n_jobs: Optional[int] = 1,
                   verbose: int = 0, label: str = "") -> FitResult:
    """EM for the observed-data likelihood from (weights, params): the engine's
    :func:`emcore.engine.run_em` with the :class:`MissingValues` structure."""
    from emcore.registry import get_registry
    X = data.X if isinstance(data, MissingData) else data
    structure = MissingValues(family.n_components, concentration=weight_concentration,
                              sample_weight=sample_weight, feature_names=feature_names)
    rule = get_registry().posterior_rule("soft").factory()
    return run_em(X, family, rule, weights, params, max_iter=max_iter, tol=tol,
                  n_jobs=n_jobs, verbose=verbose, callback=callback, structure=structure,
                  accelerate=accelerate, label=label)


def fit_starts(estimator, X: Any, family, start: Callable[[], tuple], n_starts: int,
               **options) -> FitResult:
    """:func:`run_missing_em` from ``n_starts`` starts drawn by ``start()``; the best
    objective (:func:`emcore.engine.best_of_starts`)."""
    started = []

    def run(weights, params):
        started.append(None)
        return run_missing_em(X, family, weights, params, max_iter=estimator.max_iter,
                              tol=estimator.tol, callback=estimator.callback,
                              accelerate=estimator.accelerate, n_jobs=estimator.n_jobs,
                              verbose=estimator.verbose,
                              label=f"start {len(started)}/{n_starts}" if n_starts > 1
                              else "", **options)

    return best_of_starts(n_starts, start, run)


def drop_empty_rows(X: np.ndarray, owner: str, sample_weight=None) -> tuple:
    """(X without its all-NaN rows, their sample weights, the number dropped),
    warning when some are."""
    empty = np.all(np.isnan(X), axis=1)
    n_dropped = warn_empty_rows(int(empty.sum()), owner)
    return (X[~empty], None if sample_weight is None else sample_weight[~empty],
            n_dropped)


def warn_empty_rows(n_dropped: int, owner: str) -> int:
    """Warn that ``n_dropped`` rows with every coordinate missing are left out."""
    if n_dropped:
        warnings.warn(f"{owner}: {n_dropped} row(s) with every coordinate missing carry "
                      "no information and were dropped (n_rows_dropped_).", UserWarning,
                      stacklevel=4)
    return n_dropped


# --- chunked sources (memmap, h5py, zarr, Dask) with NaN --------------------------------

def _nan_summary(rows: np.ndarray, start: int, shared: Any) -> tuple:
    """What validation needs of a block with missing entries: the first infinite
    entry (NaN is allowed), the column minima and maxima of the observed entries,
    their column sums and counts (for the start's column means), the number of
    rows with every entry missing and whether any entry is missing."""
    rows = np.asarray(rows, dtype=np.float64)
    nan = np.isnan(rows)
    inf = np.isinf(rows)
    if inf.any():
        i, j = np.argwhere(inf)[0]
        return (int(i), int(j), float(rows[i, j])), None, None, None, None, 0, True
    observed = ~nan
    # a column missing in the whole block: +inf / -inf, which the running min / max
    # of check_blocks ignore
    lo = np.where(observed, rows, np.inf).min(axis=0)
    hi = np.where(observed, rows, -np.inf).max(axis=0)
    return (None, lo, hi, np.where(observed, rows, 0.0).sum(axis=0), observed.sum(axis=0),
            int(np.all(nan, axis=1).sum()), bool(nan.any()))


class _TakesNaN:
    """A source whose validation accepts NaN (missing entries); records
    ``has_nan``, ``n_empty_rows``, ``column_means`` and ``column_counts`` (of the
    observed entries)."""

    def _validate(self) -> None:
        summaries = list(self.map_blocks(_nan_summary, None))
        starts = [start for start, _ in self.block_bounds()]
        check_blocks(zip(starts, [s[:3] for s in summaries]), self.shape[1],
                     name=self._name, owner=self._owner)
        sums = np.sum([s[3] for s in summaries], axis=0)
        counts = np.sum([s[4] for s in summaries], axis=0)
        self.has_nan = any(s[6] for s in summaries)
        self.n_empty_rows = int(sum(s[5] for s in summaries))
        self.column_means = sums / np.maximum(counts, 1)
        self.column_counts = counts


class _ChunkedWithNaN(_TakesNaN, ChunkedSource):
    pass


def as_source_with_nan(X: Any, *, name: str = "X", owner: str = "",
                       n_features: Optional[int] = None) -> ChunkedSource:
    """A chunked input (see :func:`emcore._input.is_chunked`) wrapped as
    :func:`emcore._input.as_source` does, validated with NaN allowed."""
    from emcore._input import _is_dask
    from emcore.distributed import DaskSource, active_client
    if isinstance(X, ChunkedSource):
        X = X._data
    if _is_dask(X) and active_client() is not None:
        cls = type("_DaskWithNaN", (_TakesNaN, DaskSource), {})
        return cls(X, name=name, owner=owner, n_features=n_features)
    return _ChunkedWithNaN(X, name=name, owner=owner, n_features=n_features)


class _Filled:
    """Rows of an array-like with NaN read as the given column values (a start's
    view of the data: initialisation reads rows, never writes), optionally only
    the ``columns`` (a boolean mask)."""

    def __init__(self, data: Any, values: np.ndarray, columns: Optional[np.ndarray] = None):
        self._data, self._values, self._columns = data, values, columns
        d = data.shape[1] if columns is None else int(np.sum(columns))
        self.shape, self.dtype = (data.shape[0], d), np.dtype(np.float64)

    def __getitem__(self, key):
        rows = self._data[key]
        if hasattr(rows, "compute"):
            rows = rows.compute()
        rows = np.asarray(rows, dtype=np.float64)
        rows = np.where(np.isnan(rows), self._values, rows)
        return rows if self._columns is None else rows[..., self._columns]


def _column_means(X: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """The (weighted) means of each column's observed entries (without weights the
    same numbers as a one-block source's ``column_means``)."""
    observed = ~np.isnan(X)
    if sample_weight is None:
        summary = _nan_summary(X, 0, None)
        return summary[3] / np.maximum(summary[4], 1)
    return ((np.where(observed, X, 0.0).T @ sample_weight)
            / np.maximum(observed.T @ sample_weight, np.finfo(float).tiny))


def filled_array(X: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """X with each missing entry set to its column's (weighted) mean of the observed
    entries (a start's view; without weights the same numbers as a one-block
    source's :func:`filled_source`)."""
    return np.where(np.isnan(X), _column_means(X, sample_weight), X)


def _nearest_observed(rows: np.ndarray, start: int, means: np.ndarray) -> tuple:
    """Per column, (distance, value) of the observed entry of ``rows`` nearest
    ``means`` (the lower value on a tie); (inf, inf) for a column with none."""
    rows = np.asarray(rows, dtype=np.float64)
    dist = np.where(np.isnan(rows), np.inf, np.abs(rows - means))
    best = dist.min(axis=0) if rows.shape[0] else np.full(rows.shape[1], np.inf)
    value = np.where(dist == best, rows, np.inf)
    return best, (value.min(axis=0) if rows.shape[0] else best.copy())


def _closer(a: tuple, b: tuple) -> tuple:
    """The nearer of two (distance, value) per column (the lower value on a tie):
    the same answer for any grouping of the rows into blocks."""
    better = (b[0] < a[0]) | ((b[0] == a[0]) & (b[1] < a[1]))
    return np.where(better, b[0], a[0]), np.where(better, b[1], a[1])


def observed_fill_values(X: Any, sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """Per column, the observed entry nearest the column's (weighted) mean of its
    observed entries, the lower on a tie: a value the column holds, so in any
    family's support (an integer code stays a code); NaN for a column with no
    observed entry. X in memory, or a source with NaN (a pass over its blocks,
    unweighted: its ``column_means``)."""
    if isinstance(X, np.ndarray):
        found = _nearest_observed(X, 0, _column_means(X, sample_weight))
    else:
        found = None
        for part in X.map_blocks(_nearest_observed, X.column_means):
            found = part if found is None else _closer(found, part)
    return np.where(np.isfinite(found[1]), found[1], np.nan)


def filled_source(source: ChunkedSource, values: Optional[np.ndarray] = None,
                  columns: Optional[np.ndarray] = None) -> Any:
    """The source with each missing entry read as ``values[j]`` (default: its
    column's mean), only the ``columns`` (a boolean mask) if given: what the
    initialisation and the support check see. A Dask array gets a lazily filled
    array."""
    values = source.column_means if values is None else values
    data = source._data
    if hasattr(data, "map_blocks") and hasattr(data, "chunks"):      # dask
        import dask.array as da
        from emcore._input import as_source
        filled = da.where(da.isnan(data), values, data)
        if columns is not None:
            filled = filled[:, np.flatnonzero(columns)]
        return as_source(filled, n_features=filled.shape[1])
    return ChunkedSource(_Filled(data, values, columns), block_rows=source.block_rows)


# --- product-form families (Family.supports_missing) -------------------------------------
# docs/missing_values.md#product-form-families: the latent variable is z alone; the
# model of a row's observed entries is the product of their factors, so a missing
# entry's term is dropped from the log-density and from its coordinate's statistics.

def check_supports_missing(family, name: Any, owner: str, *,
                           parameter: str = "missing",
                           state: str = "is 'marginalize'") -> None:
    """Raise the ValueError for a family that cannot marginalise NaN entries
    (``Family.supports_missing`` False), naming the family: one message for every
    estimator and method that meets missing values."""
    if not getattr(family, "supports_missing", False):
        which, hint = f"family {name!r}", ""
        if name == "gaussian":           # the Gaussian family: by covariance type
            which += f" with covariance_type={family.covariance_type!r}"
            hint = (" Use covariance_type 'diag' or 'spherical' (independent "
                    "coordinates), or GaussianMixture / MixtureModel(family="
                    "'gaussian') with missing='marginalize', which integrate "
                    "correlated missing coordinates out exactly.")
        raise ValueError(f"The '{parameter}' parameter of {owner} {state}, but {which} "
                         "does not support missing values "
                         "(Family.supports_missing is False: its coordinates are not "
                         "independent given the component, or it does not say how to "
                         f"marginalise them).{hint} Otherwise remove the rows with NaN "
                         "or use missing='error'.")


class ObservedRows:
    """X (n, d) with NaN entries, split once for the pass: the complete rows (the
    engine's pass, a compiled kernel when the family has one) and the rows with a
    missing entry (the family's ``log_density_observed`` / ``chunk_stats_observed``),
    with their sample weights. ``drop_empty``: leave out the rows with no observed
    entry (a source's block at fit; in memory they are dropped before)."""

    def __init__(self, X: np.ndarray, sample_weight: Optional[np.ndarray] = None, *,
                 drop_empty: bool = False):
        X = np.ascontiguousarray(X, dtype=np.float64)
        observed = ~np.isnan(X)
        complete = observed.all(axis=1)
        if drop_empty:         # a source's block: rows with no entry are skipped
            kept = observed.any(axis=1)
            if not kept.all():
                X, observed, complete = X[kept], observed[kept], complete[kept]
                sample_weight = None if sample_weight is None else sample_weight[kept]
        self.shape = X.shape
        self.complete_rows = np.flatnonzero(complete)
        self.incomplete_rows = np.flatnonzero(~complete)
        self.complete = np.ascontiguousarray(X[complete])
        self.incomplete = np.ascontiguousarray(X[~complete])
        self.observed = np.ascontiguousarray(observed[~complete])
        sw = sample_weight
        self.complete_weight = None if sw is None else np.ascontiguousarray(sw[complete])
        self.incomplete_weight = None if sw is None else np.ascontiguousarray(sw[~complete])


def _observed_part(rows: ObservedRows, family, rule, log_w: np.ndarray, params, *,
                   chunk_rows: int, with_stats: bool = True,
                   out_log_resp: Optional[np.ndarray] = None,
                   out_row_value: Optional[np.ndarray] = None) -> tuple:
    """The pass over the rows with a missing entry, a chunk at a time (NumPy):
    (stats, resp_sum, totals (4,), observed mass (K, d))."""
    X, observed, sw = rows.incomplete, rows.observed, rows.incomplete_weight
    n, d = X.shape
    k = log_w.shape[0]
    stats = family.empty_stats() if with_stats else None
    resp_sum, totals, mass = np.zeros(k), np.zeros(4), np.zeros((k, d))
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        x, obs = X[start:stop], observed[start:stop]
        row_w = None if sw is None else sw[start:stop]
        log_joint = np.asarray(family.log_density_observed(x, obs, params),
                               dtype=np.float64) + log_w
        try:
            log_resp, resp, row_value, chunk_totals = rule.posterior(log_joint, row_w,
                                                                     start=start)
        except ValueError as exc:
            raise ValueError(f"in the rows with missing entries: {exc}") from None
        totals += chunk_totals
        if out_log_resp is not None:
            out_log_resp[rows.incomplete_rows[start:stop]] = log_resp
        if out_row_value is not None:
            out_row_value[rows.incomplete_rows[start:stop]] = row_value
        if row_w is not None:
            resp = resp * row_w[:, None]
        resp_sum += resp.sum(axis=0)
        mass += resp.T @ obs.astype(np.float64)
        if with_stats:
            stats = family.merge_stats(stats, family.chunk_stats_observed(x, obs, resp))
    return stats, resp_sum, totals, mass


def observed_pass(rows: ObservedRows, family, rule, weights: np.ndarray, params, *,
                  n_jobs: Optional[int] = 1, chunk_rows: Optional[int] = None,
                  with_stats: bool = True, out_log_resp: Optional[np.ndarray] = None,
                  out_row_value: Optional[np.ndarray] = None) -> tuple:
    """One E-step over ``rows``: the complete rows by the engine's pass, the others by
    the family's observed-entry methods, merged (complete rows first).
    Returns (PassResult, observed mass (K, d): sum_i w_i q_ik [j observed in i])."""
    from emcore.engine import chunk_rows_for, data_pass
    d = rows.shape[1]
    chunk_rows = chunk_rows or chunk_rows_for(d)
    k = np.shape(weights)[0]
    stats = family.empty_stats() if with_stats else None
    resp_sum, totals, mass = np.zeros(k), np.zeros(4), np.zeros((k, d))
    if rows.complete.shape[0]:
        n_c = rows.complete.shape[0]
        lr = None if out_log_resp is None else np.empty((n_c, k))
        rv = None if out_row_value is None else np.empty(n_c)
        res = data_pass(rows.complete, family, rule, weights, params, n_jobs=n_jobs,
                        with_stats=with_stats, sample_weight=rows.complete_weight,
                        out_log_resp=lr, out_row_value=rv, chunk_rows=chunk_rows)
        if lr is not None:
            out_log_resp[rows.complete_rows] = lr
        if rv is not None:
            out_row_value[rows.complete_rows] = rv
        stats, resp_sum = res.stats, res.resp_sum.copy()
        totals += (res.value, res.expected_log_joint, res.entropy, res.magnitude)
        mass += res.resp_sum[:, None]
    if rows.incomplete.shape[0]:
        part = _observed_part(rows, family, rule, _log_weights(weights), params,
                              chunk_rows=chunk_rows, with_stats=with_stats,
                              out_log_resp=out_log_resp, out_row_value=out_row_value)
        if with_stats:
            stats = family.merge_stats(stats, part[0])
        resp_sum += part[1]
        totals += part[2]
        mass += part[3]
    return PassResult(stats, resp_sum, float(totals[0]), float(totals[1]),
                      float(totals[2]), float(totals[3])), mass


def _observed_rows_block(rows: np.ndarray, start: int, shared: tuple, *outputs) -> None:
    """:func:`observed_pass` without statistics over one block of a source, writing
    the block's slices of the per-row outputs (what ``map_blocks`` maps)."""
    family, rule, weights, params, n_jobs = shared
    observed_pass(ObservedRows(rows), family, rule, weights, params, n_jobs=n_jobs,
                  with_stats=False, out_row_value=outputs[0],
                  out_log_resp=outputs[1] if len(outputs) > 1 else None)


def observed_rows_pass(X: Any, family, rule, weights: np.ndarray, params, *,
                       log_resp: bool = False, n_jobs: Optional[int] = 1) -> tuple:
    """(row values (n,), log responsibilities (n, K) or None) of a product-form
    family at fixed parameters: :func:`observed_pass` over in-memory X, or over a
    source with NaN a block at a time into in-memory outputs (a row with no entry:
    log sum_k w_k and the weights as its posterior)."""
    n, k = X.shape[0], np.shape(weights)[0]
    row_value = np.empty(n)
    out_log_resp = np.empty((n, k)) if log_resp else None
    if isinstance(X, np.ndarray):
        observed_pass(ObservedRows(X), family, rule, weights, params, n_jobs=n_jobs,
                      with_stats=False, out_log_resp=out_log_resp, out_row_value=row_value)
        return row_value, out_log_resp
    outputs = (row_value,) if out_log_resp is None else (row_value, out_log_resp)
    for _ in X.map_blocks(_observed_rows_block,
                          (family, rule, np.asarray(weights, dtype=np.float64), params,
                           n_jobs), row_outputs=outputs):
        pass
    return row_value, out_log_resp


class ObservedMixture(MixtureStructure):
    """The independent mixture over rows with missing entries for a product-form
    family (``Family.supports_missing``): the engine's loop with
    :func:`observed_pass` (docs/missing_values.md#product-form-families).

    Parameters
    ----------
    n_components : int
    concentration : array of shape (n_components,), optional
        Dirichlet prior on the weights (MAP), as :class:`MixtureStructure`'s.
    fixed : bool, default False
        Keep the weights as given (a family with ``fixed_weights``).
    feature_names : sequence of str, optional
        For the error naming a coordinate a component never observes.
    """

    unit = "row with missing entries"

    def __init__(self, n_components: int, *, concentration: Optional[np.ndarray] = None,
                 fixed: bool = False, feature_names=None,
                 sample_weight: Optional[np.ndarray] = None):
        super().__init__(n_components, concentration=concentration, fixed=fixed)
        self.feature_names = feature_names
        self.sample_weight = sample_weight

    def data_pass(self, X: Any, family, rule, weights: np.ndarray, params, *,
                  n_jobs: Optional[int] = 1, chunk_rows: Optional[int] = None,
                  lengths: Any = None) -> PassResult:
        if isinstance(X, ObservedRows):
            result, mass = observed_pass(X, family, rule, weights, params, n_jobs=n_jobs,
                                         chunk_rows=chunk_rows)
        else:
            # a source with NaN (memmap, h5py, zarr, Dask): the same pass on each
            # block's rows (on a cluster, where the block lives), merged in block
            # order (docs/missing_values.md#chunked)
            shared = (family, rule, np.asarray(weights, dtype=np.float64), params,
                      n_jobs, chunk_rows)
            result = mass = None
            for part, part_mass in X.map_blocks(_observed_block, shared,
                                                row_inputs=(self.sample_weight,)):
                if result is None:
                    result, mass = part, np.array(part_mass)
                    continue
                result = PassResult(
                    family.merge_stats(result.stats, part.stats),
                    result.resp_sum + part.resp_sum, result.value + part.value,
                    result.expected_log_joint + part.expected_log_joint,
                    result.entropy + part.entropy, result.magnitude + part.magnitude)
                mass += part_mass
        _check_observed(result.resp_sum, mass, self.feature_names)
        return result

    def summation_depth(self, X: Any, chunk_rows: int, lengths: Any = None) -> int:
        # the complete rows' total (the engine's depth) plus the incomplete rows'
        # (rows within a chunk, then chunks in sequence), added once; a source:
        # that for a whole block (either kind of row up to every row of it), then
        # one addition per block
        if isinstance(X, ObservedRows):
            n_c, n_m = X.complete.shape[0], X.incomplete.shape[0]
        else:
            n_c = n_m = min(X.shape[0], X.block_rows)
        depth_m = min(n_m, chunk_rows) + -(-n_m // chunk_rows)
        depth = max(summation_depth(n_c, chunk_rows) if n_c else 0, depth_m) + 1
        return depth if isinstance(X, ObservedRows) else depth + len(X.block_bounds())


def _observed_block(rows: np.ndarray, start: int, shared: tuple,
                    sample_weight: Optional[np.ndarray] = None) -> tuple:
    """:func:`observed_pass` over one block of a source, its rows with no entry left
    out (what ``map_blocks`` maps; runs on a Dask worker for a DaskSource):
    (PassResult, observed mass)."""
    family, rule, weights, params, n_jobs, chunk_rows = shared
    rows = ObservedRows(rows, sample_weight, drop_empty=True)
    try:
        return observed_pass(rows, family, rule, weights, params, n_jobs=n_jobs,
                             chunk_rows=chunk_rows)
    except DegenerateComponentError as exc:
        raise ValueError(f"{exc} (row numbers from row {start})") from None


def fit_observed_starts(estimator, rows: Any, family,
                        start: Callable[[], tuple], n_starts: int, *,
                        feature_names=None, sample_weight: Optional[np.ndarray] = None,
                        weight_concentration: Optional[np.ndarray] = None) -> FitResult:
    """EM for the observed-data likelihood of a product-form family from
    ``n_starts`` starts drawn by ``start()``: the engine's :func:`run_em` with the
    :class:`ObservedMixture` structure; the best objective. ``rows``: an
    :class:`ObservedRows` (its own sample weights), or a source with NaN
    (:func:`as_source_with_nan`) with ``sample_weight``."""
    from emcore.registry import get_registry
    started = []

    def run(weights, params):
        started.append(None)
        structure = ObservedMixture(
            family.n_components, fixed=family.fixed_weights, feature_names=feature_names,
            sample_weight=None if isinstance(rows, ObservedRows) else sample_weight,
            concentration=(None if weight_concentration is None
                           else np.asarray(weight_concentration, dtype=np.float64)))
        rule = get_registry().posterior_rule("soft").factory()
        return run_em(rows, family, rule, weights, params, max_iter=estimator.max_iter,
                      tol=estimator.tol, n_jobs=estimator.n_jobs,
                      verbose=estimator.verbose, callback=estimator.callback,
                      structure=structure, accelerate=estimator.accelerate,
                      label=f"start {len(started)}/{n_starts}" if n_starts > 1 else "")

    return best_of_starts(n_starts, start, run)


def observed_fill(X: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """X with each missing entry set to its column's :func:`observed_fill_values`
    (a start's view only). A column with no observed entry stays NaN: a
    ValueError for the caller."""
    values = observed_fill_values(X, sample_weight)
    return np.where(np.isnan(X), values, X)


def check_input_with_nan(X: Any, owner: str, n_features: Optional[int] = None) -> np.ndarray:
    """In-memory X as :func:`emcore._input.check_input` gives it, NaN kept (every
    other check unchanged: infinities, shape, n_features)."""
    from emcore._input import check_input
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        return check_input(X, owner=owner, n_features=n_features)
    nan = np.isnan(arr)
    if not nan.any():
        return check_input(X, owner=owner, n_features=n_features)
    checked = check_input(np.where(nan, 0.0, arr), owner=owner, n_features=n_features)
    checked[nan] = np.nan
    return checked


class MaskedFamily(Family):
    """A product-form family (``supports_missing``) seen by code that only calls
    ``log_density`` and ``chunk_stats`` (a hidden Markov model's forward-backward
    pass): rows with NaN go to the family's ``log_density_observed`` /
    ``chunk_stats_observed``, complete rows to its own methods; everything else is
    the family's (docs/missing_values.md#product-form-families). No compiled kernel
    (the pass then runs the family's methods on each group of rows)."""

    def __init__(self, family: Family):
        super().__init__(family.n_components, family.n_features)
        self.family = family
        for name in ("fixed_weights", "generalized_m_step", "init_smoothing",
                     "stats_need_params"):
            setattr(self, name, getattr(family, name))
        self.supports_missing = True

    def log_density(self, X: np.ndarray, params) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        observed = ~np.isnan(X)
        complete = observed.all(axis=1)
        if complete.all():
            return self.family.log_density(X, params)
        out = np.empty((X.shape[0], self.n_components))
        if complete.any():
            out[complete] = self.family.log_density(np.ascontiguousarray(X[complete]),
                                                    params)
        out[~complete] = self.family.log_density_observed(X[~complete],
                                                          observed[~complete], params)
        return out

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray, params=None) -> Any:
        from emcore.plugin_api import family_chunk_stats
        X = np.asarray(X, dtype=np.float64)
        observed = ~np.isnan(X)
        complete = observed.all(axis=1)
        stats = family_chunk_stats(self.family, np.ascontiguousarray(X[complete]),
                                   weights[complete], params)
        if complete.all():
            return stats
        return self.family.merge_stats(stats, self.family.chunk_stats_observed(
            X[~complete], observed[~complete], weights[~complete]))

    # the family's own, unchanged
    def log_density_observed(self, X, observed, params):
        return self.family.log_density_observed(X, observed, params)

    def chunk_stats_observed(self, X, observed, weights):
        return self.family.chunk_stats_observed(X, observed, weights)

    def marginal(self, columns, params):
        return self.family.marginal(columns, params)

    def empty_stats(self):
        return self.family.empty_stats()

    def merge_stats(self, a, b):
        return self.family.merge_stats(a, b)

    def scale_stats(self, stats, factor):
        return self.family.scale_stats(stats, factor)

    def m_step(self, stats, previous):
        return self.family.m_step(stats, previous)

    def expected_log_likelihood(self, stats, params):
        return self.family.expected_log_likelihood(stats, params)

    def m_step_penalty(self, stats, params):
        return self.family.m_step_penalty(stats, params)

    def initial_params(self, X, rng, sample_weight=None, resp=None):
        return self.family.initial_params(X, rng, sample_weight, resp)

    def seeding_weights(self, X, sample_weight=None):
        return self.family.seeding_weights(X, sample_weight)

    def check_data(self, X, *, owner):
        return self.family.check_data(X, owner=owner)

    def validate_params(self, params):
        return self.family.validate_params(params)

    def n_parameters(self):
        return self.family.n_parameters()

    def sample(self, params, counts, rng):
        return self.family.sample(params, counts, rng)

    def rounding_amplification(self, params):
        return self.family.rounding_amplification(params)

    def log_prior(self, params):
        return self.family.log_prior(params)

    def parameter_rounding(self, stats, params):
        return self.family.parameter_rounding(stats, params)

    def log_density_rounding(self, stats, params):
        return self.family.log_density_rounding(stats, params)

    def expected_log_likelihood_magnitude(self, stats, params):
        return self.family.expected_log_likelihood_magnitude(stats, params)

    def statistics_rounding(self, stats, params, new_params):
        return self.family.statistics_rounding(stats, params, new_params)

    def to_unconstrained(self, params):
        return self.family.to_unconstrained(params)

    def from_unconstrained(self, coords):
        return self.family.from_unconstrained(coords)

    def random_params(self, rng, *, nearly_degenerate=False):
        return self.family.random_params(rng, nearly_degenerate=nearly_degenerate)

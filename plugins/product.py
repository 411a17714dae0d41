"""The product family (``product``): registered families over groups of columns.

Component k models the columns of X in groups, independently given k:

    log p(x | z = k) = sum_g log p_g(x[cols_g] | z = k),

each group g by a registered family (Gaussian on the continuous columns,
categorical on the codes, Poisson on the counts, ...): how mixed data types are
modelled. Everything else is the parts' too: the statistics are the tuple of the
parts' statistics, the M-step maximises each part's own term (they share no
parameter), the expected log-likelihood, penalties, log priors and parameter
counts add, sampling draws each part's columns from the same component.

The parts are given as ``family_options={"parts": [(name, columns, options),
...]}``: a registered family name, the columns of X it models (every column in
exactly one part) and the keyword options of its factory (optional)::

    MixtureModel(3, family="product", family_options={"parts": [
        ("gaussian", [0, 1, 2], {"covariance_type": "diag"}),
        ("poisson", [3])]})

Parameters are the parts' parameters under ``"part{g}.{name}"`` (``part0.means``,
``part1.rates``). Each part's support (its ``support:*`` capability) is checked
on its own columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from emcore import DegenerateComponentError, registered_family
from emcore.plugin_api import (Family, FamilyRecord, Params, check_support, family_chunk_stats,
                               hookimpl, support_of)

__all__ = ["ProductFamily"]

_OWNER = "ProductFamily"


def _columns(value: Any, g: int, d: int) -> np.ndarray:
    """Part g's columns as a sorted-as-given 1-D int array in [0, d), or a ValueError."""
    cols = np.atleast_1d(np.asarray(value))
    if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or \
            np.any(cols < 0) or np.any(cols >= d) or np.unique(cols).size != cols.size:
        raise ValueError(f"The 'parts' parameter of {_OWNER} must give each part distinct "
                         f"column indices in [0, {d - 1}] (n_features={d}). Got columns "
                         f"{value!r} in part {g} instead.")
    return cols.astype(np.intp)


def _parse_parts(parts: Any, n_components: int, d: int) -> list:
    """[(name, columns, family, support)] of a ``parts`` specification, validated."""
    form = "a non-empty list of (family name, columns) or (family name, columns, options)"
    if parts is None or isinstance(parts, (str, bytes, Mapping)) or \
            not isinstance(parts, Sequence) or not parts:
        raise ValueError(f"The 'parts' parameter of {_OWNER} must be {form}. Got "
                         f"{parts!r} instead.")
    out, owner_of = [], {}
    for g, part in enumerate(parts):
        if isinstance(part, (str, bytes)) or not isinstance(part, Sequence) or \
                len(part) not in (2, 3) or not isinstance(part[0], str):
            raise ValueError(f"The 'parts' parameter of {_OWNER} must be {form}. Got "
                             f"{part!r} in part {g} instead.")
        name, cols = part[0], _columns(part[1], g, d)
        options = part[2] if len(part) == 3 else None
        if options is None:
            options = {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"The 'parts' parameter of {_OWNER} must give each part's "
                             f"options as a mapping of keyword arguments. Got {options!r} "
                             f"in part {g} instead.")
        for j in cols:
            if int(j) in owner_of:
                raise ValueError(f"The 'parts' parameter of {_OWNER} must put each column "
                                 f"in one part. Got column {int(j)} in parts "
                                 f"{owner_of[int(j)]} and {g} instead.")
            owner_of[int(j)] = g
        try:
            record = registered_family(name)
        except ValueError as exc:
            raise ValueError(f"The 'parts' parameter of {_OWNER}, part {g}: {exc}") from None
        try:
            family = record.factory(n_components, cols.size, **dict(options))
        except TypeError as exc:
            raise ValueError(f"The 'parts' parameter of {_OWNER}: the options of part {g} "
                             f"do not fit family {name!r}: {exc}") from None
        out.append((name, cols, family, support_of(record.capabilities)))
    missing = sorted(set(range(d)) - set(owner_of))
    if missing:
        raise ValueError(f"The 'parts' parameter of {_OWNER} must put every column of X "
                         f"(n_features={d}) in a part. Got no part for column"
                         f"{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(str, missing))} instead.")
    return out


class _Columns:
    """Columns ``cols`` of a chunked source, read a block of rows at a time."""

    def __init__(self, source: Any, cols: np.ndarray):
        self.source, self.cols = source, cols
        self.shape = (source.shape[0], cols.size)
        self.block_rows = getattr(source, "block_rows", None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = np.asarray(self.source[key], dtype=np.float64)
        return np.ascontiguousarray(rows[..., self.cols])


class ProductFamily(Family):
    """Independent registered families over disjoint groups of columns.

    Parameters
    ----------
    n_components, n_features : int
        K and d (the columns of all parts together).
    parts : sequence of (str, sequence of int[, mapping])
        Per part: a registered family name, its columns of X (each column of X in
        exactly one part; any order: the part sees them in the order given) and
        the keyword options of its factory.
    """

    def __init__(self, n_components: int, n_features: int, *, parts: Any = None):
        super().__init__(n_components, n_features)
        self.parts = parts
        self._parts = _parse_parts(parts, self.n_components, self.n_features)
        # the model fixes the mixture weights if a part's does (k-means)
        self.fixed_weights = any(f.fixed_weights for _, _, f, _ in self._parts)
        # the default start's smoothing (without a given partition): what every part needs
        self.init_smoothing = max(float(f.init_smoothing) for _, _, f, _ in self._parts)
        # a part whose statistics depend on the pass's parameters (Student t) gets them
        self.stats_need_params = any(f.stats_need_params for _, _, f, _ in self._parts)
        # missing entries are marginalised when every part marginalises its own
        # (the parts are independent given z: docs/missing_values.md#product-form-families)
        self.supports_missing = all(f.supports_missing for _, _, f, _ in self._parts)

    # --- the parts' views --------------------------------------------------------------
    def _block(self, X: Any, cols: np.ndarray) -> Any:
        if isinstance(X, np.ndarray):
            return np.ascontiguousarray(X[:, cols], dtype=np.float64)
        return _Columns(X, cols)

    def _split(self, params: Params) -> list:
        """Each part's parameters (the keys ``part{g}.*`` without the prefix)."""
        out = [{} for _ in self._parts]
        for key, value in params.items():
            head, _, rest = key.partition(".")
            g = head[4:] if head.startswith("part") else ""
            if not g.isdigit() or int(g) >= len(self._parts) or not rest:
                raise ValueError(f"{_OWNER}: parameter {key!r} names no part (the keys are "
                                 f"'part<g>.<name>', g < {len(self._parts)})")
            out[int(g)][rest] = value
        return out

    @staticmethod
    def _join(per_part: list) -> dict:
        return {f"part{g}.{key}": value for g, p in enumerate(per_part)
                for key, value in p.items()}

    def _check_support(self, X: np.ndarray) -> None:
        """Each part's columns in the part's declared support (ValueError naming both)."""
        for g, (name, cols, _, support) in enumerate(self._parts):
            try:
                check_support(X[:, cols], support, family=name, owner=_OWNER)
            except ValueError as exc:
                raise ValueError(f"part {g} models columns {cols.tolist()} of X (the "
                                 f"'column' below counts within them): {exc}") from None

    # --- E-step ---------------------------------------------------------------------------
    def log_density(self, X: np.ndarray, params: Params) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        self._check_support(X)
        out = np.zeros((X.shape[0], self.n_components))
        for (_, cols, fam, _), p in zip(self._parts, self._split(params)):
            out += fam.log_density(self._block(X, cols), p)
        return out

    # --- missing entries (supports_missing when every part has it) -----------------------
    def log_density_observed(self, X: np.ndarray, observed: np.ndarray,
                             params: Params) -> np.ndarray:
        """The sum of the parts' ``log_density_observed`` on their columns."""
        self._require_missing("log_density_observed")
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros((X.shape[0], self.n_components))
        for (_, cols, fam, _), p in zip(self._parts, self._split(params)):
            out += fam.log_density_observed(X[:, cols], observed[:, cols], p)
        return out

    def chunk_stats_observed(self, X: np.ndarray, observed: np.ndarray,
                             weights: np.ndarray) -> tuple:
        """Each part's ``chunk_stats_observed`` on its columns."""
        self._require_missing("chunk_stats_observed")
        X = np.asarray(X, dtype=np.float64)
        return tuple(fam.chunk_stats_observed(X[:, cols], observed[:, cols], weights)
                     for _, cols, fam, _ in self._parts)

    def marginal(self, columns: Any, params: Params) -> tuple:
        """The product of the parts' marginals on the ``columns`` they hold (a part
        holding none of them is left out), columns renumbered in the given order."""
        self._require_missing("marginal")
        cols = np.atleast_1d(np.asarray(columns))
        if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or \
                np.any(cols < 0) or np.any(cols >= self.n_features) or \
                np.unique(cols).size != cols.size:
            raise ValueError(f"The 'columns' parameter of {_OWNER}.marginal must be "
                             f"distinct column indices in [0, {self.n_features - 1}]. Got "
                             f"{columns!r} instead.")
        position = {int(c): i for i, c in enumerate(cols)}
        parts, per_part = [], []
        for (name, part_cols, fam, _), p in zip(self._parts, self._split(params)):
            kept = [i for i, c in enumerate(part_cols) if int(c) in position]
            if not kept:
                continue
            sub, sub_params = fam.marginal(kept, p)
            parts.append((name, [position[int(part_cols[i])] for i in kept], sub))
            per_part.append(sub_params)
        out = ProductFamily.__new__(ProductFamily)
        Family.__init__(out, self.n_components, cols.size)
        out.parts = [(name, c) for name, c, _ in parts]
        out._parts = [(name, np.asarray(c, dtype=np.intp), sub, None)
                      for name, c, sub in parts]
        out.fixed_weights = self.fixed_weights
        out.init_smoothing = self.init_smoothing
        out.stats_need_params = any(f.stats_need_params for _, _, f, _ in out._parts)
        out.supports_missing = True
        return out, self._join(per_part)

    def _require_missing(self, what: str) -> None:
        if not self.supports_missing:
            names = [name for name, _, f, _ in self._parts if not f.supports_missing]
            raise NotImplementedError(f"{_OWNER}.{what}: part(s) of family "
                                      f"{', '.join(map(repr, names))} do not support "
                                      "missing values")

    # --- statistics -----------------------------------------------------------------------
    def empty_stats(self) -> tuple:
        return tuple(fam.empty_stats() for _, _, fam, _ in self._parts)

    def chunk_stats(self, X: np.ndarray, weights: np.ndarray,
                    params: Optional[Params] = None) -> tuple:
        X = np.asarray(X, dtype=np.float64)
        per_part = ([None] * len(self._parts) if params is None else self._split(params))
        return tuple(family_chunk_stats(fam, self._block(X, cols), weights, p)
                     for (_, cols, fam, _), p in zip(self._parts, per_part))

    def merge_stats(self, a: tuple, b: tuple) -> tuple:
        return tuple(fam.merge_stats(sa, sb)
                     for (_, _, fam, _), sa, sb in zip(self._parts, a, b))

    def scale_stats(self, stats: tuple, factor: float) -> tuple:
        return tuple(fam.scale_stats(s, factor) for (_, _, fam, _), s in zip(self._parts, stats))

    # --- M-step -----------------------------------------------------------------------------
    def m_step(self, stats: tuple, previous: Optional[Params]) -> dict:
        prev = [None] * len(self._parts) if previous is None else self._split(previous)
        out = []
        for g, ((name, _, fam, _), s, p) in enumerate(zip(self._parts, stats, prev)):
            try:
                out.append(fam.m_step(s, p))
            except DegenerateComponentError as exc:
                raise DegenerateComponentError(f"part {g} (family {name!r}): {exc}",
                                               exc.component) from exc
        return self._join(out)

    def _sum(self, method: str, stats: tuple, params: Params) -> float:
        return float(sum(getattr(fam, method)(s, p) for (_, _, fam, _), s, p
                         in zip(self._parts, stats, self._split(params))))

    def expected_log_likelihood(self, stats: tuple, params: Params) -> float:
        return self._sum("expected_log_likelihood", stats, params)

    def m_step_penalty(self, stats: tuple, params: Params) -> float:
        return self._sum("m_step_penalty", stats, params)

    def parameter_rounding(self, stats: tuple, params: Params) -> float:
        return self._sum("parameter_rounding", stats, params)

    def log_density_rounding(self, stats: tuple, params: Params) -> float:
        return self._sum("log_density_rounding", stats, params)

    def expected_log_likelihood_magnitude(self, stats: tuple, params: Params) -> float:
        return self._sum("expected_log_likelihood_magnitude", stats, params)

    def statistics_rounding(self, stats: tuple, params: Params, new_params: Params) -> float:
        return float(sum(fam.statistics_rounding(s, p, q) for (_, _, fam, _), s, p, q
                         in zip(self._parts, stats, self._split(params),
                                self._split(new_params))))

    def rounding_amplification(self, params: Params) -> float:
        """The largest of the parts' (each part's log-density carries its own
        amplified error; adding the parts' values adds one rounding per part)."""
        return float(max(fam.rounding_amplification(p) for (_, _, fam, _), p
                         in zip(self._parts, self._split(params)))) + len(self._parts) - 1

    def log_prior(self, params: Params) -> tuple:
        value = magnitude = 0.0
        for (_, _, fam, _), p in zip(self._parts, self._split(params)):
            v, m = fam.log_prior(p)
            value, magnitude = value + float(v), magnitude + float(m)
        return value, magnitude

    # --- starting values and the parameter space ---------------------------------------
    def initial_params(self, X: Any, rng: np.random.Generator,
                       sample_weight: Optional[np.ndarray] = None, resp: Any = None) -> dict:
        """Each part's own ``initial_params`` on its columns, from one starting partition
        of the whole rows (``resp``, which the estimators always give), so that the
        parts start from the same components. Without ``resp``, the default
        (:meth:`Family.initial_params`: one M-step on the smoothed nearest-seed
        partition of all columns, smoothed by the largest of the parts'
        ``init_smoothing``)."""
        if isinstance(X, np.ndarray):
            self._check_support(X)
        if resp is None:
            return super().initial_params(X, rng, sample_weight)
        return self._join([fam.initial_params(self._block(X, cols), rng, sample_weight,
                                              resp=resp)
                           for _, cols, fam, _ in self._parts])

    def validate_params(self, params: Params) -> None:
        """Each part's ``validate_params`` on its ``part{g}.*`` parameters."""
        for g, ((name, _, fam, _), p) in enumerate(zip(self._parts, self._split(params))):
            try:
                fam.validate_params(p)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"part {g} (family {name!r}): {exc}") from None

    # --- size, sampling ----------------------------------------------------------------------
    def n_parameters(self) -> int:
        """The sum of the parts' parameter counts."""
        return int(sum(fam.n_parameters() for _, _, fam, _ in self._parts))

    def sample(self, params: Params, counts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """Every part draws ``counts[k]`` rows of component k on its columns."""
        counts = np.asarray(counts, dtype=np.intp)
        out = np.empty((int(counts.sum()), self.n_features))
        for (_, cols, fam, _), p in zip(self._parts, self._split(params)):
            out[:, cols] = fam.sample(p, counts, rng)
        return out

    def random_params(self, rng: np.random.Generator, *,
                      nearly_degenerate: bool = False) -> dict:
        """Each part's ``random_params``."""
        return self._join([fam.random_params(rng, nearly_degenerate=nearly_degenerate)
                           for _, _, fam, _ in self._parts])

    def __repr__(self) -> str:
        return (f"{_OWNER}(n_components={self.n_components}, n_features={self.n_features}, "
                f"parts={self.parts!r})")


@hookimpl
def emcore_register_families():
    return [FamilyRecord(
        name="product", factory=ProductFamily, capabilities=frozenset({"sampling"}),
        description="independent registered families over column groups (mixed data "
                    "types): family_options={'parts': [(name, columns, options), ...]}")]

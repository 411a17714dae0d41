"""Constraints on the posterior, for posterior regularization (PR).

PR (Graca, Ganchev & Taskar 2007; Ganchev et al., JMLR 2010) replaces the
E-step's exact posterior by its KL projection onto a set of distributions
that satisfy expectation constraints,

    Q = { q : E_q[phi(x, z)] <= b   (and = b for equalities) },

and EM then keeps J(theta) = loglik(theta) - min_{q in Q} KL(q || p(z | x, theta))
non-decreasing. :class:`Constraints` is what a user writes down; the
``constrained`` posterior rule (``emcore.plugins.constrained``) does the
projection. Pass it as ``posterior=`` to :class:`emcore.GaussianMixture` or
:class:`emcore.MixtureModel`::

    C = emcore.Constraints(proportions={1: (None, 0.3)},     # at most 30% in component 1
                           labels={0: 0, 5: 1})               # row 0 is in 0, row 5 in 1
    gm = emcore.GaussianMixture(2, posterior=C).fit(X)

Four kinds of constraint, all linear in q (sums of per-example features,
so q stays a product over rows; docs/posterior_regularization.md#per-example-features):

* ``phi``, ``b``: general expectation constraints
  sum_i w_i sum_k q_ik phi[i, k, j] <= b[j] (or = b[j]), w_i the sample weights
  (1 without); they couple all rows (corpus level) and are solved in the dual.
* ``proportions``: bounds on the expected share of a component,
  low <= (1/W) sum_i w_i q_ik <= high, W = sum_i w_i; corpus level, in count form.
* ``labels`` and ``forbidden``: row i is (is not) in component k. These are
  masks (q_ik = 0 exactly, log p(x_i, z_i = k) set to -inf), not an infinite
  multiplier.
* ``point_bounds``: low <= q_ik <= high for one row: the projection of that row
  has a closed form (a clipped, rescaled posterior).

Row indices refer to the rows of the X passed to ``fit``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["Constraints", "ResolvedConstraints"]

_OWNER = "emcore.Constraints"


def _bad(name: str, what: str, got: Any) -> ValueError:
    return ValueError(f"The {name!r} argument of {_OWNER} must be {what}. Got {got!r} instead.")


def _is_int(x: Any) -> bool:
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, bool)


def _fraction(value: Any, name: str, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)) \
            or not np.isfinite(value):
        raise _bad(name, f"a finite number or None ({where})", value)
    return float(value)


@dataclass(frozen=True)
class ResolvedConstraints:
    """:class:`Constraints` turned into arrays for n rows, K components and weights.

    The corpus-level constraints are ``sum_i w_i sum_k q_ik phi_ikj <= b_j`` (= for
    ``equality[j]``), their features the columns of ``phi`` (per row) followed by
    those of ``component_phi`` (the same for every row: proportions).
    """
    n_samples: int
    n_components: int
    #: (n, K) bool, False where q_ik must be 0 (labels, forbidden); None: no mask
    allowed: Optional[np.ndarray]
    #: rows with point bounds (sorted), and their (r, K) lower and upper bounds on q
    point_rows: np.ndarray
    point_low: np.ndarray
    point_high: np.ndarray
    #: (n, K, m1) per-row features, or None
    phi: Optional[np.ndarray]
    #: (K, m2) features shared by every row (proportion constraints), or None
    component_phi: Optional[np.ndarray]
    b: np.ndarray             #: (m1 + m2,)
    equality: np.ndarray      #: (m1 + m2,) bool
    names: tuple              #: (m1 + m2,) one readable name per constraint
    point_names: dict         #: {(row, component): name} of the point bounds

    @property
    def n_constraints(self) -> int:
        return int(self.b.shape[0])


class Constraints:
    """Expectation constraints on the posterior q (posterior regularization).

    Every argument is optional; an empty ``Constraints()`` is plain EM. The
    arguments are validated here as far as they can be without the data; row
    and component indices are checked against X and ``n_components`` in ``fit``.

    Parameters
    ----------
    phi : array of shape (n_samples, n_components, n_constraints) or (n_samples, n_components), optional
        Features of general constraints sum_i w_i sum_k q_ik phi[i, k, j] <= b[j]
        (w_i the sample weights, 1 without). A 2-D array is one constraint. For
        ">=" constraints pass -phi and -b.
    b : array of shape (n_constraints,) or float, optional
        Their bounds; required with ``phi``.
    equality : bool or array of bool of shape (n_constraints,), default False
        Which of the ``phi`` constraints are equalities (= b[j]); their
        multipliers are free in sign.
    names : sequence of str, optional
        One name per ``phi`` constraint, used in reports and error messages.
    proportions : mapping {component: (low, high)}, optional
        Bounds on the expected share of each component:
        low <= (1/W) sum_i w_i q_ik <= high, W = sum_i w_i. Either bound may be
        None; low == high is an equality.
    labels : array-like of shape (n_samples,) of int, or mapping {row: component}, optional
        Partial labels: row i is in component ``labels[i]`` (-1 = unlabelled, in
        the array form). Implemented as masks: q_ik = 0 for every other k.
    forbidden : mapping {row: component or sequence of components}, optional
        Row i is in none of these components (masks: q_ik = 0).
    point_bounds : mapping {(row, component): (low, high)}, optional
        low <= q_ik <= high for that row and component (either bound may be None).
        Solved per row in closed form (the posterior of the row, clipped to the
        bounds and rescaled).

    Examples
    --------
    >>> C = emcore.Constraints(proportions={1: (None, 0.3)})   # at most 30% in 1
    >>> gm = emcore.GaussianMixture(2, posterior=C).fit(X)
    """

    def __init__(self, phi: Any = None, b: Any = None, *, equality: Any = False,
                 names: Optional[Sequence[str]] = None,
                 proportions: Optional[Mapping[int, tuple]] = None,
                 labels: Any = None, forbidden: Optional[Mapping[int, Any]] = None,
                 point_bounds: Optional[Mapping[tuple, tuple]] = None):
        self._phi, self._b, self._equality, self._names = _check_features(phi, b, equality, names)
        self._proportions = _check_proportions(proportions)
        self._labels = _check_labels(labels)
        self._forbidden = _check_forbidden(forbidden)
        self._point_bounds = _check_point_bounds(point_bounds)
        self._args = dict(phi=phi, b=b, equality=equality, names=names,
                          proportions=proportions, labels=labels, forbidden=forbidden,
                          point_bounds=point_bounds)

    # --- what the user gave -----------------------------------------------------------
    @property
    def n_samples(self) -> Optional[int]:
        """Rows X must have (from ``phi`` or an array of ``labels``), or None."""
        if self._phi is not None:
            return int(self._phi.shape[0])
        if isinstance(self._labels, np.ndarray):
            return int(self._labels.shape[0])
        return None

    def __repr__(self) -> str:
        shown = []
        for key, value in self._args.items():
            if value is None or (key == "equality" and value is False):
                continue
            if isinstance(value, np.ndarray):
                shown.append(f"{key}=<array of shape {value.shape}>")
            else:
                shown.append(f"{key}={value!r}")
        return f"Constraints({', '.join(shown)})"

    # --- arrays for a fit ---------------------------------------------------------------
    def resolve(self, n_samples: int, n_components: int,
                total_weight: Optional[float] = None) -> ResolvedConstraints:
        """Return the constraints as arrays for ``n_samples`` rows and ``n_components``.

        ``total_weight`` is W = sum of the sample weights (``n_samples`` without
        weights); proportion bounds become count-form constraints
        sum_i w_i q_ik <= W * high. Raises ValueError, naming the argument and
        the row, for indices out of range and for rows whose own constraints
        contradict each other (every component forbidden, a label that is also
        forbidden, point bounds that cannot be met together).
        """
        n, K = int(n_samples), int(n_components)
        W = float(n if total_weight is None else total_weight)
        allowed = self._allowed(n, K)
        b_list, eq_list, names, comp_cols = [], [], [], []
        phi = None
        if self._phi is not None:
            if self._phi.shape[:2] != (n, K):
                raise ValueError(
                    f"The 'phi' argument of {_OWNER} has shape {self._phi.shape}, but the "
                    f"fit has {n} rows and {K} components: its first two axes must be "
                    f"({n}, {K}).")
            phi = self._phi
            b_list.extend(self._b.tolist())
            eq_list.extend(self._equality.tolist())
            names.extend(self._names)
        for k, (lo, hi) in sorted(self._proportions.items()):
            if k >= K:
                raise ValueError(f"The 'proportions' argument of {_OWNER} names component "
                                 f"{k}, but the fit has n_components={K}.")
            if hi == 0.0 or lo == 1.0:
                # a share of exactly 0 (1) is met only by q_ik = 0 (q_ij = 0, j != k) in
                # every row: a mask (docs/posterior_regularization.md#masks), never an
                # infinite multiplier
                allowed = np.ones((n, K), dtype=bool) if allowed is None else allowed
                if hi == 0.0:
                    allowed[:, k] = False
                else:
                    allowed[:, np.arange(K) != k] = False
                if not allowed.any(axis=1).all():
                    row = int(np.flatnonzero(~allowed.any(axis=1))[0])
                    raise ValueError(f"The 'proportions' argument of {_OWNER} (a share of "
                                     f"component {k} of exactly {hi if hi == 0.0 else lo:g})"
                                     f" leaves row {row} no allowed component together "
                                     "with 'labels'/'forbidden'.")
                continue
            col = np.zeros(K)
            col[k] = 1.0
            if lo is not None and lo == hi:
                comp_cols.append(col)
                b_list.append(W * hi)
                eq_list.append(True)
                names.append(f"proportion of component {k} = {hi:g}")
                continue
            if hi is not None:
                comp_cols.append(col)
                b_list.append(W * hi)
                eq_list.append(False)
                names.append(f"proportion of component {k} <= {hi:g}")
            if lo is not None:
                comp_cols.append(-col)
                b_list.append(-W * lo)
                eq_list.append(False)
                names.append(f"proportion of component {k} >= {lo:g}")
        component_phi = np.stack(comp_cols, axis=1) if comp_cols else None
        rows, low, high, point_names = self._points(n, K, allowed)
        return ResolvedConstraints(
            n_samples=n, n_components=K, allowed=allowed, point_rows=rows,
            point_low=low, point_high=high, phi=phi, component_phi=component_phi,
            b=np.asarray(b_list, dtype=np.float64), equality=np.asarray(eq_list, dtype=bool),
            names=tuple(names), point_names=point_names)

    def _allowed(self, n: int, K: int) -> Optional[np.ndarray]:
        if self._labels is None and not self._forbidden:
            return None
        allowed = np.ones((n, K), dtype=bool)
        label_of = {}
        if isinstance(self._labels, np.ndarray):
            if self._labels.shape[0] != n:
                raise ValueError(f"The 'labels' argument of {_OWNER} has "
                                 f"{self._labels.shape[0]} entries, but X has {n} rows.")
            label_of = {int(i): int(c) for i, c in enumerate(self._labels) if c >= 0}
        elif self._labels is not None:
            label_of = dict(self._labels)
        for row, comp in label_of.items():
            _check_row(row, n, "labels")
            if comp >= K:
                raise ValueError(f"The 'labels' argument of {_OWNER} puts row {row} in "
                                 f"component {comp}, but the fit has n_components={K}.")
            allowed[row] = False
            allowed[row, comp] = True
        for row, comps in self._forbidden.items():
            _check_row(row, n, "forbidden")
            for comp in comps:
                if comp >= K:
                    raise ValueError(f"The 'forbidden' argument of {_OWNER} names "
                                     f"component {comp} for row {row}, but the fit has "
                                     f"n_components={K}.")
                if label_of.get(row) == comp:
                    raise ValueError(f"Row {row} is labelled {comp} in 'labels' and "
                                     f"component {comp} is forbidden for it in "
                                     f"'forbidden': the constraints of {_OWNER} "
                                     "contradict each other.")
                allowed[row, comp] = False
            if not allowed[row].any():
                raise ValueError(f"The 'forbidden' argument of {_OWNER} forbids every "
                                 f"component for row {row}: no q satisfies it.")
        return allowed

    def _points(self, n: int, K: int, allowed: Optional[np.ndarray]):
        by_row: dict = {}
        names = {}
        for (row, comp), (lo, hi) in self._point_bounds.items():
            _check_row(row, n, "point_bounds")
            if comp >= K:
                raise ValueError(f"The 'point_bounds' argument of {_OWNER} names component "
                                 f"{comp} for row {row}, but the fit has n_components={K}.")
            by_row.setdefault(row, {})[comp] = (lo, hi)
            names[(row, comp)] = (f"point bound {'' if lo is None else f'{lo:g} <= '}"
                                  f"q[{row}, {comp}]{'' if hi is None else f' <= {hi:g}'}")
        rows = np.array(sorted(by_row), dtype=np.intp)
        low = np.zeros((rows.shape[0], K))
        high = np.ones((rows.shape[0], K))
        for r, row in enumerate(rows):
            for comp, (lo, hi) in by_row[int(row)].items():
                low[r, comp] = 0.0 if lo is None else max(lo, 0.0)
                high[r, comp] = 1.0 if hi is None else min(hi, 1.0)
            if allowed is not None:
                masked = ~allowed[row]
                for comp in np.flatnonzero(masked & (low[r] > 0)):
                    raise ValueError(
                        f"{names[(int(row), int(comp))]} asks for q[{row}, {comp}] > 0, but "
                        f"component {comp} is excluded for row {row} by 'labels' or "
                        f"'forbidden': the constraints of {_OWNER} contradict each other.")
                high[r, masked] = 0.0
            if low[r].sum() > 1.0 or high[r].sum() < 1.0:
                which = "lower bounds sum to more" if low[r].sum() > 1.0 else \
                    "upper bounds (of the allowed components) sum to less"
                raise ValueError(f"The 'point_bounds' of {_OWNER} for row {row} cannot be "
                                 f"met together: their {which} than 1 "
                                 f"({', '.join(names[(int(row), c)] for c in by_row[int(row)])}).")
        return rows, low, high, names


# --- argument checks (at construction) -----------------------------------------------------

def _check_row(row: int, n: int, name: str) -> None:
    if row >= n:
        raise ValueError(f"The {name!r} argument of {_OWNER} names row {row}, but X has "
                         f"{n} rows.")


def _check_features(phi, b, equality, names):
    if phi is None:
        if b is not None:
            raise _bad("b", "None when 'phi' is None", b)
        if names is not None:
            raise _bad("names", "None when 'phi' is None", names)
        if not (equality is False or equality is None):
            raise _bad("equality", "False when 'phi' is None", equality)
        return None, None, None, None
    try:
        arr = np.asarray(phi, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad("phi", "a numeric array of shape (n_samples, n_components, "
                          "n_constraints)", phi) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or 0 in arr.shape or not np.all(np.isfinite(arr)):
        raise ValueError(f"The 'phi' argument of {_OWNER} must be a non-empty array of "
                         "finite numbers of shape (n_samples, n_components, n_constraints) "
                         f"or (n_samples, n_components). Got shape {np.shape(phi)} instead.")
    m = arr.shape[2]
    if b is None:
        raise _bad("b", f"an array of {m} finite bounds (one per constraint of 'phi')", b)
    try:
        bounds = np.atleast_1d(np.asarray(b, dtype=np.float64))
    except (TypeError, ValueError):
        raise _bad("b", f"an array of {m} finite bounds", b) from None
    if bounds.shape != (m,) or not np.all(np.isfinite(bounds)):
        raise ValueError(f"The 'b' argument of {_OWNER} must hold {m} finite bounds, one "
                         f"per constraint of 'phi' (its last axis). Got {b!r} instead.")
    if isinstance(equality, (bool, np.bool_)):
        eq = np.full(m, bool(equality))
    else:
        eq = np.asarray(equality)
        if eq.shape != (m,) or eq.dtype != bool:
            raise _bad("equality", f"a bool or an array of {m} bools", equality)
    if names is None:
        label = ["<=", "="]
        names = [f"constraint {j} (sum q phi[..., {j}] {label[int(eq[j])]} {bounds[j]:g})"
                 for j in range(m)]
    else:
        if isinstance(names, str) or len(names) != m or \
                not all(isinstance(s, str) for s in names):
            raise _bad("names", f"a sequence of {m} strings", names)
        names = list(names)
    return np.ascontiguousarray(arr), bounds, eq, names


def _check_proportions(proportions) -> dict:
    if proportions is None:
        return {}
    if not isinstance(proportions, Mapping):
        raise _bad("proportions", "a mapping {component: (low, high)}", proportions)
    out = {}
    for comp, bounds in proportions.items():
        if not _is_int(comp) or comp < 0:
            raise _bad("proportions", "a mapping whose keys are component indices >= 0",
                       proportions)
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise _bad("proportions", f"a mapping of components to (low, high) pairs "
                                      f"(component {comp})", proportions)
        lo = _fraction(bounds[0], "proportions", f"low bound of component {comp}")
        hi = _fraction(bounds[1], "proportions", f"high bound of component {comp}")
        for bound, bad, sign in ((hi, hi is not None and hi < 0.0, "<="),
                                 (lo, lo is not None and lo > 1.0, ">=")):
            if bad:
                raise ValueError(f"The constraint 'proportion of component {comp} {sign} "
                                 f"{bound:g}' (the 'proportions' argument of {_OWNER}) is "
                                 "infeasible: a share lies in [0, 1].")
        # a bound outside [0, 1] that every share meets (low < 0, high > 1) is no
        # constraint, but never what was meant (a percentage, a sign slip): reject it
        for bound, side in ((lo, "low"), (hi, "high")):
            if bound is not None and not 0.0 <= bound <= 1.0:
                raise _bad("proportions", f"a mapping of components to (low, high) "
                                          f"shares in [0, 1] or None ({side} bound of "
                                          f"component {comp})", bound)
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"The 'proportions' argument of {_OWNER} asks for component "
                             f"{comp} a share >= {lo:g} and <= {hi:g}: no q satisfies it.")
        # bounds every q meets are no constraint; a share of exactly 0 (or 1) can only
        # be met by zeroing labellings, so it becomes a mask in resolve()
        lo = None if lo is not None and lo <= 0.0 else lo
        hi = None if hi is not None and hi >= 1.0 else hi
        if lo is not None or hi is not None:
            out[int(comp)] = (lo, hi)
    return out


def _check_labels(labels):
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        out = {}
        for row, comp in labels.items():
            if not (_is_int(row) and row >= 0 and _is_int(comp) and comp >= 0):
                raise _bad("labels", "a mapping {row: component} of indices >= 0", labels)
            out[int(row)] = int(comp)
        return out
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and arr.size
                                                        and np.all(arr == np.round(arr)))) \
            or (arr.size and arr.min() < -1):
        raise _bad("labels", "an array of component indices (-1 = unlabelled) of shape "
                             "(n_samples,), or a mapping {row: component}", labels)
    return arr.astype(np.intp)


def _check_forbidden(forbidden) -> dict:
    if forbidden is None:
        return {}
    if not isinstance(forbidden, Mapping):
        raise _bad("forbidden", "a mapping {row: component or components}", forbidden)
    out = {}
    for row, comps in forbidden.items():
        comps = [comps] if _is_int(comps) else comps
        try:
            comps = list(comps)
        except TypeError:
            raise _bad("forbidden", "a mapping {row: component or components}",
                       forbidden) from None
        if not (_is_int(row) and row >= 0) or not comps or \
                not all(_is_int(c) and c >= 0 for c in comps):
            raise _bad("forbidden", "a mapping {row: component or non-empty sequence of "
                                    "components} of indices >= 0", forbidden)
        out[int(row)] = sorted({int(c) for c in comps})
    return out


def _check_point_bounds(point_bounds) -> dict:
    if point_bounds is None:
        return {}
    if not isinstance(point_bounds, Mapping):
        raise _bad("point_bounds", "a mapping {(row, component): (low, high)}", point_bounds)
    out = {}
    for key, bounds in point_bounds.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(
                _is_int(x) and x >= 0 for x in key)):
            raise _bad("point_bounds", "a mapping whose keys are (row, component) pairs of "
                                       "indices >= 0", point_bounds)
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise _bad("point_bounds", f"a mapping of (row, component) to (low, high) "
                                       f"pairs (key {key})", point_bounds)
        lo = _fraction(bounds[0], "point_bounds", f"low bound of {key}")
        hi = _fraction(bounds[1], "point_bounds", f"high bound of {key}")
        if (lo is not None and lo > 1.0) or (hi is not None and hi < 0.0) or \
                (lo is not None and hi is not None and lo > hi):
            raise ValueError(f"The 'point_bounds' argument of {_OWNER} asks for q{list(key)} "
                             f"in [{lo}, {hi}]: no probability satisfies it.")
        for bound, side in ((lo, "low"), (hi, "high")):       # as for proportions
            if bound is not None and not 0.0 <= bound <= 1.0:
                raise _bad("point_bounds", f"a mapping of (row, component) to (low, high) "
                                           f"probabilities in [0, 1] or None ({side} bound "
                                           f"of {key})", bound)
        out[(int(key[0]), int(key[1]))] = (lo, hi)
    return out

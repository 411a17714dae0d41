"""Model-based hierarchical agglomeration: mclust's default start (``init_params='hc'``).

Fraley (1998), "Algorithms for model-based Gaussian hierarchical clustering",
SIAM J. Sci. Comput. 20(1): start from singletons and merge, at each stage, the
two groups whose merge changes the classification criterion least; cut the tree
at G groups. Exact ties (identical rows) are broken as mclust breaks them, so the
partitions equal mclust's ``hclass(hc(X), G)`` (tests/test_hc.py). Two criteria (docs/gaussian.md#hierarchical-start):

- ``"EII"`` (Ward): a group's term is its within-group sum of squares tr(W); a
  merge costs n_i n_j / (n_i + n_j) ||m_i - m_j||^2.
- ``"VVV"``: a group of l rows with scatter W has the term
  l log(det(W / l) + beta (tr W + alpha) / l), and l log(beta (tr W + alpha) / l)
  while l <= d (its W is singular: the determinant is left out), so that the
  unconstrained criterion sum_k n_k log det(W_k / n_k) is defined for small
  groups; a singleton's term is log(alpha beta). alpha = tr(W_X) / (n d) (the
  scatter of all rows), beta = 1: mclust's ``hcVVV`` defaults.

The data are first transformed as ``mclust.options("hcUse")`` says by default
("SVD"): centred, scaled to unit standard deviation, rotated to the principal
axes and each axis scaled by 1 / sqrt(its singular value). For n above
``SUBSET`` (mclust's ``mclust.options("subset")``), the agglomeration runs on a
random subset of that many rows (drawn with the fit's generator; in a grid of
``select_model``, one subset for every cell, as mclust's ``Mclust()``: see
:func:`shared_agglomerations`); the rows outside it get no share in the
starting M-step (mclust: an M-step on the subset, then EM on all rows).

Memory is O(g^2) for the g starting groups (g <= ``SUBSET``): the matrix of
merge costs; each merge recomputes one row of it (O(g d^2)) and the rows whose
best partner took part in the merge.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Iterator, Optional, Sequence, Union

import numpy as np

__all__ = ["hc_labels", "hc_transform", "HC_MODELS", "SUBSET", "shared_agglomerations",
           "grid_cell"]

#: mclust.options("subset"): above this many rows, hc runs on a random subset
SUBSET = 2000
HC_MODELS = ("VVV", "EII")


def hc_transform(X: np.ndarray) -> np.ndarray:
    """mclust's ``hcUse = "SVD"`` transform of X: scaled principal components, each
    divided by the square root of its singular value. Constant columns are dropped
    (mclust drops the non-finite columns scaling leaves), as are directions whose
    singular value is zero (they carry no spread)."""
    X = np.asarray(X, dtype=np.float64)
    Z = X - X.mean(axis=0)
    sd = np.sqrt(np.einsum("ij,ij->j", Z, Z) / max(X.shape[0] - 1, 1))
    Z = Z[:, sd > 0] / sd[sd > 0]
    _, s, Vt = np.linalg.svd(Z, full_matrices=False)
    keep = s > 0
    return (Z @ Vt[keep].T) / np.sqrt(s[keep])


class _Groups:
    """Sizes, means, scatter matrices and criterion terms of the current groups."""

    def __init__(self, Z: np.ndarray, group: np.ndarray, model: str):
        g, d = int(group.max()) + 1, Z.shape[1]
        self.model, self.d = model, d
        self.n = np.bincount(group, minlength=g).astype(np.float64)
        self.mean = np.zeros((g, d))
        np.add.at(self.mean, group, Z)
        self.mean /= self.n[:, None]
        self.W = np.zeros((g, d, d))
        self.trace = np.zeros(g)
        centred = Z - Z.mean(axis=0)
        self.alpha = max(float(np.einsum("ij,ij->", centred, centred)) / (Z.shape[0] * d),
                         np.finfo(float).eps)
        self.term = self._term(self.n, self.trace)

    def _term(self, n, trace, scatter=None):
        """The criterion's term of groups of sizes ``n`` and traces ``trace``;
        ``scatter()`` gives the W of the groups with n > d (only those need it)."""
        if self.model == "EII":
            return trace.copy()
        beta = 1.0
        # l <= d (or zero scatter): the trace part alone
        base = np.log(beta * (trace + self.alpha) / n)
        out = n * base
        big = n > self.d
        if scatter is not None and np.any(big):
            sign, logdet = np.linalg.slogdet(scatter() / n[big, None, None])
            with_det = trace[big] > 0
            logdet = np.where(sign > 0, logdet, -np.inf)
            out[big] = np.where(with_det, n[big] * np.logaddexp(logdet, base[big]),
                                out[big])
        return out

    def merged(self, i: int, others: np.ndarray, with_mean: bool = True) -> tuple:
        """(n, mean, trace, term, W of those with n > d) of group i merged with each
        group of ``others`` (mean None without ``with_mean``: costs need none)."""
        n_i, n_o = self.n[i], self.n[others]
        n = n_i + n_o
        diff = self.mean[others] - self.mean[i]
        c = n_i * n_o / n
        mean = self.mean[i] + diff * (n_o / n)[:, None] if with_mean else None
        trace = self.trace[i] + self.trace[others] + c * np.einsum("ij,ij->i", diff, diff)
        big = n > self.d
        W = []

        def scatter():
            o, cb, db = others[big], c[big], diff[big]
            W.append(self.W[i] + self.W[o] + cb[:, None, None] * (db[:, :, None]
                                                                  * db[:, None, :]))
            return W[0]
        term = self._term(n, trace, scatter)
        return n, mean, trace, term, (W[0] if W else None)

    def _scatter(self, i: int, j: int) -> np.ndarray:
        n_i, n_j = self.n[i], self.n[j]
        diff = self.mean[j] - self.mean[i]
        return self.W[i] + self.W[j] + (n_i * n_j / (n_i + n_j)) * np.outer(diff, diff)

    def costs(self, i: int, others: np.ndarray) -> np.ndarray:
        """Change of the criterion when group i merges with each of ``others``."""
        term = self.merged(i, others, with_mean=False)[3]
        return term - self.term[i] - self.term[others]

    def merge(self, i: int, j: int) -> None:
        n, mean, trace, term, W = self.merged(i, np.array([j]))
        if self.model != "EII":
            self.W[i] = W[0] if W is not None else self._scatter(i, j)
        self.n[i], self.mean[i], self.trace[i], self.term[i] = n[0], mean[0], trace[0], term[0]


#: the memo of :func:`shared_agglomerations`: {key: (lock, [(rows, merges), state
#: after, X])}
_MEMO: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar(
    "emcore_hc_memo", default=None)
#: the memo's key of a grid's subsets: (lock, seed, {(n, subset): (generator,
#: [subsets drawn])})
_GRID = "grid subsets"
#: a cell of a grid (:func:`grid_cell`): [its calls of hc_labels so far]
_CELL: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar(
    "emcore_hc_cell", default=None)


@contextlib.contextmanager
def shared_agglomerations(subset_seed: Optional[int] = None) -> Iterator[None]:
    """Inside, :func:`hc_labels` computes each agglomeration once: a call with the
    same X (the same array in memory), model, subset, transform and generator
    state as an earlier one cuts that call's tree (at any G) and leaves the
    generator in the state that call left it in, so the results are those of
    recomputing. With at most ``subset`` rows every cell of ``select_model``'s
    grid cuts the one tree of all rows (one agglomeration of 2000 rows in 8-D:
    about 1.2 s of CPU, as much as fitting a cell).

    ``subset_seed`` (an int): the grid's own subsets, as mclust's ``Mclust()``
    draws one subset and cuts every G and model from its one tree. Above
    ``subset`` rows, a call inside :func:`grid_cell` ignores the generator it is
    given (and leaves it untouched): its cell's s-th call (its s-th start) takes
    the grid's s-th subset, drawn in order from ``default_rng(subset_seed)``, so
    the subsets depend on ``subset_seed`` and n alone, not on which cells the
    grid has nor on the order they run in. Thread-safe: a second thread asking
    for an agglomeration being computed waits for it."""
    token = _MEMO.set({} if subset_seed is None
                      else {_GRID: (threading.Lock(), subset_seed, {})})
    try:
        yield
    finally:
        _MEMO.reset(token)


@contextlib.contextmanager
def grid_cell() -> Iterator[None]:
    """One cell of a grid inside ``shared_agglomerations(subset_seed)``: counts its
    calls of :func:`hc_labels` (its starts), the s-th taking the grid's s-th
    subset. Outside such a grid it changes nothing."""
    token = _CELL.set([0])
    try:
        yield
    finally:
        _CELL.reset(token)


def _grid_subset(memo: dict, n: int, subset: int, start: int) -> np.ndarray:
    """The grid's ``start``-th subset of n rows (sorted), drawing those before it
    first, so each subset depends on the grid's seed, n and ``start`` alone."""
    lock, seed, by_n = memo[_GRID]
    with lock:
        rng, drawn = by_n.setdefault((n, subset), (np.random.default_rng(seed), []))
        while len(drawn) <= start:
            drawn.append(_subset_rows(n, subset, rng))
        return drawn[start]


def _subset_rows(n: int, subset: int, rng: np.random.Generator) -> np.ndarray:
    """The rows hc runs on: all n up to ``subset``, else a random ``subset`` of them
    (sorted), drawn with ``rng``."""
    if n <= subset:
        return np.arange(n)
    return np.sort(rng.choice(n, size=subset, replace=False))


def _memo_key(X: np.ndarray, model: str, subset: int, transform: bool, which) -> tuple:
    """The agglomeration depends on X, these arguments and ``which`` rows it runs
    on (above ``subset`` rows: the generator's state, or the grid's subset), not on
    the G it is cut at."""
    return (X.__array_interface__["data"][0], X.shape, X.strides, model, subset,
            transform, which)


def _cut(parent: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Labels of the n rows (-1 outside ``rows``) of the groups ``parent`` (group ->
    the group it was merged into, itself if active) leaves, numbered by first
    appearance."""
    root = parent.copy()
    while True:                       # follow each starting group to where it ended
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    _, first, labels = np.unique(root, return_index=True, return_inverse=True)
    rank = np.empty(first.shape[0], dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(first.shape[0])
    out = np.full(n, -1, dtype=np.intp)
    out[rows] = rank[labels.reshape(-1)]
    return out


def hc_labels(X: np.ndarray, n_clusters: Union[int, Sequence[int]], model: str = "VVV",
              rng: Optional[np.random.Generator] = None,
              subset: Optional[int] = None, transform: bool = True):
    """Labels (0 .. G - 1, numbered by first appearance) of the rows of X cut from the
    model-based agglomeration at G = ``n_clusters`` groups; -1 for rows outside the
    random subset hc ran on (n > ``subset``). A sequence of G: {G: labels}, from
    one agglomeration.

    ``subset``: default ``SUBSET`` (read when called). ``transform``: apply
    :func:`hc_transform` first (mclust's default, "SVD"); False agglomerates X as
    given ("VARS").
    """
    subset = SUBSET if subset is None else subset
    many = not isinstance(n_clusters, (int, np.integer))
    wanted = sorted({int(G) for G in (n_clusters if many else [n_clusters])})
    if model not in HC_MODELS:
        raise ValueError(f"hc model must be one of {HC_MODELS}. Got {model!r} instead.")
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    g = min(n, subset)
    if not 1 <= wanted[0] <= wanted[-1] <= g:
        raise ValueError(f"hc can cut {g} rows into 1 to {g} groups. Got {n_clusters!r} "
                         "instead.")
    if n > subset and rng is None:
        rng = np.random.default_rng()
    memo = _MEMO.get()
    cell = _CELL.get()
    grid = n > subset and memo is not None and _GRID in memo and cell is not None
    if grid:
        # a cell of a grid with its own subsets: its start-th start takes the
        # grid's start-th subset (the fit's generator is not used)
        start = cell[0]
        cell[0] += 1
        rows = _grid_subset(memo, n, subset, start)
    if wanted == [1]:
        # one group: every row of the subset (all rows up to ``subset``), which is
        # the tree's cut at G = 1 without agglomerating; the generator (or the
        # grid's count of starts) moves as for any G
        if not grid:
            rows = _subset_rows(n, subset, rng)
        labels = np.full(n, -1, dtype=np.intp)
        labels[rows] = 0
        return {1: labels} if many else labels
    if memo is None:
        rows, merges = _agglomeration(X, model, rng, subset, transform)
    else:
        which = (("grid", start) if grid
                 else repr(rng.bit_generator.state) if n > subset else None)
        # the entry holds X, so that its memory (the key) is not reused while the
        # memo lives; and the generator's state after the draw, to leave it there
        lock, entry = memo.setdefault(_memo_key(X, model, subset, transform, which),
                                      (threading.Lock(), []))
        with lock:
            if not entry:
                tree = ((rows, _agglomerate(X[rows], model, transform)) if grid
                        else _agglomeration(X, model, rng, subset, transform))
                entry.extend([tree, rng.bit_generator.state
                              if n > subset and not grid else None, X])
            elif entry[1] is not None:
                rng.bit_generator.state = entry[1]
        rows, merges = entry[0]
    cuts = {G: _cut_tree(rows, merges, n, G) for G in wanted}
    return cuts if many else cuts[wanted[0]]


def _agglomeration(X, model, rng, subset, transform) -> tuple:
    """(rows, merges) of the agglomeration of X (its random subset ``rows`` when
    there are more than ``subset``) down to one group: ``merges`` lists the
    (group, group merged into it) of each stage, in order."""
    n = X.shape[0]
    if n > subset and rng is None:
        rng = np.random.default_rng()
    rows = _subset_rows(n, subset, rng)
    return rows, _agglomerate(X[rows], model, transform)


def _agglomerate(data: np.ndarray, model: str, transform: bool) -> list:
    """The merges (group, group merged into it), in order, of the agglomeration of
    all rows of ``data`` down to one group."""
    Z = hc_transform(data) if transform else data
    if Z.shape[1] == 0:                      # every column constant: one spread-free group
        Z = np.zeros((data.shape[0], 1))
    g = data.shape[0]
    groups = _Groups(Z, np.arange(g), model)   # singletons (mclust's hc() start)
    # Groups live in slots 0 .. m-1 (m active); cost[i, j] (i < j) is the change of
    # the criterion when the groups in slots i and j merge. As mclust's hcVVV/hcEII
    # (so that exact ties, e.g. identical rows, are broken as mclust breaks them):
    # the pair taken is the last minimal one in the order (0,1), (0,2), (1,2),
    # (0,3), ...; the merged group takes slot i, the last slot's group moves to j.
    cost = np.full((g, g), np.inf)
    for j in range(1, g):
        cost[:j, j] = groups.costs(j, np.arange(j))
    slot = np.arange(g)                       # slot -> group id
    col_best = np.full(g, np.inf)             # min over i < j of cost[i, j]
    col_arg = np.zeros(g, dtype=np.intp)      # the last i attaining it

    def refresh(j):
        if j == 0:
            col_best[0], col_arg[0] = np.inf, 0
            return
        column = cost[:j, j]
        col_best[j] = column.min()
        col_arg[j] = j - 1 - int(np.argmin(column[::-1]))

    for j in range(g):
        refresh(j)
    merges = []
    m = g
    for _ in range(g - 1):
        top = col_best[:m]
        j = m - 1 - int(np.argmin(top[::-1]))  # the last column with the minimum
        i = int(col_arg[j])
        gi, gj = int(slot[i]), int(slot[j])
        groups.merge(gi, gj)
        merges.append((gi, gj))
        last = m - 1
        if j != last:                         # the last slot's group moves to slot j
            slot[j] = slot[last]
            cost[:j, j] = cost[:j, last]
            cost[j, j + 1:last] = cost[j + 1:last, last]
        cost[:, last] = np.inf
        cost[last, :] = np.inf
        m -= 1
        # the merged group's costs against every other slot
        others = np.delete(np.arange(m), i)
        if others.size:
            c = groups.costs(gi, slot[others])
            below = others < i
            cost[others[below], i] = c[below]
            cost[i, others[~below]] = c[~below]
        cols = np.arange(1, m)
        stale = (cols == i) | (cols == j) | (col_arg[1:m] == i) | (col_arg[1:m] == j)
        for r in (i, j):                      # a lower cost (or a tie further down)
            ok = ~stale & (r < cols)
            value = cost[r, 1:m]
            better = ok & ((value < col_best[1:m])
                           | ((value == col_best[1:m]) & (r > col_arg[1:m])))
            col_best[1:m][better], col_arg[1:m][better] = value[better], r
        for col in cols[stale]:
            refresh(int(col))
        col_best[m:] = np.inf
    return merges


def _cut_tree(rows: np.ndarray, merges: list, n: int, G: int) -> np.ndarray:
    """Labels of the n rows at G groups of an agglomeration (``_agglomeration``)."""
    parent = np.arange(rows.shape[0])         # group -> group it was merged into
    for gi, gj in merges[:rows.shape[0] - G]:
        parent[gj] = gi
    return _cut(parent, rows, n)

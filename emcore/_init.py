"""Initial partitions: k-means++ seeding and random choices (docs/gaussian.md#kmeans-plus-plus).

Distances are ||x - c||^2 computed on the difference, chunk by chunk (never
||x||^2 - 2 x.c + ||c||^2 on raw data), so offset data keep their digits and
memory stays bounded by the chunk size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from emcore._chunks import stats_from_assignments
from emcore._hc import hc_labels
from emcore._validation import as_float_array

_CHUNK = 65536


def row_sq_dist(block: np.ndarray, centre: np.ndarray,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """||x_i - centre||^2 for each row of ``block``, on differences."""
    diff = np.asarray(block, dtype=np.float64) - centre
    return np.einsum("ij,ij->i", diff, diff, out=out)


def _sq_dist_to(X: np.ndarray, centre: np.ndarray, out: np.ndarray) -> None:
    if hasattr(X, "sq_dist_to"):        # on a Dask cluster's workers (emcore.distributed)
        return X.sq_dist_to(centre, out)
    # a chunked source (emcore._sources) is read in its own blocks
    step = getattr(X, "block_rows", _CHUNK)
    for start in range(0, X.shape[0], step):
        row_sq_dist(X[start:start + step], centre, out=out[start:start + step])


# --- the rows the seeds are drawn from ------------------------------------------------
#
# Seeds are drawn among the *distinct* rows of X, each with the summed weight of the
# rows equal to it, taken in an order fixed by the rows' values (a 64-bit hash of
# each row): so a row of weight 2 and the same row given twice, or the rows of X in
# any order, are the same draw, seed for seed (scikit-learn's
# check_sample_weight_equivalence shuffles the weighted rows). The hash is one O(n d)
# pass (on the workers for a Dask source) and the grouping one O(n log n) sort of
# n keys, once per fit; the seeds' distance passes are unchanged. Two different
# rows share a key with probability about n^2 / 2^65 (3e-8 at n = 1e6): they then
# count as one row of the start, which changes which rows can seed, never the fit.

_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def _row_keys(rows: np.ndarray, start: int = 0, shared: object = None) -> np.ndarray:
    """A 64-bit hash of each row's float64 values: equal rows, equal keys (-0.0 is
    0.0). Each column's bits are mixed into the row's key by splitmix64's
    finaliser. (The signature is a ``map_blocks`` function's.)"""
    block = np.ascontiguousarray(rows, dtype=np.float64) + 0.0      # -0.0 -> +0.0
    words = block.view(np.uint64).reshape(block.shape)
    h = np.full(block.shape[0], _HASH_SEED, dtype=np.uint64)
    for j in range(block.shape[1]):
        h ^= words[:, j]
        h ^= h >> _S30
        h *= _MIX1
        h ^= h >> _S27
        h *= _MIX2
        h ^= h >> _S31
    return h


def _all_row_keys(X) -> np.ndarray:
    if not isinstance(X, np.ndarray) and hasattr(X, "map_blocks"):
        # a chunked source (emcore._sources), on a Dask cluster's workers if there
        return np.concatenate(list(X.map_blocks(_row_keys, None)))
    n = X.shape[0]
    return np.concatenate([_row_keys(X[start:start + _CHUNK])
                           for start in range(0, n, _CHUNK)] or [np.empty(0, np.uint64)])


def distinct_rows(X, sample_weight: Optional[np.ndarray] = None) -> tuple:
    """(rows, weights): one row index per distinct row of X, in an order that depends
    on the rows' values only, and the summed ``sample_weight`` of the rows equal to
    it (their count without weights). What every seed is drawn from."""
    keys = _all_row_keys(X)
    _, rows, inverse = np.unique(keys, return_index=True, return_inverse=True)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weights = np.bincount(inverse.ravel(), weights=w, minlength=rows.shape[0])
    return rows, weights.astype(np.float64, copy=False)


def _inverse_cdf(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices i with cum[i-1] <= u * cum[-1] < cum[i]: draws in proportion to the
    increments of ``cum`` (an entry of zero weight is never drawn)."""
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), cum.shape[0] - 1)


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    sample_weight: Optional[np.ndarray] = None,
                    n_local_trials: int = 1) -> np.ndarray:
    """Row indices of k-means++ seeds (D^2 sampling, Arthur & Vassilvitskii 2007).

    With ``n_local_trials`` > 1, the greedy variant scikit-learn uses: each step
    draws that many candidates by D^2 and keeps the one that lowers the potential
    sum_i w_i D_i^2 most. The draws run over X's distinct rows with their summed
    weights (:func:`distinct_rows`), so weights and repeated rows, in any row
    order, give the same seeds. If X has fewer distinct rows (of positive weight)
    than ``n_clusters``, the last seeds are drawn by weight and may repeat a row.
    """
    rows, w = distinct_rows(X, sample_weight)
    seeds = np.empty(n_clusters, dtype=np.intp)
    scratch = np.empty(X.shape[0])
    first = int(_inverse_cdf(np.cumsum(w), rng.random(1))[0])
    seeds[0] = rows[first]
    _sq_dist_to(X, X[seeds[0]], scratch)
    d2 = scratch[rows]                     # D^2 of each distinct row
    best_d2 = d2
    for c in range(1, n_clusters):
        cum = np.cumsum(w * d2)
        if not cum[-1] > 0:
            # fewer distinct rows (of positive weight) than clusters: no spread left
            # to sample from; draw by weight, duplicates allowed. The duplicate seed's
            # component then gets no data, which the M-step reports (or a prior fills).
            cum = np.cumsum(w)
        best_potential = np.inf
        for idx in _inverse_cdf(cum, rng.random(n_local_trials)):
            _sq_dist_to(X, X[rows[idx]], scratch)
            trial = np.minimum(d2, scratch[rows])
            potential = float(np.dot(w, trial))
            if potential < best_potential:
                best_potential, seeds[c], best_d2 = potential, rows[idx], trial
        d2 = best_d2
    return seeds


def sq_distances(block: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """||x_i - c_k||^2 for the rows of ``block``, shape (rows, k), on differences."""
    d2 = np.empty((block.shape[0], centres.shape[0]))
    for k, c in enumerate(centres):
        row_sq_dist(block, c, out=d2[:, k])
    return d2


def nearest_centre(X: np.ndarray, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Labels of rows start:stop: the nearest centre, ties to the lowest index."""
    return np.argmin(sq_distances(X[start:stop], centres), axis=1)


def one_hot(labels: np.ndarray, n_components: int) -> np.ndarray:
    resp = np.zeros((labels.shape[0], n_components))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp


def random_rows(X: np.ndarray, n_clusters: int, rng: np.random.Generator,
                sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """Row indices of ``n_clusters`` seeds drawn in proportion to the rows' weights,
    holding distinct values ('random_from_data').

    Drawn without replacement among X's distinct rows, each with the summed weight
    of the rows equal to it (:func:`distinct_rows`): identical seeds would leave
    all but one of their components without rows, and a row of weight 2 draws as
    the same row given twice. If X has fewer distinct rows (of positive weight)
    than ``n_clusters``, those come first, in a random order drawn by weight, and
    the last seeds are drawn by weight and may repeat a row (as k-means++ does).
    """
    rows, w = distinct_rows(X, sample_weight)
    positive = np.flatnonzero(w > 0)
    take = min(n_clusters, positive.shape[0])
    chosen = positive[rng.choice(positive.shape[0], size=take, replace=False,
                                 p=w[positive] / w[positive].sum())]
    if take < n_clusters:
        chosen = np.concatenate([chosen, _inverse_cdf(np.cumsum(w),
                                                      rng.random(n_clusters - take))])
    return rows[chosen]


def starting_partition(X: np.ndarray, n_components: int, init_params: str,
                       rng: np.random.Generator, sample_weight: Optional[np.ndarray] = None):
    """``responsibilities(start, stop)`` of the starting partition of ``init_params``.

    'k-means++': D^2-sampled seed rows, each row assigned to the nearest seed;
    'random_from_data': distinct seed rows drawn in proportion to their weight
    (:func:`random_rows`), the same assignment; 'random': responsibilities drawn
    uniformly and normalised (drawn when asked for, in row order); 'hc': mclust's
    model-based hierarchical agglomeration ("VVV", emcore._hc) cut at
    ``n_components`` groups (unweighted: ``sample_weight`` enters the M-step on
    the partition, not the agglomeration); above ``emcore._hc.SUBSET`` rows it
    runs on a random subset and the other rows get no share (all-zero rows).
    """
    k = n_components
    if init_params == "hc":
        labels = hc_labels(np.asarray(X[0:X.shape[0]], dtype=np.float64), k, "VVV", rng)
        resp = one_hot(np.maximum(labels, 0), k)
        resp[labels < 0] = 0.0

        def responsibilities(start, stop):
            return resp[start:stop]
        return responsibilities
    if init_params == "random":
        def responsibilities(start, stop):
            r = rng.random((stop - start, k))
            return r / r.sum(axis=1, keepdims=True)
        return responsibilities
    if init_params == "k-means++":
        seeds = kmeans_plusplus(X, k, rng, sample_weight)
    else:
        seeds = random_rows(X, k, rng, sample_weight)
    centres = X[seeds]

    def responsibilities(start, stop):
        return one_hot(nearest_centre(X, centres, start, stop), k)
    return responsibilities


class CountedPartition:
    """A ``responsibilities(start, stop)`` that records the weighted column sums of
    what it returns, so the starting mixture weights come from the same partition
    the family's ``initial_params`` read (whatever it did with it)."""

    def __init__(self, responsibilities, n_samples: int, n_components: int,
                 sample_weight: Optional[np.ndarray] = None):
        self._resp = responsibilities
        self._n, self._k = n_samples, n_components
        self._sample_weight = sample_weight
        self._sums: dict = {}

    def __call__(self, start: int, stop: int) -> np.ndarray:
        r = np.asarray(self._resp(start, stop), dtype=np.float64)
        w = r if self._sample_weight is None else r * self._sample_weight[start:stop, None]
        self._sums[(start, stop)] = w.sum(axis=0)
        return r

    def totals(self, chunk_rows: int = _CHUNK) -> np.ndarray:
        """sum_i w_i q_ik: from the chunks read, if they cover every row once, in row
        order; otherwise from a pass of its own."""
        keys = sorted(self._sums)
        tiled = (bool(keys) and keys[0][0] == 0 and keys[-1][1] == self._n
                 and all(a[1] == b[0] for a, b in zip(keys, keys[1:])))
        if not tiled:
            self._sums = {}
            for start in range(0, self._n, chunk_rows):
                self(start, min(self._n, start + chunk_rows))
            keys = sorted(self._sums)
        total = np.zeros(self._k)
        for key in keys:
            total += self._sums[key]
        return total


def check_resp_init(resp: object, n_samples: int, n_components: int,
                    owner: str, name: str = "resp_init") -> np.ndarray:
    """``resp_init`` as a float64 (n_samples, n_components) array of finite,
    non-negative rows summing to 1, each component with some responsibility, or a
    ValueError naming ``name``.

    A row may differ from 1 by ``n_components`` eps: the rounding of a row
    normalised in float64 (each q_k = fl(r_k / s) off by u relative, s = fl(sum r)
    by (G - 1) u, the check's own sum by (G - 1) u: (3G - 2) u < 2 G u =
    G eps to first order). Rows are used as given (not renormalised).
    """
    n, k = n_samples, n_components
    prefix = (f"The {name!r} parameter of {owner} must be an array of shape ({n}, {k}) "
              "(n_samples, n_components) of finite, non-negative responsibilities whose "
              "rows sum to 1 (one-hot rows for a partition)")
    r = as_float_array(resp, prefix)
    if r.shape != (n, k):
        raise ValueError(f"{prefix}. Got an array of shape {r.shape} instead.")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{prefix}. Got non-finite entries instead.")
    if np.any(r < 0):
        i = int(np.argwhere(r < 0)[0, 0])
        raise ValueError(f"{prefix}. Got a negative entry in row {i} instead.")
    error = np.abs(r.sum(axis=1) - 1.0)
    if np.any(error > k * np.finfo(np.float64).eps):
        i = int(np.argmax(error))
        raise ValueError(f"{prefix}. Got row {i} summing to {float(r[i].sum())!r} "
                         "instead.")
    empty = np.flatnonzero(~(r.sum(axis=0) > 0))
    if empty.size:
        raise ValueError(f"{prefix}, every component with some responsibility. Got "
                         f"none for component {int(empty[0])} instead.")
    return np.ascontiguousarray(r)


def check_resp_conflicts(owner: str, given: dict) -> None:
    """Raise if ``resp_init`` comes with another start: ``given`` maps each
    conflicting parameter to whether it is set (not its default)."""
    for other, is_set in given.items():
        if is_set:
            raise ValueError(f"The 'resp_init' parameter of {owner} conflicts with "
                             f"{other!r}: both say where the fit starts. Give one of "
                             f"'resp_init' and {other!r}.")


def m_step_from_resp(X: np.ndarray, family, resp: np.ndarray,
                     sample_weight: Optional[np.ndarray] = None) -> tuple:
    """(weights, params) of the M-step from responsibilities ``resp`` (mclust's
    ``me(z=...)``: the fit's first step): the family's M-step on their statistics
    (with its prior, if any), the weights their weighted column shares."""
    stats, resp_sum = stats_from_assignments(X, family, lambda a, b: resp[a:b],
                                             sample_weight=sample_weight)
    k = family.n_components
    weights = (np.full(k, 1.0 / k) if family.fixed_weights
               else resp_sum / resp_sum.sum())
    return weights, family.m_step(stats, None)

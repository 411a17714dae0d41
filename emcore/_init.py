"""Initial partitions: k-means++ seeding and random choices (docs/gaussian.md#kmeans-plus-plus).

Distances are ||x - c||^2 computed on the difference, chunk by chunk (never
||x||^2 - 2 x.c + ||c||^2 on raw data), so offset data keep their digits and
memory stays bounded by the chunk size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

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


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    sample_weight: Optional[np.ndarray] = None,
                    n_local_trials: int = 1) -> np.ndarray:
    """Row indices of k-means++ seeds (D^2 sampling, Arthur & Vassilvitskii 2007).

    With ``n_local_trials`` > 1, the greedy variant scikit-learn uses: each step
    draws that many candidates by D^2 and keeps the one that lowers the potential
    sum_i w_i D_i^2 most. If X has fewer distinct rows (of positive weight) than
    ``n_clusters``, the last seeds are drawn by weight and may repeat a row.
    """
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    p = w / w.sum()
    seeds = np.empty(n_clusters, dtype=np.intp)
    seeds[0] = rng.choice(n, p=p)
    d2 = np.empty(n)
    _sq_dist_to(X, X[seeds[0]], d2)
    tmp = np.empty(n)
    best_d2 = np.empty(n)
    for c in range(1, n_clusters):
        cum = np.cumsum(w * d2)
        total = cum[-1]
        if not total > 0:
            # fewer distinct rows (of positive weight) than clusters: no spread left
            # to sample from; draw by weight, duplicates allowed. The duplicate seed's
            # component then gets no data, which the M-step reports (or a prior fills).
            cum = np.cumsum(w)
            total = cum[-1]
        candidates = np.minimum(np.searchsorted(cum, rng.random(n_local_trials) * total,
                                                side="right"), n - 1)
        best_potential = np.inf
        for idx in candidates:
            _sq_dist_to(X, X[idx], tmp)
            np.minimum(d2, tmp, out=tmp)
            potential = float(np.dot(w, tmp))
            if potential < best_potential:
                best_potential, seeds[c] = potential, idx
                best_d2, tmp = tmp, best_d2
        d2, best_d2 = best_d2, d2
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

    Drawn without replacement among the rows; if two seeds hold the same values
    (data with repeated rows), the seeds are drawn again one at a time, each among
    the rows equal to no seed drawn before, with probability proportional to their
    weight: identical seeds would leave all but one of their components without
    rows. If X has fewer distinct rows (of positive weight) than ``n_clusters``,
    the last seeds are drawn by weight and may repeat a row (as k-means++ does).
    """
    n = X.shape[0]
    p = None if sample_weight is None else sample_weight / sample_weight.sum()
    seeds = rng.choice(n, size=n_clusters, replace=False, p=p)
    if np.unique(np.asarray(X[seeds]), axis=0).shape[0] == n_clusters:
        return seeds
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    available = w.copy()           # the weight of rows equal to no seed so far
    d2 = np.empty(n)
    for c in range(n_clusters):
        cum = np.cumsum(available)
        if not cum[-1] > 0:        # fewer distinct rows than clusters
            available = w.copy()
            cum = np.cumsum(available)
        seeds[c] = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")),
                       n - 1)
        _sq_dist_to(X, np.asarray(X[seeds[c]], dtype=np.float64), d2)
        available[d2 == 0.0] = 0.0
    return seeds


def starting_partition(X: np.ndarray, n_components: int, init_params: str,
                       rng: np.random.Generator, sample_weight: Optional[np.ndarray] = None):
    """``responsibilities(start, stop)`` of the starting partition of ``init_params``.

    'k-means++': D^2-sampled seed rows, each row assigned to the nearest seed;
    'random_from_data': distinct seed rows drawn in proportion to their weight
    (:func:`random_rows`), the same assignment; 'random': responsibilities drawn
    uniformly and normalised (drawn when asked for, in row order).
    """
    k = n_components
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

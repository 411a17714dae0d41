"""Initial partitions: k-means++ seeding and random choices (Gaussian note, section 10).

Distances are ||x - c||^2 computed on the difference, chunk by chunk (never
||x||^2 - 2 x.c + ||c||^2 on raw data), so offset data keep their digits and
memory stays bounded by the chunk size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

_CHUNK = 65536


def _sq_dist_to(X: np.ndarray, centre: np.ndarray, out: np.ndarray) -> None:
    for start in range(0, X.shape[0], _CHUNK):
        diff = X[start:start + _CHUNK] - centre
        np.einsum("ij,ij->i", diff, diff, out=out[start:start + _CHUNK])


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """Row indices of k-means++ seeds (plain D^2 sampling, Arthur & Vassilvitskii 2007).

    Raises ValueError if X has fewer than ``n_clusters`` distinct rows (D^2 is
    then zero everywhere before all seeds are chosen).
    """
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    p = w / w.sum()
    seeds = np.empty(n_clusters, dtype=np.intp)
    seeds[0] = rng.choice(n, p=p)
    d2 = np.empty(n)
    _sq_dist_to(X, X[seeds[0]], d2)
    tmp = np.empty(n)
    for c in range(1, n_clusters):
        cum = np.cumsum(w * d2)
        total = cum[-1]
        if not total > 0:
            # fewer distinct rows (of positive weight) than clusters: no spread left
            # to sample from; draw by weight, duplicates allowed. The duplicate seed's
            # component then gets no data, which the M-step reports (or a prior fills).
            cum = np.cumsum(w)
            total = cum[-1]
        idx = int(np.searchsorted(cum, rng.random() * total, side="right"))
        seeds[c] = min(idx, n - 1)
        _sq_dist_to(X, X[seeds[c]], tmp)
        np.minimum(d2, tmp, out=d2)
    return seeds


def nearest_centre(X: np.ndarray, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Labels of rows start:stop: the nearest centre, ties to the lowest index."""
    block = X[start:stop]
    d2 = np.empty((block.shape[0], centres.shape[0]))
    for k, c in enumerate(centres):
        diff = block - c
        np.einsum("ij,ij->i", diff, diff, out=d2[:, k])
    return np.argmin(d2, axis=1)


def one_hot(labels: np.ndarray, n_components: int) -> np.ndarray:
    resp = np.zeros((labels.shape[0], n_components))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp

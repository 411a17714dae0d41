"""How the rows of X are cut into chunks, and statistics of a given partition.

Below the engine and the plugin API (both use it; it imports neither): the chunk
size depends only on the data's shape, so results never depend on the thread
count.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


__all__ = ["chunk_rows_for", "family_chunk_stats", "stats_from_assignments"]


def chunk_rows_for(n_features: int) -> int:
    """Rows per chunk: about 32k doubles of data (256 KiB), between 256 and 4096 rows.

    Depends only on the data's shape, so results never depend on the thread count.
    """
    rows = 32768 // max(1, n_features)
    return int(min(4096, max(256, 1 << max(0, rows.bit_length() - 1))))


def stats_from_assignments(X: np.ndarray, family: Any,
                           responsibilities: Callable[[int, int], np.ndarray],
                           sample_weight: Optional[np.ndarray] = None,
                           chunk_rows: Optional[int] = None):
    """Statistics for given responsibilities, produced a chunk at a time.

    ``responsibilities(start, stop)`` returns the (stop - start, k) q of those rows.
    Returns (stats, resp_sum). Used for initialisation from a partition.
    """
    n, d = X.shape
    chunk_rows = chunk_rows or chunk_rows_for(d)
    stats = family.empty_stats()
    resp_sum = np.zeros(family.n_components)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        resp = np.asarray(responsibilities(start, stop), dtype=np.float64)
        if sample_weight is not None:
            resp = resp * sample_weight[start:stop, None]
        resp_sum += resp.sum(axis=0)
        # no parameters yet: a family whose statistics need them gets params=None
        # (emcore.plugin_api.Family.stats_need_params)
        part = family_chunk_stats(family, X[start:stop], resp, None)
        stats = family.merge_stats(stats, part)
    return stats, resp_sum


def family_chunk_stats(family: Any, X: np.ndarray, weights: np.ndarray,
                       params: Optional[Any]) -> Any:
    """``family.chunk_stats`` as every caller must call it: with ``params=`` for a
    family that declares :attr:`Family.stats_need_params`, without otherwise.

    Public for plugins that call other families (a product of families, a latent
    structure handing its posteriors to the emission family).
    """
    if family.stats_need_params:
        return family.chunk_stats(X, weights, params=params)
    return family.chunk_stats(X, weights)

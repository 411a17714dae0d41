"""The distinct rows of X and their summed sample weights (docs/discrete.md#compression).

EM's statistics, the log-likelihood and the posterior's entropy are sums over rows
of functions of the row: rows with the same values contribute the same terms, so a
pass over the distinct rows (patterns) with the summed sample weights gives the
same sums (up to their order) as a pass over every row. Discrete data repeat: 20
binary items take at most 2^20 values, and 1e6 answers to them had ~2.5e5
distinct rows. This module finds the patterns once per fit; the estimator runs the
EM iterations over them (``MixtureModel(compress=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from emcore._core._pack import pack_rows

__all__ = ["RowPatterns", "row_patterns"]

# integer codes are packed into one float64 key per row while every partial sum of
# the key is an integer below 2^53, so that it is exact in any summation order
_EXACT_INTEGERS = 2.0 ** 53
# the keys are counted in a table of this many entries (per row of X, at least
# _MIN_TABLE) rather than sorted: one pass instead of an O(n log n) sort
_TABLE_PER_ROW, _MIN_TABLE = 4, 1 << 16
_BLOCK_ROWS = 1 << 16        # rows per block of the range pass (in cache)


@dataclass(frozen=True)
class RowPatterns:
    """The distinct rows of an (n, d) array X.

    ``rows[inverse[i]]`` equals row i of X (the same bytes); ``weight[p]`` is the
    sum of the sample weights of the rows equal to ``rows[p]`` (their count
    without weights).
    """
    rows: np.ndarray        #: (m, d) float64, C-contiguous: the distinct rows
    weight: np.ndarray      #: (m,) float64: the summed sample weights per pattern
    inverse: np.ndarray     #: (n,) intp: the pattern of each row of X

    @property
    def n_patterns(self) -> int:
        return self.rows.shape[0]


def _code_ranges(X: np.ndarray) -> Optional[tuple]:
    """(low, radix, stride), each (d,): the columns' smallest codes, ranges
    (radix_j = high_j - low_j + 1) and mixed-radix place values (stride_j =
    prod_{l<j} radix_l), or None when a key would not be an exact integer (NaN,
    or partial sums of 2^53 or more). X holds integers."""
    n, d = X.shape
    # the whole array's range first (two contiguous reductions); per column (slower:
    # reductions along axis 0) only when the common range would not fit
    low, high = np.full(d, float(X.min())), np.full(d, float(X.max()))
    if np.isfinite(high[0] - low[0]) and d * np.log2(high[0] - low[0] + 1.0) >= 52:
        for s in range(0, n, _BLOCK_ROWS):
            block = X[s:s + _BLOCK_ROWS]
            low = block.min(axis=0) if s == 0 else np.minimum(low, block.min(axis=0))
            high = block.max(axis=0) if s == 0 else np.maximum(high, block.max(axis=0))
    radix = high - low + 1.0
    if not np.all(np.isfinite(radix)):
        return None                         # NaN (missing values): compare bytes
    stride = np.cumprod(np.concatenate([[1.0], radix[:-1]]))
    # X @ stride (the sort path) is exact while its largest partial sum is
    if float(stride[-1] * radix[-1]) >= _EXACT_INTEGERS or \
            float(np.maximum(np.abs(low), np.abs(high)) @ stride) >= _EXACT_INTEGERS:
        return None
    return low, radix, stride


def row_patterns(X: np.ndarray, sample_weight: Optional[np.ndarray] = None, *,
                 integer_codes: bool = False) -> RowPatterns:
    """The distinct rows of X (n, d), their summed weights and each row's pattern.

    Parameters
    ----------
    X : ndarray of shape (n, d), float64
    sample_weight : ndarray of shape (n,), optional
        Row weights (default 1): a pattern's weight is the sum over its rows.
    integer_codes : bool, default False
        X holds integers (a family with a discrete support, already checked):
        each row is packed into one integer key (mixed radix over the columns'
        ranges) and the keys are counted in a table, one pass. Otherwise, or when
        the key would not fit in 53 bits, the rows' bytes are sorted
        (``np.unique``): equal means bitwise equal (-0.0 and 0.0 are two
        patterns, which costs compression, never correctness).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    ranges = _code_ranges(X) if integer_codes and n > 0 else None
    packed = None
    if ranges is not None:
        low, radix, stride = ranges
        size = int(np.prod(radix))
        if size <= max(_TABLE_PER_ROW * n, _MIN_TABLE):
            packed = pack_rows(X, low, stride, size)        # one pass, compiled
        else:
            keys = X @ stride                               # exact (_code_ranges)
            _, index, inverse = np.unique(keys, return_index=True, return_inverse=True)
            packed = inverse, index
    if packed is None:
        view = X.view(np.dtype((np.void, X.dtype.itemsize * d))).reshape(n)
        _, index, inverse = np.unique(view, return_index=True, return_inverse=True)
    else:
        inverse, index = packed
    rows = np.ascontiguousarray(X[index])
    inverse = np.asarray(inverse, dtype=np.intp).reshape(n)
    weight = np.bincount(inverse, weights=sample_weight, minlength=rows.shape[0])
    return RowPatterns(rows=rows, weight=weight.astype(np.float64), inverse=inverse)

"""Sequences as the unit of a pass (private): groups of whole sequences, read a
group at a time.

A group is a run of consecutive sequences holding at most ``target`` rows, or a
single sequence when that one alone is longer: a sequence is never split, and the
memory of a pass is O(rows of a group x K), that is O(T K) for the longest
sequence, never O(n K) for all the data (docs/hidden_markov.md#memory).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

__all__ = ["GROUP_ROWS", "sequence_groups", "read_rows"]

#: rows per group of short sequences: 64k rows x K doubles of posteriors
GROUP_ROWS = 1 << 16


def sequence_groups(starts: np.ndarray, target: Optional[int] = None) -> Iterator[tuple]:
    """(first sequence, one past the last) of each group, in order (``target``
    rows per group, default :data:`GROUP_ROWS`)."""
    target = GROUP_ROWS if target is None else int(target)
    n_seq = starts.shape[0] - 1
    i = 0
    while i < n_seq:
        j = int(np.searchsorted(starts, starts[i] + target, side="right")) - 1
        j = min(max(j, i + 1), n_seq)
        yield i, j
        i = j


def read_rows(X: Any, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of an array or a chunked source as C-contiguous float64."""
    return np.ascontiguousarray(X[start:stop], dtype=np.float64)

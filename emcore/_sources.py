"""Chunked data sources: fit data that do not fit in memory.

:func:`as_source` wraps a numpy memmap, any array-like with row slicing and
``.shape`` / ``.dtype`` (h5py and zarr datasets, ...) or a ``dask.array`` in a
:class:`ChunkedSource`. The source reads one *block* of rows at a time as a
C-contiguous float64 array, so peak memory is bounded by the block size, not n.

A pass over a source is :func:`emcore.engine.data_pass` on each block, the
per-block statistics, responsibility sums and totals merged in block order.
Blocks are a whole number of chunks long (``block_rows`` is a multiple of the
chunk size), so the chunks inside a block are the in-memory pass's chunks; only
the grouping of chunks into summation blocks differs. Consequences:

- a source of at most one block (n <= ``block_rows``) gives bitwise the
  in-memory result (the same call on the same array);
- otherwise the blocks' statistics are merged by the family's ``merge_stats``
  (for the first-party families, their kernel's merge) in another grouping; the
  totals are the same terms summed in another order: the difference is bounded
  by 2 * depth * u * M, with M the pass's rounding
  magnitude (``PassResult.magnitude``), u = 2^-53 and depth the summation depth
  (:meth:`ChunkedSource.summation_depth`), which ``run_em`` then uses in its
  chain tolerances.

Validation happens once, at wrapping, a block at a time: the same messages as
:func:`emcore._validation.check_data` (finite numbers, naming the row and
column, the column spread), never loading more than one block.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

__all__ = ["ChunkedSource", "as_source", "is_chunked"]

_DEFAULT_BLOCK_CHUNKS = 16    # = MAX_BLOCKS: one block keeps every thread busy


def _is_dask(X: Any) -> bool:
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def is_chunked(X: Any) -> bool:
    """True for inputs read a block at a time: a numpy memmap, a dask array, or any
    non-numpy 2-D array-like with ``.shape``, a numpy ``.dtype`` and row slicing
    (h5py, zarr, ...)."""
    if isinstance(X, (ChunkedSource, np.memmap)) or _is_dask(X):
        return True
    if isinstance(X, np.ndarray) or hasattr(X, "tocsr") or \
            type(X).__module__.startswith("scipy.sparse"):
        return False            # in memory, or sparse (check_data refuses it)
    shape = getattr(X, "shape", None)
    if not hasattr(X, "__getitem__") or not isinstance(shape, tuple) or len(shape) != 2:
        return False
    try:
        np.dtype(getattr(X, "dtype", None))
    except TypeError:
        return False
    return getattr(X, "dtype", None) is not None


def as_source(X: Any, *, name: str = "X", owner: str = "",
              n_features: Optional[int] = None, block_rows: Optional[int] = None
              ) -> "ChunkedSource":
    """Wrap (and validate, a block at a time) a chunked input; see :func:`is_chunked`."""
    if isinstance(X, ChunkedSource):
        X._check_n_features(n_features)
        return X
    if _is_dask(X):
        from emcore.distributed import DaskSource, active_client
        if active_client() is not None:      # passes on the cluster's workers
            return DaskSource(X, name=name, owner=owner, n_features=n_features,
                              block_rows=block_rows)
    return ChunkedSource(X, name=name, owner=owner, n_features=n_features,
                         block_rows=block_rows)


_ROW = re.compile(r"\brow (\d+)")


def in_source_rows(exc: Exception, start: int) -> Exception:
    """``exc`` (a ValueError or FloatingPointError of a block's pass) with its row
    numbers counted from the source's first row instead of the block's."""
    return type(exc)(_ROW.sub(lambda m: f"row {int(m.group(1)) + start}", str(exc)))


class ChunkedSource:
    """Rows of a 2-D array read a block at a time as C-contiguous float64.

    Supports ``shape``, ``len``, row slices ``X[a:b]``, a row ``X[i]`` and a list
    of rows ``X[[i, j]]`` (numpy arrays out), :meth:`blocks` and :meth:`pass_`,
    which the engine's ``data_pass`` calls for a source.

    Parameters
    ----------
    data : memmap, h5py/zarr dataset, dask array or 2-D array-like
    block_rows : int, optional
        Rows per block, rounded up to a multiple of the chunk size; default 16
        chunks (:func:`emcore.engine.chunk_rows_for`), about 4 MiB.
    """

    def __init__(self, data: Any, *, name: str = "X", owner: str = "",
                 n_features: Optional[int] = None, block_rows: Optional[int] = None):
        from emcore._validation import _check_dtype, _check_shape, _data_prefix
        from emcore.engine import chunk_rows_for
        self._data = data
        self._name, self._owner = name, owner
        prefix = _data_prefix(name, owner)
        shape = tuple(int(s) for s in data.shape)
        _check_dtype(np.dtype(data.dtype), prefix)
        _check_shape(shape, prefix)
        self.shape = shape
        self.ndim = 2
        self.dtype = np.dtype(np.float64)
        self._check_n_features(n_features)
        self.chunk_rows = chunk_rows_for(shape[1])
        if block_rows is None:
            block_rows = _DEFAULT_BLOCK_CHUNKS * self.chunk_rows
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) \
                or block_rows < 1:
            raise ValueError(f"The 'block_rows' parameter must be a positive int. Got "
                             f"{block_rows!r} instead.")
        self.block_rows = int(-(-int(block_rows) // self.chunk_rows) * self.chunk_rows)
        self._validate()

    # --- reading ------------------------------------------------------------------
    def _read(self, start: int, stop: int) -> np.ndarray:
        block = self._data[start:stop]
        if hasattr(block, "compute"):           # dask: this block only
            block = block.compute()
        return np.ascontiguousarray(block, dtype=np.float64)

    def block_bounds(self) -> list:
        """[(start, stop), ...] of the blocks, in row order."""
        n = self.shape[0]
        return [(a, min(n, a + self.block_rows)) for a in range(0, n, self.block_rows)]

    def blocks(self):
        """Yield (start, stop, rows) for every block, in row order."""
        for a, b in self.block_bounds():
            yield a, b, self._read(a, b)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        # rows within one block come from that block, read once and kept until
        # another block is asked for (initialisation reads chunk by chunk)
        b0 = start - start % self.block_rows
        b1 = min(self.shape[0], b0 + self.block_rows)
        if stop > b1 or stop <= start:
            return self._read(start, max(start, stop))
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != b0:
            cached = self._cache = (b0, self._read(b0, b1))
        return cached[1][start - b0:stop - b0]

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("a chunked source supports row slices with step 1 only")
            return self._rows(start, stop)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return self._rows(i, i + 1)[0].copy()
        idx = np.asarray(key)
        if idx.ndim == 1 and np.issubdtype(idx.dtype, np.integer):
            out = np.empty((idx.shape[0], self.shape[1]))
            for j, i in enumerate(idx):
                out[j] = self[int(i)]
            return out
        raise IndexError("a chunked source supports row slices, a row index or a list "
                         "of row indices")

    def __repr__(self) -> str:
        return (f"ChunkedSource({type(self._data).__name__}, shape={self.shape}, "
                f"block_rows={self.block_rows})")

    # --- validation ---------------------------------------------------------------
    def _check_n_features(self, n_features: Optional[int]) -> None:
        from emcore._validation import _check_n_features
        _check_n_features(self.shape[1], n_features, self._name, self._owner)

    def _validate(self) -> None:
        from emcore._validation import block_summary, check_blocks
        check_blocks(((start, block_summary(rows)) for start, _, rows in self.blocks()),
                     self.shape[1], name=self._name, owner=self._owner)

    # --- passes -------------------------------------------------------------------
    def summation_depth(self, chunk_rows: int) -> int:
        """Longest chain of additions behind a pass total: the depth inside a block
        plus one addition per block."""
        from emcore.engine import summation_depth
        n_blocks = len(self.block_bounds())
        return summation_depth(min(self.shape[0], self.block_rows), chunk_rows) + n_blocks

    def _pass_chunk_rows(self, chunk_rows: Optional[int]) -> int:
        chunk_rows = chunk_rows or self.chunk_rows
        if self.block_rows % chunk_rows:
            raise ValueError(f"block_rows={self.block_rows} is not a multiple of "
                             f"chunk_rows={chunk_rows}")
        return chunk_rows

    def pass_(self, family, rule, weights, params, *, n_jobs=1, with_stats=True,
              sample_weight=None, out_log_resp=None, out_row_value=None, out_labels=None,
              chunk_rows=None):
        """:func:`emcore.engine.data_pass` over the blocks, merged in block order.

        Called by ``data_pass`` for a source (which refuses rules that need all rows).
        """
        from emcore.engine import data_pass
        chunk_rows = self._pass_chunk_rows(chunk_rows)

        def block_results():
            for start, stop, rows in self.blocks():
                def part(a):
                    return None if a is None else a[start:stop]
                try:
                    res = data_pass(rows, family, rule, weights, params, n_jobs=n_jobs,
                                    with_stats=with_stats, sample_weight=part(sample_weight),
                                    out_log_resp=part(out_log_resp),
                                    out_row_value=part(out_row_value),
                                    out_labels=part(out_labels), chunk_rows=chunk_rows)
                except (ValueError, FloatingPointError) as exc:
                    raise in_source_rows(exc, start) from None
                yield (res.stats, res.resp_sum,
                       (res.value, res.expected_log_joint, res.entropy, res.magnitude))

        return merge_block_results(family, block_results(), with_stats)


def merge_block_results(family, results, with_stats: bool):
    """One :class:`emcore.engine.PassResult` from the blocks' (stats, resp_sum, totals),
    merged in the order given (block order)."""
    from emcore.engine import PassResult
    stats, resp_sum, totals = None, None, np.zeros(4)
    for block_stats, block_resp, block_totals in results:
        if with_stats:
            stats = block_stats if stats is None else family.merge_stats(stats, block_stats)
        resp_sum = block_resp.copy() if resp_sum is None else resp_sum + block_resp
        totals += block_totals
    return PassResult(stats=stats, resp_sum=resp_sum, value=float(totals[0]),
                      expected_log_joint=float(totals[1]), entropy=float(totals[2]),
                      magnitude=float(totals[3]))

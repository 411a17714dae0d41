"""Chunked data sources: fit data that do not fit in memory.

A :class:`ChunkedSource` wraps a numpy memmap, any array-like with row slicing and
``.shape`` / ``.dtype`` (h5py and zarr datasets, ...) or a ``dask.array`` read
through the client. It reads one *block* of rows at a time as a C-contiguous
float64 array, so peak memory is bounded by the block size, not n. Which
source an input gets is decided in one place, :mod:`emcore._input`.

A source is what :class:`emcore.engine.RowBlocks` describes: the engine's pass
maps :func:`emcore.engine.block_pass` over the blocks (:meth:`ChunkedSource.map_blocks`)
and merges the per-block statistics, responsibility sums and totals in block
order. Blocks are a whole number of chunks long (``block_rows`` is a multiple of
the chunk size), so the chunks inside a block are the in-memory pass's chunks;
only the grouping of chunks into summation blocks differs. Consequences:

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

from typing import Any, Callable, Iterator, Optional

import numpy as np

from emcore._validation import (_check_dtype, _check_n_features, _check_shape,
                                _data_prefix, block_summary, check_blocks)
from emcore.engine import chunk_rows_for, summation_depth

__all__ = ["ChunkedSource", "SparseSource"]

_DEFAULT_BLOCK_CHUNKS = 16    # = MAX_BLOCKS: one block keeps every thread busy


def check_known_shape(data: Any, name: str, owner: str) -> None:
    """Raise a ValueError naming the argument if ``data``'s shape is not known (a
    dask array with unknown chunk sizes has NaN in its shape)."""
    shape = tuple(data.shape)
    if all(isinstance(s, (int, np.integer)) or (isinstance(s, float) and s.is_integer())
           for s in shape):
        return
    hint = (" call X.compute_chunk_sizes() first (from a dask dataframe: "
            "to_dask_array(lengths=True))" if hasattr(data, "compute_chunk_sizes") else "")
    raise ValueError(f"{_data_prefix(name, owner)} with a known number of rows. Got an "
                     f"array of shape {shape} (unknown chunk sizes) instead:{hint}.")


def _summary(rows: np.ndarray, start: int, shared: Any) -> tuple:
    # map_blocks' function for validation: what check_blocks needs of a block
    return block_summary(rows)


class ChunkedSource:
    """Rows of a 2-D array read a block at a time as C-contiguous float64.

    Supports ``shape``, ``len``, row slices ``X[a:b]``, a row ``X[i]`` and a list
    of rows ``X[[i, j]]`` (numpy arrays out), :meth:`blocks` and
    :meth:`map_blocks`, through which the engine's ``data_pass`` runs over it
    (:class:`emcore.engine.RowBlocks`).

    Parameters
    ----------
    data : memmap, h5py/zarr dataset, dask array or 2-D array-like
    block_rows : int, optional
        Rows per block, rounded up to a multiple of the chunk size; default 16
        chunks (:func:`emcore.engine.chunk_rows_for`), about 4 MiB.
    """

    def __init__(self, data: Any, *, name: str = "X", owner: str = "",
                 n_features: Optional[int] = None, block_rows: Optional[int] = None):
        self._data = data
        self._name, self._owner = name, owner
        prefix = _data_prefix(name, owner)
        check_known_shape(data, name, owner)
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
        _check_n_features(self.shape[1], n_features, self._name, self._owner)

    def _validate(self) -> None:
        summaries = self.map_blocks(_summary, None)
        check_blocks(zip((start for start, _ in self.block_bounds()), summaries),
                     self.shape[1], name=self._name, owner=self._owner)

    # --- passes -------------------------------------------------------------------
    def summation_depth(self, chunk_rows: int) -> int:
        """Longest chain of additions behind a pass total: the depth inside a block
        plus one addition per block."""
        n_blocks = len(self.block_bounds())
        return summation_depth(min(self.shape[0], self.block_rows), chunk_rows) + n_blocks

    def map_blocks(self, fn: Callable, shared: Any, *, row_inputs: tuple = (),
                   row_outputs: tuple = ()) -> Iterator:
        """``fn(rows, start, shared, *inputs, *outputs)`` for each block, in block
        order; see :class:`emcore.engine.RowBlocks`. Lazy: each block is read here
        when the next result is asked for (validation stops at the first bad block)."""
        arrays = tuple(row_inputs) + tuple(row_outputs)
        return (fn(rows, start, shared,
                   *(None if a is None else a[start:stop] for a in arrays))
                for start, stop, rows in self.blocks())


def is_sparse(X: Any) -> bool:
    """True for a scipy.sparse array or matrix (any format)."""
    return hasattr(X, "tocsr") and type(X).__module__.startswith("scipy.sparse")


class SparseSource(ChunkedSource):
    """Rows of a scipy.sparse array or matrix, densified a block at a time.

    The matrix is held as CSR (any other format, CSC included, is converted once
    here); each block's rows are sliced from it and densified to C-contiguous
    float64, so the compiled kernels run unchanged on exactly the numbers of
    ``X.toarray()`` and peak memory is the sparse matrix plus one dense block
    (``block_rows`` rows; never the whole dense matrix). Everything else is a
    :class:`ChunkedSource`: a matrix of at most one block (n <= ``block_rows``)
    fits bitwise as ``X.toarray()`` does; a longer one as a memmap of
    ``X.toarray()`` does, to the bound of the module docstring.
    """

    def __init__(self, data: Any, *, name: str = "X", owner: str = "",
                 n_features: Optional[int] = None, block_rows: Optional[int] = None):
        if getattr(data, "format", None) != "csr":
            data = data.tocsr()
        super().__init__(data, name=name, owner=owner, n_features=n_features,
                         block_rows=block_rows)

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self._data[start:stop].toarray(), dtype=np.float64)

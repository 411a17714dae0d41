"""EM on a Dask cluster: passes run where the rows are, the M-step on the client.

``fit(dask_array)`` with a ``dask.distributed`` client active (``Client(...)``
anywhere in the process, so ``distributed.default_client()`` finds it) wraps the
array in a :class:`DaskSource` (:mod:`emcore._input` decides). Each pass maps
:func:`emcore.engine.block_pass` (the family's compiled chunk kernel) over the
array's blocks on the workers (:meth:`DaskSource.map_blocks`, the engine's
:class:`emcore.engine.RowBlocks` interface); each task returns only the block's
statistics, responsibility sum and totals. The client gathers them in block order and
merges them there, in that fixed order, then does the M-step. What crosses the
network per iteration: the parameters with the family and rule objects, once to
each worker (one key of the task graph; about 100 kB for k = d = 16, full
covariances), and one
statistics object per block back (k (1 + 2d + d^2) doubles, 37 kB for k = d =
16); never rows. Validation is a pass of the same kind (per-block
finite check and column range).

Blocks are rechunked once (and persisted on the workers if the array takes at
most half their memory; otherwise recomputed from the graph, e.g. re-read from
files, every pass, so data larger than the cluster's memory fit) so every block's row
count is a multiple of the chunk size and a block spans all columns: the chunks
inside a block are the in-memory pass's chunks. The result is bitwise the
result of a local :class:`emcore._sources.ChunkedSource` with the same block
boundaries, whichever worker ran which block; a single block gives bitwise the
in-memory fit; more blocks differ from it by the reordering bound stated in
:mod:`emcore._sources`.

Initialisation: k-means++'s distances are computed on the workers (n doubles
per seed cross the network); the initial nearest-seed assignment reads the rows
through the client once, a block at a time. Give
``means_init``/``weights_init``/``precisions_init`` to avoid that pass.

A worker lost mid-fit or during initialisation: Dask recomputes its blocks from
the graph on another worker (retries); if the task keeps failing (``KilledWorker``
and the like), the fit raises RuntimeError naming the cause. A cluster left with
no worker at all: Dask would wait for one forever; after ``no_worker_timeout``
seconds without a worker (default 300) the fit raises RuntimeError saying so.
A pass is all-or-nothing, so a fit never continues on partial statistics. Every
computation on the cluster (validation, seeding, passes, blocks read through
the client) goes through the same wait and the same errors.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional

import numpy as np

from emcore._init import row_sq_dist
from emcore._sources import ChunkedSource, check_known_shape

__all__ = ["DaskSource", "active_client", "DEFAULT_NO_WORKER_TIMEOUT"]

#: Seconds a computation waits while the cluster has no worker before it raises.
DEFAULT_NO_WORKER_TIMEOUT = 300.0
_POLL_SECONDS = 0.5       # how often a waiting computation looks for workers


def active_client():
    """The current ``dask.distributed`` client, or None (no client, or distributed
    not installed)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _cluster_memory(client) -> float:
    """Sum of the workers' memory limits in bytes (inf if any is unlimited)."""
    limits = [w.get("memory_limit") or 0
              for w in client.scheduler_info()["workers"].values()]
    return float("inf") if not limits or 0 in limits else float(sum(limits))


def _shared(value):
    return value


def _on_block(fn, block, start, shared, *row_args):
    # runs on a worker: fn on one block as map_blocks promises it (C-contiguous
    # float64 rows); shared is one key of the graph
    return fn(np.ascontiguousarray(block, dtype=np.float64), start, shared, *row_args)


def _sq_dist_block(rows, start, centre):
    return row_sq_dist(rows, centre)


class _ClusterFailed(RuntimeError):
    """A computation on the cluster failed or could not run (no parameters changed)."""


class DaskSource(ChunkedSource):
    """A dask array on a ``dask.distributed`` cluster; see the module docstring.

    Parameters
    ----------
    data : dask.array.Array of shape (n_samples, n_features)
    client : distributed.Client, optional
        Default: the active client.
    persist : bool, optional
        Keep the (rechunked) blocks in the workers' memory between passes. Default:
        if the array takes at most half the workers' total memory limit; otherwise
        every pass recomputes the blocks from the array's graph (e.g. re-reads
        them from files on the workers), so data larger than the cluster's memory
        fit too.
    no_worker_timeout : float or None, default 300
        Seconds a computation waits while the cluster has no worker at all (every
        worker died, or none has started yet) before raising RuntimeError; the
        wait starts again whenever a worker is seen. None waits forever (an
        adaptive cluster whose workers wait in a batch queue). To set it for a
        fit, pass ``DaskSource(dask_array, no_worker_timeout=...)`` to ``fit``.
    """

    def __init__(self, data: Any, *, client=None, name: str = "X", owner: str = "",
                 n_features: Optional[int] = None, block_rows: Optional[int] = None,
                 persist: Optional[bool] = None,
                 no_worker_timeout: Optional[float] = DEFAULT_NO_WORKER_TIMEOUT):
        from emcore.engine import chunk_rows_for
        self._client = client or active_client()
        if self._client is None:
            raise ValueError("DaskSource needs a dask.distributed Client")
        if no_worker_timeout is not None and (
                isinstance(no_worker_timeout, bool) or not isinstance(
                    no_worker_timeout, (int, float)) or not no_worker_timeout > 0):
            raise ValueError("The 'no_worker_timeout' parameter of DaskSource must be None "
                             f"or a positive number of seconds. Got {no_worker_timeout!r} "
                             "instead.")
        self.no_worker_timeout = no_worker_timeout
        check_known_shape(data, name, owner)
        c = chunk_rows_for(int(data.shape[1])) if len(data.shape) == 2 else 1
        if len(data.shape) == 2:
            rows = data.chunks[0]
            # every block but the last a multiple of the chunk size, all columns
            if block_rows is None:
                block_rows = max(rows[0] if rows else c, c)
            block_rows = -(-int(block_rows) // c) * c
            if any(r != block_rows for r in rows[:-1]) or rows[-1] > block_rows or \
                    len(data.chunks[1]) != 1:
                data = data.rechunk((block_rows, -1))
            if persist is None:
                persist = data.nbytes <= 0.5 * _cluster_memory(self._client)
            if persist:
                data = data.persist()
        self._delayed = None
        super().__init__(data, name=name, owner=owner, n_features=n_features,
                         block_rows=block_rows)

    def _blocks_delayed(self):
        if self._delayed is None:
            self._delayed = list(self._data.to_delayed().ravel())
        return self._delayed

    def _wait(self, futures) -> None:
        """Wait for ``futures``; raise if the cluster has had no worker for
        ``no_worker_timeout`` seconds meanwhile (Dask itself would wait forever)."""
        since = None              # when the cluster was first seen without workers
        pending = list(futures)
        while pending:
            try:
                pending[0].result(timeout=_POLL_SECONDS)
            except TimeoutError:
                pass
            except Exception:     # a failed task: gather raises its error
                return
            pending = [f for f in pending if not f.done()]
            if not pending:
                return
            if self.no_worker_timeout is None or self._client.nthreads():
                since = None
                continue
            now = time.monotonic()
            since = now if since is None else since
            if now - since >= self.no_worker_timeout:
                self._client.cancel(futures)
                raise _ClusterFailed(
                    f"the Dask cluster has had no worker for {self.no_worker_timeout:g} s "
                    "(every worker died or none started), so a computation over the data "
                    "could not run; no parameters were updated from partial statistics. "
                    "Restart the workers, or wait longer with DaskSource(X, "
                    "no_worker_timeout=...).")

    def _gather(self, tasks: list) -> list:
        """The results of ``tasks`` (delayed objects or dask collections), in order.

        Any failure of the cluster (a task that kept losing its worker, a lost
        connection, no worker left) is a RuntimeError naming the cause; the errors
        of emcore's own checks and passes (ValueError, FloatingPointError) pass
        through as they are."""
        futures = []
        try:
            futures = self._client.compute(tasks)
            self._wait(futures)
            return self._client.gather(futures)
        except BaseException as exc:
            # release the failed computation's keys, so that a retry of the fit
            # recomputes them instead of finding them failed
            self._client.cancel(futures)
            if not isinstance(exc, Exception) or isinstance(
                    exc, (ValueError, FloatingPointError, _ClusterFailed)):
                raise
            raise _ClusterFailed(f"the Dask cluster failed to complete a computation over "
                                 f"the data ({type(exc).__name__}: {exc}); no parameters "
                                 "were updated from partial statistics") from exc

    def _read(self, start: int, stop: int) -> np.ndarray:
        # rows read through the client (initialisation, per-row outputs): the same
        # waits and errors as the passes
        block = self._gather([self._data[start:stop]])[0]
        return np.ascontiguousarray(block, dtype=np.float64)

    def sq_dist_to(self, centre: np.ndarray, out: np.ndarray) -> None:
        """out[i] = ||x_i - centre||^2, computed on the workers (k-means++ seeding):
        n doubles cross the network, not the rows."""
        centre = np.asarray(centre, dtype=np.float64)
        parts = self.map_blocks(_sq_dist_block, centre)
        for (start, stop), part in zip(self.block_bounds(), parts):
            out[start:stop] = part

    def map_ranges(self, fn: Callable, shared: Any, ranges: list, extras: list) -> list:
        """``fn(rows, start, shared, extra)`` of each ``(start, stop)`` row range, run on
        the workers (a range's rows are assembled there from the blocks that hold
        them), gathered in order: a pass whose unit is not a block, e.g. the whole
        sequences of a hidden Markov model (plugins/structures.py), never split."""
        from dask import delayed
        shared_key = delayed(_shared, pure=False)(shared)
        tasks = [delayed(_on_block, pure=False)(fn, self._data[start:stop], start,
                                               shared_key, extra)
                 for (start, stop), extra in zip(ranges, extras)]
        return self._gather(tasks)

    def map_blocks(self, fn: Callable, shared: Any, *, row_inputs: tuple = (),
                   row_outputs: tuple = ()) -> Iterable:
        """``fn(rows, start, shared, *inputs, *outputs)`` of each block, run on the
        workers where the blocks are, gathered on the client in block order; see
        :class:`emcore.engine.RowBlocks`. ``shared`` is one key of the graph: it
        reaches each worker once per call, not with every task, and a worker lost
        with its copy is recomputed from the graph like a block (a lost scattered
        key cannot be, and its dependents would wait for it forever). With an
        output array, the blocks are read through the client and ``fn`` runs here,
        since it writes the outputs in place."""
        if any(a is not None for a in row_outputs):
            return super().map_blocks(fn, shared, row_inputs=row_inputs,
                                      row_outputs=row_outputs)
        from dask import delayed
        shared_key = delayed(_shared, pure=False)(shared)
        tasks = []
        for (start, stop), block in zip(self.block_bounds(), self._blocks_delayed()):
            inputs = [None if a is None else a[start:stop] for a in row_inputs]
            inputs += [None] * len(row_outputs)
            tasks.append(delayed(_on_block, pure=False)(fn, block, start, shared_key,
                                                       *inputs))
        return self._gather(tasks)

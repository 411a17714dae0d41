"""EM on a Dask cluster: passes run where the rows are, the M-step on the client.

``fit(dask_array)`` with a ``dask.distributed`` client active (``Client(...)``
anywhere in the process, so ``distributed.default_client()`` finds it) wraps the
array in a :class:`DaskSource`. Each pass maps
:func:`emcore.engine.data_pass` (the family's compiled chunk kernel) over the
array's blocks on the workers; each task returns only the block's statistics,
responsibility sum and totals. The client gathers them in block order and
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

A worker lost mid-fit: Dask recomputes its blocks from the graph on another
worker (retries); if the task keeps failing, the fit raises RuntimeError naming
the cause. A pass is all-or-nothing, so a fit never continues on partial
statistics.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from emcore._sources import ChunkedSource, merge_block_results

__all__ = ["DaskSource", "active_client"]


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


def _model(family, rule, weights, params):
    return family, rule, weights, params


def _block_pass(block, start, model, sample_weight, with_stats, chunk_rows, n_jobs):
    # runs on a worker: one block's pass, statistics and totals only; model =
    # (family, rule, weights, params), one key of the pass's graph
    from emcore._sources import in_source_rows
    from emcore.engine import data_pass
    family, rule, weights, params = model
    try:
        res = data_pass(np.ascontiguousarray(block, dtype=np.float64), family, rule,
                        weights, params, n_jobs=n_jobs, with_stats=with_stats,
                        sample_weight=sample_weight, chunk_rows=chunk_rows)
    except (ValueError, FloatingPointError) as exc:
        raise in_source_rows(exc, start) from None
    return (res.stats, res.resp_sum,
            (res.value, res.expected_log_joint, res.entropy, res.magnitude))


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
    """

    def __init__(self, data: Any, *, client=None, name: str = "X", owner: str = "",
                 n_features: Optional[int] = None, block_rows: Optional[int] = None,
                 persist: Optional[bool] = None):
        from emcore.engine import chunk_rows_for
        self._client = client or active_client()
        if self._client is None:
            raise ValueError("DaskSource needs a dask.distributed Client")
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

    def _gather(self, tasks):
        try:
            return self._client.gather(self._client.compute(tasks))
        except Exception as exc:
            if isinstance(exc, (ValueError, FloatingPointError)):
                raise
            raise RuntimeError(f"the Dask cluster failed to complete a pass over the "
                               f"data ({type(exc).__name__}: {exc}); no parameters were "
                               "updated from partial statistics") from exc

    def _validate(self) -> None:
        # each block summarised on its worker (a first non-finite entry, the column
        # extremes), checked on the client as check_data checks an array
        from dask import delayed
        from emcore._validation import block_summary, check_blocks
        results = self._gather([delayed(block_summary)(b) for b in self._blocks_delayed()])
        check_blocks(zip((start for start, _ in self.block_bounds()), results),
                     self.shape[1], name=self._name, owner=self._owner)

    def sq_dist_to(self, centre: np.ndarray, out: np.ndarray) -> None:
        """out[i] = ||x_i - centre||^2, computed on the workers (k-means++ seeding):
        n doubles cross the network, not the rows."""
        from dask import delayed
        from emcore._init import row_sq_dist     # on the workers: the local numbers
        centre = np.asarray(centre, dtype=np.float64)
        parts = self._gather([delayed(row_sq_dist, pure=False)(b, centre)
                              for b in self._blocks_delayed()])
        for (start, stop), part in zip(self.block_bounds(), parts):
            out[start:stop] = part

    def pass_(self, family, rule, weights, params, *, n_jobs=1, with_stats=True,
              sample_weight=None, out_log_resp=None, out_row_value=None, out_labels=None,
              chunk_rows=None):
        """The pass on the workers, merged on the client in block order."""
        from dask import delayed
        if any(a is not None for a in (out_log_resp, out_row_value, out_labels)):
            # per-row outputs (score_samples, predict): the local block reader
            return super().pass_(family, rule, weights, params, n_jobs=n_jobs,
                                 with_stats=with_stats, sample_weight=sample_weight,
                                 out_log_resp=out_log_resp, out_row_value=out_row_value,
                                 out_labels=out_labels, chunk_rows=chunk_rows)
        chunk_rows = self._pass_chunk_rows(chunk_rows)
        weights = np.asarray(weights, dtype=np.float64)
        # the model is one key of the graph, not scattered data: it reaches each
        # worker once per pass, not with every task, and a worker lost with its
        # copy is recomputed from the graph like a block (a lost scattered key
        # cannot be, and its dependents would wait for it forever)
        model = delayed(_model, pure=False)(family, rule, weights, params)
        tasks = []
        for (start, stop), block in zip(self.block_bounds(), self._blocks_delayed()):
            sw = None if sample_weight is None else sample_weight[start:stop]
            tasks.append(delayed(_block_pass, pure=False)(
                block, start, model, sw, with_stats, chunk_rows, n_jobs))
        return merge_block_results(family, self._gather(tasks), with_stats)  # block order

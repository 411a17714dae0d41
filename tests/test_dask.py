"""EM on a dask.distributed cluster (emcore/distributed.py): one 2-worker
LocalCluster (processes) for the module.

Exactness: the workers run the same compiled pass on the same blocks and the
client merges in block order, so a fit on the cluster is bitwise the fit of a
local ChunkedSource with the same block boundaries, and bitwise the in-memory
fit when the array is one block. With several blocks it differs from the
in-memory fit only by the reordering of the same sums (emcore/_sources.py):
relative 1e-12 on the log-likelihood.
"""

import faulthandler
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import emcore
from emcore._input import check_input
from emcore._sources import ChunkedSource
from emcore.engine import chunk_rows_for

try:
    import dask.array as da
    from distributed import Client, LocalCluster
except ImportError:
    if os.environ.get("EMCORE_TEST_INSTALLED"):
        raise        # CI installs the dask extra: these tests must run there
    pytest.skip("dask[distributed] not installed", allow_module_level=True)

from emcore.distributed import DaskSource  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


class _Rows:
    def __init__(self, X):
        self._X, self.shape, self.dtype = X, X.shape, X.dtype

    def __getitem__(self, key):
        return self._X[key]


def _data(n, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(n // 2, d)),
                        rng.normal(size=(n - n // 2, d)) * 0.5 + 4.0])
    return X[rng.permutation(n)]


def _fit(X, est=emcore.GaussianMixture, **kw):
    kw = {"n_components": 2, "random_state": 0, "tol": 0.0, "max_iter": 10, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est(**kw).fit(X)


def _same(a, b):
    assert a.lower_bound_ == b.lower_bound_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)


def test_dask_array_becomes_a_dask_source(client):
    X = _data(1000)
    src = check_input(da.from_array(X, chunks=(300, 3)))
    assert isinstance(src, DaskSource)
    # rechunked: blocks a multiple of the chunk size, all columns
    assert src.block_rows % chunk_rows_for(3) == 0


def test_one_block_is_bitwise_the_in_memory_fit(client):
    X = _data(3 * chunk_rows_for(3) + 11)
    _same(_fit(X), _fit(da.from_array(X, chunks=(X.shape[0], 3))))


def test_several_blocks(client):
    # 5 blocks of 2 chunks: bitwise the local source with these blocks, and the
    # in-memory fit up to the order of the sums
    c = chunk_rows_for(3)
    X = _data(10 * c - 100)
    dx = da.from_array(X, chunks=(2 * c, 3))
    on_cluster = _fit(dx)
    _same(on_cluster, _fit(ChunkedSource(_Rows(X), block_rows=2 * c)))
    in_memory = _fit(X)
    assert on_cluster.lower_bound_ == pytest.approx(in_memory.lower_bound_, rel=1e-12)
    scale = np.max(np.abs(X))
    np.testing.assert_allclose(on_cluster.means_, in_memory.means_, rtol=0,
                               atol=1e-10 * scale)
    np.testing.assert_allclose(on_cluster.covariances_, in_memory.covariances_,
                               rtol=0, atol=1e-10 * scale ** 2)
    assert all(it.chain_holds() for it in on_cluster.history_)
    # scores go through the block reader
    np.testing.assert_allclose(on_cluster.score_samples(dx), in_memory.score_samples(X),
                               rtol=1e-10)


def test_not_persisted_gives_the_same_fit(client):
    # blocks recomputed from the graph every pass (data larger than the workers'
    # memory): the same blocks, the same fit
    c = chunk_rows_for(3)
    X = _data(6 * c)
    dx = da.from_array(X, chunks=(2 * c, 3))
    source = DaskSource(dx, persist=False)
    assert source._data is dx            # no rechunk needed, nothing persisted
    _same(_fit(source), _fit(dx))


def test_seeding_distances_on_the_workers(client):
    from emcore._init import _sq_dist_to
    c = chunk_rows_for(3)
    X = _data(5 * c + 3)
    src = DaskSource(da.from_array(X, chunks=(2 * c, 3)))
    got, want = np.empty(X.shape[0]), np.empty(X.shape[0])
    src.sq_dist_to(X[7], got)
    _sq_dist_to(X, X[7], want)
    np.testing.assert_array_equal(got, want)


def test_kmeans_and_mixture_model(client):
    X = _data(2 * chunk_rows_for(3))
    dx = da.from_array(X, chunks=(X.shape[0], 3))
    a = emcore.KMeans(2, random_state=0, n_init=1).fit(X)
    b = emcore.KMeans(2, random_state=0, n_init=1).fit(dx)
    assert a.inertia_ == b.inertia_
    np.testing.assert_array_equal(a.labels_, b.labels_)
    m1, m2 = _fit(X, est=emcore.MixtureModel), _fit(dx, est=emcore.MixtureModel)
    assert m1.lower_bound_ == m2.lower_bound_


def test_validation_runs_on_the_workers_and_names_the_row(client):
    c = chunk_rows_for(3)
    X = _data(3 * c)
    X[2 * c + 5, 2] = np.inf
    with pytest.raises(ValueError, match=rf"at row {2 * c + 5}, column 2"):
        emcore.GaussianMixture(2).fit(da.from_array(X, chunks=(c, 3)))


@pytest.mark.slow
def test_worker_killed_mid_fit_recovers_or_raises(client):
    """Kill one worker process during the fit: Dask reruns its tasks (the nanny
    restarts the worker, lost blocks are recomputed from the graph), and the fit
    is bitwise the undisturbed one; if Dask gives up, a RuntimeError says so.
    Never a silently different model."""
    c = chunk_rows_for(3)
    X = _data(40 * c)
    dx = da.from_array(X, chunks=(4 * c, 3))
    kw = {"max_iter": 60}
    t0 = time.perf_counter()
    reference = _fit(dx, **kw)
    seconds = time.perf_counter() - t0
    pids = list(client.run(os.getpid).values())

    def kill():
        time.sleep(seconds / 3)         # after initialisation, mid-iterations
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    # A hang is the failure this test exists to catch (it once waited forever on
    # a scattered key lost with the worker): after 5 minutes, far beyond the
    # undisturbed fit's seconds, dump every thread's stack and end the run.
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        result = _fit(dx, **kw)
    except RuntimeError as exc:
        assert "Dask cluster failed" in str(exc)
    else:
        _same(result, reference)
    finally:
        killer.join()
        client.wait_for_workers(2, timeout=60)
        faulthandler.cancel_dump_traceback_later()
    assert pids[0] not in client.run(os.getpid).values()     # the kill happened

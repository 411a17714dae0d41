"""
Data larger than memory, and Dask
=================================

``fit`` reads a memory map (or an h5py/zarr dataset) one block of rows at a time,
so memory is bounded by the block; the result is the in-memory fit. With a
``dask.distributed`` client, ``fit(dask_array)`` runs each pass on the workers,
which send back statistics, never rows. Both on a small example here.
"""

import os
import tempfile

import numpy as np

import emcore

n, d = 20_000, 2
rng = np.random.default_rng(0)
data = np.concatenate([rng.normal(0, 1, (n // 2, d)), rng.normal(4, 1, (n // 2, d))])
workdir = tempfile.mkdtemp()
path = os.path.join(workdir, "X.f64")
data.tofile(path)                              # a file of raw float64 rows

X = np.memmap(path, dtype=np.float64, mode="r", shape=(n, d))
gm = emcore.GaussianMixture(2, random_state=0).fit(X)
in_memory = emcore.GaussianMixture(2, random_state=0).fit(data)
print(gm.means_[np.argsort(gm.means_[:, 0])].round(2))
print(np.allclose(gm.means_, in_memory.means_, rtol=1e-12, atol=0))

# %%
# The same fit on a local Dask cluster (threads, no processes: seconds to start).
# On a real cluster: ``Client("tcp://scheduler:8786")`` and ``da.from_zarr(...)``
# so that the workers read their own blocks.
import dask.array as da
from distributed import Client, LocalCluster

with LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, \
        Client(cluster):
    Xd = da.from_array(data, chunks=(4096, d))
    gd = emcore.GaussianMixture(2, random_state=0).fit(Xd)
print(gd.means_[np.argsort(gd.means_[:, 0])].round(2))
print(np.allclose(gd.means_, in_memory.means_, rtol=1e-12, atol=0))

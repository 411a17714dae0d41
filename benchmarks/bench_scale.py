"""Seconds per EM iteration: in memory vs memmap vs a Dask LocalCluster (1 and 2 workers).

emcore's GaussianMixture(covariance_type='full') on the same data (a seeded mixture
of k Gaussians, float64, by default n = 1e6, d = 16, k = 16) from the same start
(weights_init, means_init, precisions_init given, so no initialisation runs), tol=0.
Seconds per iteration = the median, over all iterations of all repeats, of the
engine's own per-iteration wall time (``history_[t].seconds``: the M-step and one
pass over the data), so validation, the Dask rechunk/persist and initialisation are
not counted, and a noisy shared machine disturbs single iterations, not the median.
Cases:

* ``memory``: the array in memory, ``n_jobs=2``;
* ``memmap``: the same rows in a numpy memmap on disk (page cache warm), ``n_jobs=2``,
  read a block (16 chunks) at a time;
* ``dask-1w``: ``dask.array.from_array`` on a LocalCluster with 1 worker process,
  ``n_jobs=2`` inside the worker's pass;
* ``dask-2w``: 2 worker processes, ``n_jobs=1`` each.

With ``--big N``: N rows in a file, larger than the memory given to 2 workers
(``--worker-memory``), so the blocks are not persisted but re-read by the workers
every pass; against the same file as a local memmap.

It prints the ratios to ``memory`` and checks that every case reached the same
log-likelihood (relative 1e-12). Run from outside the source tree:

    cd /tmp && python /path/to/benchmarks/bench_scale.py              # n = 1e6, ~3 min
    cd /tmp && python /path/to/benchmarks/bench_scale.py --n 200000   # quick
    cd /tmp && python /path/to/benchmarks/bench_scale.py --big 4000000 --worker-memory 400MiB
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def make_data(n: int, d: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=0.7, size=(k, d))
    A = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = A @ np.swapaxes(A, 1, 2) + 0.3 * np.eye(d)
    weights = rng.dirichlet(np.full(k, 5.0))
    z = rng.choice(k, size=n, p=weights)
    L = np.linalg.cholesky(covs)
    X = np.empty((n, d))
    for start in range(0, n, 100_000):
        zz = z[start:start + 100_000]
        X[start:start + 100_000] = means[zz] + np.einsum(
            "nij,nj->ni", L[zz], rng.normal(size=(zz.shape[0], d)))
    start = {"weights_init": np.full(k, 1.0 / k),
             "means_init": means + rng.normal(scale=0.3, size=(k, d)),
             "precisions_init": np.linalg.inv(1.5 * covs + 0.1 * np.eye(d))}
    return X, start


def seconds_per_iteration(make_X, start, k, n_jobs, max_iter, repeats):
    """Median over all iterations of all repeats of the engine's per-iteration wall
    time (``history_[t].seconds``: M-step + one pass), and the last fit."""
    import emcore
    per_iter, fit = [], None
    for _ in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = emcore.GaussianMixture(k, tol=0.0, max_iter=max_iter, n_jobs=n_jobs,
                                         **start).fit(make_X())
        per_iter.extend(it.seconds for it in fit.history_)
    return float(np.median(per_iter)), fit


def _load(path, shape, start, stop):
    # runs on a worker: its block, read from the file (never through the client)
    return np.array(np.memmap(path, dtype=np.float64, mode="r", shape=shape)[start:stop])


def big_case(args) -> None:
    """N rows (N d 8 bytes > the workers' total memory) on 2 workers, blocks read from
    a file on the workers every pass, against the same file as a local memmap."""
    import dask.array as da
    from dask import delayed
    from distributed import Client, LocalCluster
    from emcore.engine import chunk_rows_for
    from emcore.distributed import DaskSource
    n, d = args.big, args.d
    X, start = make_data(n, d, args.k, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.dat")
        mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
        mm[:] = X
        mm.flush()
        del mm, X
        block = 16 * chunk_rows_for(d)
        dx = da.concatenate([
            da.from_delayed(delayed(_load)(path, (n, d), a, min(a + block, n)),
                            shape=(min(a + block, n) - a, d), dtype=np.float64)
            for a in range(0, n, block)])
        reps = (args.max_iter, 1)
        local = seconds_per_iteration(
            lambda: np.memmap(path, dtype=np.float64, mode="r", shape=(n, d)),
            start, args.k, 2, *reps)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          memory_limit=args.worker_memory, dashboard_address=None,
                          silence_logs=50) as cluster, Client(cluster) as client:
            persisted = DaskSource(dx, client=client)._data is not dx
            dist = seconds_per_iteration(lambda: dx, start, args.k, 1, *reps)
        print(f"big: n={n} ({n * d * 8 / 2**20:.0f} MiB) on 2 workers x "
              f"{args.worker_memory} (persisted: {persisted}): memmap {local[0]:.3f} s/iter, dask-2w "
              f"{dist[0]:.3f} s/iter (ratio {dist[0] / local[0]:.2f}); "
              f"loglik/n {local[1].lower_bound_:.15f} vs {dist[1].lower_bound_:.15f}")
        assert abs(dist[1].lower_bound_ - local[1].lower_bound_) <= \
            1e-12 * abs(local[1].lower_bound_)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--max-iter", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--big", type=int, default=0, metavar="N",
                   help="also fit N rows on 2 workers with --worker-memory each, the "
                        "data larger than their memory (not persisted: re-read per pass)")
    p.add_argument("--worker-memory", default="400MiB")
    args = p.parse_args()
    X, start = make_data(args.n, args.d, args.k, args.seed)
    print(f"n={args.n} d={args.d} k={args.k} M={args.max_iter} "
          f"({X.nbytes / 2**20:.0f} MiB), {os.cpu_count()} CPUs")
    results = {}
    reps = (args.max_iter, args.repeats)
    seconds_per_iteration(lambda: X[:20000], start, args.k, 2, 2, 1)    # warm-up: plugins
    results["memory"] = seconds_per_iteration(lambda: X, start, args.k, 2, *reps)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.dat")
        mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
        mm[:] = X
        mm.flush()
        del mm
        results["memmap"] = seconds_per_iteration(
            lambda: np.memmap(path, dtype=np.float64, mode="r", shape=X.shape),
            start, args.k, 2, *reps)

        if not args.no_dask:
            import dask.array as da
            from dask import delayed
            from distributed import Client, LocalCluster
            from emcore.engine import chunk_rows_for
            block = 16 * chunk_rows_for(args.d)
            parts = [da.from_delayed(delayed(_load)(path, X.shape, a, min(a + block, args.n)),
                                     shape=(min(a + block, args.n) - a, args.d),
                                     dtype=np.float64)
                     for a in range(0, args.n, block)]
            dx = da.concatenate(parts)
            for workers, n_jobs in ((1, 2), (2, 1)):
                with LocalCluster(n_workers=workers, threads_per_worker=1,
                                  processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, Client(cluster):
                    results[f"dask-{workers}w"] = seconds_per_iteration(
                        lambda: dx, start, args.k, n_jobs, *reps)

    if args.big and not args.no_dask:
        big_case(args)

    base, ref = results["memory"]
    print(f"{'case':10s} {'s/iter':>8s} {'ratio':>7s}  loglik/n")
    for name, (sec, gm) in results.items():
        print(f"{name:10s} {sec:8.3f} {sec / base:7.2f}  {gm.lower_bound_:.15f}")
        assert abs(gm.lower_bound_ - ref.lower_bound_) <= 1e-12 * abs(ref.lower_bound_), name


if __name__ == "__main__":
    main()

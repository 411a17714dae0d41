"""Seconds per EM iteration of latent class analysis: emcore vs a vectorised numpy EM.

The issue's case: 20 binary items, K = 5 classes, n = 1e6 rows (seeded), one start
(the same weights and item probabilities for everyone). Per iteration:

* **emcore** ``bernoulli`` and ``categorical`` (2 levels): one pass of the engine
  (``emcore.engine.data_pass``: the family's compiled kernel, the soft posterior,
  the statistics) and the M-step, at ``n_jobs`` = 1 and 2. The data arrive as uint8;
  the estimators hand the engine float64 rows, so the pass reads X as float64
  (8 bytes per item): the engine's kernel interface reads ``const double*``
  rows, so float64 is the dtype the data arrive in at the pass, and the bound
  to compare with is one float64 read of X (the uint8 read is printed too). The families' kernels look rows up in pattern tables
  (plugins/_discrete_kernel.pyx): ceil(20 / 8) = 3 lookups of K numbers per row
  for the log-densities and 3 adds of K numbers for the statistics.
* **numpy EM**, written here: log-space, one matrix product for the log-densities
  (X @ log(p / (1 - p)).T + sum log(1 - p)) and one for the statistics
  (resp.T @ X), at 1 and 2 BLAS threads (threadpoolctl); X float64.
* **pomegranate** 1.x (product of Bernoullis): not timed by this version (torch is
  not installed where the figures were taken); the script says if it is importable.

Both run M iterations from the same start and their log-likelihoods are checked
to agree (relative 1e-9: the same arithmetic up to summation order). Reported:
medians over repeats, the ratios, and the bandwidth bound: the time of one read of
X (a reduction over all of it) as uint8 and as float64.

    cd /tmp && python /path/to/benchmarks/bench_lca.py            # n = 1e6
    cd /tmp && python /path/to/benchmarks/bench_lca.py --quick    # n = 2e5, < 60 s
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import scipy.special
from threadpoolctl import threadpool_limits

from emcore.engine import data_pass
from emcore.registry import get_registry


def make_data(n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, (k, d))
    z = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 5.0)))
    X = (rng.random((n, d)) < p[z]).astype(np.uint8)
    start_p = np.clip(p + rng.normal(0.0, 0.1, p.shape), 0.05, 0.95)
    return X, np.full(k, 1.0 / k), start_p


# --- the numpy EM ----------------------------------------------------------------------

def numpy_em_iteration(X: np.ndarray, w: np.ndarray, p: np.ndarray):
    """One EM iteration; returns (new w, new p, log-likelihood at the old ones)."""
    log_p, log_q = np.log(p), np.log1p(-p)
    A = X @ (log_p - log_q).T                      # (n, K): one matrix product
    A += log_q.sum(axis=1) + np.log(w)
    lse = scipy.special.logsumexp(A, axis=1)
    R = np.exp(A - lse[:, None])
    Nk = R.sum(axis=0)
    S = R.T @ X                                    # (K, d): one matrix product
    return Nk / Nk.sum(), S / Nk[:, None], float(lse.sum())


def numpy_loglik(X, w, p):
    A = X @ (np.log(p) - np.log1p(-p)).T + np.log1p(-p).sum(axis=1) + np.log(w)
    return float(scipy.special.logsumexp(A, axis=1).sum())


# --- emcore ------------------------------------------------------------------------------

def emcore_case(name: str, d: int, k: int, p: np.ndarray):
    record = get_registry().family(name)
    if name == "categorical":
        family = record.factory(k, d, n_levels=2)
        params = {"probabilities": np.stack([1.0 - p, p], axis=-1)}
    else:
        family = record.factory(k, d)
        params = {"probabilities": p.copy()}
    return family, params


def emcore_iteration(X, family, rule, w, params, n_jobs):
    res = data_pass(X, family, rule, w, params, n_jobs=n_jobs)
    return res.resp_sum / res.resp_sum.sum(), family.m_step(res.stats, params), res.value


def bandwidth(X: np.ndarray, repeats: int) -> float:
    """Median seconds of one read of X: a reduction over all its bytes."""
    flat = X.reshape(-1)
    view = flat[: flat.size // 8 * 8].view(np.uint64) if X.dtype == np.uint8 else flat
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        (np.bitwise_or.reduce(view) if X.dtype == np.uint8 else view.sum())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n = 2e5, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.iterations = 200_000, 1, 5
    X8, w0, p0 = make_data(args.n, args.d, args.k)
    X = X8.astype(np.float64)
    rule = get_registry().posterior_rule("soft").factory()
    print(f"LCA: n = {args.n}, d = {args.d} binary items, K = {args.k}; "
          f"{args.iterations} iterations x {args.repeats} repeats (medians)")
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
          + f" on {os.cpu_count()} CPUs; OPENBLAS_CORETYPE="
          + os.environ.get("OPENBLAS_CORETYPE", "(unset)"))
    if importlib.util.find_spec("pomegranate") is None:
        print("pomegranate: not importable (skipped)")
    else:
        print("pomegranate importable, but not timed by this version of the script")

    results, finals = {}, {}
    for threads in (1, 2):
        per = {"numpy": [], "bernoulli": [], "categorical": []}
        for _ in range(args.repeats):
            with threadpool_limits(threads):
                w, p = w0.copy(), p0.copy()
                t = time.perf_counter()
                for _ in range(args.iterations):
                    w, p, _ = numpy_em_iteration(X, w, p)
                per["numpy"].append((time.perf_counter() - t) / args.iterations)
                finals[("numpy", threads)] = numpy_loglik(X, w, p)
                for name in ("bernoulli", "categorical"):
                    family, params = emcore_case(name, args.d, args.k, p0)
                    w = w0.copy()
                    t = time.perf_counter()
                    for _ in range(args.iterations):
                        w, params, _ = emcore_iteration(X, family, rule, w, params, threads)
                    per[name].append((time.perf_counter() - t) / args.iterations)
                    pe = params["probabilities"]
                    pe = pe[..., 1] if pe.ndim == 3 else pe
                    finals[(name, threads)] = numpy_loglik(X, w, pe)
        for key, values in per.items():
            results[(key, threads)] = float(np.median(values))

    ref = finals[("numpy", 1)]
    for key, value in finals.items():
        rel = abs(value - ref) / abs(ref)
        assert rel <= 1e-9, f"{key}: log-likelihood {value!r} differs from numpy's {ref!r}"
    print(f"log-likelihood after {args.iterations} iterations: {ref:.10g} (all agree to "
          "1e-9 relative)")

    bw8 = bandwidth(X8, 5 * args.repeats)
    bw64 = bandwidth(X, 5 * args.repeats)
    print(f"bandwidth bound (one read of X): uint8 {bw8 * 1e3:.2f} ms, "
          f"float64 {bw64 * 1e3:.2f} ms")
    print(f"{'threads':>7} {'numpy EM':>10} {'bernoulli':>10} {'categorical':>12} "
          f"{'numpy/bern':>11} {'numpy/cat':>10} {'bern/bw64':>10} {'bern/bw8':>9}")
    for threads in (1, 2):
        r = {key: results[(key, threads)] for key in ("numpy", "bernoulli", "categorical")}
        print(f"{threads:>7} {r['numpy'] * 1e3:>8.1f}ms {r['bernoulli'] * 1e3:>8.1f}ms "
              f"{r['categorical'] * 1e3:>10.1f}ms {r['numpy'] / r['bernoulli']:>10.1f}x "
              f"{r['numpy'] / r['categorical']:>9.1f}x {r['bernoulli'] / bw64:>9.1f}x "
              f"{r['bernoulli'] / bw8:>8.1f}x")
    return results


if __name__ == "__main__":
    main()

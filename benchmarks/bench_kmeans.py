"""Seconds per Lloyd iteration: emcore.KMeans vs sklearn.cluster.KMeans(algorithm='lloyd').

Both get the same data, the same initial centres (``init=array``, ``n_init=1``),
``tol=0`` and the same ``max_iter``. Per-iteration time is
(t(fit, max_iter=M) - t(fit, max_iter=1)) / (M - 1), which cancels validation and
the set-up; the medians over repeats are reported, emcore and scikit-learn
interleaved in one process (order alternating between repeats) at each thread
count: scikit-learn under ``threadpoolctl.threadpool_limits(t)`` (its OpenMP and
BLAS threads), emcore with ``n_jobs=t`` under the same limits.

The data are uniform random in the unit cube: Lloyd's iterations keep moving
points between cells for hundreds of iterations there, so neither library
converges within M. (scikit-learn also stops when the labels stop changing
("strict convergence") whatever tol is; both libraries' n_iter_ are printed,
and a warning says when they differ from M.) Peak RSS of one fit of each case
is measured in a fresh subprocess (VmHWM after resetting it), as in
bench_gaussian.py.

float32 (``--dtype float32``, the default runs both): the same data rounded to
float32, the same rounded centres, scikit-learn's float32 KMeans against
emcore's (float32 scores, float64 sums: docs/elbo_chain.md#float32), side by
side with the float64 rows.

CPU time (``time.process_time``, all of the process's threads) is measured
beside wall time, per iteration the same way, so that the ratio can be read
when the machine is shared.

Run from outside the source tree so that the installed emcore is imported:

    cd /tmp && python /path/to/benchmarks/bench_kmeans.py                  # both shapes
    cd /tmp && python /path/to/benchmarks/bench_kmeans.py --case 1e6 --repeats 3
    cd /tmp && python /path/to/benchmarks/bench_kmeans.py --quick          # < 60 s
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import scipy.linalg  # noqa: F401  (load scipy's OpenBLAS before threadpoolctl limits)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gaussian import _status_mib, environment  # noqa: E402

CASES = {"1e6": (1_000_000, 16, 16), "2e5": (200_000, 64, 32)}


def make_data(n: int, d: int, k: int, seed: int, dtype: str = "float64"):
    """X uniform in [0, 1)^d, C-contiguous, of ``dtype``; initial centres: k rows of X."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, d)).astype(dtype)
    centres = np.ascontiguousarray(X[rng.choice(n, k, replace=False)])
    return X, centres


def make_estimator(lib: str, centres, max_iter: int, threads: int):
    common = dict(n_clusters=centres.shape[0], init=centres, n_init=1, tol=0.0,
                  max_iter=max_iter)
    if lib == "sklearn":
        from sklearn.cluster import KMeans
        return KMeans(algorithm="lloyd", **common)
    import emcore
    return emcore.KMeans(n_jobs=threads, **common)


def timed_fit(lib: str, X, centres, max_iter: int, threads: int):
    from threadpoolctl import threadpool_limits
    est = make_estimator(lib, centres, max_iter, threads)
    gc.collect()
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached on purpose
        t0, c0 = time.perf_counter(), time.process_time()
        est.fit(X)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    timed_fit.cpu = cpu          # the CPU seconds of the last fit (all threads)
    return seconds, est


def rss_child(args) -> None:
    X, centres = make_data(args.n, args.d, args.k, args.seed, args.rss_dtype)
    if args.rss_child == "sklearn":
        import sklearn.cluster  # noqa: F401
    else:
        import emcore  # noqa: F401
    timed_fit(args.rss_child, np.ascontiguousarray(X[:5000]), centres, 1, args.rss_threads)
    gc.collect()
    before = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    timed_fit(args.rss_child, X, centres, 2, args.rss_threads)
    print(json.dumps({"rss_before_fit_mib": before, "peak_mib": _status_mib("VmHWM"),
                      "peak_is_fit_only": reset}))


def measure_rss(args, n, d, k, lib: str, threads: int, dtype: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--n", str(n), "--d", str(d),
           "--k", str(k), "--seed", str(args.seed), "--rss-child", lib,
           "--rss-threads", str(threads), "--rss-dtype", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(args, n, d, k, dtype) -> list:
    M = args.max_iter
    libs = ("sklearn", "emcore")
    X, centres = make_data(n, d, k, args.seed, dtype)
    print(f"\n=== (n, d, k) = ({n}, {d}, {k}), {dtype}, uniform data "
          f"{X.nbytes / 2 ** 20:.0f} MiB, "
          f"M={M}, repeats={args.repeats}, threads={args.threads}")
    for lib in libs:  # warm-up
        timed_fit(lib, np.ascontiguousarray(X[:5000]), centres, 1, 1)
    per_iter = {(lib, t): [] for lib in libs for t in args.threads}
    cpu_iter = {(lib, t): [] for lib in libs for t in args.threads}
    n_iter = {}
    print("repeat threads library   t(max_iter=1)  t(max_iter=M)   s/iter  cpu s/iter  "
          "n_iter_  load")
    for r in range(args.repeats):
        order = libs if r % 2 == 0 else libs[::-1]
        for t in args.threads:
            for lib in order:
                t1, _ = timed_fit(lib, X, centres, 1, t)
                c1 = timed_fit.cpu
                tM, est = timed_fit(lib, X, centres, M, t)
                per_iter[(lib, t)].append((tM - t1) / (M - 1))
                cpu_iter[(lib, t)].append((timed_fit.cpu - c1) / (M - 1))
                n_iter[(lib, t)] = int(est.n_iter_)
                print(f"{r:6d} {t:7d} {lib:8s} {t1:13.4f}  {tM:13.4f}  "
                      f"{per_iter[(lib, t)][-1]:8.4f}  {cpu_iter[(lib, t)][-1]:10.4f}  "
                      f"{est.n_iter_:7d}  {os.getloadavg()[0]:.2f}", flush=True)
    if any(v != M for v in n_iter.values()):
        print(f"WARNING: not every fit ran M={M} iterations: {n_iter}")
    med = {key: statistics.median(v) for key, v in per_iter.items()}
    cmed = {key: statistics.median(v) for key, v in cpu_iter.items()}
    rss = {} if args.no_rss else {(lib, t): measure_rss(args, n, d, k, lib, t, dtype)
                                  for lib in libs for t in args.threads}
    rows = []
    print(f"{'threads':>7}  {'sklearn s/iter':>22}  {'emcore s/iter':>22}  "
          f"{'emcore/sklearn time':>19}  {'sk cpu':>7}  {'em cpu':>7}  "
          f"{'em/sk cpu':>9}  n_iter_ (sk, em)")
    for t in args.threads:
        sk, em = med[("sklearn", t)], med[("emcore", t)]
        rs, re_ = per_iter[("sklearn", t)], per_iter[("emcore", t)]
        csk, cem = cmed[("sklearn", t)], cmed[("emcore", t)]
        print(f"{t:>7}  {sk:8.4f} [{min(rs):.4f}-{max(rs):.4f}]  "
              f"{em:8.4f} [{min(re_):.4f}-{max(re_):.4f}]  {em / sk:19.2f}  "
              f"{csk:7.4f}  {cem:7.4f}  {cem / csk:9.2f}  "
              f"({n_iter[('sklearn', t)]}, {n_iter[('emcore', t)]})")
        rows.append((n, d, k, dtype, t, sk, em, n_iter[("sklearn", t)],
                     n_iter[("emcore", t)], csk, cem))
    for (lib, t), v in rss.items():
        print(f"  peak RSS {lib:8s} {t} thread(s): added by the fit "
              f"{v['peak_mib'] - v['rss_before_fit_mib']:.0f} MiB (before {v['rss_before_fit_mib']:.0f})")
    return rows, rss, X.nbytes / 2 ** 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), nargs="+", default=["1e6", "2e5"])
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--repeats", type=int, default=5)
    # scikit-learn's t(max_iter=1), its set-up outside the iterations, scatters
    # from 0.10 to 0.47 s on this machine: spread over M - 1 = 60 iterations that
    # is +-3 ms per iteration; over 10 it was +-20 ms, half its time per iteration
    p.add_argument("--max-iter", type=int, default=61)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float64", "float32"), nargs="+",
                   default=["float64", "float32"])
    p.add_argument("--quick", action="store_true",
                   help="(2e5, 16, 16), 3 repeats, M = 11, no RSS: under a minute")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--markdown", metavar="PATH", help="append a Markdown table to PATH")
    p.add_argument("--rss-child", choices=("sklearn", "emcore"), help=argparse.SUPPRESS)
    p.add_argument("--rss-threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rss-dtype", default="float64", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k = args.n or 200_000, args.d or 16, args.k or 16
        args.repeats, args.max_iter, args.no_rss = 3, 11, True
    if args.max_iter < 2:
        p.error("--max-iter must be at least 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return 0
    env = environment()
    print("emcore.KMeans vs sklearn.cluster.KMeans(algorithm='lloyd'): seconds per iteration")
    print(f"date {env['date']}  python {env['python']}  cpu {env['cpu']}  "
          f"available cpus {env['cpus_available']}")
    print("env  " + "  ".join(f"{key}={val}" for key, val in env["env"].items()))
    print(f"numpy {env['numpy']}  scipy {env['scipy']}  scikit-learn {env['sklearn']}  "
          f"emcore {env['emcore']} ({env['emcore_path']})")
    shapes = ([(args.n, args.d, args.k)] if args.n and args.d and args.k
              else [CASES[c] for c in args.case])
    md = [f"\n### KMeans (Lloyd), {env['date']}, emcore {env['emcore']}, scikit-learn "
          f"{env['sklearn']}, medians of {args.repeats}, M = {args.max_iter}\n",
          "| (n, d, k) | dtype | threads | scikit-learn s/iter | emcore s/iter "
          "| emcore / scikit-learn time | CPU s/iter sk / em (ratio) | n_iter_ (sk, em) "
          "| peak RSS added sk / em MiB |",
          "|---|---|---|---|---|---|---|---|---|"]
    for (n, d, k), dtype in itertools.product(shapes, args.dtype):
        rows, rss, _ = run_case(args, n, d, k, dtype)
        for (n_, d_, k_, dt, t, sk, em, ns, ne, csk, cem) in rows:
            mem = (f"{rss[('sklearn', t)]['peak_mib'] - rss[('sklearn', t)]['rss_before_fit_mib']:.0f}"
                   f" / {rss[('emcore', t)]['peak_mib'] - rss[('emcore', t)]['rss_before_fit_mib']:.0f}"
                   if rss else "-")
            md.append(f"| ({n_:g}, {d_}, {k_}) | {dt} | {t} | {sk * 1e3:.1f} ms | "
                      f"{em * 1e3:.1f} ms | **{em / sk:.2f}** | {csk * 1e3:.1f} / "
                      f"{cem * 1e3:.1f} ms ({cem / csk:.2f}) | ({ns}, {ne}) | {mem} |")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

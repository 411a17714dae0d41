"""Seconds per EM iteration: emcore vs scikit-learn GaussianMixture ('full' or 'diag').

Both estimators get the same data (a seeded mixture of k Gaussians in d dimensions,
float64), the same start (weights_init, means_init, precisions_init: the generating
parameters, perturbed), the same reg_covar, and tol=0 so that both run all of
max_iter. Per-iteration time is (t(fit, max_iter=M) - t(fit, max_iter=1)) / (M - 1),
which cancels validation and the start-up pass; each repeat gives one such figure
per case, and the medians over repeats are reported. emcore and scikit-learn run
interleaved in the same process (their order alternates between repeats), at each
thread count:

* scikit-learn: ``threadpoolctl.threadpool_limits(t)`` (its threads are BLAS's);
* emcore: ``n_jobs=t`` (it holds BLAS to one thread inside its chunk loop), under the
  same ``threadpool_limits(t)``, so its M-step's small LAPACK calls see t BLAS
  threads, as in a default call on a t-CPU machine.

It also checks that both did the same work (the log-likelihood after every
iteration from the same start, and the fitted parameters), times the reference
DGEMMs of the two dense products of an iteration, and (unless --no-rss) measures
the peak RSS of one fit of each case in a fresh subprocess.

Flop rates. "nominal GFLOP/s" is 4 n k d^2 (a full (n x d)@(d x d) product per
component in the E-step and a (d x n)@(n x d) one in the M-step) over the measured
time, for 'full' only, and the "DGEMM reference" is that flop count at numpy's DGEMM
speed for those two shapes. "E+M GFLOP/s" counts the flops emcore's kernels
actually execute (the triangle of U, the upper triangle of the scatter; padding,
the posterior's exp/log and the O(k d^3) M-step excluded), per row and component:

    full   E-step: d (x - mu) + d(d+1) ((x - mu) U, column j has j+1 multiply-adds)
                   + 2d (squares, sum)                               = d(d+1) + 3d
           stats:  2d (weighted sum for the reference c) + 3d (x - c, weighting,
                   residual) + d(d+1) (upper triangle of S, 2 flops per entry)
                                                                     = d(d+1) + 5d
    diag   E-step: 4d (x - mu, times p, multiply-add);  stats: 5d (x - c, weighting,
                   residual, multiply-add) about the pass's means, the one sweep of
                   a chunk whose means have settled; a chunk still moving adds
                   2d + 5d (two sweeps about its own mean), not counted: the
                   rate is a lower bound in early iterations

over the whole measured time per iteration (E-step, posterior, statistics,
M-step), and is compared with the measured DGEMM rate of the tall-skinny
(n x d)@(d x d) product (the issue's "half the DGEMM rate" target).

Cases (--case): the issue's shapes, 'full-1e6' (1e6, 16, 16, full),
'diag-1e6' (1e6, 16, 16, diag), 'full-2e5' (2e5, 64, 32, full); or give --n --d
--k --covariance. --markdown PATH appends the results as a Markdown table.

Run from outside the source tree so that the installed emcore is imported:

    cd /tmp && python /path/to/benchmarks/bench_gaussian.py --case full-1e6
    cd /tmp && python /path/to/benchmarks/bench_gaussian.py --n 100000 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
# Load scipy's own OpenBLAS now: threadpoolctl can only limit libraries that are
# loaded when a limit is entered, and emcore loads scipy.linalg lazily (with its
# plugins, at the first fit).
import scipy.linalg  # noqa: F401

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --- data and start -------------------------------------------------------------------

def make_truth(d: int, k: int, seed: int):
    """Generating parameters: overlapping components (means ~ N(0, 0.7^2 I), random
    SPD covariances with eigenvalues ~0.3-4), so that EM still moves after many
    iterations. With well separated components the responsibilities round to exactly
    0 and 1, EM reaches a bitwise fixed point within a few iterations, and emcore's
    rule (stop when the relative change <= tol, here == 0) would stop early while
    scikit-learn's (|change| < tol) never fires: the two would not do the same work.
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=0.7, size=(k, d))
    covariances = np.empty((k, d, d))
    for j in range(k):
        A = rng.normal(size=(d, d))
        covariances[j] = A @ A.T / d + 0.3 * np.eye(d)
    return weights, means, covariances


def make_data(n: int, d: int, k: int, seed: int):
    """X (n, d) float64, C-contiguous, rows shuffled; and the generating parameters."""
    weights, means, covariances = make_truth(d, k, seed)
    rng = np.random.default_rng(seed + 1)
    counts = rng.multinomial(n, weights)
    X = np.empty((n, d))
    row = 0
    for j in range(k):
        c = int(counts[j])
        L = np.linalg.cholesky(covariances[j])
        X[row:row + c] = rng.standard_normal((c, d)) @ L.T + means[j]
        row += c
    X = X[rng.permutation(n)]
    return np.ascontiguousarray(X), (weights, means, covariances)


def make_start(truth, seed: int):
    """The shared start: generating parameters, perturbed (weights flattened, means
    shifted by 0.5 sd, covariances inflated by 1.5 and jittered)."""
    weights, means, covariances = truth
    k, d = means.shape
    rng = np.random.default_rng(seed + 2)
    w0 = 0.5 * weights + 0.5 / k
    w0 = w0 / w0.sum()
    m0 = means + 0.5 * rng.normal(size=means.shape)
    p0 = np.empty_like(covariances)
    for j in range(k):
        c = 1.5 * covariances[j] + 0.1 * np.eye(d)
        p = np.linalg.inv(c)
        p0[j] = 0.5 * (p + p.T)
    return w0, m0, p0


# --- the estimators --------------------------------------------------------------------

CASES = {"full-1e6": (1_000_000, 16, 16, "full"),
         "diag-1e6": (1_000_000, 16, 16, "diag"),
         "full-2e5": (200_000, 64, 32, "full")}


def em_flops(n: int, d: int, k: int, covariance: str) -> float:
    """Flops emcore's kernels execute in one E-step + statistics pass (see the top)."""
    if covariance == "full":
        return float(n) * k * (2.0 * d * (d + 1) + 8.0 * d)
    return float(n) * k * 9.0 * d


def start_for(start, covariance: str):
    """The shared start in the covariance type's form: 'diag' keeps the diagonal
    of each perturbed covariance (precisions_init (k, d))."""
    if covariance == "full":
        return start
    w0, m0, p0 = start
    return w0, m0, np.stack([1.0 / np.diag(np.linalg.inv(p)) for p in p0])


def make_estimator(lib: str, start, max_iter: int, threads: int, reg_covar: float,
                   covariance: str = "full"):
    w0, m0, p0 = start
    common = dict(n_components=m0.shape[0], covariance_type=covariance, tol=0.0,
                  reg_covar=reg_covar, max_iter=max_iter, weights_init=w0,
                  means_init=m0, precisions_init=p0)
    if lib == "sklearn":
        from sklearn.mixture import GaussianMixture
        return GaussianMixture(**common)
    import emcore
    return emcore.GaussianMixture(n_jobs=threads, **common)


def timed_fit(lib: str, X, start, max_iter: int, threads: int, reg_covar: float,
              covariance: str = "full", tol: float = 0.0):
    from threadpoolctl import threadpool_limits
    est = make_estimator(lib, start, max_iter, threads, reg_covar, covariance)
    est.set_params(tol=tol)
    gc.collect()
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        est.fit(X)
        seconds = time.perf_counter() - t0
    return seconds, est


def silence_convergence_warnings() -> None:
    # tol=0: both estimators always stop at max_iter and would warn every time.
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from emcore.exceptions import ConvergenceWarning as EmConvergenceWarning
    warnings.filterwarnings("ignore", category=SkConvergenceWarning)
    warnings.filterwarnings("ignore", category=EmConvergenceWarning)


def per_row_logliks(lib: str, est, n: int) -> np.ndarray:
    """loglik(theta_t) / n for t = 0 .. M-1, from each estimator's own history."""
    if lib == "sklearn":
        return np.asarray(est.lower_bounds_, dtype=np.float64)
    return np.array([it.value for it in est.history_]) / n


def max_rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.finfo(float).tiny))


# --- reference DGEMMs ------------------------------------------------------------------

def gemm_rates(X: np.ndarray, threads: int, repeats: int = 7):
    """GFLOP/s of the iteration's two dense shapes: (n x d)@(d x d), (d x n)@(n x d)."""
    from threadpoolctl import threadpool_limits
    n, d = X.shape
    B = np.random.default_rng(0).normal(size=(d, d))
    out = np.empty((n, d))
    flops = 2.0 * n * d * d
    rates = {}
    with threadpool_limits(limits=threads):
        for name, op in (("tall (n,d)@(d,d)", lambda: np.matmul(X, B, out=out)),
                         ("inner (d,n)@(n,d)", lambda: X.T @ X)):
            op()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                op()
                times.append(time.perf_counter() - t0)
            rates[name] = flops / min(times) / 1e9  # best of: a floor, not a typical
    return rates


# --- peak RSS in a fresh process ------------------------------------------------------
# ru_maxrss is not used: Linux carries it over fork + exec (the child would report the
# parent's peak, here the benchmark's own ~1 GiB). /proc/self/status VmHWM belongs to
# the process's own address space, and writing 5 to /proc/self/clear_refs resets it,
# so the peak of the fit alone can be read.

def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def rss_child(args) -> None:
    """Generate the data, fit once, print RSS figures (MiB) as JSON."""
    X, truth = make_data(args.n, args.d, args.k, args.seed)
    start = start_for(make_start(truth, args.seed), args.covariance)
    if args.rss_child == "sklearn":
        import sklearn.mixture  # noqa: F401  (imports before the baseline)
    else:
        import emcore  # noqa: F401
    import threadpoolctl  # noqa: F401
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only the ConvergenceWarning of tol=0 is expected
        # warm-up on a slice: lazy imports and first-call allocations outside the peak
        timed_fit(args.rss_child, np.ascontiguousarray(X[:2000]), start, 1,
                  args.rss_threads, args.reg_covar, args.covariance)
        gc.collect()
        before = _status_mib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        timed_fit(args.rss_child, X, start, 2, args.rss_threads, args.reg_covar,
                  args.covariance)
        peak = _status_mib("VmHWM")
    print(json.dumps({"rss_before_fit_mib": before, "peak_mib": peak,
                      "peak_is_fit_only": reset, "input_mib": X.nbytes / 2 ** 20}))


def measure_rss(args, lib: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--n", str(args.n), "--d",
           str(args.d), "--k", str(args.k), "--seed", str(args.seed), "--reg-covar",
           repr(args.reg_covar), "--covariance", args.covariance, "--rss-child", lib,
           "--rss-threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- environment -----------------------------------------------------------------------

def environment() -> dict:
    import scipy
    import sklearn
    import threadpoolctl
    import emcore
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
            f"{os.path.basename(i.get('filepath', ''))})"
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model, "cpu_count": os.cpu_count(), "cpus_available": affinity,
        "env": {v: os.environ.get(v, "(unset)") for v in ENV_VARS},
        "numpy": np.__version__, "scipy": scipy.__version__,
        "sklearn": sklearn.__version__, "threadpoolctl": threadpoolctl.__version__,
        "emcore": emcore.__version__, "emcore_path": os.path.dirname(emcore.__file__),
        "blas": blas,
    }


# --- main --------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES),
                   help="one of the issue's cases (sets --n --d --k --covariance)")
    p.add_argument("--n", type=int, default=1_000_000, help="rows (default 1e6)")
    p.add_argument("--d", type=int, default=16, help="features (default 16)")
    p.add_argument("--k", type=int, default=16, help="components (default 16)")
    p.add_argument("--covariance", choices=("full", "diag"), default="full",
                   help="covariance_type of both estimators (default full)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per case (default 3)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="M of the long fit; per-iteration = (t_M - t_1)/(M-1) (default 6; "
                        "21 for diag, where scikit-learn's set-up time scatters most)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts (default: 1 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="PATH",
                   help="append the results to PATH as a Markdown table")
    p.add_argument("--rss-child", choices=("sklearn", "emcore"), help=argparse.SUPPRESS)
    p.add_argument("--rss-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        args.n, args.d, args.k, args.covariance = CASES[args.case]
    if args.max_iter is None:
        # scikit-learn's set-up time t_1 scatters: 0.9-2.8 s for 'diag' here, as
        # much as 0.4 s per iteration at M = 6 (its own time per iteration is
        # 0.4-0.6 s); 20 iterations bring that to 0.1 s. 'full' scatters 4.9-6.4 s
        # against 3 s per iteration: 6 suffice there.
        args.max_iter = 21 if args.covariance == "diag" else 6
    if args.max_iter < 2:
        p.error("--max-iter must be at least 2")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return 0
    silence_convergence_warnings()
    n, d, k, M = args.n, args.d, args.k, args.max_iter
    cov = args.covariance
    libs = ("sklearn", "emcore")

    env = environment()
    print(f"emcore vs scikit-learn GaussianMixture(covariance_type={cov!r}): "
          "seconds per EM iteration")
    print(f"date {env['date']}   python {env['python']}   {env['platform']}")
    print(f"cpu  {env['cpu']}   os.cpu_count={env['cpu_count']}   "
          f"available={env['cpus_available']}")
    print("env  " + "  ".join(f"{key}={val}" for key, val in env["env"].items()))
    print(f"numpy {env['numpy']}  scipy {env['scipy']}  scikit-learn {env['sklearn']}  "
          f"threadpoolctl {env['threadpoolctl']}  emcore {env['emcore']} "
          f"({env['emcore_path']})")
    for line in env["blas"]:
        print(f"blas {line}")
    flops = 4.0 * n * k * d * d
    flops_em = em_flops(n, d, k, cov)
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5 * (env["cpus_available"] or 1):
        print("WARNING: the machine looks busy; if other processes are running, "
              "2-thread figures (OpenBLAS's and OpenMP's threads) can be off by 2-20x")
    print(f"size n={n} d={d} k={k}  float64  reg_covar={args.reg_covar:g}  tol=0  "
          f"M={M}  repeats={args.repeats}  threads={args.threads}  "
          f"covariance={cov}  (nominal 4nkd^2 = {flops / 1e9:.1f} GFLOP; emcore's kernels "
          f"execute {flops_em / 1e9:.2f} GFLOP per E+M pass)")

    t0 = time.perf_counter()
    X, truth = make_data(n, d, k, args.seed)
    start = start_for(make_start(truth, args.seed), cov)
    print(f"data {X.nbytes / 2 ** 20:.0f} MiB generated in {time.perf_counter() - t0:.1f} s")

    # warm-up (imports, first-touch): one short fit of each on a slice
    Xw = np.ascontiguousarray(X[: max(2000, min(n, 20 * k * d))])
    for lib in libs:
        timed_fit(lib, Xw, start, 1, 1, args.reg_covar, cov)

    # --- timing, interleaved
    per_iter = {(lib, t): [] for lib in libs for t in args.threads}
    raw = {(lib, t): [] for lib in libs for t in args.threads}
    last_fit = {}
    print("\nrepeat threads library   t(max_iter=1)  t(max_iter=M)   s/iter   load(1 min)")
    for r in range(args.repeats):
        order = libs if r % 2 == 0 else libs[::-1]
        for t in args.threads:
            for lib in order:
                t1, _ = timed_fit(lib, X, start, 1, t, args.reg_covar, cov)
                tM, est = timed_fit(lib, X, start, M, t, args.reg_covar, cov)
                s = (tM - t1) / (M - 1)
                per_iter[(lib, t)].append(s)
                raw[(lib, t)].append((t1, tM))
                last_fit[(lib, t)] = est
                print(f"{r:6d} {t:7d} {lib:8s} {t1:13.3f}  {tM:13.3f}  {s:8.3f}   "
                      f"{os.getloadavg()[0]:.2f}", flush=True)

    med = {key: statistics.median(v) for key, v in per_iter.items()}

    # --- same work?
    print("\nsame work (from the same start, tol=0, max_iter=M):")
    checks = {}
    for t in args.threads:
        sk, em = last_fit[("sklearn", t)], last_fit[("emcore", t)]
        ll_sk, ll_em = per_row_logliks("sklearn", sk, n), per_row_logliks("emcore", em, n)
        rel_ll = np.abs(ll_sk - ll_em) / np.abs(ll_sk)
        checks[t] = {
            "loglik_per_row_sklearn": float(ll_sk[-1]),
            "loglik_per_row_emcore": float(ll_em[-1]),
            "loglik_rel_diff_last": float(rel_ll[-1]),
            "loglik_rel_diff_max_over_iterations": float(np.max(rel_ll)),
            "means_max_rel_diff": max_rel(sk.means_, em.means_),
            "covariances_max_rel_diff": max_rel(sk.covariances_, em.covariances_),
            "weights_max_rel_diff": max_rel(sk.weights_, em.weights_),
            "n_iter": (int(sk.n_iter_), int(em.n_iter_)),
        }
        c = checks[t]
        print(f"  {t} thread(s): mean loglik(theta_{M - 1}) sklearn {c['loglik_per_row_sklearn']:.12f}"
              f"  emcore {c['loglik_per_row_emcore']:.12f}  rel diff {c['loglik_rel_diff_last']:.1e}"
              f" (max over the {M} iterations {c['loglik_rel_diff_max_over_iterations']:.1e})")
        print(f"               parameters max rel diff: weights {c['weights_max_rel_diff']:.1e}"
              f"  means {c['means_max_rel_diff']:.1e}  covariances "
              f"{c['covariances_max_rel_diff']:.1e}   n_iter {c['n_iter']}")
    unequal = [(key, e.n_iter_) for key, e in last_fit.items() if e.n_iter_ != M]
    if unequal:
        print(f"  WARNING: not every fit ran max_iter={M} iterations: {unequal}; "
              "the per-iteration times below do not compare the same work")
    if len(args.threads) > 1:
        ems = [last_fit[("emcore", t)] for t in args.threads]
        same = all(np.array_equal(ems[0].means_, e.means_)
                   and np.array_equal(ems[0].covariances_, e.covariances_)
                   and ems[0].lower_bound_ == e.lower_bound_ for e in ems[1:])
        print(f"  emcore bitwise identical across thread counts {args.threads}: {same}")
        checks["emcore_bitwise_identical_across_threads"] = same

    # --- reference DGEMMs
    gemm = {t: gemm_rates(X, t) for t in args.threads}

    # --- peak RSS
    rss = {}
    if not args.no_rss:
        for lib in libs:
            for t in args.threads:
                rss[(lib, t)] = measure_rss(args, lib, t)

    # --- report
    print(f"\nresults: seconds per EM iteration, median of {args.repeats} "
          f"((t_M - t_1)/(M-1), M={M}); min-max in brackets")
    header = (f"{'threads':>7}  {'sklearn s/iter':>22}  {'emcore s/iter':>22}  "
              f"{'sklearn/emcore':>14}  {'E+M GFLOP/s em':>14}  {'DGEMM tall':>10}")
    print(header)
    for t in args.threads:
        sk, em = med[("sklearn", t)], med[("emcore", t)]
        rs, re_ = per_iter[("sklearn", t)], per_iter[("emcore", t)]
        print(f"{t:>7}  {sk:8.3f} [{min(rs):.3f}-{max(rs):.3f}]  "
              f"{em:8.3f} [{min(re_):.3f}-{max(re_):.3f}]  {sk / em:14.2f}  "
              f"{flops_em / em / 1e9:14.2f}  {gemm[t]['tall (n,d)@(d,d)']:10.2f}")
    for t in args.threads:
        rate, ref = flops_em / med[("emcore", t)] / 1e9, gemm[t]["tall (n,d)@(d,d)"]
        print(f"  {t} thread(s): emcore's E+M rate {rate:.1f} GFLOP/s (its kernels' flops "
              f"over the whole iteration) = {rate / ref:.2f} x the tall-skinny DGEMM rate "
              f"{ref:.1f} GFLOP/s measured in this run")
    if len(args.threads) > 1:
        t_lo, t_hi = min(args.threads), max(args.threads)
        print(f"emcore {t_hi}-thread vs {t_lo}-thread speed-up: "
              f"{med[('emcore', t_lo)] / med[('emcore', t_hi)]:.2f}   "
              f"(sklearn: {med[('sklearn', t_lo)] / med[('sklearn', t_hi)]:.2f})")
    print("reference DGEMM (numpy, same run, best of 7), GFLOP/s:  " + "   ".join(
        f"{t} thread(s): " + ", ".join(f"{name} {rate:.1f}" for name, rate in g.items())
        for t, g in gemm.items()))
    for t in args.threads:
        if cov != "full":
            break
        floor = flops / 2 / gemm[t]["tall (n,d)@(d,d)"] / 1e9 + \
            flops / 2 / gemm[t]["inner (d,n)@(n,d)"] / 1e9
        print(f"  DGEMM reference for 4nkd^2 at {t} thread(s): {floor:.3f} s/iter; "
              f"emcore at {100 * floor / med[('emcore', t)]:.0f} % of its speed, sklearn at "
              f"{100 * floor / med[('sklearn', t)]:.0f} %")
    if rss:
        print("peak RSS of one fit (max_iter=2) in a fresh process (VmHWM), MiB "
              f"(input X {X.nbytes / 2 ** 20:.0f} MiB):")
        for (lib, t), v in rss.items():
            what = "during the fit" if v["peak_is_fit_only"] else "of the process"
            print(f"  {lib:8s} {t} thread(s): peak {v['peak_mib']:7.0f} {what}; "
                  f"RSS before the fit {v['rss_before_fit_mib']:.0f} (imports + X); "
                  f"added by the fit {v['peak_mib'] - v['rss_before_fit_mib']:.0f}")

    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.markdown:
        write_markdown(args.markdown, env, n, d, k, cov, args, med, per_iter, gemm,
                       flops_em, rss, X.nbytes / 2 ** 20)
    if args.json:
        result = {
            "env": env, "n": n, "d": d, "k": k, "max_iter": M, "repeats": args.repeats,
            "threads": args.threads, "seed": args.seed, "reg_covar": args.reg_covar,
            "per_iteration_seconds": {f"{lib}/{t}": v for (lib, t), v in per_iter.items()},
            "fit_seconds_1_and_M": {f"{lib}/{t}": v for (lib, t), v in raw.items()},
            "median_per_iteration_seconds": {f"{lib}/{t}": v for (lib, t), v in med.items()},
            "checks": {str(key): v for key, v in checks.items()},
            "gemm_gflops": {str(t): g for t, g in gemm.items()},
            "peak_rss_mib": {f"{lib}/{t}": v for (lib, t), v in rss.items()},
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def write_markdown(path, env, n, d, k, cov, args, med, per_iter, gemm, flops_em, rss,
                   input_mib) -> None:
    """Append one table: a row per thread count, then the speed-up and memory."""
    lines = [f"\n### {cov}, (n, d, k) = ({n:g}, {d}, {k}): {env['date']}, "
             f"emcore {env['emcore']}, scikit-learn {env['sklearn']}, medians of "
             f"{args.repeats} (min-max)\n",
             "| threads | scikit-learn s/iter | emcore s/iter | scikit-learn / emcore "
             "| emcore E+M GFLOP/s | tall DGEMM GFLOP/s | E+M / DGEMM |",
             "|---|---|---|---|---|---|---|"]
    for t in args.threads:
        sk, em = med[("sklearn", t)], med[("emcore", t)]
        rs, re_ = per_iter[("sklearn", t)], per_iter[("emcore", t)]
        g = gemm[t]["tall (n,d)@(d,d)"]
        lines.append(f"| {t} | {sk:.3f} ({min(rs):.3f}-{max(rs):.3f}) | {em:.3f} "
                     f"({min(re_):.3f}-{max(re_):.3f}) | **{sk / em:.2f}** | "
                     f"{flops_em / em / 1e9:.1f} | {g:.1f} | {flops_em / em / 1e9 / g:.2f} |")
    if len(args.threads) > 1:
        lo, hi = min(args.threads), max(args.threads)
        lines.append(f"\nemcore {hi} vs {lo} thread(s): "
                     f"**{med[('emcore', lo)] / med[('emcore', hi)]:.2f}x**.")
    for (lib, t), v in rss.items():
        lines.append(f"Peak RSS added by one fit, {lib}, {t} thread(s): "
                     f"{v['peak_mib'] - v['rss_before_fit_mib']:.0f} MiB "
                     f"(input {input_mib:.0f} MiB).")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

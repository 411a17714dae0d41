"""Seconds per EM iteration: emcore.GaussianMixture on float32 data vs the same fit on float64.

The data of bench_gaussian.py (a seeded mixture, its perturbed generating
parameters as the shared start, tol=0), once as float64 X64 and once rounded to
float32 X32 = float32(X64); per-iteration time (t(M) - t(1)) / (M - 1), medians
over repeats, float64 and float32 interleaved, at each thread count
(``n_jobs=t`` under ``threadpool_limits(t)``), for 'diag' and 'full'.

It also prints the two fits' mean log-likelihoods and their relative gap against
the float32 tolerance: rounding X to float32 moves each entry by at most
u32 |x_ij| (u32 = 2**-24), so to first order the log-likelihood moves by at most

    u32 sum_i sum_j |x_ij| |d l_i / d x_ij|,   d l_i / d x_i = -sum_k q_ik P_k (x_i - mu_k)

(evaluated at the float64 fit; the parameters' own change is second order at a
maximum and, along the same M iterations from the same start, of the same
first order in u32: the printed figure is that estimate, not a rigorous bound).

Where things stand (docs/elbo_chain.md#float32): GaussianMixture keeps float32 X
without a copy and returns float32 attributes. The diagonal kernel ('diag')
computes the log-density's quadratic form in float32 on float32 rows (8-float
vectors; 16-float ones, 4 rows at a time, with AVX-512: the same bits), the soft posterior's exps in float32 (its fused step, K >= 8), and its
statistics' sweep in float32 (32-row float partial sums about float32(mu_t), added
to float64 totals; their bound, GaussianFamily.statistics_rounding, enters the
chain; they move the fitted parameters, which moves the log-likelihood only at
second order at a maximum); the full-covariance kernel ('full') the quadratic
form in float32 (16-float vectors, two of them in AVX-512 registers where the
CPU has them), the same float32-exp posterior, and its statistics as float32
sums over 256-row blocks about float32(mu_t), held in registers and added to
float64 totals (full_kernel_bound gives the form's tolerance term). That is
float32_level 'all', which GaussianMixture takes with tol 0 (this bench's
default); ``--tol 1e-6`` (the default tol) measures the 'log_density' level
instead: the fits stop by their rule, per iteration (t(M) - t(1)) / (n_iter(M)
- n_iter(1)), and the engine may fit the float32 rows in double where their
bound exceeds tol x |F| (Family.widened; docs/elbo_chain.md#float32-level). For 'diag' the tolerance
adds the kernel's derived bound, sum_i max_k of half
1.01 (d + 7) u32 sum_j p_kj (|x_ij - c_j| + |mu_kj - c_j|)^2 (c the means'
mean in float32), plus n times the posterior's per-row bound
1.0001 u32 ((K - 1) / e + 3) + K 2^-125, relative to |sum_i l_i|. The issue's
target is float32 >= 1.5x
faster than float64. CPU time (``time.process_time``, all threads) is printed
beside wall time: the machine may be shared.

    cd /tmp && python /path/to/benchmarks/bench_float32.py            # (1e6, 16, 16)
    cd /tmp && python /path/to/benchmarks/bench_float32.py --quick    # (2e5, 16, 16)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import scipy.linalg  # noqa: F401  (load scipy's OpenBLAS before threadpoolctl limits)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gaussian import (environment, make_data, make_start,  # noqa: E402
                            silence_convergence_warnings, start_for, timed_fit)

U32 = 2.0 ** -24


def first_order_gap(est, X: np.ndarray) -> float:
    """u32 sum_ij |x_ij| |d l_i / d x_ij| at the fitted model, relative to |sum_i l_i|."""
    resp = est.predict_proba(X)
    P = est.precisions_
    if P.ndim == 2:                                   # diag: (k, d)
        P = np.stack([np.diag(p) for p in P])
    grad = np.zeros_like(X)
    for k in range(resp.shape[1]):
        grad -= resp[:, k:k + 1] * ((X - est.means_[k]) @ P[k])
    total = float(np.sum(est.score_samples(X)))
    return U32 * float(np.sum(np.abs(X) * np.abs(grad))) / abs(total)


def full_kernel_bound(est, X: np.ndarray) -> float:
    """The full kernel's float32 rounding of sum_i l_i, relative to |sum_i l_i|:
    sum_i max_k of c_d / 2 || |U_k|^T a_ik ||^2 + d (d + 1) 2^-149, a_ik = |x_i - mu_k|
    + u32 |mu_k|, plus n times the float32-exp posterior's per-row bound
    (docs/elbo_chain.md#float32; plugins/gaussian.py computes both constants)."""
    from emcore.plugins.gaussian import (_float32_posterior_rounding,
                                         _full_float32_form_constant)
    means = est.means_.astype(np.float64)
    U = np.abs(np.triu(est.precisions_cholesky_.astype(np.float64)))
    n, d = X.shape
    Xd = X.astype(np.float64)
    worst = np.zeros(n)
    for k in range(means.shape[0]):
        b = (np.abs(Xd - means[k]) + U32 * np.abs(means[k])) @ U[k]
        worst = np.maximum(worst, np.sum(b * b, axis=1))
    total = float(np.sum(est.score_samples(Xd)))
    rows = (0.5 * _full_float32_form_constant(d) * float(np.sum(worst))
            + n * (d * (d + 1) * 2.0 ** -149 + _float32_posterior_rounding(means.shape[0])))
    return rows / abs(total)


def kernel_bound(est, X: np.ndarray) -> float:
    """The diagonal kernel's float32 rounding of sum_i l_i, relative to |sum_i l_i|:
    sum_i max_k of half 1.01 (d + 7) u32 sum_j p_kj (|x_ij - c_j| + |mu_kj - c_j|)^2,
    plus n times the float32-exp posterior's per-row bound
    (docs/elbo_chain.md#float32); the full kernel's for 'full'."""
    if est.covariance_type == "full":
        return full_kernel_bound(est, X)
    if est.covariance_type != "diag":
        return 0.0
    means = est.means_.astype(np.float64)
    p = est.precisions_.astype(np.float64)                # (k, d) for 'diag'
    c = means.mean(axis=0).astype(np.float32).astype(np.float64)
    Xd = X.astype(np.float64)
    worst = np.zeros(X.shape[0])
    for k in range(means.shape[0]):
        A = np.abs(Xd - c) + np.abs(means[k] - c)
        worst = np.maximum(worst, (A * A) @ p[k])
    d = X.shape[1]
    total = float(np.sum(est.score_samples(Xd)))
    K = means.shape[0]
    posterior = X.shape[0] * (1.0001 * U32 * ((K - 1) / np.e + 3.0) + K * 2.0 ** -125)
    return (0.5 * 1.01 * (d + 7) * U32 * float(np.sum(worst)) + posterior) / abs(total)


def cpu_timed_fit(lib: str, X, start, max_iter: int, threads: int, reg_covar: float,
                  covariance: str, tol: float = 0.0):
    """timed_fit with ``tol`` (0: the fit runs max_iter iterations): (wall seconds,
    the process's CPU seconds over the fit (all threads), the estimator, whether
    the engine fitted float32 rows in double (``Family.widened``: its line on the
    'emcore' logger), the number of "known only to within" warnings)."""
    import logging
    import warnings
    lines = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("emcore")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c0 = time.process_time()
            wall, est = timed_fit(lib, X, start, max_iter, threads, reg_covar, covariance,
                                  tol)
            cpu = time.process_time() - c0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    widened = any("fitting in double precision" in line for line in lines)
    noisy = sum("known only" in str(w.message) for w in caught)
    return wall, cpu, est, widened, noisy


def run_case(args, covariance: str) -> None:
    n, d, k = args.n, args.d, args.k
    X64, truth = make_data(n, d, k, args.seed)
    X32 = X64.astype(np.float32)
    start = start_for(make_start(truth, args.seed), covariance)
    M = args.max_iter
    data = {"float64": X64, "float32": X32}
    print(f"\n=== GaussianMixture '{covariance}', (n, d, k) = ({n}, {d}, {k}), M = {M}, "
          f"repeats = {args.repeats}")
    for dt in data:     # warm-up
        cpu_timed_fit("emcore", data[dt][:5000], start, 1, 1, args.reg_covar, covariance)
    per_iter = {(dt, t): [] for dt in data for t in args.threads}
    cpu_iter = {(dt, t): [] for dt in data for t in args.threads}
    fits = {}
    for r in range(args.repeats):
        order = list(data) if r % 2 == 0 else list(data)[::-1]
        for t in args.threads:
            for dt in order:
                t1, c1, one, _, _ = cpu_timed_fit("emcore", data[dt], start, 1, t,
                                                  args.reg_covar, covariance, args.tol)
                tM, cM, est, widened, noisy = cpu_timed_fit(
                    "emcore", data[dt], start, M, t, args.reg_covar, covariance, args.tol)
                # iterations M - 1 with tol 0; with tol > 0 as many as the rule ran
                steps = max(est.n_iter_ - one.n_iter_, 1)
                per_iter[(dt, t)].append((tM - t1) / steps)
                cpu_iter[(dt, t)].append((cM - c1) / steps)
                fits[dt] = est
                print(f"{r:6d} {t:3d} {dt:8s} {per_iter[(dt, t)][-1]:8.4f} s/iter  "
                      f"cpu {cpu_iter[(dt, t)][-1]:8.4f} s/iter  "
                      f"load {os.getloadavg()[0]:.2f}"
                      + (f"  iterations {est.n_iter_} ({est.stop_reason_})"
                         f"{'  fitted in double (widened)' if widened else ''}"
                         f"{f'  {noisy} rounding-noise warning(s)' if noisy else ''}"
                         if args.tol > 0 else ""), flush=True)
    print(f"{'threads':>7}  {'float64 s/iter':>14}  {'float32 s/iter':>14}  "
          f"{'float64/float32 time':>20}  {'float64 cpu':>11}  {'float32 cpu':>11}  "
          f"{'float64/float32 cpu':>19}")
    for t in args.threads:
        a = statistics.median(per_iter[("float64", t)])
        b = statistics.median(per_iter[("float32", t)])
        ca = statistics.median(cpu_iter[("float64", t)])
        cb = statistics.median(cpu_iter[("float32", t)])
        print(f"{t:>7}  {a:14.4f}  {b:14.4f}  {a / b:20.2f}  {ca:11.4f}  {cb:11.4f}  "
              f"{ca / cb:19.2f}")
    f64, f32 = fits["float64"], fits["float32"]
    assert f32.means_.dtype == np.float32 and f64.means_.dtype == np.float64
    gap = abs(f32.lower_bound_ - f64.lower_bound_) / abs(f64.lower_bound_)
    tol = first_order_gap(f64, X64) + kernel_bound(f32, X32)
    print(f"mean log-likelihood float64 {f64.lower_bound_:.10g}  float32 "
          f"{f32.lower_bound_:.10g}  relative gap {gap:.3g}  float32 tolerance "
          f"(first order + kernel bound) {tol:.3g}  gap / tolerance {gap / tol:.3g}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--covariance", choices=("diag", "full"), nargs="+",
                   default=["diag", "full"])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-iter", type=int, default=11)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=0.0,
                   help="the fits' tol (default 0: M iterations, float32_level 'all'); "
                        "with tol > 0 per iteration = (t(M) - t(1)) / (n_iter(M) - "
                        "n_iter(1)), and the engine may fit float32 rows in double")
    p.add_argument("--quick", action="store_true", help="(2e5, 16, 16), 1 repeat, M = 6")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.max_iter = 200_000, 1, 6
    if args.max_iter < 2:
        p.error("--max-iter must be at least 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    silence_convergence_warnings()
    env = environment()
    print(f"date {env['date']}  cpu {env['cpu']}  available cpus {env['cpus_available']}  "
          f"emcore {env['emcore']} ({env['emcore_path']})")
    for covariance in args.covariance:
        run_case(args, covariance)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per forward-backward call: emcore's compiled recursions vs hmmlearn's _hmmc.

Both get the same emission log-densities (a Gaussian HMM's, computed once,
outside the timings) and the same start and transition probabilities. One
"call" is what an EM iteration needs from the E-step besides the emission
densities:

* emcore: ``emcore._markov.forward_backward`` (posteriors, expected transition
  and start counts, log-likelihood and chain entropy of every sequence), with
  ``n_jobs`` = 1 and 2 threads over sequences;
* hmmlearn 0.3.x, its fastest configuration (``implementation="scaling"``),
  exactly the calls ``GaussianHMM.fit`` makes per sequence: ``exp`` of the
  log-densities, ``_hmmc.forward_scaling``, ``_hmmc.backward_scaling``, the
  normalised posteriors and ``_hmmc.compute_scaling_xi_sum``, in its Python
  loop over sequences. _hmmc is single-threaded: it is timed once.

Cases: one sequence of T = 1e5 with K = 8 states; 1000 sequences of length
100 with K = 8; and one sequence of T = 1e5 with K = 64, where the T K^2 work
dominates, with its GFLOP/s (6 K^2 flops per step: forward and backward
matrix-vector products and the transition counts) next to the single-thread
DGEMM rate measured in the same run. Medians over ``--repeats`` calls,
libraries interleaved, ratios = hmmlearn / emcore (> 1: emcore faster).

``--blas-threshold`` instead times emcore's loop and BLAS forms of the K^2
steps against each other for a range of K (the switch in emcore/_markov.py).

Run from outside the source tree so that the installed emcore is imported:

    cd /tmp && python /path/to/benchmarks/bench_markov.py
    cd /tmp && python /path/to/benchmarks/bench_markov.py --blas-threshold
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import numpy as np
import scipy.linalg  # noqa: F401  (load scipy's OpenBLAS before threadpoolctl limits)

CASES = {"long": (1, 100_000, 8), "many": (1000, 100, 8), "wide": (1, 100_000, 64)}
D = 4


def make_problem(n_seq: int, T: int, K: int, seed: int):
    """Log-densities of a sample from a diagonal Gaussian HMM (d = 4), and its chain."""
    rng = np.random.default_rng(seed)
    startprob = rng.dirichlet(np.ones(K))
    transmat = rng.dirichlet(np.ones(K), size=K) + 2.0 * np.eye(K)
    transmat /= transmat.sum(axis=1, keepdims=True)
    means = rng.normal(scale=2.0, size=(K, D))
    var = rng.uniform(0.5, 2.0, size=(K, D))
    n = n_seq * T
    z = np.empty(n, dtype=np.intp)
    cum = np.cumsum(transmat, axis=1)
    u = rng.random(n)
    for s in range(n_seq):
        z[s * T] = np.searchsorted(np.cumsum(startprob), u[s * T])
        for t in range(s * T + 1, (s + 1) * T):
            z[t] = min(np.searchsorted(cum[z[t - 1]], u[t]), K - 1)
    X = means[z] + rng.normal(size=(n, D)) * np.sqrt(var[z])
    log_b = -0.5 * (((X[:, None, :] - means) ** 2 / var).sum(-1)
                    + np.log(2 * np.pi * var).sum(-1))
    return np.ascontiguousarray(log_b), np.full(n_seq, T), startprob, transmat


def run_hmmlearn(log_b, lengths, startprob, transmat):
    from hmmlearn import _hmmc
    from hmmlearn.utils import normalize
    xi = np.zeros_like(transmat)
    ll = 0.0
    start = 0
    for T in lengths:
        frameprob = np.exp(log_b[start:start + T])
        log_prob, fwd, scaling = _hmmc.forward_scaling(startprob, transmat, frameprob)
        bwd = _hmmc.backward_scaling(startprob, transmat, frameprob, scaling)
        post = fwd * bwd
        normalize(post, axis=1)
        xi += _hmmc.compute_scaling_xi_sum(fwd, transmat, bwd, frameprob)
        ll += log_prob
        start += T
    return ll


def run_emcore(log_b, lengths, log_startprob, log_transmat, threads, out):
    from emcore import _markov
    res = _markov.forward_backward(log_b, lengths, log_startprob, log_transmat,
                                   n_jobs=threads, out=out)
    return float(res.log_likelihood.sum())


def dgemm_gflops(repeats: int) -> float:
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).random((1000, 1000))
    ts = []
    with threadpool_limits(limits=1):
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            ts.append(time.perf_counter() - t0)
    return 2e9 / statistics.median(ts) / 1e9


def run_case(name: str, repeats: int) -> dict:
    n_seq, T, K = CASES[name]
    log_b, lengths, startprob, transmat = make_problem(n_seq, T, K, seed=0)
    lpi, lA = np.log(startprob), np.log(transmat)
    out = np.empty_like(log_b)
    # same numbers first (hmmlearn's exp does not shift, fine at these densities)
    ll_h = run_hmmlearn(log_b, lengths, startprob, transmat)
    ll_e = run_emcore(log_b, lengths, lpi, lA, 1, out)
    assert abs(ll_h - ll_e) <= 1e-9 * abs(ll_h), (ll_h, ll_e)
    times = {"hmmlearn-scaling": [], "emcore-1": [], "emcore-2": []}
    for r in range(repeats):
        gc.collect()
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for key in order:
            t0 = time.perf_counter()
            if key == "hmmlearn-scaling":
                run_hmmlearn(log_b, lengths, startprob, transmat)
            else:
                run_emcore(log_b, lengths, lpi, lA, int(key[-1]), out)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"case": name, "n_seq": n_seq, "T": T, "K": K, "repeats": repeats,
           "seconds": med,
           "ratio_1": med["hmmlearn-scaling"] / med["emcore-1"],
           "ratio_2": med["hmmlearn-scaling"] / med["emcore-2"]}
    if name == "wide":
        flops = 6.0 * K * K * n_seq * T
        row["gflops"] = {k: flops / v / 1e9 for k, v in med.items()}
        row["dgemm_gflops_1thread"] = dgemm_gflops(repeats)
    return row


def blas_threshold(repeats: int) -> None:
    from emcore._core import _markov as core
    from emcore._threads import single_threaded_blas
    print(f"{'K':>4} {'loops ns/step':>14} {'BLAS ns/step':>13} {'loops/BLAS':>11}")
    with single_threaded_blas():
        for K in (4, 8, 12, 16, 20, 24, 32, 48, 64, 128):
            T = max(2000, 4_000_000 // (K * K))
            log_b, _, startprob, transmat = make_problem(1, T, K, seed=K)
            starts = np.array([0, T], dtype=np.intp)
            lpi, lA = np.log(startprob), np.log(transmat)
            out = np.empty_like(log_b)
            ts = {False: [], True: []}
            for _ in range(repeats):
                for blas in (False, True):
                    t0 = time.perf_counter()
                    core.forward_backward(log_b, starts, lpi, lA, out, 1, blas)
                    ts[blas].append(time.perf_counter() - t0)
            a, b = (statistics.median(ts[x]) / T * 1e9 for x in (False, True))
            print(f"{K:>4} {a:>14.0f} {b:>13.0f} {a / b:>11.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--blas-threshold", action="store_true")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.blas_threshold:
        blas_threshold(args.repeats)
        return 0
    import hmmlearn
    rows = []
    print(f"hmmlearn {hmmlearn.__version__}; medians of {args.repeats} calls; "
          f"ratio = hmmlearn-scaling / emcore")
    print(f"{'case':<6} {'n_seq':>6} {'T':>7} {'K':>3} {'hmmlearn s':>11} "
          f"{'emcore 1t s':>12} {'emcore 2t s':>12} {'ratio 1t':>9} {'ratio 2t':>9}")
    for name in args.case or list(CASES):
        row = run_case(name, args.repeats)
        rows.append(row)
        s = row["seconds"]
        print(f"{name:<6} {row['n_seq']:>6} {row['T']:>7} {row['K']:>3} "
              f"{s['hmmlearn-scaling']:>11.4f} {s['emcore-1']:>12.4f} "
              f"{s['emcore-2']:>12.4f} {row['ratio_1']:>9.2f} {row['ratio_2']:>9.2f}")
        if "gflops" in row:
            g = row["gflops"]
            print(f"       GFLOP/s (6 K^2 per step): hmmlearn {g['hmmlearn-scaling']:.2f}, "
                  f"emcore 1t {g['emcore-1']:.2f}, 2t {g['emcore-2']:.2f}; "
                  f"DGEMM 1 thread {row['dgemm_gflops_1thread']:.2f}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per EM iteration of a Gaussian HMM: emcore vs hmmlearn (and pomegranate).

One **EM iteration** is what hmmlearn's ``fit`` does per iteration: the emission
log-densities, forward-backward, the expected start and transition counts, the
family's posterior-weighted statistics and the M-step (start, transitions,
means, covariances). All libraries start every repeat from the same parameters
on the same data.

* emcore: the estimator users run, ``emcore.HiddenMarkovModel(...).fit`` from
  the same start (``startprob_init``, ``transmat_init``, ``params_init``,
  ``reg_covar=0``), ``max_iter=8``, ``tol=0``; seconds per iteration = the
  median of ``history_[t].seconds`` (each an M-step, the pass over the data at
  the new parameters -- the markov_chain structure's fused compiled pass:
  emissions, forward-backward and the family's statistics, a group of sequences
  at a time, threads over sequences -- and the ELBO chain's checks); ``n_jobs``
  1 and 2 (BLAS held to one thread: the M-step's d x d matrices are tiny).
* hmmlearn 0.3.x ``GaussianHMM.fit(n_iter=1, init_params="")``, both
  implementations ("log", its default, and "scaling", its fastest), covariance
  prior off (``covars_prior=0``, ``min_covar`` tiny). Single-threaded compiled
  code; its numpy parts run under the same thread limit.
* pomegranate 1.x ``DenseHMM`` with ``Normal`` full-covariance distributions,
  float32 batched tensors (its fast configuration), ``fit`` with
  ``max_iter=1``, when importable -- in this process or in the Python given by
  ``--peer-python`` (a scratch environment with torch; the data are rebuilt
  there from the same seed).

Cases: ``long`` one sequence of T = 1e5, K = 8, full covariance, d = 4;
``many`` 1000 sequences of length 100, same model; ``wide`` one sequence of
T = 1e5 with K = 64, diagonal covariance, d = 8, where forward-backward's T K^2
work dominates: its GFLOP/s (6 K^2 flops per step: the forward and backward
matrix-vector products and the transition counts) against the single-thread
DGEMM rate measured in the same run. Medians over ``--repeats``, libraries
interleaved; ratio = peer / emcore (> 1: emcore faster). Thread limits through
threadpoolctl (BLAS, OpenMP) and ``torch.set_num_threads``.

At 1 thread the CPU time of the calling thread per iteration is printed too
(``time.thread_time``: emcore's as the difference of a fit of EMCORE_ITERATIONS
iterations and of one, over EMCORE_ITERATIONS - 1; hmmlearn's around its
``fit(n_iter=1)``). Both run wholly in the calling thread at 1 thread, so that
ratio does not move with other jobs competing for the cores, while the
wall-clock one does.

``--memory`` measures the peak anonymous memory (RssAnon, sampled) beyond the
input of one fused pass over T = 1e7 rows, K = 8, d = 4 read from a memory map:
as 1000 sequences of 1e4 rows and as one sequence. ``--blas-threshold`` times
emcore's loop and BLAS forms of the K^2 steps (the switch in emcore/_markov.py).

Run from outside the source tree so that the installed emcore is imported:

    cd /tmp && python /path/to/benchmarks/bench_markov.py --quick
    cd /tmp && python /path/to/benchmarks/bench_markov.py --peer-python /path/to/venv/bin/python
    cd /tmp && python /path/to/benchmarks/bench_markov.py --memory
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

CASES = {"long": (1, 100_000, 8, 4, "full"), "many": (1000, 100, 8, 4, "full"),
         "wide": (1, 100_000, 64, 8, "diag")}


# --- the problem -------------------------------------------------------------------

def make_problem(case: str, seed: int = 0, scale: float = 1.0) -> dict:
    """A sample of a Gaussian HMM and a starting point (not the truth) for EM."""
    n_seq, T, K, d, cov_type = CASES[case]
    T = max(2, int(T * scale)) if n_seq == 1 else T
    n_seq = max(1, int(n_seq * scale)) if n_seq > 1 else 1
    rng = np.random.default_rng(seed)
    transmat = rng.dirichlet(np.ones(K), size=K) + 4.0 * np.eye(K)
    transmat /= transmat.sum(axis=1, keepdims=True)
    means = rng.normal(scale=1.5, size=(K, d))
    sd = rng.uniform(0.7, 1.5, size=(K, d))
    n = n_seq * T
    z = np.empty(n, dtype=np.intp)
    cum = np.cumsum(transmat, axis=1)
    u = rng.random(n)
    for s in range(n_seq):
        z[s * T] = rng.integers(K)
        for t in range(s * T + 1, (s + 1) * T):
            z[t] = min(int(np.searchsorted(cum[z[t - 1]], u[t])), K - 1)
    X = np.ascontiguousarray(means[z] + rng.normal(size=(n, d)) * sd[z])
    # the start: perturbed means, the data's covariance, a sticky chain
    start_means = means + rng.normal(scale=0.5, size=(K, d))
    cov = np.cov(X.T) if d > 1 else np.var(X)[None, None]
    if cov_type == "diag":
        covs = np.broadcast_to(np.diag(np.diag(cov)), (K, d, d)).copy()
    else:
        covs = np.broadcast_to(cov, (K, d, d)).copy()
    A0 = np.full((K, K), 0.2 / (K - 1))
    np.fill_diagonal(A0, 0.8)
    return {"X": X, "lengths": np.full(n_seq, T), "K": K, "d": d, "cov_type": cov_type,
            "startprob": np.full(K, 1.0 / K), "transmat": A0, "means": start_means,
            "covars": covs}


# --- emcore --------------------------------------------------------------------------

def emcore_setup(p: dict):
    from emcore.registry import get_registry
    family = get_registry().family("gaussian").factory(
        p["K"], p["d"], covariance_type=p["cov_type"], reg_covar=0.0)
    params = family.params_from_covariances(p["means"], p["covars"])
    return family, params


#: iterations per timed emcore fit (its per-iteration time is their median)
EMCORE_ITERATIONS = 8


def _emcore_fit(p: dict, threads: int, max_iter: int):
    import warnings
    from emcore import HiddenMarkovModel
    from emcore.exceptions import ConvergenceWarning
    model = HiddenMarkovModel(
        p["K"], family_options={"covariance_type": p["cov_type"], "reg_covar": 0.0},
        startprob_init=p["startprob"], transmat_init=p["transmat"],
        params_init={"means": p["means"], "covariances": p["covars"]},
        max_iter=max_iter, tol=0.0, n_jobs=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(p["X"], p["lengths"])
    return model


def emcore_iteration(p: dict, state, threads: int) -> tuple:
    """``emcore.HiddenMarkovModel`` fitted from the problem's start for
    EMCORE_ITERATIONS iterations: (log-likelihood at the start, seconds per
    iteration = the median of ``history_[t].seconds``). An iteration record is
    one M-step and one pass over the data at the new parameters (the pass at
    the start is the fit's set-up, as hmmlearn's first E-step is part of its
    n_iter=1 fit: this favours neither side by more than the M-step)."""
    model = _emcore_fit(p, threads, EMCORE_ITERATIONS)
    return (float(model.history_[0].value),
            statistics.median(it.seconds for it in model.history_))


def emcore_cpu_iteration(p: dict, state) -> float:
    """CPU seconds of this thread per iteration at n_jobs=1: a fit of
    EMCORE_ITERATIONS iterations minus a fit of one, over the difference."""
    def cpu(max_iter: int) -> float:
        t0 = time.thread_time()
        _emcore_fit(p, 1, max_iter)
        return time.thread_time() - t0
    return (cpu(EMCORE_ITERATIONS) - cpu(1)) / (EMCORE_ITERATIONS - 1)


# --- hmmlearn ------------------------------------------------------------------------

def hmmlearn_model(p: dict, implementation: str):
    from hmmlearn import hmm
    m = hmm.GaussianHMM(n_components=p["K"], covariance_type=p["cov_type"],
                        implementation=implementation, n_iter=1, tol=0.0,
                        init_params="", params="stmc", covars_prior=0.0,
                        min_covar=1e-300)
    m.startprob_ = p["startprob"].copy()
    m.transmat_ = p["transmat"].copy()
    m.means_ = p["means"].copy()
    m.covars_ = (p["covars"].copy() if p["cov_type"] == "full"
                 else np.diagonal(p["covars"], axis1=1, axis2=2).copy())
    return m


def hmmlearn_iteration(p: dict, implementation: str) -> float:
    m = hmmlearn_model(p, implementation)
    m.fit(p["X"], p["lengths"])
    return float(m.monitor_.history[-1])


# --- pomegranate ---------------------------------------------------------------------

def pomegranate_iteration(p: dict, threads: int, dtype: str = "float32") -> float:
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.hmm import DenseHMM
    torch.set_num_threads(threads)
    tdt = getattr(torch, dtype)
    cov_type = p["cov_type"]
    dists = [Normal(means=torch.tensor(p["means"][k], dtype=tdt),
                    covs=torch.tensor(p["covars"][k] if cov_type == "full"
                                      else np.diag(p["covars"][k]), dtype=tdt),
                    covariance_type=cov_type) for k in range(p["K"])]
    model = DenseHMM(dists, edges=torch.tensor(p["transmat"], dtype=tdt),
                     starts=torch.tensor(p["startprob"], dtype=tdt), max_iter=1,
                     tol=0.0, verbose=False)
    n_seq, T = len(p["lengths"]), int(p["lengths"][0])
    X = torch.tensor(p["X"].reshape(n_seq, T, p["d"]), dtype=tdt)
    model.fit(X)
    return float("nan")


def pomegranate_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("pomegranate", "torch"))


# --- timing ----------------------------------------------------------------------------

def limits(threads: int):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads)


def timed(fn, clock=time.perf_counter) -> float:
    gc.collect()
    t0 = clock()
    fn()
    return clock() - t0


def run_peers_only(case: str, repeats: int, threads_list, scale: float) -> dict:
    """pomegranate's timings (run in the peer interpreter)."""
    p = make_problem(case, scale=scale)
    out = {}
    for th in threads_list:
        pomegranate_iteration(p, th)                   # warm-up
        out[f"pomegranate-{th}"] = statistics.median(
            timed(lambda: pomegranate_iteration(p, th)) for _ in range(repeats))
    return out


def fb_gflops(p: dict, state, repeats: int) -> dict:
    """Forward-backward alone on the family's log-densities (the wide case)."""
    from emcore import _markov
    family, params = state
    log_b = family.log_density(p["X"], params)
    lpi, lA = np.log(p["startprob"]), np.log(p["transmat"])
    out = np.empty_like(log_b)
    T, K = log_b.shape
    flops = 6.0 * K * K * T
    res = {}
    for th in (1, 2):
        with limits(1):
            t = statistics.median(timed(lambda: _markov.forward_backward(
                log_b, p["lengths"], lpi, lA, n_jobs=th, out=out)) for _ in range(repeats))
        res[f"fb-emcore-{th}"] = flops / t / 1e9
    a = np.random.default_rng(0).random((1000, 1000))
    with limits(1):
        t = statistics.median(timed(lambda: a @ a) for _ in range(repeats))
    res["dgemm-1"] = 2e9 / t / 1e9
    return res


def run_case(case: str, repeats: int, scale: float, peer_python) -> dict:
    p = make_problem(case, scale=scale)
    state = emcore_setup(p)
    # the same start gives the same log-likelihood in every library
    ll_e, _ = emcore_iteration(p, state, 1)
    ll_h = hmmlearn_iteration(p, "scaling")
    assert abs(ll_e - ll_h) <= 1e-8 * abs(ll_h), (ll_e, ll_h)
    runs = {"hmmlearn-log": lambda: hmmlearn_iteration(p, "log"),
            "hmmlearn-scaling": lambda: hmmlearn_iteration(p, "scaling"),
            "emcore-1": lambda: emcore_iteration(p, state, 1),
            "emcore-2": lambda: emcore_iteration(p, state, 2),
            "cpu-emcore-1": lambda: emcore_cpu_iteration(p, state),
            "cpu-hmmlearn-scaling": lambda: hmmlearn_iteration(p, "scaling")}
    times = {k: [] for k in runs}
    for r in range(repeats):
        for key in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            # emcore's threads are its own loop's (n_jobs); BLAS stays at one
            # thread for it (the M-step's K d x d matrices are far too small for
            # a thread pool, whose wake-ups on a loaded machine cost more)
            th = 2 if key.endswith("-2") and not key.startswith("emcore") else 1
            with limits(th):
                if key.startswith("emcore"):     # its own per-iteration time
                    times[key].append(runs[key]()[1])
                elif key == "cpu-emcore-1":
                    times[key].append(runs[key]())
                elif key.startswith("cpu-"):
                    times[key].append(timed(runs[key], clock=time.thread_time))
                else:
                    times[key].append(timed(runs[key]))
    med = {k: statistics.median(v) for k, v in times.items()}
    if case == "many" or case == "long":
        if pomegranate_available():
            with limits(1):
                med.update(run_peers_only(case, repeats, (1, 2), scale))
        elif peer_python:
            cmd = [peer_python, os.path.abspath(__file__), "--peers-only", "--case", case,
                   "--repeats", str(repeats), "--scale", str(scale)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode == 0:
                med.update(json.loads(r.stdout.strip().splitlines()[-1]))
            else:
                print(f"  (pomegranate run failed: {r.stderr.strip().splitlines()[-1:]})")
        else:
            print("  (pomegranate skipped: torch and pomegranate are not importable here; "
                  "--peer-python names a Python that has them)")
    _, _, K, d, cov_type = CASES[case]
    row = {"case": case, "shape": (len(p["lengths"]), int(p["lengths"][0]), K, d, cov_type),
           "scale": scale, "repeats": repeats, "seconds": med}
    if case == "wide":
        row["gflops"] = fb_gflops(p, state, repeats)
    return row


def print_row(row: dict) -> None:
    s = row["seconds"]
    e1, e2 = s["emcore-1"], s["emcore-2"]
    n_seq, T, K, d, cov = row["shape"]
    print(f"\n{row['case']}: {n_seq} x T={T}, K={K}, d={d}, {cov} (scale {row['scale']}); "
          f"median s per EM iteration, ratio = peer / emcore at the same threads")
    print(f"  {'':<20}{'1 thread':>10}{'2 threads':>11}{'ratio 1t':>10}{'ratio 2t':>10}")
    print(f"  {'emcore':<20}{e1:>10.4f}{e2:>11.4f}")
    for peer in ("hmmlearn-log", "hmmlearn-scaling"):
        print(f"  {peer:<20}{s[peer]:>10.4f}{'':>11}{s[peer] / e1:>10.2f}"
              f"{s[peer] / e2:>10.2f}")
    if "cpu-emcore-1" in s:
        ce, ch = s["cpu-emcore-1"], s["cpu-hmmlearn-scaling"]
        print(f"  CPU s of the thread, 1 thread: emcore {ce:.4f}, hmmlearn-scaling {ch:.4f}:"
              f" ratio {ch / ce:.2f}")
    if "pomegranate-1" in s:
        p1, p2 = s["pomegranate-1"], s["pomegranate-2"]
        print(f"  {'pomegranate f32':<20}{p1:>10.4f}{p2:>11.4f}{p1 / e1:>10.2f}{p2 / e2:>10.2f}")
    if "gflops" in row:
        g = row["gflops"]
        print(f"  forward-backward alone: {g['fb-emcore-1']:.2f} GFLOP/s at 1 thread "
              f"({g['fb-emcore-2']:.2f} with n_jobs=2, one sequence), DGEMM 1 thread "
              f"{g['dgemm-1']:.2f} GFLOP/s: {g['fb-emcore-1'] / g['dgemm-1']:.1%} of it")


# --- memory ------------------------------------------------------------------------------

def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_run(n_seq: int, path: str) -> None:
    """Child process: one fused pass over the memory map; prints peak MiB beyond
    the baseline (the map's pages are file-backed, not anonymous)."""
    from emcore import _markov
    from emcore.registry import get_registry
    X = np.load(path, mmap_mode="r")
    n, d = X.shape
    K = 8
    family = get_registry().family("gaussian").factory(K, d, covariance_type="full")
    params = family.params_from_covariances(
        np.random.default_rng(1).normal(size=(K, d)), np.broadcast_to(np.eye(d), (K, d, d)).copy())
    A = np.full((K, K), 0.2 / (K - 1))
    np.fill_diagonal(A, 0.8)
    lengths = np.full(n_seq, n // n_seq)
    kernel = family.compiled_kernel(params)
    gc.collect()
    base = _rss_anon()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.002)
    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    _markov.forward_backward_stats(X, lengths, np.log(np.full(K, 1 / K)), np.log(A),
                                   kernel, n_jobs=2)
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    peak[0] = max(peak[0], _rss_anon())
    print(json.dumps({"n_seq": n_seq, "T": n // n_seq, "peak_mib": (peak[0] - base) / 2**20,
                      "seconds": dt}))


def memory(n_rows: int) -> None:
    import tempfile
    d = 4
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.npy")
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n_rows, d))
        rng = np.random.default_rng(0)
        for s in range(0, n_rows, 1_000_000):
            e = min(n_rows, s + 1_000_000)
            X[s:e] = rng.normal(size=(e - s, d)) + rng.integers(0, 8, e - s)[:, None]
        X.flush()
        del X
        print(f"memory: one fused pass over {n_rows} rows x {d} (input {n_rows * d * 8 / 2**20:.0f} "
              f"MiB, a memory map), K = 8, full covariance, 2 threads; peak anonymous memory "
              f"beyond the process's baseline:")
        for n_seq in (n_rows // 10_000, 1):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child",
                                str(n_seq), path], capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            per = 3 * res["T"] * 8 * 8 / 2**20
            print(f"  {res['n_seq']:>6} sequences of T = {res['T']}: peak {res['peak_mib']:.1f} MiB "
                  f"in {res['seconds']:.1f} s (3 T K doubles of one sequence = {per:.1f} MiB)")


def blas_threshold(repeats: int) -> None:
    from emcore._core import _markov as core
    from emcore._threads import single_threaded_blas
    print(f"{'K':>4} {'loops ns/step':>14} {'BLAS ns/step':>13} {'loops/BLAS':>11}")
    rng = np.random.default_rng(0)
    with single_threaded_blas():
        for K in (4, 8, 12, 16, 20, 24, 32, 48, 64, 128):
            T = max(2000, 4_000_000 // (K * K))
            log_b = rng.normal(scale=3.0, size=(T, K))
            A = rng.dirichlet(np.ones(K), size=K) + 4 * np.eye(K)
            A /= A.sum(axis=1, keepdims=True)
            starts = np.array([0, T], dtype=np.intp)
            lpi, lA = np.log(np.full(K, 1.0 / K)), np.log(A)
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of each case's size (T, or the number of sequences)")
    ap.add_argument("--quick", action="store_true",
                    help="scale 0.2, 3 repeats, long and many (under a minute)")
    ap.add_argument("--peer-python", help="a Python with torch and pomegranate")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-rows", type=int, default=10_000_000)
    ap.add_argument("--blas-threshold", action="store_true")
    ap.add_argument("--peers-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_run(int(args.memory_child[0]), args.memory_child[1])
        return 0
    if args.peers_only:
        print(json.dumps(run_peers_only(args.case[0], args.repeats, (1, 2), args.scale)))
        return 0
    if args.blas_threshold:
        blas_threshold(args.repeats)
        return 0
    if args.memory:
        memory(args.memory_rows)
        return 0
    if args.quick:
        args.scale, args.repeats = 0.2, 3
        args.case = args.case or ["long", "many"]
    import hmmlearn
    import scipy.linalg
    del scipy.linalg      # loaded for its OpenBLAS, before threadpoolctl limits
    print(f"hmmlearn {hmmlearn.__version__}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; medians of {args.repeats}")
    rows = []
    for case in args.case or list(CASES):
        row = run_case(case, args.repeats, args.scale, args.peer_python)
        rows.append(row)
        print_row(row)
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

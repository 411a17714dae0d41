"""mclust's grid: emcore's select_model against R's mclust ``Mclust()`` (issue 20).

Both fit the full grid G = 1..9 x the fourteen covariance models, one start per
cell, to the same data (a seeded mixture of 5 Gaussians in d = 8 dimensions with
different volumes, shapes and orientations, written to a CSV with 17 significant
digits so that R reads the same doubles), and choose by BIC:

* R: ``Mclust(X, G = 1:9)`` (all fourteen models; mclust's defaults: one
  hierarchical agglomeration (hc, "VVV" on the SVD-transformed data) of a random
  subset of 2000 rows, cut at each G, an M-step on the subset, then EM on all
  rows to a relative change |dL| / (1 + |L|) below 1e-5), timed inside R around
  the call (R's start-up and reading the CSV are not counted);
* emcore: ``select_model(X, n_components=range(1, 10), covariance_types="all",
  n_init=1, tol=1e-5, reg_covar=0, init_params=..., n_jobs=t)``, from the same
  kind of start, ``init_params="hc"`` (mclust's agglomeration on a random subset
  of 2000 rows, then one M-step; as in ``Mclust()``, one subset and one
  agglomeration for the whole grid), and from k-means++ (emcore's default). emcore stops on
  |dL| / |L| < tol: with |L| > 1e4 here, the two rules' thresholds differ by less
  than 1e-4 of themselves, so the same tol is the same stopping rule.

It prints, for each side, the wall-clock seconds and the CPU seconds (all
threads), the ratios (mclust / emcore), the model each chose and emcore's total
EM iterations, with the load average before and after; for emcore also how busy
its threads were (CPU / wall: 2.0 is both threads always running). On a busy machine the
wall-clock times stretch by the share of the CPUs each process gets, and a
2-thread process gets more of them than R's one: read the CPU ratio there, and
the wall-clock one on an idle machine. R is skipped when ``Rscript`` with mclust
is not installed.

    cd /tmp && python /path/to/benchmarks/bench_mclust.py          # (1e5, 8), ~10 min
    cd /tmp && python /path/to/benchmarks/bench_mclust.py --quick  # (5e3, 8), hc only
    options: --n N --d D --threads T --init {hc,k-means++,both} --no-r
             --components G [G ...] (a part of the grid, e.g. one row: 5)

Target (issue 20): emcore >= 10x faster than mclust with 2 threads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np

TARGET = 10.0

R_SCRIPT = r"""
suppressMessages(library(mclust))
X <- as.matrix(read.csv("data.csv", header = FALSE))
set.seed(0)
t0 <- proc.time()
fit <- Mclust(X, G = GRID, verbose = FALSE)
t1 <- proc.time()
cpu <- (t1[["user.self"]] + t1[["sys.self"]]) - (t0[["user.self"]] + t0[["sys.self"]])
cat(sprintf("%.6f %.6f %s %d %.10g\n", t1[["elapsed"]] - t0[["elapsed"]], cpu,
            fit$modelName, fit$G, fit$bic))
"""


def make_data(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n rows of a mixture of 5 Gaussians in d dimensions: random means 6 apart on
    average, covariances with volumes 0.3-3, condition numbers up to 30 and random
    orientations (no constraint of the fourteen holds exactly)."""
    rng = np.random.default_rng(seed)
    k = 5
    means = rng.normal(0.0, 6.0 / np.sqrt(2.0), (k, d))
    counts = rng.multinomial(n, np.full(k, 1.0 / k))
    parts = []
    for j in range(k):
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        scale = np.sqrt(10.0 ** rng.uniform(-0.5, 0.5) * 10.0 ** rng.uniform(0.0, 1.5, d))
        parts.append(means[j] + (rng.standard_normal((counts[j], d)) * scale) @ Q.T)
    X = np.concatenate(parts)
    return X[rng.permutation(n)]


def run_emcore(X: np.ndarray, threads: int, init: str, components=range(1, 10)):
    """(wall s, CPU s, model, G, mclust's BIC, total EM iterations) of the grid."""
    from emcore.exceptions import ConvergenceWarning
    from emcore.model_selection import select_model
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = select_model(X, n_components=components, covariance_types="all",
                              n_init=1, tol=1e-5, reg_covar=0.0, random_state=0,
                              n_jobs=threads, max_iter=1000, init_params=init)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    best = result.best_params
    return (seconds, cpu, best["covariance_type"], best["n_components"],
            -result.best_model.bic(X), sum(row.n_iter for row in result.table))


def run_mclust(X: np.ndarray, components=range(1, 10)):
    exe = shutil.which("Rscript")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        np.savetxt(os.path.join(folder, "data.csv"), X, delimiter=",", fmt="%.17g")
        with open(os.path.join(folder, "run.R"), "w") as f:
            f.write(R_SCRIPT.replace("GRID", "c(" + ", ".join(map(str, components)) + ")"))
        out = subprocess.run([exe, "run.R"], cwd=folder, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"R failed (mclust not installed?): {out.stderr.strip()[:200]}")
        return None
    seconds, cpu, model, g, bic = out.stdout.split()
    return float(seconds), float(cpu), model, int(g), float(bic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="(5e3, 8), the hc start only: about a minute on an idle machine")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", choices=("hc", "k-means++", "both"), default=None,
                        help="emcore's start (default: both; hc with --quick)")
    parser.add_argument("--no-r", action="store_true", help="emcore only")
    parser.add_argument("--components", type=int, nargs="+", default=list(range(1, 10)),
                        help="the G of the grid (default 1..9; e.g. one row: --components 5)")
    args = parser.parse_args()
    n = args.n or (5000 if args.quick else 100_000)
    inits = {"both": ("hc", "k-means++"), None: ("hc",) if args.quick else
             ("hc", "k-means++")}.get(args.init, (args.init,))
    X = make_data(n, args.d)
    G = args.components
    print(f"data: ({n}, {args.d}); grid G = {G[0]}..{G[-1]} ({len(G)}) x 14 models, "
          "one start per cell, "
          f"tol 1e-5; load average {os.getloadavg()[0]:.1f}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    runs = []
    for init in inits:
        em = run_emcore(X, args.threads, init, G)
        runs.append((init, em))
        print(f"emcore {init:>9} start ({args.threads} threads): {em[0]:8.1f} s wall, "
              f"{em[1]:8.1f} s CPU ({em[1] / em[0]:.2f} threads busy), {em[5]} EM "
              f"iterations, chose {em[2]},{em[3]} (mclust's BIC sign: {em[4]:.2f}); "
              f"load average {os.getloadavg()[0]:.1f}")
    r = None if args.no_r else run_mclust(X, G)
    print(f"load average {os.getloadavg()[0]:.1f}")
    if r is None:
        print("mclust: skipped" + ("" if args.no_r else " (Rscript with mclust not found)"))
        return
    print(f"mclust Mclust() (1 thread):          {r[0]:8.1f} s wall, {r[1]:8.1f} s CPU, "
          f"chose {r[2]},{r[3]} (BIC {r[4]:.2f})")
    for init, em in runs:
        ratio = r[0] / em[0]
        print(f"ratio mclust / emcore ({init} start): {ratio:.2f}x wall, "
              f"{r[1] / em[1]:.2f}x CPU (target >= {TARGET:g}x wall at 2 threads: "
              f"{'met' if ratio >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()

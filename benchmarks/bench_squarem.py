"""Time to convergence: emcore plain EM, emcore + SQUAREM, scikit-learn GaussianMixture.

A full-covariance Gaussian mixture with overlapping clusters (centres drawn with
scale 1.5 around 0, unit-variance clusters), by default (n, d, k) = (2e5, 16, 16);
``--issue-size`` runs issue 19's (1e6, 16, 16). All three start from the same
parameters (one emcore EM step from a seeded k-means++ partition, given to
scikit-learn as weights_init / means_init / precisions_init) with the same
reg_covar, and run at the same thread count.

The target: the log-likelihood within 1e-8 relative of its converged value L*,
L* being emcore + SQUAREM's run to a relative change of 1e-13 (checked against
plain EM's last value). For each method: the passes over the data and the wall time
until the target is first reached (emcore: per record, from ``callback``; plain EM
stops there). scikit-learn has no per-iteration trace, so it runs one iteration per
``fit`` call (``warm_start=True, max_iter=1``; the lower bound after call j is the
log-likelihood at the parameters before its M-step) until it reaches the target or
``--sklearn-max-iter`` iterations, whichever comes first: when it never reaches the
target its time at that cap is reported, a lower bound of its time to the target
(said in the output). Ratios printed: plain / SQUAREM passes (target >= 3) and
scikit-learn / SQUAREM wall time (target >= 30).

    cd /tmp && python /path/to/benchmarks/bench_squarem.py            # (2e5, 16, 16)
    cd /tmp && python /path/to/benchmarks/bench_squarem.py --quick    # < 60 s
    cd /tmp && python /path/to/benchmarks/bench_squarem.py --issue-size
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from emcore import GaussianMixture
from emcore.engine import run_em
from emcore.registry import get_registry

TARGET = 1e-8


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(k, d))
    return centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))


def start(X: np.ndarray, k: int, reg_covar: float, seed: int, n_jobs: int):
    gm = GaussianMixture(k, max_iter=1, reg_covar=reg_covar, random_state=seed,
                         n_jobs=n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # one step: 'did not converge'
        gm.fit(X)
    return gm.weights_.copy(), gm._fitted_model()[2], gm.precisions_.copy()


def run_emcore(X, k, w0, p0, reg_covar, n_jobs, accelerate, target=None, max_iter=100000,
               stop_rel=1e-13):
    """(FitResult, trace) where trace is [(seconds, passes, objective)] per record."""
    family = get_registry().family("gaussian").factory(k, X.shape[1], reg_covar=reg_covar)
    rule = get_registry().posterior_rule("soft").factory()
    trace = []
    passes = [1]
    t0 = time.perf_counter()

    def callback(record):
        reason = (record.extrapolation or {}).get("reason", "")
        if not reason.startswith("invalid"):       # an invalid point costs no pass
            passes[0] += 1
        trace.append((time.perf_counter() - t0, passes[0], record.objective))

    def converged(record, before, after):
        if record.step != "em":
            return False
        if target is not None:
            return record.objective >= target
        return record.relative_change < stop_rel

    result = run_em(X, family, rule, w0, p0, max_iter=max_iter, tol=0.0, n_jobs=n_jobs,
                    callback=callback, converged=converged, accelerate=accelerate)
    return result, trace


def first_reaching(trace, target):
    for seconds, passes, objective in trace:
        if objective >= target:
            return seconds, passes
    return None


def run_sklearn(X, k, w0, p0, prec0, reg_covar, target, max_iter):
    from sklearn.mixture import GaussianMixture as SkGM
    sk = SkGM(k, covariance_type="full", reg_covar=reg_covar, max_iter=1, tol=0.0,
              weights_init=w0, means_init=p0["means"], precisions_init=prec0,
              warm_start=True)
    n = X.shape[0]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # max_iter=1: ConvergenceWarning
        for it in range(1, max_iter + 1):
            sk.fit(X)
            if sk.lower_bound_ * n >= target:
                # the lower bound is at the parameters before this call's M-step
                return time.perf_counter() - t0, it, True, sk.lower_bound_ * n
    return time.perf_counter() - t0, max_iter, False, sk.lower_bound_ * n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--issue-size", action="store_true",
                        help="issue 19's size, (1e6, 16, 16)")
    parser.add_argument("--quick", action="store_true",
                        help="(2e4, 8, 8) and scikit-learn capped at 30 iterations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    parser.add_argument("--sklearn-max-iter", type=int, default=300)
    parser.add_argument("--plain-max-iter", type=int, default=20000)
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args(argv)
    if args.issue_size:
        args.n = 1_000_000
    if args.quick:
        args.n, args.d, args.k = 20_000, 8, 8
        args.sklearn_max_iter = min(args.sklearn_max_iter, 30)
    n, d, k = args.n, args.d, args.k
    print(f"GMM full, overlapping clusters (centre scale 1.5): n={n} d={d} k={k}, "
          f"{args.threads} thread(s), reg_covar={args.reg_covar:g}, target: loglik within "
          f"{TARGET:g} relative of L*", flush=True)
    X = make_data(n, d, k, args.seed)
    with threadpool_limits(args.threads):
        w0, p0, prec0 = start(X, k, args.reg_covar, args.seed, args.threads)
        sq, sq_trace = run_emcore(X, k, w0, p0, args.reg_covar, args.threads, "squarem")
        L_star = sq.objective
        target = L_star - TARGET * abs(L_star)
        print(f"  SQUAREM to L*: {sq.n_passes} passes, {sq.seconds:.1f} s", flush=True)
        plain, plain_trace = run_emcore(X, k, w0, p0, args.reg_covar, args.threads, None,
                                        target=target, max_iter=args.plain_max_iter)
        print(f"  plain EM: {plain.n_passes} passes, {plain.seconds:.1f} s", flush=True)
        rows = []
        for name, result, trace in (("emcore plain EM", plain, plain_trace),
                                    ("emcore + SQUAREM", sq, sq_trace)):
            hit = first_reaching(trace, target)
            rows.append((name, hit, result))
        print(f"L* = {L_star:.12e} (SQUAREM to a relative change of 1e-13, "
              f"{sq.n_passes} passes, {sq.seconds:.1f} s); plain EM's last value "
              f"{plain.objective:.12e}")
        steps = {}
        for it in sq.history:
            steps[it.step] = steps.get(it.step, 0) + 1
        print(f"SQUAREM records: {steps}")
        sk = None
        if not args.no_sklearn:
            sk = run_sklearn(X, k, w0, p0, prec0, args.reg_covar, target,
                             args.sklearn_max_iter)
    print()
    print(f"{'method':<24} {'passes':>8} {'seconds':>10}  to loglik within {TARGET:g} of L*")
    for name, hit, result in rows:
        if hit is None:
            print(f"{name:<24} {'--':>8} {'--':>10}  not reached ({result.n_passes} passes)")
        else:
            print(f"{name:<24} {hit[1]:>8d} {hit[0]:>10.2f}")
    if sk is not None:
        seconds, iters, reached, last = sk
        note = ("reached" if reached else
                f"NOT reached after max_iter={iters} (loglik {last:.10e}, "
                f"{(L_star - last) / abs(L_star):.2e} relative below L*): time at max_iter, "
                "a lower bound")
        print(f"{'scikit-learn':<24} {iters:>8d} {seconds:>10.2f}  {note}")
    plain_hit, sq_hit = rows[0][1], rows[1][1]
    print()
    if plain_hit and sq_hit:
        print(f"passes, plain / SQUAREM: {plain_hit[1] / sq_hit[1]:.2f}x  (target >= 3)")
        print(f"time, plain / SQUAREM: {plain_hit[0] / sq_hit[0]:.2f}x")
    elif sq_hit:
        print(f"passes, plain / SQUAREM: > {plain.n_passes / sq_hit[1]:.2f}x (plain EM did "
              f"not reach the target in {plain.n_passes} passes)  (target >= 3)")
    if sk is not None and sq_hit:
        bound = "" if sk[2] else " (at least: scikit-learn never reached the target)"
        print(f"time, scikit-learn / SQUAREM: {sk[0] / sq_hit[0]:.1f}x{bound}  (target >= 30)")
        if not sk[2]:
            # the same EM iterates as emcore's plain EM (same start, same reg_covar):
            # scikit-learn needs at least as many iterations as plain EM did
            plain_iters = plain_hit[1] - 1 if plain_hit else plain.n_passes - 1
            estimate = sk[0] / sk[1] * plain_iters
            print(f"  estimate: scikit-learn's time per iteration x the {plain_iters}"
                  f"{'' if plain_hit else '+'} EM iterations plain emcore needed = "
                  f"{estimate:.0f} s, {estimate / sq_hit[0]:.0f}x SQUAREM's time"
                  f"{'' if plain_hit else ' (a lower bound)'}")


if __name__ == "__main__":
    main()

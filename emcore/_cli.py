"""The ``emcore`` command: ``emcore demo``, ``emcore plugins``, ``emcore fit``,
``emcore --version``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from emcore._fit_command import add_parser as add_fit_parser
from emcore._version import __version__


def _demo(args: argparse.Namespace) -> int:
    from emcore.datasets import OLD_FAITHFUL_COLUMNS, load_old_faithful
    from emcore.gaussian_mixture import GaussianMixture

    X = load_old_faithful()
    gm = GaussianMixture(n_components=args.n_components, random_state=args.random_state,
                         tol=args.tol, n_jobs=args.n_jobs)
    gm.fit(X)
    print(f"emcore {__version__}: Gaussian mixture (full covariance) fitted by EM to the "
          f"Old Faithful data ({X.shape[0]} x {X.shape[1]}: {', '.join(OLD_FAITHFUL_COLUMNS)})")
    if not args.audit:
        return _demo_summary(args, gm, X)
    print(f"n_components={gm.n_components}, init k-means++ (random_state="
          f"{args.random_state}), tol={gm.tol:g}, reg_covar={gm.reg_covar:g}\n")
    print("Each iteration t must satisfy, up to a derived rounding tolerance,")
    print("  loglik(theta_t) = ELBO(q_t, theta_t) <= ELBO(q_t, theta_t+1) <= loglik(theta_t+1)")
    print("gap = loglik(theta_t+1) - ELBO(q_t, theta_t+1) = KL(q_t || posterior at theta_t+1)"
          " >= 0\n")
    header = (f"{'iter':>4} {'loglik(theta_t)':>18} {'ELBO(q_t,theta_t+1)':>20} "
              f"{'loglik(theta_t+1)':>18} {'gap':>10} {'change':>10}  chain")
    print(header)
    print("-" * len(header))
    worst = 0.0
    all_hold = True
    penalised_needed = False
    for it in gm.history_:
        plain = it.chain_holds(penalised=False)
        holds = it.chain_holds(penalised=True)
        worst = max(worst, *it.chain_slacks(penalised=True).values())
        all_hold &= holds
        penalised_needed |= holds and not plain
        mark = "ok" if plain else ("ok (penalised)" if holds else "FAILS")
        print(f"{it.iteration:>4d} {it.value:>18.10f} {it.elbo:>20.10f} "
              f"{it.value_next:>18.10f} {it.gap:>10.3e} "
              f"{it.value_next - it.value:>10.3e}  {mark}")
    print()
    last = gm.history_[-1] if gm.history_ else None
    rule = {"tol": f"tol: relative change {last.relative_change:.3e} < tol={gm.tol:g}"
            if last else "tol",
            "max_iter": f"max_iter: stopped after {gm.max_iter} iterations",
            "interrupted": "interrupted"}[gm.stop_reason_]
    print(f"Stopping rule that fired: {rule} ({gm.n_iter_} iterations)")
    verdict = "holds at every iteration" if all_hold else "FAILS at some iteration"
    print(f"ELBO chain: {verdict} (worst link at {worst:.2e} of its rounding tolerance)")
    if penalised_needed:
        print("  (some steps hold only in the penalised form: reg_covar > 0 is not a fixed "
              "objective)")
    print(f"Log-likelihood at the fitted parameters: {gm.lower_bound_ * X.shape[0]:.10f} "
          f"({gm.lower_bound_:.6f} per row)\n")
    print("Fitted parameters")
    for k in range(gm.n_components):
        mean = ", ".join(f"{m:.4f}" for m in gm.means_[k])
        print(f"  component {k}: weight {gm.weights_[k]:.4f}  mean ({mean})")
        for row in gm.covariances_[k]:
            print("      covariance [" + ", ".join(f"{c:10.4f}" for c in row) + "]")
    return 0 if all_hold else 1


def _demo_summary(args: argparse.Namespace, gm, X: np.ndarray) -> int:
    """The demo without --audit: the summary, the chain's verdict in one line, and
    the plot with --plot."""
    from emcore.datasets import OLD_FAITHFUL_COLUMNS
    from emcore.summary import summarise

    print()
    print(summarise(gm, X, parameters=True, feature_names=OLD_FAITHFUL_COLUMNS))
    holds = all(it.chain_holds(penalised=True) for it in gm.history_)
    print(f"\nELBO chain: {'holds' if holds else 'FAILS'} at every iteration "
          "(emcore demo --audit shows each link)")
    if args.plot:
        from emcore._fit_command import CommandError, _write_plot
        try:
            _write_plot(args.plot, gm, X, list(OLD_FAITHFUL_COLUMNS), None)
        except CommandError as exc:
            print(f"emcore demo: error: {exc}", file=sys.stderr)
            return 2
        print(f"Plot written to {args.plot}")
    return 0 if holds else 1


def _description(record) -> str:
    """The record's one-line description, else the first line of its factory's
    docstring (a third-party record without one still says what it is)."""
    if record.description:
        return record.description
    doc = (getattr(record.factory, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _plugins(args: argparse.Namespace) -> int:
    from emcore.registry import get_registry

    reg = get_registry()
    # one column of names, as wide as the longest (at least 12)
    width = max([12, *map(len, reg.families), *map(len, reg.posterior_rules),
                 *map(len, reg.structures)])
    for title, table in (("Families", reg.families), ("Posterior rules", reg.posterior_rules),
                         ("Latent structures", reg.structures)):
        print(f"{title}:")
        if not table:
            print("  (none)")
        for name, entry in sorted(table.items()):
            caps = ", ".join(sorted(entry.record.capabilities)) or "-"
            print(f"  {name:<{width}} from {entry.distribution} (entry point {entry.plugin!r})")
            description = _description(entry.record)
            if description:
                print(f"  {'':<{width}} {description}")
            print(f"  {'':<{width}} capabilities: {caps}")
    print("Broken plugins:")
    if not reg.broken:
        print("  (none)")
    for b in reg.broken:
        print(f"  {b.name} from {b.distribution}: {b.reason}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emcore", description="Expectation-maximization with a checked ELBO chain.")
    parser.add_argument("--version", action="version", version=f"emcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit a Gaussian mixture to the bundled Old "
                                       "Faithful data and show its summary (--audit: "
                                       "the ELBO chain)")
    demo.add_argument("--n-components", type=int, default=2)
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--tol", type=float, default=1e-8)
    demo.add_argument("--n-jobs", type=int, default=None)
    demo.add_argument("--audit", action="store_true",
                      help="show the ELBO chain link by link instead of the summary")
    demo.add_argument("--plot", default=None,
                      help="write the classification, uncertainty and EM trace plots "
                           "to this image file (needs matplotlib)")
    demo.set_defaults(func=_demo)
    plugins = sub.add_parser("plugins", help="list registered families and posterior "
                                             "rules, and broken plugins with why")
    plugins.set_defaults(func=_plugins)
    add_fit_parser(sub)
    args = parser.parse_args(argv)
    np.set_printoptions(precision=6, suppress=True)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a broken pipe surfaces here, not at interpreter exit
        return status
    except BrokenPipeError:
        # output piped into e.g. `head`, which stopped reading: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

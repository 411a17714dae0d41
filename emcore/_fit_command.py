"""``emcore fit FILE``: fit a mixture to a user's CSV/TSV/Parquet file, print its summary.

Reading: a header row is required; every column must be numeric (a column that is
not names itself in the error). The delimiter is ',' for .csv, a tab for .tsv/.tab,
else sniffed. Parquet needs pyarrow. Without ``--components`` or ``--covariance``
the Gaussian model is chosen by BIC over a grid (``select_model``: G = 1..6 and the
four scikit-learn covariance types, or the one given; ``--covariance all`` searches
mclust's fourteen parametrisations). Bad files and options are one line on
stderr and exit status 2 (:class:`CommandError`), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from emcore.gaussian_mixture import _MCLUST_MODELS

#: the default grid of numbers of components when --components is not given
DEFAULT_COMPONENTS = range(1, 7)
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
#: accepted by --covariance: the four above, mclust's fourteen names, and "all"
_COVARIANCE_CHOICES = COVARIANCE_TYPES + _MCLUST_MODELS + ("all",)


class CommandError(Exception):
    """A user error of the command: printed as one line, exit status 2."""


def read_table(path: str) -> tuple:
    """(names, X) of a delimited text or Parquet file with a header row."""
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".parquet", ".pq"):
        return _read_parquet(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot read the file as text ({exc})") from None
    if not text.strip():
        raise CommandError(f"{path}: the file is empty")
    if ext == ".csv":
        delimiter = ","
    elif ext in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",\t;| ").delimiter
        except csv.Error:
            raise CommandError(f"{path}: cannot tell the delimiter; name the file .csv or "
                               ".tsv") from None
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip())
    header = next(csv.reader([lines[first]], delimiter=delimiter))
    names = [c.strip() for c in header]
    if any(_is_number(c) for c in names):
        raise CommandError(f"{path}: the first row must be a header of column names; "
                           f"got {header!r}")
    d = len(names)
    try:  # numpy's parser; on any failure the loop below finds the cell and says it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on no data: said below
            X = np.loadtxt(io.StringIO("\n".join(lines[first + 1:])), delimiter=delimiter,
                           quotechar='"', ndmin=2, dtype=np.float64)
        if X.shape[0] > 0 and X.shape[1] == d and np.all(np.isfinite(X)):
            return names, X
    except ValueError:
        pass
    rows = [r for r in csv.reader(lines[first:], delimiter=delimiter)
            if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise CommandError(f"{path}: no data rows after the header")
    X = np.empty((len(rows) - 1, d))
    for i, row in enumerate(rows[1:]):
        if len(row) != d:
            raise CommandError(f"{path}: line {i + 2} has {len(row)} fields, the header "
                               f"has {d}")
        for j, cell in enumerate(row):
            try:
                X[i, j] = float(cell)
            except ValueError:
                raise CommandError(f"{path}: column {names[j]!r} is not numeric (line "
                                   f"{i + 2}: {cell.strip()!r})") from None
            if not np.isfinite(X[i, j]):
                raise CommandError(f"{path}: column {names[j]!r} has a missing or "
                                   f"non-finite value (line {i + 2}: {cell.strip()!r})")
    return names, X


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_parquet(path: str) -> tuple:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CommandError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
                           ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors: one line, not a traceback
        raise CommandError(f"{path}: cannot read as Parquet ({exc})") from None
    names = list(table.column_names)
    columns = []
    for name in names:
        try:
            col = np.asarray(table.column(name).to_numpy(), dtype=np.float64)
        except (TypeError, ValueError):
            raise CommandError(f"{path}: column {name!r} is not numeric") from None
        if not np.all(np.isfinite(col)):
            raise CommandError(f"{path}: column {name!r} has missing or non-finite values")
        columns.append(col)
    if not columns or columns[0].shape[0] == 0:
        raise CommandError(f"{path}: no data")
    return names, np.column_stack(columns)


@dataclass(frozen=True)
class _Chosen:
    """What the BIC search looked at and chose."""
    n_models: int
    n_components: int
    covariance_type: Optional[str]
    selection: Any = None       #: select_model's result (the Gaussian grid)


def _fit(args: argparse.Namespace, X: np.ndarray):
    from emcore.gaussian_mixture import GaussianMixture
    from emcore.mixture_model import MixtureModel
    from emcore.model_selection import select_model

    common = dict(max_iter=args.max_iter, tol=args.tol, random_state=args.seed,
                  n_jobs=args.jobs)
    if args.family != "gaussian":
        if args.covariance is not None:
            raise CommandError("--covariance is for the Gaussian family only")
        if args.components is not None:
            return MixtureModel(n_components=args.components, family=args.family,
                                **common).fit(X), None
        # G by BIC over the default grid (select_model is for the Gaussian family);
        # ties go to fewer components, as in select_model
        fits = [MixtureModel(n_components=k, family=args.family, **common).fit(X)
                for k in DEFAULT_COMPONENTS if k <= X.shape[0]]
        bics = [m.bic(X) for m in fits]
        best = int(np.argmin(bics))
        return fits[best], _Chosen(len(fits), fits[best].n_components, None)
    if args.components is not None and args.covariance not in (None, "all"):
        return GaussianMixture(n_components=args.components,
                               covariance_type=args.covariance, **common).fit(X), None
    grid = (DEFAULT_COMPONENTS if args.components is None else [args.components])
    types = (COVARIANCE_TYPES if args.covariance is None
             else "all" if args.covariance == "all" else (args.covariance,))
    selection = select_model(X, n_components=grid, covariance_types=types, **common)
    best = selection.best
    return selection.best_model, _Chosen(len(selection.table), best.n_components,
                                         best.covariance_type, selection)


def _write_labels(path: str, model, X: np.ndarray) -> None:
    labels = model.predict(X)
    proba = model.predict_proba(X)
    header = ["label", *(f"p{k}" for k in range(proba.shape[1]))]
    try:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for label, p in zip(labels, proba):
                w.writerow([int(label), *(repr(float(x)) for x in p)])
    except OSError as exc:
        raise CommandError(f"--out {path}: cannot write ({exc.strerror})") from None


def _write_plot(path: str, model, X: np.ndarray, names: list,
                chosen: Optional[_Chosen]) -> None:
    """The classification, the uncertainty, and the BIC curves (when chosen by
    BIC) or the EM trace, side by side, to an image file (no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError("--plot needs matplotlib, which is not installed: pip install "
                           "matplotlib (or emcore-learn[plot])") from None
    from emcore import plot

    if X.shape[1] < 2:
        raise CommandError("--plot needs at least two columns (it plots the first two)")
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_class, ax_unc, ax_last = fig.subplots(1, 3)
    plot.classification(model, X, ax=ax_class)
    plot.uncertainty(model, X, ax=ax_unc)
    for ax in (ax_class, ax_unc):
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    if chosen is not None and chosen.selection is not None:
        plot.criterion_curves(chosen.selection, ax=ax_last)
    else:
        plot.trace(model, ax=ax_last)
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--plot {path}: cannot write ({exc})") from None


def run(args: argparse.Namespace) -> int:
    """The ``emcore fit`` command (args from :func:`add_parser`)."""
    from emcore.summary import summarise

    if args.components is not None and args.components < 1:
        raise CommandError(f"--components must be a positive integer; got {args.components}")
    if args.max_iter < 0:
        raise CommandError(f"--max-iter must be >= 0; got {args.max_iter}")
    if not args.tol >= 0:
        raise CommandError(f"--tol must be >= 0; got {args.tol}")
    if args.jobs == 0:
        raise CommandError("--jobs must be a positive integer or -1 (all CPUs); got 0")
    names, X = read_table(args.file)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, selection = _fit(args, X)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    for w in caught:  # a fit that warns says so, one line each, without a traceback
        print(f"warning: {w.message}", file=sys.stderr)
    if selection is not None:
        what = f"{selection.n_components} components"
        if selection.covariance_type is not None:
            what += f", {selection.covariance_type} covariance"
        print(f"Chosen by BIC over {selection.n_models} models: {what}\n")
    print(summarise(model, X, parameters=args.parameters, feature_names=names))
    if args.out:
        _write_labels(args.out, model, X)
    if args.plot:
        _write_plot(args.plot, model, X, names, selection)
    return 0


def add_parser(sub) -> None:
    """Add the ``fit`` subcommand to the ``emcore`` parser's subparsers."""
    fit = sub.add_parser("fit", help="fit a mixture to a CSV/TSV/Parquet file with a "
                                     "header and print its summary")
    fit.add_argument("file", help="data file: .csv, .tsv or .parquet, header row, numeric "
                                  "columns")
    fit.add_argument("--family", default="gaussian",
                     help="registered family (default gaussian; see `emcore plugins`)")
    fit.add_argument("--components", type=int, default=None,
                     help="number of components G (default: chosen by BIC over 1..6)")
    fit.add_argument("--covariance", choices=_COVARIANCE_CHOICES, default=None,
                     help="Gaussian covariance type, scikit-learn's or mclust's name, "
                          "or 'all' (mclust's fourteen; default: chosen by BIC among "
                          "full, tied, diag, spherical)")
    fit.add_argument("--max-iter", type=int, default=100)
    fit.add_argument("--tol", type=float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--jobs", type=int, default=None)
    fit.add_argument("--parameters", action="store_true",
                     help="also print the weights, means and covariances")
    fit.add_argument("--out", default=None,
                     help="write each row's label and posteriors to this CSV file")
    fit.add_argument("--plot", default=None,
                     help="write the classification, uncertainty and BIC (or EM trace) "
                          "plots to this image file (.png, .pdf, .svg; needs matplotlib)")
    fit.set_defaults(func=_checked_run)


def _checked_run(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except CommandError as exc:
        # one line, whatever the message (an estimator's may span lines)
        print(f"emcore fit: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


"""Model selection for Gaussian mixtures: BIC, AIC, ICL and a grid of fits.

Sign convention, for every criterion here: **lower is better**, as in
scikit-learn (``BIC = -2 L + p ln n``). mclust reports the same quantities with
the opposite sign (higher is better): mclust's BIC and ICL are minus ours.

* :func:`icl` -- the integrated completed likelihood of a fitted model, in its
  hard-label form as mclust's ``icl()`` computes it.
* :func:`select_model` -- fits every (``n_components``, ``covariance_type``) cell
  of a grid, each from several starts, and returns the whole table and the best
  model by the chosen criterion, as mclust's ``mclustBIC`` does. Fits with a
  *spike* (a component whose covariance sits at the ``reg_covar`` floor) stay in
  the table but are not chosen, as mclust reports them as NA.

Formulas and parameter counts: docs/gaussian.md#model-selection.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from emcore import _validation as v
from emcore._hc import grid_cell, shared_agglomerations
from emcore._input import check_input
from emcore._logging import fit_label, progress_bar
from emcore._threads import effective_n_threads, single_threaded_blas
from emcore.exceptions import ConvergenceWarning
from emcore.gaussian_mixture import _MCLUST_MODELS, _SHAPE_KIND, GaussianMixture
from emcore.registry import get_registry

__all__ = ["icl", "select_model", "ModelSelection", "SelectionRow", "CRITERIA"]

#: The criteria :func:`select_model` can choose by; all lower-is-better.
CRITERIA = ("bic", "aic", "icl")

_NAMES = {"bic": "BIC", "aic": "AIC", "icl": "ICL"}
_LONG_NAMES = {"bic": "Bayesian information criterion",
               "aic": "Akaike information criterion",
               "icl": "integrated completed likelihood, hard labels"}
# A component is a spike when reg_covar makes at least half of its variance in some
# direction (see _spike_components).
_SPIKE_FACTOR = 2.0
# Initial values whose shape depends on n_components cannot be shared by a grid.
_PER_CELL_PARAMS = ("weights_init", "means_init", "precisions_init")
_GRID_PARAMS = ("n_components", "covariance_type", "n_init", "random_state")


#: the types whose every component needs its own nonsingular d x d scatter
#: (d + 1 rows): 'full' (VVV) and EVV (Sigma_k proportional to W_k); the other
#: mclust models pool the scatters or use their eigenvalues / diagonals
_OWN_MATRIX = ("full", "VVV", "EVV")


# --- the criteria -----------------------------------------------------------------

def _criteria(model: GaussianMixture, X: Any, sample_weight: Any) -> dict:
    """log-likelihood, n_parameters, BIC, AIC and ICL of a fitted emcore model.

    From the estimator's public methods, in two passes over X: L is the
    (weighted) sum of ``score_samples``, the sum ``bic`` and ``aic`` take, and
    BIC = -2 L + p ln n and AIC = -2 L + 2 p are their formulas on it (the same
    operations, so ``model.bic(X)`` and ``model.aic(X)`` bit for bit, tested);
    ICL is ``model.icl(X)``. Calling ``bic`` and ``aic`` too would cost two more
    passes and checks of X, each about an EM iteration's time at (1e5, 8), in
    each of mclust's 126 cells.
    """
    row_loglik = model.score_samples(X)
    if sample_weight is None:
        loglik, n = float(np.sum(row_loglik)), float(row_loglik.shape[0])
    else:
        loglik, n = float(np.dot(sample_weight, row_loglik)), float(sample_weight.sum())
    p = _n_parameters(model.n_components, model.covariance_type, X.shape[1])
    return {"log_likelihood": loglik, "n_parameters": p,
            "bic": float(-2.0 * loglik + p * np.log(n)),
            "aic": float(-2.0 * loglik + 2.0 * p),
            "icl": model.icl(X, sample_weight=sample_weight)}


def _gaussian_family(k: int, covariance_type: str, n_features: int):
    """The Gaussian family GaussianMixture fits with (from the plugin registry)."""
    return get_registry().family("gaussian").factory(k, n_features,
                                                     covariance_type=covariance_type)


def _n_parameters(k: int, covariance_type: str, n_features: int) -> int:
    """Free parameters of a cell: the family's, plus k - 1 weights."""
    return int(_gaussian_family(k, covariance_type, n_features).n_parameters() + k - 1)


def icl(model: Any, X: Any, sample_weight: Any = None) -> float:
    """Integrated completed likelihood of a fitted mixture (lower is better).

    The hard-label ICL of Biernacki, Celeux & Govaert (2000), as mclust's ``icl()``
    computes it, converted to scikit-learn's lower-is-better sign::

        ICL = BIC - 2 sum_i log q_{i, z_i},    z_i = argmax_k q_ik,

    with ``BIC = -2 L + p ln n`` and q_ik the posterior probability of component k
    for row i at the fitted parameters. Since log q_{i, z_i} <= 0, ICL >= BIC,
    with equality exactly when every row's posterior is one-hot: ICL adds to BIC a
    penalty for rows the model cannot classify confidently, so it prefers
    well-separated clusters. mclust's value (higher is better) is minus this one.
    This is not the soft, entropy variant ``BIC + 2 sum_i H(q_i)`` of McLachlan &
    Peel (2000), which is never smaller.

    Parameters
    ----------
    model : fitted emcore mixture
        ``emcore.GaussianMixture`` or ``emcore.MixtureModel`` (this calls their
        ``icl`` method, which takes log q from the log-space posterior, more
        accurate than ``log(predict_proba(X))`` for tiny q). Any other fitted
        estimator with ``bic(X)`` and ``predict_proba(X)`` (for example
        scikit-learn's ``GaussianMixture``) works too, without ``sample_weight``.
    X : array-like of shape (n_samples, n_features)
        Usually the data the model was fitted on.
    sample_weight : array-like of shape (n_samples,), optional
        Frequency weights, as in ``GaussianMixture.fit``: every sum is weighted and
        n in ``p ln n`` is the sum of the weights (a weight of 2 counts like the
        row repeated twice).

    Returns
    -------
    float
        The ICL; lower is better.
    """
    if callable(getattr(model, "icl", None)):
        return float(model.icl(X, sample_weight=sample_weight))
    if not (hasattr(model, "bic") and hasattr(model, "predict_proba")):
        raise ValueError("The 'model' parameter of icl must be a fitted mixture with "
                         "bic(X) and predict_proba(X) methods, such as "
                         f"emcore.GaussianMixture. Got {type(model).__name__} instead.")
    if sample_weight is not None:
        raise ValueError("The 'sample_weight' parameter of icl is supported only for "
                         "emcore's mixtures (with an icl method), not "
                         f"{type(model).__name__}; pass sample_weight=None.")
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    with np.errstate(divide="ignore"):
        classification = float(np.sum(np.log(np.max(proba, axis=1))))
    return float(model.bic(X)) - 2.0 * classification


# --- spikes -----------------------------------------------------------------------

def _spike_components(model: GaussianMixture) -> tuple:
    """Indices of the components of a fitted model whose covariance sits at the
    ``reg_covar`` floor: *spikes*.

    The M-step covariance is Sigma_k = S_k + r I, with S_k the component's
    (weighted, centred) scatter and r = ``reg_covar``. Along the eigenvector of
    Sigma_k's smallest eigenvalue lambda = s + r, the share of the variance that
    r makes is r / lambda = d log(lambda) / d log(r): the sensitivity of the
    component's log-density at its own rows to the regulariser. A component is a
    spike when that share is at least one half, lambda <= 2 r, i.e. the data's
    own variance s along that direction is at most r: its likelihood is then set
    more by ``reg_covar`` than by the data, and grows without bound as r -> 0
    (with r = 0 the fit raises ``DegenerateComponentError``). That is the case of
    every component holding fewer rows than its covariance needs to be
    nonsingular (one row; fewer than d + 1 for 'full'), of rows lying in a
    lower-dimensional subspace, and of a constant column ('full', 'diag', 'tied').

    lambda is the smallest eigenvalue ('full', 'tied'; from ``eigvalsh``, exact
    to a few u ||Sigma_k||, far below r unless the covariance's condition number
    approaches 1 / u), the smallest variance ('diag') or the variance
    ('spherical'). A tied covariance at the floor makes every component a spike.
    With ``reg_covar=0`` nothing is a spike here: a singular covariance fails the
    fit instead.
    """
    r = float(model.reg_covar)
    if not r > 0.0:
        return ()
    cov = np.asarray(model.covariances_, dtype=np.float64)
    k = model.weights_.shape[0]
    t = _SHAPE_KIND[model.covariance_type]
    if t == "full":
        smallest = np.linalg.eigvalsh(cov)[:, 0]
    elif t == "tied":
        smallest = np.full(k, np.linalg.eigvalsh(cov)[0])
    elif t == "diag":
        smallest = cov.min(axis=1)
    else:
        smallest = cov
    return tuple(int(j) for j in np.flatnonzero(smallest <= _SPIKE_FACTOR * r))


def _max_components(covariance_type: str, n_rows: int, n_features: int,
                    cap: bool) -> tuple:
    """(largest n_components worth fitting, why) for a covariance type on n_rows rows.

    Without ``cap``: n_rows (each component needs a row). With it: the largest k
    for which every component can hold m rows, the rows its own covariance needs
    to be nonsingular: m = d + 1 for 'full' and EVV (a d x d scatter about the
    component's own mean), 2 for 'diag' and 'spherical' (a variance about it)
    and the other mclust models (pooled scatters, or their eigenvalues).
    Beyond that, some component has n_k < m (pigeonhole: sum_k n_k = n), so its
    covariance is singular but for ``reg_covar``: a spike, never chosen. For
    'tied', m = 2 too: a component on a single row contributes nothing to the
    pooled scatter, its mean interpolates the row, and as k -> n the pooled
    covariance rests on ever fewer degrees of freedom (n - k, which must be at
    least d) and BIC rewards the interpolation (60 rows in 2-D chose k = 58).
    The cells beyond the cap are also the slowest to fit.
    """
    if not cap:
        return n_rows, "more components than rows"
    d = n_features
    own = covariance_type in _OWN_MATRIX
    shared = covariance_type in ("tied", "EEE")
    m = d + 1 if own else 2
    limit = n_rows // m if not shared else max(0, min(n_rows // m, n_rows - d))
    what = "d + 1 = " if own else ""
    return limit, (f"{covariance_type!r} needs {what}{m} rows per component"
                   f"{' and n - k >= d' if shared else ''}: {n_rows} "
                   f"rows allow at most {limit}")


# --- the grid ---------------------------------------------------------------------

@dataclass(frozen=True)
class SelectionRow:
    """One cell of a :func:`select_model` grid.

    ``bic``, ``aic`` and ``icl`` are lower-is-better (scikit-learn's sign) and, with
    ``log_likelihood``, are NaN when the fit failed (then ``error`` says why).
    """
    n_components: int
    covariance_type: str
    log_likelihood: float     #: total (weighted) log-likelihood L at the fit
    n_parameters: int         #: free parameters p
    bic: float                #: -2 L + p ln n
    aic: float                #: -2 L + 2 p
    icl: float                #: BIC - 2 sum_i log max_k q_ik
    converged: bool           #: the best start stopped on ``tol``
    stop_reason: Optional[str]  #: 'tol', 'max_iter' or 'interrupted'; None if it failed
    n_iter: int               #: M-steps of the best start (0 if it failed)
    random_state: int         #: the seed this cell was fitted with
    error: Optional[str] = None  #: why the fit failed (never chosen), else None
    #: components whose covariance sits at the reg_covar floor (spikes), 0-based
    spike_components: tuple = ()

    def value(self, criterion: str) -> float:
        """The value of ``criterion`` ('bic', 'aic' or 'icl') for this cell."""
        v.check_choice(criterion, "criterion", "SelectionRow.value", CRITERIA)
        return getattr(self, criterion)

    @property
    def mclust_bic(self) -> float:
        """BIC in mclust's sign convention, 2 L - p ln n (higher is better): -``bic``."""
        return -self.bic

    @property
    def mclust_icl(self) -> float:
        """ICL in mclust's sign convention (higher is better): -``icl``."""
        return -self.icl

    @property
    def ok(self) -> bool:
        """True if the fit succeeded."""
        return self.error is None

    @property
    def spike(self) -> bool:
        """True if a component of the fit is a spike: its covariance at the
        ``reg_covar`` floor (see :func:`select_model`). Not chosen by default."""
        return bool(self.spike_components)


@dataclass(frozen=True)
class ModelSelection:
    """What :func:`select_model` returns.

    All criteria are lower-is-better (scikit-learn's sign; mclust's are minus ours).

    Attributes
    ----------
    table : tuple of SelectionRow
        One row per fitted cell, by ascending ``n_components`` and then in the
        order of ``covariance_types``. ``pandas.DataFrame(result.table)`` makes a
        data frame of it.
    criterion : {'bic', 'aic', 'icl'}
        The criterion the best model was chosen by.
    best_params : dict
        ``{'n_components': ..., 'covariance_type': ...}`` of the best cell.
    best_model : emcore.GaussianMixture
        The fitted estimator of the best cell.
    skipped_n_components : tuple of int
        Values of ``n_components`` not fitted for any covariance type (see
        ``skipped_cells``).
    covariance_types : tuple of str
        The covariance types of the grid, in the order given (the table's columns).
    include_spikes : bool
        Whether fits with a spike component (``SelectionRow.spike``) could be
        chosen; by default they are not.
    skipped_cells : tuple of (int, str, str)
        ``(n_components, covariance_type, reason)`` of every cell not fitted
        because X has too few rows for it (see :func:`select_model`).
    """
    table: tuple
    criterion: str
    best_params: dict
    best_model: GaussianMixture
    skipped_n_components: tuple = ()
    covariance_types: tuple = field(default=(), repr=False)
    include_spikes: bool = False
    skipped_cells: tuple = field(default=(), repr=False)

    def eligible(self, row: SelectionRow) -> bool:
        """True if ``row`` can be chosen: its fit succeeded and, unless
        ``include_spikes``, has no spike component."""
        return row.ok and (self.include_spikes or not row.spike)

    @property
    def best(self) -> SelectionRow:
        """The table row of the best model."""
        k, t = self.best_params["n_components"], self.best_params["covariance_type"]
        return next(r for r in self.table if r.n_components == k and r.covariance_type == t)

    def top(self, n: int = 3, criterion: Optional[str] = None) -> list:
        """The ``n`` best eligible rows by ``criterion`` (default: the chosen one)."""
        criterion = self.criterion if criterion is None else criterion
        v.check_choice(criterion, "criterion", "ModelSelection.top", CRITERIA)
        ok = [r for r in self.table
              if self.eligible(r) and math.isfinite(r.value(criterion))]
        return sorted(ok, key=lambda r: r.value(criterion))[:n]

    def to_text(self, criterion: Optional[str] = None) -> str:
        """The table of one criterion, rows = n_components, columns = covariance types.

        Like mclust's BIC table, but lower is better: ``*`` marks the best cell,
        ``!`` a fit that stopped before its ``tol`` rule fired, ``failed`` a fit
        that failed and ``spike`` a fit with a spike component, not chosen (where
        mclust prints NA; with ``include_spikes`` the value is shown, marked
        ``s``); the reasons are listed below the table.
        """
        criterion = self.criterion if criterion is None else criterion
        v.check_choice(criterion, "criterion", "ModelSelection.to_text", CRITERIA)
        name = _NAMES[criterion]
        types = self.covariance_types or tuple(dict.fromkeys(
            r.covariance_type for r in self.table))
        ks = sorted({r.n_components for r in self.table})
        cells = {(r.n_components, r.covariance_type): r for r in self.table}
        best = self.top(1, criterion)
        best = best[0] if best else None

        def cell(k, t):
            r = cells.get((k, t))
            if r is None:
                return ""
            if not r.ok:
                return "failed "
            if r.spike and not self.include_spikes:
                return "spike "
            mark = ("*" if r is best else "s" if r.spike
                    else "!" if not r.converged else " ")
            return f"{r.value(criterion):.3f}{mark}"

        body = [[str(k)] + [cell(k, t) for t in types] for k in ks]
        header = [""] + list(types)
        widths = [max(len(row[j]) for row in body + [header]) for j in range(len(header))]
        lines = [f"{name} ({_LONG_NAMES[criterion]}), lower is better "
                 "(scikit-learn's sign; mclust's is minus this):"]
        for row in [header] + body:
            lines.append("  ".join(s.rjust(w) for s, w in zip(row, widths)).rstrip())
        if best is not None:
            lines.append(f"* best by {name}: n_components={best.n_components}, "
                         f"covariance_type={best.covariance_type!r} "
                         f"({name} = {best.value(criterion):.3f})")
        if any(r.ok and not r.converged for r in self.table):
            lines.append("! stopped before the tol rule fired (see stop_reason)")
        top = self.top(3, criterion)
        if len(top) > 1:
            lines.append(f"Top {len(top)} by {name}: " + ", ".join(
                f"{r.n_components},{r.covariance_type} ({r.value(criterion):.3f})"
                for r in top))
        failed = [r for r in self.table if not r.ok]
        if failed:
            lines.append("Failed fits (never chosen):")
            lines.extend(f"  n_components={r.n_components}, "
                         f"covariance_type={r.covariance_type!r}: {r.error}"
                         for r in failed)
        spikes = [r for r in self.table if r.ok and r.spike]
        if spikes:
            lines.append(
                "Spike fits (a component's covariance at the reg_covar floor: "
                + ("included by include_spikes=True" if self.include_spikes else
                   "not chosen; include_spikes=True allows them") + "):")
            lines.extend(f"  n_components={r.n_components}, "
                         f"covariance_type={r.covariance_type!r}: component(s) "
                         + ", ".join(map(str, r.spike_components)) for r in spikes)
        if self.skipped_cells:
            lines.append("Not fitted (too few rows for the components' covariances):")
            for t in self.covariance_types or tuple(dict.fromkeys(
                    c[1] for c in self.skipped_cells)):
                cells = [c for c in self.skipped_cells if c[1] == t]
                if cells:
                    lines.append(f"  covariance_type={t!r}: n_components="
                                 + ", ".join(str(c[0]) for c in cells)
                                 + f" ({cells[0][2]})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# --- argument checks --------------------------------------------------------------

def _check_n_components(value: Any) -> list:
    what = ("The 'n_components' parameter of select_model must be a non-empty "
            "iterable of positive ints (or one positive int)")
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
            value, (bool, np.bool_)):
        values = [value]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{what}. Got {value!r} instead.")
    else:
        values = list(value)
    if not values:
        raise ValueError(f"{what}. Got an empty {type(value).__name__} instead.")
    for k in values:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"{what}. Got {k!r} in {value!r} instead.")
    return sorted({int(k) for k in values})


def _check_covariance_types(value: Any, X: np.ndarray) -> tuple:
    what = ("The 'covariance_types' parameter of select_model must be a non-empty "
            "iterable of strings (or one string)")
    if isinstance(value, str) and value == "all":
        values = list(_MCLUST_MODELS)         # mclust's fourteen, in mclust's order
    elif isinstance(value, str):
        values = [value]
    elif isinstance(value, bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{what}. Got {value!r} instead.")
    else:
        values = list(value)
    if not values:
        raise ValueError(f"{what}. Got an empty {type(value).__name__} instead.")
    for t in values:
        if not isinstance(t, str):
            raise ValueError(f"{what}. Got {t!r} in {value!r} instead.")
    types = tuple(dict.fromkeys(values))
    # Ask the family GaussianMixture fits with, so the grid follows its types.
    for t in types:
        try:
            _gaussian_family(1, t, X.shape[1])
        except ValueError as exc:
            raise ValueError(f"The 'covariance_types' parameter of select_model contains "
                             f"{t!r}, which GaussianMixture does not support: {exc}") \
                from None
    return types


def _check_estimator_params(params: dict) -> None:
    valid = sorted(GaussianMixture().get_params())
    for name in params:
        if name in _PER_CELL_PARAMS:
            raise ValueError(f"select_model cannot pass {name!r} to GaussianMixture: its "
                             "shape depends on n_components, which the grid varies.")
        if name not in valid or name in _GRID_PARAMS:
            others = [p for p in valid if p not in _GRID_PARAMS + _PER_CELL_PARAMS]
            raise ValueError(f"Invalid estimator parameter {name!r} for select_model. "
                             f"Valid ones are: {', '.join(others)}.")


def _root_entropy(random_state: Any) -> int:
    """One integer from which every cell's seed is derived (the same for the same
    int random_state)."""
    return int(v.check_random_state(random_state, "select_model").integers(0, 2 ** 63))


def _cell_seed(entropy: int, n_components: int) -> int:
    """The seed of every cell with this n_components: a function of (entropy, k) only,
    so a cell's fit does not depend on the rest of the grid."""
    seq = np.random.SeedSequence(entropy, spawn_key=(int(n_components),))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def _hc_subset_seed(entropy: int) -> int:
    """The seed of the grid's hc subsets (``init_params='hc'`` above 2000 rows): from
    (entropy, 0), a spawn key no cell has (n_components >= 1)."""
    seq = np.random.SeedSequence(entropy, spawn_key=(0,))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


# --- select_model -----------------------------------------------------------------

def select_model(X: Any, *, n_components: Union[int, Iterable[int]] = range(1, 10),
                 covariance_types: Union[str, Iterable[str]] = ("full", "tied", "diag",
                                                                "spherical"),
                 criterion: str = "bic", n_init: int = 3, random_state: Any = None,
                 sample_weight: Any = None, include_spikes: bool = False,
                 progress: bool = False, **estimator_params: Any) -> ModelSelection:
    """Fit a grid of Gaussian mixtures and choose one by BIC, AIC or ICL.

    Like mclust's ``mclustBIC``: every (``n_components``, ``covariance_type``) cell
    is fitted by ``emcore.GaussianMixture`` from ``n_init`` starts, and its
    log-likelihood, BIC, AIC and ICL on X are tabulated; the best cell by
    ``criterion`` is returned with its fitted model.

    Sign convention: **lower is better** for all three criteria (scikit-learn's):
    ``BIC = -2 L + p ln n``, ``AIC = -2 L + 2 p``, ``ICL = BIC - 2 sum_i log max_k
    q_ik`` (the hard-label ICL as mclust computes it, see :func:`icl`). mclust's
    BIC and ICL are minus these.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    n_components : int or iterable of int, default range(1, 10)
        Positive numbers of components; duplicates are dropped and the table is
        in ascending order. A cell is not fitted (it is listed in
        ``skipped_cells`` with the reason, and in ``skipped_n_components`` if
        skipped for every type) when X has too few rows for it: with n the rows
        of X (with positive weight, if weighted) and d its features, cells with
        n_components above n // (d + 1) for 'full' and n // 2 for the other
        types (and above n - d for 'tied'). Beyond these, some component has
        fewer rows than its own covariance needs to be nonsingular, so the fit
        is a spike (see ``include_spikes``), which would not be chosen, or
        ('tied') a component interpolates a row; such cells are also the
        slowest to fit (``range(1, 60)`` on 60 rows: 236 cells without the cap,
        110 with it in 2-D). With ``include_spikes=True`` or a ``prior``
        (which keeps small components' covariances regular), only cells with
        more components than rows are skipped.
    covariance_types : str or iterable of str, default all four
        Covariance types to try ('full', 'tied', 'diag', 'spherical', like mclust's
        default of trying every model); an unsupported one raises a ValueError
        before anything is fitted. ``"all"``: mclust's fourteen models, 'EII' to
        'VVV' in mclust's order (docs/gaussian.md#mclust-models); rows give
        mclust's sign too (``row.mclust_bic``, ``row.mclust_icl``).
    criterion : {'bic', 'aic', 'icl'}, default 'bic'
        The criterion the best model is chosen by (lower is better). Ties go to
        the first cell in table order: fewer components, then the earlier type.
    n_init : int, default 3
        Starts per cell; each cell keeps its start with the highest likelihood.
    random_state : None, int, numpy RandomState or Generator
        Every cell with the same ``n_components`` is fitted with the same integer
        seed, derived from ``random_state`` and ``n_components`` alone with numpy's
        ``SeedSequence`` (so all covariance types start from the same k-means++
        partitions, and a cell's fit does not depend on the rest of the grid). An
        int gives a reproducible table; each row records its seed, so
        ``GaussianMixture(n_components=k, covariance_type=t, n_init=n_init,
        random_state=row.random_state, **estimator_params).fit(X)`` refits it
        (except from ``init_params='hc'`` above 2000 rows, whose subset is the
        grid's: ``select_model`` with the same ``random_state`` and that one
        cell refits it).
    sample_weight : array-like of shape (n_samples,), optional
        Frequency weights, passed to ``fit``; the criteria use weighted sums and
        n = sum of the weights.
    include_spikes : bool, default False
        Whether a fit with a *spike* can be chosen. A spike is a component whose
        covariance sits at the ``reg_covar`` floor: along some direction
        ``reg_covar`` makes at least half of its variance (smallest eigenvalue
        <= 2 ``reg_covar``), so the data's own variance there is at most
        ``reg_covar`` -- typically a component on one row, or on fewer rows than
        its covariance needs. Its likelihood is set by ``reg_covar`` rather than
        by the data and grows without bound as ``reg_covar`` -> 0, so on small
        data BIC favours such degenerate fits. By default they stay in the table
        (``row.spike``, ``row.spike_components``, shown as ``spike``, where
        mclust prints NA) and are never chosen.
    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the grid's
        cells, its text naming the cell, start and iteration.
    **estimator_params
        Other ``GaussianMixture`` parameters, the same for every cell (``tol``,
        ``reg_covar``, ``max_iter``, ``init_params``, ``n_jobs``, ...). The initial
        values ``weights_init``, ``means_init`` and ``precisions_init`` are not
        accepted, since their shape depends on ``n_components``.

    Returns
    -------
    ModelSelection
        ``table`` (one :class:`SelectionRow` per fitted cell), ``criterion``,
        ``best_params``, ``best_model``; ``print(result)`` shows the table of the
        chosen criterion with the best cell marked.

    Raises
    ------
    ValueError
        For a bad argument (the message names it), before anything is fitted; or
        if no cell's fit can be chosen (every one failed or has a spike; the
        message lists why).

    Notes
    -----
    A fit with a spike component is kept in the table with its criteria and is
    not chosen unless ``include_spikes`` (see above). A cell whose fit raises
    ``emcore.DegenerateComponentError`` or another ValueError about the data (or
    whose log-likelihood is not finite) is kept in the table with NaN criteria
    and its ``error``, and is never chosen. Fits
    stopping at ``max_iter`` raise no ConvergenceWarning here: their rows say so
    (``converged``, ``stop_reason``). Ctrl-C during a fit stops the whole grid
    (KeyboardInterrupt; with cells fitted side by side, once the running ones end).

    With ``n_jobs`` of two or more threads (the default, None, is all CPUs) the
    cells are fitted side by side, each fit on its share of the threads; the
    table is the same for any ``n_jobs``. A ``callback``, ``verbose`` output or
    ``progress`` keeps them on the calling thread, one after the other. With
    ``init_params='hc'`` the grid's agglomeration is computed once and cut for
    every cell: on all rows up to 2000, above that on one random subset of 2000
    rows for the whole grid (as mclust's ``Mclust()``; with ``n_init`` starts,
    one subset per start), drawn from ``random_state`` alone, so a part of the
    grid starts from the same subset
    (docs/guide/using.md#choosing-the-number-of-components).

    Examples
    --------
    >>> from emcore.model_selection import select_model
    >>> result = select_model(X, n_components=range(1, 7), random_state=0)  # doctest: +SKIP
    >>> print(result)                                    # doctest: +SKIP
    >>> result.best_params, result.best_model.means_     # doctest: +SKIP
    """
    owner = "select_model"
    X = check_input(X, owner=owner)
    criterion = v.check_choice(criterion, "criterion", owner, CRITERIA)
    ks = _check_n_components(n_components)
    types = _check_covariance_types(covariance_types, X)
    n_init = v.check_int(n_init, "n_init", owner, low=1)
    if not isinstance(include_spikes, (bool, np.bool_)):
        raise ValueError("The 'include_spikes' parameter of select_model must be a bool. "
                         f"Got {include_spikes!r} instead.")
    _check_estimator_params(estimator_params)
    w = v.check_sample_weight(sample_weight, X.shape[0], owner=owner)
    n_rows = X.shape[0] if w is None else int(np.count_nonzero(w))
    cap = not include_spikes and estimator_params.get("prior") is None
    limits = {t: _max_components(t, n_rows, X.shape[1], cap) for t in types}
    skipped_cells = tuple((k, t, limits[t][1]) for k in ks for t in types
                          if k > limits[t][0])
    fitted_ks = [k for k in ks if any(k <= limits[t][0] for t in types)]
    skipped = tuple(k for k in ks if k not in fitted_ks)
    if not fitted_ks:
        rows_of_x = f"{n_rows} rows{' with positive weight' if w is not None else ''}"
        raise ValueError(f"The 'n_components' parameter of select_model must contain a "
                         f"value X's {rows_of_x} can fit: at most "
                         + ", ".join(f"{limits[t][0]} for {t!r}" for t in types)
                         + f" ({'; '.join(limits[t][1] for t in types)}). Got "
                         f"{n_components!r} instead.")
    # The estimator's own checks of the shared parameters (tol, reg_covar, ...),
    # before anything is fitted: the one private method used here, as scikit-learn's
    # convention leaves parameter checks to fit and has no public check.
    GaussianMixture(n_components=fitted_ks[0], covariance_type=types[0], n_init=n_init,
                    **estimator_params)._check_parameters(X)
    entropy = _root_entropy(random_state)

    n_cells = sum(k <= limits[t][0] for k in fitted_ks for t in types)
    # a progress bar counts cells as they finish in order: fit them one at a time
    workers = 1 if progress else _cell_workers(n_cells, estimator_params)
    # init_params='hc' above 2000 rows: one random subset for the whole grid, as
    # mclust's Mclust() (its seed from random_state alone; docs/gaussian.md#hierarchical-start)
    subset_seed = (_hc_subset_seed(entropy) if estimator_params.get("init_params") == "hc"
                   else None)
    with progress_bar(progress, owner, cells=n_cells), shared_agglomerations(subset_seed):
        return _fit_grid(X, w, fitted_ks, types, limits, n_init, entropy, criterion,
                         estimator_params, include_spikes, skipped, skipped_cells,
                         workers)


def _fit_cell(X, w, k, t, seed, n_init, estimator_params) -> tuple:
    """(row, fitted model or None) of one cell of the grid."""
    model = GaussianMixture(n_components=k, covariance_type=t, n_init=n_init,
                            random_state=seed, **estimator_params)
    try:
        with fit_label(f"n_components={k} covariance_type={t}"), grid_cell():
            model.fit(X, sample_weight=w)
        values = _criteria(model, X, w)
        if not math.isfinite(values["log_likelihood"]):
            raise FloatingPointError(
                f"the log-likelihood at the fit is {values['log_likelihood']}")
    except (ValueError, FloatingPointError) as exc:
        return SelectionRow(
            n_components=k, covariance_type=t, log_likelihood=math.nan,
            n_parameters=_n_parameters(k, t, X.shape[1]),
            bic=math.nan, aic=math.nan, icl=math.nan, converged=False,
            stop_reason=None, n_iter=0, random_state=seed,
            error=f"{type(exc).__name__}: {exc}"), None
    return SelectionRow(n_components=k, covariance_type=t,
                        converged=bool(model.converged_),
                        stop_reason=model.stop_reason_, n_iter=int(model.n_iter_),
                        random_state=seed, spike_components=_spike_components(model),
                        **values), model


def _cell_workers(n_cells: int, estimator_params: dict) -> int:
    """Threads fitting cells at once: the fit's threads (``n_jobs``), unless a cell
    reports as it runs (a callback, verbose output) or there is one cell. Cells
    are independent and each fit's numbers do not depend on its thread count, so
    the table is the same either way; fitting cells side by side, each on its
    share of the threads, keeps every thread busy through the M-steps and the
    small passes of a grid's cells, where one fit's threads mostly wait for
    each other (docs/guide/using.md#choosing-the-number-of-components)."""
    if (n_cells < 2 or estimator_params.get("callback") is not None
            or estimator_params.get("verbose", 0)):
        return 1
    return max(1, min(n_cells, effective_n_threads(estimator_params.get("n_jobs"))))


def _submission_order(cells: list) -> list:
    """The order the threads take the cells (k, type, seed) in: the largest
    n_components first (the longest fits first, so the threads end together
    rather than one finishing the last, slowest cells alone), except that the
    cells with one component (short, and needing no hc agglomeration) come right
    after the first cell, keeping the other threads busy while its start
    agglomerates. The table's order and numbers do not depend on it."""
    by_size = sorted(range(len(cells)), key=lambda i: -cells[i][0])
    ones = [i for i in by_size[1:] if cells[i][0] == 1]
    return by_size[:1] + ones + [i for i in by_size[1:] if cells[i][0] != 1]


def _fit_grid(X, w, fitted_ks, types, limits, n_init, entropy, criterion,
              estimator_params, include_spikes, skipped, skipped_cells,
              workers: int = 1) -> ModelSelection:
    """select_model's loop over the cells (inside its progress bar)."""
    cells = [(k, t, _cell_seed(entropy, k)) for k in fitted_ks for t in types
             if k <= limits[t][0]]
    if workers > 1:
        # each cell on its share of the threads (the same numbers for any share)
        params = {**estimator_params,
                  "n_jobs": max(1, effective_n_threads(estimator_params.get("n_jobs"))
                                // workers)}
        # one BLAS limit around the threads (theirs nest inside it and restore 1),
        # and one warning filter (the filters are global, not per thread)
        with single_threaded_blas(), warnings.catch_warnings(), \
                ThreadPoolExecutor(max_workers=workers) as pool:
            warnings.simplefilter("ignore", ConvergenceWarning)
            futures = {i: pool.submit(contextvars.copy_context().run, _fit_cell, X, w,
                                      *cells[i], n_init, params)
                       for i in _submission_order(cells)}
            try:
                results = [futures[i].result() for i in range(len(cells))]
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
    else:
        results = []
        for k, t, seed in cells:
            # BLAS on one thread for the starts and criteria too, as for each fit's
            # loop: their d x d factorisations only wait for a second BLAS thread
            with single_threaded_blas(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                results.append(_fit_cell(X, w, k, t, seed, n_init, estimator_params))
            if results[-1][0].stop_reason == "interrupted":
                break

    rows = []
    best_row: Optional[SelectionRow] = None
    best_model: Optional[GaussianMixture] = None
    for row, model in results:
        rows.append(row)
        if model is None:
            continue
        if model.stop_reason_ == "interrupted":
            raise KeyboardInterrupt(f"select_model interrupted while fitting "
                                    f"n_components={row.n_components}, "
                                    f"covariance_type={row.covariance_type!r}")
        value = row.value(criterion)
        if (include_spikes or not row.spike) and math.isfinite(value) and (
                best_row is None or value < best_row.value(criterion)):
            best_row, best_model = row, model

    if best_row is None:
        def reason(r):
            if r.error:
                return r.error
            if r.spike:
                return (f"spike component(s) {', '.join(map(str, r.spike_components))} "
                        "(covariance at the reg_covar floor)")
            return f"non-finite {criterion}"
        reasons = "; ".join(f"n_components={r.n_components}, covariance_type="
                            f"{r.covariance_type!r}: {reason(r)}" for r in rows)
        hint = (" (include_spikes=True allows the spike fits; or fewer components)"
                if any(r.ok and r.spike for r in rows) else "")
        raise ValueError(f"select_model could not fit any cell of the grid without a "
                         f"failure or a spike, so there is no model to choose{hint}: "
                         f"{reasons}")
    return ModelSelection(
        table=tuple(rows), criterion=criterion,
        best_params={"n_components": best_row.n_components,
                     "covariance_type": best_row.covariance_type},
        best_model=best_model, skipped_n_components=skipped, covariance_types=types,
        include_spikes=bool(include_spikes), skipped_cells=skipped_cells)

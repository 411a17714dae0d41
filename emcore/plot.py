"""Plots of fitted mixtures, as mclust's ``plot()``: matplotlib, an optional extra.

* :func:`criterion_curves` -- BIC (or AIC, ICL) over G, one curve per covariance
  type, from :func:`emcore.select_model` (mclust's ``plot(..., what="BIC")``).
* :func:`classification` -- the rows in two features coloured by their component,
  with each Gaussian component's ellipse.
* :func:`uncertainty` -- the rows in two features, sized by 1 - max posterior.
* :func:`density` -- contours of the fitted density of two features (the
  Gaussian mixture's marginal), over the rows.
* :func:`trace` -- log-likelihood and ELBO per EM iteration (``history_``).

Each draws on ``ax`` (a matplotlib Axes) when given, else on a new figure's, and
returns the Axes. matplotlib is imported only when a plot is drawn; without it
the call raises ImportError saying how to install it. Criteria are
lower-is-better (scikit-learn's sign; mclust plots minus BIC).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["criterion_curves", "classification", "uncertainty", "density", "trace"]

# the ellipse holds this much of a Gaussian's mass in the plotted plane:
# sqrt of the chi-square(2) quantile at 0.95, -2 ln(0.05)
_ELLIPSE_RADIUS = float(np.sqrt(-2.0 * np.log(0.05)))


def _axes(ax: Any):
    """``ax``, else a new figure's Axes; the one place matplotlib is imported."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("emcore.plot needs matplotlib, which is not installed: "
                          "pip install matplotlib (or emcore-learn[plot]).") from None
    return ax if ax is not None else plt.subplots()[1]


def _names(model: Any, d: int) -> list:
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else [f"x{j}" for j in range(d)]


def _check_features(features: Sequence[int], d: int, owner: str) -> tuple:
    try:
        i, j = (int(f) for f in features)
    except (TypeError, ValueError):
        i = j = -1
    if not (0 <= i < d and 0 <= j < d and i != j):
        raise ValueError(f"The 'features' parameter of {owner} must be two different "
                         f"column indices in [0, {d}). Got {features!r} instead.")
    return i, j


def criterion_curves(selection: Any, criterion: Optional[str] = None,
                     ax: Any = None):
    """Each covariance type's criterion over n_components (lower is better).

    ``selection`` is the result of :func:`emcore.select_model`; ``criterion`` one
    of 'bic', 'aic', 'icl' (default: the one it chose by). Failed fits and
    spikes are gaps; the chosen cell is circled.
    """
    from emcore.model_selection import CRITERIA

    criterion = selection.criterion if criterion is None else criterion
    if criterion not in CRITERIA:
        raise ValueError("The 'criterion' parameter of criterion_curves must be one of "
                         f"{CRITERIA}. Got {criterion!r} instead.")
    ax = _axes(ax)
    types = list(dict.fromkeys(r.covariance_type for r in selection.table))
    for t in types:
        rows = [r for r in selection.table if r.covariance_type == t]
        ax.plot([r.n_components for r in rows],
                [r.value(criterion) if selection.eligible(r) else np.nan for r in rows],
                marker="o", label=t)
    best = selection.best
    if criterion == selection.criterion:
        ax.plot([best.n_components], [best.value(criterion)], marker="o", ms=14,
                mfc="none", color="black", linestyle="none", label="chosen")
    ax.set_xlabel("number of components")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{criterion.upper()} (lower is better)")
    ax.legend(title="covariance")
    return ax


def classification(model: Any, X: Any, features: Sequence[int] = (0, 1), ax: Any = None):
    """The rows of X in two features, coloured by ``model.predict(X)``, with each
    component's mean and 95% ellipse (Gaussian components: the covariance's
    2 x 2 block of the two features)."""
    family, weights, params = model._fitted_model("classification")
    labels = model.predict(X)
    X = np.asarray(X, dtype=np.float64)
    i, j = _check_features(features, X.shape[1], "classification")
    ax = _axes(ax)
    from matplotlib.patches import Ellipse
    colours = [f"C{k % 10}" for k in range(weights.shape[0])]
    ax.scatter(X[:, i], X[:, j], c=[colours[k] for k in labels], s=12)
    if "means" in params and "covariances" in params:
        for k, colour in enumerate(colours):
            mean = params["means"][k][[i, j]]
            cov = params["covariances"][k][np.ix_([i, j], [i, j])]
            values, vectors = np.linalg.eigh(cov)
            angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
            width, height = 2.0 * _ELLIPSE_RADIUS * np.sqrt(values[::-1])
            ax.add_patch(Ellipse(tuple(mean), width, height, angle=angle, fill=False,
                                 edgecolor=colour, linewidth=1.5))
            ax.plot(*mean, marker="x", color="black")
    names = _names(model, X.shape[1])
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.set_title("classification")
    return ax


def uncertainty(model: Any, X: Any, features: Sequence[int] = (0, 1), ax: Any = None):
    """The rows of X in two features, each sized by its uncertainty 1 - max_k q_ik
    (as mclust's ``what="uncertainty"``): large points are the doubtful ones."""
    proba = model.predict_proba(X)
    u = 1.0 - proba.max(axis=1)
    X = np.asarray(X, dtype=np.float64)
    i, j = _check_features(features, X.shape[1], "uncertainty")
    ax = _axes(ax)
    # the largest possible uncertainty, 1 - 1/G, gets the largest point
    top = 1.0 - 1.0 / proba.shape[1] if proba.shape[1] > 1 else 1.0
    ax.scatter(X[:, i], X[:, j], s=4.0 + 100.0 * u / top, c=u, cmap="viridis")
    names = _names(model, X.shape[1])
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.set_title("uncertainty (1 - max posterior)")
    return ax


def _log_density_mesh(model: Any, X: np.ndarray, i: int, j: int, grid: int) -> tuple:
    """(U, W, log density) on a grid x grid mesh over the rows' range (+5%) in
    features i and j: the Gaussian marginal, or the model's density when d = 2."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    family, weights, params = model._fitted_model("density")
    gaussian = "means" in params and "covariances" in params
    if not gaussian and X.shape[1] != 2:
        raise ValueError("The 'X' parameter of density must have two columns for a "
                         f"non-Gaussian family. Got {X.shape[1]} instead.")
    lo, hi = X[:, [i, j]].min(axis=0), X[:, [i, j]].max(axis=0)
    pad = 0.05 * (hi - lo)
    U, W = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid),
                       np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid))
    points = np.column_stack([U.ravel(), W.ravel()])
    if gaussian:
        pair = [i, j]
        log_density = logsumexp(
            [np.log(weights[k]) + multivariate_normal(
                params["means"][k][pair],
                params["covariances"][k][np.ix_(pair, pair)]).logpdf(points)
             for k in range(weights.shape[0])], axis=0)
    else:
        log_density = model.score_samples(points if (i, j) == (0, 1) else points[:, ::-1])
    return U, W, log_density.reshape(U.shape)


def density(model: Any, X: Any, features: Sequence[int] = (0, 1), ax: Any = None,
            levels: int = 10, grid: int = 100):
    """Contours of the log density of the features pair over a ``grid`` x ``grid``
    mesh spanning the rows of X (drawn as points). For a Gaussian mixture the
    density is the exact marginal of the two features (a mixture of the means'
    and covariances' blocks, so any d works); for another family X must have
    two columns (the model's own density)."""
    X = np.asarray(X, dtype=np.float64)
    i, j = _check_features(features, X.shape[1], "density")
    U, W, log_density = _log_density_mesh(model, X, i, j, grid)
    ax = _axes(ax)
    ax.scatter(X[:, i], X[:, j], s=6, color="grey")
    ax.contour(U, W, log_density, levels=levels)
    names = _names(model, X.shape[1])
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.set_title("log density")
    return ax


def trace(model: Any, ax: Any = None):
    """Log-likelihood at theta_t and ELBO(q_t, theta_t+1) per iteration of the fit
    (``model.history_``), and the final log-likelihood: EM's chain, link by link."""
    history = getattr(model, "history_", None)
    if history is None:
        raise ValueError("The 'model' parameter of trace must be a fitted emcore "
                         "estimator with history_. Got an unfitted "
                         f"{type(model).__name__} instead.")
    ax = _axes(ax)
    t = np.arange(len(history))
    ax.plot(np.append(t, len(history)),
            [it.value for it in history] + ([history[-1].value_next] if history else []),
            marker="o", label="log-likelihood")
    ax.plot(t + 1, [it.elbo for it in history], marker=".", linestyle="--",
            label="ELBO(q_t, theta_t+1)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.legend()
    return ax

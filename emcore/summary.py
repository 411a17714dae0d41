"""What a fitted mixture is, in ten lines: :class:`Summary`, from ``model.summary(X)``.

mclust's ``summary()`` for emcore's mixtures: the model (family and covariance
type), n, d, G, the log-likelihood, the degrees of freedom, BIC, AIC and ICL, the
clustering table, and how the fit stopped; with ``parameters=True`` also the
weights and the family's parameters, labelled by feature name. The fields are
data (a frozen dataclass); ``str(summary)`` is the printed report.

The fit keeps no data, so the criteria and the clustering table are computed on
the X given to ``summary`` (usually the training data), with the same sums as
``model.bic(X)``, ``model.aic(X)``, ``model.icl(X)`` and ``model.predict(X)``:
the fields equal those bit for bit. Criteria are lower-is-better (scikit-learn's
sign; mclust prints minus BIC and ICL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from emcore.registry import get_registry

__all__ = ["Summary"]

#: scikit-learn's covariance types and the mclust models they are
MCLUST_NAMES = {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}
#: mclust's own names, which the Gaussian family takes as covariance types too
_MCLUST_MODELS = frozenset({"EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE",
                            "VVE", "EEV", "VEV", "EVV", "VVV"})

# parameters derived from others (not shown with parameters=True)
_DERIVED = ("precisions_cholesky", "precisions")


@dataclass(frozen=True)
class Summary:
    """A fitted mixture's summary; ``str(summary)`` is the printed report.

    Criteria are lower-is-better (``BIC = -2 L + p ln n``); mclust's BIC and ICL
    are minus these.
    """

    estimator: str                 #: the estimator's class name
    family: str                    #: the component family's registry name
    covariance_type: Optional[str]  #: the Gaussian covariance type, else None
    n_samples: int                 #: rows of the X summarised
    n_features: int
    n_components: int
    log_likelihood: float          #: sum_i log p(x_i) at the fitted parameters
    n_parameters: int              #: free parameters p (degrees of freedom)
    bic: float
    aic: float
    icl: float
    counts: tuple                  #: rows of X per component, from predict(X)
    stop_reason: Optional[str]     #: 'tol', 'max_iter', ... (None: not fitted by EM)
    n_iter: int
    converged: bool
    feature_names: tuple           #: feature_names_in_, else ('x0', 'x1', ...)
    #: with parameters=True: {'weights': (G,), family parameter name: array with
    #: the components first}, e.g. 'means' (G, d) and 'covariances' (G, d, d)
    parameters: Optional[dict] = field(default=None, repr=False, compare=False)

    @property
    def model_name(self) -> str:
        """e.g. 'gaussian, full covariance (mclust VVV)'."""
        if self.covariance_type is None:
            return self.family
        if self.covariance_type in _MCLUST_MODELS:       # already mclust's name
            return f"{self.family}, mclust {self.covariance_type} covariance"
        mclust = MCLUST_NAMES.get(self.covariance_type)
        return (f"{self.family}, {self.covariance_type} covariance"
                + (f" (mclust {mclust})" if mclust else ""))

    def __str__(self) -> str:
        stop = ("not fitted by EM" if self.stop_reason is None else
                f"stopped by {self.stop_reason} after {self.n_iter} iterations, "
                + ("converged" if self.converged else "not converged"))
        lines = [f"{self.estimator}: {self.model_name}, {self.n_components} "
                 f"component{'s' if self.n_components != 1 else ''}",
                 f"EM: {stop}", ""]
        header = ("log-likelihood", "n", "d", "df", "BIC", "AIC", "ICL")
        values = (f"{self.log_likelihood:.3f}", str(self.n_samples), str(self.n_features),
                  str(self.n_parameters), f"{self.bic:.3f}", f"{self.aic:.3f}",
                  f"{self.icl:.3f}")
        lines += _table(header, [values])
        lines += ["", "Clustering table:"]
        lines += _table([str(k) for k in range(self.n_components)],
                        [[str(c) for c in self.counts]])
        if self.parameters is not None:
            lines += _parameter_lines(self.parameters, self.feature_names)
        return "\n".join(lines)


def _table(header, rows, labelled: bool = False) -> list:
    """Right-aligned columns, two spaces apart (the first left-aligned if
    ``labelled``: row labels)."""
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    return ["  ".join(f"{c:<{w}}" if labelled and j == 0 else f"{c:>{w}}"
                      for j, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in [header, *rows]]


def _number(x: float) -> str:
    return f"{x:.5g}"


def _parameter_lines(parameters: dict, names: tuple) -> list:
    lines = ["", "Mixing probabilities:"]
    weights = parameters["weights"]
    lines += _table([str(k) for k in range(weights.shape[0])],
                    [[f"{w:.4f}" for w in weights]])
    for key, value in parameters.items():
        if key == "weights":
            continue
        value = np.asarray(value)
        lines += ["", f"{key.capitalize()}:"]
        if value.ndim == 2 and value.shape[1] == len(names):
            # (G, d): one row per feature, one column per component
            rows = [[name, *(_number(x) for x in value[:, j])]
                    for j, name in enumerate(names)]
            lines += _table(["", *(str(k) for k in range(value.shape[0]))], rows, True)
        elif value.ndim == 3 and value.shape[1:] == (len(names), len(names)):
            # (G, d, d): one matrix per component
            for k in range(value.shape[0]):
                lines.append(f"[component {k}]")
                rows = [[name, *(_number(x) for x in value[k, j])]
                        for j, name in enumerate(names)]
                lines += _table(["", *names], rows, True)
        else:
            for k in range(value.shape[0]):
                lines.append(f"[component {k}] "
                             + np.array2string(value[k], precision=4, separator=", "))
    return lines


def _registry_name(family: Any) -> str:
    """The registry name the family was built from, else its class name."""
    for name, entry in get_registry().families.items():
        factory = entry.record.factory
        if isinstance(factory, type) and type(family) is factory:
            return name
    return type(family).__name__


def summarise(model: Any, X: Any, parameters: bool = False,
              feature_names: Optional[Any] = None) -> Summary:
    """The :class:`Summary` of a fitted emcore mixture on X (``model.summary(X)``).

    ``feature_names`` overrides the labels (``feature_names_in_`` else x0, x1, ...):
    for callers that read the data's names themselves (``emcore fit``).
    """
    owner = f"{type(model).__name__}.summary"
    if X is None:
        raise ValueError(f"The 'X' parameter of {owner} must be the data to summarise "
                         "(usually the training data: the fit keeps no data, and n, the "
                         "criteria and the clustering table are computed on X). Got None "
                         "instead.")
    if not isinstance(parameters, (bool, np.bool_)):
        raise ValueError(f"The 'parameters' parameter of {owner} must be a bool. Got "
                         f"{parameters!r} instead.")
    family, weights, params = model._fitted_model(owner)
    # one pass: log p(x_i) and log q_ik, the sums of bic(X), aic(X) and icl(X)
    row_loglik, log_resp = model._evaluate(X, "summary", log_resp=True)
    n = row_loglik.shape[0]
    loglik = float(np.sum(row_loglik))
    bic, aic = (float(c) for c in model._information_criteria(loglik, float(n)))
    icl = bic - 2.0 * float(np.sum(np.max(log_resp, axis=1)))
    k = weights.shape[0]
    counts = tuple(int(c) for c in np.bincount(model.predict(X), minlength=k))
    d = int(family.n_features)
    if feature_names is None:
        feature_names = getattr(model, "feature_names_in_", None)
    names = (tuple(str(f) for f in feature_names) if feature_names is not None
             else tuple(f"x{j}" for j in range(d)))
    table = None
    if parameters:
        table = {"weights": np.array(weights, dtype=np.float64)}
        table.update({key: np.array(value) for key, value in params.items()
                      if key not in _DERIVED})
    family_name = getattr(model, "family", None)
    if not isinstance(family_name, str):
        family_name = _registry_name(family)
    stop_reason = getattr(model, "stop_reason_", None)
    return Summary(estimator=type(model).__name__, family=family_name,
                   covariance_type=getattr(family, "covariance_type", None),
                   n_samples=n, n_features=d, n_components=k, log_likelihood=loglik,
                   n_parameters=int(model._n_parameters()), bic=bic, aic=aic, icl=icl,
                   counts=counts, stop_reason=stop_reason,
                   n_iter=int(getattr(model, "n_iter_", 0)),
                   converged=bool(getattr(model, "converged_", False)),
                   feature_names=names, parameters=table)

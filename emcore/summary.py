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

from emcore._feature_names import feature_names_of
from emcore.registry import get_registry

__all__ = ["Summary", "KMeansSummary", "HMMSummary", "VBSummary"]

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
        lines = [f"{self.estimator}: {self.model_name}, {self.n_components} "
                 f"component{'s' if self.n_components != 1 else ''}",
                 f"EM: {_stop(self.stop_reason, self.n_iter, self.converged)}", ""]
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


def _stop(stop_reason: Optional[str], n_iter: int, converged: bool) -> str:
    return ("not fitted by EM" if stop_reason is None else
            f"stopped by {stop_reason} after {n_iter} iterations, "
            + ("converged" if converged else "not converged"))


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
        if key != "weights":
            lines += _array_lines(key, value, names)
    return lines


def _array_lines(key: str, value: Any, names: tuple, unit: str = "component") -> list:
    """A parameter with the components first, labelled by feature name: (G, d) as a
    feature x component table, (G, d, d) as one matrix per component."""
    value = np.asarray(value)
    lines = ["", f"{key.replace('_', ' ').capitalize()}:"]
    if value.ndim == 2 and value.shape[1] == len(names):
        # (G, d): one row per feature, one column per component
        rows = [[name, *(_number(x) for x in value[:, j])]
                for j, name in enumerate(names)]
        lines += _table(["", *(str(k) for k in range(value.shape[0]))], rows, True)
    elif value.ndim == 3 and value.shape[1:] == (len(names), len(names)):
        # (G, d, d): one matrix per component
        for k in range(value.shape[0]):
            lines.append(f"[{unit} {k}]")
            rows = [[name, *(_number(x) for x in value[k, j])]
                    for j, name in enumerate(names)]
            lines += _table(["", *names], rows, True)
    else:
        for k in range(value.shape[0]):
            lines.append(f"[{unit} {k}] "
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
    owner = _check_call(model, X, parameters)
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
    names = _feature_names(model, X, d, feature_names)
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


def _check_call(model: Any, X: Any, parameters: Any) -> str:
    """The owner ('Estimator.summary') after checking X is given and parameters a bool."""
    owner = f"{type(model).__name__}.summary"
    if X is None:
        raise ValueError(f"The 'X' parameter of {owner} must be the data to summarise "
                         "(usually the training data: the fit keeps no data, and n, the "
                         "criteria and the clustering table are computed on X). Got None "
                         "instead.")
    if not isinstance(parameters, (bool, np.bool_)):
        raise ValueError(f"The 'parameters' parameter of {owner} must be a bool. Got "
                         f"{parameters!r} instead.")
    return owner


def _feature_names(model: Any, X: Any, d: int, given: Optional[Any] = None) -> tuple:
    """``given``, else ``feature_names_in_``, else the columns of X (a DataFrame), else
    x0, x1, ..."""
    for names in (given, getattr(model, "feature_names_in_", None), feature_names_of(X)):
        if names is not None and len(names) == d:
            return tuple(str(f) for f in names)
    return tuple(f"x{j}" for j in range(d))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class KMeansSummary:
    """A fitted :class:`emcore.KMeans` on X; ``str(summary)`` is the printed report."""

    estimator: str
    n_samples: int                 #: rows of the X summarised
    n_features: int
    n_clusters: int
    inertia: float                 #: sum_i ||x_i - c_{label_i}||^2 on X (-model.score(X))
    counts: tuple                  #: rows of X per cluster, from predict(X)
    stop_reason: Optional[str]     #: 'tol', 'max_iter', ... (None: not fitted)
    n_iter: int
    converged: bool
    feature_names: tuple
    #: with parameters=True: {'cluster_centers': (k, d)}
    parameters: Optional[dict] = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        lines = [f"{self.estimator}: {_plural(self.n_clusters, 'cluster')} (Lloyd)",
                 f"Lloyd: {_stop(self.stop_reason, self.n_iter, self.converged)}", ""]
        lines += _table(("inertia", "n", "d"), [(f"{self.inertia:.6g}", str(self.n_samples),
                                                 str(self.n_features))])
        lines += ["", "Cluster sizes:"]
        lines += _table([str(k) for k in range(self.n_clusters)],
                        [[str(c) for c in self.counts]])
        if self.parameters is not None:
            lines += _array_lines("cluster_centers", self.parameters["cluster_centers"],
                                  self.feature_names, "cluster")
        return "\n".join(lines)


def summarise_kmeans(model: Any, X: Any, parameters: bool = False) -> KMeansSummary:
    """The :class:`KMeansSummary` of a fitted KMeans on X (``model.summary(X)``)."""
    _check_call(model, X, parameters)
    inertia = -float(model.score(X))
    labels = model.predict(X)
    centres = np.array(model.cluster_centers_, dtype=np.float64)
    k, d = centres.shape
    return KMeansSummary(
        estimator=type(model).__name__, n_samples=int(labels.shape[0]), n_features=d,
        n_clusters=k, inertia=inertia,
        counts=tuple(int(c) for c in np.bincount(labels, minlength=k)),
        stop_reason=getattr(model, "stop_reason_", None),
        n_iter=int(getattr(model, "n_iter_", 0)),
        converged=bool(getattr(model, "converged_", False)),
        feature_names=_feature_names(model, X, d),
        parameters={"cluster_centers": centres} if parameters else None)


@dataclass(frozen=True)
class HMMSummary:
    """A fitted :class:`emcore.HiddenMarkovModel` on X; ``str(summary)`` is the report.

    BIC and AIC (lower is better, as the mixtures') count the free parameters of
    the emissions and of the chain (start probabilities and transition rows not
    ``fixed``), with n the rows of X; None for a family that does not count its
    parameters.
    """

    estimator: str
    family: str
    n_samples: int                 #: rows of the X summarised
    n_sequences: int
    n_features: int
    n_states: int
    log_likelihood: float          #: log p(X) of the sequences (model.score(X, lengths))
    n_parameters: Optional[int]
    bic: Optional[float]
    aic: Optional[float]
    counts: tuple                  #: rows per state on the Viterbi path (predict(X))
    stop_reason: Optional[str]
    n_iter: int
    converged: bool
    feature_names: tuple
    startprob: np.ndarray = field(repr=False, compare=False)
    transmat: np.ndarray = field(repr=False, compare=False)
    #: with parameters=True: the emission family's parameters, states first
    parameters: Optional[dict] = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        K = self.n_states
        lines = [f"{self.estimator}: {self.family} emissions, {_plural(K, 'state')}",
                 f"EM: {_stop(self.stop_reason, self.n_iter, self.converged)}", ""]
        crit = ["-" if c is None else f"{c:.3f}" for c in (self.bic, self.aic)]
        lines += _table(("log-likelihood", "n", "sequences", "d", "df", "BIC", "AIC"),
                        [(f"{self.log_likelihood:.3f}", str(self.n_samples),
                          str(self.n_sequences), str(self.n_features),
                          "-" if self.n_parameters is None else str(self.n_parameters),
                          *crit)])
        states = [str(k) for k in range(K)]
        lines += ["", "Start probabilities:"]
        lines += _table(states, [[f"{p:.4f}" for p in self.startprob]])
        lines += ["", "Transition matrix (row: from, column: to):"]
        lines += _table(["", *states], [[str(j), *(f"{p:.4f}" for p in row)]
                                        for j, row in enumerate(self.transmat)], True)
        lines += ["", "State counts (Viterbi path):"]
        lines += _table(states, [[str(c) for c in self.counts]])
        if self.parameters is not None:
            for key, value in self.parameters.items():
                lines += _array_lines(key, value, self.feature_names, "state")
        return "\n".join(lines)


def summarise_hmm(model: Any, X: Any, lengths: Any = None,
                  parameters: bool = False) -> HMMSummary:
    """The :class:`HMMSummary` of a fitted HiddenMarkovModel on X."""
    owner = _check_call(model, X, parameters)
    loglik = float(model.score(X, lengths))
    labels = model.predict(X, lengths)
    family = model.family_
    K, d = int(family.n_components), int(family.n_features)
    n = int(labels.shape[0])
    fixed = model._fixed()
    try:
        p = int(family.n_parameters())
    except NotImplementedError:
        p = None
    bic = aic = None
    if p is not None:
        p += (0 if "startprob" in fixed else K - 1) + (0 if "transmat" in fixed
                                                       else K * (K - 1))
        bic, aic = -2.0 * loglik + p * float(np.log(n)), -2.0 * loglik + 2.0 * p
    n_sequences = (len(X) if lengths is None and isinstance(X, (list, tuple))
                   and all(np.ndim(x) == 2 for x in X)
                   else 1 if lengths is None else int(np.size(lengths)))
    table = None
    if parameters:
        table = {key: np.array(value) for key, value in model.params_.items()
                 if key not in _DERIVED}
    return HMMSummary(
        estimator=type(model).__name__,
        family=model.family if isinstance(model.family, str) else _registry_name(family),
        n_samples=n, n_sequences=n_sequences, n_features=d, n_states=K,
        log_likelihood=loglik, n_parameters=p, bic=bic, aic=aic,
        counts=tuple(int(c) for c in np.bincount(labels, minlength=K)),
        stop_reason=getattr(model, "stop_reason_", None),
        n_iter=int(getattr(model, "n_iter_", 0)),
        converged=bool(getattr(model, "converged_", False)),
        feature_names=_feature_names(model, X if not isinstance(X, (list, tuple)) else None,
                                     d),
        startprob=np.array(model._check_chain(model.startprob_, "startprob_", K, owner)),
        transmat=np.array(model._check_chain(model.transmat_, "transmat_", K, owner)),
        parameters=table)


@dataclass(frozen=True)
class VBSummary:
    """A fitted :class:`emcore.BayesianGaussianMixture` on X; ``str(summary)`` is the
    report. The ELBO is the fit's (on its training data: ``lower_bound_``); the
    clustering table is computed on X."""

    estimator: str
    covariance_type: str
    weight_concentration_prior_type: str
    n_samples: int                 #: rows of the X summarised
    n_features: int
    n_components: int              #: the truncation level
    n_effective_components: int    #: components with weight >= 0.01
    elbo: float                    #: lower_bound_: the ELBO at the fit's end (a total)
    counts: tuple                  #: rows of X per component, from predict(X)
    stop_reason: Optional[str]
    n_iter: int
    converged: bool
    feature_names: tuple
    weights: np.ndarray = field(repr=False, compare=False)   #: weights_ (E[pi])
    #: with parameters=True: {'means': (G, d), 'covariances': (G, d, d)}
    parameters: Optional[dict] = field(default=None, repr=False, compare=False)

    @property
    def model_name(self) -> str:
        mclust = MCLUST_NAMES.get(self.covariance_type)
        return (f"gaussian, {self.covariance_type} covariance"
                + (f" (mclust {mclust})" if mclust else ""))

    def __str__(self) -> str:
        G = self.n_components
        lines = [f"{self.estimator}: {self.model_name}, {_plural(G, 'component')} "
                 f"({self.n_effective_components} effective), "
                 f"{self.weight_concentration_prior_type} prior",
                 f"VB: {_stop(self.stop_reason, self.n_iter, self.converged)}", ""]
        lines += _table(("ELBO", "n", "d", "effective"),
                        [(f"{self.elbo:.3f}", str(self.n_samples), str(self.n_features),
                          str(self.n_effective_components))])
        lines += ["", "Mixing weights:"]
        lines += _table([str(k) for k in range(G)], [[f"{w:.4f}" for w in self.weights]])
        lines += ["", "Clustering table:"]
        lines += _table([str(k) for k in range(G)], [[str(c) for c in self.counts]])
        if self.parameters is not None:
            for key, value in self.parameters.items():
                lines += _array_lines(key, value, self.feature_names)
        return "\n".join(lines)


def summarise_vb(model: Any, X: Any, parameters: bool = False) -> VBSummary:
    """The :class:`VBSummary` of a fitted BayesianGaussianMixture on X."""
    _check_call(model, X, parameters)
    labels = model.predict(X)
    k, t, d = model._fitted_shape
    table = None
    if parameters:
        state = model._state.params
        table = {"means": np.array(model.means_), "covariances":
                 np.array(state["covariances"])}
    return VBSummary(
        estimator=type(model).__name__, covariance_type=t,
        weight_concentration_prior_type=model._prior.kind,
        n_samples=int(labels.shape[0]), n_features=d, n_components=k,
        n_effective_components=int(model.n_effective_components_),
        elbo=float(model.lower_bound_),
        counts=tuple(int(c) for c in np.bincount(labels, minlength=k)),
        stop_reason=model.stop_reason_, n_iter=int(model.n_iter_),
        converged=bool(model.converged_), feature_names=_feature_names(model, X, d),
        weights=np.array(model.weights_), parameters=table)

"""``emcore.KMeans``: scikit-learn's KMeans (Lloyd), as classification EM on emcore's engine.

k-means is CEM for the ``kmeans`` family (equal weights, one shared spherical
variance) with the ``hard`` posterior rule: the same chunk loop, compiled kernels
and recorded chain as every other fit. The chain's objective is the
classification log-likelihood, -inertia / (2 sigma^2) + const, so "the chain
holds" says "the inertia never increased".
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from emcore import _validation as v
from emcore._estimator import BaseEstimator
from emcore._feature_names import (check_feature_names, check_output_kind, names_out,
                                   record_feature_names, wrap_output)
from emcore._init import (check_resp_conflicts, check_resp_init, kmeans_plusplus,
                          m_step_from_resp, one_hot, random_rows, sq_distances)
from emcore._input import check_input, is_float32
from emcore._logging import check_callback, progress_bar
from emcore.engine import Iteration, best_of_starts, chunk_rows_for, data_pass, run_em
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import UNIT_ROUNDOFF as _U
from emcore.registry import get_registry

if TYPE_CHECKING:                    # what summary() returns
    from emcore.summary import KMeansSummary

__all__ = ["KMeans"]

_INIT = ("k-means++", "random")


def _mean_feature_variance(X: np.ndarray) -> float:
    """mean_j Var(X[:, j]) (unweighted, as scikit-learn scales ``tol``), chunk by chunk,
    with the second moments shifted by the first row (never raw E[x^2] - mean^2)."""
    shift = X[0]
    n, d = X.shape
    chunk = chunk_rows_for(d)
    s1 = np.zeros(d)
    s2 = np.zeros(d)
    for start in range(0, n, chunk):
        diff = X[start:start + chunk] - np.asarray(shift, dtype=np.float64)  # float64 sums
        s1 += diff.sum(axis=0)
        s2 += np.einsum("ij,ij->j", diff, diff)
    return float(np.mean(np.maximum(s2 - s1 * s1 / n, 0.0) / n))


def _check_centres(centres: Any, name: str, owner: str) -> np.ndarray:
    """Cluster centres as a finite float64 (n_clusters, n_features) array, or a
    ValueError naming ``name``."""
    prefix = (f"The {name!r} {'attribute' if name.endswith('_') else 'parameter'} of "
              f"{owner} must be a finite array of shape (n_clusters, n_features)")
    arr = v.as_float_array(centres, prefix)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{prefix}. Got an array of shape {arr.shape} instead.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{prefix}. Got non-finite entries instead.")
    return arr


class KMeans(BaseEstimator):
    """K-means clustering (Lloyd's algorithm) with scikit-learn's API.

    Each iteration is one pass of emcore's compiled chunk loop: the E-step assigns
    every row to its nearest centre (distances through the GEMM identity on data
    centred at the centres' mean, computed in registers by the k-means family's
    kernel), the statistics of each cluster are
    accumulated by label from exact differences, and the M-step moves each centre
    to the mean of its rows. Threads never change the result.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of clusters k (1 <= k <= n_samples).
    init : {'k-means++', 'random'} or array of shape (n_clusters, n_features)
        'k-means++': greedy D^2 seeding with 2 + log(k) candidates per step
        (scikit-learn's); 'random': k rows of distinct values, drawn in proportion to their
        weight; an array: the initial centres.
    n_init : 'auto' or int, default 'auto'
        Number of initialisations, the one with the lowest inertia kept. 'auto': 1
        for 'k-means++' or an array, 10 for 'random' (scikit-learn's rule).
    max_iter : int, default 300
        Maximum number of iterations (M-steps).
    tol : float, default 1e-4
        scikit-learn's rule: stop when sum_k ||c_k(t+1) - c_k(t)||^2 <= tol * mean
        feature variance of X. The fit also stops when the centres move by no more
        than rounding (``8 u |c|``, the labels are then stable), so ``tol=0`` runs to
        the fixed point.
    random_state : None, int, numpy RandomState or Generator
    n_jobs : int or None, default None
        Threads for the chunk loop (None: all CPUs). Results are identical for
        every value.
    verbose : int, default 0
    callback : callable, optional
        Called after each iteration with its :class:`emcore.engine.Iteration`
        record; returning False stops the fit (``stop_reason_ == 'callback'``,
        the other starts are not run). Lines per iteration go to the logger
        ``emcore`` (INFO with ``verbose``, labelled with the start; 2 adds the
        ELBO chain's links).

    resp_init : array of shape (n_samples, n_clusters), optional
        A starting partition: one-hot rows, or responsibilities (checked as in
        :class:`emcore.GaussianMixture`) of which each row's argmax is taken
        (ties: the lowest index; k-means is hard, as its E-step). The first step
        is the M-step from it: each centre the (weighted) mean of its rows, so
        every cluster must get a row. Cannot come with ``init`` other than the
        default 'k-means++'; one start.
    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the starts,
        or the iterations of a single start.

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features)
        The model: ``predict``, ``transform`` and ``score`` read it each time
        (validated), so assigning or editing it changes them; ``set_params``
        after fit does not. :meth:`from_parameters` builds a model without data.
    labels_ : ndarray (n_samples,)
        The nearest centre of each training row (ties: the lowest index).
    inertia_ : float
        sum_i w_i ||x_i - c_{label_i}||^2 at the fitted centres, from exact
        differences.
    n_iter_ : int
    stop_reason_ : {'tol', 'max_iter', 'interrupted', 'callback'}
    converged_ : bool
    history_ : tuple of emcore.engine.Iteration
        Per iteration, the classification log-likelihood before and after
        (``value``, ``value_next``) with its derived tolerance;
        ``empty_components`` lists the clusters that were empty and relocated.
    n_features_in_ : int

    Notes
    -----
    Empty clusters: a cluster left without rows by an E-step moves, before the
    next, to the farthest point (from its own centre) of a non-empty cluster; the
    empty clusters in index order take those points in decreasing order of
    distance. scikit-learn moves them to the globally farthest points instead.
    """

    def __init__(self, n_clusters: int = 8, *, init: Union[str, Any] = "k-means++",
                 n_init: Union[str, int] = "auto", max_iter: int = 300, tol: float = 1e-4,
                 random_state: Any = None, n_jobs: Optional[int] = None, verbose: int = 0,
                 callback: Optional[Callable[[Iteration], Any]] = None,
                 resp_init: Any = None, progress: bool = False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.callback = callback
        self.resp_init = resp_init
        self.progress = progress

    # --- validation -----------------------------------------------------------------
    def _check_parameters(self, X: np.ndarray):
        owner = "KMeans"
        n, d = X.shape
        k = v.check_int(self.n_clusters, "n_clusters", owner, low=1)
        if k > n:
            raise ValueError(f"The 'n_clusters' parameter of KMeans must be at most "
                             f"n_samples={n} (the rows of X). Got n_clusters={k} instead.")
        v.check_int(self.max_iter, "max_iter", owner, low=1)
        v.check_float(self.tol, "tol", owner)
        v.check_int(self.verbose, "verbose", owner, low=0)
        check_callback(self.callback, owner)
        v.check_n_jobs(self.n_jobs, owner)
        if isinstance(self.init, str):
            v.check_choice(self.init, "init", owner, _INIT)
            centres = None
        else:
            try:
                centres = np.array(self.init, dtype=np.float64)
            except (TypeError, ValueError):
                centres = None
            if centres is None or centres.shape != (k, d) or not np.all(np.isfinite(centres)):
                shape = "unreadable" if centres is None else centres.shape
                raise ValueError(f"The 'init' parameter of KMeans must be 'k-means++', "
                                 f"'random' or a finite array of shape (n_clusters, "
                                 f"n_features) = ({k}, {d}). Got an array of shape {shape} "
                                 "instead.")
        if isinstance(self.n_init, str):
            v.check_choice(self.n_init, "n_init", owner, ("auto",))
            n_init = 10 if isinstance(self.init, str) and self.init == "random" else 1
        else:
            n_init = v.check_int(self.n_init, "n_init", owner, low=1)
        if self.resp_init is not None:
            resp = check_resp_init(self.resp_init, n, k, owner)
            check_resp_conflicts(owner, {"init": not (isinstance(self.init, str)
                                                      and self.init == "k-means++")})
            labels = np.argmax(resp, axis=1)
            empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
            if empty.size:
                raise ValueError(f"The 'resp_init' parameter of {owner} must give every "
                                 "cluster a row (each row goes to its argmax). Got none "
                                 f"for cluster {int(empty[0])} instead.")
            n_init = 1          # one given start; its M-step is in fit (it needs the weights)
        if centres is not None:
            n_init = 1          # one given start (scikit-learn warns and does the same)
        return k, centres, n_init

    # --- fitting --------------------------------------------------------------------
    def _family(self, k: int, d: int, dtype: Any = np.float64):
        # float32 data: the Lloyd step's scores in float32 (docs/elbo_chain.md#float32)
        return get_registry().family("kmeans").factory(k, d, dtype=np.dtype(dtype).name)

    @staticmethod
    def _rule():
        return get_registry().posterior_rule("hard").factory()

    def _seeds(self, X, k, rng, sample_weight):
        if self.init == "k-means++":
            idx = kmeans_plusplus(X, k, rng, sample_weight,
                                  n_local_trials=2 + int(np.log(k)))
        else:                   # 'random': distinct rows, drawn by weight
            idx = random_rows(X, k, rng, sample_weight)
        return X[idx].astype(np.float64)     # the fit's parameters are float64

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        """Compute the clustering; returns self.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape (n_samples, n_features)
            A sparse X (CSR; other formats converted once) is densified a block
            of rows at a time: the fit of ``X.toarray()`` without holding it.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights (at least n_clusters positive): a weight of 2
            counts the row twice in the centres and the inertia.
        """
        record_feature_names(self, X)
        single = is_float32(X)         # also a sparse float32 X (read as float64)
        X = check_input(X, owner="KMeans.fit", accept_sparse=True, keep_float32=True)
        k, centres, n_init = self._check_parameters(X)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0],
                                              owner="KMeans.fit", min_positive=k)
        rng = v.check_random_state(self.random_state, "KMeans")
        family, rule = self._family(k, X.shape[1], X.dtype), self._rule()
        if self.resp_init is not None:          # the M-step from the partition
            labels = np.argmax(check_resp_init(self.resp_init, X.shape[0], k, "KMeans"),
                               axis=1)
            centres = m_step_from_resp(X, family, one_hot(labels, k), sample_weight)[1][
                "means"]
        tol_shift = self.tol * _mean_feature_variance(X)

        def converged(record: Iteration, old: dict, new: dict) -> bool:
            shift = float(np.sum((new["means"] - old["means"]) ** 2))
            rounding = (8.0 * _U) ** 2 * float(np.sum(old["means"] ** 2))
            return shift <= max(tol_shift, rounding)

        def start():
            return np.full(k, 1.0 / k), {"means": centres if centres is not None
                                         else self._seeds(X, k, rng, sample_weight)}

        started = []

        def run(weights, params):
            started.append(None)
            return run_em(X, family, rule, weights, params, max_iter=self.max_iter,
                          n_jobs=self.n_jobs, sample_weight=sample_weight,
                          verbose=self.verbose, converged=converged, callback=self.callback,
                          label=f"start {len(started)}/{n_init}" if n_init > 1 else "")

        with progress_bar(getattr(self, "progress", False), "KMeans", starts=n_init,
                          max_iter=self.max_iter):
            best = best_of_starts(n_init, start, run)
        if best.stop_reason == "max_iter":
            warnings.warn(f"KMeans stopped after max_iter={self.max_iter} iterations before "
                          "the centres settled; increase max_iter or tol.",
                          _sklearn_compatible(ConvergenceWarning), stacklevel=2)
        self.n_iter_ = best.n_iter
        self.stop_reason_ = best.stop_reason
        self.converged_ = best.converged
        self.history_ = best.history
        self.n_features_in_ = X.shape[1]
        if single:
            # scikit-learn's convention: the centres in X's dtype; the labels and
            # the inertia are those of the rounded centres, as predict and score
            # give them (one pass for both)
            self.cluster_centers_ = best.params["means"].astype(np.float32)
            centres = self.cluster_centers_.astype(np.float64)
            self.labels_ = np.empty(X.shape[0], dtype=np.intp)
            stats = self._pass(X, centres, labels=self.labels_, sample_weight=sample_weight,
                               with_stats=True).stats
            self.inertia_ = float(np.sum(family.within_scatter(stats, {"means": centres})))
            return self
        self.cluster_centers_ = best.params["means"]
        self.inertia_ = float(np.sum(family.within_scatter(best.stats, best.params)))
        self.labels_ = self._labels(X, self.cluster_centers_)
        return self

    @classmethod
    def from_parameters(cls, cluster_centers: Any, **params: Any) -> "KMeans":
        """A KMeans whose fitted model is the given centres, without data.

        Parameters
        ----------
        cluster_centers : array of shape (n_clusters, n_features)
        **params
            Other constructor parameters.

        Returns
        -------
        KMeans
            With ``cluster_centers_`` and ``n_features_in_`` set and ``n_clusters``
            as given: it predicts, transforms and scores. ``labels_``,
            ``inertia_`` and the other attributes of a fit are absent.
        """
        centres = _check_centres(cluster_centers, "cluster_centers",
                                 "KMeans.from_parameters")
        model = cls(centres.shape[0], **params)
        model.cluster_centers_, model.n_features_in_ = centres, centres.shape[1]
        return model

    # --- using the fitted model -----------------------------------------------------
    def _pass(self, X: np.ndarray, centres: np.ndarray, *,
              labels: Optional[np.ndarray] = None,
              sample_weight: Optional[np.ndarray] = None, with_stats: bool = False):
        k, d = centres.shape
        return data_pass(X, self._family(k, d, X.dtype), self._rule(), np.full(k, 1.0 / k),
                         {"means": centres}, n_jobs=self.n_jobs,
                         with_stats=with_stats, sample_weight=sample_weight,
                         out_labels=labels, chunk_rows=chunk_rows_for(X.shape[1]))

    def _labels(self, X: np.ndarray, centres: np.ndarray) -> np.ndarray:
        labels = np.empty(X.shape[0], dtype=np.intp)
        self._pass(X, centres, labels=labels)
        return labels

    def _checked(self, X: Any, method: str) -> tuple:
        """(X, centres): the fitted model is ``cluster_centers_`` as it is now
        (validated), so editing it changes the predictions."""
        owner = f"KMeans.{method}"
        self._check_fitted("cluster_centers_")
        centres = _check_centres(self.cluster_centers_, "cluster_centers_", owner)
        n_in = getattr(self, "n_features_in_", None)
        if n_in is not None and n_in != centres.shape[1]:
            raise ValueError(f"The 'cluster_centers_' attribute of {owner} must have "
                             f"n_features_in_={n_in} columns. Got shape {centres.shape} "
                             "instead (set n_features_in_ too when the model changes "
                             "dimension).")
        check_feature_names(self, X)
        return (check_input(X, owner=owner, n_features=centres.shape[1], accept_sparse=True,
                            keep_float32=True), centres)

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest centre of each row (ties: the lowest index)."""
        return self._labels(*self._checked(X, "predict"))

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distance of each row to each centre, shape (n_samples, n_clusters).

        Computed on differences in float64, chunk by chunk (no cancellation);
        float32 for a float32 X (scikit-learn's convention).
        """
        data, centres = self._checked(X, "transform")
        out = np.empty((data.shape[0], centres.shape[0]),
                       dtype=np.float32 if is_float32(X) else np.float64)
        chunk = chunk_rows_for(data.shape[1])
        for start in range(0, data.shape[0], chunk):
            out[start:start + chunk] = np.sqrt(sq_distances(
                np.asarray(data[start:start + chunk], dtype=np.float64), centres))
        return wrap_output(self, out, X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the columns of :meth:`transform`: ``kmeans0``, ``kmeans1``, ...
        (scikit-learn's). ``input_features``, if given, must match
        ``feature_names_in_``."""
        self._check_fitted("cluster_centers_")
        return names_out(self, np.shape(self.cluster_centers_)[0], input_features)

    def set_output(self, *, transform: Optional[str] = None) -> "KMeans":
        """The container of :meth:`transform`'s output, as scikit-learn's ``set_output``:
        'default' (numpy), 'pandas' or 'polars' (a DataFrame whose columns are
        :meth:`get_feature_names_out`), or None (unchanged). Returns self."""
        check_output_kind(transform, "KMeans")
        if transform is not None:
            self._sklearn_output_config = {"transform": transform}
        return self

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return ``transform(X)``."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Minus the inertia of X at the fitted centres (scikit-learn's sign)."""
        X, centres = self._checked(X, "score")
        w = v.check_sample_weight(sample_weight, X.shape[0], owner="KMeans.score")
        k, d = centres.shape
        stats = self._pass(X, centres, sample_weight=w, with_stats=True).stats
        return -float(np.sum(self._family(k, d, X.dtype).within_scatter(
            stats, {"means": centres})))

    def summary(self, X: Any, parameters: bool = False) -> KMeansSummary:
        """What was fitted, in a few lines: an :class:`emcore.summary.KMeansSummary`
        (inertia and cluster sizes on X, equal to ``-score(X)`` and the counts of
        ``predict(X)``, iterations and the stopping rule); ``print`` shows the
        report, its fields are data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Usually the training data (the fit keeps no data): n and the inertia and the cluster sizes
            are computed on X.
        parameters : bool, default False
            Also the cluster centres, labelled by ``feature_names_in_`` (else the
            columns of a DataFrame X, else x0, x1, ...).
        """
        from emcore.summary import summarise_kmeans
        return summarise_kmeans(self, X, parameters)

    def __sklearn_tags__(self):
        """scikit-learn's tags for a clusterer/transformer."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags
        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(), regressor_tags=None,
                    classifier_tags=None, input_tags=InputTags(allow_nan=False, sparse=True))

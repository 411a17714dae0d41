"""``summary(X)`` on KMeans, HiddenMarkovModel and BayesianGaussianMixture (issue 20,
item 3): fields equal to the estimator's attributes and methods, a printed report
that shows them, and parameters labelled by feature name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emcore import BayesianGaussianMixture, HiddenMarkovModel, KMeans
from emcore.datasets import OLD_FAITHFUL_COLUMNS, load_old_faithful
from emcore.exceptions import NotFittedError
from emcore.summary import HMMSummary, KMeansSummary, VBSummary

X = load_old_faithful()
LENGTHS = [100, 172]


class Frame:  # shaped like a DataFrame: names from `columns`
    columns = list(OLD_FAITHFUL_COLUMNS)

    def __init__(self, X):
        self.X = X

    def __array__(self, dtype=None, copy=None):
        return self.X


@pytest.fixture(scope="module")
def kmeans():
    return KMeans(3, random_state=0, n_jobs=1).fit(X)


@pytest.fixture(scope="module")
def hmm():
    return HiddenMarkovModel(2, random_state=0, n_jobs=1).fit(X, LENGTHS)


@pytest.fixture(scope="module")
def vb():
    return BayesianGaussianMixture(4, random_state=0, max_iter=500, n_jobs=1).fit(X)


def _numbers(line: str) -> list:
    return [float(x) for x in line.split()]


# --- KMeans ---------------------------------------------------------------------------
def test_kmeans_summary_fields_are_the_estimators_values(kmeans):
    s = kmeans.summary(X)
    assert isinstance(s, KMeansSummary) and dataclasses.is_dataclass(s)
    assert s.inertia == -kmeans.score(X)
    # on the training data, the fit's own inertia (the same sums up to rounding)
    assert s.inertia == pytest.approx(kmeans.inertia_, rel=1e-12)
    assert s.counts == tuple(np.bincount(kmeans.predict(X), minlength=3))
    assert s.counts == tuple(np.bincount(kmeans.labels_, minlength=3))
    assert (s.n_samples, s.n_features, s.n_clusters) == (272, 2, 3)
    assert (s.stop_reason, s.n_iter, s.converged) == (kmeans.stop_reason_, kmeans.n_iter_,
                                                      kmeans.converged_)
    assert s.parameters is None and s.feature_names == ("x0", "x1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.inertia = 0.0


def test_kmeans_summary_report_shows_the_fields(kmeans):
    s = kmeans.summary(X)
    lines = str(s).splitlines()
    assert lines[0] == "KMeans: 3 clusters (Lloyd)"
    assert lines[1] == f"Lloyd: stopped by {s.stop_reason} after {s.n_iter} iterations, " \
                       "converged"
    assert lines[3].split() == ["inertia", "n", "d"]
    assert _numbers(lines[4]) == pytest.approx([s.inertia, 272, 2], rel=1e-5)
    at = lines.index("Cluster sizes:")
    assert [int(c) for c in lines[at + 2].split()] == list(s.counts)


def test_kmeans_summary_parameters_labelled_by_feature_name():
    frame = Frame(X)
    km = KMeans(2, random_state=0, n_jobs=1).fit(frame)
    s = km.summary(frame, parameters=True)
    assert s.feature_names == OLD_FAITHFUL_COLUMNS
    np.testing.assert_array_equal(s.parameters["cluster_centers"], km.cluster_centers_)
    lines = str(s).splitlines()
    at = lines.index("Cluster centers:")
    assert lines[at + 2].split()[0] == "eruptions" and lines[at + 3].split()[0] == "waiting"
    assert _numbers(" ".join(lines[at + 2].split()[1:])) == pytest.approx(
        km.cluster_centers_[:, 0], rel=1e-4)


# --- HiddenMarkovModel ----------------------------------------------------------------
def test_hmm_summary_fields_are_the_estimators_values(hmm):
    s = hmm.summary(X, LENGTHS)
    assert isinstance(s, HMMSummary)
    assert s.log_likelihood == hmm.score(X, LENGTHS)
    assert s.counts == tuple(np.bincount(hmm.predict(X, LENGTHS), minlength=2))
    np.testing.assert_array_equal(s.startprob, hmm.startprob_)
    np.testing.assert_array_equal(s.transmat, hmm.transmat_)
    assert (s.n_samples, s.n_sequences, s.n_features, s.n_states) == (272, 2, 2, 2)
    # emissions: 2 means * 2 + 2 covariances * 3 = 10; chain: 1 + 2 * 1 = 3
    assert s.n_parameters == 13
    assert s.bic == -2.0 * s.log_likelihood + 13 * np.log(272)
    assert s.aic == -2.0 * s.log_likelihood + 2 * 13
    assert (s.stop_reason, s.n_iter, s.converged) == (hmm.stop_reason_, hmm.n_iter_,
                                                      hmm.converged_)
    assert s.family == "gaussian"


def test_hmm_summary_counts_only_the_free_chain_parameters():
    A = np.array([[0.9, 0.1], [0.2, 0.8]])
    fixed = HiddenMarkovModel(2, transmat_init=A, fixed=("transmat",), random_state=0,
                              n_jobs=1).fit(X, LENGTHS)
    assert fixed.summary(X, LENGTHS).n_parameters == 10 + 1


def test_hmm_summary_report_shows_the_fields(hmm):
    s = hmm.summary(X, LENGTHS, parameters=True)
    lines = str(s).splitlines()
    assert lines[0] == "HiddenMarkovModel: gaussian emissions, 2 states"
    assert lines[3].split() == ["log-likelihood", "n", "sequences", "d", "df", "BIC", "AIC"]
    assert _numbers(lines[4]) == pytest.approx(
        [s.log_likelihood, 272, 2, 2, 13, s.bic, s.aic], abs=5e-4)
    at = lines.index("Start probabilities:")
    assert _numbers(lines[at + 2]) == pytest.approx(s.startprob, abs=5e-5)
    at = lines.index("Transition matrix (row: from, column: to):")
    for j in range(2):
        assert _numbers(lines[at + 2 + j])[1:] == pytest.approx(s.transmat[j], abs=5e-5)
    at = lines.index("State counts (Viterbi path):")
    assert [int(c) for c in lines[at + 2].split()] == list(s.counts)
    assert "Means:" in lines and "Covariances:" in lines
    assert sum(line.startswith("[state ") for line in lines) == 2
    np.testing.assert_array_equal(s.parameters["means"], hmm.means_)


def test_hmm_summary_of_a_list_of_sequences(hmm):
    s = hmm.summary([X[:100], X[100:]])
    assert s.n_sequences == 2 and s.log_likelihood == hmm.score(X, LENGTHS)


# --- BayesianGaussianMixture ----------------------------------------------------------
def test_vb_summary_fields_are_the_estimators_values(vb):
    s = vb.summary(X)
    assert isinstance(s, VBSummary)
    assert s.elbo == vb.lower_bound_
    assert s.n_effective_components == vb.n_effective_components_
    np.testing.assert_array_equal(s.weights, vb.weights_)
    assert s.counts == tuple(np.bincount(vb.predict(X), minlength=4))
    assert (s.n_samples, s.n_features, s.n_components) == (272, 2, 4)
    assert (s.stop_reason, s.n_iter, s.converged) == (vb.stop_reason_, vb.n_iter_,
                                                      vb.converged_)
    assert s.covariance_type == "full" and s.model_name.endswith("(mclust VVV)")
    assert s.weight_concentration_prior_type == "dirichlet_process"


def test_vb_summary_report_shows_the_fields(vb):
    s = vb.summary(X, parameters=True)
    lines = str(s).splitlines()
    assert lines[0] == ("BayesianGaussianMixture: gaussian, full covariance (mclust VVV), "
                        f"4 components ({s.n_effective_components} effective), "
                        "dirichlet_process prior")
    assert lines[3].split() == ["ELBO", "n", "d", "effective"]
    assert _numbers(lines[4]) == pytest.approx([s.elbo, 272, 2, s.n_effective_components],
                                               abs=5e-4)
    at = lines.index("Mixing weights:")
    assert _numbers(lines[at + 2]) == pytest.approx(s.weights, abs=5e-5)
    at = lines.index("Clustering table:")
    assert [int(c) for c in lines[at + 2].split()] == list(s.counts)
    np.testing.assert_array_equal(s.parameters["means"], vb.means_)
    assert s.parameters["covariances"].shape == (4, 2, 2)
    np.testing.assert_allclose(s.parameters["covariances"], vb.covariances_, rtol=1e-14)


def test_vb_summary_labels_parameters_with_the_columns_of_x(vb):
    s = vb.summary(Frame(X), parameters=True)
    assert s.feature_names == OLD_FAITHFUL_COLUMNS
    assert "eruptions" in str(s)


# --- bad calls ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: KMeans(2), lambda: HiddenMarkovModel(2),
                                  lambda: BayesianGaussianMixture(2)],
                         ids=["KMeans", "HiddenMarkovModel", "BayesianGaussianMixture"])
def test_summary_bad_calls(make):
    est = make()
    name = type(est).__name__
    with pytest.raises(NotFittedError):
        est.summary(X)
    est.set_params(n_jobs=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match=f"'X' parameter of {name}.summary"):
        est.summary(None)
    with pytest.raises(ValueError, match=f"'parameters' parameter of {name}.summary"):
        est.summary(X, parameters="yes")

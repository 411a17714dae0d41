"""``model.summary(X)``: mclust's summary() as data, and its printed report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emcore import GaussianMixture, MixtureModel
from emcore.datasets import OLD_FAITHFUL_COLUMNS, load_old_faithful
from emcore.exceptions import NotFittedError
from emcore.summary import Summary


@pytest.fixture(scope="module")
def faithful():
    return load_old_faithful()


@pytest.fixture(scope="module")
def fitted(faithful):
    return GaussianMixture(n_components=2, covariance_type="full", tol=1e-8,
                           random_state=0).fit(faithful)


def test_fields_are_the_methods_values(fitted, faithful):
    X = faithful
    s = fitted.summary(X)
    assert isinstance(s, Summary)
    assert (s.estimator, s.family, s.covariance_type) == ("GaussianMixture", "gaussian",
                                                           "full")
    assert (s.n_samples, s.n_features, s.n_components) == (272, 2, 2)
    # the same sums as the methods: equal bit for bit
    assert s.bic == fitted.bic(X)
    assert s.aic == fitted.aic(X)
    assert s.icl == fitted.icl(X)
    assert s.log_likelihood == pytest.approx(fitted.score(X) * X.shape[0], rel=1e-14)
    # 2 weights - 1 + 2 means * 2 + 2 covariances * 3 = 11 (mclust's df for VVV, G=2)
    assert s.n_parameters == 11
    assert s.counts == tuple(np.bincount(fitted.predict(X), minlength=2))
    assert sum(s.counts) == 272
    assert (s.stop_reason, s.n_iter, s.converged) == (fitted.stop_reason_, fitted.n_iter_,
                                                      fitted.converged_)
    assert s.converged and s.stop_reason == "tol"
    assert s.parameters is None
    assert s.feature_names == ("x0", "x1")
    assert s.model_name == "gaussian, full covariance (mclust VVV)"


def test_str_shows_the_fields(fitted, faithful):
    s = fitted.summary(faithful)
    text = str(s)
    lines = text.splitlines()
    assert len(lines) <= 12
    assert lines[0] == "GaussianMixture: gaussian, full covariance (mclust VVV), 2 components"
    assert lines[1] == f"EM: stopped by tol after {s.n_iter} iterations, converged"
    header = lines[3].split()
    values = lines[4].split()
    assert header == ["log-likelihood", "n", "d", "df", "BIC", "AIC", "ICL"]
    assert float(values[0]) == pytest.approx(s.log_likelihood, abs=5e-4)
    assert values[1:4] == ["272", "2", "11"]
    for text_value, value in zip(values[4:], (s.bic, s.aic, s.icl)):
        assert float(text_value) == pytest.approx(value, abs=5e-4)
    at = lines.index("Clustering table:")
    assert lines[at + 1].split() == ["0", "1"]
    assert [int(c) for c in lines[at + 2].split()] == list(s.counts)


def test_parameters_labelled_by_feature_name(faithful):
    class Frame:  # shaped like a DataFrame: names from `columns`
        columns = list(OLD_FAITHFUL_COLUMNS)

        def __init__(self, X):
            self.X = X

        def __array__(self, dtype=None, copy=None):
            return self.X

    frame = Frame(faithful)
    gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=0).fit(frame)
    s = gm.summary(frame, parameters=True)
    assert s.feature_names == OLD_FAITHFUL_COLUMNS
    np.testing.assert_array_equal(s.parameters["weights"], gm.weights_)
    np.testing.assert_array_equal(s.parameters["means"], gm.means_)
    # diagonal variances as (G, d, d) matrices
    expected = gm.covariances_[:, :, None] * np.eye(2)
    np.testing.assert_array_equal(s.parameters["covariances"], expected)
    assert set(s.parameters) == {"weights", "means", "covariances"}
    text = str(s)
    assert "Mixing probabilities:" in text
    assert "Means:" in text and "Covariances:" in text
    assert text.count("[component ") == 2
    mean_rows = [line.split() for line in text.splitlines()
                 if line.split()[:1] == ["eruptions"] and line.split()[1] != "waiting"]
    # a row of the means table and of each covariance matrix
    assert len(mean_rows) == 3
    assert float(mean_rows[0][1]) == pytest.approx(gm.means_[0, 0], rel=1e-3)
    assert "mclust VVI" in text


def test_mixture_model_summary(faithful):
    mm = MixtureModel(n_components=2, family="gaussian", random_state=0).fit(faithful)
    s = mm.summary(faithful, parameters=True)
    assert s.estimator == "MixtureModel" and s.family == "gaussian"
    assert s.bic == mm.bic(faithful) and s.icl == mm.icl(faithful)
    assert s.counts == tuple(np.bincount(mm.predict(faithful), minlength=2))
    assert "means" in s.parameters
    assert "MixtureModel: gaussian" in str(s)


def test_summary_is_data(fitted, faithful):
    s = fitted.summary(faithful)
    assert dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bic = 0.0


def test_bad_calls(fitted, faithful):
    with pytest.raises(TypeError):
        fitted.summary()
    with pytest.raises(ValueError, match="'X' parameter of GaussianMixture.summary"):
        fitted.summary(None)
    with pytest.raises(ValueError, match="'parameters' parameter of "
                                         "GaussianMixture.summary must be a bool"):
        fitted.summary(faithful, parameters="yes")
    with pytest.raises(ValueError, match="2 features"):
        fitted.summary(faithful[:, :1])
    with pytest.raises(NotFittedError):
        GaussianMixture(n_components=2).summary(faithful)

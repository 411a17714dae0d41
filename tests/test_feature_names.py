"""Feature names (emcore/_feature_names.py): recorded at fit, checked on new data, and
KMeans' get_feature_names_out/set_output; scikit-learn parity (max_iter=0, tol=0)."""

import warnings

import numpy as np
import pytest

import emcore


class Frame:
    """The smallest DataFrame-like: ``columns`` and an array (pandas is optional)."""

    def __init__(self, values, columns):
        self.values = np.asarray(values, dtype=np.float64)
        self.columns = list(columns)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __getitem__(self, names):
        return Frame(self.values[:, [self.columns.index(n) for n in names]], names)


def _estimators():
    return [emcore.GaussianMixture(2, random_state=0), emcore.KMeans(2, random_state=0),
            emcore.MixtureModel(2, random_state=0)]


def _data(n=80, d=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) * np.array([1.0, 5.0, 0.2])[:d]
    X[: n // 2] += 4.0
    return Frame(X, ["a", "b", "c"][:d])


@pytest.mark.parametrize("est", _estimators(), ids=lambda e: type(e).__name__)
def test_names_recorded_and_a_reordered_frame_raises(est):
    X = _data()
    est.fit(X)
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    assert est.feature_names_in_.dtype == object and est.n_features_in_ == 3
    est.predict(X)                                       # same columns: fine
    methods = ["predict", "score"] + (["transform"] if hasattr(est, "transform") else
                                      ["predict_proba", "score_samples"])
    for method in methods:
        with pytest.raises(ValueError, match="same order as they were in fit"):
            getattr(est, method)(X[["b", "a", "c"]])
    with pytest.raises(ValueError, match="unseen at fit time:\n- z\n.*missing:\n- c"):
        est.predict(Frame(X.values, ["a", "b", "z"]))


@pytest.mark.parametrize("est", _estimators(), ids=lambda e: type(e).__name__)
def test_names_against_no_names_warn_as_scikit_learn(est):
    X = _data()
    est.fit(X.values)
    assert not hasattr(est, "feature_names_in_")
    with pytest.warns(UserWarning, match="X has feature names, but .* fitted without"):
        est.predict(X)
    est.fit(X)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        est.predict(X.values)
    est.fit(X.values)                        # a refit without names forgets them
    assert not hasattr(est, "feature_names_in_")


def test_non_string_names_are_ignored_and_mixed_names_raise():
    X = _data()
    gm = emcore.GaussianMixture(2, random_state=0).fit(Frame(X.values, [0, 1, 2]))
    assert not hasattr(gm, "feature_names_in_")
    with pytest.raises(TypeError, match="only supported if all input features have string"):
        emcore.GaussianMixture(2, random_state=0).fit(Frame(X.values, ["a", 1, "c"]))


def test_pandas_reordered_dataframe_raises_and_set_output():
    pd = pytest.importorskip("pandas")
    X = _data()
    df = pd.DataFrame(X.values, columns=X.columns, index=np.arange(80) + 100)
    km = emcore.KMeans(3, random_state=0).fit(df)
    with pytest.raises(ValueError, match="same order"):
        km.predict(df[["c", "b", "a"]])
    out = km.set_output(transform="pandas").transform(df)
    assert list(out.columns) == ["kmeans0", "kmeans1", "kmeans2"]
    assert (out.index == df.index).all()
    np.testing.assert_array_equal(out.to_numpy(),
                                  km.set_output(transform="default").transform(df))


def test_get_feature_names_out_in_a_pipeline():
    pytest.importorskip("sklearn")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X = _data()
    pipe = make_pipeline(StandardScaler(), emcore.KMeans(2, random_state=0)).fit(X.values)
    assert list(pipe.get_feature_names_out()) == ["kmeans0", "kmeans1"]
    km = emcore.KMeans(2, random_state=0).fit(X)
    assert list(km.get_feature_names_out(["a", "b", "c"])) == ["kmeans0", "kmeans1"]
    with pytest.raises(ValueError, match="input_features is not equal"):
        km.get_feature_names_out(["b", "a", "c"])
    with pytest.raises(ValueError, match="'transform' parameter of KMeans.set_output"):
        km.set_output(transform="arrow")


@pytest.mark.parametrize("cls", [emcore.GaussianMixture, emcore.MixtureModel])
def test_max_iter_zero_returns_the_initial_parameters_without_warning(cls):
    X = _data().values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = cls(2, max_iter=0, random_state=0).fit(X)
    assert model.n_iter_ == 0 and not model.converged_ and model.history_ == ()
    one = cls(2, max_iter=1, tol=0.0, random_state=0).fit(X)
    # the same start: one iteration's record starts from the max_iter=0 model
    # the same total in another summation order: within n u sum_i |log p(x_i)|
    rows = model.score_samples(X)
    bound = X.shape[0] * np.finfo(float).eps * np.sum(np.abs(rows))
    assert abs(np.sum(rows) - one.history_[0].value) <= bound


def test_tol_zero_runs_max_iter_silently_and_the_warning_is_exported():
    X = _data().values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = emcore.GaussianMixture(2, max_iter=3, tol=0.0, random_state=0).fit(X)
    assert gm.n_iter_ == 3 and gm.stop_reason_ == "max_iter"
    with pytest.warns(emcore.ConvergenceWarning):
        emcore.GaussianMixture(2, max_iter=1, tol=1e-300, random_state=0).fit(X)

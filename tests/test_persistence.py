"""Saving and loading without pickle (emcore/persistence.py), and pickle's version stamp."""

import io
import json
import pickle
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import emcore
from emcore import persistence

_X = np.random.default_rng(0).poisson(3.0, size=(60, 3)).astype(float)
_X[:30] += 6.0


def _models():
    out = [emcore.GaussianMixture(2, covariance_type=t, random_state=0)
           for t in ("full", "tied", "diag", "spherical")]
    out += [emcore.KMeans(2, random_state=0),
            emcore.GaussianMixture(2, prior="default", random_state=0),
            emcore.MixtureModel(2, random_state=0),
            emcore.MixtureModel(2, family="kmeans", posterior="hard", random_state=0)]
    try:
        emcore.registry.get_registry().family("poisson")
        out.append(emcore.MixtureModel(2, family="poisson", random_state=0))
    except ValueError:
        pass                      # the example plugin is not installed
    return out


def _assert_same(a, b, X):
    assert type(a) is type(b) and a.get_params() == b.get_params() or \
        repr(a.get_params()) == repr(b.get_params())
    for key, value in vars(a).items():
        if key in ("_fitted_rule", "family_", "_online"):
            continue
        other = vars(b)[key]
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and value.shape == other.shape, key
            assert value.tobytes() == other.tobytes(), key          # bitwise
        elif isinstance(value, dict):
            assert value.keys() == other.keys()
            for k in value:
                assert np.asarray(value[k]).tobytes() == np.asarray(other[k]).tobytes()
        elif key != "prior_":
            assert value == other, key
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    if hasattr(a, "score_samples"):
        np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
        np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    else:
        np.testing.assert_array_equal(a.transform(X), b.transform(X))


@pytest.mark.parametrize("est", _models(), ids=repr)
def test_round_trip_is_bitwise(est, tmp_path):
    est.fit(_X)
    path = tmp_path / "model.emcore"
    est.save(path)
    loaded = emcore.load(path)
    _assert_same(est, loaded, _X)
    assert loaded.history_ == est.history_
    if hasattr(est, "family_"):
        assert type(loaded.family_) is type(est.family_)


def test_prior_and_feature_names_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(_X, columns=["a", "b", "c"])
    gm = emcore.GaussianMixture(2, prior=emcore.GaussianPrior(shrinkage=0.1),
                                random_state=0).fit(df)
    gm.save(tmp_path / "m")
    loaded = emcore.load(tmp_path / "m")
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]
    assert loaded.prior == gm.prior
    np.testing.assert_array_equal(loaded.prior_.scale, gm.prior_.scale)
    with pytest.raises(ValueError, match="same order"):
        loaded.predict(df[["c", "a", "b"]])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["full", "tied", "diag", "spherical", "kmeans"]),
       k=st.integers(1, 3), seed=st.integers(0, 2**16), n=st.integers(8, 40),
       d=st.integers(1, 3), max_iter=st.integers(0, 5))
def test_round_trip_over_fitted_models(tmp_path, kind, k, seed, n, d, max_iter):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + rng.integers(0, 3, size=(n, 1)) * 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        if kind == "kmeans":
            est = emcore.KMeans(k, max_iter=max(1, max_iter), random_state=seed).fit(X)
        else:
            est = emcore.GaussianMixture(k, covariance_type=kind, max_iter=max_iter,
                                         reg_covar=1e-3, random_state=seed).fit(X)
    path = tmp_path / f"m{seed}.emcore"
    est.save(path)
    _assert_same(est, emcore.load(path), X)


def test_unfitted_estimator_round_trips(tmp_path):
    est = emcore.GaussianMixture(3, covariance_type="diag", tol=1e-3, means_init=np.eye(3))
    est.save(tmp_path / "m")
    loaded = emcore.load(tmp_path / "m")
    assert repr(loaded) == repr(est) and not hasattr(loaded, "weights_")


def _rewrite(src, dst, edit_manifest=None, drop=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            if item == drop:
                continue
            data = zin.read(item)
            if item == "manifest.json" and edit_manifest:
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.emcore"
    emcore.GaussianMixture(2, random_state=0).fit(_X).save(path)
    return path


def test_truncated_and_corrupted_files_raise(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"cut{cut}"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable emcore model file"):
            emcore.load(bad)
    rng = np.random.default_rng(0)
    for trial in range(20):
        flipped = bytearray(data)
        at = int(rng.integers(0, len(data)))
        flipped[at] ^= 0xFF
        bad = tmp_path / f"flip{trial}"
        bad.write_bytes(bytes(flipped))
        try:
            loaded = emcore.load(bad)
        except ValueError:
            continue
        # a byte the format does not read (zip padding, the comment): the same model
        _assert_same(emcore.load(saved), loaded, _X)


def test_an_edited_array_or_a_missing_one_raises(saved, tmp_path):
    bad = tmp_path / "bad"
    _rewrite(saved, bad, drop="arrays/0.npy")
    with pytest.raises(ValueError, match="not a readable emcore model file"):
        emcore.load(bad)

    def wrong_sum(manifest):        # a consistent file whose model is not valid
        manifest["checksums"] = {}
    _rewrite(saved, bad, wrong_sum)
    with pytest.raises(ValueError, match="not a readable emcore model file"):
        emcore.load(bad)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format="other"), "not an 'emcore-model' file"),
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m.update(estimator="os.system"), "not one of emcore's"),
    (lambda m: m["attributes"].update(_family={"$float": "1.0"}), "not fitted attributes"),
    (lambda m: m["attributes"].update(x_={"$object": "Popen", "fields": {}}),
     "unknown object type"),
    (lambda m: m["plugins"].append({"kind": "family", "name": "nonexistent",
                                    "plugin": "nonexistent", "version": "1.0",
                                    "distribution": "emcore-nonexistent"}),
     "pip install \"emcore-nonexistent\""),
])
def test_load_refuses_what_it_cannot_trust(saved, tmp_path, edit, match):
    bad = tmp_path / "bad"
    _rewrite(saved, bad, edit)
    with pytest.raises(ValueError, match=match):
        emcore.load(bad)


def test_a_version_mismatch_warns(saved, tmp_path):
    other = tmp_path / "other"
    _rewrite(saved, other, lambda m: m.update(emcore_version="0.0.1"))
    with pytest.warns(UserWarning, match="saved by emcore 0.0.1"):
        emcore.load(other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emcore.load(saved)


def test_plugins_and_versions_are_recorded(tmp_path):
    est = emcore.MixtureModel(2, family="kmeans", posterior="hard", random_state=0).fit(_X)
    est.save(tmp_path / "m")
    with zipfile.ZipFile(tmp_path / "m") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["emcore_version"] == emcore.__version__
    assert {(p["kind"], p["name"]) for p in manifest["plugins"]} == {
        ("family", "kmeans"), ("posterior_rule", "hard")}
    assert manifest["estimator"] == "MixtureModel"
    for name in manifest["checksums"]:       # plain .npy files, no pickles
        with zipfile.ZipFile(tmp_path / "m") as zf:
            np.load(io.BytesIO(zf.read(name)), allow_pickle=False)


def test_unserialisable_parameters_are_refused_and_the_old_file_is_kept(saved):
    before = saved.read_bytes()
    est = emcore.GaussianMixture(2, random_state=np.random.default_rng(0)).fit(_X)
    with pytest.raises(TypeError, match="'random_state' parameter is a Generator"):
        est.save(saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]   # no temp file


def test_pickle_carries_a_version_stamp(monkeypatch):
    gm = emcore.GaussianMixture(2, random_state=0).fit(_X)
    data = pickle.dumps(gm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pickle.loads(data)
    np.testing.assert_array_equal(again.predict(_X), gm.predict(_X))
    assert "_emcore_version" not in vars(again)
    monkeypatch.setattr("emcore._estimator.__version__", "999.0")
    with pytest.warns(UserWarning, match="pickled by emcore .* with emcore 999.0"):
        pickle.loads(data)


def test_the_format_constants():
    assert persistence.FORMAT == "emcore-model" and persistence.FORMAT_VERSION == 1

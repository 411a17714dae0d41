"""Bad input to every public method of every estimator: one table, kept permanent.

Rows: every public method of GaussianMixture, KMeans and MixtureModel that takes
data, crossed with bad X (NaN, +-inf, empty, no features, 1-D, 3-D, strings,
objects, complex, the wrong number of features, before fit), every constructor
parameter crossed with out-of-range values and wrong types, and the other
arguments (``sample_weight``, ``n_samples``, ``constrained``). Each must raise a
ValueError/TypeError whose message names the argument ('X' or the parameter),
and never modify the caller's array (values, dtype, shape, strides, flags).

Accepted on purpose (documented choices, asserted as such): bool, float16,
integer and object arrays of numbers are converted to float64 and behave
exactly like that conversion; Fortran-ordered and strided (non-contiguous)
arrays give the same results as the C-ordered copy.

Tiny data and max_iter small keep the whole table to a few seconds.
"""

import warnings

import numpy as np
import pytest

import emcore
from emcore import GaussianMixture, KMeans, MixtureModel, NotFittedError
from emcore.exceptions import ConvergenceWarning

_RNG = np.random.default_rng(15)
X = np.vstack([_RNG.normal(0.0, 1.0, (8, 2)), _RNG.normal(6.0, 1.0, (8, 2))])
N, D = X.shape

ESTIMATORS = {
    "GaussianMixture": lambda: GaussianMixture(2, max_iter=5, n_jobs=1, random_state=0),
    "KMeans": lambda: KMeans(2, max_iter=5, n_jobs=1, random_state=0, n_init=1),
    "MixtureModel": lambda: MixtureModel(2, max_iter=5, n_jobs=1, random_state=0),
}
#: methods that fit (they take X on an unfitted estimator)
FIT_METHODS = ("fit", "partial_fit", "fit_predict", "fit_transform")
#: methods of a fitted model that take X
MODEL_METHODS = ("predict", "predict_proba", "score", "score_samples", "transform", "bic",
                 "aic", "icl")


def _methods(est_name, names):
    est = ESTIMATORS[est_name]()
    return [name for name in names if callable(getattr(est, name, None))]


def _quietly(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return call()


_FITTED = {}


def _fitted(est_name):
    if est_name not in _FITTED:
        _FITTED[est_name] = _quietly(lambda: ESTIMATORS[est_name]().fit(X))
    return _FITTED[est_name]


def _snapshot(a):
    """Everything a call could change about an array the caller owns."""
    if not isinstance(a, np.ndarray):
        return None
    content = a.tolist() if a.dtype == object else a.tobytes()
    return (a.dtype, a.shape, a.strides, a.flags.writeable, a.flags.c_contiguous,
            a.flags.f_contiguous, a.flags.owndata, content)


def _call(est_name, method, data, fitted):
    est = _fitted(est_name) if fitted else ESTIMATORS[est_name]()
    return _quietly(lambda: getattr(est, method)(data))


def _cases(names):
    return [(e, m) for e in ESTIMATORS for m in _methods(e, names)]


def _with(value):
    Y = X.copy()
    Y[3, 1] = value
    return Y


def _objects(entry):
    Y = X.astype(object)
    Y[0, 0] = entry
    return Y


BAD_X = {
    "nan": _with(np.nan),
    "posinf": _with(np.inf),
    "neginf": _with(-np.inf),
    "empty": np.empty((0, D)),
    "no-features": np.empty((N, 0)),
    "1-D": X[:, 0].copy(),
    "3-D": X.reshape(N, D, 1).copy(),
    "0-D": np.float64(1.5),
    "strings": X.astype(str),
    "letters": np.array([["a", "b"]] * N),
    "object-str": _objects("a"),
    "object-None": _objects(None),
    "object-dict": _objects({"a": 1}),
    "complex": X + 1j,
    "complex-zero-imaginary": X.astype(complex),
    "None": None,
    "ragged-list": [[1.0, 2.0], [3.0]] * (N // 2),
}


def _check_raises_naming(call, name, data):
    before = _snapshot(data)
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert f"'{name}'" in str(info.value), str(info.value)
    assert _snapshot(data) == before, "the input array was modified"


@pytest.mark.parametrize("case", BAD_X)
@pytest.mark.parametrize("est_name,method", _cases(FIT_METHODS))
def test_fitting_methods_reject_bad_x(est_name, method, case):
    data = BAD_X[case]
    _check_raises_naming(lambda: _call(est_name, method, data, False), "X", data)


@pytest.mark.parametrize("case", [*BAD_X, "wrong-feature-count"])
@pytest.mark.parametrize("est_name,method", _cases(MODEL_METHODS))
def test_methods_of_a_fitted_model_reject_bad_x(est_name, method, case):
    data = np.c_[X, X[:, :1]] if case == "wrong-feature-count" else BAD_X[case]
    _check_raises_naming(lambda: _call(est_name, method, data, True), "X", data)


@pytest.mark.parametrize("est_name", [e for e in ESTIMATORS
                                      if hasattr(ESTIMATORS[e](), "partial_fit")])
def test_partial_fit_after_fit_rejects_the_wrong_feature_count(est_name):
    est = _quietly(lambda: ESTIMATORS[est_name]().fit(X))
    data = np.c_[X, X[:, :1]]
    _check_raises_naming(lambda: est.partial_fit(data), "X", data)


@pytest.mark.parametrize("est_name,method", [
    *_cases(MODEL_METHODS), *[(e, "sample") for e in ESTIMATORS
                                    if hasattr(ESTIMATORS[e](), "sample")]])
def test_methods_before_fit_raise_not_fitted(est_name, method):
    est = ESTIMATORS[est_name]()
    arg = 3 if method == "sample" else X
    before = _snapshot(X)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(est, method)(arg)
    assert _snapshot(X) == before
    # a bad X too: not fitted comes first (scikit-learn's order)
    with pytest.raises(NotFittedError):
        getattr(est, method)(BAD_X["nan"] if method != "sample" else 3)


# --- accepted on purpose: converted to float64, or copied to C order -------------------

def _outcome(call, rounded_to=None):
    """What a call gives: its result (a fitted estimator as its fitted arrays), or
    the type and message of what it raised. ``rounded_to``: the fitted float arrays
    and a per-row float output rounded to that dtype (what a float32 X gives)."""
    try:
        result = _quietly(call)
    except (ValueError, TypeError, ArithmeticError) as exc:
        return ("raised", type(exc), str(exc))
    if isinstance(result, (GaussianMixture, KMeans, MixtureModel)):
        state = {}
        for name in ("weights_", "means_", "covariances_", "cluster_centers_", "labels_",
                     "lower_bound_", "inertia_", "n_iter_"):
            if hasattr(result, name):
                value = np.asarray(getattr(result, name))
                if rounded_to is not None and value.ndim and value.dtype.kind == "f":
                    value = value.astype(rounded_to)
                state[name] = value.tolist()
        if hasattr(result, "params_"):
            state["params_"] = {k: v.tolist() for k, v in result.params_.items()}
        return ("fitted", state)
    if isinstance(result, tuple):
        return ("tuple", [np.asarray(r).tolist() for r in result])
    value = np.asarray(result)
    if rounded_to is not None and value.ndim and value.dtype.kind == "f":
        # per-row outputs of a float32 X: the float64 values rounded once
        # (score_samples, predict_proba); a scalar (score, bic) stays float64
        value = value.astype(rounded_to)
    return ("value", value.tolist())


def _fortran(a):
    return np.asfortranarray(a)


def _strided(a):
    wide = np.zeros((a.shape[0] * 2, a.shape[1] * 3), dtype=a.dtype)
    wide[::2, ::3] = a
    view = wide[::2, ::3]
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


#: (layout or dtype, what to build from X, what it must behave like)
ACCEPTED = {
    # layouts: the same values, so the same results (C-ordered float64 X)
    "fortran": (_fortran, lambda a: a),
    "strided": (_strided, lambda a: a),
    "read-only": (_read_only, lambda a: a),
    # dtypes converted to float64 (as scikit-learn does); the result is that of the
    # conversion. bool and float16 lose information the caller gave up themselves.
    "bool": (lambda a: a > 3.0, lambda a: (a > 3.0).astype(np.float64)),
    "float16": (lambda a: a.astype(np.float16),
                lambda a: a.astype(np.float16).astype(np.float64)),
    # (float32 is kept by KMeans and GaussianMixture: FLOAT32_KEPT below)
    "float32": (lambda a: a.astype(np.float32),
                lambda a: a.astype(np.float32).astype(np.float64)),
    "int": (lambda a: np.round(a * 10).astype(np.int64),
            lambda a: np.round(a * 10)),
    "object-numbers": (lambda a: a.astype(object), lambda a: a),
    "list": (lambda a: a.tolist(), lambda a: a),
}


#: estimators that keep float32 X in float32 (tests/test_float32.py checks them):
#: a fitted GaussianMixture's outputs on a float32 X are the float64 values
#: rounded once; its fit (not partial_fit's: online EM continues from float64
#: attributes) computes the quadratic form in float32, and KMeans' labels come
#: from float32 scores, so for those only the dtype is checked here (the float64
#: fits are matched within the derived bounds in tests/test_float32.py)
FLOAT32_KEPT = {"GaussianMixture": "rounded", "KMeans": "dtype"}


@pytest.mark.parametrize("kind", ACCEPTED)
@pytest.mark.parametrize("est_name,method", [*_cases(FIT_METHODS),
                                             *_cases(MODEL_METHODS)])
def test_accepted_inputs_behave_like_their_float64_c_ordered_copy(est_name, method, kind):
    make, equivalent = ACCEPTED[kind]
    fitted = method not in FIT_METHODS
    data = make(X)
    reference = np.ascontiguousarray(equivalent(X), dtype=np.float64)
    before = _snapshot(data)
    kept = (FLOAT32_KEPT.get(est_name) if kind == "float32" and method != "partial_fit"
            else None)
    if kept == "rounded" and not fitted:
        kept = "dtype"                  # GaussianMixture's fit: float32 arithmetic
    if kept == "dtype":
        result = _call(est_name, method, data, fitted)
        centres = "cluster_centers_" if est_name == "KMeans" else "means_"
        for value in ([getattr(result, centres)] if method == "fit"
                      else [result] if method in ("transform", "fit_transform") else []):
            assert value.dtype == np.float32
        assert _snapshot(data) == before, "the input array was modified"
        return
    got = _outcome(lambda: _call(est_name, method, data, fitted))
    want = _outcome(lambda: _call(est_name, method, reference, fitted),
                    rounded_to=np.float32 if kept else None)
    assert got == want
    assert _snapshot(data) == before, "the input array was modified"


# --- constructor parameters: out of range and the wrong type --------------------------

_EYE2 = np.array([np.eye(D)] * 2)
_INT_BAD = [0, -1, 2.5, 2.0, "2", None, True]
_MAX_ITER_BAD = _INT_BAD[1:]          # max_iter=0: the initial parameters (scikit-learn's)
_FLOAT_BAD = [-1.0, np.nan, np.inf, -np.inf, "0.1", None, True, 1e-3 + 0j]
_CHOICE_BAD = ["bogus", "", None, 3, ["full"]]
_RANDOM_STATE_BAD = [-1, "seed", 1.5, [0]]
_N_JOBS_BAD = [0, 1.5, "2", True]
_BOOL_BAD = ["yes", "False", 1, 0.0, None]
#: resp_init (n, 2): wrong shape, a row not summing to 1, negative, NaN, an empty
#: component, not numbers
_RESP_BAD = [np.ones((N, 1)), np.full((N, 2), 0.4), np.tile([1.5, -0.5], (N, 1)),
             np.full((N, 2), np.nan), np.tile([1.0, 0.0], (N, 1)), "z",
             np.full((N - 1, 2), 0.5)]

PARAMETERS = {
    "GaussianMixture": {
        "n_components": _INT_BAD + [N + 1],
        "covariance_type": _CHOICE_BAD,
        "tol": _FLOAT_BAD,
        "reg_covar": _FLOAT_BAD,
        "max_iter": _MAX_ITER_BAD,
        "n_init": _INT_BAD,
        "init_params": _CHOICE_BAD + ["kmeans"],
        "weights_init": [[1.0], [0.5, 0.6], [1.5, -0.5], [np.nan, 1.0], "ab", [[0.5, 0.5]],
                         ["a", "b"], [0.5 + 0j, 0.5]],
        "means_init": [np.zeros((3, D)), np.zeros((2, D + 1)), np.zeros(2 * D), "m",
                       [[0.0, np.nan], [1.0, 1.0]], [[{}, 1.0], [1.0, 1.0]]],
        "precisions_init": [np.eye(D), np.array([np.eye(3)] * 2), -_EYE2,
                            np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2), "p",
                            np.array([[[1.0, 0.5], [0.0, 1.0]]] * 2), _EYE2 * np.nan],
        "random_state": _RANDOM_STATE_BAD,
        "warm_start": _BOOL_BAD,
        "n_jobs": _N_JOBS_BAD,
        "verbose": [-1, 1.5, "1", None],
        "callback": [3, "print"],
        "prior": ["bogus", 3, {"dof": 3}],
        "posterior": [3.0, "bogus", ["soft"]],
        "online_step_exponent": [0.5, 1.5, -1.0, np.nan, "0.6", None, True],
        "accelerate": ["anderson", "SQUAREM", True, 1],
        "missing": ["drop", "MARGINALIZE", None, True, 1],
        "resp_init": _RESP_BAD,
        "progress": ["yes", 1, None],
    },
    "KMeans": {
        "n_clusters": _INT_BAD + [N + 1],
        "init": _CHOICE_BAD[:-1] + [np.zeros((3, D)), np.zeros((2, D + 1)),
                                    np.full((2, D), np.nan), [["a", "b"], ["c", "d"]]],
        "n_init": [0, -1, 2.5, "bogus", None, True],
        "max_iter": _INT_BAD,
        "tol": _FLOAT_BAD,
        "random_state": _RANDOM_STATE_BAD,
        "n_jobs": _N_JOBS_BAD,
        "verbose": [-1, 1.5, "1", None],
        "callback": [3, "print"],
        "resp_init": _RESP_BAD,
        "progress": ["yes", 1, None],
    },
    "MixtureModel": {
        "n_components": _INT_BAD + [N + 1],
        "family": ["bogus", 3, None],
        "family_options": [3, ["a"], {"bogus_option": 1}, {1: 2}],
        "posterior": [3.0, "bogus", None, ["soft"]],
        "posterior_options": [3, {"bogus_option": 1}],
        "tol": _FLOAT_BAD,
        "max_iter": _MAX_ITER_BAD,
        "n_init": _INT_BAD,
        "init_params": _CHOICE_BAD,
        # the default family is the Gaussian one, k = 2 components
        "weights_init": ["abc", [0.5], [0.7, 0.7], [1.5, -0.5], [np.nan, 1.0]],
        "params_init": [3, ["means"], {"bogus_key": np.zeros((2, D))},
                        {"means": np.zeros((3, D))}, {"means": np.full((2, D), np.nan)}],
        "random_state": _RANDOM_STATE_BAD,
        "n_jobs": _N_JOBS_BAD,
        "verbose": [-1, 1.5, "1", None],
        "accelerate": ["anderson", "SQUAREM", True, 1],
        "callback": [3, "print"],
        "resp_init": _RESP_BAD,
        "progress": ["yes", 1, None],
        "compress": ["yes", 1, None, "on"],
        "missing": ["drop", "MARGINALIZE", None, True, 1],
    },
}


def test_the_table_covers_every_constructor_parameter():
    for est_name, table in PARAMETERS.items():
        assert sorted(table) == sorted(ESTIMATORS[est_name]().get_params()), est_name


@pytest.mark.parametrize("est_name,name,value", [
    pytest.param(e, p, value, id=f"{e}-{p}-{i}")
    for e, table in PARAMETERS.items() for p, values in table.items()
    for i, value in enumerate(values)])
def test_bad_constructor_parameters_are_named_by_fit(est_name, name, value):
    est = ESTIMATORS[est_name]().set_params(**{name: value})
    snapshot = _snapshot(value)
    _check_raises_naming(lambda: _quietly(lambda: est.fit(X)), name, X)
    assert _snapshot(value) == snapshot, "the parameter's array was modified"


# --- the other arguments ---------------------------------------------------------------

BAD_SAMPLE_WEIGHT = {"nan": np.r_[np.nan, np.ones(N - 1)],
                     "negative": np.r_[-1.0, np.ones(N - 1)],
                     "short": np.ones(N - 1), "2-D": np.ones((N, 1)),
                     "strings": np.array(["a"] * N), "all-zero": np.zeros(N),
                     "complex": np.ones(N) + 1j, "inf": np.r_[np.inf, np.ones(N - 1)]}
WEIGHTED = ("fit", "fit_predict", "fit_transform", "partial_fit", "score", "bic", "aic",
            "icl")


@pytest.mark.parametrize("case", BAD_SAMPLE_WEIGHT)
@pytest.mark.parametrize("est_name,method", _cases(WEIGHTED))
def test_bad_sample_weight_is_named(est_name, method, case):
    w = BAD_SAMPLE_WEIGHT[case]
    fitted = method not in FIT_METHODS
    est = _fitted(est_name) if fitted else ESTIMATORS[est_name]()
    _check_raises_naming(lambda: _quietly(lambda: getattr(est, method)(X, sample_weight=w)),
                         "sample_weight", w)


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", None, True])
@pytest.mark.parametrize("est_name", [e for e in ESTIMATORS
                                      if hasattr(ESTIMATORS[e](), "sample")])
def test_bad_n_samples_is_named(est_name, value):
    _check_raises_naming(lambda: _fitted(est_name).sample(value), "n_samples", None)


@pytest.mark.parametrize("value", ["yes", 1, None])
@pytest.mark.parametrize("est_name", ["GaussianMixture", "MixtureModel"])
def test_bad_constrained_flag_is_named(est_name, value):
    _check_raises_naming(lambda: _fitted(est_name).predict_proba(X, constrained=value),
                         "constrained", X)


def test_the_shared_fitted_models_were_not_changed_by_the_table():
    # every row above used the same fitted models: refits give them bit for bit
    for est_name, model in _FITTED.items():
        fresh = _quietly(lambda: ESTIMATORS[est_name]().fit(X))
        assert _outcome(lambda: model) == _outcome(lambda: fresh), est_name

"""scikit-learn's own estimator checks on emcore's estimators."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import emcore
from emcore import GaussianMixture


# emcore does not depend on scikit-learn, so it does not inherit its BaseEstimator
# (it implements the same protocol: get_params, set_params, __sklearn_tags__)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*does not inherit from `sklearn.base",
                            category=UserWarning)
    _all_checks = parametrize_with_checks(
        [GaussianMixture(n_jobs=1), emcore.KMeans(n_clusters=3, n_jobs=1),
         emcore.MixtureModel(n_jobs=1), emcore.BayesianGaussianMixture(n_jobs=1)])


@_all_checks
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
        check(estimator)


# scikit-learn's weights-as-repetition checks on fits whose start is random (the
# default instances above have one component): the seeds are drawn over the
# distinct rows in an order of their values (emcore._init.distinct_rows), so a row
# of weight 2 and the same row given twice, in any row order, start alike.
_RANDOM_STARTS = [
    emcore.KMeans(n_clusters=3, n_jobs=1),
    emcore.KMeans(n_clusters=3, init="random", n_init=3, n_jobs=1),
    GaussianMixture(3, reg_covar=1e-3, n_jobs=1),
    GaussianMixture(3, init_params="random_from_data", n_init=2, reg_covar=1e-3, n_jobs=1),
    GaussianMixture(3, covariance_type="diag", reg_covar=1e-3, n_jobs=1),
    emcore.MixtureModel(3, family_options={"reg_covar": 1e-3}, n_jobs=1),
]


@pytest.mark.parametrize("estimator", _RANDOM_STARTS, ids=repr)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_sample_weight_equivalence_from_a_random_start(estimator, sparse):
    from sklearn.utils.estimator_checks import (
        check_sample_weight_equivalence_on_dense_data as dense_check,
        check_sample_weight_equivalence_on_sparse_data as sparse_check)
    if sparse and not estimator.__sklearn_tags__().input_tags.sparse:
        pytest.skip("dense X only (KMeans alone takes sparse X)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.exceptions.ConvergenceWarning)
        (sparse_check if sparse else dense_check)(type(estimator).__name__, estimator)


def test_seeds_are_the_same_for_weights_repetition_and_row_order():
    from emcore._init import kmeans_plusplus, random_rows
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    w = rng.integers(0, 4, size=40).astype(float)
    w[:5] = 1.0                        # at least k rows of positive weight
    repeated = np.repeat(X, w.astype(int), axis=0)
    order = rng.permutation(40)
    for seed in range(10):
        for draw, kwargs in ((kmeans_plusplus, {"n_local_trials": 3}), (random_rows, {})):
            a = X[draw(X, 5, np.random.default_rng(seed), w, **kwargs)]
            b = repeated[draw(repeated, 5, np.random.default_rng(seed), None, **kwargs)]
            c = X[order][draw(X[order], 5, np.random.default_rng(seed), w[order],
                              **kwargs)]
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
            assert np.all(w[np.unique(draw(X, 5, np.random.default_rng(seed), w,
                                           **kwargs))] > 0)


def test_not_fitted_error_is_scikit_learns_when_scikit_learn_is_loaded():
    with pytest.raises(SkNotFittedError):
        GaussianMixture().predict([[0.0]])
    with pytest.raises(emcore.NotFittedError):
        GaussianMixture().predict([[0.0]])


def test_not_fitted_message_is_scikit_learns():
    # scikit-learn's own test files match its message (ci/sklearn_suites.py)
    msg = ("This KMeans instance is not fitted yet. Call 'fit' with appropriate "
           "arguments before using this estimator.")
    with pytest.raises(SkNotFittedError, match=msg):
        emcore.KMeans().predict([[0.0]])


def test_convergence_warning_is_scikit_learns_when_scikit_learn_is_loaded():
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    X = np.random.default_rng(0).normal(size=(30, 2))
    for filtered in (SkConvergenceWarning, emcore.ConvergenceWarning):
        with pytest.warns(filtered):
            GaussianMixture(2, max_iter=1, tol=1e-12, random_state=0).fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", filtered)
            emcore.KMeans(2, max_iter=1, tol=0.0, random_state=0).fit(X)


def test_emcore_never_imports_scikit_learn(tmp_path):
    code = ("import sys, emcore\n"
            "X = emcore.datasets.load_old_faithful()\n"
            "gm = emcore.GaussianMixture(2, random_state=0).fit(X)\n"
            "gm.predict(X); gm.sample(3); gm.bic(X)\n"
            "try:\n    emcore.GaussianMixture().predict(X)\n"
            "except emcore.NotFittedError:\n    pass\n"
            "assert not [m for m in sys.modules if m.startswith('sklearn')], 'sklearn loaded'\n")
    proc = subprocess.run([sys.executable, "-c", "import emcore.datasets\n" + code],
                          capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)   # not the repository root (flat layout)
    assert proc.returncode == 0, proc.stderr


def test_readme_lists_every_scikit_learn_parameter_emcore_lacks():
    # README.md's table of deliberate differences: one row per missing parameter
    from pathlib import Path
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not beside the tests")
    # (or the user guide's pages, once ci/split_readme.py has moved the table there)
    pages = [readme, *sorted((readme.parent / "docs" / "guide").glob("*.md"))]
    rows = [line for page in pages for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")]
    missing = set()
    for ours, theirs in ((GaussianMixture(), SkGaussianMixture()),
                         (emcore.KMeans(), SkKMeans())):
        missing |= set(theirs.get_params()) - set(ours.get_params())
    assert missing >= {"verbose_interval", "algorithm", "copy_x"}
    for name in missing:
        assert any(row.startswith(f"| `{name}`") for row in rows), name

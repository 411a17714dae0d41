"""scikit-learn's GaussianMixture as an oracle: same start, same iterations.

Tolerances: both implementations compute the same EM map in float64 with
different summation orders. One step differs by the rounding of sums over n
rows: relative error <= gamma_n ~ n u ~ 2e-13 for n = 2000 (worst case), so 1e-10
leaves a margin for the conditioning of the covariances (kappa < 10 here). Over
many iterations of a contracting map the differences do not grow beyond
u / (1 - rho) times the conditioning, with rho the contraction rate (< 0.5 for
these well-separated clusters): same 1e-10. scikit-learn adds 10 eps to each N_k,
a relative perturbation of 10 eps / N_k < 1e-17 here.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from emcore import GaussianMixture
from emcore.exceptions import ConvergenceWarning

RTOL = 1e-10


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(99)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    covs = [np.diag([1.0, 0.5, 2.0]),
            np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.7]]),
            np.eye(3) * 1.5]
    X = np.concatenate([rng.multivariate_normal(m, c, size=s)
                        for m, c, s in zip(means, covs, (900, 600, 500))])
    rng.shuffle(X)
    start = dict(weights_init=np.array([0.3, 0.3, 0.4]),
                 means_init=means + rng.normal(0, 0.8, means.shape),
                 precisions_init=np.stack([np.eye(3) * 0.7] * 3))
    return X, start


def _both(X, start, max_iter, reg_covar=1e-6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, tol=0.0, max_iter=max_iter, reg_covar=reg_covar,
                               **start).fit(X)
        em = GaussianMixture(3, tol=0.0, max_iter=max_iter, reg_covar=reg_covar,
                             n_jobs=1, **start).fit(X)
    return sk, em


def _assert_same_parameters(sk, em, rtol):
    assert np.allclose(em.weights_, sk.weights_, rtol=rtol, atol=0)
    scale = np.sqrt(np.einsum("kii->ki", sk.covariances_))
    assert np.all(np.abs(em.means_ - sk.means_) <= rtol * (np.abs(sk.means_) + scale))
    # covariances relative to the variances' scale (off-diagonals may be ~0)
    denom = scale[:, :, None] * scale[:, None, :]
    assert np.all(np.abs(em.covariances_ - sk.covariances_) <= rtol * denom)
    assert np.allclose(em.precisions_cholesky_, sk.precisions_cholesky_,
                       rtol=rtol * 10, atol=rtol * np.abs(sk.precisions_cholesky_).max())


def test_one_em_step_matches_scikit_learn(problem):
    X, start = problem
    sk, em = _both(X, start, max_iter=1)
    assert em.n_iter_ == 1
    _assert_same_parameters(sk, em, RTOL)
    # scikit-learn's lower_bound_ is the mean loglik before its last M-step
    assert em.history_[0].value / X.shape[0] == pytest.approx(sk.lower_bound_, rel=RTOL)


def test_converged_fit_matches_scikit_learn(problem):
    X, start = problem
    sk, em = _both(X, start, max_iter=200)
    assert em.score(X) == pytest.approx(sk.score(X), rel=RTOL)
    _assert_same_parameters(sk, em, RTOL)
    assert np.array_equal(em.predict(X), sk.predict(X))
    assert np.allclose(em.predict_proba(X), sk.predict_proba(X), rtol=0, atol=1e-9)
    assert np.allclose(em.score_samples(X), sk.score_samples(X), rtol=RTOL, atol=0)


def test_old_faithful_matches_scikit_learn_without_reg_covar():
    from emcore.datasets import load_old_faithful
    X = load_old_faithful()
    em = GaussianMixture(2, reg_covar=0.0, tol=1e-14, max_iter=1000, random_state=0).fit(X)
    sk = SkGaussianMixture(2, reg_covar=0.0, tol=0.0, max_iter=50,
                           weights_init=em.weights_, means_init=em.means_,
                           precisions_init=em.precisions_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        sk.fit(X)
    # started at emcore's optimum, scikit-learn stays there
    assert sk.score(X) == pytest.approx(em.score(X), rel=RTOL)
    _assert_same_parameters(sk, em, 1e-7)

"""``resp_init=``: a user-given starting partition or responsibilities on every
estimator with a latent assignment (issue 20, item 2), as mclust's ``me(z=...)``:
the fit's first step is the M-step from them.

Checked: the fit from ``resp_init`` is the fit from the parameters that M-step
gives (computed here by hand from the partition); the same partition given as
``resp_init`` or drawn by ``init_params`` gives the same fit bit for bit; one EM
run from z equals mclust's ``me(faithful, "VVV", z)`` (numbers stored below with
the R commands; re-run when ``Rscript`` and mclust are installed); bad arrays and
conflicting starts are refused naming the parameter.
"""

import shutil
import subprocess
import warnings

import numpy as np
import pytest

from emcore import (BayesianGaussianMixture, GaussianMixture, HiddenMarkovModel, KMeans,
                    MixtureModel)
from emcore._init import one_hot, starting_partition
from emcore.datasets import load_old_faithful
from emcore.exceptions import ConvergenceWarning

X = load_old_faithful()
N = X.shape[0]
LABELS = (X[:, 0] > 3.0).astype(np.intp)         # short / long eruptions
Z = one_hot(LABELS, 2)
U = np.finfo(np.float64).eps / 2


def _partition_parameters(X, labels, k):
    """weights, means, covariances (maximum likelihood: divided by n_k) of a partition,
    computed directly (centred: the covariance of each cluster about its mean)."""
    weights = np.bincount(labels, minlength=k) / labels.shape[0]
    means = np.array([X[labels == j].mean(axis=0) for j in range(k)])
    covariances = np.array([np.cov(X[labels == j].T, bias=True) for j in range(k)])
    return weights, means, covariances


# Parameters from the same start differ by the rounding of two ways of computing the
# partition's moments: n u relative per sum (n = 272 rows: 3e-14), carried through
# a few EM iterations, a contraction near this optimum (it converges in ~10
# iterations): 1e-10 relative leaves a margin of over 100.
RTOL_SAME_START = 1e-10


def test_gaussian_mixture_from_resp_init_is_the_fit_from_the_m_step_parameters():
    w, m, c = _partition_parameters(X, LABELS, 2)
    by_hand = GaussianMixture(2, weights_init=w, means_init=m,
                              precisions_init=np.linalg.inv(c), reg_covar=0.0,
                              max_iter=5, tol=0.0).fit(X)
    from_z = GaussianMixture(2, resp_init=Z, reg_covar=0.0, max_iter=5, tol=0.0).fit(X)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(from_z, name), getattr(by_hand, name),
                                   rtol=RTOL_SAME_START, err_msg=name)
    # max_iter=0: the M-step from z itself
    start = GaussianMixture(2, resp_init=Z, reg_covar=0.0, max_iter=0).fit(X)
    np.testing.assert_allclose(start.weights_, w, rtol=4 * N * U)
    np.testing.assert_allclose(start.means_, m, rtol=4 * N * U)
    np.testing.assert_allclose(start.covariances_, c, rtol=RTOL_SAME_START)


def test_mixture_model_from_resp_init_is_the_fit_from_the_m_step_parameters():
    w, m, c = _partition_parameters(X, LABELS, 2)
    by_hand = GaussianMixture.from_parameters(w, m, c)
    params = {"means": by_hand.means_, "covariances": c,
              "precisions_cholesky": by_hand.precisions_cholesky_}
    ml = {"reg_covar": 0.0}
    a = MixtureModel(2, family_options=ml, weights_init=w, params_init=params, max_iter=5,
                     tol=0.0).fit(X)
    b = MixtureModel(2, family_options=ml, resp_init=Z, max_iter=5, tol=0.0).fit(X)
    np.testing.assert_allclose(b.weights_, a.weights_, rtol=RTOL_SAME_START)
    for key in ("means", "covariances"):
        np.testing.assert_allclose(b.params_[key], a.params_[key], rtol=RTOL_SAME_START)


def _kmeanspp_partition(k, seed):
    """The k-means++ partition ``random_state=seed`` draws (the estimators'
    generator is numpy's default_rng(seed))."""
    resp = starting_partition(X, k, "k-means++", np.random.default_rng(seed))
    return resp(0, N)


@pytest.mark.parametrize("make", [
    lambda **kw: GaussianMixture(3, max_iter=5, tol=0.0, **kw),
    lambda **kw: MixtureModel(3, max_iter=5, tol=0.0, **kw),
    lambda **kw: BayesianGaussianMixture(3, max_iter=5, tol=0.0, **kw),
], ids=["GaussianMixture", "MixtureModel", "BayesianGaussianMixture"])
def test_the_same_partition_by_resp_init_or_by_init_params_gives_the_same_fit(make):
    z = _kmeanspp_partition(3, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        drawn = make(random_state=4).fit(X)
        given = make(resp_init=z).fit(X)
    np.testing.assert_array_equal(given.weights_, drawn.weights_)
    np.testing.assert_array_equal(given.predict_proba(X), drawn.predict_proba(X))


def test_kmeans_resp_init_starts_at_the_partition_means_and_takes_the_argmax():
    w, m, _ = _partition_parameters(X, LABELS, 2)
    by_hand = KMeans(2, init=m, max_iter=50).fit(X)
    one_hot_rows = KMeans(2, resp_init=Z, max_iter=50).fit(X)
    np.testing.assert_allclose(one_hot_rows.cluster_centers_, by_hand.cluster_centers_,
                               rtol=RTOL_SAME_START)
    # soft rows: each row to its argmax, so the same start as their one-hot rows
    soft = np.where(Z > 0, 0.7, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        soft_fit = KMeans(2, resp_init=soft, max_iter=1).fit(X)
        hard_fit = KMeans(2, resp_init=Z, max_iter=1).fit(X)
    np.testing.assert_array_equal(soft_fit.cluster_centers_, hard_fit.cluster_centers_)


@pytest.mark.filterwarnings("ignore:HiddenMarkovModel stopped after max_iter")
def test_hidden_markov_resp_init_is_the_m_step_of_the_labelling():
    lengths = np.array([100, 172])
    # the counted chain of the labelling, by hand
    first = LABELS[[0, 100]]
    startprob = np.bincount(first, minlength=2) / 2.0
    counts = np.zeros((2, 2))
    for s, e in ((0, 100), (100, N)):
        for a, b in zip(LABELS[s:e - 1], LABELS[s + 1:e]):
            counts[a, b] += 1
    transmat = counts / counts.sum(axis=1, keepdims=True)
    _, m, c = _partition_parameters(X, LABELS, 2)
    by_hand = HiddenMarkovModel(2, startprob_init=startprob, transmat_init=transmat,
                                params_init={"means": m, "covariances": c},
                                family_options={"reg_covar": 0.0},
                                max_iter=5, tol=0.0).fit(X, lengths)
    from_z = HiddenMarkovModel(2, resp_init=Z, family_options={"reg_covar": 0.0},
                               max_iter=5, tol=0.0).fit(X, lengths)
    for name in ("startprob_", "transmat_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(from_z, name), getattr(by_hand, name),
                                   rtol=RTOL_SAME_START, atol=1e-300, err_msg=name)


# --- against mclust -------------------------------------------------------------------
# Rscript -e 'library(mclust); z <- unmap(as.integer(faithful$eruptions > 3));
#   for (itmax in c(1, 6, 100000)) { fit <- me(faithful, "VVV", z,
#     control = emControl(tol = c(1e-14, sqrt(.Machine$double.eps)), itmax = c(itmax, Inf)));
#   cat(sprintf("%.17g", c(fit$loglik, fit$parameters$pro, fit$parameters$mean,
#                          fit$parameters$variance$sigma)), "\n") }'
# (mclust 6.0.0). me's iteration is an M-step then an E-step: itmax = t + 1 is
# emcore's max_iter = t (max_iter=0: the M-step from z); 100000: converged (10
# iterations, relative change 6e-16).
MCLUST_ME = {
    1: "-1130.2831827927557 0.35661764705882354 0.64338235294117652 2.0381340206185565 "
       "54.494845360824741 4.291302857142858 79.988571428571433 0.070482982038473779 "
       "0.4476037836114361 0.4476037836114361 33.755128068870249 0.16783446256326515 "
       "0.91282060408163279 0.91282060408163279 35.725583673469401",
    6: "-1130.2639601951998 0.35587340220193892 0.64412659779806081 2.0363897812513714 "
       "54.478529721090382 4.2896631469926634 79.968129372099327 0.06916872584316755 "
       "0.4351786156088151 0.4351786156088151 33.697357012655864 0.16996694554679753 "
       "0.94059036455548872 0.94059036455548872 36.045997915602641",
    100000: "-1130.2639601847427 0.35587285893729748 0.64412714106270252 "
            "2.0363884590775529 54.478516421804045 4.2896619770404527 79.9681152215651 "
            "0.069167676098376304 0.43516766137252849 0.43516766137252849 "
            "33.697282324067544 0.16996843073976325 0.94060925557805031 "
            "0.94060925557805031 36.046210600457755",
}


def _emcore_me(itmax):
    # converged: 50 iterations (tol=0 runs them all) reach the fixed point mclust's
    # 10 iterations reached to a relative change of 6e-16
    max_iter = 50 if itmax == 100000 else itmax - 1
    g = GaussianMixture(2, resp_init=Z, reg_covar=0.0, max_iter=max_iter, tol=0.0).fit(X)
    # mclust's layout: loglik, pro, mean (d x G, by column), sigma (d x d x G)
    return np.concatenate([[g.score(X) * N], g.weights_, g.means_.ravel(),
                           g.covariances_.ravel()])


# mclust stopped at a relative log-likelihood change of 6e-16: near the optimum the
# log-likelihood is quadratic in the parameters, so they are known to about
# sqrt(6e-16) = 2.4e-8 relative; 1e-7 for its converged parameters
RTOL_CONVERGED = 1e-7


def _check_me(reference: dict):
    for itmax, text in reference.items():
        ref = np.array(text.split(), dtype=np.float64)
        ours = _emcore_me(itmax)
        # the log-likelihood: sums of n = 272 terms rounded differently (n u relative)
        np.testing.assert_allclose(ours[0], ref[0], rtol=4 * N * U, err_msg=f"{itmax}")
        np.testing.assert_allclose(
            ours[1:], ref[1:], err_msg=f"itmax={itmax}",
            rtol=RTOL_CONVERGED if itmax == 100000 else RTOL_SAME_START)


def test_one_em_run_from_z_equals_mclust_me_vvv():
    _check_me(MCLUST_ME)


def _mclust_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    out = subprocess.run(["Rscript", "-e", "cat(requireNamespace('mclust', quietly=TRUE))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip().endswith("TRUE")


@pytest.mark.skipif(not _mclust_available(), reason="R with mclust is not installed")
def test_one_em_run_from_z_equals_mclust_me_vvv_rerun_in_r():
    script = ("suppressMessages(library(mclust)); "
              "z <- unmap(as.integer(faithful$eruptions > 3)); "
              "for (itmax in c(1, 6, 100000)) { fit <- me(faithful, 'VVV', z, "
              "control = emControl(tol = c(1e-14, sqrt(.Machine$double.eps)), "
              "itmax = c(itmax, Inf))); "
              "cat(format(itmax, scientific=FALSE), sprintf('%.17g', c(fit$loglik, fit$parameters$pro, "
              "fit$parameters$mean, fit$parameters$variance$sigma)), '\\n') }")
    out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    _check_me({int(r[0]): " ".join(r[1:]) for r in rows})


# --- validation -----------------------------------------------------------------------
def _estimators(**kw):
    return {
        "GaussianMixture": GaussianMixture(2, **kw),
        "MixtureModel": MixtureModel(2, **kw),
        "BayesianGaussianMixture": BayesianGaussianMixture(2, **kw),
        "KMeans": KMeans(2, **kw),
        "HiddenMarkovModel": HiddenMarkovModel(2, **kw),
    }


_near_one = Z.copy()
_near_one[3] = [0.5, 0.5 + 1e-12]
BAD_RESP = {
    "wrong rows": Z[:-1],
    "wrong columns": one_hot(LABELS, 3),
    "1-D": LABELS,
    "NaN": np.where(Z > 0, np.nan, 0.0),
    "negative": np.where(Z > 0, 1.5, -0.5),
    "row sum": Z * 0.9,
    "row sum off by 1e-12": _near_one,
    "empty component": np.column_stack([np.ones(N), np.zeros(N)]),
    "strings": np.full((N, 2), "a"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESP))
@pytest.mark.parametrize("est_name", sorted(_estimators()))
def test_bad_resp_init_is_refused_naming_it(est_name, case):
    est = _estimators(resp_init=BAD_RESP[case])[est_name]
    with pytest.raises(ValueError, match="'resp_init'"):
        est.fit(X)


def test_rows_normalised_in_float64_are_accepted():
    rng = np.random.default_rng(3)
    r = rng.random((N, 7))
    r /= r.sum(axis=1, keepdims=True)
    assert np.max(np.abs(r.sum(axis=1) - 1.0)) > 0       # the rounding is there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(7, resp_init=r, max_iter=2, covariance_type="diag").fit(X)


CONFLICTS = [
    ("GaussianMixture", {"init_params": "random"}),
    ("GaussianMixture", {"warm_start": True}),
    ("GaussianMixture", {"weights_init": [0.5, 0.5]}),
    ("GaussianMixture", {"means_init": np.zeros((2, 2))}),
    ("GaussianMixture", {"precisions_init": np.array([np.eye(2)] * 2)}),
    ("MixtureModel", {"init_params": "hc"}),
    ("MixtureModel", {"weights_init": [0.5, 0.5]}),
    ("MixtureModel", {"params_init": {"means": np.zeros((2, 2)),
                                      "covariances": np.array([np.eye(2)] * 2)}}),
    ("BayesianGaussianMixture", {"init_params": "random_from_data"}),
    ("BayesianGaussianMixture", {"warm_start": True}),
    ("KMeans", {"init": "random"}),
    ("KMeans", {"init": np.zeros((2, 2))}),
    ("HiddenMarkovModel", {"init_params": "random"}),
    ("HiddenMarkovModel", {"params_init": {"means": np.zeros((2, 2)),
                                           "covariances": np.array([np.eye(2)] * 2)}}),
]


@pytest.mark.parametrize("est_name,other", CONFLICTS,
                         ids=[f"{e}-{next(iter(o))}" for e, o in CONFLICTS])
def test_resp_init_with_another_start_raises_naming_both(est_name, other):
    est = _estimators(resp_init=Z)[est_name].set_params(**other)
    name = next(iter(other))
    with pytest.raises(ValueError, match=f"'resp_init'.*'{name}'"):
        est.fit(X)


def test_kmeans_soft_rows_must_give_every_cluster_an_argmax():
    soft = np.column_stack([np.full(N, 0.6), np.full(N, 0.4)])
    with pytest.raises(ValueError, match="'resp_init'.*cluster 1"):
        KMeans(2, resp_init=soft).fit(X)

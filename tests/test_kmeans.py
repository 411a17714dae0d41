"""k-means as classification EM: emcore.KMeans against scikit-learn, the hard and
tempered rules, and the k-means family's kernel."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import emcore
from emcore import blas
from emcore.engine import run_em
from emcore.exceptions import ConvergenceWarning
from emcore.registry import get_registry

U = np.finfo(np.float64).eps / 2
FIN = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _blobs(seed, n=3000, d=3, k=5, offset=0.0, spread=4.0):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.normal(size=(n, d)) + offset
    return X, X[rng.choice(n, k, replace=False)].copy()


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn()


# --- scikit-learn's KMeans as the oracle ----------------------------------------------

@pytest.mark.parametrize("seed,d,offset,tol", [(0, 3, 0.0, 0.0), (1, 1, 0.0, 1e-4),
                                               (2, 5, 1e3, 0.0), (3, 2, -50.0, 1e-4)])
def test_same_start_gives_scikit_learns_labels_centres_and_inertia(seed, d, offset, tol):
    from sklearn.cluster import KMeans
    X, init = _blobs(seed, d=d, offset=offset)
    ours = emcore.KMeans(init.shape[0], init=init, tol=tol, max_iter=300).fit(X)
    theirs = KMeans(init.shape[0], init=init, n_init=1, tol=tol, max_iter=300).fit(X)
    assert np.array_equal(ours.labels_, theirs.labels_)
    # Same partition, so the centres are the same means computed two ways: ours
    # shifted about the previous centre, theirs on data centred at the column
    # means; both within a few ulps of the exact mean. 1e-10 is the bar.
    assert np.allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10, atol=0)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.stop_reason_ == "tol" and ours.converged_
    assert np.array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-10)
    assert np.allclose(ours.transform(X[:50]), theirs.transform(X[:50]), rtol=1e-9)


def test_sample_weight_acts_as_repetition():
    X, init = _blobs(4, n=600)
    w = np.random.default_rng(0).integers(0, 3, size=X.shape[0]).astype(float)
    weighted = emcore.KMeans(5, init=init).fit(X, sample_weight=w)
    repeated = emcore.KMeans(5, init=init).fit(np.repeat(X, w.astype(int), axis=0))
    # Same partitions, so the same means and inertia up to the summation order of
    # the weighted vs the repeated rows: a few hundred ulps at most.
    assert np.allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-12)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-12)


def test_threads_do_not_change_a_single_bit():
    X, init = _blobs(5, n=40000, d=4)
    one = emcore.KMeans(5, init=init, n_jobs=1).fit(X)
    two = emcore.KMeans(5, init=init, n_jobs=2).fit(X)
    assert np.array_equal(one.cluster_centers_, two.cluster_centers_)
    assert np.array_equal(one.labels_, two.labels_)
    assert one.inertia_ == two.inertia_
    assert one.history_ == two.history_


# --- monotone objectives ---------------------------------------------------------------

@st.composite
def _kmeans_problems(draw):
    """Small data with duplicates, d = 1 and k = n among the cases."""
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, 3))
    # quarter-integers: exact ties and duplicates happen, and no column spread is
    # so tiny that check_data rejects it as underflowing (below 1e-140)
    distinct = draw(arrays(np.float64, (draw(st.integers(1, n)), d),
                           elements=st.integers(-400, 400).map(lambda v: v / 4.0)))
    rows = draw(arrays(np.intp, (n,), elements=st.integers(0, distinct.shape[0] - 1)))
    X = distinct[rows]
    k = draw(st.integers(1, n))
    return X, k, draw(st.integers(0, 2**16))


def _exact_inertia(X, centres):
    return float(np.sum(np.min(((X[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)))


@settings(max_examples=60)
@given(_kmeans_problems())
def test_inertia_never_increases(problem):
    X, k, seed = problem
    n, d = X.shape
    full = _quiet(lambda: emcore.KMeans(k, random_state=seed, tol=0.0, max_iter=8).fit(X))
    # The engine's chain: the classification log-likelihood (-inertia + const with
    # the default variance 1/2) never decreases beyond its derived tolerance.
    for it in full.history_:
        assert it.chain_holds(), it.chain_slacks()
        assert it.value_next >= it.value - it.tolerance
    # An independent check on exact distances, iteration by iteration. Labels come
    # from the GEMM identity, whose error per distance is <= 1.01 (d + 3) u
    # (|x~| + |mu~|)^2 <= 1.01 (d + 3) u (4 R)^2, R = max_i |x_i - mean(X)| (centres
    # lie in the hull, so |x - c|, |mu - c| <= 2 R); a wrong label costs at most two
    # such errors per row. Our exact inertia sums n d-term sums: (d + n) u relative.
    R = float(np.max(np.linalg.norm(X - X.mean(axis=0), axis=1)))
    label_slack = 2 * n * 1.01 * (d + 3) * U * 16 * R * R
    previous = None
    for t in range(1, full.n_iter_ + 1):
        fit = _quiet(lambda: emcore.KMeans(k, random_state=seed, tol=0.0,
                                           max_iter=t).fit(X))
        inertia = _exact_inertia(X, fit.cluster_centers_)
        if previous is not None:
            assert inertia <= previous + label_slack + 2 * (d + n) * U * previous
        previous = inertia


@settings(max_examples=40)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 3))
def test_classification_em_for_gaussians_never_decreases_its_objective(seed, k, d):
    rng = np.random.default_rng(seed)
    centres = 8.0 * rng.normal(size=(k, d))
    X = centres[rng.integers(k, size=40 * k)] + rng.normal(size=(40 * k, d))
    model = _quiet(lambda: emcore.MixtureModel(k, posterior="hard", random_state=seed,
                                               max_iter=20).fit(X))
    assert model.history_
    for it in model.history_:
        # penalised chain (reg_covar), tolerance derived in the engine
        assert it.chain_holds(), it.chain_slacks()
        assert it.value_next + it.penalty_change >= it.value - it.tolerance
        assert it.elbo_at_start == it.value      # entropy 0: E_q[a] is F itself
    q = model.predict_proba(X)
    assert set(np.unique(q)) <= {0.0, 1.0} and np.all(q.sum(axis=1) == 1.0)


def test_the_tolerance_needs_the_gemm_identity_term():
    # Two clusters 2e4 apart with unit spread, one centre in each. The log-densities
    # (used by the soft and tempered rules) go through the GEMM identity, whose
    # cancellation (|x~|^2 ~ 1e8 per row) dwarfs the rounding of their own
    # magnitude (~1 per row): the error is within the family's log_density_rounding
    # bound and larger than the rest of the chain tolerance, which alone would not
    # cover it. The hard rule's fused step takes each row's value from the exact
    # difference to its centre instead: there F carries no such error.
    from scipy.special import logsumexp
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(size=(2000, 2)) - 1e4, rng.normal(size=(2000, 2)) + 1e4])
    fam = get_registry().family("kmeans").factory(2, 2)
    means = np.array([[-1e4, -1e4], [1e4, 1e4]]) + 0.5
    exact_a = (-((X[:, None, :] - means[None]) ** 2).sum(-1) - np.log(np.pi)
               + np.log(0.5))                         # variance 1/2, d = 2, weights 1/2
    for rule_name, exact in (("soft", logsumexp(exact_a, axis=1).sum()),
                             ("hard", exact_a.max(axis=1).sum())):
        rule = get_registry().posterior_rule(rule_name).factory()
        res = run_em(X, fam, rule, np.full(2, 0.5), {"means": means}, max_iter=1, tol=0.0)
        assert res.chain_holds
        first = res.history[0]
        error = abs(first.value - exact)
        bound = fam.log_density_rounding(res.stats, {"means": means})
        rest = first.tolerance - bound - fam.log_density_rounding(res.stats, res.params)
        if rule_name == "soft":
            assert error <= bound
            assert error > 10 * rest, (error, rest)
        else:
            # exact differences, summed: (d + 2 + n) u relative at most
            assert error <= (2 + 2 + X.shape[0]) * U * np.abs(exact_a.max(axis=1)).sum()


# --- empty clusters, bad input ---------------------------------------------------------

def test_an_empty_cluster_moves_to_the_farthest_point_and_is_reported():
    X, _ = _blobs(6, n=500, d=2, k=3)
    init = np.array([X[0], X[1], [1e3, 1e3]])      # the third centre gets no rows
    model = emcore.KMeans(3, init=init).fit(X)
    assert 2 in model.history_[0].empty_components
    assert all(it.chain_holds() for it in model.history_)
    assert np.any(np.all(model.cluster_centers_[2] == X, axis=1)) or \
        model.n_iter_ > 1                        # relocated onto a data point
    assert np.bincount(model.labels_, minlength=3).min() > 0


@pytest.mark.parametrize("kwargs,X,match", [
    (dict(n_clusters=5), np.zeros((3, 2)) + np.arange(3)[:, None], "n_clusters"),
    (dict(n_clusters=0), np.ones((3, 2)), "n_clusters"),
    (dict(n_clusters=-1), np.ones((3, 2)), "n_clusters"),
    (dict(n_clusters=2), np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]), "'X'"),
    (dict(n_clusters=2, init=np.zeros((3, 2))), np.arange(8.0).reshape(4, 2), "'init'"),
    (dict(n_clusters=2, init=np.zeros((2, 3))), np.arange(8.0).reshape(4, 2), "'init'"),
    (dict(n_clusters=2, init="kmeans"), np.arange(8.0).reshape(4, 2), "'init'"),
    (dict(n_clusters=2, n_init=0), np.arange(8.0).reshape(4, 2), "'n_init'"),
    (dict(n_clusters=2, tol=-1.0), np.arange(8.0).reshape(4, 2), "'tol'"),
    (dict(n_clusters=2, max_iter=0), np.arange(8.0).reshape(4, 2), "'max_iter'"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(kwargs, X, match):
    with pytest.raises(ValueError, match=match):
        emcore.KMeans(**kwargs).fit(X)


def test_unfitted_and_wrong_width():
    with pytest.raises(emcore.NotFittedError):
        emcore.KMeans(2).predict(np.ones((2, 2)))
    model = emcore.KMeans(2, random_state=0).fit(np.arange(8.0).reshape(4, 2))
    with pytest.raises(ValueError, match="2 features"):
        model.predict(np.ones((2, 3)))


# --- the fitted centres are the model -------------------------------------------------

def _nearest(X, centres):
    return np.argmin(((X[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)


def test_editing_cluster_centers_changes_the_predictions():
    X, init = _blobs(4, n=300, d=2, k=3)
    model = emcore.KMeans(3, init=init, n_jobs=1).fit(X)
    model.cluster_centers_ = model.cluster_centers_[::-1] + 0.5     # a new model
    np.testing.assert_array_equal(model.predict(X), _nearest(X, model.cluster_centers_))
    model.cluster_centers_[0] = [100.0, 100.0]                     # in place too
    np.testing.assert_array_equal(model.predict(X), _nearest(X, model.cluster_centers_))
    model.cluster_centers_ = model.cluster_centers_[:2]            # fewer clusters
    assert model.transform(X).shape == (300, 2)
    model.cluster_centers_ = np.zeros((2, 3))
    with pytest.raises(ValueError, match="'cluster_centers_' attribute .* n_features_in_=2"):
        model.predict(X)
    model.cluster_centers_ = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match="'cluster_centers_' attribute .* finite"):
        model.score(X)


def test_set_params_after_fit_leaves_the_predictions_unchanged():
    X, init = _blobs(4, n=300, d=2, k=3)
    model = emcore.KMeans(3, init=init, n_jobs=1).fit(X)
    before = model.predict(X), model.transform(X), model.score(X)
    model.set_params(n_clusters=5, init="random")
    for got, want in zip((model.predict(X), model.transform(X), model.score(X)), before):
        np.testing.assert_array_equal(got, want)


def test_a_model_from_scikit_learns_centres_predicts_what_it_predicts():
    from sklearn.cluster import KMeans
    X, init = _blobs(5, n=400, d=3, k=4)
    theirs = KMeans(4, init=init, n_init=1).fit(X)
    ours = emcore.KMeans.from_parameters(theirs.cluster_centers_, n_jobs=1)
    assert ours.n_clusters == 4 and ours.n_features_in_ == 3
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    # the same distances computed two ways: rounding, far below the 1e-10 bar above
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-10)
    with pytest.raises(ValueError, match="'cluster_centers' parameter"):
        emcore.KMeans.from_parameters(np.zeros(3))


# --- tempered rule: soft EM tends to k-means ------------------------------------------

def test_soft_responsibilities_tend_to_the_kmeans_assignment_as_the_variance_shrinks():
    X, init = _blobs(8, n=400, d=2, k=4, spread=2.0)     # overlapping clusters
    hard = np.argmin(((X[:, None] - init[None]) ** 2).sum(-1), axis=1)
    distances = []
    for variance in (4.0, 1.0, 0.25, 1e-2, 1e-3, 1e-6):
        model = emcore.MixtureModel(4, family="kmeans", family_options={"variance": variance},
                                    max_iter=1)
        model = _quiet(lambda: model.fit(X))
        # the posterior at the given centres (not the fitted ones)
        model.params_ = {"means": init}
        model.weights_ = np.full(4, 0.25)
        q = model.predict_proba(X)
        distances.append(float(np.max(np.abs(q - np.eye(4)[hard]))))
    assert all(a >= b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0.5 and distances[-1] < 1e-12, distances


def test_tempered_rule_at_one_is_the_soft_rule_and_is_monotone_at_other_temperatures():
    from emcore.datasets import load_old_faithful
    X = load_old_faithful()
    soft = emcore.MixtureModel(2, random_state=0).fit(X)
    t1 = emcore.MixtureModel(2, posterior="tempered", posterior_options={"temperature": 1.0},
                             random_state=0).fit(X)
    assert [(a.value, a.elbo) for a in soft.history_] == [(b.value, b.elbo) for b in t1.history_]
    for T in (0.5, 3.0):
        hot = _quiet(lambda: emcore.MixtureModel(
            2, posterior="tempered", posterior_options={"temperature": T},
            random_state=0, max_iter=30).fit(X))
        assert all(it.chain_holds() for it in hot.history_)
    with pytest.raises(ValueError, match="temperature"):
        emcore.MixtureModel(2, posterior="tempered",
                            posterior_options={"temperature": 0.0}).fit(X)


def test_tempered_posterior_is_the_softmax_of_a_over_t():
    from scipy.special import log_softmax, logsumexp
    rule = get_registry().posterior_rule("tempered").factory(temperature=2.5)
    a = np.random.default_rng(3).normal(size=(7, 4)) * 10
    log_q, q, f, totals = rule.posterior(a)
    assert np.allclose(log_q, log_softmax(a / 2.5, axis=1), rtol=1e-13, atol=1e-13)
    assert np.allclose(f, 2.5 * logsumexp(a / 2.5, axis=1), rtol=1e-13)
    H = -np.sum(q * log_q, axis=1)
    assert np.allclose(f, np.sum(q * a, axis=1) + 2.5 * H, rtol=1e-12)   # f = max ELBO_T
    assert totals[2] == pytest.approx(2.5 * H.sum(), rel=1e-12)


def test_hard_rule_breaks_ties_by_the_lowest_index():
    rule = get_registry().posterior_rule("hard").factory()
    a = np.array([[1.0, 3.0, 3.0], [-np.inf, 0.0, 0.0], [2.0, 2.0, 2.0]])
    log_q, q, f, totals = rule.posterior(a)
    assert np.array_equal(np.argmax(q, axis=1), [1, 1, 0])
    assert np.array_equal(f, [3.0, 0.0, 2.0]) and totals[2] == 0.0
    with pytest.raises(ValueError, match="row 0"):
        rule.posterior(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("k", [3, 4, 7, 16, 17])
def test_the_fused_kernel_breaks_ties_by_the_lowest_index(k):
    # Duplicated centres tie exactly on every row (the same column of the DGEMM,
    # the same offset): the label must be the lowest index of the nearest
    # centre's copies, whichever vector lane (k mod 4) or scalar tail holds them.
    from emcore.engine import data_pass
    rng = np.random.default_rng(k)
    X = rng.normal(size=(3000, 5))
    copy_of = np.arange(k)
    copy_of[k // 2:] = rng.integers(0, k // 2, size=k - k // 2)  # later ones: copies
    means = rng.normal(size=(k, 5))[copy_of]
    fam = get_registry().family("kmeans").factory(k, 5)
    labels = np.empty(3000, dtype=np.intp)
    data_pass(X, fam, get_registry().posterior_rule("hard").factory(), np.full(k, 1 / k),
              {"means": means}, out_labels=labels)
    sq_dist = ((X[:, None, :] - means[None]) ** 2).sum(axis=2)
    assert np.array_equal(labels, np.argmin(sq_dist, axis=1))   # argmin: first index


def test_gemm_nt_matches_numpy():
    rng = np.random.default_rng(10)
    A, B = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    assert np.allclose(blas._py_gemm_nt(A, B, 0.5), 0.5 * A @ B.T, rtol=1e-14, atol=1e-15)


def test_the_fused_hard_step_equals_the_generic_route():
    # The k-means kernel's fused E-step + accumulation (the compiled pass with the
    # hard rule) against the generic route: log-densities, the hard rule's Python
    # face, then statistics from the one-hot weights. Same labels (blobs: no
    # near-ties), the same statistics up to the order of the same sums.
    from emcore.engine import data_pass
    X, init = _blobs(11, n=5000, d=3, k=4, offset=500.0)
    w = np.random.default_rng(1).random(X.shape[0])
    fam = get_registry().family("kmeans").factory(4, 3)
    rule = get_registry().posterior_rule("hard").factory()
    params = {"means": init}
    labels = np.empty(X.shape[0], dtype=np.intp)
    values = np.empty(X.shape[0])
    fused = data_pass(X, fam, rule, np.full(4, 0.25), params, sample_weight=w,
                      out_labels=labels, out_row_value=values)
    log_q, q, f, totals = rule.posterior(fam.log_density(X, params) + np.log(0.25))
    assert np.array_equal(labels, np.argmax(q, axis=1))
    # f from the exact difference vs through the GEMM identity: within the
    # family's bound per row (sum over rows <= log_density_rounding)
    assert np.sum(np.abs(values - f)) <= fam.log_density_rounding(fused.stats, params)
    generic = fam.chunk_stats(X, q * w[:, None])
    assert np.allclose(fused.stats.weight, generic.weight, rtol=1e-13)
    assert np.allclose(fam.m_step(fused.stats, params)["means"],
                       fam.m_step(generic, params)["means"], rtol=1e-12)
    assert np.allclose(fused.stats.within_scatter(init), generic.within_scatter(init),
                       rtol=1e-10)


def test_gemm_nt_accumulates_with_beta():
    rng = np.random.default_rng(12)
    A, B, C = rng.normal(size=(6, 3)), rng.normal(size=(4, 3)), rng.normal(size=(6, 4))
    assert np.allclose(blas._py_gemm_nt(A, B, 2.0, 1.0, C), 2.0 * A @ B.T + C, rtol=1e-14,
                       atol=1e-14)
    nan = np.full((6, 4), np.nan)
    assert np.allclose(blas._py_gemm_nt(A, B, 1.0, 0.0, nan), A @ B.T, rtol=1e-14,
                       atol=1e-14)   # beta = 0 ignores C, NaN included


def test_both_estimators_predict_with_the_fitted_rule():
    # GaussianMixture(posterior='hard') and MixtureModel(posterior='hard') are the
    # same fit; both give the hard rule's (one-hot) posterior, not the soft one.
    from emcore.datasets import load_old_faithful
    X = load_old_faithful()
    gm = emcore.GaussianMixture(2, posterior="hard", random_state=0).fit(X)
    mm = emcore.MixtureModel(2, posterior="hard", random_state=0).fit(X)
    assert np.array_equal(gm.predict_proba(X), mm.predict_proba(X))
    assert set(np.unique(gm.predict_proba(X))) == {0.0, 1.0}
    assert np.array_equal(gm.predict(X), mm.predict(X))


@pytest.mark.parametrize("k", [1, 3, 4, 5, 8, 17])
def test_soft_posterior_kernel_matches_scipy_over_the_whole_exponent_range(k):
    # The compiled soft rule takes exp on 4-entry vectors (k = 4, 8: vectors only;
    # 5, 17: vectors and a scalar tail; 1, 3: scalar) by its own range reduction
    # and series, with libm below -708.39. Entries span [-800, 0] below each row's
    # maximum, with -inf, so normal, subnormal and zero weights all occur.
    # Tolerance: e = exp(b - m) within 2 ulps (libm's within 1), the row sum s
    # adds at most k roundings, the division one: q within (k + 3) u relative of
    # scipy's softmax (the same b - m, rounded the same way). log q =
    # (b - m) - log s: the subtraction's rounding u |log q|, log s within
    # (k + 2) u absolute. Tested at twice these; a series cut two terms early
    # (r^11 / 11!) breaks the q bound.
    from scipy.special import log_softmax, softmax
    rng = np.random.default_rng(k)
    a = -800.0 * rng.random((4000, k)) ** 3
    a[rng.random(a.shape) < 0.05] = -np.inf
    a[np.arange(4000), rng.integers(0, k, 4000)] = 0.0      # a finite maximum
    a += rng.normal(size=(4000, 1)) * 50.0                    # row offsets
    rule = get_registry().posterior_rule("soft").factory()
    log_q, q, f, totals = rule.posterior(a.copy())
    u = np.finfo(float).eps / 2
    expect = log_softmax(a, axis=1)
    finite = np.isfinite(expect)
    assert np.array_equal(finite, np.isfinite(log_q))
    assert np.all(np.abs(log_q[finite] - expect[finite])
                  <= 2 * u * (np.abs(expect[finite]) + (k + 2)))
    p = softmax(a, axis=1)
    normal = p >= np.finfo(float).tiny
    assert np.all(np.abs(q[normal] - p[normal]) <= 2 * (k + 3) * u * p[normal])
    assert np.all(q[~normal] <= np.finfo(float).tiny)

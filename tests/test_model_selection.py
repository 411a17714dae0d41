"""Model selection: ICL, and the n_components x covariance_type grid (select_model).

All criteria are lower-is-better (scikit-learn's sign). Tolerances: BIC and ICL
are sums over n <= 400 rows computed in a different order from scikit-learn's,
so they agree to n u |L| relative (~1e-13); 1e-10 leaves room for the
conditioning of the covariances.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import emcore.model_selection as ms
from emcore import GaussianMixture, NotFittedError
from emcore.exceptions import ConvergenceWarning
from emcore.model_selection import ModelSelection, icl, select_model

from _strategies import gaussian_mixtures, sample_mixture

RTOL = 1e-10


def _fit(X, k, **kwargs):
    kwargs.setdefault("random_state", 0)
    kwargs.setdefault("n_jobs", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(k, **kwargs).fit(X)


def _blobs(seed, n_per, centres, scale=1.0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, scale, (n_per, len(c))) for c in centres])
    return X[rng.permutation(X.shape[0])]


@pytest.fixture(scope="module")
def three_clusters():
    """Three well-separated 2-D clusters with different shapes (150 rows)."""
    rng = np.random.default_rng(7)
    covs = [np.array([[1.0, 0.4], [0.4, 0.6]]), np.diag([0.5, 1.2]), np.eye(2) * 0.8]
    centres = [(0.0, 0.0), (9.0, 0.0), (4.0, 8.0)]
    X = np.concatenate([rng.multivariate_normal(c, S, 50) for c, S in zip(centres, covs)])
    return X[rng.permutation(X.shape[0])]


@pytest.fixture(scope="module")
def overlapping():
    """Two overlapping clusters: many rows with fuzzy posteriors."""
    return _blobs(3, 100, [(0.0, 0.0), (2.0, 1.0)])


@pytest.fixture(scope="module")
def grid(three_clusters):
    # the generating family ('full'): with every type in the grid, BIC may prefer
    # more components of a simpler type for the correlated cluster
    return select_model(three_clusters, n_components=range(1, 6), n_init=2,
                        random_state=0, n_jobs=1, covariance_types="full")


def _log_max_q(sk_or_em, X):
    return np.log(np.max(sk_or_em.predict_proba(X), axis=1))


# --- icl --------------------------------------------------------------------------

@settings(max_examples=15)
@given(mixture=gaussian_mixtures(max_k=3, max_d=3, separation=4.0),
       k=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_icl_is_never_below_bic(mixture, k, seed):
    X = sample_mixture(mixture, 60 * k, seed)
    gm = _fit(X, k, random_state=seed)
    bic, value = gm.bic(X), icl(gm, X)
    assert value >= bic
    # the difference is the classification penalty -2 sum_i log max_k q_ik
    penalty = -2.0 * math.fsum(_log_max_q(gm, X))
    assert value - bic == pytest.approx(penalty, rel=1e-9, abs=1e-9 * abs(bic))
    w = np.random.default_rng(seed).uniform(0.0, 3.0, X.shape[0])
    assert icl(gm, X, sample_weight=w) >= -2.0 * np.dot(w, gm.score_samples(X)) + \
        gm._n_parameters() * np.log(w.sum())


def test_icl_equals_bic_exactly_when_the_posterior_is_one_hot():
    # 200 standard deviations apart: every other component's posterior is below
    # exp(-2000) << u, so log max_k q_ik rounds to exactly 0 in every row
    centres = [(0.0, 0.0), (200.0, 0.0), (0.0, 200.0)]
    X = _blobs(1, 40, centres)
    gm = _fit(X, 3, means_init=np.array(centres))
    assert np.all(np.max(gm.predict_proba(X), axis=1) == 1.0)
    assert icl(gm, X) == gm.bic(X)


def test_icl_matches_scikit_learn_with_the_same_parameters(overlapping):
    X = overlapping
    gm = _fit(X, 2)
    sk = SkGaussianMixture(2, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = gm.weights_, gm.means_, gm.covariances_
    sk.precisions_cholesky_, sk.precisions_ = gm.precisions_cholesky_, gm.precisions_
    sk.n_features_in_ = X.shape[1]
    expected = sk.bic(X) - 2.0 * np.sum(_log_max_q(sk, X))
    assert expected - sk.bic(X) > 10.0          # a real classification penalty
    assert icl(gm, X) == pytest.approx(expected, rel=RTOL)
    # the same function on scikit-learn's estimator (bic + predict_proba)
    assert icl(sk, X) == pytest.approx(expected, rel=1e-15)


def test_icl_with_integer_weights_is_icl_of_the_repeated_rows(overlapping):
    X = overlapping
    gm = _fit(X, 2)
    w = np.random.default_rng(0).integers(0, 4, X.shape[0])
    repeated = np.repeat(X, w, axis=0)
    assert icl(gm, X, sample_weight=w) == pytest.approx(icl(gm, repeated), rel=RTOL)
    assert icl(gm, X, sample_weight=np.ones(X.shape[0])) == pytest.approx(icl(gm, X),
                                                                           rel=1e-14)


def test_icl_arguments(overlapping):
    with pytest.raises(NotFittedError):
        icl(GaussianMixture(2), overlapping)
    with pytest.raises(ValueError, match="'model' parameter of icl"):
        icl(object(), overlapping)
    gm = _fit(overlapping, 2)
    with pytest.raises(ValueError, match="'sample_weight'"):
        icl(gm, overlapping, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="'X' parameter"):
        icl(gm, overlapping[:, :1])


def test_every_mixture_estimator_has_icl(overlapping):
    # icl lives on the estimators' base, next to bic and aic (issue 14 item 5)
    from emcore import MixtureModel
    X = overlapping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mm = MixtureModel(2, random_state=0).fit(X)
    penalty = -2.0 * math.fsum(_log_max_q(mm, X))
    assert penalty > 10.0
    assert mm.icl(X) - mm.bic(X) == pytest.approx(penalty, rel=1e-9)
    assert icl(mm, X) == mm.icl(X)
    w = np.random.default_rng(0).integers(0, 4, X.shape[0])
    assert mm.icl(X, sample_weight=w) == pytest.approx(mm.icl(np.repeat(X, w, axis=0)),
                                                       rel=RTOL)


# --- the grid ---------------------------------------------------------------------

def test_grid_picks_three_components_by_bic(grid, three_clusters):
    X = three_clusters
    assert isinstance(grid, ModelSelection)
    assert grid.criterion == "bic"
    assert grid.best_params == {"n_components": 3, "covariance_type": "full"}
    assert [(r.n_components, r.covariance_type) for r in grid.table] == \
        [(k, "full") for k in range(1, 6)]
    d = X.shape[1]
    for r in grid.table:
        assert r.ok and r.stop_reason in ("tol", "max_iter")
        assert all(math.isfinite(x) for x in (r.log_likelihood, r.bic, r.aic, r.icl))
        k = r.n_components
        assert r.n_parameters == (k - 1) + k * d + k * d * (d + 1) // 2
        assert r.icl >= r.bic
    best = grid.best_model
    assert best.n_components == 3 and grid.best.n_components == 3
    # the table's numbers are the estimator's, bit for bit
    assert grid.best.bic == best.bic(X) and grid.best.aic == best.aic(X)
    assert grid.best.log_likelihood == pytest.approx(best.score(X) * X.shape[0], rel=1e-14)
    assert grid.best.bic == min(r.bic for r in grid.table)
    text = str(grid)
    assert "lower is better" in text and "BIC" in text
    assert "* best by BIC: n_components=3, covariance_type='full'" in text
    assert len([line for line in text.splitlines() if "*" in line]) == 2  # cell + legend


def test_grid_picks_three_components_by_icl_and_the_table_does_not_depend_on_it(
        grid, three_clusters):
    by_icl = select_model(three_clusters, n_components=range(1, 6), n_init=2,
                          covariance_types="full",
                          random_state=0, n_jobs=1, criterion="icl")
    assert by_icl.criterion == "icl"
    assert by_icl.best_params == {"n_components": 3, "covariance_type": "full"}
    assert by_icl.best.icl == min(r.icl for r in by_icl.table)
    # same random_state: the same fits, whatever the criterion (reproducible table)
    assert by_icl.table == grid.table
    assert "ICL" in by_icl.to_text() and "BIC" in by_icl.to_text("bic")
    assert grid.top(1, "icl")[0] == by_icl.best


def test_same_random_state_same_table(three_clusters):
    X = three_clusters[:90]
    kw = dict(n_components=[1, 2, 4], n_init=2, n_jobs=1, covariance_types="full")
    a = select_model(X, random_state=np.random.default_rng(11), **kw)
    b = select_model(X, random_state=np.random.default_rng(11), **kw)
    assert a.table == b.table
    np.testing.assert_array_equal(a.best_model.means_, b.best_model.means_)
    # a cell's seed depends on random_state and n_components alone, so a cell
    # fits the same inside any grid, and its recorded seed refits it
    row = a.table[2]
    alone = select_model(X, random_state=5, covariance_types="full",
                         n_components=4, n_init=2, n_jobs=1).table[0]
    again = select_model(X, random_state=5, n_components=[4, 1], n_init=2,
                         n_jobs=1, covariance_types="full").table[1]
    assert alone == again
    refit = _fit(X, 4, n_init=2, random_state=row.random_state)
    assert refit.bic(X) == row.bic


def test_cells_are_fitted_side_by_side_and_the_table_does_not_depend_on_n_jobs(
        three_clusters, monkeypatch):
    # n_jobs=2: the cells run on two threads, each fit with one (its share); the
    # table and the chosen model are those of the one-thread grid, bit for bit
    X = three_clusters[:120]
    kw = dict(n_components=[1, 2, 3], covariance_types=["VVV", "EII", "VEV"],
              n_init=2, random_state=3)
    serial = select_model(X, n_jobs=1, **kw)
    threads, jobs = set(), set()
    fit = GaussianMixture.fit

    def recording_fit(self, *args, **kwargs):
        import threading
        import time
        threads.add(threading.get_ident())
        jobs.add(self.n_jobs)
        time.sleep(0.02)          # both workers take a cell, even on a busy machine
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(GaussianMixture, "fit", recording_fit)
    parallel = select_model(X, n_jobs=2, **kw)
    assert len(threads) == 2 and jobs == {1}
    assert parallel.table == serial.table
    assert parallel.best_params == serial.best_params
    np.testing.assert_array_equal(parallel.best_model.means_, serial.best_model.means_)
    # the criteria (one pass per cell) are the estimator's methods', bit for bit
    best = parallel.best_model
    w = np.random.default_rng(0).integers(0, 3, X.shape[0]).astype(float)
    weighted = select_model(X, n_jobs=2, sample_weight=w, **kw)
    for grid, weights in ((parallel, None), (weighted, w)):
        best = grid.best_model
        assert (grid.best.bic, grid.best.aic, grid.best.icl) == (
            best.bic(X, sample_weight=weights), best.aic(X, sample_weight=weights),
            best.icl(X, sample_weight=weights))
    # a callback (called from the fit as it runs) keeps the cells on the caller's thread
    threads.clear()
    select_model(X, n_jobs=2, callback=lambda record: None, **kw)
    assert len(threads) == 1


def test_an_hc_grid_agglomerates_once(three_clusters, monkeypatch):
    # every cell's hc start cuts the same tree (at most 2000 rows: no random subset,
    # so one tree for the grid); computed once, and the table is that of
    # recomputing it per cell
    import emcore._hc as hc
    X = three_clusters[:100]
    kw = dict(n_components=[2, 3], covariance_types=["VVV", "EEE", "VII"],
              init_params="hc", n_init=1, random_state=0, n_jobs=1)
    calls = []
    agglomerate = hc._agglomeration

    def counting(*args, **kwargs):
        calls.append(None)
        return agglomerate(*args, **kwargs)
    monkeypatch.setattr(hc, "_agglomeration", counting)
    shared = select_model(X, **kw)
    assert len(calls) == 1
    import contextlib
    monkeypatch.setattr(ms, "shared_agglomerations", contextlib.nullcontext)
    calls.clear()
    assert select_model(X, **kw).table == shared.table
    assert len(calls) == 6


def test_degenerate_cells_are_recorded_and_never_chosen():
    # 10 distinct points, each three times: with reg_covar=0 any component holding
    # fewer than 3 distinct points has a singular covariance
    P = np.random.default_rng(0).normal(0.0, 5.0, (10, 2))
    X = np.repeat(P, 3, axis=0)
    result = select_model(X, n_components=[1, 8, 40], n_init=2, random_state=0,
                          n_jobs=1, reg_covar=0.0, covariance_types="full")
    assert result.skipped_n_components == (40,)
    assert [r.n_components for r in result.table] == [1, 8]
    bad = result.table[1]
    assert not bad.ok and bad.error.startswith("DegenerateComponentError")
    assert math.isnan(bad.bic) and math.isnan(bad.icl) and not bad.converged
    assert bad.n_parameters == 7 + 8 * 2 + 8 * 3
    assert result.best_params["n_components"] == 1
    assert "failed" in str(result) and "DegenerateComponentError" in str(result)
    with pytest.raises(ValueError, match="could not fit any cell.*DegenerateComponentError"):
        select_model(X, n_components=[8, 9], n_init=1, random_state=0, n_jobs=1,
                     reg_covar=0.0, covariance_types="full")


def test_spike_fits_are_not_chosen_unless_asked():
    # issue 15 item 4: three well-separated blobs of 20 points. With the default
    # reg_covar, a component on a single row has variance reg_covar and a
    # likelihood reg_covar sets; BIC chose 7 components, three of them such spikes.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (20, 2))
                        for c in [(0.0, 0.0), (10.0, 0.0), (5.0, 9.0)]])
    kw = dict(n_components=range(1, 8), covariance_types="spherical", random_state=0,
              n_jobs=1)
    result = select_model(X, **kw)
    assert result.best_params == {"n_components": 3, "covariance_type": "spherical"}
    assert not result.best.spike
    spikes = [r for r in result.table if r.spike]
    assert spikes and all(r.ok and math.isfinite(r.bic) for r in spikes)
    text = str(result)
    assert "spike" in text and "include_spikes=True" in text
    # asked for, spike fits compete: the lowest BIC wins, spike or not (which one
    # wins depends on the local optima the starts reach)
    with_spikes = select_model(X, include_spikes=True, **kw)
    assert with_spikes.table == result.table
    assert with_spikes.best.bic == min(r.bic for r in result.table if r.ok)
    # a spike fit's spike components are single rows (n_k = 1 up to the posteriors'
    # tails): too few for a variance. A cell's seed comes from random_state and
    # n_components, so the grid of that one cell gives the same fit, and its model
    alone = select_model(X, include_spikes=True,
                         **{**kw, "n_components": [spikes[0].n_components]})
    best = alone.best
    assert best == spikes[0] and best.spike
    model = alone.best_model
    n_k = model.weights_ * X.shape[0]
    np.testing.assert_allclose(n_k[list(best.spike_components)], 1.0, atol=1e-3)
    assert np.all(model.covariances_[list(best.spike_components)] <= 2 * model.reg_covar)
    assert np.all(np.delete(n_k, best.spike_components) >= 2.0)
    with pytest.raises(ValueError, match="'include_spikes' parameter of select_model"):
        select_model(X, include_spikes="yes", **kw)


def test_a_grid_of_spikes_only_says_so():
    # a constant column: every 'diag' component's variance there is reg_covar alone
    X = np.random.default_rng(4).normal(size=(40, 2))
    X[:, 1] = 3.0
    kw = dict(n_components=[1, 2], covariance_types="diag", n_init=1, random_state=0,
              n_jobs=1)
    with pytest.raises(ValueError, match="without a failure or a spike.*"
                                         "include_spikes=True.*spike component"):
        select_model(X, **kw)
    result = select_model(X, include_spikes=True, **kw)
    assert all(r.spike_components == tuple(range(r.n_components)) for r in result.table)
    lines = result.to_text().splitlines()
    assert result.best.spike and lines[2].endswith("*") and lines[3].endswith("s")


def test_cells_with_too_few_rows_per_component_are_skipped_with_a_reason(
        monkeypatch):
    # issue 15 item 7: select_model(range(1, 60)) on 60 rows fitted 236 cells in
    # 143 s and chose 58 'tied' components. 12 rows in 2-D: 'full' needs d + 1 = 3
    # rows per component (k <= 4), the other types 2 (k <= 6).
    X = np.random.default_rng(1).normal(size=(12, 2))
    fitted = []
    fit = ms.GaussianMixture.fit

    def counting_fit(self, *args, **kwargs):
        fitted.append((self.n_components, self.covariance_type))
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(ms.GaussianMixture, "fit", counting_fit)
    result = select_model(X, n_components=range(3, 9), n_init=1, random_state=0,
                          n_jobs=1)
    types = ("full", "tied", "diag", "spherical")
    cells = [(k, t) for k in range(3, 9) for t in types
             if k <= (4 if t == "full" else 6)]
    assert fitted == cells
    assert [(r.n_components, r.covariance_type) for r in result.table] == cells
    assert [(k, t) for k, t, _ in result.skipped_cells] == \
        [(k, t) for k in range(3, 9) for t in types if (k, t) not in cells]
    assert result.skipped_n_components == (7, 8)
    assert dict(((k, t), why) for k, t, why in result.skipped_cells)[(5, "full")] == \
        "'full' needs d + 1 = 3 rows per component: 12 rows allow at most 4"
    text = str(result)
    assert "Not fitted (too few rows" in text and "allow at most 6" in text
    # every skipped cell gets a component on fewer rows than its covariance needs:
    # fitted anyway (include_spikes=True), they are spikes
    fitted.clear()
    spiky = select_model(X, n_components=[5, 7], covariance_types=("full", "diag"),
                         n_init=1, random_state=0, n_jobs=1, include_spikes=True)
    assert fitted == [(5, "full"), (5, "diag"), (7, "full"), (7, "diag")]
    assert all(r.spike for r in spiky.table if r.ok)
    with pytest.raises(ValueError, match="'n_components'.*at most 4 for 'full'"):
        select_model(X, n_components=[9, 10], n_init=1, covariance_types="full")


def test_sample_weight_in_the_grid(three_clusters):
    X = three_clusters[:60]
    w = np.random.default_rng(2).integers(1, 3, X.shape[0]).astype(float)
    result = select_model(X, n_components=[1, 2], n_init=1, random_state=0, n_jobs=1,
                          sample_weight=w)
    model = result.best_model
    assert result.best.icl == icl(model, X, sample_weight=w)
    assert result.best.log_likelihood == pytest.approx(
        np.dot(w, model.score_samples(X)), rel=1e-14)


# --- argument validation -----------------------------------------------------------

@pytest.fixture
def no_fit(monkeypatch):
    """Fail if any model is fitted: validation must come first."""
    def fit(self, *args, **kwargs):
        raise AssertionError("fitted before the arguments were validated")
    monkeypatch.setattr(ms.GaussianMixture, "fit", fit)


@pytest.mark.parametrize("kwargs, match", [
    (dict(criterion="BIC"), "'criterion' parameter of select_model"),
    (dict(criterion="loglik"), "'criterion' parameter of select_model"),
    (dict(criterion=None), "'criterion'"),
    (dict(n_components=[]), "'n_components'.*empty"),
    (dict(n_components=range(1, 1)), "'n_components'.*empty"),
    (dict(n_components=0), "'n_components'"),
    (dict(n_components=[1, 0]), "'n_components'"),
    (dict(n_components=[2.5]), "'n_components'"),
    (dict(n_components=[True]), "'n_components'"),
    (dict(n_components="3"), "'n_components'"),
    (dict(n_components=None), "'n_components'"),
    (dict(n_components=[100, 200]), "'n_components'.*at most 10 for 'full', 15 for"),
    (dict(covariance_types=[]), "'covariance_types'.*empty"),
    (dict(covariance_types=["full", 1]), "'covariance_types'"),
    (dict(covariance_types="diagonal"), "'covariance_types'.*'diagonal'"),
    (dict(covariance_types=("full", "sphere")), "'covariance_types'.*'sphere'"),
    (dict(n_init=0), "'n_init'"),
    (dict(random_state=-1), "'random_state'"),
    (dict(random_state="seed"), "'random_state'"),
    (dict(sample_weight=np.ones(3)), "'sample_weight'"),
    (dict(means_init=np.zeros((2, 2))), "'means_init'"),
    (dict(colour="red"), "'colour'"),
    (dict(tol=-1.0), "'tol'"),
])
def test_bad_arguments_raise_before_fitting(no_fit, kwargs, match):
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match=match):
        select_model(X, **kwargs)


def test_bad_x_raises(no_fit):
    with pytest.raises(ValueError, match="'X' parameter of select_model"):
        select_model(np.array([[0.0, np.nan]]))


def test_single_values_and_duplicates_are_accepted(three_clusters):
    X = three_clusters[:40]
    result = select_model(X, n_components=[2, 1, 2], covariance_types="full", n_init=1,
                          random_state=0, n_jobs=1)
    assert [(r.n_components, r.covariance_type) for r in result.table] == \
        [(1, "full"), (2, "full")]
    single = select_model(X, n_components=np.int64(2), covariance_types=("full", "full"),
                          n_init=1, random_state=0, n_jobs=1)
    assert single.table == result.table[1:]


def test_the_default_grid_tries_every_type_and_finds_three_round_clusters():
    rng = np.random.default_rng(13)
    centres = [(0.0, 0.0), (8.0, 0.0), (4.0, 7.0)]
    X = np.concatenate([rng.normal(c, 0.7, (60, 2)) for c in centres])
    result = select_model(X, n_components=range(1, 6), n_init=2, random_state=0, n_jobs=1)
    assert {r.covariance_type for r in result.table} == {"full", "tied", "diag", "spherical"}
    assert len(result.table) == 5 * 4
    assert result.best_params["n_components"] == 3
    # round clusters of equal size: the simplest adequate type wins by BIC
    assert result.best_params["covariance_type"] in ("spherical", "diag", "tied")


def test_an_hc_grid_above_the_subset_size_cuts_one_subset(monkeypatch):
    # issue 20: above mclust's `subset` rows, mclust's Mclust() draws one random
    # subset and cuts every G and model from its one tree; so does the grid (it
    # drew one subset per n_components, each G having its own seed). The subset
    # size is lowered to 60 so that the test agglomerates 60 rows, not 2000.
    import emcore._hc as hc
    monkeypatch.setattr(hc, "SUBSET", 60)
    X = _blobs(3, 50, [(0.0, 0.0), (6.0, 0.0), (3.0, 5.0)])          # 150 rows
    seen = []
    agglomerate = hc._agglomerate

    def recording(data, *args, **kwargs):
        seen.append(data.copy())
        return agglomerate(data, *args, **kwargs)
    monkeypatch.setattr(hc, "_agglomerate", recording)
    kw = dict(covariance_types=["VVV", "EEE", "VII"], init_params="hc", n_init=1,
              random_state=0)
    grid = select_model(X, n_components=[2, 3, 4], n_jobs=1, **kw)
    assert len(seen) == 1 and seen[0].shape[0] == 60
    # the subset is a function of random_state alone: a part of the grid, fitted
    # on two threads, gives the same rows
    part = select_model(X, n_components=[3], n_jobs=2, **kw)
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1])
    assert part.table == tuple(r for r in grid.table if r.n_components == 3)
    # each cell's start cut from that subset: its first M-step is the M-step on
    # the partition the grid's tree gives at G
    with hc.shared_agglomerations(ms._hc_subset_seed(ms._root_entropy(0))), \
            hc.grid_cell():
        labels = hc.hc_labels(X, 3)
    rows = labels >= 0
    assert np.array_equal(X[rows], seen[0])
    first = GaussianMixture(3, covariance_type="EEE", resp_init=np.eye(3)[labels[rows]],
                            max_iter=0, n_jobs=1).fit(X[rows])
    cell = GaussianMixture(3, covariance_type="EEE", init_params="hc", max_iter=0,
                           n_jobs=1, random_state=part.table[1].random_state)
    with hc.shared_agglomerations(ms._hc_subset_seed(ms._root_entropy(0))), \
            hc.grid_cell():
        cell.fit(X)
    # the same 60 rows' weighted sums, in another order (zero-weight rows in
    # between): they differ by at most 60 u max|x| (u = eps / 2)
    np.testing.assert_allclose(cell.means_, first.means_, rtol=0,
                               atol=60 * np.finfo(float).eps * np.abs(X).max())
    # n_init starts: the grid's s-th subset for every cell's s-th start
    seen.clear()
    select_model(X, n_components=[2, 3], n_jobs=1, **{**kw, "n_init": 2})
    assert len(seen) == 2 and not np.array_equal(seen[0], seen[1])


def test_the_criteria_of_each_cell_take_one_pass(three_clusters, monkeypatch):
    # a cell's L, BIC, AIC and ICL come from two passes over X (was four: at
    # (1e5, 8) a sixth of the grid's passes), and are still the estimator's
    # methods' values bit for bit, weighted or not, for every cell
    X = three_clusters
    w = np.random.default_rng(1).integers(0, 3, X.shape[0]).astype(float)
    calls = []
    evaluate = GaussianMixture._evaluate

    def counting(self, *args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("method"))
        return evaluate(self, *args, **kwargs)
    monkeypatch.setattr(GaussianMixture, "_evaluate", counting)
    kw = dict(n_components=[1, 3], covariance_types=["VVV", "EVE", "VII"], n_init=1,
              random_state=0, n_jobs=1)
    for weights in (None, w):
        calls.clear()
        grid = select_model(X, sample_weight=weights, **kw)
        assert len(calls) == 2 * len(grid.table) == 12
        monkeypatch.setattr(GaussianMixture, "_evaluate", evaluate)
        for row in grid.table:
            model = GaussianMixture(row.n_components, covariance_type=row.covariance_type,
                                    n_init=1, random_state=row.random_state,
                                    n_jobs=1).fit(X, sample_weight=weights)
            rows_loglik = model.score_samples(X)
            loglik = float(np.sum(rows_loglik) if weights is None
                           else np.dot(weights, rows_loglik))
            assert (row.log_likelihood, row.bic, row.aic, row.icl) == (
                loglik, model.bic(X, sample_weight=weights),
                model.aic(X, sample_weight=weights), model.icl(X, sample_weight=weights))
        monkeypatch.setattr(GaussianMixture, "_evaluate", counting)


def test_threads_take_the_largest_cells_first():
    # the longest fits first (the threads end together), the short G = 1 cells
    # (no hc agglomeration) right after the first, while its start agglomerates
    cells = [(k, t, 0) for k in (1, 2, 3) for t in ("EII", "VVV")]
    order = [cells[i][:2] for i in ms._submission_order(cells)]
    assert order == [(3, "EII"), (1, "EII"), (1, "VVV"), (3, "VVV"), (2, "EII"),
                     (2, "VVV")]
    assert sorted(ms._submission_order(cells[2:])) == list(range(4))

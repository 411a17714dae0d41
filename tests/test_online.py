"""Online (stepwise) EM: GaussianMixture.partial_fit (emcore/_online.py)."""

import warnings

import numpy as np
import pytest

import emcore
from emcore._online import step_size
from emcore.registry import get_registry

MEANS = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
COVS = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, 0.0], [0.0, 1.2]],
                 [[0.8, -0.2], [-0.2, 0.8]]])
WEIGHTS = np.array([0.5, 0.3, 0.2])


def _stream(n, rng):
    z = rng.choice(3, size=n, p=WEIGHTS)
    L = np.linalg.cholesky(COVS)
    return MEANS[z] + np.einsum("nij,nj->ni", L[z], rng.normal(size=(n, 2)))


def test_step_sizes():
    assert step_size(0, 0.6) == 1.0
    assert step_size(1, 0.6) == pytest.approx(3 ** -0.6)
    rho = np.array([step_size(t, 0.6) for t in range(1, 1000)])
    assert np.all(np.diff(rho) < 0)


@pytest.mark.parametrize("name,fields", [
    ("gaussian", ("weight", "mean", "residual", "scatter")),
    ("kmeans", ("weight", "ref", "shift_sum", "scatter", "far_dist", "far_point"))])
def test_scaled_stats_merge_like_weights(name, fields):
    # scaling the statistics by c = computing them with every row weight times c
    # (c = 1/4, a power of two: the reference points come out bitwise the same)
    rng = np.random.default_rng(0)
    X = _stream(300, rng)
    fam = get_registry().family(name).factory(3, 2)
    resp = rng.dirichlet(np.ones(3), size=300)
    a = fam.scale_stats(fam.chunk_stats(X, resp), 0.25)
    b = fam.chunk_stats(X, 0.25 * resp)
    for field in fields:
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.slow
def test_online_approaches_batch_fit():
    """200 batches of 500 rows from a known 3-component mixture (d = 2).

    Tolerance: with rho_t = (t+2)^-0.6 the running statistics at the end are a
    weighted average of the batches with weights ~ rho (1 - rho)^age, whose
    effective size is (2 - rho) / rho ~ 47 batches ~ 23000 rows. An estimator with
    that effective sample size loses about p / (2 n_eff) nats per held-out row to
    parameter noise (p = 17 free parameters): ~4e-4. The batch fit on all 100000
    rows loses ~1e-4. We allow 3e-3, about 6x the expected gap.
    """
    rng = np.random.default_rng(7)
    batches = [_stream(500, rng) for _ in range(200)]
    held_out = _stream(20000, rng)
    online = emcore.GaussianMixture(3, random_state=0, online_step_exponent=0.6)
    for batch in batches:
        online.partial_fit(batch)
    assert online.n_iter_ == 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch_fit = emcore.GaussianMixture(3, random_state=0).fit(np.concatenate(batches))
    gap = batch_fit.score(held_out) - online.score(held_out)
    assert abs(gap) < 3e-3, gap
    order = np.argsort(online.means_[:, 0] + 10 * online.means_[:, 1])
    np.testing.assert_allclose(online.means_[order], MEANS, atol=0.1)
    np.testing.assert_allclose(online.weights_[order], WEIGHTS, atol=0.03)


def test_first_call_initialises_and_fit_resets():
    rng = np.random.default_rng(1)
    gm = emcore.GaussianMixture(3, random_state=0)
    gm.partial_fit(_stream(400, rng))
    assert gm.n_iter_ == 1 and np.isfinite(gm.lower_bound_)
    gm.partial_fit(_stream(400, rng))
    assert gm.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(_stream(400, rng))
    gm.partial_fit(_stream(400, rng))
    assert gm.n_iter_ == 1        # fit discarded the online state


def test_partial_fit_validation():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="online_step_exponent"):
        emcore.GaussianMixture(2, online_step_exponent=0.5).partial_fit(_stream(50, rng))
    with pytest.raises(ValueError, match="online_step_exponent"):
        emcore.GaussianMixture(2, online_step_exponent=1.5).partial_fit(_stream(50, rng))
    gm = emcore.GaussianMixture(2, random_state=0).partial_fit(_stream(50, rng))
    with pytest.raises(ValueError, match="must have 2 features"):
        gm.partial_fit(np.ones((10, 3)))
    with pytest.raises(ValueError, match="'prior' parameter"):
        emcore.GaussianMixture(2, prior="default").partial_fit(_stream(50, rng))


def test_partial_fit_after_fit_continues_from_the_fitted_model():
    # The first step after fit is one EM step on the batch from the fitted
    # parameters: the E-step at the fitted model, then the M-step (rho = 1).
    rng = np.random.default_rng(3)
    train, batch = _stream(600, rng), _stream(300, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = emcore.GaussianMixture(3, random_state=0, n_jobs=1).fit(train)
    fitted = gm.score(batch)
    family = get_registry().family("gaussian").factory(3, 2)
    rule = get_registry().posterior_rule("soft").factory()
    from emcore.engine import data_pass
    res = data_pass(batch, family, rule, gm.weights_, gm._params())
    expected_means = family.m_step(res.stats, gm._params())["means"]
    gm.partial_fit(batch)
    # the batch's mean log-likelihood before the step is the fitted model's score;
    # the same pass with row weights 1/n instead of 1 (and an M-step invariant to
    # that scale): rounding of 300-term sums, ~1e-14, within 1e-12
    assert gm.lower_bound_ == pytest.approx(fitted, rel=1e-12)
    np.testing.assert_allclose(gm.means_, expected_means, rtol=1e-12)
    np.testing.assert_allclose(gm.weights_, res.resp_sum / res.resp_sum.sum(), rtol=1e-12)


def test_partial_fit_continues_from_a_model_built_from_parameters():
    rng = np.random.default_rng(4)
    batch = _stream(300, rng)
    gm = emcore.GaussianMixture.from_parameters(WEIGHTS, MEANS, COVS, n_jobs=1)
    true_score = gm.score(batch)
    gm.partial_fit(batch)
    assert gm.lower_bound_ == pytest.approx(true_score, rel=1e-12)


@pytest.mark.parametrize("change", [{"n_components": 4}, {"covariance_type": "diag"}])
def test_changing_the_model_between_partial_fit_calls_raises(change):
    rng = np.random.default_rng(5)
    gm = emcore.GaussianMixture(3, random_state=0).partial_fit(_stream(50, rng))
    gm.set_params(**change)
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"'{name}' parameter .* must stay"):
        gm.partial_fit(_stream(50, rng))

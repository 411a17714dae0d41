"""The EM variants of docs/variants.md: generalized EM (ECM, a gradient M-step),
Monte-Carlo and stochastic EM (the 'sampled' and 'stochastic' rules), SQUAREM."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace as dataclass_replace

import numpy as np
import pytest
from scipy.special import gammaln, digamma

from emcore import GaussianMixture, MixtureModel
from emcore.engine import data_pass, run_em
from emcore.exceptions import ChainViolationWarning
from emcore.plugin_api import Family
from emcore.plugins.gaussian import GaussianFamily
from emcore.plugins.posterior import SampledPosterior, StochasticPosterior, SoftPosterior


def _overlapping(n=3000, seed=0, spread=1.0):
    """Three 2-D clusters close enough that plain EM needs hundreds of iterations."""
    rng = np.random.default_rng(seed)
    centres = spread * np.array([[0.0, 0.0], [1.6, 0.4], [0.5, 1.7]])
    return centres[rng.integers(3, size=n)] + rng.normal(size=(n, 2))


def _start(X, k, seed=0, covariance_type="full"):
    gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=1, reg_covar=0.0,
                         random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # one step: 'did not converge'
        gm.fit(X)
    return gm.weights_.copy(), gm._fitted_model()[2]


def _ecm_start(X, family):
    """Parameters in the ECM model: its M-step from a one-step fit's responsibilities."""
    gm = GaussianMixture(3, max_iter=1, reg_covar=0.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    return gm.weights_.copy(), family.m_step(family.chunk_stats(X, gm.predict_proba(X)), None)


def _gaussian(k, d, covariance_type="full"):
    return GaussianFamily(k, d, covariance_type=covariance_type, reg_covar=0.0)


# --- generalized EM --------------------------------------------------------------------

class ProportionalECM(GaussianFamily):
    """Sigma_k = lambda_k Sigma (shared shape and orientation, mclust's 'VEE'): no
    closed-form M-step. ECM (Meng & Rubin 1993): the means, then Sigma given the
    lambda_k, then the lambda_k given Sigma; each a conditional maximiser of Q."""

    generalized_m_step = True

    def m_step(self, stats, previous):
        mean, scatter = stats.centred()
        w = stats.weight
        d = self.n_features
        if previous is None:
            shape = np.sum(scatter, axis=0) / np.sum(w)
            lam = np.ones(self.n_components)
        else:
            cov = previous["covariances"]
            lam = np.array([np.linalg.det(c) ** (1.0 / d) for c in cov])
        # CM 1: Sigma given lambda maximises -1/2 sum_k tr((lambda_k Sigma)^-1 S_k)
        #       - 1/2 sum_k W_k log|lambda_k Sigma|: Sigma = sum_k S_k / lambda_k / sum W
        shape = np.sum(scatter / lam[:, None, None], axis=0) / np.sum(w)
        # CM 2: lambda_k given Sigma: tr(Sigma^-1 S_k) / (d W_k)
        inv = np.linalg.inv(shape)
        lam = np.einsum("ij,kji->k", inv, scatter) / (d * w)
        cov = lam[:, None, None] * shape
        return self.params_from_covariances(mean, 0.5 * (cov + np.swapaxes(cov, 1, 2)))


class ClaimsMaximal(ProportionalECM):
    generalized_m_step = False


class GammaGradient(Family):
    """Independent gamma components in one dimension, params shape a and rate b. Q
    has no closed-form maximiser in a (log a - digamma(a) = c); the M-step is one
    gradient step on the profile Q(a, b*(a)), b*(a) = a N / S_x, in log a, halved
    until Q increases: a generalized M-step."""

    generalized_m_step = True

    def log_density(self, X, params):
        a, b = params["shape"][:, 0], params["rate"][:, 0]
        x = X[:, :1]
        return a * np.log(b) + (a - 1.0) * np.log(x) - b * x - gammaln(a)

    def empty_stats(self):
        return np.zeros((3, self.n_components))

    def chunk_stats(self, X, weights):
        x = X[:, 0]
        return np.stack([weights.sum(axis=0), x @ weights, np.log(x) @ weights])

    def merge_stats(self, a, b):
        return a + b

    def _profile(self, stats, a):
        n, sx, slog = stats
        return n * (a * np.log(a * n / sx) - gammaln(a)) + (a - 1.0) * slog - a * n

    def m_step(self, stats, previous):
        n, sx, slog = stats
        a = previous["shape"][:, 0].copy()
        # d profile / d log a = a (n (log(a n / sx) - digamma(a)) + slog)
        grad = a * (n * (np.log(a * n / sx) - digamma(a)) + slog)
        step = 1.0 / np.maximum(n, 1.0)
        base = self._profile(stats, a)
        new = a.copy()
        for j in range(a.size):
            s = step[j]
            for _ in range(30):
                trial = a[j] * math.exp(s * grad[j])
                if self._profile(stats[:, j:j + 1], np.array([trial]))[0] >= base[j]:
                    new[j] = trial
                    break
                s *= 0.5
        return {"shape": new[:, None], "rate": (new * n / sx)[:, None]}

    def expected_log_likelihood(self, stats, params):
        n, sx, slog = stats
        a, b = params["shape"][:, 0], params["rate"][:, 0]
        return float(np.sum(n * (a * np.log(b) - gammaln(a)) + (a - 1.0) * slog - b * sx))

    def validate_params(self, params):
        for key in ("shape", "rate"):
            if not np.all(np.asarray(params[key]) > 0):
                raise ValueError(f"{key!r} must be positive")

    def n_parameters(self):
        return 2 * self.n_components


def _gamma_data(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.gamma(2.0, 1.0, 1500), rng.gamma(9.0, 1.0, 1500)])[:, None]


GAMMA_START = {"shape": np.array([[1.0], [4.0]]), "rate": np.array([[1.0], [0.5]])}


def test_ecm_declared_generalized_keeps_the_chain_and_is_not_flagged():
    X = _overlapping(1500)
    family = ProportionalECM(3, 2, reg_covar=0.0)
    w0, start = _ecm_start(X, family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_em(X, family, SoftPosterior(), w0, start, max_iter=40, tol=0.0)
    assert {it.step for it in result.history} == {"gem"}
    assert all(it.chain_holds() for it in result.history)
    values = [it.value for it in result.history]
    assert values[-1] > values[0]


def test_a_family_claiming_maximality_that_only_increases_is_caught():
    X = _overlapping(1500)
    family = ClaimsMaximal(3, 2, reg_covar=0.0)
    w0, start = _ecm_start(X, family)
    with pytest.warns(ChainViolationWarning, match="maximal link"):
        result = run_em(X, family, SoftPosterior(), w0, start, max_iter=5, tol=0.0)
    first = result.history[0]
    assert first.step == "em" and first.m_step_gain > first.tolerance
    # the ascent itself held: the M-step increased Q, it did not maximise it
    assert first.chain_slacks()["ascent"] <= 1.0


def test_exact_m_steps_pass_the_maximality_check():
    X = _overlapping(1500)
    w0, p0 = _start(X, 3)
    result = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=9, tol=0.0)
    checked = [it for it in result.history if it.iteration in (0, 1, 2, 4, 8)]
    assert all(it.step == "em" and it.chain_slacks()["maximal"] <= 1.0 for it in checked)


def test_gradient_m_step_family_is_generalized_em():
    X = _gamma_data()
    family = GammaGradient(2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_em(X, family, SoftPosterior(), np.array([0.5, 0.5]), GAMMA_START,
                        max_iter=60, tol=0.0)
    assert {it.step for it in result.history} == {"gem"}
    assert all(it.chain_holds() for it in result.history)
    # it climbs towards the generating shapes (2, 9)
    assert result.history[-1].value_next > result.history[0].value + 100.0
    assert abs(result.params["shape"][1, 0] - 9.0) < abs(GAMMA_START["shape"][1, 0] - 9.0)

    class Undeclared(GammaGradient):
        generalized_m_step = False

    with pytest.warns(ChainViolationWarning, match="maximal link"):
        run_em(X, Undeclared(2, 1), SoftPosterior(), np.array([0.5, 0.5]), GAMMA_START,
               max_iter=3, tol=0.0)


# --- SQUAREM ---------------------------------------------------------------------------

def _param_distance(a, b):
    return max(float(np.max(np.abs(a.weights - b.weights))),
               *(float(np.max(np.abs(a.params[key] - b.params[key]))) for key in a.params))


def _tight(record, before, after):
    # param change < 1e-11: with EM's contraction rate rho (~0.93 here: ~340
    # iterations from 1 to 1e-11), the distance to the fixed point is about
    # 1e-11 rho / (1 - rho) ~ 1.3e-10, well below the 1e-8 the test asks
    return record.step == "em" and record.param_change < 1e-11


def _squarem_passes(history) -> int:
    """Passes a SQUAREM fit's records cost: one each, ``extrapolation["passes"]`` for
    a jump judged after its stabilising step, none for an invalid extrapolation."""
    total = 1                               # the pass at the start
    for it in history:
        extra = it.extrapolation or {}
        if not extra.get("reason", "").startswith("invalid"):
            total += extra.get("passes", 1)
    return total


def test_squarem_reaches_the_fixed_point_of_em_in_fewer_passes():
    X = _overlapping(600, spread=2.0)      # plain EM: 365 passes, SQUAREM 104
    w0, p0 = _start(X, 3)
    family, rule = _gaussian(3, 2), SoftPosterior()
    plain = run_em(X, family, rule, w0, p0, max_iter=20000, tol=0.0, converged=_tight)
    fast = run_em(X, family, rule, w0, p0, max_iter=20000, tol=0.0, converged=_tight,
                  accelerate="squarem")
    assert plain.converged and fast.converged
    assert _param_distance(plain, fast) < 1e-8
    assert fast.n_passes < plain.n_passes / 2, (fast.n_passes, plain.n_passes)
    steps = [it.step for it in fast.history]
    assert "squarem" in steps
    assert all(it.chain_holds() for it in fast.history)
    # the objective never decreases over the accepted steps (within each record's bound)
    for it in fast.history:
        assert it.objective >= it.value + it.log_prior - it.tolerance
    jump = next(it for it in fast.history if it.step == "squarem")
    assert jump.extrapolation["accepted"] and jump.extrapolation["step_length"] > 1.0
    assert jump.extrapolation["objective_extrapolated"] >= jump.extrapolation[
        "objective_before"]
    assert fast.n_passes == _squarem_passes(fast.history)


def test_squarem_makes_no_pass_at_the_second_em_point():
    # theta_2 = M(theta_1) enters the extrapolation only through its parameters: it is
    # an M-step from theta_1's statistics, and theta' is compared with theta_1. A kept
    # jump's cycle is then three passes (theta_1, theta', the stabilising step), so
    # some kept jump is followed by exactly two EM records (the stabilising step and
    # the next cycle's EM step) before the next extrapolation; with a pass at theta_2
    # every kept jump would be followed by three or more
    X = _overlapping(600, spread=2.0)
    w0, p0 = _start(X, 3)
    fast = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=20000, tol=0.0,
                  converged=_tight, accelerate="squarem")
    history = fast.history
    moves = [i for i, it in enumerate(history) if it.step != "em"]
    assert len(moves) >= 3
    gaps = {}
    for a, b in zip(moves, moves[1:]):
        e = history[a].extrapolation
        if e["accepted"] and not e.get("stabilised"):
            gaps[a] = b - a - 1
    assert 2 in gaps.values(), gaps
    for i in moves:
        # the comparison is with the last objective computed: the EM record before
        it, before = history[i], history[i - 1]
        assert before.step == "em"
        assert it.extrapolation["objective_before"] == before.objective == it.value
    assert fast.n_passes == _squarem_passes(history)


def test_squarem_judges_a_lower_jump_after_its_stabilising_step():
    # theta' below theta_1 is not a fit's point; the SQUAREM package's rule (the
    # objective after the stabilising EM step) can still keep the jump, and the
    # record says so: F(theta_1) <= F(M(theta')), both passes counted
    X = _overlapping(600, spread=2.0)
    w0, p0 = _start(X, 3)
    fast = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=20000, tol=0.0,
                  converged=_tight, accelerate="squarem")
    kept = [it for it in fast.history if (it.extrapolation or {}).get("stabilised")]
    assert kept, "no jump was judged after its stabilising step"
    for it in kept:
        e = it.extrapolation
        assert it.step == "squarem" and e["accepted"] and e["passes"] == 2
        assert e["objective_extrapolated"] < e["objective_before"]
        assert e["objective_before"] == it.value <= e["objective_stabilised"] == it.objective
        assert {"stabilising equality", "stabilising ascent", "stabilising bound"} <= set(
            it.chain_slacks())
        assert it.chain_holds()
    # record to record, the objective never decreases (within each record's bound)
    for before, it in zip(fast.history, fast.history[1:]):
        assert it.objective >= before.objective - it.tolerance, it.iteration
    assert fast.n_passes == _squarem_passes(fast.history)
    # a failing link of the stabilising step fails the jump's chain
    broken = dataclass_replace(kept[0], extrapolation=dict(
        kept[0].extrapolation, stabilising_step_slacks={"ascent": 2.0}))
    assert not broken.chain_holds()


def test_squarem_takes_no_stabilising_step_for_a_deficit_within_rounding():
    # run on at the fixed point (tol = 0): there F cannot tell theta' from theta_1,
    # and a stabilising step would be a pass bought for nothing
    X = _overlapping(600, spread=2.0)
    w0, p0 = _start(X, 3)
    fast = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=120, tol=0.0,
                  accelerate="squarem")
    noise = [it for it in fast.history if it.step == "squarem-fallback"
             and it.extrapolation["reason"] == "lower objective, by no more than its rounding"]
    assert noise
    for it in noise:
        e = it.extrapolation
        assert "passes" not in e and "objective_stabilised" not in e
        # lower, by a rounding-sized amount: the engine compared it with tau_B of the
        # jump (about 1.6e-12 relative at n = 600); 1e-9 only says it is not a real drop
        assert 0 < e["objective_before"] - e["objective_extrapolated"] < 1e-9 * abs(
            e["objective_before"])
    assert fast.n_passes == _squarem_passes(fast.history)


def test_squarem_rejected_extrapolations_fall_back_to_em():
    class Unextrapolatable(GaussianFamily):
        def from_unconstrained(self, coords):
            raise ValueError("no valid parameters here")

    X = _overlapping(1500)
    w0, p0 = _start(X, 3)
    family = Unextrapolatable(3, 2, reg_covar=0.0)
    plain = run_em(X, family, SoftPosterior(), w0, p0, max_iter=200, tol=0.0)
    fast = run_em(X, family, SoftPosterior(), w0, p0, max_iter=200, tol=0.0,
                  accelerate="squarem")
    fallbacks = [it for it in fast.history if it.step == "squarem-fallback"]
    assert fallbacks and all(it.extrapolation["reason"].startswith("invalid")
                             for it in fallbacks)
    # every extrapolation rejected: the M-steps are plain EM's, and an invalid point
    # costs no pass
    ems = [it for it in fast.history if it.step == "em"]
    assert [it.value_next for it in ems] == [it.value_next for it in plain.history]
    assert fast.n_passes == 1 + len(ems)


@pytest.mark.parametrize("covariance_type", ["tied", "diag", "spherical"])
def test_squarem_keeps_every_covariance_type_valid(covariance_type):
    X = _overlapping(600, spread=2.0)
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, tol=1e-9,
                         max_iter=2000, reg_covar=0.0, accelerate="squarem")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm.fit(X)
    plain = GaussianMixture(3, covariance_type=covariance_type, random_state=0, tol=1e-9,
                            max_iter=2000, reg_covar=0.0).fit(X)
    assert "squarem" in {it.step for it in gm.history_}
    assert all(it.chain_holds() for it in gm.history_)
    # same start, same local maximum: plain EM stops while still climbing slowly
    # (a relative change below tol is not a distance to the maximum), SQUAREM no lower
    assert gm.lower_bound_ >= plain.lower_bound_ - 1e-9 * abs(plain.lower_bound_)


def test_squarem_runs_other_families_through_the_same_engine():
    # k-means (fixed weights, hard rule) and a pure-Python family in raw coordinates
    X = _overlapping(1500)
    km = MixtureModel(3, family="kmeans", posterior="hard", random_state=0,
                      accelerate="squarem").fit(X)
    assert km.converged_ and all(it.chain_holds() for it in km.history_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = run_em(_gamma_data(), GammaGradient(2, 1), SoftPosterior(),
                     np.array([0.5, 0.5]), GAMMA_START, max_iter=60, tol=0.0,
                     accelerate="squarem")
    assert all(it.chain_holds() for it in fit.history)


def test_squarem_interrupted_returns_the_last_point_reached():
    X = _overlapping(600, spread=2.0)
    w0, p0 = _start(X, 3)
    seen = []

    def callback(record):
        seen.append(record)
        if len(seen) == 9:
            raise KeyboardInterrupt

    result = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=500, tol=0.0,
                    accelerate="squarem", callback=callback)
    assert result.stop_reason == "interrupted" and len(result.history) == 9
    assert result.objective == seen[-1].objective
    assert result.objective > seen[0].value


def test_accelerate_is_checked():
    X = _overlapping(100)
    with pytest.raises(ValueError, match="'accelerate' parameter of GaussianMixture"):
        GaussianMixture(2, accelerate="anderson").fit(X)
    with pytest.raises(ValueError, match="'accelerate' parameter of MixtureModel"):
        MixtureModel(2, accelerate=True).fit(X)
    with pytest.raises(ValueError, match="'accelerate' parameter of run_em"):
        MixtureModel(2, posterior="sampled", accelerate="squarem").fit(X)


# --- Monte-Carlo and stochastic EM ------------------------------------------------------

def test_draws_depend_on_the_row_not_on_the_chunking():
    rng = np.random.default_rng(0)
    log_joint = rng.normal(size=(301, 4))

    def draws(bounds):
        rule = SampledPosterior(n_samples=7, random_state=5)
        rule.prepare(None, None)
        return np.concatenate([rule.posterior(log_joint[a:b], start=a)[1] for a, b in bounds])

    whole = draws([(0, 301)])
    assert np.array_equal(whole, draws([(0, 64), (64, 128), (128, 301)]))
    assert np.array_equal(whole, draws([(0, 1), (1, 300), (300, 301)]))
    assert np.all(whole * 7 == np.round(whole * 7)) and np.allclose(whole.sum(axis=1), 1.0)
    # whole fits: the same draws, totals summed in another order (last bits only)
    X = _overlapping(700)
    w0, p0 = _start(X, 3)
    runs = [run_em(X, _gaussian(3, 2), SampledPosterior(n_samples=7, random_state=5), w0,
                   p0, max_iter=4, tol=0.0, chunk_rows=rows) for rows in (64, 100, 4096)]
    for other in runs[1:]:
        assert [it.value_next for it in other.history] == pytest.approx(
            [it.value_next for it in runs[0].history], rel=1e-12, abs=0)
    again = run_em(X, _gaussian(3, 2), SampledPosterior(n_samples=7, random_state=6), w0,
                   p0, max_iter=4, tol=0.0)
    assert again.history[-1].value_next != runs[0].history[-1].value_next


def test_mcem_trajectory_approaches_em_as_one_over_sqrt_n_samples():
    X = _overlapping(1000)
    w0, p0 = _start(X, 3)
    T = 4
    em = run_em(X, _gaussian(3, 2), SoftPosterior(), w0, p0, max_iter=T, tol=0.0)

    def deviation(n_samples):
        # root mean square over seeds of the means' distance to EM's after T steps
        devs = []
        for seed in range(6):
            mc = run_em(X, _gaussian(3, 2), SampledPosterior(n_samples, random_state=seed),
                        w0, p0, max_iter=T, tol=0.0)
            assert all(it.step == "mcem" and it.chain_holds() for it in mc.history)
            devs.append(np.sum((mc.params["means"] - em.params["means"]) ** 2))
        return math.sqrt(np.mean(devs))

    low, high = deviation(4), deviation(400)
    # 1/sqrt(n_samples): 100x the draws, 10x closer. The 6-seed RMS has a relative
    # spread of about 1/sqrt(2 * 6) ~ 0.3 per estimate, so the ratio lies in
    # 10 x [0.4, 2.5] with a wide margin (observed 12.2)
    assert 4.0 < low / high < 25.0, (low, high)


def test_mcem_records_its_standard_error_and_stops_on_it():
    X = _overlapping(1000)
    w0, p0 = _start(X, 3)
    tol = 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_em(X, _gaussian(3, 2), SampledPosterior(50, random_state=0), w0, p0,
                        max_iter=300, tol=tol)
    assert result.stop_reason == "tol"
    assert all(it.mc_standard_error > 0 for it in result.history)
    last = result.history[-1]
    ascent = last.elbo - last.elbo_at_start
    assert ascent >= 0                    # the M-step maximises the sampled Q
    assert ascent + 1.6448536269514722 * last.mc_standard_error < tol * abs(last.objective)
    for it in result.history[:-1]:
        assert (it.elbo - it.elbo_at_start + 1.6448536269514722 * it.mc_standard_error
                >= tol * abs(it.objective))


def test_sem_average_approaches_the_em_fixed_point():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-2.0, 1.0, (1500, 1)), rng.normal(2.0, 1.0, (1500, 1))])
    w0, p0 = _start(X, 2)
    em = run_em(X, _gaussian(2, 1), SoftPosterior(), w0, p0, max_iter=5000, tol=0.0,
                converged=_tight)
    T = 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sem = run_em(X, _gaussian(2, 1), StochasticPosterior(burn_in=20, random_state=0),
                     w0, p0, max_iter=20 + T, tol=1e-6)
    assert sem.stop_reason == "max_iter" and sem.n_averaged == T
    assert {it.step for it in sem.history} == {"sem"}
    assert all(it.chain_holds() for it in sem.history)
    # The chain is about theta_{t+1} = M(theta_t) + e_t: near the fixed point an AR(1)
    # with EM's rate rho, and e_t the Monte-Carlo error of one draw of z, for a mean
    # sd_1 = sqrt(sum_i q_ik (1 - q_ik) (x_i - mu_k)^2) / N_k. The average of T
    # states then has sd ~ sd_1 / ((1 - rho) sqrt(T)), one state sd_1 / sqrt(1 - rho^2)
    # (here ~0.0021 and ~0.013): 4 sd of the average separates them.
    changes = [it.param_change for it in em.history]
    rho = changes[-1] / changes[-2]
    log_resp = np.empty((X.shape[0], 2))
    data_pass(X, _gaussian(2, 1), SoftPosterior(), em.weights, em.params,
              out_log_resp=log_resp)
    q = np.exp(log_resp)
    mu = em.params["means"][:, 0]
    sd_1 = np.sqrt(np.sum(q * (1 - q) * (X - mu) ** 2, axis=0)) / q.sum(axis=0)
    bound = 4.0 * sd_1 / ((1.0 - rho) * math.sqrt(T))
    err_avg = np.abs(sem.params["means"][:, 0] - mu)
    err_last = np.abs(sem.chain_last[1]["means"][:, 0] - mu)
    assert np.all(err_avg < bound), (err_avg, err_last, bound)


def test_fits_with_sampled_rules_predict_with_the_exact_posterior():
    X = _overlapping(500)
    mm = MixtureModel(3, posterior="sampled", posterior_options={"n_samples": 20},
                      random_state=0, tol=1e-3).fit(X)
    first = mm.predict_proba(X)
    assert np.array_equal(first, mm.predict_proba(X))
    again = MixtureModel(3, posterior="sampled", posterior_options={"n_samples": 20},
                         random_state=0, tol=1e-3).fit(X)
    assert np.array_equal(again.params_["means"], mm.params_["means"])


def test_sampled_rule_options_are_checked():
    with pytest.raises(ValueError, match="'n_samples' parameter of the sampled"):
        SampledPosterior(n_samples=0)
    with pytest.raises(ValueError, match="'burn_in' parameter of the stochastic"):
        StochasticPosterior(burn_in=-1)

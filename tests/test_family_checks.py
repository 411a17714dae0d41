"""The conformance suite can fail: each check catches a deliberately broken family.

The mutants are the example plugin's Poisson family (and the Gaussian family) with
one bug each, of the kind a plugin author makes: an M-step off by a factor, a
log-density without its normaliser, statistics that forget a term, ... Each must be
caught by the check named for it (others may fail too: the message names them all).
The unmutated families pass (tests/test_conformance.py, tests/test_example_plugin.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import gammaln

from emcore.plugin_api import Family, FamilyRecord
from emcore.plugins.gaussian import GaussianFamily
from emcore.testing import (FAMILY_CHECKS, FamilyCheckReport, check_family,
                            parametrize_with_family_checks)

from _categorical import CategoricalFamily
from _poisson import poisson_module

_poisson = poisson_module()
if _poisson is None:
    pytest.skip("emcore-poisson is not installed and examples/emcore-poisson is not here",
                allow_module_level=True)
PoissonFamily, PoissonStats = _poisson.PoissonFamily, _poisson.PoissonStats

COUNTS = frozenset({"sampling", "support:nonnegative_integers"})
REAL = frozenset({"sampling", "support:real"})


# --- the mutants (module level, so that they pickle) --------------------------------------

class MStepOffByAFactor(PoissonFamily):
    """The issue's example: an M-step 10% off."""
    def m_step(self, stats, previous):
        return {"rates": 1.1 * super().m_step(stats, previous)["rates"]}


class MissingNormaliser(PoissonFamily):
    """log p without -log x!, consistently in the statistics: only the mass is wrong."""
    def log_density(self, X, params):
        return super().log_density(X, params) + gammaln(X + 1.0).sum(axis=1)[:, None]

    def chunk_stats(self, X, weights):
        s = super().chunk_stats(X, weights)
        return PoissonStats(s.weight, s.counts, np.zeros_like(s.log_fact))


class ExpectedLogLikelihoodMissesATerm(PoissonFamily):
    """expected_log_likelihood forgets the -sum log x! term."""
    def expected_log_likelihood(self, stats, params):
        return super().expected_log_likelihood(stats, params) + float(np.sum(stats.log_fact))


class ExpectedLogLikelihoodTooLarge(PoissonFamily):
    """A constant too much in the statistics' expected log-likelihood: ELBO > loglik."""
    def expected_log_likelihood(self, stats, params):
        return super().expected_log_likelihood(stats, params) + 1.0


class MergeDropsATerm(PoissonFamily):
    """merge_stats keeps only the first operand's log x! sum."""
    def merge_stats(self, a, b):
        return PoissonStats(a.weight + b.weight, a.counts + b.counts, a.log_fact)


class WeightsSquared(PoissonFamily):
    """chunk_stats uses w^2: a weight of 2 counts four times."""
    def chunk_stats(self, X, weights):
        return super().chunk_stats(X, weights ** 2)


class OneParameterTooMany(PoissonFamily):
    def n_parameters(self):
        return super().n_parameters() + 1


class OneParameterTooFew(PoissonFamily):
    def n_parameters(self):
        return super().n_parameters() - 1


class SamplesTooLarge(PoissonFamily):
    """sample() draws with rates 5% too large."""
    def sample(self, params, counts, rng):
        return super().sample({"rates": 1.05 * params["rates"]}, counts, rng)


class Unpicklable(PoissonFamily):
    def __init__(self, n_components, n_features):
        super().__init__(n_components, n_features)
        self.transform = lambda x: x          # a lambda does not pickle


class ChunkDependent(PoissonFamily):
    """log_density normalised over the rows of the chunk it is given."""
    def log_density(self, X, params):
        return super().log_density(X, params) - np.log(X.shape[0])


class OverRelaxed(PoissonFamily):
    """An 'accelerated' M-step that overshoots: previous + 2.5 (M-step - previous)."""
    def m_step(self, stats, previous):
        rates = super().m_step(stats, previous)["rates"]
        if previous is None:
            return {"rates": rates}
        return {"rates": np.maximum(previous["rates"] + 2.5 * (rates - previous["rates"]),
                                    1e-3)}


class GaussianWithoutTwoPi(GaussianFamily):
    """A Gaussian density missing (2 pi)^(-d/2), consistently everywhere."""
    def compiled_kernel(self, params):
        return None

    def log_density(self, X, params):
        return super().log_density(X, params) + 0.5 * self.n_features * np.log(2 * np.pi)

    def expected_log_likelihood(self, stats, params):
        return (super().expected_log_likelihood(stats, params)
                + 0.5 * self.n_features * np.log(2 * np.pi) * float(np.sum(stats.weight)))


class GaussianCovarianceOff(GaussianFamily):
    """Covariances 5% too large (a denominator N - 1 style slip)."""
    def m_step(self, stats, previous):
        p = super().m_step(stats, previous)
        return self.params_from_covariances(p["means"], 1.05 * p["covariances"])


class ProbabilitiesNotRenormalised(CategoricalFamily):
    """The issue's planted bug: an M-step returning probabilities x 1.1, not
    renormalised. Its Q is evaluated consistently, so every objective-based check
    passes; only the parameter space says it is wrong."""
    def m_step(self, stats, previous):
        return {"probabilities": 1.1 * super().m_step(stats, previous)["probabilities"]}


class MergeAddsIntoFirst(PoissonFamily):
    """merge_stats adds b into a's arrays and returns a: right sums, mutated input."""
    def merge_stats(self, a, b):
        a.weight[...] += b.weight
        a.counts[...] += b.counts
        a.log_fact[...] += b.log_fact
        return a


class NormaliserOffByFivePercent(PoissonFamily):
    """A wrong normalising constant, consistently in log_density and in the
    statistics' expected log-likelihood: every row's mass is 1.05 times too large."""
    def log_density(self, X, params):
        return super().log_density(X, params) + np.log(1.05)

    def expected_log_likelihood(self, stats, params):
        return (super().expected_log_likelihood(stats, params)
                + np.log(1.05) * float(np.sum(stats.weight)))


MUTANTS = [
    (MStepOffByAFactor, COUNTS, "check_m_step_maximises"),
    (MissingNormaliser, COUNTS, "check_log_density_normalises"),
    (ExpectedLogLikelihoodMissesATerm, COUNTS, "check_expected_log_likelihood"),
    (ExpectedLogLikelihoodTooLarge, COUNTS, "check_elbo_bound"),
    (MergeDropsATerm, COUNTS, "check_stats_merge"),
    (WeightsSquared, COUNTS, "check_weights_are_repetitions"),
    (OneParameterTooMany, COUNTS, "check_n_parameters"),
    (OneParameterTooFew, COUNTS, "check_n_parameters"),
    (SamplesTooLarge, COUNTS, "check_sampling_moments"),
    (Unpicklable, COUNTS, "check_pickle_roundtrip"),
    (ChunkDependent, COUNTS, "check_log_density_rows"),
    (OverRelaxed, COUNTS, "check_em_chain"),
    (GaussianWithoutTwoPi, REAL, "check_log_density_normalises"),
    (GaussianCovarianceOff, REAL, "check_m_step_maximises"),
    (ProbabilitiesNotRenormalised, COUNTS, "check_params_valid"),
    (MergeAddsIntoFirst, COUNTS, "check_stats_merge"),
    (NormaliserOffByFivePercent, COUNTS, "check_log_density_normalises"),
]


@pytest.mark.parametrize("n_features", [3, 5])
@pytest.mark.parametrize("mutant, capabilities", [(NormaliserOffByFivePercent, COUNTS),
                                                  (GaussianWithoutTwoPi, REAL)],
                         ids=["counts", "gaussian"])
def test_a_wrong_normalising_constant_is_caught_at_any_number_of_features(
        mutant, capabilities, n_features):
    # before: the normalisation check stopped at 2 features, and the constant,
    # consistent in log_density and the statistics, passed every other check
    with pytest.raises(AssertionError) as info:
        check_family(mutant(2, n_features), capabilities=capabilities)
    failed = [line.split(":")[0].strip() for line in str(info.value).splitlines()[1:]]
    assert failed == ["check_log_density_normalises"]


def test_an_unnormalised_m_step_is_caught_only_by_the_parameter_space():
    # the planted bug passed all 11 earlier checks, and its fit said the
    # chain held: check_params_valid is what catches it
    with pytest.raises(AssertionError) as info:
        check_family(ProbabilitiesNotRenormalised(2, 2), capabilities=COUNTS)
    failed = [line.split(":")[0].strip() for line in str(info.value).splitlines()[1:]]
    assert failed == ["check_params_valid"]
    assert "sum to" in str(info.value)


def test_the_engine_catches_an_unnormalised_m_step_in_debug_mode(monkeypatch):
    from emcore.engine import run_em
    from emcore.plugin_api import debug_enabled, set_debug
    from emcore.registry import get_registry

    fam = ProbabilitiesNotRenormalised(2, 2)
    X = fam.sample(fam.random_params(np.random.default_rng(0)), np.array([50, 50]),
                   np.random.default_rng(1))
    start = CategoricalFamily(2, 2).random_params(np.random.default_rng(2))
    rule = get_registry().posterior_rule("soft").factory()
    fit = run_em(X, fam, rule, np.full(2, 0.5), start, max_iter=5, tol=0)
    assert all(it.chain_holds() for it in fit.history)     # silent without debug mode
    assert not debug_enabled()
    set_debug(True)
    try:
        with pytest.raises(ValueError, match=r"ProbabilitiesNotRenormalised returned invalid "
                                             r"parameters at iteration 0: .*sum to"):
            run_em(X, fam, rule, np.full(2, 0.5), start, max_iter=5, tol=0)
    finally:
        set_debug(False)


def test_a_merge_that_mutates_either_argument_is_caught():
    class MutatesSecond(PoissonFamily):
        def merge_stats(self, a, b):
            out = super().merge_stats(a, b)
            b.counts[...] = 0.0
            return out

    for mutant, which in ((MergeAddsIntoFirst, "first"), (MutatesSecond, "second")):
        with pytest.raises(AssertionError, match=f"merge_stats modified its {which} argument"):
            check_family(mutant(2, 2), capabilities=COUNTS, checks=["check_stats_merge"])


def test_the_categorical_test_family_passes_every_check():
    for d in (1, 3):
        report = check_family(CategoricalFamily(2, d), capabilities=COUNTS)
        assert {r.status for r in report.results} == {"passed"}, str(report)


@pytest.mark.parametrize("n_features", [1, 2])
@pytest.mark.parametrize("mutant, capabilities, caught_by", MUTANTS,
                         ids=[m[0].__name__ for m in MUTANTS])
def test_a_broken_family_is_caught_by_its_check(mutant, capabilities, caught_by, n_features):
    with pytest.raises(AssertionError, match=rf"(?m)^  {caught_by}: "):
        check_family(mutant(2, n_features), capabilities=capabilities)


def test_every_check_catches_at_least_one_mutant():
    assert {m[2] for m in MUTANTS} == set(FAMILY_CHECKS)


@pytest.mark.parametrize("mutant, capabilities, caught_by", MUTANTS,
                         ids=[m[0].__name__ for m in MUTANTS])
def test_the_check_alone_catches_it(mutant, capabilities, caught_by):
    # run only the named check: it fails by itself, not through another one
    with pytest.raises(AssertionError, match=caught_by):
        check_family(mutant(2, 2), capabilities=capabilities, checks=[caught_by])


def test_an_m_step_off_by_a_factor_is_reported_by_name_with_what_was_found():
    with pytest.raises(AssertionError) as info:
        check_family(MStepOffByAFactor(2, 2), capabilities=COUNTS)
    message = str(info.value)
    assert message.startswith(f"2 of {len(FAMILY_CHECKS)} conformance checks failed for "
                              "MStepOffByAFactor(n_components=2, n_features=2):")
    assert "check_m_step_maximises: Q at the M-step's output is" in message
    assert "check_em_chain: the chain fails" in message


def test_the_unmutated_family_passes_every_check():
    report = check_family(PoissonFamily(2, 2), capabilities=COUNTS)
    assert isinstance(report, FamilyCheckReport) and report.passed
    assert [r.name for r in report.results] == list(FAMILY_CHECKS)
    assert {r.status for r in report.results} == {"passed"}


# --- options and reporting ---------------------------------------------------------------

def test_known_failures_are_not_run_and_are_reported_with_the_reason():
    known = {"check_m_step_maximises": "the M-step is damped on purpose",
             "check_em_chain": "follows from the damped M-step"}
    report = check_family(MStepOffByAFactor(2, 1), capabilities=COUNTS,
                          known_failures=known)
    statuses = {r.name: (r.status, r.detail) for r in report.results}
    assert statuses["check_m_step_maximises"] == ("known failure", known["check_m_step_maximises"])
    assert statuses["check_stats_merge"] == ("passed", "")
    assert "known failure: the M-step is damped on purpose" in str(report)


@pytest.mark.parametrize("known, error", [
    ({"check_m_step": "typo"}, "unknown checks"),
    ({"check_em_chain": ""}, "non-empty reason"),
    (["check_em_chain"], "mapping"),
])
def test_known_failures_are_validated(known, error):
    with pytest.raises((ValueError, TypeError), match=error):
        check_family(PoissonFamily(2, 1), known_failures=known)


def test_checks_that_do_not_apply_say_why():
    # no support capability: nothing to integrate over; no sampling: no moments
    report = check_family(PoissonFamily(2, 1), capabilities=frozenset({"sampling"}))
    statuses = {r.name: r for r in report.results}
    assert statuses["check_log_density_normalises"].status == "not applicable"
    assert "declares no support" in statuses["check_log_density_normalises"].detail
    report = check_family(PoissonFamily(2, 3), capabilities=frozenset(
        {"support:nonnegative_integers"}), X=PoissonFamily(2, 3).sample(
            {"rates": np.full((2, 3), 2.0)}, np.array([100, 100]), np.random.default_rng(0)))
    statuses = {r.name: r for r in report.results}
    assert statuses["check_sampling_moments"].status == "not applicable"
    # beyond the exact grid (counts in d > 2) the integral needs a proposal from samples
    assert statuses["check_log_density_normalises"].status == "not applicable"
    assert "needs 'sampling'" in statuses["check_log_density_normalises"].detail
    # a family without validate_params declares no parameter space
    assert statuses["check_params_valid"].status == "passed"
    report = check_family(_NoSpace(2, 1), capabilities=COUNTS, checks=["check_params_valid"])
    assert report.results[0].status == "not applicable"
    assert "declares no parameter space" in report.results[0].detail


def test_capabilities_come_from_a_record():
    record = FamilyRecord(name="counts", factory=PoissonFamily, capabilities=COUNTS)
    report = check_family(record, n_features=1)
    assert {r.status for r in report.results} == {"passed"}


class _NoSpace(PoissonFamily):
    validate_params = Family.validate_params  # the API's default: no declared space


class NoSampling(PoissonFamily):
    sample = Family.sample                  # the API's default: not implemented


def test_a_family_that_cannot_sample_needs_data():
    with pytest.raises(ValueError, match="cannot sample: pass X"):
        check_family(NoSampling(2, 1))
    X = np.random.default_rng(0).poisson(3.0, (200, 1)).astype(float)
    report = check_family(NoSampling(2, 1), X=X)
    assert report.passed


def test_given_parameters_are_used():
    params = {"rates": np.array([[1.0, 7.0], [4.0, 0.5]])}
    report = check_family(PoissonFamily(2, 2), params=params, capabilities=COUNTS)
    assert report.passed


def test_an_exception_inside_the_family_is_a_failure_naming_the_check():
    class Raises(PoissonFamily):
        def merge_stats(self, a, b):
            raise RuntimeError("merge exploded")

    with pytest.raises(AssertionError, match=r"check_stats_merge: raised RuntimeError: "
                                             r"merge exploded"):
        check_family(Raises(2, 1), checks=["check_stats_merge"])


def test_unknown_check_names_are_rejected():
    with pytest.raises(ValueError, match="unknown checks"):
        check_family(PoissonFamily(2, 1), checks=["check_everything"])


def test_runs_are_reproducible():
    a = check_family(PoissonFamily(2, 1), capabilities=COUNTS, random_state=7)
    b = check_family(PoissonFamily(2, 1), capabilities=COUNTS, random_state=7)
    assert a.results == b.results


# --- parametrize_with_family_checks ------------------------------------------------------

def test_parametrize_gives_one_case_per_family_and_check_with_xfail_for_known_failures():
    mark = parametrize_with_family_checks(
        {"poisson": PoissonFamily(2, 1), "off": MStepOffByAFactor(2, 1)},
        known_failures={"check_em_chain": "a reason"}, capabilities=COUNTS)
    argnames, cases = mark.args
    assert argnames == "family, check"
    ids = [c.id for c in cases]
    assert ids[:len(FAMILY_CHECKS)] == [f"poisson-{name}" for name in FAMILY_CHECKS]
    assert len(ids) == 2 * len(FAMILY_CHECKS)
    for case in cases:
        xfail = [m for m in case.marks if m.name == "xfail"]
        if case.id.endswith("check_em_chain"):
            # an expected failure, not run as an ordinary test
            assert xfail and xfail[0].kwargs == {"reason": "a reason", "run": False}
        else:
            assert not xfail
    # the checks run when called, and fail with the check's name
    by_id = {c.id: c.values for c in cases}
    family, check = by_id["poisson-check_m_step_maximises"]
    check(family)
    family, check = by_id["off-check_m_step_maximises"]
    with pytest.raises(AssertionError, match="check_m_step_maximises"):
        check(family)
    family, check = by_id["poisson-check_stats_merge"]
    assert repr(check) == "check_stats_merge"


def test_a_check_that_does_not_apply_is_skipped_under_pytest():
    (_, cases) = parametrize_with_family_checks([PoissonFamily(2, 3)],
                                                capabilities={"sampling"}).args
    by_id = {c.id.split("-")[-1]: c.values for c in cases}
    family, check = by_id["check_log_density_normalises"]
    with pytest.raises(pytest.skip.Exception, match="declares no support"):
        check(family)


@parametrize_with_family_checks([MStepOffByAFactor(2, 1)], capabilities=COUNTS,
                                known_failures={"check_m_step_maximises": "damped on purpose",
                                                "check_em_chain": "follows from it"})
def test_declared_known_failures_are_expected_failures_not_run(family, check):
    # run=False: the two declared checks are reported XFAIL without running (they
    # would fail); the other checks run and pass
    check(family)


@parametrize_with_family_checks([PoissonFamily(2, 2)], capabilities=COUNTS)
def test_used_as_a_plugin_author_would(family, check):
    check(family)


def test_emcore_testing_imports_neither_pytest_nor_hypothesis(tmp_path):
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['hypothesis'] = None\n"
            "import emcore.testing as t\n"
            "from emcore.plugins.gaussian import GaussianFamily\n"
            "r = t.check_family(GaussianFamily(2, 1), checks=['check_stats_merge'])\n"
            "assert r.passed, r\n"
            "try:\n"
            "    t.posteriors\n"
            "except ImportError:\n"
            "    print('strategies need hypothesis')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "strategies need hypothesis"


@pytest.mark.parametrize("value, enabled", [("1", True), ("yes", True), ("0", False),
                                            ("", False)])
def test_debug_mode_follows_the_environment_variable(value, enabled, tmp_path):
    code = "from emcore.plugin_api import debug_enabled; print(debug_enabled())"
    env = {**os.environ, "EMCORE_DEBUG": value}
    # cwd: not the repository root, whose uncompiled emcore/ `python -c` would import
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(enabled)

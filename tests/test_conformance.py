"""Every first-party family passes the conformance suite (emcore.testing).

Parametrised over the registry's first-party families (distribution emcore._version.DISTRIBUTION), so
a family added to plugins/ is checked without touching this file; the Gaussian
family in each covariance type, with reg_covar = 0, with the default reg_covar
(a penalised M-step) and with the conjugate prior (MAP-EM). The checks and their
tolerances are documented in emcore/testing/_checks.py.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

import emcore
from emcore._version import DISTRIBUTION
from emcore.registry import get_registry
from emcore.testing import FAMILY_CHECKS, parametrize_with_family_checks

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# mclust's models beyond those four (VVV, EEE, VVI, VII are their aliases: the same
# code); maximum likelihood only (no conjugate prior for them)
MCLUST_TYPES = ("EII", "EEI", "VEI", "EVI", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV")


def _prior(covariance_type: str, n_components: int = 2, n_features: int = 2):
    X = np.random.default_rng(3).normal(size=(100, n_features)) * 3.0 + 1.0
    return emcore.GaussianPrior().resolve(X, n_components, None, covariance_type)


# the product family over n_features=2 columns (check_family's default)
_PRODUCT_PARTS = (
    ("gaussians", [("gaussian", [1], {"covariance_type": "spherical", "reg_covar": 0.0}),
                   ("gaussian", [0], {"reg_covar": 0.0})], frozenset({"support:real"})),
    ("regression", [("gaussian", [0], {"prior": _prior("full", 2, 1)}),
                    ("linear_regression", [1])], frozenset()),
    # parts that marginalise missing entries: the product does too (check_missing_values)
    ("counts", [("poisson", [1]), ("poisson", [0])],
     frozenset({"support:nonnegative_integers"})),
    # Gaussian parts with independent coordinates: they marginalise too
    ("diag-gaussians", [("gaussian", [1], {"covariance_type": "spherical"}),
                        ("gaussian", [0], {"covariance_type": "diag", "reg_covar": 0.0})],
     frozenset({"support:real"})),
)


def _first_party_families() -> dict:
    """{test id: FamilyRecord} for every first-party family and variant."""
    specs = {}
    for name, entry in sorted(get_registry().families.items()):
        if entry.distribution != DISTRIBUTION:
            continue
        record = entry.record
        caps = record.capabilities
        if name == "product":
            # its parts say where x lives; parts of one support make it that support
            for variant, parts, support in _PRODUCT_PARTS:
                factory = functools.partial(record.factory, parts=parts)
                specs[f"product-{variant}"] = dataclasses.replace(
                    record, factory=factory, capabilities=caps | support)
            continue
        # every first-party family says where x lives (support:*), which the
        # normalisation and moment checks need; a regression's density is
        # conditional on its covariates (capability 'response'): no support on R^d
        assert "response" in caps or any(c.startswith("support:") for c in caps), name
        if name != "gaussian":
            specs[name] = dataclasses.replace(record, capabilities=caps)
            continue
        for t in COVARIANCE_TYPES:
            for variant, options in (("ml", {"reg_covar": 0.0}), ("reg_covar", {}),
                                     ("prior", {"prior": _prior(t)})):
                factory = functools.partial(record.factory, covariance_type=t, **options)
                specs[f"gaussian-{t}-{variant}"] = dataclasses.replace(
                    record, factory=factory, capabilities=caps)
        for t in MCLUST_TYPES:
            for variant, options in (("ml", {"reg_covar": 0.0}), ("reg_covar", {})):
                factory = functools.partial(record.factory, covariance_type=t, **options)
                specs[f"gaussian-{t}-{variant}"] = dataclasses.replace(
                    record, factory=factory, capabilities=caps)
    return specs


FAMILIES = _first_party_families()


def test_every_first_party_family_is_covered():
    names = {name for name, e in get_registry().families.items() if e.distribution == DISTRIBUTION}
    assert "gaussian" in names
    covered = {fid.split("-")[0] for fid in FAMILIES}
    assert covered == names
    assert sum(fid.startswith("gaussian-") for fid in FAMILIES) == 12 + 2 * len(MCLUST_TYPES)


@parametrize_with_family_checks(FAMILIES)
def test_first_party_family_conformance(family, check):
    check(family)


def test_the_suite_has_every_check():
    # one test per (family, check): a check added to emcore.testing runs here too
    assert len(FAMILY_CHECKS) == 12


# --- the missing-values check (Family.supports_missing; issue 17, item 4) ----------------

def test_the_missing_values_check_runs_for_every_family_declaring_it():
    from emcore.testing import CAPABILITY_CHECKS, check_family
    assert CAPABILITY_CHECKS == ("check_missing_values",)
    declaring = {fid for fid, record in FAMILIES.items()
                 if getattr(record.factory(2, 2), "supports_missing", False)}
    assert {"poisson", "bernoulli", "categorical", "exponential", "gamma",
            "product-counts", "product-diag-gaussians"} <= declaring
    for fid in sorted(declaring):
        report = check_family(FAMILIES[fid], checks=["check_missing_values"])
        assert [(r.name, r.status) for r in report.results] == [
            ("check_missing_values", "passed")], fid
    # a family without the capability: not applicable, and not added by default
    report = check_family(FAMILIES["gaussian-full-ml"], checks=["check_missing_values"])
    assert report.results[0].status == "not applicable"


def test_the_missing_values_check_catches_the_usual_mistakes():
    import pytest
    from emcore.plugins.discrete import PoissonFamily, PoissonStats
    from emcore.testing import check_family

    class ImputesZero(PoissonFamily):
        # a missing count read as 0: the term -lambda stays in the log-density
        def log_density_observed(self, X, observed, params):
            return self.log_density(np.where(observed, X, 0.0), params)

    class CountsEveryRow(PoissonFamily):
        # each rate divided by every row's weight, not the rows observing it
        def chunk_stats_observed(self, X, observed, weights):
            s = super().chunk_stats_observed(X, observed, weights)
            return PoissonStats(s.weight, s.sums, s.log_fact)

    for mutant, found in ((ImputesZero, "marginal model's log_density"),
                          (CountsEveryRow, "expected_log_likelihood of chunk_stats_observed")):
        with pytest.raises(AssertionError, match=found):
            check_family(mutant(2, 2), capabilities=frozenset(
                {"sampling", "support:nonnegative_integers"}),
                checks=["check_missing_values"])
    # check_family adds the check for a family declaring the capability
    report = check_family(PoissonFamily(2, 2), capabilities=frozenset(
        {"sampling", "support:nonnegative_integers"}))
    assert report.results[-1].name == "check_missing_values"


def test_the_gaussian_family_declares_missing_values_for_independent_coordinates():
    # 'diag' and 'spherical' (maximum likelihood, reg_covar, conjugate prior) declare
    # it, so the parametrised suite above runs check_missing_values for them (and
    # the test above); 'full' and 'tied' correlate the coordinates given the
    # component and do not (their exact path is the compiled one)
    for t in COVARIANCE_TYPES:
        for variant in ("ml", "reg_covar", "prior"):
            fid = f"gaussian-{t}-{variant}"
            family = FAMILIES[fid].factory(2, 2)
            assert family.supports_missing == (t in ("diag", "spherical")), fid


def test_the_missing_values_check_catches_an_m_step_that_ignores_the_mask():
    # the check compares the M-step with the objective Q_obs along lines through
    # it, so it needs no per-coordinate separability (a spherical variance is
    # shared) and still catches an M-step dividing by every row's weight
    import pytest
    from emcore.plugins.discrete import PoissonFamily
    from emcore.plugins.gaussian import GaussianFamily
    from emcore.testing import check_family

    class PoissonAllRows(PoissonFamily):
        def m_step(self, stats, previous):
            return super().m_step(dataclasses.replace(stats, observed=None), previous)

    class SphericalEveryEntry(GaussianFamily):
        # the variance divided by d N_k, as if every entry were observed
        def _observed_denominator(self, n_kj):
            return self.n_features * np.max(n_kj, axis=1)

    for mutant, support in ((PoissonAllRows(2, 2), "support:nonnegative_integers"),
                            (SphericalEveryEntry(2, 2, covariance_type="spherical",
                                                 reg_covar=0.0), "support:real")):
        with pytest.raises(AssertionError, match="the M-step of chunk_stats_observed"):
            check_family(mutant, capabilities=frozenset({"sampling", support}),
                         checks=["check_missing_values"])

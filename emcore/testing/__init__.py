"""Tools for testing component families and code built on emcore.

Three parts, none of which imports pytest at import time:

**Conformance suite.** :func:`check_family` runs every check on a family and
raises an ``AssertionError`` naming each failing check;
:func:`parametrize_with_family_checks` turns the same checks into one pytest
test each (pytest is imported when it is called)::

    from emcore.testing import check_family, parametrize_with_family_checks

    check_family(PoissonFamily(2, 2))                 # plain call

    @parametrize_with_family_checks([PoissonFamily(2, 2)],
                                    known_failures={"check_n_parameters": "why"})
    def test_conformance(family, check):              # one test per check
        check(family)

The checks (:data:`FAMILY_CHECKS`) are chosen by the family's declared
capabilities (``FamilyRecord.capabilities``): ``sampling`` enables the moment
check and the checks that need data drawn from the family; a support
capability (:data:`SUPPORT_CAPABILITIES`, the ``support:*`` entries of
``emcore.plugin_api.SUPPORTS``) enables the normalisation check. A family with
``Family.supports_missing`` also gets ``check_missing_values``
(:data:`CAPABILITY_CHECKS`): log-densities and statistics with masked coordinates
equal those of the marginal model. Parameters
come from the family's optional ``Family.random_params(rng, *,
nearly_degenerate=False)``, or are passed in.

**Hypothesis strategies** (need ``hypothesis``, in emcore's ``test`` extra;
imported on first use): :func:`mixture_datasets`, :func:`family_parameters`,
:func:`posteriors`, :func:`constraint_sets`, :func:`gaussian_mixtures`,
:func:`spd_matrices`, with :func:`sample_gaussian_mixture`,
:class:`MixtureDataset` and :class:`ConstraintSet`.

**Derived tolerances** (docs/elbo_chain.md#tolerances):
:func:`rounding_magnitude`, :func:`tolerance_same_array`,
:func:`tolerance_across`, :func:`elbo_direct`.
"""

from __future__ import annotations

import importlib

from emcore.testing._checks import (CAPABILITY_CHECKS, FAMILY_CHECKS, SUPPORT_CAPABILITIES,
                                    CheckResult,
                                    FamilyCheckReport, check_family,
                                    parametrize_with_family_checks)
from emcore.testing._tolerances import (UNIT_ROUNDOFF, elbo_direct, rounding_magnitude,
                                        summation_depth_for, tolerance_across,
                                        tolerance_same_array)

_STRATEGIES = ("ConstraintSet", "MixtureDataset", "constraint_sets", "family_parameters",
               "gaussian_mixtures", "mixture_datasets", "posteriors",
               "sample_gaussian_mixture", "spd_matrices")

__all__ = ["FAMILY_CHECKS", "SUPPORT_CAPABILITIES", "CheckResult", "FamilyCheckReport",
           "check_family", "parametrize_with_family_checks",
           "UNIT_ROUNDOFF", "elbo_direct", "rounding_magnitude", "summation_depth_for",
           "tolerance_across", "tolerance_same_array", *_STRATEGIES,
           "CAPABILITY_CHECKS"]


def __getattr__(name: str):
    # The strategies import hypothesis: only when one is asked for.
    if name in _STRATEGIES:
        module = importlib.import_module("emcore.testing._strategies")
        return getattr(module, name)
    raise AttributeError(f"module 'emcore.testing' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

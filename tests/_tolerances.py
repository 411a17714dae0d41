"""Derived rounding tolerances (docs/elbo_chain.md#tolerances).

The bounds live in :mod:`emcore.testing` (public, with their derivations, the
formulas themselves written once in :mod:`emcore.engine`); this module keeps the
short names the tests use.
"""

from emcore.testing import (UNIT_ROUNDOFF as U, elbo_direct, rounding_magnitude,
                            summation_depth_for, tolerance_across, tolerance_same_array)

depth = summation_depth_for
magnitude = rounding_magnitude
direct_elbo = elbo_direct
#: check A, (k, n, d, M): ELBO and loglik from the same computed log-joint array
tau_same_array = tolerance_same_array
#: check B, (k, n, d, amplification, M): quantities from different computations
#: (statistics vs a pass, two parameter values); amplification = 1 + sqrt(d kappa_max)
tau_across = tolerance_across

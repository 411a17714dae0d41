"""Shared test configuration: hypothesis profiles and the installed-package guard."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Compiled code and BLAS warm-up make timings erratic: no deadlines. CI runs a
# fixed, derandomised profile (reproducible); developers get more examples.
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
# The core degenerate-data properties (tests/test_degenerate.py) at a few thousand
# examples each: HYPOTHESIS_PROFILE=heavy, run by ci/heavy.sh (its time is in that
# script); derandomised like ci, so a failure reproduces.
settings.register_profile(
    "heavy", max_examples=2000, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config):
    # ci/test.sh installs emcore (not editable) and sets this: make sure the tests
    # exercise the installed package, not the uncompiled source folder.
    if os.environ.get("EMCORE_TEST_INSTALLED"):
        import emcore
        if "site-packages" not in emcore.__file__:
            raise pytest.UsageError(
                f"emcore was imported from {emcore.__file__}, not the installed package")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)

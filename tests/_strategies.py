"""Hypothesis strategies for the suite: emcore.testing's, under the suite's short names.

The strategies themselves live in :mod:`emcore.testing` (public, for other test
suites too); this module only keeps the names and keyword spellings the tests use.
"""

from emcore.testing import (gaussian_mixtures as _gaussian_mixtures, posteriors,
                            sample_gaussian_mixture, spd_matrices as _spd_matrices)
from emcore.testing._strategies import FINITE

FIN = FINITE


def spd_matrices(d, log10_cond_max=3.0, log10_scale=(-1.0, 1.0)):
    """Symmetric positive definite d x d matrices with cond <= 10**log10_cond_max."""
    return _spd_matrices(d, max_log10_condition=log10_cond_max, log10_scale=log10_scale)


def gaussian_mixtures(max_k=4, max_d=4, min_k=1, separation=10.0):
    """(weights, means, covariances) of a Gaussian mixture."""
    return _gaussian_mixtures(min_components=min_k, max_components=max_k,
                              max_features=max_d, separation=separation)


def sample_mixture(mixture, n, seed):
    return sample_gaussian_mixture(mixture, n, seed)


def log_q(n, k):
    """Arbitrary q: the log-softmax of bounded logits, row by row."""
    return posteriors(n, k)


def params_of(family, mixture):
    w, means, covs = mixture
    return w, family.params_from_covariances(means, covs)

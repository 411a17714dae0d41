"""Posterior rules: ``soft`` (the exact posterior, i.e. standard EM)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from emcore.plugin_api import PosteriorRule, PosteriorRuleRecord, hookimpl
from emcore.plugins._posterior_kernels import SoftPosteriorKernel

__all__ = ["SoftPosterior"]


class SoftPosterior(PosteriorRule):
    """q = p(z | x, theta), computed in log space.

    log q_ik = (a_ik - max_k a_ik) - log sum_k exp(a_ik - max_k a_ik). With this
    rule the ELBO equals the log-likelihood after every E-step, and EM keeps the
    log-likelihood non-decreasing.
    """

    objective = "log-likelihood"

    def __init__(self) -> None:
        self._kernel = SoftPosteriorKernel()

    def posterior(self, log_joint: np.ndarray, row_weights: Optional[np.ndarray] = None):
        return self._kernel.posterior(log_joint, row_weights)

    def compiled_kernel(self) -> SoftPosteriorKernel:
        return self._kernel


@hookimpl
def emcore_register_posterior_rules():
    return [PosteriorRuleRecord(
        name="soft", factory=SoftPosterior,
        capabilities=frozenset({"compiled_kernel"}),
        description="exact posterior q = p(z|x, theta): standard EM, monotone log-likelihood")]

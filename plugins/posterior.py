"""Posterior rules: ``soft`` (standard EM), ``hard`` (classification EM) and
``tempered`` (deterministic annealing).

Each rule picks, row by row, the q of its set maximising
ELBO_tau(q_i) = sum_k q_ik a_ik + tau H(q_i), a_ik = log p(x_i, z_i = k), and
EM with it keeps that maximum F(theta) = sum_i max_q ELBO_tau(q_i) non-decreasing:

- soft: all q, tau = 1: q = p(z | x, theta), F = log-likelihood;
- hard: point masses, tau = 0: q on argmax_k a_ik, F = classification log-likelihood
  (CEM, Celeux & Govaert 1992; k-means for equal weights and one shared variance);
- tempered: all q, tau = T: q proportional to p(x, z)^(1/T),
  F = T sum_i log sum_k exp(a_ik / T) (deterministic annealing, Ueda & Nakano 1998).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from emcore.plugin_api import PosteriorRule, PosteriorRuleRecord, hookimpl
from emcore.plugins._posterior_kernels import HardPosteriorKernel, SoftPosteriorKernel

__all__ = ["SoftPosterior", "HardPosterior", "TemperedPosterior"]


class _KernelRule(PosteriorRule):
    """A rule whose Python face is its compiled kernel's (one implementation)."""

    _kernel = None

    def posterior(self, log_joint: np.ndarray, row_weights: Optional[np.ndarray] = None,
                  *, start: int = 0):
        return self._kernel.posterior(log_joint, row_weights)

    def compiled_kernel(self):
        return self._kernel


class SoftPosterior(_KernelRule):
    """q = p(z | x, theta), computed in log space.

    log q_ik = (a_ik - max_k a_ik) - log sum_k exp(a_ik - max_k a_ik). With this
    rule the ELBO equals the log-likelihood after every E-step, and EM keeps the
    log-likelihood non-decreasing.
    """

    objective = "log-likelihood"
    entropy_weight = 1.0

    def __init__(self) -> None:
        self._kernel = SoftPosteriorKernel(1.0)


class HardPosterior(_KernelRule):
    """q is a point mass on the most probable component (ties: the lowest index).

    Classification EM: the E-step assigns each row to argmax_k log p(x_i, z_i = k),
    the M-step fits each component to its rows. Keeps the classification
    log-likelihood sum_i max_k log p(x_i, z_i = k) non-decreasing (the entropy of
    q is 0). Converges in finitely many steps, to a partition that the next
    E-step does not change.
    """

    objective = "classification log-likelihood"
    entropy_weight = 0.0

    def __init__(self) -> None:
        self._kernel = HardPosteriorKernel()


class TemperedPosterior(_KernelRule):
    """q_ik proportional to p(x_i, z_i = k)^(1/T): tempered (annealed) posterior.

    Parameters
    ----------
    temperature : float, default 1.0
        T > 0. T = 1 is the exact posterior (the soft rule); T > 1 flattens q
        (deterministic annealing starts hot and lowers T); T -> 0 tends to the
        hard rule. At fixed T, EM keeps the free energy
        F_T = T sum_i log sum_k p(x_i, z_i = k)^(1/T) non-decreasing.
    """

    objective = "tempered free energy"

    def __init__(self, temperature: float = 1.0) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError("The 'temperature' parameter of the tempered posterior rule "
                             f"must be a positive finite number. Got {temperature!r} instead.")
        self.temperature = float(temperature)
        self.entropy_weight = self.temperature
        self._kernel = SoftPosteriorKernel(self.temperature)


@hookimpl
def emcore_register_posterior_rules():
    return [
        PosteriorRuleRecord(
            name="soft", factory=SoftPosterior,
            capabilities=frozenset({"compiled_kernel"}),
            description="exact posterior q = p(z|x, theta): standard EM, "
                        "monotone log-likelihood"),
        PosteriorRuleRecord(
            name="hard", factory=HardPosterior,
            capabilities=frozenset({"compiled_kernel"}),
            description="point mass on the most probable component: classification EM, "
                        "monotone classification log-likelihood"),
        PosteriorRuleRecord(
            name="tempered", factory=TemperedPosterior,
            capabilities=frozenset({"compiled_kernel"}),
            description="q proportional to p(x, z)^(1/T): deterministic annealing, "
                        "monotone tempered free energy at fixed T"),
    ]

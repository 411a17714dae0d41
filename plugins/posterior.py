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

and two Monte-Carlo rules, whose q is a draw from the posterior and which keep
nothing monotone (docs/variants.md#mcem):

- sampled: q_i the average of ``n_samples`` draws z_i ~ p(z | x_i, theta)
  (Monte-Carlo EM, Wei & Tanner 1990);
- stochastic: one draw per row (stochastic EM, Celeux & Diebolt 1985).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

from emcore.plugin_api import PosteriorRule, PosteriorRuleRecord, hookimpl
from emcore.plugins._posterior_kernels import HardPosteriorKernel, SoftPosteriorKernel

__all__ = ["SoftPosterior", "HardPosterior", "TemperedPosterior", "SampledPosterior",
           "StochasticPosterior"]


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


def _uniforms(key: int, pass_index: int, first: int, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1): positions first .. first + count - 1 of the stream
    of one pass, Philox4x64 keyed by (key, pass_index). Position p is raw output p
    (counter block p // 4, word p % 4), so a row's draws depend only on the key, the
    pass and the row's index: not on the chunking, the threads or the other rows."""
    bg = np.random.Philox(key=np.array([key, pass_index], dtype=np.uint64))
    bg.advance(first // 4)
    offset = first % 4
    raw = bg.random_raw(4 * (-(-(offset + count) // 4)))[offset:offset + count]
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _check_int(value: Any, name: str, owner: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"The {name!r} parameter of {owner} must be an int >= {low}. "
                         f"Got {value!r} instead.")
    return int(value)


class SampledPosterior(PosteriorRule):
    """Monte-Carlo EM: q_i the average of ``n_samples`` draws z_i ~ p(z | x_i, theta).

    The M-step then maximises the Monte-Carlo estimate Q^_t of the expected
    complete-data log-likelihood (Wei & Tanner 1990). What is monotone: only the
    chain of the drawn q, ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) <= loglik(theta_{t+1})
    (the M-step maximises Q^_t; the engine checks it, ``step='mcem'``). The
    log-likelihood is not monotone: theta_{t+1} is random, within
    O(1 / sqrt(n_samples)) of the EM step from theta_t. The log-likelihood F(theta_t)
    itself is exact (computed from the log joint of the pass).

    Each pass also estimates the ascent of the previous step,
    Q^_t(theta_{t+1}) - Q^_t(theta_t), with its Monte-Carlo standard error (from the
    per-row spread of the draws' log joint change; ``report()``, recorded as
    ``Iteration.mc_standard_error``), and the fit stops when the upper 95%
    confidence bound of the ascent is below tol x |loglik| (Caffo, Jank & Jones
    2005): a small ascent that is not just Monte-Carlo noise. Keeps the previous
    pass's log joint and q (2 x n x K floats).

    Draws are reproducible: row i's draws in pass p come from a counter-based
    stream keyed by (seed, p) at position i x n_samples, whatever the chunking
    (docs/variants.md#mcem). The seed comes from the fit's ``random_state``
    (``set_random_state``), or from ``random_state`` here.

    Parameters
    ----------
    n_samples : int, default 100
        Draws per row and iteration.
    random_state : None or int
        Seed when the fit does not give one.
    """

    objective = "log-likelihood"
    entropy_weight = 1.0
    #: a row's q depends on its index (its stream): the engine's Python pass
    needs_all_rows = True
    stochastic = "mcem"
    _owner = "the sampled posterior rule"

    def __init__(self, n_samples: int = 100, random_state: Optional[int] = None) -> None:
        self.n_samples = _check_int(n_samples, "n_samples", self._owner, 1)
        self._reset(int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
                    if random_state is None
                    else _check_int(random_state, "random_state", self._owner, 0))

    def _reset(self, key: int) -> None:
        self._key = int(key) % 2 ** 64
        self._pass = -1
        self._current: dict = {}
        self._previous: dict = {}
        self._ascent = self._variance = 0.0
        self._compared = False

    def set_random_state(self, random_state: np.random.Generator) -> None:
        self._reset(int(random_state.integers(0, 2 ** 63)))

    def prepare(self, log_joint_chunks, sample_weight) -> None:
        self._pass += 1
        self._previous, self._current = self._current, {}
        self._ascent = self._variance = 0.0
        self._compared = False

    def _draw(self, resp: np.ndarray, start: int) -> np.ndarray:
        """q: each row's share of ``n_samples`` draws from its row of ``resp``."""
        rows, k = resp.shape
        S = self.n_samples
        u = _uniforms(self._key, self._pass, start * S, rows * S).reshape(rows, S)
        cum = np.cumsum(resp, axis=1)
        # inverse CDF on the row's computed total (rows sum to 1 within rounding)
        z = np.minimum(np.sum(cum[:, None, :] <= (u * cum[:, -1:])[:, :, None], axis=2),
                       k - 1)
        counts = np.zeros(rows * k)
        np.add.at(counts, (np.arange(rows)[:, None] * k + z).ravel(), 1.0)
        return counts.reshape(rows, k) / S

    def _monte_carlo_error(self, log_joint, row_w, start) -> None:
        """Add this chunk's share of the previous step's sampled ascent
        sum_i w_i mean_s [a_{i z_is}(theta_{t+1}) - a_{i z_is}(theta_t)] and of its
        variance sum_i w_i^2 var_s(.) / S (docs/variants.md#mcem)."""
        previous = self._previous.get(start)
        if previous is None or previous[0].shape != log_joint.shape:
            return
        old_a, old_q = previous
        drawn = old_q > 0
        delta = np.where(drawn, log_joint - np.where(drawn, old_a, 0.0), 0.0)
        mean = np.sum(old_q * delta, axis=1)
        S = self.n_samples
        spread = np.maximum(np.sum(old_q * delta * delta, axis=1) - mean * mean, 0.0)
        var = spread / (S - 1) if S > 1 else np.zeros_like(spread)
        w = np.ones_like(mean) if row_w is None else row_w
        self._ascent += float(np.dot(w, mean))
        self._variance += float(np.dot(w * w, var))
        self._compared = True

    def posterior(self, log_joint: np.ndarray, row_weights: Optional[np.ndarray] = None,
                  *, start: int = 0):
        a = np.asarray(log_joint, dtype=np.float64)
        m = np.max(a, axis=1, keepdims=True)
        if not np.all(np.isfinite(m)):
            bad = int(np.flatnonzero(~np.isfinite(m[:, 0]))[0])
            raise ValueError(f"row {start + bad} has no finite log joint probability")
        with np.errstate(under="ignore"):
            shifted = a - m
            log_norm = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
            resp = np.exp(shifted - log_norm)
        row_value = (m + log_norm)[:, 0]
        q = self._draw(resp, start)
        with np.errstate(divide="ignore"):
            log_q = np.log(q)
        drawn = q > 0
        a_q = np.where(drawn, a, 0.0)
        lq = np.where(drawn, log_q, 0.0)
        w = np.ones(a.shape[0]) if row_weights is None else row_weights
        totals = np.array([
            float(np.dot(w, row_value)),
            float(np.dot(w, np.sum(q * a_q, axis=1))),
            float(np.dot(w, -np.sum(q * lq, axis=1))),
            float(np.dot(w, np.abs(row_value) + np.sum(q * (np.abs(a_q) + np.abs(lq)),
                                                       axis=1)))])
        if self.stochastic == "mcem":
            self._monte_carlo_error(a, row_weights, start)
            self._current[start] = (a.copy(), q)
        return log_q, q, row_value, totals

    def report(self) -> Optional[dict]:
        """The draws per row and, from the second pass, the previous step's
        sampled ascent and its Monte-Carlo standard error."""
        state = {"n_samples": self.n_samples}
        if self._compared:
            state.update(ascent=self._ascent,
                         mc_standard_error=math.sqrt(self._variance))
        return state


class StochasticPosterior(SampledPosterior):
    """Stochastic EM: one draw z_i ~ p(z | x_i, theta) per row (Celeux & Diebolt 1985).

    The M-step fits the completed data (a hard partition drawn from the
    posterior), so the parameters form a Markov chain that fluctuates around a
    maximum of the likelihood instead of converging; it escapes saddle points and
    poor starts more easily than EM. Nothing is monotone but the chain of the drawn
    q (``step='sem'``). The fit runs ``max_iter`` iterations and returns the
    average of the parameters after ``burn_in`` iterations (the family's
    unconstrained coordinates, ``Family.to_unconstrained``; the chain's last
    state is ``FitResult.chain_last``). A component can receive no draws: the
    family keeps its previous parameters (or raises, if it cannot).

    Parameters
    ----------
    burn_in : int, default 50
        Iterations before the running average starts.
    random_state : None or int
        Seed when the fit does not give one.
    """

    objective = "log-likelihood"
    stochastic = "sem"
    _owner = "the stochastic posterior rule"

    def __init__(self, burn_in: int = 50, random_state: Optional[int] = None) -> None:
        super().__init__(n_samples=1, random_state=random_state)
        self.burn_in = _check_int(burn_in, "burn_in", self._owner, 0)

    def report(self) -> Optional[dict]:
        return {"n_samples": 1}


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
        PosteriorRuleRecord(
            name="sampled", factory=SampledPosterior,
            description="average of n_samples draws z ~ p(z|x, theta): Monte-Carlo EM, "
                        "not monotone (stops on its Monte-Carlo error)"),
        PosteriorRuleRecord(
            name="stochastic", factory=StochasticPosterior,
            description="one draw z ~ p(z|x, theta) per row: stochastic EM, a Markov "
                        "chain; reports the running average of the parameters"),
    ]

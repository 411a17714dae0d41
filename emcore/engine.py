"""The EM loop: Python logic around the compiled chunk loop.

A posterior rule picks q from its set (all q: soft; point masses: hard; ...)
maximising ELBO_tau(q, theta) = E_q[log p(x, z | theta)] + tau H(q), tau being
the rule's entropy weight (1 soft, 0 hard, T tempered). The maximum is the
rule's objective F(theta): the log-likelihood for the soft rule (standard EM),
the classification log-likelihood for the hard rule (CEM).

One iteration t, for parameters theta_t = (pi_t, family parameters):

1. a pass over the data at theta_t (chunk by chunk: family log-densities, plus
   log pi, into the posterior rule, then the family's weighted statistics),
   giving F(theta_t), ELBO_tau(q_t, theta_t), the entropy term tau H(q_t) and stats_t;
2. the M-step theta_{t+1} = argmax E_{q_t}[log p(x, z | theta)] from stats_t;
3. ELBO_tau(q_t, theta_{t+1}) = Q_{q_t}(theta_{t+1}) + tau H(q_t), from stats_t alone;
4. the next pass gives F(theta_{t+1}), which closes the chain

       F(theta_t) = ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) <= F(theta_{t+1})

   and the stopping rule compares the objective at theta_t and theta_{t+1}.

Every M-step is followed by a pass, so each :class:`Iteration` record is complete
and the fitted parameters always have a computed log-likelihood.
The variants (docs/variants.md) run through the same steps: a generalized-EM
family (``Family.generalized_m_step``) is checked for ascent only, any other for
a maximising M-step too; SQUAREM (``accelerate='squarem'``) adds extrapolation
records between EM steps; a Monte-Carlo rule (``PosteriorRule.stochastic``) has
its drawn q's chain checked. ``Iteration.step`` says which step a record is.
No registry or hook is called here: the caller resolves the family and rule once.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field, replace as dataclass_replace
from typing import Any, Callable, Iterable, Optional, Protocol

import numpy as np

from emcore._chunks import chunk_rows_for, stats_from_assignments
from emcore._logging import FitReporter, verbose_output
from emcore._core._passes import MAX_BLOCKS, data_pass as _compiled_pass
from emcore._threads import effective_n_threads, single_threaded_blas
from emcore.exceptions import ChainViolationWarning, ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import (UNIT_ROUNDOFF, Family, LatentStructure, MixtureStructure,
                               PassResult, PosteriorRule, _validate_in_debug,
                               family_chunk_stats)

__all__ = ["PassResult", "Iteration", "FitResult", "data_pass", "run_em", "MixtureStructure",
           "best_of_starts", "stats_from_assignments", "chunk_rows_for",
           "equality_tolerance", "chain_tolerance"]

STOP_REASONS = ("tol", "max_iter", "interrupted", "callback")

#: the steps whose q is drawn, not computed: no monotone objective (docs/variants.md)
STOCHASTIC_STEPS = ("mcem", "sem")


def summation_depth(n_rows: int, chunk_rows: int) -> int:
    """Longest chain of additions behind any pass total.

    Rows add up sequentially within a chunk, chunks sequentially within a block,
    blocks sequentially (emcore/_core/_passes.pyx). This count replaces
    ceil(log2 n) of the pairwise-summation bound in the tolerances
    (docs/elbo_chain.md#error-model).
    """
    n_chunks = max(1, -(-n_rows // chunk_rows))
    n_blocks = min(n_chunks, MAX_BLOCKS)
    return min(n_rows, chunk_rows) + -(-n_chunks // n_blocks) + n_blocks


def equality_tolerance(n_components: int, depth: int, magnitude: float) -> float:
    """tau_A = 2 (K + 3 + depth) u M: ELBO and F computed from one log-joint array.

    The row logsumexp (K + 2 operations), the row ELBO (K + 1) and the chunked
    sum over rows (``depth``, :func:`summation_depth`); the family's own errors
    cancel because both sides see the same computed array. M is the pass's
    rounding magnitude sum_i [|l_i| + sum_k q_ik (|a_ik| + |log q_ik|)]. The
    factor 2 covers the gamma_m = m u / (1 - m u) denominators and libm's
    last-place errors (docs/elbo_chain.md#error-model, #check-a).
    """
    return 2.0 * (n_components + 3 + depth) * UNIT_ROUNDOFF * magnitude


def chain_tolerance(n_components: int, n_features: int, depth: int, amplification: float,
                    magnitude: float, stats_magnitude: float = 0.0) -> float:
    """tau_B = 2 (K + d + 4 + depth) u (a M + M_Q): two sides from different computations.

    Statistics against a pass over the data, or two parameter values. ``magnitude``
    M: the magnitudes of the terms on both sides (passes, penalties, log priors);
    ``amplification`` a: the family's bound on how much its log-density amplifies
    rounding (1 + sqrt(d kappa) for a Gaussian, ``Family.rounding_amplification``);
    ``stats_magnitude`` M_Q: ``Family.expected_log_likelihood_magnitude``, for a
    statistics-based expected log-likelihood that loses more than the per-row path
    (a Gaussian's scatter: kappa, not sqrt(kappa)); its own bound, (depth + 2d + 3)
    u M_Q, is below this coefficient times u M_Q (docs/elbo_chain.md#check-b).
    """
    return (2.0 * (n_components + n_features + 4 + depth) * UNIT_ROUNDOFF
            * (amplification * magnitude + stats_magnitude))


@dataclass(frozen=True)
class Iteration:
    """One EM iteration t: from theta_t to theta_{t+1}.

    F is the posterior rule's objective (the log-likelihood for soft EM, the
    classification log-likelihood for hard EM; see the module docstring). The
    chain ``value = elbo_at_start <= elbo <= value_next`` holds up to the
    derived rounding tolerances, with ``penalty_change`` added on the left of the
    middle inequality when the M-step is penalised (reg_covar): see
    :meth:`chain_slacks`. A rule that solves its E-step to a solver's accuracy
    (posterior regularization) adds ``tolerance_rule`` to the last link and
    records its report of the pass at theta_t in ``rule_state``.
    """
    iteration: int            #: t, from 0
    value: float              #: F(theta_t) (soft rule: loglik(theta_t))
    elbo_at_start: float      #: ELBO(q_t, theta_t); equals F(theta_t) for the rule's q
    elbo: float               #: ELBO(q_t, theta_{t+1}), from the statistics
    value_next: float         #: F(theta_{t+1})
    objective: float          #: the stopping rule's objective at theta_{t+1}
    relative_change: float    #: |objective_{t+1} - objective_t| / |objective_{t+1}|
    penalty_change: float     #: pen_t(theta_{t+1}) - pen_t(theta_t); 0 without reg
    param_change: float       #: max relative change of any parameter array
    tolerance_equality: float  #: rounding bound for |elbo_at_start - value|
    tolerance: float          #: rounding bound for the two inequalities
    empty_components: tuple = ()  #: components with zero weight after the M-step
    #: wall time of the iteration (not part of equality: identical fits compare equal)
    seconds: float = field(default=0.0, compare=False)
    log_prior: float = 0.0    #: log p(theta_t) (MAP-EM; 0 without a prior)
    log_prior_next: float = 0.0  #: log p(theta_{t+1})
    #: extra tolerance of the bound link from the rule (PR: duality gap + |lambda| x
    #: violation, see PosteriorRule.bound_tolerance); 0 for exact rules
    tolerance_rule: float = 0.0
    #: the rule's report() for the pass at theta_t (PR: J, loglik, violations,
    #: duality gap, lambda), None for rules without one
    rule_state: Optional[dict] = field(default=None, compare=False)
    #: which kind of step ran (docs/variants.md): 'em' (an M-step that maximises;
    #: checked by ``m_step_gain``), 'gem' (a family's M-step that only increases Q:
    #: ``Family.generalized_m_step``), 'squarem' (an accepted SQUAREM extrapolation:
    #: ``elbo`` is ELBO(q', theta') at the extrapolated point, so the chain says the
    #: jump did not lower F), 'squarem-fallback' (a rejected one: the fit stays),
    #: 'mcem' / 'sem' (Monte-Carlo / stochastic EM: q is a draw, see chain_slacks)
    step: str = "em"
    #: Q_t(M(theta_{t+1})) - Q_t(theta_{t+1}): what a second M-step from the first's
    #: output gains; 0 for a maximising M-step. Computed for 'em' steps at
    #: t = 0, 1, 2, 4, 8, ... (0 when not computed)
    m_step_gain: float = 0.0
    #: MCEM: the Monte-Carlo standard error of the sampled ascent
    #: Q^_t(theta_{t+1}) - Q^_t(theta_t) (0 for exact E-steps)
    mc_standard_error: float = 0.0
    #: SQUAREM records: the step length s (clamped; ``step_length_s3`` the S3 value
    #: ||r|| / ||v||), what was compared (``compared``, ``objective_before``,
    #: ``objective_extrapolated``), ``accepted``, and for a fallback its ``reason``;
    #: a jump judged after its stabilising EM step (``stabilised``, ``passes`` 2)
    #: also ``objective_stabilised`` and that step's ``stabilising_step_slacks``
    extrapolation: Optional[dict] = field(default=None, compare=False)

    @property
    def gap(self) -> float:
        """F(theta_{t+1}) - ELBO(q_t, theta_{t+1}) >= 0 (soft: KL(q_t || p(z | x, theta_{t+1})))."""
        return self.value_next - self.elbo

    def chain_slacks(self, penalised: bool = True) -> dict:
        """Each link of the chain as (violation / tolerance); > 1 means it fails.

        ``equality``: |ELBO(q_t, theta_t) - F(theta_t)|;
        ``ascent``: F(theta_t) + log p(theta_t) [+ penalty_change]
        - ELBO(q_t, theta_{t+1}) - log p(theta_{t+1}) (the log prior is 0 without a
        prior; with one this is the MAP chain);
        ``bound``: ELBO(q_t, theta_{t+1}) - F(theta_{t+1}), against
        ``tolerance + tolerance_rule``.
        With ``penalised=False`` the ascent link ignores the penalty (the plain
        EM inequality, which a reg_covar step need not satisfy).
        For ``step`` 'em', also ``maximal``: ``m_step_gain`` against ``tolerance``
        (an M-step declared maximising that only increases Q fails it). For the
        Monte-Carlo steps ('mcem', 'sem') the chain of the drawn q:
        ELBO(q_t, theta_t) <= F(theta_t) (``equality``, one-sided),
        ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) (``ascent``) and ``bound``;
        F is not monotone there (docs/variants.md).
        """
        pen = self.penalty_change if penalised else 0.0
        if self.step in STOCHASTIC_STEPS:
            # q_t is a draw, not the maximiser of ELBO(., theta_t): ELBO(q_t, theta_t)
            # <= F(theta_t) only, and the M-step ascends from ELBO(q_t, theta_t)
            # (docs/variants.md#mcem); F itself is not monotone
            return {
                "equality": (self.elbo_at_start - self.value) / self.tolerance_equality,
                "ascent": ((self.elbo_at_start + self.log_prior + pen)
                           - (self.elbo + self.log_prior_next)) / self.tolerance,
                "bound": (self.elbo - self.value_next)
                         / (self.tolerance + self.tolerance_rule),
            }
        slacks = {
            "equality": abs(self.elbo_at_start - self.value) / self.tolerance_equality,
            "ascent": ((self.value + self.log_prior + pen)
                       - (self.elbo + self.log_prior_next)) / self.tolerance,
            "bound": (self.elbo - self.value_next) / (self.tolerance + self.tolerance_rule),
        }
        if self.step == "em":
            # a maximising M-step gains nothing when applied again to its output
            # (docs/variants.md#gem); a GEM step only has to ascend
            slacks["maximal"] = self.m_step_gain / self.tolerance
        # a SQUAREM jump judged after its stabilising EM step: that step's chain too
        for link, slack in ((self.extrapolation or {}).get("stabilising_step_slacks")
                            or {}).items():
            slacks[f"stabilising {link}"] = slack
        return slacks

    def chain_holds(self, penalised: bool = True) -> bool:
        """True if every link of the chain holds within its tolerance."""
        return all(v <= 1.0 for v in self.chain_slacks(penalised).values())


@dataclass
class FitResult:
    """The outcome of :func:`run_em`."""
    weights: np.ndarray
    params: dict
    history: tuple
    n_iter: int
    stop_reason: str          #: 'tol', 'max_iter', 'interrupted' or 'callback'
    value: float              #: F, the rule's objective, at the returned parameters
    objective: float          #: the monotone objective at the returned parameters
    objective_name: str
    n_samples: float          #: sum of the sample weights (n without weights)
    seconds: float = 0.0
    resp_sum: np.ndarray = field(default=None)
    stats: Any = None         #: the family's statistics at the returned parameters
    rule_state: Optional[dict] = None   #: the rule's report() at the returned parameters
    #: passes over the data the fit made (one per record, plus the first; a rejected
    #: SQUAREM point that failed validation costs none, a SQUAREM record with
    #: ``extrapolation["passes"]`` costs that many; SEM adds one at the average)
    n_passes: int = 0
    #: SEM: the chain's last (weights, params); the returned ones are its running
    #: average over ``n_averaged`` iterations after the rule's burn-in
    chain_last: Optional[tuple] = None
    n_averaged: int = 0
    #: the family's lower-precision arithmetic (float32 rows) was widened to double
    #: for the whole fit: its rounding bound exceeded ``tol * |objective|`` at the start
    #: (``Family.widened``; docs/elbo_chain.md#float32-level)
    widened: bool = False

    @property
    def converged(self) -> bool:
        return self.stop_reason == "tol"

    @property
    def chain_holds(self) -> bool:
        """True if every iteration satisfies the (penalised) ELBO chain."""
        return all(it.chain_holds() for it in self.history)


# --- one pass ---------------------------------------------------------------------

def _log_weights(weights: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(weights, dtype=np.float64))


#: chunks a pass gives each of its threads at least (see _pass_threads)
_CHUNKS_PER_THREAD = 2


def _pass_threads(n_rows: int, chunk_rows: int, n_jobs: Optional[int]) -> int:
    """Threads for a pass over n_rows: ``n_jobs``'s, at most one per
    ``_CHUNKS_PER_THREAD`` chunks. A pass's blocks are whole chunks, so with
    fewer the threads' shares are uneven and a second thread saves at most
    1 - 1 / 1.5 of a pass of three chunks; it pays a fork and join per pass,
    and on a busy machine a time slice whenever one thread waits for the other
    to be scheduled (measured under load, (5e3, 8), two chunks: 0.7 ms per pass
    on one thread, 12-20 ms on two). The numbers do not depend on it."""
    n_chunks = -(-n_rows // chunk_rows)
    return max(1, min(effective_n_threads(n_jobs), n_chunks // _CHUNKS_PER_THREAD))


def data_pass(X: np.ndarray, family: Family, rule: PosteriorRule, weights: np.ndarray,
              params: dict, *, n_jobs: Optional[int] = 1, with_stats: bool = True,
              sample_weight: Optional[np.ndarray] = None,
              out_log_resp: Optional[np.ndarray] = None,
              out_row_value: Optional[np.ndarray] = None,
              out_labels: Optional[np.ndarray] = None,
              chunk_rows: Optional[int] = None) -> PassResult:
    """One E-step pass over X at (weights, params), chunk by chunk.

    Uses the compiled chunk loop when both the family and the rule give compiled
    kernels, otherwise a Python loop over the same chunks (which first hands the
    rule every chunk's log joint through ``rule.prepare``). ``out_log_resp``
    (n, k) and ``out_row_value`` (n,), the rule's per-row objective (log p(x_i) for
    the soft rule), are filled when given; with a hard rule, also ``out_labels``
    (n,) of dtype intp, each row's component. ``X`` may also be a source of row
    blocks (:class:`RowBlocks`: memmap, h5py, zarr, Dask), over whose blocks this
    pass runs (:func:`block_pass`), merged in block order.
    """
    if not isinstance(X, np.ndarray):
        if rule.needs_all_rows:
            raise ValueError(f"the {type(rule).__name__} posterior rule needs all rows in "
                             "memory (a numpy array), not a chunked source")
        return _blocks_pass(X, family, rule, weights, params, n_jobs=n_jobs,
                            with_stats=with_stats, sample_weight=sample_weight,
                            out_log_resp=out_log_resp, out_row_value=out_row_value,
                            out_labels=out_labels, chunk_rows=chunk_rows)
    n, d = X.shape
    chunk_rows = chunk_rows or chunk_rows_for(d)
    log_w = _log_weights(weights)
    fam_kernel = family.compiled_kernel(params)
    rule_kernel = rule.compiled_kernel()
    if fam_kernel is not None and rule_kernel is not None:
        with single_threaded_blas():
            buffer, resp_sum, totals = _compiled_pass(
                fam_kernel, rule_kernel, X, log_w, sample_weight, chunk_rows,
                _pass_threads(n, chunk_rows, n_jobs), with_stats, out_log_resp, out_row_value,
                out_labels)
        stats = family.stats_from_buffer(buffer) if with_stats else None
        rule_state = None
    else:       # Python families read float64 rows (a float32 X is converted here)
        stats, resp_sum, totals = _python_pass(
            np.asarray(X, dtype=np.float64), family, rule, log_w, params, sample_weight, chunk_rows, with_stats,
            out_log_resp, out_row_value, out_labels)
        rule_state = rule.report()
    return PassResult(stats, resp_sum, float(totals[0]), float(totals[1]),
                      float(totals[2]), float(totals[3]), rule_state)


class RowBlocks(Protocol):
    """What :func:`data_pass` and :func:`run_em` need of data read a block of rows at a
    time (``emcore._sources.ChunkedSource`` and ``emcore.distributed.DaskSource``):
    the one interface between the engine and a source.

    ``shape`` is (n_samples, n_features); the blocks are consecutive runs of
    ``block_rows`` rows (the last may be shorter), a multiple of the pass's chunk
    size, so the chunks inside a block are the in-memory pass's chunks.
    ``X[a:b]`` gives rows as a C-contiguous float64 array (initialisation).
    """
    shape: tuple
    block_rows: int

    def map_blocks(self, fn: Callable, shared: Any, *, row_inputs: tuple = (),
                   row_outputs: tuple = ()) -> Iterable:
        """``fn(rows, start, shared, *inputs, *outputs)`` of each block, an iterable
        in block order: ``rows`` the block's rows as C-contiguous float64, ``start`` its
        first row, ``inputs``/``outputs`` the block's slices ``a[start:stop]`` of
        each (n, ...) array of ``row_inputs``/``row_outputs`` (None stays None).
        ``fn`` and ``shared`` must pickle (a cluster runs ``fn`` where the rows
        are, with ``shared`` sent once per call); ``fn`` writes the outputs in
        place, so a source runs the blocks locally when an output is given."""

    def summation_depth(self, chunk_rows: int) -> int:
        """Longest chain of additions behind a pass total (for the chain's tolerance)."""


_ROW = re.compile(r"\brow (\d+)")      # a row number in a block's error message


def block_pass(rows: np.ndarray, start: int, pass_args: tuple,
               sample_weight: Optional[np.ndarray] = None,
               out_log_resp: Optional[np.ndarray] = None,
               out_row_value: Optional[np.ndarray] = None,
               out_labels: Optional[np.ndarray] = None) -> tuple:
    """:func:`data_pass` over one block of a source; what ``map_blocks`` maps.

    ``pass_args`` = (family, rule, weights, params, with_stats, chunk_rows, n_jobs).
    Returns (stats, resp_sum, totals) with totals = (value, expected log joint,
    entropy, magnitude): what crosses the network from a worker. Errors name
    rows counted from the source's first row.
    """
    family, rule, weights, params, with_stats, chunk_rows, n_jobs = pass_args
    try:
        res = data_pass(rows, family, rule, weights, params, n_jobs=n_jobs,
                        with_stats=with_stats, sample_weight=sample_weight,
                        out_log_resp=out_log_resp, out_row_value=out_row_value,
                        out_labels=out_labels, chunk_rows=chunk_rows)
    except (ValueError, FloatingPointError) as exc:
        raise type(exc)(_ROW.sub(lambda m: f"row {int(m.group(1)) + start}",
                                 str(exc))) from None
    return (res.stats, res.resp_sum,
            (res.value, res.expected_log_joint, res.entropy, res.magnitude))


def _blocks_pass(X: RowBlocks, family, rule, weights, params, *, n_jobs, with_stats,
                 sample_weight, out_log_resp, out_row_value, out_labels,
                 chunk_rows) -> PassResult:
    """The pass over a source's blocks, merged in block order: the statistics by
    the family's ``merge_stats``, the totals by addition. The grouping of chunks
    into blocks differs from the in-memory pass's (whose blocks are ``MAX_BLOCKS``
    chunks), so the totals are the same terms summed in another order; the
    source's ``summation_depth`` bounds the difference."""
    chunk_rows = chunk_rows or chunk_rows_for(X.shape[1])
    if X.block_rows % chunk_rows:
        raise ValueError(f"block_rows={X.block_rows} is not a multiple of "
                         f"chunk_rows={chunk_rows}")
    pass_args = (family, rule, np.asarray(weights, dtype=np.float64), params, with_stats,
                 chunk_rows, n_jobs)
    results = X.map_blocks(block_pass, pass_args, row_inputs=(sample_weight,),
                           row_outputs=(out_log_resp, out_row_value, out_labels))
    stats, resp_sum, totals = None, None, np.zeros(4)
    for block_stats, block_resp, block_totals in results:
        if with_stats:
            stats = block_stats if stats is None else family.merge_stats(stats, block_stats)
        resp_sum = block_resp.copy() if resp_sum is None else resp_sum + block_resp
        totals += block_totals
    return PassResult(stats=stats, resp_sum=resp_sum, value=float(totals[0]),
                      expected_log_joint=float(totals[1]), entropy=float(totals[2]),
                      magnitude=float(totals[3]))


def _python_pass(X, family, rule, log_w, params, sample_weight, chunk_rows, with_stats,
                 out_log_resp, out_row_value, out_labels=None):
    n = X.shape[0]
    k = log_w.shape[0]
    stats = family.empty_stats() if with_stats else None
    resp_sum = np.zeros(k)
    totals = np.zeros(4)

    bounds = [(start, min(n, start + chunk_rows)) for start in range(0, n, chunk_rows)]

    def log_joint_of(start, stop):
        return np.asarray(family.log_density(X[start:stop], params), dtype=np.float64) + log_w

    # A rule that needs all rows at once (constraints) gets every chunk's log joint
    # before the pass: computed once, then reused by the pass below. Other rules get
    # a lazy generator (the default prepare never runs it).
    computed = ([log_joint_of(start, stop) for start, stop in bounds]
                if rule.needs_all_rows else None)
    if computed is not None:
        rule.prepare(lambda: ((s, e, a) for (s, e), a in zip(bounds, computed)),
                     sample_weight)
    else:
        rule.prepare(lambda: ((s, e, log_joint_of(s, e)) for s, e in bounds), sample_weight)
    for index, (start, stop) in enumerate(bounds):
        chunk = X[start:stop]
        row_w = None if sample_weight is None else sample_weight[start:stop]
        log_joint = computed[index] if computed is not None else log_joint_of(start, stop)
        try:
            log_resp, resp, row_value, chunk_totals = rule.posterior(log_joint, row_w,
                                                                     start=start)
        except ValueError as exc:
            raise ValueError(f"in the chunk starting at row {start} of X: {exc}") from None
        totals += chunk_totals
        if out_log_resp is not None:
            out_log_resp[start:stop] = log_resp
        if out_row_value is not None:
            out_row_value[start:stop] = row_value
        if out_labels is not None:
            out_labels[start:stop] = np.argmax(resp, axis=1)
        if row_w is not None:
            resp = resp * row_w[:, None]
        resp_sum += resp.sum(axis=0)
        if with_stats:
            stats = family.merge_stats(stats, family_chunk_stats(family, chunk, resp, params))
    return stats, resp_sum, totals


# --- the loop ---------------------------------------------------------------------

def _param_change(old_w, old_p, new_w, new_p) -> float:
    change = 0.0
    pairs = [(old_w, new_w)] + [(old_p[key], new_p[key]) for key in old_p]
    for a, b in pairs:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        diff = float(np.max(np.abs(b - a))) if a.size else 0.0
        change = max(change, diff / scale if scale > 0 else diff)
    return change


def run_em(X: np.ndarray, family: Family, rule: PosteriorRule, weights: np.ndarray,
           params: dict, *, max_iter: int = 100, tol: float = 1e-6,
           n_jobs: Optional[int] = 1, sample_weight: Optional[np.ndarray] = None,
           verbose: int = 0, callback: Optional[Callable[[Iteration], Any]] = None,
           chunk_rows: Optional[int] = None,
           weight_concentration: Optional[np.ndarray] = None,
           converged: Optional[Callable[[Iteration, dict, dict], bool]] = None,
           accelerate: Optional[str] = None,
           random_state: Optional[np.random.Generator] = None,
           structure: Optional[LatentStructure] = None, lengths: Any = None,
           label: str = "") -> FitResult:
    """Run EM from (weights, params) until the stopping rule fires.

    The objective J is the rule's objective F (the log-likelihood for the soft
    rule), plus the log prior for MAP-EM (a family whose ``log_prior`` is not 0,
    or a Dirichlet prior on the weights with concentration
    ``weight_concentration``, all entries >= 1). Stops when the relative change
    |J_{t+1} - J_t| / |J_{t+1}| is below ``tol`` ('tol'; tol=0 never fires; or when
    ``converged(record, params_t, params_t+1)`` is true, if given), after
    ``max_iter`` M-steps ('max_iter'), on KeyboardInterrupt ('interrupted'; the
    last parameters whose objective was computed are returned), or when
    ``callback(record)``, called after each iteration, returns False ('callback').
    Each iteration is logged on the ``emcore`` logger (emcore/_logging.py; INFO
    with ``verbose``, labelled with ``label`` and the grid cell, if any). The mixture
    weights stay as given when ``family.fixed_weights`` is true (k-means).

    ``structure`` links the latent variables (default: the mixture,
    :class:`MixtureStructure`, with ``weight_concentration`` and
    ``family.fixed_weights``); another structure (the 'markov_chain' of the
    registry, whose ``weights`` are the start probabilities over the transition
    matrix and whose units are the sequences of ``lengths``) runs the same loop
    through its own pass, M-step and log prior (docs/hidden_markov.md).

    ``accelerate='squarem'`` runs SQUAREM around the EM map (same fixed points,
    fewer passes; every step keeps the objective non-decreasing; docs/variants.md#squarem).
    A Monte-Carlo rule (``rule.stochastic``: 'sampled', 'stochastic') draws its z
    from a stream seeded from ``random_state`` (a numpy Generator), if given.
    """
    if accelerate not in (None, "squarem"):
        raise ValueError("The 'accelerate' parameter of run_em must be None or "
                         f"'squarem'. Got {accelerate!r} instead.")
    if accelerate is not None and getattr(rule, "stochastic", None):
        raise ValueError("The 'accelerate' parameter of run_em must be None with the "
                         f"Monte-Carlo posterior rule {type(rule).__name__} (its steps "
                         "are random; extrapolating them has no monotone safeguard). "
                         f"Got {accelerate!r} instead.")
    if random_state is not None and getattr(rule, "stochastic", None):
        rule.set_random_state(random_state)
    n, d = X.shape
    chunk_rows = chunk_rows or chunk_rows_for(d)
    t_start = time.perf_counter()
    weights = np.asarray(weights, dtype=np.float64)

    if structure is None:
        structure = MixtureStructure(
            family.n_components, fixed=family.fixed_weights,
            concentration=(None if weight_concentration is None else
                           np.asarray(weight_concentration, dtype=np.float64)))
    elif weight_concentration is not None:
        raise ValueError("run_em: 'weight_concentration' belongs to the default mixture "
                         "structure; a structure given as 'structure' holds its own prior")
    if structure.unit == "row":
        # the mixture (and any row-unit structure): the engine's own row pass
        if lengths is not None:
            raise ValueError("run_em: 'lengths' must be None for a structure whose unit "
                             "is a row.")
        depth = (summation_depth(n, chunk_rows) if isinstance(X, np.ndarray)
                 else X.summation_depth(chunk_rows))

        def run_pass(fam, w, p):
            return data_pass(X, fam, rule, w, p, n_jobs=n_jobs,
                             sample_weight=sample_weight, chunk_rows=chunk_rows)
    else:
        if sample_weight is not None:
            raise ValueError(f"run_em: 'sample_weight' must be None for a structure whose "
                             f"unit is a {structure.unit}.")
        depth = structure.summation_depth(X, chunk_rows, lengths)

        def run_pass(fam, w, p):
            return structure.data_pass(X, fam, rule, w, p, n_jobs=n_jobs,
                                       chunk_rows=chunk_rows, lengths=lengths)

    # BLAS on one thread for the whole fit: the chunk loop's threads are ours, and
    # the M-step's d x d factorisations are too small to gain from BLAS threads
    # (measured under load: 0.5 ms became ~185 ms per M-step with 2 BLAS threads).
    reporter = FitReporter(verbose, callback, label)
    with single_threaded_blas(), verbose_output(verbose):
        return _run_em(X, family, rule, weights, params, max_iter=max_iter, tol=tol,
                       run_pass=run_pass, reporter=reporter,
                       depth=depth, t_start=t_start, structure=structure,
                       converged=converged, accelerate=accelerate)


@dataclass
class _Point:
    """Parameters with the pass at them and what the chain's tolerances need."""
    weights: np.ndarray
    params: dict
    result: PassResult
    prior: float              #: log p(theta) (0 without a prior)
    prior_magnitude: float
    amplification: float

    @property
    def objective(self) -> float:
        return self.result.value + self.prior


class _Steps:
    """The steps a fit is made of, each closed by one pass and one :class:`Iteration`:
    the EM step (with its chain and the maximality check of the M-step), and
    SQUAREM's extrapolation and its fallback (docs/variants.md). Counts the passes."""

    def __init__(self, X, family, rule, run_pass, depth, structure):
        self.family, self.rule, self.depth = family, rule, depth
        self.structure = structure
        # weights the structure never moves (a mixture with fixed weights: k-means)
        self.weights_fixed = getattr(structure, "fixed", False) is True
        self.k, self.d = family.n_components, X.shape[1]
        self._run_pass = run_pass
        self.n_passes = 0
        self.stochastic = getattr(rule, "stochastic", None)

    def run_pass(self, w, p) -> PassResult:
        self.n_passes += 1
        return self._run_pass(self.family, w, p)

    def log_prior(self, w, p, family_prior=None) -> tuple:
        value_w, magnitude_w = self.structure.log_prior(w)
        value_f, magnitude_f = family_prior or self.family.log_prior(p)
        return value_w + value_f, magnitude_w + magnitude_f

    def point(self, w, p, result: Optional[PassResult] = None, family_prior=None) -> _Point:
        result = self.run_pass(w, p) if result is None else result
        prior, prior_mag = self.log_prior(w, p, family_prior)
        return _Point(w, p, result, prior, prior_mag, self.family.rounding_amplification(p))

    def _tolerances(self, a: _Point, b: _Point, stats, new_params, extra_magnitude=0.0,
                    stats_params=None):
        # docs/elbo_chain.md#check-a, #check-b, with the summation depth of our
        # chunked sums in place of ceil(log2 n): tau_A for the equality, tau_B over
        # both passes, the penalties and the log priors, plus the statistics-based
        # Q's own magnitude, then absolute terms
        family = self.family
        amp = max(a.amplification, b.amplification)
        tol_eq = equality_tolerance(self.k, self.depth, a.result.magnitude)
        tol_chain = (chain_tolerance(
                         self.k, self.d, self.depth, amp,
                         a.result.magnitude + b.result.magnitude + extra_magnitude
                         + a.prior_magnitude + b.prior_magnitude,
                         family.expected_log_likelihood_magnitude(stats, new_params))
                     # the M-step's maximiser rounded to doubles (second order)
                     + 2.0 * family.parameter_rounding(stats, new_params)
                     # log-densities through a cancelling formula (k-means)
                     + family.log_density_rounding(a.result.stats, a.params)
                     + family.log_density_rounding(stats, new_params)
                     # statistics partly summed in float32, evaluated at new_params
                     + family.statistics_rounding(
                         stats, a.params if stats_params is None else stats_params,
                         new_params))
        return max(tol_eq, np.finfo(float).tiny), max(tol_chain, np.finfo(float).tiny)

    def _m_step_gain(self, stats, new_params) -> float:
        """Q_t(M(theta_{t+1})) - Q_t(theta_{t+1}), penalised and with the family's log
        prior: 0 for an M-step that maximises (applied again from its own output it
        cannot gain), > 0 for one that only increases Q (docs/variants.md#gem)."""
        family = self.family
        again = family.m_step(stats, new_params)
        if all(np.array_equal(again[key], new_params[key]) for key in new_params):
            return 0.0

        def penalised(p):
            return (family.expected_log_likelihood(stats, p) - family.m_step_penalty(stats, p)
                    + family.log_prior(p)[0])
        return penalised(again) - penalised(new_params)

    def m_step(self, t: int, a: _Point) -> tuple:
        """The M-step from ``a``'s statistics, no pass: (weights, params)."""
        new_params = self.family.m_step(a.result.stats, a.params)
        _validate_in_debug(self.family, new_params, f"at iteration {t}")
        return self.structure.m_step(a.result, a.weights), new_params

    def em(self, t: int, a: _Point, m_step: Optional[tuple] = None) -> tuple:
        """One EM (or GEM, or Monte-Carlo) step from ``a``: (record, point after it).
        ``m_step``: the M-step from ``a`` when it is already made (``self.m_step``'s
        (weights, params)), so it is not made twice."""
        family, rule = self.family, self.rule
        t0 = time.perf_counter()
        current = a.result
        stats = current.stats
        new_weights, new_params = m_step if m_step is not None else self.m_step(t, a)
        empty = tuple(int(j) for j in np.flatnonzero(~(current.resp_sum > 0)))
        elbo = (family.expected_log_likelihood(stats, new_params)
                + self.structure.expected_log_likelihood(current, new_weights)
                + current.entropy)
        pen_old = family.m_step_penalty(stats, a.params)
        pen_new = family.m_step_penalty(stats, new_params)
        nxt = self.run_pass(new_weights, new_params)
        b = self.point(new_weights, new_params, nxt)
        # an E-step solved to a solver's accuracy (PR) loosens the bound link
        tol_rule = float(rule.bound_tolerance(current.rule_state, nxt.rule_state))
        _check_finite(b.objective, f"the objective after iteration {t}")
        tol_eq, tol_chain = self._tolerances(a, b, stats, new_params,
                                             abs(pen_old) + abs(pen_new))
        generalized = bool(getattr(family, "generalized_m_step", False))
        step = self.stochastic or ("gem" if generalized else "em")
        # an extra M-step, at t = 0, 1, 2, 4, 8, ...: a non-maximising M-step gains
        # most far from convergence, and the check then costs log2(T) M-steps
        checked = not (generalized or self.stochastic) and (t & (t - 1)) == 0
        gain = self._m_step_gain(stats, new_params) if checked else 0.0
        mc_se = 0.0
        if self.stochastic == "mcem" and nxt.rule_state:
            mc_se = float(nxt.rule_state.get("mc_standard_error", 0.0))
        record = Iteration(
            iteration=t, value=current.value, elbo_at_start=current.elbo, elbo=elbo,
            value_next=nxt.value, objective=b.objective,
            relative_change=_relative(a.objective, b.objective),
            penalty_change=pen_new - pen_old,
            param_change=_param_change(a.weights, a.params, new_weights, new_params),
            tolerance_equality=tol_eq, tolerance=tol_chain,
            empty_components=empty, seconds=time.perf_counter() - t0,
            log_prior=a.prior, log_prior_next=b.prior, tolerance_rule=tol_rule,
            rule_state=current.rule_state, step=step, m_step_gain=gain,
            mc_standard_error=mc_se)
        return record, b

    def tolerances(self, a: _Point, b: _Point) -> tuple:
        """(tau_A, tau_B) of a move from ``a`` to ``b`` with no M-step between
        them (a SQUAREM jump): the rounding bounds its record's chain uses."""
        return self._tolerances(a, b, b.result.stats, b.params, stats_params=b.params)

    def jump(self, t: int, a: _Point, b: _Point, extrapolation: dict) -> Iteration:
        """The record of SQUAREM's move from ``a`` (the cycle's EM step done) to the
        extrapolated ``b``: the chain F(a) <= ELBO(q_b, b) <= F(b) says the move did
        not lower the objective."""
        tol_eq, tol_chain = self.tolerances(a, b)
        return Iteration(
            iteration=t, value=a.result.value, elbo_at_start=a.result.elbo,
            elbo=b.result.elbo, value_next=b.result.value, objective=b.objective,
            relative_change=_relative(a.objective, b.objective), penalty_change=0.0,
            param_change=_param_change(a.weights, a.params, b.weights, b.params),
            tolerance_equality=tol_eq, tolerance=tol_chain,
            log_prior=a.prior, log_prior_next=b.prior,
            tolerance_rule=float(self.rule.bound_tolerance(a.result.rule_state,
                                                           b.result.rule_state)),
            rule_state=a.result.rule_state, step="squarem", extrapolation=extrapolation)

    def fallback(self, t: int, a: _Point, extrapolation: dict) -> Iteration:
        """The record of a rejected extrapolation: the fit stays at ``a``."""
        tol_eq, tol_chain = self._tolerances(a, a, a.result.stats, a.params)
        return Iteration(
            iteration=t, value=a.result.value, elbo_at_start=a.result.elbo,
            elbo=a.result.elbo, value_next=a.result.value, objective=a.objective,
            relative_change=0.0, penalty_change=0.0, param_change=0.0,
            tolerance_equality=tol_eq, tolerance=tol_chain,
            log_prior=a.prior, log_prior_next=a.prior, rule_state=a.result.rule_state,
            step="squarem-fallback", extrapolation=extrapolation)


def _relative(before: float, after: float) -> float:
    return abs(after - before) / max(abs(after), np.finfo(float).tiny)


#: one-sided 95% normal quantile: MCEM stops when the upper confidence bound of its
#: ascent is below tol (Caffo, Jank & Jones 2005; docs/variants.md#mcem)
_MCEM_Z = 1.6448536269514722


def _run_em(X, family, rule, weights, params, *, max_iter, tol, run_pass, reporter,
            depth, t_start, structure, converged,
            accelerate: Optional[str] = None) -> FitResult:
    steps = _Steps(X, family, rule, run_pass, depth, structure)
    family_prior = family.log_prior(params)
    has_prior = structure.has_prior or family_prior != (0.0, 0.0)
    point = steps.point(weights, params, family_prior=family_prior)
    _check_finite(point.objective, "the objective at the initial parameters")
    wide = _widened_family(steps, point, tol, converged)
    if wide is not None:
        # the family's lower-precision arithmetic would leave the stopping rule
        # testing rounding noise: the whole fit runs in double instead
        # (Family.widened; docs/elbo_chain.md#float32-level)
        passes = steps.n_passes
        family = wide
        steps = _Steps(X, family, rule, run_pass, depth, structure)
        steps.n_passes = passes
        point = steps.point(weights, params, family_prior=family.log_prior(params))
        _check_finite(point.objective, "the objective at the initial parameters")
        reporter.note("the rounding bound of the family's lower-precision arithmetic "
                      "exceeds tol x |objective| at the start: fitting in double precision")
    n_samples = float(np.sum(point.result.resp_sum))
    history = []
    noisy = []     # the first iteration whose rounding bound exceeds tol x |objective|
    sem = _RunningAverage(family, rule) if steps.stochastic == "sem" else None

    stopped_by_callback = []

    def emit(record: Iteration) -> None:
        """Record an iteration: history, the rounding-noise check, the log line and
        the callback (which may ask to stop: the next stopping test then fires)."""
        history.append(record)
        if (not noisy and converged is None and tol > 0 and not steps.stochastic
                and record.tolerance + record.tolerance_rule > tol * abs(record.objective)):
            noisy.append(record)
        if not reporter.iteration(record, rule.objective):
            stopped_by_callback.append(record.iteration)

    def stops(record: Iteration, before: dict, after: dict) -> bool:
        if stopped_by_callback:
            return True
        if converged is not None:
            return bool(converged(record, before, after))
        if steps.stochastic == "mcem":
            # the Monte-Carlo ascent Q^_t(theta_{t+1}) - Q^_t(theta_t) (>= 0: the M-step
            # maximises the sampled Q) and its standard error from the next pass
            ascent = (record.elbo + record.log_prior_next
                      - record.elbo_at_start - record.log_prior)
            return ascent + _MCEM_Z * record.mc_standard_error < tol * abs(record.objective)
        if steps.stochastic == "sem":
            return False          # a Markov chain: runs max_iter, reports the average
        return record.relative_change < tol

    stop_reason = "max_iter"
    try:
        if accelerate == "squarem":
            point, stop_reason = _squarem(steps, point, max_iter, emit, stops)
        else:
            for t in range(max_iter):
                record, nxt = steps.em(t, point)
                emit(record)
                before, point = point, nxt
                if sem is not None:
                    sem.add(t, point)
                if stops(record, before.params, point.params):
                    stop_reason = "tol"
                    break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    if stopped_by_callback and stop_reason != "interrupted":
        stop_reason = "callback"
    _warn_if_the_chain_fails(history)
    if noisy:
        record = noisy[0]
        warnings.warn(
            f"The objective is known only to within {record.tolerance:.3g} (the derived "
            f"rounding bound at iteration {record.iteration}), more than tol x |objective| "
            f"= {tol * abs(record.objective):.3g}: the relative change the stopping rule "
            "tests is rounding noise, so the fit may stop by chance or oscillate without "
            "converging. Either tol is below what double precision resolves for this fit "
            "(raise it), or the data are far from the origin relative to their spread (an "
            "offset of 1e15 on unit-scale data leaves the means a grid of 0.125): centre "
            "the data (subtract the column means) before fitting.",
            _sklearn_compatible(ConvergenceWarning), stacklevel=3)
    last = point
    if sem is not None and sem.count:
        w_avg, p_avg = sem.average()
        point = steps.point(w_avg, p_avg)
    return FitResult(weights=point.weights, params=point.params, history=tuple(history),
                     n_iter=len(history), stop_reason=stop_reason, value=point.result.value,
                     objective=point.objective,
                     objective_name=rule.objective + (" + log prior" if has_prior else ""),
                     n_samples=n_samples, seconds=time.perf_counter() - t_start,
                     resp_sum=point.result.resp_sum, stats=point.result.stats,
                     rule_state=point.result.rule_state, n_passes=steps.n_passes,
                     chain_last=(None if sem is None else (last.weights, last.params)),
                     n_averaged=0 if sem is None else sem.count, widened=wide is not None)


def _widened_family(steps: "_Steps", point: "_Point", tol: float, converged) -> Any:
    """``Family.widened()`` where the family's lower-precision arithmetic would make
    the stopping rule test rounding noise from the start: the derived bound of a
    link at the initial point (the pass's bounds counted twice, as a link's two
    passes are) above ``tol * |objective|``, the test that otherwise warns at iteration
    0. None where the rule does not test tol (tol 0, ``converged``, Monte-Carlo
    rules), where the family has no wider version, or where the bound is within."""
    if not tol > 0 or converged is not None or steps.stochastic:
        return None
    wide = steps.family.widened()
    if wide is None:
        return None
    _, bound = steps._tolerances(point, point, point.result.stats, point.params)
    bound += float(steps.rule.bound_tolerance(point.result.rule_state,
                                              point.result.rule_state))
    return wide if bound > tol * abs(point.objective) else None


class _RunningAverage:
    """SEM's estimate: the average of the chain's parameters after ``rule.burn_in``
    iterations, the family's in its unconstrained coordinates (so it is valid:
    ``Family.to_unconstrained``), the weights on the simplex (docs/variants.md#sem)."""

    def __init__(self, family, rule):
        self.family = family
        self.burn_in = int(getattr(rule, "burn_in", 0))
        self.count = 0
        self.weights = None
        self.coords = None

    def add(self, t: int, point: _Point) -> None:
        if t < self.burn_in:
            return
        coords = self.family.to_unconstrained(point.params)
        self.count += 1
        if self.count == 1:
            self.weights = np.array(point.weights, dtype=np.float64)
            self.coords = {key: np.array(value, dtype=np.float64)
                           for key, value in coords.items()}
            return
        rate = 1.0 / self.count
        self.weights += rate * (point.weights - self.weights)
        for key, value in coords.items():
            self.coords[key] += rate * (value - self.coords[key])

    def average(self) -> tuple:
        return self.weights / np.sum(self.weights), self.family.from_unconstrained(self.coords)


# --- SQUAREM ------------------------------------------------------------------------

#: step-length bounds of the SQUAREM package (Varadhan & Roland): s in [1, s_max],
#: s_max from 1, multiplied by 4 whenever the clamp binds, divided by 4 on a fallback
_SQUAREM_STEP_MIN, _SQUAREM_STEP_MAX0, _SQUAREM_MSTEP = 1.0, 1.0, 4.0


def _flatten(family, weights: np.ndarray, params: dict, fixed: bool) -> tuple:
    """The extrapolation coordinates of (weights, params) as one vector, and how to
    read them back: centred log-weights (any vector maps back onto the simplex by
    softmax; raw weights when one is 0), then the family's
    ``to_unconstrained(params)`` arrays in key order (docs/variants.md#squarem).
    ``weights`` is one simplex (a mixture's pi) or a stack of them, one per row (a
    Markov chain's start probabilities over its transition matrix); ``fixed``
    weights (k-means) are not extrapolated."""
    coords = family.to_unconstrained(params)
    keys = sorted(coords)
    parts = []
    rows = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    log_weights = not fixed and bool(np.all(rows > 0))
    if not fixed:
        if log_weights:
            lw = np.log(rows)
            parts.append((lw - np.mean(lw, axis=1, keepdims=True)).ravel())
        else:
            parts.append(rows.ravel())
    shapes = [np.shape(coords[key]) for key in keys]
    parts += [np.asarray(coords[key], dtype=np.float64).ravel() for key in keys]
    return np.concatenate(parts), (keys, shapes, log_weights, weights, fixed)


def _unflatten(family, vector: np.ndarray, layout: tuple) -> tuple:
    keys, shapes, log_weights, given, fixed = layout
    if fixed:
        weights, offset = given, 0
    else:
        shape = np.atleast_2d(given).shape
        offset = shape[0] * shape[1]
        head = vector[:offset].reshape(shape)
        if log_weights:
            e = np.exp(head - np.max(head, axis=1, keepdims=True))
            rows = e / np.sum(e, axis=1, keepdims=True)
        else:
            if np.any(head < 0) or not np.all(np.isfinite(head)):
                raise ValueError("an extrapolated mixture weight is negative")
            rows = head / np.sum(head, axis=1, keepdims=True)
        weights = rows.reshape(np.shape(given))
    coords = {}
    for key, shape in zip(keys, shapes):
        size = int(np.prod(shape))
        coords[key] = vector[offset:offset + size].reshape(shape)
        offset += size
    params = family.from_unconstrained(coords)
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise ValueError("an extrapolated mixture weight is not a probability")
    family.validate_params(params)
    return weights, params


def _keep_unmoved_rows(weights: np.ndarray, *cycle_weights) -> np.ndarray:
    """Rows of the weights that no EM step of the cycle moved (a Markov chain's fixed
    start or transition probabilities) stay exactly as they were, not as the
    log/softmax round trip rounds them."""
    rows = np.atleast_2d(np.array(weights, dtype=np.float64))
    same = np.ones(rows.shape[0], dtype=bool)
    first = np.atleast_2d(cycle_weights[0])
    for other in cycle_weights[1:]:
        same &= np.all(np.atleast_2d(other) == first, axis=1)
    rows[same] = first[same]
    return rows.reshape(np.shape(weights))


def _squarem(steps: _Steps, point: _Point, max_iter: int, emit, stops) -> tuple:
    """SQUAREM (Varadhan & Roland 2008, S3 step length) around the EM map, with the
    monotone safeguard; returns (last point, stop reason). docs/variants.md#squarem.

    A cycle from theta_0: one EM step to theta_1 (recorded with its chain), then the
    M-step from theta_1's statistics to theta_2 = M(theta_1) without a pass at
    theta_2 (its objective is not needed: the pass would only pay for the test), r =
    c_1 - c_0, v = c_2 - 2 c_1 + c_0 in the extrapolation coordinates c, s = ||r|| /
    ||v|| (S3, alpha = -s) clamped to [1, s_max], c' = c_0 + 2 s r + s^2 v; if s = 1,
    c' is theta_2 and the cycle ends with the EM step to it. Otherwise theta' is
    accepted when it is valid and F(theta') >= F(theta_1), the last objective
    computed (a 'squarem' record), then one stabilising EM step. A valid theta' with
    F(theta') < F(theta_1) is judged after that step, as the SQUAREM package judges
    every jump: the pair is kept when F(M(theta')) >= F(theta_1) (one 'squarem'
    record from theta_1 to M(theta'), two passes). Else the fit stays at theta_1 (a
    'squarem-fallback' record), s_max shrinks and the EM step to theta_2 follows.
    F never decreases. The stopping rule is tested on EM steps.
    """
    latest = [point]            # the last point with a computed objective (Ctrl-C)
    try:
        return _squarem_cycles(steps, point, max_iter, emit, stops, latest)
    except KeyboardInterrupt:
        return latest[0], "interrupted"


def _squarem_cycles(steps: _Steps, point: _Point, max_iter: int, emit, stops,
                    latest: list) -> tuple:
    family = steps.family
    step_max = _SQUAREM_STEP_MAX0
    t = 0
    n_m_steps = 0

    def em(a: _Point, m_step: Optional[tuple] = None) -> tuple:
        nonlocal t, n_m_steps
        record, b = steps.em(t, a, m_step)
        latest[0] = b
        t += 1
        n_m_steps += 1
        emit(record)
        return b, stops(record, a.params, b.params)

    while n_m_steps < max_iter:
        p0 = point
        p1, done = em(p0)
        if done or n_m_steps >= max_iter:
            return p1, "tol" if done else "max_iter"
        fixed = steps.weights_fixed
        w2, params2 = steps.m_step(t, p1)
        c0, layout = _flatten(family, p0.weights, p0.params, fixed)
        c1 = _flatten(family, p1.weights, p1.params, fixed)[0]
        c2 = _flatten(family, w2, params2, fixed)[0]
        r = c1 - c0
        v = c2 - 2.0 * c1 + c0
        norm_r, norm_v = float(np.linalg.norm(r)), float(np.linalg.norm(v))
        if norm_v > 0 and np.isfinite(norm_r) and np.isfinite(norm_v):
            raw = norm_r / norm_v
            s = min(max(raw, _SQUAREM_STEP_MIN), step_max)
        else:
            raw = s = 1.0           # no curvature to extrapolate along: plain EM
        if s == 1.0:
            if s == step_max:
                step_max *= _SQUAREM_MSTEP
            point, done = em(p1, (w2, params2))    # c' = c_2: two EM steps
            if done:
                return point, "tol"
            continue
        extrapolation = {"step_length": s, "step_length_s3": raw,
                         "compared": "objective(extrapolated) >= objective(after one "
                                     "EM step)",
                         "objective_before": p1.objective}
        t0 = time.perf_counter()
        try:
            weights, params = _unflatten(family, c0 + 2.0 * s * r + s * s * v, layout)
            weights = _keep_unmoved_rows(weights, p0.weights, p1.weights, w2)
            prime = steps.point(weights, params)
            if not math.isfinite(prime.objective):
                raise FloatingPointError("the objective at the extrapolated point is "
                                         "not finite")
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            prime, reason = None, f"invalid extrapolated parameters: {exc}"
        else:
            reason = None if prime.objective >= p1.objective else "lower objective"
            extrapolation["objective_extrapolated"] = prime.objective
        if reason == "lower objective" and (
                p1.objective - prime.objective <= steps.tolerances(p1, prime)[1]):
            # lower by no more than the objectives' rounding (near a fixed point, where
            # F no longer tells the points apart): no stabilising step either
            reason = "lower objective, by no more than its rounding"
        if reason == "lower objective":
            # the SQUAREM package judges a jump after its stabilising EM step: take
            # that step from theta' and keep both if they end no lower than theta_1
            # (one record for two passes; F(theta') itself is never a fit's point)
            em_record, b = steps.em(t, prime)
            n_m_steps += 1
            extrapolation.update(
                objective_stabilised=b.objective, passes=2,
                stabilising_step_slacks=em_record.chain_slacks(),
                compared="objective(stabilising EM step from the extrapolated point) "
                         ">= objective(after one EM step)")
            if b.objective >= p1.objective:
                if s == step_max:
                    step_max *= _SQUAREM_MSTEP
                latest[0] = point = b
                record = steps.jump(t, p1, b, dict(extrapolation, accepted=True,
                                                   stabilised=True))
                t += 1
                emit(dataclass_replace(record, seconds=time.perf_counter() - t0))
                continue
            reason = "lower objective, also after the stabilising EM step"
        if reason is not None:
            if s == step_max:
                step_max = max(_SQUAREM_STEP_MAX0, step_max / _SQUAREM_MSTEP)
            record = steps.fallback(t, p1, dict(extrapolation, accepted=False,
                                                reason=reason))
            t += 1
            emit(dataclass_replace(record, seconds=time.perf_counter() - t0))
            point, done = em(p1, (w2, params2))    # the cycle ends at theta_2
            if done:
                return point, "tol"
            continue
        if s == step_max:
            step_max *= _SQUAREM_MSTEP
        latest[0] = prime
        record = steps.jump(t, p1, prime, dict(extrapolation, accepted=True))
        t += 1
        emit(dataclass_replace(record, seconds=time.perf_counter() - t0))
        point, done = em(prime)      # the stabilising EM step
        if done:
            return point, "tol"
    return point, "max_iter"


def _warn_if_the_chain_fails(history) -> None:
    """One ChainViolationWarning for a fit some of whose iterations break the
    (penalised) chain: the first such iteration, its failing links and their
    slacks (violation / tolerance), and how many other iterations fail."""
    failing = [it for it in history if not it.chain_holds()]
    if not failing:
        return
    first = failing[0]
    links = ", ".join(f"the {name} link (slack {slack:.3g})"
                      for name, slack in first.chain_slacks().items() if not slack <= 1.0)
    others = len(failing) - 1
    warnings.warn(
        f"The ELBO chain failed at iteration {first.iteration}: {links}, where a slack "
        "is violation / derived rounding tolerance and above 1 fails"
        + (f"; {others} other iteration{'s' if others > 1 else ''} failed too"
           if others else "")
        + ". The M-step did not maximise, the statistics or densities are wrong, or "
        "the data are beyond double precision; the fitted parameters are suspect "
        "(history_ holds every iteration's chain).", ChainViolationWarning, stacklevel=3)


def best_of_starts(n_starts: int, start: Callable[[], tuple],
                   run: Callable[[np.ndarray, dict], FitResult]) -> FitResult:
    """Run ``run(weights, params)`` from ``n_starts`` starts drawn by ``start()`` and
    return the result with the highest objective. Ctrl-C (a result stopped as
    'interrupted', or a KeyboardInterrupt while drawing a start) ends the whole
    fit, not one start: the best result so far is returned with ``stop_reason``
    'interrupted' whichever start it came from (the starts not run are a fit
    cut short); an interrupt before any result is re-raised."""
    from dataclasses import replace
    best: Optional[FitResult] = None
    for _ in range(n_starts):
        try:
            weights, params = start()
        except KeyboardInterrupt:
            if best is None:
                raise
            return replace(best, stop_reason="interrupted")
        result = run(weights, params)
        if best is None or result.objective > best.objective:
            best = result
        if result.stop_reason in ("interrupted", "callback"):
            # Ctrl-C, or the user's callback asked to stop: the whole fit stops
            return replace(best, stop_reason=result.stop_reason)
    return best


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is not finite ({value}); the parameters are "
                                 "degenerate for this data")

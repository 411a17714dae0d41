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
No registry or hook is called here: the caller resolves the family and rule once.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol

import numpy as np

from emcore._chunks import chunk_rows_for, stats_from_assignments
from emcore._logging import FitReporter, verbose_output
from emcore._core._passes import MAX_BLOCKS, data_pass as _compiled_pass
from emcore._threads import effective_n_threads, single_threaded_blas
from emcore.exceptions import ChainViolationWarning, ConvergenceWarning, _sklearn_compatible
from emcore.plugin_api import UNIT_ROUNDOFF, Family, PosteriorRule, _validate_in_debug

__all__ = ["PassResult", "Iteration", "FitResult", "data_pass", "run_em",
           "best_of_starts", "stats_from_assignments", "chunk_rows_for",
           "equality_tolerance", "chain_tolerance"]

STOP_REASONS = ("tol", "max_iter", "interrupted", "callback")


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
class PassResult:
    """What one pass over the data at fixed parameters returns."""
    stats: Any                  #: the family's merged statistics (None if not asked)
    resp_sum: np.ndarray        #: sum_i w_i q_ik, shape (n_components,)
    value: float                #: F = sum_i w_i f_i, the rule's objective (soft: loglik)
    expected_log_joint: float   #: sum_i w_i sum_k q_ik log p(x_i, z_i=k)
    entropy: float              #: sum_i w_i H(q_i)
    magnitude: float            #: rounding magnitude M (docs/elbo_chain.md#magnitude)
    rule_state: Optional[dict] = None  #: the rule's report() after the pass (Python path)

    @property
    def elbo(self) -> float:
        """ELBO(q, theta) at the parameters of the pass."""
        return self.expected_log_joint + self.entropy


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
        """
        pen = self.penalty_change if penalised else 0.0
        return {
            "equality": abs(self.elbo_at_start - self.value) / self.tolerance_equality,
            "ascent": ((self.value + self.log_prior + pen)
                       - (self.elbo + self.log_prior_next)) / self.tolerance,
            "bound": (self.elbo - self.value_next) / (self.tolerance + self.tolerance_rule),
        }

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
                effective_n_threads(n_jobs), with_stats, out_log_resp, out_row_value,
                out_labels)
        stats = family.stats_from_buffer(buffer) if with_stats else None
        rule_state = None
    else:
        stats, resp_sum, totals = _python_pass(
            X, family, rule, log_w, params, sample_weight, chunk_rows, with_stats,
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
            stats = family.merge_stats(stats, family.chunk_stats(chunk, resp))
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


def _weights_m_step(resp_sum: np.ndarray, concentration: Optional[np.ndarray]) -> np.ndarray:
    # ML: N_k / n; with a Dirichlet(alpha) prior, alpha_k >= 1, the posterior mode
    # (N_k + alpha_k - 1) / (n + sum(alpha) - K) (docs/gaussian.md#map-m-step)
    if concentration is None:
        return resp_sum / float(np.sum(resp_sum))
    # (alpha - 1) first: exactly 0 for a flat prior, so a tiny N_k (a component
    # nearly emptied, e.g. by a constrained E-step) is not rounded away to pi_k = 0
    # while N_k log pi_k still counts it
    counts = resp_sum + (concentration - 1.0)
    return counts / float(np.sum(counts))


def _weights_log_prior(weights: np.ndarray, concentration: Optional[np.ndarray]):
    """(log Dir(pi | alpha), sum of the terms' magnitudes); (0, 0) without a prior."""
    if concentration is None:
        return 0.0, 0.0
    a = concentration
    mask = a != 1.0            # (alpha - 1) log pi is 0 for alpha = 1, even at pi = 0
    with np.errstate(divide="ignore"):
        terms = np.concatenate([[math.lgamma(float(np.sum(a)))], -np.array(
            [math.lgamma(float(x)) for x in a]), (a[mask] - 1.0) * np.log(weights[mask])])
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def _weights_expected(resp_sum: np.ndarray, weights: np.ndarray) -> float:
    # sum_k N_k log pi_k with 0 log 0 = 0
    mask = resp_sum > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(resp_sum[mask] * np.log(weights[mask])))


def run_em(X: np.ndarray, family: Family, rule: PosteriorRule, weights: np.ndarray,
           params: dict, *, max_iter: int = 100, tol: float = 1e-6,
           n_jobs: Optional[int] = 1, sample_weight: Optional[np.ndarray] = None,
           verbose: int = 0, callback: Optional[Callable[[Iteration], Any]] = None,
           chunk_rows: Optional[int] = None,
           weight_concentration: Optional[np.ndarray] = None,
           converged: Optional[Callable[[Iteration, dict, dict], bool]] = None,
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
    """
    n, d = X.shape
    chunk_rows = chunk_rows or chunk_rows_for(d)
    t_start = time.perf_counter()
    weights = np.asarray(weights, dtype=np.float64)

    def run_pass(w, p):
        return data_pass(X, family, rule, w, p, n_jobs=n_jobs, sample_weight=sample_weight,
                         chunk_rows=chunk_rows)

    # BLAS on one thread for the whole fit: the chunk loop's threads are ours, and
    # the M-step's d x d factorisations are too small to gain from BLAS threads
    # (measured under load: 0.5 ms became ~185 ms per M-step with 2 BLAS threads).
    reporter = FitReporter(verbose, callback, label)
    with single_threaded_blas(), verbose_output(verbose):
        return _run_em(X, family, rule, weights, params, max_iter=max_iter, tol=tol,
                       run_pass=run_pass, reporter=reporter,
                       depth=(summation_depth(n, chunk_rows) if isinstance(X, np.ndarray)
                              else X.summation_depth(chunk_rows)), t_start=t_start,
                       concentration=(None if weight_concentration is None else
                                      np.asarray(weight_concentration, dtype=np.float64)),
                       converged=converged)


def _run_em(X, family, rule, weights, params, *, max_iter, tol, run_pass, reporter,
            depth, t_start, concentration, converged) -> FitResult:
    n, d = X.shape
    k = family.n_components
    history = []
    def log_prior(w, p, family_prior=None):
        value_w, magnitude_w = _weights_log_prior(w, concentration)
        value_f, magnitude_f = family_prior or family.log_prior(p)
        return value_w + value_f, magnitude_w + magnitude_f

    family_prior = family.log_prior(params)
    has_prior = concentration is not None or family_prior != (0.0, 0.0)
    current = run_pass(weights, params)
    prior_now, prior_mag_now = log_prior(weights, params, family_prior)
    amp_now = family.rounding_amplification(params)
    _check_finite(current.value + prior_now, "the objective at the initial parameters")
    n_samples = float(np.sum(current.resp_sum))
    stop_reason = "max_iter"
    noisy = None      # the first iteration whose rounding bound exceeds tol x |objective|
    try:
        for t in range(max_iter):
            t0 = time.perf_counter()
            stats = current.stats
            new_params = family.m_step(stats, params)
            _validate_in_debug(family, new_params, f"at iteration {t}")
            new_weights = (weights if family.fixed_weights
                           else _weights_m_step(current.resp_sum, concentration))
            empty = tuple(int(j) for j in np.flatnonzero(~(current.resp_sum > 0)))
            elbo = (family.expected_log_likelihood(stats, new_params)
                    + _weights_expected(current.resp_sum, new_weights) + current.entropy)
            pen_old = family.m_step_penalty(stats, params)
            pen_new = family.m_step_penalty(stats, new_params)
            nxt = run_pass(new_weights, new_params)
            # an E-step solved to a solver's accuracy (PR) loosens the bound link
            tol_rule = float(rule.bound_tolerance(current.rule_state, nxt.rule_state))
            prior_next, prior_mag_next = log_prior(new_weights, new_params)
            _check_finite(nxt.value + prior_next, f"the objective after iteration {t}")
            amp_next = family.rounding_amplification(new_params)
            amp = max(amp_now, amp_next)
            # docs/elbo_chain.md#check-a, #check-b, with the summation depth of
            # our chunked sums in place of ceil(log2 n): tau_A for the equality,
            # tau_B over both passes, the penalties and the log priors, plus the
            # statistics-based Q's own magnitude, then absolute terms
            tol_eq = equality_tolerance(k, depth, current.magnitude)
            tol_chain = (chain_tolerance(
                             k, d, depth, amp,
                             current.magnitude + nxt.magnitude + abs(pen_old) + abs(pen_new)
                             + prior_mag_now + prior_mag_next,
                             family.expected_log_likelihood_magnitude(stats, new_params))
                         # the M-step's maximiser rounded to doubles (second order)
                         + 2.0 * family.parameter_rounding(stats, new_params)
                         # log-densities through a cancelling formula (k-means)
                         + family.log_density_rounding(stats, params)
                         + family.log_density_rounding(stats, new_params))
            objective_now = current.value + prior_now
            objective_next = nxt.value + prior_next
            rel = abs(objective_next - objective_now) / max(abs(objective_next),
                                                             np.finfo(float).tiny)
            record = Iteration(
                iteration=t, value=current.value, elbo_at_start=current.elbo, elbo=elbo,
                value_next=nxt.value, objective=objective_next, relative_change=rel,
                penalty_change=pen_new - pen_old,
                param_change=_param_change(weights, params, new_weights, new_params),
                tolerance_equality=max(tol_eq, np.finfo(float).tiny),
                tolerance=max(tol_chain, np.finfo(float).tiny),
                empty_components=empty, seconds=time.perf_counter() - t0,
                log_prior=prior_now, log_prior_next=prior_next, tolerance_rule=tol_rule,
                rule_state=current.rule_state)
            history.append(record)
            if (noisy is None and converged is None and tol > 0
                    and record.tolerance + tol_rule > tol * abs(objective_next)):
                noisy = record
            previous_params = params
            weights, params, current = new_weights, new_params, nxt
            prior_now, prior_mag_now, amp_now = prior_next, prior_mag_next, amp_next
            if not reporter.iteration(record, rule.objective):
                stop_reason = "callback"
                break
            if (converged(record, previous_params, params) if converged is not None
                    else rel < tol):
                stop_reason = "tol"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    _warn_if_the_chain_fails(history)
    if noisy is not None:
        warnings.warn(
            f"The objective is known only to within {noisy.tolerance:.3g} (the derived "
            f"rounding bound at iteration {noisy.iteration}), more than tol x |objective| "
            f"= {tol * abs(noisy.objective):.3g}: the relative change the stopping rule "
            "tests is rounding noise, so the fit may stop by chance or oscillate without "
            "converging. Either tol is below what double precision resolves for this fit "
            "(raise it), or the data are far from the origin relative to their spread (an "
            "offset of 1e15 on unit-scale data leaves the means a grid of 0.125): centre "
            "the data (subtract the column means) before fitting.",
            _sklearn_compatible(ConvergenceWarning), stacklevel=3)
    return FitResult(weights=weights, params=params, history=tuple(history),
                     n_iter=len(history), stop_reason=stop_reason, value=current.value,
                     objective=current.value + prior_now,
                     objective_name=rule.objective + (" + log prior" if has_prior else ""),
                     n_samples=n_samples, seconds=time.perf_counter() - t_start,
                     resp_sum=current.resp_sum, stats=current.stats,
                     rule_state=current.rule_state)


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

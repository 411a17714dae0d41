"""Forward-backward and Viterbi over a batch of sequences (private).

Thin validation layer over :mod:`emcore._core._markov`, where the recursions,
the choice of the scaled form and the entropy's derivation are documented.
Inputs are the per-row emission log-densities ``log_b`` (n_rows, K) of the
sequences laid end to end, their ``lengths`` (None: one sequence), and the
chain's ``log_startprob`` (K,) and ``log_transmat`` (K, K), taken as given
(the estimator normalises them; with unnormalised weights the "log-likelihood"
is the log of the total weight of all paths). Zeros of the start and
transition probabilities are ``-inf`` and are handled without NaN.

:func:`forward_backward_stats` is the E-step fused with a family's compiled
kernel (emissions, posteriors and the family's weighted statistics a group of
sequences at a time), for a fit that needs no per-row posteriors.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, NamedTuple, Optional

import numpy as np

from emcore._core import _markov
from emcore._threads import effective_n_threads, single_threaded_blas

# From this many states on, the K^2 steps go through BLAS (dgemv per step, dgemm
# per block of steps for the transition counts); below, the C loops are faster.
# benchmarks/bench_markov.py --blas-threshold measures the crossover: on the
# development machine (2 shared cores, OpenBLAS) loops won up to K = 16
# (0.46x-0.9x of BLAS's time), BLAS from K = 20 (1.4x faster, 2-2.9x from K = 32).
_BLAS_MIN_STATES = 20


class ForwardBackward(NamedTuple):
    """What one forward-backward pass returns.

    Attributes
    ----------
    log_likelihood : (n_seq,)
        log p(x_1..T) of each sequence
    gamma : (n_rows, K)
        state posteriors q(z_t = k)
    xi : (K, K)
        expected transition counts, summed over t and sequences
    start : (K,)
        expected start counts sum_seq q(z_1 = k)
    entropy : (n_seq,)
        entropy of each sequence's chain posterior
    magnitude : (n_seq,)
        size of the terms summed (round-off scale u * M)
    log_space : (n_seq,) bool
        the sequence left the scaled recursion's range of normal doubles
        (underflow that could move the result by more than round-off, an
        overflow, or a non-zero start or transition probability below DBL_MIN)
        and was computed in log space (slower, exact)
    """

    log_likelihood: np.ndarray
    gamma: np.ndarray
    xi: np.ndarray
    start: np.ndarray
    entropy: np.ndarray
    magnitude: np.ndarray
    log_space: np.ndarray


def _check_lengths(lengths: Any, n_rows: int, owner: str) -> np.ndarray:
    """Row offsets (n_seq + 1,) of the sequences from their lengths."""
    if lengths is None:
        return np.array([0, n_rows], dtype=np.intp)
    prefix = (f"The 'lengths' parameter of {owner} must be a 1-D array of positive "
              f"integers summing to the number of rows ({n_rows})")
    try:
        arr = np.asarray(lengths)
    except Exception as exc:
        raise ValueError(f"{prefix}. Got an object numpy cannot read ({exc}).") from None
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{prefix}. Got an array of shape {arr.shape} instead.")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object and all(isinstance(v, numbers.Integral) for v in arr):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{prefix}. Got an array of dtype {arr.dtype} instead.")
    bad = np.flatnonzero(arr < 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{prefix}. Got length {arr[i]} for sequence {i} instead "
                         f"(a sequence has at least one row).")
    total = int(arr.sum(dtype=np.int64))
    if total != n_rows:
        raise ValueError(f"{prefix}. Got lengths summing to {total} instead.")
    starts = np.zeros(arr.shape[0] + 1, dtype=np.intp)
    np.cumsum(arr, out=starts[1:])
    return starts


def _check_inputs(log_b: Any, lengths: Any, log_startprob: Any, log_transmat: Any,
                  owner: str) -> tuple:
    log_b = np.asarray(log_b, dtype=np.float64)
    if log_b.ndim != 2 or log_b.shape[0] == 0 or log_b.shape[1] == 0:
        raise ValueError(f"The 'log_b' parameter of {owner} must be a 2-D array "
                         f"(n_rows, n_states) with at least one row and one state. "
                         f"Got shape {log_b.shape} instead.")
    n, K = log_b.shape
    log_b = np.ascontiguousarray(log_b)
    starts = _check_lengths(lengths, n, owner)
    lpi = np.ascontiguousarray(log_startprob, dtype=np.float64)
    lA = np.ascontiguousarray(log_transmat, dtype=np.float64)
    _check_chain(lpi, lA, K, owner)
    return log_b, starts, lpi, lA


def _check_chain(lpi: np.ndarray, lA: np.ndarray, K: int, owner: str) -> None:
    for name, value, shape in (("log_startprob", lpi, (K,)),
                               ("log_transmat", lA, (K, K))):
        if value.shape != shape:
            raise ValueError(f"The {name!r} parameter of {owner} must have shape "
                             f"{shape} (n_states = {K} from log_b). Got shape "
                             f"{value.shape} instead.")
        if np.isnan(value).any() or np.isposinf(value).any():
            raise ValueError(f"The {name!r} parameter of {owner} must hold log "
                             f"probabilities (finite or -inf). Got NaN or +inf instead.")


def _raise_on_status(status: np.ndarray, fail_row: np.ndarray, starts: np.ndarray,
                     log_b: np.ndarray, owner: str, zero_ok: bool) -> None:
    bad = np.flatnonzero(status)
    if not bad.size:
        return
    codes = status[bad]
    if (codes == _markov.STATUS_NO_MEMORY).any():
        raise MemoryError(f"{owner}: no memory for the scratch of the longest sequence.")
    invalid = bad[codes == _markov.STATUS_INVALID_LOG_B]
    if invalid.size:
        r = int(fail_row[invalid[0]])
        row = log_b[r]
        v = row[~(row < np.inf)][0]
        raise ValueError(f"The 'log_b' parameter of {owner} must hold log-densities "
                         f"(finite numbers or -inf). Got {v} at row {r} instead.")
    if zero_ok:
        return
    q = int(bad[0])
    raise ValueError(
        f"{owner}: sequence {q} (rows {starts[q]}..{starts[q + 1] - 1}) has probability "
        f"zero under the model: no state can be reached at row {fail_row[q]} given the "
        f"zeros of the start and transition probabilities and the emission densities. "
        f"Its posterior is undefined.")


def _blas_context(K: int):
    # BLAS runs inside our threads: hold it to one thread there
    return single_threaded_blas() if K >= _BLAS_MIN_STATES else contextlib.nullcontext()


def forward_backward(log_b: Any, lengths: Any, log_startprob: Any, log_transmat: Any,
                     n_jobs: Optional[int] = None, *,
                     out: Optional[np.ndarray] = None) -> ForwardBackward:
    """Posterior marginals, transition counts and entropy of each sequence's chain.

    Parameters
    ----------
    log_b : array of shape (n_rows, n_states)
        Emission log-densities ``log p(x_t | z_t = k)``, the sequences end to end.
    lengths : array of int of shape (n_seq,) or None
        Length of each sequence (each >= 1, summing to n_rows); None: one sequence.
    log_startprob : array of shape (n_states,)
    log_transmat : array of shape (n_states, n_states)
        ``log_transmat[i, j] = log p(z_{t+1} = j | z_t = i)``; ``-inf`` for zeros.
    n_jobs : int or None
        Threads over sequences; the results are bitwise the same for any value.
    out : float64 C-contiguous array of shape (n_rows, n_states), optional
        Written with the posteriors and returned as ``gamma`` (its contents are
        unspecified if an error is raised). The forward pass uses it as its own
        storage, so a long sequence's n_rows x K posteriors are never held twice.

    Returns
    -------
    ForwardBackward

    Raises
    ------
    ValueError
        For malformed inputs, and for a sequence of probability zero under the
        model (its posterior is undefined).
    """
    owner = "forward_backward"
    log_b, starts, lpi, lA = _check_inputs(log_b, lengths, log_startprob, log_transmat,
                                           owner)
    n, K = log_b.shape
    if out is None:
        gamma = np.empty((n, K))
    else:
        if not (isinstance(out, np.ndarray) and out.dtype == np.float64
                and out.shape == (n, K) and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"The 'out' parameter of {owner} must be a writeable "
                             f"C-contiguous float64 array of shape {(n, K)}. Got "
                             f"{getattr(out, 'dtype', type(out).__name__)} of shape "
                             f"{getattr(out, 'shape', None)} instead.")
        gamma = out
    with _blas_context(K):
        loglik, entropy, magnitude, xi, start, status, fail_row, used_log = \
            _markov.forward_backward(log_b, starts, lpi, lA, gamma,
                                     effective_n_threads(n_jobs), K >= _BLAS_MIN_STATES,
                                     True)
    _raise_on_status(status, fail_row, starts, log_b, owner, zero_ok=False)
    return ForwardBackward(loglik, gamma, xi, start, entropy, magnitude,
                           used_log.astype(bool))


class ForwardBackwardStats(NamedTuple):
    """What one fused pass (:func:`forward_backward_stats`) returns.

    log_likelihood, xi, start, entropy, magnitude, log_space : as :class:`ForwardBackward`
    stats : (n_stats,) the family kernel's merged statistics slot, weighted by the
            state posteriors (``family.stats_from_buffer(stats)`` makes them the
            family's statistics object)
    resp_sum : (K,) the state posteriors summed over all rows
    expected_emission : sum over rows and states of gamma log b (entries with
            gamma > 0), the emissions' part of the expected complete-data
            log-likelihood
    emission_magnitude : sum of the absolute values of those terms
    """

    log_likelihood: np.ndarray
    xi: np.ndarray
    start: np.ndarray
    entropy: np.ndarray
    magnitude: np.ndarray
    log_space: np.ndarray
    stats: np.ndarray
    resp_sum: np.ndarray
    expected_emission: float
    emission_magnitude: float


def forward_backward_stats(X: Any, lengths: Any, log_startprob: Any, log_transmat: Any,
                           kernel: Any, n_jobs: Optional[int] = None, *,
                           group_rows: Optional[int] = None) -> ForwardBackwardStats:
    """One E-step of a hidden Markov model with the family's statistics, fused.

    Computes, group of whole sequences by group, the emission log-densities with
    the family's compiled kernel, forward-backward, and the family's statistics
    weighted by the state posteriors, without forming any (n_rows, n_states)
    array: memory is O(rows of a group x K) per thread, O(T K) for a sequence
    longer than ``group_rows``. The same numbers as ``log_b = kernel.log_density(X)``,
    :func:`forward_backward` and the kernel's statistics of its posteriors, up to
    the statistics' summation order; bitwise the same for any ``n_jobs``.

    Parameters
    ----------
    X : float64 C-contiguous array of shape (n_rows, n_features)
        The sequences end to end (a memory map is read a group at a time).
    lengths, log_startprob, log_transmat, n_jobs
        As :func:`forward_backward`.
    kernel : emcore.kernel.FamilyKernel
        The family's compiled kernel at its current parameters
        (``family.compiled_kernel(params)``).
    group_rows : int, optional
        Rows per group of short sequences (default: the engine's chunk size for
        this n_features).

    Returns
    -------
    ForwardBackwardStats

    Raises
    ------
    ValueError
        For malformed inputs, a sequence of probability zero under the model, or
        a kernel that fails on the data.
    """
    from emcore._chunks import chunk_rows_for
    from emcore.kernel import FamilyKernel

    owner = "forward_backward_stats"
    if not isinstance(kernel, FamilyKernel):
        raise TypeError(f"The 'kernel' parameter of {owner} must be an "
                        f"emcore.kernel.FamilyKernel (family.compiled_kernel(params)). "
                        f"Got {type(kernel).__name__} instead.")
    X = np.asarray(X)
    if X.dtype != np.float64 or X.ndim != 2 or not X.flags.c_contiguous \
            or X.shape[1] != kernel.n_features or X.shape[0] == 0:
        raise ValueError(f"The 'X' parameter of {owner} must be a C-contiguous float64 "
                         f"array of shape (n_rows >= 1, {kernel.n_features}). Got "
                         f"{X.dtype} of shape {X.shape} instead.")
    n, K = X.shape[0], kernel.n_components
    starts = _check_lengths(lengths, n, owner)
    lpi = np.ascontiguousarray(log_startprob, dtype=np.float64)
    lA = np.ascontiguousarray(log_transmat, dtype=np.float64)
    _check_chain(lpi, lA, K, owner)
    if group_rows is None:
        group_rows = chunk_rows_for(X.shape[1])
    with _blas_context(K):
        (loglik, entropy, magnitude, xi, start, stats, status, fail_row, used_log,
         resp_sum, emission) = _markov.forward_backward_stats(kernel, X, starts, lpi, lA,
                                           effective_n_threads(n_jobs),
                                           K >= _BLAS_MIN_STATES, int(group_rows))
    if (status == _markov.STATUS_KERNEL).any():
        q = int(np.flatnonzero(status == _markov.STATUS_KERNEL)[0])
        raise ValueError(f"{owner}: the family kernel failed on the rows of sequence {q} "
                         f"(rows {starts[q]}..{starts[q + 1] - 1}).")
    if (status == _markov.STATUS_INVALID_LOG_B).any():
        q = int(np.flatnonzero(status == _markov.STATUS_INVALID_LOG_B)[0])
        raise ValueError(f"{owner}: the family's log-density is NaN or +inf at row "
                         f"{fail_row[q]} (sequence {q}).")
    _raise_on_status(status, fail_row, starts, None, owner, zero_ok=False)
    return ForwardBackwardStats(loglik, xi, start, entropy, magnitude,
                                used_log.astype(bool), stats, resp_sum,
                                np.float64(emission[0]), np.float64(emission[1]))


def log_likelihood(log_b: Any, lengths: Any, log_startprob: Any, log_transmat: Any,
                   n_jobs: Optional[int] = None) -> np.ndarray:
    """Log-likelihood of each sequence (forward pass only, O(K) memory per thread).

    Parameters as :func:`forward_backward`. A sequence of probability zero under
    the model scores ``-inf``.
    """
    owner = "log_likelihood"
    log_b, starts, lpi, lA = _check_inputs(log_b, lengths, log_startprob, log_transmat,
                                           owner)
    K = log_b.shape[1]
    with _blas_context(K):
        loglik, _, _, _, _, status, fail_row, _ = _markov.forward_backward(
            log_b, starts, lpi, lA, None, effective_n_threads(n_jobs),
            K >= _BLAS_MIN_STATES, False)
    _raise_on_status(status, fail_row, starts, log_b, owner, zero_ok=True)
    return loglik


def viterbi(log_b: Any, lengths: Any, log_startprob: Any, log_transmat: Any,
            n_jobs: Optional[int] = None) -> tuple:
    """Most probable state path of each sequence and its log-probability.

    Parameters as :func:`forward_backward`.

    Returns
    -------
    path : array of intp of shape (n_rows,)
        The states, sequences end to end. Ties go to the lowest state index.
    log_prob : array of shape (n_seq,)
        ``log p(x, z*)`` of each sequence's path; ``-inf`` for a sequence of
        probability zero (its path is then the one the tie rule gives).
    """
    owner = "viterbi"
    log_b, starts, lpi, lA = _check_inputs(log_b, lengths, log_startprob, log_transmat,
                                           owner)
    path, log_prob, status, fail_row = _markov.viterbi(log_b, starts, lpi, lA,
                                                       effective_n_threads(n_jobs))
    _raise_on_status(status, fail_row, starts, log_b, owner, zero_ok=True)
    return path, log_prob

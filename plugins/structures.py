"""Latent structures: ``mixture`` (independent rows) and ``markov_chain`` (a
first-order hidden Markov chain over each sequence).

The same families serve both: the Markov chain takes the family's
``log_density`` of a group of whole sequences, runs forward-backward (or Viterbi,
for the hard rule) over them, and hands the state posteriors to the family's
``chunk_stats`` as weights, so every registered family is an emission with no
code of its own (docs/hidden_markov.md).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from emcore.plugin_api import (LatentStructure, MixtureStructure, PassResult, family_chunk_stats,
                               StructureRecord, categorical_expected, categorical_m_step,
                               check_lengths, dirichlet_log_prior, forward_backward,
                               forward_backward_stats,
                               hookimpl, read_rows, sequence_groups, viterbi)

__all__ = ["MarkovChain", "FIXABLE"]

#: the chain parameters ``fixed`` may name
FIXABLE = ("startprob", "transmat")


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _masked_dot(w: np.ndarray, log_p: np.ndarray) -> tuple:
    """(sum w log p, sum w |log p|) over the entries with w > 0 (0 log 0 = 0)."""
    m = w > 0
    terms = w[m] * log_p[m]
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def _is_hard(rule) -> bool:
    """True for the hard rule (Viterbi training), False for the soft one; other
    rules are rejected: a chain posterior is exact (forward-backward) or a path."""
    if getattr(rule, "needs_all_rows", False) or rule.entropy_weight not in (0.0, 1.0):
        raise ValueError(
            f"The markov_chain structure supports the 'soft' rule (Baum-Welch: the "
            f"exact chain posterior) and the 'hard' rule (Viterbi training). Got "
            f"{type(rule).__name__} (entropy weight {rule.entropy_weight!r}"
            f"{', needs all rows' if getattr(rule, 'needs_all_rows', False) else ''}) "
            "instead.")
    return rule.entropy_weight == 0.0


def transition_counts(path: np.ndarray, local_starts: np.ndarray, K: int) -> np.ndarray:
    """(K, K) counts of the transitions of a path of sequences laid end to end."""
    keep = np.ones(max(path.shape[0] - 1, 0), dtype=bool)
    keep[local_starts[1:-1] - 1] = False           # no transition across sequences
    t = np.flatnonzero(keep)
    return np.bincount(path[t] * K + path[t + 1], minlength=K * K).reshape(K, K) \
        .astype(np.float64)


#: use the fused compiled pass (emcore._markov.forward_backward_stats) when it
#: applies; tests set it False to compare with the unfused pass
_FUSED = True


def _fused_pass(rows: np.ndarray, start: int, kernel, lpi: np.ndarray, lA: np.ndarray,
                family, local: np.ndarray, n_jobs) -> tuple:
    """:func:`_group_pass` by the family's compiled kernel (soft rule): emissions,
    forward-backward and the family's posterior-weighted statistics in one
    compiled pass over the group, no rows x K array in Python; the same numbers
    up to the summation order."""
    try:
        fb = forward_backward_stats(rows, np.diff(local), lpi, lA, kernel, n_jobs)
    except ValueError as exc:
        raise ValueError(f"in the sequences starting at row {start} of X: {exc}") from None
    value = float(np.sum(fb.log_likelihood))
    magnitude = float(np.sum(fb.magnitude)) + float(np.sum(np.abs(fb.log_likelihood)))
    return (family.stats_from_buffer(fb.stats), fb.resp_sum, fb.start, fb.xi,
            np.array([value, fb.expected_emission, float(np.sum(fb.entropy)),
                      magnitude + fb.emission_magnitude]))


def _group_pass(rows: np.ndarray, start: int, shared: tuple, local: np.ndarray) -> tuple:
    """One group of whole sequences (rows ``start:...``, sequence offsets ``local``
    within them): (family statistics, sum_t gamma_t, start counts, transition
    counts, [value, sum gamma log b, entropy, magnitude]). Pure, so a cluster runs
    it where the rows are."""
    family, hard, lpi, lA, params, n_jobs = shared
    if not hard and _FUSED:
        kernel = family.compiled_kernel(params)
        if kernel is not None:
            return _fused_pass(rows, start, kernel, lpi, lA, family, local, n_jobs)
    K = lpi.shape[0]
    n = rows.shape[0]
    log_b = np.ascontiguousarray(family.log_density(rows, params), dtype=np.float64)
    lengths = np.diff(local)
    try:
        if hard:
            path, log_prob = viterbi(log_b, lengths, lpi, lA, n_jobs)
            gamma = np.zeros((n, K))
            gamma[np.arange(n), path] = 1.0
            start_counts = np.bincount(path[local[:-1]], minlength=K).astype(np.float64)
            xi = transition_counts(path, local, K)
            value = float(np.sum(log_prob))
            entropy, magnitude = 0.0, float(np.sum(np.abs(log_prob)))
        else:
            fb = forward_backward(log_b, lengths, lpi, lA, n_jobs)
            gamma, start_counts, xi = fb.gamma, fb.start, fb.xi
            value = float(np.sum(fb.log_likelihood))
            entropy = float(np.sum(fb.entropy))
            magnitude = float(np.sum(fb.magnitude)) + float(
                np.sum(np.abs(fb.log_likelihood)))
    except ValueError as exc:
        raise ValueError(f"in the sequences starting at row {start} of X: {exc}") from None
    e_rows, m_rows = _masked_dot(gamma, log_b)
    return (family_chunk_stats(family, rows, gamma, params), gamma.sum(axis=0), start_counts, xi,
            np.array([value, e_rows, entropy, magnitude + m_rows]))


#: the soft rule runs a sequence longer than this many rows in segments
#: (:func:`_checkpointed_pass`): memory O(segment x K) instead of three T x K arrays
_CHECKPOINT_ROWS = 1 << 20
#: the segments' least length (a segment is max(sqrt(T), this) rows)
_MIN_SEGMENT_ROWS = 1 << 14


def _mutual_information(joint: np.ndarray) -> float:
    """I(z; z') of a joint distribution (K, K) summing to 1 (0 log 0 = 0)."""
    def neg_h(p):
        p = p[p > 0]
        return float(np.sum(p * np.log(p)))
    return neg_h(joint) - neg_h(joint.sum(axis=1)) - neg_h(joint.sum(axis=0))


def _checkpointed_pass(X: Any, start: int, stop: int, shared: tuple) -> tuple:
    """The soft pass of one long sequence (rows ``start:stop`` of X) in segments,
    holding O(segment x K) at a time (docs/hidden_markov.md#long-sequences): the
    same tuple as :func:`_group_pass`, equal to it up to rounding.

    A forward sweep keeps, per segment, the predictive start distribution
    p(z_first | x before) and the filtered last p(z_last | x up to it) (2 K
    numbers). The backward sweep, from the last segment, runs forward-backward on
    each segment with that start and its last row's emission tilted by the
    message from the right, p(x after | z_last) = A r, r(j) = p(x from the next
    segment on | its z_first = j), read off the next segment's first posterior
    row divided by its predictive start. That segment posterior is the exact
    conditional of the segment's states given every row; the transition across a
    boundary is filtered(i) A_ij r(j), normalised; the chain's entropy is the
    segments' entropies minus each boundary's mutual information (the posterior
    is Markov). Rows are read twice, emissions computed twice.
    """
    from math import isqrt
    family, hard, lpi, lA, params, n_jobs = shared
    K = lpi.shape[0]
    A = np.exp(lA)
    seg = max(isqrt(stop - start), _MIN_SEGMENT_ROWS)
    bounds = list(range(start, stop, seg)) + [stop]
    n_seg = len(bounds) - 1
    pred = np.empty((n_seg, K))                 # log p(z_first | x before)
    filtered = np.empty((n_seg, K))             # p(z_last | x up to it)

    def segment(g: int, start_lp: np.ndarray, tilt: Optional[np.ndarray]):
        rows = read_rows(X, bounds[g], bounds[g + 1])
        log_b = np.array(family.log_density(rows, params), dtype=np.float64, order="C")
        last = log_b[-1].copy()
        if tilt is not None:
            log_b[-1] += tilt
        try:
            fb = forward_backward(log_b, None, start_lp, lA, n_jobs)
        except ValueError as exc:
            raise ValueError(f"in the sequence starting at row {start} of X (its rows "
                             f"{bounds[g]}..{bounds[g + 1] - 1}): {exc}") from None
        log_b[-1] = last
        return rows, log_b, fb

    value = 0.0
    start_lp = lpi
    for g in range(n_seg):
        pred[g] = start_lp
        _, _, fb = segment(g, start_lp, None)
        value += float(fb.log_likelihood[0])
        filtered[g] = fb.gamma[-1]
        start_lp = _log(filtered[g] @ A)

    stats = family.empty_stats()
    resp_sum, start_counts, xi = np.zeros(K), np.zeros(K), np.zeros((K, K))
    entropy = e_rows = m_rows = 0.0
    magnitude = abs(value)
    tilt = None
    r = None
    for g in reversed(range(n_seg)):
        rows, log_b, fb = segment(g, pred[g], tilt)
        gamma = fb.gamma
        stats = family.merge_stats(stats, family_chunk_stats(family, rows, gamma, params))
        resp_sum += gamma.sum(axis=0)
        xi += fb.xi
        entropy += float(fb.entropy[0])
        magnitude += float(fb.magnitude[0]) + abs(float(fb.log_likelihood[0]))
        er, mr = _masked_dot(gamma, log_b)
        e_rows += er
        m_rows += mr
        if r is not None:                       # the transition into segment g + 1
            joint = filtered[g][:, None] * A * r[None, :]
            joint /= joint.sum()
            xi += joint
            entropy -= _mutual_information(joint)
        p0 = np.exp(pred[g])
        r = np.zeros(K)
        np.divide(gamma[0], p0, out=r, where=p0 > 0)
        r /= r.max()
        tilt = _log(A @ r)
        if g == 0:
            start_counts = fb.start.copy()
    return (stats, resp_sum, start_counts, xi,
            np.array([value, e_rows, entropy, magnitude + m_rows]))


class MarkovChain(LatentStructure):
    """First-order hidden Markov chain: z_1 ~ startprob, z_{t+1} | z_t ~ transmat[z_t].

    Parameters (the structure's ``weights``): one (K + 1, K) array, row 0 the start
    probabilities, rows 1..K the transition matrix (row i: from state i).
    Statistics: the expected start counts and transition counts of the pass
    (``PassResult.structure_stats``). M-step: each row normalised, or the
    Dirichlet posterior mode with a prior.

    Parameters
    ----------
    n_components : int
        Number of states K.
    startprob_prior : array of shape (K,), optional
        Dirichlet concentration of the start probabilities (entries >= 1; None or
        all 1: maximum likelihood).
    transmat_prior : array of shape (K, K), optional
        Dirichlet concentration of each transition row (entries >= 1).
    fixed : iterable of {'startprob', 'transmat'}
        Parameters the M-step keeps as given.
    """

    unit = "sequence"

    def __init__(self, n_components: int, *, startprob_prior: Optional[np.ndarray] = None,
                 transmat_prior: Optional[np.ndarray] = None, fixed: Iterable[str] = ()):
        super().__init__(n_components)
        K = self.n_components
        self.startprob_prior = (None if startprob_prior is None else
                                np.broadcast_to(np.asarray(startprob_prior, float), (K,)).copy())
        self.transmat_prior = (None if transmat_prior is None else
                               np.broadcast_to(np.asarray(transmat_prior, float), (K, K)).copy())
        for name, a in (("startprob_prior", self.startprob_prior),
                        ("transmat_prior", self.transmat_prior)):
            if a is not None and not (np.all(np.isfinite(a)) and np.all(a >= 1.0)):
                raise ValueError(f"The {name!r} parameter of MarkovChain must hold "
                                 f"Dirichlet concentrations >= 1 (the posterior mode "
                                 f"exists). Got {a!r} instead.")
        if self.startprob_prior is not None and np.all(self.startprob_prior == 1.0):
            self.startprob_prior = None
        if self.transmat_prior is not None and np.all(self.transmat_prior == 1.0):
            self.transmat_prior = None
        self.fixed = frozenset(fixed)
        unknown = sorted(self.fixed - set(FIXABLE))
        if unknown:
            raise ValueError(f"The 'fixed' parameter of MarkovChain must name parameters "
                             f"among {FIXABLE}. Got {unknown} instead.")

    # --- the pass -------------------------------------------------------------------
    def data_pass(self, X: Any, family, rule, weights: np.ndarray, params, *,
                  n_jobs: Optional[int] = 1, chunk_rows: Optional[int] = None,
                  lengths: Any = None) -> PassResult:
        """Forward-backward (soft rule) or Viterbi (hard rule) over every sequence,
        a group of whole sequences at a time; the family's statistics weighted by
        the state posteriors (one-hot paths for the hard rule)."""
        hard = _is_hard(rule)
        K = self.n_components
        starts = check_lengths(lengths, X.shape[0], "MarkovChain.data_pass")
        shared = (family, hard, _log(weights[0]), _log(weights[1:]), params, n_jobs)
        ranges = [(int(starts[i]), int(starts[j]), starts[i:j + 1] - starts[i])
                  for i, j in sequence_groups(starts)]
        map_ranges = getattr(X, "map_ranges", None)
        long_soft = not hard and int(np.max(np.diff(starts))) > _CHECKPOINT_ROWS
        if long_soft and map_ranges is None:
            # a long sequence alone in its group runs in segments, bounded memory
            parts = (_checkpointed_pass(X, s, e, shared)
                     if len(local) == 2 and e - s > _CHECKPOINT_ROWS
                     else _group_pass(read_rows(X, s, e), s, shared, local)
                     for s, e, local in ranges)
        elif map_ranges is not None:        # a cluster: each group where its rows are
            parts = map_ranges(_group_pass, shared, [(s, e) for s, e, _ in ranges],
                               [local for _, _, local in ranges])
        else:
            parts = (_group_pass(read_rows(X, s, e), s, shared, local)
                     for s, e, local in ranges)
        stats = family.empty_stats()
        resp_sum, start_counts, xi = np.zeros(K), np.zeros(K), np.zeros((K, K))
        totals = np.zeros(4)     # value, sum gamma log b, entropy, magnitude
        for part in parts:       # merged in group order, whatever ran them
            stats = family.merge_stats(stats, part[0])
            resp_sum += part[1]
            start_counts += part[2]
            xi += part[3]
            totals += part[4]
        value, e_rows, entropy, magnitude = (float(t) for t in totals)
        e_chain, m_chain = self._expected(start_counts, xi, shared[2], shared[3])
        return PassResult(stats, resp_sum, value, e_rows + e_chain, entropy,
                          magnitude + m_chain + abs(value), None, (start_counts, xi))

    @staticmethod
    def _expected(start_counts, xi, lpi, lA) -> tuple:
        a, ma = _masked_dot(start_counts, lpi)
        b, mb = _masked_dot(xi, lA)
        return a + b, ma + mb

    # --- M-step, objective, prior ---------------------------------------------------
    def m_step(self, result: PassResult, previous: np.ndarray) -> np.ndarray:
        """Start counts and each transition row normalised (or their Dirichlet posterior
        modes). A row with no expected transitions (a state the chain never leaves
        before a sequence ends) keeps its previous values: the objective does not
        depend on it."""
        start_counts, xi = result.structure_stats
        new = np.array(previous, dtype=np.float64, copy=True)
        if "startprob" not in self.fixed:
            new[0] = categorical_m_step(start_counts, self.startprob_prior)
        if "transmat" not in self.fixed:
            for i in range(self.n_components):
                conc = None if self.transmat_prior is None else self.transmat_prior[i]
                total = float(np.sum(xi[i])) + (0.0 if conc is None
                                                 else float(np.sum(conc - 1.0)))
                if total > 0:
                    new[1 + i] = categorical_m_step(xi[i], conc)
        return new

    def expected_log_likelihood(self, result: PassResult, weights: np.ndarray) -> float:
        start_counts, xi = result.structure_stats
        return (categorical_expected(start_counts, weights[0])
                + float(np.sum([categorical_expected(xi[i], weights[1 + i])
                                for i in range(self.n_components)])))

    def log_prior(self, weights: np.ndarray) -> tuple:
        value = magnitude = 0.0
        if self.startprob_prior is not None:
            value, magnitude = dirichlet_log_prior(weights[0], self.startprob_prior)
        if self.transmat_prior is not None:
            for i in range(self.n_components):
                v, m = dirichlet_log_prior(weights[1 + i], self.transmat_prior[i])
                value += v
                magnitude += m
        return value, magnitude

    @property
    def has_prior(self) -> bool:
        return self.startprob_prior is not None or self.transmat_prior is not None

    def summation_depth(self, X: Any, chunk_rows: int, lengths: Any = None) -> int:
        """The error count of the pass totals (docs/hidden_markov.md#tolerances):
        a sequence's forward-backward perturbs each posterior by at most
        4 T (K + 4) u relative and sums K^2 + K T terms (tests/test_markov.py derives
        it), the group's row sums (numpy's pairwise sums: log2 of their length + 8)
        and the groups' totals added one after the other."""
        K = self.n_components
        starts = check_lengths(lengths, X.shape[0], "MarkovChain")
        longest = int(np.max(np.diff(starts)))
        groups = list(sequence_groups(starts))
        widest = max(int(starts[j] - starts[i]) for i, j in groups)
        return (4 * longest * (K + 4) + K * K + K * longest + 8
                + (widest * K).bit_length() + 8 + len(groups))


@hookimpl
def emcore_register_structures():
    return [
        StructureRecord(
            name="mixture", factory=MixtureStructure,
            description="independent rows, z_i ~ pi (mixture weights): the engine's "
                        "default"),
        StructureRecord(
            name="markov_chain", factory=MarkovChain,
            description="first-order hidden Markov chain over each sequence: start "
                        "probabilities and a transition matrix (forward-backward)"),
    ]

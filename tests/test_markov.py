"""Forward-backward and Viterbi (emcore._markov over emcore._core._markov).

References: brute-force enumeration of all K^T paths (T <= 6, K <= 3), the ELBO
identity for chain posteriors, and hmmlearn (an outside implementation) on a
Gaussian HMM with fixed parameters.

Tolerances. All checks use one derived bound, tau = 2 F u E (u = 2^-53):
* The scaled recursions only add and multiply non-negative numbers, so the
  computed quantities are exact for a model whose factors are each perturbed by
  a relative (1 + d), |d| <= (K + 4) u per step (a K-term dot product, the
  emission exp (1 ulp) and its product, the division by c_t). Forward and
  backward together perturb every path's weight by at most 2 T (K + 4) u, so a
  posterior probability (a ratio of two such sums) moves by at most
  4 T (K + 4) u, and log p by T (K + 4) u.
* The log-likelihood, the entropy and the ELBO are sums of terms whose absolute
  values add up to E (the core's ``magnitude`` for its own terms, plus the
  reference's path terms S = the largest sum of |log factors| along a path);
  each sum of m terms costs m u relative to its absolute sum; m <= K^2 + K T.
* The brute-force reference sums K^T path probabilities (K^T u) and 2T terms per
  path (absorbed in S's factor).
So F = 4 T (K + 4) + K^T + K^2 + K T + 8 and E = M + S + |loglik| + 1, with the
factor 2 for libm's 1-ulp exp/log. For T = 6, K = 3 this is ~1e-12 E: far below
any real defect (a marginal-sum entropy is off by O(1), a dropped step by |log c|).
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import assume, example, given, note, strategies as st

from emcore import _markov
from emcore._core import _markov as _core

U = 2.0 ** -53


# --- references ------------------------------------------------------------------

def _paths(K, T):
    return np.array(list(itertools.product(range(K), repeat=T)), dtype=np.intp)


def _path_logp(lb, lpi, lA, Z):
    """log p(x, z) for each path (rows of Z); -inf where a factor is zero."""
    lp = lpi[Z[:, 0]] + lb[0, Z[:, 0]]
    for t in range(1, Z.shape[1]):
        lp = lp + lA[Z[:, t - 1], Z[:, t]] + lb[t, Z[:, t]]
    return lp


def _logsumexp(v):
    m = np.max(v)
    if m == -np.inf:
        return -np.inf
    return m + math.log(math.fsum(np.exp(v - m)))


def brute(lb, lpi, lA):
    """Everything forward-backward and Viterbi compute, by enumerating K^T paths."""
    T, K = lb.shape
    Z = _paths(K, T)
    lp = _path_logp(lb, lpi, lA, Z)
    ll = _logsumexp(lp)
    out = {"ll": ll, "Z": Z, "lp": lp}
    # Viterbi's tie rule: lowest final state, then lowest predecessor, i.e. the
    # smallest path in reversed-lexicographic order among the maximisers
    order = np.lexsort(Z.T)                    # sorts by z_T first, then z_{T-1}, ...
    best = order[np.argmax(lp[order])]
    out["path"], out["score"] = Z[best], lp[best]
    if ll == -np.inf:
        return out
    live = lp > -np.inf
    logq = lp[live] - ll
    q = np.exp(logq)
    gamma = np.zeros((T, K))
    xi = np.zeros((K, K))
    for t in range(T):
        np.add.at(gamma[t], Z[live, t], q)
    for t in range(T - 1):
        np.add.at(xi, (Z[live, t], Z[live, t + 1]), q)
    out.update(gamma=gamma, xi=xi, start=gamma[0].copy(), H=-math.fsum(q * logq))
    return out


def path_scale(lb, lpi, lA):
    """S: the largest sum of |log factors| along any path (finite factors only)."""
    fin = lambda a: np.abs(a[np.isfinite(a)]).max(initial=0.0)   # noqa: E731
    return (sum(fin(row) for row in lb) + fin(lpi) + (lb.shape[0] - 1) * fin(lA))


def tau(K, T, E, n_paths=0):
    F = 4 * T * (K + 4) + n_paths + K * K + K * T + 8
    return 2 * F * U * E


def split(lengths):
    s = np.zeros(len(lengths) + 1, dtype=np.intp)
    np.cumsum(lengths, out=s[1:])
    return [slice(a, b) for a, b in zip(s[:-1], s[1:])]


# --- strategies --------------------------------------------------------------------

@st.composite
def chains(draw, max_k=3, max_t=6, max_seq=3, zeros=True, impossible=False):
    """(log_b, lengths, log_startprob, log_transmat) of a small HMM; with ``zeros``
    some start and transition probabilities are exactly 0 (each row keeps one
    positive), with ``impossible`` some emission densities are 0 (-inf)."""
    K = draw(st.integers(1, max_k))
    lengths = draw(st.lists(st.integers(1, max_t), min_size=1, max_size=max_seq))
    n = sum(lengths)
    rows = draw(st.lists(st.lists(st.floats(-30.0, 5.0), min_size=K, max_size=K),
                         min_size=n, max_size=n))
    offset = draw(st.sampled_from([0.0, -1e3, 1e3, -1e6]))
    lb = np.array(rows) + offset
    if impossible:
        mask = draw(st.lists(st.lists(st.booleans(), min_size=K, max_size=K),
                             min_size=n, max_size=n))
        lb[np.array(mask)] = -np.inf

    def probs(shape):
        w = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=int(np.prod(shape)),
                                   max_size=int(np.prod(shape))))).reshape(shape)
        if not zeros:
            w = w + 0.05
        w = np.atleast_2d(w)
        keep = draw(st.integers(0, K - 1))
        w[:, keep] += 0.1                      # every row keeps a positive entry
        with np.errstate(divide="ignore"):
            return np.log(w / w.sum(axis=1, keepdims=True))

    lpi = probs((K,))[0]
    lA = probs((K, K))
    return lb, lengths, lpi, lA


# --- brute force ---------------------------------------------------------------------

# Falsifying examples of the random profile (regressions): a transition of
# probability e^-713 ~ 1e-310, a subnormal with ~20 significant bits, that the data
# force. The scaled pass met it unnoticed: the entropy was off by 1.6e-4 (the
# fallback's log-space gamma carried u |log alpha| ~ 1e-10 relative error into
# weights of |log b| = 1e6), the forward-only log-likelihood by 1.9e-10 (c_t was a
# subnormal; the digits of the second are ones where the subnormal's rounding
# costs 1.8e-10 against a tolerance of 7e-11).
_NEAR_SUBNORMAL_LPI = np.array([-np.inf, 0.0, -np.inf])
_NEAR_SUBNORMAL_1 = (
    np.array([[-1e6] * 3, [-np.inf, -1e6, -1e6]] + [[-1e6] * 3] * 4), [3, 1, 2],
    _NEAR_SUBNORMAL_LPI,
    np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -713.00158872],
              [-2.39789527, -np.inf, -0.0953101798]]))
_NEAR_SUBNORMAL_2 = (
    np.array([[0.0, 0, 0], [-np.inf, 0, -10], [0, 0, 0], [0, 0, 0], [0, 0, 0],
              [0, 0, 0]]), [2, 1, 3],
    _NEAR_SUBNORMAL_LPI,
    np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -713.0015887198376],
              [0.0, -np.inf, -np.inf]]))


@given(chains(impossible=True))
@example(chain=_NEAR_SUBNORMAL_1)
@example(chain=_NEAR_SUBNORMAL_2)
def test_forward_backward_matches_enumeration(chain):
    lb, lengths, lpi, lA = chain
    K = lb.shape[1]
    refs = [brute(lb[s], lpi, lA) for s in split(lengths)]
    if any(r["ll"] == -np.inf for r in refs):
        # a sequence no path explains: posteriors are undefined, the score is -inf
        with pytest.raises(ValueError, match="probability zero"):
            _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=1)
        ll = _markov.log_likelihood(lb, lengths, lpi, lA, n_jobs=1)
        assert [r["ll"] == -np.inf for r in refs] == list(ll == -np.inf)
        return
    res = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=1)
    forward_only = _markov.log_likelihood(lb, lengths, lpi, lA, n_jobs=1)
    xi, start = np.zeros((K, K)), np.zeros(K)
    for q, (s, r) in enumerate(zip(split(lengths), refs)):
        T = s.stop - s.start
        E = res.magnitude[q] + path_scale(lb[s], lpi, lA) + abs(r["ll"]) + 1
        t = tau(K, T, E, K ** T)
        note(f"seq {q}: T={T} tau={t:.3g} ll err={res.log_likelihood[q] - r['ll']:.3g}")
        assert abs(res.log_likelihood[q] - r["ll"]) <= t
        assert abs(forward_only[q] - r["ll"]) <= t
        assert np.abs(res.gamma[s] - r["gamma"]).max() <= t
        assert abs(res.entropy[q] - r["H"]) <= t
        # the entropy is the chain's, not the (larger) sum of marginal entropies
        xi += r["xi"]
        start += r["start"]
    assert np.all(np.isfinite(res.gamma)) and np.all(np.isfinite(res.xi))
    E = res.magnitude.sum() + sum(path_scale(lb[s], lpi, lA) for s in split(lengths)) + 1
    t = tau(K, max(lengths), E, K ** max(lengths)) * len(lengths)
    assert np.abs(res.xi - xi).max() <= t
    assert np.abs(res.start - start).max() <= t
    # zero transitions carry exactly zero expected counts
    assert np.all(res.xi[lA == -np.inf] == 0.0)


@given(chains(impossible=True))
def test_viterbi_matches_enumeration(chain):
    lb, lengths, lpi, lA = chain
    K = lb.shape[1]
    path, score = _markov.viterbi(lb, lengths, lpi, lA, n_jobs=1)
    for q, s in enumerate(split(lengths)):
        r = brute(lb[s], lpi, lA)
        T = s.stop - s.start
        if r["score"] == -np.inf:
            assert score[q] == -np.inf
            continue
        t = tau(K, T, path_scale(lb[s], lpi, lA) + 1, K ** T)
        assert abs(score[q] - r["score"]) <= t
        # the returned path is optimal up to round-off ...
        ours = _path_logp(lb[s], lpi, lA, path[s][None, :])[0]
        assert abs(ours - r["score"]) <= t
        # ... and is the enumeration's maximiser (tie rule included) whenever no
        # other path comes within the round-off of the best score
        lp = r["lp"]
        rivals = lp[np.any(r["Z"] != r["path"], axis=1)]
        if rivals.size == 0 or rivals.max() < r["score"] - 2 * t:
            np.testing.assert_array_equal(path[s], r["path"])


def test_viterbi_exact_ties_go_to_lowest_state():
    # all paths have bitwise the same score (every factor is the same number)
    K, T = 3, 5
    lb = np.zeros((T, K))
    lA = np.full((K, K), np.log(1.0 / K))
    lpi = np.full(K, np.log(1.0 / K))
    path, score = _markov.viterbi(lb, [T], lpi, lA)
    np.testing.assert_array_equal(path, np.zeros(T, dtype=np.intp))
    # a unique better final state, ties before it: predecessors stay lowest
    lb[-1, 2] = 1.0
    path, _ = _markov.viterbi(lb, [T], lpi, lA)
    np.testing.assert_array_equal(path, [0, 0, 0, 0, 2])


# --- the ELBO of chain distributions --------------------------------------------

def _expected_complete(res_q, lb, lpi, lA):
    """E_q[log p(x, z)] from q's marginals (0 * log 0 = 0) and its magnitude."""
    def dot(w, la):
        m = w != 0
        return float(np.sum(w[m] * la[m])), float(np.sum(w[m] * np.abs(la[m])))
    a = [dot(res_q.start, lpi), dot(res_q.xi, lA), dot(res_q.gamma, lb)]
    return sum(v for v, _ in a), sum(m for _, m in a)


@given(chains(max_k=3, max_t=6, zeros=True), st.integers(0, 2 ** 32 - 1))
def test_elbo_below_loglik_for_arbitrary_chains(chain, seed):
    """ELBO(q, theta) <= log p(x | theta) for any chain q (all of its marginals, pair
    marginals and entropy from forward-backward on another model), = at q = posterior."""
    lb, lengths, lpi, lA = chain
    n, K = lb.shape
    rng = np.random.default_rng(seed)
    res = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=1)
    ll = float(np.sum(res.log_likelihood))
    # q: the posterior of a random HMM (random start, transitions and "emission"
    # tilts), so a time-inhomogeneous chain; its support must lie in theta's or
    # the ELBO is -inf, trivially below
    with np.errstate(divide="ignore"):
        s = np.log(rng.dirichlet(np.ones(K)) * np.isfinite(lpi))
        R = rng.dirichlet(np.ones(K), size=K) * np.isfinite(lA)
        R[R.sum(axis=1) == 0] = 1.0 / K
        R = np.log(R / R.sum(axis=1, keepdims=True))
    for q_model, exact in (((rng.normal(scale=3.0, size=(n, K)), s, R), False),
                           ((lb, lpi, lA), True)):
        tilt, qs, qR = q_model
        try:
            res_q = _markov.forward_backward(tilt, lengths, qs, qR, n_jobs=1)
        except ValueError:            # q's own chain has no path: not a distribution
            assume(False)
        e_complete, mag = _expected_complete(res_q, lb, lpi, lA)
        elbo = e_complete + float(np.sum(res_q.entropy))
        E = mag + res_q.magnitude.sum() + res.magnitude.sum() + abs(ll) + 1
        t = tau(K, n, E)
        note(f"exact={exact} elbo-ll={elbo - ll:.3g} tau={t:.3g}")
        assert elbo <= ll + t
        if exact:
            assert abs(elbo - ll) <= t


@given(chains(max_k=3, max_t=6, max_seq=1, zeros=True), st.integers(0, 2 ** 32 - 1))
def test_elbo_of_markov_chain_matches_enumeration(chain, seed):
    """A plain Markov chain q(z) = s(z_1) prod R(z_t, z_t+1), enumerated: its ELBO
    against theta equals the one from the core's marginals and entropy, and is
    <= log p(x | theta)."""
    lb, lengths, lpi, lA = chain
    T, K = lb.shape
    rng = np.random.default_rng(seed)
    s = rng.dirichlet(np.ones(K))
    R = rng.dirichlet(np.ones(K), size=K)
    if K > 1:
        R[0, 1:] = 0.0                  # zeros in q too
        R[0, 0] = 1.0
    with np.errstate(divide="ignore"):
        ls, lR = np.log(s), np.log(R)
    Z = _paths(K, T)
    logq = _path_logp(np.zeros((T, K)), ls, lR, Z)
    live = logq > -np.inf
    lp = _path_logp(lb, lpi, lA, Z)
    q = np.exp(logq[live])
    terms = lp[live] - logq[live]
    ll = brute(lb, lpi, lA)["ll"]
    if np.any(q[lp[live] == -np.inf] > 0):
        elbo_ref = -np.inf
    else:
        elbo_ref = math.fsum(q * terms)
    res_q = _markov.forward_backward(np.zeros((T, K)), None, ls, lR, n_jobs=1)
    e_complete, mag = _expected_complete(res_q, lb, lpi, lA)
    elbo = e_complete + res_q.entropy[0]
    if elbo_ref == -np.inf:
        assert elbo == -np.inf
        return
    E = mag + res_q.magnitude[0] + float(np.sum(q * np.abs(terms))) + abs(ll) + \
        path_scale(lb, lpi, lA) + 1
    t = tau(K, T, E, K ** T)
    assert abs(elbo - elbo_ref) <= t
    assert elbo_ref <= ll + t


# --- structure, zeros, scale, threads -------------------------------------------

def test_posteriors_are_normalised_and_consistent():
    rng = np.random.default_rng(0)
    K, lengths = 4, [1, 2, 50, 300]
    lb = rng.normal(scale=5.0, size=(sum(lengths), K))
    lpi = np.log(rng.dirichlet(np.ones(K)))
    lA = np.log(rng.dirichlet(np.ones(K), size=K))
    res = _markov.forward_backward(lb, lengths, lpi, lA)
    assert not res.log_space.any()      # ordinary data stay on the scaled path
    T = max(lengths)
    t = tau(K, T, 1.0)
    assert np.abs(res.gamma.sum(axis=1) - 1).max() <= t
    # xi's row sums are the occupancies of every step but each sequence's last
    not_last = np.ones(lb.shape[0], bool)
    not_last[np.cumsum(lengths) - 1] = False
    occ = res.gamma[not_last].sum(axis=0)
    assert np.abs(res.xi.sum(axis=1) - occ).max() <= t * lb.shape[0]
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    np.testing.assert_allclose(res.start, res.gamma[starts].sum(axis=0), rtol=0,
                               atol=t * len(lengths))
    # T = 1 is a mixture: posterior = softmax, entropy = the mixture entropy
    a = lpi + lb[0]
    ll0 = _logsumexp(a)
    logq = a - ll0
    assert abs(res.log_likelihood[0] - ll0) <= tau(K, 1, abs(ll0) + np.abs(a).sum())
    np.testing.assert_allclose(res.gamma[0], np.exp(logq), rtol=0, atol=tau(K, 1, 10))
    assert abs(res.entropy[0] + math.fsum(np.exp(logq) * logq)) <= tau(K, 1, 10)


def test_zeros_in_transmat_left_to_right():
    # a left-to-right chain: transitions only to the same or the next state
    K, T = 4, 40
    rng = np.random.default_rng(1)
    A = np.triu(rng.uniform(0.2, 1.0, size=(K, K))) * np.tri(K, K, 1).T * np.tri(K, K, 1)
    A = np.triu(A) - np.triu(A, 2)
    A /= A.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        lA = np.log(A)
        lpi = np.log(np.eye(K)[0])
    lb = rng.normal(size=(T, K))
    res = _markov.forward_backward(lb, [T], lpi, lA)
    assert np.all(np.isfinite(res.gamma)) and np.all(np.isfinite(res.entropy))
    assert np.all(res.xi[A == 0] == 0.0) and np.all(res.start[1:] == 0.0)
    path, score = _markov.viterbi(lb, [T], lpi, lA)
    assert np.all(np.diff(path) >= 0) and np.all(np.diff(path) <= 1) and path[0] == 0
    assert np.isfinite(score[0]) and score[0] <= res.log_likelihood[0]


def test_zero_probability_sequence():
    # the chain must start in state 0, whose emission density at row 0 is zero
    lpi = np.array([0.0, -np.inf])
    lA = np.log(np.full((2, 2), 0.5))
    lb = np.zeros((5, 2))
    lb[3, 0] = -np.inf          # row 3 of sequence 0 only: state 1 still possible
    lb[5 - 1, :] = 0.0
    lb2 = np.vstack([lb, [[-np.inf, 0.0], [0.0, 0.0]]])
    with pytest.raises(ValueError, match=r"sequence 1 \(rows 5\.\.6\).*row 5"):
        _markov.forward_backward(lb2, [5, 2], lpi, lA)
    ll = _markov.log_likelihood(lb2, [5, 2], lpi, lA)
    assert np.isfinite(ll[0]) and ll[1] == -np.inf
    _, score = _markov.viterbi(lb2, [5, 2], lpi, lA)
    assert np.isfinite(score[0]) and score[1] == -np.inf


def test_chain_forced_through_a_subnormal_transition():
    """A switch 0 -> 1 of probability 1e-320 that the data force: the scaled
    recursion's backward values overflow (1 / 1e-320), so the sequence is redone
    in log space (regression: this gave NaN entropy and infinite transition
    counts). Every path switches once at s in 1..10: all have weight eps, so
    the posterior is uniform over s, gamma_t(1) = t / 10 and H = log 10."""
    eps = 1e-320
    lpi = np.array([0.0, -np.inf])
    with np.errstate(divide="ignore"):
        lA = np.log(np.array([[1.0 - eps, eps], [0.0, 1.0]]))
    lb = np.zeros((20, 2))
    lb[10:, 0] = -np.inf
    res = _markov.forward_backward(lb, None, lpi, lA)
    assert res.log_space[0]
    ll = math.log(10.0) + math.log(eps)        # log(10 eps) of the stored eps
    g1 = np.minimum(np.arange(20) / 10.0, 1.0)
    E = res.magnitude[0] + 2 * abs(ll)
    t = tau(2, 20, E)
    assert abs(res.log_likelihood[0] - ll) <= t
    assert abs(_markov.log_likelihood(lb, None, lpi, lA)[0] - ll) <= t
    assert np.abs(res.gamma[:, 1] - g1).max() <= t
    assert np.abs(res.xi - [[4.5, 1.0], [0.0, 13.5]]).max() <= t
    assert abs(res.entropy[0] - math.log(10.0)) <= t
    path, score = _markov.viterbi(lb, None, lpi, lA)
    # all ten paths tie; backtracking takes the lowest state each time: 0 until
    # the data force 1
    np.testing.assert_array_equal(path, (np.arange(20) >= 10).astype(np.intp))
    assert abs(score[0] - math.log(eps)) <= t


def _absorbing_reversal(T1=30, T2=60, gap=30.0):
    """Two absorbing states (start 1/2 each): the data favour state 0 by e^gap a
    row for T1 rows, then state 1 for T2 rows."""
    lb = np.zeros((T1 + T2, 2))
    lb[:T1, 1] = -gap
    lb[T1:, 0] = -gap
    return lb


def test_underflow_lost_state_is_detected():
    """Regression: the scaled recursion silently lost the right answer. After 30
    rows state 1's forward value, e^-900 relative, underflows to exactly 0 (no
    transition brings it back); the next 60 rows favour state 1, whose path is
    e^900 more probable overall. The scaled pass saw ordinary scale factors and
    returned state 0 throughout and a log-likelihood 900 too low, with no
    fallback. The underflow bound D (beta of the lost state is e^+1800) and the
    forward-only alpha p beta test now send it to log space."""
    lpi = np.log([0.5, 0.5])
    lA = np.array([[0.0, -np.inf], [-np.inf, 0.0]])
    lb = _absorbing_reversal()
    ll = math.log(0.5) + np.logaddexp(-30.0 * 60, -30.0 * 30)
    g1 = 1.0 / (1.0 + math.exp(-30.0 * 30))       # q(state 1), every row
    H = -(g1 * math.log(g1) + (1 - g1) * math.log1p(-g1)) if g1 < 1 else 0.0
    res = _markov.forward_backward(lb, None, lpi, lA)
    assert res.log_space[0]
    t = tau(2, lb.shape[0], res.magnitude[0] + path_scale(lb, lpi, lA) + abs(ll) + 1)
    assert abs(res.log_likelihood[0] - ll) <= t
    assert abs(_markov.log_likelihood(lb, None, lpi, lA)[0] - ll) <= t
    assert np.abs(res.gamma[:, 1] - g1).max() <= t
    assert abs(res.entropy[0] - H) <= t
    np.testing.assert_allclose(res.xi, [[0.0, 0.0], [0.0, lb.shape[0] - 1.0]],
                               rtol=0, atol=t)


def test_log_space_sequences_in_a_batch_are_thread_independent():
    # the absorbing chain of test_underflow_lost_state_is_detected (redone in log
    # space: the parameters are ordinary, the data push it out of range) between
    # ordinary sequences
    lpi = np.log([0.5, 0.5])
    lA = np.array([[0.0, -np.inf], [-np.inf, 0.0]])
    forced = _absorbing_reversal()
    rng = np.random.default_rng(4)
    parts, lengths = [], []
    for i in range(150):
        if i % 3 == 0:
            parts.append(forced)
        else:
            T = int(rng.integers(1, 30))
            parts.append(rng.normal(size=(T, 2)))
        lengths.append(parts[-1].shape[0])
    lb = np.vstack(parts)
    one = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=1)
    assert one.log_space[::3].all() and not one.log_space[1::3].any()
    two = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=2)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
    alone = _markov.forward_backward(forced, None, lpi, lA, n_jobs=1)
    assert np.all(one.log_likelihood[::3] == alone.log_likelihood[0])
    assert np.all(np.isfinite(one.gamma)) and np.all(np.isfinite(one.entropy))


def test_underflowing_emissions_are_exact_shifts():
    # densities near exp(-1e3) per step underflow without the per-row shift;
    # log p is exactly shift-covariant: ll(lb + c) = ll(lb) + T c
    rng = np.random.default_rng(2)
    K, T = 3, 2000
    lb = rng.normal(size=(T, K))
    lpi = np.log(rng.dirichlet(np.ones(K)))
    lA = np.log(rng.dirichlet(np.ones(K), size=K))
    base = _markov.forward_backward(lb, None, lpi, lA)
    low = _markov.forward_backward(lb - 1e3, None, lpi, lA)
    # the per-row shift is what keeps it on the scaled path
    assert not low.log_space.any()
    t = tau(K, T, low.magnitude[0] + base.magnitude[0])
    assert abs(low.log_likelihood[0] - (base.log_likelihood[0] - 1e3 * T)) <= t
    assert np.abs(low.gamma - base.gamma).max() <= t
    assert abs(low.entropy[0] - base.entropy[0]) <= t


def _random_batch(K, n_seq, seed, max_len=60):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=n_seq)
    lb = rng.normal(scale=4.0, size=(int(lengths.sum()), K))
    lpi = np.log(rng.dirichlet(np.ones(K)))
    A = rng.dirichlet(np.ones(K), size=K)
    A[A < 0.2 / K] = 0.0                       # some exact zeros
    A[np.arange(K), np.arange(K)] += 0.1
    with np.errstate(divide="ignore"):
        lA = np.log(A / A.sum(axis=1, keepdims=True))
    return lb, lengths, lpi, lA


@pytest.mark.parametrize("K", [3, 8, _markov._BLAS_MIN_STATES + 1])
def test_bitwise_identical_for_any_thread_count(K):
    lb, lengths, lpi, lA = _random_batch(K, 400, seed=K)
    one = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=1)
    two = _markov.forward_backward(lb, lengths, lpi, lA, n_jobs=2)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
    p1, s1 = _markov.viterbi(lb, lengths, lpi, lA, n_jobs=1)
    p2, s2 = _markov.viterbi(lb, lengths, lpi, lA, n_jobs=2)
    assert p1.tobytes() == p2.tobytes() and s1.tobytes() == s2.tobytes()
    l1 = _markov.log_likelihood(lb, lengths, lpi, lA, n_jobs=1)
    l2 = _markov.log_likelihood(lb, lengths, lpi, lA, n_jobs=2)
    assert l1.tobytes() == l2.tobytes()


@pytest.mark.parametrize("K", [2, 5, 40])
def test_blas_and_loop_paths_agree(K):
    # the same recursions through dgemv/dgemm and through the C loops
    lb, lengths, lpi, lA = _random_batch(K, 30, seed=10 + K, max_len=300)
    starts = np.r_[0, np.cumsum(lengths)].astype(np.intp)
    outs = []
    for blas in (False, True):
        g = np.empty_like(lb)
        outs.append(_core.forward_backward(lb, starts, lpi, lA, g, 1, blas) + (g,))
    (ll0, H0, M0, xi0, st0, *_, g0), (ll1, H1, M1, xi1, st1, *_, g1) = outs
    t = tau(K, max(lengths), M0.max() + 1) * len(lengths)
    assert np.abs(ll0 - ll1).max() <= t and np.abs(H0 - H1).max() <= t
    assert np.abs(g0 - g1).max() <= t and np.abs(xi0 - xi1).max() <= t
    assert np.abs(st0 - st1).max() <= t


@pytest.mark.parametrize("K", [4, 8, 12, 16])
def test_register_paths_match_the_blas_path(K):
    # K = 4 NV (NV <= 4) runs the register form of _markov.h (emm_forward_nv,
    # emm_backward_nv); the BLAS form is the same recursion with the generic
    # order of additions. Sequences of 1, 2 and 3 rows (the first row's own
    # branch, no transition), impossible emissions (-inf: masked products) and
    # exact zeros in A.
    rng = np.random.default_rng(40 + K)
    lengths = [1, 2, 3, 64, 65, 300]
    lb = rng.normal(scale=4.0, size=(sum(lengths), K))
    lb[rng.random(lb.shape) < 0.2] = -np.inf
    lb[np.arange(lb.shape[0]), rng.integers(0, K, lb.shape[0])] = 0.0   # never all -inf
    A = rng.dirichlet(np.ones(K), size=K)
    A[A < 0.3 / K] = 0.0
    A[np.arange(K), np.arange(K)] += 0.1
    with np.errstate(divide="ignore"):
        lA = np.log(A / A.sum(axis=1, keepdims=True))
    lpi = np.log(rng.dirichlet(np.ones(K)))
    starts = np.r_[0, np.cumsum(lengths)].astype(np.intp)
    outs = []
    for blas in (False, True):
        g = np.empty_like(lb)
        outs.append(_core.forward_backward(lb, starts, lpi, lA, g, 1, blas) + (g,))
    (ll0, H0, M0, xi0, st0, status0, _, log0, g0), (ll1, H1, M1, xi1, st1, *_, g1) = outs
    assert not status0.any() and not log0.any()       # the scaled path, no fallback
    t = tau(K, max(lengths), M0.max() + 1) * len(lengths)
    assert np.abs(ll0 - ll1).max() <= t and np.abs(H0 - H1).max() <= t
    assert np.abs(M0 - M1).max() <= t
    assert np.abs(g0 - g1).max() <= t and np.abs(xi0 - xi1).max() <= t
    assert np.abs(st0 - st1).max() <= t
    assert np.all(g0[lb == -np.inf] == 0.0) and np.all(xi0[A == 0.0] == 0.0)
    # the likelihood-only pass (O(K) memory, its own loops) agrees too
    ll = _markov.log_likelihood(lb, lengths, lpi, lA)
    assert np.abs(ll - ll0).max() <= t


@pytest.mark.parametrize("K", [2, 4, 8])
def test_underflow_bound_alone_sends_to_log_space(K):
    # K absorbing states; the data favour state 0 by e^30 a row for 30 rows (state
    # 1's forward value underflows to 0), then state 1 by e^39.3 for 18 rows. Its
    # beta reaches e^707 without overflowing any w, no posterior row loses mass:
    # only the bound D (> C e^707 > u / eta) sees the lost state. K = 2 runs the
    # generic loops, K = 4, 8 the register form of _markov.h.
    T1, T2 = 30, 18
    lb = np.full((T1 + T2, K), -60.0)
    lb[:T1, 0], lb[:T1, 1] = 0.0, -30.0
    lb[T1:, 0], lb[T1:, 1] = -39.3, 0.0
    lpi = np.log(np.full(K, 1.0 / K))
    with np.errstate(divide="ignore"):
        lA = np.log(np.eye(K))
    res = _markov.forward_backward(lb, None, lpi, lA)
    assert res.log_space[0]
    # one path per state: -39.3 T2, -30 T1, and -60 (T1 + T2) for the others
    ll = math.log(1.0 / K) + _logsumexp(np.array(
        [-39.3 * T2, -30.0 * T1] + [-60.0 * (T1 + T2)] * (K - 2)))
    t = tau(K, lb.shape[0], res.magnitude[0] + path_scale(lb, lpi, lA) + abs(ll) + 1)
    assert abs(res.log_likelihood[0] - ll) <= t


def test_out_is_written_and_returned():
    lb, lengths, lpi, lA = _random_batch(3, 5, seed=3)
    out = np.full_like(lb, np.nan)
    res = _markov.forward_backward(lb, lengths, lpi, lA, out=out)
    assert res.gamma is out
    np.testing.assert_array_equal(out, _markov.forward_backward(lb, lengths, lpi, lA).gamma)
    with pytest.raises(ValueError, match="'out'"):
        _markov.forward_backward(lb, lengths, lpi, lA, out=np.empty((3, 3)))
    with pytest.raises(ValueError, match="'out'"):
        _markov.forward_backward(lb, lengths, lpi, lA, out=np.asfortranarray(out))


# --- validation ------------------------------------------------------------------

@pytest.mark.parametrize("func", [_markov.forward_backward, _markov.log_likelihood,
                                  _markov.viterbi])
@pytest.mark.parametrize("lengths, match", [
    ([4, 5], "summing to 9"),
    ([4, 0, 6], "length 0 for sequence 1"),
    ([4, -1, 7], "length -1 for sequence 1"),
    ([[4, 6]], r"shape \(1, 2\)"),
    ([], r"shape \(0,\)"),
    ([4.0, 6.0], "dtype float64"),
    (["4", "6"], "dtype <U1"),
])
def test_lengths_are_validated(func, lengths, match):
    lb = np.zeros((10, 2))
    lp = np.log([0.5, 0.5])
    with pytest.raises(ValueError, match=rf"The 'lengths' parameter of {func.__name__} "
                                         rf"must be .*{match}"):
        func(lb, lengths, lp, np.log(np.full((2, 2), 0.5)))


def test_inputs_are_validated():
    lb = np.zeros((4, 2))
    lp, lA = np.log([0.5, 0.5]), np.log(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="'log_startprob'.*shape"):
        _markov.forward_backward(lb, None, lp[:1], lA)
    with pytest.raises(ValueError, match="'log_transmat'.*NaN"):
        _markov.viterbi(lb, None, lp, np.array([[0.0, np.nan], [0.0, 0.0]]))
    for func in (_markov.forward_backward, _markov.log_likelihood, _markov.viterbi):
        for shape in ((4,), (0, 2), (4, 0)):
            with pytest.raises(ValueError, match=rf"'log_b'.*2-D.*{shape}"):
                func(np.zeros(shape), None, lp, lA)
    for bad in (np.nan, np.inf):
        lb2 = lb.copy()
        lb2[2, 1] = bad
        for func in (_markov.forward_backward, _markov.log_likelihood, _markov.viterbi):
            with pytest.raises(ValueError, match=rf"'log_b'.*Got {bad} at row 2"):
                func(lb2, [1, 3], lp, lA)
    # the compiled layer checks the row offsets itself (an empty sequence there
    # read through a NULL pointer)
    starts = np.array([0, 0, 4], dtype=np.intp)
    with pytest.raises(ValueError, match="starts"):
        _core.forward_backward(lb, starts, lp, lA, np.empty_like(lb), 1, False)
    with pytest.raises(ValueError, match="starts"):
        _core.viterbi(lb, np.array([0, 3], dtype=np.intp), lp, lA, 1)
    # lengths given as Python ints in an object array are fine
    _markov.forward_backward(lb, np.array([1, 3], dtype=object), lp, lA)


# --- hmmlearn as an outside oracle ---------------------------------------------------

def _hmmlearn():
    try:
        from hmmlearn import hmm
    except ImportError:
        # the test extra has hmmlearn wherever it ships wheels (CPython < 3.14):
        # there, with the installed package under test, the oracle must run
        if os.environ.get("EMCORE_TEST_INSTALLED") and sys.version_info < (3, 14):
            raise
        pytest.skip("hmmlearn not installed")
    return hmm


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("implementation", ["log", "scaling"])
def test_hmmlearn_oracle(covariance_type, implementation):
    from scipy.stats import multivariate_normal
    hmm = _hmmlearn()
    rng = np.random.default_rng(5)
    K, d = 3, 2
    model = hmm.GaussianHMM(n_components=K, covariance_type=covariance_type,
                            implementation=implementation)
    model.startprob_ = np.array([0.6, 0.3, 0.1])
    model.transmat_ = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.0, 0.3, 0.7]])
    model.n_features = d
    model.means_ = np.array([[0.0, 0.0], [2.0, 1.0], [-1.0, 3.0]])
    if covariance_type == "full":
        covs = []
        for _ in range(K):
            B = rng.normal(size=(d, d))
            covs.append(B @ B.T + 0.5 * np.eye(d))
        model.covars_ = np.array(covs)
    else:
        model.covars_ = rng.uniform(0.3, 2.0, size=(K, d))
    covs = model.covars_              # (K, d, d) in either case
    lengths = [1, 40, 150, 7]
    X, _ = model.sample(sum(lengths), random_state=7)
    lb = np.column_stack([multivariate_normal(model.means_[k], covs[k]).logpdf(X)
                          for k in range(K)])
    with np.errstate(divide="ignore"):
        lpi, lA = np.log(model.startprob_), np.log(model.transmat_)
    ours = _markov.log_likelihood(lb, lengths, lpi, lA)
    res = _markov.forward_backward(lb, lengths, lpi, lA)
    theirs = model.score(X, lengths)
    # the requirement: score to 1e-10 relative (both sides are accurate to
    # ~n K u relative: about 1e-13 here)
    assert abs(ours.sum() - theirs) <= 1e-10 * abs(theirs)
    assert abs(res.log_likelihood.sum() - theirs) <= 1e-10 * abs(theirs)
    their_logprob, their_path = model.decode(X, lengths, algorithm="viterbi")
    path, logprob = _markov.viterbi(lb, lengths, lpi, lA)
    np.testing.assert_array_equal(path, their_path)
    assert abs(logprob.sum() - their_logprob) <= 1e-10 * abs(their_logprob)
    # posteriors: theirs are renormalised per row; both are within ~n K u
    np.testing.assert_allclose(res.gamma, model.predict_proba(X, lengths), rtol=0,
                               atol=tau(K, max(lengths), abs(theirs) + 1.0))


# --- the fused pass: emissions, forward-backward and the family's statistics ----------

def _gaussian_problem(K, d, n_seq, seed, max_len=60, cov_type="full"):
    from emcore.registry import get_registry
    rng = np.random.default_rng(seed)
    family = get_registry().family("gaussian").factory(K, d, covariance_type=cov_type)
    B = rng.normal(size=(K, d, d))
    covs = B @ np.swapaxes(B, 1, 2) + 0.5 * np.eye(d)
    if cov_type == "diag":
        covs = covs * np.eye(d)
    params = family.params_from_covariances(rng.normal(scale=2.0, size=(K, d)), covs)
    lengths = rng.integers(1, max_len, size=n_seq)
    X = rng.normal(scale=2.0, size=(int(lengths.sum()), d)) + 5.0
    lpi = np.log(rng.dirichlet(np.ones(K)))
    A = rng.dirichlet(np.ones(K), size=K)
    A[A < 0.2 / K] = 0.0
    A[np.arange(K), np.arange(K)] += 0.1
    with np.errstate(divide="ignore"):
        lA = np.log(A / A.sum(axis=1, keepdims=True))
    return family, params, X, lengths, lpi, lA


@pytest.mark.parametrize("K, cov_type", [(3, "full"), (_markov._BLAS_MIN_STATES + 1, "diag")])
@pytest.mark.parametrize("group_rows", [1, 50, 4096])
def test_fused_pass_matches_the_separate_pieces(K, cov_type, group_rows):
    # group_rows 1: every sequence its own group, its rows in 1-row sub-chunks
    family, params, X, lengths, lpi, lA = _gaussian_problem(K, 2, 60, seed=K,
                                                            cov_type=cov_type)
    fused = _markov.forward_backward_stats(X, lengths, lpi, lA,
                                           family.compiled_kernel(params), n_jobs=1,
                                           group_rows=group_rows)
    log_b = family.log_density(X, params)
    fb = _markov.forward_backward(log_b, lengths, lpi, lA, n_jobs=1)
    # per sequence the same log-densities and the same recursion: within the
    # forward-backward tolerance (and in practice bitwise)
    t = tau(K, int(max(lengths)), float(fb.magnitude.max()) + 1.0)
    assert np.abs(fused.log_likelihood - fb.log_likelihood).max() <= t
    assert np.abs(fused.entropy - fb.entropy).max() <= t
    assert np.abs(fused.xi - fb.xi).max() <= t * len(lengths)
    assert np.abs(fused.start - fb.start).max() <= t * len(lengths)
    assert fused.log_space.tobytes() == fb.log_space.tobytes()
    # the statistics differ by their summation order only: n rows, each sum off
    # by at most n u of its absolute sum, twice (both orders)
    ours = family.stats_from_buffer(fused.stats)
    ref = family.chunk_stats(X, fb.gamma)
    n = X.shape[0]
    assert np.abs(ours.weight - ref.weight).max() <= 2 * (n + 4 * int(max(lengths))
                                                          * (K + 4)) * U * n
    m_ours = family.m_step(ours, params)
    m_ref = family.m_step(ref, params)
    scale = np.abs(X).max() + 1.0
    assert np.abs(m_ours["means"] - m_ref["means"]).max() <= 1e3 * n * U * scale


@pytest.mark.parametrize("K, cov_type, tiny", [(3, "full", False), (8, "full", False),
                                             (8, "diag", True),
                                             (_markov._BLAS_MIN_STATES + 1, "diag", False)])
def test_fused_pass_posterior_sums(K, cov_type, tiny):
    # resp_sum and the emission terms come from the pass itself (the register
    # backward for K = 8, emm_gamma_sums after the BLAS or the log-space pass:
    # tiny = a transition probability below DBL_MIN sends every sequence there)
    family, params, X, lengths, lpi, lA = _gaussian_problem(K, 2, 40, seed=30 + K,
                                                            cov_type=cov_type)
    if tiny:
        lA = lA.copy()
        lA[0, 1] = -720.0                   # e^-720 ~ 1e-313, a subnormal
        lA[0] -= np.logaddexp.reduce(lA[0])
    fused = _markov.forward_backward_stats(X, lengths, lpi, lA,
                                           family.compiled_kernel(params), n_jobs=1,
                                           group_rows=97)
    assert fused.log_space.all() == tiny and fused.log_space.any() == tiny
    log_b = family.log_density(X, params)
    fb = _markov.forward_backward(log_b, lengths, lpi, lA, n_jobs=1)
    g = fb.gamma
    terms = np.where(g > 0, g * np.where(g > 0, log_b, 0.0), 0.0)
    mag = float(np.abs(terms).sum())
    n = X.shape[0]
    # sums of n K terms in another order, posteriors within the forward-backward
    # tolerance (relative 4 T (K + 4) u each)
    t = 2 * (n * K + 4 * int(max(lengths)) * (K + 4)) * U
    assert np.abs(fused.resp_sum - g.sum(axis=0)).max() <= t * n
    assert abs(fused.expected_emission - terms.sum()) <= t * mag
    assert abs(fused.emission_magnitude - mag) <= t * mag


@pytest.mark.parametrize("K", [3, 8, _markov._BLAS_MIN_STATES + 1])
def test_fused_pass_bitwise_identical_for_any_thread_count(K):
    family, params, X, lengths, lpi, lA = _gaussian_problem(K, 3, 300, seed=20 + K,
                                                            cov_type="diag")
    kernel = family.compiled_kernel(params)
    runs = [_markov.forward_backward_stats(X, lengths, lpi, lA, kernel, n_jobs=j,
                                           group_rows=97) for j in (1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.tobytes() == b.tobytes()


def test_fused_pass_errors():
    family, params, X, lengths, lpi, lA = _gaussian_problem(2, 2, 5, seed=1)
    kernel = family.compiled_kernel(params)
    with pytest.raises(TypeError, match="'kernel' parameter"):
        _markov.forward_backward_stats(X, lengths, lpi, lA, family)
    with pytest.raises(ValueError, match="'X' parameter"):
        _markov.forward_backward_stats(X[:, :1].copy(), lengths, lpi, lA, kernel)
    with pytest.raises(ValueError, match="'lengths' parameter"):
        _markov.forward_backward_stats(X, [1], lpi, lA, kernel)
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or \\+inf at row 3"):
        _markov.forward_backward_stats(bad, lengths, lpi, lA, kernel)
    # a chain that cannot start in any state
    with pytest.raises(ValueError, match="probability zero"):
        _markov.forward_backward_stats(X, lengths, np.full(2, -np.inf), lA, kernel)

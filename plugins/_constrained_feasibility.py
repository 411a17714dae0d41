"""The feasibility problem of the ``constrained`` posterior rule (``constrained.py``).

Whether the constraint set Q is empty, or can be met only on the faces of the row
sets (an infinite multiplier): each constraint against its extreme values, then
all together by a linear programme for a point of Q in the relative interior of
the row sets. Checked once per fit; see "Feasibility" in the module docstring of
``constrained.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, sparse

from emcore.plugin_api import ResolvedConstraints

#: a bound within this fraction of a constraint's scale of its extreme value, or a
#: q of Q no farther than this from the faces of the row sets, counts as met only
#: on the boundary (infinite multiplier): about the LP solver's accuracy; see
#: _check_feasible
_BOUNDARY = 1e-9
#: the joint feasibility LP is solved when it has at most this many variables after
#: aggregating identical rows (HiGHS' interior point method, measured: 0.2 s at 5e3
#: variables, 1 s at 1e4, 5 s at 2e4, growing about quadratically); larger problems
#: (general ``phi`` on many distinct rows) rely on the per-constraint checks and on
#: detecting a diverging dual. Proportions, labels and point bounds aggregate to a
#: few blocks and are always checked.
_MAX_LP_VARIABLES = 10_000


def _feature_abs_max(R: ResolvedConstraints, w: np.ndarray) -> np.ndarray:
    """sum_i w_i max_k |phi_ikj| for every constraint j."""
    parts = []
    if R.phi is not None:
        parts.append(w @ np.abs(R.phi).max(axis=1))
    if R.component_phi is not None:
        parts.append(np.sum(w) * np.abs(R.component_phi).max(axis=0))
    return np.concatenate(parts)


def _extremes(R: ResolvedConstraints, w: np.ndarray, j: int):
    """(min, max) over the row sets P_i of sum_i w_i E_{q_i}[phi_ij], for constraint j."""
    n, K = R.n_samples, R.n_components
    m1 = 0 if R.phi is None else R.phi.shape[2]
    c = R.phi[:, :, j] if j < m1 else np.broadcast_to(R.component_phi[:, j - m1], (n, K))
    allowed = np.ones((n, K), dtype=bool) if R.allowed is None else R.allowed
    lo = np.where(allowed, c, np.inf).min(axis=1)
    hi = np.where(allowed, c, -np.inf).max(axis=1)
    for r, row in enumerate(R.point_rows):
        lo[row] = _box_extreme(c[row], R.point_low[r], R.point_high[r], allowed[row], 1.0)
        hi[row] = -_box_extreme(-c[row], R.point_low[r], R.point_high[r], allowed[row], 1.0)
    use = w > 0
    return float(np.dot(w[use], lo[use])), float(np.dot(w[use], hi[use]))


def _box_extreme(c, L, H, allowed, mass):
    """min of c . q over {q >= 0, sum q = 1, L <= q <= H, q = 0 off allowed} (greedy)."""
    q = np.where(allowed, L, 0.0)
    room = mass - q.sum()
    for k in np.argsort(c, kind="stable"):
        if room <= 0:
            break
        if allowed[k]:
            add = min(H[k] - q[k], room)
            q[k] += add
            room -= add
    return float(np.dot(c, q))


def _check_feasible(R: ResolvedConstraints, w: np.ndarray, scale: np.ndarray,
                    units=None) -> None:
    """Raise a ValueError naming a constraint if Q is empty or its multiplier infinite.

    The dual optimum is attained (finite lambda) iff Q holds a q in the relative
    interior of the row sets P_i (refined Slater condition for affine
    constraints; docs/posterior_regularization.md#attainment). Each constraint alone: its extreme values
    over the P_i (greedy per row). All together: a linear programme maximising
    s, the distance of q from the non-fixed faces q_ik = L_ik, q_ik = H_ik of the
    P_i (s > 0: relative interior), subject to the constraints. ``units`` =
    (c, d): the user's constraint j is the working one times c_j plus d_j (the
    shift and scale of ConstrainedPosterior._setup), for the messages.
    """
    m = R.n_constraints
    c, d = units if units is not None else (np.ones(m), np.zeros(m))
    for j in range(m):
        lo_w, hi_w = _extremes(R, w, j)
        tol = _BOUNDARY * scale[j]
        b_w = R.b[j]
        lo, hi, b = lo_w * c[j] + d[j], hi_w * c[j] + d[j], b_w * c[j] + d[j]
        if b_w < lo_w - tol or (R.equality[j] and b_w > hi_w + tol):
            side = (f"at least {lo:.6g}" if b_w < lo_w - tol else f"at most {hi:.6g}")
            raise ValueError(f"The constraint {R.names[j]!r} is infeasible: for every q its "
                             f"left-hand side sum_i w_i E_q[phi] is {side}, and the bound is "
                             f"{b:.6g}.")
        if hi_w - lo_w > tol and (abs(b_w - lo_w) <= tol
                                  or (R.equality[j] and abs(b_w - hi_w) <= tol)):
            raise ValueError(f"The constraint {R.names[j]!r} can be met only by giving some "
                             "components probability exactly zero (its bound is the extreme "
                             f"value {b:.6g}), where the projection's multiplier is "
                             "infinite: loosen the bound, or state it as 'forbidden' or "
                             "'labels' (masks).")
    if m > 1:
        status, depth = _relint_lp(R, w, range(m))
        if status is None:
            return                      # too large for the LP (see _MAX_LP_VARIABLES)
        if status == 2:
            for j in range(1, m):
                if _relint_lp(R, w, range(j + 1))[0] == 2:
                    raise ValueError(
                        f"The constraint {R.names[j]!r} is infeasible together with "
                        f"{', '.join(repr(x) for x in R.names[:j])}: no q satisfies them "
                        "all.")
            raise ValueError("The constraints are infeasible together: no q satisfies "
                             f"{', '.join(repr(x) for x in R.names)}.")
        if depth <= _BOUNDARY:
            raise ValueError("The constraints can be met together only by giving some "
                             "components probability exactly zero, where the projection's "
                             "multipliers are infinite: loosen one of "
                             f"{', '.join(repr(x) for x in R.names)}.")


def _relint_lp(R: ResolvedConstraints, w: np.ndarray, which):
    """max s over q in the P_i meeting the constraints in ``which``, with
    L_ik + s <= q_ik <= H_ik - s on every entry not fixed by P_i: (status, s).

    status 2: no q meets them (s unbounded below would not help: the faces are
    the P_i's own). Rows with the same (bounds, features) are one block of
    variables with their summed weight (averaging a feasible q over such rows
    keeps it feasible and interior); rows of weight 0 drop out.
    """
    which = list(which)
    n, K = R.n_samples, R.n_components
    m1 = 0 if R.phi is None else R.phi.shape[2]
    use = w > 0
    low = np.zeros((n, K))
    high = np.ones((n, K))
    low[R.point_rows] = R.point_low
    high[R.point_rows] = R.point_high
    if R.allowed is not None:
        high = np.where(R.allowed, high, 0.0)
    F = np.stack([R.phi[:, :, j] if j < m1 else
                  np.broadcast_to(R.component_phi[:, j - m1], (n, K)) for j in which], axis=2)
    sig = np.concatenate([low, high, F.reshape(n, -1)], axis=1)[use]
    uniq, inverse = np.unique(sig, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    G = uniq.shape[0]
    nv = G * K + 1                                           # q_gk, then s
    if nv > _MAX_LP_VARIABLES:
        return None, None
    Wg = np.bincount(inverse, weights=w[use], minlength=G)
    lowg, highg = uniq[:, :K], uniq[:, K:2 * K]
    Fg = uniq[:, 2 * K:].reshape(G, K, len(which))
    # the range of q_gk over P_g: an entry is fixed when it is a single point
    qmin = np.maximum(lowg, 1.0 - (highg.sum(axis=1, keepdims=True) - highg))
    qmax = np.minimum(highg, 1.0 - (lowg.sum(axis=1, keepdims=True) - lowg))
    movable = (qmax - qmin).reshape(-1) > 0
    idx = np.flatnonzero(movable)
    eye = sparse.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)),
                            shape=(idx.size, nv))
    s_col = sparse.csr_matrix((np.ones(idx.size), (np.arange(idx.size),
                                                   np.full(idx.size, nv - 1))),
                              shape=(idx.size, nv))
    rows_ub = [s_col - eye, s_col + eye]                     # s - q <= -L, s + q <= H
    b_ub = [-lowg.reshape(-1)[idx], highg.reshape(-1)[idx]]
    rows_eq = [sparse.csr_matrix((np.ones(G * K), (np.repeat(np.arange(G), K),
                                                   np.arange(G * K))), shape=(G, nv))]
    b_eq = [np.ones(G)]
    for col, j in enumerate(which):
        coef = sparse.csr_matrix(np.append((Wg[:, None] * Fg[:, :, col]).reshape(-1), 0.0))
        if R.equality[j]:
            rows_eq.append(coef)
            b_eq.append([R.b[j]])
        else:
            rows_ub.append(coef)
            b_ub.append([R.b[j]])
    bounds = np.column_stack([lowg.reshape(-1), highg.reshape(-1)]).tolist()
    bounds.append((None, 1.0))
    cost = np.zeros(nv)
    cost[-1] = -1.0
    res = optimize.linprog(cost, A_ub=sparse.vstack(rows_ub).tocsr(),
                           b_ub=np.concatenate(b_ub), A_eq=sparse.vstack(rows_eq).tocsr(),
                           b_eq=np.concatenate(b_eq), bounds=bounds, method="highs-ipm")
    if res.status == 2:
        return 2, -np.inf
    if res.status != 0:
        raise ValueError(f"the feasibility check of the constraints failed ({res.message})")
    return 0, float(res.x[-1])

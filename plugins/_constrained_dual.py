"""The dual solver of the ``constrained`` posterior rule (``constrained.py``).

For one constraint set on n rows (the rule's working, well-scaled problem): the
convex dual U(lambda) = b . lambda + sum_i w_i G_i(lambda), its gradient
b - E_{q_lambda}[phi] and Hessian, the per-row projection q_lambda (rows with
bounds through the exact breakpoint search of :func:`_clip_rows`), and its
minimisation (L-BFGS-B, then damped projected Newton steps to the rounding
floor). The mathematics and the solver's design are in the module docstring of
``constrained.py`` ("The dual", "The solver").
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from scipy import optimize

from emcore.plugin_api import UNIT_ROUNDOFF as _U, ResolvedConstraints


class _Evaluation:
    """q_lambda and the dual at one lambda, for all rows (or a chunk of them)."""
    __slots__ = ("log_q", "q", "tilt", "value", "grad", "expect", "G", "clipped", "hessian")


def _rounding_floor(n: int, K: int) -> float:
    """Relative residual the dual is solved to: 64 u (K + log2 n).

    The sums behind E_j carry ~ u (K + log2 n) sum_i w_i |q phi| of rounding
    error; 64 times that is where Newton's steps stop paying."""
    return 64 * _U * (K + math.log2(max(n, 2)))


class _DualSolver:
    """U(lambda) of one working constraint set and its minimiser (module docstring).

    ``work``: the rule's working constraints (shifted and scaled); ``fixed``: the
    constraints constant to working precision (multiplier held at 0);
    ``scale_work``: each constraint's scale in working units; ``bounds``: the
    multipliers' bounds for L-BFGS-B; ``max_dual_iter``: its iteration limit;
    ``floor(n, K)``: the relative residual to solve to (:func:`_rounding_floor`).
    Holds no state between calls: the warm start is passed to :meth:`solve`.
    """

    def __init__(self, work: ResolvedConstraints, fixed: np.ndarray,
                 scale_work: np.ndarray, bounds: list, max_dual_iter: int,
                 floor: Callable[[int, int], float] = _rounding_floor) -> None:
        self._work = work
        self._fixed = fixed
        self._scale_work = scale_work
        self._bounds = bounds
        self.max_dual_iter = max_dual_iter
        self.floor = floor

    def tilt(self, lam: np.ndarray, start: int, stop: int, absolute: bool = False):
        """lambda . phi_ik for rows start..stop, shape (rows, K) (|phi| . |lambda| if asked)."""
        R = self._work
        out = np.zeros((stop - start, R.n_components))
        m1 = 0 if R.phi is None else R.phi.shape[2]
        if R.phi is not None and np.any(lam[:m1]):
            phi = R.phi[start:stop]
            out += (np.abs(phi) if absolute else phi) @ lam[:m1]
        if R.component_phi is not None and np.any(lam[m1:]):
            cp = np.abs(R.component_phi) if absolute else R.component_phi
            out += (cp @ lam[m1:])[None, :]
        return out

    def project(self, a: np.ndarray, lam: np.ndarray, start: int, stop: int) -> _Evaluation:
        """q_lambda for rows start..stop of the masked log joint ``a`` (those rows)."""
        R = self._work
        ev = _Evaluation()
        ev.tilt = self.tilt(lam, start, stop)
        at = a - ev.tilt
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mx = np.max(at, axis=1, keepdims=True)
            e = np.exp(at - mx)
            s = e.sum(axis=1, keepdims=True)
            log_s = np.log(s)
            ev.log_q = (at - mx) - log_s
            ev.q = e / s
            ev.G = (mx + log_s)[:, 0]
        ev.clipped = None
        lo, hi = np.searchsorted(R.point_rows, [start, stop])
        if lo < hi:
            local = R.point_rows[lo:hi] - start
            L, Hh = R.point_low[lo:hi], R.point_high[lo:hi]
            active = ~_inside_rows(ev.q[local], L, Hh)
            if np.any(active):
                rows = local[active]
                log_q, q, clipped = _clip_rows(ev.log_q[rows], L[active], Hh[active])
                ev.log_q[rows] = log_q
                ev.q[rows] = q
                with np.errstate(invalid="ignore"):
                    ev.G[rows] = np.sum(np.where(q > 0, q * (at[rows] - log_q), 0.0), axis=1)
                ev.clipped = (rows, clipped)
        return ev

    def evaluate(self, a, w, lam, hessian=False) -> _Evaluation:
        """U(lambda), its gradient b - E[phi] and (if asked) its Hessian, over all rows."""
        R = self._work
        ev = self.project(a, lam, 0, a.shape[0])
        wq = w[:, None] * ev.q
        parts = []
        if R.phi is not None:
            parts.append(np.einsum("nk,nkj->j", wq, R.phi))
        if R.component_phi is not None:
            parts.append(wq.sum(axis=0) @ R.component_phi)
        ev.expect = np.concatenate(parts) if parts else np.zeros(0)
        ev.grad = R.b - ev.expect
        use = w > 0
        ev.value = float(np.dot(R.b, lam) + np.dot(w[use], ev.G[use]))
        if not hessian:
            return ev
        # Hessian: sum_i w_i [sum_{k free} q_ik phi phi^T - u_i u_i^T / (1 - C_i)],
        # u_i = sum_{k free} q_ik phi_ik, C_i the mass of the clipped components
        qf = ev.q.copy()
        if ev.clipped is not None:
            rows, clipped = ev.clipped
            qf[rows] = np.where(clipped, 0.0, qf[rows])
        free_mass = qf.sum(axis=1)
        wqf = w[:, None] * qf
        m1 = 0 if R.phi is None else R.phi.shape[2]
        m = R.n_constraints
        Hm = np.zeros((m, m))
        u = np.zeros((a.shape[0], m))
        if R.phi is not None:
            u[:, :m1] = np.einsum("nk,nkj->nj", qf, R.phi)
            Hm[:m1, :m1] = np.einsum("nk,nkj,nkl->jl", wqf, R.phi, R.phi)
        if R.component_phi is not None:
            P = R.component_phi
            u[:, m1:] = qf @ P
            Hm[m1:, m1:] = P.T @ (wqf.sum(axis=0)[:, None] * P)
            if R.phi is not None:
                cross = np.einsum("nk,nkj,kl->jl", wqf, R.phi, P)
                Hm[:m1, m1:] = cross
                Hm[m1:, :m1] = cross.T
        scale = np.where(free_mass > 0, w / np.where(free_mass > 0, free_mass, 1.0), 0.0)
        Hm -= (u * scale[:, None]).T @ u
        ev.hessian = 0.5 * (Hm + Hm.T)
        return ev

    # --- minimising U ------------------------------------------------------------------
    def _residual(self, lam: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """|projected gradient| per constraint, relative to its scale (0 = KKT holds)."""
        R = self._work
        # an inequality at lambda_j = 0 with b_j - E_j >= 0 (satisfied) is optimal; a
        # constant constraint (self._fixed) is met to rounding or was rejected
        r = np.where(R.equality | (lam > 0), grad, np.minimum(grad, 0.0))
        return np.where(self._fixed, 0.0, np.abs(r) / self._scale_work)

    def solve(self, a: np.ndarray, w: np.ndarray, warm: Optional[np.ndarray]):
        """(lambda, evaluation at lambda, dual evaluations) minimising U, warm-started
        from ``warm`` (the previous E-step's lambda, or None)."""
        R = self._work
        m = R.n_constraints
        zero = np.zeros(m)
        n_eval = 1
        if m == 0:
            return zero, self.evaluate(a, w, zero), n_eval
        if not R.equality.any():
            ev0 = self.evaluate(a, w, zero)
            if np.all((ev0.grad >= 0.0) | self._fixed):
                return zero, ev0, n_eval        # the posterior is in Q: lambda* = 0 exactly
        lam0 = zero if warm is None else np.where(R.equality, warm, np.maximum(warm, 0.0))
        counter = [0]

        def fun(lam):
            counter[0] += 1
            ev = self.evaluate(a, w, lam)
            if not (math.isfinite(ev.value) and np.all(np.isfinite(ev.grad))):
                self._diverged(lam, None)
            return ev.value, ev.grad          # grad = b - E[phi] is the gradient of U

        res = optimize.minimize(fun, lam0, jac=True, method="L-BFGS-B", bounds=self._bounds,
                                options={"maxiter": self.max_dual_iter, "ftol": 0.0,
                                         "gtol": 1e-10 * float(self._scale_work.min()),
                                         "maxcor": 20})
        lam = np.where(R.equality, res.x, np.maximum(res.x, 0.0))
        lam, ev, polish = self._newton(a, w, lam)
        n_eval += counter[0] + polish
        self._check_solution(lam, ev, a)
        return lam, ev, n_eval

    def _newton(self, a, w, lam):
        """Projected, damped Newton steps on U (exact Hessian), to the rounding floor.

        Inequality multipliers near 0 whose gradient pushes them to 0 (Bertsekas'
        epsilon-active set) take a projected gradient step, the others the step
        -(H + mu I)^-1 g (least squares at mu = 0: redundant equalities make H
        singular). mu (Levenberg-Marquardt) is 0 while Newton steps succeed; a
        rejected step raises it (x4), an accepted one lowers it (/4): this crosses
        the dual's flat stretches (rows pinned by a point bound do not respond to
        lambda, H = 0 there) with geometrically growing gradient steps. A step is
        accepted on an Armijo decrease of U or, near the optimum where U is flat to
        rounding, on halving the KKT residual.
        """
        R = self._work
        ineq = ~R.equality
        ev = self.evaluate(a, w, lam, hessian=True)
        res = self._residual(lam, ev.grad).max()
        n_eval = 1
        floor = self.floor(a.shape[0], R.n_components)
        mu, stalls = 0.0, 0
        for _ in range(200):
            if res <= floor:
                break
            g = ev.grad                                    # gradient of U: b - E[phi]
            pg = lam - np.where(ineq, np.maximum(lam - g, 0.0), lam - g)
            eps = min(1e-3, float(np.linalg.norm(pg)))
            active = ineq & (lam <= eps) & (g > 0)
            free = ~active & ~self._fixed
            step = np.where(active & ~self._fixed, -g, 0.0)
            if free.any():
                Hf = ev.hessian[np.ix_(free, free)]
                if mu == 0.0:
                    step[free] = -np.linalg.lstsq(Hf, g[free], rcond=1e-13)[0]
                else:
                    step[free] = -np.linalg.solve(Hf + mu * np.eye(Hf.shape[0]), g[free])
            trial = lam + step
            trial = np.where(ineq, np.maximum(trial, 0.0), trial)
            ev_t = self.evaluate(a, w, trial, hessian=True)
            n_eval += 1
            res_t = self._residual(trial, ev_t.grad).max()
            decrease = -float(np.dot(g, trial - lam))      # >= 0 along this path
            accepted = np.isfinite(ev_t.value) and (
                (decrease > 0 and ev_t.value <= ev.value - 1e-4 * decrease)
                or res_t < 0.5 * res)
            # progress: the residual halves or U drops by more than its rounding; a
            # Newton step can be accepted without it when the gradient lies where H
            # is singular (two constraints on the same rows): damping then adds the
            # gradient direction
            progress = accepted and (res_t <= 0.5 * res
                                     or ev.value - ev_t.value > 64 * _U * abs(ev.value))
            if accepted:
                lam, ev, res = trial, ev_t, res_t
            if progress:
                stalls = 0
                mu = 0.0 if mu < 1e-12 * (1.0 + np.abs(ev.hessian).max()) else mu / 4
            else:
                stalls += 1
                # a gradient step of length <= 1 (lambda is O(log-odds)) first
                mu = max(4.0 * mu, float(np.abs(g).max()), 1e-12)
                if mu > 1e30 or stalls >= 40:
                    break
        return lam, ev, n_eval

    def _check_solution(self, lam, ev, a):
        R = self._work
        viol = ev.expect - R.b
        pos = np.where(R.equality, np.abs(viol), np.maximum(viol, 0.0)) / self._scale_work
        pos = np.where(self._fixed, 0.0, pos)
        if pos.max() > 1e-6:
            self._diverged(lam, int(np.argmax(pos)), pos.max())

    def _diverged(self, lam, j, rel=None):
        R = self._work
        if j is None:
            j = int(np.argmax(np.abs(np.nan_to_num(lam, nan=np.inf))))
        detail = "" if rel is None else f" (relative violation {rel:.2e} remains)"
        raise ValueError(f"The constraint {R.names[j]!r} could not be met by the posterior "
                         f"projection: its multiplier grows without bound{detail}. The "
                         "constraint set is infeasible or can be met only by giving some "
                         "components probability zero; loosen the bound or use "
                         "'forbidden'/'labels' (masks).")


# --- rows --------------------------------------------------------------------------------

def _logsumexp(a: np.ndarray) -> np.ndarray:
    mx = np.max(a, axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    return (mx + np.log(np.sum(np.exp(a - mx), axis=1, keepdims=True)))[:, 0]


def _row_elbo(a: np.ndarray, q: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(q > 0, q * (a - log_q), 0.0), axis=1)


def _inside_rows(q, L, H) -> np.ndarray:
    return np.all((q >= L) & (q <= H), axis=1)


def _inside(q, L, H) -> bool:
    return bool(np.all(_inside_rows(q, L, H)))


def _clip_rows(log_r: np.ndarray, L: np.ndarray, H: np.ndarray):
    """KL projection of rows r (given as log r) onto {q in simplex, L <= q <= H}.

    KKT: q_k = clip(s r_k, L_k, H_k) with one s > 0 per row chosen so that the row
    sums to 1 (sum_k clip(s r_k, ...) is continuous and non-decreasing in
    t = log s). The breakpoints t = log L_k - log r_k, log H_k - log r_k are sorted;
    the interval holding the root fixes which components are clipped, and then
    t = log(1 - C) - logsumexp_free(log r) exactly (C the clipped mass). Returns
    (log q, q, clipped mask). Components with r_k = 0 (masks) stay 0.
    """
    B, K = log_r.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logL, logH = np.log(L), np.log(H)
        live = np.isfinite(log_r)
        bps = np.concatenate([np.where(live & (L > 0), logL - log_r, np.inf),
                              np.where(live & (H > 0), logH - log_r, np.inf)], axis=1)
        bps.sort(axis=1)

        def total(t):           # t: (B, C) -> sum_k clip(exp(log r_k + t)), (B, C)
            vals = np.exp(log_r[:, None, :] + t[:, :, None])
            vals = np.where(live[:, None, :], np.clip(vals, L[:, None, :], H[:, None, :]), 0.0)
            return vals.sum(axis=2)

        S = np.where(np.isfinite(bps), total(np.where(np.isfinite(bps), bps, 0.0)), np.inf)
        j = np.sum(S < 1.0, axis=1)                # the root is in (bps[j-1], bps[j]]
        idx = np.arange(B)
        left = np.where(j > 0, bps[idx, np.maximum(j - 1, 0)], -np.inf)
        right = np.where(j < 2 * K, bps[idx, np.minimum(j, 2 * K - 1)], np.inf)
        mid = np.where(np.isfinite(left) & np.isfinite(right), 0.5 * (left + right),
                       np.where(np.isfinite(right), right - 1.0,
                                np.where(np.isfinite(left), left + 1.0, 0.0)))
        probe = log_r + mid[:, None]
        low = live & (probe < logL)
        high = live & ~low & (probe > logH)
        free = live & ~low & ~high
        clipped_mass = np.sum(np.where(low, L, 0.0) + np.where(high, H, 0.0), axis=1)
        lse_free = _logsumexp(np.where(free, log_r, -np.inf))
        t = np.log(np.maximum(1.0 - clipped_mass, 0.0)) - lse_free
        log_q = np.where(free, log_r + t[:, None],
                         np.where(low, logL, np.where(high, logH, -np.inf)))
        q = np.where(free, np.exp(log_q), np.where(low, L, np.where(high, H, 0.0)))
    return log_q, q, low | high

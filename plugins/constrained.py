"""Posterior regularization: the ``constrained`` posterior rule.

The E-step is the KL projection of the posterior onto the constraint set of an
:class:`emcore.Constraints` (notes/posterior_regularization.md):

    q_t = argmin_{q in Q} KL(q || p(z | x, theta_t)),
    Q = {q : q_i in P_i for every row, sum_i w_i E_{q_i}[phi_i] <= b (= b for equalities)},

where P_i holds the row's own constraints (masks from labels/forbidden
components, bounds on q_ik) and the corpus-level constraints (``phi``,
proportions) couple the rows. EM with this E-step keeps the PR objective

    J(theta) = loglik(theta) - min_{q in Q} KL(q || p(z | x, theta)) = max_{q in Q} F(q, theta)

non-decreasing (F the ELBO), while the log-likelihood itself may drop.

**The dual.** With a_ik = log p(x_i, z_i = k) and a multiplier lambda_j per
corpus constraint (>= 0 for inequalities, free for equalities), the rows
decouple: q_lambda,i is the projection of the tilted posterior
softmax(a_i - lambda . phi_i) onto P_i (no-op without row constraints; with
bounds, the tilted posterior clipped to the bounds and rescaled, found exactly
by a breakpoint search; masks are -inf entries). The dual to *minimise* is

    U(lambda) = b . lambda + sum_i w_i G_i(lambda),
    G_i(lambda) = max_{q_i in P_i} sum_k q_ik (a_ik - lambda . phi_ik - log q_ik)

(G_i = logsumexp_k(a_ik - lambda . phi_ik) without row constraints), convex with
gradient b - E_{q_lambda}[phi] and Hessian sum_i w_i Cov_{q_lambda,i}(phi_i) (over
the unclipped components). Weak duality gives, for every lambda and every q in Q,
F(q) <= J <= U(lambda); at lambda the width is the duality gap
U(lambda) - F(q_lambda) = lambda . (b - E_{q_lambda}[phi]).

**The solver.** It works on an equivalent, well-scaled problem: each phi_ikj
shifted by its row minimum over the allowed k (b shifted to match) and divided
by c_j = max_ik of the result (so lambda c_j is O(log-odds), the notes' count
form, whatever the units and offset of phi; a feature whose spread cannot move
E_j beyond the rounding floor is constant and keeps lambda_j = 0). L-BFGS-B
(scipy.optimize.minimize, bounds [0, inf) / (-inf, inf)) warm-started from the
previous E-step's lambda, then projected Newton steps with the exact Hessian,
damped (Levenberg-Marquardt) across flat stretches of U, until the relative
projected gradient |b_j - E_j| / scale_j, scale_j = sum_i w_i max_k |phi_ikj| +
|b_j|, reaches 64 u (K + log2 n), the rounding floor of its sums. If the
posterior itself satisfies every constraint (no equalities), lambda = 0 exactly
and q is the posterior (computed by the soft rule), so inactive constraints give
plain EM bit for bit. Nearly parallel constraints (features differing by ~1e-9
of their size) make the dual ill-conditioned; the solver may then stop above the
floor, which the reported violations and duality gap show and the chain
tolerance below takes into account.

**Feasibility.** Checked once per fit, before the first projection: each
constraint alone against its extreme values over the row sets, then all
together by a linear programme (scipy.optimize.linprog, HiGHS) over q, rows with
identical constraints aggregated, looking for a q of Q in the relative interior
of the row sets, which is when the multipliers are finite (when it has at most
``_MAX_LP_VARIABLES`` variables; larger ones, general ``phi`` on many distinct
rows, rely on the next safeguard). An empty Q raises a ValueError naming the first constraint that cannot be met
(alone, or together with the ones before it); constraints that can be met only
with some q_ik = 0 (the multiplier would be infinite) raise a ValueError that
says so. A multiplier that still grows without bound, or a projection that does
not reach its constraints, raises a ValueError naming the constraint.

**The chain.** The rule reports, per row, f_i = F_i(q_lambda,i) =
sum_k q_ik (a_ik - log q_ik), so the engine's chain
F(q_t, theta_t) = ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) <= F(q_{t+1}, theta_{t+1})
tracks J. The last link holds exactly only for an exact projection. For the
computed lambda' = lambda_{t+1} and q_t (any q in the row sets P_i), weak duality
gives F(q_t, theta_{t+1}) - lambda' . (E_{q_t}[phi] - b) <= U(lambda'), hence

    ELBO(q_t, theta_{t+1}) <= F(q_{t+1}, theta_{t+1}) + max(gap_{t+1}, 0)
                              + sum_j |lambda'_j| viol_j(q_t),

viol_j the positive part of E_{q_t}[phi_j] - b_j (its absolute value for
equalities): :meth:`bound_tolerance` returns that extra term.

**Memory and threads.** The dual needs all rows at once: ``prepare`` keeps the
n x k log joint of the pass (plus the n x k x m features the user gave), and
the rule has no compiled kernel, so passes run through the engine's Python
chunk loop on one thread.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Optional

import numpy as np
from scipy import optimize, sparse

from emcore.constraints import Constraints, ResolvedConstraints
from emcore.plugin_api import UNIT_ROUNDOFF as _U, PosteriorRule, PosteriorRuleRecord, hookimpl
from emcore.registry import get_registry

__all__ = ["ConstrainedPosterior"]

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


class _Evaluation:
    """q_lambda and the dual at one lambda, for all rows (or a chunk of them)."""
    __slots__ = ("log_q", "q", "tilt", "value", "grad", "expect", "G", "clipped", "hessian")


class ConstrainedPosterior(PosteriorRule):
    """KL projection of the posterior onto the constraints (posterior regularization).

    Parameters
    ----------
    constraints : emcore.Constraints
        What q must satisfy.
    max_dual_iter : int, default 500
        Iterations of L-BFGS-B per E-step (the Newton polish adds at most 200).

    Notes
    -----
    See the module docstring for the dual, its solver, the feasibility check and
    the tolerance this rule adds to the engine's chain check. ``report()`` after a
    pass returns J, the log-likelihood, the signed violations E_q[phi] - b, their
    largest positive part, the duality gap and lambda.
    """

    objective = "PR objective J"
    entropy_weight = 1.0
    needs_all_rows = True

    def __init__(self, constraints: Constraints = None, *, max_dual_iter: int = 500) -> None:
        if not isinstance(constraints, Constraints):
            raise ValueError("The 'constraints' parameter of the constrained posterior rule "
                             f"must be an emcore.Constraints. Got {constraints!r} instead.")
        if isinstance(max_dual_iter, bool) or not isinstance(max_dual_iter, int) \
                or max_dual_iter < 1:
            raise ValueError("The 'max_dual_iter' parameter of the constrained posterior "
                             f"rule must be a positive int. Got {max_dual_iter!r} instead.")
        self.constraints = constraints
        self.max_dual_iter = max_dual_iter
        # lambda = 0 chunks are the plain posterior: the soft rule's own code, so that
        # inactive constraints reproduce EM bit for bit
        self._soft = get_registry().posterior_rule("soft").factory()
        self._setup_key = None
        self._lam = None         # the last solution: the next E-step's warm start
        self._state = None

    def __repr__(self) -> str:
        return f"ConstrainedPosterior({self.constraints!r})"

    def compiled_kernel(self):
        return None

    # --- the engine's interface -----------------------------------------------------------
    def prepare(self, log_joint_chunks: Callable[[], Iterator], sample_weight) -> None:
        """Solve the dual for all rows of the pass (see the module docstring)."""
        # the chunks come in row order (start, stop, a); their rows make the pass's n
        parts = [np.asarray(lj, dtype=np.float64) for _, _, lj in log_joint_chunks()]
        a = np.concatenate(parts) if parts else np.empty((0, 0))
        n, K = a.shape
        w = (np.ones(n) if sample_weight is None
             else np.asarray(sample_weight, dtype=np.float64))
        key = (n, K, hash(w.tobytes()))
        if key != self._setup_key:
            self._setup(n, K, w)
            self._setup_key = key
        R = self._work
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            loglik_rows = _logsumexp(a)
        bad = ~np.isfinite(loglik_rows)
        if R.allowed is not None:
            a = np.where(R.allowed, a, -np.inf)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                bad |= ~np.isfinite(np.max(a, axis=1))
        bad |= np.isnan(a).any(axis=1)
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {row} has no finite likelihood under any component it is "
                             "allowed in (every log p(x, z=k) is -inf or NaN)")
        self._a = a
        lam, ev, n_eval = self._solve(a, w)
        self._lam = lam
        self._lam_is_zero = not np.any(lam)
        # the solver works on constraints divided by c_j = max |phi_.j| (_setup); report
        # in the user's units: lambda_j / c_j, (E_j - b_j) c_j (the gap is the same)
        viol = (ev.expect - R.b) * self._c if R.n_constraints else np.zeros(0)
        with np.errstate(over="ignore"):    # absurdly scaled phi (~1e-300): inf
            lam_user = lam / self._c
        pos = np.where(R.equality, np.abs(viol), np.maximum(viol, 0.0))
        objective = float(np.dot(w, _row_elbo(a, ev.q, ev.log_q)))
        self._state = {
            "J": objective,
            "loglik": float(np.dot(w, np.where(w > 0, loglik_rows, 0.0))),
            "max_violation": float(pos.max()) if pos.size else 0.0,
            "duality_gap": float(np.dot(lam, R.b - ev.expect)) if R.n_constraints else 0.0,
            "lambda": lam_user,
            "violation": viol,
            "names": R.names,
            "dual_evaluations": n_eval,
        }
        self._state["kl"] = self._state["loglik"] - objective

    def posterior(self, log_joint: np.ndarray, row_weights: Optional[np.ndarray] = None,
                  *, start: int = 0):
        """(log q, q, f, totals) of rows start .. start + len(log_joint), at the solved lambda."""
        if self._lam is None:
            raise ValueError("the constrained posterior rule needs prepare() (all rows) "
                             "before posterior()")
        log_joint = np.asarray(log_joint, dtype=np.float64)
        stop = start + log_joint.shape[0]
        R = self._work
        if stop > R.n_samples:
            raise ValueError(f"rows {start}..{stop} are beyond the {R.n_samples} rows the "
                             "constraints were prepared for")
        lo, hi = np.searchsorted(R.point_rows, [start, stop])
        masked = R.allowed is not None and not R.allowed[start:stop].all()
        if self._lam_is_zero and not masked:
            out = self._soft.posterior(log_joint, row_weights)
            q = out[1]
            if lo == hi or _inside(q[R.point_rows[lo:hi] - start], R.point_low[lo:hi],
                                   R.point_high[lo:hi]):
                return out
        a = log_joint if R.allowed is None else np.where(R.allowed[start:stop], log_joint,
                                                         -np.inf)
        ev = self._project(a, self._lam, start, stop)
        tilt_mag = self._tilt(np.abs(self._lam), start, stop, absolute=True)
        q, log_q = ev.q, ev.log_q
        pos = q > 0
        with np.errstate(invalid="ignore"):
            qa = np.where(pos, q * log_joint, 0.0)
            qlq = np.where(pos, q * log_q, 0.0)
            mag = np.where(pos, q * (np.abs(log_joint) + np.abs(log_q) + tilt_mag), 0.0)
        # f_i = G_i + E_q[lambda . phi_i] (= logsumexp(a - tilt) + E_q[tilt] without row
        # bounds): a formula of its own, so the engine's check ELBO = F is not circular
        f = ev.G + np.sum(np.where(pos, q * ev.tilt, 0.0), axis=1)
        E = qa.sum(axis=1)
        H = -qlq.sum(axis=1)
        mag = np.abs(f) + mag.sum(axis=1)
        w = np.ones(len(f)) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
        use = w != 0.0
        totals = np.array([np.sum(w[use] * f[use]), np.sum(w[use] * E[use]),
                           np.sum(w[use] * H[use]), np.sum(w[use] * mag[use])])
        return log_q, q, f, totals

    def report(self) -> Optional[dict]:
        """J, loglik, kl, violation (E_q[phi] - b), max_violation, duality_gap, lambda."""
        return None if self._state is None else dict(self._state)

    def bound_tolerance(self, before: Optional[dict], after: Optional[dict]) -> float:
        """max(gap_{t+1}, 0) + sum_j |lambda_{t+1, j}| viol_j(q_t) (module docstring)."""
        if before is None or after is None or not len(after["lambda"]):
            return 0.0
        v = before["violation"]
        pos = np.where(self._resolved.equality, np.abs(v), np.maximum(v, 0.0))
        with np.errstate(over="ignore", invalid="ignore"):
            term = np.where(pos > 0, np.abs(after["lambda"]) * pos, 0.0)
        return max(after["duality_gap"], 0.0) + float(np.sum(term))

    def constrained_posterior(self) -> np.ndarray:
        """q of every row at the last prepared pass, shape (n_samples, n_components)."""
        if self._lam is None:
            raise ValueError("no pass has been prepared yet")
        return self._project(self._a, self._lam, 0, self._a.shape[0]).q

    # --- set-up and feasibility --------------------------------------------------------------
    def _setup(self, n: int, K: int, w: np.ndarray) -> None:
        R = self.constraints.resolve(n, K, float(np.sum(w)))
        self._resolved = R
        m = R.n_constraints
        # The solver sees an equivalent, well-scaled problem: phi_ikj shifted by its
        # row minimum over the allowed k (sum_k q_ik = 1 moves b by sum_i w_i min_k
        # phi_ikj, the constraint is the same), then divided by c_j = max_ik of the
        # result, so that lambda c_j is O(log-odds) whatever the units and the offset
        # of phi (the notes' count form); only the spread over k matters to q.
        m1 = 0 if R.phi is None else R.phi.shape[2]
        phi, b = R.phi, R.b.copy()
        if m1:
            allowed = (np.ones((n, K), dtype=bool) if R.allowed is None
                       else R.allowed)[:, :, None]
            row_min = np.where(allowed, phi, np.inf).min(axis=1)          # (n, m1)
            phi = phi - row_min[:, None, :]
            b[:m1] = b[:m1] - w @ row_min
        # scale of each constraint, in the user's units: sum_i w_i max_k |phi_ikj|
        # + |b_j|; the constraint (and the shift above) is known to ~u times it
        scale = _feature_abs_max(R, w) + np.abs(R.b) if m else np.zeros(0)
        # a constraint on nothing (phi = 0, b = 0) is met by every q: scale 1
        self._scale = np.where(scale > 0, scale, 1.0)
        # A feature whose spread over the allowed components moves E_j by less than
        # the rounding floor of the solver (the residual floor of _newton times the
        # scale) is constant to working precision: E_j = sum_i w_i min_k phi_ikj for
        # every q, the constraint is met or infeasible as it stands, and its
        # multiplier stays 0 (a solver chasing it would chase rounding noise).
        self._fixed = np.zeros(m, dtype=bool)
        if m1:
            spread = w @ np.where(allowed, phi, 0.0).max(axis=1)            # (m1,)
            self._fixed[:m1] = spread <= self._floor(n, K) * self._scale[:m1]
            phi = np.where(self._fixed[:m1], 0.0, phi)
        c = np.concatenate([np.abs(phi).max(axis=(0, 1)) if m1 else np.zeros(0),
                            np.abs(R.component_phi).max(axis=0) if m > m1 else np.zeros(0)])
        self._c = np.where(c > 0, c, 1.0)
        self._bounds = [(0.0, 0.0) if fixed else (None, None) if eq else (0.0, None)
                        for eq, fixed in zip(R.equality, self._fixed)]
        self._work = dataclasses.replace(
            R, phi=None if phi is None else phi / self._c[:m1],
            component_phi=None if R.component_phi is None else R.component_phi / self._c[m1:],
            b=b / self._c)
        self._scale_work = self._scale / self._c
        if m:
            _check_feasible(self._work, w, self._scale_work,
                            units=(self._c, R.b - self._work.b * self._c))
        self._lam = None if self._lam is None or self._lam.shape != (m,) else self._lam

    # --- one projection -------------------------------------------------------------------------
    def _tilt(self, lam: np.ndarray, start: int, stop: int, absolute: bool = False):
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

    def _project(self, a: np.ndarray, lam: np.ndarray, start: int, stop: int) -> _Evaluation:
        """q_lambda for rows start..stop of the masked log joint ``a`` (those rows)."""
        R = self._work
        ev = _Evaluation()
        ev.tilt = self._tilt(lam, start, stop)
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

    def _evaluate(self, a, w, lam, hessian=False) -> _Evaluation:
        """U(lambda), its gradient b - E[phi] and (if asked) its Hessian, over all rows."""
        R = self._work
        ev = self._project(a, lam, 0, a.shape[0])
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

    # --- the dual -------------------------------------------------------------------------------
    def _residual(self, lam: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """|projected gradient| per constraint, relative to its scale (0 = KKT holds)."""
        R = self._work
        # an inequality at lambda_j = 0 with b_j - E_j >= 0 (satisfied) is optimal; a
        # constant constraint (self._fixed) is met to rounding or was rejected
        r = np.where(R.equality | (lam > 0), grad, np.minimum(grad, 0.0))
        return np.where(self._fixed, 0.0, np.abs(r) / self._scale_work)

    @staticmethod
    def _floor(n: int, K: int) -> float:
        """Relative residual the dual is solved to: 64 u (K + log2 n).

        The sums behind E_j carry ~ u (K + log2 n) sum_i w_i |q phi| of rounding
        error; 64 times that is where Newton's steps stop paying."""
        return 64 * _U * (K + math.log2(max(n, 2)))

    def _solve(self, a: np.ndarray, w: np.ndarray):
        R = self._work
        m = R.n_constraints
        zero = np.zeros(m)
        n_eval = 1
        if m == 0:
            return zero, self._evaluate(a, w, zero), n_eval
        if not R.equality.any():
            ev0 = self._evaluate(a, w, zero)
            if np.all((ev0.grad >= 0.0) | self._fixed):
                return zero, ev0, n_eval        # the posterior is in Q: lambda* = 0 exactly
        lam0 = zero if self._lam is None else np.where(R.equality, self._lam,
                                                       np.maximum(self._lam, 0.0))
        counter = [0]

        def fun(lam):
            counter[0] += 1
            ev = self._evaluate(a, w, lam)
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
        ev = self._evaluate(a, w, lam, hessian=True)
        res = self._residual(lam, ev.grad).max()
        n_eval = 1
        floor = self._floor(a.shape[0], R.n_components)
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
            ev_t = self._evaluate(a, w, trial, hessian=True)
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


# --- helpers --------------------------------------------------------------------------------------

def _feature_abs_max(R: ResolvedConstraints, w: np.ndarray) -> np.ndarray:
    """sum_i w_i max_k |phi_ikj| for every constraint j."""
    parts = []
    if R.phi is not None:
        parts.append(w @ np.abs(R.phi).max(axis=1))
    if R.component_phi is not None:
        parts.append(np.sum(w) * np.abs(R.component_phi).max(axis=0))
    return np.concatenate(parts)


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
    constraints; notes, section 2). Each constraint alone: its extreme values
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


@hookimpl
def emcore_register_posterior_rules():
    return [PosteriorRuleRecord(
        name="constrained", factory=ConstrainedPosterior,
        description="KL projection of the posterior onto expectation constraints "
                    "(posterior regularization): monotone PR objective J")]

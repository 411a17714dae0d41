"""Posterior regularization: the ``constrained`` posterior rule.

The E-step is the KL projection of the posterior onto the constraint set of an
:class:`emcore.Constraints` (docs/posterior_regularization.md):

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

**The solver** (``_constrained_dual.py``; the rule's ``_setup`` builds its problem).
It works on an equivalent, well-scaled problem: each phi_ikj shifted by its row
minimum over the allowed k (b shifted to match) and divided by c_j = max_ik of the
result (so lambda c_j is O(log-odds), the count form of docs/posterior_regularization.md#count-form,
whatever the units and offset of phi; a feature whose spread cannot move E_j beyond the rounding floor is
constant and keeps lambda_j = 0). L-BFGS-B (scipy.optimize.minimize, bounds [0, inf)
/ (-inf, inf)) warm-started from the previous E-step's lambda, then projected Newton
steps with the exact Hessian, damped (Levenberg-Marquardt) across flat stretches of
U, until the relative projected gradient |b_j - E_j| / scale_j, scale_j = sum_i w_i
max_k |phi_ikj| + |b_j|, reaches 64 u (K + log2 n), the rounding floor of its sums.
If the posterior itself satisfies every constraint (no equalities), lambda = 0
exactly and q is the posterior (computed by the soft rule), so inactive constraints
give plain EM bit for bit. Nearly parallel constraints (features differing by ~1e-9
of their size) make the dual ill-conditioned; the solver may then stop above the
floor, which the reported violations and duality gap show and the chain tolerance
below takes into account.

**Feasibility** (``_constrained_feasibility.py``). Checked once per fit, before the
first projection: each constraint alone against its extreme values over the row
sets, then all together by a linear programme (scipy.optimize.linprog, HiGHS) over
q, rows with identical constraints aggregated, looking for a q of Q in the relative
interior of the row sets, which is when the multipliers are finite (when it has at
most ``_MAX_LP_VARIABLES`` variables; larger ones, general ``phi`` on many distinct
rows, rely on the next safeguard). An empty Q raises a ValueError naming the first
constraint that cannot be met (alone, or together with the ones before it);
constraints that can be met only with some q_ik = 0 (the multiplier would be
infinite) raise a ValueError that says so. A multiplier that still grows without
bound, or a projection that does not reach its constraints, raises a ValueError
naming the constraint.

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
from typing import Callable, Iterator, Optional

import numpy as np

from emcore import Constraints
from emcore.plugin_api import PosteriorRule, PosteriorRuleRecord, hookimpl
# _clip_rows: the row projection, also imported from here by the tests
from emcore.plugins._constrained_dual import (_clip_rows, _DualSolver, _inside,  # noqa: F401
                                              _logsumexp, _rounding_floor, _row_elbo)
from emcore.plugins._constrained_feasibility import _check_feasible, _feature_abs_max
from emcore.plugins.posterior import SoftPosterior

__all__ = ["ConstrainedPosterior"]


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
        self._soft = SoftPosterior()
        self._setup_key = None
        self._lam = None         # the last solution: the next E-step's warm start
        self._state = None

    def __repr__(self) -> str:
        return f"ConstrainedPosterior({self.constraints!r})"

    #: the relative residual the dual is solved to (the solver's rounding floor)
    _floor = staticmethod(_rounding_floor)

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
        lam, ev, n_eval = self._dual.solve(a, w, self._lam)
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
        ev = self._dual.project(a, self._lam, start, stop)
        tilt_mag = self._dual.tilt(np.abs(self._lam), start, stop, absolute=True)
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
        return self._dual.project(self._a, self._lam, 0, self._a.shape[0]).q

    # --- set-up and feasibility --------------------------------------------------------------
    def _setup(self, n: int, K: int, w: np.ndarray) -> None:
        R = self.constraints.resolve(n, K, float(np.sum(w)))
        self._resolved = R
        m = R.n_constraints
        # The solver sees an equivalent, well-scaled problem: phi_ikj shifted by its
        # row minimum over the allowed k (sum_k q_ik = 1 moves b by sum_i w_i min_k
        # phi_ikj, the constraint is the same), then divided by c_j = max_ik of the
        # result, so that lambda c_j is O(log-odds) whatever the units and the offset
        # of phi (the count form, docs/posterior_regularization.md#count-form); only
        # the spread over k matters to q.
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
        self._dual = _DualSolver(self._work, self._fixed, self._scale_work, self._bounds,
                                 self.max_dual_iter, floor=self._floor)
        if m:
            _check_feasible(self._work, w, self._scale_work,
                            units=(self._c, R.b - self._work.b * self._c))
        self._lam = None if self._lam is None or self._lam.shape != (m,) else self._lam

@hookimpl
def emcore_register_posterior_rules():
    return [PosteriorRuleRecord(
        name="constrained", factory=ConstrainedPosterior,
        description="KL projection of the posterior onto expectation constraints "
                    "(posterior regularization): monotone PR objective J")]

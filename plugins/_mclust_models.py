"""mclust's fourteen covariance parametrisations: their M-steps and sizes.

Each component covariance is Sigma_k = lambda_k D_k A_k D_k^T (Banfield & Raftery
1993; Celeux & Govaert 1995): volume lambda_k = |Sigma_k|^(1/d), shape A_k diagonal
with |A_k| = 1 (decreasing entries), orientation D_k orthogonal. A model's name
says, in this order, whether the volume, the shape and the orientation are Equal
or Variable across components ('I': the identity, no shape / orientation).

The M-step of every model maximises the expected complete-data log-likelihood over
the covariances given the weights n_k and the centred scatter matrices W_k:
minimise f = sum_k [n_k log|Sigma_k| + tr(W_k Sigma_k^{-1})] under the constraint.
Nine models have closed forms; VEI, VEE, VEV (alternating exact maximisations over
the volumes and the shared shape / matrix) and EVE, VVE (exact volumes and shapes
given the orientation, and a sweep of exact plane rotations of the shared
orientation given them) iterate. Formulas and the convergence control:
docs/gaussian.md#mclust-models.

With a conjugate prior (``prior_terms``) the M-step minimises the same f with the
counts raised by the prior's powers and the scatters by its scale, so the same
functions give the posterior mode (docs/gaussian.md#mclust-prior).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

__all__ = ["MODELS", "SKLEARN_ALIASES", "REPRESENTATION", "ITERATIVE",
           "INNER_TOL", "INNER_MAX_ITER", "n_covariance_parameters",
           "constrained_covariances", "PRIOR_KIND", "prior_terms"]

MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE",
          "EEV", "VEV", "EVV", "VVV")
#: scikit-learn's four names and the mclust models they are
SKLEARN_ALIASES = {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}
#: how the covariances are stored and run through the E-step kernels:
#: 'spherical' (a multiple of I), 'diagonal' or 'full'
REPRESENTATION = {**{m: "spherical" for m in ("EII", "VII")},
                  **{m: "diagonal" for m in ("EEI", "VEI", "EVI", "VVI")},
                  **{m: "full" for m in ("EEE", "VEE", "EVE", "VVE", "EEV", "VEV",
                                         "EVV", "VVV")}}
#: the models whose M-step iterates (generalized EM steps, docs/gaussian.md)
ITERATIVE = frozenset({"VEI", "VEE", "VEV", "EVE", "VVE"})
#: the inner iterations stop when f decreases by at most INNER_TOL times its scale
#: (n d + sum_k n_k |log|Sigma_k||), a few units of rounding of f, or after
#: INNER_MAX_ITER iterations
INNER_TOL = 1e-14
INNER_MAX_ITER = 5000
#: the kind of conjugate prior each model takes (emcore.priors.GaussianPrior.resolve's
#: covariance_type): an inverse gamma with a number varsigma^2 as scale
#: ('spherical': varsigma^2 / d per variance; 'diag': varsigma^2 per variance) or an
#: inverse Wishart with a matrix scale Lambda ('full', 'tied')
PRIOR_KIND = {**{m: "spherical" for m in ("EII", "VII")},
              **{m: "diag" for m in ("EEI", "VEI", "EVI", "VVI")},
              "EEE": "tied",
              **{m: "full" for m in ("VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")}}


def n_covariance_parameters(model: str, k: int, d: int) -> int:
    """Free parameters of the K covariances (mclust's ``nVarParams``)."""
    vol = 1 if model[0] == "E" else k
    shape = 0 if model[1] == "I" else (d - 1) * (1 if model[1] == "E" else k)
    orient = 0 if model[2] == "I" else d * (d - 1) // 2 * (1 if model[2] == "E" else k)
    if model == "EEE":
        return d * (d + 1) // 2
    return vol + shape + orient


def _geometric_mean(a: np.ndarray) -> np.ndarray:
    """exp(mean(log a)) along the last axis (|diag(a)|^(1/d)), a > 0."""
    return np.exp(np.mean(np.log(a), axis=-1))


def _volumes_of(previous: np.ndarray) -> np.ndarray:
    """lambda_k = |Sigma_k|^(1/d) of previous covariances (k, d, d)."""
    L = np.linalg.cholesky(previous)
    return np.exp(2.0 * np.mean(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1))


def _diag_objective(n, w, var):
    """f for diagonal covariances var (k, d) given per-axis scatters w (k, d)."""
    return float(np.sum(n * np.sum(np.log(var), axis=1) + np.sum(w / var, axis=1)))


def _stopped(before: float, after: float, scale: float) -> bool:
    return before - after <= INNER_TOL * scale


def _scale(n, var):
    return float(np.sum(n) * var.shape[1] + np.sum(n * np.abs(np.sum(np.log(var), axis=1))))


def _vei(n, w, lam):
    """Sigma_k = lambda_k diag(a), |diag(a)| = 1, on per-axis scatters w (k, d),
    from volumes ``lam``: alternate the exact a given lambda and lambda given a."""
    d = w.shape[1]
    f = np.inf
    for _ in range(INNER_MAX_ITER):
        s = np.sum(w / lam[:, None], axis=0)
        a = s / _geometric_mean(s)
        lam = np.sum(w / a, axis=1) / (d * n)
        var = lam[:, None] * a
        f_new = _diag_objective(n, w, var)
        if _stopped(f, f_new, _scale(n, var)):
            return var
        f = f_new
    return var


def _orientation_sweep(B, D, M):
    """One Jacobi sweep for the shared orientation D minimising
    sum_k tr(W_k D M_k D^T), M_k = diag(m_k) > 0 (over orthogonal D), given
    B_k = D^T W_k D: for each pair of columns (i, j) the exact minimiser over the
    plane rotation d_i <- c d_i + s d_j, d_j <- -s d_i + c d_j. With a_k, b_k, c_k
    the entries (ii), (jj), (ij) of B_k, the objective is, up to a constant,
    cos(2t) P + sin(2t) R with P = sum_k (m_ki - m_kj)(a_k - b_k) / 2 and
    R = sum_k (m_ki - m_kj) c_k, minimal at (cos 2t, sin 2t) = -(P, R) / |(P, R)|.
    Each rotation is an exact minimisation over one coordinate of the orthogonal
    group, so the objective never increases (Flury & Gautschi 1986 solve the same
    problem by pairwise rotations). Returns D after the sweep."""
    k, d = B.shape[0], D.shape[0]
    rounds, (pos_i, pos_j) = _round_robin(d)
    dM = M[:, pos_i] - M[:, pos_j]               # (k, pairs of all rounds)
    eye = np.eye(d)
    for r, (I, J, II, JJ, IJ, put) in enumerate(rounds):
        # rotations of disjoint column pairs commute and each reads only its own
        # two columns: one round of the tournament at once, as one orthogonal
        # G (a 2 x 2 rotation per pair): D <- D G, B_k <- G^T B_k G
        flat = B.reshape(k, d * d)
        dm = dM[:, r * I.shape[0]:(r + 1) * I.shape[0]]
        P = 0.5 * np.einsum("kp,kp->p", dm, flat[:, II] - flat[:, JJ])
        R = np.einsum("kp,kp->p", dm, flat[:, IJ])
        still = (P == 0.0) & (R == 0.0)          # atan2(-0, -0) would swap the pair
        theta = np.where(still, 0.0, 0.5 * np.arctan2(-R, -P))
        cs, sn = np.cos(theta), np.sin(theta)
        G = eye.copy()
        G.flat[put] = np.concatenate([cs, cs, sn, -sn])
        D = D @ G
        B = G.T @ B @ G
    return D


@functools.lru_cache(maxsize=None)
def _round_robin(d: int) -> tuple:
    """The rounds of a round-robin tournament on d columns (the circle method):
    d - 1 rounds (d for odd d) of disjoint pairs, every pair once. Each round:
    (I, J, flat indices of (i, i), (j, j), (i, j) in a d x d matrix, flat
    indices of (i, i), (j, j), (j, i), (i, j)); and the (i, j) of all rounds in
    order."""
    players = list(range(d)) + ([-1] if d % 2 else [])
    m = len(players)
    rounds = []
    for _ in range(m - 1):
        pairs = [(players[i], players[m - 1 - i]) for i in range(m // 2)]
        pairs = [(min(p), max(p)) for p in pairs if -1 not in p]
        I = np.array([p[0] for p in pairs], dtype=np.intp)
        J = np.array([p[1] for p in pairs], dtype=np.intp)
        rounds.append((I, J, I * d + I, J * d + J, I * d + J,
                       np.concatenate([I * d + I, J * d + J, J * d + I, I * d + J])))
        players = [players[0], players[-1]] + players[1:-1]
    every = (np.concatenate([r[0] for r in rounds]), np.concatenate([r[1] for r in rounds]))
    return tuple(rounds), every


def _shared_orientation(n, W, D, equal_volume: bool):
    """EVE (equal_volume) or VVE: Sigma_k = D diag(v_k) D^T with a shared D; v_k
    exact given D (EVI's / VVI's closed forms on the rotated scatters), D by one
    sweep of exact plane rotations given v_k, alternately from D."""
    f = np.inf
    for _ in range(INNER_MAX_ITER):
        B = D.T @ W @ D                          # D^T W_k D, afresh from D
        e = np.einsum("kii->ki", B)
        var = _evi(n, e) if equal_volume else e / n[:, None]
        f_new = _diag_objective(n, e, var)
        if _stopped(f, f_new, _scale(n, var)):
            break
        f = f_new
        D = _orientation_sweep(B, D, 1.0 / var)
    return np.einsum("ij,kj,lj->kil", D, var, D)


def _evi(n, w):
    """Sigma_k = lambda diag(a_k), |diag(a_k)| = 1: a_k = w_k / g_k and lambda =
    sum_k g_k / n, g_k = |diag(w_k)|^(1/d) (w: per-axis scatters (k, d))."""
    g = _geometric_mean(w)
    return (np.sum(g) / np.sum(n)) * (w / g[:, None])


def _eigh_decreasing(W):
    """Eigenvalues (k, d) in decreasing order and eigenvectors (k, d, d) of W_k."""
    omega, V = np.linalg.eigh(W)
    return omega[:, ::-1], V[:, :, ::-1]


def _compose(V, var):
    """V_k diag(var_k) V_k^T (k, d, d)."""
    return np.einsum("kij,kj,klj->kil", V, var, V)


def _orientation_of(previous: np.ndarray) -> np.ndarray:
    """A shared orientation D of previous covariances Sigma_k = D diag(v_k) D^T: the
    eigenvectors of sum_k c_k Sigma_k / tr(Sigma_k) with distinct weights c_k = k + 1
    (distinct eigenvalues in all but degenerate cases, so D diagonalises each)."""
    k = previous.shape[0]
    c = (np.arange(k) + 1.0) / np.trace(previous, axis1=1, axis2=2)
    return np.linalg.eigh(np.einsum("k,kij->ij", c, previous))[1]


def constrained_covariances(model: str, n: np.ndarray, W: np.ndarray,
                            previous: Optional[np.ndarray] = None) -> np.ndarray:
    """The covariances (k, d, d) of ``model`` minimising
    f = sum_k [n_k log|Sigma_k| + tr(W_k Sigma_k^{-1})].

    Parameters
    ----------
    model : one of MODELS
    n : (k,) the components' weights, all > 0
    W : (k, d, d) centred scatters, or their diagonals (k, d) for the spherical and
        diagonal models
    previous : (k, d, d), optional
        The current covariances: an iterative model starts from them, so each
        of its inner steps (an exact block maximisation or an MM step) keeps f at
        or below its value there (a generalized EM step).
    """
    k = n.shape[0]
    rep = REPRESENTATION[model]
    if rep != "full":
        w = W if W.ndim == 2 else np.einsum("kjj->kj", W)
        d = w.shape[1]
        if model == "EII":
            var = np.full((k, d), np.sum(w) / (d * np.sum(n)))
        elif model == "VII":
            var = np.repeat((np.sum(w, axis=1) / (d * n))[:, None], d, axis=1)
        elif model == "EEI":
            var = np.broadcast_to(np.sum(w, axis=0) / np.sum(n), (k, d))
        elif model == "VVI":
            var = w / n[:, None]
        elif model == "EVI":
            var = _evi(n, w)
        else:                                                    # VEI
            lam = (_volumes_of(previous) if previous is not None
                   else np.sum(w, axis=1) / (d * n))
            var = _vei(n, w, lam)
        return var[:, :, None] * np.eye(d)
    d = W.shape[1]
    if model == "EEE":
        return np.broadcast_to(np.sum(W, axis=0) / np.sum(n), (k, d, d)).copy()
    if model == "VVV":
        return W / n[:, None, None]
    if model == "EVV":
        # Sigma_k = lambda C_k, |C_k| = 1: C_k = W_k / |W_k|^(1/d), lambda = sum_k |W_k|^(1/d) / n
        g = _volumes_of(W)
        return (np.sum(g) / np.sum(n)) * W / g[:, None, None]
    if model == "VEE":
        lam = (_volumes_of(previous) if previous is not None
               else np.trace(W, axis1=1, axis2=2) / (d * n))
        f = np.inf
        for _ in range(INNER_MAX_ITER):
            S = np.sum(W / lam[:, None, None], axis=0)
            C = S / _volumes_of(S[None])[0]
            Lc = np.linalg.cholesky(C)
            # tr(W_k C^{-1}) = ||Lc^{-1} W_k^{1/2}||^2 through a solve per component
            Y = np.linalg.solve(Lc[None], W)
            tr = np.einsum("kii->k", np.linalg.solve(Lc[None], np.swapaxes(Y, 1, 2)))
            lam = tr / (d * n)
            f_new = float(np.sum(n * d * np.log(lam) + tr / lam))
            if _stopped(f, f_new, float(np.sum(n) * d + np.sum(n * d * np.abs(np.log(lam))))):
                break
            f = f_new
        return lam[:, None, None] * C
    if model in ("EVE", "VVE"):
        D = (_orientation_of(previous) if previous is not None
             else np.linalg.eigh(np.sum(W, axis=0))[1])
        return _shared_orientation(n, W, D, equal_volume=model == "EVE")
    # EEV, VEV: the orientations are the eigenvectors of W_k (for any shape with
    # decreasing entries), the shape and volumes as EEI / VEI on the eigenvalues
    omega, V = _eigh_decreasing(W)
    omega = np.maximum(omega, 0.0)      # rounding of a singular W_k: >= 0
    if model == "EEV":
        var = np.broadcast_to(np.sum(omega, axis=0) / np.sum(n), (k, d))
    else:                                                        # VEV
        lam = (_volumes_of(previous) if previous is not None
               else np.sum(omega, axis=1) / (d * n))
        var = _vei(n, omega, lam)
    return _compose(V, var)


def prior_terms(model: str, k: int, d: int, dof: float, mean_prior: bool) -> tuple:
    """How the conjugate prior enters the M-step of ``model`` (not VVV, EEE, VVI, VII:
    the Gaussian family's four have their own closed forms, docs/gaussian.md#map).

    Returns (c, share): with a prior the M-step minimises, over the model's
    constraint set,

        f = sum_k [(n_k + c_k) log|Sigma_k| + tr((W_k + share Lambda) Sigma_k^-1)]

    with W_k the scatters about the posterior-mode means (the shrinkage term
    s_k delta_k delta_k^T included) and Lambda the prior's scale matrix (varsigma^2 / d I
    for EII, varsigma^2 I for the diagonal models). That is the exact maximiser of
    Q + log p(theta) with

        log p(theta) = -1/2 sum_k [c_k log|Sigma_k| + share tr(Lambda Sigma_k^-1)
                                   + kappa (mu_k - mu_0)^T Sigma_k^-1 (mu_k - mu_0)]

    (up to a constant), the penalty ``GaussianFamily.log_prior`` computes. For EII,
    EEI, VEI, EVI, EEV and VEV the powers are those of mclust 6.0.0's ``me()`` with
    ``priorControl()`` (docs/gaussian.md#mclust-prior says where mclust differs);
    for VEE, EVE, VVE and EVV, which mclust gives no prior, it is VVV's inverse
    Wishart and normal prior on each component (c_k = nu + d + 1, + 1 with a mean
    prior). A total spread over the k components (c_k = total / k) is for the models
    whose |Sigma_k| is one number (equal volumes), where only the total enters.
    """
    m = 1.0 if mean_prior else 0.0
    if model == "EII":                    # sigma^2: nu + 2 (+ k d with a mean prior) powers
        return np.full(k, (dof + 2.0 + m * k * d) / (d * k)), 1.0 / k
    if model == "EEI":                    # one diagonal: nu + 1 (+ 1), the scale once
        return np.full(k, (dof + 1.0 + m) / k), 1.0 / k
    if model == "VEI":                    # (nu + 2 (+ 1)) / d per component
        return np.full(k, (dof + 2.0 + m) / d), 1.0
    if model == "EVI":                    # the shared volume: nu + 1 (+ 1) in all
        return np.full(k, (dof + 1.0 + m) / k), 1.0
    if model == "EEV":                    # the shared volume and shape: nu + d + 1 (+ 1)
        return np.full(k, (dof + d + 1.0 + m) / k), 1.0
    if model == "VEV":                    # mclust's VEV: no power, the scale per component
        return np.zeros(k), 1.0
    if model in ("VEE", "EVE", "VVE", "EVV"):
        return np.full(k, dof + d + 1.0 + m), 1.0
    raise ValueError(f"prior_terms has no rule for covariance_type={model!r}")

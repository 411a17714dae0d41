"""Random valid parameters of a family, from a numpy Generator.

A family declares how to draw its parameters with ``Family.random_params``. The
Gaussian family does not (its parameters are built from means and covariances):
for any family with ``params_from_covariances(means, covariances)`` this module
draws means and covariances of the family's ``covariance_type`` itself.
"""

from __future__ import annotations

import numpy as np

from emcore.plugin_api import Family

__all__ = ["can_draw_params", "draw_params", "random_spd_matrix"]


def can_draw_params(family: Family) -> bool:
    """True if :func:`draw_params` knows how to draw parameters of ``family``."""
    return (type(family).random_params is not Family.random_params
            or callable(getattr(family, "params_from_covariances", None)))


def draw_params(family: Family, rng: np.random.Generator, *,
                nearly_degenerate: bool = False) -> dict:
    """Random valid parameters of ``family`` (see ``Family.random_params``)."""
    if type(family).random_params is not Family.random_params:
        return family.random_params(rng, nearly_degenerate=nearly_degenerate)
    if callable(getattr(family, "params_from_covariances", None)):
        return _gaussian_params(family, rng, nearly_degenerate)
    raise NotImplementedError(
        f"{type(family).__name__} implements neither random_params() nor "
        "params_from_covariances(); pass its parameters explicitly")


def random_spd_matrix(rng: np.random.Generator, n_features: int,
                      log10_condition: float, scale: float) -> np.ndarray:
    """A symmetric positive definite matrix with the given condition number.

    A random orthogonal basis (QR of a Gaussian matrix) and eigenvalues
    ``scale * 10**e`` with e spread over [0, log10_condition], both ends included
    (so the condition number is exactly 10**log10_condition for d > 1).
    """
    d = n_features
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    e = rng.uniform(0.0, log10_condition, d)
    if d > 1:
        e[0], e[1] = 0.0, log10_condition
    S = scale * (Q * 10.0 ** e) @ Q.T
    return 0.5 * (S + S.T)


def _gaussian_params(family, rng: np.random.Generator, nearly_degenerate: bool) -> dict:
    # Well-conditioned: condition numbers <= 100, variances 0.1-10 around means in
    # [-10, 10]. Nearly degenerate: condition numbers 1e6-1e9 (full, tied, diag), or
    # variances ~1e-8 times the squared offset of the means (spherical, where the
    # condition number is always 1); far inside the family's limit 1 / (d eps).
    k, d = family.n_components, family.n_features
    kind = getattr(family, "covariance_type", "full")
    means = rng.uniform(-10.0, 10.0, (k, d))

    def matrix():
        scale = 10.0 ** rng.uniform(-1.0, 1.0)
        cond = rng.uniform(6.0, 9.0) if nearly_degenerate else rng.uniform(0.0, 2.0)
        if kind == "diag":
            e = rng.uniform(0.0, cond, d)
            if d > 1:
                e[:2] = 0.0, cond
                rng.shuffle(e)
            return np.diag(scale * 10.0 ** e)
        return random_spd_matrix(rng, d, cond, scale)

    if kind == "spherical":
        var = 10.0 ** (rng.uniform(-9.0, -7.0, k) if nearly_degenerate
                       else rng.uniform(-1.0, 1.0, k))
        covariances = var[:, None, None] * np.eye(d)
    elif kind == "tied":
        covariances = np.broadcast_to(matrix(), (k, d, d)).copy()
    else:
        covariances = np.stack([matrix() for _ in range(k)])
    return family.params_from_covariances(means, covariances)

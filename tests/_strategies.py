"""Hypothesis strategies for the suite (after notes/em_variants_and_testing.md, 10)."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import log_softmax

FIN = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def spd_matrices(draw, d, log10_cond_max=3.0, log10_scale=(-1.0, 1.0)):
    """Symmetric positive definite d x d matrices with cond <= 10**log10_cond_max."""
    A = draw(arrays(np.float64, (d, d), elements=st.floats(-1, 1, **FIN)))
    Q, R = np.linalg.qr(A + 3.0 * np.eye(d))
    Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    e = draw(arrays(np.float64, (d,), elements=st.floats(0, log10_cond_max, **FIN)))
    s = 10.0 ** draw(st.floats(*log10_scale, **FIN))
    S = s * (Q * 10.0 ** e) @ Q.T
    return 0.5 * (S + S.T)


@st.composite
def gaussian_mixtures(draw, max_k=4, max_d=4, min_k=1, separation=10.0):
    """(weights, means, covariances) of a Gaussian mixture."""
    k = draw(st.integers(min_k, max_k))
    d = draw(st.integers(1, max_d))
    logits = draw(arrays(np.float64, (k,), elements=st.floats(-2, 2, **FIN)))
    means = draw(arrays(np.float64, (k, d),
                        elements=st.floats(-separation, separation, **FIN)))
    covs = np.stack([draw(spd_matrices(d)) for _ in range(k)])
    return np.exp(log_softmax(logits)), means, covs


def sample_mixture(mixture, n, seed):
    w, means, covs = mixture
    rng = np.random.default_rng(seed)
    k, d = means.shape
    z = rng.choice(k, size=n, p=w)
    L = np.linalg.cholesky(covs)
    X = means[z] + np.einsum("nij,nj->ni", L[z], rng.standard_normal((n, d)))
    return np.ascontiguousarray(X)


def log_q(n, k):
    """Arbitrary q: the log-softmax of bounded logits, row by row."""
    return arrays(np.float64, (n, k), elements=st.floats(-30, 30, **FIN)).map(
        lambda L: log_softmax(L, axis=1))


def params_of(family, mixture):
    w, means, covs = mixture
    return w, family.params_from_covariances(means, covs)

"""``emcore.BayesianGaussianMixture``: variational Bayes for the Gaussian mixture.

scikit-learn's BayesianGaussianMixture (same parameters, fitted attributes and
update equations) on emcore's compiled passes, with the full evidence lower
bound (all constants) recorded every iteration and its chain checked.
Mathematics: docs/variational.md.

The variational posterior q(z) q(pi) prod_k q(mu_k, Lambda_k) has, per component,
q(mu_k | Lambda_k) = N(m_k, (beta_k Lambda_k)^-1) and q(Lambda_k) = Wishart(W_k, nu_k)
(W_k restricted to the covariance type: diagonal, a multiple of I, or one W and
nu for all components, 'tied'); q(pi) is a Dirichlet ('dirichlet_distribution')
or a product of Beta sticks ('dirichlet_process', truncated at n_components).
The E-step's log rho_ik = E[log pi_k] + E[log N(x_i | mu_k, Lambda_k^-1)] is a
Gaussian log-density with precision nu_k W_k plus a per-component constant
(docs/variational.md#e-step): the Gaussian family's compiled kernel computes it
over chunks in threads, with the constants as log mixture weights.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from scipy.special import betaln, digamma, gammaln, multigammaln

from emcore import _validation as v
from emcore._estimator import BaseEstimator
from emcore._init import (CountedPartition, check_resp_conflicts, check_resp_init,
                          starting_partition)
from emcore._input import check_input
from emcore._logging import progress_bar, progress_start
from emcore._threads import single_threaded_blas
from emcore._mixture import INIT_PARAMS
from emcore.engine import (Iteration, chain_tolerance, chunk_rows_for, data_pass,
                           equality_tolerance, stats_from_assignments, summation_depth,
                           _warn_if_the_chain_fails)
from emcore.exceptions import ConvergenceWarning, _sklearn_compatible
from emcore.gaussian_mixture import _compact, _expand
from emcore.plugin_api import UNIT_ROUNDOFF
from emcore.registry import get_registry

if TYPE_CHECKING:                    # what summary() returns
    from emcore.summary import VBSummary

__all__ = ["BayesianGaussianMixture", "EFFECTIVE_WEIGHT_THRESHOLD"]

_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
_LOG_2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)

#: a component counts in ``n_effective_components_`` when its weight (the
#: expected mixture weight under q(pi)) is at least this: it holds at least 1% of
#: the data's expected mass (docs/variational.md#effective-components)
EFFECTIVE_WEIGHT_THRESHOLD = 0.01


@dataclass(frozen=True)
class _Prior:
    """The hyperparameters, filled in for the data (scikit-learn's defaults)."""
    kind: str                 #: 'dirichlet_process' or 'dirichlet_distribution'
    alpha0: float             #: weight_concentration_prior_
    beta0: float              #: mean_precision_prior_
    m0: np.ndarray            #: mean_prior_ (d,)
    nu0: float                #: degrees_of_freedom_prior_
    cov0: np.ndarray          #: W_0^-1 as a (d, d) matrix (covariance_prior_ expanded)
    cov0_compact: Any         #: covariance_prior_ in scikit-learn's shape for the type


@dataclass(frozen=True)
class _State:
    """q(theta): the variational parameters (docs/variational.md#m-step)."""
    concentration: tuple      #: (alpha,) Dirichlet, or (a, b) the Beta sticks
    beta: np.ndarray          #: (K,) mean precisions
    nu: np.ndarray            #: (K,) degrees of freedom (all equal for 'tied')
    #: the Gaussian family's parameters: means m_k, covariances (nu_k W_k)^-1 (K, d, d)
    #: and the Cholesky factor U_k of the precision nu_k W_k = E[Lambda_k]
    params: dict


def _psi_d(nu: np.ndarray, d: int) -> np.ndarray:
    """sum_{j=0}^{d-1} digamma((nu - j) / 2): E[log |Lambda|] - d log 2 - log |W|."""
    return np.sum(digamma(0.5 * (np.asarray(nu)[:, None] - np.arange(d))), axis=1)


def _log_gamma_d(nu: np.ndarray, d: int) -> np.ndarray:
    """log Gamma_d(nu / 2), the multivariate log-gamma, for each entry of nu."""
    return (0.25 * d * (d - 1) * math.log(math.pi)
            + np.sum(gammaln(0.5 * (np.asarray(nu)[:, None] - np.arange(d))), axis=1))


def _expected_log_weights(state: _State, kind: str) -> np.ndarray:
    """E[log pi_k] under q(pi) (docs/variational.md#weights)."""
    if kind == "dirichlet_process":
        a, b = state.concentration
        dsum = digamma(a + b)
        tail = np.concatenate([[0.0], np.cumsum(digamma(b) - dsum)[:-1]])
        return digamma(a) - dsum + tail
    (alpha,) = state.concentration
    return digamma(alpha) - digamma(np.sum(alpha))


def _log_weights(state: _State, prior: _Prior, d: int) -> tuple:
    """(c_k, magnitude): log rho_ik = log N(x_i | m_k, (nu_k W_k)^-1) + c_k with
    c_k = E[log pi_k] + (psi_d(nu_k) + d log 2 - d log nu_k) / 2 - d / (2 beta_k)
    (docs/variational.md#e-step); the magnitude bounds the terms' rounding."""
    elog_pi = _expected_log_weights(state, prior.kind)
    psi = _psi_d(state.nu, d)
    terms = (elog_pi, 0.5 * psi, np.full(psi.shape, 0.5 * d * _LOG_2), -0.5 * d * np.log(state.nu),
             -0.5 * d / state.beta)
    c = sum(terms)
    return c, np.sum([np.abs(t) for t in terms], axis=0)


def _weights_kl(state: _State, prior: _Prior, k: int) -> tuple:
    """(KL(q(pi) || p(pi)), magnitude) (docs/variational.md#kl)."""
    a0 = prior.alpha0
    if prior.kind == "dirichlet_process":
        a, b = state.concentration                 # prior Beta(1, alpha0) per stick
        ab = a + b
        terms = [np.full(k, betaln(1.0, a0)), -betaln(a, b), (a - 1.0) * digamma(a),
                 (b - a0) * digamma(b), (1.0 + a0 - ab) * digamma(ab)]
    else:
        (alpha,) = state.concentration
        s = float(np.sum(alpha))
        terms = [np.array([gammaln(s), -gammaln(k * a0)]), -gammaln(alpha),
                 np.full(k, gammaln(a0)), (alpha - a0) * (digamma(alpha) - digamma(s))]
    terms = np.concatenate([np.ravel(t) for t in terms])
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def _gauss_wishart_kl(state: _State, prior: _Prior, d: int) -> tuple:
    """(sum_k KL(q(mu_k, Lambda_k) || p(mu_k, Lambda_k)), magnitude): the normal-
    Wishart KL with q(Lambda_k) = Wishart(W_k, nu_k), p = Wishart(W_0, nu_0)
    (docs/variational.md#kl). With P_k = nu_k W_k = U_k U_k^T (the family's
    precision) every term is in P_k, so nothing forms W_k^-1."""
    beta, nu, b0, nu0 = state.beta, state.nu, prior.beta0, prior.nu0
    U = state.params["precisions_cholesky"]
    log_det_p = 2.0 * np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
    log_det_w = log_det_p - d * np.log(nu)
    log_det_w0 = -np.linalg.slogdet(prior.cov0)[1]
    y = np.einsum("kj,kjl->kl", state.params["means"] - prior.m0, U)
    quad = b0 * np.sum(y * y, axis=1)                 # beta0 nu (m - m0)^T W (m - m0)
    trace = np.sum((prior.cov0 @ U) * U, axis=(1, 2))  # nu tr(W0^-1 W)
    terms = [0.5 * d * b0 / beta, np.full(beta.shape, -0.5 * d),
             0.5 * d * (np.log(beta) - math.log(b0)), 0.5 * quad,
             np.full(beta.shape, 0.5 * nu0 * log_det_w0), -0.5 * nu0 * log_det_w,
             0.5 * (nu - nu0) * _psi_d(nu, d),
             np.full(beta.shape, multigammaln(0.5 * nu0, d)), -_log_gamma_d(nu, d),
             0.5 * trace, -0.5 * nu * d]
    terms = np.concatenate(terms)
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def _kl(state: _State, prior: _Prior, k: int, d: int) -> tuple:
    """(KL(q(theta) || p(theta)), magnitude)."""
    w, mw = _weights_kl(state, prior, k)
    g, mg = _gauss_wishart_kl(state, prior, d)
    return w + g, mw + mg


def _m_step(stats, family, prior: _Prior, covariance_type: str, reg_covar: float) -> _State:
    """q(theta) from the statistics of q(z) (docs/variational.md#m-step): scikit-
    learn's updates with the exact counts N_k.

    reg_covar adds N_k reg_covar I to each scatter, as scikit-learn does: the
    exact maximiser of the ELBO minus reg_covar / 2 sum_k N_k E[tr Lambda_k]
    (docs/variational.md#reg-covar).
    """
    k, d = family.n_components, family.n_features
    n_k = np.where(stats.weight > 0, stats.weight, 0.0)
    xbar, scatter = stats.centred()
    if scatter.ndim == 3 and covariance_type in ("diag", "spherical"):
        scatter = np.einsum("kjj->kj", scatter)
    b0, m0, nu0 = prior.beta0, prior.m0, prior.nu0
    beta = b0 + n_k
    means = (b0 * m0 + n_k[:, None] * xbar) / beta[:, None]
    # N_k beta0 / beta_k (xbar_k - m0)(...)^T: 0 for N_k = 0 whatever xbar_k holds
    shrink = n_k * b0 / beta
    delta = np.where(n_k[:, None] > 0, xbar - m0, 0.0)
    scatter = np.where((n_k > 0).reshape((-1,) + (1,) * (scatter.ndim - 1)), scatter, 0.0)
    eye = np.eye(d)
    if covariance_type == "full":
        nu = nu0 + n_k
        A = (prior.cov0 + scatter + (n_k * reg_covar)[:, None, None] * eye
             + shrink[:, None, None] * delta[:, :, None] * delta[:, None, :])
        cov = A / nu[:, None, None]
    elif covariance_type == "tied":
        n = float(np.sum(n_k))
        nu = np.full(k, nu0 + n / k)
        A = prior.cov0 + (np.sum(scatter, axis=0) + n * reg_covar * eye
                          + np.einsum("k,kj,kl->jl", shrink, delta, delta)) / k
        cov = np.broadcast_to(A / nu[0], (k, d, d)).copy()
    elif covariance_type == "diag":
        nu = nu0 + n_k
        A = (np.diagonal(prior.cov0) + scatter + (n_k * reg_covar)[:, None]
             + shrink[:, None] * delta * delta)
        cov = (A / nu[:, None])[:, :, None] * eye
    else:
        nu = nu0 + n_k
        a = (prior.cov0[0, 0] + np.mean(scatter, axis=1) + n_k * reg_covar
             + shrink * np.mean(delta * delta, axis=1))
        cov = (a / nu)[:, None, None] * eye
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    if prior.kind == "dirichlet_process":
        tail = np.concatenate([np.cumsum(n_k[::-1])[-2::-1], [0.0]])
        concentration = (1.0 + n_k, prior.alpha0 + tail)
    else:
        concentration = (prior.alpha0 + n_k,)
    params = family.params_from_covariances(means, cov, n_k=n_k)
    return _State(concentration=concentration, beta=beta, nu=nu, params=params)


def _mixture_weights(state: _State, kind: str) -> np.ndarray:
    """E[pi] under q(pi), normalised (scikit-learn's ``weights_``)."""
    if kind == "dirichlet_process":
        a, b = state.concentration
        s = a + b
        w = a / s * np.concatenate([[1.0], np.cumprod(b / s)[:-1]])
    else:
        w = state.concentration[0]
    return w / np.sum(w)


def _mean_rounding(state: _State, prior: _Prior) -> float:
    """The ELBO lost to the rounding of m_k = (beta0 m0 + N_k xbar_k) / beta_k: off
    the maximiser by |delta| <= 6 u (|m_k| + |m0|) (two products, a sum, a
    division, the statistics' mean and residual), curvature beta_k P_k, so
    1/2 beta_k (6u)^2 ||a_k||^2 s_max(U_k)^2 (the second-order term of
    docs/elbo_chain.md#check-b, as the Gaussian family's MAP M-step)."""
    U = state.params["precisions_cholesky"]
    s_max = np.linalg.svd(U, compute_uv=False)[:, 0]
    a2 = np.sum((np.abs(state.params["means"]) + np.abs(prior.m0)) ** 2, axis=1)
    return float(0.5 * np.sum(state.beta * (6.0 * UNIT_ROUNDOFF) ** 2 * a2 * s_max ** 2))


@dataclass(frozen=True)
class _Pass:
    """A pass at q(theta): q(z)'s statistics and the ELBO with that q(z)."""
    stats: Any
    resp_sum: np.ndarray
    value: float              #: sum_i log sum_k rho_ik - KL: the ELBO at the optimal q(z)
    elbo: float               #: E_q[log rho] + H(q) - KL, the same ELBO summed by terms
    entropy: float            #: H(q(z))
    magnitude: float          #: rounding magnitude of the pass (with the shift)
    kl_magnitude: float
    c_magnitude: np.ndarray   #: per-component magnitude of c_k


def _vb_pass(X, family, rule, state: _State, prior: _Prior, *, n_jobs, with_stats=True,
             out_log_resp=None, out_row_value=None, chunk_rows=None) -> _Pass:
    """One E-step over X by the compiled Gaussian pass: the Gaussian log-density at
    precision nu_k W_k, plus c_k as the log weights (shifted by max c, given as
    weights exp(c - max c) <= 1, then added back: docs/variational.md#e-step)."""
    k, d = family.n_components, family.n_features
    c, c_mag = _log_weights(state, prior, d)
    shift = float(np.max(c))
    res = data_pass(X, family, rule, np.exp(c - shift), state.params, n_jobs=n_jobs,
                    with_stats=with_stats, out_log_resp=out_log_resp,
                    out_row_value=out_row_value, chunk_rows=chunk_rows)
    n = float(np.sum(res.resp_sum))
    if out_row_value is not None:
        out_row_value += shift
    if not with_stats:                 # scoring: the rows' values are all it needs
        return _Pass(None, res.resp_sum, np.nan, np.nan, res.entropy, res.magnitude,
                     np.nan, c_mag)
    kl, kl_mag = _kl(state, prior, k, d)
    return _Pass(stats=res.stats, resp_sum=res.resp_sum, value=res.value + shift * n - kl,
                 elbo=res.expected_log_joint + shift * n + res.entropy - kl,
                 entropy=res.entropy,
                 # |a_ik| <= |a_ik - shift| + |shift| in the sums behind M, and l_i too
                 magnitude=res.magnitude + 2.0 * abs(shift) * n,
                 kl_magnitude=kl_mag, c_magnitude=c_mag)


def _sklearn_offset(prior: _Prior, n: float, k: int, d: int) -> float:
    """The constant scikit-learn leaves out of its lower bound: ours (with
    reg_covar's penalty, as ``lower_bounds_``) = scikit-learn's + this
    (docs/variational.md#sklearn-offset)."""
    log_det0 = np.linalg.slogdet(prior.cov0)[1]
    wishart0 = (0.5 * prior.nu0 * log_det0 - 0.5 * prior.nu0 * d * _LOG_2
                - float(np.sum(gammaln(0.5 * (prior.nu0 - np.arange(d))))))
    weights = (k * math.log(prior.alpha0) if prior.kind == "dirichlet_process"
               else float(gammaln(k * prior.alpha0) - k * gammaln(prior.alpha0)))
    return (-0.5 * n * d * _LOG_2PI + 0.5 * k * d * math.log(prior.beta0) + k * wishart0
            + weights)


class BayesianGaussianMixture(BaseEstimator):
    """Variational Bayesian Gaussian mixture, with the full lower bound recorded
    and its chain checked every iteration (docs/variational.md).

    Same parameters, update equations and fitted attributes as scikit-learn's
    ``sklearn.mixture.BayesianGaussianMixture``, plus ``n_jobs``, ``history_``,
    ``stop_reason_`` and ``n_effective_components_``. Each iteration is one pass
    over the data through the Gaussian family's compiled kernel (chunks in
    threads, without the GIL) and the closed-form update of q(theta).

    Parameters
    ----------
    n_components : int, default 1
        Number of components (the truncation level for 'dirichlet_process'):
        an upper bound; the fit may leave some nearly empty.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default 'full'
        The form of W_k in q(Lambda_k) = Wishart(W_k, nu_k): full, one W and nu
        for all components ('tied'), diagonal, or a multiple of I.
    tol : float, default 1e-6
        Stop when the relative change of ``lower_bounds_`` between two
        iterations is below ``tol`` (0: run max_iter iterations). (scikit-learn
        stops on the absolute change, default 1e-3.)
    reg_covar : float, default 1e-6
        Added, times N_k, to each component's scatter (scikit-learn's rule): the
        M-step then maximises the ELBO minus reg_covar/2 sum_k N_k E[tr Lambda_k],
        so the chain is checked in that penalised form (``history_``'s
        ``penalty_change``; docs/variational.md#reg-covar). 0: plain VB.
    max_iter : int, default 100
        Maximum number of iterations (updates of q(theta)).
    n_init : int, default 1
        Number of initialisations; the fit with the highest ``lower_bound_`` is kept.
    init_params : {'k-means++', 'random', 'random_from_data', 'hc'}, default 'k-means++'
        The starting partition (as :class:`emcore.GaussianMixture`); q(theta)
        starts from its statistics. (scikit-learn's default 'kmeans' runs k-means
        to convergence first.)
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}, \
default 'dirichlet_process'
        The prior on the weights: stick-breaking Beta(1, alpha0) sticks, or a
        symmetric Dirichlet(alpha0).
    weight_concentration_prior : float > 0, optional
        alpha0; default 1 / n_components.
    mean_precision_prior : float > 0, optional
        beta0; default 1.
    mean_prior : array of shape (n_features,), optional
        m0; default the column means of X.
    degrees_of_freedom_prior : float > n_features - 1, optional
        nu0; default n_features.
    covariance_prior : optional
        W_0^-1: a (d, d) symmetric positive definite matrix ('full', 'tied'),
        positive variances (d,) ('diag') or one positive float ('spherical');
        default the covariance of X (its diagonal, or the mean variance).
    random_state : None, int, numpy RandomState or Generator
        Seeds the initialisation and ``sample``.
    warm_start : bool, default False
        If True and already fitted (same n_components, covariance_type and
        number of features), ``fit`` starts from the fitted q(theta), with the
        fitted priors, and ``n_init`` is ignored.
    verbose : int, default 0
        Print one line per iteration if > 0.
    n_jobs : int or None, default None
        Threads for the chunk loop (None: all available CPUs). Results are
        bitwise identical for every value.

    resp_init : array of shape (n_samples, n_components), optional
        A starting q(z): one-hot rows (a partition) or responsibilities, checked
        as in :class:`emcore.GaussianMixture`; the first step is the update of
        q(theta) from its statistics. Cannot come with ``init_params`` (other
        than the default) or ``warm_start=True``.

    progress : bool, default False
        Show a tqdm progress bar (the optional extra ``progress``) over the starts,
        or the iterations of a single start.
    Attributes
    ----------
    weights_ : ndarray (n_components,)
        E[pi] under q(pi) (normalised).
    means_ : ndarray (n_components, n_features)
        m_k, the means of q(mu_k).
    covariances_, precisions_, precisions_cholesky_ : ndarray
        (nu_k W_k)^-1, nu_k W_k = E[Lambda_k] and its upper Cholesky factor, in
        scikit-learn's shapes for the covariance type.
    weight_concentration_ : ndarray or tuple of two ndarrays
        alpha (Dirichlet) or the sticks' Beta parameters (a, b).
    mean_precision_ : ndarray (n_components,)
        beta_k.
    degrees_of_freedom_ : ndarray (n_components,), or float for 'tied'
        nu_k.
    weight_concentration_prior_, mean_precision_prior_, mean_prior_,
    degrees_of_freedom_prior_, covariance_prior_
        The priors used (defaults filled in from X).
    converged_ : bool
    stop_reason_ : {'tol', 'max_iter', 'interrupted'}
    n_iter_ : int
    lower_bound_ : float
        The last of ``lower_bounds_``.
    lower_bounds_ : ndarray, one entry per iteration
        Per iteration t, the ELBO (all constants: a lower bound on the log
        evidence log p(X)) at q_t(z) and the updated q_{t+1}(theta), minus
        reg_covar's penalty (0 for reg_covar=0) -- the quantity scikit-learn
        records, plus the constants it drops (docs/variational.md#sklearn-offset).
        A total, not a per-sample mean (as scikit-learn's).
    history_ : tuple of emcore.engine.Iteration
        Per iteration: the ELBO at (q_t(z), q_t(theta)) both as sum_i log sum_k
        rho_ik - KL (``value``) and by its terms (``elbo_at_start``), at
        (q_t(z), q_{t+1}(theta)) (``elbo``) and at (q_{t+1}(z), q_{t+1}(theta))
        (``value_next``), the penalty change and the derived rounding
        tolerances; ``it.chain_holds()`` checks the chain. A fit some of whose
        iterations break it warns (ChainViolationWarning, naming the iteration).
    n_effective_components_ : int
        Components with ``weights_ >= EFFECTIVE_WEIGHT_THRESHOLD`` (0.01).
    n_features_in_ : int

    Notes
    -----
    ``predict_proba``, ``predict`` and ``score_samples`` use the variational
    responsibilities rho_ik (as scikit-learn does): ``score_samples`` is
    log sum_k rho_ik, a lower bound used for scoring, not the posterior
    predictive density. ``sample`` draws from the mixture with ``weights_``,
    ``means_`` and ``covariances_``. X must fit in memory.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full",
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_init: int = 1, init_params: str = "k-means++",
                 weight_concentration_prior_type: str = "dirichlet_process",
                 weight_concentration_prior: Optional[float] = None,
                 mean_precision_prior: Optional[float] = None, mean_prior: Any = None,
                 degrees_of_freedom_prior: Optional[float] = None,
                 covariance_prior: Any = None, random_state: Any = None,
                 warm_start: bool = False, verbose: int = 0,
                 n_jobs: Optional[int] = None, resp_init: Any = None,
                 progress: bool = False):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.resp_init = resp_init
        self.progress = progress

    # --- checks ---------------------------------------------------------------------
    def _check_parameters(self, X: np.ndarray) -> None:
        owner = "BayesianGaussianMixture"
        k = v.check_int(self.n_components, "n_components", owner, low=1)
        v.check_float(self.tol, "tol", owner)
        v.check_float(self.reg_covar, "reg_covar", owner)
        v.check_int(self.max_iter, "max_iter", owner, low=1)
        v.check_int(self.n_init, "n_init", owner, low=1)
        v.check_choice(self.init_params, "init_params", owner, INIT_PARAMS)
        v.check_choice(self.covariance_type, "covariance_type", owner, _COVARIANCE_TYPES)
        v.check_choice(self.weight_concentration_prior_type,
                       "weight_concentration_prior_type", owner, _PRIOR_TYPES)
        v.check_bool(self.warm_start, "warm_start", owner)
        v.check_int(self.verbose, "verbose", owner, low=0)
        v.check_n_jobs(self.n_jobs, owner)
        if X.shape[0] < k:
            raise ValueError(f"The 'n_components' parameter of {owner} must be at most "
                             f"n_samples={X.shape[0]} (the rows of X). Got "
                             f"n_components={k} instead.")
        if self.resp_init is not None:
            check_resp_init(self.resp_init, X.shape[0], k, owner)
            check_resp_conflicts(owner, {"init_params": self.init_params != "k-means++",
                                         "warm_start": self.warm_start})

    def _positive(self, name: str) -> Optional[float]:
        value = getattr(self, name)
        if value is None:
            return None
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and np.isfinite(value) and value > 0)
        if not ok:
            raise ValueError(f"The {name!r} parameter of BayesianGaussianMixture must be "
                             f"None or a finite number > 0. Got {value!r} instead.")
        return float(value)

    def _resolve_prior(self, X: np.ndarray) -> _Prior:
        """The priors with scikit-learn's defaults from X, checked."""
        owner = "BayesianGaussianMixture"
        n, d = X.shape
        k, t = self.n_components, self.covariance_type
        alpha0 = self._positive("weight_concentration_prior")
        beta0 = self._positive("mean_precision_prior")
        nu0 = self._positive("degrees_of_freedom_prior")
        if nu0 is not None and not nu0 > d - 1:
            raise ValueError(f"The 'degrees_of_freedom_prior' parameter of {owner} must be "
                             f"> n_features - 1 = {d - 1}. Got {nu0!r} instead.")
        if self.mean_prior is None:
            m0 = X.mean(axis=0)
        else:
            prefix = (f"The 'mean_prior' parameter of {owner} must be a finite array of "
                      f"shape ({d},)")
            m0 = v.as_float_array(self.mean_prior, prefix)
            if m0.shape != (d,) or not np.all(np.isfinite(m0)):
                raise ValueError(f"{prefix}. Got {self.mean_prior!r} instead.")
        cov_c = self._covariance_prior(X) if self.covariance_prior is None \
            else self._check_covariance_prior(d)
        cov0 = _expand(np.asarray(cov_c)[None] if t in ("full", "tied")
                       else np.asarray(cov_c, dtype=np.float64).reshape(
                           (1, d) if t == "diag" else (1,)),
                       "full" if t in ("full", "tied") else t, 1, d)[0]
        return _Prior(kind=self.weight_concentration_prior_type,
                      alpha0=1.0 / k if alpha0 is None else alpha0,
                      beta0=1.0 if beta0 is None else beta0, m0=m0,
                      nu0=float(d) if nu0 is None else nu0, cov0=cov0,
                      cov0_compact=cov_c)

    def _covariance_prior(self, X: np.ndarray):
        t = self.covariance_type
        if X.shape[0] < 2:
            raise ValueError("The 'covariance_prior' parameter of BayesianGaussianMixture "
                             "must be given when X has one row (n_samples=1): its default "
                             "is the sample covariance of X.")
        if t in ("full", "tied"):
            cov = np.atleast_2d(np.cov(X.T))
        else:
            var = np.var(X, axis=0, ddof=1)
            cov = var if t == "diag" else float(var.mean())
        if not np.all(np.linalg.eigvalsh(np.atleast_2d(cov) if np.ndim(cov) == 2
                                         else np.diag(np.atleast_1d(cov))) > 0):
            raise ValueError("The 'covariance_prior' parameter of BayesianGaussianMixture "
                             "must be given when the sample covariance of X (its default) "
                             "is singular (constant or collinear columns).")
        return cov

    def _check_covariance_prior(self, d: int):
        t = self.covariance_type
        owner = "BayesianGaussianMixture"
        what = {"full": f"a symmetric positive definite matrix of shape ({d}, {d})",
                "tied": f"a symmetric positive definite matrix of shape ({d}, {d})",
                "diag": f"an array of shape ({d},) of positive variances",
                "spherical": "a positive float"}[t]
        prefix = (f"The 'covariance_prior' parameter of {owner} must be {what} for "
                  f"covariance_type={t!r}")
        c = v.as_float_array(self.covariance_prior, prefix)
        shape = {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}[t]
        if c.shape != shape or not np.all(np.isfinite(c)):
            raise ValueError(f"{prefix}. Got {self.covariance_prior!r} instead.")
        if t in ("full", "tied"):
            if not np.allclose(c, c.T) or not np.all(np.linalg.eigvalsh(c) > 0):
                raise ValueError(f"{prefix}. Got a matrix that is not symmetric positive "
                                 "definite instead.")
            return 0.5 * (c + c.T)
        if np.any(c <= 0):
            raise ValueError(f"{prefix}. Got {self.covariance_prior!r} instead.")
        return c if t == "diag" else float(c)

    # --- fitting --------------------------------------------------------------------
    def _family(self, d: int):
        # reg_covar only for m_step_penalty: the family's M-step is not used here
        return get_registry().family("gaussian").factory(
            self.n_components, d, covariance_type=self.covariance_type,
            reg_covar=self.reg_covar)

    def _initial_stats(self, X: np.ndarray, family, rng: np.random.Generator):
        """Statistics of the starting partition of ``init_params`` (or ``resp_init``)."""
        k = self.n_components
        if self.resp_init is not None:
            resp = check_resp_init(self.resp_init, X.shape[0], k, "BayesianGaussianMixture")
            return stats_from_assignments(X, family, lambda a, b: resp[a:b])[0]
        partition = CountedPartition(starting_partition(X, k, self.init_params, rng),
                                     X.shape[0], k)
        return stats_from_assignments(X, family, partition)[0]

    def fit(self, X: Any, y: Any = None) -> "BayesianGaussianMixture":
        """Fit q(z) q(theta) by coordinate ascent on the ELBO; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers, in memory; n_samples >= n_components.
        y : ignored
        """
        owner = "BayesianGaussianMixture.fit"
        X = check_input(X, owner=owner)
        if not isinstance(X, np.ndarray):
            X = np.ascontiguousarray(X[0:X.shape[0]])
        self._check_parameters(X)
        n, d = X.shape
        family = self._family(d)
        rule = get_registry().posterior_rule("soft").factory()
        rng = v.check_random_state(self.random_state, "BayesianGaussianMixture")
        warm = (self.warm_start and hasattr(self, "_state")
                and self._fitted_shape == (self.n_components, self.covariance_type, d))
        prior = self._prior if warm else self._resolve_prior(X)
        # BLAS on one thread for the whole fit, as the engine's run_em: the chunk
        # loop's threads are ours, and the d x d factorisations are too small to gain
        with single_threaded_blas(), progress_bar(
                getattr(self, "progress", False), "BayesianGaussianMixture",
                starts=1 if warm else self.n_init, max_iter=self.max_iter):
            best = self._run_starts(X, family, rule, prior, rng, warm)
        if best["stop_reason"] == "max_iter":
            warnings.warn(f"BayesianGaussianMixture stopped after max_iter={self.max_iter} "
                          f"iterations before the relative change fell to tol={self.tol:g}; "
                          "increase max_iter or tol.", _sklearn_compatible(ConvergenceWarning),
                          stacklevel=2)
        self._set_fitted(best, prior, d)
        return self

    def _run_starts(self, X, family, rule, prior: _Prior, rng, warm: bool) -> dict:
        """Coordinate ascent from ``n_init`` starts (one if warm); the best bound wins."""
        best = None
        for _ in range(1 if warm else self.n_init):
            state = (self._state if warm else
                     _m_step(self._initial_stats(X, family, rng), family, prior,
                             self.covariance_type, self.reg_covar))
            result = self._run(X, family, rule, prior, state)
            if best is None or result["lower_bound"] > best["lower_bound"]:
                best = result
            if result["stop_reason"] == "interrupted":
                return dict(best, stop_reason="interrupted")
        return best

    def _run(self, X: np.ndarray, family, rule, prior: _Prior, state: _State) -> dict:
        """Coordinate ascent from q(theta) = ``state`` until the stopping rule fires."""
        n, d = X.shape
        k = family.n_components
        chunk_rows = chunk_rows_for(d)
        depth = summation_depth(n, chunk_rows)

        def run_pass(s):
            return _vb_pass(X, family, rule, s, prior, n_jobs=self.n_jobs,
                            chunk_rows=chunk_rows)

        history, bounds = [], []
        stop_reason = "max_iter"
        progress = progress_start()        # the tqdm bar of progress=True, if open
        current = run_pass(state)
        amp_now = family.rounding_amplification(state.params)
        try:
            for t in range(self.max_iter):
                t0 = time.perf_counter()
                stats = current.stats
                new = _m_step(stats, family, prior, self.covariance_type, self.reg_covar)
                c_new, c_mag_new = _log_weights(new, prior, d)
                kl_new, kl_mag_new = _kl(new, prior, k, d)
                n_k = np.where(stats.weight > 0, stats.weight, 0.0)
                # ELBO(q_t(z), q_{t+1}(theta)) from the statistics (docs/variational.md#chain)
                elbo = (family.expected_log_likelihood(stats, new.params)
                        + float(np.dot(n_k, c_new)) + current.entropy - kl_new)
                pen_old = family.m_step_penalty(stats, state.params)
                pen_new = family.m_step_penalty(stats, new.params)
                nxt = run_pass(new)
                amp_next = family.rounding_amplification(new.params)
                tol_eq = equality_tolerance(k, depth, current.magnitude)
                tol_chain = (chain_tolerance(
                    k, d, depth, max(amp_now, amp_next),
                    current.magnitude + nxt.magnitude + abs(pen_old) + abs(pen_new)
                    + 2.0 * (current.kl_magnitude + kl_mag_new)
                    + float(np.dot(n_k, current.c_magnitude + c_mag_new)),
                    family.expected_log_likelihood_magnitude(stats, new.params))
                    + 2.0 * _mean_rounding(new, prior))
                bound = elbo - pen_new
                rel = (abs(bound - bounds[-1]) / max(abs(bound), np.finfo(float).tiny)
                       if bounds else np.inf)
                bounds.append(bound)
                history.append(Iteration(
                    iteration=t, value=current.value, elbo_at_start=current.elbo,
                    elbo=elbo, value_next=nxt.value, objective=bound, relative_change=rel,
                    penalty_change=pen_new - pen_old,
                    param_change=_state_change(state, new),
                    tolerance_equality=max(tol_eq, np.finfo(float).tiny),
                    tolerance=max(tol_chain, np.finfo(float).tiny),
                    empty_components=tuple(int(j) for j in np.flatnonzero(~(n_k > 0))),
                    seconds=time.perf_counter() - t0))
                state, current, amp_now = new, nxt, amp_next
                if progress is not None:
                    progress.iteration("", history[-1])
                if self.verbose:
                    print(f"iteration {t:4d}  lower bound {bound: .10e}  change {rel:.3e}  "
                          f"({history[-1].seconds:.3f} s)")
                if rel < self.tol:
                    stop_reason = "tol"
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        _warn_if_the_chain_fails(history)
        return {"state": state, "history": tuple(history), "bounds": np.array(bounds),
                "lower_bound": bounds[-1] if bounds else -np.inf,
                "stop_reason": stop_reason}

    def _set_fitted(self, result: dict, prior: _Prior, d: int) -> None:
        state: _State = result["state"]
        t, k = self.covariance_type, self.n_components
        self._state, self._prior = state, prior
        self._fitted_shape = (k, t, d)
        U = state.params["precisions_cholesky"]
        self.weights_ = _mixture_weights(state, prior.kind)
        self.means_ = state.params["means"].copy()
        self.covariances_ = _compact(state.params["covariances"], t)
        self.precisions_cholesky_ = _compact(U, t)
        self.precisions_ = _compact(U @ np.swapaxes(U, 1, 2), t)
        conc = tuple(a.copy() for a in state.concentration)
        self.weight_concentration_ = conc if prior.kind == "dirichlet_process" else conc[0]
        self.mean_precision_ = state.beta.copy()
        self.degrees_of_freedom_ = float(state.nu[0]) if t == "tied" else state.nu.copy()
        self.weight_concentration_prior_ = prior.alpha0
        self.mean_precision_prior_ = prior.beta0
        self.mean_prior_ = prior.m0.copy()
        self.degrees_of_freedom_prior_ = prior.nu0
        self.covariance_prior_ = (prior.cov0_compact.copy()
                                  if isinstance(prior.cov0_compact, np.ndarray)
                                  else prior.cov0_compact)
        self.history_ = result["history"]
        self.lower_bounds_ = result["bounds"]
        self.lower_bound_ = float(result["lower_bound"])
        self.stop_reason_ = result["stop_reason"]
        self.converged_ = self.stop_reason_ == "tol"
        self.n_iter_ = len(self.history_)
        self.n_effective_components_ = int(np.sum(self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD))
        self.n_features_in_ = d

    # --- using the fitted model -----------------------------------------------------
    def _evaluate(self, X: Any, method: str) -> tuple:
        """(log sum_k rho_ik, log q) of the rows of X at the fitted q(theta)."""
        owner = f"BayesianGaussianMixture.{method}"
        self._check_fitted("_state")
        k, t, d = self._fitted_shape
        X = check_input(X, owner=owner, n_features=d)
        if not isinstance(X, np.ndarray):
            X = np.ascontiguousarray(X[0:X.shape[0]])
        family = get_registry().family("gaussian").factory(k, d, covariance_type=t)
        log_resp = np.empty((X.shape[0], k))
        row = np.empty(X.shape[0])
        with single_threaded_blas():
            _vb_pass(X, family, get_registry().posterior_rule("soft").factory(),
                     self._state, self._prior, n_jobs=self.n_jobs, with_stats=False,
                     out_log_resp=log_resp, out_row_value=row, chunk_rows=chunk_rows_for(d))
        return row, log_resp

    def score_samples(self, X: Any) -> np.ndarray:
        """log sum_k rho_ik of each row (scikit-learn's score), shape (n_samples,)."""
        return self._evaluate(X, "score_samples")[0]

    def score(self, X: Any, y: Any = None) -> float:
        """Mean of :meth:`score_samples` over the rows of X."""
        return float(np.mean(self.score_samples(X)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Variational responsibilities q(z_i = k), shape (n_samples, n_components)."""
        return np.exp(self._evaluate(X, "predict_proba")[1])

    def predict(self, X: Any) -> np.ndarray:
        """Component of largest responsibility of each row (ties to the lowest index)."""
        return np.argmax(self._evaluate(X, "predict")[1], axis=1)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return the labels of X under the fitted q(theta)."""
        return self.fit(X).predict(X)

    def summary(self, X: Any, parameters: bool = False) -> VBSummary:
        """What was fitted, in a few lines: an :class:`emcore.summary.VBSummary` (the
        ELBO, the effective components, the weights, the clustering table of
        ``predict(X)``, iterations and the stopping rule); ``print`` shows the
        report, its fields are data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Usually the training data (the fit keeps no data): n and the clustering table
            are computed on X.
        parameters : bool, default False
            Also the means and the (G, d, d) covariances of q(theta), labelled by ``feature_names_in_`` (else the
            columns of a DataFrame X, else x0, x1, ...).
        """
        from emcore.summary import summarise_vb
        return summarise_vb(self, X, parameters)

    def sample(self, n_samples: int = 1) -> tuple:
        """Draw (X, y) from the mixture with ``weights_``, ``means_`` and
        ``covariances_`` (as scikit-learn does); y is each row's component."""
        self._check_fitted("_state")
        n_samples = v.check_int(n_samples, "n_samples", "BayesianGaussianMixture.sample",
                                low=1)
        rng = v.check_random_state(self.random_state, "BayesianGaussianMixture")
        k, t, d = self._fitted_shape
        family = get_registry().family("gaussian").factory(k, d, covariance_type=t)
        counts = rng.multinomial(n_samples, self.weights_)
        X = family.sample(self._state.params, counts, rng)
        return X, np.repeat(np.arange(k), counts)


def _state_change(old: _State, new: _State) -> float:
    """Max relative change of the variational parameters (as the engine's)."""
    change = 0.0
    pairs = [(a, b) for a, b in zip(old.concentration, new.concentration)]
    pairs += [(old.beta, new.beta), (old.nu, new.nu)]
    pairs += [(old.params[key], new.params[key]) for key in ("means", "covariances")]
    for a, b in pairs:
        scale = float(np.max(np.abs(a)))
        diff = float(np.max(np.abs(b - a)))
        change = max(change, diff / scale if scale > 0 else diff)
    return change

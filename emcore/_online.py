"""Online (stepwise) EM on the sufficient statistics: ``partial_fit``.

Stepwise EM (Sato & Ishii 2000; Cappé & Moulines 2009; Liang & Klein 2009) keeps a
running average of the *per-row* expected sufficient statistics,

    s_t = (1 - rho_t) s_{t-1} + rho_t sbar(batch_t; theta_{t-1}),   theta_t = M(s_t),

where sbar is the E-step statistics of the batch divided by its total weight and
rho_t = (t + 2)^(-alpha), alpha in (0.5, 1]. The first batch sets s (rho = 1).
The statistics are emcore's mergeable objects: the running average is a merge of
the old statistics scaled by 1 - rho (``Family.scale_stats``) with the batch's
computed at row weights rho / (sum of the batch's weights), so nothing is ever
subtracted.

Guarantee (stated, not monotone): a step need not increase any likelihood. On a
stationary stream, with sum rho_t = inf and sum rho_t^2 < inf (Robbins-Monro:
alpha in (0.5, 1]), s_t converges almost surely to a stationary point of the
expected log-likelihood (Cappé & Moulines 2009, Theorem 1, under their
regularity conditions); smaller alpha forgets faster (noisier, adapts sooner).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

import numpy as np

from emcore.engine import chunk_rows_for, data_pass

__all__ = ["OnlineState", "step_size", "stepwise_update"]


def step_size(t: int, alpha: float) -> float:
    """rho_t = (t + 2)^(-alpha); the first batch (t = 0) uses rho = 1 instead."""
    return 1.0 if t == 0 else float((t + 2.0) ** (-alpha))


def check_exponent(alpha: Any, owner: str) -> float:
    """Return ``alpha`` if it is a number in (0.5, 1], else raise ValueError."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) or \
            not 0.5 < float(alpha) <= 1.0:
        raise ValueError(f"The 'online_step_exponent' parameter of {owner} must be a "
                         f"number in (0.5, 1]. Got {alpha!r} instead.")
    return float(alpha)


@dataclasses.dataclass
class OnlineState:
    """The running state of stepwise EM."""
    t: int                  #: batches seen
    stats: Any              #: running per-row statistics (total weight 1)
    resp: np.ndarray        #: running per-row responsibilities sum_k = 1
    weights: np.ndarray     #: mixture weights from the last M-step
    params: dict            #: family parameters from the last M-step
    batch_loglik: float     #: mean log-likelihood of the last batch at the parameters before it


def stepwise_update(state: Optional[OnlineState], X: np.ndarray, family, rule,
                    weights: np.ndarray, params: dict, sample_weight: Optional[np.ndarray],
                    alpha: float, n_jobs: Optional[int] = 1) -> OnlineState:
    """One stepwise-EM step on the batch X from (weights, params): E-step on the
    batch, the running average of the statistics, the M-step."""
    t = 0 if state is None else state.t
    rho = step_size(t, alpha)
    w = np.ones(X.shape[0]) if sample_weight is None else sample_weight
    row_w = w * (rho / float(np.sum(w)))
    res = data_pass(X, family, rule, weights, params, n_jobs=n_jobs, sample_weight=row_w,
                    chunk_rows=chunk_rows_for(X.shape[1]))
    if state is None:
        stats, resp = res.stats, res.resp_sum
    else:
        stats = family.merge_stats(family.scale_stats(state.stats, 1.0 - rho), res.stats)
        resp = (1.0 - rho) * state.resp + res.resp_sum
    new_params = family.m_step(stats, params)
    new_weights = (weights if family.fixed_weights else resp / float(np.sum(resp)))
    return OnlineState(t + 1, stats, resp, new_weights, new_params, res.value / rho)

"""ELBO(q, theta) <= loglik(theta) for every q, with equality at the posterior.

log p(x | theta) = ELBO(q, theta) + KL(q || p(z | x, theta)); the tolerances are
derived in tests/_tolerances.py.
"""

import numpy as np
from hypothesis import given, note, strategies as st, target

from emcore.engine import data_pass
from emcore.registry import get_registry

from _strategies import gaussian_mixtures, log_q, params_of, sample_mixture
from _tolerances import direct_elbo, magnitude, tau_across, tau_same_array


def _family_and_rule(k, d, reg_covar=0.0):
    reg = get_registry()
    return (reg.family("gaussian").factory(k, d, reg_covar=reg_covar),
            reg.posterior_rule("soft").factory())


def _data(mixture, n, seed, scale, offset):
    return sample_mixture(mixture, n, seed) * scale + offset


@given(mixture=gaussian_mixtures(), n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1.0, 1.0, 1e-4, 1e4]), offset=st.sampled_from([0.0, 0.0, 1e4, -1e6]),
       data=st.data())
def test_elbo_never_exceeds_loglik_for_any_q(mixture, n, seed, scale, offset, data):
    k, d = mixture[1].shape
    family, rule = _family_and_rule(k, d)
    weights, params = params_of(family, mixture)
    # data deliberately not transformed with the model: points far from every
    # component give huge |a_ik| and stress the bound
    X = _data(mixture, n, seed, scale, offset)
    lq = data.draw(log_q(n, k))

    log_post = np.empty((n, k))
    result = data_pass(X, family, rule, weights, params, with_stats=False,
                       out_log_resp=log_post)
    a = family.log_density(X, params) + np.log(weights)
    elbo_direct = direct_elbo(a, lq)

    stats = family.chunk_stats(X, np.exp(lq))
    n_k = np.exp(lq).sum(axis=0)
    entropy = -direct_elbo(np.zeros_like(lq), lq) * -1.0
    entropy = -np.sum(np.where(np.exp(lq) > 0, np.exp(lq) * lq, 0.0))
    elbo_stats = (family.expected_log_likelihood(stats, params)
                  + float(np.sum(n_k * np.log(weights))) + entropy)

    M = magnitude(a, lq) + magnitude(a, log_post)
    tau = tau_across(k, n, d, family.rounding_amplification(params), M)
    note(f"loglik={result.value!r} elbo_direct={elbo_direct!r} elbo_stats={elbo_stats!r} tau={tau!r}")
    target((elbo_direct - result.value) / tau, label="ELBO - loglik in tolerances")
    assert elbo_direct <= result.value + tau
    assert elbo_stats <= result.value + tau
    assert abs(elbo_stats - elbo_direct) <= tau
    # the gap is the KL divergence to the posterior
    q = np.exp(lq)
    kl = float(np.sum(np.where(q > 0, q * (lq - log_post), 0.0)))
    assert abs((result.value - elbo_direct) - kl) <= tau


@given(mixture=gaussian_mixtures(), n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1.0, 1.0, 1e-8, 1e8]), offset=st.sampled_from([0.0, 0.0, 1e4, -1e6]))
def test_elbo_equals_loglik_at_the_posterior(mixture, n, seed, scale, offset):
    w, means, covs = mixture
    k, d = means.shape
    family, rule = _family_and_rule(k, d)
    # transform the model with the data so that it still fits it
    model = (w, means * scale + offset, covs * scale ** 2)
    weights, params = params_of(family, model)
    X = sample_mixture(model, n, seed)

    log_post = np.empty((n, k))
    result = data_pass(X, family, rule, weights, params, out_log_resp=log_post)
    # Check A: the engine's own ELBO and loglik come from one computed array
    tau_a = tau_same_array(k, n, d, result.magnitude)
    note(f"elbo - loglik = {result.elbo - result.value!r}, tau_A = {tau_a!r}")
    target(abs(result.elbo - result.value) / tau_a, label="|ELBO - loglik| / tau_A")
    assert abs(result.elbo - result.value) <= tau_a

    # the same ELBO from the statistics alone (the engine's middle term at theta_t)
    elbo_stats = (family.expected_log_likelihood(result.stats, params)
                  + float(np.sum(result.resp_sum * np.log(weights))) + result.entropy)
    tau_b = tau_across(k, n, d, family.rounding_amplification(params), 2 * result.magnitude)
    assert abs(elbo_stats - result.value) <= tau_b

"""Bitwise-identical results for any thread count (fixed block merge order)."""

import warnings

import numpy as np
import pytest

from emcore import GaussianMixture
from emcore.exceptions import ConvergenceWarning
from emcore._core._passes import MAX_BLOCKS
from emcore.engine import chunk_rows_for, data_pass
from emcore.registry import get_registry


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    k, d = 4, 3
    means = rng.normal(0, 5, (k, d))
    X = np.concatenate([rng.normal(m, 1.0, (9000, d)) for m in means])
    rng.shuffle(X)
    # enough rows for more chunks than blocks, so blocks hold several chunks
    assert X.shape[0] > 2 * MAX_BLOCKS * chunk_rows_for(d) // 4
    return X


def _fit(X, n_jobs):
    gm = GaussianMixture(4, n_jobs=n_jobs, random_state=3, max_iter=15, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    return gm


def test_fit_is_bitwise_identical_for_1_and_2_threads(data):
    one, two = _fit(data, 1), _fit(data, 2)
    assert one.n_iter_ >= 3
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert one.history_ == two.history_      # every recorded number, bit for bit


@pytest.mark.parametrize("n_rows", [1, 7, 4096, 4097, 70001])
def test_one_pass_is_bitwise_identical_for_any_thread_count(data, n_rows):
    X = np.ascontiguousarray(np.resize(data, (n_rows, data.shape[1])))
    reg = get_registry()
    family = reg.family("gaussian").factory(4, X.shape[1], reg_covar=0.0)
    rule = reg.posterior_rule("soft").factory()
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(4))
    params = family.params_from_covariances(rng.normal(0, 5, (4, 3)),
                                            np.stack([np.eye(3)] * 4))
    results = []
    for n_jobs in (1, 2, 3, None):
        log_resp = np.empty((n_rows, 4))
        out = data_pass(X, family, rule, weights, params, n_jobs=n_jobs,
                        out_log_resp=log_resp)
        results.append((out, log_resp))
    base, base_lr = results[0]
    for out, lr in results[1:]:
        assert (out.value, out.expected_log_joint, out.entropy, out.magnitude) == \
            (base.value, base.expected_log_joint, base.entropy, base.magnitude)
        assert np.array_equal(out.resp_sum, base.resp_sum)
        for field in ("weight", "mean", "residual", "scatter"):
            assert np.array_equal(getattr(out.stats, field), getattr(base.stats, field))
        assert np.array_equal(lr, base_lr)

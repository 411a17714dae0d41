"""Bitwise-identical results for any thread count (fixed block merge order).

Every comparison here runs on data of several blocks (emcore/_core/_passes.pyx:
chunks of ``chunk_rows_for(d)`` rows, at most ``MAX_BLOCKS`` blocks, one thread per
block and never more threads than blocks): on one block every thread count runs
one thread, and nothing is compared. The fits use nine blocks: a merge of two
plain sums cannot show its order (0 + a + b and 0 + b + a round alike). Checked by
planting a thread-dependent bug (the blocks merged in reverse order when
n_threads > 1): every test here on two or more blocks fails with it.
"""

import warnings

import numpy as np
import pytest

from emcore import GaussianMixture
from emcore.exceptions import ConvergenceWarning
from emcore._core._passes import MAX_BLOCKS
from emcore._threads import effective_n_threads
from emcore.engine import chunk_rows_for, data_pass
from emcore.registry import get_registry


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    k, d = 4, 3
    means = rng.normal(0, 5, (k, d))
    X = np.concatenate([rng.normal(m, 1.0, (9000, d)) for m in means])
    rng.shuffle(X)
    assert _n_blocks(X) >= 3        # 9 blocks of one chunk each
    return X


def _n_blocks(X):
    """The number of blocks a pass over X runs (emcore/_core/_passes.pyx)."""
    n_chunks = -(-X.shape[0] // chunk_rows_for(X.shape[1]))
    return min(n_chunks, MAX_BLOCKS)


def _fit(X, **n_jobs):
    gm = GaussianMixture(4, random_state=3, max_iter=15, tol=0.0, **n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    return gm


def _assert_same_fit(one, other):
    assert one.n_iter_ >= 3
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(one, name), getattr(other, name)), name
    assert one.history_ == other.history_      # every recorded number, bit for bit


def test_fit_is_bitwise_identical_for_1_and_2_threads(data):
    _assert_same_fit(_fit(data, n_jobs=1), _fit(data, n_jobs=2))


def test_default_n_jobs_gives_the_same_fit(data):
    # n_jobs=None (all CPUs) is the default; results are identical to one thread.
    # It tests threads only if the default runs several: more than one CPU here.
    if effective_n_threads(None) < 2:
        pytest.skip("one CPU available: the default n_jobs runs one thread")
    default = _fit(data)
    assert default.n_jobs is None
    _assert_same_fit(_fit(data, n_jobs=1), default)


C = chunk_rows_for(3)     # 4096


@pytest.mark.parametrize("n_rows", [1, 7, C, C + 1, 3 * C + 1, 70001])
def test_one_pass_is_bitwise_identical_for_any_thread_count(data, n_rows):
    # 1 to C + 1 rows (one or two blocks): the thread count clipped to the blocks;
    # 3 C + 1 rows: 4 blocks of one chunk; 70001 rows: 18 chunks in 16 blocks.
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


def test_a_pass_gives_each_thread_at_least_two_chunks():
    # a second thread on a pass of one or two chunks pays a fork and join (and, on a
    # busy machine, waits for a time slice) for at most a few hundred rows of gain
    from emcore.engine import _CHUNKS_PER_THREAD, _pass_threads
    assert _CHUNKS_PER_THREAD == 2
    assert _pass_threads(1, C, 2) == 1
    assert _pass_threads(C + 1, C, 2) == 1          # two chunks: one thread
    assert _pass_threads(3 * C, C, 2) == 1
    assert _pass_threads(3 * C + 1, C, 2) == 2      # four chunks: two threads
    assert _pass_threads(100 * C, C, 3) == 3
    assert _pass_threads(100 * C, C, 1) == 1
    assert _pass_threads(9 * C, C, None) == min(effective_n_threads(None), 4)


def test_single_threaded_blas_holds_one_thread_and_nests_without_asking_again(monkeypatch):
    # the outer call limits BLAS to one thread and restores it after; an inner call
    # (each pass of a fit, inside the fit's own) leaves the limit as it is and
    # does not ask threadpoolctl again
    from threadpoolctl import threadpool_info
    from emcore import _threads

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library that threadpoolctl sees")
    controller = _threads._controller()
    calls = []
    limit = type(controller).limit
    monkeypatch.setattr(type(controller), "limit",
                        lambda self, **kw: (calls.append(kw), limit(self, **kw))[1])
    with _threads.single_threaded_blas():
        assert blas_threads() == [1] * len(before)
        with _threads.single_threaded_blas():
            assert blas_threads() == [1] * len(before)
        assert blas_threads() == [1] * len(before)     # the inner exit kept the limit
    assert len(calls) == 1
    assert blas_threads() == before

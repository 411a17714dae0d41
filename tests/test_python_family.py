"""A pure-Python family runs through the same engine (no compiled kernel)."""

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from emcore.engine import run_em
from emcore.plugins.gaussian import GaussianFamily
from emcore.registry import get_registry

from _poisson import poisson_module

# The example third-party plugin's family (examples/emcore-poisson): pure Python,
# written only against emcore.plugin_api, as a third party would.
_poisson = poisson_module()
PoissonFamily = None if _poisson is None else _poisson.PoissonFamily


def _reference_em(X, weights, rates, n_iter):
    """Textbook Poisson-mixture EM in numpy, for comparison."""
    for _ in range(n_iter):
        a = X @ np.log(rates).T - rates.sum(1) - gammaln(X + 1).sum(1)[:, None] + np.log(weights)
        q = np.exp(a - logsumexp(a, axis=1, keepdims=True))
        n_k = q.sum(0)
        weights, rates = n_k / n_k.sum(), (q.T @ X) / n_k[:, None]
    return weights, rates


@pytest.fixture(scope="module")
def counts():
    if PoissonFamily is None:
        pytest.skip("emcore-poisson is not installed and examples/emcore-poisson is not here")
    rng = np.random.default_rng(17)
    family = PoissonFamily(3, 4)
    true = {"rates": np.array([[1.0, 5.0, 0.5, 9.0], [6.0, 1.0, 3.0, 0.2],
                               [2.0, 2.0, 12.0, 4.0]])}
    X = family.sample(true, np.array([700, 500, 800]), rng)
    return X[rng.permutation(X.shape[0])]


def test_pure_python_family_fits_through_the_engine(counts):
    family = PoissonFamily(3, 4)
    rule = get_registry().posterior_rule("soft").factory()
    assert family.compiled_kernel({}) is None
    start_w = np.full(3, 1 / 3)
    start = {"rates": np.array([[2.0, 3.0, 1.0, 5.0], [4.0, 2.0, 2.0, 1.0],
                                [3.0, 3.0, 6.0, 3.0]])}
    result = run_em(counts, family, rule, start_w, start, max_iter=40, tol=0.0)
    assert result.n_iter == 40 or result.stop_reason == "tol"
    # the chain at every iteration, and a monotone log-likelihood
    assert result.chain_holds
    for it in result.history:
        assert it.value_next >= it.value - it.tolerance
    # the same iterates as a textbook implementation
    ref_w, ref_rates = _reference_em(counts, start_w, start["rates"], result.n_iter)
    assert np.allclose(result.weights, ref_w, rtol=1e-10, atol=0)
    assert np.allclose(result.params["rates"], ref_rates, rtol=1e-10, atol=0)
    # and the fit finds the generating rates (sorted by the first coordinate)
    found = result.params["rates"][np.argsort(result.params["rates"][:, 0])]
    assert np.allclose(found, [[1.0, 5.0, 0.5, 9.0], [2.0, 2.0, 12.0, 4.0],
                               [6.0, 1.0, 3.0, 0.2]], rtol=0.15, atol=0.15)


class _GaussianThroughPython(GaussianFamily):
    def compiled_kernel(self, params):
        return None


def test_compiled_and_python_paths_agree_for_the_gaussian():
    rng = np.random.default_rng(21)
    X = np.concatenate([rng.normal(0, 1, (6000, 2)), rng.normal(4, 0.7, (5000, 2))]) + 100
    rule = get_registry().posterior_rule("soft").factory()
    fast = GaussianFamily(2, 2, reg_covar=0.0)
    slow = _GaussianThroughPython(2, 2, reg_covar=0.0)
    start = fast.params_from_covariances(np.array([[99.0, 99.0], [105.0, 103.0]]),
                                         np.stack([np.eye(2)] * 2))
    a = run_em(X, fast, rule, np.array([0.5, 0.5]), start, max_iter=20, tol=0.0, n_jobs=2)
    b = run_em(X, slow, rule, np.array([0.5, 0.5]), start, max_iter=20, tol=0.0)
    assert a.chain_holds and b.chain_holds
    # the same arithmetic per chunk; only the merge tree differs (blocks vs a chain):
    # within a few ulps of the summation depth times the magnitude
    for x, y in zip(a.history, b.history):
        assert abs(x.value - y.value) <= x.tolerance
        assert abs(x.elbo - y.elbo) <= x.tolerance
    assert np.allclose(a.params["means"], b.params["means"], rtol=1e-12)
    assert np.allclose(a.params["covariances"], b.params["covariances"], rtol=1e-10)


# --- a family's declared support (emcore.plugin_api.check_support) -----------------------

from emcore.plugin_api import SUPPORTS, check_support  # noqa: E402

# (support, values inside, a value outside): the boundaries on both sides
SUPPORT_CASES = [
    ("support:nonnegative", [0.0, 0.5, 1e300], -1e-300),
    ("support:positive", [1e-300, 2.5], 0.0),
    ("support:unit_interval", [0.0, 0.3, 1.0], 1.0 + 2.0 ** -52),
    ("support:integers", [-3.0, 0.0, 7.0, 1e300], 0.5),
    ("support:nonnegative_integers", [0.0, 1.0, 40.0], -1.0),
    ("support:nonnegative_integers", [0.0, 1.0, 40.0], 2.5),
    ("support:binary", [0.0, 1.0], 2.0),
    ("support:binary", [0.0, 1.0], 0.5),
]


def test_every_support_has_a_case():
    assert {case[0] for case in SUPPORT_CASES} | {"support:real"} == set(SUPPORTS)


@pytest.mark.parametrize("support, inside, outside", SUPPORT_CASES)
def test_check_support_names_the_first_entry_outside(support, inside, outside):
    X = np.array([inside, inside[::-1]], dtype=np.float64).T.copy()     # (m, 2)
    check_support(X, support, family="f", owner="Owner.fit")            # no error
    X[-1, 1] = outside
    with pytest.raises(ValueError, match=rf"The 'X' parameter of Owner.fit must lie in the "
                                         rf"support of family 'f' \({support}.*Got "
                                         rf"X\[{X.shape[0] - 1}, 1\] = .* \(column 1\)"):
        check_support(X, support, family="f", owner="Owner.fit")


def test_check_support_reads_a_chunked_source_block_by_block(tmp_path):
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", shape=(1000, 2))
    X[:] = 1.0
    X[900, 0] = -1.0

    class Source:                     # the interface of emcore's chunked sources
        shape, block_rows = X.shape, 128

        def __getitem__(self, key):
            assert key.stop - key.start <= 128
            return X[key]

    with pytest.raises(ValueError, match=r"X\[900, 0\] = -1\.0"):
        check_support(Source(), "support:nonnegative", family="f", owner="o")


def test_no_support_and_real_support_check_nothing_beyond_finiteness():
    X = np.array([[-1.5, 2.0]])
    check_support(X, None, family="f", owner="o")
    check_support(X, "support:real", family="f", owner="o")
    with pytest.raises(ValueError, match="unknown support 'support:reals'"):
        check_support(X, "support:reals", family="f", owner="o")

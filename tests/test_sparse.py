"""Sparse X (emcore._sources.SparseSource): KMeans fits, predicts, transforms and
scores a scipy.sparse matrix as it does ``X.toarray()``, densifying one block of rows
at a time; the other estimators refuse it (GaussianMixture as scikit-learn's does),
naming X and themselves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from emcore import (BayesianGaussianMixture, GaussianMixture, HiddenMarkovModel, KMeans,
                    MixtureModel, select_model)
from emcore._sources import ChunkedSource, SparseSource
from emcore.engine import chunk_rows_for, data_pass, summation_depth
from emcore.plugin_api import UNIT_ROUNDOFF


def _sparse(n, d, density, seed, fmt="csr", kind="matrix"):
    """Clustered rows with a given share of nonzeros (zeros where a row has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, d))
    X = centres[rng.integers(0, 3, n)] + rng.normal(0, 1, (n, d))
    X[rng.random((n, d)) > density] = 0.0
    S = sp.csr_matrix(X) if kind == "matrix" else sp.csr_array(X)
    return S.asformat(fmt), X


CASES = [  # (n, d, density, format, kind)
    (300, 5, 0.3, "csr", "matrix"),
    (1000, 20, 0.1, "csc", "matrix"),
    (700, 3, 0.8, "csr", "array"),
    (2000, 40, 0.05, "coo", "array"),
]


@pytest.mark.parametrize("n, d, density, fmt, kind", CASES)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_kmeans_sparse_is_the_dense_fit_bitwise(n, d, density, fmt, kind, n_jobs):
    # one block (n <= block_rows): the same compiled calls on the same numbers
    S, X = _sparse(n, d, density, seed=n + d, fmt=fmt, kind=kind)
    w = np.random.default_rng(1).uniform(0.5, 2.0, n)
    a = KMeans(3, n_init=2, random_state=0, n_jobs=n_jobs).fit(S, sample_weight=w)
    b = KMeans(3, n_init=2, random_state=0, n_jobs=n_jobs).fit(X, sample_weight=w)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.predict(S), b.predict(X))
    np.testing.assert_array_equal(a.transform(S), b.transform(X))
    assert a.score(S, sample_weight=w) == b.score(X, sample_weight=w)


def test_several_blocks_fit_as_a_chunked_dense_source_and_read_one_block_at_a_time(
        monkeypatch):
    # d = 128: chunks of 256 rows; blocks of 2 chunks, so 2000 rows are 4 blocks
    S, X = _sparse(2000, 128, 0.05, seed=7)
    reads = []
    read = SparseSource._read

    def spy(self, start, stop):
        reads.append(stop - start)
        return read(self, start, stop)

    monkeypatch.setattr(SparseSource, "_read", spy)
    src = SparseSource(S, block_rows=512)
    ref = ChunkedSource(X, block_rows=512)
    a = KMeans(4, random_state=0).fit(src)
    b = KMeans(4, random_state=0).fit(ref)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_
    assert reads and max(reads) <= 512        # never the whole dense matrix
    # per-row outputs do not depend on the grouping: bitwise the in-memory ones
    np.testing.assert_array_equal(a.predict(src), a.predict(X))
    np.testing.assert_array_equal(a.transform(src), a.transform(X))


def test_default_blocks_are_bounded_and_a_pass_is_within_the_rounding_bound(monkeypatch):
    # 9000 rows of d = 64 (chunks of 512 rows, default blocks of 16 chunks = 8192
    # rows): two blocks, each densified alone
    S, X = _sparse(9000, 64, 0.05, seed=11)
    reads = []
    read = SparseSource._read
    monkeypatch.setattr(SparseSource, "_read",
                        lambda self, a, b: (reads.append(b - a), read(self, a, b))[1])
    # GaussianMixture refuses a scipy.sparse X but runs on any chunked source
    gm = GaussianMixture(3, covariance_type="diag", random_state=0, max_iter=3,
                         tol=0).fit(SparseSource(S))
    assert max(reads) <= 8192 < S.shape[0]
    np.testing.assert_array_equal(gm.score_samples(SparseSource(S)), gm.score_samples(X))
    # the totals of one pass: the same terms summed in another grouping, so within
    # 2 * depth * u * M (emcore/_sources.py), depth that of the longer summation
    family, weights, params = gm._fitted_model("test")
    rule = gm._likelihood_rule()
    src = SparseSource(S)
    sparse_pass = data_pass(src, family, rule, weights, params)
    dense_pass = data_pass(X, family, rule, weights, params)
    chunk = chunk_rows_for(64)
    depth = max(src.summation_depth(chunk), summation_depth(9000, chunk))
    bound = 2 * depth * UNIT_ROUNDOFF * max(sparse_pass.magnitude, dense_pass.magnitude)
    assert abs(sparse_pass.value - dense_pass.value) <= bound
    assert sparse_pass.value != 0.0


def test_sparse_input_is_validated_block_by_block():
    S, _ = _sparse(300, 4, 0.5, seed=5)
    S = S.tocsr()
    S.data[S.indptr[17]] = np.nan           # the first stored entry of row 17
    with pytest.raises(ValueError, match=r"'X' parameter of KMeans.fit.*row 17"):
        KMeans(2, random_state=0).fit(S)
    fitted = KMeans(2, random_state=0).fit(_sparse(300, 4, 0.5, seed=5)[0])
    with pytest.raises(ValueError, match="3 features"):
        fitted.predict(sp.csr_matrix(np.ones((5, 3))))


def _fitted_gm(S, **kwargs):
    return GaussianMixture(2, random_state=0, **kwargs).fit(S.toarray())


@pytest.mark.parametrize("call, owner", [
    (lambda S: HiddenMarkovModel(2, random_state=0).fit(S), "HiddenMarkovModel.fit"),
    (lambda S: BayesianGaussianMixture(2, random_state=0).fit(S),
     "BayesianGaussianMixture.fit"),
    (lambda S: MixtureModel(2, random_state=0).fit(S), "MixtureModel.fit"),
    (lambda S: select_model(S, n_components=[1, 2]), "select_model"),
    (lambda S: GaussianMixture(2, random_state=0).partial_fit(S),
     "GaussianMixture.partial_fit"),
    # as scikit-learn's GaussianMixture (and so its check_estimator passes in full:
    # its sparse check expects classifier tags of any estimator with predict_proba)
    (lambda S: GaussianMixture(2, random_state=0).fit(S), "GaussianMixture.fit"),
    (lambda S: GaussianMixture(2, missing="marginalize", random_state=0).fit(S),
     "GaussianMixture.fit"),
    (lambda S: _fitted_gm(S).predict(S), "GaussianMixture.predict"),
    (lambda S: _fitted_gm(S).predict_proba(S), "GaussianMixture.predict_proba"),
    (lambda S: _fitted_gm(S).score_samples(S), "GaussianMixture.score_samples"),
    (lambda S: _fitted_gm(S).score(S), "GaussianMixture.score"),
    (lambda S: _fitted_gm(S).bic(S), "GaussianMixture.bic"),
    (lambda S: _fitted_gm(S, missing="marginalize").predict(S), "GaussianMixture.predict"),
])
def test_sparse_input_elsewhere_is_refused_naming_x_and_the_estimator(call, owner):
    S, _ = _sparse(100, 3, 0.5, seed=9)
    with pytest.raises(TypeError, match=rf"'X' parameter of {owner}.*sparse"):
        call(S)

"""``init_params='hc'``: mclust's model-based hierarchical agglomeration (emcore/_hc.py,
issue 20 item 2) against mclust.

The partitions at G = 2..5 on Old Faithful and iris equal mclust's
``hclass(hc(X, modelName, use = "SVD"), G)`` for the VVV criterion (mclust's
default start) and EII (Ward's); stored compactly below (a hash of the labels
numbered by first appearance, and the counts), with the R command; re-run when
``Rscript`` and mclust are installed. A fit from the hc start reaches mclust's
``Mclust(X, G, "VVV")`` log-likelihood.
"""

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from sklearn.datasets import load_iris

from emcore import GaussianMixture
from emcore import _hc
from emcore._hc import SUBSET, hc_labels, hc_transform, shared_agglomerations
from emcore.datasets import load_old_faithful

DATA = {"faithful": load_old_faithful(), "iris": load_iris().data}


def _key(labels) -> tuple:
    """(hash, counts) of labels numbered by first appearance (a partition, whatever
    its numbering)."""
    seen: dict = {}
    canonical = "".join(str(seen.setdefault(int(x), len(seen))) for x in labels)
    counts = tuple(canonical.count(str(k)) for k in range(len(seen)))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16], counts


# Rscript -e 'library(mclust); for (X in list(faithful, iris[, 1:4])) for (m in
#   c("VVV", "EII")) { h <- hc(X, modelName = m, use = "SVD"); for (G in 2:5)
#   cat(m, G, paste(hclass(h, G), collapse = ""), "\n") }'      (mclust 6.0.0)
# -> each line's labels through _key
MCLUST_HCLASS = {
    ("faithful", "VVV", 2): ("e0664904ba39c32e", (175, 97)),
    ("faithful", "VVV", 3): ("2167500b84d5b209", (40, 97, 135)),
    ("faithful", "VVV", 4): ("d3174c3f3d77c6c3", (40, 65, 135, 32)),
    ("faithful", "VVV", 5): ("8fc87be44f6e78cf", (40, 65, 65, 32, 70)),
    ("faithful", "EII", 2): ("ad1e4209be101dcc", (176, 96)),
    ("faithful", "EII", 3): ("d39edec408f7742f", (40, 96, 136)),
    ("faithful", "EII", 4): ("2821c96ff5bb3177", (40, 51, 136, 45)),
    ("faithful", "EII", 5): ("f19c4a1a15a28303", (40, 51, 81, 55, 45)),
    ("iris", "VVV", 2): ("431af5408f57cabd", (49, 101)),
    ("iris", "VVV", 3): ("12c4e6338d30a43f", (49, 62, 39)),
    ("iris", "VVV", 4): ("4a91480798d953da", (33, 16, 62, 39)),
    ("iris", "VVV", 5): ("24a8097bcad9f319", (33, 16, 18, 39, 44)),
    ("iris", "EII", 2): ("431af5408f57cabd", (49, 101)),
    ("iris", "EII", 3): ("12c4e6338d30a43f", (49, 62, 39)),
    ("iris", "EII", 4): ("f77cde8260c4da5a", (49, 18, 39, 44)),
    ("iris", "EII", 5): ("7b7a135fa60a216c", (36, 13, 18, 39, 44)),
}


def _check_hclass(reference: dict):
    for name, model in sorted({(n, m) for n, m, _ in reference}):
        ours = hc_labels(DATA[name], [2, 3, 4, 5], model)
        for G in (2, 3, 4, 5):
            assert _key(ours[G]) == reference[name, model, G], (name, model, G)


def test_hc_partitions_equal_mclusts_hclass():
    _check_hclass(MCLUST_HCLASS)


def _mclust_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    out = subprocess.run(["Rscript", "-e", "cat(requireNamespace('mclust', quietly=TRUE))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip().endswith("TRUE")


R_AVAILABLE = _mclust_available()


@pytest.mark.skipif(not R_AVAILABLE, reason="R with mclust is not installed")
def test_hc_partitions_equal_mclusts_hclass_rerun_in_r():
    script = ("suppressMessages(library(mclust)); "
              "d <- list(faithful = faithful, iris = iris[, 1:4]); "
              "for (nm in names(d)) for (m in c('VVV', 'EII')) { "
              "h <- hc(d[[nm]], modelName = m, use = 'SVD'); for (G in 2:5) "
              "cat(nm, m, G, paste(hclass(h, G), collapse = ' '), '\\n') }")
    out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    reference = {}
    for line in out.splitlines():
        name, model, G, *labels = line.split()
        reference[name, model, int(G)] = _key(labels)
    assert len(reference) == len(MCLUST_HCLASS)
    _check_hclass(reference)


# Rscript -e 'library(mclust); for (X in list(faithful, iris[, 1:4])) for (G in 2:5)
#   cat(sprintf("%.17g", Mclust(X, G = G, modelNames = "VVV", verbose = FALSE,
#       control = emControl(tol = c(1e-12, sqrt(.Machine$double.eps))))$loglik), "\n")'
MCLUST_LOGLIK = {("faithful", 2): -1130.2639601847461, ("faithful", 3): -1127.0716674169216,
                 ("iris", 3): -180.18547713134529, ("iris", 4): -165.5475243878318}
# The bar, 1e-8 relative: both fits stop on a relative change (mclust 1e-12,
# emcore 2e-11, above the rounding bound of the faithful fits, ~1e-11) of EM
# converging slowly (faithful G = 3: ~200 iterations, a rate near 0.98), which leaves
# them up to 2e-11 / (1 - 0.98) = 1e-9 from the optimum.
RTOL_LOGLIK = 1e-8


@pytest.mark.parametrize("name,G", sorted(MCLUST_LOGLIK))
def test_a_fit_from_hc_reaches_mclusts_log_likelihood(name, G):
    X = DATA[name]
    fit = GaussianMixture(G, init_params="hc", reg_covar=0.0, tol=2e-11,
                          max_iter=5000).fit(X)
    assert fit.converged_
    np.testing.assert_allclose(fit.score(X) * X.shape[0], MCLUST_LOGLIK[name, G],
                               rtol=RTOL_LOGLIK)


def test_hc_start_is_the_m_step_of_the_hc_partition():
    X = DATA["iris"]
    labels = hc_labels(X, 3)
    resp = np.eye(3)[labels]
    a = GaussianMixture(3, init_params="hc", max_iter=0).fit(X)
    b = GaussianMixture(3, resp_init=resp, max_iter=0).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)


def test_above_the_subset_size_hc_runs_on_a_random_subset():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0.0, 1.0, (150, 2)), rng.normal(6.0, 1.0, (150, 2))])
    labels = hc_labels(X, 2, rng=np.random.default_rng(1), subset=100)
    assert np.sum(labels >= 0) == 100
    assert set(labels[labels >= 0]) == {0, 1}
    # the two blobs, each labelled as one
    top, bottom = labels[:150][labels[:150] >= 0], labels[150:][labels[150:] >= 0]
    assert len(set(top)) == 1 and len(set(bottom)) == 1 and set(top) != set(bottom)
    assert SUBSET == 2000          # mclust.options("subset")


def test_the_svd_transform_whitens_the_data():
    X = DATA["faithful"]
    Z = hc_transform(X)
    S = Z.T @ Z
    # Z = U sqrt(S): its cross-product is diag(singular values), not the identity
    np.testing.assert_allclose(S - np.diag(np.diag(S)), 0.0, atol=1e-10 * np.abs(S).max())
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)


def test_hc_refuses_impossible_cuts():
    with pytest.raises(ValueError, match="groups"):
        hc_labels(DATA["iris"], 151)
    with pytest.raises(ValueError, match="hc model"):
        hc_labels(DATA["iris"], 2, model="VVI")


def test_shared_agglomerations_returns_what_recomputing_returns(monkeypatch):
    # the same X, arguments and generator state: the labels at any G and the
    # generator's state after the call are those of recomputing; the agglomeration
    # runs once per generator state
    X = DATA["iris"]
    calls = []
    agglomerate = _hc._agglomeration

    def counting(*args, **kwargs):
        calls.append(None)
        return agglomerate(*args, **kwargs)

    def draws(seed, G):
        rng = np.random.default_rng(seed)
        first = hc_labels(X, G, "VVV", rng, subset=60)
        return first, hc_labels(X, [G, 5], "VVV", rng, subset=60), rng.random()

    cases = [(0, 3), (0, 2), (1, 4), (0, 3)]
    expected = [draws(seed, G) for seed, G in cases]
    monkeypatch.setattr(_hc, "_agglomeration", counting)
    with shared_agglomerations():
        got = [draws(seed, G) for seed, G in cases]
        assert len(calls) == 4             # seeds 0 and 1, two subsets each
        got[0][0][:] = -7                  # the caller owns its copy
        assert np.array_equal(hc_labels(X, 3, "VVV", np.random.default_rng(0),
                                        subset=60), expected[0][0])
        # at most `subset` rows: no generator, one tree whatever G
        whole = [hc_labels(X, G, "VVV") for G in (2, 3, 7)]
        assert len(calls) == 5
    for (a1, a2, a3), (b1, b2, b3) in zip(expected[1:], got[1:]):
        assert np.array_equal(a1, b1) and a2.keys() == b2.keys() and a3 == b3
        assert all(np.array_equal(a2[G], b2[G]) for G in a2)
    for G, labels in zip((2, 3, 7), whole):
        assert np.array_equal(labels, hc_labels(X, G, "VVV"))
    calls.clear()
    hc_labels(X, 3, "VVV", np.random.default_rng(0), subset=60)
    assert len(calls) == 1                 # outside the context: no memo


def test_one_group_needs_no_agglomeration(monkeypatch):
    # the tree's cut at G = 1 is every row of the subset: no agglomeration (each
    # G = 1 cell of a grid paid one), the same labels and generator state
    X = DATA["iris"]
    expected = {}
    for subset in (60, SUBSET):
        rng = np.random.default_rng(3)
        expected[subset] = (hc_labels(X, [1, 2], "VVV", rng, subset=subset)[1],
                            rng.random())
    calls = []
    monkeypatch.setattr(_hc, "_agglomerate", lambda *a: calls.append(None))
    for subset in (60, SUBSET):
        rng = np.random.default_rng(3)
        labels = hc_labels(X, 1, "VVV", rng, subset=subset)
        assert np.array_equal(labels, expected[subset][0])
        assert rng.random() == expected[subset][1]
        assert np.sum(labels == 0) == min(subset, X.shape[0])
    assert not calls


def test_a_grid_cell_cuts_the_grids_subsets_and_leaves_its_generator(monkeypatch):
    # inside shared_agglomerations(seed) and grid_cell(), the s-th call of a cell
    # takes the grid's s-th subset whatever generator it is given, and does not
    # move that generator; outside grid_cell, the call draws its own
    X = DATA["iris"]
    monkeypatch.setattr(_hc, "SUBSET", 60)
    with shared_agglomerations(subset_seed=5):
        firsts, seconds = [], []
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            with _hc.grid_cell():
                firsts.append(hc_labels(X, 3, "VVV", rng))
                seconds.append(hc_labels(X, 2, "VVV", rng))
            assert rng.random() == np.random.default_rng(seed).random()
        assert np.array_equal(firsts[0], firsts[1])
        assert np.array_equal(seconds[0] >= 0, seconds[1] >= 0)
        assert not np.array_equal(firsts[0] >= 0, seconds[0] >= 0)
        own = hc_labels(X, 3, "VVV", np.random.default_rng(0))
    assert np.array_equal(own, hc_labels(X, 3, "VVV", np.random.default_rng(0)))
    # the grid's subsets: drawn in order from default_rng(seed)
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(X.shape[0], size=60, replace=False))
    assert np.array_equal(np.flatnonzero(firsts[0] >= 0), rows)

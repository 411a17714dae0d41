"""progress=True: a tqdm bar over grid cells, starts or iterations (emcore/_logging.py),
the error without tqdm, and that the default changes nothing."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from emcore import (BayesianGaussianMixture, GaussianMixture, HiddenMarkovModel, KMeans,
                    MixtureModel, select_model)


def _needs_tqdm():
    if os.environ.get("EMCORE_TEST_INSTALLED"):
        __import__("tqdm")          # ci/test.sh installs the 'progress' extra: no skip
    else:
        pytest.importorskip("tqdm")


@pytest.fixture
def X():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (150, 2)), rng.normal(2, 1, (150, 2))])


def _final_counts(err: str, desc: str) -> tuple:
    """(n, total) of the last state tqdm drew for the bar named ``desc``."""
    found = re.findall(rf"{re.escape(desc)}:.*?(\d+)/(\d+)", err)
    assert found, f"no {desc} bar in {err!r}"
    return tuple(int(v) for v in found[-1])


def test_bar_over_starts_and_the_fit_unchanged(X, capsys):
    _needs_tqdm()
    a = KMeans(2, n_init=3, random_state=0, progress=True).fit(X)
    err = capsys.readouterr().err
    assert _final_counts(err, "KMeans") == (3, 3)
    assert "start 3/3 iteration" in err
    b = KMeans(2, n_init=3, random_state=0).fit(X)
    assert capsys.readouterr().err == ""            # the default draws nothing
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


@pytest.mark.parametrize("make, desc", [
    (lambda: GaussianMixture(2, random_state=0, progress=True), "GaussianMixture"),
    (lambda: MixtureModel(2, random_state=0, progress=True), "MixtureModel"),
    (lambda: BayesianGaussianMixture(2, random_state=0, progress=True),
     "BayesianGaussianMixture"),
    (lambda: HiddenMarkovModel(2, random_state=0, progress=True), "HiddenMarkovModel"),
])
def test_bar_over_iterations_of_one_start(X, capsys, make, desc):
    _needs_tqdm()
    model = make().fit(X)
    n, total = _final_counts(capsys.readouterr().err, desc)
    # one update per iteration; a fit that stops before max_iter completes the bar
    assert n == total == len(model.history_) >= 2


def test_grid_bar_counts_cells_and_the_fits_inside_add_no_bar(X, capsys):
    _needs_tqdm()
    result = select_model(X, n_components=[1, 2], covariance_types=["full", "diag"],
                          n_init=2, random_state=0, progress=True)
    err = capsys.readouterr().err
    assert _final_counts(err, "select_model") == (len(result.table),) * 2 == (4, 4)
    assert "n_components=2 covariance_type=diag start 2/2 iteration" in err
    assert "GaussianMixture:" not in err


def test_progress_without_tqdm_names_the_extra(X, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)        # import tqdm now fails
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"tqdm.*'progress'.*emcore-learn\[progress\]"):
        GaussianMixture(2, random_state=0, progress=True).fit(X)
    with pytest.raises(ImportError, match="select_model"):
        select_model(X, n_components=[1, 2], progress=True)
    GaussianMixture(2, random_state=0).fit(X)             # the default needs no tqdm


def test_progress_must_be_a_bool(X):
    with pytest.raises(ValueError, match="'progress' parameter of KMeans must be a bool"):
        KMeans(2, random_state=0, progress="yes").fit(X)


def test_bar_over_the_iterations_of_a_fit_with_missing_values(X, capsys):
    _needs_tqdm()
    Xm = X.copy()
    Xm[::7, 1] = np.nan
    gm = GaussianMixture(2, random_state=0, missing="marginalize", progress=True).fit(Xm)
    n, total = _final_counts(capsys.readouterr().err, "GaussianMixture")
    assert n == total == len(gm.history_) >= 2
    stopped = GaussianMixture(2, random_state=0, missing="marginalize", progress=True,
                              callback=lambda it: it.iteration < 1).fit(Xm)
    assert stopped.stop_reason_ == "callback" and len(stopped.history_) == 2

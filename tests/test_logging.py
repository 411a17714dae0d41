"""Progress and logging (emcore/_logging.py): the 'emcore' logger, labelled lines,
verbose=2's chain links, and the estimators' ``callback``."""

import logging
import warnings

import numpy as np
import pytest

import emcore
from emcore.engine import Iteration

_X = np.random.default_rng(1).normal(size=(90, 2))
_X[:45] += 5.0


@pytest.fixture
def emcore_log(caplog):
    """caplog's handler on the 'emcore' logger itself (verbose prints to stdout
    unless that logger has a handler of its own)."""
    logger = logging.getLogger("emcore")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _estimators(**kw):
    return [emcore.GaussianMixture(2, random_state=0, **kw),
            emcore.KMeans(2, random_state=0, **kw),
            emcore.MixtureModel(2, random_state=0, **kw)]


@pytest.mark.parametrize("est", _estimators(), ids=lambda e: type(e).__name__)
def test_callback_sees_every_iteration_and_false_stops_the_fit(est):
    seen = []
    est.set_params(callback=seen.append, tol=0.0, max_iter=4)   # append returns None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emcore.ConvergenceWarning)
        est.fit(_X)
    assert len(seen) == est.n_iter_ >= 2 and all(isinstance(r, Iteration) for r in seen)
    assert seen == list(est.history_)

    def stop_after_one(record):
        return record.iteration < 0          # False at the first iteration
    est.set_params(callback=stop_after_one, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a stop asked for is not a warning
        est.fit(_X)
    assert est.n_iter_ == 1 and est.stop_reason_ == "callback" and not est.converged_


def test_a_callback_stop_ends_every_start():
    calls = []
    gm = emcore.GaussianMixture(2, n_init=3, random_state=0,
                                callback=lambda r: (calls.append(r), False)[1])
    gm.fit(_X)
    assert len(calls) == 1 and gm.stop_reason_ == "callback"


def test_callback_must_be_callable():
    for est in _estimators(callback=3):
        with pytest.raises(ValueError, match="'callback' parameter of .* must be None or a"):
            est.fit(_X)


def test_lines_go_to_the_emcore_logger_labelled_by_start(emcore_log, capsys):
    caplog = emcore_log
    with caplog.at_level(logging.INFO, logger="emcore"):
        emcore.GaussianMixture(2, n_init=2, verbose=1, max_iter=3, random_state=0).fit(_X)
    records = [r for r in caplog.records if r.name == "emcore"]
    assert records and all(r.levelno == logging.INFO for r in records)
    assert {r.getMessage().split("]")[0] for r in records} == {"[start 1/2", "[start 2/2"}
    assert not any("chain" in r.getMessage() for r in records)
    assert capsys.readouterr().out == ""       # the logger's handler, not stdout


def test_verbose_2_adds_the_chain_links(emcore_log):
    caplog = emcore_log
    with caplog.at_level(logging.INFO, logger="emcore"):
        emcore.KMeans(2, verbose=2, random_state=0).fit(_X)
    lines = [r.getMessage() for r in caplog.records if r.name == "emcore"]
    assert lines and all("chain equality" in ln and "ascent" in ln and "bound" in ln
                         for ln in lines)


def test_without_verbose_lines_are_debug_only(caplog):
    with caplog.at_level(logging.INFO, logger="emcore"):
        emcore.GaussianMixture(2, random_state=0).fit(_X)
    assert not [r for r in caplog.records if r.name == "emcore"]
    with caplog.at_level(logging.DEBUG, logger="emcore"):
        gm = emcore.GaussianMixture(2, random_state=0).fit(_X)
    debug = [r for r in caplog.records if r.name == "emcore"]
    assert len(debug) == gm.n_iter_ and all(r.levelno == logging.DEBUG for r in debug)


def test_grid_cells_are_labelled(caplog):
    with caplog.at_level(logging.DEBUG, logger="emcore"):
        emcore.select_model(_X, n_components=[1, 2], covariance_types=["diag"],
                            random_state=0)
    labels = {r.getMessage().split("]")[0] for r in caplog.records if r.name == "emcore"}
    # select_model's default n_init is 3: each cell's starts are labelled too
    assert labels == {f"[n_components={k} covariance_type=diag start {i}/3"
                      for k in (1, 2) for i in (1, 2, 3)}


def test_verbose_prints_without_logging_configured(capsys):
    logger = logging.getLogger("emcore")
    assert not logger.handlers
    emcore.KMeans(2, verbose=1, random_state=0).fit(_X)
    out = capsys.readouterr().out
    assert "iteration" in out and not logger.handlers    # the handler is removed after
    assert logger.propagate

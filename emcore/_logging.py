"""Progress of a fit: the ``emcore`` logger, labelled lines, and the user's callback.

Every iteration of :func:`emcore.engine.run_em` goes through one :class:`FitReporter`:

- a line on the logger ``emcore`` (:data:`logger`): at INFO with ``verbose >= 1``, at
  DEBUG otherwise (so ``logging.getLogger("emcore").setLevel(logging.DEBUG)`` shows
  them without ``verbose``), labelled with the start (``start 2/5``) and, inside a
  grid (:func:`emcore.select_model`), the grid cell; ``verbose >= 2`` adds the
  chain's links (each link's slack, violation / derived tolerance, <= 1 holds);
- the estimator's ``callback(record)``, called with the :class:`emcore.engine.Iteration`
  record; returning ``False`` (exactly False, not a falsy value) stops the fit with
  ``stop_reason_ == 'callback'``.

``verbose`` shows its lines without any logging set up, as scikit-learn's prints do:
while a fit with ``verbose >= 1`` runs, if the ``emcore`` logger has no handler of
its own, a handler writing the bare message to stdout is attached (and the logger
does not propagate, so a root handler does not show the lines twice); either way
the logger's level is lowered to INFO if it was above, and all is restored after.
Give the ``emcore`` logger a handler to send the lines elsewhere.

``progress=True`` on an estimator (or :func:`emcore.select_model`) shows a tqdm bar
(the optional extra ``progress``) while the fit runs, opened by :func:`progress_bar`
around the fit: over the grid cells of a grid, over the starts of a fit of
several starts, otherwise over the iterations (up to ``max_iter``). It counts what
this module already sees, so it costs nothing per chunk: :class:`FitReporter` is
created once per start and called once per iteration, and :func:`fit_label`
wraps each grid cell. The bar's text says the current cell, start and iteration.
A fit inside a grid with its own bar adds no bar of its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Any, Callable, Iterator, Optional

from emcore._validation import check_bool

__all__ = ["logger", "FitReporter", "fit_label", "verbose_output", "check_callback",
           "progress_bar", "progress_start", "check_progress"]

logger = logging.getLogger("emcore")

_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("emcore_fit_label", default="")


class _Progress:
    """One tqdm bar counting cells, starts or iterations (see the module docstring)."""

    def __init__(self, bar: Any, unit: str) -> None:
        self.bar, self.unit = bar, unit
        self.starts = 0

    def start(self) -> None:
        # a new start: the previous one is done
        if self.unit == "start" and self.starts:
            self.bar.update(1)
        self.starts += 1

    def iteration(self, label: str, record: Any) -> None:
        if self.unit == "iteration":
            self.bar.update(1)
        where = f"{label} " if label else ""
        self.bar.set_postfix_str(f"{where}iteration {record.iteration + 1}", refresh=False)

    def cell_done(self) -> None:
        if self.unit == "cell":
            self.bar.update(1)
            self.starts = 0

    def close(self) -> None:
        if self.unit == "start" and self.starts:
            self.bar.update(1)
        if self.unit == "iteration":
            self.bar.total = self.bar.n     # stopped before max_iter: the fit is done
        self.bar.close()


_PROGRESS: contextvars.ContextVar[Optional[_Progress]] = contextvars.ContextVar(
    "emcore_progress", default=None)


def check_progress(progress: Any, owner: str) -> bool:
    """The ``progress`` parameter: a bool; True needs tqdm (the ``progress`` extra)."""
    progress = check_bool(progress, "progress", owner)
    if progress:
        _tqdm_class(owner)
    return progress


def _tqdm_class(owner: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(f"{owner}(progress=True) needs tqdm, which emcore installs as "
                          "its optional extra 'progress': pip install \"emcore-learn[progress]\" "
                          "(or pip install tqdm).") from None
    return tqdm


def progress_start() -> Optional[_Progress]:
    """A start begins (the open bar, if any, counts it); returns that bar's state.
    :class:`FitReporter` calls it; a loop of its own (variational) calls it too."""
    state = _PROGRESS.get()
    if state is not None:
        state.start()
    return state


@contextlib.contextmanager
def progress_bar(progress: Any, owner: str, *, cells: int = 0, starts: int = 1,
                 max_iter: int = 0) -> Iterator[None]:
    """A tqdm bar for the fit run inside, when ``progress`` is True: over ``cells``
    grid cells if given, else over ``starts`` starts if more than one, else over up
    to ``max_iter`` iterations. Nothing when ``progress`` is False or a bar is
    already open (a fit inside a grid's bar)."""
    if not check_progress(progress, owner) or _PROGRESS.get() is not None:
        yield
        return
    tqdm = _tqdm_class(owner)
    unit, total = (("cell", cells) if cells else ("start", starts) if starts > 1
                   else ("iteration", max_iter))
    state = _Progress(tqdm(total=total, desc=owner, unit=unit), unit)
    token = _PROGRESS.set(state)
    try:
        yield
    finally:
        _PROGRESS.reset(token)
        state.close()


@contextlib.contextmanager
def fit_label(label: str) -> Iterator[None]:
    """Prefix the lines of the fits run inside with ``label`` (a grid cell)."""
    outer = _LABEL.get()
    token = _LABEL.set(f"{outer} {label}".strip())
    try:
        yield
    finally:
        _LABEL.reset(token)
        state = _PROGRESS.get()
        if state is not None:
            state.cell_done()


@contextlib.contextmanager
def verbose_output(verbose: int) -> Iterator[None]:
    """Make the INFO lines of a ``verbose >= 1`` fit visible (see the module docstring)."""
    if not verbose:
        yield
        return
    handler = None
    level, propagate = logger.level, logger.propagate
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
        if handler is not None:
            logger.removeHandler(handler)


def check_callback(callback: Any, owner: str) -> Optional[Callable]:
    """The ``callback`` parameter: None or a callable, else a ValueError."""
    if callback is not None and not callable(callback):
        raise ValueError(f"The 'callback' parameter of {owner} must be None or a callable "
                         f"taking an emcore.engine.Iteration. Got {callback!r} instead.")
    return callback


class FitReporter:
    """Logs one fit's iterations and calls its callback (see the module docstring).

    Parameters
    ----------
    verbose : int
        0: DEBUG lines; 1: INFO lines; 2: INFO lines with the chain's links.
    callback : callable or None
        ``callback(record)`` after each iteration; ``False`` stops the fit.
    start : str
        The start's label (e.g. ``'start 2/5'``), after the grid cell's.
    """

    def __init__(self, verbose: int = 0, callback: Optional[Callable] = None,
                 start: str = "") -> None:
        self.verbose = verbose
        self.callback = callback
        self.label = f"{_LABEL.get()} {start}".strip()
        self.progress = progress_start()

    def note(self, message: str) -> None:
        """A line about the fit that is not an iteration's, labelled and levelled
        as the iteration lines are."""
        level = logging.INFO if self.verbose else logging.DEBUG
        prefix = f"[{self.label}] " if self.label else ""
        logger.log(level, prefix + message)

    def iteration(self, record: Any, objective_name: str) -> bool:
        """Report ``record``; True to continue, False when the callback asks to stop."""
        level = logging.INFO if self.verbose else logging.DEBUG
        if logger.isEnabledFor(level):
            prefix = f"[{self.label}] " if self.label else ""
            line = (f"{prefix}iteration {record.iteration:4d}  {objective_name} "
                    f"{record.value_next: .10e}  change {record.relative_change:.3e}  "
                    f"({record.seconds:.3f} s)")
            step = getattr(record, "step", "em")
            if step != "em":            # 'gem', 'squarem', 'squarem-fallback', 'mcem', ...
                line += f"  {step}"
            if self.verbose >= 2:
                slacks = record.chain_slacks()
                line += "  chain " + " ".join(f"{name} {slack:.2g}"
                                              for name, slack in slacks.items())
                line += "  (slack = violation / tolerance, <= 1 holds)"
            logger.log(level, line)
        if self.progress is not None:
            self.progress.iteration(self.label, record)
        if self.callback is not None:
            return self.callback(record) is not False
        return True

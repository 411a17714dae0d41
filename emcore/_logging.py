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
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Any, Callable, Iterator, Optional

__all__ = ["logger", "FitReporter", "fit_label", "verbose_output", "check_callback"]

logger = logging.getLogger("emcore")

_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("emcore_fit_label", default="")


@contextlib.contextmanager
def fit_label(label: str) -> Iterator[None]:
    """Prefix the lines of the fits run inside with ``label`` (a grid cell)."""
    outer = _LABEL.get()
    token = _LABEL.set(f"{outer} {label}".strip())
    try:
        yield
    finally:
        _LABEL.reset(token)


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
        if self.callback is not None:
            return self.callback(record) is not False
        return True

"""Exceptions and warnings emcore raises on purpose.

scikit-learn has its own ``NotFittedError`` and ``ConvergenceWarning``. emcore
never imports scikit-learn (importing it takes about a second), so emcore's
classes cannot subclass scikit-learn's at import time. Instead, what emcore
raises or warns is of the class :func:`_sklearn_compatible` returns: emcore's
class itself, or, when scikit-learn is already imported, a subclass of both
emcore's and scikit-learn's class of the same name. A user who catches or
filters scikit-learn's class has necessarily imported scikit-learn first, so
both ``except sklearn.exceptions.NotFittedError`` and
``warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)`` work,
as do emcore's own classes, with or without scikit-learn installed.
"""

from __future__ import annotations

import functools
import sys

__all__ = ["ChainViolationWarning", "ConvergenceWarning", "DegenerateComponentError",
           "NotFittedError"]


class DegenerateComponentError(ValueError):
    """A component's parameters cannot be estimated from the data it was given.

    Raised (never a raw ``LinAlgError`` and never NaN parameters) when, for
    example, a full covariance is not positive definite because the component
    holds fewer than ``n_features + 1`` distinct points.

    Attributes
    ----------
    component : int
        Index of the offending component.
    """

    def __init__(self, message: str, component: int):
        super().__init__(message)
        self.component = component


class NotFittedError(ValueError, AttributeError):
    """An estimator method that needs a fitted model was called before ``fit``.

    Subclasses both ``ValueError`` and ``AttributeError``, like scikit-learn's.
    """


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` before the stopping rule on ``tol`` fired.

    Emitted as a subclass of scikit-learn's ``ConvergenceWarning`` too when
    scikit-learn is imported (see the module docstring).
    """


class ChainViolationWarning(RuntimeWarning):
    """A fit broke its own guarantee: a link of the ELBO chain failed.

    Every EM iteration t must satisfy, up to derived rounding tolerances,

        F(theta_t) = ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) <= F(theta_{t+1})

    (the ``equality``, ``ascent`` and ``bound`` links of
    :meth:`emcore.engine.Iteration.chain_slacks`; the ascent link includes the log
    prior in MAP-EM and the penalty of ``reg_covar``). A violation beyond the
    tolerance means the M-step did not maximise, the statistics or the densities
    are wrong, or the data are beyond what double precision can represent; the
    fitted parameters are suspect. Warned once per fit, naming the first violating
    iteration, its link and slack (violation / tolerance), and how many other
    iterations violate; ``history_`` holds every iteration's numbers.

    A ``RuntimeWarning``: dubious results at run time (the test suite turns
    these into errors).
    """


@functools.lru_cache(maxsize=None)
def _subclass_of_both(cls: type, sklearn_class: type) -> type:
    return type(cls.__name__, (cls, sklearn_class), {"__module__": cls.__module__,
                                                     "__doc__": cls.__doc__})


def _sklearn_compatible(cls: type) -> type:
    """``cls`` (NotFittedError, ConvergenceWarning), or if scikit-learn is already
    imported, a subclass of ``cls`` and of scikit-learn's class of the same name
    (without importing scikit-learn ourselves; see the module docstring)."""
    sklearn_exceptions = sys.modules.get("sklearn.exceptions")
    if sklearn_exceptions is None:
        return cls
    return _subclass_of_both(cls, getattr(sklearn_exceptions, cls.__name__))

"""Exceptions emcore raises on purpose."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "DegenerateComponentError", "NotFittedError"]


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
    """A fit stopped at ``max_iter`` before the stopping rule on ``tol`` fired."""

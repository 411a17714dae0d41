"""scikit-learn's estimator conventions without depending on scikit-learn.

The constructor only stores its arguments; ``get_params``/``set_params`` read
them back from the ``__init__`` signature, so ``sklearn.base.clone`` works.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from emcore import persistence
from emcore._version import __version__

from emcore.exceptions import NotFittedError, _sklearn_compatible


class BaseEstimator:
    """Parameter handling shared by emcore's estimators."""

    @classmethod
    def _param_names(cls) -> list:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict:
        """Return the constructor parameters as a dict."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "BaseEstimator":
        """Set constructor parameters; returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator "
                                 f"{type(self).__name__}. Valid parameters are: "
                                 f"{', '.join(valid)}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        shown = []
        for name in self._param_names():
            default = sig.parameters[name].default
            value = getattr(self, name)
            if value is default or (isinstance(value, (int, float, str, bool, type(None)))
                                    and type(value) is type(default) and value == default):
                continue
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        persistence._register_estimator(cls)     # what emcore.load may build

    def save(self, path: Any) -> None:
        """Write this estimator to ``path`` without pickle (a zip of ``.npy`` arrays and
        a JSON manifest; :func:`emcore.load` reads it back). See
        :mod:`emcore.persistence`."""
        persistence.save(self, path)

    def __getstate__(self) -> dict:
        # pickles carry the version that wrote them (as scikit-learn's do)
        state = dict(self.__dict__)
        state["_emcore_version"] = __version__
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        version = state.pop("_emcore_version", None)
        if version != __version__:
            warnings.warn(f"Unpickling a {type(self).__name__} pickled by emcore "
                          f"{version or '(unknown: older than the version stamp)'} "
                          f"with emcore {__version__}: the result may be wrong or "
                          "break. Prefer est.save(path) / emcore.load(path).",
                          UserWarning, stacklevel=2)
        self.__dict__.update(state)

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (only scikit-learn calls this, so it is there)."""
        from sklearn.utils import InputTags, Tags, TargetTags
        return Tags(estimator_type="density_estimator",
                    target_tags=TargetTags(required=False),
                    transformer_tags=None, regressor_tags=None, classifier_tags=None,
                    input_tags=InputTags(allow_nan=False, sparse=False))

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise _not_fitted_error()(
                f"This {type(self).__name__} instance is not fitted yet. "
                "Call 'fit' with appropriate arguments before using this "
                "estimator.")


def _not_fitted_error() -> type:
    """emcore's NotFittedError, scikit-learn's too when scikit-learn is imported."""
    return _sklearn_compatible(NotFittedError)

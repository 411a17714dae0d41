"""Column names of the training data: ``feature_names_in_``, checked on new data.

scikit-learn's convention (its ``_check_feature_names``), without importing
scikit-learn or pandas: any input with a ``columns`` attribute whose entries are all
strings (a pandas or polars DataFrame, or any object shaped like one) has feature
names. ``fit`` records them as ``feature_names_in_`` (an object array) and removes
a stale one when the new data have none; every method that reads new data
(predict, predict_proba, score, score_samples, transform, ...) checks them with
scikit-learn's messages: a frame whose columns are renamed or reordered raises
ValueError (the model would read the columns in the wrong order), and a mismatch
between names and no names warns (UserWarning), as scikit-learn does.

Estimators call :func:`record_feature_names` in ``fit`` and :func:`check_feature_names`
before reading new data, with the raw input (before it becomes an array).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

__all__ = ["feature_names_of", "record_feature_names", "check_feature_names",
           "names_out"]


def feature_names_of(X: Any) -> Optional[np.ndarray]:
    """The column names of X as an object array, or None (no ``columns``, or names
    that are not all strings: scikit-learn ignores integer column labels).

    Raises TypeError for names that mix strings with other types, as scikit-learn."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    try:
        names = np.asarray(list(columns), dtype=object)
    except TypeError:
        return None
    if names.ndim != 1 or names.shape[0] == 0:
        return None
    kinds = sorted({type(name).__name__ for name in names})
    is_str = [isinstance(name, str) for name in names]
    if all(is_str):
        return names
    if any(is_str):
        raise TypeError("Feature names are only supported if all input features have "
                        f"string names, but your input has {kinds} as feature name / "
                        "column name types. If you want feature names to be stored and "
                        "validated, you must convert them all to strings, by using "
                        "X.columns = X.columns.astype(str) for example. Otherwise you can "
                        "remove feature / column names from your input data, or convert "
                        "them all to a non-string data type.")
    return None


def record_feature_names(estimator: Any, X: Any) -> None:
    """At fit: set ``feature_names_in_`` from X's column names, or remove it."""
    names = feature_names_of(X)
    if names is None:
        estimator.__dict__.pop("feature_names_in_", None)
    else:
        estimator.feature_names_in_ = names


def check_feature_names(estimator: Any, X: Any) -> None:
    """On new data: X's column names against ``feature_names_in_`` (scikit-learn's
    messages): ValueError if both have names that differ or are in another order;
    a UserWarning if only one of them has names."""
    fitted = getattr(estimator, "feature_names_in_", None)
    names = feature_names_of(X)
    owner = type(estimator).__name__
    if fitted is None and names is None:
        return
    if names is not None and fitted is None:
        warnings.warn(f"X has feature names, but {owner} was fitted without feature names",
                      UserWarning, stacklevel=3)
        return
    if names is None:
        warnings.warn(f"X does not have valid feature names, but {owner} was fitted with "
                      "feature names", UserWarning, stacklevel=3)
        return
    fitted = np.asarray(fitted, dtype=object)
    if fitted.shape == names.shape and np.all(fitted == names):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unseen = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))

    def listed(items: list) -> str:
        shown = "".join(f"- {name}\n" for name in items[:5])
        return shown + ("- ...\n" if len(items) > 5 else "")

    if unseen:
        message += "Feature names unseen at fit time:\n" + listed(unseen)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
    if not unseen and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def names_out(estimator: Any, n_out: int, input_features: Any = None) -> np.ndarray:
    """scikit-learn's names of a transformer's outputs that are not the inputs:
    ``<class name in lower case><i>`` for i < ``n_out`` (``kmeans0``, ...).
    ``input_features``, if given, must be the fitted ``feature_names_in_`` (or, for
    a model fitted without names, have ``n_features_in_`` entries)."""
    owner = type(estimator).__name__
    if input_features is not None:
        given = np.asarray(input_features, dtype=object)
        fitted = getattr(estimator, "feature_names_in_", None)
        if fitted is not None and not (given.shape == fitted.shape
                                       and np.all(given == fitted)):
            raise ValueError("input_features is not equal to feature_names_in_")
        n_in = getattr(estimator, "n_features_in_", None)
        if fitted is None and n_in is not None and given.shape != (n_in,):
            raise ValueError(f"input_features should have length equal to number of "
                             f"features ({n_in}), got {given.shape[0]}")
    prefix = owner.lower()
    return np.asarray([f"{prefix}{i}" for i in range(n_out)], dtype=object)


_OUTPUTS = ("default", "pandas", "polars")


def check_output_kind(transform: Any, owner: str) -> None:
    """``set_output(transform=...)``: None, 'default', 'pandas' or 'polars'."""
    if transform is not None and transform not in _OUTPUTS:
        raise ValueError(f"The 'transform' parameter of {owner}.set_output must be None, "
                         f"'default', 'pandas' or 'polars'. Got {transform!r} instead.")


def wrap_output(estimator: Any, out: np.ndarray, X: Any) -> Any:
    """A transformer's output in the container ``set_output`` asked for (scikit-learn's
    global ``transform_output`` setting when it was not asked and scikit-learn is
    loaded): a numpy array by default, a pandas or polars DataFrame whose columns
    are ``get_feature_names_out()`` (and, for pandas, X's index when X has one)."""
    import sys
    kind = getattr(estimator, "_sklearn_output_config", {}).get("transform")
    if kind is None:
        sklearn = sys.modules.get("sklearn")
        kind = sklearn.get_config().get("transform_output", "default") if sklearn else \
            "default"
    if kind == "default":
        return out
    columns = list(estimator.get_feature_names_out())
    if kind == "pandas":
        import pandas as pd
        index = getattr(X, "index", None)
        return pd.DataFrame(out, columns=columns,
                            index=index if isinstance(index, pd.Index) else None)
    import polars as pl
    return pl.DataFrame(out, schema=columns, orient="row")

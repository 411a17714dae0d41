"""Input validation at the edge, with messages that name the argument.

Messages follow scikit-learn's shape: "The 'X' parameter of GaussianMixture.fit
must be ... Got ... instead."
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np


class _InputTypeError(TypeError, ValueError):
    """Input of the wrong kind (sparse, non-numeric objects): a ValueError as emcore
    promises for bad input, and a TypeError as scikit-learn's checks expect."""


_MAX_SPREAD = 1e140
_MIN_SPREAD = 1e-140


def _where(owner: str) -> str:
    return f" of {owner}" if owner else ""


def check_data(X: Any, *, name: str = "X", owner: str = "",
               n_features: Optional[int] = None) -> np.ndarray:
    """Return X as a C-contiguous float64 2-D array of finite numbers, or raise ValueError.

    A chunked input (numpy memmap, h5py or zarr dataset, dask array: see
    :func:`emcore._sources.is_chunked`) is not loaded: it is validated a block at a
    time and returned as an :class:`emcore._sources.ChunkedSource`.
    """
    prefix = f"The {name!r} parameter{_where(owner)} must be a 2-D array of finite numbers"
    from emcore._sources import as_source, is_chunked
    if is_chunked(X):
        return as_source(X, name=name, owner=owner, n_features=n_features)
    if X is None:
        raise ValueError(f"{prefix}. Got None instead.")
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise _InputTypeError(f"{prefix}. Got a sparse matrix instead: sparse input is not "
                        "supported, dense data is required (X.toarray()).")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested sequences and the like
        raise ValueError(f"{prefix}. Got an object numpy cannot read ({exc}).") from None
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{prefix}. Got complex numbers instead (Complex data not "
                         "supported).")
    if arr.dtype == object:
        # numbers held in an object array are fine (as in scikit-learn); anything else
        # (strings, None, ragged rows) is not
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise _InputTypeError(f"{prefix}. Got an array of dtype object whose entries are "
                             f"not all numbers ({exc}; argument must be a string or a "
                             "number) instead.") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{prefix}. Got an array of dtype {arr.dtype} instead.")
    if arr.ndim != 2:
        hint = (" Reshape your data: a single feature with X.reshape(-1, 1), a single "
                "sample with X.reshape(1, -1)." if arr.ndim == 1 else "")
        raise ValueError(f"{prefix}. Got an array with ndim={arr.ndim} instead.{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{prefix}. Got an empty array of shape {arr.shape} instead: "
                         f"{arr.shape[0]} sample(s) and {arr.shape[1]} feature(s) "
                         f"(shape={arr.shape}) while a minimum of 1 is required.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise ValueError(f"{prefix}. Got {arr[i, j]} at row {i}, column {j} "
                         "(NaN or infinity) instead.")
    # Second moments of the spread must stay within float64: squares of column
    # ranges beyond 1e140 overflow (times n), below 1e-140 underflow.
    spread = float(np.max(np.ptp(arr, axis=0)))
    if spread > _MAX_SPREAD or 0.0 < spread < _MIN_SPREAD:
        raise ValueError(f"The {name!r} parameter{_where(owner)} has a column spread of "
                         f"{spread:.3g}; second moments of X would over- or underflow in "
                         f"float64. Rescale X so that its spread lies within "
                         f"[{_MIN_SPREAD:g}, {_MAX_SPREAD:g}].")
    if n_features is not None and arr.shape[1] != n_features:
        cls = owner.split(".")[0] or "the model"
        raise ValueError(f"The {name!r} parameter{_where(owner)} must have {n_features} "
                         f"features, as the data the model was fitted on: X has "
                         f"{arr.shape[1]} features, but {cls} is expecting {n_features} "
                         "features as input.")
    return arr


def check_int(value: Any, name: str, owner: str, *, low: Optional[int] = None,
              allow_none: bool = False) -> Optional[int]:
    """Return value as int, checking its type and lower bound."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be an int"
                         f"{' or None' if allow_none else ''}. Got {value!r} instead.")
    if low is not None and value < low:
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be an int >= {low}. "
                         f"Got {value!r} instead.")
    return int(value)


def check_float(value: Any, name: str, owner: str, *, low: float = 0.0) -> float:
    """Return value as a finite float >= low."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or \
            not np.isfinite(value) or value < low:
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be a finite number "
                         f">= {low:g}. Got {value!r} instead.")
    return float(value)


def check_choice(value: Any, name: str, owner: str, choices: tuple) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be one of "
                         f"{', '.join(map(repr, choices))}. Got {value!r} instead.")
    return value


def check_random_state(random_state: Any, owner: str = "") -> np.random.Generator:
    """Return a numpy Generator from None, an int, a RandomState or a Generator."""
    if random_state is None or isinstance(random_state, (numbers.Integral, np.integer)) \
            and not isinstance(random_state, bool):
        if random_state is not None and random_state < 0:
            raise ValueError(f"The 'random_state' parameter{_where(owner)} must be None, "
                             f"an int >= 0, a RandomState or a Generator. Got "
                             f"{random_state!r} instead.")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    raise ValueError(f"The 'random_state' parameter{_where(owner)} must be None, an int "
                     f">= 0, a RandomState or a Generator. Got {random_state!r} instead.")


def check_sample_weight(sample_weight: Any, n_samples: int, *, owner: str = "",
                        min_positive: int = 1) -> Optional[np.ndarray]:
    """Return sample weights as a float64 (n_samples,) array, or None for unweighted.

    Weights must be finite and >= 0, with at least ``min_positive`` positive ones.
    """
    if sample_weight is None:
        return None
    prefix = (f"The 'sample_weight' parameter{_where(owner)} must be an array of "
              f"{n_samples} finite, non-negative numbers (one per row of X)")
    try:
        w = np.asarray(sample_weight)
    except Exception as exc:
        raise ValueError(f"{prefix}. Got an object numpy cannot read ({exc}).") from None
    if w.dtype == object or not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_) \
            or np.issubdtype(w.dtype, np.complexfloating):
        raise ValueError(f"{prefix}. Got an array of dtype {w.dtype} instead.")
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{prefix}. Got an array of shape {w.shape} instead.")
    w = np.ascontiguousarray(w, dtype=np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{prefix}. Got {w[i]} at row {i} instead.")
    positive = int(np.count_nonzero(w))
    if positive == 0:
        raise ValueError(f"{prefix}. Got sample weights that are all zero instead.")
    if positive < min_positive:
        raise ValueError(f"{prefix}, at least {min_positive} of them positive "
                         f"(n_components). Got {positive} positive instead.")
    return w

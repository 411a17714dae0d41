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


def _data_prefix(name: str, owner: str) -> str:
    return f"The {name!r} parameter{_where(owner)} must be a 2-D array of finite numbers"


def _check_dtype(dtype: np.dtype, prefix: str) -> None:
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{prefix}. Got complex numbers instead (Complex data not "
                         "supported).")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ValueError(f"{prefix}. Got an array of dtype {dtype} instead.")


def _check_shape(shape: tuple, prefix: str) -> None:
    if len(shape) != 2:
        hint = (" Reshape your data: a single feature with X.reshape(-1, 1), a single "
                "sample with X.reshape(1, -1)." if len(shape) == 1 else "")
        raise ValueError(f"{prefix}. Got an array with ndim={len(shape)} instead.{hint}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{prefix}. Got an empty array of shape {shape} instead: "
                         f"{shape[0]} sample(s) and {shape[1]} feature(s) "
                         f"(shape={shape}) while a minimum of 1 is required.")


def _check_n_features(n_columns: int, n_features: Optional[int], name: str,
                      owner: str) -> None:
    if n_features is not None and n_columns != n_features:
        cls = owner.split(".")[0] or "the model"
        raise ValueError(f"The {name!r} parameter{_where(owner)} must have {n_features} "
                         f"features, as the data the model was fitted on: X has "
                         f"{n_columns} features, but {cls} is expecting {n_features} "
                         "features as input.")


def block_summary(block: np.ndarray) -> tuple:
    """(first non-finite entry as (row, column, value) or None, column minima,
    column maxima) of a 2-D float block: what validation needs of each block."""
    block = np.asarray(block)
    if block.dtype not in (np.float64, np.float32):     # float32 is read as it is
        block = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(block)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        return (int(i), int(j), float(block[i, j])), None, None
    return None, block.min(axis=0), block.max(axis=0)


def check_blocks(summaries, n_columns: int, *, name: str = "X", owner: str = "") -> None:
    """Raise the errors of :func:`check_data` from per-block :func:`block_summary`
    results, given as (first row of the block, summary) in row order: a non-finite
    entry (naming its row and column) or a column spread whose second moments
    would over- or underflow."""
    lo = np.full(n_columns, np.inf)
    hi = np.full(n_columns, -np.inf)
    for start, (bad, block_min, block_max) in summaries:
        if bad is not None:
            i, j, value = bad
            raise ValueError(f"{_data_prefix(name, owner)}. Got {value} at row {start + i}, "
                             f"column {j} (NaN or infinity) instead.")
        np.minimum(lo, block_min, out=lo)
        np.maximum(hi, block_max, out=hi)
    # Second moments of the spread must stay within float64: squares of column
    # ranges beyond 1e140 overflow (times n), below 1e-140 underflow.
    spread = float(np.max(hi - lo))
    if spread > _MAX_SPREAD or 0.0 < spread < _MIN_SPREAD:
        raise ValueError(f"The {name!r} parameter{_where(owner)} has a column spread of "
                         f"{spread:.3g}; second moments of X would over- or underflow in "
                         f"float64. Rescale X so that its spread lies within "
                         f"[{_MIN_SPREAD:g}, {_MAX_SPREAD:g}].")


def check_data(X: Any, *, name: str = "X", owner: str = "",
               n_features: Optional[int] = None, keep_float32: bool = False) -> np.ndarray:
    """Return X as a C-contiguous float64 2-D array of finite numbers, or raise ValueError.

    In-memory data only; :func:`emcore._input.check_input` sends chunked inputs
    (memmap, h5py, zarr, Dask) to a source instead, validated a block at a time.
    ``keep_float32``: a float32 X stays float32 (C-contiguous, not copied if it
    already is), for the callers that run on float32 rows (docs/elbo_chain.md#float32).
    """
    prefix = _data_prefix(name, owner)
    if X is None:
        raise ValueError(f"{prefix}. Got None instead.")
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise _InputTypeError(f"{prefix}. Got a sparse matrix instead: sparse input is not "
                        "supported, dense data is required (X.toarray()).")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested sequences and the like
        raise ValueError(f"{prefix}. Got an object numpy cannot read ({exc}).") from None
    if arr.dtype == object:
        # numbers held in an object array are fine (as in scikit-learn); anything else
        # (strings, None, ragged rows) is not
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise _InputTypeError(f"{prefix}. Got an array of dtype object whose entries are "
                             f"not all numbers ({exc}; argument must be a string or a "
                             "number) instead.") from None
    _check_dtype(arr.dtype, prefix)
    _check_shape(arr.shape, prefix)
    arr = np.ascontiguousarray(
        arr, dtype=np.float32 if keep_float32 and arr.dtype == np.float32 else np.float64)
    check_blocks([(0, block_summary(arr))], arr.shape[1], name=name, owner=owner)
    _check_n_features(arr.shape[1], n_features, name, owner)
    return arr


def as_float_array(value: Any, prefix: str) -> np.ndarray:
    """``value`` as a float64 array, or a ValueError starting with ``prefix``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{prefix}. Got {value!r} instead.")
    try:
        arr = np.asarray(value)
        if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number)
                                        or arr.dtype in (np.bool_, object)):
            raise TypeError(f"dtype {arr.dtype}")
        return np.array(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{prefix}. Got {value!r}, which is not an array of numbers "
                         f"({exc}), instead.") from None


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


def check_n_jobs(value: Any, owner: str) -> Optional[int]:
    """The 'n_jobs' parameter: None, a positive int or a negative int (-1 = all CPUs)."""
    n_jobs = check_int(value, "n_jobs", owner, allow_none=True)
    if n_jobs == 0:
        raise ValueError(f"The 'n_jobs' parameter{_where(owner)} must be None, a positive "
                         "int or a negative int (-1 = all CPUs). Got 0 instead.")
    return n_jobs


def check_float(value: Any, name: str, owner: str, *, low: float = 0.0) -> float:
    """Return value as a finite float >= low."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or \
            not np.isfinite(value) or value < low:
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be a finite number "
                         f">= {low:g}. Got {value!r} instead.")
    return float(value)


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Return value as bool if it is a bool (Python's or numpy's), else raise ValueError
    (a truthy string such as 'False' is a mistake, not a flag)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be a bool. "
                         f"Got {value!r} instead.")
    return bool(value)


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


_WEIGHT_SUM_MIN, _WEIGHT_SUM_MAX = 2.0 ** -500, 2.0 ** 500


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
    with np.errstate(over="ignore"):
        total = float(np.sum(w))
    if not _WEIGHT_SUM_MIN <= total <= _WEIGHT_SUM_MAX:
        # The statistics multiply weights by weights (the moment merge's W_a W_b / W)
        # and by squared data: a total beyond 2**+-500 overflows or loses bits to
        # underflow (uniform weights of 1e300 raised a degenerate-component error,
        # 1e-320 silently changed the fit).
        raise ValueError(f"{prefix}, whose sum is between 2**-500 and 2**500 (about "
                         "3e-151 and 3e150) so that the weighted statistics neither "
                         "overflow nor underflow; multiplying every weight by the same "
                         "number does not change a fit without a prior. Got a sum of "
                         f"{total:.3g} instead.")
    return w

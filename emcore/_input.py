"""Where an input goes: in memory, read a block at a time, or on a Dask cluster.

The one place that tells the kinds of data apart, above the modules that handle
each kind (so none of them needs to know the others):

- an in-memory array-like: :func:`emcore._validation.check_data` makes it a
  C-contiguous float64 array of finite numbers;
- a numpy memmap, an h5py or zarr dataset (any non-numpy 2-D array-like with
  ``.shape``, a numpy ``.dtype`` and row slicing), or a dask array without an
  active ``dask.distributed`` client: an :class:`emcore._sources.ChunkedSource`,
  read a block at a time here;
- a scipy.sparse array or matrix, where the estimator accepts it (``accept_sparse``):
  an :class:`emcore._sources.SparseSource`, densified a block at a time;
- a dask array with an active client: an :class:`emcore.distributed.DaskSource`,
  whose passes run on the cluster's workers.

Sources are validated a block at a time when wrapped, with the messages
``check_data`` gives for an array.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from emcore._sources import ChunkedSource, SparseSource, is_sparse
from emcore._validation import _InputTypeError, _data_prefix, check_data
from emcore.distributed import DaskSource, active_client

__all__ = ["check_input", "is_chunked", "as_source", "is_sparse", "is_float32",
           "refuse_sparse"]


def _is_dask(X: Any) -> bool:
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def is_chunked(X: Any) -> bool:
    """True for inputs read a block at a time: a numpy memmap, a dask array, a
    scipy.sparse matrix (densified a block at a time, where accepted), or any
    non-numpy 2-D array-like with ``.shape``, a numpy ``.dtype`` and row slicing
    (h5py, zarr, ...)."""
    if isinstance(X, (ChunkedSource, np.memmap)) or _is_dask(X) or is_sparse(X):
        return True
    if isinstance(X, np.ndarray) or hasattr(X, "tocsr") or \
            type(X).__module__.startswith("scipy.sparse"):
        return False            # in memory, or sparse-like (check_data refuses it)
    shape = getattr(X, "shape", None)
    if not hasattr(X, "__getitem__") or not isinstance(shape, tuple) or len(shape) != 2:
        return False
    try:
        np.dtype(getattr(X, "dtype", None))
    except TypeError:
        return False
    return getattr(X, "dtype", None) is not None


def as_source(X: Any, *, name: str = "X", owner: str = "",
              n_features: Optional[int] = None, block_rows: Optional[int] = None
              ) -> ChunkedSource:
    """Wrap (and validate, a block at a time) a chunked input; see :func:`is_chunked`."""
    if isinstance(X, ChunkedSource):
        X._check_n_features(n_features)
        return X
    if is_sparse(X):
        return SparseSource(X, name=name, owner=owner, n_features=n_features,
                            block_rows=block_rows)
    if _is_dask(X):
        if active_client() is not None:      # passes on the cluster's workers
            return DaskSource(X, name=name, owner=owner, n_features=n_features,
                              block_rows=block_rows)
    return ChunkedSource(X, name=name, owner=owner, n_features=n_features,
                         block_rows=block_rows)


def is_float32(X: Any) -> bool:
    """True for a float32 array or scipy.sparse matrix (whose blocks are read as
    float64): the estimators that keep float32 (KMeans, GaussianMixture) then give
    float32 attributes and outputs (scikit-learn's convention)."""
    return getattr(X, "dtype", None) == np.float32


def refuse_sparse(X: Any, *, name: str = "X", owner: str = "") -> None:
    """Raise TypeError (a ValueError too, as emcore's input errors) naming X and
    ``owner`` if X is a scipy.sparse array or matrix; return otherwise."""
    if is_sparse(X):
        raise _InputTypeError(
            f"{_data_prefix(name, owner)}. Got a sparse matrix instead: sparse input is "
            f"not supported by {owner or 'this function'} (it is by KMeans' fit, "
            "predict, transform and score); pass dense data (X.toarray()).")


def check_input(X: Any, *, name: str = "X", owner: str = "",
                n_features: Optional[int] = None, accept_sparse: bool = False,
                keep_float32: bool = False) -> Union[np.ndarray, ChunkedSource]:
    """X checked at the edge: a chunked input as a validated source (:func:`as_source`),
    anything else as a C-contiguous float64 array (:func:`emcore._validation.check_data`),
    or float32 for a float32 X with ``keep_float32`` (the estimators that keep
    float32 end to end; chunked sources are read as float64).

    A scipy.sparse X becomes a :class:`emcore._sources.SparseSource` when
    ``accept_sparse`` (the caller runs on any source), else an error naming X and
    ``owner``.
    """
    if not accept_sparse:
        refuse_sparse(X, name=name, owner=owner)
    if is_chunked(X):
        return as_source(X, name=name, owner=owner, n_features=n_features)
    return check_data(X, name=name, owner=owner, n_features=n_features,
                      keep_float32=keep_float32)

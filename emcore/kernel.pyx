# cython: language_level=3
"""Base classes of the compiled kernel interface (declared in kernel.pxd).

The ``def`` methods give every compiled kernel a Python face for free, so a
family's Python methods can delegate to its kernel (one implementation) and the
tests can call kernels directly.
"""
from emcore.moments cimport (EMC_SCATTER_DIAGONAL, EMC_SCATTER_FULL, EMC_SCATTER_TRACE,
                             EMC_SLOT_REFERENCE, EMC_SLOT_RESIDUAL, EMC_SLOT_SCATTER,
                             EMC_SLOT_WEIGHT, emc_scatter_size)

cdef extern from "emcore/vec4.h":
    const int EMC_GNUC
    const int EMC_HAVE_CLONES

import numpy as np

N_TOTALS_ = N_TOTALS


def _compiled_paths():
    """Which code paths of emcore/vec4.h this build compiled: GNU vectors (else the
    plain-C fallbacks, EMC_NO_GNU_EXTENSIONS) and AVX2/baseline clones (else one
    baseline version, EMC_NO_CLONES or another platform). ci/kernels_fallback.sh
    checks that its flags reached the compiler."""
    return {"gnu_vectors": bool(EMC_GNUC), "clones": bool(EMC_HAVE_CLONES)}

_SCATTER_SHAPES = {"full": EMC_SCATTER_FULL, "diagonal": EMC_SCATTER_DIAGONAL,
                   "trace": EMC_SCATTER_TRACE}


def moment_slot_layout(Py_ssize_t n_features, scatter="full"):
    """Return one component's moments slot (``emcore/moments.h``) as {field: index or slice}.

    The slot is [W, c (d), r (d), S]: the weight ``"weight"`` (an index), the
    reference point ``"mean"``, the residual ``"residual"`` and the scatter
    ``"scatter"`` (slices; S holds d x d numbers, row-major, for ``scatter="full"``,
    d for ``"diagonal"``, 1 for ``"trace"``). The layout is declared once, in the
    C header the kernels use; Python reads it here.
    """
    if scatter not in _SCATTER_SHAPES:
        raise ValueError("The 'scatter' parameter of moment_slot_layout must be one of "
                         f"{sorted(_SCATTER_SHAPES)}. Got {scatter!r} instead.")
    cdef Py_ssize_t d = n_features
    cdef int shape = _SCATTER_SHAPES[scatter]
    return {"weight": EMC_SLOT_WEIGHT(d),
            "mean": slice(EMC_SLOT_REFERENCE(d), EMC_SLOT_REFERENCE(d) + d),
            "residual": slice(EMC_SLOT_RESIDUAL(d), EMC_SLOT_RESIDUAL(d) + d),
            "scatter": slice(EMC_SLOT_SCATTER(d),
                             EMC_SLOT_SCATTER(d) + emc_scatter_size(d, shape))}


cdef inline void _fill_one_hot(const Py_ssize_t* labels, const double* row_weights,
                               Py_ssize_t n_rows, Py_ssize_t K,
                               double* one_hot) noexcept nogil:
    """The (n_rows, K) weights of hard labels: row_weights[i] (1 without them) at
    (i, labels[i]), 0 elsewhere (the default hard accumulation, either dtype)."""
    cdef Py_ssize_t i
    for i in range(n_rows * K):
        one_hot[i] = 0.0
    for i in range(n_rows):
        one_hot[i * K + labels[i]] = row_weights[i] if row_weights != NULL else 1.0


cdef class FamilyKernel:

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil:
        return 0

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil:
        return -1

    cdef void clear_stats(self, double* stats) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.n_stats):
            stats[i] = 0.0

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil:
        return -1

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil:
        pass

    cdef int chunk_accumulate_hard(self, const double* X, Py_ssize_t n_rows,
                                   const Py_ssize_t* labels, const double* row_weights,
                                   double* one_hot, double* stats,
                                   double* scratch) noexcept nogil:
        _fill_one_hot(labels, row_weights, n_rows, self.n_components, one_hot)
        return self.chunk_accumulate(X, n_rows, one_hot, stats, scratch)

    cdef int chunk_hard_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* work, double* scratch, Py_ssize_t* labels,
                             double* row_value, double* totals,
                             double* stats) noexcept nogil:
        return -1

    cdef int chunk_soft_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* resp_sum, double* row_value, double* totals,
                             double* stats, double* scratch) noexcept nogil:
        return -1

    cdef int chunk_log_density_f32(self, const float* X, Py_ssize_t n_rows,
                                   double* out, double* scratch) noexcept nogil:
        return -1

    cdef int chunk_accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                                  const double* weights, double* stats,
                                  double* scratch) noexcept nogil:
        return -1

    cdef int chunk_accumulate_hard_f32(self, const float* X, Py_ssize_t n_rows,
                                       const Py_ssize_t* labels, const double* row_weights,
                                       double* one_hot, double* stats,
                                       double* scratch) noexcept nogil:
        _fill_one_hot(labels, row_weights, n_rows, self.n_components, one_hot)
        return self.chunk_accumulate_f32(X, n_rows, one_hot, stats, scratch)

    cdef int chunk_hard_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* work, double* scratch, Py_ssize_t* labels,
                                 double* row_value, double* totals,
                                 double* stats) noexcept nogil:
        return -1

    cdef int chunk_soft_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* resp_sum, double* row_value, double* totals,
                                 double* stats, double* scratch) noexcept nogil:
        return -1

    # --- Python face -------------------------------------------------------------

    def _check_X(self, X):
        # float32 rows stay float32 where the kernel computes on them (float32_rows)
        dtype = (np.float32 if self.float32_rows and np.asarray(X).dtype == np.float32
                 else np.float64)
        X = np.ascontiguousarray(X, dtype=dtype)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n_rows, {self.n_features}); got {X.shape}")
        return X

    def _scratch(self, Py_ssize_t n_rows):
        return np.empty(max(1, self.scratch_size(n_rows)))

    def log_density(self, X):
        """Return log p(x_i | z_i = k) as an (n_rows, n_components) array (float64;
        computed from float32 rows by the ``_f32`` methods for a float32 X, where
        the kernel has them)."""
        X = self._check_X(X)
        cdef const double[:, ::1] Xv
        cdef const float[:, ::1] Xs
        cdef bint single = X.dtype == np.float32
        if single:
            Xs = X
        else:
            Xv = X
        cdef Py_ssize_t n = X.shape[0]
        out = np.empty((n, self.n_components))
        cdef double[:, ::1] ov = out
        cdef double[::1] scratch = self._scratch(n)
        cdef int status
        if n == 0:
            return out
        with nogil:
            if single:
                status = self.chunk_log_density_f32(&Xs[0, 0], n, &ov[0, 0], &scratch[0])
            else:
                status = self.chunk_log_density(&Xv[0, 0], n, &ov[0, 0], &scratch[0])
        if status != 0:
            raise FloatingPointError(f"{type(self).__name__}.chunk_log_density "
                                     f"failed with code {status}")
        return out

    def empty_stats(self):
        """Return one statistics slot holding the statistics of no data."""
        stats = np.empty(self.n_stats)
        cdef double[::1] sv = stats
        self.clear_stats(&sv[0])
        return stats

    def accumulate(self, X, weights):
        """Return the statistics of X with per-row, per-component weights."""
        X = self._check_X(X)
        cdef const double[:, ::1] Xv
        cdef const float[:, ::1] Xs
        cdef bint single = X.dtype == np.float32
        if single:
            Xs = X
        else:
            Xv = X
        W = np.ascontiguousarray(weights, dtype=np.float64)
        if W.shape != (X.shape[0], self.n_components):
            raise ValueError(f"weights must have shape ({X.shape[0]}, "
                             f"{self.n_components}); got {W.shape}")
        cdef const double[:, ::1] Wv = W
        cdef Py_ssize_t n = X.shape[0]
        stats = self.empty_stats()
        cdef double[::1] sv = stats
        cdef double[::1] scratch = self._scratch(n)
        cdef int status
        if n == 0:
            return stats
        with nogil:
            if single:
                status = self.chunk_accumulate_f32(&Xs[0, 0], n, &Wv[0, 0], &sv[0],
                                                   &scratch[0])
            else:
                status = self.chunk_accumulate(&Xv[0, 0], n, &Wv[0, 0], &sv[0], &scratch[0])
        if status != 0:
            raise FloatingPointError(f"{type(self).__name__}.chunk_accumulate "
                                     f"failed with code {status}")
        return stats

    def merge(self, a, b):
        """Return the merge of two statistics slots (the inputs are not changed)."""
        out = np.array(a, dtype=np.float64, copy=True)
        cdef double[::1] ov = out
        cdef const double[::1] bv = np.ascontiguousarray(b, dtype=np.float64)
        if ov.shape[0] != self.n_stats or bv.shape[0] != self.n_stats:
            raise ValueError(f"statistics slots have {self.n_stats} entries")
        self.merge_stats(&ov[0], &bv[0])
        return out


cdef class PosteriorKernel:

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals,
                             Py_ssize_t* labels) noexcept nogil:
        return -1

    def posterior(self, log_joint, row_weights=None):
        """Return (log_resp, resp, row_value, totals) for a chunk's log joint.

        ``row_value[i]`` is the rule's objective f_i for row i and ``totals`` an
        array of N_TOTALS sums, laid out as in kernel.pxd. Raises ValueError
        naming the first row with no finite likelihood.
        """
        log_resp = np.array(log_joint, dtype=np.float64, order="C", copy=True)
        if log_resp.ndim != 2:
            raise ValueError("log_joint must be 2-D")
        cdef Py_ssize_t n = log_resp.shape[0], k = log_resp.shape[1]
        resp = np.empty((n, k))
        row_value = np.empty(n)
        labels = np.empty(n, dtype=np.intp)
        totals = np.zeros(N_TOTALS)
        cdef double[:, ::1] lv = log_resp
        cdef double[:, ::1] rv = resp
        cdef double[::1] llv = row_value
        cdef Py_ssize_t[::1] labv = labels
        cdef double[::1] tv = totals
        cdef const double[::1] wv
        cdef const double* wp = NULL
        cdef int status
        if row_weights is not None:
            wv = np.ascontiguousarray(row_weights, dtype=np.float64)
            if wv.shape[0] != n:
                raise ValueError("row_weights must have one entry per row")
            if n:
                wp = &wv[0]
        if n == 0 or k == 0:
            return log_resp, resp, row_value, totals
        with nogil:
            status = self.chunk_posterior(&lv[0, 0], &rv[0, 0], &llv[0], wp, n, k, &tv[0],
                                          &labv[0] if self.hard else NULL)
        if status != 0:
            raise ValueError(
                f"row {status - 1} has no finite likelihood under any component "
                "(every log p(x, z=k) is -inf or NaN)")
        return log_resp, resp, row_value, totals


def get_include():
    """Return the folder of emcore's public C headers.

    A compiled family that uses them (``emcore/vec4.h``: 4-double vectors and
    the ``EMC_CLONES`` dispatch; ``emcore/vexp.h``: exp on those vectors;
    ``emcore/moments.h``: the moments slots and their merge) adds it to its
    extension's include folders, as with ``numpy.get_include()``::

        Extension(..., include_dirs=[numpy.get_include(), emcore.kernel.get_include()])

    and then ``#include "emcore/vec4.h"`` (C) or ``cimport emcore.moments`` (Cython).
    """
    import os
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")

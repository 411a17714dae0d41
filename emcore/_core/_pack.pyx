# cython: language_level=3
"""The compiled loop of emcore/_patterns.py: rows of integer codes packed into one
key each and counted in a table (docs/discrete.md#compression)."""

import numpy as np


def pack_rows(const double[:, ::1] X, const double[::1] low, const double[::1] stride,
              Py_ssize_t size):
    """(inverse (n,), index (m,)), intp: the pattern of each row of X and one row of
    each of the m patterns, numbered in key order.

    key(x) = sum_j (x_j - low_j) stride_j, an integer in [0, size) for rows of
    integer codes within [low_j, low_j + radix_j) (stride: the mixed-radix place
    values, size = their range product < 2^53): every partial sum is an integer
    below 2^53, exact in any order, so the four running sums below give the
    exact key. None if a row's key is outside [0, size) (not such a row).
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, j, p, m = 0
    cdef double k0, k1, k2, k3, key
    inverse = np.empty(n, dtype=np.intp)
    table = np.zeros(max(size, 1), dtype=np.intp)
    cdef Py_ssize_t[::1] inv = inverse
    cdef Py_ssize_t[::1] tab = table
    cdef bint outside = False
    with nogil:
        for i in range(n):
            k0 = k1 = k2 = k3 = 0.0
            j = 0
            while j + 4 <= d:
                k0 += (X[i, j] - low[j]) * stride[j]
                k1 += (X[i, j + 1] - low[j + 1]) * stride[j + 1]
                k2 += (X[i, j + 2] - low[j + 2]) * stride[j + 2]
                k3 += (X[i, j + 3] - low[j + 3]) * stride[j + 3]
                j += 4
            while j < d:
                k0 += (X[i, j] - low[j]) * stride[j]
                j += 1
            key = (k0 + k1) + (k2 + k3)
            if not (key >= 0.0 and key < <double>size):
                outside = True
                break
            p = <Py_ssize_t>key
            inv[i] = p
            tab[p] = 1
        if not outside:
            # the present keys' ranks, in key order
            for p in range(size):
                if tab[p]:
                    tab[p] = m
                    m += 1
            for i in range(n):
                inv[i] = tab[inv[i]]
    if outside:
        return None
    index = np.empty(m, dtype=np.intp)
    cdef Py_ssize_t[::1] idx = index
    with nogil:
        for i in range(n):
            idx[inv[i]] = i          # any row of the pattern: they are equal
    return inverse, index

"""Data sets bundled with emcore."""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_old_faithful", "OLD_FAITHFUL_COLUMNS"]

OLD_FAITHFUL_COLUMNS = ("eruptions", "waiting")
"""Column names of :func:`load_old_faithful`: eruption time and waiting time (minutes)."""


def load_old_faithful() -> np.ndarray:
    """Return the Old Faithful geyser data, shape (272, 2), float64.

    Columns: ``eruptions`` (eruption time, minutes) and ``waiting`` (waiting time
    to the next eruption, minutes). A copy of R's ``datasets::faithful``; the
    provenance is in the header of the bundled ``data/old_faithful.csv``.
    """
    path = resources.files(__name__).joinpath("data", "old_faithful.csv")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    if tuple(lines[0].split(",")) != OLD_FAITHFUL_COLUMNS:
        raise RuntimeError(f"unexpected header in {path}: {lines[0]!r}")
    data = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
    return np.ascontiguousarray(data, dtype=np.float64)

"""Random valid parameters of a family, from a numpy Generator.

A family declares how to draw its parameters with ``Family.random_params``; a
family that does not implement it is tested with parameters passed explicitly.
"""

from __future__ import annotations

import numpy as np

from emcore.plugin_api import Family

__all__ = ["can_draw_params", "draw_params"]


def can_draw_params(family: Family) -> bool:
    """True if the family implements ``Family.random_params``."""
    return type(family).random_params is not Family.random_params


def draw_params(family: Family, rng: np.random.Generator, *,
                nearly_degenerate: bool = False) -> dict:
    """Random valid parameters of ``family`` (see ``Family.random_params``)."""
    return family.random_params(rng, nearly_degenerate=nearly_degenerate)

"""The compiled kernels' switches between loops that give the same bits.

A kernel with a loop for x86-64-v4 (AVX-512) CPUs beside its AVX2 clone holds
its choice in a C flag (-1: not decided yet). The choice is made once, when
its module is imported (no thread of a pass writes it); the tests flip it to
check that both loops give the same bits.
"""

from __future__ import annotations

from typing import Optional


def loop_choice(current: int, available: bool, enable: Optional[bool], name: str) -> int:
    """The flag's new value: ``enable`` True or False chooses (True only where
    ``available``: the CPU and the build have the loop); None keeps ``current``,
    deciding it by ``available`` if it is not decided yet (< 0)."""
    if enable is not None:
        if enable and not available:
            raise ValueError(f"The 'enable' parameter of {name} is True but this CPU "
                             "(or build) has no x86-64-v4 loop.")
        return 1 if enable else 0
    return int(bool(available)) if current < 0 else current

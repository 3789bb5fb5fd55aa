"""Bisection in log space: the planner's inversions (tokens for a target loss, compute for a token count) of monotone
laws whose arguments span 1 to 1e30+, where a linear bisection would spend its steps on the top decade."""

from __future__ import annotations

import math
from collections.abc import Callable


def bisect_log(above: Callable[[float], bool], lo: float, hi: float, rtol: float = 1e-12,
               iters: int = 200) -> tuple[float, float]:
    """Final bracket (lo, hi) around the point where `above(x)` ("the answer is above x") turns False, bisected at
    geometric midpoints until hi / lo < 1 + rtol."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if above(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + rtol:
            break
    return lo, hi

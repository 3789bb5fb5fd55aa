"""Inference-aware sizing (Sardana et al. 2023, "Beyond Chinchilla-Optimal: Accounting for Inference").

Design and invariants
- A model served for D_inf tokens costs 2 N D_inf FLOPs on top of its 6 N D training FLOPs. Sardana et al.
  fix the quality (a loss target) and minimise the lifetime cost 6 N D + 2 N D_inf over (N, D) on the loss
  law's level set L(N, D) = target. With D_inf = 0 that is exactly the compute-optimal point; as D_inf grows
  the optimum moves to smaller N trained on more tokens.
- The planner offers two readings of a budget C (PlanConfig.inference_mode):
  'match-loss' (Sardana): target = the loss the compute-optimal model reaches with C; the answer trains longer
  than C buys but costs less over its lifetime. 'lifetime-budget': C pays for training *and* inference; minimise
  loss subject to 6 N D + 2 N D_inf = C.
- Here the FLOPs per token are the caller's (6N or the model's exact count); this module only does the search.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from train.planner.laws import Law
from train.planner.log_bisect import bisect_log


def lifetime_flops(n: float, d_train: float, d_inf: float) -> float:
    """6 N D_train + 2 N D_inf (training + inference forward passes)."""
    return 6.0 * n * d_train + 2.0 * n * d_inf


def sardana_optimum(
    law: Law, target_loss: float, d_inf: float, loss: Callable[[float, float], float] | None = None,
    n_lo: float = 1e3, n_hi: float = 1e15, num_points: int = 400,
) -> tuple[float, float, float]:
    """(N, D_train, lifetime FLOPs) minimising 6ND + 2N D_inf on L(N, D) = target_loss.

    `loss` defaults to law.loss (pass a data-constrained loss to combine both). Solved by a log-grid scan plus
    golden-section refinement: the cost along the level set is unimodal in log N for the laws we use.
    """
    loss_fn = loss or law.loss

    def tokens(n: float) -> float:
        if loss is None:
            return law.tokens_for_loss(n, target_loss)
        if loss_fn(n, 1e30) >= target_loss:
            return math.inf
        return bisect_log(lambda d: loss_fn(n, d) > target_loss, 1.0, 1e30, 1e-10)[1]

    def cost(logn: float) -> float:
        n = math.exp(logn)
        d = tokens(n)
        return math.inf if math.isinf(d) else lifetime_flops(n, d, d_inf)

    grid = [math.log(n_lo) + i * (math.log(n_hi) - math.log(n_lo)) / (num_points - 1) for i in range(num_points)]
    costs = [cost(g) for g in grid]
    i = min(range(num_points), key=costs.__getitem__)
    if math.isinf(costs[i]):
        raise ValueError(f"inference_tokens: no model in [{n_lo:.3g}, {n_hi:.3g}] params reaches loss {target_loss:.4g}")
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, num_points - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if cost(c) < cost(d):
            b = d
        else:
            a = c
    n = math.exp((a + b) / 2)
    d_train = tokens(n)
    return n, d_train, lifetime_flops(n, d_train, d_inf)

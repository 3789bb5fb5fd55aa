"""Repeated data (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models").

Design and invariants
- Repeating U_D unique tokens for R_D extra epochs is worth less than fresh data. The paper replaces D (and N)
  in the approach-3 loss by effective counts that decay exponentially with repetition (their eq. 5):
      D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D)),   R_D = D / U_D - 1
      N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N)),   R_N = N / U_N - 1,   U_N = min(N, N_opt(U_D))
  with R*_D = 15.4 and R*_N = 5.3 fitted by the paper. D' <= D always, and D' ~ D for a few epochs: the paper
  finds up to ~4 epochs cost almost nothing, beyond ~16 repeated tokens are worth little, so we warn past 4.
- U_N is the compute-optimal size for the unique data (taken from the law in use): parameters beyond it see
  the same repeated data and are discounted the same way.
- Because R*_N < R*_D, excess parameters lose value faster than repeated tokens: the constrained optimum is a
  *smaller* model trained for more epochs than the unconstrained law would pick (the paper's own conclusion).
- No repetition (D <= U_D) leaves D unchanged, so a plan with enough data is exactly the plain law's.
"""

from __future__ import annotations

import math

from train.planner.laws import Law

R_STAR_D = 15.4
R_STAR_N = 5.3
WARN_EPOCHS = 4.0


def effective_tokens(d: float, unique: float, r_star: float = R_STAR_D) -> float:
    """D' for training on d tokens drawn from `unique` unique ones."""
    if unique <= 0 or d <= unique:
        return d
    r = d / unique - 1.0
    return unique + unique * r_star * (1.0 - math.exp(-r / r_star))


def effective_params(n: float, unique_tokens: float, law: Law, r_star: float = R_STAR_N) -> float:
    """N' for a model of n params trained on repeated data: params beyond N_opt(U_D) are discounted."""
    if unique_tokens <= 0:
        return n
    u_n = min(n, law.params_for_tokens(unique_tokens))
    if n <= u_n:
        return n
    r = n / u_n - 1.0
    return u_n + u_n * r_star * (1.0 - math.exp(-r / r_star))


def constrained_loss(law: Law, n: float, d: float, unique_tokens: float) -> float:
    """The law's loss with Muennighoff's effective N' and D' (unique_tokens <= 0: unlimited data)."""
    if unique_tokens <= 0 or d <= unique_tokens:
        return law.loss(n, d)
    return law.loss(effective_params(n, unique_tokens, law), effective_tokens(d, unique_tokens))


def epochs(d: float, unique_tokens: float) -> float:
    """Passes over the unique data (0 when the unique count is unknown)."""
    return d / unique_tokens if unique_tokens > 0 else 0.0


def epoch_warning(d: float, unique_tokens: float) -> str | None:
    e = epochs(d, unique_tokens)
    if e > WARN_EPOCHS:
        return (
            f"data-constrained: {d:.3g} training tokens are {e:.1f} epochs over {unique_tokens:.3g} unique "
            f"tokens; beyond ~{WARN_EPOCHS:g} epochs repeated tokens are worth markedly less than fresh ones "
            f"(Muennighoff et al. 2023: effective data {effective_tokens(d, unique_tokens):.3g} tokens). "
            "Get more data or plan a larger model on fewer tokens."
        )
    return None

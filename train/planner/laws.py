"""Scaling laws: how loss depends on params N and tokens D, and how a FLOP budget C splits into N and D.

Design and invariants
- A law has two jobs. `allocate(C) -> (N, D)` is its compute-optimal split under its own compute convention,
  C = 6ND (how every law below was fitted and how Chinchilla's Table 3 is computed). `loss(N, D)` predicts the
  final loss in nats/token on the *law's own data and tokenizer*: use it to rank shapes, not as a promise about
  your data (that is what `fitted` is for).
- `param_convention` says what N counts: "total" (Chinchilla counts embeddings), "non-embedding" (Kaplan
  2020, and our fitted laws: at tiny scale the embedding is most of the model, and Pearce & Song 2024 trace
  most of the Kaplan/Chinchilla disagreement to this choice). For MoE, N is always the *active* count.
- Laws carry the range of N and D they were fitted on; `range_warnings` says when a plan lies far outside it
  (a factor of 3 beyond either end).

Laws (all losses in nats/token):
- Chinchilla approach 3 (Hoffmann et al. 2022, eq. 10 / sec. 3.3): L = E + A/N^a + B/D^b,
  E=1.69, A=406.4, B=410.7, a=0.34, b=0.28. Closed-form optimum N = G (C/6)^(b/(a+b)), G = (aA/(bB))^(1/(a+b)).
- Chinchilla approach 1 (sec. 3.1), the power law behind Table 3. The paper gives exponents (0.50, 0.50) but not the
  constant; we fit N = k C^e by least squares on log N vs log C over Table 3's nine rows: e = 0.4981, k = 0.09916
  (residuals <= 1.3% in N). D = C / 6N. Approach 1 predicts no loss, so its `loss` is approach 3's.
- Epoch AI refit of approach 3 (Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"):
  E=1.8172, A=482.01, B=2085.43, a=0.3478, b=0.3658 — about 20 tokens/param across scales, unlike approach 3.
- Tokens-per-parameter: D = k N (k = 20 by default), so N = sqrt(C / 6k). Loss from Chinchilla approach 3.
- Kaplan et al. 2020: L(N, D) = [(Nc/N)^(aN/aD) + Dc/D]^aD, aN=0.076, aD=0.095, Nc=8.8e13, Dc=5.4e13 (eq. 1.5,
  non-embedding N); compute-efficient size N = 1.3e9 (C / PF-day)^0.73 (fig. 14), D = C / 6N.
- Fitted: approach-3 form with parameters from `tinyfoundry plan sweep` (a JSON file, see sweep.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from train.planner.log_bisect import bisect_log

ParamConvention = Literal["total", "non-embedding"]

PF_DAY = 1e15 * 24 * 3600  # FLOPs in one petaflop/s-day (Kaplan's compute unit)

# Chinchilla Table 3 (params, FLOPs, tokens): the rows approach 1 is checked against.
CHINCHILLA_TABLE3: tuple[tuple[float, float, float], ...] = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)

# Chinchilla: "over 400 models from 70M to over 16B parameters on 5 to 500 billion tokens".
CHINCHILLA_RANGE = {"params": (7e7, 1.6e10), "tokens": (5e9, 5e11)}
# Kaplan: non-embedding params 768 to 1.5B, datasets 22M to 23B tokens.
KAPLAN_RANGE = {"params": (768.0, 1.5e9), "tokens": (2.2e7, 2.3e10)}
RANGE_SLACK = 3.0  # "far outside" = beyond a factor of 3 of the fitted range


def _bisect_log(f, lo: float, hi: float, iters: int = 200) -> float:
    """Root of a monotone f on [lo, hi], searched in log space (f(lo), f(hi) of opposite sign)."""
    positive_at_lo = f(lo) > 0
    lo, hi = bisect_log(lambda x: (f(x) > 0) == positive_at_lo, lo, hi, 1e-12, iters)
    return math.sqrt(lo * hi)


@dataclass(frozen=True)
class Law:
    """Base: a name, a convention for N, a fitted range, a loss model and an allocation rule."""

    name: str
    reference: str
    param_convention: ParamConvention
    fitted_range: dict = field(default_factory=lambda: dict(CHINCHILLA_RANGE))

    def loss(self, n: float, d: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def allocate(self, c: float) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def params_for_tokens(self, d: float) -> float:
        """The N whose compute-optimal D equals d (Muennighoff's U_N for U_D unique tokens)."""
        c = _bisect_log(lambda c: self.allocate(c)[1] - d, 1.0, 1e45)
        return self.allocate(c)[0]

    def tokens_for_loss(self, n: float, target: float) -> float:
        """Smallest D with loss(n, D) <= target; inf when even infinite data cannot reach it."""
        if self.loss(n, 1e30) >= target:
            return math.inf
        return _bisect_log(lambda d: self.loss(n, d) - target, 1.0, 1e30)

    def range_warnings(self, n: float, d: float) -> list[str]:
        out = []
        for what, v in (("params", n), ("tokens", d)):
            lo, hi = self.fitted_range[what]
            if v < lo / RANGE_SLACK or v > hi * RANGE_SLACK:
                unit = f"{self.param_convention} params" if what == "params" else "tokens"
                out.append(
                    f"law '{self.name}' was fitted on {lo:.3g} to {hi:.3g} {unit}; this plan's {v:.3g} lies far "
                    "outside that range, so its prediction is an extrapolation"
                )
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "reference": self.reference,
            "param_convention": self.param_convention,
            "fitted_range": {k: list(v) for k, v in self.fitted_range.items()},
        }


@dataclass(frozen=True)
class ParametricLaw(Law):
    """L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3 form); optimum in closed form under C = 6ND."""

    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def allocate(self, c: float) -> tuple[float, float]:
        a = self.beta / (self.alpha + self.beta)
        b = self.alpha / (self.alpha + self.beta)
        n = self.G * (c / 6.0) ** a
        d = (c / 6.0) ** b / self.G
        return n, d

    def params_for_tokens(self, d: float) -> float:
        # D = (C/6)^b / G  =>  C/6 = (D G)^(1/b);  N = G (C/6)^a
        a = self.beta / (self.alpha + self.beta)
        b = self.alpha / (self.alpha + self.beta)
        return self.G * (d * self.G) ** (a / b)

    def tokens_for_loss(self, n: float, target: float) -> float:
        gap = target - self.E - self.A / n**self.alpha
        return math.inf if gap <= 0 else (self.B / gap) ** (1.0 / self.beta)

    def describe(self) -> dict:
        return super().describe() | {
            "form": "E + A/N^alpha + B/D^beta",
            "params": {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta},
        }


@dataclass(frozen=True)
class PowerLawAllocation(Law):
    """N_opt = k C^e, D = C / 6N (Chinchilla approach 1); losses come from `loss_model`."""

    k: float = 0.09916
    e: float = 0.4981
    loss_model: ParametricLaw = field(default_factory=lambda: CHINCHILLA_APPROACH3)

    def allocate(self, c: float) -> tuple[float, float]:
        n = self.k * c**self.e
        return n, c / (6.0 * n)

    def loss(self, n: float, d: float) -> float:
        return self.loss_model.loss(n, d)

    def tokens_for_loss(self, n: float, target: float) -> float:
        return self.loss_model.tokens_for_loss(n, target)

    def describe(self) -> dict:
        return super().describe() | {
            "form": "N = k C^e, D = C/(6N); loss from Chinchilla approach 3",
            "params": {"k": self.k, "e": self.e},
        }


@dataclass(frozen=True)
class TokensPerParamLaw(Law):
    """D = k N; under C = 6ND that is N = sqrt(C / 6k). Losses from Chinchilla approach 3."""

    tokens_per_param: float = 20.0
    loss_model: ParametricLaw = field(default_factory=lambda: CHINCHILLA_APPROACH3)

    def allocate(self, c: float) -> tuple[float, float]:
        n = math.sqrt(c / (6.0 * self.tokens_per_param))
        return n, self.tokens_per_param * n

    def params_for_tokens(self, d: float) -> float:
        return d / self.tokens_per_param

    def loss(self, n: float, d: float) -> float:
        return self.loss_model.loss(n, d)

    def tokens_for_loss(self, n: float, target: float) -> float:
        return self.loss_model.tokens_for_loss(n, target)

    def describe(self) -> dict:
        return super().describe() | {
            "form": "D = k N; loss from Chinchilla approach 3",
            "params": {"tokens_per_param": self.tokens_per_param},
        }


@dataclass(frozen=True)
class KaplanLaw(Law):
    """Kaplan et al. 2020: L(N, D) = [(Nc/N)^(aN/aD) + Dc/D]^aD; N_opt = 1.3e9 (C/PF-day)^0.73 (non-embedding)."""

    alpha_n: float = 0.076
    alpha_d: float = 0.095
    n_c: float = 8.8e13
    d_c: float = 5.4e13
    n_coef: float = 1.3e9
    n_exp: float = 0.73

    def loss(self, n: float, d: float) -> float:
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d

    def allocate(self, c: float) -> tuple[float, float]:
        n = self.n_coef * (c / PF_DAY) ** self.n_exp
        return n, c / (6.0 * n)

    def params_for_tokens(self, d: float) -> float:
        # D = C/(6N), N = k (C/P)^e  =>  N^(1/e) = k^(1/e) (6 N D / P)  => N^(1/e - 1) = k^(1/e) 6 D / P
        return (self.n_coef ** (1 / self.n_exp) * 6.0 * d / PF_DAY) ** (1.0 / (1.0 / self.n_exp - 1.0))

    def describe(self) -> dict:
        return super().describe() | {
            "form": "[(Nc/N)^(aN/aD) + Dc/D]^aD; N_opt = 1.3e9 (C/PF-day)^0.73",
            "params": {"alpha_N": self.alpha_n, "alpha_D": self.alpha_d, "N_c": self.n_c, "D_c": self.d_c},
        }


CHINCHILLA_APPROACH3 = ParametricLaw(
    name="chinchilla-approach3",
    reference="Hoffmann et al. 2022, approach 3 (parametric fit)",
    param_convention="total",
)
CHINCHILLA_APPROACH1 = PowerLawAllocation(
    name="chinchilla",
    reference="Hoffmann et al. 2022, approach 1 (Table 3); loss from approach 3",
    param_convention="total",
)
EPOCH_AI = ParametricLaw(
    name="epoch",
    reference="Besiroglu et al. 2024 (Epoch AI), refit of Chinchilla approach 3",
    param_convention="total",
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
)
KAPLAN = KaplanLaw(
    name="kaplan",
    reference="Kaplan et al. 2020, eq. 1.5 and fig. 14",
    param_convention="non-embedding",
    fitted_range=dict(KAPLAN_RANGE),
)


def load_fitted(path: Path) -> ParametricLaw:
    """A law written by `run_sweep` (fitted_law.json): approach-3 form, its own range and convention."""
    try:
        data = json.loads(Path(path).read_text())
        p = data["params"]
        rng = data.get("fitted_range") or {"params": [1.0, 1e30], "tokens": [1.0, 1e30]}
        return ParametricLaw(
            name="fitted",
            reference=f"fitted by tinyfoundry plan sweep ({path})",
            param_convention=data.get("param_convention", "non-embedding"),
            fitted_range={k: tuple(v) for k, v in rng.items()},
            E=float(p["E"]),
            A=float(p["A"]),
            B=float(p["B"]),
            alpha=float(p["alpha"]),
            beta=float(p["beta"]),
        )
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"fitted_law: cannot read a fitted law from {path} ({e})") from None


def get_law(
    name: str, tokens_per_param: float = 20.0, fitted_path: Path | None = None, chinchilla_approach: int = 1
) -> Law:
    """The law named by PlanConfig.law."""
    if name == "chinchilla":
        return CHINCHILLA_APPROACH1 if chinchilla_approach == 1 else CHINCHILLA_APPROACH3
    if name == "epoch":
        return EPOCH_AI
    if name == "tokens-per-param":
        return TokensPerParamLaw(
            name="tokens-per-param",
            reference=f"D = {tokens_per_param:g} N (Chinchilla's rule of thumb); loss from approach 3",
            param_convention="total",
            tokens_per_param=tokens_per_param,
        )
    if name == "kaplan":
        return KAPLAN
    if name == "fitted":
        if fitted_path is None:
            raise ValueError("fitted_law: law 'fitted' needs the path of a fitted_law.json (from plan sweep)")
        return load_fitted(fitted_path)
    raise ValueError(f"law: unknown law, got {name!r}")

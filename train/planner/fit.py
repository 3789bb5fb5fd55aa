"""Fitting L(N, D) = E + A/N^alpha + B/D^beta to (N, D, loss) runs, as Chinchilla's approach 3.

Design and invariants
- Parametrise A = exp(a), B = exp(b), E = exp(e) and fit log L with
      LSE(a - alpha log N, b - beta log D, e)
  by minimising the Huber loss (delta = 1e-3) of the residuals in log space with L-BFGS-B (Hoffmann et al.
  2022, sec. 3.3 and appendix D.2). The objective is non-convex with long flat valleys, so we start from a grid
  (alpha, beta in 0..2, e in -1..1, a, b in 0..25, as the paper), keep the best `num_starts` grid points by
  objective and polish each; the best polished point wins. Analytic gradients keep each polish to milliseconds
  (with BLAS held to one thread: see `_one_blas_thread`).
- Bootstrap: resample the runs with replacement, refit (best grid starts + the full-data optimum as starts),
  report percentile intervals. With ~15 runs the intervals are wide on A and B and tighter on the exponents'
  ratio, which is what the allocation depends on.
- Pure numpy + scipy.optimize; nothing here trains anything.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass
class FitResult:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float

    @property
    def params(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in PARAM_NAMES}

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log-space residuals and its gradient w.r.t. theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t_ = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # 3 x P
    m = t_.max(axis=0)
    ex = np.exp(t_ - m)
    s = ex.sum(axis=0)
    pred = m + np.log(s)
    w = ex / s  # softmax weights, 3 x P
    r = pred - log_l
    absr = np.abs(r)
    quad = absr <= delta
    loss = np.where(quad, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum()
    g_r = np.where(quad, r, delta * np.sign(r))
    grad = np.array([
        (g_r * w[0]).sum(),
        (g_r * w[1]).sum(),
        (g_r * w[2]).sum(),
        -(g_r * w[0] * log_n).sum(),
        -(g_r * w[1] * log_d).sum(),
    ])
    return float(loss), grad


def _grid() -> np.ndarray:
    alphas = betas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array(list(itertools.product(abs_, abs_, es, alphas, betas)), dtype=np.float64)  # (a, b, e, al, be)


def _grid_objectives(grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                     delta: float) -> np.ndarray:
    a, b, e, al, be = (grid[:, i:i + 1] for i in range(5))
    t1 = a - al * log_n[None]
    t2 = b - be * log_d[None]
    t3 = np.broadcast_to(e, t1.shape)
    pred = np.logaddexp(np.logaddexp(t1, t2), t3)
    r = np.abs(pred - log_l[None])
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=1)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """L-BFGS-B does BLAS calls on 5-vectors; threaded OpenBLAS makes each one ~40x slower on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _polish(theta0: np.ndarray, log_n, log_d, log_l, delta) -> tuple[np.ndarray, float]:
    bounds = [(-10.0, 40.0), (-10.0, 40.0), (-5.0, 5.0), (0.0, 3.0), (0.0, 3.0)]
    res = minimize(_objective, theta0, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                   bounds=bounds, options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
    return res.x, float(res.fun)


def fit_law(n: np.ndarray, d: np.ndarray, loss: np.ndarray, num_starts: int = 32,
            delta: float = HUBER_DELTA, extra_starts: list[np.ndarray] | None = None) -> FitResult:
    """Best approach-3 fit over `num_starts` grid starts (plus `extra_starts`, in (a, b, e, alpha, beta))."""
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    if len(n) < 5:
        raise ValueError(f"runs: need at least 5 runs to fit 5 parameters, got {len(n)}")
    if np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0):
        raise ValueError("runs: params, tokens and losses must all be positive")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid = _grid()
    objs = _grid_objectives(grid, log_n, log_d, log_l, delta)
    starts = list(grid[np.argsort(objs)[:num_starts]]) + list(extra_starts or [])
    best_theta, best_obj = None, math.inf
    with _one_blas_thread():
        for s in starts:
            theta, obj = _polish(np.asarray(s, dtype=np.float64), log_n, log_d, log_l, delta)
            if obj < best_obj:
                best_theta, best_obj = theta, obj
    a, b, e, al, be = best_theta
    return FitResult(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(al), beta=float(be),
                     objective=best_obj)


def theta_of(fit: FitResult) -> np.ndarray:
    return np.array([math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta])


def bootstrap(n: np.ndarray, d: np.ndarray, loss: np.ndarray, best: FitResult, num_samples: int = 200,
              seed: int = 0, num_starts: int = 2, level: float = 0.95) -> dict:
    """Percentile intervals of each parameter (and of the allocation exponent beta/(alpha+beta))."""
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_samples):
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(idx)) < min(5, len(n) - 1):
            continue
        f = fit_law(n[idx], d[idx], loss[idx], num_starts=num_starts, extra_starts=[theta_of(best)])
        rows.append([f.E, f.A, f.B, f.alpha, f.beta, f.beta / (f.alpha + f.beta) if f.alpha + f.beta else 0.5])
    if not rows:
        return {"num_samples": 0, "level": level, "intervals": None}
    arr = np.array(rows)
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    names = list(PARAM_NAMES) + ["a_exponent"]
    return {
        "num_samples": len(rows),
        "level": level,
        "intervals": {
            k: [float(np.percentile(arr[:, i], lo_q)), float(np.percentile(arr[:, i], hi_q))]
            for i, k in enumerate(names)
        },
    }

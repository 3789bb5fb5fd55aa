"""IsoFLOP sweep: train tiny models at several budgets x sizes on the user's shards, fit L(N, D), draw it.

Design and invariants
- Runs: for each budget C, `num_sizes` shapes whose non-embedding params span `size_span` geometrically around
  the 20-tokens-per-param point (candidates.make_shape, so shapes follow the planner's rule), each trained for
  D = C / flops_per_token tokens (models.accounting: the exact cost, LM head and attention included). The loss
  recorded is the final val loss (fixed val windows), after a cosine schedule that ends exactly at D:
  Chinchilla's point that each run's schedule must match its length, or the fit is biased toward long runs.
- Fit: approach 3 (fit.py) on (N, D, loss), N in `param_convention` (default non-embedding: at this scale the
  embedding is most of a model and carries little capacity), with bootstrap intervals. The law is written as
  fitted_law.json (the `--law fitted` input: params, convention, fitted range, runs, intervals), with
  isoflop.png (loss vs N per budget with the fitted curves; right: each budget's best N and the fitted
  frontier).
- Held-out check: one extra run at `holdout_budget` (default 2x the largest budget: an extrapolation) at the
  fitted law's best shape; its prediction error is reported, never used in the fit.
- Every point trains with train's recipe (train/recipe.py: Muon + AdamW, weight decay, warmup + cosine, EMA,
  precision; `sweep_train_config`), so the fitted law describes the runs `train` makes. Backends: 'minimal'
  (default) runs it in memory (no checkpoints or loggers, which matters when each run is seconds long);
  'runner' uses train.run_train (a run dir per point). Both give the same loss for the same point.
- Every finished run is appended to out_dir/runs.jsonl, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models import ModelConfig
from train.planner import candidates as cands

if TYPE_CHECKING:
    from train.config import TrainConfig


@dataclass
class SweepConfig:
    """IsoFLOP sweep for `tinyfoundry plan sweep`."""

    budgets: list[float] = field(default_factory=lambda: [3e10, 1e11, 3e11])
    """Training budgets in FLOPs, one IsoFLOP curve each."""
    num_sizes: int = 5
    """Model sizes per budget."""
    size_span: float = 8.0
    """Ratio between the largest and smallest model of a budget (geometric spacing)."""
    tokens_per_param: float = 20.0
    """Centre of each budget's sizes: N with D = tokens_per_param x N under C = 6ND."""
    param_convention: Literal["non-embedding", "total"] = "non-embedding"
    """What N counts in the fit (and in the planner's 'fitted' law)."""
    seq_len: int = 64
    """Training sequence length."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 3e-3
    """Peak learning rate of the AdamW part of train's recipe (train.lr; Muon keeps train's muon_lr)."""
    min_steps: int = 30
    """Skip shapes whose run would be shorter than this many steps (too short to mean anything)."""
    num_val_tokens: int = 16384
    """Validation tokens (fixed windows from the val split) for each run's final loss."""
    holdout_budget: float = 0.0
    """Budget of the held-out check run; 0 means 2x the largest budget, -1 skips it."""
    num_bootstrap: int = 100
    """Bootstrap resamples for the parameter intervals."""
    num_starts: int = 32
    """Grid starting points polished by L-BFGS-B in the fit."""
    backend: Literal["minimal", "runner"] = "minimal"
    """'minimal': train's recipe in memory; 'runner': train.run_train (checkpoints and logs per run)."""
    num_threads: int = 1
    """torch threads for the runs (1: tiny models on a shared CPU ran 35x faster than with 2); 0 = torch default."""
    seed: int = 0
    """Seed for initialisation and data order."""

    def __post_init__(self) -> None:
        if not self.budgets or any(not (isinstance(b, (int, float)) and b > 0) for b in self.budgets):
            raise ValueError(f"budgets: need one or more positive FLOP budgets, got {self.budgets!r}")
        for name in ("num_sizes", "seq_len", "batch_size", "min_steps", "num_val_tokens", "num_starts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if self.num_sizes * len(self.budgets) < 5:
            raise ValueError(f"num_sizes: budgets x sizes must give >= 5 runs to fit 5 parameters, got {self.num_sizes}")
        if self.size_span <= 1:
            raise ValueError(f"size_span: must be > 1, got {self.size_span}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.num_bootstrap < 0:
            raise ValueError(f"num_bootstrap: must be >= 0, got {self.num_bootstrap}")


# ---------------------------------------------------------------------------------------------- training


def sweep_train_config(cfg: SweepConfig, num_tokens: int, seed: int) -> TrainConfig:
    """The TrainConfig of one sweep point: train's recipe (optimizer, schedule, EMA, precision defaults) at the
    sweep's shape, lr and length; validation and checkpoints only at the end."""
    from train import TrainConfig

    return TrainConfig(seed=seed, max_tokens=num_tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                       val_every_tokens=num_tokens * 10, ckpt_every_tokens=num_tokens * 10,
                       num_val_tokens=cfg.num_val_tokens, num_sample_tokens=0, progress_bar=False,
                       num_threads=cfg.num_threads)


def train_minimal(model_cfg: ModelConfig, num_tokens: int, train_tokens: np.ndarray, val_tokens: np.ndarray,
                  cfg: SweepConfig, seed: int) -> dict:
    """Train `model_cfg` for num_tokens tokens with train's recipe, in memory; returns final val loss, tokens, wall time.

    The same run as `train` with sweep_train_config on shards holding these tokens: same loss (tests/train)."""
    from train.data import StreamDataModule, TokenStream
    from train.recipe import train_in_memory

    t0 = time.perf_counter()
    tc = sweep_train_config(cfg, num_tokens, seed)
    dm = StreamDataModule(TokenStream.from_tokens(train_tokens), TokenStream.from_tokens(val_tokens), cfg.batch_size,
                          cfg.seq_len, seed, tc.data_order, tc.num_val_tokens)
    res = train_in_memory(tc, dm, num_tokens, model_cfg=model_cfg)
    return {"final_val_loss": res.final_val_loss, "tokens": res.tokens, "wall_s": time.perf_counter() - t0}


def train_runner(model_cfg: ModelConfig, num_tokens: int, shards_dir: Path, run_dir: Path, cfg: SweepConfig,
                 seed: int) -> dict:
    """One sweep point through train.run_train (a run directory with checkpoints and logs)."""
    from train import run_train

    s = run_train(sweep_train_config(cfg, num_tokens, seed), model_cfg, shards_dir, run_dir)
    return {"final_val_loss": s["final_val_loss"], "tokens": s["tokens"], "wall_s": s["wall_s"]}


# ---------------------------------------------------------------------------------------------- sweep


def sweep_shapes(cfg: SweepConfig, vocab_size: int) -> list[tuple[float, ModelConfig]]:
    """(budget, shape) for every run of the sweep, de-duplicated per budget, too-short runs dropped."""
    out = []
    for c in cfg.budgets:
        centre = math.sqrt(c / (6.0 * cfg.tokens_per_param))
        seen = set()
        for i in range(cfg.num_sizes):
            frac = i / (cfg.num_sizes - 1) - 0.5 if cfg.num_sizes > 1 else 0.0
            n = centre * cfg.size_span ** frac
            shape = cands.make_shape(n, cfg.param_convention, vocab_size, cfg.seq_len)
            key = (shape.dim, shape.num_layers)
            if key in seen:
                continue
            seen.add(key)
            tokens = c / cands.train_flops_per_token(shape, cfg.seq_len)
            if tokens < cfg.min_steps * cfg.batch_size * cfg.seq_len:
                continue
            out.append((c, shape))
    return out


def _law_n(shape: ModelConfig, convention: str) -> int:
    return int(cands.law_params(cands.counts(shape), convention))


def _run_key(c: float, shape: ModelConfig, cfg: SweepConfig) -> str:
    return f"C={c:.4g} dim={shape.dim} L={shape.num_layers} V={shape.vocab_size} T={cfg.seq_len} B={cfg.batch_size} lr={cfg.lr:g}"


@dataclass
class _SweepRuns:
    """Trains one sweep point (or returns it from runs.jsonl); every finished run is appended there, fsynced,
    so an interrupted sweep resumes where it stopped."""

    cfg: SweepConfig
    shards_dir: Path
    out_dir: Path
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    done: dict[str, dict] = field(default_factory=dict)

    @property
    def runs_path(self) -> Path:
        return self.out_dir / "runs.jsonl"

    def load_done(self) -> None:
        if self.runs_path.exists():
            for line in self.runs_path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.done[r["key"]] = r

    def __call__(self, c: float, shape: ModelConfig, role: str) -> dict:
        cfg = self.cfg
        key = _run_key(c, shape, cfg) + (" holdout" if role == "holdout" else "")
        if key in self.done:
            return self.done[key]
        fpt = cands.train_flops_per_token(shape, cfg.seq_len)
        tokens = int(c / fpt)
        if cfg.backend == "runner":
            run_dir = self.out_dir / "runs" / key.replace(" ", "_")
            res = train_runner(shape, tokens, self.shards_dir, run_dir, cfg, cfg.seed)
        else:
            res = train_minimal(shape, tokens, self.train_tokens, self.val_tokens, cfg, cfg.seed)
        c_count = cands.counts(shape)
        rec = {"key": key, "role": role, "budget": c, "model": shape.to_dict(), "num_params": c_count["total"],
               "num_nonembedding_params": c_count["active_non_embedding"],
               "law_params": _law_n(shape, cfg.param_convention), "flops_per_token": fpt,
               "num_tokens": res["tokens"], "flops": fpt * res["tokens"],
               "epochs": res["tokens"] / len(self.train_tokens),
               **{k: res[k] for k in ("final_val_loss", "wall_s")}}
        with open(self.runs_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = rec
        return rec


def _fit(cfg: SweepConfig, records: list[dict], runs: _SweepRuns,
         vocab: int) -> tuple[dict[str, Any], Any, np.ndarray]:
    """Fit L(N, D) to the sweep's runs (with bootstrap intervals); returns (result dict, law, N of each run)."""
    from train.planner.fit import bootstrap, fit_law
    from train.planner.laws import ParametricLaw

    n = np.array([r["law_params"] for r in records], dtype=np.float64)
    d = np.array([r["num_tokens"] for r in records], dtype=np.float64)
    loss = np.array([r["final_val_loss"] for r in records], dtype=np.float64)
    best = fit_law(n, d, loss, num_starts=cfg.num_starts)
    boot = bootstrap(n, d, loss, best, num_samples=cfg.num_bootstrap, seed=cfg.seed) if cfg.num_bootstrap else None
    law = ParametricLaw(name="fitted", reference="sweep", param_convention=cfg.param_convention,
                        E=best.E, A=best.A, B=best.B, alpha=best.alpha, beta=best.beta)
    fit_resid = (best.predict(n, d) - loss) / loss
    result: dict[str, Any] = {
        "form": "E + A/N^alpha + B/D^beta",
        "params": best.params,
        "param_convention": cfg.param_convention,
        "fitted_range": {"params": [float(n.min()), float(n.max())], "tokens": [float(d.min()), float(d.max())]},
        "bootstrap": boot,
        "allocation": {"a": best.beta / (best.alpha + best.beta), "b": best.alpha / (best.alpha + best.beta)},
        "fit": {"huber_objective": best.objective, "max_abs_rel_residual": float(np.abs(fit_resid).max()),
                "rms_rel_residual": float(np.sqrt(np.mean(fit_resid**2)))},
        "data": {"shards_dir": str(runs.shards_dir), "vocab_size": vocab,
                 "train_tokens": int(len(runs.train_tokens)), "val_tokens": int(len(runs.val_tokens))},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "runs": records,
    }
    return result, law, n


def run_sweep(cfg: SweepConfig, shards_dir: Path, out_dir: Path) -> dict:
    """Run (or resume) the sweep, fit the law, write out_dir/fitted_law.json + isoflop.png; returns the law dict."""
    from tqdm import tqdm

    from data_pipelines.tokenize.shards import ShardIndex
    from train.planner.plan import _write_json_atomic

    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    idx = ShardIndex.load(shards_dir)
    train_tokens = np.concatenate([np.asarray(a) for a in idx.open("train")])
    val_tokens = np.concatenate([np.asarray(a) for a in idx.open("val")])
    if len(val_tokens) < cfg.seq_len + 1:
        raise ValueError(f"{shards_dir}: val split has {len(val_tokens)} tokens, fewer than seq_len + 1")
    vocab = idx.vocab_size
    run_one = _SweepRuns(cfg, shards_dir, out_dir, train_tokens, val_tokens)
    run_one.load_done()

    t0 = time.perf_counter()
    plan_runs = sweep_shapes(cfg, vocab)
    if len(plan_runs) < 5:
        raise ValueError(
            f"budgets: only {len(plan_runs)} distinct runs of >= min_steps steps at this vocabulary ({vocab}); "
            "a 5-parameter fit needs >= 5: raise the budgets, num_sizes or size_span"
        )
    records = []
    for c, shape in tqdm(plan_runs, desc="isoflop sweep", unit="run", file=sys.stderr):
        records.append(run_one(c, shape, "sweep"))
    result, law, n = _fit(cfg, records, run_one, vocab)
    hb = cfg.holdout_budget or 2 * max(cfg.budgets)
    if hb > 0:
        result["holdout"] = _holdout(cfg, law, hb, n, vocab, run_one)
    result["wall_s"] = time.perf_counter() - t0
    result["train_wall_s"] = float(sum(r["wall_s"] for r in run_one.done.values()))
    _write_json_atomic(out_dir / "fitted_law.json", result)
    plot_isoflops(result, law, out_dir / "isoflop.png", vocab, cfg)
    return result


def _holdout(cfg: SweepConfig, law: Any, budget: float, n: np.ndarray, vocab: int, run_one: Any) -> dict:
    """The held-out run: the fitted law's best shape at an unseen (by default larger) budget, and its error."""
    grid = [cands.make_shape(x, cfg.param_convention, vocab, cfg.seq_len) for x in np.geomspace(n.min() / 2, n.max() * 2, 12)]
    uniq = {(s.dim, s.num_layers): s for s in grid}.values()

    def pred(s: ModelConfig) -> float:
        return law.loss(_law_n(s, cfg.param_convention), budget / cands.train_flops_per_token(s, cfg.seq_len))

    rec = run_one(budget, min(uniq, key=pred), "holdout")
    p = law.loss(rec["law_params"], rec["num_tokens"])
    return {"budget": budget, "model": rec["model"], "law_params": rec["law_params"], "num_tokens": rec["num_tokens"],
            "predicted_loss": p, "final_val_loss": rec["final_val_loss"],
            "rel_error": (p - rec["final_val_loss"]) / rec["final_val_loss"]}


def plot_isoflops(result: dict, law: Any, path: Path, vocab: int, cfg: SweepConfig) -> None:
    """Left: loss vs N per budget (points) with the fitted law along each IsoFLOP; right: best N vs C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["role"] == "sweep"]
    budgets = sorted({r["budget"] for r in runs})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))
    ns = np.geomspace(min(r["law_params"] for r in runs) / 2, max(r["law_params"] for r in runs) * 2, 60)
    shapes = [cands.make_shape(x, cfg.param_convention, vocab, cfg.seq_len) for x in ns]
    fpts = np.array([cands.train_flops_per_token(s, cfg.seq_len) for s in shapes])
    nlaw = np.array([_law_n(s, cfg.param_convention) for s in shapes])
    best_n = []
    for c, col in zip(budgets, colors):
        pts = [r for r in runs if r["budget"] == c]
        ax1.scatter([r["law_params"] for r in pts], [r["final_val_loss"] for r in pts], color=col, zorder=3,
                    label=f"C={c:.2g}")
        curve = np.array([law.loss(a, c / f) for a, f in zip(nlaw, fpts)])
        order = np.argsort(nlaw)
        ax1.plot(nlaw[order], curve[order], color=col, lw=1)
        best_n.append(nlaw[int(np.argmin(curve))])
        emp = min(pts, key=lambda r: r["final_val_loss"])
        ax2.scatter([c], [emp["law_params"]], color=col, zorder=3)
    if "holdout" in result:
        h = result["holdout"]
        ax1.scatter([h["law_params"]], [h["final_val_loss"]], marker="*", s=160, color="red",
                    label=f"held-out C={h['budget']:.2g} (pred {h['predicted_loss']:.3f})", zorder=4)
    ax1.set_xscale("log")
    ax1.set_xlabel(f"N ({cfg.param_convention} params)")
    ax1.set_ylabel("final val loss (nats/token)")
    ax1.set_title("IsoFLOP curves: runs and fitted L(N, D)")
    ax1.legend(fontsize=7)
    cs = np.geomspace(min(budgets) / 3, max(budgets) * 10, 50)
    ax2.plot(cs, [law.allocate(c)[0] for c in cs], "k-", lw=1, label="fitted frontier (C = 6ND)")
    ax2.plot(budgets, best_n, "k--", lw=1, label="fitted best shape (exact FLOPs)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training FLOPs C")
    ax2.set_ylabel("compute-optimal N")
    p = result["params"]
    ax2.set_title(f"E={p['E']:.2f} A={p['A']:.3g} B={p['B']:.3g} a={p['alpha']:.2f} b={p['beta']:.2f}", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

"""Prune-30 + distillation recovery vs prune-30 + plain recovery at equal recovery tokens (issue 19, item 5).

One process, side by side, on ../shared/data/tinystories: tokenizes the stories (BPE), trains a small Llama with
train's recipe for a fixed number of tokens, prunes 30% (structured: heads and MLP neurons, or magnitude: 30% of the
block weights), then recovers two copies through the same prune pass and the same recipe (train/recover.py) for the
same tokens, one on cross-entropy ('plain'), one distilled from the unpruned model ('distill'), and scores every
model on held-out stories (bits per byte).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_distill_recovery.py [--method structured|magnitude]
        [--train-tokens N] [--recovery-tokens N] [--alpha A] [--temperature T] [--out DIR]

The default run takes about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories" / "tinystories_2000.txt"
MODEL = {"vocab_size": 1024, "dim": 96, "num_layers": 4, "num_heads": 3, "max_seq_len": 128}


def build_shards(out: Path, num_stories: int = 2000) -> Path:
    """Tokenize the shared stories (vocab 1024, 5% held out) with the tokenize stage; returns the shards folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipelines.tokenize import TokenizeConfig, run_tokenize

    if (out / "shards").is_dir():
        return out / "shards"
    text = DATA.read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:num_stories]
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": stories, "id": [f"s{i}" for i in range(len(stories))]}), out / "docs.parquet")
    run_tokenize(TokenizeConfig(vocab_size=MODEL["vocab_size"], val_fraction=0.05, progress=False),
                 [out / "docs.parquet"], out / "tokenizer", out / "shards", seed=0)
    return out / "shards"


def train_base(shards: Path, tokens: int, seed: int) -> torch.nn.Module:
    from models import ModelConfig
    from train import TrainConfig
    from train.data import ShardDataModule
    from train.recipe import train_in_memory

    cfg = TrainConfig(seed=seed, max_tokens=tokens, batch_size=16, seq_len=128, lr=4e-3, num_sample_tokens=0,
                      progress_bar=False)
    dm = ShardDataModule(shards, cfg.batch_size, cfg.seq_len, seed, num_val_tokens=128)
    return train_in_memory(cfg, dm, tokens, model_cfg=ModelConfig(**MODEL)).model


def compare(base: torch.nn.Module, shards: Path, method: str = "structured", recovery_tokens: int = 50_000,
            alpha: float = 0.5, temperature: float = 2.0, seed: int = 0, seq: int = 128,
            num_scored: int | None = None) -> dict:
    """Prune `base` 30% with `method`, then no recovery / plain / distill recovery at equal tokens; held-out bpb of
    each (the val split's first 64 windows calibrate, the rest is scored)."""
    from data_pipelines.tokenize.shards import ShardIndex
    from models.compress.calibration import windows
    from models.compress.passes import PASSES, PassContext
    from models.compress.report import eval_bpb
    from train.recover import recover, recovery_config

    idx = ShardIndex.load(shards)
    val = torch.from_numpy(np.concatenate(idx.open("val")).astype(np.int64))
    bpt = float(idx.bytes_per_token("val"))
    seq = min(seq, int(base.cfg.max_seq_len))
    calib, scored = val[: 64 * seq], val[64 * seq:]
    if num_scored:
        scored = scored[:num_scored]

    def bpb(m: torch.nn.Module) -> float:
        return eval_bpb(m, scored, bpt, seq, 16)

    opts = ({"heads_fraction": 0.3, "mlp_fraction": 0.3} if method == "structured" else {"sparsity": 0.3})
    tc = recovery_config(seed=seed, max_tokens=recovery_tokens, batch_size=16, seq_len=seq,
                         distill_alpha=alpha, distill_temperature=temperature)
    calib_NT = windows(calib, seq, calib.numel())
    res: dict = {"method": method, "recovery_tokens": recovery_tokens, "alpha": alpha, "temperature": temperature,
                 "base_bpb": bpb(base)}
    for mode in ("none", "plain", "distill"):
        p = PASSES[method](PASSES[method].Options(**opts, recover=mode != "none",
                                                   recovery="plain" if mode == "none" else mode))
        t1 = time.perf_counter()
        ctx = PassContext(calib_NT, 8, base, recover=lambda s, t: recover(s, t, shards, tc))
        model = p.apply(copy.deepcopy(base), ctx).model
        res[f"{mode}_bpb"] = bpb(model)
        res[f"{mode}_s"] = round(time.perf_counter() - t1, 1)
        res[f"{mode}_params"] = sum(q.numel() for q in model.parameters())
    res["distill_over_plain"] = res["distill_bpb"] / res["plain_bpb"]
    return res


def recovery_rows(model_dir: Path, shards: Path, out_dir: Path, threads: int = 1,
                  recovery_tokens: int = 50_000) -> list[dict]:
    """bench_lowbit's rows: prune-30 (structured) of a trained model dir, no / plain / distill recovery."""
    from models import load_model

    torch.set_num_threads(max(1, threads))
    base = load_model(Path(model_dir))[0].eval()
    r = compare(base, Path(shards), "structured", recovery_tokens)
    rows = []
    for mode, label in (("none", "no recovery"), ("plain", "plain recovery"), ("distill", "distill recovery")):
        rows.append({"name": f"prune-30 structured, {label}", "bpb": r[f"{mode}_bpb"], "params": r[f"{mode}_params"],
                     "bytes": 4 * r[f"{mode}_params"], "delta_bpb": r[f"{mode}_bpb"] - r["base_bpb"],
                     "recovery_tokens": recovery_tokens if mode != "none" else 0})
    return rows


def bench_distill_recovery(method: str = "structured", train_tokens: int = 400_000,
                           recovery_tokens: int = 50_000, alpha: float = 0.5, temperature: float = 2.0,
                           out: Path | None = None, seed: int = 0) -> dict:
    """Held-out bpb of the base model, the pruned model, plain and distill recovery; prints them and the ratio."""
    out = Path(out or tempfile.mkdtemp(prefix="bench_distill_recovery_"))
    shards = build_shards(out)
    t0 = time.perf_counter()
    base = train_base(shards, train_tokens, seed).eval()
    t_train = time.perf_counter() - t0
    res = {"train_tokens": train_tokens, "train_s": round(t_train, 1),
           **compare(base, shards, method, recovery_tokens, alpha, temperature, seed)}
    print(f"prune-30 ({method}), base trained on {train_tokens:,} tokens in {t_train:.0f} s; recovery "
          f"{recovery_tokens:,} tokens each (alpha {alpha}, T {temperature})")
    print(f"held-out bpb: base {res['base_bpb']:.4f} | pruned, no recovery {res['none_bpb']:.4f} | "
          f"plain recovery {res['plain_bpb']:.4f} ({res['plain_s']:.0f} s) | "
          f"distill recovery {res['distill_bpb']:.4f} ({res['distill_s']:.0f} s)")
    print(f"distill / plain bpb ratio: {res['distill_over_plain']:.4f} "
          f"({'distill better' if res['distill_over_plain'] < 1 else 'plain better'})")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["structured", "magnitude"], default="structured")
    ap.add_argument("--train-tokens", type=int, default=400_000)
    ap.add_argument("--recovery-tokens", type=int, default=50_000)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    bench_distill_recovery(a.method, a.train_tokens, a.recovery_tokens, a.alpha, a.temperature, a.out, a.seed)


if __name__ == "__main__":
    main()

"""Mixture of experts on the clock: dense and MoE presets trained for the SAME wall time, held-out bpb compared.

Why: a MoE buys quality per FLOP, but on a small CPU its dispatch (sort, gather, scatter-add, per-expert GEMMs)
may cost more time than the FLOPs it saves; nanochat's MoE lost on wall-clock (MFU 46% -> 35%). This measures ours.

Setup: the bench_vs_llama2c split of ../shared/data/tinystories (90% train / 10% held-out stories, seeded), a
byte-level BPE trained on the training split (vocab 2048), windows of seq 256, batch 16. Each contender (a preset,
vocab and context overridden) trains with the trainer's default optimizer (Muon + AdamW, `train.system.make_optimizer`)
and warmup + cosine schedule, where the schedule runs on the contender's own elapsed training time instead of
steps, so every run gets the whole schedule in its budget. The contenders take turns, one optimizer step at a time,
always the one with the least training time so far (the machine is shared: load hits every contender alike);
evaluation is outside the clock. The MoE variants below are dispatch / granularity choices of `models.moe`.

`--steps N` trains every contender for the same N steps (equal tokens) instead: the bpb each reaches per token,
which with the step times says whether a MoE could win on the clock at all (its per-token gain must exceed the
time it loses per token).

    .venv/bin/python benchmarks/bench_moe_clock.py [--seconds 120] [--threads 1] [--contenders 1m,moe-2m-a1m]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from bench_vs_llama2c import heldout_bpb, split_stories, token_stream, train_bpe  # noqa: E402

from models import Transformer, get_preset  # noqa: E402
from models.accounting import count_params, flops_per_token  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.system import make_optimizer  # noqa: E402

VARIANTS = {
    "moe-e4": dict(num_experts=4, num_experts_per_tok=1, moe_hidden_dim=256),  # coarse: 4 x dense width, top-1
    "moe-e8-top1": dict(num_experts=8, num_experts_per_tok=1, moe_hidden_dim=256),
    "moe-e8-top2-h128": dict(num_experts=8, num_experts_per_tok=2, moe_hidden_dim=128),  # fine, dense's active FLOPs
}
"""Extra MoE shapes on the 1m dense model's trunk (name -> overrides of the '1m' preset)."""


def build(name: str, vocab: int, seq_len: int) -> Transformer:
    if name in VARIANTS:
        cfg = get_preset("1m", vocab_size=vocab, max_seq_len=seq_len, **VARIANTS[name])
    else:
        cfg = get_preset(name, vocab_size=vocab, max_seq_len=seq_len)
    return Transformer(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="training seconds per contender")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--contenders", default="1m,moe-2m-a1m,moe-e4", help=f"presets or {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=0, help="equal steps (tokens) per contender instead of equal seconds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_docs, val_docs = split_stories(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(train_bpe(train_docs, 2048, Path(tmp) / "tok.json")))
    tr, _ = token_stream(tok, train_docs)
    va, va_bytes = token_stream(tok, val_docs)
    vocab, T, B = tok.get_vocab_size(), args.seq_len, args.batch
    tc = TrainConfig()
    runs = []
    for name in args.contenders.split(","):
        torch.manual_seed(args.seed)
        model = build(name, vocab, T)
        opt = make_optimizer(model, tc, "cpu")
        for g in opt.param_groups:
            g["peak_lr"] = g["lr"]
        p = count_params(model.cfg)
        runs.append({"name": name, "model": model, "opt": opt, "elapsed": 0.0, "steps": 0, "loss": float("nan"),
                     "gen": torch.Generator().manual_seed(args.seed), "params": p,
                     "fpt": flops_per_token(model.cfg, T)})
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:.0f} s of training"
    print(f"{len(tr):,} train tokens, {len(va):,} held-out; batch {B} x {T}, {args.threads} threads, "
          f"{budget} each, {args.precision}, contenders take turns step by step")

    def progress(r: dict) -> float:
        """Share of the contender's budget spent: its schedule position, and who steps next (the least)."""
        return r["steps"] / args.steps if args.steps else r["elapsed"] / args.seconds

    def lr_mult(frac: float) -> float:
        if frac < tc.warmup_frac:
            return (frac + 1e-3) / tc.warmup_frac
        t = (frac - tc.warmup_frac) / (1 - tc.warmup_frac)
        return tc.min_lr_ratio + 0.5 * (1 + math.cos(math.pi * min(1.0, t))) * (1 - tc.min_lr_ratio)

    warm = torch.randint(0, vocab, (B, T + 1))
    for r in runs:  # one untimed step each: first-call allocations and kernel selection are not training
        r["model"](warm[:, :-1], targets_BT=warm[:, 1:]).loss.backward()
        r["opt"].zero_grad(set_to_none=True)
    t_wall = time.time()
    while True:
        live = [r for r in runs if progress(r) < 1.0]
        if not live:
            break
        r = min(live, key=progress)
        model, opt = r["model"], r["opt"]
        model.train()
        m = lr_mult(progress(r))
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * m
        starts = torch.randint(0, len(tr) - T - 1, (B,), generator=r["gen"])
        x = torch.stack([tr[s:s + T + 1] for s in starts.tolist()]).long()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(x[:, :-1], targets_BT=x[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
        opt.step()
        r["elapsed"] += time.perf_counter() - t0
        r["steps"] += 1
        r["loss"] = float(loss.detach())
    print(f"(wall {time.time() - t_wall:.0f} s for all contenders)")
    base = None
    print("\n| model | params total / active | steps | tokens | tokens/s | time per token vs dense | train FLOPs | "
          "held-out bpb | vs dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_tps = None
    for r in runs:
        with torch.no_grad():
            bpb = heldout_bpb(r["model"], va, va_bytes, T)
        base = base or bpb
        tokens = r["steps"] * B * T
        p = r["params"]
        tps = tokens / r["elapsed"]
        base_tps = base_tps or tps
        print(f"| {r['name']} | {p['total'] / 1e6:.2f}M / {p.get('active', p['total']) / 1e6:.2f}M | {r['steps']} | "
              f"{tokens:,} | {tps:,.0f} | {base_tps / tps:.3f}x | {r['fpt'] * tokens:.2e} | {bpb:.4f} | "
              f"{bpb / base:.3f}x |")
    print("goal: MoE <= 0.97x dense at equal wall time" + (" (this run: equal tokens)" if args.steps else ""))


if __name__ == "__main__":
    main()

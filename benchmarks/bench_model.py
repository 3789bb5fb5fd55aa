"""Model throughput on this CPU, side by side in one process, printed as ratios.

1. Dense: forward + backward tokens/s of `models.Transformer` against the same shape written the plain
   nanoGPT way (one file, fused qkv and gate/up projections, `F.rms_norm`, RoPE from a precomputed table),
   in fp32 and in bf16 autocast. Ratio ~1 means our readable layers cost nothing.
2. MoE: an 8-expert top-2 model against the dense model with the same active params (dense MLP width
   = 2 x expert width), one training step (forward + backward, then AdamW, timed apart); target MoE step
   <= 1.3x dense.
   Also the MoE dispatch variants: grouped (torch._grouped_mm), per-expert segments, and the loop reference.
3. Generation: `models.generate` (KV cache, batched) against re-running the whole sequence every step (greedy,
   same tokens), new tokens/s.

Timing: the contenders alternate (A B A B ...) and the median of the repeats is kept, because the CPU is shared.

    .venv/bin/python benchmarks/bench_model.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ModelConfig, Transformer, get_preset  # noqa: E402
from models import moe as moe_mod  # noqa: E402


# ------------------------------------------------------------------ the plain nanoGPT-style reference
class NanoAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h, self.g, self.k = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.c_attn = nn.Linear(cfg.dim, (self.h + 2 * self.g) * self.k, bias=False)
        self.c_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([self.h * self.k, self.g * self.k, self.g * self.k], dim=2)
        q = q.view(B, T, self.h, self.k).transpose(1, 2)  # (B, h, T, k)
        k = k.view(B, T, self.g, self.k).transpose(1, 2)
        v = v.view(B, T, self.g, self.k).transpose(1, 2)

        def rope(t: torch.Tensor) -> torch.Tensor:
            t1, t2 = t.chunk(2, dim=-1)
            return (t * cos + torch.cat((-t2, t1), dim=-1) * sin).to(t.dtype)

        q, k = rope(q), rope(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.g != self.h)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 2 * hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(F.silu(gate) * up)


class NanoBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps), nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn, self.mlp = NanoAttention(cfg), NanoMLP(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class NanoLlama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.h = nn.ModuleList(NanoBlock(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
        f = torch.outer(torch.arange(cfg.max_seq_len).float(), inv)
        self.register_buffer("cos", torch.cat((f, f), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((f, f), -1).sin(), persistent=False)
        for n, p in self.named_parameters():
            std = 0.02 / math.sqrt(2 * cfg.num_layers) if n.endswith("c_proj.weight") else 0.02
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx)
        for block in self.h:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


# ------------------------------------------------------------------ timing
def alternate(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved so load spikes hit every contender."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(model: nn.Module, idx: torch.Tensor, bf16: bool, ours: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(idx[:, :-1], idx[:, 1:]).loss if ours else model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def train_parts(model: Transformer, idx: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward + backward, AdamW step): timed separately so optimizer cost over all experts shows."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def fb() -> None:
        opt.zero_grad(set_to_none=True)
        model(idx[:, :-1], idx[:, 1:]).loss.backward()

    def step() -> None:
        opt.step()

    fb()  # grads exist before the first timed step
    return fb, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (~1 min)")
    ap.add_argument("--only", choices=("all", "dense", "moe", "gen"), default="all", help="run one section")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared box, no spin-waits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 3 if args.quick else 5
    preset = "1m" if args.quick else "3m"
    B, T = (4, 128) if args.quick else (4, 256)
    cfg = get_preset(preset, max_seq_len=T)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {B} x seq {T}, median of {repeats}")

    if args.only in ("all", "dense"):
        bench_dense(cfg, preset, B, T, repeats)
    if args.only in ("all", "moe"):
        bench_moe(args.quick, B, T, repeats)
    if args.only in ("all", "gen"):
        bench_generate(preset, args.quick)


def bench_generate(preset: str, quick: bool) -> None:
    from models.generate import generate

    cfg = get_preset(preset)
    model = Transformer(cfg).eval()
    B, P, N = (4, 16, 32) if quick else (8, 32, 64)
    prompts = torch.randint(3, cfg.vocab_size, (B, P)).tolist()

    def uncached() -> list[list[int]]:
        seq = torch.tensor(prompts)
        with torch.no_grad():
            for _ in range(N):
                nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
        return seq[:, P:].tolist()

    out: dict[str, list[list[int]]] = {}
    fns = {
        "cached": lambda: out.__setitem__(
            "cached", generate(model, prompts, max_new_tokens=N, temperature=0)
        ),
        "uncached": lambda: out.__setitem__("uncached", uncached()),
    }
    t = alternate(fns, 3)
    same = out["cached"] == out["uncached"]
    print(f"\n== generation '{preset}', {B} prompts x {P} tokens, {N} new tokens each, greedy")
    print(
        f"KV cache {B * N / t['cached']:7.0f} tok/s   no cache {B * N / t['uncached']:7.0f} tok/s   "
        f"speed-up {t['uncached'] / t['cached']:.2f}x   same tokens: {same}"
    )


def bench_dense(cfg: ModelConfig, preset: str, B: int, T: int, repeats: int) -> None:
    print(f"\n== dense '{preset}' ({sum(p.numel() for p in Transformer(cfg).parameters()) / 1e6:.2f}M): "
          "fwd+bwd tokens/s, ours vs nanoGPT-style")  # fmt: skip
    ours, nano = Transformer(cfg), NanoLlama(cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in nano.parameters())
    idx = torch.randint(0, cfg.vocab_size, (B, T + 1))
    for bf16 in (False, True):
        fns = {"ours": fwd_bwd(ours, idx, bf16, True), "nano": fwd_bwd(nano, idx, bf16, False)}
        t = alternate(fns, 3 if bf16 else repeats)  # CPU bf16 is ~10x slower here: fewer repeats
        tag = "bf16" if bf16 else "fp32"
        print(f"{tag}: ours {B * T / t['ours']:9.0f} tok/s   nanoGPT-style {B * T / t['nano']:9.0f} tok/s   "
              f"ours/nano speed = {t['nano'] / t['ours']:.2f}x")  # fmt: skip


def bench_moe(quick: bool, B: int, T: int, repeats: int) -> None:
    dim, layers, heads, e_hidden = (96, 4, 6, 96) if quick else (256, 4, 8, 352)
    dense_cfg = ModelConfig(vocab_size=4096, dim=dim, num_layers=layers, num_heads=heads, hidden_dim=2 * e_hidden,
                            max_seq_len=T)  # fmt: skip
    moe_cfg = ModelConfig(vocab_size=4096, dim=dim, num_layers=layers, num_heads=heads, max_seq_len=T,
                          num_experts=8, num_experts_per_tok=2, moe_hidden_dim=e_hidden)  # fmt: skip
    from models.accounting import count_params

    pd, pm = count_params(dense_cfg), count_params(moe_cfg)
    print(f"\n== MoE 8x{e_hidden} top-2 ({pm['total'] / 1e6:.2f}M total, {pm['active'] / 1e6:.2f}M active) vs "
          f"dense MLP {2 * e_hidden} ({pd['total'] / 1e6:.2f}M): train step (fwd+bwd+AdamW), fp32")  # fmt: skip
    dense, moe = Transformer(dense_cfg), Transformer(moe_cfg)
    idx = torch.randint(0, 4096, (B, T + 1))
    (d_fb, d_opt), (m_fb, m_opt) = train_parts(dense, idx), train_parts(moe, idx)
    t = alternate({"dense_fb": d_fb, "dense_opt": d_opt, "moe_fb": m_fb, "moe_opt": m_opt}, repeats + 2)
    d_step, m_step = t["dense_fb"] + t["dense_opt"], t["moe_fb"] + t["moe_opt"]
    ratio = m_step / d_step
    print(f"fwd+bwd: dense {t['dense_fb'] * 1e3:6.0f} ms  MoE {t['moe_fb'] * 1e3:6.0f} ms  "
          f"({t['moe_fb'] / t['dense_fb']:.2f}x);  AdamW: dense {t['dense_opt'] * 1e3:4.0f} ms  "
          f"MoE {t['moe_opt'] * 1e3:4.0f} ms")  # fmt: skip
    print(f"step: dense {d_step * 1e3:6.0f} ms  MoE {m_step * 1e3:6.0f} ms  MoE/dense = {ratio:.2f}x "
          f"(target <= 1.30x: {'met' if ratio <= 1.3 else 'NOT met'})")  # fmt: skip

    print("\n== MoE dispatch variants, fwd+bwd fp32 (same weights)")
    variants: dict[str, Callable[[], None]] = {}
    loop_model = Transformer(ModelConfig(**{**moe_cfg.to_dict(), "moe_impl": "loop"}))
    loop_model.load_state_dict(moe.state_dict())
    variants["grouped (_grouped_mm)"] = fwd_bwd(moe, idx, False, True)
    real_ok = moe_mod._grouped_mm_ok

    def segments() -> None:
        moe_mod._grouped_mm_ok = lambda x: False  # per-expert matmuls on contiguous segments
        try:
            fwd_bwd(moe, idx, False, True)()
        finally:
            moe_mod._grouped_mm_ok = real_ok

    variants["grouped (segments)"] = segments
    variants["loop reference"] = fwd_bwd(loop_model, idx, False, True)
    t = alternate(variants, repeats)
    base = t["grouped (_grouped_mm)"]
    for k, v in t.items():
        print(f"{k:24s} {v * 1e3:7.0f} ms   {v / base:.2f}x")


if __name__ == "__main__":
    main()

"""One training step of tinyfoundry's Transformer against nanoGPT's real `model.py`, side by side, as ratios.

Both train the same shape (dim 288, 6 layers, 6 heads, seq 256, vocab 4096, batch 8; ~7M params) with their own
default recipe: nanoGPT's `GPT` with `configure_optimizers` (AdamW) and tinyfoundry's `Transformer` with
`train.system.make_optimizer` under the default `TrainConfig` (Muon + AdamW), plus AdamW alone for reference.
A step = zero grads, forward + backward (under bf16 autocast for the bf16 rows), clip the gradient norm to 1.0
(both trainers' default), optimizer step. nanoGPT's model.py is loaded at run time from a folder you pass
(`git clone https://github.com/karpathy/nanoGPT`); it is never copied into this repository.

Timing: the contenders alternate step by step (A B C A B C ...) and the median is kept, because the CPU is shared.
`--compiled` adds both models under torch.compile (nanoGPT's train.py compiles by default; ours as
`train.compile: true` does, the model only, the optimizer eager) and prints each one's compile seconds (the first
compiled step minus a steady one, from an empty Inductor cache); compiled rows are also compared with nanoGPT
compiled.

    .venv/bin/python benchmarks/bench_vs_nanogpt.py --nanogpt /path/to/nanoGPT [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import alternate  # noqa: E402

from models import ModelConfig, Transformer  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.optim import NS_STEPS, newton_schulz  # noqa: E402
from train.system import make_optimizer  # noqa: E402

B, T, DIM, LAYERS, HEADS, VOCAB = 8, 256, 288, 6, 6, 4096


def load_nanogpt(folder: Path) -> object:
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"--nanogpt: no model.py in {folder}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_step(model: nn.Module, opt: torch.optim.Optimizer, idx_BT: torch.Tensor, bf16: bool,
              ours: bool) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    x_BT, y_BT = idx_BT[:, :-1].contiguous(), idx_BT[:, 1:].contiguous()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if ours:
                loss = model(x_BT, targets_BT=y_BT).loss
            else:
                _, loss = model(x_BT, y_BT)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()

    return step


def newton_schulz_cost(opt: torch.optim.Optimizer) -> tuple[Callable[[], None], float]:
    """Muon's extra work per step, alone: Newton-Schulz on every Muon matrix (fresh gradients of the same shapes),
    and its FLOPs: per iteration on an m x n matrix (m <= n) X X^T (2 m^2 n), the square (2 m^3) and the product
    with X (2 m^2 n)."""
    mats = [torch.randn_like(p) for g in opt.param_groups if g["kind"] == "muon" for p in g["params"]]
    flops = 0.0
    for w in mats:
        m, n = sorted(w.shape[-2:])
        flops += NS_STEPS * (4 * m * m * n + 2 * m**3) * (w.numel() // (m * n))

    def run() -> None:
        for w in mats:
            newton_schulz(w)

    return run, flops


def step_flops(model: Transformer) -> float:
    """Forward + backward matmul FLOPs of one step: 6 x (all matrices, head included) x tokens + attention."""
    mats = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "tok_emb" not in n)
    if model.cfg.tie_embeddings:
        mats += model.cfg.vocab_size * model.cfg.dim
    return 6.0 * mats * B * T + 12.0 * LAYERS * T * DIM * B * T / 2  # causal: half the score matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="folder holding nanoGPT's model.py")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=15, help="timed steps per contender and precision")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--compiled", action="store_true", help="also time both models under torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ng = load_nanogpt(args.nanogpt)
    nano = ng.GPT(ng.GPTConfig(block_size=T, vocab_size=VOCAB, n_layer=LAYERS, n_head=HEADS, n_embd=DIM,
                               dropout=0.0, bias=False))
    cfg = ModelConfig(vocab_size=VOCAB, dim=DIM, num_layers=LAYERS, num_heads=HEADS, max_seq_len=T)
    ours, ours_adamw = Transformer(cfg), Transformer(cfg)
    ours_adamw.load_state_dict(ours.state_dict())
    tc = TrainConfig()
    opt_nano = nano.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    opt_ours = make_optimizer(ours, tc, "cpu")
    opt_adamw = make_optimizer(ours_adamw, dataclasses.replace(tc, optimizer="adamw"), "cpu")
    n_ours = sum(p.numel() for p in ours.parameters())
    n_nano = sum(p.numel() for p in nano.parameters())
    idx = torch.randint(0, VOCAB, (B, T + 1))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {B} x seq {T}, dim {DIM}, {LAYERS} layers, "
          f"{HEADS} heads, vocab {VOCAB}; params ours {n_ours / 1e6:.2f}M, nanoGPT {n_nano / 1e6:.2f}M; "
          f"median of {args.repeats} interleaved steps")
    print(f"ours default optimizer: {type(opt_ours).__name__}; nanoGPT: {type(opt_nano).__name__} "
          f"(configure_optimizers)")
    rows, first, bound = [], {}, {}
    ns_run, ns_flops = newton_schulz_cost(opt_ours)
    if args.compiled:
        from torch._inductor.utils import fresh_cache

        compiled = {"nanoGPT compiled": (torch.compile(nano), opt_nano, False),
                    "ours compiled (default opt)": (torch.compile(ours), opt_ours, True),
                    "ours compiled (AdamW)": (torch.compile(ours_adamw), opt_adamw, True)}
    for prec in args.precisions.split(","):
        bf16 = prec == "bf16"
        fns = {"nanoGPT": make_step(nano, opt_nano, idx, bf16, False),
               "ours (default: Muon+AdamW)": make_step(ours, opt_ours, idx, bf16, True),
               "ours (AdamW)": make_step(ours_adamw, opt_adamw, idx, bf16, True)}
        if args.compiled:
            for name, (model, opt, is_ours) in compiled.items():
                fns[name] = make_step(model, opt, idx, bf16, is_ours)
                with fresh_cache():  # cold: an empty Inductor cache, as on a first run (each precision compiles)
                    t0 = time.perf_counter()
                    fns[name]()
                    first[prec, name] = time.perf_counter() - t0
        fns["Newton-Schulz alone"] = ns_run
        t = alternate(fns, args.repeats, warmup=2)
        ns_s = t.pop("Newton-Schulz alone")
        fastest = min(v for k, v in t.items() if "AdamW)" in k)
        bound[prec] = (ns_s, fastest, t["nanoGPT"] / (fastest + ns_s))
        for k, v in t.items():
            same = t["nanoGPT compiled"] / v if "compiled" in k else None
            rows.append((prec, k, B * T / v, t["nanoGPT"] / v, same))
            if (prec, k) in first:  # a second model of the same class and shapes reuses Dynamo's compiled code
                print(f"{prec} {k}: compile {max(0.0, first[prec, k] - v):.1f} s (first step {first[prec, k]:.1f} s, "
                      f"steady {v * 1e3:.0f} ms)")
    print("\n| precision | model | tok/s | vs nanoGPT eager | vs nanoGPT compiled |\n|---|---|---|---|---|")
    for prec, k, tps, r, same in rows:
        print(f"| {prec} | {k} | {tps:,.0f} | {r:.2f}x | {'' if same is None else f'{same:.2f}x'} |")
    fl = step_flops(ours)
    print(f"\nMuon's Newton-Schulz: {ns_flops / 1e9:.1f} GFLOP per step (bf16) = {ns_flops / fl:.0%} of the step's "
          f"forward + backward matmul FLOPs ({fl / 1e9:.1f} GFLOP at batch {B} x {T}); it does not shrink with the "
          f"batch, so at this batch the default optimizer adds that much matmul work to a step nanoGPT's AdamW skips.")
    for prec, (ns_s, fastest, best) in bound.items():
        print(f"{prec}: Newton-Schulz alone {ns_s * 1e3:.0f} ms per step; our fastest AdamW step {fastest * 1e3:.0f} ms; "
              f"a default-optimizer step can be no faster than their sum: <= {best:.2f}x nanoGPT eager")


if __name__ == "__main__":
    main()

"""torch.compile for training on this CPU: compile seconds and steady step time, eager vs compiled, per shape and
precision, and what `train.compile: auto` (train/compile_auto.py) decides from its own probe.

Shapes: the demo's (configs/demo.yaml: dim 96, 4 layers, 3 heads, vocab 1024, batch 16 x 256, 855 steps) and
bench_vs_nanogpt's (dim 288, 6 layers, 6 heads, vocab 4096, batch 8 x 256). Precisions: fp32 and bf16 autocast.
For each pair, inside one empty Inductor cache:
1. auto's probe (`Probe`): eager and compiled forward+backward micro-batches, and the compile seconds from the
   empty cache: what auto measures on a machine's first run of a shape;
2. full training steps (zero grads, forward+backward, clip, Muon+AdamW step; the model compiled, the optimizer
   eager, as `train.compile: true` runs), eager and compiled alternating; the compiled model's first step after
   `torch._dynamo.reset()` with the Inductor cache the probe filled: what the run itself then pays;
3. the break-even: optimizer steps after which a cold / a warm compile has paid back `PAYBACK` times, from the
   full steps, and auto's decision for the reference run length from the probe's numbers (cold: a later run whose
   Inductor cache was emptied; warm: the probing run itself, or a later one with the kernels cached).

    .venv/bin/python benchmarks/bench_compile.py [--threads 1] [--repeats 8] [--shapes demo,nanogpt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import alternate  # noqa: E402
from bench_vs_nanogpt import make_step  # noqa: E402

from models import ModelConfig, Transformer  # noqa: E402
from train.compile_auto import PAYBACK, Probe, decide  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.system import make_optimizer  # noqa: E402

SHAPES = {  # name: (model, batch, seq, reference run length in optimizer steps)
    "demo": (ModelConfig(vocab_size=1024, dim=96, num_layers=4, num_heads=3, max_seq_len=256), 16, 256,
             int(3.5e6 // (16 * 256))),
    "nanogpt": (ModelConfig(vocab_size=4096, dim=288, num_layers=6, num_heads=6, max_seq_len=256), 8, 256, 5000),
}


def one(name: str, prec: str, repeats: int) -> dict[str, float]:
    from torch._inductor.utils import fresh_cache

    cfg, b, t, ref_steps = SHAPES[name]
    precision = "bf16-mixed" if prec == "bf16" else "fp32"
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    with fresh_cache():
        torch._dynamo.reset()
        probe = Probe(model, b, t, precision, cfg.vocab_size)
        p_eager = statistics.median(probe.eager(3))
        entry = probe.compiled(4)
        del probe
        torch._dynamo.reset()  # the run's own compile: Dynamo again, Inductor from the cache the probe filled
        opt = make_optimizer(model, TrainConfig(), "cpu")
        idx = torch.randint(0, cfg.vocab_size, (b, t + 1))
        eager = make_step(model, opt, idx, prec == "bf16", True)
        comp = make_step(torch.compile(model), opt, idx, prec == "bf16", True)
        t0 = time.perf_counter()
        comp()
        first = time.perf_counter() - t0
        times = alternate({"eager": eager, "compiled": comp}, repeats, warmup=1)
    cold = decide(entry, ref_steps, "probe", warm=False)  # a later run with Inductor's cache emptied
    warm = decide(entry, ref_steps, "probe", warm=True)  # this run after its probe, or a later one, kernels cached
    saved = times["eager"] - times["compiled"]
    return {"probe_eager_gate_ms": p_eager * 1e3, "probe_eager_ms": entry["eager_s"] * 1e3,
            "probe_compiled_ms": entry["compiled_s"] * 1e3, "compile_cold_s": entry["compile_s"],
            "compile_warm_s": first - times["compiled"], "probe_warm_s": entry["warm_s"],
            "step_eager_ms": times["eager"] * 1e3, "step_compiled_ms": times["compiled"] * 1e3,
            "speedup": times["eager"] / times["compiled"],
            "break_even_steps": PAYBACK * entry["compile_s"] / saved if saved > 0 else float("inf"),
            "break_even_warm_steps": PAYBACK * entry["warm_s"] / saved if saved > 0 else float("inf"),
            "ref_steps": ref_steps, "auto_cold": float(cold.compile), "auto_warm": float(warm.compile)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=8, help="timed full steps per contender")
    ap.add_argument("--shapes", default="demo,nanogpt")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"median of {args.repeats} interleaved steps")
    print("\n| shape | precision | compile cold s | compile warm s (probe / run) | step eager ms | step compiled ms | "
          f"speedup | steps to repay {PAYBACK:g}x cold / warm | probe micro-batch eager / compiled ms | "
          "auto at ref steps, cold / warm | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        for prec in args.precisions.split(","):
            r = one(name, prec, args.repeats)
            word = {1.0: "compile", 0.0: "eager"}
            print(f"| {name} | {prec} | {r['compile_cold_s']:.1f} | {r['probe_warm_s']:.1f} / "
                  f"{r['compile_warm_s']:.1f} | {r['step_eager_ms']:.0f} | {r['step_compiled_ms']:.0f} | "
                  f"{r['speedup']:.2f}x | {r['break_even_steps']:.0f} / {r['break_even_warm_steps']:.0f} | "
                  f"{r['probe_eager_ms']:.0f} / {r['probe_compiled_ms']:.0f} | {word[r['auto_cold']]} / "
                  f"{word[r['auto_warm']]} at {r['ref_steps']} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()

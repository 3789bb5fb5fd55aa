"""Measuring a compressed model and writing compressed/report.json + report.png.

Design and invariants
- Bits per byte = mean next-token cross-entropy (nats) / ln 2 / bytes_per_token, on the same val
  windows for every model, so passes compare exactly; bytes_per_token comes from the tokenizer's shards.
- Size = bytes of the weights file(s) on disk (model.safetensors), baseline included (fp32).
- Speed = new tokens per second of greedy KV-cached generation (models.generate) after one warm-up
  run, with the runtime the pass would be served with. Timings on a shared CPU are noisy: compare
  ratios measured in one process.
- The frontier: an entry is on the Pareto front (`pareto: true`) when no other entry (baseline included) is at
  most as large *and* at most as bad with one of the two strictly better; the plot joins the front's points.
- The sample is decoded with the `tokenizers` library when it is installed (it is a project dependency),
  else returned as token ids: models/ must not require it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from models.generate import generate


@torch.no_grad()
def eval_bpb(
    model: nn.Module, tokens: torch.Tensor, bytes_per_token: float, seq_len: int, batch_size: int = 8
) -> float:
    """Bits per byte of `model` on non-overlapping windows of `tokens` (each window predicts seq_len-1)."""
    seq_len = min(seq_len, model.cfg.max_seq_len)
    n = tokens.numel() // seq_len
    if n == 0:
        raise ValueError(f"val_tokens: need at least {seq_len} tokens to score, got {tokens.numel()}")
    w_NT = tokens[: n * seq_len].long().reshape(n, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nats, total = 0.0, 0
    try:
        for b in range(0, n, batch_size):
            x = w_NT[b : b + batch_size].to(device)
            out = model(x[:, :-1], x[:, 1:])
            k = x[:, 1:].numel()
            total_nats += float(out.ce_loss) * k
            total += k
    finally:
        model.train(was_training)
    return total_nats / total / math.log(2) / bytes_per_token


@torch.no_grad()
def tokens_per_s(
    model: nn.Module, prompt: list[int], num_new: int, batch_size: int = 1, repeats: int = 2, compile: bool = False
) -> float:
    """Greedy generation speed (new tokens/s over the batch), best of `repeats` after a warm-up.
    compile=True times `generate(compile=True)`; its warm-up has the timed shapes, so it holds the compilation."""
    prompts = [list(prompt)] * batch_size
    generate(model, prompts, max_new_tokens=num_new if compile else min(8, num_new), temperature=0.0, compile=compile)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, prompts, max_new_tokens=num_new, temperature=0.0, compile=compile)
        dt = time.perf_counter() - t0
        best = max(best, sum(len(o) for o in out) / dt)
    return best


def decode(tokenizer_file: Path | None, ids: list[int]) -> str | list[int]:
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        return ids
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return ids
    return Tokenizer.from_file(str(tokenizer_file)).decode(ids, skip_special_tokens=False)


def sample(model: nn.Module, prompt: list[int], num_new: int, tokenizer_file: Path | None) -> str | list[int]:
    new = generate(model, [list(prompt)], max_new_tokens=num_new, temperature=0.0)[0]
    return decode(tokenizer_file, list(prompt) + new)


def mark_pareto(entries: list[dict], size_key: str = "bytes", bpb_key: str = "val_bpb") -> list[dict]:
    """Set `pareto` on every entry (size vs bpb, both lower is better; an entry without a finite bpb is off the
    front); returns the front sorted by size."""
    ok = [e for e in entries if isinstance(e.get(bpb_key), (int, float)) and math.isfinite(e[bpb_key])]
    for e in entries:
        e["pareto"] = e in ok and not any(
            o[size_key] <= e[size_key] and o[bpb_key] <= e[bpb_key]
            and (o[size_key] < e[size_key] or o[bpb_key] < e[bpb_key]) for o in ok)
    return sorted((e for e in entries if e["pareto"]), key=lambda e: (e[size_key], e[bpb_key]))


def write_plot(report: dict, path: Path) -> None:
    """Scatter of size on disk (MB) against val bits-per-byte, one point per pass, baseline starred, the Pareto
    front drawn as a step line through its points (ringed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.atomic import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    base = report["baseline"]
    ax.scatter([base["bytes"] / 1e6], [base["val_bpb"]], marker="*", s=180, color="black", label="baseline (fp32)")
    ax.annotate("baseline", (base["bytes"] / 1e6, base["val_bpb"]), textcoords="offset points", xytext=(6, 4))
    colors = {"int8": "C0", "int4": "C1", "gptq": "C2", "magnitude": "C3", "wanda": "C4", "sparse24": "C5",
              "structured": "C6", "lowbit": "C8", "lowrank": "C9"}
    for p in report["passes"]:
        ax.scatter([p["bytes"] / 1e6], [p["val_bpb"]], color=colors.get(p["method"], "C7"), s=50)
        ax.annotate(p["name"], (p["bytes"] / 1e6, p["val_bpb"]), textcoords="offset points", xytext=(6, -10),
                    fontsize=8)
    front = mark_pareto([base, *report["passes"]])
    if front:
        xs, ys = [e["bytes"] / 1e6 for e in front], [e["val_bpb"] for e in front]
        ax.step(xs, ys, where="post", color="black", alpha=0.5, lw=1, label="Pareto front")
        ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.xaxis,):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else ""))
    ax.set_xlabel("size on disk (MB, log)")
    ax.set_ylabel("val bits per byte (lower is better)")
    ax.set_title("compression: size vs quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())

"""Turning hours into FLOPs: a table of GPUs, or a short benchmark of this machine.

Design and invariants
- A budget in hours becomes FLOPs as hours x 3600 x sustained FLOP/s x devices. Sustained FLOP/s is, in order
  of preference: the user's measured number, a few seconds of real training steps here (device 'cpu'), or a
  GPU's peak dense bf16 (fp16 for cards without bf16; train/peak_flops.py's table) times an assumed MFU (0.4 is typical for well-tuned
  dense training; small models reach less).
- The benchmark trains a real `models.Transformer` (forward, backward, AdamW) and counts FLOPs with
  `models.accounting.flops_per_token`, the same counter the planner uses, so its FLOP/s converts back into
  tokens consistently. Small shapes run at lower FLOP/s than large ones: the CPU number is a guide for
  tiny models, not a roofline.
"""

from __future__ import annotations

import time

from train.peak_flops import GPU_PEAKS

# The planner's devices are the rows of train/peak_flops.py's GPU table (one table for MFU and for planning), by
# lower-case key: peak dense bf16 TFLOP/s (fp16 on cards without bf16) and memory in GB.
GPU_TABLE: dict[str, float] = {k.lower(): row.half / 1e12 for k, row in GPU_PEAKS.items()}
GPU_MEMORY_GB: dict[str, float] = {k.lower(): row.memory_gb for k, row in GPU_PEAKS.items()}


def table_flops_per_s(device: str, mfu: float) -> float:
    """Sustained FLOP/s of one GPU from the table: peak x mfu."""
    if device not in GPU_TABLE:
        raise ValueError(f"device: no throughput known for {device!r}; known: {', '.join(sorted(GPU_TABLE))}")
    return GPU_TABLE[device] * 1e12 * mfu


def measure_cpu_flops_per_s(seconds: float = 3.0, dim: int = 256, num_layers: int = 4, vocab_size: int = 4096,
                            seq_len: int = 256, batch_size: int = 8) -> dict:
    """Train a small model here for ~`seconds` and report sustained training FLOP/s.

    Returns {"flops_per_s", "tokens_per_s", "flops_per_token", "shape"}; the first step (allocation, warm-up)
    is not timed.
    """
    import torch

    from models import ModelConfig, Transformer
    from models.accounting import flops_per_token

    cfg = ModelConfig(vocab_size=vocab_size, dim=dim, num_layers=num_layers, num_heads=max(1, dim // 64),
                      max_seq_len=seq_len)
    fpt = float(flops_per_token(cfg, seq_len=seq_len))
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=gen)

    def step() -> None:
        out = model(idx[:, :-1], targets_BT=idx[:, 1:])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    steps = 0
    while True:
        step()
        steps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and steps >= 2:
            break
    tokens_per_s = steps * batch_size * seq_len / dt
    return {
        "flops_per_s": tokens_per_s * fpt,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "shape": {"dim": dim, "num_layers": num_layers, "vocab_size": vocab_size, "seq_len": seq_len,
                  "batch_size": batch_size, "threads": torch.get_num_threads()},
    }

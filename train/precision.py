"""`precision: auto`: bf16 autocast where the device computes bf16 natively, fp32 elsewhere.

Why: on a CPU with AVX512-BF16 or AMX a bf16 training step is ~2x an fp32 one (LOG.md, session 5), while on an
AVX2-only CPU bf16 GEMMs are emulated through fp32 and several times slower. A config should not encode which
machine it was written on, so the choice is made here, per machine, at the start of a run.

Design and invariants
- CUDA: bf16-mixed when the GPU has bf16 tensor cores (compute capability >= 8.0, Ampere on); fp32 before.
- CPU: bf16-mixed when the CPU advertises bf16 units (AVX512_BF16 or AMX on x86; BF16 on Arm) AND the measured
  bf16 matmul peak beats the fp32 one by `CPU_BF16_MIN_GAIN`. The peaks are the MFU peaks of `train.peak_flops`
  (measured once per CPU, thread count, dtype and torch version) and their ratio is cached beside them (even
  when the peaks themselves are not, on a busy machine: load slows both sides alike), so the decision costs
  nothing after the first run on a machine and never relies on a table of CPU names. A flag without the speed (an
  emulating kernel, a VM that hides the units' speed) falls back to fp32; the speed without the flag is not
  trusted either (a noisy probe on a loaded machine).
- CPU, second look at the model's own shape (`choose_cpu_precision`, after the model is built): fast bf16 GEMMs do
  not make a small model's step faster. At widths of 64-96 the step is mostly elementwise work plus autocast's
  casts, and the shipped CPU recipes measured bf16 7-8% *slower* end to end (LOG.md, session 8), while a 288-wide
  model gains ~1.4x. So where the peaks say bf16, eager forward+backward micro-batches of a copy of the very model
  are timed in both precisions, interleaved, and bf16 is kept only when it is `CPU_BF16_MIN_STEP_GAIN` x faster.
  The answer is cached per machine and shape (`$TINYFOUNDRY_CACHE_DIR/precision.json`). Several processes (DDP)
  never probe (each could decide differently): they use the cache, else the peaks' answer.
- Explicit precisions pass through untouched: `auto` never overrides what a user wrote.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_MIN_GAIN = 1.3
"""bf16 must measure at least this many times the fp32 matmul peak for auto to pick it on a CPU."""
CPU_BF16_MIN_STEP_GAIN = 1.15
"""...and a bf16 micro-batch of the model itself at least this many times faster than an fp32 one (a margin above the
probe's noise on a shared machine: bf16 and fp32 train to the same bpb, LOG.md session 8, so speed decides)."""
PROBE_STEPS = 4
"""Micro-batches timed per precision (interleaved, after one untimed each)."""


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 compute flags this CPU advertises in /proc/cpuinfo (empty where there is none or no cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):  # x86 "flags", Arm "Features"
            flags.update(line.split(":", 1)[1].split())
    return sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, accelerator: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """(the precision to train in, why): `auto` becomes 'bf16-mixed' or 'fp32' for this device."""
    if precision != "auto":
        return precision, "set in the config"
    if accelerator == "gpu":
        major, minor = torch.cuda.get_device_capability(0)
        if (major, minor) >= (8, 0):
            return "bf16-mixed", f"GPU compute capability {major}.{minor} has bf16 tensor cores"
        return "fp32", f"GPU compute capability {major}.{minor} has no bf16 tensor cores"
    flags = cpu_bf16_flags(cpuinfo)
    if not flags:
        return "fp32", "the CPU advertises no bf16 units (AVX512_BF16 / AMX / Arm BF16)"
    from train.peak_flops import cpu_cache_key, cpu_peak_flops, read_peak_cache, write_peak_cache

    key = cpu_cache_key("bf16_over_fp32")
    gain = read_peak_cache().get(key)
    if gain is None:
        bf16, fp32 = cpu_peak_flops(torch.bfloat16), cpu_peak_flops(torch.float32)
        gain = bf16 / fp32 if fp32 > 0 else 0.0
        write_peak_cache(key, gain)  # kept even on a busy machine: load slows both sides, the ratio stays
    why = f"CPU {'/'.join(flags)}, measured bf16 matmul {gain:.2f}x fp32"
    return ("bf16-mixed" if gain >= CPU_BF16_MIN_GAIN else "fp32"), why


def choose_cpu_precision(model: torch.nn.Module, batch_size: int, seq_len: int, vocab_size: int,
                         world_size: int = 1) -> tuple[str, str, dict]:
    """(precision, why, measured) for `precision: auto` on a CPU whose peaks favour bf16: time the model's own
    micro-batch in both precisions (module docstring). `measured` holds fp32_s / bf16_s per micro-batch and where
    they came from ({} when nothing was measured)."""
    import os
    import statistics
    import time

    from models.atomic import read_json_or_empty, update_json_cache
    from train.compile_auto import Probe, shape_key
    from train.peak_flops import cache_dir, cpu_cache_key

    path = cache_dir() / "precision.json"
    key = f"{cpu_cache_key('precision')}|{shape_key(model, batch_size, seq_len, 'fp32-vs-bf16')}"
    entry = read_json_or_empty(path).get(key)
    source = "cached measurement"
    if entry is None:
        if world_size > 1:
            return "bf16-mixed", (f"{world_size} processes and no cached step measurement for this shape (processes "
                                  "do not probe: each could decide differently); the matmul peaks favour bf16"), {}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        fp, bf = (Probe(model, batch_size, seq_len, p, vocab_size) for p in ("fp32", "bf16-mixed"))
        fp.step(fp.model)
        bf.step(bf.model)
        t_fp, t_bf = [], []
        for _ in range(PROBE_STEPS):
            t_fp.append(fp.step(fp.model))
            t_bf.append(bf.step(bf.model))
        del fp, bf
        entry = {"fp32_s": statistics.median(t_fp), "bf16_s": statistics.median(t_bf), "load": round(load, 2),
                 "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        update_json_cache(path, key, entry, sort_keys=True)  # load slows both sides alike: the ratio is kept
        source = f"probe (load {load:.1f})"
    gain = entry["fp32_s"] / entry["bf16_s"] if entry["bf16_s"] > 0 else 0.0
    facts = (f"{source}: this model's micro-batch {entry['fp32_s'] * 1e3:.0f} ms fp32 vs "
             f"{entry['bf16_s'] * 1e3:.0f} ms bf16 ({gain:.2f}x)")
    measured = {**entry, "source": source, "gain": gain}
    if gain >= CPU_BF16_MIN_STEP_GAIN:
        return "bf16-mixed", facts, measured
    return "fp32", f"{facts} < {CPU_BF16_MIN_STEP_GAIN}x: too narrow for bf16 to pay", measured

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
- Explicit precisions pass through untouched: `auto` never overrides what a user wrote.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_MIN_GAIN = 1.3
"""bf16 must measure at least this many times the fp32 matmul peak for auto to pick it on a CPU."""


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

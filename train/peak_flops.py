"""Peak FLOP/s of one device: the denominator of MFU and the planner's hours -> FLOPs.

Design and invariants
- GPUs: one table of dense (no sparsity) vendor peaks per card (bf16/fp16 tensor core, tf32, plain fp32) and its
  memory. The trainer's MFU and the planner (`plan.device: h100`) read the same rows. A card not in the table falls
  back to Lightning's `lightning.fabric.utilities.throughput.get_available_flops`, then to 0 (MFU not reported).
- CPUs have no data sheet: the peak is a GEMM measured once per (CPU model, torch threads, dtype, torch version)
  and cached in `$TINYFOUNDRY_CACHE_DIR/peak_flops.json` (default ~/.cache/tinyfoundry). A measurement taken while
  the cores were busy is used by this process but never written, so a too-low peak cannot stick (it would show up
  later as MFU > 100%).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models.atomic import read_json_or_empty, update_json_cache


@dataclass(frozen=True)
class GpuPeak:
    """Vendor data-sheet numbers of one card (dense)."""

    half: float
    """bf16 / fp16 tensor-core FLOP/s (fp16 on cards without bf16)."""
    tf32: float
    """tf32 tensor-core FLOP/s (fp32 matmuls with `allow_tf32`)."""
    fp32: float
    """Plain fp32 FLOP/s."""
    memory_gb: float
    """Device memory in GB (the planner's per-device memory limit)."""


# Keys are matched as case-insensitive substrings of torch.cuda.get_device_name, in this order (specific first).
GPU_PEAKS: dict[str, GpuPeak] = {
    "H200": GpuPeak(989e12, 494e12, 67e12, 141.0),
    "H100 SXM": GpuPeak(989e12, 494e12, 67e12, 80.0),
    "H100 NVL": GpuPeak(835e12, 418e12, 60e12, 94.0),
    "H100 PCIe": GpuPeak(756e12, 378e12, 51e12, 80.0),
    "H100": GpuPeak(989e12, 494e12, 67e12, 80.0),
    "GH200": GpuPeak(989e12, 494e12, 67e12, 96.0),
    "B200": GpuPeak(2250e12, 1100e12, 80e12, 180.0),
    "A100": GpuPeak(312e12, 156e12, 19.5e12, 80.0),
    "A800": GpuPeak(312e12, 156e12, 19.5e12, 80.0),
    "A10G": GpuPeak(70e12, 35e12, 31.2e12, 24.0),
    "A10": GpuPeak(125e12, 62.5e12, 31.2e12, 24.0),
    "L40S": GpuPeak(362e12, 183e12, 91.6e12, 48.0),
    "L40": GpuPeak(181e12, 90.5e12, 90.5e12, 48.0),
    "L4": GpuPeak(121e12, 60e12, 30.3e12, 24.0),
    "A6000": GpuPeak(155e12, 77e12, 38.7e12, 48.0),
    "RTX 4090": GpuPeak(165e12, 82.6e12, 82.6e12, 24.0),
    "RTX 3090": GpuPeak(71e12, 35.6e12, 35.6e12, 24.0),
    "V100": GpuPeak(125e12, 15.7e12, 15.7e12, 32.0),
    "T4": GpuPeak(65e12, 8.1e12, 8.1e12, 16.0),
    "MI300X": GpuPeak(1307e12, 653e12, 163.4e12, 192.0),
}


def gpu_peak(name: str) -> tuple[str, GpuPeak] | None:
    """(table key, row) of the first key that is a case-insensitive substring of `name`; None if unknown."""
    for key, row in GPU_PEAKS.items():
        if key.lower() in name.lower():
            return key, row
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("TINYFOUNDRY_CACHE_DIR", Path.home() / ".cache" / "tinyfoundry"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PEAK_SHAPES = ((1024, 1024, 1024), (512, 512, 512), (1024, 256, 768), (1024, 768, 256))
"""(M, K, N) GEMMs probed for the CPU peak: square ones and the shapes of a small model's linear layers."""


def measure_matmul_peak(dtype: torch.dtype, seconds: float = 0.5,
                        shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES) -> float:
    """Best FLOP/s of one GEMM in `dtype` on this CPU (all torch threads) over a few shapes and operand layouts.

    Layouts: x @ W^T (nn.Linear), A^T @ B (the fast layout of bf16 GEMMs on AVX2-only CPUs, which
    train.cpu_bf16 uses) and, for fp32, x @ W; the peak is the best of all, so MFU never flatters a slow kernel choice."""
    best = 0.0
    if dtype != torch.float32:  # emulated bf16 is slow in most layouts: skip the big square probe
        shapes = tuple(s for s in shapes if s[0] * s[1] * s[2] < 1024**3) or shapes
    budget = seconds / (3 * len(shapes))
    gen = torch.Generator().manual_seed(0)  # never the global RNG: a measurement must not move training's dropout
    for m, k, n in shapes:
        x_MK = torch.randn(m, k, generator=gen).to(dtype)
        w_NK = torch.randn(n, k, generator=gen).to(dtype)
        w_KN = w_NK.t().contiguous()
        xt_KM = x_MK.t().contiguous()
        ops = [lambda x=x_MK, w=w_NK: torch.nn.functional.linear(x, w), lambda x=xt_KM, w=w_KN: x.t() @ w]
        if dtype == torch.float32:
            ops.append(lambda x=x_MK, w=w_KN: x @ w)
        for op in ops:
            op()
            deadline = time.perf_counter() + budget
            reps = 0
            while reps < 1 or (time.perf_counter() < deadline and reps < 50):
                t0 = time.perf_counter()
                op()
                best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
                reps += 1
    return best


def cpu_cache_key(what: str) -> str:
    """Cache key of a CPU measurement: what, CPU model, torch threads, torch version."""
    return f"{_cpu_name()}|threads={torch.get_num_threads()}|{what}|torch={torch.__version__}"


def read_peak_cache() -> dict[str, float]:
    return read_json_or_empty(cache_dir() / "peak_flops.json")


def write_peak_cache(key: str, value: float) -> None:
    """Add one measurement to the per-machine cache (read-modify-write, then an atomic rename)."""
    update_json_cache(cache_dir() / "peak_flops.json", key, value)


_BUSY_PEAKS: dict[str, float] = {}


def cpu_peak_flops(dtype: torch.dtype, measure_if_missing: bool = True) -> float:
    """Measured (and cached) CPU matmul peak for dtype; 0.0 if missing and not measuring."""
    key = cpu_cache_key(str(dtype).replace("torch.", ""))
    cache = read_peak_cache()
    if key in cache:
        return float(cache[key])
    if key in _BUSY_PEAKS:
        return _BUSY_PEAKS[key]
    if not measure_if_missing:
        return 0.0
    peak = measure_matmul_peak(dtype)
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        _BUSY_PEAKS[key] = peak  # busy cores: good for this process, not for the cache
        return peak
    write_peak_cache(key, peak)
    return peak


def _cuda_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    name = torch.cuda.get_device_name(device)
    found = gpu_peak(name)
    if found is not None:
        key, row = found
        if dtype != torch.float32:
            return row.half, f"table:{key}"
        return (row.tf32 if torch.backends.cuda.matmul.allow_tf32 else row.fp32), f"table:{key}"
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, dtype)  # it picks tf32 itself from torch's matmul precision
    if flops:
        return float(flops), f"lightning:{name}"
    return 0.0, f"unknown GPU {name!r}"


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device for this precision, where the number comes from)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)
    if device.type == "cuda":
        return _cuda_peak(device, dtype)
    return cpu_peak_flops(dtype), f"measured:{str(dtype).replace('torch.', '')}-matmul"

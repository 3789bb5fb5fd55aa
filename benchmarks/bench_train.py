"""Training step: ours (run_train = Lightning + our callbacks) vs a plain PyTorch loop of the same model, shape,
optimizer and precision; MFU against the matmul peak measured on this machine (CPU) or a GPU table.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--preset 8m] [--threads N]

Both sides: the same Transformer, the same windows from the same token shards, fused AdamW with decay on >=2-D
weights, grad-norm clipping at 1.0, autocast for bf16. Each side is timed by the median optimizer-step time
(robust to the noise of a shared CPU), alternating plain/ours `--repeat` times and keeping each side's best.
The shards are random tokens written in the documented index.json + .bin format (throughput does not depend on
the text). Lightning overhead = ours_step_time / plain_step_time - 1 (target <= 5%).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import Transformer, get_preset  # noqa: E402
from models.accounting import count_params, flops_per_token  # noqa: E402
from train import TrainConfig, run_train  # noqa: E402
from train.cpu_bf16 import cpu_has_native_bf16, use_tn_linears  # noqa: E402
from train.data import TokenStream, TrainWindows  # noqa: E402
from train.peak_flops import GPU_PEAKS, measure_matmul_peak  # noqa: E402
from train.system import make_adamw  # noqa: E402


def write_random_shards(folder: Path, vocab: int, num_tokens: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", num_tokens), ("val", max(4096, num_tokens // 100))):
        rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(folder / f"{split}_00000.bin")
        splits[split] = {"num_docs": 1, "num_tokens": n, "num_bytes": 4 * n, "bytes_per_token": 4.0,
                         "shards": [{"file": f"{split}_00000.bin", "num_tokens": n, "num_docs": 1}]}
    index = {"format": "tinyfoundry-token-shards", "version": 1, "dtype": "uint16", "vocab_size": vocab,
             "eos_id": 2, "bos_id": 1, "pad_id": 0, "add_bos": False, "tokenizer_sha256": "", "splits": splits}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def plain_loop(model_cfg, shards: Path, cfg: TrainConfig, steps: int, device: str, tn: bool) -> list[float]:
    """nanoGPT-style loop: forward, backward, clip, fused AdamW, zero_grad. Returns per-step seconds.

    tn: route the linears through train.cpu_bf16 like ours does for CPU bf16 (same kernels on both sides)."""
    from data_pipelines.tokenize.shards import ShardIndex

    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    if tn:
        use_tn_linears(model)
    opt = make_adamw(model, cfg, torch.device(device).type)
    data = TrainWindows(TokenStream(ShardIndex.load(shards).open("train")), cfg.batch_size, cfg.seq_len,
                        cfg.seed, "random")
    amp = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                         enabled=cfg.precision == "bf16-mixed")
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        x, y, _ = data.batch(i)
        x, y = x.to(device), y.to(device)
        with amp:
            loss = model(x, targets_BT=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the same per-step sync ours does (NaN guard / logging)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def ours(model_cfg, shards: Path, cfg: TrainConfig, steps: int, tmp: Path) -> list[float]:
    run = tmp / f"run-{time.monotonic_ns()}"
    tokens = steps * cfg.batch_size * cfg.seq_len
    cfg = TrainConfig(**{**cfg.to_dict(), "max_tokens": tokens, "val_every_tokens": 10 * tokens,
                         "ckpt_every_tokens": 10 * tokens, "num_val_tokens": cfg.seq_len, "log_every_steps": 10**6,
                         "progress_bar": False, "num_sample_tokens": 0})
    import train.monitor as cb

    times: list[float] = []
    orig = cb.TrainMonitor.on_train_end

    def grab(self, trainer, pl_module):  # keep the per-step times of this run
        times.extend(self.step_times)
        return orig(self, trainer, pl_module)

    cb.TrainMonitor.on_train_end = grab
    try:
        run_train(cfg, model_cfg, shards, run)
    finally:
        cb.TrainMonitor.on_train_end = orig
        shutil.rmtree(run, ignore_errors=True)
    return times


def median_skip_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 2 else times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--preset", default="8m", help="model preset (8m is ~7.4M params at vocab 4096)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--precisions", default="fp32,bf16-mixed")
    ap.add_argument("--repeat", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_cfg = get_preset(args.preset)
    n = count_params(model_cfg)["total"]
    fpt = flops_per_token(model_cfg, args.seq_len)
    repeat = args.repeat or (1 if args.quick else 2)
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} params={n / 1e6:.2f}M "
          f"seq={args.seq_len} flops/token={fpt / 1e6:.1f}M")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    try:
        shards = write_random_shards(tmp / "shards", model_cfg.vocab_size, 2_000_000)
        print(f"{'precision':<11} {'batch':>5} {'steps':>5} {'stock s/step':>12} {'plain s/step':>12} "
              f"{'ours s/step':>12} {'overhead':>9} {'peak GF/s':>10} {'MFU stock':>9} {'MFU plain':>9} "
              f"{'MFU ours':>9}")
        for precision in args.precisions.split(","):
            dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
            if device == "cuda":
                name = torch.cuda.get_device_name()
                peak = next((v.half if dtype == torch.bfloat16 else v.fp32 for k, v in GPU_PEAKS.items()
                             if k.lower() in name.lower()), float("nan"))
                batch, steps = 32, 20
            else:
                # bf16 matmuls are emulated on AVX2-only CPUs (~6x slower than fp32): a smaller batch
                peak = max(measure_matmul_peak(dtype, seconds=2.0) for _ in range(2))
                batch = 4 if precision == "fp32" else 1
                steps = 4 if args.quick else 8
            cfg = TrainConfig(batch_size=batch, seq_len=args.seq_len, precision=precision, lr=1e-3,
                              num_threads=args.threads)
            tn = precision == "bf16-mixed" and device == "cpu" and not cpu_has_native_bf16()
            stock_t, plain_t, ours_t = math.inf, math.inf, math.inf
            for _ in range(repeat):
                if tn:  # the same loop with torch's stock nn.Linear kernels (what nanoGPT gets)
                    stock_t = min(stock_t, median_skip_first(plain_loop(model_cfg, shards, cfg, steps, device, False)))
                plain_t = min(plain_t, median_skip_first(plain_loop(model_cfg, shards, cfg, steps, device, tn)))
                ours_t = min(ours_t, median_skip_first(ours(model_cfg, shards, cfg, steps, tmp)))
            if not tn:
                stock_t = plain_t
            tok = batch * args.seq_len
            mfu_s, mfu_p, mfu_o = (fpt * tok / t / peak for t in (stock_t, plain_t, ours_t))
            print(f"{precision:<11} {batch:>5} {steps:>5} {stock_t:>12.3f} {plain_t:>12.3f} {ours_t:>12.3f} "
                  f"{ours_t / plain_t - 1:>+9.1%} {peak / 1e9:>10.1f} {mfu_s:>9.1%} {mfu_p:>9.1%} {mfu_o:>9.1%}",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

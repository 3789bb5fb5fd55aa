"""The post-training rows of issue 19's size-quality table, as a function other benchmarks import.

`ptq_rows(model_dir, data_dir, out_dir, threads)` takes a trained tinyfoundry model dir (e.g. a run's
checkpoints/final) and the tokenized data dir it was trained on (the run's shards: held-out tokens and bytes per
token come from its val split, as the compress stage reads them), runs the compress stage with the PTQ passes below
and llama.cpp's own Q2_K / Q3_K_M / Q4_K_M quantizer as references, and returns one row per entry:
{name, bytes, bits_per_weight, bpb, delta_bpb, pareto, source} (+ pass facts such as lowrank_bits_per_weight).

Where the bytes and bpb come from:
- our passes: `bytes` = the compressed checkpoint's weight file (codes, scales, zero points, factors), `bpb` = our
  forward on its exact weights (what export/hf holds, dense);
- gptq-q4_0: its GGUF (our GPTQ blocks copied byte for byte), scored by llama.cpp;
- llama.cpp Q2_K / Q3_K_M / Q4_K_M: made by llama.cpp's quantizer (no importance matrix) from our F16 file of the
  trained model, scored by llama.cpp on the same tokens and windows as the compress report.
bits_per_weight = file bits / model parameters (embeddings included, so files compare whole).

    .venv/bin/python benchmarks/lowbit_ptq.py --model runs/X/checkpoints/final --data runs/X/shards --out /tmp/ptq

Target (issue 19): 2-bit GPTQ + low-rank correction (<= +0.25 bits per weight) has >= 30% less bpb increase
than 2-bit GPTQ alone. The target row trains the correction (and the group scales, codes frozen) block by block;
the fitted-only corrections and the same scale training without a correction are rows beside it, so the table
shows what each part brings. Measured: LOG.md, sessions 6 and 7.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from models.compress import CompressConfig, run_compress  # noqa: E402
from models.compress.report import mark_pareto  # noqa: E402

TUNED = {"bits": 2, "group_size": 64, "tune_steps": 200, "tune_lr": 1e-2, "tune_scales": True, "tune_target": "model"}
"""Block-wise reconstruction (models/compress/blocktune.py): codes frozen, the fp16 group scales (and the correction's
factors, where there is one) trained 200 Adam steps per block towards the full-precision model's block outputs."""
PTQ_PASSES = [
    {"method": "rtn", "name": "rtn-q4_0", "gguf_type": "q4_0"},
    {"method": "gptq", "name": "gptq-q4_0", "gguf_type": "q4_0"},
    {"method": "lowbit", "name": "gptq-3bit-g64", "bits": 3, "group_size": 64},
    {"method": "lowbit", "name": "rtn-2bit-g64", "bits": 2, "group_size": 64, "algo": "rtn"},
    {"method": "lowbit", "name": "gptq-2bit-g64", "bits": 2, "group_size": 64},
    {"method": "lowbit", "name": "gptq-2bit-g64-lr", "bits": 2, "group_size": 64, "lowrank_budget": 0.25,
     "lowrank_iters": 2},
    {"method": "lowbit", "name": "gptq-2bit-g64-lr-int4", "bits": 2, "group_size": 64, "lowrank_budget": 0.25,
     "lowrank_bits": 4, "lowrank_iters": 2},
    {"method": "lowbit", "name": "gptq-2bit-g64-scales-trained", **TUNED},
    {"method": "lowbit", "name": "gptq-2bit-g64-lr-int4-and-scales-trained", "lowrank_budget": 0.25, "lowrank_bits": 4,
     **TUNED},
    {"method": "lowrank", "name": "lowrank-svd-0.5", "size_ratio": 0.5},
]
"""Every PTQ pass from the trained model; block weights on the grid, the embedding int8 (q8_0 on GGUF grids)."""
LLAMA_REFS = ["q2_k", "q3_k_m", "q4_k_m"]
"""llama.cpp's own quantizer's types, the reference points."""
TARGET = ("gptq-2bit-g64", "gptq-2bit-g64-lr-int4-and-scales-trained")
CONTROL = "gptq-2bit-g64-scales-trained"
"""The same scale training without a correction: how much of the target row's gain the correction itself brings."""


def _load_val(data_dir: Path) -> tuple[torch.Tensor, float, str | None]:
    from data_pipelines.tokenize.shards import ShardIndex
    from launch.stages import val_tokens

    tokens, bpt = val_tokens(Path(data_dir))
    return tokens, bpt, ShardIndex.load(Path(data_dir)).tokenizer_sha256


def ptq_rows(model_dir: Path, data_dir: Path, out_dir: Path, threads: int = 1, passes: list[dict] | None = None,
             llama_refs: list[str] | None = None, num_calib_tokens: int = 16384,
             num_eval_tokens: int = 32768) -> list[dict]:
    """Compress `model_dir` with the PTQ passes (and llama.cpp references); -> rows, Pareto-marked."""
    torch.set_num_threads(max(1, threads))
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokens, bpt, tok_sha = _load_val(Path(data_dir))
    cfg = CompressConfig(passes=list(passes or PTQ_PASSES), num_calib_tokens=num_calib_tokens,
                         num_eval_tokens=num_eval_tokens, probes=False, num_gen_tokens=8, num_sample_tokens=8)
    report = run_compress(cfg, model_dir, tokens, bpt, out_dir / "compressed", tokenizer_sha256=tok_sha)
    base = report["baseline"]
    params = base["params"]

    def row(name: str, nbytes: int, bpb: float, source: str, **extra) -> dict:
        return {"name": name, "bytes": int(nbytes), "bits_per_weight": nbytes * 8 / params, "bpb": bpb,
                "delta_bpb": bpb - base["val_bpb"], "source": source, **extra}

    rows = [row("fp32", base["bytes"], base["val_bpb"], "trained model (safetensors, our forward)",
                notes=list(report.get("notes", [])))]
    for p in report["passes"]:
        extra = {k: p[k] for k in ("block_bits_per_weight", "lowrank_bits_per_weight", "lowrank_ranks",
                                   "tune_block_mse") if k in p}
        rows.append(row(p["name"], p["bytes"], p["val_bpb"], "compressed checkpoint (our forward)", **extra))
    rows += _gguf_rows(report, model_dir, out_dir, tokens, bpt, threads, llama_refs, row)
    mark_pareto(rows, "bytes", "bpb")
    return rows


def _gguf_rows(report: dict, model_dir: Path, out_dir: Path, tokens: torch.Tensor, bpt: float, threads: int,
               llama_refs: list[str] | None, row) -> list[dict]:
    """Files llama.cpp runs: the GPTQ Q4_0 pass's own GGUF and llama.cpp's quantizer's references."""
    from models.export import ExportConfig, run_export

    out: list[dict] = []
    jobs = [(model_dir, list(LLAMA_REFS if llama_refs is None else llama_refs), "export-llama")]
    if (out_dir / "compressed" / "gptq-q4_0").is_dir():
        jobs.append((out_dir / "compressed" / "gptq-q4_0", ["q4_0"], "export-gptq-q4_0"))
    for src, types, sub in jobs:
        if not types:
            continue
        info = run_export(ExportConfig(hf=False, card=False, gguf_types=types, threads=threads), src, out_dir / sub,
                          report=report, val_tokens=tokens, bytes_per_token=bpt)
        for f in info["files"]:
            label = f"llama.cpp {f['type'].upper()}" if sub == "export-llama" else "gptq-q4_0 (gguf)"
            if isinstance(f.get("val_bpb"), float):
                out.append(row(label, f["bytes"], f["val_bpb"], f"{f['file']} ({f['weights']}, llama.cpp)"))
    return out


def format_rows(rows: list[dict]) -> str:
    lines = [f"  {'':1} {'name':<40} {'MB':>8} {'bits/w':>7} {'bpb':>8} {'delta':>8}  source"]
    for r in rows:
        lines.append(f"  {'*' if r.get('pareto') else ' '} {r['name']:<40} {r['bytes'] / 1e6:>8.3f} "
                     f"{r['bits_per_weight']:>7.2f} {r['bpb']:>8.4f} {r['delta_bpb']:>+8.4f}  {r['source']}")
    by = {r["name"]: r for r in rows}
    if all(n in by for n in TARGET):
        plain, lr = by[TARGET[0]]["delta_bpb"], by[TARGET[1]]["delta_bpb"]
        extra = by[TARGET[1]].get("lowrank_bits_per_weight", float("nan"))
        cut = 1 - lr / plain if plain > 0 else float("nan")
        verdict = "PASS" if cut >= 0.30 and extra <= 0.25 else "FAIL"
        lines.append(f"[{verdict}] 2-bit GPTQ + low-rank correction ({TARGET[1]}): bpb increase {lr:+.4f} vs "
                     f"{plain:+.4f} alone ({cut:.0%} less; target >= 30%) at +{extra:.3f} bits/weight (target <= 0.25)")
        if CONTROL in by:
            ctl = by[CONTROL]["delta_bpb"]
            lines.append(f"  the same scale training without the correction ({CONTROL}): {ctl:+.4f} "
                         f"({1 - ctl / plain:.0%} less than alone); the trained correction on top of it: "
                         f"{1 - lr / ctl:.0%} less" if plain > 0 and ctl > 0 else "")
    lines.append("  * = on the Pareto front (file bytes vs held-out bpb)")
    for r in rows:
        lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained model dir (a run's checkpoints/final)")
    ap.add_argument("--data", type=Path, required=True, help="its tokenized data dir (the run's shards)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    args = ap.parse_args()
    rows = ptq_rows(args.model, args.data, args.out, args.threads, num_calib_tokens=args.calib_tokens,
                    num_eval_tokens=args.eval_tokens)
    print(format_rows(rows))


if __name__ == "__main__":
    main()

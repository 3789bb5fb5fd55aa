"""Low-bit benchmark (issue 19): QAT, ternary, block sharing and post-training baselines side by side.

On TinyStories (../shared/data/tinystories, tokenized by the tokenize stage) at a training-FLOP budget, with the shape
the planner picks for that budget (train/planner), four runs of the one training recipe (train/runner.py):
  (a) full precision; (b) ternary QAT from scratch (BitNet b1.58 absmean, TQ blocks of 256; embedding and tied head
  on the int4 grid, so the file is low-bit throughout); (c) int4 QAT on llama.cpp's Q4_0 grid (embedding left to
  Q8_0 in the file, as llama.cpp's quantizer keeps it); (d) share_blocks 2 (half the stored blocks, the same depth)
  at equal training FLOPs.
Each is scored on the same held-out windows (val split): (a) and (d) by our forward, (b) and (c) by llama.cpp
(llama-cpp-python) on the exported GGUF that holds exactly the trained grid, and by our forward beside it.
Beside them, post-training baselines of (a): absmean ternary with no training (same file type as (b)) and GPTQ onto
Q4_0 (models/compress, its blocks copied into the GGUF), both scored by llama.cpp; and the F16 GGUF's size.
Then, when their modules are present, the PTQ rows of `benchmarks/lowbit_ptq.py` (GPTQ 2/3-bit, low-rank correction,
SVD) on model (a), and prune-30 + plain vs distillation recovery from `benchmarks/bench_distill_recovery.py`.

    .venv/bin/python benchmarks/bench_lowbit.py [--flops 1e14] [--quick] [--out DIR] [--threads N]

Reruns reuse what is done: tokenized shards, plan.json, every finished training run (run_train resumes an
interrupted one from its last.ckpt) and every exported file; results.json in --out holds the table.

Ternary rows in llama.cpp's TQ1_0 / TQ2_0 need every weight row to be a multiple of 256 (TQ's block); rows that are
not (the planner's widths at these budgets: 64-192) are written as Q4_0 holding the same ternary values exactly, and
the table says which type each file used (`--dim/--hidden` pick a TQ-friendly shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from models import ModelConfig, load_model  # noqa: E402
from models.accounting import count_params, flops_per_token  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinystories" / "tinystories_2000.txt"
ARMS = ("fp", "ternary", "int4", "share2")


def build_data(out: Path, vocab: int) -> tuple[Path, Path]:
    """(shards_dir, tokenizer.json) of TinyStories through the tokenize stage; reused when present."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipelines.tokenize import TokenizeConfig, run_tokenize

    shards, tok = out / "data" / "shards", out / "data" / "tokenizer" / "tokenizer.json"
    if (shards / "index.json").is_file() and tok.is_file():
        return shards, tok
    docs = [s.strip() for s in DATA.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "id": [f"s{i}" for i in range(len(docs))]}), out / "data" / "docs.parquet")
    # a val split that holds the scored tokens and, after them, the calibration windows: the PTQ passes that train
    # on calibration data (lowbit tune_steps) must not be scored on what they trained on
    run_tokenize(TokenizeConfig(vocab_size=vocab, val_fraction=0.15, progress=False), [out / "data" / "docs.parquet"],
                 out / "data" / "tokenizer", shards, seed=0)
    return shards, tok


def get_plan(out: Path, shards: Path, flops: float, seq_len: int) -> dict:
    from train.planner.config import PlanConfig
    from train.planner.plan import run_plan

    path = out / f"plan-{flops:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return run_plan(PlanConfig(flops=flops, seq_len=seq_len), path, shards)


def val_tokens(shards: Path, n: int) -> tuple[torch.Tensor, float]:
    from data_pipelines.tokenize.shards import ShardIndex

    idx = ShardIndex.load(shards)
    arr = torch.cat([torch.from_numpy(a.astype("int64")) for a in idx.open("val")])
    return arr[:n], float(idx.bytes_per_token("val"))


def arm_configs(plan: dict, args) -> dict[str, tuple[ModelConfig, dict]]:
    """Model config and train-config overrides of each arm; (d) gets the tokens that equalise training FLOPs."""
    base = ModelConfig.from_dict({**plan["model"], **({"dim": args.dim, "num_heads": args.dim // 32, "head_dim": 0}
                                                      if args.dim else {}),
                                  **({"hidden_dim": args.hidden} if args.hidden else {})})
    tokens = int(float(plan["num_tokens"]))
    if args.dim or args.hidden:  # same budget, the shape's own FLOPs per token
        tokens = int(float(plan["flops"]) / flops_per_token(base, int(plan["seq_len"])))
    shared = dataclasses.replace(base, num_layers=math.ceil(base.num_layers / 2), share_blocks=2)
    shared_tokens = int(tokens * flops_per_token(base, int(plan["seq_len"]))
                        / flops_per_token(shared, int(plan["seq_len"])))
    return {
        "fp": (base, {"max_tokens": tokens}),
        "ternary": (base, {"max_tokens": tokens, "qat": "ternary", "qat_block": 256, "qat_embeddings": True}),
        "int4": (base, {"max_tokens": tokens, "qat": "int4"}),
        "share2": (shared, {"max_tokens": shared_tokens}),
    }


def train_arm(name: str, model_cfg: ModelConfig, overrides: dict, plan: dict, shards: Path, tok: Path, out: Path,
              threads: int) -> dict:
    from train.config import TrainConfig
    from train.runner import run_train

    run = out / "runs" / name
    summary = run / "train" / "summary.json"
    if summary.is_file() and (run / "checkpoints" / "final").is_dir():
        s = json.loads(summary.read_text())
        if s.get("status") == "completed":
            print(f"[{name}] reusing {run}", flush=True)
            return s
    cfg = TrainConfig(num_threads=threads, progress_bar=False, num_sample_tokens=0, seed=0, **overrides)
    t0 = time.perf_counter()
    s = run_train(cfg, model_cfg, shards, run, plan=plan, tokenizer_file=tok)
    print(f"[{name}] {s['steps']} steps, {s['tokens']:,} tokens, val_bpb {s['val_bpb']:.4f}, "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    return s


def ours_bpb(model_dir: Path, tokens: torch.Tensor, bpt: float, seq: int) -> float:
    from models.compress.report import eval_bpb

    model, _ = load_model(model_dir)
    return eval_bpb(model.eval(), tokens, bpt, seq)


def qat_file(model_dir: Path, tok: Path, path: Path, ftype: str, qat: dict | None = None) -> dict:
    from models.export.qat_gguf import export_qat_gguf

    model, _ = load_model(model_dir)
    qat = qat or {k: tuple(v) for k, v in json.loads((model_dir / "extra.json").read_text())["qat"].items()}
    if not path.is_file():
        export_qat_gguf(model.eval(), qat, tok, path, ftype)
    return {"path": path, "bytes": path.stat().st_size, "types": _file_types(path)}


def _file_types(path: Path) -> str:
    import gguf

    r = gguf.GGUFReader(str(path))
    kinds: dict[str, int] = {}
    for t in r.tensors:
        if len(t.shape) > 1:
            kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + int(t.n_elements)
    total = sum(kinds.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def ptq_ternary_dir(fp_dir: Path, out: Path) -> Path:
    """Model (a) rounded to the ternary grid with no training (the same grids as arm (b)), saved as a model dir."""
    from models import save_model_dir
    from models.qat import bake, convert

    d = out / "ptq-ternary"
    if not (d / "extra.json").is_file():
        model, tok = load_model(fp_dir)
        convert(model, "ternary", 256, embeddings=True)
        info = bake(model)
        save_model_dir(d, model, tokenizer_file=tok, extra={"qat": {k: list(v) for k, v in info.items()}})
    return d


def gptq_q4_0_file(fp_dir: Path, out: Path, val: torch.Tensor, bpt: float, tok: Path) -> dict:
    """GPTQ onto Q4_0 of model (a) (models/compress), its blocks copied into a GGUF."""
    from models.compress import CompressConfig, run_compress
    from models.export import load_for_export
    from models.export.gguf import export_gguf

    path = out / "gguf" / "fp-gptq-q4_0.gguf"
    if not path.is_file():
        ccfg = CompressConfig(passes=[{"method": "gptq", "gguf_type": "q4_0", "name": "gptq-q4_0"}],
                              num_calib_tokens=16384, num_eval_tokens=min(val.numel(), 16384), plot=False,
                              probes=False)
        run_compress(ccfg, fp_dir, val, bpt, out / "compressed")
        model, _, qt = load_for_export(out / "compressed" / "gptq-q4_0")
        export_gguf(model, tok, path, "q4_0", qtensors=qt)
    return {"path": path, "bytes": path.stat().st_size, "types": _file_types(path)}


def extra_rows(fp_dir: Path, shards: Path, out: Path, threads: int) -> list[dict]:
    """The PTQ rows (benchmarks/lowbit_ptq.py) and the prune-30 recovery rows (bench_distill_recovery.py) of (a)."""
    import bench_distill_recovery
    from lowbit_ptq import ptq_rows

    return ptq_rows(fp_dir, shards, out / "ptq", threads) + bench_distill_recovery.recovery_rows(
        fp_dir, shards, out / "recovery", threads)


def score_all(arms: dict[str, dict], out: Path, tok: Path, val: torch.Tensor, bpt: float, seq: int, threads: int
              ) -> list[dict]:
    """One row per scored file or model: name, runtime, bytes, file types, bpb."""
    from models.export import runtime_eval as rt
    from models.export.gguf import export_gguf

    gdir = out / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    final = {a: out / "runs" / a / "checkpoints" / "final" for a in arms}
    rows: list[dict] = []

    def add(name: str, runtime: str, path: Path | None, bpb: float, params: int, types: str = "") -> None:
        nbytes = path.stat().st_size if path is not None else 0
        rows.append({"name": name, "runtime": runtime, "file": str(path.name) if path else "", "bytes": nbytes,
                     "types": types, "bpb": bpb, "params": params})
        print(f"  {name:<28} {runtime:<10} {nbytes:>10,} B  bpb {bpb:.4f}  {types}", flush=True)

    def gguf_row(name: str, path: Path, params: int) -> None:
        add(name, "llama.cpp", path, rt.gguf_bpb(path, val, bpt, seq, threads), params, _file_types(path))

    fp_params = count_params(load_model(final["fp"])[0].cfg)["total"]
    add("(a) full precision", "ours", None, ours_bpb(final["fp"], val, bpt, seq), fp_params)
    f16 = gdir / "fp-f16.gguf"
    if not f16.is_file():
        export_gguf(load_model(final["fp"])[0].eval(), tok, f16, "f16")
    gguf_row("(a) F16 GGUF", f16, fp_params)
    tern_type = "tq2_0"
    add("(b) ternary QAT", "ours", None, ours_bpb(final["ternary"], val, bpt, seq), fp_params)
    for t in ("tq2_0", "tq1_0"):
        f = qat_file(final["ternary"], tok, gdir / f"ternary-qat-{t}.gguf", t)
        if "TQ" not in f["types"]:  # no row is a multiple of 256: both files are the same Q4_0 (exact) file
            gguf_row("(b) ternary QAT file (Q4_0: no row /256)", f["path"], fp_params)
            tern_type = "q4_0"
            break
        gguf_row(f"(b) ternary QAT {t.upper()}", f["path"], fp_params)
    add("(c) int4 QAT", "ours", None, ours_bpb(final["int4"], val, bpt, seq), fp_params)
    f = qat_file(final["int4"], tok, gdir / "int4-qat-q4_0.gguf", "q4_0")
    gguf_row("(c) int4 QAT Q4_0", f["path"], fp_params)
    sh_cfg = load_model(final["share2"])[0].cfg
    add(f"(d) share_blocks 2 ({sh_cfg.num_layers}x2)", "ours", None, ours_bpb(final["share2"], val, bpt, seq),
        count_params(sh_cfg)["total"])
    ptq_t = ptq_ternary_dir(final["fp"], out)
    f = qat_file(ptq_t, tok, gdir / f"fp-ptq-ternary-{tern_type}.gguf", tern_type)
    gguf_row(f"(a) + PTQ ternary file {tern_type.upper()}", f["path"], fp_params)
    f = gptq_q4_0_file(final["fp"], out, val, bpt, tok)
    gguf_row("(a) + GPTQ Q4_0", f["path"], fp_params)
    return rows


def print_table(rows: list[dict], extra: list[dict]) -> None:
    fp = next(r for r in rows if r["name"] == "(a) full precision")
    f16 = next(r for r in rows if r["name"] == "(a) F16 GGUF")
    print("\n| model / file | runtime | bytes | x F16 | bpb | x fp bpb | types |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['bytes'] / f16['bytes']:.3f}" if r["bytes"] else "-"
        print(f"| {r['name']} | {r['runtime']} | {r['bytes']:,} | {size} | {r['bpb']:.4f} | "
              f"{r['bpb'] / fp['bpb']:.4f} | {r['types']} |")
    if extra:  # scored by lowbit_ptq / bench_distill_recovery on their own held-out windows: increases, not ratios
        print("\n| (a) compressed after training | bytes | bits/weight | bpb | bpb increase over its baseline |")
        print("|---|---|---|---|---|")
    for r in extra:
        bpw = f"{r['bits_per_weight']:.2f}" if "bits_per_weight" in r else "-"
        print(f"| {r.get('name')} | {r.get('bytes', 0):,} | {bpw} | {r.get('bpb', float('nan')):.4f} | "
              f"{r.get('delta_bpb', float('nan')):+.4f} |")


def extra_targets(extra: list[dict]) -> list[tuple[str, bool, str]]:
    """2-bit GPTQ + low-rank correction vs GPTQ alone; distill vs plain recovery after prune-30."""
    by = {r["name"]: r for r in extra}
    out = []
    alone = by.get("gptq-2bit-g64")
    corrected = [r for n, r in by.items() if n.startswith("gptq-2bit-g64-lr") and r.get("lowrank_bits_per_weight", 0)
                 <= 0.25 + 1e-9]
    if alone and corrected:
        best = min(corrected, key=lambda r: r["delta_bpb"])
        cut = 1 - best["delta_bpb"] / alone["delta_bpb"]
        control = by.get("gptq-2bit-g64-scales-trained")
        vs = (f"; the same scale training alone {control['delta_bpb']:+.4f}"
              if control and "trained" in best["name"] else "")
        out.append(("2-bit GPTQ + low-rank (<= +0.25 bpw): >= 30% less bpb increase", cut >= 0.30,
                    f"{best['delta_bpb']:+.4f} vs {alone['delta_bpb']:+.4f} ({cut:.0%} less, {best['name']}{vs})"))
    plain, distill = by.get("prune-30 structured, plain recovery"), by.get("prune-30 structured, distill recovery")
    if plain and distill:
        out.append(("prune-30 + distill recovery beats plain at equal tokens", distill["bpb"] < plain["bpb"],
                    f"{distill['bpb']:.4f} vs {plain['bpb']:.4f}"))
    return out


def targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    by = {r["name"]: r for r in rows}
    fp, f16 = by["(a) full precision"]["bpb"], by["(a) F16 GGUF"]["bytes"]
    tq = [r for r in rows if r["name"].startswith("(b) ternary QAT") and r["runtime"] == "llama.cpp"]
    best_tq = min(tq, key=lambda r: r["bpb"])
    smallest = min(tq, key=lambda r: r["bytes"])
    int4 = by["(c) int4 QAT Q4_0"]["bpb"]
    sh = next(r for r in rows if r["name"].startswith("(d)"))
    out = [
        ("ternary QAT bpb <= 1.15x full precision (llama.cpp, file)", best_tq["bpb"] <= 1.15 * fp,
         f"{best_tq['bpb']:.4f} vs {fp:.4f} ({best_tq['bpb'] / fp:.3f}x, {best_tq['name']})"),
        ("ternary GGUF <= 0.2x F16 bytes", smallest["bytes"] <= 0.2 * f16,
         f"{smallest['bytes']:,} / {f16:,} = {smallest['bytes'] / f16:.3f} ({smallest['types']})"),
        ("int4 QAT <= +1% bpb (llama.cpp Q4_0)", int4 <= 1.01 * fp, f"{int4:.4f} vs {fp:.4f} ({int4 / fp - 1:+.2%})"),
        ("share_blocks 2 within 3% bpb at equal FLOPs", sh["bpb"] <= 1.03 * fp,
         f"{sh['bpb']:.4f} vs {fp:.4f} ({sh['bpb'] / fp - 1:+.2%}), {sh['params']:,} vs "
         f"{by['(a) full precision']['params']:,} params"),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flops", type=float, default=1e14, help="training FLOPs per run (issue 19: ~1e14)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (3e11 FLOPs, 4K eval tokens)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_lowbit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=0, help="override the planner's width (e.g. 256 for TQ-sized rows)")
    ap.add_argument("--hidden", type=int, default=0, help="override the planner's MLP width (e.g. 512)")
    ap.add_argument("--skip-extra", action="store_true", help="skip the lowbit_ptq / distill-recovery rows")
    ap.add_argument("--train-only", default="", help="comma list of arms to train, then stop (no scoring): runs split "
                    f"over processes ({', '.join(ARMS)}); a last run without it reuses them and scores")
    args = ap.parse_args()
    only = [a for a in args.train_only.split(",") if a]
    if unknown := sorted(set(only) - set(ARMS)):
        raise SystemExit(f"--train-only: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if args.quick:
        args.flops, args.eval_tokens = min(args.flops, 3e11), 4096
    torch.set_num_threads(args.threads)
    out = args.out / (f"flops-{args.flops:g}" + (f"-d{args.dim}h{args.hidden}" if args.dim or args.hidden else ""))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shards, tok = build_data(args.out, args.vocab)
    plan = get_plan(args.out, shards, args.flops, args.seq_len)
    arms = {}
    for name, (mcfg, over) in arm_configs(plan, args).items():
        if only and name not in only:
            continue
        print(f"[{name}] dim {mcfg.dim} x {mcfg.num_layers}" + (f" x{mcfg.share_blocks}" if mcfg.share_blocks > 1
              else "") + f", hidden {mcfg.hidden_dim}, {count_params(mcfg)['total']:,} params, "
              f"{over['max_tokens']:,} tokens, {flops_per_token(mcfg, int(plan['seq_len'])) * over['max_tokens']:.3g} "
              "FLOPs", flush=True)
        arms[name] = train_arm(name, mcfg, over, plan, shards, tok, out, args.threads)
    if only:
        print(f"trained {', '.join(only)} in {time.perf_counter() - t0:.0f}s; score with a run without --train-only")
        return
    val, bpt = val_tokens(shards, args.eval_tokens)
    seq = int(plan["seq_len"])
    rows = score_all(arms, out, tok, val, bpt, seq, args.threads)
    extra, notes = ([], ["extra rows skipped (--skip-extra)"]) if args.skip_extra else (extra_rows(
        out / "runs" / "fp" / "checkpoints" / "final", shards, out, args.threads), [])
    print_table(rows, extra)
    for n in notes:
        print(f"note: {n}")
    res = targets(rows) + extra_targets(extra)
    print()
    for label, ok, detail in res:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {detail}")
    print(f"\nwall {time.perf_counter() - t0:.0f}s; budget {args.flops:g} FLOPs per run; out {out}")
    from models.atomic import atomic_write_json

    atomic_write_json(out / "results.json", {"rows": rows, "extra": extra, "notes": notes, "plan_model": plan["model"],
                                              "targets": [{"target": a, "pass": b, "detail": c} for a, b, c in res]})


if __name__ == "__main__":
    main()

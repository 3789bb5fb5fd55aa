"""A shipped recipe end to end vs bench_vs_llama2c's default recipe and its tuned baseline, at the same FLOPs.

A recipe that drifts from what the experiments found (LOG.md) shows here: `tinyfoundry run` runs the recipe (curate,
tokenize, plan, train, compress, export) on bench_vs_llama2c's 90% training split of ../shared/data/tinystories
(written to a text file and passed as `--curate.inputs`, so no held-out story is seen), and the exported Hugging Face
folder (`export/hf`) is scored on the other 10% in held-out bits per byte by bench_vs_llama2c's own code. Beside it,
in the same script and at the same training FLOPs (6 N tokens, N all parameters, bench_vs_llama2c's convention,
measured from the recipe's finished run): bench_vs_llama2c's default recipe (its planner shape, the trainer's
defaults) and the llama2.c-style baseline at the given learning rates (its best lr at 1e13 FLOPs was 6e-3, LOG.md).
The recipe's plan budget is set by `--flops` (instead of its `plan.hours`, which depends on the machine) so runs
compare across machines.

    .venv/bin/python benchmarks/bench_recipes.py --threads 1                 # tinystories-cpu at 1e13 planner FLOPs
    .venv/bin/python benchmarks/bench_recipes.py --skip-default --lrs ''     # the recipe alone

Done when the recipe is within 1% of the default recipe (held-out bpb ratio <= 1.01).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

import bench_vs_llama2c as b  # noqa: E402


def run_recipe(config: Path, train_docs: list[str], val_docs: list[str], flops: float, work: Path, threads: int,
               seed: int, precision: str = "") -> dict:
    """`tinyfoundry run` on the recipe, the exported model scored on the held-out stories; a bench_vs_llama2c row.
    `precision` ("" = the recipe's own) overrides `train.precision`; the row records what the run resolved it to."""
    from tokenizers import Tokenizer

    from models import load_model

    data = work / "train_stories.txt"
    data.write_text("\n<|endoftext|>\n".join(train_docs) + "\n")
    rd = work / f"recipe-{precision or 'own'}"
    cmd = [sys.executable, "-m", "launch.cli", "run", "--config", str(config), "--run-dir", str(rd),
           f"--curate.inputs=[\"{data}\"]", "--curate.hf_split=train", "--plan.hours=0", f"--plan.flops={flops:g}",
           f"--train.num_threads={threads}", "--train.progress_bar=false", "--tokenize.progress=false"]
    if precision:
        cmd.append(f"--train.precision={precision}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads or os.cpu_count())}
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.time() - t0
    plan = json.loads((rd / "plan.json").read_text())
    summary = json.loads((rd / "train" / "summary.json").read_text())
    model, _ = load_model(rd / "export" / "hf")
    tok = Tokenizer.from_file(str(rd / "export" / "hf" / "tokenizer.json"))
    seq_len = int(plan["seq_len"])
    va, va_bytes = b.token_stream(tok, val_docs)
    trs, _ = b.token_stream(tok, train_docs[: len(val_docs)])
    tr, _ = b.token_stream(tok, train_docs)
    n = b.num_params(model)
    tokens = int(summary["tokens"])
    m = model.cfg
    label = f"recipe {config.stem} (tinyfoundry run{', ' + precision if precision else ''})"
    return {"run": label, "params": n, "vocab": tok.get_vocab_size(),
            "steps": int(summary.get("steps", 0)), "tokens": tokens, "flops": 6 * n * tokens, "lr": None,
            "train_loss": summary.get("final_train_loss"), "bpb": b.heldout_bpb(model, va, va_bytes, seq_len),
            "train_bpb": b.heldout_bpb(model, trs, sum(len(d.encode()) for d in train_docs[: len(val_docs)]),
                                       seq_len),
            "epochs": tokens / tr.numel(), "wall_s": wall, "train_wall_s": summary.get("wall_s"),
            "precision": summary.get("precision"), "tokens_per_s": summary.get("tokens_per_s"),
            "shape": f"dim {m.dim}, {m.num_layers} layers, {m.num_heads} heads, batch {plan['batch_size']}x{seq_len}",
            "used": {"pipeline": "tinyfoundry run"},
            "train_bytes_per_token": sum(len(d.encode()) for d in train_docs) / tr.numel()}


def pair_precisions(recipes: list[dict]) -> None:
    """Recipe runs that differ in the precision they resolved to (issue 22: bf16-mixed within 0.5% of fp32's
    held-out bpb): their bpb, whole-pipeline and train wall, and ratios against the fp32 run."""
    fp32 = [r for r in recipes if r.get("precision") == "fp32"]
    others = [r for r in recipes if r.get("precision") not in (None, "fp32")]
    if not fp32 or not others:
        return
    f = fp32[-1]
    print(f"\n| {'run':<52} | {'precision':>10} | {'held-out bpb':>12} | {'vs fp32':>8} | {'pipeline s':>10} | "
          f"{'train s':>8} | {'train tok/s':>11} | {'wall vs fp32':>12} |")
    print("|" + "|".join("-" * (w + 2) for w in (52, 10, 12, 8, 10, 8, 11, 12)) + "|")
    for r in [f, *others]:
        print(f"| {r['run']:<52} | {r['precision']:>10} | {r['bpb']:>12.4f} | {r['bpb'] / f['bpb']:>7.4f}x | "
              f"{r['wall_s']:>10.0f} | {r['train_wall_s']:>8.0f} | {r['tokens_per_s']:>11.0f} | "
              f"{r['wall_s'] / f['wall_s']:>11.3f}x |")
    for r in others:
        d = r["bpb"] / f["bpb"] - 1
        verdict = "MET" if d <= 0.005 else "NOT met"
        print(f"{r['precision']} vs fp32 held-out bpb: {d:+.2%} (target: at most 0.5% above fp32: {verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tinystories-cpu.yaml")
    ap.add_argument("--flops", type=float, default=1e13, help="the recipe's plan budget (plan.flops)")
    ap.add_argument("--lrs", type=str, default="6e-3", help="baseline learning rates ('' skips the baseline)")
    ap.add_argument("--skip-default", action="store_true", help="do not train bench_vs_llama2c's default recipe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="", help="train.precision for the recipe run (fp32, bf16-mixed, auto; "
                    "'' = the recipe's own); run two processes with --json and join them with --merge to pair them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-recipe", action="store_true",
                    help="train only the other rows, at --bench-flops (runs split over processes, joined by --merge)")
    ap.add_argument("--bench-flops", type=float, default=0.0,
                    help="with --skip-recipe: the recipe's measured FLOPs (6 N tokens) printed by its run")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="also report rows of earlier --json files")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_docs, val_docs = b.split_stories(args.seed)
    rows: list[dict] = [r for f in args.merge for r in json.loads(f.read_text())]
    n_merged = len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rec = None
        if args.skip_recipe:
            flops = args.bench_flops
        else:
            rec = run_recipe(args.config, train_docs, val_docs, args.flops, work, args.threads, args.seed,
                             args.precision)
            print(f"  {rec['run']}: bpb {rec['bpb']:.4f}, {rec['flops']:.6g} FLOPs ({rec['wall_s']:.0f}s, the whole "
                  f"pipeline; train {rec['train_wall_s']:.0f}s at {rec['tokens_per_s']:.0f} tok/s in "
                  f"{rec['precision']}), {rec['shape']}", flush=True)
            flops = rec["flops"]  # the other rows train at the recipe's measured FLOPs
        lrs = [float(x) for x in args.lrs.split(",") if x]
        if lrs:
            rows += b.run_baseline(train_docs, val_docs, flops, lrs, work, args.seed)
        if not args.skip_default:
            rows.append(b.run_ours(train_docs, val_docs, flops, work, args.seed))
            rows[-1]["run"] = "ours (bench_vs_llama2c default)"
        if rec is not None:
            rows.append(rec)
    b.report(rows)
    default = [r for r in rows if r["run"].startswith("ours")]
    recipe = [r for r in rows if r["run"].startswith("recipe")]
    if default and recipe:
        ratio = recipe[-1]["bpb"] / default[-1]["bpb"]
        print(f"\nrecipe / default recipe = {ratio:.4f}  (target <= 1.01: {'MET' if ratio <= 1.01 else 'NOT met'})")
    pair_precisions([r for r in rows if r["run"].startswith("recipe")])
    if args.json:
        args.json.write_text(json.dumps(rows[n_merged:], indent=2, default=str))


if __name__ == "__main__":
    main()

"""A shipped config's wall time with `train.precision: auto` against fp32, side by side (issue 22).

Configs used to hard-code `precision: fp32` for one machine; now `auto` (the default) picks bf16-mixed where this
device computes bf16 natively and measurably faster, fp32 elsewhere. This runs `tinyfoundry run` on each config once
per precision, all precisions at the same time by default (one process each, `--threads` each), so that they share
whatever else the machine is doing alike, and prints per-stage wall times, the train stage's tokens/s, the
precision the run resolved to, and the train stage's validation bpb, with ratios against the fp32 run.

    .venv/bin/python benchmarks/bench_precision.py                                  # the demo, fp32 vs auto
    .venv/bin/python benchmarks/bench_precision.py --configs configs/demo.yaml --sequential

For tinystories-cpu on held-out TinyStories at 1e13 FLOPs use bench_recipes.py --precision (two processes, --merge).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ("synth", "curate", "tokenize", "plan", "train", "compress", "export")


def command(config: Path, run_dir: Path, precision: str, threads: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "run", "--config", str(config), "--run-dir", str(run_dir),
            f"--train.precision={precision}", f"--train.num_threads={threads}", "--train.progress_bar=false",
            *extra]


def collect(run_dir: Path, wall_s: float, config: Path, precision: str) -> dict:
    """One row: the run's stage walls from its manifests, the train summary's resolved precision, speed and bpb."""
    from launch.rundir import RunDir

    rd = RunDir(run_dir)
    stages = {s: float(m["wall_s"]) for s in STAGES if (m := rd.read_manifest(s)) is not None}
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    return {"config": config.stem, "asked": precision, "precision": summary.get("precision"), "wall_s": wall_s,
            "stages": stages, "train_wall_s": summary.get("wall_s"), "tokens_per_s": summary.get("tokens_per_s"),
            "val_bpb": summary.get("val_bpb"), "tokens": summary.get("tokens"),
            "compile": summary.get("compile")}


def report(rows: list[dict]) -> None:
    stage_names = [s for s in STAGES if any(s in r["stages"] for r in rows)]
    head = ["config", "asked", "ran in", *[f"{s} s" for s in stage_names], "total s", "train tok/s", "val bpb",
            "wall vs fp32", "train vs fp32"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        base = next((b for b in rows if b["config"] == r["config"] and b["precision"] == "fp32"), None)
        wall_ratio = f"{r['wall_s'] / base['wall_s']:.3f}x" if base else "-"
        train_ratio = f"{r['stages'].get('train', 0) / base['stages']['train']:.3f}x" if base else "-"
        cells = [r["config"], r["asked"], str(r["precision"]),
                 *[f"{r['stages'][s]:.0f}" if s in r["stages"] else "-" for s in stage_names],
                 f"{r['wall_s']:.0f}", f"{r['tokens_per_s']:.0f}", f"{r['val_bpb']:.4f}", wall_ratio, train_ratio]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=Path, nargs="+", default=[ROOT / "configs" / "demo.yaml"])
    ap.add_argument("--precisions", default="fp32,auto", help="comma list of train.precision values")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--sequential", action="store_true", help="one run at a time instead of all at once")
    ap.add_argument("--work", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--set", dest="extra", action="append", default=[],
                    help="an extra override for every run, e.g. --set=--train.max_tokens=1e6")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        jobs = [(c, p, work / f"{c.stem}-{p}") for c in args.configs for p in precisions]
        batches = [[j] for j in jobs] if args.sequential else [jobs]
        rows: list[dict] = []
        for batch in batches:
            rows += run_together(batch, args.threads, args.extra, env)
        report(rows)
        for r in rows:
            print(f"  {r['config']} {r['asked']} -> {r['precision']}; train.compile -> {r['compile']}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))


def run_together(jobs: list[tuple[Path, str, Path]], threads: int, extra: list[str], env: dict) -> list[dict]:
    """Start every job at once, note each one's own end time (polled), and collect their rows."""
    procs = []
    for config, precision, run_dir in jobs:
        log_path = run_dir.with_suffix(".log")
        print(f"  start {config.stem} {precision} -> {log_path}", flush=True)
        log = open(log_path, "w")  # noqa: SIM115 - closed when the process ends
        procs.append((config, precision, run_dir, log, time.time(),
                      subprocess.Popen(command(config, run_dir, precision, threads, extra), cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)))
    walls: dict[int, float] = {}
    while len(walls) < len(procs):
        for i, (config, precision, run_dir, log, t0, proc) in enumerate(procs):
            if i not in walls and proc.poll() is not None:
                walls[i] = time.time() - t0
                log.close()
                if proc.returncode:
                    raise SystemExit(f"{config.stem} {precision} failed (exit {proc.returncode}): see "
                                     f"{run_dir.with_suffix('.log')}")
        time.sleep(1.0)
    return [collect(run_dir, walls[i], config, precision) for i, (config, precision, run_dir, *_r) in enumerate(procs)]


if __name__ == "__main__":
    main()

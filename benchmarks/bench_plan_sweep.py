"""The real IsoFLOP sweep on ../shared/data/tinystories: time it, fit the law, check a held-out run.

    .venv/bin/python benchmarks/bench_plan_sweep.py [--quick] [--out DIR]

Tokenizes the 2,000 TinyStories (byte-level BPE, 512 tokens, 5% val) into DIR, runs `run_sweep`
(resumable: rerun with the same --out to continue), and prints the fitted parameters with bootstrap intervals,
the fit residuals, the held-out run's predicted vs measured loss (target: within 3%) and the wall time
(target: under 30 minutes on 2 cores). Side by side: the fitted law's allocation vs the published laws'.
--quick runs two small budgets x 4 sizes (a smoke test of the whole path, minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data_pipelines.tokenize import TokenizeConfig, run_tokenize
from train.planner.laws import CHINCHILLA_APPROACH1, EPOCH_AI, load_fitted
from train.planner.sweep import SweepConfig, run_sweep

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories" / "tinystories_2000.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_plan_sweep"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    shards = args.out / "shards"
    if not (shards / "index.json").exists():
        run_tokenize(TokenizeConfig(vocab_size=512, val_fraction=0.05, progress=False), [DATA.resolve()],
                     args.out / "tokenizer", shards, seed=0)
    if args.quick:
        cfg = SweepConfig(budgets=[1e10, 3e10], num_sizes=4, num_bootstrap=20, num_starts=8, min_steps=10)
        out = args.out / "sweep-quick"
    else:
        cfg = SweepConfig()
        out = args.out / "sweep"
    res = run_sweep(cfg, shards, out)
    wall = time.perf_counter() - t0
    p = res["params"]
    print(f"runs: {len(res['runs'])} ({sum(r['role'] == 'sweep' for r in res['runs'])} sweep), "
          f"budgets {cfg.budgets}, train tokens {res['data']['train_tokens']}")
    print(f"fitted: E={p['E']:.3f} A={p['A']:.4g} B={p['B']:.4g} alpha={p['alpha']:.3f} beta={p['beta']:.3f} "
          f"({res['param_convention']} params)")
    if res["bootstrap"] and res["bootstrap"]["intervals"]:
        iv = res["bootstrap"]["intervals"]
        print("bootstrap 95%: " + ", ".join(f"{k} [{v[0]:.3g}, {v[1]:.3g}]" for k, v in iv.items()))
    print(f"fit residuals: max |rel| {res['fit']['max_abs_rel_residual']:.3%}, rms {res['fit']['rms_rel_residual']:.3%}")
    if "holdout" in res:
        h = res["holdout"]
        ok = "PASS" if abs(h["rel_error"]) <= 0.03 else "FAIL"
        print(f"held-out run C={h['budget']:.3g} N={h['law_params']} D={h['num_tokens']}: predicted "
              f"{h['predicted_loss']:.4f}, measured {h['final_val_loss']:.4f}, error {h['rel_error']:+.2%} "
              f"(target 3%: {ok})")
    law = load_fitted(out / "fitted_law.json")
    for c in (1e12, 1e15, 1e18):
        nf, df = law.allocate(c)
        nc, dc = CHINCHILLA_APPROACH1.allocate(c)
        ne, de = EPOCH_AI.allocate(c)
        print(f"C={c:.0e}: fitted N={nf:.3g} D/N={df / nf:.3g} | chinchilla N={nc:.3g} D/N={dc / nc:.3g} | "
              f"epoch N={ne:.3g} D/N={de / ne:.3g}  (ratio fitted/chinchilla N: {nf / nc:.3g})")
    print(f"sweep wall {res['wall_s']:.0f} s (training {res['train_wall_s']:.0f} s), total with tokenize {wall:.0f} s "
          f"(target < 1800 s): {'PASS' if wall < 1800 else 'FAIL'}")
    print(f"wrote {out / 'fitted_law.json'} and {out / 'isoflop.png'}")
    json.dumps(res)  # fitted_law.json is plain JSON


if __name__ == "__main__":
    main()

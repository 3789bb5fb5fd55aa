"""Wanda-50% against magnitude-50% on a trained model, and why they end up close at small scale.

The issue's target (Wanda's bpb increase <= 1/2 of magnitude's) comes from Sun et al. 2023, whose gain rests on
LLMs' outlier features: a few input features with norms far above the rest, which |W| alone cannot see. This
script measures both passes on a model folder (e.g. `bench_vs_llama2c.py --save DIR`) and, beside them, the
two quantities that decide whether Wanda can differ from magnitude at all:
- the spread of the input-feature norms ||X_j|| per layer (max / median over j), and
- how much of Wanda's per-row mask equals per-row magnitude's mask (|W| x ||X_j|| vs |W| in each row).

    .venv/bin/python benchmarks/bench_wanda.py --model DIR [--threads 1]

Held-out text: the same 10% of ../shared/data/tinystories as bench_vs_llama2c (split by story, seed 0); the
first `--calib-tokens` held-out tokens calibrate, the rest are scored. Measured: LOG.md, session 4.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_vs_llama2c import heldout_bpb as bpb  # noqa: E402
from bench_vs_llama2c import split_stories, token_stream  # noqa: E402

from models import load_model  # noqa: E402
from models.compress.calibration import calibration_stages, run_sequential, windows  # noqa: E402
from models.compress.prune import prunable_weights, prune  # noqa: E402


@torch.no_grad()
def feature_norms(model: torch.nn.Module, calib_NT: torch.Tensor) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every block Linear's inputs on the unpruned model."""
    norms: dict[str, torch.Tensor] = {}

    def keep(stage) -> None:
        for name in stage.linears:
            norms[name + ".weight"] = stage.stats[name].col_norm_I.clone()

    run_sequential(model, calib_NT, calibration_stages(model, include_head=False), keep, desc="norms")
    return norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model folder with its tokenizer.json")
    ap.add_argument("--calib-tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok_file = load_model(args.model)
    if tok_file is None:
        raise SystemExit(f"{args.model}: no tokenizer.json beside the model")
    seq = model.cfg.max_seq_len
    from tokenizers import Tokenizer

    _, val = split_stories(0)
    stream, total_bytes = token_stream(Tokenizer.from_file(str(tok_file)), val)
    calib = windows(stream, seq, args.calib_tokens)
    score = stream[calib.numel():]
    # bytes of the scored part, in proportion to its tokens (the same ratio for every pass: it cancels in %)
    nbytes = int(total_bytes * score.numel() / stream.numel())
    base = bpb(model, score, nbytes, seq)
    print(f"model {args.model}: {model.num_params():,} params, dim {model.cfg.dim}, {model.cfg.num_layers} layers; "
          f"held-out bpb {base:.4f} on {score.numel():,} tokens, {calib.numel():,} calibration tokens")

    rows = {}
    for name, kw in (("magnitude-50 (per layer)", {"method": "magnitude"}),
                     ("magnitude-50 (per row)", {"method": "magnitude", "per_row": True}),
                     ("wanda-50", {"method": "wanda", "calib_NT": calib})):
        m = copy.deepcopy(model)
        prune(m, sparsity=0.5, **kw)
        rows[name] = bpb(m, score, nbytes, seq)
        print(f"  {name:<26} bpb {rows[name]:.4f}  ({(rows[name] / base - 1) * 100:+.2f}%)", flush=True)

    norms = feature_norms(model, calib)  # reads the inputs only, changes nothing
    weights = prunable_weights(model)
    spread, agree = {}, {}
    for name, n_I in norms.items():
        w = weights[name].detach().abs().float()
        k = w.shape[1] // 2
        mag = torch.topk(w, k, dim=1, largest=False).indices
        wan = torch.topk(w * n_I[None, :], k, dim=1, largest=False).indices
        same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(mag, wan))
        kind = name.split(".")[-2]
        spread.setdefault(kind, []).append(float(n_I.max() / n_I.median().clamp_min(1e-12)))
        agree.setdefault(kind, []).append(same / mag.numel())
    print("  per layer kind: median over blocks of max/median ||X_j|| and of the share of pruned weights on which "
          "Wanda's mask equals per-row magnitude's")
    for kind in spread:
        print(f"    {kind:<10} norm spread {statistics.median(spread[kind]):6.2f}x   "
              f"mask agreement {statistics.median(agree[kind]):.1%}")
    mag, wan = rows["magnitude-50 (per layer)"] / base - 1, rows["wanda-50"] / base - 1
    verdict = "PASS" if wan <= 0.5 * mag else "FAIL"
    print(f"\n[{verdict}] Wanda 50% <= 1/2 magnitude 50%: {wan * 100:+.2f}% vs {mag * 100:+.2f}% "
          f"(ratio {wan / mag if mag else float('nan'):.2f})")


if __name__ == "__main__":
    main()

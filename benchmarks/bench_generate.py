"""Batch-1 greedy decoding speed of one model: ours eager, ours compiled, transformers, side by side in one run.

The model is a preset with random weights (speed does not depend on the values), exported to a Hugging Face
folder in a temp dir so transformers runs exactly the same weights; each contender generates the same number of
new tokens from the same prompt (EOS disabled so every run is full length). The contenders alternate
(A B C A B C ...) and the median tokens/s of the repeats is kept, because the CPU is shared. Greedy tokens are
checked to agree between the three.

Targets (issue 20): eager >= 2x transformers, compiled >= 1.5x our eager (after its one-off compilation).

    .venv/bin/python benchmarks/bench_generate.py [--preset 8m] [--vocab 2048] [--new-tokens 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models import Transformer, get_preset  # noqa: E402
from models.generate import decode_dtype, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="8m")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 row (shown only on CPUs with native bf16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset, vocab_size=args.vocab, max_seq_len=512)
    model = Transformer(cfg).eval()
    n_params = model.num_params()
    prompt = torch.randint(3, args.vocab, (args.prompt_tokens,)).tolist()
    N = args.new_tokens
    fns = {}
    toks = {}

    def ours(compile: bool):
        def run() -> list[int]:
            return generate(model, [prompt], max_new_tokens=N, temperature=0, compile=compile)[0]
        return run

    fns["ours eager"] = ours(False)
    fns["ours compiled"] = ours(True)
    if decode_dtype(torch.device("cpu")) == torch.bfloat16 and not args.no_bf16:
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)

        def run_bf16() -> list[int]:
            return generate(model_bf16, [prompt], max_new_tokens=N, temperature=0)[0]

        fns["ours eager bf16"] = run_bf16
    tmp = tempfile.TemporaryDirectory()
    if not args.no_hf:
        try:
            import transformers

            from models.export.hf import export_hf

            export_hf(model, None, Path(tmp.name) / "hf")
            hf = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp.name) / "hf", dtype=torch.float32).eval()
            ids = torch.tensor([prompt])

            def run_hf() -> list[int]:
                with torch.no_grad():
                    out = hf.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                      pad_token_id=0, eos_token_id=None)
                return out[0, len(prompt):].tolist()

            fns["transformers"] = run_hf
        except ImportError:
            print("transformers not installed: skipped")
    t0 = time.perf_counter()
    toks["ours compiled"] = fns["ours compiled"]()  # the one-off compilation
    compile_s = time.perf_counter() - t0
    for name, fn in fns.items():  # warm-up
        toks[name] = fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    tps = {k: N / statistics.median(v) for k, v in times.items()}
    cpu_bf16 = decode_dtype(torch.device("cpu")) == torch.bfloat16
    print(f"\n== batch-1 greedy decoding: preset '{args.preset}' ({n_params / 1e6:.2f}M params, vocab {args.vocab}), "
          f"{args.prompt_tokens}-token prompt, {N} new tokens, {args.threads} threads, median of {args.repeats}; "
          f"native bf16 on this CPU: {cpu_bf16}")
    print("| decoder | tokens/s | vs transformers | vs ours eager |")
    print("|---|---|---|---|")
    hf_tps = tps.get("transformers")
    for name, v in tps.items():
        vs_hf = f"{v / hf_tps:.2f}x" if hf_tps else "-"
        print(f"| {name} | {v:,.0f} | {vs_hf} | {v / tps['ours eager']:.2f}x |")
    print(f"compilation (first call): {compile_s:.1f} s")
    ref = toks["ours eager"]
    for name, t in toks.items():
        same = sum(a == b for a, b in zip(t, ref))
        print(f"greedy tokens equal to ours eager: {name} {same}/{len(ref)}")
    if hf_tps:
        print(f"target eager >= 2x transformers: {tps['ours eager'] / hf_tps:.2f}x "
              f"({'met' if tps['ours eager'] >= 2 * hf_tps else 'NOT met'})")
    print(f"target compiled >= 1.5x eager: {tps['ours compiled'] / tps['ours eager']:.2f}x "
          f"({'met' if tps['ours compiled'] >= 1.5 * tps['ours eager'] else 'NOT met'})")
    tmp.cleanup()


if __name__ == "__main__":
    main()

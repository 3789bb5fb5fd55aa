"""Export benchmark: every deliverable of `export`, scored by the runtime that runs it, side by side in one run.

For two models trained here (bench_compress's TinyStories model, >= 4M parameters, and a demo-sized one, ~0.5M,
both on ../shared/data/tinystories with bench_compress's tokenizer and training code):
- our GPTQ Q4_0 GGUF (GPTQ onto llama.cpp's Q4_0 grid, its blocks copied into the file) against llama.cpp's own
  Q4_0 and Q4_K_M, both made by llama.cpp's quantizer from the same F16 file we wrote; every file's held-out bpb
  computed by llama.cpp (llama-cpp-python, logits of every position);
- our Q8_0 against F16 in llama.cpp;
- structured pruning (30% of head groups and MLP neurons) + distillation recovery, exported at its pruned shape:
  llama.cpp batch-1 tokens/s against the unpruned model at the same type (interleaved rounds), and transformers
  loading its HF folder;
- the HF int4 export (compressed-tensors) loaded with AutoModelForCausalLM in a child interpreter where tinyfoundry
  cannot be imported (no site .pth processing, repo not on sys.path: `import models` must fail there), its greedy
  32-token continuation compared with ours;
- the largest |log p| difference between llama.cpp on our Q4_0 file and our own forward on the same weights.

    .venv/bin/python benchmarks/bench_export.py [--quick] [--out DIR] [--train-seconds S] [--threads N]

Targets (issue 16) are printed with PASS/FAIL. Timings on a shared CPU are noisy: speeds are interleaved ratios.
"""

from __future__ import annotations

import argparse
import json
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_compress import build_tokens, interleaved, train_model  # noqa: E402

from models import ModelConfig, Transformer, save_model_dir  # noqa: E402
from models.compress import CompressConfig, load_compressed, run_compress  # noqa: E402
from models.export import ExportConfig, run_export  # noqa: E402
from models.export import runtime_eval as rt  # noqa: E402
from models.generate import generate  # noqa: E402

HF_CHILD = textwrap.dedent("""
    import json, sys
    sys.path = [p for p in sys.path if p] + [{site!r}]
    for name in ("models", "launch", "train", "data_pipelines"):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"tinyfoundry's {{name}} is importable here: not a clean environment")
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32).eval()
    ids = torch.tensor([{prompt!r}])
    out = m.generate(ids, max_new_tokens={n}, min_new_tokens={n}, do_sample=False, eos_token_id=None,
                     pad_token_id=m.config.pad_token_id)
    print(json.dumps({{"tokens": out[0, ids.shape[1]:].tolist(), "class": type(m).__name__,
                      "quant": type(getattr(m.config, "quantization_config", None)).__name__}}))
""")


def hf_clean_load(path: Path, prompt: list[int], n: int) -> dict:
    """Greedy continuation by transformers in a child interpreter that cannot import tinyfoundry."""
    sp = [p for p in site.getsitepackages() if p.endswith("site-packages")][0]
    code = HF_CHILD.format(site=sp, path=str(path), prompt=prompt, n=n)
    r = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, cwd="/",
                       timeout=600)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def llama_tps(path: Path, prompt: list[int], n: int, threads: int) -> float:
    return rt.gguf_tokens_per_s(path, prompt, n, threads, repeats=1)


def max_loglik_diff(gguf_path: Path, model_dir: Path, tokens: torch.Tensor, seq: int) -> float:
    llm = rt.open_gguf(gguf_path, seq, 1)
    model, _ = load_compressed(model_dir)
    worst = 0.0
    for w in tokens[: 4 * seq].reshape(4, seq):
        theirs = torch.from_numpy(rt.gguf_logprobs(llm, w.numpy())).double().log_softmax(-1)
        with torch.no_grad():
            ours = model(w[None]).logits[0, :-1].double().log_softmax(-1)
        idx = torch.arange(seq - 1), w[1:]
        worst = max(worst, float((theirs[idx] - ours[idx]).abs().max()))
    return worst


def bench_model(label: str, cfg: ModelConfig, train_tok, val_tok, bpt: float, out: Path, args) -> list[tuple]:
    print(f"\n=== {label}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads}/{cfg.num_kv_heads} heads, "
          f"hidden {cfg.hidden_dim}, {Transformer(cfg).num_params():,} params ===", flush=True)
    seconds = args.train_seconds if args.train_seconds else (40 if args.quick else (300 if cfg.dim >= 256 else 150))
    model = train_model(cfg, train_tok, seconds, batch=16, seq=128)
    mdir = save_model_dir(out / "model", model, tokenizer_file=out.parent / "tokenizer.json")

    from train.recover import recover as kd_recover

    def recover(student, teacher):
        return kd_recover(student, teacher, train_tok, max_tokens=30_000 if args.quick else 150_000,
                          batch_size=16, seq_len=128, lr=1e-3, muon_lr=1e-2, distill_alpha=0.5,
                          distill_temperature=2.0)

    passes = [{"method": "gptq", "name": "gptq-q4_0", "gguf_type": "q4_0"},
              {"method": "rtn", "name": "rtn-q4_0-ref", "gguf_type": "q4_0", "fit": "ref"},
              {"method": "rtn", "name": "rtn-q8_0", "gguf_type": "q8_0"},
              {"method": "structured", "name": "structured-30", "heads_fraction": 0.3, "mlp_fraction": 0.3}]
    n_eval = 8192 if args.quick else 32768
    ccfg = CompressConfig(passes=passes, num_calib_tokens=8192 if args.quick else 32768, num_eval_tokens=n_eval,
                          num_gen_tokens=32, plot=False, probes=False)
    t0 = time.perf_counter()
    report = run_compress(ccfg, mdir, val_tok, bpt, out / "compressed", recover=recover)
    print(f"compress wall {time.perf_counter() - t0:.0f}s", flush=True)

    ecfg = dict(measure=True, num_eval_tokens=n_eval, num_gen_tokens=64, threads=args.threads, card=False)
    t0 = time.perf_counter()
    base = run_export(ExportConfig(hf=True, gguf_types=["f16", "q8_0", "llama_q4_0", "q4_k_m"], **ecfg), mdir,
                      out / "export-final", report, val_tok, bpt, "final")
    gq = run_export(ExportConfig(hf=True, gguf_types=["q4_0"], **ecfg), out / "compressed" / "gptq-q4_0",
                    out / "export-gptq", report, val_tok, bpt, "gptq-q4_0")
    rq = run_export(ExportConfig(hf=False, gguf_types=["q4_0"], **ecfg), out / "compressed" / "rtn-q4_0-ref",
                    out / "export-rtn", report, val_tok, bpt, "rtn-q4_0-ref")
    q8 = run_export(ExportConfig(hf=False, gguf_types=["q8_0"], **ecfg), out / "compressed" / "rtn-q8_0",
                    out / "export-q8", report, val_tok, bpt, "rtn-q8_0")
    st = run_export(ExportConfig(hf=True, gguf_types=["q8_0"], **ecfg), out / "compressed" / "structured-30",
                    out / "export-s30", report, val_tok, bpt, "structured-30")
    print(f"export + runtime scoring wall {time.perf_counter() - t0:.0f}s", flush=True)

    rows = []
    for info in (base, gq, rq, q8, st):
        for f in info["files"]:
            rows.append((info["source_label"], f))
    f16 = next(f for s, f in rows if s == "final" and f["type"] == "f16")
    ref = f16["val_bpb"]
    print(f"\n{'source':<15}{'file':<34}{'runtime':<13}{'weights':<34}{'MB':>7}{'bits/w':>7}{'val bpb':>9}"
          f"{'vs F16':>9}{'tok/s':>8}")
    for s, f in rows:
        print(f"{s:<15}{f['file']:<34}{f['runtime']:<13}{f['weights'][:33]:<34}{f['bytes'] / 1e6:7.3f}"
              f"{f['bits_per_weight']:7.2f}{f['val_bpb']:9.4f}{100 * (f['val_bpb'] / ref - 1):+8.3f}%"
              f"{f.get('tokens_per_s') or 0:8.1f}")
    print(f"(compress baseline, tinyfoundry forward: {report['baseline']['val_bpb']:.4f} bpb)")

    def inc(f):
        return f["val_bpb"] - ref

    ours_q4 = next(f for s, f in rows if s == "gptq-q4_0" and f["type"] == "q4_0")
    llama_q4 = next(f for s, f in rows if f["type"] == "llama_q4_0")
    kq = next(f for s, f in rows if f["type"] == "q4_k_m")
    rtn_q4 = next(f for s, f in rows if s == "rtn-q4_0-ref")
    ours_q8 = next(f for s, f in rows if s == "rtn-q8_0")
    base_q8 = next(f for s, f in rows if s == "final" and f["type"] == "q8_0")
    s30_q8 = next(f for s, f in rows if s == "structured-30" and f["format"] == "gguf")
    s30_hf = next(f for s, f in rows if s == "structured-30" and f["format"] == "hf")
    print(f"bpb increase over our F16 in llama.cpp: ours GPTQ Q4_0 {inc(ours_q4):+.4f}, llama.cpp Q4_0 "
          f"{inc(llama_q4):+.4f}, llama.cpp Q4_K_M {inc(kq):+.4f}, our RTN Q4_0 with llama.cpp's rounding "
          f"{inc(rtn_q4):+.4f}")

    prompt = [int(t) for t in val_tok[:16]]
    r, a, b = interleaved(lambda: llama_tps(Path(base_q8["path"]), prompt, 128, args.threads),
                          lambda: llama_tps(Path(s30_q8["path"]), prompt, 128, args.threads), rounds=5)
    print(f"llama.cpp Q8_0 batch 1, 128 tokens: unpruned {a:.1f} tok/s -> structured-30 {b:.1f} tok/s = {r:.2f}x")

    diff = max_loglik_diff(Path(ours_q4["path"]), out / "compressed" / "gptq-q4_0", val_tok, 128)
    print(f"max |log p(next)| llama.cpp (our Q4_0 file) vs ours (same weights): {diff:.4f} nats")

    quant_hf = next((f for s, f in rows if s == "gptq-q4_0" and f["file"] == "hf-quant"), None)
    hf_ok, hf_note = False, "no hf-quant folder (" + "; ".join(gq["notes"]) + ")"
    if quant_hf is not None:
        child = hf_clean_load(Path(quant_hf["path"]), prompt, 32)
        q_model, _ = load_compressed(out / "compressed" / "gptq-q4_0")
        ours_gen = generate(q_model, [prompt], max_new_tokens=32, temperature=0.0)[0]
        if "error" in child:
            hf_note = f"child failed: {child['error']}"
        else:
            same = sum(x == y for x, y in zip(child["tokens"], ours_gen))
            hf_ok = child["tokens"] == ours_gen
            hf_note = (f"{child['class']} ({child['quant']}) loaded without tinyfoundry; greedy 32 tokens: "
                       f"{same}/32 equal; {quant_hf['bytes'] / 1e6:.3f} MB, bpb {quant_hf['val_bpb']:.4f} "
                       f"in transformers")
    print(f"HF int4 (compressed-tensors): {hf_note}")

    q4_ratio = inc(ours_q4) / inc(llama_q4) if inc(llama_q4) > 0 else float("nan")
    return [
        (label, "GPTQ Q4_0 increase <= 1/2 llama.cpp Q4_0's", inc(ours_q4) <= 0.5 * inc(llama_q4),
         f"{inc(ours_q4):+.4f} vs {inc(llama_q4):+.4f} (ratio {q4_ratio:.2f})"),
        (label, "GPTQ Q4_0 increase <= Q4_K_M's, file no larger", inc(ours_q4) <= inc(kq) and
         ours_q4["bytes"] <= kq["bytes"], f"{inc(ours_q4):+.4f} vs {inc(kq):+.4f}; {ours_q4['bytes'] / 1e6:.3f} "
                                          f"vs {kq['bytes'] / 1e6:.3f} MB"),
        (label, "our Q8_0 <= 0.1% bpb over F16", ours_q8["val_bpb"] <= ref * 1.001,
         f"{100 * (ours_q8['val_bpb'] / ref - 1):+.4f}%"),
        (label, "structured-30 + recovery >= 1.2x llama.cpp tok/s (Q8_0, batch 1)", r >= 1.2, f"{r:.2f}x"),
        (label, "structured-30 loads in transformers", isinstance(s30_hf.get("val_bpb"), float),
         f"bpb {s30_hf.get('val_bpb'):.4f} in transformers"),
        (label, "HF int4 loads without tinyfoundry, greedy 32 == ours", hf_ok, hf_note[:90]),
        (label, "llama.cpp log-likelihoods match ours on the Q4_0 file (< 0.1 nats)", diff < 0.1, f"{diff:.4f}"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_export"))
    ap.add_argument("--train-seconds", type=float, default=None, help="training budget per model")
    ap.add_argument("--threads", type=int, default=1, help="threads of torch and llama.cpp (1 on a shared CPU)")
    ap.add_argument("--only", choices=["tinystories", "demo"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = 1024
    train_tok, val_tok, bpt = build_tokens(vocab, args.out)
    print(f"tokens: train {train_tok.numel():,}, val {val_tok.numel():,}, bytes/token {bpt:.3f}")
    models = {
        # bench_compress's model: 4.7M parameters
        "tinystories": ModelConfig(vocab_size=vocab, dim=256, num_layers=6, num_heads=8, num_kv_heads=4, max_seq_len=256),
        # configs/demo.yaml's shape
        "demo": ModelConfig(vocab_size=vocab, dim=96, num_layers=4, num_heads=3, max_seq_len=256),
    }
    checks = []
    for label, cfg in models.items():
        if args.only and label != args.only:
            continue
        checks += bench_model(label, cfg, train_tok, val_tok, bpt, args.out / label, args)
    print("\ntargets:")
    for label, name, ok, val in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {name}: {val}")


if __name__ == "__main__":
    main()

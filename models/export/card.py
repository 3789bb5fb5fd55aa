"""export/README.md: the model card — what the model is, how to run each deliverable, and the figures
of the compression report (size, bits per byte, speed of every pass), so the numbers travel with it."""

from __future__ import annotations

from pathlib import Path

from models.transformer import Transformer


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


PROBE_COLUMNS = ("word_usage", "distinct_2", "ending_complete", "consistency_self", "fairness_male_share",
                 "fairness_gendered_rate")
"""Probe metrics shown in the card (train.eval's probes; the full set is in compressed/report.json)."""


def _probe_table(report: dict) -> list[str]:
    """Story-quality and fairness probes of the baseline and every pass, when the report has them."""
    rows = [("baseline", report["baseline"].get("probes"))] + [(p["name"], p.get("probes")) for p in report["passes"]]
    if not any(probes for _, probes in rows):
        return []

    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "—"

    lines = ["## Behaviour before and after compression", "",
             "Story-quality and fairness probes (sampled generations, fixed seed; see `tinyfoundry eval`).", "",
             "| pass | " + " | ".join(PROBE_COLUMNS) + " |", "|---|" + "---:|" * len(PROBE_COLUMNS)]
    for name, probes in rows:
        probes = probes or {}
        lines.append(f"| {name} | " + " | ".join(fmt(probes.get(c)) for c in PROBE_COLUMNS) + " |")
    return lines + [""]


def model_card(model: Transformer, info: dict, report: dict | None, name: str) -> str:
    cfg = model.cfg
    kind = f"MoE ({cfg.num_experts} experts, top-{cfg.num_experts_per_tok})" if cfg.is_moe else "dense"
    lines = [
        f"# {name}",
        "",
        f"A small Llama-style language model trained with tinyfoundry: {kind}, {model.num_params():,} parameters,",
        f"{cfg.num_layers} layers, width {cfg.dim}, {cfg.num_heads} query / {cfg.num_kv_heads} key-value heads, "
        f"context {cfg.max_seq_len}, vocabulary {cfg.vocab_size} (byte-level BPE).",
        "",
        "## Files",
        "",
    ]
    if info.get("hf"):
        hf = info["hf"]
        lines += [
            f"- `hf/`: {hf['architecture']} in fp32 safetensors ({_mb(hf['bytes'])}) with tokenizer files.",
            "  ```python",
            "  from transformers import AutoModelForCausalLM, AutoTokenizer",
            "  model = AutoModelForCausalLM.from_pretrained('export/hf')",
            "  tok = AutoTokenizer.from_pretrained('export/hf')",
            "  ```",
        ]
    for g in info.get("gguf", []):
        lines.append(f"- `gguf/{Path(g['path']).name}`: {g['type'].upper()} GGUF ({_mb(g['bytes'])}), tokenizer embedded; "
                     f"`llama-cli -m gguf/{Path(g['path']).name} -p 'Once upon a time'`.")
    lines.append("")
    if report:
        base = report["baseline"]
        lines += [
            "## Compression report",
            "",
            f"Val bits per byte on {report.get('num_eval_tokens', '?')} held-out tokens; size = weights on disk; "
            "speed = greedy generation with a KV cache on the machine that ran the stage (noisy: compare ratios).",
            "",
            "| pass | method | size | x smaller | sparsity | val bpb | bpb change | tokens/s | speed-up |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| baseline | fp32 | {_mb(base['bytes'])} | 1.00 | {base.get('sparsity', 0):.1%} | {base['val_bpb']:.4f} | "
            f"— | {base['tokens_per_s']:.1f} | 1.00 |",
        ]
        for p in report["passes"]:
            lines.append(
                f"| {p['name']} | {p['method']} | {_mb(p['bytes'])} | {p['size_ratio']:.2f} | {p['sparsity']:.1%} | "
                f"{p['val_bpb']:.4f} | {p['bpb_increase_pct']:+.2f}% | {p['tokens_per_s']:.1f} | {p['speedup']:.2f} |"
            )
        lines += ["", "![size vs bits per byte](../compressed/report.png)", ""]
        lines += _probe_table(report)
        if base.get("sample"):
            lines += ["## Sample (greedy, baseline)", "", "```", str(base["sample"]), "```", ""]
    lines += [
        "## Limitations",
        "",
        "A tiny research model: it continues simple stories and knows little else. It was not tuned for",
        "instructions or safety and should not be used for anything consequential.",
        "",
    ]
    return "\n".join(lines)

"""The model card: `export/hf/README.md`, inside the HF folder so a copied or uploaded folder carries it.

It opens with the Hugging Face Hub's YAML header (library_name, pipeline_tag, license, base_model when the
model was fine-tuned from one, datasets, tags, and the measured figures as `model-index`-free plain keys),
then says what the model is, lists every exported file with its size, bits per weight, held-out bpb and
batch-1 tokens/s *as measured by the runtime that runs it* (export/report.json), states the sparsity of a
pruned export (unstructured / 2:4 sparsity ships dense), and carries the compression report's table.
"""

from __future__ import annotations

from pathlib import Path

from models.transformer import Transformer


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _fmt(v: object, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


PROBE_COLUMNS = ("word_usage", "distinct_2", "ending_complete", "consistency_self", "fairness_male_share",
                 "fairness_gendered_rate")
"""Probe metrics shown in the card (train.eval's probes; the full set is in compressed/report.json)."""


def _probe_table(report: dict) -> list[str]:
    """Story-quality and fairness probes of the baseline and every pass, when the report has them."""
    rows = [("baseline", report["baseline"].get("probes"))] + [(p["name"], p.get("probes")) for p in report["passes"]]
    if not any(probes for _, probes in rows):
        return []
    lines = ["## Behaviour before and after compression", "",
             "Story-quality and fairness probes (sampled generations, fixed seed; see `tinyfoundry eval`).", "",
             "| pass | " + " | ".join(PROBE_COLUMNS) + " |", "|---|" + "---:|" * len(PROBE_COLUMNS)]
    for name, probes in rows:
        probes = probes or {}
        lines.append(f"| {name} | " + " | ".join(_fmt(probes.get(c), ".3f") for c in PROBE_COLUMNS) + " |")
    return lines + [""]


def _yaml_header(name: str, files: list[dict], meta: dict) -> list[str]:
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             f"license: {meta.get('license', 'apache-2.0')}"]
    if meta.get("base_model"):
        lines.append(f"base_model: {meta['base_model']}")
    datasets = meta.get("datasets") or []
    if datasets:
        lines.append("datasets:")
        lines += [f"- {d}" for d in datasets]
    lines += ["tags:", "- tinyfoundry", "- llama", "- gguf", "model_name: " + name]
    measured = [f for f in files if isinstance(f.get("val_bpb"), (int, float))]
    if measured:
        lines.append("figures:")
        for f in measured:
            lines.append(f"  {f['file']}: {{bytes: {f['bytes']}, bits_per_weight: {f['bits_per_weight']:.3f}, "
                         f"val_bpb: {f['val_bpb']:.4f}, tokens_per_s: {_fmt(f.get('tokens_per_s'), '.1f')}, "
                         f"runtime: {f['runtime']}}}")
    return lines + ["---", ""]


def files_table(files: list[dict], reference_bpb: float | None) -> list[str]:
    lines = ["| file | runtime | weights | size | bits/weight | val bpb | vs full precision | tokens/s (batch 1) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for f in files:
        change = "—"
        if reference_bpb and isinstance(f.get("val_bpb"), (int, float)):
            change = f"{100 * (f['val_bpb'] / reference_bpb - 1):+.2f}%"
        lines.append(f"| `{f['file']}` | {f['runtime']} | {f['weights']} | {_mb(f['bytes'])} | "
                     f"{f['bits_per_weight']:.2f} | {_fmt(f.get('val_bpb'))} | {change} | "
                     f"{_fmt(f.get('tokens_per_s'), '.1f')} |")
    return lines


def model_card(model: Transformer, info: dict, report: dict | None, name: str, meta: dict | None = None) -> str:
    """The card's markdown. `info` is run_export's result (files, source, sparsity); `report` compress's."""
    meta = meta or {}
    cfg = model.cfg
    files = info.get("files", [])
    kind = f"MoE ({cfg.num_experts} experts, top-{cfg.num_experts_per_tok})" if cfg.is_moe else "dense"
    lines = _yaml_header(name, files, meta) + [
        f"# {name}",
        "",
        f"A small Llama-style language model trained with tinyfoundry: {kind}, {model.num_params():,} parameters,",
        f"{cfg.num_layers} layers, width {cfg.dim}, {cfg.num_heads} query / {cfg.num_kv_heads} key-value heads of "
        f"width {cfg.head_dim}, context {cfg.max_seq_len}, vocabulary {cfg.vocab_size} (byte-level BPE).",
        (f"Architecture: `{info['hf']['architecture']}` in transformers. " if info.get("hf") else "")
        + f"Exported weights: `{info.get('source_label', 'final')}`" + (f" ({info['source_method']})" if info.get(
            "source_method") else "") + ".",
        "",
    ]
    if cfg.share_blocks > 1:
        lines += [f"**Block sharing:** each of the {cfg.num_layers} stored blocks runs {cfg.share_blocks} times in a row "
                  f"(MobileLLM's immediate block-wise sharing, {cfg.depth} layers deep). Neither HF Llama nor GGUF can "
                  f"share weights, so both files store all {cfg.depth} layers, each repeat a copy of its block: "
                  f"the files are {cfg.share_blocks}x the unique block parameters.", ""]
    if (info.get("hf") or {}).get("padded_heads"):
        lines += [f"The HF folder adds {info['hf']['padded_heads']} all-zero query heads (whole GQA groups): transformers "
                  "requires hidden_size to be a multiple of the head count even with `head_dim` set. They change no "
                  "logit; the GGUF files keep the pruned shape.", ""]
    sparsity = info.get("sparsity", 0.0)
    if sparsity and sparsity > 0.01:
        lines += [f"**Sparsity:** {sparsity:.1%} of the weights are zero (pruned); the files store them densely, so "
                  "they are no smaller and no faster than the dense model's unless a sparse runtime is used.", ""]
    lines += ["## Files", "",
              "Held-out bits per byte and batch-1 greedy tokens/s measured by the runtime that runs each file "
              "(llama.cpp through llama-cpp-python for GGUF, transformers for this folder), on the machine that "
              "exported it; `exact` = the very weights compress evaluated.", ""]
    lines += files_table(files, info.get("reference_bpb")) + [""]
    lines += [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('export/hf')",
        "tok = AutoTokenizer.from_pretrained('export/hf')",
        "```",
        "",
    ]
    for f in files:
        if f["format"] == "gguf":
            lines.append(f"- `llama-cli -m export/{f['file']} -p 'Once upon a time'`")
    lines.append("")
    if report:
        base = report["baseline"]
        lines += [
            "## Compression report",
            "",
            f"Val bits per byte on {report.get('num_eval_tokens', '?')} held-out tokens (tinyfoundry's own forward); "
            "size = weights on disk; speed = greedy generation with a KV cache (noisy: compare ratios).",
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
        lines.append("")
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


def file_label(path: Path, root: Path) -> str:
    return str(Path(path).relative_to(root))

"""Export of a trained, pruned or quantized tinyfoundry model: a Hugging Face folder (`export/hf/`, with the model
card as its README.md), GGUF files for llama.cpp (`export/gguf/`) and `export/report.json`, which lists every
file with its bytes, bits per weight, and the held-out bpb and batch-1 tokens/s measured by the runtime that
runs it.

Which weights (`ExportConfig.source`, resolved by models/export/source.py): the trained model, the best pass
within a bpb budget, or a named compress pass. The files hold exactly the weights that pass evaluated:
- `hf/`: the pass's weights in fp32 (a quantized pass's dequantized values, exactly; a pruned pass at its
  pruned shape, `head_dim` in config.json);
- the GGUF type the pass quantized onto (its `gguf_type`: q4_0, q8_0, ...): its block bytes, copied;
- any other GGUF type is made from the full-precision model the pass started from (`weights` in the report
  says which): F16/F32 casts and Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 by our round-to-nearest on llama.cpp's grids, and
  K-quants / IQ4_NL / llama.cpp's own Q4_0 (`llama_q4_0`) by llama.cpp's quantizer from our F16 file.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.atomic import atomic_write_json, atomic_write_text
from models.compress.lowrank import export_note
from models.compress.report import mark_pareto
from models.compress.storage import is_compressed_dir, load_compressed, read_compressed
from models.export.card import model_card
from models.export.gguf import LLAMA_CPP_TYPES, OUR_TYPES, export_gguf, llama_quantize
from models.export.hf import export_hf
from models.export.qat_gguf import QAT_TYPES, export_qat_gguf, read_qat
from models.export.source import full_precision_input, pass_info, resolve_source

GGUF_TYPES = (*OUR_TYPES, *LLAMA_CPP_TYPES, "tq1_0", "tq2_0")


def _default_gguf_types() -> list[str]:
    return ["q8_0"]


@dataclass
class ExportConfig:
    """The export stage: which weights, which deliverables, and how they are measured."""

    source: str = "final"
    """Weights to export: final (the trained model), best (the smallest compress pass within max_bpb_increase of the
    baseline's bpb), or the name of a compress pass."""
    max_bpb_increase: float = 0.02
    """For source: best, the largest accepted relative bpb increase over the baseline (0.02 = +2%)."""
    hf: bool = True
    """Write export/hf/ (fp32 safetensors + config.json + tokenizer + the card as README.md) for transformers."""
    hf_quant: bool = True
    """Also write export/hf-quant/ (compressed-tensors, int8/int4) when the source pass is quantized and that format
    can hold it and the package is installed."""
    gguf_types: list[str] = field(default_factory=_default_gguf_types)
    """GGUF files under export/gguf/: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1 (ours), q2_k, q3_k_s, q3_k_m, q4_k_s,
    q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, llama_q4_0, llama_q8_0 (llama.cpp's quantizer), tq1_0, tq2_0 (a ternary
    QAT model only) ([] for none). A QAT model (train.qat) goes out on its trained grid exactly as q4_0 / tq1_0 /
    tq2_0 (models/export/qat_gguf.py)."""
    name: str = "tinyfoundry"
    """Model name in the GGUF metadata, file names and the model card."""
    card: bool = True
    """Write the model card export/hf/README.md."""
    measure: bool = True
    """Score every file in its runtime (bpb, tokens/s) when held-out tokens are available."""
    num_eval_tokens: int = 16384
    """Held-out tokens scored per file when there is no compress report; with one, every file is scored on the
    report's tokens and windows, so its bpb compares with the report's full-precision baseline."""
    eval_seq_len: int = 0
    """Window length for scoring (no compress report); 0 means the model's max_seq_len."""
    num_gen_tokens: int = 64
    """New tokens per speed measurement (batch 1, greedy)."""
    threads: int = 1
    """CPU threads of every runtime while measuring (fixed, so the figures compare)."""
    license: str = "apache-2.0"
    """License in the card's header."""

    def __post_init__(self) -> None:
        if isinstance(self.gguf_types, str):
            self.gguf_types = [t.strip() for t in self.gguf_types.split(",") if t.strip()]
        self.gguf_types = [str(t).lower() for t in self.gguf_types]
        for t in self.gguf_types:
            if t not in GGUF_TYPES:
                raise ValueError(f"gguf_types: each must be one of {', '.join(GGUF_TYPES)}, got {t!r}")
        if len(set(self.gguf_types)) != len(self.gguf_types):
            raise ValueError(f"gguf_types: duplicates, got {self.gguf_types}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name: must be a non-empty name without '/', got {self.name!r}")
        if not self.source or any(c in self.source for c in "/\\") or self.source in (".", ".."):
            raise ValueError(f"source: must be final, best or a pass name, got {self.source!r}")
        if not 0.0 <= self.max_bpb_increase < 10.0:
            raise ValueError(f"max_bpb_increase: must be a fraction >= 0 (0.02 = +2%), got {self.max_bpb_increase}")
        for f in ("num_eval_tokens", "num_gen_tokens", "threads"):
            if int(getattr(self, f)) <= 0:
                raise ValueError(f"{f}: must be a positive integer, got {getattr(self, f)!r}")
        if self.eval_seq_len < 0:
            raise ValueError(f"eval_seq_len: must be >= 0, got {self.eval_seq_len}")


def load_for_export(model_dir: Path) -> tuple[torch.nn.Module, Path | None, dict]:
    """(model with the pass's exact weights, tokenizer.json, quantized tensors by name or {})."""
    model, tok = load_compressed(model_dir)
    qtensors = {}
    if is_compressed_dir(model_dir):
        try:
            _, _, qtensors, _ = read_compressed(model_dir)
        except ValueError:
            qtensors = {}  # a pruned pass: a plain model dir marked with compression.json
    return model.eval(), tok, qtensors


def _sparsity(model: torch.nn.Module) -> float:
    from models.compress.prune import sparsity_of

    return float(sparsity_of(model))


@dataclass
class _Files:
    """The report's file rows, each with its path relative to out_dir and bits per weight of the model."""

    out_dir: Path
    n_params: int
    rows: list[dict] = field(default_factory=list)

    def add(self, path: Path, fmt: str, typ: str, weights: str, runtime: str, nbytes: int,
            extra: dict | None = None) -> None:
        self.rows.append({"file": str(path.relative_to(self.out_dir)), "path": str(path), "format": fmt,
                          "type": typ, "weights": weights, "runtime": runtime, "bytes": nbytes,
                          "bits_per_weight": nbytes * 8 / max(self.n_params, 1), **(extra or {})})


def _full_precision_model(cfg: ExportConfig, model: torch.nn.Module, model_dir: Path, qtensors: dict,
                          native: str | None, source_label: str | None) -> tuple[torch.nn.Module, str, str]:
    """(model the non-native GGUF types are made from, what the report calls it, export note of the codes).

    A quantized pass's other types start from the full-precision model the pass started from, when found."""
    fp_model = model
    fp_from = source_label or model_dir.name
    if qtensors and any(t != native for t in cfg.gguf_types):
        fp_dir = full_precision_input(model_dir)
        if fp_dir is not None and fp_dir.exists():
            fp_model, _ = load_compressed(fp_dir)
            fp_from = fp_dir.name if fp_dir.name != "final" else "final"
        else:
            fp_from = f"{fp_from} (dequantized: its full-precision input was not found)"
    merged, own_weights = export_note(qtensors)
    if own_weights:  # a factorization: the re-multiplied product *is* the pass's model, at every precision
        fp_model, fp_from = model, f"{source_label or model_dir.name} (factors re-multiplied)"
    return fp_model, fp_from, merged


def _write_hf(cfg: ExportConfig, model: torch.nn.Module, qtensors: dict, tokenizer_file: Path | None,
              files: _Files, info: dict) -> None:
    """export/hf/ (fp32) and, when the pass's codes fit compressed-tensors, export/hf-quant/."""
    out_dir = files.out_dir
    if cfg.hf:
        hf = export_hf(model, tokenizer_file, out_dir / "hf")
        info["hf"] = hf
        files.add(out_dir / "hf", "hf", "f32", "exact", "transformers", hf["bytes"],
                  {"architecture": hf["architecture"]})
    if cfg.hf and cfg.hf_quant and qtensors:
        from models.export.hf import hf_head_padding
        from models.export.hf_quant import export_hf_quant, hf_quant_supported

        why = hf_quant_supported(qtensors)
        if why is None and hf_head_padding(model.cfg) != (model.cfg.num_heads, model.cfg.num_kv_heads):
            why = "a pruned head count that transformers only loads padded"
        if why is None:
            hq = export_hf_quant(model, qtensors, tokenizer_file, out_dir / "hf-quant")
            files.add(out_dir / "hf-quant", "hf", hq["type"], "exact", "transformers", hq["bytes"])
        else:
            info["notes"].append(f"hf-quant not written: {why}")


def _write_ggufs(cfg: ExportConfig, model: torch.nn.Module, fp_model: torch.nn.Module, fp_from: str,
                 qtensors: dict, native: str | None, qat: dict[str, tuple[str, int]],
                 tokenizer_file: Path | None, model_dir: Path, files: _Files) -> None:
    """One GGUF per configured type: the QAT grid, the pass's own codes, ours from fp_model, or llama.cpp's
    quantizer from one temporary F16 file of fp_model (removed afterwards)."""
    gdir = files.out_dir / "gguf"
    f16_tmp: Path | None = None
    try:
        for t in cfg.gguf_types:
            path = gdir / f"{cfg.name}-{t}.gguf"
            if qat and t in QAT_TYPES:
                g = export_qat_gguf(model, qat, tokenizer_file, path, t, name=cfg.name)
                files.add(path, "gguf", t, "exact (QAT grid)", "llama.cpp", g["bytes"],
                          {"qat_types": g["types"]})
            elif t in ("tq1_0", "tq2_0"):
                raise ValueError(f"gguf_types: {t} holds only a ternary QAT model (train.qat: ternary); "
                                 f"{model_dir} is not one")
            elif t in LLAMA_CPP_TYPES:
                if f16_tmp is None:
                    f16_tmp = Path(tempfile.mkdtemp(prefix="tinyfoundry-f16-")) / "model-f16.gguf"
                    export_gguf(fp_model, tokenizer_file, f16_tmp, "f16", cfg.name)
                g = llama_quantize(f16_tmp, path, t, cfg.threads)
                files.add(path, "gguf", t, f"{fp_from} via llama.cpp's quantizer", "llama.cpp", g["bytes"])
            elif t == native:
                g = export_gguf(model, tokenizer_file, path, t, cfg.name, qtensors)
                files.add(path, "gguf", t, "exact", "llama.cpp", g["bytes"], {"native": g["native"]})
            else:
                g = export_gguf(fp_model, tokenizer_file, path, t, cfg.name)
                weights = "exact" if t == "f32" and not qtensors else fp_from + (" (f16 cast)" if t == "f16" else "")
                files.add(path, "gguf", t, weights, "llama.cpp", g["bytes"])
    finally:
        if f16_tmp is not None:
            import shutil

            shutil.rmtree(f16_tmp.parent, ignore_errors=True)


def run_export(
    cfg: ExportConfig,
    model_dir: Path,
    out_dir: Path,
    report: dict | None = None,
    val_tokens: torch.Tensor | None = None,
    bytes_per_token: float | None = None,
    source_label: str | None = None,
    meta: dict | None = None,
) -> dict:
    """Export the model in `model_dir` (model dir, compressed pass, HF dir or .ckpt) into `out_dir`; measure each
    file on `val_tokens` when given; write out_dir/report.json and return it."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, tokenizer_file, qtensors = load_for_export(model_dir)
    info_pass = pass_info(model_dir)
    native = info_pass.get("gguf_type") if qtensors else None
    fp_model, fp_from, merged = _full_precision_model(cfg, model, model_dir, qtensors, native, source_label)
    qat = read_qat(model_dir)
    n_params = model.num_params()
    files = _Files(out_dir, n_params)
    info: dict = {"source": str(model_dir), "source_label": source_label or model_dir.name,
                  "source_method": info_pass.get("method", ""), "gguf_type": native, "params": n_params,
                  "sparsity": _sparsity(model), "files": files.rows, "notes": [merged] if merged else []}
    _write_hf(cfg, model, qtensors, tokenizer_file, files, info)
    _write_ggufs(cfg, model, fp_model, fp_from, qtensors, native, qat, tokenizer_file, model_dir, files)
    info["gguf"] = [f for f in files.rows if f["format"] == "gguf"]
    if report:
        info["reference_bpb"] = report["baseline"]["val_bpb"]
        info["reference"] = "compress baseline (tinyfoundry forward, full precision)"
    if cfg.measure and val_tokens is not None and bytes_per_token:
        num_eval, seq = cfg.num_eval_tokens, cfg.eval_seq_len
        if report and report.get("num_eval_tokens") and report.get("eval_seq_len"):
            num_eval, seq = int(report["num_eval_tokens"]), int(report["eval_seq_len"])  # the baseline's tokens
        _measure(cfg, model, files.rows, val_tokens, bytes_per_token, num_eval, seq)
        mark_pareto(files.rows)  # the frontier of what was exported: file bytes vs the bpb its runtime measured
    if cfg.card and (out_dir / "hf").is_dir():
        card = model_card(model, info, report, cfg.name, {"license": cfg.license, **(meta or {})})
        atomic_write_text(out_dir / "hf" / "README.md", card)
        info["card"] = str(out_dir / "hf" / "README.md")
    atomic_write_json(out_dir / "report.json", info)
    return info


def _measure(cfg: ExportConfig, model: torch.nn.Module, files: list[dict], val_tokens: torch.Tensor,
             bytes_per_token: float, num_eval_tokens: int, eval_seq_len: int) -> None:
    from models.export import runtime_eval as rt

    seq = min(eval_seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    tokens = val_tokens[:num_eval_tokens].long()
    prompt = [int(t) for t in val_tokens[:16]]
    for f in files:
        try:
            if f["runtime"] == "llama.cpp":
                f["val_bpb"] = rt.gguf_bpb(Path(f["path"]), tokens, bytes_per_token, seq, cfg.threads)
                f["tokens_per_s"] = rt.gguf_tokens_per_s(Path(f["path"]), prompt, cfg.num_gen_tokens, cfg.threads)
            else:
                f["val_bpb"] = rt.hf_bpb(Path(f["path"]), tokens, bytes_per_token, seq, cfg.threads)
                f["tokens_per_s"] = rt.hf_tokens_per_s(Path(f["path"]), prompt, cfg.num_gen_tokens, cfg.threads)
        except ImportError as e:
            f["val_bpb"] = None
            f["note"] = f"not measured: {e}"
        if isinstance(f.get("val_bpb"), float) and not math.isfinite(f["val_bpb"]):
            f["note"] = "non-finite bpb"
    f_seq = {"num_eval_tokens": int(tokens.numel() // seq * seq), "eval_seq_len": seq}
    for f in files:
        f.update(f_seq)


def format_files(info: dict) -> str:
    """The printed table: each exported file's size and held-out bpb beside the full-precision model's."""
    ref = info.get("reference_bpb")
    lines = [f"export of {info.get('source_label')}: " + (f"full-precision bpb {ref:.4f} (compress baseline)" if ref
                                                        else "")]
    lines.append(f"  {'file':<34} {'runtime':<12} {'weights':<16} {'MB':>8} {'bits/w':>7} {'val bpb':>8} {'vs fp':>8} "
                 f"{'tok/s':>8}")
    for f in info["files"]:
        bpb = f.get("val_bpb")
        vs = f"{100 * (bpb / ref - 1):+.2f}%" if ref and isinstance(bpb, float) else "—"
        lines.append(f"  {f['file']:<34} {f['runtime']:<12} {f['weights'][:16]:<16} {f['bytes'] / 1e6:>8.2f} "
                     f"{f['bits_per_weight']:>7.2f} "
                     f"{bpb if isinstance(bpb, float) else float('nan'):>8.4f} {vs:>8} "
                     f"{f.get('tokens_per_s') or float('nan'):>8.1f}")
    return "\n".join(lines)


__all__ = ["ExportConfig", "run_export", "export_hf", "export_gguf", "format_files", "resolve_source"]

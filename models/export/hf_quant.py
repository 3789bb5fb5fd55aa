"""export/hf-quant/: a quantized Hugging Face folder in the compressed-tensors format.

Why compressed-tensors (of the three formats transformers knows for int4/int8 weights):
- compressed-tensors (`quant_method: compressed-tensors`, `format: pack-quantized`): transformers loads it on CPU
  (its quantizer decompresses the packed int32 codes into ordinary Linear weights when no kernel runs them),
  and it is the native checkpoint format of vLLM (llm-compressor writes it; vLLM's CompressedTensors scheme
  serves W4A16 / W8A16 with Marlin/Machete kernels). Codes are stored as signed ints, value = code * scale per
  group of 32 (or per row), which is exactly llama.cpp's Q4_0 / Q8_0 (d * (q - 8), d * q) and our int8 rows:
  the folder holds the very weights compress evaluated, bit for bit.
- torchao (`TorchAoConfig`): the checkpoint is pickled tensor subclasses whose layout depends on the torchao
  version and device (the CPU int4 layout differs from CUDA's), and loading needs torchao at the same version.
- GPTQ (`quant_method: gptq`): transformers needs optimum plus gptqmodel / auto-gptq to load it, and their CPU
  path is a separate build; asymmetric zero points with a +1 offset quirk make exact round trips fiddly.
So: compressed-tensors, written by us with the library's own int32 packer.

What fits: block weights of nn.Linear layers quantized symmetrically, all on one scheme: q4_0 (4-bit, groups of
32), q8_0 (8-bit, groups of 32), int8 (8-bit, per row) or symmetric int4 groups. Embeddings (nn.Embedding, not
a Linear) and an untied lm_head are stored unquantized (`ignore`), holding their (dequantized) values. The
asymmetric grids (q4_1, q5_x with an fp16 min, asymmetric int4) and MoE expert tensors are not expressible
and are reported as such.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.atomic import atomic_dir
from models.compress import ggml_quants
from models.compress.quantize import QTensor, _quiet, unpack_int4
from models.export.hf import hf_head_padding, special_token_ids, write_tokenizer_files
from models.hf_mapping import _LAYER_MAP, to_hf
from models.transformer import Transformer


def _hf_name(ours: str) -> str | None:
    parts = ours.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_MAP:
        return f"model.layers.{parts[1]}.{_LAYER_MAP[parts[2]]}"
    return None


def _scheme(q: QTensor) -> tuple[int, str, int] | None:
    """(num_bits, strategy, group_size) of a QTensor compressed-tensors can hold exactly, else None."""
    if q.kind == "q4_0":
        return 4, "group", 32
    if q.kind == "q8_0":
        return 8, "group", 32
    if q.kind == "int8":
        return 8, "channel", 0
    if q.kind == "int4" and q.zero is None:
        return 4, "group", q.group_size
    return None


def _codes_scale(q: QTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed int8 codes (O, I) and fp32 scales (O, I/group) or (O, 1) with value == code * scale."""
    if q.kind in ("q4_0", "q8_0"):
        g = ggml_quants.grid(q.kind)
        codes, d, _ = ggml_quants.unpack(g, q.codes, q.shape[-1])  # (O, N, 32), (O, N, 1)
        return (codes - g.offset).reshape(q.shape).to(torch.int8), d[..., 0].float()
    if q.kind == "int8":
        return q.codes.to(torch.int8), q.scale.float()[:, None]
    return (unpack_int4(q.codes, q.shape[-1]).to(torch.int16) - 8).to(torch.int8), q.scale.float()


def hf_quant_supported(qtensors: dict[str, QTensor]) -> str | None:
    """None when the quantized block weights fit one compressed-tensors scheme, else why not."""
    schemes = set()
    for name, q in qtensors.items():
        if _hf_name(name) is None:
            if q.codes.ndim > 2 or ".mlp." in name and len(q.shape) == 3:
                return f"{name}: MoE expert tensors are not Linear layers in the HF checkpoint"
            continue
        s = _scheme(q)
        if s is None:
            return f"{name}: {q.kind}{' asymmetric' if q.zero is not None else ''} has no exact compressed-tensors form"
        schemes.add(s)
    if not schemes:
        return "no quantized Linear weights"
    if len(schemes) > 1:
        return f"block weights mix schemes {sorted(schemes)}"
    if importlib.util.find_spec("compressed_tensors") is None:
        return "compressed-tensors is not installed (pip install compressed-tensors)"
    return None


def export_hf_quant(model: Transformer, qtensors: dict[str, QTensor], tokenizer_file: Path | None, out_dir: Path) -> dict:
    """Write a compressed-tensors pack-quantized HF folder atomically; returns {path, type, bytes}."""
    with _quiet():  # compressed_tensors imports torchao, which prints loader noise for CUDA-only kernels
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    why = hf_quant_supported(qtensors)
    if why is None and hf_head_padding(model.cfg) != (model.cfg.num_heads, model.cfg.num_kv_heads):
        why = "a pruned head count transformers only loads padded (the padding would have to be quantized too)"
    if why is not None:
        raise ValueError(f"hf-quant: {why}")
    special = special_token_ids(tokenizer_file)
    config, sd = to_hf(model, **special)
    num_bits = strategy = group = None
    for name, q in qtensors.items():
        hf = _hf_name(name)
        if hf is None:
            continue
        num_bits, strategy, group = _scheme(q)
        codes, scale = _codes_scale(q)
        base = hf[: -len(".weight")]
        del sd[hf]
        sd[base + ".weight_packed"] = pack_to_int32(codes, num_bits)
        sd[base + ".weight_scale"] = scale.contiguous()
        sd[base + ".weight_shape"] = torch.tensor(list(q.shape), dtype=torch.int64)
    weights = {"num_bits": num_bits, "type": "int", "symmetric": True, "strategy": strategy,
               "group_size": group or None, "dynamic": False, "actorder": None, "observer": "minmax"}
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": "pack-quantized"}},
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
    }
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_tokenizer_files(tmp, config, special, tokenizer_file, model.cfg.max_seq_len)
    kind = {(4, "group"): f"w4a16-g{group}", (8, "group"): f"w8a16-g{group}", (8, "channel"): "w8a16-channel"}
    return {"path": str(out_dir), "type": kind.get((num_bits, strategy), f"w{num_bits}a16"),
            "bytes": (out_dir / "model.safetensors").stat().st_size}

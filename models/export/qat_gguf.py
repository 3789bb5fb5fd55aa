"""GGUF files of a quantization-aware-trained model that hold exactly the trained grid (models/qat.py).

Why: QAT is only worth its cost if the shipped file computes what training scored. The baked weights are already
on the grid, so each is re-quantized onto the file's block type and the result is checked: the decoded blocks must
equal the weights bit for bit, or the export fails naming the tensor (no silent second rounding).
- int4 -> Q4_0 by llama.cpp's reference quantizer (`ggml_quants.quantize_ref`), the rounding QAT trained with.
- ternary -> TQ1_0 (1.69 bits/weight) or TQ2_0 (2.06) by gguf-py's quantizer (d = max |block| = the absmean
  scale, codes {-1, 0, 1}), where 256 divides the row; other rows -> Q4_0 with d = s and codes {7, 8, 9},
  which decodes to {-s, 0, s} exactly (4.5 bits/weight).
- Weights QAT left in full precision (the token embedding and output head unless `train.qat_embeddings`) follow
  `other_type` (q8_0 by default, what llama.cpp's own quantizer keeps them at in low-bit files); norms F32.
- A model with shared blocks goes out unshared (each repeat a copy), like every GGUF export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.compress import ggml_quants
from models.export.gguf import export_gguf, gguf_name, permute_rope
from models.qat import TQ_BLOCK
from models.transformer import Transformer, unshared_name

QAT_GGUF_TYPES = {"int4": ("q4_0",), "ternary": ("tq1_0", "tq2_0", "q4_0")}
"""File types that hold each QAT grid exactly (q4_0 holds ternary values too, at 4.5 bits/weight)."""


QAT_TYPES = ("q4_0", "tq1_0", "tq2_0")


def read_qat(model_dir: Path) -> dict[str, tuple[str, int]]:
    """The QAT weights a training run baked (its extra.json 'qat': name -> [mode, block]); {} for any other source."""
    import json

    extra = Path(model_dir) / "extra.json"
    if not Path(model_dir).is_dir() or not extra.is_file():
        return {}
    try:
        q = json.loads(extra.read_text()).get("qat") or {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{extra}: not valid JSON ({e})") from e
    return {k: (str(v[0]), int(v[1])) for k, v in q.items()}


def _ternary_q4_0(w_RI: torch.Tensor) -> np.ndarray:
    """Ternary values {-s, 0, s} (s constant over each 32-block) as Q4_0 blocks with d = s, q - 8 in {-1, 0, 1}.
    d = s itself, not a fraction of it: Muon's weight decay leaves some blocks with s near 1e-4, where s / 4 would be
    an fp16 subnormal and lose bits (seen in bench_lowbit)."""
    g = ggml_quants.grid("q4_0")
    R, In = w_RI.shape
    w_RNB = w_RI.float().reshape(R, In // 32, 32)
    s_RN = w_RNB.abs().amax(-1)
    d_RN = s_RN.half().float()
    inv = torch.where(d_RN == 0, torch.zeros_like(d_RN), 1 / torch.where(d_RN == 0, torch.ones_like(d_RN), d_RN))
    q = torch.round(w_RNB * inv[..., None]) + 8
    return ggml_quants.pack(g, q, d_RN, None).numpy()


def _decode(kind: str, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import gguf

    if kind in ggml_quants.GGML_TYPES:
        return ggml_quants.dequantize(kind, torch.from_numpy(data), shape).numpy()
    return gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, kind.upper())).reshape(shape)


def encode(w: np.ndarray, mode: str, ternary_type: str) -> tuple[str, np.ndarray]:
    """(GGUF type, block bytes) of one on-grid weight (rows along the last axis); raises if not exact."""
    import gguf

    shape = w.shape
    w2 = np.ascontiguousarray(w.reshape(-1, shape[-1]), dtype=np.float32)
    if mode == "int4":
        kind, data = "q4_0", ggml_quants.quantize_ref("q4_0", torch.from_numpy(w2)).numpy()
    elif ternary_type in ("tq1_0", "tq2_0") and shape[-1] % TQ_BLOCK == 0:
        kind = ternary_type
        data = gguf.quants.quantize(w2, getattr(gguf.GGMLQuantizationType, kind.upper()))
    else:
        kind, data = "q4_0", _ternary_q4_0(torch.from_numpy(w2))
    back = _decode(kind, data, w2.shape)
    if not np.array_equal(back, w2):
        bad = int((back != w2).sum())
        raise ValueError(f"{mode} weights are not on the {kind} grid ({bad} of {w2.size} values differ): "
                         "was the model baked after quantization-aware training?")
    return kind, data.reshape(*shape[:-1], -1)


def qat_blocks(model: Transformer, qat: dict[str, tuple[str, int]], ternary_type: str = "tq2_0"
               ) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF name -> (type, block bytes) of every QAT weight of `model` (names as in models.qat.bake's result)."""
    if ternary_type not in QAT_GGUF_TYPES["ternary"]:
        raise ValueError(f"ternary_type: must be one of {', '.join(QAT_GGUF_TYPES['ternary'])}, got {ternary_type!r}")
    cfg, sd = model.cfg, model.state_dict()
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, (mode, _) in qat.items():
        if name not in sd:
            raise ValueError(f"{name}: a QAT weight the model does not have")
        w = sd[name].detach().float().cpu().numpy()
        kind, data = encode(w, mode, ternary_type)
        for u in unshared_name(name, cfg.share_blocks):
            g = gguf_name(u, cfg)
            if g is None:
                continue
            b = data
            if g.endswith("attn_q.weight"):
                b = permute_rope(b, cfg.num_heads)  # whole rows move: blocks run along rows
            elif g.endswith("attn_k.weight"):
                b = permute_rope(b, cfg.num_kv_heads)
            out[g] = (kind, np.ascontiguousarray(b))
    return out


def export_qat_gguf(model: Transformer, qat: dict[str, tuple[str, int]], tokenizer_file: Path | None,
                    out_path: Path, file_type: str, other_type: str = "q8_0", name: str = "tinyfoundry") -> dict:
    """Write a GGUF whose QAT weights are exactly the trained grid (module docstring); returns export_gguf's dict
    plus `types` (GGUF type -> tensor count of the QAT weights)."""
    modes = {m for m, _ in qat.values()}
    if not qat:
        raise ValueError("qat: the model has no quantization-aware-trained weights (extra.json has no 'qat')")
    allowed = set(QAT_GGUF_TYPES["ternary" if "ternary" in modes else "int4"])  # int4 weights are Q4_0 in any
    if file_type not in allowed:
        raise ValueError(f"gguf type: a {'/'.join(sorted(modes))} QAT model exports exactly as "
                         f"{', '.join(sorted(allowed))}, got {file_type!r}")
    blocks = qat_blocks(model, qat, file_type if "ternary" in modes else "tq2_0")
    info = export_gguf(model, tokenizer_file, out_path, file_type, name, blocks=blocks, other_type=other_type)
    types: dict[str, int] = {}
    for kind, _ in blocks.values():
        types[kind] = types.get(kind, 0) + 1
    return {**info, "types": types}

"""Compressed checkpoints on disk: a model dir whose weights file holds quantized tensors.

Layout of `compressed/<pass>/` (self-describing, like every tinyfoundry model dir):
- `model.safetensors`: unquantized tensors under their own names; a quantized weight `W` as
  `W::codes` (int8, or uint8 with two int4 codes per byte), `W::scale` (fp16) and, asymmetric int4,
  `W::zero` (uint8); a weight on a llama.cpp block grid (q8_0 ... q5_1) as `W::codes` alone: the GGUF
  block bytes, scales included, exactly what export copies into the .gguf. Tied weights are stored once (under their canonical name).
- `model_config.json`: the ModelConfig (possibly smaller, after structured pruning).
- `compression.json`: {"format": "tinyfoundry-compressed", "version": 1, "pass": {...},
  "quantized": {name: {"kind", "shape", "group_size"}}}: what the loader needs to read the weights back.
- `tokenizer.json`: copied from the source model dir.
Pruned (not quantized) passes are plain model dirs (models.save_model_dir): zeros or smaller tensors.
Every file is written to a temporary name in the same folder and renamed, so an interrupted save leaves
no partial file under a final name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.atomic import atomic_copy, atomic_file, atomic_write_json
from models.compress.quantize import QTensor, apply_runtime, param_aliases
from models.config import ModelConfig
from models.transformer import Transformer

FORMAT = "tinyfoundry-compressed"
SEP = "::"


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_compressed(
    out_dir: Path,
    model: Transformer,
    qtensors: dict[str, QTensor],
    tokenizer_file: Path | None,
    pass_info: dict,
) -> None:
    """Write a quantized model dir; `model` holds the dequantized weights, `qtensors` their codes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aliases = param_aliases(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        canon = aliases.get(name, name)
        if canon != name:
            continue  # a tied weight: stored once, under its canonical name
        if name in qtensors:
            q = qtensors[name]
            if q.kind != "lowrank":  # a pure factorization has no grid codes
                tensors[name + SEP + "codes"] = q.codes.cpu()
            if q.scale.numel():  # llama.cpp block types keep their scales inside the block bytes
                tensors[name + SEP + "scale"] = q.scale.cpu().half()
            if q.zero is not None:
                tensors[name + SEP + "zero"] = q.zero.cpu()
            if q.lowrank is not None:  # `W::lr_u`, `W::lr_v` (+ scales): models/compress/lowrank.py
                tensors.update({k: v.cpu() for k, v in q.lowrank.tensors(name + SEP).items()})
        else:
            tensors[name] = t.detach().cpu().float()
    meta = {
        "format": FORMAT,
        "version": 1,
        "pass": pass_info,
        "quantized": {
            n: {"kind": q.kind, "shape": list(q.shape), "group_size": q.group_size,
                **({"lowrank": q.lowrank.meta()} if q.lowrank is not None else {})} for n, q in qtensors.items()
        },
    }
    atomic_save_safetensors(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    atomic_write_json(out_dir / "model_config.json", model.cfg.to_dict())
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        atomic_copy(Path(tokenizer_file), out_dir / "tokenizer.json")
    atomic_write_json(out_dir / "compression.json", meta)  # last: its presence marks a complete dir


def is_compressed_dir(path: Path) -> bool:
    return (Path(path) / "compression.json").is_file()


def read_compressed(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, QTensor], dict]:
    """-> (config, full-precision state dict with dequantized weights, the QTensors, compression.json)."""
    path = Path(path)
    try:
        meta = json.loads((path / "compression.json").read_text())
        cfg_dict = json.loads((path / "model_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable compressed model dir ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: compression.json format must be {FORMAT!r}, got {meta.get('format')!r}")
    if cfg_dict.get("arch", "llama") != "llama":
        raise ValueError(f"{path}: architecture {cfg_dict.get('arch')!r} is not a tinyfoundry llama model")
    cfg = ModelConfig.from_dict(cfg_dict)
    try:
        raw = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path / 'model.safetensors'}: corrupt or unreadable weights file ({e})") from e
    sd: dict[str, torch.Tensor] = {k: v for k, v in raw.items() if SEP not in k}
    qtensors: dict[str, QTensor] = {}
    for name, info in meta["quantized"].items():
        try:
            q = QTensor(
                kind=info["kind"],
                shape=tuple(info["shape"]),
                codes=raw[name + SEP + "codes"] if info["kind"] != "lowrank" else torch.empty(0, dtype=torch.uint8),
                scale=raw.get(name + SEP + "scale", torch.empty(0, dtype=torch.float16)),
                zero=raw.get(name + SEP + "zero"),
                group_size=int(info["group_size"]),
                lowrank=_lowrank(raw, name + SEP, info),
            )
        except KeyError as e:
            raise ValueError(f"{path}: quantized tensor {name} is missing its {e} part") from e
        qtensors[name] = q
        sd[name] = q.dequantize(torch.float32)
    return cfg, sd, qtensors, meta


def _lowrank(raw: dict[str, torch.Tensor], prefix: str, info: dict) -> object | None:
    if "lowrank" not in info:
        return None
    from models.compress.lowrank import LowRank

    return LowRank.from_tensors(raw, prefix, info["lowrank"], tuple(info["shape"]))


def load_compressed(
    path: Path | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    runtime: Literal["dequant", "torchao", "int8", "auto", "factored"] = "dequant",
) -> tuple[Transformer, Path | None]:
    """Load a compressed/<pass>/ dir (quantized or pruned) or any model dir models.load_model reads.

    runtime: 'dequant' (fp weights, exact and fastest on small CPU models), 'torchao' / 'int8' (int8
    weights kept int8 in memory, for int8 passes), 'auto' (torchao when installed, else int8, for int8).
    """
    path = Path(path)
    if not is_compressed_dir(path) or not _quantized_names(path):
        from models import load_model  # the models helper's loader: model dirs, HF dirs, Lightning ckpts

        return load_model(path, device=device, dtype=dtype)
    cfg, sd, qtensors, _ = read_compressed(path)
    model = Transformer(cfg)
    aliases = param_aliases(model)
    for name, canon in aliases.items():
        if name not in sd and canon in sd:
            sd[name] = sd[canon]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match model_config.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model = model.to(device=device, dtype=dtype).eval()
    model.compress_runtime = apply_runtime(model, qtensors, runtime) if runtime != "dequant" else "dequant"
    tok = path / "tokenizer.json"
    return model, tok if tok.is_file() else None


def _quantized_names(path: Path) -> list[str]:
    try:
        return list(json.loads((Path(path) / "compression.json").read_text()).get("quantized", {}))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable compression.json ({e})") from e


def dir_weight_bytes(path: Path) -> int:
    """Bytes of the weight files of a model dir (what 'size on disk' means in the report)."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))

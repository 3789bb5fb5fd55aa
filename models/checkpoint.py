"""Self-describing model folders, and one loader for every kind of weights the pipeline produces.

Design and invariants
- `save_model_dir` writes `model.safetensors` + `model_config.json` (+ `tokenizer.json`, `extra.json`) into a
  temporary sibling folder (`models.atomic.atomic_dir`: modes from the umask) and renames it into place, so a killed process never leaves a half-written model
  under the final name. Tied embeddings are stored once (`lm_head.weight` omitted, as HF does).
- `load_model(path)` accepts
  * a model dir (`model_config.json`, written by save_model_dir),
  * an HF export dir (`config.json` of a Llama / Mixtral, `model.safetensors` or sharded
    `model-*.safetensors` with `model.safetensors.index.json`), mapped through `models.hf_mapping`,
  * a llama.cpp `.gguf` file of a Llama (dequantized to fp32 through gguf-py, see models/gguf_import.py),
  * a Lightning `.ckpt` (read with `torch.load(weights_only=True)`; `state_dict` keys prefixed `model.`, the
    ModelConfig dict at `ckpt["hyper_parameters"]["model_config"]`; a LoRA / QLoRA fine-tuning checkpoint, which has
    `lora_config` there, comes back with its adapters merged). Where the trainer kept a weight average
    (`ckpt["ema_state_dict"]`, same keys), those weights are returned: they are the ones it validated.
  Anything else (another architecture, a truncated or corrupt file, missing keys) raises ValueError naming the
  path. It returns the model in eval mode and the tokenizer.json found with it (or None): in the folder, or for a
  checkpoint inside `<run>/checkpoints/`, the run's `tokenizer/tokenizer.json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.atomic import atomic_dir
from models.config import ModelConfig
from models.tokenizer_lookup import find_tokenizer
from models.transformer import Transformer

WEIGHTS, CONFIG, TOKENIZER, EXTRA = "model.safetensors", "model_config.json", "tokenizer.json", "extra.json"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_model_dir(
    path: str | Path, model: Transformer, tokenizer_file: Path | None = None, extra: dict | None = None
) -> Path:
    """Write a self-describing model folder atomically (replacing an existing one); returns its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
        save_file(sd, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "tinyfoundry"})
        _write_json(tmp / CONFIG, model.cfg.to_dict())
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER)
            side = Path(tokenizer_file).parent / "tokenizer_config.json"  # a base model's specials + chat template
            if side.is_file():
                shutil.copyfile(side, tmp / side.name)
        if extra is not None:
            _write_json(tmp / EXTRA, extra)
    return path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read safetensors weights ({e})") from e


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def _build(cfg_dict: dict, sd: dict[str, torch.Tensor], where: Path) -> Transformer:
    try:
        cfg = ModelConfig.from_dict(cfg_dict)
        return Transformer.from_state_dict(cfg, sd)
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise ValueError(f"{where}: not a loadable tinyfoundry model ({e})") from e


def _load_hf_dir(path: Path) -> Transformer:
    from models.hf_mapping import config_from_hf, state_dict_from_hf

    hf_cfg = _read_json(path / "config.json")
    try:
        cfg = config_from_hf(hf_cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: not a loadable Llama/Mixtral export ({e})") from e
    index = path / "model.safetensors.index.json"
    if (path / WEIGHTS).exists():
        sd = _load_safetensors(path / WEIGHTS)
    elif index.exists():
        sd = {}
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            sd.update(_load_safetensors(path / shard))
    else:
        raise ValueError(f"{path}: HF export dir without model.safetensors")
    try:
        return Transformer.from_state_dict(cfg, state_dict_from_hf(cfg, sd))
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise ValueError(f"{path}: weights do not match the Llama/Mixtral config ({e})") from e


def _load_ckpt(path: Path) -> Transformer:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or non-allowlisted pickle
        raise ValueError(f"{path}: cannot read checkpoint with weights_only=True ({e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    try:
        cfg_dict = ckpt["hyper_parameters"]["model_config"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: no hyper_parameters.model_config in checkpoint") from e
    if isinstance(cfg_dict, ModelConfig):
        cfg_dict = cfg_dict.to_dict()
    sd = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not sd:
        raise ValueError(f"{path}: checkpoint state_dict has no 'model.' keys")
    ema = ckpt.get("ema_state_dict") or {}  # the trainer's weight average (train/ema.py): what it validates
    sd.update({k[len("model.") :]: v for k, v in ema.items() if k.startswith("model.") and k[len("model.") :] in sd})
    lora = (ckpt.get("hyper_parameters") or {}).get("lora_config")
    if lora:  # a LoRA / QLoRA fine-tuning checkpoint: rebuild the adapters, then merge them (models/lora.py)
        from models.lora import LoRAConfig, apply_lora, merged

        try:
            with torch.device("meta"):
                adapted = apply_lora(Transformer(ModelConfig.from_dict(dict(cfg_dict))), LoRAConfig(**lora))
            adapted.load_state_dict(sd, strict=True, assign=True)
            return merged(adapted)  # type: ignore[return-value]
        except (ValueError, TypeError, RuntimeError, KeyError) as e:
            raise ValueError(f"{path}: not a loadable LoRA checkpoint ({e})") from e
    return _build(dict(cfg_dict), sd, path)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Transformer, Path | None]:
    """Load a model dir, HF export dir, Lightning .ckpt or GGUF -> (model in eval mode, tokenizer.json or None)."""
    path = Path(path)
    if path.is_dir():
        if (path / CONFIG).exists():
            sd = _load_safetensors(path / WEIGHTS) if (path / WEIGHTS).exists() else None
            if sd is None:
                raise ValueError(f"{path}: model dir without {WEIGHTS}")
            cfg_dict = _read_json(path / CONFIG)
            model = _build(cfg_dict, sd, path)
        elif (path / "config.json").exists():
            model = _load_hf_dir(path)
        else:
            raise ValueError(f"{path}: neither a model dir ({CONFIG}) nor an HF export dir (config.json)")
    elif path.is_file():
        if path.suffix == ".gguf":
            from models.gguf_import import load_gguf

            model = load_gguf(path)
        elif path.suffix != ".ckpt":
            raise ValueError(f"{path}: expected a folder, a Lightning .ckpt or a .gguf file")
        else:
            model = _load_ckpt(path)
    else:
        raise ValueError(f"{path}: no such file or folder")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model, find_tokenizer(path)

"""LoRA and QLoRA adapters on a tinyfoundry Transformer, merged back or saved in PEFT's format.

Design and invariants
- `LoRALinear` wraps one bias-free linear map W (out, in): y = W x + (alpha / r) * B(A(dropout(x))), with A (r, in)
  Kaiming-uniform and B (out, r) zero at init, so a fresh adapter changes nothing (PEFT's default init).
  `lora_bias` adds a bias to B (PEFT's `lora_bias=True`); our base layers have no biases, so PEFT's `bias`
  ("all" / "lora_only") has nothing to train and is not offered.
- The frozen base is either the original `nn.Linear` (LoRA) or a `QuantLinear` holding our int8 / int4 codes
  (models/compress/quantize.py) that dequantizes on the fly (QLoRA): weight memory is the packed codes + fp16
  scales, and the base never receives a gradient.
- Targets are named by our module names (`wq wk wv wo w_gate w_up w_down`), HF/PEFT names (`q_proj ... down_proj`)
  or `all-linear`; embeddings and the output head are never adapted (as PEFT's all-linear).
- `merged(model)` returns a plain Transformer with W + scale * B A (dequantized W for QLoRA) that compress, export
  and `load_model` take like any other; `to_peft(model)` gives PEFT's `adapter_config.json` dict and the
  `adapter_model.safetensors` tensors under PEFT's key names
  (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so
  `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export/hf), adapter_dir)` computes our logits.

Shape legend: O output features, I input features, R rank.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from models.compress.quantize import QTensor

OURS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
HF_NAME = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w_gate": "gate_proj",
           "w_up": "up_proj", "w_down": "down_proj"}
HF_PARENT = {"attn": "self_attn", "mlp": "mlp"}


@dataclass
class LoRAConfig:
    """Low-rank adapters: which linear maps, how large, and whether the frozen base is quantized (QLoRA)."""

    rank: int = 16
    """Rank r of each adapter (A is r x in, B is out x r)."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / rank) * B A."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Linear maps to adapt, by our names (wq wk wv wo w_gate w_up w_down), HF names (q_proj ... down_proj) or
    'all-linear'."""
    lora_bias: bool = False
    """Train a bias on B as well (PEFT's lora_bias); the base layers have none."""
    quantize: Literal["none", "int8", "int4", "q4_0", "q4_1", "q8_0"] = "none"
    """QLoRA: quantize the frozen base's adapted layers with our int8 / int4 quantizers, or onto a llama.cpp block
    grid (q4_0 / q4_1 / q8_0: what a GGUF base already holds, so a Q4_1 base re-quantizes to itself, bit for bit,
    instead of gaining a second rounding error); 'none' = plain LoRA."""
    group_size: int = 64
    """int4 group size along each row (QLoRA)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank: must be a positive integer, got {self.rank!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.group_size < 32 or self.group_size % 32:
            raise ValueError(f"group_size: must be a positive multiple of 32, got {self.group_size}")
        self.target_modules = list(self.target_modules)
        self.resolved_targets()  # validates the names

    def resolved_targets(self) -> list[str]:
        """Our module names of the targets, in a fixed order."""
        inv = {v: k for k, v in HF_NAME.items()}
        out: set[str] = set()
        for t in self.target_modules:
            if t == "all-linear":
                out.update(OURS)
            elif t in OURS:
                out.add(t)
            elif t in inv:
                out.add(inv[t])
            else:
                raise ValueError(f"target_modules: unknown module {t!r}; use {', '.join(OURS)}, their HF names "
                                 "or all-linear")
        return [n for n in OURS if n in out]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules), "lora_bias": self.lora_bias,
                "quantize": self.quantize, "group_size": self.group_size}


class QuantLinear(nn.Module):
    """A frozen linear map stored as int8 / int4 codes (buffers, not parameters); dequantized per forward."""

    def __init__(self, q: QTensor) -> None:
        super().__init__()
        self.kind, self.shape, self.group_size = q.kind, tuple(q.shape), q.group_size
        self.register_buffer("codes", q.codes)
        self.register_buffer("scale", q.scale)
        self.register_buffer("zero", q.zero if q.zero is not None else torch.empty(0, dtype=torch.uint8))

    def qtensor(self) -> QTensor:
        from models.compress.quantize import QTensor

        zero = self.zero if self.zero.numel() else None
        return QTensor(self.kind, self.shape, self.codes, self.scale, zero, self.group_size)  # type: ignore[arg-type]

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.qtensor().dequantize(dtype)

    @property
    def weight(self) -> torch.Tensor:  # read-only view for code that inspects .weight (dtype/device)
        return self.dequantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qtensor().dequantize(x.dtype))


class LoRALinear(nn.Module):
    """base(x) + scaling * lora_B(lora_A(dropout(x))); base frozen (nn.Linear or QuantLinear)."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, cfg: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(in_features, cfg.rank, bias=False)
        self.lora_B = nn.Linear(cfg.rank, out_features, bias=cfg.lora_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.scaling = cfg.alpha / cfg.rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        nn.init.zeros_(self.lora_B.weight)
        if self.lora_B.bias is not None:
            nn.init.zeros_(self.lora_B.bias)

    def base_weight(self) -> torch.Tensor:
        return self.base.dequantized() if isinstance(self.base, QuantLinear) else self.base.weight.detach()

    def delta_weight(self) -> torch.Tensor:
        """(O, I) update scaling * B A."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.lora_B(self.lora_A(self.drop(x))) * self.scaling


def _targets(model: nn.Module, cfg: LoRAConfig) -> list[tuple[nn.Module, str, nn.Module]]:
    wanted = set(cfg.resolved_targets())
    out = []
    for block in model.layers:  # type: ignore[attr-defined]
        for parent in (block.attn, block.mlp):
            for name in OURS:
                if name in wanted and isinstance(getattr(parent, name, None), nn.Linear):
                    out.append((parent, name, getattr(parent, name)))
    return out


def _quantize_base(w: torch.Tensor, cfg: LoRAConfig) -> QTensor:
    from models.compress import ggml_quants
    from models.compress.quantize import QTensor, quantize_int4, quantize_int8

    if cfg.quantize == "int8":
        return quantize_int8(w)
    if cfg.quantize == "int4":
        return quantize_int4(w, cfg.group_size)
    if w.shape[-1] % ggml_quants.BLOCK:
        raise ValueError(f"quantize: {cfg.quantize} needs rows that are multiples of {ggml_quants.BLOCK}, "
                         f"got a {tuple(w.shape)} weight")
    blocks = ggml_quants.quantize_ref(cfg.quantize, w)
    return QTensor(cfg.quantize, tuple(w.shape), blocks, torch.empty(0, dtype=torch.float16), None, ggml_quants.BLOCK)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Freeze every parameter of `model` and wrap the targeted linear maps in LoRALinear (in place; returned)."""
    mlp = set(cfg.resolved_targets()) - {"wq", "wk", "wv", "wo"}
    if getattr(model.cfg, "is_moe", False) and mlp:  # type: ignore[attr-defined]
        raise ValueError(f"target_modules: MoE experts cannot take adapters ({', '.join(sorted(mlp))}); "
                         "target the attention maps wq, wk, wv, wo")
    for p in model.parameters():
        p.requires_grad_(False)
    targets = _targets(model, cfg)
    if not targets:
        raise ValueError(f"target_modules: no linear layer of the model matches {cfg.target_modules}")
    for parent, name, lin in targets:
        base: nn.Module = lin
        if cfg.quantize != "none":
            base = QuantLinear(_quantize_base(lin.weight.detach().float(), cfg))
        wrapped = LoRALinear(base, lin.in_features, lin.out_features, cfg)
        wrapped.to(device=lin.weight.device)
        setattr(parent, name, wrapped)
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged(model: nn.Module) -> nn.Module:
    """A plain Transformer equal to the adapted model: W <- W + scaling * B A (QLoRA: dequantized W).

    A lora bias has no place in a bias-free Transformer: merging one raises ValueError."""
    from models.transformer import Transformer

    mods = lora_modules(model)
    sd: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if not any(name.startswith(m + ".") for m in mods):
            sd[name] = t
    for name, m in mods.items():
        if m.lora_B.bias is not None and bool(m.lora_B.bias.detach().abs().max() > 0):
            raise ValueError(f"{name}: a trained lora bias cannot be merged into a bias-free layer")
        w = m.base_weight().float() + m.delta_weight().detach().float()
        sd[name + ".weight"] = w.to(m.lora_A.weight.dtype)
    out = Transformer.from_state_dict(copy.deepcopy(model.cfg), sd)  # type: ignore[attr-defined]
    return out.to(next(model.parameters()).device)


@torch.no_grad()
def merge_(model: nn.Module) -> nn.Module:
    """Merge the adapters into the model in place (W += scaling * B A; QLoRA: dequantized W), leaving a plain
    Transformer with no second copy of the weights: what the trainer saves at the end of a fine-tuning run."""
    for name, m in list(lora_modules(model).items()):
        if m.lora_B.bias is not None and bool(m.lora_B.bias.abs().max() > 0):
            raise ValueError(f"{name}: a trained lora bias cannot be merged into a bias-free layer")
        delta = m.delta_weight().float()
        if isinstance(m.base, QuantLinear):
            lin = nn.Linear(m.lora_A.in_features, m.lora_B.out_features, bias=False, device=delta.device)
            lin.weight.copy_(m.base.dequantized() + delta)
        else:
            lin = m.base
            lin.weight.add_(delta.to(lin.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lin)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; QLoRA's quantized base counts its original weights as parameters."""
    seen: set[int] = set()
    train = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        train += p.numel() if p.requires_grad else 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += math.prod(m.shape)
    return train, total


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (distinct tensors): what the weights take in memory."""
    seen: set[int] = set()
    n = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel() * t.element_size()
    return n


def _hf_key(name: str) -> str:
    """'layers.3.attn.wq' -> 'model.layers.3.self_attn.q_proj'."""
    _, i, parent, lin = name.split(".")
    return f"model.layers.{i}.{HF_PARENT[parent]}.{HF_NAME[lin]}"


def to_peft(model: nn.Module, cfg: LoRAConfig, base_model: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json dict, adapter_model.safetensors tensors) in PEFT's LoRA format."""
    tensors: dict[str, torch.Tensor] = {}
    for name, m in lora_modules(model).items():
        key = "base_model.model." + _hf_key(name)
        tensors[key + ".lora_A.weight"] = m.lora_A.weight.detach().float().cpu().contiguous()
        tensors[key + ".lora_B.weight"] = m.lora_B.weight.detach().float().cpu().contiguous()
        if m.lora_B.bias is not None:
            tensors[key + ".lora_B.bias"] = m.lora_B.bias.detach().float().cpu().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_NAME[n] for n in cfg.resolved_targets()),
        "bias": "none",
        "lora_bias": cfg.lora_bias,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return config, tensors


def save_peft(model: nn.Module, cfg: LoRAConfig, out_dir: Any, base_model: str = "") -> Any:
    """Write adapter_config.json + adapter_model.safetensors into out_dir atomically (folder swap)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from models.atomic import atomic_dir

    out_dir = Path(out_dir)
    config, tensors = to_peft(model, cfg, base_model)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir

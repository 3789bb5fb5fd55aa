"""Named model presets, from llama2.c's 260K toy to its 110M model, plus mixture-of-experts variants.

Design and invariants
- A preset is a complete `ModelConfig`, including a default vocabulary. The name is the total parameter count
  *at that default vocabulary*: llama2.c's shapes (15m, 42m, 110m: dim 288/6L/6H, 512/8L/8H, 768/12L/12H) keep
  its 32000-token Llama-2 vocabulary so the names stay true; the small presets assume a 4096-token TinyStories
  tokenizer (the 0.3m toy keeps llama2.c's 512). A run config overrides `vocab_size` to its tokenizer's
  (`dataclasses.replace(preset, **overrides)`), which changes `total` but not `non_embedding`, the column
  scaling laws use; `tinyfoundry models` prints both.
- Small models are deep and narrow (MobileLLM's finding for sub-billion models); MHA except where llama2.c
  used GQA.
- MoE names read total-active (Qwen's "30B-A3B" style). `moe-20m-a8m` is the 8m model with each MLP split
  into 8 experts top-2 of half width (same active params as 8m). `moe-fg-23m-a7m` is the fine-grained
  variant (DeepSeekMoE): 32 narrow experts, top-6, plus one always-on shared expert, same active width.
  `moe-2m-a1m` is a demo-size MoE for CPU smoke runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.config import ModelConfig

# Raw keyword arguments, not built configs: get_preset(name, dim=...) must re-derive hidden_dim etc.
_PRESETS: dict[str, dict] = {
    "0.3m": dict(vocab_size=512, dim=64, num_layers=5, num_heads=8, num_kv_heads=4, max_seq_len=512),
    "1m": dict(vocab_size=4096, dim=96, num_layers=6, num_heads=6, max_seq_len=512),
    "3m": dict(vocab_size=4096, dim=128, num_layers=12, num_heads=4, max_seq_len=512),
    "8m": dict(vocab_size=4096, dim=256, num_layers=8, num_heads=8, max_seq_len=512),
    "15m": dict(vocab_size=32000, dim=288, num_layers=6, num_heads=6, max_seq_len=256),
    "33m": dict(vocab_size=4096, dim=512, num_layers=10, num_heads=8, max_seq_len=1024),
    "42m": dict(vocab_size=32000, dim=512, num_layers=8, num_heads=8, max_seq_len=1024),
    "110m": dict(vocab_size=32000, dim=768, num_layers=12, num_heads=12, max_seq_len=1024),
    "moe-2m-a1m": dict(
        vocab_size=4096, dim=96, num_layers=6, num_heads=6, max_seq_len=512,
        num_experts=8, num_experts_per_tok=2, moe_hidden_dim=96,
    ),
    "moe-20m-a8m": dict(
        vocab_size=4096, dim=256, num_layers=8, num_heads=8, max_seq_len=512,
        num_experts=8, num_experts_per_tok=2, moe_hidden_dim=352,
    ),
    "moe-fg-23m-a7m": dict(
        vocab_size=4096, dim=256, num_layers=8, num_heads=8, max_seq_len=512,
        num_experts=32, num_experts_per_tok=6, moe_hidden_dim=96, num_shared_experts=1,
    ),
}  # fmt: skip


def list_presets() -> list[str]:
    """Preset names, smallest first (dense, then MoE)."""
    return list(_PRESETS)


def get_preset(name: str, **overrides: object) -> ModelConfig:
    """Preset `name` with optional field overrides, validated. Derived fields (hidden_dim, num_kv_heads,
    moe_hidden_dim) are derived again after the overrides: get_preset("1m", dim=128) gets the 128-wide MLP,
    whereas dataclasses.replace(get_preset("1m"), dim=128) would keep the 96-wide model's hidden_dim."""
    if name not in _PRESETS:
        raise ValueError(f"preset: unknown model preset, got {name!r} (choose from {', '.join(_PRESETS)})")
    return ModelConfig(**{**_PRESETS[name], **overrides})  # type: ignore[arg-type]


def load_config(spec: str | Path, **overrides: object) -> ModelConfig:
    """A ModelConfig from a preset name, a YAML/JSON file, or a model folder / HF export dir / Lightning .ckpt.

    YAML/JSON: either ModelConfig fields, or a run config whose `model:` section holds them; in both an optional
    `preset:` key names the starting preset. Overrides apply last. Raises ValueError naming what failed.
    """
    import yaml

    from models.hf_mapping import config_from_hf

    if isinstance(spec, str) and spec in _PRESETS:
        return get_preset(spec, **overrides)
    path = Path(spec)
    if path.is_dir():
        if (path / "model_config.json").is_file():
            d = json.loads((path / "model_config.json").read_text())
        elif (path / "config.json").is_file():
            d = config_from_hf(json.loads((path / "config.json").read_text())).to_dict()
        else:
            raise ValueError(f"{path}: no model_config.json or config.json in this folder")
        return ModelConfig.from_dict({**d, **overrides})
    if path.suffix == ".ckpt" and path.is_file():
        import torch

        try:
            d = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["model_config"]
        except Exception as e:
            raise ValueError(f"{path}: no readable hyper_parameters.model_config ({e})") from e
        return ModelConfig.from_dict({**d, **overrides})
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        d = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping")
        if isinstance(d.get("model"), dict):
            d = d["model"]
        d = {**d, **overrides}
        preset = d.pop("preset", None)
        return get_preset(str(preset), **d) if preset is not None else ModelConfig.from_dict(d)
    raise ValueError(
        f"model: {str(spec)!r} is neither a preset ({', '.join(_PRESETS)}) nor a config file/folder"
    )


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(names: list[str] | None = None) -> str:
    """Plain-text table for `tinyfoundry models`: shape, params (total/active/non-embedding), FLOPs/token."""
    from models.accounting import count_params, flops_per_token

    header = ("name", "vocab", "dim", "layers", "heads/kv", "mlp", "experts", "total", "active", "non-emb",
              "train FLOPs/tok")  # fmt: skip
    rows = [header]
    for name in names or list_presets():
        cfg = get_preset(name)
        p = count_params(cfg)
        experts = "-"
        if cfg.is_moe:
            experts = f"{cfg.num_experts}x{cfg.moe_hidden_dim} top{cfg.num_experts_per_tok}"
            if cfg.num_shared_experts:
                experts += f" +{cfg.num_shared_experts}sh"
        rows.append((
            name, str(cfg.vocab_size), str(cfg.dim), str(cfg.num_layers), f"{cfg.num_heads}/{cfg.num_kv_heads}",
            str(cfg.hidden_dim) if not cfg.is_moe else "-", experts, _human(p["total"]), _human(p["active"]),
            _human(p["non_embedding"]), f"{_human(flops_per_token(cfg))} @T={cfg.max_seq_len}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (
        "total counts tied weights once; active = params one token uses; non-emb excludes embedding and "
        "output head;\nFLOPs/token = 6*N_matmul + 12*L*H*K*T (fwd+bwd, PaLM convention). Presets' vocab is "
        "overridden by the run's tokenizer."
    )
    return "\n".join(lines) + "\n\n" + note

"""tinyfoundry models: Llama-style dense and mixture-of-experts decoders in pure PyTorch.

Public API: ModelConfig, get_preset, list_presets, Transformer, ModelOutput,
save_model_dir, load_model; generation in models.generate, accounting in models.accounting, HF mapping in
models.hf_mapping. Never imports Lightning or train/.
"""

from models.checkpoint import load_model, save_model_dir
from models.config import ModelConfig
from models.presets import format_table, get_preset, list_presets, load_config
from models.transformer import ModelOutput, Transformer

__all__ = [
    "ModelConfig",
    "ModelOutput",
    "Transformer",
    "format_table",
    "get_preset",
    "list_presets",
    "load_config",
    "load_model",
    "save_model_dir",
]

"""Export of a trained (possibly pruned or quantized) tinyfoundry model: a Hugging Face folder
(`export/hf/`), GGUF files for llama.cpp (`export/gguf/`) and a model card (`export/README.md`).

A quantized compressed dir is read back dequantized: `hf/` always holds full precision, and the GGUF
files are quantized from those weights by the gguf package (F16 / Q8_0 / Q4_0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.compress.storage import atomic_write_bytes, load_compressed
from models.export.card import model_card
from models.export.gguf import export_gguf
from models.export.hf import export_hf

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")


def _default_gguf_types() -> list[str]:
    return ["q8_0"]


@dataclass
class ExportConfig:
    """The export stage: which deliverables to write."""

    hf: bool = True
    """Write export/hf/ (safetensors + config.json + tokenizer) for transformers."""
    gguf_types: list[str] = field(default_factory=_default_gguf_types)
    """GGUF files to write under export/gguf/, any of f32, f16, q8_0, q4_0 ([] for none)."""
    name: str = "tinyfoundry"
    """Model name in the GGUF metadata, file names and the model card."""
    card: bool = True
    """Write export/README.md with the compression report's figures."""

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


def run_export(cfg: ExportConfig, model_dir: Path, out_dir: Path, report: dict | None = None) -> dict:
    """Export the model in `model_dir` (model dir, compressed dir, HF dir or .ckpt) into `out_dir`."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, tokenizer_file = load_compressed(model_dir)
    model.eval()
    info: dict = {"source": str(model_dir), "hf": None, "gguf": []}
    if cfg.hf:
        info["hf"] = export_hf(model, tokenizer_file, out_dir / "hf")
    for t in cfg.gguf_types:
        info["gguf"].append(export_gguf(model, tokenizer_file, out_dir / "gguf" / f"{cfg.name}-{t}.gguf", t, cfg.name))
    if cfg.card:
        atomic_write_bytes(out_dir / "README.md", model_card(model, info, report, cfg.name).encode())
        info["card"] = str(out_dir / "README.md")
    return info


__all__ = ["ExportConfig", "run_export", "export_hf", "export_gguf"]

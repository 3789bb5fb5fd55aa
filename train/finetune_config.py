"""FinetuneConfig: the finetune section (kept apart from train/finetune.py so `--help` does not import Lightning).

Design: the knobs that make fine-tuning differ from pretraining (method, adapters, data, lr, budget, batch, sequence
length, EMA, optimizer, weight decay, warmup); everything else comes from the run's `train` section through
`train_config()`, so fine-tuning runs the one training recipe with the same precision, devices and checkpointing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from models.lora import LoRAConfig
from train.config import TrainConfig

Method = Literal["full", "lora", "qlora"]


@dataclass
class FinetuneConfig:
    """What to adapt, how (full / LoRA / QLoRA), on which data, with which optimizer settings."""

    base: str = ""
    """Model to adapt: a model dir or .ckpt of ours, an HF Llama folder or a .gguf; empty = the run's
    checkpoints/final."""
    method: Method = "lora"
    """'full' trains every weight; 'lora' trains low-rank adapters on the frozen base; 'qlora' the same on a base
    quantized with our int8/int4 quantizer or onto a llama.cpp grid (lora.quantize, int4 by default)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Adapter settings (rank, alpha, dropout, target modules, lora_bias, quantize) for lora / qlora."""
    data: list[str] = field(default_factory=list)
    """JSONL files of examples (`messages`, `prompt`+`completion`, or `text`); empty = the run's token shards."""
    tokenizer: str = ""
    """Tokenizer (tokenizer.json, folder or .gguf); empty = the base's own, else the run's tokenizer/."""
    val_fraction: float = 0.05
    """Share of the examples held out for validation (at least one)."""
    max_tokens: int = 200_000
    """Fine-tuning length in tokens (trained or masked: the window tokens the model reads)."""
    batch_size: int = 8
    """Sequences per micro-batch."""
    seq_len: int = 256
    """Tokens per training window."""
    window_start: Literal["example", "any"] = "example"
    """Where training windows over JSONL data begin: 'example' = at an example's first token (each reply
    trained with its prompt in view when seq_len covers an example), 'any' = anywhere, as pretraining cuts
    shards. Token shards (no data files) are always cut anywhere."""
    word_weight: float = 1.0
    """Loss weight on the reply tokens of each required word's first use, for examples that carry a `words` list
    (data_pipelines/chat.py `instruct_from_synth`); 1 = every trained token alike. Those few tokens (~2.5% of a
    grammar story's) are the only ones whose loss depends on the instruction, so at weight 1 learning to read it
    is a faint signal under the story's own language modelling."""
    lr: float = 2e-4
    """Peak learning rate (AdamW; LoRA usually wants ~1e-3, full fine-tuning ~1e-4)."""
    optimizer: Literal["adamw", "muon", "auto"] = "adamw"
    """Optimizer (train/optim.py); AdamW is the usual choice for adapters and small fine-tunes."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    warmup_frac: float = 0.05
    """Fraction of the steps spent in linear warmup."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    ema_decay: float = 0.0
    """Weight average used for validation and the result (train/ema.py); 0 disables."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        for name in ("max_tokens", "batch_size", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if not self.word_weight > 0:
            raise ValueError(f"word_weight: must be positive, got {self.word_weight}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.window_start not in ("example", "any"):
            raise ValueError(f"window_start: must be 'example' or 'any', got {self.window_start!r}")
        self.data = [str(d) for d in self.data]

    def lora_config(self) -> dict[str, Any] | None:
        if self.method == "full":
            return None
        lcfg = self.lora
        if self.method == "qlora" and lcfg.quantize == "none":
            lcfg = dataclasses.replace(lcfg, quantize="int4")
        if self.method == "lora" and lcfg.quantize != "none":
            raise ValueError("lora.quantize: method 'lora' keeps the base in full precision; use method: qlora")
        return lcfg.to_dict()

    def train_config(self, train: TrainConfig, base: str) -> TrainConfig:
        """The run's train section with fine-tuning's knobs and the base as init_from."""
        return dataclasses.replace(
            train, init_from=base, max_tokens=self.max_tokens, batch_size=self.batch_size, seq_len=self.seq_len,
            lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay, warmup_frac=self.warmup_frac,
            schedule=self.schedule, ema_decay=self.ema_decay, teacher="")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["lora"] = self.lora.to_dict()
        d["data"] = list(self.data)
        return d

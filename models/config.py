"""ModelConfig: the one typed description of a tinyfoundry transformer (dense or mixture-of-experts).

Design and invariants
- Every field has a one-line docstring (the CLI builds `--help` from them) and a usable default; options are
  `Literal`s. `__post_init__` validates and fills the derived fields (`num_kv_heads`, `hidden_dim`,
  `moe_hidden_dim`), so a config that exists is a config that builds. Errors read
  `"<field>: <what is wrong>, got <value>"`.
- Row lengths: every weight matrix's rows (the input dimension of each linear map: `dim`, `hidden_dim`,
  `moe_hidden_dim`, and `num_heads * head_dim` for the attention output) must be a multiple of 32 so GGUF Q8_0
  and Q4_0 blocks (32 values along a row) tile every tensor. `vocab_size` is *not* constrained: the embedding
  and output matrices have rows of length `dim`, so any vocabulary exports; padding the vocabulary to a
  multiple of 64 is a GPU-speed matter left to the tokenizer.
- `to_dict()` / `from_dict()` round-trip through JSON and YAML (plain ints, floats, bools, strings). Derived
  fields are written out resolved, so a saved config never changes meaning when a default changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

GGUF_BLOCK = 32  # Q8_0 / Q4_0 block length along a weight row


def _round_up(x: int, multiple: int) -> int:
    return ((x + multiple - 1) // multiple) * multiple


@dataclass
class ModelConfig:
    """Shape and behaviour of a Llama-style decoder; num_experts > 0 makes every MLP a mixture of experts."""

    vocab_size: int = 4096
    """Number of token ids (the tokenizer's vocabulary, including special tokens)."""
    dim: int = 256
    """Width of the residual stream (multiple of 32)."""
    num_layers: int = 4
    """Number of stored (distinct) transformer blocks; the model runs num_layers * share_blocks of them."""
    share_blocks: int = 1
    """Immediate block-wise weight sharing (MobileLLM): each stored block runs this many times in a row, so depth is
    num_layers * share_blocks at num_layers blocks' parameters; 1 shares nothing. Exports repeat the weights."""
    num_heads: int = 4
    """Number of query heads; head_dim = dim / num_heads (even, for RoPE)."""
    num_kv_heads: int = 0
    """Number of key/value heads for grouped-query attention; 0 means num_heads (plain multi-head)."""
    head_dim: int = 0
    """Width of one attention head; 0 means dim / num_heads. Set explicitly by structured head pruning, which
    removes whole heads and keeps their width (so num_heads * head_dim may be less than dim)."""
    hidden_dim: int = 0
    """SwiGLU inner width of the dense MLP; 0 means 8/3 * dim rounded up to a multiple of 32 (Llama)."""
    max_seq_len: int = 512
    """Longest sequence the model is trained on (context length of generation)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection (saves vocab_size * dim params)."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches (0 for pretraining)."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std / sqrt(2 * num_layers)."""
    num_experts: int = 0
    """Routed experts per MoE layer; 0 builds a dense model."""
    num_experts_per_tok: int = 2
    """Experts each token is routed to (top-k); only used when num_experts > 0."""
    moe_hidden_dim: int = 0
    """SwiGLU inner width of one expert; 0 means hidden_dim (multiple of 32)."""
    num_shared_experts: int = 0
    """Always-on shared experts (each moe_hidden_dim wide) added to the routed output; 0 disables."""
    moe_aux_loss_coef: float = 0.01
    """Weight of the Switch load-balancing loss added to ModelOutput.loss."""
    moe_z_loss_coef: float = 0.001
    """Weight of the router z-loss (mean squared logsumexp of router logits) added to ModelOutput.loss."""
    moe_impl: Literal["grouped", "loop"] = "grouped"
    """MoE dispatch: 'grouped' (tokens sorted by expert, batched matmuls) or 'loop' (reference for tests)."""
    arch: Literal["llama"] = field(default="llama")
    """Architecture family tag written to saved configs (checked when loading)."""

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")

        for name in ("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "share_blocks"):
            positive(name)
        for name in ("num_kv_heads", "hidden_dim", "num_experts", "moe_hidden_dim", "num_shared_experts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        if self.dim % GGUF_BLOCK:
            raise ValueError(f"dim: must be a multiple of {GGUF_BLOCK} (GGUF row blocks), got {self.dim}")
        if self.head_dim == 0:
            if self.dim % self.num_heads:
                raise ValueError(f"num_heads: must divide dim={self.dim}, got {self.num_heads}")
            self.head_dim = self.dim // self.num_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim: must be even for RoPE, got {self.head_dim}")
        if (self.num_heads * self.head_dim) % GGUF_BLOCK:
            raise ValueError(
                f"num_heads: num_heads * head_dim (the attention output's row length) must be a multiple of "
                f"{GGUF_BLOCK}, got {self.num_heads} * {self.head_dim}"
            )
        if self.num_kv_heads == 0:
            self.num_kv_heads = self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: must divide num_heads={self.num_heads}, got {self.num_kv_heads}")
        if self.hidden_dim == 0:
            self.hidden_dim = _round_up(int(8 * self.dim / 3), GGUF_BLOCK)
        if self.hidden_dim % GGUF_BLOCK:
            raise ValueError(f"hidden_dim: must be a multiple of {GGUF_BLOCK}, got {self.hidden_dim}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta: must be positive, got {self.rope_theta}")
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps: must be in (0, 1), got {self.norm_eps}")
        if self.share_blocks > 64:
            raise ValueError(f"share_blocks: each block runs this many times in a row (1-64), got {self.share_blocks}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ValueError(f"init_std: must be positive, got {self.init_std}")
        if self.arch != "llama":
            raise ValueError(f"arch: only 'llama' is supported, got {self.arch!r}")
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok: must be in [1, num_experts={self.num_experts}], "
                    f"got {self.num_experts_per_tok}"
                )
            if self.moe_hidden_dim == 0:
                self.moe_hidden_dim = self.hidden_dim
            if self.moe_hidden_dim % GGUF_BLOCK:
                raise ValueError(
                    f"moe_hidden_dim: must be a multiple of {GGUF_BLOCK}, got {self.moe_hidden_dim}"
                )
            if self.moe_aux_loss_coef < 0:
                raise ValueError(f"moe_aux_loss_coef: must be >= 0, got {self.moe_aux_loss_coef}")
            if self.moe_z_loss_coef < 0:
                raise ValueError(f"moe_z_loss_coef: must be >= 0, got {self.moe_z_loss_coef}")
        elif self.num_shared_experts:
            raise ValueError(
                f"num_shared_experts: needs num_experts > 0 (a dense model has no experts), "
                f"got {self.num_shared_experts}"
            )

    @property
    def depth(self) -> int:
        """Blocks a token passes through (num_layers * share_blocks): the KV cache's layers, the FLOPs' depth."""
        return self.num_layers * self.share_blocks

    def unshared(self) -> ModelConfig:
        """The same network with every repeat stored (what formats without weight sharing hold)."""
        return dataclasses.replace(self, num_layers=self.depth, share_blocks=1)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict with derived fields resolved."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown ModelConfig field, got {d[unknown[0]]!r}")
        return cls(**d)

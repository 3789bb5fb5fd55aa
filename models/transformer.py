"""The tinyfoundry transformer: a pre-norm Llama-style decoder, dense or mixture-of-experts.

Design and invariants
- x = x + attn(norm(x)); x = x + mlp(norm(x)); final norm; output projection (tied to the embedding by default).
  The MLP is SwiGLU, or `models.moe.MoE` when `cfg.num_experts > 0`.
- `forward(idx_BT, targets_BT)` returns `ModelOutput`; when targets are given, `loss = ce_loss + aux_loss`, where
  aux_loss is the mean over MoE layers of their (already weighted) balance + z-losses and 0 for a dense model,
  so a training loop just calls `out.loss.backward()`. Cross-entropy is computed in fp32, ignore_index=-100.
- Init (GPT-2 / llama2.c): N(0, init_std) everywhere, N(0, init_std / sqrt(2 * num_layers)) on the projections
  that write into the residual stream (attention `wo`, MLP/expert `w_down`), norms at 1.
- Block sharing (`cfg.share_blocks = k`, MobileLLM's immediate block-wise sharing): `layers` holds num_layers
  blocks and each runs k times in a row; repeat r of block i is layer i * k + r everywhere a layer index matters
  (its own KV-cache slot, `models.accounting`'s depth), so generation with a cache sees depth = num_layers * k.
- Model code is single-device; precision, compile and parallelism are applied from outside (torchtitan).
- The keyword-only `cache`, `pos_BT`, `mask_BTS`, `last_only` arguments exist for `models.generate`.

Shape legend: B batch, T sequence, S key positions, D model dim, V vocab, K head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from models.config import ModelConfig
from models.layers import Attention, KVCache, RMSNorm, SwiGLU, rope_cos_sin, rope_inv_freq
from models.moe import MoE


@dataclass
class ModelOutput:
    """logits (B, T, V); loss = ce_loss + aux_loss when targets were given, else None."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp: nn.Module = MoE(cfg) if cfg.is_moe else SwiGLU(cfg.dim, cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTK: torch.Tensor,
        sin_BTK: torch.Tensor,
        mask_BTS: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_BTD = x_BTD + self.drop(self.attn(self.attn_norm(x_BTD), cos_BTK, sin_BTK, mask_BTS, cache, layer))
        h_BTD = self.mlp_norm(x_BTD)
        aux = None
        if isinstance(self.mlp, MoE):
            h_BTD, aux = self.mlp(h_BTD)
        else:
            h_BTD = self.mlp(h_BTD)
        return x_BTD + self.drop(h_BTD), aux


def unshared_name(name: str, share_blocks: int) -> list[str]:
    """Names of a parameter in the unshared network: 'layers.i.x' -> ['layers.{i*k}.x', ..., 'layers.{i*k+k-1}.x'];
    any other name is itself."""
    parts = name.split(".", 2)
    if share_blocks == 1 or len(parts) < 3 or parts[0] != "layers":
        return [name]
    i = int(parts[1])
    return [f"layers.{i * share_blocks + r}.{parts[2]}" for r in range(share_blocks)]


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.activation_checkpointing = False
        """Training only: recompute each block in the backward instead of keeping its activations (a training
        choice set from outside, not part of the model's config; models.accounting counts what it saves)."""
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.tok_emb.weight.is_meta:  # accounting / from_state_dict: nothing to initialise
            return
        std, resid_std = self.cfg.init_std, self.cfg.init_std / math.sqrt(2 * self.cfg.depth)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attn.wo.weight", "w_down.weight")) or name.endswith("mlp.w_down"):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)
        self.inv_freq.copy_(rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta))

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Transformer:
        """Build on the meta device (no init cost) and adopt the tensors of `sd` (strict: every key needed)."""
        with torch.device("meta"):
            model = cls(cfg)
        sd = dict(sd)
        if cfg.tie_embeddings:
            sd.setdefault("lm_head.weight", sd.get("tok_emb.weight"))  # type: ignore[arg-type]
        model.load_state_dict(sd, strict=True, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        device = model.tok_emb.weight.device
        model.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta).to(device)
        for m in model.modules():
            if isinstance(m, MoE):
                m.last_counts_E = torch.zeros(cfg.num_experts, dtype=torch.long, device=device)
        return model

    def forward(
        self,
        idx_BT: torch.Tensor,
        targets_BT: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        pos_BT: torch.Tensor | None = None,
        mask_BTS: torch.Tensor | None = None,
        last_only: bool = False,
        last_pos_B: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits for token ids (B, T); with targets (B, T, -100 = ignore) also the losses.

        Generation only: `cache` appends this call's keys/values, `pos_BT` gives per-row RoPE positions
        (default: continuing the cache), `mask_BTS` a boolean attention mask over the cache (True = attend),
        `last_only` projects only the last position onto the vocabulary, `last_pos_B` only position
        last_pos_B[b] of row b (a batch of right-padded prompts: each row's own last token); both give (B, 1, V).
        """
        B, T = idx_BT.shape
        if cache is None and T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        if pos_BT is None:
            start = cache.length if cache is not None else 0
            pos_BT = torch.arange(start, start + T, device=idx_BT.device)[None]
        x_BTD = self.drop(self.tok_emb(idx_BT))
        cos_BTK, sin_BTK = rope_cos_sin(pos_BT, self.inv_freq, torch.float32)
        aux_total = x_BTD.new_zeros((), dtype=torch.float32)
        num_moe = 0
        recompute = self.activation_checkpointing and cache is None and self.training and torch.is_grad_enabled()
        k = self.cfg.share_blocks
        for i in range(len(self.layers) * k):
            block = self.layers[i // k]  # repeat i % k of stored block i // k
            if recompute:
                x_BTD, aux = torch.utils.checkpoint.checkpoint(block, x_BTD, cos_BTK, sin_BTK, mask_BTS, None, i,
                                                               use_reentrant=False)
            else:
                x_BTD, aux = block(x_BTD, cos_BTK, sin_BTK, mask_BTS, cache, i)
            if aux is not None:
                aux_total, num_moe = aux_total + aux, num_moe + 1
        if cache is not None:
            cache.advance(T)
        x_BTD = self.norm(x_BTD)
        if last_pos_B is not None:
            x_BTD = x_BTD[torch.arange(B, device=x_BTD.device), last_pos_B][:, None]
        elif last_only:
            x_BTD = x_BTD[:, -1:]
        logits_BTV = self.lm_head(x_BTD)
        aux_loss = aux_total / max(num_moe, 1)
        if targets_BT is None:
            return ModelOutput(logits=logits_BTV, aux_loss=aux_loss)
        ce_loss = F.cross_entropy(
            logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), targets_BT.reshape(-1), ignore_index=-100
        )
        return ModelOutput(logits=logits_BTV, loss=ce_loss + aux_loss, ce_loss=ce_loss, aux_loss=aux_loss)

    def unshared(self) -> Transformer:
        """This model with every repeat of a shared block stored (`cfg.unshared()`), for formats without weight
        sharing (HF, GGUF); self when nothing is shared. Weights are copies, so the result saves like any model."""
        k = self.cfg.share_blocks
        if k == 1:
            return self
        sd = {unshared_name(n, k)[r]: t.detach().clone() for n, t in self.state_dict().items()
              for r in range(len(unshared_name(n, k)))}
        return Transformer.from_state_dict(self.cfg.unshared(), sd)

    def moe_stats(self) -> dict[str, list[int]]:
        """Per-expert token-assignment counts of the last forward, keyed 'layer_<i>'; {} for a dense model."""
        return {
            f"layer_{i}": block.mlp.last_counts_E.tolist()
            for i, block in enumerate(self.layers)
            if isinstance(block.mlp, MoE)
        }

    def num_params(self, non_embedding: bool = False) -> int:
        """Distinct parameters (tied weights counted once); non_embedding drops the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

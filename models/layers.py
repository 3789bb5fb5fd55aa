"""Building blocks of the Llama-style decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Design and invariants
- Numerics follow Hugging Face `LlamaForCausalLM` exactly, so `models.hf_mapping` is a renaming with no
  permutation: RoPE uses the "rotate_half" (non-interleaved) layout, where dimension i pairs with i + K/2;
  RMSNorm normalises in fp32 and casts back before the weight multiply.
- No biases anywhere. Attention goes through `F.scaled_dot_product_attention`: `is_causal=True` when there is
  no cache and no padding (the fast path used in training); otherwise an explicit boolean mask.
- Fused projections: q/k/v (and gate/up) stay three (two) `nn.Linear` modules, so state-dict keys, the HF/GGUF
  mappings, structured pruning and the compression passes (which hook, swap or quantize `nn.Linear` modules) see
  the Llama layout; the forward concatenates their weights and runs ONE matmul (one GEMM forward, one for the
  input gradient, one weight-gradient GEMM per module via the split), as nanoGPT's c_attn does. The weight copy
  is O(D * (H + 2G) * K) against the O(B * T * D * (H + 2G) * K) GEMM. Whenever one of the modules is not a
  plain `nn.Linear` (quantized, replaced, re-routed) or carries hooks (calibration), the modules run one by one.
  Fused on CUDA only (`FUSE_ON_CPU`): on a 2-core AMX CPU the fused step measured 0.88x (fp32) / 0.97x (bf16) of
  the separate one at dim 288 (the strided q/k/v slices and the split gradients cost more than the GEMMs saved;
  LOG.md, session 5), while on a GPU one launch instead of three is the usual win (nanoGPT's c_attn).
- The KV cache is preallocated per generation (`KVCache`); every row of a batch shares the cache slot index
  while its RoPE positions may differ (left-padded prompts), so padding never shifts positions.

Shape legend: B batch, T query positions, S key positions (cache length), D model dim, H query heads,
G key/value heads, K head dim, F MLP hidden dim, L layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig

_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa= exists


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (as HF Llama does) and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        # F.rms_norm: one fused kernel (forward and backward) for x * rsqrt(mean(x^2) + eps), in fp32
        return self.weight * F.rms_norm(x_BTD.float(), (x_BTD.shape[-1],), eps=self.eps).to(x_BTD.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """(K/2,) inverse frequencies theta^(-2i/K), the Llama/HF definition."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(
    pos_BT: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """cos, sin of shape (B, T, K) for integer positions, in the rotate_half layout [f, f]."""
    freqs_BTk = pos_BT.float()[..., None] * inv_freq.to(pos_BT.device)[None, None, :]
    emb_BTK = torch.cat((freqs_BTk, freqs_BTk), dim=-1)
    return emb_BTK.cos().to(dtype), emb_BTK.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x_BHTK: torch.Tensor, cos_BTK: torch.Tensor, sin_BTK: torch.Tensor) -> torch.Tensor:
    """Rotate in the precision of cos/sin (fp32) and return in x's dtype (bf16 under autocast)."""
    cos_B1TK, sin_B1TK = cos_BTK[:, None], sin_BTK[:, None]
    return (x_BHTK * cos_B1TK + _rotate_half(x_BHTK) * sin_B1TK).to(x_BHTK.dtype)


class KVCache:
    """Preallocated keys/values for all layers: k, v of shape (L, B, G, S_max, K); `length` slots filled."""

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        shape = (cfg.depth, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)  # one slot per repeat of a block
        self.k_LBGSK = torch.zeros(shape, device=device, dtype=dtype)
        self.v_LBGSK = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def update(
        self, layer: int, k_BGTK: torch.Tensor, v_BGTK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new positions at slot `length` (advanced by the model after the last layer); return all keys."""
        start, end = self.length, self.length + k_BGTK.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed the cache size {self.max_len}")
        self.k_LBGSK[layer, :, :, start:end] = k_BGTK
        self.v_LBGSK[layer, :, :, start:end] = v_BGTK
        return self.k_LBGSK[layer, :, :, :end], self.v_LBGSK[layer, :, :, :end]

    def advance(self, num_positions: int) -> None:
        """Called by the model after its last layer: the T positions just written are now filled."""
        self.length += num_positions


class StaticKVCache(KVCache):
    """A KV cache whose every step has the same shapes, so `torch.compile` traces one decode graph.

    The write slot is a 0-dim tensor (`start`), not a Python int, and `update` returns the whole S_max-long
    cache: the caller's mask (B, T, S_max) hides the slots not yet written. A Python-int slot would be baked
    into the compiled graph as a constant and force a recompile at every step.
    Keys and values are one tensor per layer (`k_L[i]`: (B, G, S_max, K)), not views of one (L, ...) tensor: an
    in-place write into a view of a compiled graph's input is functionalized into a rewrite of the whole base
    tensor, for every layer at every step (L x the whole cache copied per token; that made compiled decoding
    slower than eager, LOG.md). A write into a whole input tensor stays an in-place scatter.
    """

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k_L = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.v_L = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.length = 0
        self.max_len = max_len
        self.start = torch.zeros((), dtype=torch.long, device=device)

    def update(
        self, layer: int, k_BGTK: torch.Tensor, v_BGTK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slot_T = self.start + torch.arange(k_BGTK.shape[2], device=k_BGTK.device)
        self.k_L[layer].index_copy_(2, slot_T, k_BGTK)
        self.v_L[layer].index_copy_(2, slot_T, v_BGTK)
        return self.k_L[layer], self.v_L[layer]

    def advance(self, num_positions: int) -> None:
        self.start.add_(num_positions)  # a tensor op: traced, not a guard


class SlotKVCache(KVCache):
    """A KV cache for continuous batching: each row (slot) holds its own sequence with its own length.

    Rows 0..n-1 are the live ones (the server keeps them packed). Before each decode step the caller sets
    `pos_B` (n,), the slot index each row writes its one new token to (= its RoPE position), and `span`, the
    number of key slots the step reads (max position + 1); keys beyond a row's own position are hidden by the
    caller's mask. `view(row)` is a plain `KVCache` over one row's buffers, for a prefill that writes in place.
    """

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        super().__init__(cfg, batch_size, max_len, device, dtype)
        self.pos_B = torch.zeros(0, dtype=torch.long, device=device)
        self.rows_B = torch.arange(batch_size, device=device)
        self.span = 0

    def view(self, row: int, num_rows: int = 1) -> KVCache:
        """A plain cache over rows row .. row + num_rows - 1, empty: a (batched) prefill writes from slot 0."""
        one = KVCache.__new__(KVCache)
        rows = slice(row, row + num_rows)
        one.k_LBGSK, one.v_LBGSK = self.k_LBGSK[:, rows], self.v_LBGSK[:, rows]
        one.length, one.max_len = 0, self.max_len
        return one

    def move_row(self, src: int, dst: int) -> None:
        """Copy row src's keys/values into row dst (to keep the live rows packed after dst finished)."""
        self.k_LBGSK[:, dst] = self.k_LBGSK[:, src]
        self.v_LBGSK[:, dst] = self.v_LBGSK[:, src]

    def update(
        self, layer: int, k_BGTK: torch.Tensor, v_BGTK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = k_BGTK.shape[0]
        rows_B = self.rows_B[:n]
        self.k_LBGSK[layer, rows_B, :, self.pos_B] = k_BGTK[:, :, 0]  # (n, G, K) at each row's own slot
        self.v_LBGSK[layer, rows_B, :, self.pos_B] = v_BGTK[:, :, 0]
        return self.k_LBGSK[layer, :n, :, : self.span], self.v_LBGSK[layer, :n, :, : self.span]

    def advance(self, num_positions: int) -> None:
        pass  # positions are the caller's (pos_B)


FUSE_ON_CPU = False
"""Fuse the q/k/v and gate/up matmuls on CPU too (off: measured slower there, see the module docstring)."""


def fusable(*mods: nn.Module) -> bool:
    """True when every module is a plain nn.Linear on a device where fusing pays, and nobody replaced its
    forward or hooks it: safe and worth fusing."""
    plain = all(type(m) is nn.Linear and m.bias is None and not m._forward_hooks and not m._forward_pre_hooks
                and "forward" not in m.__dict__ for m in mods)  # first: a LoRA or quantized module has no .weight
    return plain and (FUSE_ON_CPU or mods[0].weight.is_cuda)


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE; K/V heads are shared by num_heads / num_kv_heads queries."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTK: torch.Tensor,
        sin_BTK: torch.Tensor,
        mask_BTS: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        if fusable(self.wq, self.wk, self.wv):
            w_ND = torch.cat((self.wq.weight, self.wk.weight, self.wv.weight))  # N = (H + 2G) * K
            hk, gk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q_BTX, k_BTX, v_BTX = F.linear(x_BTD, w_ND).split((hk, gk, gk), dim=-1)
        else:
            q_BTX, k_BTX, v_BTX = self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)
        q_BHTK = q_BTX.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k_BGTK = k_BTX.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v_BGTK = v_BTX.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q_BHTK, k_BGTK = apply_rope(q_BHTK, cos_BTK, sin_BTK), apply_rope(k_BGTK, cos_BTK, sin_BTK)
        if cache is not None:
            k_BGSK, v_BGSK = cache.update(layer, k_BGTK, v_BGTK)
        else:
            k_BGSK, v_BGSK = k_BGTK, v_BGTK
        gqa: dict[str, bool] = {}
        if self.num_kv_heads != self.num_heads:  # each kv head serves H/G consecutive query heads
            if _SDPA_GQA:
                gqa["enable_gqa"] = True  # no (B, H, S, K) copies of k and v where the kernel supports it
            else:  # torch < 2.5: (B, G, S, K) -> (B, H, S, K)
                rep = self.num_heads // self.num_kv_heads
                k_BGSK = k_BGSK.repeat_interleave(rep, dim=1)
                v_BGSK = v_BGSK.repeat_interleave(rep, dim=1)
        dropout_p = self.dropout if self.training else 0.0
        if mask_BTS is None and cache is None:
            y_BHTK = F.scaled_dot_product_attention(
                q_BHTK, k_BGSK, v_BGSK, is_causal=True, dropout_p=dropout_p, **gqa
            )
        else:
            if mask_BTS is None:  # cache without padding: causal relative to the cache offset
                S = k_BGSK.shape[2]
                q_pos_T = torch.arange(S - T, S, device=x_BTD.device)
                mask_BTS = (torch.arange(S, device=x_BTD.device)[None, :] <= q_pos_T[:, None])[None]
            y_BHTK = F.scaled_dot_product_attention(
                q_BHTK, k_BGSK, v_BGSK, attn_mask=mask_BTS[:, None], dropout_p=dropout_p, **gqa
            )
        y_BTD = y_BHTK.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.wo(y_BTD)


class SwiGLU(nn.Module):
    """w_down(silu(w_gate x) * w_up x): the Llama MLP."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.w_up = nn.Linear(dim, hidden_dim, bias=False)
        self.w_down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if fusable(self.w_gate, self.w_up):
            gate_BTF, up_BTF = F.linear(x_BTD, torch.cat((self.w_gate.weight, self.w_up.weight))).chunk(2, dim=-1)
        else:
            gate_BTF, up_BTF = self.w_gate(x_BTD), self.w_up(x_BTD)
        return self.w_down(F.silu(gate_BTF) * up_BTF)

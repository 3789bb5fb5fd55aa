"""Batched autoregressive generation with a preallocated KV cache.

Design and invariants
- Prompts of different lengths are left-padded into one batch. Each row's RoPE positions count only its real
  tokens (0, 1, ... from its first token), and a boolean mask hides pad keys, so a row's tokens do not depend
  on what else is in the batch. A pad query attends to itself only (never an all-masked row, which would make
  NaNs that leak through 0 * NaN in later layers).
- One prefill forward over the prompts, then one single-token forward per step against the cache. Only the
  last position's logits are projected onto the vocabulary.
- Cached greedy decoding returns the same tokens as re-running the full sequence without a cache (tested).
- Sampling: temperature (0 = greedy argmax), then top-k, then top-p (nucleus) filtering, then a draw from
  `torch.Generator` seeded by `seed` (reproducible), or the global RNG when seed is None.
- A row stops at `eos_id` (the EOS itself is not returned) or after max_new_tokens; a returned list shorter than
  max_new_tokens therefore means the row ended with EOS. Prompts longer than the context left after
  max_new_tokens are cropped from the left.

Shape legend: B batch, P padded prompt length, S cache length, V vocab.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from models.layers import KVCache, StaticKVCache
from models.transformer import Transformer

# model -> its compiled forward (parameters stay graph inputs, so later weight edits are seen without a rebuild)
_COMPILED: weakref.WeakKeyDictionary[Transformer, Callable[..., Any]] = weakref.WeakKeyDictionary()


def compiled_forward(model: Transformer) -> Callable[..., Any]:
    """`torch.compile` of the model's forward for decoding, built once per model (and per batch/cache shape).

    Why: below ~25M parameters an eager decode step is bound by per-op overhead, not by the weights (LOG.md);
    Inductor fuses the norms, RoPE, SwiGLU and masking into generated C++ kernels. Inductor's `freezing`
    (weights folded in as constants) measured slower here for fp32 decode, so it is not used.
    """
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model, dynamic=False)
    return fn


def decode_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the CPU computes it natively (AVX512-BF16 or AMX tiles: detected, never assumed), else fp32.

    Why: at decode time the weights are read once per token; bf16 halves those bytes, but without native
    instructions every bf16 matmul converts back to fp32 and runs slower than fp32 itself. CUDA: bf16."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type != "cpu":
        return torch.float32
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native else torch.float32


def sample_next(
    logits_BV: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row, (B,)."""
    if temperature == 0:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        probs_BV = sorted_BV.softmax(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the top token always stays)
        drop_BV = probs_BV.cumsum(dim=-1) - probs_BV > top_p
        sorted_BV = sorted_BV.masked_fill(drop_BV, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, order_BV, sorted_BV)
    probs_BV = logits_BV.softmax(dim=-1)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


def _check_args(prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int,
                top_p: float) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k: must be >= 0, got {top_k}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token (e.g. BOS)")


def _left_padded(
    prompts: list[list[int]], S: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one (B, P) batch so every row's next token lands in the same column:
    (ids_BP, positions_BP counted from each row's first real token, key_valid_BS over the S-slot cache,
    prefill mask_BPP: causal over real keys; a pad query sees itself so its softmax stays finite)."""
    B, P = len(prompts), max(len(p) for p in prompts)
    idx_BP = torch.zeros(B, P, dtype=torch.long, device=device)
    key_valid_BS = torch.zeros(B, S, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        idx_BP[b, P - len(p) :] = torch.tensor(p, dtype=torch.long, device=device)
        key_valid_BS[b, P - len(p) : P] = True
    pos_BP = (key_valid_BS[:, :P].long().cumsum(dim=-1) - 1).clamp(min=0)
    causal_PP = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    eye_PP = torch.eye(P, dtype=torch.bool, device=device)
    mask_BPP = (causal_PP[None] & key_valid_BS[:, None, :P]) | eye_PP[None]
    return idx_BP, pos_BP, key_valid_BS, mask_BPP


def _static_cache(
    model: Transformer, key_valid_BS: torch.Tensor, mask_BPP: torch.Tensor, dtype: torch.dtype
) -> tuple[KVCache, Callable[..., Any], torch.Tensor, torch.Tensor]:
    """The compiled path's fixed-shape cache, with the key mask and prefill mask widened to span all of it."""
    cfg = model.cfg
    (B, S), P = key_valid_BS.shape, mask_BPP.shape[1]
    # cache length in buckets of 128 (capped at the context): calls with similar lengths share a graph
    S_pad = min(cfg.max_seq_len, -(-S // 128) * 128)
    key_valid_BS = torch.cat([key_valid_BS, key_valid_BS.new_zeros(B, S_pad - S)], dim=-1)
    cache: KVCache = StaticKVCache(cfg, B, S_pad, key_valid_BS.device, dtype)
    mask_BPP = torch.cat([mask_BPP, mask_BPP.new_zeros(B, P, S_pad - P)], dim=-1)
    return cache, compiled_forward(model), key_valid_BS, mask_BPP


@torch.inference_mode()  # no autograd bookkeeping at all: less per-op overhead than no_grad
def generate(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    seed: int | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens of each row (EOS excluded).

    compile=True decodes through `compiled_forward` with a static-shape cache: the first call per model and
    batch shape pays the compilation (tens of seconds on CPU), later calls run 1.25-2.7x faster (LOG.md). Tokens
    equal the eager path's up to float rounding (greedy equality is tested)."""
    _check_args(prompts, max_new_tokens, temperature, top_k, top_p)
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    cfg = model.cfg
    if max_new_tokens >= cfg.max_seq_len:
        raise ValueError(f"max_new_tokens: must be < max_seq_len={cfg.max_seq_len}, got {max_new_tokens}")
    keep = cfg.max_seq_len - max_new_tokens
    prompts = [list(p[-keep:]) for p in prompts]

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    try:
        B, P = len(prompts), max(len(p) for p in prompts)
        idx_BP, pos_BP, key_valid_BS, mask_BPP = _left_padded(prompts, P + max_new_tokens, device)
        if compile:  # every mask spans the whole cache; slots not yet written are masked off
            cache, step_fn, key_valid_BS, mask_BPP = _static_cache(model, key_valid_BS, mask_BPP, dtype)
        else:
            cache, step_fn = KVCache(cfg, B, P + max_new_tokens, device, dtype), model
        logits_BV = model(idx_BP, cache=cache, pos_BT=pos_BP, mask_BTS=mask_BPP, last_only=True).logits[:, -1]
        next_pos_B = key_valid_BS[:, :P].sum(dim=-1)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        out: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        for step in range(max_new_tokens):
            tok_B = sample_next(logits_BV, temperature, top_k, top_p, generator)
            for b, t in enumerate(tok_B.tolist()):
                if done[b]:
                    continue
                if eos_id is not None and t == eos_id:
                    done[b] = True
                else:
                    out[b].append(t)
            if all(done) or step == max_new_tokens - 1:
                break
            key_valid_BS[:, P + step] = True
            mask_B1S = key_valid_BS[:, None, :] if compile else key_valid_BS[:, None, : P + step + 1]
            logits_BV = step_fn(
                tok_B[:, None], cache=cache, pos_BT=next_pos_B[:, None], mask_BTS=mask_B1S, last_only=True
            ).logits[:, -1]
            next_pos_B = next_pos_B + 1
        return out
    finally:
        model.train(was_training)

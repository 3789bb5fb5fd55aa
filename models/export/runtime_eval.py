"""Quality and speed of each exported file, measured by the runtime that will run it.

Why: the figures a user reads must be those of the file they download. A GGUF is scored by llama.cpp
(llama-cpp-python, `logits_all`), an HF folder by transformers, not by tinyfoundry's own forward on the
weights it meant to write, so an export bug (a wrong RoPE permutation, a mis-packed block) shows up as a
bpb change instead of hiding.

- bpb: non-overlapping windows of `seq_len` held-out tokens; each window predicts its last `seq_len - 1`
  tokens (as `models.compress.report.eval_bpb` does), nats summed in fp64, divided by ln 2 and by the bytes
  those tokens cover (`bytes_per_token`).
- tokens/s: batch-1 greedy decoding of `num_new` tokens after a short prompt (prompt time excluded), best of
  two runs after a warm-up, with `threads` CPU threads (a fixed count: figures compare across files).
Both runtimes are imported lazily: models/ does not depend on them.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch


def _windows(tokens: torch.Tensor, seq_len: int) -> np.ndarray:
    n = tokens.numel() // seq_len
    if n == 0:
        raise ValueError(f"val_tokens: need at least {seq_len} tokens to score, got {tokens.numel()}")
    return tokens[: n * seq_len].long().reshape(n, seq_len).numpy()


def _nll(logits_TV: np.ndarray, targets_T: np.ndarray) -> float:
    x = logits_TV.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(-1)))
    return float((lse - x[np.arange(len(targets_T)), targets_T]).sum())


EXTRA_BUFFER_TYPES = False
"""llama.cpp's CPU "extra buffer types" (weights repacked at load for AMX / AVX-512 kernels). Off: on a VM whose CPU
advertises AMX (amx_int8 in /proc/cpuinfo) every quantized GGUF, llama.cpp's own files included, segfaulted in the
first matmul with them on (llama-cpp-python 0.3.36, LOG.md); the plain CPU kernels compute the same blocks."""


@contextlib.contextmanager
def llama_model_params(extra_bufts: bool):
    """llama-cpp-python's Llama() takes no use_extra_bufts argument: patch the default params while it loads."""
    import llama_cpp
    import llama_cpp.llama as llama_mod

    real = llama_cpp.llama_model_default_params

    def params():
        p = real()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = extra_bufts
        return p

    llama_mod.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_mod.llama_cpp.llama_model_default_params = real


def open_gguf(path: Path, n_ctx: int, threads: int = 1, logits_all: bool = True):
    import llama_cpp

    n_ctx = max(n_ctx, 256)  # llama.cpp pads smaller contexts to 256; ask for what it will allocate
    with llama_model_params(EXTRA_BUFFER_TYPES):
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False)


def gguf_logprobs(llm, window: np.ndarray) -> np.ndarray:
    """(T-1, V) next-token logits of llama.cpp for one window (a fresh context each call)."""
    llm.reset()
    llm.eval([int(t) for t in window])
    return np.array(llm.scores[: len(window) - 1], dtype=np.float32)


def gguf_bpb(path: Path, tokens: torch.Tensor, bytes_per_token: float, seq_len: int, threads: int = 1) -> float:
    W = _windows(tokens, seq_len)
    llm = open_gguf(path, seq_len, threads)
    try:
        nats = sum(_nll(gguf_logprobs(llm, w), w[1:]) for w in W)
    finally:
        llm.close() if hasattr(llm, "close") else None
    return nats / (W.shape[0] * (seq_len - 1)) / math.log(2) / bytes_per_token


def gguf_tokens_per_s(path: Path, prompt: list[int], num_new: int = 64, threads: int = 1, repeats: int = 2) -> float:
    llm = open_gguf(path, len(prompt) + num_new + 8, threads, logits_all=False)
    best = 0.0
    try:
        for r in range(repeats + 1):
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(num_new if r else min(8, num_new)):
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                llm.eval([tok])
            dt = time.perf_counter() - t0
            if r:
                best = max(best, num_new / dt)
    finally:
        llm.close() if hasattr(llm, "close") else None
    return best


def gguf_greedy(path: Path, prompt: list[int], num_new: int, threads: int = 1) -> list[int]:
    llm = open_gguf(path, len(prompt) + num_new + 8, threads, logits_all=False)
    out: list[int] = []
    try:
        llm.eval(prompt)
        for _ in range(num_new):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            llm.eval([tok])
    finally:
        llm.close() if hasattr(llm, "close") else None
    return out


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load_hf(path: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.no_grad()
def hf_bpb(path: Path, tokens: torch.Tensor, bytes_per_token: float, seq_len: int, threads: int = 1,
           batch_size: int = 8) -> float:
    W = torch.from_numpy(_windows(tokens, seq_len))
    with _threads(threads):
        model = load_hf(path)
        nats = 0.0
        for b in range(0, W.shape[0], batch_size):
            x = W[b : b + batch_size]
            logits = model(input_ids=x).logits[:, :-1].double()
            nats += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                            reduction="sum"))
    return nats / (W.shape[0] * (seq_len - 1)) / math.log(2) / bytes_per_token


@torch.no_grad()
def hf_tokens_per_s(path: Path, prompt: list[int], num_new: int = 64, threads: int = 1, repeats: int = 2) -> float:
    with _threads(threads):
        model = load_hf(path)
        ids = torch.tensor([prompt])
        kw = dict(do_sample=False, pad_token_id=model.config.pad_token_id, eos_token_id=None)
        model.generate(ids, max_new_tokens=min(8, num_new), min_new_tokens=min(8, num_new), **kw)
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=num_new, min_new_tokens=num_new, **kw)
            best = max(best, (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
    return best

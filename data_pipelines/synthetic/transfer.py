"""Does the corpus teach real stories? A tiny student trained on the kept stories, scored on real ones.

Design
- `synth.reference: PATH` (real stories, e.g. TinyStories held out from anything synth saw) turns this on:
  run_synth trains a small models.Transformer on the stories it kept for `reference_tokens` tokens and
  writes its bits per byte on the reference stories to stats.json ("transfer"). The grammar can score
  0.3 bits/byte on its own text and 3+ on real stories; only the second number says whether the corpus
  teaches anything. benchmarks/bench_synth_transfer.py is the full-size version (the planner's model,
  the trainer's recipe, story probes, the real-data and teacher students side by side).
- The student's tokenizer is trained on the synthetic corpus itself (a byte-level BPE, as tokenize
  would), so words the corpus never uses cost what they would cost a model trained on it.
- Small and fixed on purpose (dim 64, 2 layers, 128-token windows, AdamW + cosine, one thread-count
  agnostic seed): the figure compares corpora, it is not a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .prompts import read_stories

EOS = "<|endoftext|>"


def _tokenizer(stories: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(stories, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _stream(tok: Any, docs: Sequence[str]) -> list[int]:
    eos = tok.token_to_id(EOS)
    out: list[int] = []
    for enc in tok.encode_batch(list(docs), add_special_tokens=False):
        out.append(eos)
        out.extend(enc.ids)
    out.append(eos)
    return out


def transfer_score(stories: Sequence[str], reference: Path, num_tokens: int, seed: int = 0,
                   vocab_size: int = 512, seq_len: int = 128, batch_size: int = 16) -> dict[str, Any]:
    """Train the student on `stories` for `num_tokens` tokens; its bits/byte on the reference stories."""
    import torch
    import torch.nn.functional as F

    from models import ModelConfig, Transformer

    t0 = time.time()
    ref = read_stories(Path(reference))
    if not ref:
        raise ValueError(f"reference: no stories in {reference}")
    tok = _tokenizer(stories, vocab_size)
    train_ids = torch.tensor(_stream(tok, stories), dtype=torch.long)
    ref_ids = torch.tensor(_stream(tok, ref), dtype=torch.long)
    if train_ids.numel() <= seq_len + 1:
        raise ValueError("reference: too few kept stories to train the transfer student")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), dim=64, num_layers=2, num_heads=4,
                                    max_seq_len=seq_len))
    steps = max(1, num_tokens // (batch_size * seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    n = train_ids.numel() - seq_len - 1
    model.train()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup)
                                                                                      / max(1, steps - warmup)))
        for grp in opt.param_groups:
            grp["lr"] = 3e-3 * scale
        ix = torch.randint(0, n, (batch_size,), generator=g)
        x_BT = torch.stack([train_ids[i : i + seq_len] for i in ix])
        y_BT = torch.stack([train_ids[i + 1 : i + 1 + seq_len] for i in ix])
        logits_BTV = model(x_BT)
        logits_BTV = logits_BTV if isinstance(logits_BTV, torch.Tensor) else logits_BTV.logits
        loss = F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.size(-1)), y_BT.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    nats = 0.0
    with torch.no_grad():  # non-overlapping windows; each predicts its own tokens after the first
        for s in range(0, ref_ids.numel() - 1, seq_len):
            x = ref_ids[s : s + seq_len]
            y = ref_ids[s + 1 : s + 1 + seq_len]
            x = x[: y.numel()]
            out = model(x[None])
            logits = out if isinstance(out, torch.Tensor) else out.logits
            nats += F.cross_entropy(logits[0].float(), y, reduction="sum").item()
    ref_bytes = sum(len(d.encode("utf-8")) for d in ref)
    return {"reference": str(reference), "reference_stories": len(ref), "bits_per_byte": nats / math.log(2) / ref_bytes,
            "train_tokens": steps * batch_size * seq_len, "corpus_tokens": int(train_ids.numel()),
            "student": f"dim 64, 2 layers, vocab {tok.get_vocab_size()}, {steps} steps of {batch_size}x{seq_len}",
            "wall_s": time.time() - t0}

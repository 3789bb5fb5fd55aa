"""Held-out loss and bits-per-byte, comparable across tokenizers.

Design and invariants
- Documents are read whole (.txt split on `<|endoftext|>` lines, .jsonl / .parquet by a text field) and
  tokenized without special tokens. The scored stream is `EOS d1 EOS d2 EOS ... dn EOS`, the layout of our
  token shards (documents joined with EOS), so every token of every document is predicted exactly once, and
  so is each document's closing EOS; the leading EOS is context only.
- The stream is cut into windows of `seq_len` predicted tokens (the last one shorter, its padding masked);
  a window starts from scratch, so the figure is a slight upper bound on the model's best loss.
- bits per byte = total nats / ln 2 / total UTF-8 bytes of the document texts. The numerator counts every
  predicted token, the denominator only text bytes, so two models with different tokenizers are compared on
  the same quantity: the code length of the same text. (Each tokenizer also pays one EOS per document.)
- Documents are never split by the `num_docs` / `max_tokens` caps: whole documents are kept or dropped so
  that the nats and the bytes always describe the same text.

Legend: B batch, T window length, V vocabulary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_pipelines.text_files import read_text_documents

EOS_TEXT = "<|endoftext|>"


def read_documents(paths: Path | Sequence[Path], text_field: str = "text") -> list[str]:
    """Whole documents from .txt (blocks between `<|endoftext|>` lines), .jsonl / .json or .parquet files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise ValueError(f"data: no such file {p}")
        suffixes = "".join(p.suffixes[-2:]).lower()
        if p.suffix.lower() == ".txt":
            docs.extend(read_text_documents(p, EOS_TEXT))  # the shared rules: data_pipelines/text_files.py
        elif suffixes.endswith((".jsonl", ".json")):
            with p.open(encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    docs.append(_field(rec, text_field, f"{p}:{line_no}"))
        elif p.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            name = text_field if text_field in table.column_names else "story"
            if name not in table.column_names:
                raise ValueError(f"data: {p} has no column {text_field!r} (columns: {table.column_names})")
            docs.extend(str(t) for t in table.column(name).to_pylist() if t is not None)
        else:
            raise ValueError(f"data: unsupported file type {p} (use .txt, .jsonl or .parquet)")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"data: no documents found in {[str(p) for p in paths]}")
    return docs


def _field(rec: Any, name: str, where: str) -> str:
    if isinstance(rec, str):
        return rec
    for key in (name, "story", "text"):
        if isinstance(rec, dict) and isinstance(rec.get(key), str):
            return rec[key]
    raise ValueError(f"data: record at {where} has no string field {name!r}")


def special_id(tokenizer: Any, *names: str) -> int | None:
    """Id of the first of `names` that the tokenizer knows, else None."""
    for n in names:
        i = tokenizer.token_to_id(n)
        if i is not None:
            return int(i)
    return None


def eos_id_of(tokenizer: Any) -> int | None:
    return special_id(tokenizer, EOS_TEXT, "</s>", "<eos>", "<|eos|>")


def encode_documents(tokenizer: Any, docs: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, no special tokens added (batch-encoded in Rust, in parallel)."""
    return [e.ids for e in tokenizer.encode_batch(list(docs), add_special_tokens=False)]


def build_stream(
    doc_ids: Sequence[Sequence[int]], docs: Sequence[str], eos_id: int, num_docs: int = 0, max_tokens: int = 0
) -> tuple[torch.Tensor, int, int]:
    """`EOS d1 EOS ... dn EOS` as a 1-D long tensor, with the byte count and number of whole documents kept."""
    ids: list[int] = [eos_id]
    num_bytes = 0
    kept = 0
    for toks, text in zip(doc_ids, docs):
        if num_docs and kept >= num_docs:
            break
        if max_tokens and kept and len(ids) - 1 + len(toks) + 1 > max_tokens:
            break
        ids.extend(toks)
        ids.append(eos_id)
        num_bytes += len(text.encode("utf-8"))
        kept += 1
    return torch.tensor(ids, dtype=torch.long), num_bytes, kept


def logits_of(out: Any) -> torch.Tensor:
    """Logits from a ModelOutput, an HF-style output or a bare tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.logits


@torch.no_grad()
def stream_nats(
    model: torch.nn.Module, stream_N: torch.Tensor, seq_len: int, batch_size: int = 8,
    device: torch.device | str = "cpu", progress: bool = False,
) -> tuple[float, int]:
    """Total cross-entropy (nats) of predicting stream[1:] from the left, in windows of seq_len; and the count."""
    n_pred = stream_N.numel() - 1
    if n_pred <= 0:
        raise ValueError("data: nothing to score (empty token stream)")
    num_windows = math.ceil(n_pred / seq_len)
    starts = [w * seq_len for w in range(num_windows)]
    total = 0.0
    model.eval()
    batches = range(0, num_windows, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval loss", unit="batch", leave=False)
    for b0 in batches:
        chunk = starts[b0 : b0 + batch_size]
        x_BT = torch.zeros(len(chunk), seq_len, dtype=torch.long)
        y_BT = torch.full((len(chunk), seq_len), -100, dtype=torch.long)
        for r, s in enumerate(chunk):
            n = min(seq_len, n_pred - s)
            x_BT[r, :n] = stream_N[s : s + n]
            y_BT[r, :n] = stream_N[s + 1 : s + 1 + n]
        x_BT, y_BT = x_BT.to(device), y_BT.to(device)
        logits_BTV = logits_of(model(x_BT)).float()
        total += F.cross_entropy(
            logits_BTV.reshape(-1, logits_BTV.size(-1)), y_BT.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
    return total, n_pred


def evaluate_loss(
    model: torch.nn.Module, tokenizer: Any, docs: Sequence[str], seq_len: int, batch_size: int = 8,
    num_docs: int = 0, max_tokens: int = 0, device: torch.device | str = "cpu", progress: bool = False,
) -> dict[str, float | int]:
    """Mean loss (nats/token), bits per byte and the counts behind them on whole held-out documents."""
    eos = eos_id_of(tokenizer)
    if eos is None:
        raise ValueError(f"tokenizer: has no end-of-text token ({EOS_TEXT!r})")
    doc_ids = encode_documents(tokenizer, docs if not num_docs else docs[:num_docs])
    stream_N, num_bytes, kept = build_stream(doc_ids, docs, eos, num_docs=num_docs, max_tokens=max_tokens)
    nats, n_pred = stream_nats(model, stream_N, seq_len, batch_size, device, progress)
    return {
        "loss": nats / n_pred,
        "bpb": nats / math.log(2) / num_bytes,
        "bytes_per_token": num_bytes / n_pred,
        "num_tokens": n_pred,
        "num_bytes": num_bytes,
        "num_docs": kept,
        "seq_len": seq_len,
    }

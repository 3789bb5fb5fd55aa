"""Knowledge distillation: loss = alpha * CE(student, data) + (1 - alpha) * T^2 * KL(teacher || student).

Design and invariants
- Soft targets are the teacher's softmax at temperature T; the T^2 factor keeps the KL gradient on the same
  scale as the CE gradient when T changes (Hinton et al. 2015). KL and CE are averaged over the same target
  positions (targets == -100 are ignored by both) and computed in fp32 whatever the autocast dtype.
- Teacher and student may differ in size but must share the tokenizer: `check_same_tokenizer` compares the
  tokenizer files byte for byte (sha256) when both exist, and the vocabulary sizes otherwise. When one
  vocabulary is padded (rows past the tokenizer's size are never targets), logits are compared on the
  common prefix of the vocabulary.
- `recover()` is a plain PyTorch loop (no Lightning) for short recovery training of a compressed student
  (models/compress); `after_step` lets the caller re-apply pruning masks or quantization after each update.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.data import TokenStream, global_batch_windows


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
          temperature: float, ignore_index: int = -100) -> torch.Tensor:
    """Mean over target positions of KL(softmax(t/T) || softmax(s/T)) (not yet multiplied by T^2)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s_NV = student_logits[..., :v].float().reshape(-1, v) / temperature
    t_NV = teacher_logits[..., :v].float().reshape(-1, v) / temperature
    mask_N = targets.reshape(-1) != ignore_index
    log_ps_NV = F.log_softmax(s_NV, dim=-1)
    log_pt_NV = F.log_softmax(t_NV, dim=-1)
    kl_N = (log_pt_NV.exp() * (log_pt_NV - log_ps_NV)).sum(-1)
    return (kl_N * mask_N).sum() / mask_N.sum().clamp(min=1)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 alpha: float, temperature: float, ignore_index: int = -100
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kl) with loss = alpha * ce + (1 - alpha) * T^2 * kl; logits B,T,V, targets B,T."""
    v = student_logits.shape[-1]
    ce = F.cross_entropy(student_logits.float().reshape(-1, v), targets.reshape(-1), ignore_index=ignore_index)
    kl = kd_kl(student_logits, teacher_logits, targets, temperature, ignore_index)
    loss = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    return loss, ce, kl


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_same_tokenizer(student_vocab: int, teacher_vocab: int, student_tokenizer: Path | str | None = None,
                         teacher_tokenizer: Path | str | None = None, student_sha256: str | None = None) -> None:
    """Raise ValueError unless teacher and student read the same token ids.

    Byte-identical tokenizer files (or the shards' recorded sha256) are required when both sides have one;
    otherwise the vocabulary sizes must agree up to padding to a multiple of 64.
    """
    s_sha = student_sha256 or (file_sha256(Path(student_tokenizer)) if student_tokenizer else None)
    t_sha = file_sha256(Path(teacher_tokenizer)) if teacher_tokenizer and Path(teacher_tokenizer).is_file() else None
    if s_sha and t_sha:
        if s_sha != t_sha:
            raise ValueError(
                f"teacher: its tokenizer ({teacher_tokenizer}) differs from the student's data tokenizer "
                f"(sha256 {t_sha[:12]} != {s_sha[:12]}); distillation needs the same token ids"
            )
        return
    def pad(v: int) -> int:
        return (v + 63) // 64 * 64

    if student_vocab != teacher_vocab and pad(student_vocab) != pad(teacher_vocab):
        raise ValueError(
            f"teacher: vocab_size {teacher_vocab} does not match the student's {student_vocab}; "
            "distillation needs the same tokenizer"
        )


def recover(
    student: nn.Module,
    teacher: nn.Module | None,
    data: Path | str | torch.Tensor | np.ndarray,
    num_tokens: int,
    batch_size: int = 8,
    seq_len: int = 256,
    lr: float = 1e-4,
    alpha: float = 0.5,
    temperature: float = 2.0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    parameters: list[nn.Parameter] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Short (distillation) training of `student` in place; returns it in eval mode.

    data: a shards dir (its train split is used) or a 1-D tensor/array of token ids.
    teacher: None trains on CE alone (alpha is then ignored). The teacher is run in eval mode under no_grad.
    parameters: which parameters to train (default: all with requires_grad). AdamW with a cosine decay from
    lr to lr/10 and no warmup; random windows from `seed`, as in training. `after_step(student)` runs after
    every optimizer step (e.g. to re-apply a pruning mask).
    """
    if isinstance(data, (str, Path)):
        from data_pipelines.tokenize.shards import ShardIndex

        stream = TokenStream(ShardIndex.load(Path(data)).open("train"))
    else:
        stream = TokenStream.from_tokens(data)
    seq_len = min(seq_len, stream.num_tokens - 1)
    num_steps = max(1, math.ceil(num_tokens / (batch_size * seq_len)))
    params = parameters if parameters is not None else [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, num_steps - 1))))
    )
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    steps = range(num_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="recover", unit="step")
    for step in steps:
        starts = global_batch_windows(stream, step, batch_size, seq_len, seed, "random")
        win = torch.from_numpy(np.stack([stream.read(int(s), seq_len + 1) for s in starts])).to(device)
        x_BT, y_BT = win[:, :-1], win[:, 1:]
        out = student(x_BT, targets_BT=y_BT)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x_BT).logits
            loss, _, _ = distill_loss(out.logits, t_logits, y_BT, alpha, temperature)
            aux = getattr(out, "aux_loss", None)
            if aux is not None:
                loss = loss + aux
        else:
            loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(student)
    return student.eval()

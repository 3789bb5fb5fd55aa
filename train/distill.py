"""Knowledge distillation: loss = alpha * CE(student, data) + (1 - alpha) * T^2 * KL(teacher || student).

Design and invariants
- Soft targets are the teacher's softmax at temperature T; the T^2 factor keeps the KL gradient on the same
  scale as the CE gradient when T changes (Hinton et al. 2015). KL and CE are averaged over the same target
  positions (targets == -100 are ignored by both) and computed in fp32 whatever the autocast dtype.
- Teacher and student may differ in size but must share the tokenizer: `check_same_tokenizer` compares the
  tokenizer files byte for byte (sha256) when both exist, and the vocabulary sizes otherwise. When one
  vocabulary is padded (rows past the tokenizer's size are never targets), logits are compared on the
  common prefix of the vocabulary.
- Training with a teacher is LMSystem's job (train.teacher, or train/recover.py after pruning): this file holds the
  loss and the tokenizer check only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.hashing import file_sha256


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

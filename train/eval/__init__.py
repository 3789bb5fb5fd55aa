"""Evaluation: held-out loss and bits-per-byte, story-quality and fairness probes, an optional LLM judge.

Entry points: `run_eval` (the `tinyfoundry eval` stage, writes eval.json) and `probe_metrics` (flat probe
scalars for any loaded model, used by the compression report before/after each pass).
"""

from train.eval.config import EvalConfig, JudgeConfig, ProbeConfig
from train.eval.loss import evaluate_loss, read_documents
from train.eval.probes import probe_metrics, run_probes
from train.eval.runner import evaluate_model, load_for_eval, run_eval

__all__ = [
    "EvalConfig",
    "JudgeConfig",
    "ProbeConfig",
    "evaluate_loss",
    "evaluate_model",
    "load_for_eval",
    "probe_metrics",
    "read_documents",
    "run_eval",
    "run_probes",
]

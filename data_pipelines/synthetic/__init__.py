"""Synthetic TinyStories-style corpora (Eldan & Li 2023): vocabulary, features, prompts, teachers, gates.

`run_synth(cfg, out_dir, seed)` draws one verb / noun / adjective and a few features per story,
asks a teacher (the offline story grammar by default; an OpenAI-compatible server; a transformers
model; a tinyfoundry model) and keeps the stories that pass the quality gates.
"""

from .config import GateConfig, LocalTeacherConfig, OpenAITeacherConfig, SynthConfig
from .grammar import FEATURES
from .run import run_synth

__all__ = ["FEATURES", "GateConfig", "LocalTeacherConfig", "OpenAITeacherConfig", "SynthConfig", "run_synth"]

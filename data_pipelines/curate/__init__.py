"""Data curation: read raw text, normalize, filter (each drop with a reason), redact PII, dedup
(exact + MinHash-LSH, across shards), and write a curated parquet dataset with stats and a report.

Entry point: ``run_curate(cfg, out_dir, inputs=None, shard=None) -> stats``; see pipeline.py for the
shard/finalize design and config.py for the steps and their thresholds.
"""

from .config import PROFILES, CurateConfig
from .documents import Document
from .pipeline import CurateError, run_curate
from .readers import resolve_inputs
from .steps import STEPS, DedupStep, Filter, Step, Transform, register_step, step_names

STEP_NAMES = step_names()
"""Names of the steps registered when the package was imported (the registry is `STEPS`)."""

__all__ = [
    "CurateConfig",
    "CurateError",
    "Document",
    "PROFILES",
    "STEP_NAMES",
    "STEPS",
    "DedupStep",
    "Filter",
    "Step",
    "Transform",
    "register_step",
    "step_names",
    "resolve_inputs",
    "run_curate",
]

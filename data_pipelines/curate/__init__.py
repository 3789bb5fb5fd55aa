"""Data curation: read raw text, normalize, filter (each drop with a reason), redact PII, dedup
(exact + MinHash-LSH, across shards), and write a curated parquet dataset with stats and a report.

Entry point: ``run_curate(cfg, out_dir, inputs=None, shard=None) -> stats``; see pipeline.py for the
shard/finalize design and config.py for the steps and their thresholds.
"""

from .config import PROFILES, STEP_NAMES, CurateConfig
from .documents import Document
from .pipeline import CurateError, run_curate
from .readers import resolve_inputs

__all__ = [
    "CurateConfig",
    "CurateError",
    "Document",
    "PROFILES",
    "STEP_NAMES",
    "resolve_inputs",
    "run_curate",
]

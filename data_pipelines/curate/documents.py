"""`Document`: the unit that flows through curation (datatrove's shape: text, id, metadata).

Invariants: ``id`` is a non-empty string, unique within an input and stable across reruns;
``metadata`` holds the input's other fields untouched (plus what steps add, such as ``language``);
``scores`` holds the numbers filters judged, for the report only (never written to the dataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One document: text, a stable id, the input's other fields, and where it came from."""

    text: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    scores: dict[str, float] = field(default_factory=dict)

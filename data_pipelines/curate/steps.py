"""Curation steps: the base classes and the one registry that names them.

Design
------
A step is a class with a ``name`` (its key in ``curate.steps`` and its config section), a
``config_cls`` (the dataclass of its thresholds) and the ``reasons`` it may drop for. The runner only
calls ``filter_batch(docs) -> [reason | None, ...]`` (datatrove's ``filter_batch``): ``None`` keeps a
document, a string is its drop *reason code*. Three kinds:

- `Transform`: rewrites ``doc.text`` (normalization, PII redaction) and never drops.
- `Filter`: judges one document in ``__call__`` (rule filters), recording the numbers it judged in
  ``doc.scores`` for the report. A model-based filter overrides ``score_batch(docs) -> [float]`` to
  score a whole batch in one forward pass and ``decide(doc, score)`` to turn a score into a reason;
  the base class wires the two into ``filter_batch``.
- `DedupStep`: a marker for the cross-shard dedup steps, which the runner applies at finalize time.

Registry: ``@register_step`` puts a class in `STEPS` under its ``name``. The built-in steps are
registered when `data_pipelines.curate.filters` and `.dedup` are imported (the accessors below do
that). A new step's file is imported by config.py, which imports its config class to declare its
section of `CurateConfig`, so that one import registers it in every process (spawned workers too).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .documents import Document

STEPS: dict[str, type[Step]] = {}
"""Every registered step class, by name."""

_BUILTIN_MODULES = ("data_pipelines.curate.filters", "data_pipelines.curate.dedup")


class Step(ABC):
    """A per-document step built from its config section."""

    name: ClassVar[str]
    """Key in `curate.steps` and name of the step's `CurateConfig` section."""
    config_cls: ClassVar[type]
    """Dataclass of the step's settings (used with its defaults when `CurateConfig` has no such section)."""
    reasons: ClassVar[tuple[str, ...]] = ()
    """Drop reason codes the step may return (documentation and reports; a transform has none)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def __call__(self, doc: Document) -> str | None:
        """Apply the step to one document: None keeps it, a string is the drop reason."""

    def filter_batch(self, docs: list[Document]) -> list[str | None]:
        """One decision per document, in order (override to batch the work)."""
        return [self(doc) for doc in docs]


class Transform(Step):
    """Rewrites `doc.text` and never drops."""


class Filter(Step):
    """Keeps or drops a document for a reason; see the module docstring for the batch API."""

    def score_batch(self, docs: list[Document]) -> list[float]:
        """One score per document, computed for the whole batch at once (model-based filters)."""
        raise NotImplementedError(f"{type(self).__name__} judges documents one at a time (__call__)")

    def decide(self, doc: Document, score: float) -> str | None:
        """The drop reason for a document with this score, or None to keep it."""
        raise NotImplementedError(f"{type(self).__name__} judges documents one at a time (__call__)")

    def __call__(self, doc: Document) -> str | None:
        return self.filter_batch([doc])[0]

    def filter_batch(self, docs: list[Document]) -> list[str | None]:
        if type(self).__call__ is not Filter.__call__:  # a rule filter: judge one by one
            return [self(doc) for doc in docs]
        return [self.decide(doc, s) for doc, s in zip(docs, self.score_batch(docs))]


class DedupStep:
    """A cross-shard dedup step: registered for its name and config; the runner applies it at finalize."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    reasons: ClassVar[tuple[str, ...]] = ()


def register_step(cls: type) -> type:
    """Class decorator: register a step under `cls.name` (a second class with the same name is an error)."""
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"register_step: {cls.__name__} needs a string `name`")
    if not hasattr(cls, "config_cls"):
        raise ValueError(f"register_step: {cls.__name__} needs a `config_cls` (its config dataclass)")
    if name in STEPS and STEPS[name] is not cls:
        raise ValueError(f"register_step: step {name!r} is already registered by {STEPS[name].__name__}")
    STEPS[name] = cls
    return cls


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def step_names() -> tuple[str, ...]:
    """Names of every registered step."""
    _load_builtins()
    return tuple(STEPS)


def step_class(name: str) -> type:
    """The step class registered as `name`; ValueError naming the known ones otherwise."""
    _load_builtins()
    if name not in STEPS:
        raise ValueError(f"steps: unknown step {name!r}; known: {', '.join(STEPS)}")
    return STEPS[name]


def is_dedup(name: str) -> bool:
    """True for the cross-shard dedup steps, which run at finalize after every per-document step."""
    return issubclass(step_class(name), DedupStep)


def build_step(name: str, curate_cfg: Any) -> Step:
    """An instance of step `name` with its section of `curate_cfg` (the config class's defaults if none)."""
    cls = step_class(name)
    section = getattr(curate_cfg, name, None)
    return cls(section if section is not None else cls.config_cls())

"""What a teacher is (`Teacher`), and the one registry of teacher backends (`TEACHERS`).

Design
- `Teacher` is the protocol `run_synth` talks to: `generate(requests, on_answer=None)` returns one
  `Answer` per `StoryRequest`, in request order, calling `on_answer(request, answer)` the moment each
  answer exists (the journal records it there, so a killed run resumes without asking again);
  `close()` frees servers, pools or models. `name` goes into every row's `teacher` column, `model` into
  `model`.
- A backend is declared once, with `register_teacher(name, build, ...)`: `build(cfg, seed)` makes the
  teacher from the whole `SynthConfig` (a backend reads its own section, e.g. `cfg.openai`),
  `journaled` says whether answers cost enough to be journaled, `batch_size(cfg)` how many requests to
  hand it at a time, and `check(cfg)` validates the config before any work starts (raising
  `ValueError("<section>.<key>: ...")`). `synth.teacher` accepts exactly the registered names.
- The built-in backends (grammar, openai, hf, tinyfoundry) are registered by teachers.py, which the
  accessors below import first. A new backend is one file that calls `register_teacher` at import,
  plus its name in `_BACKEND_MODULES` (and, when it has settings, a typed section of `SynthConfig`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .prompts import StoryRequest
    from .teachers import Answer

_BACKEND_MODULES = ("data_pipelines.synthetic.teachers",)
"""Modules that register teacher backends when imported."""


class Teacher(Protocol):
    """Writes stories for requests (see the module docstring for the contract)."""

    name: str
    model: str

    def generate(
        self, reqs: Sequence[StoryRequest], on_answer: Callable[[StoryRequest, Answer], None] | None = None
    ) -> list[Answer]: ...

    def close(self) -> None: ...


def _no_check(cfg: Any) -> None:
    return None


def _default_batch(cfg: Any) -> int:
    return 64


@dataclass(frozen=True)
class TeacherBackend:
    """One registered backend."""

    name: str
    """Value of `synth.teacher` that selects it."""
    build: Callable[[Any, int], Teacher]
    """`build(synth_cfg, seed)` -> a `Teacher`."""
    journaled: bool = True
    """Journal every answer (model teachers: an answer costs time or money); False for free ones."""
    batch_size: Callable[[Any], int] = _default_batch
    """Requests handed to `generate` at a time, from the config."""
    check: Callable[[Any], None] = _no_check
    """Validates the `SynthConfig` for this backend (raises ValueError naming the key)."""


TEACHERS: dict[str, TeacherBackend] = {}
"""Every registered backend, by name."""


def register_teacher(
    name: str,
    build: Callable[[Any, int], Teacher],
    *,
    journaled: bool = True,
    batch_size: Callable[[Any], int] = _default_batch,
    check: Callable[[Any], None] = _no_check,
) -> TeacherBackend:
    """Register a backend under `name` (registering the same name twice is an error)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"register_teacher: need a non-empty name, got {name!r}")
    if name in TEACHERS:
        raise ValueError(f"register_teacher: teacher {name!r} is already registered")
    backend = TeacherBackend(name, build, journaled, batch_size, check)
    TEACHERS[name] = backend
    return backend


def _load_builtins() -> None:
    for mod in _BACKEND_MODULES:
        importlib.import_module(mod)


def teacher_names() -> tuple[str, ...]:
    """Names of every registered backend."""
    _load_builtins()
    return tuple(TEACHERS)


def teacher_backend(name: str) -> TeacherBackend:
    """The backend registered as `name`; ValueError naming the known ones otherwise."""
    _load_builtins()
    if name not in TEACHERS:
        raise ValueError(f"teacher: unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    return TEACHERS[name]

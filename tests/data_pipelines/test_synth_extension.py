"""Extension point: a teacher backend is one class meeting the `Teacher` protocol and one
`register_teacher` call; `synth.teacher` then accepts its name and `run_synth` drives it (journal included)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from data_pipelines.synthetic import GateConfig, SynthConfig, run_synth
from data_pipelines.synthetic.prompts import StoryRequest
from data_pipelines.synthetic.teacher_registry import TEACHERS, Teacher, register_teacher, teacher_names
from data_pipelines.synthetic.teachers import Answer


class EchoTeacher:
    """Writes a fixed little story around the request's three words."""

    name = "toy_echo"
    model = "echo-v0"

    def __init__(self, cfg: SynthConfig, seed: int) -> None:
        self.calls: list[int] = []

    def generate(
        self, reqs: Sequence[StoryRequest], on_answer: Callable[[StoryRequest, Answer], None] | None = None
    ) -> list[Answer]:
        self.calls.append(len(reqs))
        out = []
        for r in reqs:
            a = Answer(text=f"Once upon a time a child saw a {r.adjective.text} {r.noun.text}. "
                            f"The child wanted to {r.verb.text}. They were happy.",
                       summary="A child is happy.")
            if on_answer is not None:
                on_answer(r, a)
            out.append(a)
        return out

    def close(self) -> None:
        pass


BUILT: list[EchoTeacher] = []


def _build(cfg: SynthConfig, seed: int) -> Teacher:
    BUILT.append(EchoTeacher(cfg, seed))
    return BUILT[-1]


if "toy_echo" not in TEACHERS:
    register_teacher("toy_echo", _build, batch_size=lambda cfg: 3)

OPEN_GATES = GateConfig(require_words=False, max_unknown_share=1.0, min_words=0, max_words=100_000,
                        max_repeated_share=1.0, dedup="none")


def test_toy_teacher_runs_through_synth_and_the_journal(tmp_path: Path) -> None:
    assert "toy_echo" in teacher_names() and {"grammar", "openai", "hf", "tinyfoundry"} <= set(teacher_names())
    cfg = SynthConfig(teacher="toy_echo", num_stories=7, gates=OPEN_GATES)
    stats = run_synth(cfg, tmp_path, seed=0)
    assert stats["teacher"] == "toy_echo" and stats["model"] == "echo-v0" and stats["num_accepted"] == 7
    calls = BUILT[-1].calls
    assert calls[:2] == [3, 3] and max(calls) == 3  # the backend's batch size
    assert sum(calls) == stats["num_prompts"] < 7 + 3  # only about what is still needed is asked
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert len(journal) == sum(calls)
    again = run_synth(cfg, tmp_path, seed=0)
    assert again["num_replayed_from_journal"] == sum(calls) and BUILT[-1].calls == []


def test_unknown_teacher_and_double_registration_are_errors() -> None:
    with pytest.raises(ValueError, match=r"^teacher: unknown teacher 'nope'; known: grammar"):
        SynthConfig(teacher="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_teacher("grammar", _build)

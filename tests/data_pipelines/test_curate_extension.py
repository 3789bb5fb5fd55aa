"""Extension point: a new curation filter is one class (+ its config dataclass) and one registration.

The toy filter below is registered at runtime with `@register_step`; a real one lives in its own file
under data_pipelines/curate/ and gets a `CurateConfig` section (README.md, "Extending")."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from data_pipelines.curate import STEPS, CurateConfig, Filter, register_step, run_curate
from data_pipelines.curate.documents import Document
from data_pipelines.curate.steps import build_step, step_names


@dataclass
class BananaConfig:
    max_bananas: int = 1
    """Most mentions of 'banana' a document may have (`too_many_bananas`)."""


@register_step
class BananaFilter(Filter):
    """Drops documents that mention bananas more than `max_bananas` times."""

    name = "toy_banana"
    config_cls = BananaConfig
    reasons = ("too_many_bananas",)
    batches: list[int] = []

    def score_batch(self, docs: list[Document]) -> list[float]:
        type(self).batches.append(len(docs))
        return [float(d.text.lower().count("banana")) for d in docs]

    def decide(self, doc: Document, score: float) -> str | None:
        doc.scores["bananas"] = score
        return "too_many_bananas" if score > self.cfg.max_bananas else None


PROSE = (
    "The old lighthouse stood at the edge of the cliff, and every night the keeper climbed the stairs "
    "to light the lamp. He had done this for thirty years and the ships that passed knew the light."
)


def test_registered_toy_filter_runs_in_curate_with_its_reason(tmp_path):
    assert STEPS["toy_banana"] is BananaFilter and "toy_banana" in step_names()
    recs = [{"id": f"d{i}", "text": f"{PROSE} Number {i}." + " A banana fell." * (i % 3)} for i in range(9)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cfg = CurateConfig(steps=["normalize", "length", "toy_banana"], num_workers=1, plots=False, batch_size=4)
    stats = run_curate(cfg, tmp_path / "out", [str(tmp_path / "in.jsonl")])
    assert stats["dropped"] == {"too_many_bananas": 3} and stats["docs_out"] == 6
    assert stats["dropped_by_step"]["toy_banana"] == 3
    assert BananaFilter.batches[:3] == [4, 4, 1]  # whole batches, not one document per call
    f = build_step("toy_banana", cfg)  # no CurateConfig section: the config class's defaults
    assert isinstance(f.cfg, BananaConfig) and f(Document(text="banana banana", id="x")) == "too_many_bananas"


def test_unknown_step_and_duplicate_registration_are_errors():
    with pytest.raises(ValueError, match="unknown step"):
        CurateConfig(steps=["normalize", "no_such_filter"])

    class Other(BananaFilter):
        name = "toy_banana"

    with pytest.raises(ValueError, match="already registered"):
        register_step(Other)


def test_nested_section_dict_with_unknown_key_names_it():
    from launch.loader import build_dataclass

    assert build_dataclass(CurateConfig, {"length": {"min_words": 3}}, "curate").length.min_words == 3
    with pytest.raises(Exception, match=r"curate\.length\.min_wrods"):
        build_dataclass(CurateConfig, {"length": {"min_wrods": 3}}, "curate")


def test_readme_filter_example_registers_and_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### A curation filter", 1)[1].split("###", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    import sys
    import types

    mod = types.ModuleType("readme_example")  # dataclasses look their module up in sys.modules
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(code, "README.md", "exec"), mod.__dict__)
        f = build_step("shout", CurateConfig())
        assert f(Document(text="Yes!" * 30, id="a")) == "shouting" and f(Document(text="Fine.", id="b")) is None
    finally:
        STEPS.pop("shout", None)
        sys.modules.pop(mod.__name__, None)

"""Gates that catch a weak teacher: each reason on a hand-written case, best-of-n, and a hand-labelled sample of
real SmolLM2-135M-Instruct outputs (fixtures/smollm2_outputs.jsonl, generated through llama.cpp's server)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from data_pipelines.synthetic import GateConfig
from data_pipelines.synthetic.gates import REASONS, QualityGates, repeated_sentence_share
from data_pipelines.synthetic.prompts import StoryRequest
from data_pipelines.synthetic.teachers import clean_answer
from data_pipelines.synthetic.vocab import Vocabulary, Word

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "smollm2_outputs.jsonl"

GOOD = (
    "Once upon a time, there was a little girl named Lily. She had a red ball. She loved to jump with her ball "
    "in the park every day. One day, the ball rolled away into the tall grass. Lily looked and looked.\n"
    "Her friend Tom came to help. \"Let us look by the tree,\" he said. They found the red ball under a bush. "
    "Lily was so happy. She said thank you to Tom, and they played and jumped together until the sun went down."
)


def _req(verb: str = "jump", noun: str = "ball", adjective: str = "red", features: tuple[str, ...] = ()) -> StoryRequest:
    return StoryRequest("x", 0, Word(noun, "thing"), Word(verb, "alone"), Word(adjective, "look"), features, "p", 0)


@pytest.fixture(scope="module")
def gates() -> QualityGates:
    return QualityGates(GateConfig(dedup="none"), Vocabulary.load())


@pytest.mark.parametrize("text,reason", [
    (GOOD, None),
    ("Sure! Here is a story for you. " + GOOD, "chatter"),
    (GOOD + "\nI hope you enjoyed this story about Lily and her ball!", "chatter"),
    (GOOD + "\nThis story teaches children that friends help each other.", "chatter"),
    (GOOD + "\nThe story ends with a big hug.", "chatter"),
    (GOOD + "\nIn summary, Lily learned to share her ball.", "chatter"),
    ("# The Red Ball\n" + GOOD, "not_prose"),
    ("**The Red Ball**\n" + GOOD, "not_prose"),
    (GOOD + "\n1. Lily jumps.\n2. Tom helps.", "not_prose"),
    ("Title: The Red Ball\n" + GOOD, "not_prose"),
    (GOOD + " The mother jumped on the ball. The mother jumped on the ball. The mother jumped on the ball. "
     "The mother jumped on the ball.", "repetitive"),
    (GOOD.replace("a red ball", "a red red red ball"), "repetitive"),
    (GOOD.replace("Lily looked and looked.", "Lily said, \"Honk, honk, honk!\""), None),
    (GOOD[:-40], "truncated"),
    (GOOD.replace("red ", "blue "), "missing_words"),
    ("I'm sorry, but I cannot write that story.", "refusal"),
])
def test_each_gate_names_its_reason(gates: QualityGates, text: str, reason: str | None) -> None:
    assert gates.check_text(_req(), text) == reason


def test_cut_at_max_tokens_is_truncated_even_with_a_full_stop(gates: QualityGates) -> None:
    assert gates.check_text(_req(), GOOD, finish_reason="stop") is None
    assert gates.check_text(_req(), GOOD, finish_reason="length") == "truncated"


def test_sentence_loops_are_measured_per_sentence() -> None:
    assert repeated_sentence_share(GOOD) == 0.0
    loop = "Tom ran to the park. " + "The mother jumped on the ball. " * 5
    assert repeated_sentence_share(loop) == pytest.approx(4 / 6)


def test_best_of_n_keeps_the_best_candidate_that_passes(gates: QualityGates) -> None:
    looping = GOOD + " The dog sat on the mat." * 5
    other = GOOD.replace("Lily", "Mia")
    cands = [(looping, "stop", -0.2), (GOOD, "stop", -1.5), (other, "stop", -0.9), (GOOD, "length", -0.1)]
    k, whys = gates.choose(_req(), cands)
    assert k == 2 and whys == ["repetitive", None, None, "truncated"]
    assert gates.choose(_req(), cands, by_score=False)[0] == 1  # "first": the first that passes
    k, whys = gates.choose(_req(), [(looping, "stop", -0.1), (None, "", None)])
    assert k == 0 and whys == ["repetitive", "teacher_error"]


def _fixture_gates() -> GateConfig:
    """The gates of configs/synth-smollm2.yaml: the fixture is judged as that config would judge it."""
    raw = yaml.safe_load((REPO / "configs" / "synth-smollm2.yaml").read_text())["synth"].get("gates", {})
    return GateConfig(**{**raw, "dedup": "none"})


def test_hand_labelled_teacher_outputs() -> None:
    """>= 95% of SmolLM2's degenerate outputs dropped with a reason; <= 5% of its good stories dropped.

    Every output was read and labelled by hand (`label`, `note`) before the gates judged it; `settings` says how
    it was asked. The rule: `degenerate` is one of the failures the gates exist for (a loop, cut off, a list or
    heading, a required word missing, talk about the story or the prompt, too short to be a story, garbage);
    `good` is a complete prose story with all three words and none of those, however odd its plot (a 135M
    teacher's stories all are). The first 74 (session 5's settings) hold no good story; the next 52 are
    candidates of the config as shipped in session 9, the last 32 of it with a story opening (session 10),
    both sides. Real stories are the good side's second check (test_gates_keep_real_stories below)."""
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines() if x.strip()]
    assert len(rows) >= 100 and {r["label"] for r in rows} <= {"good", "degenerate"}
    g = QualityGates(_fixture_gates(), Vocabulary.load())
    verdicts: Counter[str | None] = Counter()
    missed, lost = [], []
    for r in rows:
        req = _req(r["verb"], r["noun"], r["adjective"], tuple(r["features"]))
        why = g.check_text(req, clean_answer(r["raw"])[0], r.get("finish_reason", ""))
        verdicts[why] += 1
        if r["label"] == "degenerate" and why is None:
            missed.append((r["note"], r["raw"][:200]))
        if r["label"] == "good" and why is not None:
            lost.append((why, r["raw"][:200]))
    bad = [r for r in rows if r["label"] == "degenerate"]
    good = [r for r in rows if r["label"] == "good"]
    assert len(good) >= 10
    assert len(missed) <= 0.05 * len(bad), (len(missed), len(bad), missed)
    assert len(lost) <= 0.05 * len(good), (len(lost), len(good), lost)
    assert set(verdicts) - {None} <= set(REASONS) and len(set(verdicts) - {None}) >= 4  # several reasons at work


def test_gates_keep_real_stories() -> None:
    """The good side: the fixture's gates (required words and dialogue aside: real stories had other prompts) keep
    >= 95% of real TinyStories stories."""
    real = REPO / ".." / "shared" / "data" / "tinystories" / "tinystories_2000.txt"
    if not real.is_file():
        pytest.skip("shared TinyStories sample absent")
    cfg = GateConfig(**{**_fixture_gates().__dict__, "require_words": False, "require_dialogue": False,
                        "min_words": 0, "max_words": 10_000})
    g = QualityGates(cfg, Vocabulary.load())
    stories = [s.strip() for s in real.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    dropped = Counter(g.check_text(_req(), s) for s in stories)
    kept = dropped.pop(None, 0)
    assert kept >= 0.95 * len(stories), dropped

"""Synthetic stories: vocabulary, prompts, the offline grammar, quality gates, run_synth outputs."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipelines.synthetic import FEATURES, GateConfig, SynthConfig, run_synth
from data_pipelines.synthetic.gates import QualityGates, unknown_share
from data_pipelines.synthetic.grammar import write_story
from data_pipelines.synthetic.prompts import PromptBuilder
from data_pipelines.synthetic.teachers import clean_answer
from data_pipelines.synthetic.vocab import NOUN_KINDS, Vocabulary, Word, forms, past, plural


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load()


# ---- vocabulary ----------------------------------------------------------------------------------


def test_vocabulary_is_about_1500_simple_words(vocab: Vocabulary) -> None:
    nouns, verbs, adjectives = vocab.sampling_lists()
    assert 1300 <= len(vocab) <= 1700
    assert len(nouns) > 500 and len(verbs) > 250 and len(adjectives) > 250
    assert {w.kind for w in vocab.nouns} == set(NOUN_KINDS)
    assert all(" " not in w.text for w in vocab.nouns)
    # a verb with a usual object keeps it
    kick = [w for w in vocab.verbs if w.text == "kick" and w.obj]
    assert kick and kick[0].obj == "a ball"


@pytest.mark.parametrize(
    "lemma,form",
    [("jump", "jumped"), ("run", "ran"), ("hop", "hopped"), ("bunny", "bunnies"), ("happy", "happily"),
     ("bake", "baking"), ("swim", "swimming"), ("cry", "cried"), ("box", "boxes"), ("mouse", "mice")],
)
def test_forms(lemma: str, form: str) -> None:
    assert form in forms(lemma)


def test_written_forms_are_accepted(vocab: Vocabulary) -> None:
    for w in vocab.verbs:
        assert past(w.text) in forms(w.text)
    for w in vocab.nouns:
        assert plural(w.text) in forms(w.text)
    assert past("open") == "opened" and past("visit") == "visited" and past("stop") == "stopped"


def test_user_word_lists(tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("zorb\nglimp\n")
    (tmp_path / "v.txt").write_text("## with\nfrobnicate: a widget\n")
    (tmp_path / "a.txt").write_text("## feeling\nblorpy\n")
    cfg = SynthConfig(num_stories=20, nouns_file=str(tmp_path / "n.txt"), verbs_file=str(tmp_path / "v.txt"),
                      adjectives_file=str(tmp_path / "a.txt"), gates=GateConfig(dedup="none"))
    stats = run_synth(cfg, tmp_path / "out", seed=3)
    texts = pq.read_table(tmp_path / "out" / "synth-00000.parquet").column("text").to_pylist()
    assert stats["num_accepted"] == 20
    assert all("frobnicate" in t and "blorpy" in t for t in texts)
    assert all("zorb" in t or "glimp" in t for t in texts)
    (tmp_path / "bad.txt").write_text("## colour\nred\n")
    with pytest.raises(ValueError, match="unknown kind"):
        Vocabulary.load(adjectives_file=tmp_path / "bad.txt")


# ---- prompts -------------------------------------------------------------------------------------


def test_prompts_are_deterministic_and_follow_the_recipe(vocab: Vocabulary) -> None:
    cfg = SynthConfig(min_features=1, max_features=3)
    a = [PromptBuilder(cfg, vocab, seed=7).build(i) for i in range(50)]
    b = [PromptBuilder(cfg, vocab, seed=7).build(i) for i in range(50)]
    c = [PromptBuilder(cfg, vocab, seed=8).build(i) for i in range(50)]
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert len({r.id for r in a}) == 50
    for r in a:
        assert 1 <= len(r.features) <= 3 and set(r.features) <= set(FEATURES)
        assert f'the verb "{r.verb.text}"' in r.prompt and f'the noun "{r.noun.text}"' in r.prompt
        assert f'the adjective "{r.adjective.text}"' in r.prompt
        assert "3-5 paragraphs" in r.prompt and "simple words" in r.prompt
    assert any("at least one dialogue" in r.prompt for r in a if "dialogue" in r.features)
    nouns = {r.noun.text for r in a}
    assert len(nouns) > 30  # words vary


def test_prompt_template_override_and_validation(vocab: Vocabulary) -> None:
    cfg = SynthConfig(prompt_templates=["Tell a tale about a {adjective} {noun} that can {verb}. [{features}]"],
                      features=["dialogue"], min_features=1, max_features=1)
    r = PromptBuilder(cfg, vocab, seed=0).build(0)
    assert r.prompt == f"Tell a tale about a {r.adjective.text} {r.noun.text} that can {r.verb.text}. [dialogue]"
    with pytest.raises(ValueError, match=r"^prompt_templates: unknown field \{colour\}"):
        SynthConfig(prompt_templates=["a {colour} story"])
    with pytest.raises(ValueError, match="^features:"):
        SynthConfig(features=["dialogue", "explosions"])
    with pytest.raises(ValueError, match="^max_features:"):
        SynthConfig(features=["dialogue"], max_features=2)
    assert SynthConfig(gates=GateConfig(min_words=10)).gates.min_words == 10


# ---- the grammar ---------------------------------------------------------------------------------


def test_grammar_uses_the_words_and_honours_features(vocab: Vocabulary) -> None:
    gates = QualityGates(GateConfig(dedup="none", max_unknown_share=0.0), vocab)
    builder = PromptBuilder(SynthConfig(max_features=3), vocab, seed=11)
    rng = random.Random(0)
    by_kind: dict[str, list[Word]] = {}
    for w in vocab.nouns:
        by_kind.setdefault(w.kind, []).append(w)
    combos = [c for k in range(4) for c in itertools.combinations(FEATURES, k)]
    n = 0
    for kind, nouns in sorted(by_kind.items()):
        for feats in combos[:: 3 if kind != "thing" else 1]:
            req = builder.build(n)
            n += 1
            noun = rng.choice(nouns)
            story = write_story(noun, req.verb, req.adjective, feats, random.Random(n))
            text = story.text
            req2 = type(req)(req.id, req.index, noun, req.verb, req.adjective, feats, req.prompt, req.seed)
            # every word in the simple vocabulary (max_unknown_share=0) and all three sampled words present
            assert gates.check_text(req2, text) is None, (gates.check_text(req2, text), feats, text)
            # quotes exactly in dialogue stories, straight or curly (the typographic register writes “...”)
            assert ('"' in text or '“' in text) == ("dialogue" in feats), (feats, text)
            if "moral value" in feats:
                assert "learned" in text
            if "conflict" in feats:
                assert any(w in text for w in ("argued", "angry", "mad", "cross", "shout", "fight", "pulled"))
            assert 3 <= text.count("\n") + 1 <= 5
            assert story.summary and story.plot
    assert n > 100


def test_grammar_is_deterministic_and_varied(vocab: Vocabulary) -> None:
    noun, verb, adj = vocab.nouns[200], vocab.verbs[10], vocab.adjectives[300]
    a = write_story(noun, verb, adj, ("dialogue",), random.Random(5)).text
    assert a == write_story(noun, verb, adj, ("dialogue",), random.Random(5)).text
    texts = {write_story(noun, verb, adj, ("dialogue",), random.Random(s)).text for s in range(30)}
    assert len(texts) == 30


# ---- gates ---------------------------------------------------------------------------------------

STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to jump in the park with her red ball. "
    "Every day she would jump and laugh, and her mom would smile at her.\n\n"
    "One day, Lily saw a big dog. The dog wanted to play with the ball too. Lily was scared at first, but the "
    "dog was kind. \"I am sorry,\" said the dog. \"I only want to play.\"\n\n"
    "So Lily and the dog played all day. They were happy and became good friends. The end."
)


@pytest.fixture()
def req(vocab: Vocabulary):
    r = PromptBuilder(SynthConfig(), vocab, seed=0).build(0)
    return type(r)(r.id, 0, Word("ball", "thing"), Word("jump", "alone"), Word("red", "look"), (), r.prompt, 0)


@pytest.mark.parametrize(
    "text,reason",
    [
        (None, "teacher_error"),
        ("   ", "empty"),
        ("I'm sorry, but I can't write that story. " + STORY, "refusal"),
        ("As an AI language model, here is a story. " + STORY, "refusal"),
        (STORY.replace("The end.", "@@@ ### $$$ %%% ^^^ &&& *** ((( ))) " * 20 + "."), "garbage"),
        (STORY[:-40], "truncated"),
        ("Lily had a red ball. She liked to jump.", "too_short"),
        (STORY + (" The dog ran to the park and jumped." * 200), "too_long"),
        (STORY + (" She would jump with the red ball." * 20), "repetitive"),
        (STORY.replace("jump", "hop"), "missing_words"),
        (STORY + " Meanwhile, the philosopher contemplated ontological ambiguities, whereas the bureaucratic"
         " committee deliberated regarding unprecedented fiscal liabilities. Consequently, sophisticated"
         " algorithms extrapolated heterogeneous parameters, notwithstanding considerable methodological"
         " reservations concerning epistemological frameworks and institutional accountability.",
         "not_simple"),
    ],
)
def test_gate_reasons(vocab: Vocabulary, req, text, reason: str) -> None:
    gates = QualityGates(GateConfig(), vocab)
    assert gates.check_batch([req], [text]) == [reason]


def test_dialogue_feature_needs_quotes(vocab: Vocabulary, req) -> None:
    gates = QualityGates(GateConfig(dedup="none"), vocab)
    wants = type(req)(req.id, 0, req.noun, req.verb, req.adjective, ("dialogue",), req.prompt, 0)
    no_quotes = STORY.replace('"', "")
    assert gates.check_batch([wants, wants, req], [STORY, no_quotes, no_quotes]) == [None, "missing_dialogue", None]


def test_dialogue_apology_is_not_a_refusal_and_dedup(vocab: Vocabulary, req) -> None:
    gates = QualityGates(GateConfig(), vocab)
    near = STORY.replace("laugh, and", "laugh and").replace("all day", "all the day")
    other = STORY.replace("Lily", "Sam").replace("She ", "He ").replace(" her", " his")
    other = " ".join(reversed(other.split(". ")))  # same words, different order: not a near copy
    assert gates.check_batch([req] * 4, [STORY, STORY.upper(), near, other + "."]) == [
        None, "duplicate_exact", "duplicate_near", None]


def test_simplicity_share_counts_names_as_simple(vocab: Vocabulary) -> None:
    assert unknown_share("Lily and Bartholomew went to the park.", vocab.simple_forms) == 0.0
    assert unknown_share("The philosopher contemplated.", vocab.simple_forms) == pytest.approx(2 / 3)


def test_gates_accept_real_tinystories(shared_data: Path, vocab: Vocabulary, req) -> None:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:400]
    gates = QualityGates(GateConfig(require_words=False), vocab)
    verdicts = gates.check_batch([req] * len(stories), stories)
    accepted = sum(v is None for v in verdicts)
    assert accepted / len(stories) > 0.9, {v: verdicts.count(v) for v in set(verdicts)}


def test_clean_answer_strips_chatter_and_keeps_summary() -> None:
    raw = "Sure! Here is a short story:\n\nStory: Once upon a time, Tom ran.\n\nSummary: Tom runs."
    assert clean_answer(raw) == ("Once upon a time, Tom ran.", "Tom runs.")
    assert clean_answer("Once upon a time.")[0] == "Once upon a time."


# ---- run_synth -----------------------------------------------------------------------------------


def test_run_synth_writes_stories_and_stats(tmp_path: Path) -> None:
    cfg = SynthConfig(num_stories=300, max_features=3)
    stats = run_synth(cfg, tmp_path / "a", seed=1)
    t = pq.read_table(tmp_path / "a" / "synth-00000.parquet")
    assert {"id", "text", "words", "features", "teacher", "model", "prompt", "summary"} <= set(t.column_names)
    assert t.num_rows == 300 == stats["num_accepted"]
    on_disk = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert on_disk["num_accepted"] == 300 and on_disk["teacher"] == "grammar"
    assert on_disk["num_prompts"] == 300 + on_disk["num_rejected"]
    assert sum(on_disk["rejected"].values()) == on_disk["num_rejected"]
    rows = t.to_pylist()
    assert len({r["id"] for r in rows}) == 300 and len({r["text"] for r in rows}) == 300
    for r in rows[:50]:
        verb, noun, adj = r["words"]
        assert noun in r["prompt"] and r["teacher"] == "grammar"
    assert not list((tmp_path / "a").glob(".*"))  # no temp files left
    # deterministic for a seed
    run_synth(cfg, tmp_path / "b", seed=1)
    assert pq.read_table(tmp_path / "b" / "synth-00000.parquet").column("text").to_pylist() == t.column(
        "text").to_pylist()


def test_run_synth_shards_partition_the_prompts(tmp_path: Path) -> None:
    cfg = SynthConfig(num_stories=41, gates=GateConfig(dedup="none"))
    s0 = run_synth(cfg, tmp_path, seed=2, shard=(0, 2))
    s1 = run_synth(cfg, tmp_path, seed=2, shard=(1, 2))
    assert s0["num_accepted"] + s1["num_accepted"] == 41
    ids0 = set(pq.read_table(tmp_path / "synth-00000-00000.parquet").column("id").to_pylist())
    ids1 = set(pq.read_table(tmp_path / "synth-00001-00000.parquet").column("id").to_pylist())
    assert ids0 and ids1 and not ids0 & ids1
    assert (tmp_path / "stats-00001.json").is_file()


def test_instruct_format(tmp_path: Path) -> None:
    cfg = SynthConfig(num_stories=20, instruct_format=True, min_features=1)
    run_synth(cfg, tmp_path, seed=4)
    rows = pq.read_table(tmp_path / "synth-00000.parquet").to_pylist()
    for r in rows:
        lines = r["text"].split("\n")
        assert lines[0].startswith("Features: ") and lines[1] == "Words: " + ", ".join(r["words"])
        assert lines[2] == "Summary: " + r["summary"] and lines[3].startswith("Story: ")
    assert any("Dialogue" in r["text"].split("\n")[0] for r in rows if "dialogue" in r["features"])


def test_grammar_workers_give_the_same_stories(tmp_path: Path) -> None:
    one = run_synth(SynthConfig(num_stories=40), tmp_path / "one", seed=9)
    two = run_synth(SynthConfig(num_stories=40, grammar_workers=2), tmp_path / "two", seed=9)
    assert one["num_accepted"] == two["num_accepted"] == 40
    read = [pq.read_table(tmp_path / d / "synth-00000.parquet").column("text").to_pylist() for d in ("one", "two")]
    assert read[0] == read[1]


def test_rerun_replaces_outputs_and_leaves_no_stale_files(tmp_path: Path) -> None:
    run_synth(SynthConfig(num_stories=30, stories_per_file=10), tmp_path, seed=1)
    assert len(list(tmp_path.glob("synth-*.parquet"))) == 3
    stats = run_synth(SynthConfig(num_stories=10, stories_per_file=10), tmp_path, seed=1)
    assert sorted(p.name for p in tmp_path.glob("synth-*.parquet")) == stats["files"] == ["synth-00000.parquet"]


def test_word_bias_is_a_bounded_logit_bias() -> None:
    from data_pipelines.synthetic.config import OpenAITeacherConfig

    assert OpenAITeacherConfig().word_bias == 0.0  # off unless a config asks (it needs llama.cpp's tokenizer endpoint)
    for bad in (-1.0, 21.0):
        with pytest.raises(ValueError, match=r"^word_bias:"):
            OpenAITeacherConfig(word_bias=bad)


def test_openings_are_checked_and_drawn_per_request() -> None:
    from data_pipelines.synthetic.config import OpenAITeacherConfig
    from data_pipelines.synthetic.prompts import PromptBuilder, opening_for

    with pytest.raises(ValueError, match=r"opening\[1\].*\{colour\}"):
        OpenAITeacherConfig(opening=["Once upon a time, {name} had {a_noun}", "{name} saw a {colour} cat"])
    assert OpenAITeacherConfig(opening="One day, {name} found {a_noun}").opening == ["One day, {name} found {a_noun}"]
    cfg = SynthConfig(teacher="openai", openai=OpenAITeacherConfig(opening=["{name} had {a_adjective} {noun}."]))
    builder = PromptBuilder(cfg, Vocabulary.load(), seed=1)
    reqs = [builder.build(i) for i in range(40)]
    texts = [opening_for(r, cfg.openai.opening) for r in reqs]
    assert texts == [opening_for(r, cfg.openai.opening) for r in reqs]  # the same on every rerun
    assert len({t.split()[0] for t in texts}) > 10  # names vary
    for r, t in zip(reqs, texts, strict=True):
        adj = r.adjective.text
        assert t.endswith(f" {'an' if adj[0] in 'aeiou' else 'a'} {adj} {r.noun.text}.")


def test_word_bias_skips_the_words_an_opening_already_has() -> None:
    """Biased and already in the opening, SmolLM2 repeated them a dozen times a story: only the rest are biased."""
    pytest.importorskip("openai", reason="the OpenAI-compatible teacher needs the openai client")
    from data_pipelines.synthetic.config import OpenAITeacherConfig
    from data_pipelines.synthetic.prompts import StoryRequest
    from data_pipelines.synthetic.teachers import OpenAITeacher
    from data_pipelines.synthetic.vocab import Word

    teacher = OpenAITeacher(OpenAITeacherConfig(model="m", word_bias=3.0))  # no request is sent here
    ids = {" jump": 1, " Jump": 2, " ball": 3, " Ball": 4, " red": 5, " Red": 6}
    teacher._first_token = ids.__getitem__  # the server's tokenizer, as a table
    req = StoryRequest("x", 0, Word("ball", "thing"), Word("jump", "alone"), Word("red", "look"), (), "p", 0)
    try:
        assert set(teacher.word_bias(req)) == {"1", "2", "3", "4", "5", "6"}
        assert set(teacher.word_bias(req, "Once upon a time, Mia had a red ball")) == {"1", "2"}
        assert teacher.word_bias(req, "Tom jumped on the red balls") == {}
    finally:
        teacher.close()

"""The offline grammar: templates as data files, one protagonist per story, one register per story."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from data_pipelines.synthetic import grammar
from data_pipelines.synthetic.config import SynthConfig
from data_pipelines.synthetic.grammar import BOY_NAMES, GIRL_NAMES, NAMES, PET_NAMES, write_story
from data_pipelines.synthetic.prompts import PromptBuilder
from data_pipelines.synthetic.vocab import Vocabulary

NAME_SET = set(NAMES)
_WORD = re.compile(r"[A-Z][a-z]+")


@pytest.fixture(scope="module")
def stories() -> list[tuple[object, object]]:
    builder = PromptBuilder(SynthConfig(max_features=3), Vocabulary.load(), seed=5)
    out = []
    for i in range(600):
        req = builder.build(i)
        out.append((req, write_story(req.noun, req.verb, req.adjective, req.features, req.rng())))
    return out


def test_templates_are_data_files_shipped_with_the_package() -> None:
    files = sorted(p.name for p in grammar.TEMPLATES.glob("*.yaml"))
    assert files == ["parts.yaml", "plots.yaml", "story.yaml"]
    plots = yaml.safe_load((grammar.TEMPLATES / "plots.yaml").read_text())
    assert set(plots["plots"]) == set(grammar.PLOTS) and len(grammar.PLOTS) >= 8
    for plot in grammar.PLOTS.values():  # every plot can tell a good and a bad story
        for key in ("setup", "trouble", "good", "bad", "end_good", "end_bad", "summary_good", "summary_bad"):
            assert plot.get(key), key
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"*.yaml"' in pyproject  # package-data ships them


def test_one_protagonist_name_per_story(stories) -> None:
    """The hero is named once in the opening and every later name is the hero, the friend or the pet."""
    for _, story in stories:
        names = [w for w in _WORD.findall(story.text) if w in NAME_SET]
        assert names, story.text
        hero = names[0]
        assert names.count(hero) >= 2, story.text  # the hero is the story's subject, not a one-off
        others = {n for n in names if n != hero}
        assert len(others) <= 2, (others, story.text)  # at most a friend and a pet
        # the hero's name is never used for someone else: it is the most named
        assert max(set(names), key=names.count) == hero or names.count(hero) >= max(map(names.count, others))
        # a story's pronoun for the hero is fixed: a girl's name never takes "he" as the opening subject
        if hero in GIRL_NAMES and hero not in BOY_NAMES:
            first_para = story.text.split("\n")[0]
            assert not re.search(rf"\b{hero}\b[^.]*\. He\b", first_para), story.text


def test_one_parent_word_per_story(stories) -> None:
    for _, story in stories:
        low = story.text.lower()
        moms = {w for w in ("mom", "mommy", "mum", "mama") if re.search(rf"\b{w}\b", low)}
        assert len(moms) <= 1, story.text


def test_paragraphs_and_contractions_look_like_tinystories(stories) -> None:
    texts = [s.text for _, s in stories]
    assert all("\n\n" not in t and "\n" in t for t in texts)  # one newline between paragraphs
    share = sum("n't" in t or "'s " in t or "I'm" in t for t in texts) / len(texts)
    assert 0.3 < share < 0.95


def test_pet_names_only_for_animal_heroes(stories) -> None:
    for _, story in stories:
        first = story.text.split(".")[0] + "." + story.text.split(".")[1]
        for pet in PET_NAMES:
            if re.search(rf"named {pet}\b|called {pet}\b|name was {pet}\b", first):
                assert not re.search(r"\b(?:boy|girl)\b", first), story.text


# sha256 of the first 300 (text, summary, plot) triples for two seeds: the grammar is deterministic for a seed, and
# a refactor of grammar.py must leave these unchanged. First captured before the tables moved to templates/story.yaml;
# recaptured when the templates, word lists and the embellish pass changed the stories on purpose, and again when
# the typographic register, the chats and the common-word draws of the asides did, and when two manner phrases that
# printed a literal "{he}" / "{his}" were replaced (session 8).
GOLDEN = {
    0: "0c32dd62f691b2cac10c0db4c42d8f260be718ba035db94250248def503ed612",
    5: "fa4ab20608552519c4300cd513aa255a86ab0f40a5782a4912aee48aa88fc117",
}


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_stories_identical_to_the_captured_fixture(seed: int) -> None:
    builder = PromptBuilder(SynthConfig(max_features=3), Vocabulary.load(), seed=seed)
    h = hashlib.sha256()
    for i in range(300):
        r = builder.build(i)
        s = write_story(r.noun, r.verb, r.adjective, r.features, r.rng())
        assert "{" not in s.text and "}" not in s.text, s.text  # every slot filled (embellish adds text after filling)
        h.update(json.dumps([s.text, s.summary, s.plot]).encode())
    assert h.hexdigest() == GOLDEN[seed]

"""The offline story grammar: short, simple, coherent stories with no model and no network.

Design
- A story is a plot (lost toy, sharing, something breaks, helping a creature, a trip, reaching
  for the sky, learning to do something, a new friend) chosen to fit the sampled noun's kind; a plot is a
  handful of beats (setup, trouble, resolution, ending), each a list of alternative templates.
  Features switch beats on or swap them: `conflict` swaps the trouble for a quarrel, `plot twist`
  swaps the resolution for a surprising one, `bad ending` picks the sad resolution,
  `foreshadowing` plants the plot's hint in the first paragraph (the trouble pays it off),
  `moral value` adds the plot's lesson, `dialogue` adds quoted lines (stories without it have no
  quotes at all, so a model trained on them can learn the feature).
- The templates are data: templates/plots.yaml (plots, which noun kinds they fit),
  templates/parts.yaml (openings, traits, scenery, feelings, endings, names, phrase swaps) and
  templates/story.yaml (noun classes, the parent words and contractions of a story's register,
  hobbies, scene sentences, the safety-net sentences). This file holds only the machinery:
  `_StoryWriter` fills the slots, picks the beats and joins the paragraphs.
- Templates use `[a|b|c]` for a random choice (nestable, `[a|]` = optional) and `{slot}` for
  cast, word and pronoun slots. A leading `@tag` ties templates together: a story draws one
  trouble tag and only uses hints, resolutions and lines with that tag (or none), so rain is
  foreshadowed by dark clouds and ends with the sun, a fall ends with a bandage.
- Variety comes from composition, not from more fixed sentences: asides (small scenes filled from the
  whole vocabulary, 5-8 per story), phrase swaps, and `embellish` (a look adjective before some nouns,
  the same one each time within a story; manner phrases after clause-ending verbs; speech verbs that
  fit the quote's mark; connectives before some sentences). A student trained on the corpus is
  scored on real stories by benchmarks/bench_synth_transfer.py; benchmarks/bench_synth.py compares
  the distinct 4-gram ratio and word types with real stories.
- What transfers to real stories is the word and character distribution, so the grammar leans toward it:
  40% of the asides' words come from short lists of the words real stories name most (birds, parks, trees),
  stories with quoted speech get 2-4 extra quoted exchanges (`chats`: real stories quote twice as much
  and ask more), and a few stories use curly punctuation (“...”, ’) as some real ones do: a student that
  never saw those bytes pays dearly for each one in real text.
- Invariants: the sampled noun, verb and adjective appear in the text in a form the
  required-word gate accepts; with a fixed `random.Random` the output is deterministic.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .vocab import FAMILY, FEMALE_PEOPLE, Word, past, plural

FEATURES = ("dialogue", "bad ending", "moral value", "plot twist", "foreshadowing", "conflict")

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _load(name: str) -> dict[str, Any]:
    with (TEMPLATES / name).open(encoding="utf-8") as f:
        return yaml.safe_load(f)


_PARTS = _load("parts.yaml")
_PLOT_FILE = _load("plots.yaml")

GIRL_NAMES: list[str] = _PARTS["girl_names"]
BOY_NAMES: list[str] = _PARTS["boy_names"]
PET_NAMES: list[str] = _PARTS["pet_names"]
# the names real children's stories use most, a name listed twice drawn twice as often (each is in the lists above)
COMMON_GIRL_NAMES: list[str] = _PARTS["common_girl_names"]
COMMON_BOY_NAMES: list[str] = _PARTS["common_boy_names"]
NAMES = GIRL_NAMES + BOY_NAMES + PET_NAMES

HERO_ANIMALS: list[str] = _PARTS["hero_animals"]
CRITTERS: list[str] = _PARTS["critters"]
PLACES: tuple[str, ...] = tuple(_PARTS["places"])

_STORY = _load("story.yaml")
SKY = frozenset(_STORY["sky_nouns"])
DRINKS = frozenset(_STORY["drinks"])
EDIBLE_STUFF = frozenset(_STORY["edible_stuff"])
SCENES: dict[str, str] = _STORY["scenes"]
SAFETY_NET: dict[str, str] = _STORY["safety_net"]
QUOTES_WITHOUT_DIALOGUE = float(_STORY["quotes_without_dialogue"])
TYPOGRAPHIC: dict[str, float] = {k: float(v) for k, v in _STORY["typographic"].items()}
_OPEN_QUOTE = re.compile(r'(^|(?<=[\s(]))"')

_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([\"“]?)([a-z])")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])(?!uni|use|one|eu)")


def expand(template: str, slots: dict[str, str], rng: random.Random) -> str:
    """Resolve `[a|b]` choices innermost-first, then fill `{slot}`s."""
    while True:
        m = _CHOICE.search(template)
        if m is None:
            break
        template = template[: m.start()] + rng.choice(m.group(1).split("|")) + template[m.end() :]
    return template.format_map(slots)


def tidy(text: str) -> str:
    """Capitalise sentence starts, fix a/an, collapse spaces; paragraphs stay separate."""
    paras = []
    for p in text.split("\n\n"):
        p = re.sub(r"[ \t]+", " ", p).strip()
        p = re.sub(r" ([,.!?])", r"\1", p)
        p = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2) + m.group(3).upper(), p)
        p = _ARTICLE.sub(lambda m: m.group(1) + "n ", p)
        if p:
            paras.append(p)
    return "\n\n".join(paras)


# ---------------------------------------------------------------------------------------------
# Plots. Keys: setup / trouble / conflict (replaces trouble) / good / bad / twist_good /
# twist_bad / moral / hint (foreshadowing, payoff in trouble) / talk_* (dialogue) / summary_*.
# Each value is a list of alternative templates.
# ---------------------------------------------------------------------------------------------

# Plots and the noun kinds they fit: templates/plots.yaml (its header explains the keys and the syntax).
PLOTS: dict[str, dict[str, list[str]]] = _PLOT_FILE["plots"]
PLOTS_FOR_KIND: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _PLOT_FILE["plots_for_kind"].items()}


OPENINGS: tuple[str, ...] = tuple(_PARTS["openings"])
TRAITS: tuple[str, ...] = tuple(_PARTS["traits"])
LIFE: tuple[str, ...] = tuple(_PARTS["life"])
COLOR: tuple[str, ...] = tuple(_PARTS["color"])
FEEL_TROUBLE: tuple[str, ...] = tuple(_PARTS["feel_trouble"])
FEEL_GOOD: tuple[str, ...] = tuple(_PARTS["feel_good"])
FEEL_BAD: tuple[str, ...] = tuple(_PARTS["feel_bad"])
OTHER_VERB: tuple[str, ...] = tuple(_PARTS["other_verb"])
ENDINGS_GOOD: tuple[str, ...] = tuple(_PARTS["endings_good"])
ENDINGS_BAD: tuple[str, ...] = tuple(_PARTS["endings_bad"])
ASIDES: tuple[str, ...] = tuple(_PARTS["asides"])
ASIDE_COUNTS: tuple[int, ...] = tuple(_PARTS["aside_counts"])
ASIDE_NEW_WORDS = float(_PARTS["aside_new_words"])
ASIDE_ADJECTIVE_SKIP = frozenset(_PARTS["aside_adjective_skip"])
ASIDE_COMMON: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _PARTS["aside_common"].items()}
ASIDE_COMMON_SHARE = float(_PARTS["aside_common_share"])
CHATS: tuple[str, ...] = tuple(_PARTS["chats"])
CHAT_COUNTS: tuple[int, ...] = tuple(_PARTS["chat_counts"])

# Phrase-level variety applied after the plot is written (templates/parts.yaml `swaps`).
SWAPS: tuple[tuple[str, tuple[str, ...]], ...] = tuple((p, tuple(o)) for p, o in _PARTS["swaps"])
_SAID_OK = re.compile(r'["”],? $')


_SWAP_RE = re.compile("|".join(re.escape(p) for p, _ in sorted(SWAPS, key=lambda x: -len(x[0]))))
_SWAP_OPTIONS = dict(SWAPS)


def vary(text: str, rng: random.Random, keep: set[str]) -> str:
    """Swap stock phrases for equivalents (see SWAPS) in one pass, so swaps never chain;
    phrases containing a word in `keep` (the sampled words) stay."""

    def one(m: re.Match[str]) -> str:
        phrase = m.group(0)
        if phrase.strip().lower() in keep:
            return phrase
        if phrase == " said" and not _SAID_OK.search(text[max(0, m.start() - 2) : m.start()] + " "):
            return phrase  # "answered"/"replied" only right after a quote: '"Hi," answered Tom'
        if phrase == " looked " and not text.startswith(("for ", "everywhere", "under", "behind"), m.end()):
            return phrase
        return rng.choice(_SWAP_OPTIONS[phrase])

    return _SWAP_RE.sub(one, text)


# Story-level register (one choice per story, so a story never switches between "mom" and "mum"):
# the words real children's stories use for parents, and contractions in about 60% of stories.
MOM_WORDS: tuple[tuple[str, float], ...] = tuple((w, float(p)) for w, p in _STORY["mom_words"])
DAD_WORDS: tuple[tuple[str, float], ...] = tuple((w, float(p)) for w, p in _STORY["dad_words"])
CONTRACTIONS: tuple[tuple[str, str], ...] = tuple((a, b) for a, b in _STORY["contractions"])
_CONTRACT_RE = re.compile(r"\b(" + "|".join(re.escape(a) for a, _ in CONTRACTIONS) + r")\b")
_CONTRACT = dict(CONTRACTIONS)
_PARENT_RE = re.compile(r"\b([Mm]om|[Dd]ad)\b")


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([w for w, _ in options], weights=[p for _, p in options])[0]


def register(text: str, rng: random.Random, keep: set[str]) -> str:
    """Apply the story's register: one parent word each (mom/mommy/mum/mama, dad/daddy) and, in ~60% of
    stories, contractions. Sampled words (`keep`) are never rewritten."""
    mom = "mom" if "mom" in keep else _weighted(rng, MOM_WORDS)
    dad = "dad" if "dad" in keep else _weighted(rng, DAD_WORDS)

    def parent(m: re.Match[str]) -> str:
        w = mom if m.group(1).lower() == "mom" else dad
        return w.capitalize() if m.group(1)[0].isupper() else w

    text = _PARENT_RE.sub(parent, text)
    if rng.random() < 0.6:
        text = _CONTRACT_RE.sub(lambda m: _CONTRACT[m.group(1)] if rng.random() < 0.85 else m.group(1), text)
    if rng.random() < TYPOGRAPHIC["quotes" if '"' in text else "plain"]:  # curly marks, as some real stories
        text = _OPEN_QUOTE.sub("“", text).replace('"', "”").replace("'", "’")
    return text


@dataclass(frozen=True)
class Story:
    text: str
    summary: str
    plot: str


def _pronouns(prefix: str, he: str) -> dict[str, str]:
    """{he} {He} {him} {his} {His} for the hero; {fhe} {Fhe} {fHe} ... for prefix "f"."""
    him, his = {"he": ("him", "his"), "she": ("her", "her"), "it": ("it", "its")}[he]
    out: dict[str, str] = {}
    for w, v in (("he", he), ("him", him), ("his", his)):
        out[prefix + w] = v
        out[prefix + w.capitalize()] = v.capitalize()
        if prefix:
            out[prefix.upper() + w] = v.capitalize()
    return out


HOBBIES: tuple[Word, ...] = tuple(Word(*h) for h in _STORY["hobbies"])
ACTIVITIES: tuple[Word, ...] = tuple(Word(v, "with", o) for v, o in _STORY["activities"])


def _verb_phrase(verb: Word) -> tuple[str, str, str]:
    """(base phrase, past phrase, -ing phrase) e.g. ('kick a ball', 'kicked a ball', ...)."""
    from .vocab import gerund

    obj = f" {verb.obj}" if verb.obj else ""
    return verb.text + obj, past(verb.text) + obj, gerund(verb.text) + obj


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[Word]]:
    """The built-in vocabulary by kind, for the asides' x_* slots (feeling/look adjectives, verb frames too)."""
    from .vocab import Vocabulary

    v = Vocabulary.load()
    out: dict[str, list[Word]] = {}
    for w in v.nouns:
        if w.text not in FAMILY:
            out.setdefault(w.kind, []).append(w)
    for w in v.adjectives:
        if w.text not in ASIDE_ADJECTIVE_SKIP:
            out.setdefault(f"adj_{w.kind}", []).append(w)
    out["verb"] = [w for w in v.verbs if w.kind != "other"]
    for kind, words in ASIDE_COMMON.items():  # the common words, as Words of their kind (each must be listed there)
        by_text = {w.text: w for w in out[kind]}
        out[f"common_{kind}"] = [by_text[t] for t in words]
    return out


def _aside_slots(rng: random.Random, avoid: set[str]) -> dict[str, str]:
    lex = _lexicon()

    def one(kind: str) -> Word:
        pool = lex.get(kind) or lex["thing"]
        if rng.random() < ASIDE_COMMON_SHARE:
            pool = lex.get(f"common_{kind}", pool)
        w = rng.choice(pool)
        return w if w.text not in avoid else rng.choice(pool)

    def verb() -> Word:
        return rng.choice(ACTIVITIES) if rng.random() < 0.4 else one("verb")

    vp, vp_past, ving = _verb_phrase(verb())
    vp2, vp2_past, ving2 = _verb_phrase(verb())
    things = rng.sample(lex["thing"], 3)
    return {
        "x_animal": one("animal").text, "x_animal2": one("animal").text, "x_thing": things[0].text,
        "x_thing2": things[1].text, "x_thing3": things[2].text, "x_food": one("food").text,
        "x_food2": one("food").text, "x_place": one("place").text, "x_place2": one("place").text,
        "x_nature": one("nature").text, "x_nature2": one("nature").text, "x_person": one("person").text,
        "x_look": one("adj_look").text, "x_look2": one("adj_look").text, "x_feeling": one("adj_feeling").text,
        "x_feeling2": one("adj_feeling").text, "x_vp": vp, "x_vp_past": vp_past, "x_ving": ving, "x_vp2": vp2,
        "x_vp2_past": vp2_past, "x_ving2": ving2, "x_stuff": one("stuff").text, "x_vehicle": one("vehicle").text,
    }


def _noun_kind(noun: Word) -> str:
    if noun.kind == "nature" and noun.text in SKY:
        return "sky"
    return noun.kind


def _plot_name(noun: Word, kind: str, rng: random.Random) -> str:
    plot_name = rng.choice(PLOTS_FOR_KIND.get(kind, ("try",)))
    if noun.text in FAMILY:  # "his mom was stuck in a bush" reads wrong; family joins a try plot
        plot_name = "try"
    return plot_name


def _person_name(he: str, rng: random.Random, avoid: str = "") -> str:
    """A child's name: from the few names real stories use most (weighted lists) 60% of the time, else any."""
    common = COMMON_BOY_NAMES if he == "he" else COMMON_GIRL_NAMES
    pool = BOY_NAMES if he == "he" else GIRL_NAMES
    while True:
        name = rng.choice(common if rng.random() < 0.7 else pool)
        if name != avoid:
            return name


def _cast(noun: Word, rng: random.Random) -> dict[str, str]:
    """The hero (name, pronoun, kind word), a friend, and the parent who is not the noun."""
    hero_he = rng.choice(("he", "she"))
    if rng.random() < 0.25:
        animal = rng.choice([a for a in HERO_ANIMALS if a != noun.text])
        name = rng.choice(PET_NAMES) if rng.random() < 0.4 else _person_name(hero_he, rng)
        kind_word = f"[little|little|small|young] {animal}"
    else:
        name = _person_name(hero_he, rng)
        kind_word = "[little|little|little|young|small] " + ("boy" if hero_he == "he" else "girl")
    f_he = rng.choice(("he", "she"))
    fname = _person_name(f_he, rng, avoid=name)
    mom_word = "dad" if noun.text in ("mom", "mommy") else "mom"
    return {"hero_he": hero_he, "name": name, "kind_word": kind_word, "f_he": f_he, "fname": fname,
            "mom_word": mom_word}


def _noun_forms(noun: Word, kind: str, adj: str, feeling: bool, plot_name: str) -> dict[str, Any]:
    """How the story names the noun (a/the phrases, pronoun) and what one does with it (no randomness)."""
    creature = kind in ("person", "animal")
    noun_adj = "" if (feeling and not creature) else f"{adj} "
    bare = f"toy {noun.text}" if kind == "vehicle" else noun.text
    if creature and noun.text in FAMILY:
        a_noun, the_noun = f"{{his}} {noun_adj}{bare}", f"{{his}} {bare}"
    elif kind == "stuff":
        a_noun, the_noun = f"some {noun_adj}{bare}", f"the {bare}"
    elif kind in ("place", "sky") or plot_name == "trip":
        a_noun, the_noun = f"the {noun_adj}{bare}", f"the {bare}"
    else:
        a_noun, the_noun = f"a {noun_adj}{bare}", f"the {bare}"
    if kind == "person":
        n_he = "she" if noun.text in FEMALE_PEOPLE else "he"
    else:
        n_he = "it"
    if noun.text in DRINKS:
        use, used = "drink", "drank"
    elif kind == "food" or noun.text in EDIBLE_STUFF:
        use, used = "eat", "ate"
    else:
        use, used = "play with", "played with"
    return {"bare": bare, "a_noun": a_noun, "the_noun": the_noun, "n_he": n_he, "use": use, "used": used,
            "countable": kind != "stuff"}


class _StoryWriter:
    """One story's slots, plot and trouble tag, and the template helpers that fill them (`fill`, `pick`)."""

    def __init__(self, noun: Word, verb: Word, adjective: Word, features: Sequence[str], rng: random.Random):
        self.noun, self.verb, self.adjective, self.rng = noun, verb, adjective, rng
        self.feats = set(features)
        self.kind = _noun_kind(noun)
        self.plot_name = _plot_name(noun, self.kind, rng)
        self.plot = PLOTS[self.plot_name]
        self.feeling = adjective.kind == "feeling"
        self.adj = adjective.text
        # quoted speech: always with the dialogue feature; without it, in QUOTES_WITHOUT_DIALOGUE of the stories
        # (real stories quote speech whether or not they were asked to)
        self.dialogue = "dialogue" in self.feats or (QUOTES_WITHOUT_DIALOGUE > 0 and rng.random() < QUOTES_WITHOUT_DIALOGUE)
        self.slots = self._slots()
        # "@tag " templates belong together: one trouble tag per story (rain -> the sun comes out)
        tags = sorted({t.split()[0][1:] for t in self.plot["trouble"] if t.startswith("@")})
        self.tag = rng.choice(tags) if tags else ""

    def _slots(self) -> dict[str, str]:
        rng, noun, verb, adj = self.rng, self.noun, self.verb, self.adj
        cast = _cast(noun, rng)
        name, kind_word, hero_he = cast["name"], cast["kind_word"], cast["hero_he"]
        forms = _noun_forms(noun, self.kind, adj, self.feeling, self.plot_name)
        bare, use = forms["bare"], forms["use"]
        # an "other" verb (wait, forget) is no hobby: it gets its own sentence and a hobby stands in
        hobby = rng.choice(HOBBIES) if verb.kind == "other" else verb
        vp, vp_past, ving = _verb_phrase(hobby)
        hero_desc = (f"{adj} " if self.feeling else "") + kind_word
        slots: dict[str, str] = {
            "name": name, "Name": name, "fname": cast["fname"], "Fname": cast["fname"], "kind": kind_word.split()[-1],
            "mom": f"{{his}} {cast['mom_word']}", "Mom": cast["mom_word"].capitalize(), "noun": bare,
            "nouns": plural(bare), "adj": adj, "verb": hobby.text, "real_verb": verb.text, "vp": vp,
            "vp_past": vp_past, "ving": ving, "use": use, "used": forms["used"],
            "critter": rng.choice([c for c in CRITTERS if c != noun.text]),
            "place": rng.choice(PLACES), "hero_desc": hero_desc,
            "pet": rng.choice([p for p in PET_NAMES if p != name]),
            "some": "some" if (use != "play with" or not forms["countable"]) else "a turn",
            "lots": f"lots of {plural(bare)}" if forms["countable"] else f"lots more {bare}",
            "himself": {"he": "himself", "she": "herself"}[hero_he],
        }
        slots |= _pronouns("", hero_he) | _pronouns("f", cast["f_he"]) | _pronouns("n", forms["n_he"])
        slots |= _aside_slots(rng, {noun.text, verb.text, self.adjective.text})
        self.slots = slots
        slots["a_noun"], slots["the_noun"] = self.fill(forms["a_noun"]), self.fill(forms["the_noun"])
        slots["The_noun"] = slots["the_noun"][0].upper() + slots["the_noun"][1:]
        slots["hero_desc"] = self.fill(hero_desc)
        slots["kind"] = slots["hero_desc"].split()[-1]
        slots["adj_or"] = "" if self.feeling else adj
        slots["Scene"] = self.fill(SCENES.get(self.kind, SCENES["default"])).replace("  ", " ")
        return slots

    def fill(self, t: str) -> str:
        # two passes: slot values may contain {his}-style slots and [a|b] choices
        once = expand(t, self.slots, self.rng)
        return expand(once, self.slots, self.rng) if ("{" in once or "[" in once) else once

    def _fits(self, t: str) -> bool:
        return not t.startswith("@") or self.tag in t.split()[0][1:].split("|")

    def pick(self, key: str) -> str:
        """A template of the plot's beat `key` that fits the trouble tag (quiet variants without dialogue)."""
        plot = self.plot
        if not self.dialogue and f"{key}_quiet" in plot:
            key = f"{key}_quiet"
        options = [t for t in plot[key] if self._fits(t)] or plot[key]
        if not self.dialogue:  # quoted speech only in dialogue stories
            options = [t for t in options if '"' not in t] or options
        t = self.rng.choice(options)
        return self.fill(t.split(" ", 1)[1] if t.startswith("@") else t)

    def aside(self, template: str) -> str:
        """An aside; half of them draw new x_* words (a story's later asides meet new things), half reuse the
        story's (the same animal seen again)."""
        if self.rng.random() >= ASIDE_NEW_WORDS:
            return self.fill(template)
        saved = self.slots
        self.slots = saved | _aside_slots(self.rng, {self.noun.text, self.verb.text, self.adjective.text})
        try:
            return self.fill(template)
        finally:
            self.slots = saved

    def maybe(self, pool: tuple[str, ...], p: float) -> list[str]:
        return [self.fill(self.rng.choice(pool))] if self.rng.random() < p else []

    def paragraphs(self) -> list[list[str]]:
        """The five beats as lists of sentences (feature-dependent), asides inserted."""
        rng, feats, dialogue, pick, maybe = self.rng, self.feats, self.dialogue, self.pick, self.maybe
        bad, twist, conflict = "bad ending" in feats, "plot twist" in feats, "conflict" in feats
        # paragraph 1: who, what they love, (hint)
        p1 = [self.fill(rng.choice(OPENINGS)), self.fill(rng.choice(TRAITS)), *maybe(LIFE, 0.8), *maybe(LIFE, 0.3)]
        if len(p1) == 4 and p1[2] == p1[3]:
            p1.pop()
        if self.verb.kind == "other":
            p1.append(self.fill(rng.choice(OTHER_VERB)))
        if "foreshadowing" in feats:
            p1.append(pick("hint"))
        # paragraph 2: the noun enters
        p2 = [pick("setup"), *maybe(COLOR, 0.5)]
        if dialogue:
            p2.append(pick("talk_setup"))
        # paragraph 3: trouble or conflict
        p3 = [pick("conflict") if conflict else pick("trouble"), *maybe(FEEL_TROUBLE, 0.6)]
        if dialogue and not conflict:
            p3.append(pick("talk_trouble"))
        # paragraph 4: resolution
        outcome = "bad" if bad else "good"
        p4 = [pick(f"twist_{outcome}") if twist else pick(outcome), *maybe(FEEL_BAD if bad else FEEL_GOOD, 0.6)]
        if conflict and not bad:
            p4.append(pick("resolve_conflict"))
        if dialogue:
            p4.append(pick(f"talk_{outcome}"))
        # paragraph 5: ending + moral
        p5 = [pick(f"end_{outcome}")]
        if "moral value" in feats:
            p5.append(pick("moral"))
        asides = [a for a in ASIDES if dialogue or '"' not in a]
        chosen = rng.sample(asides, rng.choice(ASIDE_COUNTS))  # no aside twice in a story
        if dialogue:  # quoted exchanges, as many as real stories that quote speech have
            chosen += rng.sample(CHATS, rng.choice(CHAT_COUNTS))
        for template in chosen:
            # never inside the trouble beat, and never the story's last sentence
            para = rng.choice((p1, p2, p4, p5) if len(p5) > 1 else (p1, p2, p4))
            para.insert(rng.randint(1, len(para) - (para is p5)), self.aside(template))
        closing = self.fill(rng.choice(ENDINGS_BAD if bad else ENDINGS_GOOD))  # last: nothing after "The end."
        if closing:
            p5.append(closing)
        return [p1, p2, p3, p4, p5]

    def text(self, paras: list[list[str]]) -> str:
        """Join, vary and apply the register; then make sure the sampled words appear (the safety net)."""
        rng, adj, noun, verb = self.rng, self.adj, self.noun, self.verb
        if rng.random() < 0.5:  # 4 paragraphs half the time: setup joins the opening
            paras = [paras[0] + paras[1], *paras[2:]]
        keep = {noun.text, verb.text, adj, *verb.obj.split()}
        joined = "\n\n".join(" ".join(s for s in p if s) for p in paras)
        text = embellish(vary(joined, rng, keep), rng, keep, self.slots["name"], self.slots["he"])
        text = tidy(register(text, rng, keep))
        # the sampled words must appear; the plot usually guarantees it, this is the safety net
        low = text.lower()
        extra = []
        if not re.search(rf"\b{re.escape(adj)}\b", low):
            extra.append(self.fill(SAFETY_NET["adjective_feeling" if self.feeling else "adjective_look"]))
        if not re.search(rf"\b{re.escape(noun.text)}", low):
            extra.append(self.fill(SAFETY_NET["noun"]))
        if extra:
            text = tidy(text + " " + " ".join(extra))
        return text


# Embellishment (templates/parts.yaml `embellish`): look adjectives before nouns, manner phrases after verbs that
# end a clause, speech verbs that fit the quote's mark. Lists repeat a word to weight it.
_EMB = _PARTS["embellish"]
_NOUN_ADJ: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _EMB["noun_adjectives"].items()}
_MANNER: tuple[str, ...] = tuple(_EMB["manner"])
_MANNER_SKIP = frozenset(_EMB["manner_skip"])
_NOUN_SKIP = frozenset(_EMB["noun_skip"])
_SPEECH: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _EMB["speech"].items()}
_SPEECH_MANNER: tuple[str, ...] = tuple(_EMB["speech_manner"])
_OPENERS: tuple[str, ...] = tuple(_EMB["openers"])
_RATE: dict[str, float] = {k: float(v) for k, v in _EMB["rates"].items()}
_OPENER_RE = re.compile(r"(?<=[.!] )(He|She|They|[A-Z][a-z]+) (?=[a-z])")
_NAME_SET = frozenset(NAMES) | {"He", "She", "They"}
_DETS = r"the|a|an|his|her|their|its|my|your|our|that|this|some"
_JOIN_RE = re.compile(r"(?<=[a-z])\. (He|She|They) (?=[a-z])")
_CLAUSE_END = re.compile(r"\b([a-z]+)(?=[.,!])")
_SPEECH_RE = re.compile(r'([,!?])(["”]) ([A-Z][a-z]+|he|she|they|it) said\b')


@lru_cache(maxsize=1)
def _embellish_tables() -> tuple[dict[str, str], re.Pattern[str], frozenset[str]]:
    """noun (and plural) -> kind for the kinds that take a look adjective; the noun and clause-end verb patterns."""
    from .vocab import Vocabulary

    v = Vocabulary.load()
    kinds: dict[str, str] = {}
    for w in v.nouns:
        if w.kind in _NOUN_ADJ and w.text not in FAMILY and w.text not in _NOUN_SKIP:
            kinds.setdefault(w.text, w.kind)
            kinds.setdefault(plural(w.text), w.kind)
    noun_re = re.compile(rf"\b({_DETS}) ([a-z]+)\b(?!['’-])")
    verbs = frozenset({past(w.text) for w in v.verbs if w.kind == "alone" and not w.obj} - _MANNER_SKIP)
    return kinds, noun_re, verbs


def embellish(text: str, rng: random.Random, keep: set[str], hero: str = "", he: str = "he") -> str:
    """Compositional variety over every template: some nouns get a look adjective (the same one each time a
    noun gets one in a story, so the dog stays the brown dog), some clause-ending verbs a manner phrase, and a
    quote's "said" a speech verb that fits its mark (asked after "?", shouted after "!"), sometimes inverted
    ('"Hi," said Tom'). Sampled words (`keep`) get no adjective (the sampled one describes them). Then, as real
    stories do, some sentences that start with the hero's name (`hero`, after the first two mentions) start with
    the hero's pronoun instead, and some short sentences join the next with ", and"."""
    kinds, noun_re, verbs = _embellish_tables()
    chosen: dict[str, str] = {}

    def noun(m: re.Match[str]) -> str:
        det, word = m.group(1), m.group(2)
        if word not in kinds or word in keep or rng.random() > _RATE["adjective"]:
            return m.group(0)
        key = word
        if key not in chosen:
            chosen[key] = rng.choice(_NOUN_ADJ[kinds[word]])
        adj = chosen[key]
        if det in ("a", "an"):
            det = "an" if adj[0] in "aeiou" else "a"
        return f"{det} {adj} {word}"

    def manner(m: re.Match[str]) -> str:
        if m.group(1) not in verbs or rng.random() > _RATE["manner"]:
            return m.group(0)
        return f"{m.group(1)} {rng.choice(_MANNER)}"

    def speech(m: re.Match[str]) -> str:
        mark, quote, who = m.groups()
        verb = rng.choice(_SPEECH["question" if mark == "?" else "exclaim" if mark == "!" else "statement"])
        if rng.random() < _RATE["speech_manner"]:
            verb = f"{verb} {rng.choice(_SPEECH_MANNER)}"
        if who[0].isupper() and who not in ("He", "She", "They", "It") and " " not in verb and rng.random() < _RATE["inversion"]:
            return f"{mark}{quote} {verb} {who}"
        return f"{mark}{quote} {who} {verb}"

    def opener(m: re.Match[str]) -> str:
        who = m.group(1)
        if who not in _NAME_SET or rng.random() > _RATE["opener"]:
            return m.group(0)
        return f"{rng.choice(_OPENERS)} {who.lower() if who in ('He', 'She', 'They') else who} "

    text = noun_re.sub(noun, text)
    cut = text.find("\n")  # no connective in the opening paragraph: nothing has happened yet
    if cut > 0:
        text = text[:cut] + _OPENER_RE.sub(opener, text[cut:])
    text = _CLAUSE_END.sub(manner, text)
    text = _SPEECH_RE.sub(speech, text)
    if hero:
        seen = [0]

        def pronoun(m: re.Match[str]) -> str:
            seen[0] += 1
            return m.group(0) if seen[0] <= 2 or rng.random() > _RATE["pronoun"] else he.capitalize()

        text = re.sub(rf"(?<=[.!?] ){re.escape(hero)}\b(?!['’])", pronoun, text)

    def join(m: re.Match[str]) -> str:
        return m.group(0) if rng.random() > _RATE["join"] else f", and {m.group(1).lower()} "

    cut = text.find("\n")  # the opening paragraph keeps its short sentences
    return text if cut < 0 else text[:cut] + _JOIN_RE.sub(join, text[cut:])


def write_story(
    noun: Word, verb: Word, adjective: Word, features: Sequence[str], rng: random.Random
) -> Story:
    """One story that uses the three words and honours the features (see module docstring)."""
    w = _StoryWriter(noun, verb, adjective, features, rng)
    text = w.text(w.paragraphs())
    summary = tidy(w.pick(f"summary_{'bad' if 'bad ending' in w.feats else 'good'}"))
    # one newline between paragraphs, as in TinyStories (a blank line is a token pattern real stories lack)
    return Story(text=text.replace("\n\n", "\n"), summary=summary, plot=w.plot_name)

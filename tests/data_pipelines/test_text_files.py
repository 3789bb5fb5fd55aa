"""One text-reading rule for curate, tokenize and eval (data_pipelines/text_files.py): the same file gives
the same documents through all three readers, bad UTF-8 included."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

from data_pipelines.curate.readers import ReaderOptions, ReadStats, read_source
from data_pipelines.text_files import Utf8Stats, decode_utf8, iter_blocks
from data_pipelines.tokenize import sources
from train.eval.loss import read_documents

RAW = (
    b"One story.\r\n<|endoftext|>\r\n"
    b"Two \xff story.\n<|endoftext|>\n"
    b"\n<|endoftext|>\n"  # an empty document between two separators
    b"Three.<|endoftext|>Four, on the same line.\n"
)
WANT = ["One story.", "Two \ufffd story.", "", "Three.", "Four, on the same line.\n"]


def test_blocks_offsets_and_decoding(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(RAW)
    blocks = list(iter_blocks(p))
    stats = Utf8Stats()
    assert [decode_utf8(b, stats) for _, b in blocks] == WANT
    assert stats.invalid_utf8_chars == 1 and stats.invalid_utf8_docs == 1
    for i, (off, _) in enumerate(blocks):  # every offset resumes at its own block
        assert [b for _, b in iter_blocks(p, offset=off)] == [b for _, b in blocks[i:]]
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(RAW))
    assert [b for _, b in iter_blocks(gz)] == [b for _, b in blocks]
    assert [b for _, b in iter_blocks(p, "")] == [RAW]
    multi = [b for _, b in iter_blocks(p, "\n<|endoftext|>\n")]  # a separator spanning lines
    assert multi[:3] == [b"One story.\r\n<|endoftext|>\r\nTwo \xff story.", b"", b"Three.<|endoftext|>Four, on the same line.\n"]


def test_curate_tokenize_and_eval_read_the_same_documents(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(RAW)
    stats = ReadStats()
    curate = [d.text for d in read_source(str(p), ReaderOptions(), stats)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = [t for batch in sources.read(p, sources.Position(0, 0), 10) for t in batch]
        ev = read_documents(p)
    nonempty = [w for w in WANT if w.strip()]
    assert curate == nonempty and stats.invalid_utf8_chars == 1 and stats.empty_docs == 1
    assert tok == WANT  # tokenize keeps the empty row (row numbers are part of its keys)
    assert ev == nonempty

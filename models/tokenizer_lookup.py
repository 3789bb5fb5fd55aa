"""Where the tokenizer.json of a model (or of a shards folder) is: one search, one order, used by every room.

The order, first match wins:
1. `hint`, when it is a file (the loader's own answer, e.g. an HF folder's tokenizer or a GGUF's extracted one);
2. for the folder itself (the path, or the folder holding a file such as a .ckpt) and then up to `levels` parents,
   nearest first: `<d>/tokenizer.json` (a model dir or export carries its own), `<d>/tokenizer/tokenizer.json` (a
   run directory's tokenize output), `<d>/hf/tokenizer.json` (a run directory's Hugging Face export).
With `sha256`, a candidate must also hash to it (shards record the hash of the tokenizer that wrote them), so a
stale tokenizer.json nearer the path is skipped rather than used.
"""

from __future__ import annotations

from pathlib import Path

from models.hashing import file_sha256

TOKENIZER = "tokenizer.json"
LEVELS = 3
"""Parents searched above the folder: a model under run/checkpoints/final/ finds run/tokenizer/tokenizer.json."""


def tokenizer_candidates(path: str | Path, hint: str | Path | None = None, levels: int = LEVELS) -> list[Path]:
    """Every place looked at, in order (the error message lists them)."""
    path = Path(path)
    out = [Path(hint)] if hint else []
    folder = path if path.is_dir() else path.parent
    for d in [folder, *list(folder.parents)[:levels]]:
        out += [d / TOKENIZER, d / "tokenizer" / TOKENIZER, d / "hf" / TOKENIZER]
    return out


def find_tokenizer(path: str | Path, hint: str | Path | None = None, sha256: str | None = None,
                   levels: int = LEVELS) -> Path | None:
    """The first tokenizer.json in the documented order (matching `sha256` when given); None if there is none."""
    for cand in tokenizer_candidates(path, hint, levels):
        if cand.is_file() and (not sha256 or file_sha256(cand) == sha256):
            return cand
    return None


def require_tokenizer(path: str | Path, hint: str | Path | None = None, sha256: str | None = None) -> Path:
    """find_tokenizer, or a ValueError naming the model and every place looked at."""
    found = find_tokenizer(path, hint, sha256)
    if found is None:
        looked = ", ".join(str(c) for c in tokenizer_candidates(path, hint))
        raise ValueError(f"model: no tokenizer.json for {path} (looked in {looked})")
    return found

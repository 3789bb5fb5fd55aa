"""Text in, text out: `tinyfoundry generate` over any model the loader understands (a checkpoint folder, a Lightning
.ckpt, an HF export, a compressed model), with the tokenizer that travels with it."""

from __future__ import annotations

from pathlib import Path

from launch.config import ConfigError


def find_tokenizer(model_path: Path, hint: Path | None = None) -> Path:
    """The tokenizer.json that travels with a model (models/tokenizer_lookup.py's order)."""
    from models.tokenizer_lookup import require_tokenizer

    try:
        return require_tokenizer(model_path, hint)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_any(model_path: Path):
    """(model, tokenizer path) for a model folder, an export, a .ckpt, or a compressed model."""
    import models

    model_path = Path(model_path)
    if not model_path.exists():
        raise ConfigError(f"--model: {model_path} does not exist")
    from models.compress import is_compressed_dir, load_compressed

    if model_path.is_dir() and is_compressed_dir(model_path):
        model, tok = load_compressed(model_path)
    else:
        model, tok = models.load_model(model_path)
    model.eval()
    return model, find_tokenizer(model_path, tok)


def eos_token_id(tok, tokenizer_file: Path | None) -> int | None:
    """The end-of-text id: `eos_token` of the tokenizer_config.json beside the tokenizer, else <|endoftext|>."""
    import json

    if tokenizer_file is not None:
        cfg_file = Path(tokenizer_file).parent / "tokenizer_config.json"
        if cfg_file.is_file():
            eos = json.loads(cfg_file.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str) and tok.token_to_id(eos) is not None:
                return tok.token_to_id(eos)
    for name in ("<|endoftext|>", "</s>", "<|im_end|>"):
        if tok.token_to_id(name) is not None:
            return tok.token_to_id(name)
    return None


def encode_prompt(tok, text: str) -> list[int]:
    """Prompt ids exactly as the tokenizer itself (and so transformers' AutoTokenizer of the HF export) makes
    them: its own post-processor decides BOS (ours adds none). `generate`, `serve` and the HF export therefore
    see the same ids and greedy text agrees across the three (tested). An empty prompt starts from EOS, the
    token every training document follows."""
    ids = tok.encode(text).ids
    if not ids:
        eos = eos_token_id(tok, None)
        ids = [eos] if eos is not None else [0]
    return ids


def fit_to_context(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """Make prompt + continuation fit the context: cap the continuation so at least half the context (or the
    whole prompt) stays, then keep the prompt's tail. Shared by `generate` and `serve`."""
    max_new_tokens = max(1, min(max_new_tokens, context - 1 - min(len(ids), context // 2)))
    keep = context - 1 - max_new_tokens
    return (ids[-keep:] if len(ids) > keep else ids), max_new_tokens


def generate_text(model_path: Path, prompt: str, max_new_tokens: int = 128, temperature: float = 0.8,
                  top_k: int = 0, top_p: float = 1.0, seed: int | None = 0) -> str:
    from tokenizers import Tokenizer

    from models.generate import generate

    model, tok_path = load_any(Path(model_path))
    tok = Tokenizer.from_file(str(tok_path))
    ids = encode_prompt(tok, prompt)
    eos = eos_token_id(tok, tok_path)
    ids, max_new_tokens = fit_to_context(ids, max_new_tokens, int(model.cfg.max_seq_len))
    out = generate(model, [ids], max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   eos_id=eos, seed=seed)[0]
    if eos is not None and out and out[-1] == eos:
        out = out[:-1]
    # decode prompt+continuation together so byte-level pieces that span the boundary come out whole
    full = tok.decode(ids + out)
    plain_prompt = tok.decode(ids)
    return full[len(plain_prompt):] if full.startswith(plain_prompt) else full

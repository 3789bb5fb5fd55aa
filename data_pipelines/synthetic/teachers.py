"""Teachers: who writes the stories. All return one `Answer` per request, in request order.

Design
- `GrammarTeacher` needs no model (the default, and the demo's). It ignores the prompt text and
  writes from the request's words and features directly; with several workers it fans out over
  processes (requests are small and picklable).
- `OpenAITeacher` talks to any OpenAI-compatible server through the official `openai` client, on a
  thread pool (`num_concurrent` requests in flight). The client's own retries are off: we retry
  429 / 408 / 409 / 5xx / timeouts / connection errors with exponential backoff + jitter (or the
  server's retry-after), and fail fast on 401 / 403 / 404 (a wrong key, model name or URL would
  fail every request). A request that still fails, or gets another 4xx (400 for one prompt, e.g. a
  content filter), yields `Answer(text=None)` and is counted as `teacher_error`.
- Resumability is the `Journal`: every answer is appended (one JSON line, flushed) the moment it
  arrives, keyed by request id and prompt hash; a rerun replays journaled answers instead of
  sending those prompts again. A torn last line (crash mid-write) is ignored.
- `HFTeacher` (transformers causal LM from a folder) and `TinyfoundryTeacher` (our own model dir,
  export or checkpoint, via models.load_model + models.generate) generate in batches in-process.
  `TinyfoundryLM` is shared with `launch/serve.py`.
- API keys are read from the environment variable the config names and never logged.
- `openai.word_bias` adds a logit bias to the first token of each required word (" jump" and " Jump", ids from the
  server's own tokenizer at llama.cpp's /extras/tokenize, cached): SmolLM2-135M ignored one of its three words in
  most answers (`missing_words`, LOG.md session 9); a bias of +3 makes it use them while it still chooses where.
  The gate is unchanged: a story without a word is still dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LocalTeacherConfig, OpenAITeacherConfig, SynthConfig
from .gates import lemma_forms
from .grammar import write_story
from .prompts import EXAMPLE_REQUEST, StoryRequest, instruct_header, opening_for
from .teacher_registry import Teacher, register_teacher, teacher_backend
from .vocab import tokenize_words

SUMMARY_INSTRUCTION = (
    "\nAfter the story, write one line that starts with 'Summary:' and sums up the story in one sentence."
)


@dataclass(frozen=True)
class Answer:
    """One teacher answer. Best-of-n answers carry every candidate; `run_synth` picks one after the gates."""

    text: str | None
    summary: str = ""
    error: str = ""
    finish_reason: str = ""
    """The server's finish_reason ("length" = cut at max_tokens: the truncation gate drops it)."""
    score: float | None = None
    """Mean token log-prob under the teacher (higher = the teacher is surer), when the server returns it."""
    candidates: tuple[Answer, ...] = ()
    raw: str = ""
    """The server's text before clean_answer (journaled: the gates' fixture is made of these)."""

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"text": self.text, "summary": self.summary}
        if self.finish_reason:
            row["finish_reason"] = self.finish_reason
        if self.score is not None:
            row["score"] = self.score
        if self.candidates:
            row["candidates"] = [c.to_row() for c in self.candidates]
        if self.raw:
            row["raw"] = self.raw
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Answer:
        return cls(text=row["text"], summary=row.get("summary", ""), finish_reason=row.get("finish_reason", ""),
                   score=row.get("score"), candidates=tuple(cls.from_row(c) for c in row.get("candidates", ())),
                   raw=row.get("raw", ""))


_PREAMBLE = re.compile(r"^\s*(?:sure|certainly|of course|okay|here(?:'s| is)|title)\b[^\n]*\n+", re.IGNORECASE)
_SUMMARY_LINE = re.compile(r"\n\s*\**summary\**\s*:\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)


def clean_answer(raw: str) -> tuple[str, str]:
    """(story, summary): strip a chatty first line ("Sure! Here is a story:"), a leading 'Story:',
    and a trailing 'Summary: ...' line (returned separately)."""
    text = raw.replace("\r\n", "\n").strip()
    summary = ""
    m = _SUMMARY_LINE.search(text)
    if m:
        summary = " ".join(m.group(1).split())
        text = text[: m.start()].rstrip()
    for _ in range(2):
        m2 = _PREAMBLE.match(text)
        if m2 and len(m2.group(0)) < 120:
            text = text[m2.end() :]
    text = re.sub(r"^\s*\**story\**\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip(), summary


# ------------------------------------------------------------------------------------------------
# Journal


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


class Journal:
    """Append-only JSONL of answered requests: {"id", "prompt_sha", "text", "summary", "model", "t"} (+ the
    finish reason, score and best-of-n candidates), one line per request: a killed run loses at most the
    requests in flight, and a replayed line is never sent again, so nothing is lost or counted twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.answers: dict[str, dict[str, Any]] = {}
        if path.is_file():
            with path.open("r", encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.answers[row["id"]] = row
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # torn last line after a crash
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")

    def get(self, req: StoryRequest) -> Answer | None:
        row = self.answers.get(req.id)
        if row is None or row.get("prompt_sha") != prompt_hash(req.full_prompt):
            return None
        return Answer.from_row(row)

    def record(self, req: StoryRequest, ans: Answer, model: str) -> None:
        if ans.text is None and not any(c.text is not None for c in ans.candidates):
            return  # failures are retried on the next run
        row = {"id": req.id, "prompt_sha": prompt_hash(req.full_prompt), **ans.to_row(), "model": model,
               "t": round(time.time(), 3)}
        with self._lock:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()
            self.answers[req.id] = row

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()


class JournaledTeacher:
    """Wraps a model teacher: journaled answers are replayed, the rest sent and journaled."""

    def __init__(self, inner: Any, journal: Journal) -> None:
        self.inner = inner
        self.journal = journal
        self.name = inner.name
        self.model = inner.model
        self.num_replayed = 0

    @property
    def num_retries(self) -> int:
        return getattr(self.inner, "num_retries", 0)

    def generate(self, reqs: Sequence[StoryRequest], on_answer: Callable | None = None) -> list[Answer]:
        def record(r: StoryRequest, a: Answer) -> None:
            self.journal.record(r, a, self.model)
            if on_answer is not None:
                on_answer(r, a)

        out: list[Answer | None] = [self.journal.get(r) for r in reqs]
        todo = [i for i, a in enumerate(out) if a is None]
        self.num_replayed += len(reqs) - len(todo)
        if todo:
            fresh = self.inner.generate([reqs[i] for i in todo], on_answer=record)
            for i, a in zip(todo, fresh):
                out[i] = a
        return [a for a in out if a is not None]

    def close(self) -> None:
        self.inner.close()
        self.journal.close()


# ------------------------------------------------------------------------------------------------
# Offline grammar


def _grammar_one(req: StoryRequest) -> Answer:
    story = write_story(req.noun, req.verb, req.adjective, req.features, req.rng())
    return Answer(text=story.text, summary=story.summary)


class GrammarTeacher:
    name = "grammar"
    model = "tinyfoundry-grammar-v1"

    def __init__(self, num_workers: int = 1) -> None:
        self.num_workers = num_workers
        self.pool = ProcessPoolExecutor(num_workers) if num_workers > 1 else None

    def generate(self, reqs: Sequence[StoryRequest], on_answer: Callable | None = None) -> list[Answer]:
        if self.pool is None:
            out = [_grammar_one(r) for r in reqs]
        else:
            chunk = max(1, len(reqs) // (4 * self.num_workers))
            out = list(self.pool.map(_grammar_one, reqs, chunksize=chunk))
        if on_answer is not None:
            for r, a in zip(reqs, out):
                on_answer(r, a)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible server


class TeacherConfigError(RuntimeError):
    """The server refuses every request the same way (bad key, unknown model, wrong URL path)."""


class OpenAITeacher:
    name = "openai"

    def __init__(self, cfg: OpenAITeacherConfig, system_prompt: str = "", want_summary: bool = False) -> None:
        import openai

        self.cfg = cfg
        self.openai = openai
        self.system_prompt = system_prompt
        self.want_summary = want_summary
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.client = openai.OpenAI(
            base_url=cfg.base_url, api_key=key or "not-needed", timeout=cfg.timeout_s, max_retries=0
        )
        self.num_retries = 0
        self._stats_lock = threading.Lock()
        self._logprobs_ok = True
        self._token_cache: dict[str, int] = {}
        self.model = cfg.model or self._first_model()
        self._template: Any = None  # the model's chat template, loaded on the first request with an opening
        self.pool = ThreadPoolExecutor(cfg.num_concurrent, thread_name_prefix="synth-openai")

    def _first_model(self) -> str:
        models = self._with_retries(lambda: list(self.client.models.list()))
        if not models:
            raise TeacherConfigError(f"openai.model: the server at {self.cfg.base_url} lists no models; set one")
        return models[0].id

    def _retryable(self, e: Exception) -> bool:
        o = self.openai
        if isinstance(e, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        if isinstance(e, o.APIStatusError):
            return e.status_code in (408, 409, 429) or e.status_code >= 500
        return False

    def _with_retries(self, fn: Callable[[], Any]) -> Any:
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below
                if not self._retryable(e):
                    if isinstance(e, self.openai.APIStatusError) and e.status_code in (401, 403, 404):
                        raise TeacherConfigError(
                            f"openai: {self.cfg.base_url} answered {e.status_code} ({type(e).__name__}); "
                            "check openai.base_url, openai.model and the API key variable"
                        ) from None
                    raise
                if attempt == self.cfg.max_retries:
                    raise
                with self._stats_lock:
                    self.num_retries += 1
                retry_after = None
                resp = getattr(e, "response", None)
                if resp is not None:
                    try:
                        retry_after = float(resp.headers.get("retry-after", ""))
                    except (TypeError, ValueError):
                        retry_after = None
                time.sleep(min(60.0, retry_after if retry_after is not None else delay * (1 + random.random())))
                delay *= 2

    def _first_token(self, text: str) -> int:
        """The first token id of `text` in the server's tokenizer (llama.cpp server's POST /extras/tokenize)."""
        with self._stats_lock:
            if text in self._token_cache:
                return self._token_cache[text]
        root = self.cfg.base_url.rstrip("/").removesuffix("/v1")
        body = json.dumps({"input": text}).encode()
        http = urllib.request.Request(f"{root}/extras/tokenize", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(http, timeout=self.cfg.timeout_s) as r:
                ids = json.load(r)["tokens"]
        except (OSError, ValueError, KeyError) as e:
            raise TeacherConfigError(f"openai.word_bias: {root}/extras/tokenize did not answer with tokens ({e}); "
                                     "word_bias needs llama.cpp's server (or set it to 0)") from None
        with self._stats_lock:
            self._token_cache[text] = ids[0]
        return ids[0]

    def word_bias(self, req: StoryRequest, given: str = "") -> dict[str, float]:
        """logit_bias for the request's required words: their first token, lower-case and capitalised, after a space.
        Words already in `given` (the story's opening) get none: biased there too, a small teacher repeats them
        ("a scary camera" a dozen times in one story, LOG.md)."""
        have = {w.lower() for w in tokenize_words(given)}
        lemmas = [lemma for lemma in req.words if not (lemma_forms(lemma) & have)]
        spellings = {f" {w}" for lemma in lemmas for w in (lemma.split()[0], lemma.split()[0].capitalize())}
        return {str(self._first_token(s)): self.cfg.word_bias for s in sorted(spellings)}

    @property
    def chat_endpoint(self) -> bool:
        """/v1/chat/completions; else /v1/completions (a base model, or an opening the teacher continues)."""
        return self.cfg.api == "chat" and not self.cfg.opening

    def chat_template(self) -> Any:
        """The served model's chat template (launch/chat.py: tokenizer_config.json or GGUF metadata), from
        `openai.chat_template` or else the model file the server names (llama.cpp's server names its GGUF)."""
        if self._template is None:
            from launch.chat import load_chat_template

            where = self.cfg.chat_template or self.model
            path = Path(where)
            if not where or not path.exists():
                raise TeacherConfigError(
                    f"openai.opening needs the model's chat template: {where!r} is not a file or folder here; set "
                    "openai.chat_template to the served model's GGUF file or model folder")
            self._template = load_chat_template(path, None)
        return self._template

    def _sampling(self, req: StoryRequest, j: int) -> dict[str, Any]:
        """The request's sampling fields: OpenAI's own as keywords, the server extensions in extra_body."""
        c = self.cfg
        kw: dict[str, Any] = {"max_tokens": c.max_tokens, "temperature": c.temperature, "top_p": c.top_p}
        if c.frequency_penalty:
            kw["frequency_penalty"] = c.frequency_penalty
        if c.presence_penalty:
            kw["presence_penalty"] = c.presence_penalty
        if c.stop:
            kw["stop"] = list(c.stop)
        if c.word_bias:
            bias = self.word_bias(req, opening_for(req, c.opening) if c.opening else "")
            if bias:
                kw["logit_bias"] = bias
        if c.seed >= 0:  # one seed per (run, request, candidate): reruns ask the same, candidates differ
            kw["seed"] = int.from_bytes(hashlib.sha1(f"{c.seed}:{req.seed}:{req.index}:{j}".encode()).digest()[:4],
                                        "little") & 0x7FFFFFFF
        extra: dict[str, Any] = {}
        if c.repeat_penalty:
            extra["repeat_penalty"] = c.repeat_penalty
        if c.top_k:
            extra["top_k"] = c.top_k
        if extra:
            kw["extra_body"] = extra
        if c.candidates > 1 and c.scorer == "logprob" and self._logprobs_ok:
            if self.chat_endpoint:  # llama.cpp's server returns chat log-probs only when top_logprobs is set too
                kw |= {"logprobs": True, "top_logprobs": 1}
            else:
                kw["logprobs"] = 1
        return kw

    def _ask_one(self, req: StoryRequest, j: int) -> Answer:
        summary_ask = SUMMARY_INSTRUCTION if self.want_summary else ""
        c = self.cfg
        kw = self._sampling(req, j)
        score = None
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        for ex in req.examples:  # few-shot as earlier turns: the teacher answers a new request, not the example
            messages += [{"role": "user", "content": EXAMPLE_REQUEST}, {"role": "assistant", "content": ex}]
        messages.append({"role": "user", "content": req.prompt + summary_ask})
        if self.chat_endpoint:
            resp = self._with_retries(lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, **kw))
            choice = resp.choices[0]
            raw = choice.message.content or ""
            lp = getattr(choice, "logprobs", None)
            content = getattr(lp, "content", None) if lp is not None else None
            if content:
                score = sum(t.logprob for t in content) / len(content)
        else:  # a base model's plain prompt, or an opening the teacher continues (assistant prefill)
            opening = opening_for(req, c.opening) if c.opening else ""
            if c.api == "chat":  # the chat as the model's own template renders it, then the story's opening
                template = self.chat_template()
                prompt = template.render(messages, add_generation_prompt=True) + opening
                kw["stop"] = list(dict.fromkeys([*kw.get("stop", []), *template.stop_strings]))
            else:
                prompt = req.full_prompt + summary_ask + ("\n\n" + opening if opening else "")
            resp = self._with_retries(lambda: self.client.completions.create(model=self.model, prompt=prompt, **kw))
            choice = resp.choices[0]
            raw = opening + (choice.text or "")
            lp = getattr(choice, "logprobs", None)
            tl = [x for x in (getattr(lp, "token_logprobs", None) or []) if x is not None] if lp is not None else []
            if tl:
                score = sum(tl) / len(tl)
        story, summary = clean_answer(raw)
        return Answer(text=story, summary=summary, finish_reason=choice.finish_reason or "", score=score, raw=raw)

    def _ask(self, req: StoryRequest) -> Answer:
        if self.cfg.candidates == 1:
            return self._ask_one(req, 0)
        cands: list[Answer] = []
        for j in range(self.cfg.candidates):
            try:
                cands.append(self._ask_one(req, j))
            except TeacherConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - one failed candidate does not sink the others
                cands.append(Answer(text=None, error=type(e).__name__))
        if all(a.text is None for a in cands):
            return Answer(text=None, error=cands[0].error)
        first = next(a for a in cands if a.text is not None)
        return Answer(text=first.text, summary=first.summary, finish_reason=first.finish_reason,
                      score=first.score, candidates=tuple(cands), raw=first.raw)

    def generate(self, reqs: Sequence[StoryRequest], on_answer: Callable | None = None) -> list[Answer]:
        def one(req: StoryRequest) -> Answer:
            try:
                ans = self._ask(req)
            except TeacherConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - after retries: count it, keep going
                return Answer(text=None, error=type(e).__name__)
            if on_answer is not None:
                on_answer(req, ans)
            return ans

        futures = [self.pool.submit(one, r) for r in reqs]
        try:
            return [f.result() for f in futures]
        except TeacherConfigError:
            for f in futures:  # the server refuses everything: do not send the queued requests
                f.cancel()
            raise

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


# ------------------------------------------------------------------------------------------------
# Local models


def local_prefix(cfg: LocalTeacherConfig, req: StoryRequest) -> str:
    if cfg.prefix == "instruct":
        return instruct_header(req) + "Story: "
    if cfg.prefix == "once":
        return "Once upon a time"
    return req.full_prompt


class TinyfoundryLM:
    """A tinyfoundry model + its tokenizer: text in, text out (used by the teacher and by launch/serve.py).

    Prompts are encoded after an <|endoftext|>, as training saw every document start; the
    continuation is decoded together with the prompt so byte-level pieces spanning the boundary
    come out whole. One generate call at a time per model (a lock), so threads can share it.
    """

    def __init__(self, model: Any, tokenizer_file: str | Path) -> None:
        from tokenizers import Tokenizer

        self.model = model.eval()
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.eos_id = self.tokenizer.token_to_id("<|endoftext|>")
        self.context = int(model.cfg.max_seq_len)
        self.lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> TinyfoundryLM:
        import torch

        from models import load_model

        model, tok_path = load_model(Path(path), device=device, dtype=torch.float32)
        if tok_path is None or not Path(tok_path).is_file():
            raise ValueError(f"{path}: no tokenizer.json travels with this model")
        return cls(model, tok_path)

    def encode(self, text: str) -> list[int]:
        start = [self.eos_id] if self.eos_id is not None else []
        return start + self.tokenizer.encode(text, add_special_tokens=False).ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _decode_new(self, prompt_ids: list[int], new: list[int]) -> str:
        full = self.tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
        head = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        return full[len(head) :] if full.startswith(head) else self.tokenizer.decode(new, skip_special_tokens=True)

    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
        top_p: float = 1.0, seed: int | None = None,
    ) -> list[tuple[str, int, int, str]]:
        """(text, prompt_tokens, completion_tokens, finish_reason) per prompt; max_new_tokens is capped
        to the context (the prompt is then cropped from the left by models.generate)."""
        import torch

        from models.generate import generate

        max_new_tokens = max(0, min(max_new_tokens, self.context - 1))
        ids = [self.encode(p) for p in prompts]
        with self.lock, torch.no_grad():
            outs = generate(self.model, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, eos_id=self.eos_id, seed=seed)
        return [
            (self._decode_new(i, o), len(i), len(o), "length" if len(o) >= max_new_tokens else "stop")
            for i, o in zip(ids, outs)
        ]


class TinyfoundryTeacher:
    name = "tinyfoundry"

    def __init__(self, cfg: LocalTeacherConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.lm = TinyfoundryLM.load(cfg.model_path, cfg.device)
        self.model = str(Path(cfg.model_path).resolve().name)

    def generate(self, reqs: Sequence[StoryRequest], on_answer: Callable | None = None) -> list[Answer]:
        out: list[Answer] = []
        c = self.cfg
        for s in range(0, len(reqs), c.batch_size):
            batch = reqs[s : s + c.batch_size]
            prefixes = [local_prefix(c, r) for r in batch]
            res = self.lm.complete(prefixes, c.max_new_tokens, c.temperature, c.top_k, c.top_p,
                                   seed=hash((self.seed, batch[0].index)) & 0x7FFFFFFF)
            for r, (text, *_rest) in zip(batch, res):
                story = ("Once upon a time" + text) if c.prefix == "once" else text
                ans = Answer(text=clean_answer(story)[0])
                if on_answer is not None:
                    on_answer(r, ans)
                out.append(ans)
        return out

    def close(self) -> None:
        pass


class HFTeacher:
    name = "hf"

    def __init__(self, cfg: LocalTeacherConfig, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.torch = torch
        torch.manual_seed(seed)
        self.tok = AutoTokenizer.from_pretrained(cfg.model_path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(cfg.model_path).to(cfg.device).eval()
        self.model = str(Path(cfg.model_path).resolve().name)

    def _text_in(self, req: StoryRequest) -> str:
        text = local_prefix(self.cfg, req)
        if self.cfg.prefix == "prompt" and getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def generate(self, reqs: Sequence[StoryRequest], on_answer: Callable | None = None) -> list[Answer]:
        out: list[Answer] = []
        c = self.cfg
        for s in range(0, len(reqs), c.batch_size):
            batch = reqs[s : s + c.batch_size]
            enc = self.tok([self._text_in(r) for r in batch], return_tensors="pt", padding=True).to(c.device)
            kw: dict[str, Any] = {"max_new_tokens": c.max_new_tokens, "pad_token_id": self.tok.pad_token_id}
            if c.temperature > 0:
                kw |= {"do_sample": True, "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k}
            else:
                kw |= {"do_sample": False}
            with self.torch.no_grad():
                gen = self.lm.generate(**enc, **kw)
            new = gen[:, enc["input_ids"].shape[1] :]
            for r, row in zip(batch, new):
                text = self.tok.decode(row, skip_special_tokens=True)
                if c.prefix == "once":
                    text = "Once upon a time" + text
                ans = Answer(text=clean_answer(text)[0])
                if on_answer is not None:
                    on_answer(r, ans)
                out.append(ans)
        return out

    def close(self) -> None:
        pass


def _needs_model_path(cfg: SynthConfig) -> None:
    if not cfg.local.model_path:
        raise ValueError(f"local.model_path: teacher {cfg.teacher} needs a model path, got ''")


register_teacher("grammar", lambda cfg, seed: GrammarTeacher(cfg.grammar_workers), journaled=False,
                 batch_size=lambda cfg: 256)
register_teacher("openai", lambda cfg, seed: OpenAITeacher(cfg.openai, cfg.system_prompt,
                                                           want_summary=cfg.instruct_format),
                 batch_size=lambda cfg: 4 * cfg.openai.num_concurrent)
register_teacher("hf", lambda cfg, seed: HFTeacher(cfg.local, seed), batch_size=lambda cfg: cfg.local.batch_size,
                 check=_needs_model_path)
register_teacher("tinyfoundry", lambda cfg, seed: TinyfoundryTeacher(cfg.local, seed),
                 batch_size=lambda cfg: cfg.local.batch_size, check=_needs_model_path)


def make_teacher(cfg: SynthConfig, journal_path: Path, seed: int) -> Teacher:
    """The configured teacher (from the registry); journaled backends are wrapped in the resumable journal
    at `journal_path`."""
    backend = teacher_backend(cfg.teacher)
    teacher = backend.build(cfg, seed)
    return JournaledTeacher(teacher, Journal(journal_path)) if backend.journaled else teacher

"""`tinyfoundry serve`: an OpenAI-compatible HTTP server for a tinyfoundry model (dir, export, .ckpt).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (both with
`stream: true` as server-sent events), GET /health. Bound to 127.0.0.1 unless told otherwise.

Design
- Standard library `ThreadingHTTPServer`, one thread per connection: the API is a few JSON routes and SSE is
  writes of `data: ...` lines, so a framework would add dependencies around a model call that runs in its own
  thread anyway. Decoding is `launch.batching.Engine` (continuous batching over a KV cache): handler threads
  submit one `Request` per choice and read its events; the engine never waits for a client.
- Streaming is token by token: each token's text goes out as soon as it is complete. Text is decoded from the
  whole continuation (with a few prompt tokens before it, for byte-level pieces that span the boundary), and a
  trailing U+FFFD (a UTF-8 sequence cut between tokens) is held back until the next token completes it. Text
  that could be the start of a `stop` string is held back too, so a stop string never reaches the client.
- Tokenization is `launch.generation.encode_prompt`, the same as `tinyfoundry generate` and the HF export's
  tokenizer: greedy text is identical across the three (tested). Token-id prompts (lm-evaluation-harness's
  `local-completions`) are used as given.
- Chat requests are rendered with the model's chat template (`launch.chat`: tokenizer_config.json, GGUF metadata,
  else ChatML) and stop at the template's end-of-turn token.
- `logprobs` / `top_logprobs` are the model's raw log-probabilities; `echo` (completions) adds the prompt tokens'
  ones, the first being null: what `local-completions` log-likelihood tasks read. `usage.completion_tokens`
  counts the tokens of the text returned (tokens cut by `stop` are not counted).
- Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for every malformed request,
  401 without the right bearer key (`--api-key` or TINYFOUNDRY_API_KEY; the key is never logged), 404 for an
  unknown route or model, 413 over the body size limit.
- Prompts longer than the context are cropped from the left (keeping room for the answer), as `generate` does;
  with `echo` the prompt is scored whole, so one longer than the context is a 400.
"""

from __future__ import annotations

import hmac
import json
import os
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from launch.batching import Engine, Request, SamplingParams, TokenLogprob
from launch.chat import ChatTemplate, load_chat_template
from launch.generation import encode_prompt, eos_token_id, fit_to_context
from launch.token_text import TokenText

MAX_BODY_BYTES = 4 << 20
API_KEY_ENV = "TINYFOUNDRY_API_KEY"
MAX_N = 16
MAX_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_value" if param else None, param)


# ---- request validation ------------------------------------------------------------------------------------
def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer, got {json.dumps(v)[:40]}", key)
    if not lo <= v <= hi:
        raise _bad(f"'{key}' must be in [{lo}, {hi}], got {v}", key)
    return v


def _float(body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"'{key}' must be a number, got {json.dumps(v)[:40]}", key)
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise _bad(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return float(v)


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be a boolean, got {json.dumps(v)[:40]}", key)
    return v


def _stops(body: dict[str, Any]) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) for s in v):
        raise _bad("'stop' must be a string or a list of up to 4 strings", "stop")
    return [s for s in v if s]


def _messages(v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
                raise _bad(f"messages[{i}].content parts must be text parts", "messages")
            content = "".join(p["text"] for p in content)
        if content is None and m["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def _prompts(v: Any, vocab: int) -> list[str | list[int]]:
    """str | [str] | [int] | [[int]] -> a list of prompts (text or token ids)."""
    def ids_ok(x: Any) -> bool:
        return (isinstance(x, list) and len(x) > 0
                and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in x))

    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(x, str) for x in v):
            return list(v)
        if ids_ok(v):
            return [list(v)]
        if all(ids_ok(x) for x in v):
            return [list(x) for x in v]
    raise _bad(f"'prompt' must be a string, a list of strings, or (lists of) token ids in [0, {vocab})", "prompt")


# ---- text of one choice ------------------------------------------------------------------------------------
@dataclass
class _Choice:
    """Decodes one choice's tokens into text as they arrive (UTF-8 and stop-string safe)."""

    tok: Any
    context_ids: list[int]
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    lps: list[TokenLogprob] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # len(text) after each token
    text: str = ""
    sent: int = 0
    finish: str | None = None
    prompt_lps: list[TokenLogprob] | None = None

    def __post_init__(self) -> None:
        self.head = self.tok.decode(self.context_ids, skip_special_tokens=True)

    def add(self, lp: TokenLogprob) -> bool:
        """Append a token; True when a stop string appeared (text is then cut before it)."""
        self.ids.append(lp.token)
        self.lps.append(lp)
        full = self.tok.decode(self.context_ids + self.ids, skip_special_tokens=True)
        self.text = full[len(self.head):] if full.startswith(self.head) else self.tok.decode(
            self.ids, skip_special_tokens=True)
        self.ends.append(len(self.text))
        cuts = [c for c in (self.text.find(s) for s in self.stops) if c >= 0]
        if cuts:
            self.cut(min(cuts))
            return True
        return False

    def cut(self, c: int) -> None:
        self.text = self.text[:c]
        n = next((i + 1 for i, e in enumerate(self.ends) if e >= c), len(self.ends)) if c > 0 else 0
        self.ids, self.lps, self.ends = self.ids[:n], self.lps[:n], self.ends[:n]
        self.finish = "stop"

    def pending(self, final: bool) -> str:
        """Text not sent yet that is safe to send now."""
        end = len(self.text)
        if not final:
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1  # an unfinished UTF-8 sequence
            hold = max((len(s) - 1 for s in self.stops), default=0)
            end = max(self.sent, min(end, len(self.text) - hold))
        out = self.text[self.sent:end]
        self.sent = end
        return out


class ModelServer(ThreadingHTTPServer):
    """The HTTP server plus the model it serves (`.engine`, `.tokenizer`, `.model_name`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: socketserver's default of 5 refused connections from 32 clients at once

    def __init__(self, address: tuple[str, int], engine: Engine, tokenizer: Any, model_name: str,
                 eos_id: int | None, chat: ChatTemplate, api_key: str | None = None,
                 default_max_tokens: int = 256, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        super().__init__(address, Handler)
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.eos_id, self.chat = eos_id, chat
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.max_body_bytes = max_body_bytes
        self.context = engine.context
        self.vocab = int(engine.model.cfg.vocab_size)
        self.created = int(time.time())
        self.chat_stop_ids = frozenset(i for s in chat.stop_strings if (i := tokenizer.token_to_id(s)) is not None)
        self.token_text = TokenText(tokenizer)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def num_generations(self) -> int:
        """Choices answered so far."""
        return self.engine.num_finished

    def token_str(self, t: int) -> str:
        """A token as log-probs show it (launch/token_text.py: partial UTF-8 pieces read `bytes:\\xNN`)."""
        return self.token_text.display(t)

    def server_close(self) -> None:
        super().server_close()
        self.engine.close()


class Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet (and never logs headers, so never the key)
        pass

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, e: ApiError) -> None:
        etype = {401: "authentication_error", 404: "not_found_error"}.get(
            e.status, "invalid_request_error" if e.status < 500 else "server_error")
        self._send_json(e.status, {"error": {"message": e.message, "type": etype, "param": e.param,
                                             "code": e.code}})

    def _auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "invalid_api_key")

    def _body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if n > self.server.max_body_bytes:
            self.close_connection = True  # the unread body would be taken for the next request
            raise ApiError(413, f"request body of {n} bytes is over the limit of {self.server.max_body_bytes}",
                           "request_too_large")
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _model_obj(self) -> dict[str, Any]:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created,
                "owned_by": "tinyfoundry", "max_model_len": self.server.context}

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?")[0].rstrip("/")
        try:
            if path == "/health":
                return self._send_json(200, {"status": "ok"})
            self._auth()
            if path in ("/v1/models", "/models"):
                self._send_json(200, {"object": "list", "data": [self._model_obj()]})
            elif path.startswith(("/v1/models/", "/models/")):
                name = path.split("/models/", 1)[1]
                if name != self.server.model_name:
                    raise ApiError(404, f"model '{name}' does not exist", "model_not_found", "model")
                self._send_json(200, self._model_obj())
            else:
                raise ApiError(404, f"no route GET {path}", "not_found")
        except ApiError as e:
            self._error(e)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        try:
            self._auth()
            if path not in ("/v1/completions", "/completions", "/v1/chat/completions", "/chat/completions"):
                raise ApiError(404, f"no route POST {path}", "not_found")
            self._complete(self._body(), chat="chat" in path)
        except ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - report, keep serving
            print(f"serve: {type(e).__name__}: {e}", file=sys.stderr)
            self._error(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))

    # ---- the API ------------------------------------------------------------------------------------------
    def _complete(self, body: dict[str, Any], chat: bool) -> None:
        srv = self.server
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _bad("'model' must be a string", "model")
        if model and model != srv.model_name:
            raise ApiError(404, f"model '{model}' does not exist; this server has '{srv.model_name}'",
                           "model_not_found", "model")
        max_tokens = _int(body, "max_tokens", None, 0, 1 << 20)
        if chat:
            max_tokens = _int(body, "max_completion_tokens", max_tokens, 0, 1 << 20)
        temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        n = _int(body, "n", 1, 1, MAX_N)
        seed = _int(body, "seed", None, -(1 << 63), (1 << 63) - 1)
        stops = _stops(body)
        stream = _bool(body, "stream")
        so = body.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        include_usage = bool((so or {}).get("include_usage"))
        prompts, echo, logprobs, stop_ids = self._prompt_inputs(body, chat)
        if not echo and max_tokens == 0:
            raise _bad("'max_tokens' must be >= 1 (0 only with echo)", "max_tokens")
        if (echo or logprobs is not None) and stream and n > 1:
            raise _bad("streaming with logprobs/echo supports n = 1 only", "n")

        # one engine request per (prompt, choice)
        events: queue.SimpleQueue = queue.SimpleQueue()
        reqs: list[Request] = []
        choices: list[_Choice] = []
        prompt_texts: list[str] = []
        prompt_tokens = 0
        for pi, prompt in enumerate(prompts):
            ids = list(prompt) if isinstance(prompt, list) else encode_prompt(srv.tokenizer, prompt)
            want = srv.default_max_tokens if max_tokens is None else max_tokens
            if echo:
                if len(ids) > srv.context:
                    raise ApiError(400, f"prompt {pi} has {len(ids)} tokens, over the context of {srv.context} "
                                        "(echo scores the whole prompt)", "context_length_exceeded", "prompt")
                want = min(want, srv.context - len(ids))
            else:
                ids, want = fit_to_context(ids, want, srv.context)
            prompt_tokens += len(ids)
            prompt_texts.append(prompt if isinstance(prompt, str) else srv.tokenizer.decode(ids))
            for c in range(n):
                s = None if seed is None else (seed + c) & 0x7FFFFFFFFFFFFFFF
                params = SamplingParams(max_tokens=want, temperature=temperature, top_p=top_p, seed=s,
                                        logprobs=logprobs, echo=echo, stop_ids=stop_ids)
                reqs.append(Request(ids, params, events, index=len(reqs)))
                choices.append(_Choice(srv.tokenizer, ids[-4:], stops))
        for r in reqs:
            srv.engine.submit(r)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        meta = {"id": rid, "created": int(time.time()), "model": srv.model_name}
        try:
            if stream:
                self._stream(meta, reqs, choices, events, chat, echo, prompt_texts, n, include_usage,
                             prompt_tokens)
            else:
                self._collect(meta, reqs, choices, events, chat, echo, prompt_texts, n, prompt_tokens)
        finally:
            for r in reqs:  # a client that went away frees its rows
                r.cancelled.set()

    def _prompt_inputs(self, body: dict[str, Any], chat: bool
                       ) -> tuple[list[str | list[int]], bool, int | None, frozenset[int]]:
        """The prompts (a chat renders its messages through the template), echo, logprobs and the stop token ids."""
        srv = self.server
        if not chat:
            if "prompt" not in body:
                raise _bad("'prompt' is required", "prompt")
            prompts = _prompts(body["prompt"], srv.vocab)
            echo = _bool(body, "echo")
            return prompts, echo, _int(body, "logprobs", None, 0, MAX_LOGPROBS), frozenset({srv.eos_id} - {None})
        want_lp = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        if top and not want_lp:
            raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        try:
            text = srv.chat.render(_messages(body.get("messages")))
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a template that raised on these messages
            raise _bad(f"chat template: {type(e).__name__}: {e}", "messages") from None
        return [text], False, (top if want_lp else None), frozenset({srv.eos_id} - {None}) | srv.chat_stop_ids

    def _next(self, events: queue.SimpleQueue, reqs: list[Request], choices: list[_Choice]
              ) -> tuple[int, str, Any] | None:
        """The next event of a choice that is still running; None when all are finished."""
        while any(c.finish is None for c in choices):
            i, kind, val = events.get()
            if choices[i].finish is not None:
                continue  # late events of a choice already cut by a stop string
            if kind == "error":
                raise ApiError(500, f"generation failed: {val}", "server_error")
            if kind == "token" and choices[i].add(val):
                reqs[i].cancelled.set()
                return i, "end", "stop"
            if kind == "end":
                choices[i].finish = val
            if kind == "prompt":
                choices[i].prompt_lps = val
            return i, kind, val
        return None

    def _usage(self, prompt_tokens: int, choices: list[_Choice]) -> dict[str, int]:
        done = sum(len(c.ids) for c in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

    def _logprobs_obj(self, chat: bool, lps: list[TokenLogprob], offset0: int = 0) -> dict[str, Any]:
        ts, tb = self.server.token_str, self.server.token_text.bytes_of
        if chat:
            return {"content": [
                {"token": ts(lp.token), "logprob": lp.logprob, "bytes": list(tb(lp.token)),
                 "top_logprobs": [{"token": ts(t), "logprob": v, "bytes": list(tb(t))}
                                  for t, v in (lp.top or [])]} for lp in lps]}
        offsets = self.server.token_text.offsets([lp.token for lp in lps], offset0)
        return {"tokens": [ts(lp.token) for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": [None if lp.top is None else {ts(t): v for t, v in lp.top} for lp in lps],
                "text_offset": offsets}

    def _collect(self, meta: dict[str, Any], reqs: list[Request], choices: list[_Choice],
                 events: queue.SimpleQueue, chat: bool, echo: bool, prompt_texts: list[str], n: int,
                 prompt_tokens: int) -> None:
        while self._next(events, reqs, choices) is not None:
            pass
        out = []
        for i, c in enumerate(choices):
            want_lp = reqs[i].params.logprobs is not None
            if chat:
                lp = self._logprobs_obj(True, c.lps) if want_lp else None
                out.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish})
                continue
            head = prompt_texts[i // n] if echo else ""
            lp = None
            if want_lp:
                lps = (c.prompt_lps or []) + c.lps if echo else c.lps
                lp = self._logprobs_obj(False, lps)
            out.append({"index": i, "text": head + c.text, "logprobs": lp, "finish_reason": c.finish})
        self._send_json(200, {**meta, "object": "chat.completion" if chat else "text_completion",
                              "choices": out, "usage": self._usage(prompt_tokens, choices)})

    def _stream(self, meta: dict[str, Any], reqs: list[Request], choices: list[_Choice],
                events: queue.SimpleQueue, chat: bool, echo: bool, prompt_texts: list[str], n: int,
                include_usage: bool, prompt_tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> None:
            event = {**meta, "object": obj, "choices": [choice] if choice else []}
            if usage is not None:
                event["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()

        def chunk(i: int, text: str, finish: str | None, lps: list[TokenLogprob] | None = None) -> None:
            lp = None if lps is None else self._logprobs_obj(chat, lps)
            if chat:
                send({"index": i, "delta": {"content": text} if text or finish is None else {}, "logprobs": lp,
                      "finish_reason": finish})
            else:
                send({"index": i, "text": text, "logprobs": lp, "finish_reason": finish})

        if chat:
            for i in range(len(choices)):
                send({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None})
        behind: set[int] = set()  # choices with tokens decoded but not sent yet

        def flush() -> None:
            for j in sorted(behind):
                text = choices[j].pending(final=False)
                if text:
                    chunk(j, text, None)
            behind.clear()

        while (ev := self._next(events, reqs, choices)) is not None:
            i, kind, val = ev
            c = choices[i]
            want_lp = reqs[i].params.logprobs is not None
            if kind == "token" and not want_lp:
                # a handler that fell behind the decoder sends what is queued as one chunk: same text, fewer
                # writes (under load the per-chunk JSON and socket work is what the handler threads spend)
                behind.add(i)
                if events.empty():
                    flush()
                continue
            flush()
            if kind == "prompt":
                chunk(i, prompt_texts[i // n], None, val if want_lp else None)
            elif kind == "token":
                chunk(i, c.pending(final=False), None, [val])
            elif kind == "end":
                rest = c.pending(final=True)
                if rest:
                    chunk(i, rest, None)
                chunk(i, "", c.finish)
        flush()
        if include_usage:
            send(None, self._usage(prompt_tokens, choices))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(model: str | Path, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                device: str = "cpu", default_max_tokens: int = 256, max_batch: int = 16,
                api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> ModelServer:
    """Load the model and bind (port 0 = any free port); call `.serve_forever()` (e.g. in a thread)."""
    from tokenizers import Tokenizer

    from launch.generation import load_any

    m, tok_path = load_any(Path(model))
    if device != "cpu":
        m = m.to(device)
    tok = Tokenizer.from_file(str(tok_path))
    name = model_name or Path(model).resolve().name
    engine = Engine(m, max_batch=max_batch)
    try:
        return ModelServer((host, port), engine, tok, name, eos_token_id(tok, tok_path),
                           load_chat_template(Path(model), tok_path), api_key=api_key,
                           default_max_tokens=default_max_tokens, max_body_bytes=max_body_bytes)
    except BaseException:
        engine.close()
        raise


def serve_main(model: str, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
               api_key: str | None = None, max_batch: int = 16) -> None:
    """Serve until Ctrl-C. The API key comes from --api-key or the TINYFOUNDRY_API_KEY environment variable."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    server = make_server(model, host=host, port=port, model_name=model_name, api_key=api_key, max_batch=max_batch)
    auth = "bearer key required" if api_key else "no API key"
    print(f"serving '{server.model_name}' at {server.url} (OpenAI-compatible, {auth}; Ctrl-C to stop)",
          file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: bound to {host}: reachable from other machines, with no authentication", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

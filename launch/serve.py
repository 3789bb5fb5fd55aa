"""`tinyfoundry serve`: an OpenAI-compatible HTTP server for a tinyfoundry model (dir, export, .ckpt).

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with
`stream: true` as server-sent events), GET /health. Bound to 127.0.0.1 unless told otherwise.

Design
- Standard library `http.server.ThreadingHTTPServer`: the API is four JSON routes and SSE is a
  few writes, so a framework (FastAPI + uvicorn + pydantic) would add three dependencies and an
  event loop around a model call that blocks anyway. Tests start it in-process on port 0.
- One model, one generation thread: handler threads queue their prompts, and the batcher joins
  the requests that arrive within `batch_wait_s` and share sampling settings (max_tokens,
  temperature, top_p; unseeded) into one `models.generate` call of up to `max_batch` rows, so
  concurrent clients (run_synth's `num_concurrent`) share forward passes. Rows are independent in
  `generate` (left padding, per-row positions and masks), so a batched answer equals the answer
  the request would get alone (tested with greedy decoding). Seeded requests run alone.
- Our models are base (story) models with no chat template: a chat request's messages are joined
  (system, then user/assistant turns) with blank lines into one prompt that the model continues.
- Streaming sends the finished completion in word-sized chunks (the KV-cache generator returns the
  whole continuation at once); clients see the OpenAI chunk format and a final `[DONE]`.
- Errors use OpenAI's shape `{"error": {"message", "type", "code"}}`: 400 for bad requests, 404
  for an unknown route or model name (so a teacher with the wrong `model` fails fast).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from data_pipelines.synthetic.teachers import TinyfoundryLM

MAX_BODY_BYTES = 4 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class _Job:
    prompts: list[str]
    key: tuple[int, float, float]  # (max_tokens, temperature, top_p): jobs batch only with equal keys
    seed: int | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[tuple[str, int, int, str]] | None = None
    error: BaseException | None = None


class ModelServer(ThreadingHTTPServer):
    """The HTTP server plus the model it serves (`.lm`, `.model_name`) and its request batcher."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], lm: TinyfoundryLM, model_name: str,
                 default_max_tokens: int = 256, max_batch: int = 16, batch_wait_s: float = 0.01) -> None:
        super().__init__(address, Handler)
        self.lm = lm
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.created = int(time.time())
        self.num_generations = 0  # requests answered
        self.num_batches = 0  # models.generate calls
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._batcher = threading.Thread(target=self._batch_loop, name="serve-batcher", daemon=True)
        self._batcher.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def generate(self, prompts: list[str], max_tokens: int, temperature: float, top_p: float,
                 seed: int | None) -> list[tuple[str, int, int, str]]:
        """Queue prompts for the batcher and wait for their completions."""
        job = _Job(prompts, (max_tokens, temperature, top_p), seed)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _batch_loop(self) -> None:
        held: list[_Job] = []  # jobs taken from the queue that did not fit the last batch
        while True:
            first = held.pop(0) if held else self._jobs.get()
            if first is None:
                return
            batch = [first]
            rows = len(first.prompts)
            deadline = time.monotonic() + self.batch_wait_s
            while first.seed is None and rows < self.max_batch:
                try:
                    job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                if job.key == first.key and job.seed is None and rows + len(job.prompts) <= self.max_batch:
                    batch.append(job)
                    rows += len(job.prompts)
                else:
                    held.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        max_tokens, temperature, top_p = batch[0].key
        prompts = [p for job in batch for p in job.prompts]
        try:
            out = self.lm.complete(prompts, max_tokens, temperature=temperature, top_p=top_p,
                                   seed=batch[0].seed)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting handler
            for job in batch:
                job.error = e
                job.done.set()
            return
        self.num_batches += 1
        self.num_generations += len(batch)
        i = 0
        for job in batch:
            job.result = out[i : i + len(job.prompts)]
            i += len(job.prompts)
            job.done.set()

    def server_close(self) -> None:
        self._jobs.put(None)
        super().server_close()


def _chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    parts = []
    for m in messages:
        if not isinstance(m, dict) or "content" not in m:
            raise ApiError(400, "each message needs 'role' and 'content'")
        content = m["content"]
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content).strip())
    return "\n\n".join(p for p in parts if p) + "\n\n"


def _apply_stop(text: str, stop: Any) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; errors still reach stderr
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, e: ApiError) -> None:
        etype = "invalid_request_error" if e.status < 500 else "server_error"
        self._send_json(e.status, {"error": {"message": e.message, "type": etype, "code": e.code}})

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except json.JSONDecodeError as e:
            raise ApiError(400, f"invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [{
                "id": self.server.model_name, "object": "model", "created": self.server.created,
                "owned_by": "tinyfoundry"}]})
        elif path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._error(ApiError(404, f"no route GET {path}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = self._body()
            if path in ("/v1/completions", "/completions"):
                self._complete(body, chat=False)
            elif path in ("/v1/chat/completions", "/chat/completions"):
                self._complete(body, chat=True)
            else:
                raise ApiError(404, f"no route POST {path}", "not_found")
        except ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - report, keep serving
            print(f"serve: {type(e).__name__}: {e}", file=sys.stderr)
            self._error(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))

    # ---- the API -----------------------------------------------------------------------------
    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model") or self.server.model_name
        if model != self.server.model_name:
            raise ApiError(404, f"model '{model}' does not exist; this server has '{self.server.model_name}'",
                           "model_not_found")
        try:
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens")
                             or self.server.default_max_tokens)
            temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
            top_p = float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0)
            n = int(body.get("n") or 1)
            seed = body.get("seed")
            seed = int(seed) if seed is not None else None
        except (TypeError, ValueError) as e:
            raise ApiError(400, f"bad parameter: {e}") from None
        if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or not 1 <= n <= 16:
            raise ApiError(400, "need max_tokens >= 1, temperature >= 0, 0 < top_p <= 1, 1 <= n <= 16")
        return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "n": n, "seed": seed,
                "stop": body.get("stop"), "stream": bool(body.get("stream"))}

    def _complete(self, body: dict[str, Any], chat: bool) -> None:
        p = self._params(body)
        if chat:
            prompts = [_chat_prompt(body.get("messages"))]
        else:
            prompt = body.get("prompt", "")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(x, str) for x in prompts):
                raise ApiError(400, "'prompt' must be a string or a list of strings")
        expanded = [pr for pr in prompts for _ in range(p["n"])]
        results = self.server.generate(expanded, p["max_tokens"], p["temperature"], p["top_p"], p["seed"])
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, (text, n_in, n_out, finish) in enumerate(results):
            text, stopped = _apply_stop(text, p["stop"])
            finish = "stop" if stopped else finish
            completion_tokens += n_out
            if i % p["n"] == 0:
                prompt_tokens += max(0, n_in - 1)  # the leading <|endoftext|> is ours, not the user's
            choices.append((i, text, finish))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created, model = int(time.time()), self.server.model_name
        if p["stream"]:
            self._stream(rid, created, model, choices, chat, usage, body)
            return
        if chat:
            out_choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                            "finish_reason": f} for i, t, f in choices]
            obj = "chat.completion"
        else:
            out_choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, t, f in choices]
            obj = "text_completion"
        self._send_json(200, {"id": rid, "object": obj, "created": created, "model": model,
                              "choices": out_choices, "usage": usage})

    def _stream(self, rid: str, created: int, model: str, choices: list[tuple[int, str, str]], chat: bool,
                usage: dict[str, int], body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(choice: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
            event = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            event |= extra or {}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()

        for i, text, finish in choices:
            if chat:
                send({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            pieces = [w + " " for w in text.split(" ")]
            if pieces:
                pieces[-1] = pieces[-1][:-1]
            for piece in pieces:
                if piece:
                    delta = {"content": piece} if chat else None
                    send({"index": i, "delta": delta, "finish_reason": None} if chat
                         else {"index": i, "text": piece, "logprobs": None, "finish_reason": None})
            send({"index": i, "delta": {}, "finish_reason": finish} if chat
                 else {"index": i, "text": "", "logprobs": None, "finish_reason": finish})
        if (body.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(b"data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                     "choices": [], "usage": usage}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _load_lm(model: str | Path, device: str) -> TinyfoundryLM:
    """Any model the CLI understands (dir, export, .ckpt, compressed), with the tokenizer beside it."""
    try:
        from launch.generation import load_any
    except ImportError:  # pragma: no cover - the lead's module is optional for this server
        return TinyfoundryLM.load(model, device)
    m, tok = load_any(Path(model))
    if device != "cpu":
        m = m.to(device)
    return TinyfoundryLM(m, tok)


def make_server(model: str | Path, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                device: str = "cpu", default_max_tokens: int = 256, max_batch: int = 16,
                batch_wait_s: float = 0.01) -> ModelServer:
    """Load the model and bind (port 0 = any free port); call `.serve_forever()` (e.g. in a thread)."""
    lm = _load_lm(model, device)
    name = model_name or Path(model).resolve().name
    return ModelServer((host, port), lm, name, default_max_tokens=default_max_tokens, max_batch=max_batch,
                       batch_wait_s=batch_wait_s)


def serve_main(model: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C."""
    server = make_server(model, host=host, port=port)
    print(f"serving '{server.model_name}' at {server.url} (OpenAI-compatible; Ctrl-C to stop)", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {host}: reachable from other machines, with no authentication", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

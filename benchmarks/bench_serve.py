"""Load test of `tinyfoundry serve` against llama.cpp's own server, same model, side by side in one run.

The model: a preset with random weights (throughput does not depend on the values) and a 2,048-token BPE
tokenizer trained on the shared TinyStories sample, saved as a model folder for `tinyfoundry serve` and exported to
GGUF (F16 by default) for `python -m llama_cpp.server` (llama-cpp-python's OpenAI-compatible server). Each server
runs in its own process with the same number of threads; the clients (threads in this process, the official
`openai` client, streaming completions, temperature 0) send `--requests` requests each. The two servers alternate
per scenario (ours, llama.cpp, ours, ...).

Reported per server and number of clients: requests completed / failed (complete = a finish_reason arrived and
the stream ended with [DONE]), time to first token p50 / p99, aggregate new tokens/s (all clients' tokens over
the wall time). Batch-1 streaming check: TTFT against one decode step (the median gap between a lone stream's
chunks) plus the prefill (a forward of the prompt measured here with the same threads).

Targets (issue 20): 32 clients x 20 requests with zero failures; aggregate tokens/s at 16 clients >= 5x one
client's; ours >= 0.5x llama.cpp's server (reported as a ratio); TTFT at batch 1 <= prefill + 3 decode steps.

    .venv/bin/python benchmarks/bench_serve.py [--preset 8m] [--clients 1,16,32] [--requests 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT / ".." / "shared" / "data"
PROMPTS = ["Once upon a time, there was a little girl named", "Tom and his dog went to the park. They",
           "One day, a big red ball", "Lily liked to play with her", "The sun was shining and the birds",
           "Sam had a small boat. He", "There was a cat who did not like", "Mia found a shiny stone in the"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(folder: Path, preset: str, vocab: int, gguf_type: str) -> tuple[Path, Path]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from models import Transformer, get_preset, save_model_dir
    from models.export.gguf import export_gguf

    text = (SHARED / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, special_tokens=[
        "<|pad|>", "<|bos|>", "<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, vocab_size=tok.get_vocab_size(), max_seq_len=512)).eval()
    save_model_dir(folder / "model", model, tokenizer_file=folder / "tokenizer.json")
    gguf_path = folder / f"model-{gguf_type}.gguf"
    export_gguf(model, folder / "tokenizer.json", gguf_path, ftype=gguf_type)  # type: ignore[arg-type]
    return folder / "model", gguf_path


class Server:
    """A server process on 127.0.0.1, ready when /v1/models answers."""

    def __init__(self, cmd: list[str], port: int, threads: int, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(cmd)}; see {log}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    self.model = json.loads(r.read())["data"][0]["id"]
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server did not start: {' '.join(cmd)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def one_stream(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, chunks, finish, usage_tokens, arrivals = None, 0, None, None, []
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for ch in stream:
        now = time.perf_counter() - t0
        if getattr(ch, "usage", None) and ch.usage.completion_tokens:
            usage_tokens = ch.usage.completion_tokens
        if not ch.choices:
            continue
        c = ch.choices[0]
        if c.text:
            chunks += 1
            arrivals.append(now)
            if ttft is None:
                ttft = now
        if c.finish_reason:
            finish = c.finish_reason
    return {"ttft": ttft, "tokens": usage_tokens or chunks, "finish": finish, "wall": time.perf_counter() - t0,
            "arrivals": arrivals}


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    results: list[dict] = []
    failed: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        for r in range(requests):
            try:
                res = one_stream(client, model, PROMPTS[(w + r) % len(PROMPTS)], max_tokens)
                ok = res["finish"] is not None and res["ttft"] is not None
                with lock:
                    (results.append(res) if ok else failed.append(f"incomplete: {res['finish']}"))
            except Exception as e:  # noqa: BLE001 - counted, not raised
                with lock:
                    failed.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results)
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"clients": clients, "completed": len(results), "failed": len(failed), "errors": failed[:3],
            "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
            "tokens_per_s": sum(r["tokens"] for r in results) / wall, "wall_s": wall,
            "step_s": statistics.median(gaps) if gaps else float("nan"),
            "mean_tokens": statistics.mean(r["tokens"] for r in results) if results else 0}


def prefill_s(model_dir: Path, threads: int) -> float:
    import torch

    from models import load_model

    torch.set_num_threads(threads)
    model, tok_file = load_model(model_dir)
    from tokenizers import Tokenizer

    ids = torch.tensor([Tokenizer.from_file(str(tok_file)).encode(PROMPTS[0]).ids])
    with torch.no_grad():
        for _ in range(3):
            model(ids, last_only=True)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            model(ids, last_only=True)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="8m")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--clients", default="1,16,32")
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"])
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every scenario; the table shows each one's median")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    folder = Path(tmp.name)
    model_dir, gguf_path = build_model(folder, args.preset, args.vocab, args.gguf_type)
    servers: dict[str, list[str]] = {}
    p1 = free_port()
    servers["tinyfoundry serve"] = [sys.executable, "-m", "launch.cli", "serve", "--model", str(model_dir),
                                    "--port", str(p1), "--model-name", "bench", "--max-batch", str(max(clients))]
    if not args.no_llamacpp:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as e:
            print(f"llama-cpp-python[server] not installed ({e}): llama.cpp side skipped")
        else:
            p2 = free_port()
            servers["llama.cpp server"] = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path),
                                           "--host", "127.0.0.1", "--port", str(p2), "--n_ctx", "512",
                                           "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                                           "--model_alias", "bench", "--verbose", "False",
                                           # its default cancels the running completion when a new request arrives
                                           # (159 of 160 streams cut short at 16 clients): queue them instead
                                           "--interrupt_requests", "False"]
    runs: dict[str, dict[int, list[dict]]] = {k: {c: [] for c in clients} for k in servers}
    for rnd in range(args.rounds):  # alternate the order per round: a shared machine's load drifts
        for c in clients if rnd % 2 == 0 else clients[::-1]:
            for name, cmd in servers.items():  # one server at a time: they would fight over the cores
                srv = Server(cmd, int(cmd[cmd.index("--port") + 1]), args.threads, folder / f"{name.split()[0]}.log")
                try:
                    load(srv.url, srv.model, 1, 2, args.max_tokens)  # warm-up
                    r = load(srv.url, srv.model, c, args.requests, args.max_tokens)
                finally:
                    srv.stop()
                runs[name][c].append(r)
                print(f"  round {rnd}: {name}: {c} clients done in {r['wall_s']:.1f} s, {r['tokens_per_s']:,.0f} "
                      f"tok/s ({r['failed']} failed) {r['errors']}", flush=True)
    # per scenario the round with the median aggregate tok/s (the lower median for an even count)
    rows = {name: {c: sorted(rs, key=lambda r: r["tokens_per_s"])[(len(rs) - 1) // 2] for c, rs in by_c.items()}
            for name, by_c in runs.items()}
    import torch

    n_params = sum(p.numel() for p in __import__("models").load_model(model_dir)[0].parameters())
    print(f"\n== serving load: preset '{args.preset}' ({n_params / 1e6:.2f}M params), {args.requests} streaming "
          f"requests per client, max_tokens {args.max_tokens}, temperature 0, {args.threads} threads per server "
          f"(torch {torch.__version__}); llama.cpp on GGUF {args.gguf_type.upper()}; median of {args.rounds} round(s)")
    print("| server | clients | completed | failed | TTFT p50 ms | TTFT p99 ms | aggregate tok/s | vs 1 client |")
    print("|---|---|---|---|---|---|---|---|")
    for name, by_c in rows.items():
        base = by_c.get(1, {}).get("tokens_per_s")
        for c, r in by_c.items():
            scale = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            print(f"| {name} | {c} | {r['completed']} | {r['failed']} | {r['ttft_p50'] * 1e3:.1f} | "
                  f"{r['ttft_p99'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {scale} |")
    ours = rows["tinyfoundry serve"]
    if "llama.cpp server" in rows:
        print("\n| clients | ours / llama.cpp server (aggregate tok/s) |")
        print("|---|---|")
        for c in clients:
            print(f"| {c} | {ours[c]['tokens_per_s'] / rows['llama.cpp server'][c]['tokens_per_s']:.2f}x |")
    if 1 in ours:
        pf = prefill_s(model_dir, args.threads)
        step, ttft = ours[1]["step_s"], ours[1]["ttft_p50"]
        bound = pf + 3 * step
        print(f"\nbatch-1 streaming: TTFT p50 {ttft * 1e3:.1f} ms; prefill {pf * 1e3:.1f} ms + 3 x decode step "
              f"{step * 1e3:.1f} ms = {bound * 1e3:.1f} ms: {'met' if ttft <= bound else 'NOT met'}")
    if 16 in ours and 1 in ours:
        s = ours[16]["tokens_per_s"] / ours[1]["tokens_per_s"]
        print(f"aggregate tok/s at 16 clients / 1 client: {s:.2f}x (target >= 5x: {'met' if s >= 5 else 'NOT met'})")
    if 32 in ours:
        r = ours[32]
        print(f"32 clients x {args.requests}: {r['completed']} completed, {r['failed']} failed "
              f"({'met' if r['failed'] == 0 and r['completed'] == 32 * args.requests else 'NOT met'})")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=2, default=str))
    tmp.cleanup()


if __name__ == "__main__":
    main()

"""lm-evaluation-harness on a tinyfoundry model: `tinyfoundry eval --harness TASKS`.

Design
- Two routes, the two ways the ecosystem evaluates a model: `hf` (lm-eval's `HFLM` on the Hugging Face export,
  made in a temporary folder when the model is not one already) and `serve` (lm-eval's `local-completions` against
  our own OpenAI-compatible server, started on 127.0.0.1 for the run). Both tokenize with the export's tokenizer, so
  their log-likelihoods agree request by request (tested within 1e-3): the check that `serve`'s logprobs/echo are
  what the harness expects.
- Hub datasets are often out of reach, so the task name `local` means a task built from a local file (`--data`):
  - `.txt`, `.parquet` or JSONL with `text`: `loglikelihood_rolling` (word/byte perplexity, bits per byte), the
    wikitext recipe;
  - JSONL with `context` + `continuation`: `loglikelihood` (perplexity and greedy accuracy), the lambada recipe;
  - JSONL with `query` + `choices` + `gold`: `multiple_choice` (acc, acc_norm), the hellaswag recipe.
  Other names are lm-eval's own tasks (they need their datasets: the hub or a local cache).
- Results (lm-eval's `results` plus per-request log-likelihoods) go to `harness-<route>.json` beside eval.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from launch.config import ConfigError

Route = Literal["hf", "serve"]


def local_task(data: Path, folder: Path, name: str = "local") -> dict[str, Any]:
    """An lm-eval task config (dict) over a local file; the file's rows are copied into `folder` as JSONL."""
    from train.eval import read_documents

    data = Path(data)
    rows: list[dict[str, Any]] = []
    if "".join(data.suffixes[-2:]).lower().endswith((".jsonl", ".json")):
        with data.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{data}:{line_no}: not JSON ({e.msg})") from None
                    if not isinstance(rec, dict):
                        raise ConfigError(f"{data}:{line_no}: each line must be a JSON object")
                    rows.append(rec)
    else:
        rows = [{"text": t} for t in read_documents(data)]
    if not rows:
        raise ConfigError(f"{data}: no documents")
    keys = set(rows[0])
    common = {"task": name, "dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0},
              "dataset_kwargs": {"data_files": {"test": str(folder / "test.jsonl")}}}
    if {"query", "choices", "gold"} <= keys:
        cfg = {**common, "output_type": "multiple_choice", "doc_to_text": "{{query}}", "doc_to_choice": "choices",
               "doc_to_target": "gold", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
        need = ("query", "choices", "gold")
    elif {"context", "continuation"} <= keys:
        cfg = {**common, "output_type": "loglikelihood", "doc_to_text": "{{context}}",
               "doc_to_target": "{{continuation}}", "target_delimiter": "",
               "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                               {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        need = ("context", "continuation")
    elif "text" in keys:
        cfg = {**common, "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
               "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                               {"metric": "bits_per_byte"}]}
        need = ("text",)
    else:
        raise ConfigError(f"{data}: rows need 'text', or 'context' + 'continuation', or 'query' + 'choices' + "
                          f"'gold'; the first row has {sorted(keys)}")
    for i, r in enumerate(rows, 1):
        missing = [k for k in need if k not in r]
        if missing:
            raise ConfigError(f"{data}: row {i} lacks '{missing[0]}'")
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "test.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in need}) + "\n")
    return cfg


@contextmanager
def hf_export(model_path: Path) -> Iterator[Path]:
    """The model as a Hugging Face folder: itself when it is one, else a temporary export."""
    model_path = Path(model_path)
    if model_path.is_dir() and (model_path / "config.json").is_file() and (model_path / "tokenizer.json").is_file():
        yield model_path
        return
    from models.export.hf import export_hf
    from train.eval import load_for_eval

    model, _, tok = load_for_eval(model_path, "cpu")
    with tempfile.TemporaryDirectory(prefix="tf-harness-") as tmp:
        export_hf(model, tok, Path(tmp) / "hf")
        yield Path(tmp) / "hf"


def run_harness(model_path: Path, tasks: list[str], route: Route, out: Path, data: Path | None = None,
                limit: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Run lm-eval on `tasks` through `route`; write `out` (JSON) and return it."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("--harness needs lm-evaluation-harness: pip install lm_eval (the eval extra)") from None
    if "local" in tasks and data is None:
        raise ConfigError("--harness local: name the file to build the task from with --data")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only; never wait on an unreachable hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="tf-task-") as task_dir, hf_export(model_path) as hf_dir:
        task_list: list[Any] = [local_task(data, Path(task_dir)) if t == "local" else t for t in tasks]  # type: ignore[arg-type]
        from models import load_model

        context = int(load_model(hf_dir)[0].cfg.max_seq_len)
        server = None
        if route == "hf":
            lm_name, args = "hf", {"pretrained": str(hf_dir), "dtype": "float32", "max_length": context,
                                   "device": "cpu"}
        else:
            from launch.serve import make_server

            server = make_server(hf_dir, port=0, model_name="tinyfoundry")
            threading.Thread(target=server.serve_forever, daemon=True).start()
            lm_name, args = "local-completions", {
                "base_url": server.url + "/completions", "model": "tinyfoundry", "tokenizer": str(hf_dir),
                "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": context,
                "num_concurrent": 4, "max_retries": 1}
        try:
            res = lm_eval.simple_evaluate(model=lm_name, model_args=args, tasks=task_list, limit=limit,
                                          batch_size=batch_size, log_samples=True,
                                          task_manager=TaskManager(include_defaults=True), bootstrap_iters=0)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
    assert res is not None
    requests: dict[str, list[list[float]]] = {}  # task -> per document, the log-likelihood of each request
    for task, samples in (res.get("samples") or {}).items():
        requests[task] = [[_first_number(r) for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
    summary = {"route": route, "tasks": tasks, "limit": limit, "results": _plain(res["results"]),
               "loglikelihoods": requests}
    from train.eval.runner import write_json_atomic

    write_json_atomic(out, summary)
    return summary


def _first_number(x: Any) -> float:
    """A response's log-likelihood: lm-eval nests it as [ll], [(ll, is_greedy)] or ll."""
    while isinstance(x, (list, tuple)):
        x = x[0]
    return float(x)


def _plain(obj: Any) -> Any:
    """JSON-safe copy of lm-eval's results (numpy scalars, NaN as None)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)

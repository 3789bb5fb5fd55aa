"""Optional LLM judge with the TinyStories paper's rubric, through any OpenAI-compatible endpoint.

Design and invariants
- The prompt is the grading exercise of Eldan & Li (2023, "TinyStories", section 3): the judge sees the
  prescribed beginning, a `***` separator and the model's completion, assesses it, then grades grammar,
  creativity, consistency with the beginning and plot, 0-10 each (and guesses the writer's age group).
  We ask for the grades on fixed lines so that any capable judge answers in a parseable form.
- Parsing never trusts the judge: each category is found by a tolerant pattern ("Grammar: 8/10",
  "**Creativity** - 7", "consistency = 6.5", or a JSON object), values outside 0..10 are rejected, and an
  answer where no category parses counts as `num_unparseable`; one with some but not all, as `num_partial`.
  Means are over parsed values only, with the count beside each mean.
- The API key comes from the environment variable named in the config; it is passed to the client and
  never printed, logged or written to eval.json. A local endpoint (127.0.0.1 / localhost) needs no key.
- Uses the official `openai` client (optional dependency, extra `teacher`), imported lazily.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from train.eval.config import JudgeConfig

CATEGORIES = ("grammar", "creativity", "consistency", "plot")

RUBRIC = """In the following exercise, the student is given a beginning of a story. The student needs to complete \
it into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks \
the separator between the prescribed beginning and the student's completion:

{beginning} *** {completion}

Please provide your general assessment about the part written by the student (the one after the *** symbol). \
Is it grammatically correct? Is it consistent with the beginning of the story? Pay special attention to whether \
the student manages to complete the sentence which is split in the middle by the separator ***.

Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and \
whether the plot makes sense, each on a scale from 0 to 10. Moreover, please provide your best guess of what the \
age of the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. \
B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.
End your answer with exactly these five lines:
Grammar: <0-10>
Creativity: <0-10>
Consistency: <0-10>
Plot: <0-10>
Age group: <A-F>"""

_NUM = r"(\d+(?:\.\d+)?)"


def build_prompt(beginning: str, completion: str) -> str:
    return RUBRIC.format(beginning=beginning.strip(), completion=completion.strip())


def parse_scores(answer: str) -> dict[str, Any]:
    """Grades found in a judge's answer: {category: float} for those that parse, plus "age_group" if given."""
    scores: dict[str, Any] = {}
    for obj in re.findall(r"\{[^{}]*\}", answer or ""):
        try:
            d = json.loads(obj)
        except ValueError:
            continue
        if isinstance(d, dict):
            for k, v in d.items():
                cat = str(k).strip().lower()
                if cat in CATEGORIES and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 10:
                    scores[cat] = float(v)
    for cat in CATEGORIES:
        if cat in scores:
            continue
        # the last match wins: judges often restate the grades at the end
        pattern = rf"(?i)\b{cat}\w*\b[^0-9\n]{{0,40}}?(?<!<){_NUM}(?!\d|\.\d|\s*-\s*\d)"
        for m in re.finditer(pattern, answer or ""):
            v = float(m.group(1))
            if 0 <= v <= 10:
                scores[cat] = v
    m = re.search(r"(?i:age)(?:\s*(?i:group))?\W{0,5}\s*([A-F])\b(?!\s*-)", answer or "")
    if m:
        scores["age_group"] = m.group(1).upper()
    return scores


def _client(cfg: JudgeConfig) -> Any:
    try:
        import openai
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("judge.enabled: needs the `openai` package (pip install 'tinyfoundry[teacher]')") from e
    key = os.environ.get(cfg.api_key_env)
    host = urlparse(cfg.base_url).hostname or ""
    if not key:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"api_key_env: environment variable {cfg.api_key_env} is not set, got {cfg.base_url}")
        key = "local-no-key"
    return openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=cfg.max_retries)


def judge_stories(cfg: JudgeConfig, items: Sequence[tuple[str, str]], num_workers: int = 4) -> dict[str, Any]:
    """Grade (beginning, completion) pairs; returns means per category with counts, and per-story records."""
    client = _client(cfg)
    items = list(items)[: cfg.num_stories]

    def ask(item: tuple[str, str]) -> dict[str, Any]:
        beginning, completion = item
        rec: dict[str, Any] = {"beginning": beginning, "completion": completion}
        try:
            resp = client.chat.completions.create(
                model=cfg.model,
                messages=[{"role": "user", "content": build_prompt(beginning, completion)}],
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
            )
            answer = resp.choices[0].message.content or ""
        except Exception as e:  # noqa: BLE001 - any transport/API failure is counted, not fatal
            rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            return rec
        rec["answer"] = answer
        rec["scores"] = parse_scores(answer)
        return rec

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        records = list(pool.map(ask, items))
    return summarize(records, cfg)


def summarize(records: list[dict[str, Any]], cfg: JudgeConfig | None = None) -> dict[str, Any]:
    answered = [r for r in records if "error" not in r]
    out: dict[str, Any] = {
        "num_requests": len(records),
        "num_failed": len(records) - len(answered),
        "num_unparseable": sum(not any(c in r["scores"] for c in CATEGORIES) for r in answered),
        "num_partial": sum(0 < sum(c in r["scores"] for c in CATEGORIES) < len(CATEGORIES) for r in answered),
    }
    if cfg is not None:
        out["model"] = cfg.model
        out["base_url"] = cfg.base_url
    for c in CATEGORIES:
        vals = [r["scores"][c] for r in answered if c in r["scores"]]
        out[c] = sum(vals) / len(vals) if vals else None
        out[f"num_{c}"] = len(vals)
    ages = [r["scores"]["age_group"] for r in answered if "age_group" in r["scores"]]
    out["age_groups"] = {a: ages.count(a) for a in sorted(set(ages))}
    out["errors"] = sorted({r["error"] for r in records if "error" in r})[:5]
    out["records"] = records
    return out

"""Continuous batching: one thread decodes every live request together, one token per request per step.

Design and invariants
- A `SlotKVCache` holds `max_batch` rows of the model's full context. A new request is prefilled alone into a
  free row (in place, through a one-row view of the cache) and joins the next decode step; a finished or
  cancelled request leaves at once and the last live row moves into its place, so the live rows stay packed
  (0..n-1) and a step runs on exactly n rows. Nobody waits for a batch to fill or to drain.
- Each row keeps its own positions (slot index = RoPE position) and the step's mask hides other rows' longer
  histories, so a request's tokens do not depend on what else is being decoded: alone, it runs the same ops as
  `models.generate` at batch 1 (greedy equality is tested).
- The engine never blocks on a client: it pushes events into each request's unbounded queue and moves on. A
  client that goes away sets `cancelled`; its row is freed before the next step.
- Sampling per row: greedy rows are one argmax for the batch; a sampled row draws from its own
  `torch.Generator` (seeded by the request's seed), so a seeded answer is reproducible whatever else runs.
- Log-probabilities are of the model's raw distribution (before temperature / top-p), as OpenAI and vLLM report
  them; `echo` adds the prompt tokens' log-probabilities from the prefill's logits.

Shape legend: n live rows, V vocab, S key slots, P prompt length.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from models.generate import sample_next
from models.layers import SlotKVCache
from models.transformer import Transformer


@dataclass
class SamplingParams:
    """What one choice asks for; the server validates the values before they get here."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-prob plus the k most likely
    echo: bool = False  # also return the prompt tokens' log-probs (needs logprobs)
    stop_ids: frozenset[int] = frozenset()


@dataclass
class TokenLogprob:
    """One position: the token, its log-prob (None for a prompt's first token), the top-k alternatives."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclass
class Request:
    """One choice of one HTTP request. Events on `events`: ("prompt", [TokenLogprob]) when echo,
    ("token", TokenLogprob), ("end", finish_reason) or ("error", message); all tagged with `index`."""

    prompt_ids: list[int]
    params: SamplingParams
    events: queue.SimpleQueue[tuple[int, str, Any]]
    index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    req: Request
    pos: int  # slot the next token is written to (= tokens so far)
    logits_V: torch.Tensor
    num_out: int = 0
    generator: torch.Generator | None = None


def _logprob_entry(logits_V: torch.Tensor, token: int, k: int) -> TokenLogprob:
    lp_V = logits_V.float().log_softmax(-1)
    top = None
    if k > 0:
        vals, ids = lp_V.topk(k)
        top = list(zip(ids.tolist(), vals.tolist()))
    return TokenLogprob(token, float(lp_V[token]), top)


def _wants_prompt(req: Request) -> bool:
    """Echo with log-probs: every prompt position's logits are needed, so the request is prefilled alone."""
    return req.params.echo and req.params.logprobs is not None


def prefill_groups(reqs: list[Request], max_padding: float = 0.5) -> list[list[Request]]:
    """Requests grouped by prompt length (shortest first) so that padding is at most `max_padding` of each
    group's positions: one long prompt does not make a batch of short ones pay for its length."""
    groups: list[list[Request]] = []
    group: list[Request] = []
    real = 0
    for r in sorted(reqs, key=lambda r: len(r.prompt_ids)):
        n = len(r.prompt_ids)  # the longest so far: the group's padded length if r joins
        if group and (1 - (real + n) / (n * (len(group) + 1))) > max_padding:
            groups.append(group)
            group, real = [], 0
        group.append(r)
        real += n
    return groups + ([group] if group else [])


class Engine:
    """Owns the model and the decode thread; `submit` a `Request`, read its events."""

    def __init__(self, model: Transformer, max_batch: int = 16) -> None:
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.context = int(model.cfg.max_seq_len)
        self.max_batch = max_batch
        self.cache = SlotKVCache(model.cfg, max_batch, self.context, self.device, self.dtype)
        self._pending: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._rows: list[_Row] = []
        self.num_steps = 0  # decode steps run
        self.num_row_steps = 0  # rows decoded, summed over steps (num_row_steps / num_steps = mean batch)
        self.max_rows_seen = 0
        self.num_finished = 0
        self.num_prefills = 0  # prefill forwards run (fewer than requests when arrivals are grouped)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> None:
        if not 1 <= len(req.prompt_ids) <= self.context:
            raise ValueError(f"prompt of {len(req.prompt_ids)} tokens: need 1..{self.context}")
        self._pending.put(req)

    def close(self) -> None:
        self._stop = True
        self._pending.put(None)
        self._thread.join(timeout=10)

    # ---- the decode thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            self._run()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._admit()
                if self._rows:
                    self._step()
            except Exception as e:  # noqa: BLE001 - fail the live requests, keep serving
                for row in self._rows:
                    row.req.events.put((row.req.index, "error", f"{type(e).__name__}: {e}"))
                self._rows.clear()

    def _admit(self) -> None:
        """Take every waiting request that fits; prefill them in padded groups (one forward per group, not per
        request: at many clients new requests arrive every few steps, and one-by-one prefills cost as much as the
        decode steps they interrupt). Echo requests, which need every prompt position's logits, go alone."""
        waiting: list[Request] = []
        while len(self._rows) + len(waiting) < self.max_batch:
            try:  # block only when there is nothing to decode
                req = self._pending.get(block=not self._rows and not waiting)
            except queue.Empty:
                break
            if req is None:
                break
            if not req.cancelled.is_set():
                waiting.append(req)
        alone = [r for r in waiting if _wants_prompt(r)]
        groups = prefill_groups([r for r in waiting if r not in alone])
        for group in [[r] for r in alone] + groups:
            try:
                self._prefill(group)
            except Exception as e:  # noqa: BLE001 - these requests fail, the others go on
                for req in group:
                    req.events.put((req.index, "error", f"{type(e).__name__}: {e}"))

    def _prefill(self, reqs: list[Request]) -> None:
        """Prompts of `reqs` into the next free rows in one forward, right-padded to the longest: with a causal
        mask no real position sees the padding, and the padded slots are overwritten (or masked) by decoding."""
        row0, lens = len(self._rows), [len(r.prompt_ids) for r in reqs]
        T = max(lens)
        idx_nT = torch.zeros(len(reqs), T, dtype=torch.long, device=self.device)
        for i, r in enumerate(reqs):
            idx_nT[i, : lens[i]] = torch.tensor(r.prompt_ids, dtype=torch.long)
        want_prompt = len(reqs) == 1 and _wants_prompt(reqs[0])
        last = None if want_prompt else torch.tensor(lens, device=self.device) - 1
        logits_nTV = self.model(idx_nT, cache=self.cache.view(row0, len(reqs)), last_pos_B=last).logits
        self.num_prefills += 1
        if want_prompt:
            self._echo(reqs[0], idx_nT[0], logits_nTV[0])
        for i, req in enumerate(reqs):
            p = req.params
            gen = None
            if p.temperature > 0 and p.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(p.seed)
            r = _Row(req, lens[i], logits_nTV[i, -1], generator=gen)
            if p.max_tokens == 0 or r.pos >= self.context:
                req.events.put((req.index, "end", "length"))
                self.num_finished += 1
                continue
            if row0 + i != len(self._rows):  # a request before it ended at once: keep the live rows packed
                self.cache.move_row(row0 + i, len(self._rows))
            self._rows.append(r)

    def _echo(self, req: Request, ids_P: torch.Tensor, logits_PV: torch.Tensor) -> None:
        k, ids = req.params.logprobs or 0, req.prompt_ids
        lp_PV = logits_PV[:-1].float().log_softmax(-1)
        entries = [TokenLogprob(ids[0], None, None)]
        chosen = lp_PV.gather(-1, ids_P[1:, None])[:, 0].tolist()
        tops = lp_PV.topk(k, dim=-1) if k > 0 else None
        for i, t in enumerate(ids[1:]):
            top = list(zip(tops.indices[i].tolist(), tops.values[i].tolist())) if tops is not None else None
            entries.append(TokenLogprob(t, chosen[i], top))
        req.events.put((req.index, "prompt", entries))

    def _step(self) -> None:
        rows = self._rows
        logits_nV = torch.stack([r.logits_V for r in rows])
        greedy = [i for i, r in enumerate(rows) if r.req.params.temperature == 0]
        tokens: list[int] = [0] * len(rows)
        if greedy:
            for i, t in zip(greedy, logits_nV[greedy].argmax(-1).tolist()):
                tokens[i] = t
        for i, r in enumerate(rows):
            p = r.req.params
            if p.temperature > 0:
                tokens[i] = int(sample_next(logits_nV[i : i + 1], p.temperature, p.top_k, p.top_p, r.generator)[0])
        keep: list[int] = []
        for i, r in enumerate(rows):
            p, t = r.req.params, tokens[i]
            if r.req.cancelled.is_set():
                continue
            if t in p.stop_ids:
                r.req.events.put((r.req.index, "end", "stop"))
                continue
            lp = _logprob_entry(r.logits_V, t, p.logprobs) if p.logprobs is not None else TokenLogprob(t, None, None)
            r.req.events.put((r.req.index, "token", lp))
            r.num_out += 1
            if r.num_out >= p.max_tokens or r.pos + 1 >= self.context:
                r.req.events.put((r.req.index, "end", "length"))
                continue
            keep.append(i)
        self.num_finished += len(rows) - len(keep)
        # pack the survivors into rows 0..m-1 (moving cache rows only where one finished before them)
        live: list[_Row] = []
        live_tokens: list[int] = []
        for new, old in enumerate(keep):
            if new != old:
                self.cache.move_row(old, new)
            live.append(rows[old])
            live_tokens.append(tokens[old])
        self._rows = live
        if not live:
            return
        n = len(live)
        pos_n = torch.tensor([r.pos for r in live], dtype=torch.long, device=self.device)
        self.cache.pos_B = pos_n
        self.cache.span = int(pos_n.max()) + 1
        mask_n1S = (torch.arange(self.cache.span, device=self.device)[None, :] <= pos_n[:, None])[:, None]
        tok_n1 = torch.tensor(live_tokens, dtype=torch.long, device=self.device)[:, None]
        logits_nV = self.model(tok_n1, cache=self.cache, pos_BT=pos_n[:, None], mask_BTS=mask_n1S,
                               last_only=True).logits[:, -1]
        for i, r in enumerate(live):
            r.logits_V = logits_nV[i]
            r.pos += 1
        self.num_steps += 1
        self.num_row_steps += n
        self.max_rows_seen = max(self.max_rows_seen, n)

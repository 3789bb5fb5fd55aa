"""launch/batching.py's engine alone: requests that arrive together are prefilled in padded groups, and every
answer (tokens, echo log-probs) equals the answer that request gets alone."""

from __future__ import annotations

import queue

import pytest

torch = pytest.importorskip("torch")

from launch.batching import Engine, Request, SamplingParams, prefill_groups  # noqa: E402
from models import ModelConfig, Transformer  # noqa: E402


def _model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                    max_seq_len=128)).eval()
    with torch.no_grad():  # larger weights than at init: attention then depends on the context, so a row that
        for p in model.parameters():  # read another row's cache would change the answers
            p.mul_(4.0)
    return model


def _collect(q: queue.SimpleQueue) -> tuple[list[int], list[float], str]:
    """(token ids, their log-probs after the echoed prompt's, finish reason) of one request."""
    tokens, logprobs = [], []
    while True:
        _, kind, value = q.get(timeout=60)
        if kind == "token":
            tokens.append(value.token)
            logprobs.append(value.logprob)
        elif kind == "prompt":
            tokens += [e.token for e in value]
            logprobs += [0.0 if e.logprob is None else e.logprob for e in value]
        elif kind == "end":
            return tokens, logprobs, value
        else:
            raise AssertionError(value)


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and torch.allclose(torch.tensor(a[1]), torch.tensor(b[1]), atol=1e-4)


def _req(ids: list[int], max_tokens: int, echo: bool = False) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, echo=echo, logprobs=0)
    return Request(ids, params, queue.SimpleQueue())


def test_prefill_groups_bound_padding() -> None:
    reqs = [_req([1] * n, 1) for n in (3, 40, 4, 5, 38, 6)]
    groups = prefill_groups(reqs)
    assert sorted(len(r.prompt_ids) for g in groups for r in g) == [3, 4, 5, 6, 38, 40]
    for g in groups:
        lens = [len(r.prompt_ids) for r in g]
        assert sum(lens) >= 0.5 * max(lens) * len(lens)  # at most half of a group's positions are padding
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[3, 4, 5, 6], [38, 40]]


def test_requests_arriving_together_are_prefilled_together_and_answer_as_alone() -> None:
    model = _model()
    prompts = [[5, 6, 7], [8] * 11, [9, 10], [11, 12, 13, 14, 15, 16], [17], [18, 19, 20, 21]]
    max_tokens = [12, 9, 0, 15, 7, 10]  # one ends at once (max_tokens 0): the rows after it stay packed
    solo = Engine(model, max_batch=8)
    try:
        alone = []
        for ids, m in zip(prompts, max_tokens):
            r = _req(ids, m)
            solo.submit(r)
            alone.append(_collect(r.events))
        echo_alone = _req([3, 4, 5, 6], 3, echo=True)
        solo.submit(echo_alone)
        echo_alone = _collect(echo_alone.events)
    finally:
        solo.close()

    eng = Engine(model, max_batch=8)
    try:
        busy = _req([1, 2], 100)  # keeps the engine decoding, so the burst below waits for one admission
        eng.submit(busy)
        first = busy.events.get(timeout=60)
        assert first[1] == "token"
        burst = [_req(ids, m) for ids, m in zip(prompts, max_tokens)] + [_req([3, 4, 5, 6], 3, echo=True)]
        for r in burst:
            eng.submit(r)
        got = [_collect(r.events) for r in burst]
        _collect(busy.events)
    finally:
        eng.close()
    assert all(_same(g, a) for g, a in zip(got, alone + [echo_alone]))
    assert [len(t) for t, _, _ in got[:-1]] == max_tokens
    assert eng.num_prefills < 1 + len(burst)  # the burst shared prefill forwards

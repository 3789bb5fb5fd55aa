"""Generation: cached decoding equals uncached, batching with padding is invisible, sampling controls."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, Transformer
from models.generate import generate, sample_next


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def model(request) -> Transformer:
    torch.manual_seed(0)
    moe = dict(num_experts=4, moe_hidden_dim=64) if request.param else {}
    # a large init makes the random model's greedy continuation vary from step to step
    cfg = ModelConfig(vocab_size=50, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=48,
                      init_std=0.3, **moe)  # fmt: skip
    return Transformer(cfg).eval()


def uncached_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_greedy_equals_uncached_and_batching_with_padding(model):
    prompts = [[1, 5, 7], [3, 9, 11, 13, 2, 4, 8], [6]]
    got = generate(model, prompts, max_new_tokens=12, temperature=0)
    want = [uncached_greedy(model, p, 12) for p in prompts]
    assert got == want
    assert len(set(map(tuple, want))) == 3 and len(set(want[1])) > 2  # the test is not trivially passing
    assert [generate(model, [p], max_new_tokens=12, temperature=0)[0] for p in prompts] == got


def test_eos_stops_row_and_is_not_returned(model):
    prompt = [[1, 5, 7]]
    full = generate(model, prompt, max_new_tokens=10, temperature=0)[0]
    eos = full[4]
    first = full.index(eos)
    cut = generate(model, prompt + [[2, 2]], max_new_tokens=10, temperature=0, eos_id=eos)
    assert cut[0] == full[:first]
    other = generate(model, [[2, 2]], max_new_tokens=10, temperature=0, eos_id=eos)[0]
    assert cut[1] == other


def test_seeded_sampling_is_reproducible(model):
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.95)
    a = generate(model, [[1, 2], [3]], seed=123, **kw)
    b = generate(model, [[1, 2], [3]], seed=123, **kw)
    c = generate(model, [[1, 2], [3]], seed=124, **kw)
    assert a == b and a != c
    assert all(len(r) == 10 for r in a)


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = generate(model, [[4, 4, 4]], max_new_tokens=8, temperature=0)
    assert generate(model, [[4, 4, 4]], max_new_tokens=8, temperature=1.5, top_k=1, seed=0) == greedy
    assert generate(model, [[4, 4, 4]], max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=0) == greedy


def test_top_k_and_top_p_filter_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, 1.0, g)) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, 1.0, 0, 0.7, g)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7, so token 1 is still needed; 0.8 covers it
    draws = {int(sample_next(logits, 1.0, 0, 1.0, g)) for _ in range(400)}
    assert draws == {0, 1, 2, 3}


def test_long_prompt_is_cropped_and_limits_checked(model):
    long = list(range(1, 50)) * 2
    out = generate(model, [long], max_new_tokens=8, temperature=0)
    assert out == generate(model, [long[-(48 - 8) :]], max_new_tokens=8, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1]], max_new_tokens=48)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, [[]], max_new_tokens=4)
    assert generate(model, [[1], [2]], max_new_tokens=0) == [[], []]


def test_generate_restores_training_mode(model):
    model.train()
    generate(model, [[1]], max_new_tokens=2, temperature=0)
    assert model.training
    model.eval()


def test_compiled_decode_equals_eager_and_sees_weight_edits(model):
    """compile=True (static cache, torch.compile) gives the eager tokens, with padding; the compiled forward is
    built once per model and a weight edited in place afterwards is used (no stale copy of the weights)."""
    from models.generate import _COMPILED

    prompts = [[1, 5, 7], [3, 9, 11, 13, 2, 4, 8]]
    want = generate(model, prompts, max_new_tokens=10, temperature=0)
    assert generate(model, prompts, max_new_tokens=10, temperature=0, compile=True) == want
    fn = _COMPILED[model]
    w = model.layers[0].attn.wq.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(-3.0)
        edited = generate(model, prompts, max_new_tokens=10, temperature=0)
        assert edited != want  # the edit matters
        assert generate(model, prompts, max_new_tokens=10, temperature=0, compile=True) == edited
        assert _COMPILED[model] is fn
    finally:
        with torch.no_grad():
            w.copy_(saved)

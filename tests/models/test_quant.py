"""Quantization math: int8 per-channel, int4 group-wise RTN, GPTQ, packing and runtimes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.compress.gptq import gptq_quantize
from models.compress.quantize import (
    Int8Linear,
    apply_runtime,
    effective_group_size,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)


def test_int8_per_channel_symmetric_error_bound_and_3d():
    torch.manual_seed(0)
    w = torch.randn(3, 16, 64) * torch.logspace(-3, 0, 16)[None, :, None]  # rows of very different scale
    q = quantize_int8(w)
    assert q.codes.dtype == torch.int8 and q.codes.shape == w.shape and q.scale.shape == (3, 16)
    assert int(q.codes.abs().max()) <= 127
    scale = q.scale.float()
    assert torch.all((w - q.dequantize()).abs() <= scale[..., None] / 2 + 1e-7)
    # each row's largest weight maps to (almost exactly) +-127: the scale is per row, not per tensor
    assert torch.all(q.codes.abs().amax(-1) >= 126)


@pytest.mark.parametrize("sym", [False, True])
def test_int4_groupwise_rtn(sym):
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    w[:, :64] *= 10  # one group much larger than the others
    q = quantize_int4(w, group_size=64, sym=sym)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (8, 128)  # two codes per byte
    assert q.scale.shape == (8, 4) and (q.zero is None) == sym
    err = (w - q.dequantize()).abs().reshape(8, 4, 64)
    assert torch.all(err <= q.scale.float()[..., None] / 2 + 1e-6)
    assert err[:, 1:].max() < err[:, 0].max() / 3  # small groups keep their own small scale
    assert q.nbytes() < w.numel() * 4 / 6


def test_pack_unpack_roundtrip_and_group_fallback():
    q = torch.randint(0, 16, (5, 7, 96), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q), 96), q)
    assert effective_group_size(96, 128) == 32 and effective_group_size(192, 128) == 64
    assert effective_group_size(256, 128) == 128
    assert quantize_int4(torch.randn(4, 96), 128).group_size == 32


def _correlated_inputs(n: int, dim: int) -> torch.Tensor:
    a = torch.randn(dim, dim) / dim**0.5
    x = torch.randn(n, dim) @ a + 0.1 * torch.randn(n, dim)
    x[:, :4] *= 8  # a few outlier features, as in real activations
    return x


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_output_error(act_order):
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    x = _correlated_inputs(2048, 256)
    h = x.T @ x
    rtn = quantize_int4(w, 64).dequantize()
    g = gptq_quantize(w, h, group_size=64, act_order=act_order)
    assert g.codes.shape == (64, 128) and g.scale.shape == (64, 4)

    def out_err(wq):
        return ((x @ (w - wq).T) ** 2).mean()

    assert out_err(g.dequantize()) < 0.6 * out_err(rtn)


def test_gptq_handles_dead_inputs():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    x = torch.randn(256, 64)
    x[:, 5] = 0.0  # a feature never active: H_jj = 0
    q = gptq_quantize(w, x.T @ x, group_size=32)
    assert torch.isfinite(q.dequantize()).all()
    assert torch.all(q.dequantize()[:, 5].abs() <= q.scale.float()[:, 0])  # dead column quantized to ~0


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96, bias=False), nn.ReLU(), nn.Linear(96, 32, bias=False))


@torch.no_grad()
def test_int8_runtimes_match_dequantized_weights():
    model = _linear_model()
    qt = {}
    for name in ("0.weight", "2.weight"):
        p = model.get_parameter(name)
        qt[name] = quantize_int8(p.data)
        p.data.copy_(qt[name].dequantize())
    x = torch.randn(4, 64)
    ref = model(x)
    import copy

    m8 = copy.deepcopy(model)
    assert apply_runtime(m8, qt, "int8") == "int8-linear"
    assert isinstance(m8[0], Int8Linear) and m8[0].codes_OI.dtype == torch.int8
    torch.testing.assert_close(m8(x), ref, atol=1e-5, rtol=1e-5)
    assert apply_runtime(copy.deepcopy(model), qt, "dequant") == "dequant"


@torch.no_grad()
def test_torchao_runtime_close_to_dequantized():
    pytest.importorskip("torchao", reason="torchao runtime is optional")
    import copy

    model = _linear_model()
    qt = {}
    for name in ("0.weight", "2.weight"):
        p = model.get_parameter(name)
        qt[name] = quantize_int8(p.data)
        p.data.copy_(qt[name].dequantize())
    x = torch.randn(4, 64)
    ref = model(x)
    mao = copy.deepcopy(model)
    name = apply_runtime(mao, qt, "torchao")
    assert name.startswith("torchao")
    assert (mao(x) - ref).abs().max() < 0.02 * ref.abs().max()

"""Below four bits and low rank: the 2/3-bit grids, GPTQ on them, the low-rank correction and factorization,
their storage, runtimes, export notes, and the Pareto front of the compress report."""

from __future__ import annotations

import json

import pytest
import torch

from models.compress import CompressConfig, load_compressed, run_compress
from models.compress.lowbit import (
    LowbitOptions,
    LowbitPass,
    gptq_lowbit,
    pack_bits,
    quantize_lowbit,
    unpack_bits,
)
from models.compress.lowrank import (
    FactoredLinear,
    LowRank,
    apply_factored,
    export_note,
    fit_lowrank,
    rank_for_budget,
    rank_for_energy,
    whitened_svd,
)
from models.compress.report import mark_pareto
from models.compress.storage import read_compressed
from tests.models.test_compress import model_dir, small_cfg  # noqa: F401 (fixture)
from tests.models.test_quant import _correlated_inputs


def _out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float(((x @ (w - wq).T) ** 2).mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_roundtrip_and_grid(bits):
    torch.manual_seed(0)
    q = torch.randint(0, 1 << bits, (5, 64))
    packed = pack_bits(q, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 64 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 64), q)
    w = torch.randn(8, 128)
    qt = quantize_lowbit(w, bits, 32)
    assert qt.kind == ("int4" if bits == 4 else f"int{bits}") and qt.scale.shape == (8, 4)
    deq = qt.dequantize()
    # every value lies on its group's grid: (value / scale + zero) is an integer code in [0, 2^bits)
    codes = deq.reshape(8, 4, 32) / qt.scale.float()[..., None] + qt.zero.float()[..., None]
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= -1e-3 and codes.max() <= (1 << bits) - 1 + 1e-3
    assert len({float(v) for v in deq[0, :32]}) <= 1 << bits
    assert qt.nbytes() == 8 * 128 * bits // 8 + 8 * 4 * 3  # codes + fp16 scale + uint8 zero per group


@pytest.mark.parametrize("bits,group", [(2, 32), (2, 128), (3, 64)])
def test_gptq_lowbit_beats_rtn(bits, group):
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    x = _correlated_inputs(2048, 256)
    h = x.T @ x
    rtn = quantize_lowbit(w, bits, group, h.diagonal()).dequantize()
    g = gptq_lowbit(w, h, bits, group)
    assert g.kind == f"int{bits}" and g.group_size == group
    assert _out_err(x, w, g.dequantize()) < 0.8 * _out_err(x, w, rtn)
    # the range search is worth something on its own (min/max RTN is worse than searched RTN)
    plain = quantize_lowbit(w, bits, group, search=False).dequantize()
    assert _out_err(x, w, rtn) < _out_err(x, w, plain)


def test_lowrank_fit_error_decreases_with_rank_and_whitening_helps():
    torch.manual_seed(0)
    w = torch.randn(48, 96)
    x = _correlated_inputs(1024, 96)
    h = x.T @ x
    errs = [_out_err(x, w, torch.zeros_like(w) if r == 0 else torch.mm(*fit_lowrank(w, h, r))) for r in (0, 4, 16, 48)]
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-6 * errs[0]
    plain = _out_err(x, w, torch.mm(*fit_lowrank(w, h, 8, "none")))
    assert _out_err(x, w, torch.mm(*fit_lowrank(w, h, 8, "cholesky"))) < plain
    assert _out_err(x, w, torch.mm(*fit_lowrank(w, h, 8, "diag"))) < plain
    _, S, _, _ = whitened_svd(w, h)
    assert rank_for_energy(S, 0.5) < rank_for_energy(S, 0.9) < rank_for_energy(S, 0.999) <= 48


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_lowrank_storage_bits_and_budget(bits):
    torch.manual_seed(0)
    u, v = torch.randn(64, 3), torch.randn(3, 128)
    lr = LowRank.quantize(u, v, bits)
    assert lr.rank == 3 and lr.shape == (64, 128)
    assert torch.allclose(lr.dense(), u @ v, rtol=0, atol={4: 3.0, 8: 0.2, 16: 0.02}[bits])
    expect = 3 * (64 + 128) * bits // 8 + (3 * 2 * 2 if bits < 16 else 0)
    assert lr.nbytes() == expect
    r = rank_for_budget(256, 256, 0.25, 8)
    assert r == 3 and r * (8 * 512 + 32) <= 0.25 * 256 * 256 < (r + 1) * (8 * 512 + 32)


def test_correction_lowers_error_within_budget():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    x = _correlated_inputs(2048, 256)
    h = x.T @ x
    plain = LowbitPass(LowbitOptions(bits=2, group_size=64)).quantize_one(w, h)
    errs = []
    for rank in (2, 8, 32):
        q = LowbitPass(LowbitOptions(bits=2, group_size=64, lowrank_rank=rank)).quantize_one(w, h)
        assert q.lowrank.rank == rank and q.dequantize().shape == w.shape
        errs.append(_out_err(x, w, q.dequantize()))
    assert _out_err(x, w, plain.dequantize()) > errs[0] > errs[1] > errs[2]
    q = LowbitPass(LowbitOptions(bits=2, group_size=64, lowrank_budget=0.25)).quantize_one(w, h)
    assert 0 < q.lowrank.nbytes() * 8 / w.numel() <= 0.25
    two = LowbitPass(LowbitOptions(bits=2, group_size=64, lowrank_rank=8, lowrank_iters=2)).quantize_one(w, h)
    assert _out_err(x, w, two.dequantize()) < errs[0]


def test_caldera_init_from_the_weight():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    w += torch.randn(64, 2) @ torch.randn(2, 256) * 0.05  # a strong low-rank part the grid should not spend levels on
    x = _correlated_inputs(2048, 256)
    h = x.T @ x
    plain = LowbitPass(LowbitOptions(bits=2, group_size=64)).quantize_one(w, h)
    init = LowbitPass(LowbitOptions(bits=2, group_size=64, lowrank_rank=4, lowrank_init="weight")).quantize_one(w, h)
    assert init.lowrank.rank == 4 and _out_err(x, w, init.dequantize()) < _out_err(x, w, plain.dequantize())


def _tiny_model():
    from models import ModelConfig
    from models.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32, init_std=0.1)
    return Transformer(cfg), torch.randint(0, 96, (16, 32))


@pytest.mark.parametrize("lowrank_bits,tune_scales", [(8, False), (4, True), (16, False)])
def test_block_tuning_lowers_block_output_error(lowrank_bits, tune_scales):
    from models.compress.blocktune import tune_block
    from models.compress.calibration import quantize_blocks

    model, calib = _tiny_model()
    lowbit = LowbitPass(LowbitOptions(bits=2, group_size=32, lowrank_rank=2, lowrank_bits=lowrank_bits))
    seen = []

    def tune(block, qtensors, records):
        assert records and sorted(qtensors) == sorted(n + ".weight" for n, m in block.named_modules()
                                                       if isinstance(m, torch.nn.Linear))
        tuned, err = tune_block(block, qtensors, records, steps=60, lr=3e-2, tune_scales=tune_scales)
        seen.append((block, qtensors, tuned, err))
        return tuned

    qt = quantize_blocks(model, calib, 4, "t", lambda _n, w, h: lowbit.quantize_one(w, h), tune)
    assert len(seen) == 2 and len(qt) == 14
    for block, fitted, tuned, err in seen:
        assert err["after"] < 0.9 * err["before"]
        for k, q in tuned.items():
            assert torch.equal(q.codes, fitted[k].codes) and torch.equal(q.zero, fitted[k].zero)  # codes frozen
            assert q.lowrank.rank == 2 and q.lowrank.bits == lowrank_bits and q.scale.dtype == torch.float16
            assert torch.equal(q.scale, fitted[k].scale) != tune_scales
            # the model holds exactly the stored (tuned) values
            assert torch.equal(block.get_parameter(k), q.dequantize())


def test_block_tuning_of_scales_alone_and_kept_only_when_better():
    from models.compress.blocktune import tune_block
    from models.compress.calibration import quantize_blocks

    model, calib = _tiny_model()
    plain = LowbitPass(LowbitOptions(bits=2, group_size=32))
    errs = []

    def tune(block, qtensors, records):
        zero, err0 = tune_block(block, qtensors, records, steps=0, lr=1e-3, tune_scales=True)
        assert zero is qtensors and err0["after"] == err0["before"]
        tuned, err = tune_block(block, qtensors, records, steps=40, lr=1e-2, tune_scales=True)
        assert all(q.lowrank is None for q in tuned.values())
        errs.append(err)
        return tuned

    quantize_blocks(model, calib, 4, "t", lambda _n, w, h: plain.quantize_one(w, h), tune)
    assert all(e["after"] < e["before"] for e in errs)


def test_sensitivity_allocation_spends_the_block_budget():
    from models.compress.calibration import quantize_blocks
    from models.compress.lowrank import factor_bits_per_rank

    model, calib = _tiny_model()
    p = LowbitPass(LowbitOptions(bits=2, group_size=32, lowrank_budget=1.0, lowrank_alloc="sensitivity"))
    seen = []

    def plan(block, linears, records):
        prefix = next(n for n, m in model.named_modules() if m is block) + "."
        grids = {}
        ranks = p.allocate(block, {n[len(prefix):]: v for n, v in linears.items()}, records, grids, prefix)
        assert set(ranks) == set(linears) == set(grids)
        spent = sum(r * factor_bits_per_rank(*linears[n][0].shape, 8) for n, r in ranks.items())
        budget = sum(w.numel() for w, _ in linears.values())
        cheapest = min(factor_bits_per_rank(*w.shape, 8) for w, _ in linears.values())
        assert budget - cheapest < spent <= budget  # greedy fills the block's budget
        seen.append(ranks)

    quantize_blocks(model, calib, 4, "t", lambda _n, w, h: None, None, "block", plan)
    assert len(seen) == 2 and all(len(set(r.values())) > 1 for r in seen)  # not uniform


def test_tune_targets_block_or_model():
    from models.compress.calibration import module_outputs, quantize_blocks

    got: dict[str, list] = {"block": [], "model": []}
    plain = LowbitPass(LowbitOptions(bits=2, group_size=32))
    for target in got:
        model, calib = _tiny_model()
        quantize_blocks(model, calib, 4, "t", lambda _n, w, h: plain.quantize_one(w, h),
                        lambda _b, q, rec, t=target: got[t].append([r[2] for r in rec]) or q, target)
    (b0, b1), (m0, m1) = got["block"], got["model"]
    # block 0 sees the same (uncompressed embedding) inputs either way; block 1's model target is the fp model's output
    assert all(torch.equal(x, y) for x, y in zip(b0, m0, strict=True))
    assert not any(torch.allclose(x, y) for x, y in zip(b1, m1, strict=True))
    model, calib = _tiny_model()
    fp1 = module_outputs(model, model.layers[1], calib, 4)
    assert all(torch.equal(x, y) for x, y in zip(fp1, m1, strict=True))
    with pytest.raises(ValueError, match="lowrank_alloc"):
        LowbitOptions(lowrank_alloc="sensitivity", lowrank_rank=4)
    with pytest.raises(ValueError, match="tune_target"):
        quantize_blocks(model, calib, 4, "t", lambda _n, w, h: None, None, "layer")


def test_lowbit_pass_with_tuning_end_to_end(model_dir, tmp_path):  # noqa: F811 (fixture)
    mdir, ids, bpt = model_dir
    cfg = small_cfg([
        {"method": "lowbit", "name": "g2-lr", "bits": 2, "group_size": 32, "lowrank_rank": 2},
        {"method": "lowbit", "name": "g2-lr-tuned", "bits": 2, "group_size": 32, "lowrank_rank": 2,
         "tune_steps": 30, "tune_lr": 3e-2, "lowrank_bits": 4},
        {"method": "lowbit", "name": "g2-scales", "bits": 2, "group_size": 32, "tune_steps": 20, "tune_scales": True,
         "tune_target": "model"},
        {"method": "lowbit", "name": "g2-alloc", "bits": 2, "group_size": 32, "lowrank_budget": 0.5,
         "lowrank_alloc": "sensitivity"},
    ])
    rep = run_compress(cfg, mdir, ids, bpt, tmp_path / "c")
    by = {p["name"]: p for p in rep["passes"]}
    mse = by["g2-lr-tuned"]["tune_block_mse"]
    assert len(mse) == 2 and all(after <= before for before, after in mse) and any(a < b for b, a in mse)
    assert "tune_block_mse" not in by["g2-lr"] and len(by["g2-scales"]["tune_block_mse"]) == 2
    assert 0.3 < by["g2-alloc"]["lowrank_bits_per_weight"] <= 0.5 and len(by["g2-alloc"]["lowrank_ranks"]) > 1
    model, _ = load_compressed(tmp_path / "c" / "g2-lr-tuned")
    from models.compress.report import eval_bpb

    bpb = eval_bpb(model, ids[: rep["num_eval_tokens"]], bpt, rep["eval_seq_len"], 8)
    assert abs(bpb - by["g2-lr-tuned"]["val_bpb"]) < 1e-4
    _, _, qt, _ = read_compressed(tmp_path / "c" / "g2-lr-tuned")
    assert all(q.lowrank is not None and q.lowrank.bits == 4 for q in qt.values() if q.kind == "int2")


def test_factored_linear_runs_the_product():
    torch.manual_seed(0)
    u, v = torch.randn(24, 5), torch.randn(5, 40)
    fl = FactoredLinear(u, v)
    x = torch.randn(3, 40)
    assert torch.allclose(fl(x), x @ (u @ v).T, atol=1e-5)
    assert sum(p.numel() for p in fl.parameters()) == 5 * (24 + 40)


def test_lowbit_and_lowrank_passes_save_reload_and_report(model_dir, tmp_path):  # noqa: F811 (fixture)
    mdir, ids, bpt = model_dir
    cfg = small_cfg([
        {"method": "lowbit", "name": "g2", "bits": 2, "group_size": 32},
        {"method": "lowbit", "name": "g2-lr", "bits": 2, "group_size": 32, "lowrank_rank": 4},
        {"method": "lowbit", "name": "g3", "bits": 3, "group_size": 64, "embeddings": "fp32"},
        {"method": "lowrank", "name": "svd", "size_ratio": 0.5},
        {"method": "lowbit", "name": "svd-g4", "input": "svd", "bits": 4},
    ])
    calls = []
    rep = run_compress(cfg, mdir, ids, bpt, tmp_path / "c", recover=lambda s, t: calls.append(1) or s)
    by = {p["name"]: p for p in rep["passes"]}
    assert not calls  # lowrank's recovery is off by default
    assert by["g2"]["bytes"] < by["g3"]["bytes"] and by["g2"]["bytes"] < by["g2-lr"]["bytes"]
    assert by["g2-lr"]["lowrank_bits_per_weight"] > 0 and by["g2"]["lowrank_bits_per_weight"] == 0
    assert 2.5 < by["g2"]["block_bits_per_weight"] < 3.0  # 2 bits + (16 + 8) / 32 of scale and zero
    assert by["svd"]["bytes"] < 0.75 * rep["baseline"]["bytes"] and by["svd"]["runtime"] == "factored"
    for name, p in by.items():
        model, _ = load_compressed(tmp_path / "c" / name)
        # the reloaded weights are exactly what was measured
        from models.compress.report import eval_bpb

        bpb = eval_bpb(model, ids[: rep["num_eval_tokens"]], bpt, rep["eval_seq_len"], 8)
        assert abs(bpb - p["val_bpb"]) < 1e-4, name
    _, _, qt, _ = read_compressed(tmp_path / "c" / "g2-lr")
    assert any(q.kind == "int2" and q.lowrank is not None and q.lowrank.rank == 4 for q in qt.values())
    note, from_pass = export_note(qt)
    assert "merged" in note and not from_pass
    _, _, qt, _ = read_compressed(tmp_path / "c" / "svd")
    note, from_pass = export_note(qt)
    assert "re-multiplied" in note and from_pass
    fact, _ = load_compressed(tmp_path / "c" / "svd", runtime="factored")
    dense, _ = load_compressed(tmp_path / "c" / "svd")
    assert any(isinstance(m, FactoredLinear) for m in fact.modules())
    x = ids[:32][None]
    assert torch.allclose(fact(x).logits, dense(x).logits, atol=1e-4)
    assert apply_factored(dense, qt) == "factored"
    # export: the factored pass's files hold the re-multiplied product; the corrected pass says what it merged
    from models.export import ExportConfig, run_export
    from models.gguf_import import load_gguf

    info = run_export(ExportConfig(gguf_types=["f32"], card=False, hf_quant=True), tmp_path / "c" / "svd",
                      tmp_path / "e-svd")
    assert any("re-multiplied" in n for n in info["notes"])
    g = load_gguf(tmp_path / "e-svd" / "gguf" / "tinyfoundry-f32.gguf")
    for name in qt:
        assert torch.allclose(g.get_parameter(name), qt[name].dequantize(), atol=1e-6), name
    info = run_export(ExportConfig(gguf_types=["f32"], card=False), tmp_path / "c" / "g2-lr", tmp_path / "e-lr")
    assert any("merged" in n for n in info["notes"]) and any("hf-quant not written" in n for n in info["notes"])
    assert "factors" not in info["files"][-1]["weights"]  # the GGUF comes from the full-precision input
    # Pareto flags: every entry has one, the baseline is on the front, a dominated pass is not
    assert all("pareto" in p for p in rep["passes"]) and rep["baseline"]["pareto"]
    on_disk = json.loads((tmp_path / "c" / "report.json").read_text())
    assert [p["pareto"] for p in on_disk["passes"]] == [p["pareto"] for p in rep["passes"]]


def test_lowrank_recovery_trains_the_factors(model_dir, tmp_path):  # noqa: F811 (fixture)
    mdir, ids, bpt = model_dir
    seen = []

    def recover(student, teacher):
        seen.append(sum(isinstance(m, FactoredLinear) for m in student.modules()))
        with torch.no_grad():
            for m in student.modules():
                if isinstance(m, FactoredLinear):
                    m.up.weight.mul_(0.5)
        return student

    rep = run_compress(small_cfg([{"method": "lowrank", "size_ratio": 0.5, "recover": True}]), mdir, ids, bpt,
                       tmp_path / "c", recover=recover)
    assert seen and seen[0] == rep["passes"][0]["factored"] > 0 and rep["passes"][0]["recovered"]
    model, _ = load_compressed(tmp_path / "c" / "lowrank")
    _, _, qt, _ = read_compressed(tmp_path / "c" / "lowrank")
    name, q = next(iter(qt.items()))
    assert torch.allclose(model.get_parameter(name), q.dequantize(), atol=1e-6)


def test_mark_pareto():
    pts = [{"bytes": 100, "val_bpb": 1.0}, {"bytes": 50, "val_bpb": 1.1}, {"bytes": 60, "val_bpb": 1.2},
           {"bytes": 20, "val_bpb": 2.0}, {"bytes": 50, "val_bpb": 1.1}, {"bytes": 30, "val_bpb": None}]
    mark_pareto(pts)
    assert [p["pareto"] for p in pts] == [True, True, False, True, True, False]


def test_options_are_validated():
    with pytest.raises(ValueError, match="bits"):
        LowbitOptions(bits=1)
    with pytest.raises(ValueError, match="lowrank_bits"):
        LowbitOptions(lowrank_bits=2)
    with pytest.raises(ValueError, match="lowrank_budget"):
        LowbitOptions(lowrank_budget=-1)
    with pytest.raises(ValueError, match="nothing to tune"):
        LowbitOptions(tune_steps=10)
    with pytest.raises(ValueError, match="tune_steps"):
        LowbitOptions(tune_steps=-1, lowrank_rank=2)
    with pytest.raises(ValueError, match="lowrank_init"):
        LowbitOptions(lowrank_init="svd")
    with pytest.raises(ValueError, match="lowrank_alloc"):
        LowbitOptions(lowrank_alloc="sensitivity", lowrank_rank=4)
    with pytest.raises(ValueError, match="tune_target"):
        LowbitOptions(tune_target="layer", tune_scales=True)
    LowbitOptions(tune_steps=10, tune_scales=True)
    with pytest.raises(ValueError, match="group_size"):
        CompressConfig(passes=[{"method": "lowbit", "group_size": 48}])
    with pytest.raises(ValueError, match="size_ratio"):
        CompressConfig(passes=[{"method": "lowrank", "size_ratio": 0}])

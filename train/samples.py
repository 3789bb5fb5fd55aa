"""Sample text during training: generate from a prompt every N optimizer steps (or at each validation) and log it.

Why: a loss curve does not show when a model starts writing sentences; a sample at each log point does, at the cost
of one short generation (temperature 0.8, top-k 50, a fixed seed so samples of different steps are comparable).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from train.step_events import StepCallback


class SampleText(StepCallback):
    """Generates from a prompt and logs the text to TensorBoard (every N steps, or at each validation)."""

    def __init__(self, tokenizer_file: Path | None, prompt: str, num_tokens: int, every_steps: int,
                 eos_id: int | None, seed: int) -> None:
        self.tok = None
        if tokenizer_file is not None and Path(tokenizer_file).is_file():
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.prompt, self.num_tokens, self.every = prompt, num_tokens, every_steps
        self.eos_id, self.seed = eos_id, seed
        self.last_text = ""

    def _prompt_ids(self) -> list[int]:
        if self.tok is not None:
            ids = self.tok.encode(self.prompt).ids
            return ids or [self.eos_id or 0]
        return [self.eos_id if self.eos_id is not None else 0]

    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.num_tokens <= 0 or trainer.logger is None:
            return
        from models.generate import generate

        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                new = generate(model, [self._prompt_ids()], max_new_tokens=self.num_tokens, temperature=0.8,
                               top_k=50, eos_id=self.eos_id, seed=self.seed)[0]
        finally:
            model.train(was_training)
        text = self.tok.decode(new) if self.tok is not None else " ".join(map(str, new))
        self.last_text = self.prompt + text if self.tok is not None else text
        exp = trainer.logger.experiment
        if hasattr(exp, "add_text"):
            exp.add_text("samples", self.last_text.replace("\n", "  \n"), global_step=trainer.global_step)

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self.generate(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.generate(trainer, pl_module)

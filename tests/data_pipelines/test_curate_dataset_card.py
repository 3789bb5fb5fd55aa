"""The curated folder loads with `datasets.load_dataset(folder)`: kept documents by default, the dropped
ones (with `reason`) as config `dropped`, because the folder's README.md card says so in `configs:`."""

from __future__ import annotations

import json

import pytest
import yaml

from data_pipelines.curate import CurateConfig, run_curate

datasets = pytest.importorskip("datasets")

PROSE = (
    "The old lighthouse stood at the edge of the cliff, and every night the keeper climbed the stairs "
    "to light the lamp. He had done this for thirty years. The ships that passed knew the light, and "
    "the sailors were glad to see it. One winter the storm was so strong that the glass broke, but the "
    "keeper held a lantern in the window until the morning came."
)


def _curate(tmp_path, recs):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cfg = CurateConfig(steps=["normalize", "length", "exact_dedup"], num_workers=1, plots=False)
    out = tmp_path / "data"
    return run_curate(cfg, out, [str(tmp_path / "in.jsonl")]), out


def test_load_dataset_on_curated_folder_gives_kept_and_dropped_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    recs = [{"id": f"d{i}", "text": f"{PROSE} Story number {i}.", "label": i} for i in range(5)]
    recs += [{"id": "short", "text": "Too short.", "label": 9}, {"id": "copy", "text": recs[1]["text"], "label": 8}]
    stats, out = _curate(tmp_path, recs)
    assert stats["docs_out"] == 5
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default", "dropped"]

    kept = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(kept["id"]) == [f"d{i}" for i in range(5)]
    assert "reason" not in kept.column_names and kept["label"] == [0, 1, 2, 3, 4]
    dropped = datasets.load_dataset(str(out), "dropped", split="train", cache_dir=str(tmp_path / "cache"))
    assert dict(zip(dropped["id"], dropped["reason"])) == {"short": "too_short", "copy": "exact_dup"}
    assert dict(zip(dropped["id"], dropped["dup_of"])) == {"short": None, "copy": "d1"}


def test_card_without_dropped_files_has_only_the_default_config(tmp_path):
    recs = [{"id": f"d{i}", "text": f"{PROSE} Story number {i}."} for i in range(3)]
    stats, out = _curate(tmp_path, recs)
    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default"]
    kept = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert kept.num_rows == 3

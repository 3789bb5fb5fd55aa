"""The curated folder's dataset card: `README.md` whose YAML `configs:` header tells `datasets` what to load.

Why: the curated folder holds kept documents (`part-*.parquet`, columns `id`, `text`, `source`, input
metadata) *and*, under `dropped/`, the dropped ones with a `reason` column. Without a card,
`datasets.load_dataset("runs/<name>/data")` globs every parquet file below the folder, mixes the two
schemas and fails. The Hugging Face way to say which files form which subset is the card's `configs:`
list (https://huggingface.co/docs/hub/datasets-manual-configuration), so:

- config `default` (loaded when no name is given): `part-*.parquet`, the kept documents;
- config `dropped` (only when there are dropped files): `dropped/*.parquet`, with `reason` (and `dup_of`
  for duplicates).

The body is a short human summary (counts and top drop reasons) taken from `stats.json`.
"""

from __future__ import annotations

from typing import Any

import yaml


def card_text(stats: dict[str, Any], has_dropped: bool) -> str:
    """The README.md text for a curated folder described by `stats` (the dict written to stats.json)."""
    configs: list[dict[str, Any]] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": "part-*.parquet"}], "default": True}
    ]
    if has_dropped:
        configs.append({"config_name": "dropped", "data_files": [{"split": "train", "path": "dropped/*.parquet"}]})
    header = yaml.safe_dump({"configs": configs}, sort_keys=False)
    top = "\n".join(f"| `{reason}` | {count} |" for reason, count in list(stats.get("dropped", {}).items())[:10])
    lines = [
        "---",
        header.rstrip("\n"),
        "---",
        "",
        "# Curated dataset",
        "",
        f"Written by `tinyfoundry curate` (profile `{stats.get('profile', '')}`, steps: "
        f"{', '.join(stats.get('steps', []))}).",
        "",
        f"- kept: {stats.get('docs_out', 0)} of {stats.get('docs_in', 0)} documents "
        f"({stats.get('bytes_out', 0)} of {stats.get('bytes_in', 0)} bytes), in `part-*.parquet`;",
        '- `datasets.load_dataset("<this folder>")` loads the kept documents; '
        + ('`load_dataset("<this folder>", "dropped")` the dropped ones with their `reason`.' if has_dropped
           else "no document was written to `dropped/`."),
        "",
    ]
    if top:
        lines += ["| drop reason | documents |", "|---|---|", top, ""]
    lines += ["See `stats.json` and `report.md` for every figure.", ""]
    return "\n".join(lines)

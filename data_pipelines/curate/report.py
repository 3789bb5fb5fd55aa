"""report.md + PNG histograms: what was kept, what was dropped and why, with examples.

The histograms overlay kept and dropped documents for each score a filter judged (sampled up to
`pipeline.MAX_SCORES_PER_SHARD` per shard), so a threshold can be read off the picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_SCORE_TITLES = {
    "words": "words per document (after transforms)",
    "mean_word_length": "Gopher: mean word length",
    "alpha_words_ratio": "Gopher: fraction of words with a letter",
    "stop_words": "Gopher: stop words",
    "top_2gram_fraction": "Gopher: chars in the top 2-gram",
    "dup_5gram_fraction": "Gopher: chars in repeated 5-grams",
    "line_punct_ratio": "FineWeb: lines ending in punctuation",
    "c4_removed_fraction": "C4: fraction of chars removed",
    "uppercase_ratio": "uppercase letters / letters",
    "stop_word_ratio": "function words / words",
    "language_score": "language ID probability",
    "bits_per_byte": "model bits per byte",
}


def _save_fig(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)


def write_report(
    out_dir: Path,
    stats: dict[str, Any],
    scores: dict[str, dict[str, list[float]]],
    words_kept: list[float],
    plots: bool = True,
) -> list[str]:
    """Writes out_dir/report.md and (with `plots`) hist_length.png + hist_scores.png; returns the PNG names."""
    pngs = _plots(out_dir, scores, words_kept) if plots else []
    _write_markdown(out_dir, stats, pngs)
    return pngs


def _plots(out_dir: Path, scores: dict[str, dict[str, list[float]]], words_kept: list[float]) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend, faster import

    pngs: list[str] = []
    if words_kept:
        fig = Figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        ax.hist(words_kept, bins=50, color="tab:blue")
        ax.set_xlabel("words")
        ax.set_ylabel("documents")
        ax.set_title(f"kept documents: length ({len(words_kept)} docs)")
        fig.subplots_adjust(left=0.14, bottom=0.15, right=0.97, top=0.9)
        _save_fig(fig, out_dir / "hist_length.png")
        pngs.append("hist_length.png")
    keys = [k for k in _SCORE_TITLES if scores.get("kept", {}).get(k) or scores.get("dropped", {}).get(k)]
    if keys:
        ncol = 3
        nrow = (len(keys) + ncol - 1) // ncol
        fig = Figure(figsize=(4.2 * ncol, 3.0 * nrow))
        for i, key in enumerate(keys):
            ax = fig.add_subplot(nrow, ncol, i + 1)
            kept = scores.get("kept", {}).get(key, [])
            drop = scores.get("dropped", {}).get(key, [])
            lo, hi = min(kept + drop), max(kept + drop)
            rng = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
            if kept:
                ax.hist(kept, bins=40, range=rng, alpha=0.6, label=f"kept ({len(kept)})", color="tab:blue")
            if drop:
                ax.hist(drop, bins=40, range=rng, alpha=0.6, label=f"dropped ({len(drop)})", color="tab:red")
            ax.set_title(_SCORE_TITLES[key], fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.94, hspace=0.45, wspace=0.25)
        _save_fig(fig, out_dir / "hist_scores.png")
        pngs.append("hist_scores.png")
    return pngs


def _write_markdown(out_dir: Path, s: dict[str, Any], pngs: list[str]) -> None:
    lines = [
        "# Curation report",
        "",
        f"Profile `{s['profile']}`, steps: {' → '.join(f'`{x}`' for x in s['steps'])}.",
        "",
        "| | documents | bytes |",
        "|---|---:|---:|",
        f"| in | {s['docs_in']:,} | {s['bytes_in']:,} |",
        f"| kept | {s['docs_out']:,} ({100 * s['keep_fraction']:.2f}%) | {s['bytes_out']:,} |",
        f"| dropped | {s['docs_in'] - s['docs_out']:,} | |",
        "",
        f"{s['num_shards']} shard(s), {s['num_workers']} worker(s), {s['docs_per_s'] or 0:,.0f} docs/s "
        f"in the per-document phase, {s['wall_s']:.1f} s wall.",
        "",
        "## Drops by step",
        "",
        "| step | dropped |",
        "|---|---:|",
        *[f"| `{k}` | {v:,} |" for k, v in s["dropped_by_step"].items()],
        "",
        "## Drops by reason",
        "",
        "| reason | dropped | % of input |",
        "|---|---:|---:|",
        *[f"| `{k}` | {v:,} | {100 * v / max(s['docs_in'], 1):.2f} |" for k, v in s["dropped"].items()],
        "",
    ]
    if s.get("minhash"):
        m = s["minhash"]
        lines += [
            f"Near-dedup: word {m['ngram']}-grams, {m['num_bands']} bands x {m['rows_per_band']} rows, "
            f"effective Jaccard threshold {m['threshold']:.3f}.",
            "",
        ]
    rd = s["read"]
    lines += ["## Input repairs", ""]
    lines.append(
        f"- invalid UTF-8: {rd['invalid_utf8_chars']:,} characters replaced in {rd['invalid_utf8_docs']:,} "
        "document(s)/line(s)"
    )
    for src, e in rd["malformed_lines"].items():
        lines.append(f"- malformed JSON lines in `{src}`: {e['count']:,} (first at lines {e['first_lines']})")
    if s.get("pii_redactions"):
        lines.append("- PII redacted: " + ", ".join(f"{k} {v:,}" for k, v in s["pii_redactions"].items()))
    lines.append("")
    if pngs:
        lines += ["## Histograms", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    if s.get("examples"):
        lines += ["## Examples of dropped documents", ""]
        for reason, exs in s["examples"].items():
            lines.append(f"### `{reason}`")
            lines.append("")
            for ex in exs:
                snippet = ex["text"].replace("\n", " ⏎ ")[:240]
                extra = f" (duplicate of `{ex['dup_of']}`)" if ex.get("dup_of") else ""
                lines.append(f"- `{ex['id']}`{extra}: {snippet}")
            lines.append("")
    path = out_dir / "report.md"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)

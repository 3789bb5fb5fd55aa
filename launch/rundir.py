"""The run directory: fixed names (a contract, see "The run directory" in README.md) and per-stage manifests.

Invariants:
- A stage's outputs are trusted only when its manifest exists. The manifest is written last and atomically, after every
  output, so a stage killed half-way has no manifest and is redone (or resumed) by the next run.
- A manifest records the stage's config hash and the identity of its inputs (the `run_id` of each upstream stage's
  manifest, or size+mtime of external files). When either changes the stage is redone and, since a fresh run_id is
  drawn, everything downstream of it is redone too.
- A `started` marker holds the config hash of the attempt in progress. A rerun with the same hash keeps partial outputs
  so a stage can resume (training continues from last.ckpt, curation skips finished shards); a rerun with another hash
  clears them first, so nothing made under an old config is mistaken for new.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from models.atomic import atomic_write_json as _atomic_write_json
from models.atomic import atomic_write_text as _atomic_write_text


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and an atomic rename (mode from the umask)."""
    _atomic_write_text(path, text)


def atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_json(path, obj)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tinyfoundry", "torch", "lightning", "tokenizers", "datasets", "numpy", "safetensors", "transformers", "gguf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_fingerprint(paths: Iterable[Path]) -> str:
    """Identity of external input files: path, size and mtime (content hashing 1 GB of text would be slow)."""
    parts = []
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory (names fixed: see "The run directory" in README.md)."""

    root: Path

    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final_model(self) -> Path:
        return self.root / "checkpoints" / "final"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def train_summary(self) -> Path:
        return self.root / "train" / "summary.json"

    @property
    def compressed(self) -> Path:
        return self.root / "compressed"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def manifests(self) -> Path:
        return self.root / ".manifests"

    def manifest_path(self, stage: str) -> Path:
        return self.manifests / f"{stage}.json"

    def started_path(self, stage: str) -> Path:
        return self.manifests / f"{stage}.started.json"

    # -- manifests ---------------------------------------------------------------------------------------------

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        p = self.manifest_path(stage)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged manifest is not trusted

    def is_current(self, stage: str, config_hash: str, inputs: dict[str, str]) -> bool:
        m = self.read_manifest(stage)
        return m is not None and m.get("config_hash") == config_hash and m.get("inputs") == inputs

    def begin(self, stage: str, config_hash: str, inputs: dict[str, str], outputs: Iterable[str] = ()) -> None:
        """Drop the stage's manifest; clear its `outputs` (paths under the root, from the stage's declaration) unless
        this is a retry of the same attempt (resume)."""
        self.manifest_path(stage).unlink(missing_ok=True)
        started = self.started_path(stage)
        same_attempt = False
        if started.is_file():
            try:
                prev = json.loads(started.read_text())
                same_attempt = prev.get("config_hash") == config_hash and prev.get("inputs") == inputs
            except (OSError, json.JSONDecodeError):
                same_attempt = False
        if not same_attempt:
            for name in outputs:
                target = self.root / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        atomic_write_json(started, {"config_hash": config_hash, "inputs": inputs,
                                    "started_at": _now()})

    def finish(self, stage: str, config_hash: str, inputs: dict[str, str], wall_s: float,
               outputs: dict[str, Any] | None = None, paths: Iterable[str] = ()) -> dict[str, Any]:
        """Write the manifest last: `outputs` are the stage's small result facts, `paths` the run-directory paths it
        declares as its own."""
        manifest = {
            "stage": stage,
            "run_id": uuid.uuid4().hex,
            "config_hash": config_hash,
            "inputs": inputs,
            "outputs": outputs or {},
            "paths": list(paths),
            "versions": library_versions(),
            "finished_at": _now(),
            "wall_s": round(wall_s, 3),
        }
        atomic_write_json(self.manifest_path(stage), manifest)
        self.started_path(stage).unlink(missing_ok=True)
        return manifest

    def run_id(self, stage: str) -> str | None:
        m = self.read_manifest(stage)
        return None if m is None else m.get("run_id")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

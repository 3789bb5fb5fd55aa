"""The stage registry: each pipeline stage is declared once, and everything that lists stages reads it from here.

A `Stage` names the config sections it declares (their dataclasses), the sections whose values decide its outputs, the
upstream stages and external files it consumes, the run-directory paths it writes, its entry function, its help line
and whether `tinyfoundry run` includes it by default. From those declarations:

- the config schema: the stage names a run may list, the default `stages:`, and section name -> dataclass
  (launch/config.py);
- the CLI: one subcommand per stage with its help and the options of the sections it reads (launch/cli.py);
- `run`, the upstream identities and the manifests, and which outputs are cleared when a stage is redone
  (launch/stages.py, launch/rundir.py).

Pipeline order is registration order (or `after=` a named stage). The built-in stages register themselves in
launch/stages.py, which `stages()` imports on first use (then any module an installed package lists under the
`tinyfoundry.stages` entry-point group), so this module stays import-light (`tinyfoundry --help`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from launch.config import RunConfig
    from launch.rundir import RunDir

BUILTIN_MODULE = "launch.stages"  # registers the built-in stages when imported
ENTRY_POINT_GROUP = "tinyfoundry.stages"  # a package's module under this group registers its stages when loaded


@dataclass(frozen=True)
class Inputs:
    """What one stage consumes in one run: upstream stages that must be finished, upstream stages used when present,
    and fingerprints of external files (name -> identity)."""

    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once."""

    name: str
    """Subcommand, manifest name and entry in `stages:`."""
    fn: Callable[[RunConfig, RunDir], dict[str, Any]]
    """Entry point: reads its sections and upstream outputs, returns small facts for its manifest."""
    help: str
    """One line for `tinyfoundry --help` and the subcommand's description."""
    declares: dict[str, str | type] = field(default_factory=dict)
    """Config sections this stage introduces: section -> its dataclass, or 'module:Class' to import it lazily."""
    reads: tuple[str, ...] = ()
    """Sections whose values decide the outputs (hashed into the manifest); default: the declared ones."""
    inputs: Callable[[RunConfig, RunDir], Inputs] = lambda cfg, rd: Inputs()
    """What the stage consumes in this run (upstream stages, external files)."""
    outputs: tuple[str, ...] = ()
    """Paths under the run directory the stage owns; cleared when it is redone under another config."""
    default: bool = True
    """Part of the default `stages:` list (fine-tuning is opt-in)."""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    """Extra command-line flags of the subcommand, beyond --config/--run-dir/--force."""
    command: Callable[[argparse.Namespace, list[str]], int] | None = None
    """Own handler of the subcommand (for stand-alone use); None runs the stage in a run directory."""
    help_sections: tuple[str, ...] = ()
    """More sections whose options the subcommand's --help lists (e.g. plan's `sweep`)."""

    @property
    def hashed(self) -> tuple[str, ...]:
        return self.reads or tuple(self.declares)

    @property
    def sections(self) -> tuple[str, ...]:
        """Every section the stage touches: the ones its --help documents."""
        out = dict.fromkeys((*self.declares, *self.hashed, *self.help_sections))
        return tuple(out)


_STAGES: dict[str, Stage] = {}
_loaded = False


def register(stage: Stage, after: str | None = None) -> Stage:
    """Add a stage (at the end of the pipeline, or right after `after`). Re-registering a name replaces it in place."""
    if not stage.name.isidentifier():
        raise ValueError(f"stage name must be an identifier, got {stage.name!r}")
    stages()  # the built-ins first, so a stage registered from elsewhere comes after them
    taken = {sec: s.name for s in _STAGES.values() if s.name != stage.name for sec in s.declares}
    clash = [sec for sec in stage.declares if sec in taken]
    if clash:
        raise ValueError(f"stage {stage.name!r}: section {clash[0]!r} is already declared by stage {taken[clash[0]]!r}")
    if stage.name in _STAGES or after is None:
        _STAGES[stage.name] = stage
        return stage
    if after not in _STAGES:
        raise ValueError(f"stage {stage.name!r}: after={after!r} is not a registered stage")
    items = list(_STAGES.items())
    pos = [n for n, _ in items].index(after) + 1
    items.insert(pos, (stage.name, stage))
    _STAGES.clear()
    _STAGES.update(items)
    return stage


def unregister(name: str) -> None:
    """Remove a stage (tests that register a toy one clean up with this)."""
    _STAGES.pop(name, None)


def stages() -> dict[str, Stage]:
    """Every registered stage by name, in pipeline order (the built-ins are loaded on first use)."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module(BUILTIN_MODULE)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):  # stages of installed plugin packages
            ep.load()
    return _STAGES


def get(name: str) -> Stage:
    return stages()[name]


def all_stages() -> tuple[str, ...]:
    return tuple(stages())


def default_stages() -> tuple[str, ...]:
    return tuple(n for n, s in stages().items() if s.default)


def section_classes() -> dict[str, str | type]:
    """Section -> its dataclass or 'module:Class', in pipeline order: the config schema."""
    return {sec: target for s in stages().values() for sec, target in s.declares.items()}

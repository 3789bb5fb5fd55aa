"""`train.logger`: which of Lightning's loggers receives a run's metrics and samples.

TensorBoard is the default (run_dir/tb, what the docs and `make demo` show); CSV needs nothing installed
(run_dir/csv/metrics.csv, one row per logged step); Weights & Biases and MLflow are used when their package is
installed and refused with the pip command otherwise, before any training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_logger(kind: str) -> None:
    """Raise ValueError naming `train.logger` when the logger's package is missing."""
    pkg = PACKAGES.get(kind)
    if pkg and importlib.util.find_spec(pkg) is None:
        raise ValueError(f"train.logger: {kind!r} needs the {pkg} package (pip install {pkg}); "
                         "or use 'tensorboard' or 'csv'")


def make_logger(kind: str, run_dir: Path) -> Any:
    """The Lightning logger of `kind` writing under `run_dir` (resumed runs append to the same place)."""
    check_logger(kind)
    run_dir = Path(run_dir)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run_dir), name="csv", version="")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(save_dir=str(run_dir), name=run_dir.name, project="tinyfoundry")
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name="tinyfoundry", run_name=run_dir.name,
                            tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    raise ValueError(f"train.logger: must be one of tensorboard, csv, wandb, mlflow, got {kind!r}")

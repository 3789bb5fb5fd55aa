"""tinyfoundry training: Lightning system + token-shard data + callbacks around models.Transformer.

    from train import TrainConfig, run_train
    summary = run_train(TrainConfig(max_tokens=2_000_000), model_cfg, shards_dir, run_dir)

The Chinchilla planner lives in train.planner; the distillation loss in train.distill, recovery after pruning in
train.recover, the one training recipe they all use in train.recipe. Importing this package does not import
Lightning (run_train imports it when called).
"""

from train.config import TrainConfig


def run_train(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper, see train.runner.run_train
    from train.runner import run_train as _run_train

    return _run_train(*args, **kwargs)


run_train.__doc__ = "Lazy alias of train.runner.run_train (imports Lightning on first call)."

__all__ = ["TrainConfig", "run_train"]

"""The budget planner: Chinchilla-style laws, data- and inference-aware choice of a model and token budget,
and IsoFLOP sweeps that fit a law on the user's own data.

    from train.planner import PlanConfig, run_plan, format_candidates
    plan = run_plan(PlanConfig(flops=1e15), Path("runs/x/plan.json"), shards_dir=Path("runs/x/shards"))
    print(format_candidates(plan))
    from train.planner import SweepConfig, run_sweep          # tinyfoundry plan sweep
    fitted = run_sweep(SweepConfig(), shards_dir, out_dir)    # out_dir/fitted_law.json + isoflop.png

Importing this package imports models (for shapes and accounting) but not Lightning or scipy.
"""

from train.planner.config import PlanConfig
from train.planner.plan import format_candidates, run_plan

__all__ = ["PlanConfig", "SweepConfig", "format_candidates", "run_plan", "run_sweep"]


def __getattr__(name: str):  # lazy: the sweep pulls in scipy, matplotlib and the trainer
    if name in ("SweepConfig", "run_sweep"):
        from train.planner import sweep

        return getattr(sweep, name)
    raise AttributeError(name)

"""run_plan: from a budget to plan.json (the model, its token budget, batch and schedule lengths).

The steps, each visible in the plan's `steps` list:
1. Budget: flops, or hours x sustained FLOP/s x devices (throughput.py).
2. Law optimum: the law's own compute-optimal (N, D) under C = 6ND, N in the law's convention (laws.py).
3. Adjustments, solved on continuous N with the law's loss model (approach 3 for the allocation-only laws):
   data-constrained (Muennighoff: minimise the loss with effective N', D' when unique tokens are short) and
   inference-aware (Sardana: minimise training + inference FLOPs at the compute-optimal loss, or minimise loss
   under a lifetime budget). The law optimum is scaled by the ratio adjusted/unadjusted of that loss model, so a
   plan with plenty of data and no inference demand is exactly the law's (Chinchilla Table 3 stays Table 3).
4. Candidates: a geometric ladder of generated shapes around the target N plus the presets, each with its
   exact params and FLOPs per token from models.accounting, tokens = training FLOPs / FLOPs per token,
   epochs over the unique data, predicted loss, wall time, and the largest micro-batch per device that fits
   the memory limit (max_memory_gb, else the device's) with the gradient accumulation that keeps the planned
   global batch; activation checkpointing (+1/3 FLOPs per token, so fewer tokens) only where one sequence does
   not fit without it. The memory figure is what the chosen micro-batch needs.
5. Choice among the candidates that fit (a plan fails only when none fits one checkpointed sequence): laws that predict loss natively (epoch, fitted, chinchilla approach 3) take the candidate with the
   lowest predicted loss (lowest lifetime FLOPs at the target loss in 'match-loss' mode); allocation laws
   (chinchilla approach 1, tokens-per-param, kaplan) take the candidate nearest the target N.
6. plan.json written atomically (train takes its micro_batch_size, num_accum_steps and activation_checkpointing
   unless the train section sets them); warnings (epochs > 4, outside the law's fitted range, budget
   overrun in match-loss mode) are listed in the plan and printed by `format_candidates`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from models import ModelConfig
from train.planner import candidates as cands
from train.planner.config import PlanConfig
from train.planner.data_constrained import constrained_loss, epoch_warning, epochs
from train.planner.inference import sardana_optimum
from train.planner.laws import Law, ParametricLaw, get_law
from train.planner.log_bisect import bisect_log
from train.planner.throughput import GPU_MEMORY_GB, measure_cpu_flops_per_s, table_flops_per_s

LOSS_NATIVE = ("epoch", "fitted", "chinchilla-approach3")
WARMUP_FRAC = 0.02  # train's default warmup_frac
DECAY_FRAC = 0.2  # WSD cooldown fraction (Haegele et al. 2024), train's default decay_frac


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_shards(shards_dir: Path | None) -> tuple[int, int]:
    """(vocab_size, train tokens) from the shards' index.json; (0, 0) without shards."""
    if shards_dir is None:
        return 0, 0
    from data_pipelines.tokenize.shards import ShardIndex

    idx = ShardIndex.load(shards_dir)
    return idx.vocab_size, idx.splits["train"].num_tokens


def _golden_min(f, lo: float, hi: float, iters: int = 100) -> float:
    """argmin of a unimodal f on [lo, hi] (log-space callers pass logs), after a coarse scan."""
    grid = [lo + i * (hi - lo) / 200 for i in range(201)]
    vals = [f(g) for g in grid]
    i = min(range(201), key=vals.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, 200)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(iters):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def continuous_plan(law: Law, c: float, unique: float, d_inf: float, mode: str, shrink_for_repeats: bool = True) -> dict:
    """Steps 2-3 on continuous N (law convention, C = 6ND). Returns target N, training FLOPs and notes.
    `shrink_for_repeats` False keeps the data-constrained optimum at or above the loss model's own (PlanConfig)."""
    n0, d0 = law.allocate(c)
    out: dict[str, Any] = {"law_num_params": n0, "law_num_tokens": d0, "train_flops": c, "scale": 1.0, "notes": []}
    constrained = unique > 0 and d0 > unique
    if not constrained and d_inf <= 0:
        out.update(target_num_params=n0)
        return out

    def loss(n: float, d: float) -> float:
        return constrained_loss(law, n, d, unique)

    lo, hi = math.log(n0) - 12.0, math.log(n0) + 12.0

    def free_loss(logn: float) -> float:
        n = math.exp(logn)
        return law.loss(n, c / (6 * n))

    def dc_loss(logn: float) -> float:
        n = math.exp(logn)
        return loss(n, c / (6 * n))

    n_free = math.exp(_golden_min(free_loss, lo, hi))  # loss model's own optimum, no adjustment
    n_dc = math.exp(_golden_min(dc_loss, lo, hi)) if constrained else n_free
    if constrained and n_dc < n_free and not shrink_for_repeats:
        out["notes"].append(
            f"data-constrained: {unique:.3g} unique tokens < law's {d0:.3g}; Muennighoff et al.'s fit would shrink "
            f"the model x{n_dc / n_free:.3g} for more epochs; kept at the law's size (plan.shrink_for_repeats)"
        )
        n_dc = n_free
    elif constrained:
        out["notes"].append(
            f"data-constrained (Muennighoff et al. 2023): {unique:.3g} unique tokens < law's {d0:.3g}; "
            f"optimum moves by x{n_dc / n_free:.3g} in params"
        )
    n_target, train_flops = n0 * n_dc / n_free, c
    if d_inf > 0:
        if mode == "match-loss":
            target_loss = loss(n_dc, c / (6 * n_dc))
            n_s, d_s, _ = sardana_optimum(law, target_loss, d_inf, loss=loss, n_lo=n_dc * 1e-4, n_hi=n_dc * 10)
            ratio = n_s / n_dc
            train_flops = 6 * n_s * d_s
            n_target = n_target * ratio
            out["target_loss_model"] = target_loss
            out["notes"].append(
                f"inference-aware (Sardana et al. 2023, match-loss): {d_inf:.3g} inference tokens; params x{ratio:.3g}, "
                f"training FLOPs {train_flops / c:.3g}x the budget for the same predicted loss"
            )
        else:

            def life_loss(logn: float) -> float:
                n = math.exp(logn)
                d = (c - 2 * n * d_inf) / (6 * n)
                return math.inf if d <= 0 else loss(n, d)

            n_l = math.exp(_golden_min(life_loss, lo, math.log(c / (2 * d_inf))))
            ratio = n_l / n_dc
            n_target *= ratio
            train_flops = c - 2 * n_l * d_inf
            out["notes"].append(
                f"inference-aware (lifetime budget): {d_inf:.3g} inference tokens take "
                f"{(c - train_flops) / c:.1%} of the budget; params x{ratio:.3g}"
            )
    out.update(target_num_params=n_target, train_flops=train_flops, scale=n_target / n0)
    return out


MIN_STEPS = 1500  # optimizer steps a plan keeps where halving the batch allows (LOG.md, session 4)


def _batch_size(c: float, d: float, seq_len: int) -> int:
    """DeepSeek LLM (2024) critical batch fit B = 0.292 C^0.3271 tokens, as sequences, halved (a power of two) until
    the run has >= MIN_STEPS optimizer steps. The fit comes from budgets >= 1e17 FLOPs; extrapolated to the smallest
    budgets it leaves too few steps: at 1e13 FLOPs on TinyStories (5.7M tokens) 1397 steps of 8 x 512 gave 1.1% higher
    held-out bits per byte than 2794 steps of 4 x 512 (and 16 x 256 -> 8 x 256 likewise helped, session 2). Budgets
    from ~1e14 up keep the fit's batch."""
    b_tokens = 0.292 * c**0.3271
    b = max(1, round(b_tokens / seq_len))
    b = 2 ** max(0, round(math.log2(b)))
    while b > 1 and d / (b * seq_len) < MIN_STEPS:
        b //= 2
    return b


def _row(name: str, kind: str, cfg: ModelConfig, law: Law, pc: PlanConfig, train_flops: float, unique: float,
         flops_per_s: float, gpu: bool, batch_size: int, d_inf: float, limit_gib: float) -> dict:
    c = cands.counts(cfg)
    n_law = cands.law_params(c, law.param_convention, pc.moe_gain_exponent)
    mb = cands.fit_micro_batch(cfg, _per_device(batch_size, pc.num_devices), pc.seq_len, gpu, limit_gib)
    fpt = cands.train_flops_per_token(cfg, pc.seq_len, pc.count_attention, law_n=n_law)
    if mb.activation_checkpointing:
        fpt *= cands.RECOMPUTE_FACTOR  # the recomputed forward is paid for out of the same budget: fewer tokens
    d = train_flops / fpt
    row = {
        "name": name,
        "kind": kind,
        "num_params": c["total"],
        "num_active_params": c["active"],
        "num_nonembedding_params": c["active_non_embedding"],
        "law_params": n_law,
        "num_tokens": int(d),
        "epochs": epochs(d, unique),
        "flops_per_token": fpt,
        "flops": train_flops,
        "inference_flops": fpt / (3.0 * (cands.RECOMPUTE_FACTOR if mb.activation_checkpointing else 1.0)) * d_inf,
        "predicted_loss": constrained_loss(law, n_law, d, unique),
        # what the choice minimises: without shrink_for_repeats, the law's own loss (repeats not discounted)
        "choice_loss": constrained_loss(law, n_law, d, unique if pc.shrink_for_repeats else 0.0),
        "wall_hours": train_flops / flops_per_s / 3600.0 if flops_per_s > 0 else None,
        "memory_gib": mb.memory_gib,
        "micro_batch_size": mb.micro_batch_size,
        "num_accum_steps": mb.num_accum_steps,
        "activation_checkpointing": mb.activation_checkpointing,
        "fits": mb.fits,
        "model": cfg.to_dict(),
    }
    return row


def _per_device(batch_size: int, num_devices: int) -> int:
    """Sequences each device handles per optimizer step (at least one: the global batch then grows to a device
    count)."""
    return max(1, batch_size // num_devices)


def memory_limit_gib(cfg: PlanConfig) -> float:
    """max_memory_gb, else a GPU's memory from the table; 0 (no limit) for device 'cpu' without max_memory_gb: host
    RAM is the training machine's, which a plan made elsewhere cannot know (train warns when it runs short)."""
    if cfg.max_memory_gb:
        return cfg.max_memory_gb
    return GPU_MEMORY_GB.get(cfg.device, 0.0) if cfg.device != "cpu" else 0.0


def run_plan(cfg: PlanConfig, out_path: Path, shards_dir: Path | None = None,
             model_cfg: ModelConfig | None = None) -> dict:
    """Plan a run (module docstring) and write `out_path` (plan.json) atomically; returns the plan dict.

    `model_cfg`, when given, fixes the architecture family: its vocabulary (unless the shards say otherwise) and
    its MoE settings seed the generated shapes, and it is listed as a candidate named 'given'.
    """
    if cfg.flops == 0 and cfg.hours == 0:
        # checked here, not in PlanConfig: a run config whose stages skip `plan` need not name a budget
        raise ValueError("plan.flops: a budget is needed: set flops (e.g. 1e15) or hours (with device), got 0")
    steps: list[str] = []
    budget, flops_per_s, source, bench = _budget(cfg, steps)
    vocab_shards, unique_shards = _read_shards(shards_dir)
    unique = float(cfg.unique_tokens or unique_shards)
    vocab = cfg.vocab_size or vocab_shards or (model_cfg.vocab_size if model_cfg else 4096)
    num_experts = cfg.num_experts or (model_cfg.num_experts if model_cfg else 0)
    top_k = cfg.num_experts_per_tok if cfg.num_experts else (model_cfg.num_experts_per_tok if model_cfg else 2)

    # 2-3. law optimum and adjustments
    law = get_law(cfg.law, cfg.tokens_per_param, cfg.fitted_law,
                  1 if cfg.chinchilla_fit == "approach1" else 3)
    cont = continuous_plan(law, budget, unique, cfg.inference_tokens, cfg.inference_mode, cfg.shrink_for_repeats)
    steps.append(
        f"law {law.name}: N = {cont['law_num_params']:.4g} ({law.param_convention} params), "
        f"D = {cont['law_num_tokens']:.4g} tokens under C = 6ND"
    )
    steps.extend(cont["notes"])
    n_target = cont["target_num_params"]
    train_flops = cont["train_flops"]
    if train_flops <= 0:
        raise ValueError("inference_tokens: inference alone exceeds the lifetime budget; raise flops or lower it")

    # 4. candidates, each with the largest micro-batch per device that fits the memory limit
    batch_size = cfg.batch_size or _batch_size(train_flops, train_flops / (6 * n_target), cfg.seq_len)
    limit = memory_limit_gib(cfg)
    rows = _candidates(cfg, law, model_cfg, n_target, vocab, num_experts, top_k, train_flops, unique, flops_per_s,
                       batch_size, limit)

    # 5. choice
    chosen = _choose(cfg, law, rows, cont, n_target, unique, limit, steps)

    # 6. warnings and plan.json
    warnings = _warnings(cfg, law, chosen, unique, budget, num_experts, steps)
    batch_size, micro, accum = _fit_batch(cfg, chosen, batch_size, train_flops, cfg.device != "cpu", limit, steps)
    model = chosen["model"]
    plan = {
        "num_params": chosen["num_params"],
        "num_active_params": chosen["num_active_params"],
        "num_nonembedding_params": chosen["num_nonembedding_params"],
        "num_tokens": chosen["num_tokens"],
        "flops": chosen["flops"],
        "flops_per_token": chosen["flops_per_token"],
        "predicted_loss": chosen["predicted_loss"],
        "epochs": chosen["epochs"],
        "law": law.describe(),
        "param_convention": (
            f"{law.param_convention} params; active params for MoE"
            + (f"; x (total/active)^{cfg.moe_gain_exponent:g}" if cfg.moe_gain_exponent else "")
        ),
        "law_optimum": {"num_params": cont["law_num_params"], "num_tokens": cont["law_num_tokens"],
                        "flops": budget, "target_num_params": n_target},
        "budget": {"flops": budget, "hours": cfg.hours, "device": cfg.device, "num_devices": cfg.num_devices,
                   "flops_per_s": flops_per_s, "throughput_source": source, "benchmark": bench,
                   "count_attention": cfg.count_attention},
        "unique_tokens": int(unique),
        "inference_tokens": cfg.inference_tokens,
        "inference_mode": cfg.inference_mode,
        "chosen": chosen["name"],
        "candidates": [{k: v for k, v in r.items() if k != "model"} | {"model": r["model"]} for r in rows],
        "model": model,
        "batch_size": batch_size,
        "micro_batch_size": micro,
        "num_accum_steps": accum,
        "activation_checkpointing": chosen["activation_checkpointing"],
        "memory_gib": chosen["memory_gib"],
        "memory_limit_gib": limit,
        "seq_len": cfg.seq_len,
        "warmup_tokens": int(WARMUP_FRAC * chosen["num_tokens"]),
        "decay_tokens": int(DECAY_FRAC * chosen["num_tokens"]),
        "lr_hint": 0.3118 * chosen["flops"] ** -0.125,
        "wall_hours": chosen["wall_hours"],
        "steps": steps,
        "warnings": warnings,
    }
    _write_json_atomic(Path(out_path), plan)
    return plan


def _budget(cfg: PlanConfig, steps: list[str]) -> tuple[float, float, str, dict | None]:
    """(budget FLOPs, FLOP/s of all devices, where the FLOP/s came from, the CPU benchmark or None)."""
    gpu = cfg.device != "cpu"
    bench = None
    if cfg.flops_per_s > 0:
        per_device = cfg.flops_per_s
        source = "measured (flops_per_s)"
    elif gpu:
        per_device = table_flops_per_s(cfg.device, cfg.mfu)
        source = f"GPU table: {cfg.device} peak x mfu {cfg.mfu}"
    elif cfg.hours > 0:
        bench = measure_cpu_flops_per_s(cfg.benchmark_seconds)
        per_device = bench["flops_per_s"]
        source = f"benchmark here ({bench['tokens_per_s']:.0f} tok/s on a {bench['shape']['dim']}-wide model)"
    else:
        per_device, source = 0.0, "not measured (flops budget; wall time unknown)"
    flops_per_s = per_device * cfg.num_devices
    budget = cfg.flops if cfg.flops > 0 else cfg.hours * 3600.0 * flops_per_s
    steps.append(f"budget: {budget:.4g} FLOPs" + (f" = {cfg.hours:g} h x {flops_per_s:.3g} FLOP/s ({source})"
                                                   if cfg.hours > 0 else ""))
    if budget < 1e6:
        raise ValueError(f"flops: the budget came to {budget:.3g} FLOPs, too small to train anything")
    return budget, flops_per_s, source, bench


def _candidates(cfg: PlanConfig, law: Law, model_cfg: ModelConfig | None, n_target: float, vocab: int,
                num_experts: int, top_k: int, train_flops: float, unique: float, flops_per_s: float,
                batch_size: int, limit: float) -> list[dict]:
    """Generated shapes around the target N, presets and the given model, each a row sorted by law params."""
    gpu = cfg.device != "cpu"
    rows: list[dict] = []
    k = cfg.num_candidates
    seen: set[str] = set()
    for i in range(k):
        target = n_target * cfg.candidate_step ** (i - (k - 1) / 2)
        shape = cands.make_shape(target, law.param_convention, vocab, cfg.seq_len, num_experts, top_k)
        key = json.dumps(shape.to_dict(), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        rows.append(_row(f"gen-{i}", "generated", shape, law, cfg, train_flops, unique, flops_per_s, gpu,
                         batch_size, cfg.inference_tokens, limit))
    extra: list[tuple[str, str, ModelConfig]] = []
    if cfg.include_presets:
        extra += [(n, "preset", c) for n, c in cands.preset_shapes(vocab, cfg.seq_len)]
    if model_cfg is not None:
        import dataclasses

        given = dataclasses.replace(model_cfg, vocab_size=vocab, max_seq_len=max(model_cfg.max_seq_len, cfg.seq_len))
        extra.append(("given", "given", given))
    for name, kind, shape in extra:
        rows.append(_row(name, kind, shape, law, cfg, train_flops, unique, flops_per_s, gpu, batch_size,
                         cfg.inference_tokens, limit))
    rows.sort(key=lambda r: r["law_params"])
    return rows


def _choose(cfg: PlanConfig, law: Law, rows: list[dict], cont: dict, n_target: float, unique: float, limit: float,
            steps: list[str]) -> dict:
    """The chosen row among those that fit in memory (the rule depends on the law and the inference mode)."""
    eligible = [r for r in rows if r["fits"]]
    if not eligible:
        small = min(rows, key=lambda r: r["memory_gib"])
        m = small["model"]
        raise ValueError(
            f"max_memory_gb: no candidate fits in {limit:.3g} GiB per device, not even one sequence of "
            f"{cfg.seq_len} tokens with activation checkpointing: the smallest, {small['name']} (dim {m['dim']} x "
            f"{m['num_layers']} layers, {small['num_params']:,} params), needs {small['memory_gib']:.3g} GiB; "
            "lower plan.seq_len, add devices with a sharded strategy, or raise max_memory_gb"
        )
    if law.name in LOSS_NATIVE:
        if cfg.inference_tokens > 0 and cfg.inference_mode == "match-loss":
            target_loss = cont["target_loss_model"]
            for r in rows:
                d_need = _tokens_for(law, r["law_params"], target_loss, unique)
                r["match_loss_tokens"] = d_need
                r["lifetime_flops"] = r["flops_per_token"] * d_need + r["flops_per_token"] / 3 * cfg.inference_tokens
            chosen = min(eligible, key=lambda r: r["lifetime_flops"])
            chosen["num_tokens"] = int(chosen["match_loss_tokens"])
            chosen["flops"] = chosen["flops_per_token"] * chosen["num_tokens"]
            chosen["predicted_loss"] = constrained_loss(law, chosen["law_params"], chosen["num_tokens"], unique)
            chosen["epochs"] = epochs(chosen["num_tokens"], unique)
            rule = "lowest training + inference FLOPs at the compute-optimal loss (Sardana et al.)"
        else:
            chosen = min(eligible, key=lambda r: r["choice_loss"])
            rule = "lowest predicted loss at the budget" + ("" if cfg.shrink_for_repeats or not unique else
                                                            " (repeats not discounted in the choice)")
    else:
        chosen = min(eligible, key=lambda r: abs(math.log(r["law_params"] / n_target)))
        rule = f"nearest the target N = {n_target:.4g} ({law.param_convention} params)"
    for r in rows:
        r["chosen"] = r is chosen
        r["lifetime_flops"] = r.get("lifetime_flops", r["flops"] + r["inference_flops"])
    steps.append(f"chose {chosen['name']}: {rule}")
    return chosen


def _warnings(cfg: PlanConfig, law: Law, chosen: dict, unique: float, budget: float, num_experts: int,
              steps: list[str]) -> list[str]:
    """The plan's warnings (repeats, extrapolation, over-budget inference-aware plans); MoE notes go to `steps`."""
    warnings: list[str] = []
    w = epoch_warning(chosen["num_tokens"], unique)
    if w:
        warnings.append(w)
    warnings.extend(law.range_warnings(chosen["law_params"], chosen["num_tokens"]))
    if chosen["flops"] > budget * 1.001:
        warnings.append(
            f"inference-aware plan trains for {chosen['flops']:.3g} FLOPs, {chosen['flops'] / budget:.2f}x the "
            "budget, to reach the compute-optimal loss with a smaller model (inference_mode 'lifetime-budget' "
            "keeps within the budget instead)"
        )
    if num_experts and cfg.moe_gain_exponent == 0:
        steps.append("MoE: planned by active params; no quality gain credited (moe_gain_exponent = 0)")
    elif num_experts:
        steps.append(f"MoE: effective N = active N x (total/active)^{cfg.moe_gain_exponent:g} (an assumption)")
    return warnings


def _fit_batch(cfg: PlanConfig, chosen: dict, batch_size: int, train_flops: float, gpu: bool, limit: float,
               steps: list[str]) -> tuple[int, int, int]:
    """(batch size, micro-batch size, accumulation steps) for the chosen shape, within the memory limit."""
    if not cfg.batch_size:  # the steps rule again on the chosen shape's own tokens (6N guessed them above)
        batch_size = min(batch_size, _batch_size(train_flops, chosen["num_tokens"], cfg.seq_len))
    if chosen["num_tokens"] < batch_size * cfg.seq_len:
        batch_size = max(1, chosen["num_tokens"] // cfg.seq_len)
    micro, accum = chosen["micro_batch_size"], chosen["num_accum_steps"]
    per_device = _per_device(batch_size, cfg.num_devices)
    if micro * accum != per_device:  # a smaller batch: the largest micro-batch that fitted, or a divisor below it
        micro = max(d for d in range(1, min(micro, per_device) + 1) if per_device % d == 0)
        accum = per_device // micro
        chosen["memory_gib"] = cands.memory_gib(ModelConfig.from_dict(chosen["model"]), micro, cfg.seq_len, gpu,
                                                chosen["activation_checkpointing"])
        chosen.update(micro_batch_size=micro, num_accum_steps=accum)
    if accum > 1 or chosen["activation_checkpointing"]:
        steps.append(
            f"memory: {chosen['memory_gib']:.3g} GiB per device of {limit:.3g} GiB with micro-batches of {micro} x "
            f"{accum} accumulation steps" + (" and activation checkpointing (+1/3 FLOPs per token)"
                                             if chosen["activation_checkpointing"] else "")
        )
    return batch_size, micro, accum


def _tokens_for(law: Law, n: float, target: float, unique: float) -> float:
    if unique <= 0 and isinstance(law, ParametricLaw):
        return law.tokens_for_loss(n, target)
    if constrained_loss(law, n, 1e30, unique) >= target:
        return math.inf
    return bisect_log(lambda d: constrained_loss(law, n, d, unique) > target, 1.0, 1e30, 1e-10)[1]


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x == math.inf:
        return "inf"
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def format_candidates(plan: dict) -> str:
    """The candidates table of a plan as text, chosen row marked '*', followed by steps and warnings."""
    header = ("", "name", "dim x layers", "params", "active", "law N", "tokens", "epochs", "FLOPs", "loss",
              "wall h", "micro x accum", "mem GiB")
    rows = [header]
    for r in plan["candidates"]:
        m = r["model"]
        shape = f"{m['dim']}x{m['num_layers']}" + (f" E{m['num_experts']}k{m['num_experts_per_tok']}"
                                                    if m.get("num_experts") else "")
        rows.append((
            "*" if r["chosen"] else "", r["name"], shape, _fmt(r["num_params"]), _fmt(r["num_active_params"]),
            _fmt(r["law_params"]), _fmt(r["num_tokens"]), f"{r['epochs']:.2f}" if r["epochs"] else "-",
            f"{r['flops']:.3g}", f"{r['predicted_loss']:.4f}",
            f"{r['wall_hours']:.3g}" if r["wall_hours"] is not None else "-",
            f"{r['micro_batch_size']} x {r['num_accum_steps']}" + (" ckpt" if r["activation_checkpointing"] else "")
            + ("" if r["fits"] else " (too big)"), f"{r['memory_gib']:.3g}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    law = plan["law"]
    lines += [
        "",
        f"law: {law['name']} ({law['reference']}); N counts {plan['param_convention']}",
        f"chosen: {plan['chosen']} — {_fmt(plan['num_params'])} params, {_fmt(plan['num_tokens'])} tokens, "
        f"{plan['flops']:.3g} FLOPs, predicted loss {plan['predicted_loss']:.4f}, batch {plan['batch_size']} x "
        f"{plan['seq_len']} (micro-batch {plan['micro_batch_size']} x {plan['num_accum_steps']} accumulation steps"
        f"{', activation checkpointing' if plan['activation_checkpointing'] else ''}; {plan['memory_gib']:.3g} GiB "
        "per device)",
    ]
    lines += [f"  - {s}" for s in plan["steps"]]
    lines += [f"WARNING: {w}" for w in plan["warnings"]]
    return "\n".join(lines)

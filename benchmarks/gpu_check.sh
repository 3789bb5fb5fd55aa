#!/usr/bin/env bash
# GPU readiness in minutes: run this once on a machine with CUDA GPUs (offline is fine: data from ../shared/data).
#
#   bash benchmarks/gpu_check.sh            # results in gpu_check/ (override with OUT=...), summary at the end
#
# 1. device facts and what `precision: auto` picks there (train/precision.py)
# 2. MFU of the 110m preset (seq 1024, bf16-mixed, fused AdamW): benchmarks/bench_train.py (plain loop vs run_train)
# 3. the nanoGPT-shape step (dim 288, 6 layers, batch 8 x 256) if a nanoGPT checkout is given as NANOGPT=path
# 4. a TinyStories speedrun: configs/tinystories-33m.yaml end to end (curate, tokenize, plan, train with
#    precision auto + compile, compress, export) on the shared stories, planned for PLAN_FLOPS (default 1e16)
# 5. the same training as a short DDP run and a short FSDP run over all visible GPUs (the sharded path; Muon gives
#    way to AdamW under FSDP, see TrainConfig.optimizer)
# Expected figures on paper (LOG.md, session 5): 110m at ~35-45% MFU in bf16 with compile on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH=$PWD
OUT=${OUT:-gpu_check}
PLAN_FLOPS=${PLAN_FLOPS:-1e16}
STORIES=../shared/data/tinystories/tinystories_2000.txt
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$OUT"
status=0
step() { echo; echo "== $1"; }
run() { echo "+ $*"; "$@" || { echo "FAILED ($?): $*"; status=1; }; }

step "1. device"
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run $PY - <<'EOF'
import torch
from train.precision import resolve_precision
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i),
          "bf16", torch.cuda.is_bf16_supported())
print("precision auto ->", *resolve_precision("auto", "gpu"))
EOF

step "2. MFU, 110m preset, seq 1024, bf16-mixed"
run $PY benchmarks/bench_train.py --preset 110m --seq-len 1024 --precisions bf16-mixed --quick 2>&1 | tee "$OUT/mfu_110m.txt"

if [ -n "${NANOGPT:-}" ]; then
  step "3. nanoGPT shape (no GPU path in that bench: CPU step, for the record)"
  run $PY benchmarks/bench_vs_nanogpt.py --nanogpt "$NANOGPT" --threads 8 --repeats 10 2>&1 | tee "$OUT/nanogpt.txt"
fi

common=(--config configs/tinystories-33m.yaml "--curate.inputs=[\"$STORIES\"]" --curate.hf_split=train
        --plan.hours=0 "--plan.flops=$PLAN_FLOPS" --train.progress_bar=false --tokenize.progress=false)
step "4. TinyStories speedrun (tinystories-33m.yaml, $PLAN_FLOPS FLOPs, precision auto, compile)"
run $PY -m launch.cli run "${common[@]}" --run-dir "$OUT/speedrun" 2>&1 | tail -n 30

step "5. DDP and FSDP over $NGPU GPU(s), 20M tokens each"
for strategy in ddp fsdp; do
  run $PY -m launch.cli run "${common[@]}" --run-dir "$OUT/$strategy" "--train.strategy=$strategy" \
      "--train.devices=$NGPU" --train.max_tokens=2e7 --train.compile=false \
      2>&1 | tail -n 15
done

step "summary"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for run in ("speedrun", "ddp", "fsdp"):
    p = Path(sys.argv[1]) / run / "train" / "summary.json"
    if p.is_file():
        s = json.loads(p.read_text())
        print(f"{run:9s} precision {s.get('precision')} compile {s.get('compile')} strategy {s.get('strategy')} world {s.get('world_size')} "
              f"tokens/s {s.get('tokens_per_s', 0):,.0f} MFU {100 * (s.get('mfu') or 0):.1f}% "
              f"val_bpb {s.get('val_bpb')} wall {s.get('wall_s', 0):.0f}s")
    else:
        print(f"{run:9s} no summary (failed?)")
EOF
exit $status

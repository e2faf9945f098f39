#!/usr/bin/env bash
# Issue 12's GPU figures in one call of the device machine (the image's python3 and torch; the
# packages it lacks, open_clip_torch + ftfy + wcwidth, as wheels in .whl/, see README):
# the paper S-Seg train step (Swin-S MaskFormer + 12-layer text encoder, 224 px, bf16 autocast)
# at batch 64 and 128, eager, then compiled, with torch.profiler's op table of the first.
#   OUT=/tmp/out bash tools/bench/gpu_train_step.sh
set -u
OUT=${OUT:-/tmp/gpu-train-step}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc
} | tee "$OUT/machine.txt"
step() {  # NAME SECONDS ARGS...: one bench run, its JSON line to $OUT/NAME.json
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 -m tools.bench train_step --config paper --scaling off "$@" \
    2>>"$OUT/stderr.txt" | tail -1 | tee "$OUT/$name.json"
}
step b64 150 --batch 64 --steps 10 --warmup 3 --profile "$OUT/profile_b64.txt"
step b128 150 --batch 128 --steps 10 --warmup 3
step b128_compiled 300 --batch 128 --steps 10 --warmup 3 --compile

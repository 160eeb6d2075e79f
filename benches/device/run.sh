#!/usr/bin/env bash
# The GPU-host measurements of issues 4 and 5, in one command (run on a GPU machine with the release binary, the Vulkan loader and the model staged beside the working tree):
#   . .device/env.sh && bash benches/device/run.sh MODEL_FILE [STEP,STEP…]
# Writes everything under $OUT (logs, JSON, SVG). Each step has its own time limit so that a
# slow step cannot take the others down with it; the log of a step that ran out is kept.
set -u
model=${1:?model file}
out=${OUT:-/tmp/out}
bin=.device/bin/revive
mkdir -p "$out"
only=${2:-all}   # a comma-separated list of step names, or all
step() { # name seconds command...
  local name=$1 secs=$2; shift 2
  [ "$only" = all ] || [[ ",$only," == *",$name,"* ]] || return 0
  local t0=$SECONDS
  echo "== $name (limit ${secs}s)"
  timeout "$secs" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "   rc $rc after $((SECONDS - t0)) s"
  tail -n 25 "$out/$name.log"
}
# Issue 5.7: top-k SVD against the CPU reference, then PyTorch on the same matrices.
step svd 100 $bin bench svd --save /tmp/svd-mats --json "$out/svd.json"
step torch-svd 60 python3 benches/baselines/torch_svd.py --dir /tmp/svd-mats --revive "$out/svd.json" --json "$out/torch-svd.json"
# Issue 5.6: 50 sequential ROME edits, plain and with REVIVE τ = 0.5, tracked after every edit
# (the settings of the 20-fact lavapipe baseline: plain context, ≤ 12 steps, C0 from 4,096 tokens).
step revive-50 280 $bin bench edit -m "$model" --both --revive 0.5 --track --templates 0 --steps 12 --cov-tokens 4096 \
  --json "$out/revive-50.json" --plot "$out/revive-50.svg"
# Issue 4.7: time per ROME edit at the full settings (11 contexts, 25 steps, C0 from 20k tokens).
step rome-full 60 $bin bench edit -m "$model" --limit 5 --json "$out/rome-full-5.json"
# Issue 11: the kernel choice measured on this GPU, then the forward pass with the fixed rule
# and with the tuned choices (runtime counts per token in each log).
step tune 150 $bin tune -m "$model" --json "$out/tune.json"
step forward-rule 90 env REVIVE_TUNE=0 $bin bench forward -m "$model" --json "$out/forward-rule.json"
step forward 90 $bin bench forward -m "$model" --json "$out/forward.json"
# Issue 2's open comparison: the tuned matmul against cuBLAS SGEMM (TF32 off) in the same run.
step matmul 25 $bin bench matmul --size 1024 --size 4096 --no-cpu --json "$out/matmul.json"
step torch-matmul 25 python3 benches/baselines/torch_matmul.py --size 1024 --size 4096 --json "$out/torch-matmul.json"

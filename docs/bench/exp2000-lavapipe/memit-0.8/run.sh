#!/usr/bin/env bash
# MEMIT + REVIVE τ = 0.8 at 2,000 edits, the settings of docs/bench/exp2000-lavapipe/run.sh with
# C0 from 100,000 tokens; resumable: run again to continue (same binary).
cd /work/main
BIN=/work/exp2000-c0/tau08/revive-94ccb8b
left=${1:?minutes}
nice -n 10 "$BIN" experiment --methods memit --revive 0.8 --limit 2000 --batch 100 --every 500 \
  --templates 0 --steps 12 --cov-tokens 100000 --sample 100 --ppl-tokens 2048 --agreement-prompts 16 \
  --fluency-prompts 4 --fluency-tokens 32 --batch-metrics none --out /work/exp2000-c0/tau08/out --arm memit/0.8 --stop-after $left
echo "exit $?, $(date)"

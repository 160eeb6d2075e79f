#!/usr/bin/env bash
# MEMIT + REVIVE τ = 0.5 with and without --targets-through-guard, where through the guard now
# also solves each layer's update within the filter's input complement (lavapipe, reduced
# settings): one batch of the first 8 geography edits with 60 known facts, then `revive
# experiment` over 40 edits in batches of 10 (both arms, the checkpoint settings of
# docs/bench/through-guard-lavapipe-2026-12-05/run-more.sh).
#   bash run.sh BIN OUT
set -u
bin=${1:?binary} out=${2:?out dir}
mkdir -p "$out"
small=(--templates 0 --steps 12 --cov-tokens 4096)
known=docs/bench/sweep-lavapipe-2026-12-05/known60.json
for arm in revive revive-through; do
  flag=(); [ $arm = revive-through ] && flag=(--targets-through-guard)
  echo "== memit $arm 0.5 $(date -u +%T)"
  "$bin" bench edit -m smollm2 "${small[@]}" --limit 8 --edits assets/facts/geo/edits.json.gz --known "$known" --method memit --batch 8 \
    --revive 0.5 "${flag[@]}" --out "$out/runs-memit-$arm" --json "$out/memit-$arm.json" > "$out/memit-$arm.log" 2>&1
done
echo "== experiment $(date -u +%T)"
"$bin" experiment -m smollm2 --methods memit --revive 0.5,0.5+through --limit 40 --batch 10 --every 40 \
  "${small[@]}" --known-limit 60 --sample 40 --ppl-tokens 2048 \
  --agreement-prompts 4 --fluency-prompts 2 --fluency-tokens 16 --no-spectral --out "$out/experiment" > "$out/experiment.log" 2>&1
echo "== done $(date -u +%T)"

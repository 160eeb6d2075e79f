#!/usr/bin/env bash
# Targets through the guard against plain REVIVE targets, on lavapipe, reduced settings:
# ROME (layer 5) on the first 8 of assets/facts/edits.json one after another (plain, REVIVE
# τ = 0.5, REVIVE τ = 0.5 with --targets-through-guard), then MEMIT (layers 3–7) on the first
# 8 geography edits in one batch (REVIVE τ = 0.5 without and with it), 60 known facts.
#   bash docs/bench/through-guard-lavapipe-2026-12-05/run.sh BIN OUT
set -u
bin=${1:?binary} out=${2:?out dir}
mkdir -p "$out"
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
echo "== rome plain + revive 0.5 $(date -u +%T)"
"$bin" bench edit -m smollm2 "${small[@]}" --both --json "$out/rome-both.json" > "$out/rome-both.log" 2>&1
echo "== rome revive 0.5 through $(date -u +%T)"
"$bin" bench edit -m smollm2 "${small[@]}" --revive 0.5 --targets-through-guard --json "$out/rome-through.json" > "$out/rome-through.log" 2>&1
known=docs/bench/sweep-lavapipe-2026-12-05/known60.json
for arm in revive revive-through; do
  flag=(); [ $arm = revive-through ] && flag=(--targets-through-guard)
  echo "== memit $arm 0.5 $(date -u +%T)"
  "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --known "$known" --method memit --batch 8 \
    --revive 0.5 "${flag[@]}" --out "$out/runs-memit-$arm" --json "$out/memit-$arm.json" > "$out/memit-$arm.log" 2>&1
done
echo "== done $(date -u +%T)"

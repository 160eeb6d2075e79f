#!/usr/bin/env bash
# The larger runs after run.sh: ROME on all 50 facts of assets/facts/edits.json one after
# another (plain, REVIVE τ = 0.5, and τ = 0.5 with --targets-through-guard), then `revive
# experiment` with MEMIT over 40 geography edits in batches of 10 (REVIVE τ = 0.5 with and
# without targets through the guard), checkpoint settings as in
# docs/bench/nse-vs-memit-40-lavapipe-2026-12-05, whose memit-none arm is the plain baseline.
#   bash docs/bench/through-guard-lavapipe-2026-12-05/run-more.sh BIN OUT
set -u
bin=${1:?binary} out=${2:?out dir}
mkdir -p "$out"
small=(--templates 0 --steps 12 --cov-tokens 4096)
if [ -z "${SKIP_FIRST:-}" ]; then
  echo "== rome-50 plain + revive 0.5 $(date -u +%T)"
  "$bin" bench edit -m smollm2 "${small[@]}" --both --json "$out/rome50-both.json" > "$out/rome50-both.log" 2>&1
fi
echo "== rome-50 revive 0.5 through $(date -u +%T)"
"$bin" bench edit -m smollm2 "${small[@]}" --revive 0.5 --targets-through-guard --json "$out/rome50-through.json" > "$out/rome50-through.log" 2>&1
echo "== experiment $(date -u +%T)"
"$bin" experiment -m smollm2 --methods memit --revive 0.5,0.5+through --limit 40 --batch 10 --every 40 \
  "${small[@]}" --known-limit 60 --sample 40 --ppl-tokens 2048 \
  --agreement-prompts 4 --fluency-prompts 2 --fluency-tokens 16 --no-spectral --out "$out/experiment" > "$out/experiment.log" 2>&1
echo "== done $(date -u +%T)"

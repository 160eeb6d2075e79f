#!/usr/bin/env bash
# RMS norms with 8 threads per row on a CPU adapter against 256: the previous binary and the new
# one, alternating: the forward pass (profiled, then timed), then one MEMIT batch of 8 geography
# edits at reduced settings (C0 and bases cached).
set -u
base=${1:?previous binary} new=${2:?new binary} out=${3:?out dir}
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for arm in base new; do
    bin=$base; [ $arm = new ] && bin=$new
    echo "== forward-$arm-$rep $(date -u +%T)"
    REVIVE_PROFILE=1 REVIVE_TUNE=0 "$bin" bench forward --prefill 128 --decode 4 --cpu-tokens 1 --reps 1 > "$out/forward-profile-$arm-$rep.log" 2>&1
    REVIVE_TUNE=0 "$bin" bench forward --prefill 128 --prefill 512 --decode 16 --cpu-tokens 1 --reps 2 \
      --json "$out/forward-$arm-$rep.json" > "$out/forward-$arm-$rep.log" 2>&1
    echo "== memit-$arm-$rep $(date -u +%T)"
    REVIVE_TUNE=0 "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --method memit --batch 8 \
      --out "/tmp/rows-runs-$arm-$rep" --json "$out/memit-$arm-$rep.json" > "$out/memit-$arm-$rep.log" 2>&1
  done
done
echo "== done $(date -u +%T)"

#!/usr/bin/env bash
# The lanes kernel against the block kernel, the same binary (REVIVE_NO_LANES=1 leaves the
# device's subgroups off, so the fixed rule takes the block kernel), alternating: the forward
# pass, then one MEMIT batch of 8 geography edits at reduced settings (C0 and bases cached).
set -u
bin=${1:?binary} out=${2:?out dir}
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for arm in block lanes; do
    env=(REVIVE_TUNE=0); [ $arm = block ] && env+=(REVIVE_NO_LANES=1)
    echo "== forward-$arm-$rep $(date -u +%T)"
    env "${env[@]}" "$bin" bench forward --prefill 128 --prefill 512 --decode 16 --cpu-tokens 1 --reps 2 \
      --json "$out/forward-$arm-$rep.json" > "$out/forward-$arm-$rep.log" 2>&1
  done
done
for arm in block lanes; do
  env=(REVIVE_TUNE=0); [ $arm = block ] && env+=(REVIVE_NO_LANES=1)
  echo "== memit-$arm $(date -u +%T)"
  env "${env[@]}" "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --method memit --batch 8 \
    --out "/tmp/lanes-runs-$arm" --json "$out/memit-$arm.json" > "$out/memit-$arm.log" 2>&1
done
echo "== done $(date -u +%T)"

#!/usr/bin/env bash
# The block kernel at 8 x 16 outputs per thread (new) against 4 x 8 (base, the previous commit),
# alternating on the same machine: the forward pass, then one MEMIT batch of 8 geography edits
# at reduced settings (C0 and the guard's bases cached by an earlier run).
set -u
base=${1:?base binary} new=${2:?new binary} out=${3:?out dir}
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for arm in base new; do
    bin=$base; [ $arm = new ] && bin=$new
    echo "== forward-$arm-$rep $(date -u +%T)"
    REVIVE_TUNE=0 "$bin" bench forward --prefill 128 --prefill 512 --decode 16 --cpu-tokens 1 --reps 2 \
      --json "$out/forward-$arm-$rep.json" > "$out/forward-$arm-$rep.log" 2>&1
  done
done
for rep in 1 2; do
  for arm in base new; do
    bin=$base; [ $arm = new ] && bin=$new
    echo "== memit-$arm-$rep $(date -u +%T)"
    REVIVE_TUNE=0 "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --method memit --batch 8 \
      --out "/tmp/block-runs-$arm-$rep" --json "$out/memit-$arm-$rep.json" > "$out/memit-$arm-$rep.log" 2>&1
  done
done
echo "== done $(date -u +%T)"

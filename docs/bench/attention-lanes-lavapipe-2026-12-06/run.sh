#!/usr/bin/env bash
# The lanes attention kernels against the tiled ones, alternating: the previous binary (tiled
# attention from 8 query tokens, per-query below), the new one (lanes from 8 tokens) and a
# variant with lanes for every prompt length (decode included). The forward pass, then one
# MEMIT batch of 8 geography edits at reduced settings (C0 and bases cached).
set -u
out=${1:?out dir}; shift
arms=("$@")  # name=binary ...
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for arm in "${arms[@]}"; do
    name=${arm%%=*} bin=${arm#*=}
    echo "== forward-$name-$rep $(date -u +%T)"
    REVIVE_TUNE=0 "$bin" bench forward --prefill 128 --prefill 512 --decode 16 --cpu-tokens 1 --reps 2 \
      --json "$out/forward-$name-$rep.json" > "$out/forward-$name-$rep.log" 2>&1
  done
done
for arm in "${arms[@]}"; do
  name=${arm%%=*} bin=${arm#*=}
  echo "== memit-$name $(date -u +%T)"
  REVIVE_TUNE=0 "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --method memit --batch 8 \
    --out "/tmp/attn-runs-$name" --json "$out/memit-$name.json" > "$out/memit-$name.log" 2>&1
done
echo "== done $(date -u +%T)"

#!/usr/bin/env bash
# The targets' group overhead on a software adapter (REVIVE_GROUP_OVERHEAD, tokens of padding
# one more group is worth), alternating values in two rounds: one MEMIT batch of 8 geography
# edits at reduced settings (C0 cached), one binary.
set -u
bin=${BIN:-/tmp/revive-ovh}
out=$(cd "${1:-.}" && pwd)
cd "$(dirname "$0")/../../.."
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for n in 16 48 128 1000000; do
    echo "== overhead $n round $rep $(date -u +%T)"
    REVIVE_TUNE=0 REVIVE_GROUP_OVERHEAD=$n "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz \
      --method memit --batch 8 --out "/tmp/ovh-runs-$n-$rep" --json "$out/memit-$n-$rep.json" > "$out/memit-$n-$rep.log" 2>&1
    grep -E "targets [0-9]|runtime work" "$out/memit-$n-$rep.log"
  done
done
echo "== done $(date -u +%T)"

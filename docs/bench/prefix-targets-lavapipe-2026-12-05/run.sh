#!/usr/bin/env bash
# MEMIT, one batch of 8 geography edits, reduced settings: the targets with whole sequences
# (REVIVE_NO_PREFIX=1) and with the prefixes computed once, the same binary, one after another.
set -u
bin=${1:?binary} out=${2:?out dir}
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for arm in noprefix prefix noprefix2 prefix2; do
  env=(); case $arm in noprefix*) env=(REVIVE_NO_PREFIX=1);; esac
  echo "== $arm $(date -u +%T)"
  env "${env[@]}" "$bin" bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz --method memit --batch 8 \
    --out "$out/runs-$arm" --json "$out/$arm.json" > "$out/$arm.log" 2>&1
done
echo "== done $(date -u +%T)"

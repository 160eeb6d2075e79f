#!/usr/bin/env bash
# ROME at its shipped 11 contexts (templates at the hparams' default), 12 steps, C0 from 4096
# tokens, two edits of assets/facts/edits.json: whole prompts at every step, then prefixes once.
set -u
bin=${1:?binary} out=${2:?out dir}
for arm in noprefix prefix; do
  env=(); case $arm in noprefix*) env=(REVIVE_NO_PREFIX=1);; esac
  echo "== rome-$arm $(date -u +%T)"
  env "${env[@]}" "$bin" bench edit -m smollm2 --steps 12 --cov-tokens 4096 --limit 2 --json "$out/rome-$arm.json" > "$out/rome-$arm.log" 2>&1
done
echo "== done $(date -u +%T)"

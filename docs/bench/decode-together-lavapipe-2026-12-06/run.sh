#!/usr/bin/env bash
# Decoding several prompts together against one, in the same run (revive bench forward
# --together 8: prompts of 9..16 tokens, each sequence at its own position), three rounds.
set -euo pipefail
BIN=${BIN:-/tmp/revive-new}
for i in 1 2 3; do
  "$BIN" bench forward --prefill 16 --decode 32 --together 8 --reps 1 --json forward-$i.json > forward-$i.log 2>&1
done

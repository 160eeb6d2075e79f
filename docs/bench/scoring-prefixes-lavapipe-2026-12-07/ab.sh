#!/bin/bash
# Scoring A/B: the same dry run (one MEMIT batch of 20, one checkpoint) with the binary before
# and after ScoringPlan's prefix folding, alternately.
cd "$(dirname "$0")/../../.."
BIN_DIR=${BIN_DIR:?the folder holding both binaries}
for round in 1 2; do
for b in revive-62e1d5b revive-new; do
  rm -rf /tmp/ab-$b
  "$BIN_DIR/$b" experiment --methods memit --revive none --limit 20 --batch 20 --every 20 --templates 0 --steps 12 --cov-tokens 4096 --known-limit 8 --sample 20 --ppl-tokens 256 --agreement-prompts 2 --fluency-prompts 1 --fluency-tokens 4 --no-spectral --batch-metrics both --out /tmp/ab-$b --dry-run 2>&1 | grep -E "checkpoint by measure|one batch" | sed "s/^/$b round $round: /"
done
done

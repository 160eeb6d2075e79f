#!/usr/bin/env bash
# Checkpoint scoring before (8a01062: each sample scored on its own) and after (the union once),
# alternating, on lavapipe; the dry run's first checkpoint has identical samples.
cd /work/main
for round in 1 2; do
  for which in old new; do
    if [ $which = old ]; then bin=/tmp/old-target/release/revive; else bin=./target/release/revive; fi
    $bin --backend vulkan experiment --dry-run --limit 8 --batch 8 --every 8 --templates 0 --steps 4 \
      --cov-tokens 4096 --sample 0 --ppl-tokens 0 --agreement-prompts 0 --fluency-prompts 0 --no-spectral \
      --known-limit 20 --out /tmp/ab/out-$which > /tmp/ab/$which-$round.log 2>&1
    echo "$which round $round: $(grep 'checkpoint by measure' /tmp/ab/$which-$round.log)"
  done
done

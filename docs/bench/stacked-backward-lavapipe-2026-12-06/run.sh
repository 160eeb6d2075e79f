#!/bin/bash
# MEMIT, one batch of 8 geography requests, reduced settings, lavapipe: the binary before
# (base) and after (new) this change, alternating, three rounds.
for round in 1 2 3; do
  for which in base new; do
    /tmp/ab/revive-$which bench edit --method memit --batch 8 --limit 8 --templates 0 --steps 12 --cov-tokens 4096 --out /tmp/ab/out-$which > /tmp/ab/$which-$round.log 2>&1
    echo "$which round $round: $(grep -E 'targets [0-9.]+ s|dispatches per batch|after efficacy' /tmp/ab/$which-$round.log | tr '\n' ' ')"
  done
done

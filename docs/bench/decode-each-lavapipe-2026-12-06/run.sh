#!/bin/bash
cd /work/main
for round in 1 2 3; do
  for arm in a4b each; do
    /tmp/revive-$arm bench forward --prefill 16 --decode 16 --cpu-tokens 1 --reps 2 --together 8 --json /tmp/each-ab/$arm-$round.json > /tmp/each-ab/$arm-$round.log 2>&1
  done
  for arm in a4b each; do
    /tmp/revive-$arm bench forward --prefill 16 --decode 16 --cpu-tokens 1 --reps 2 --together 16 --json /tmp/each-ab/$arm-16-$round.json > /tmp/each-ab/$arm-16-$round.log 2>&1
  done
done
echo done > /tmp/each-ab/DONE

#!/bin/bash
# The binary before the stacked q/k/v product for prefills (base) and after (new), alternating.
cd /work/main
for round in 1 2 3; do
  for arm in fold stacked; do
    /tmp/revive-$arm bench forward --prefill 128 --prefill 512 --decode 16 --cpu-tokens 1 --reps 2 --together 8 --json /tmp/stacked-ab/$arm-$round.json > /tmp/stacked-ab/$arm-$round.log 2>&1
  done
done
echo done > /tmp/stacked-ab/DONE

#!/usr/bin/env bash
# One MEMIT batch of 8 geography edits at reduced settings (C0 cached): the binary with the
# q/k/v product stacked only without a tape (base) and with it in the targets' taped passes
# too (new), alternating, two rounds.
set -u
out=/tmp/tape-ab
cd /work/main
small=(--templates 0 --steps 12 --cov-tokens 4096 --limit 8)
for rep in 1 2; do
  for arm in stacked2 tapeqkv; do
    REVIVE_TUNE=0 /tmp/revive-$arm bench edit -m smollm2 "${small[@]}" --edits assets/facts/geo/edits.json.gz \
      --method memit --batch 8 --out "/tmp/tape-runs-$arm-$rep" --json "$out/memit-$arm-$rep.json" > "$out/memit-$arm-$rep.log" 2>&1
  done
done
echo done > $out/DONE

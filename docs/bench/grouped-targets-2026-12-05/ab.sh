#!/bin/bash
# A/B of the targets: old (padded) vs new (grouped) binary, 8 geo requests in one batch.
cd /work/main
for round in 1 2; do
for v in old new; do
  bin=/tmp/m100/revive; [ $v = new ] && bin=/tmp/m100/revive-new
  $bin bench edit -m ~/.cache/revive/SmolLM2-135M-Instruct.Q4_1.gguf --method memit --edits assets/facts/geo/edits.json.gz --limit 8 --batch 8 --templates 0 --steps 12 --cov-tokens 4096 --known /tmp/m100/known2.json --out /tmp/m100/ab-$v --json /tmp/m100/ab-$v-$round.json > /tmp/m100/ab-$v-$round.log 2>&1
  python3 -c "import json;a=json.load(open('/tmp/m100/ab-$v-$round.json'))['arms'][0];print('$v $round', {k:a[k] for k in ['targets_seconds','metrics_seconds','forward_seconds','efficacy','paraphrase','neighborhood','targets_dispatches']})"
done; done

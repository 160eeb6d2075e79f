#!/bin/bash
# A/B of the targets: old (padded) vs new (grouped) binary, 8 geo requests in one batch.
cd "$(dirname "$0")/../../.."
# The binaries (revive: before; revive-new / revive-head: after), known2.json (the first 2
# facts of assets/facts/known.json) and the outputs live in DIR.
DIR=${DIR:-/tmp/ab}
for round in 1 2; do
for v in old new; do
  bin=$DIR/revive; [ $v = new ] && bin=$DIR/revive-new
  $bin bench edit -m ~/.cache/revive/SmolLM2-135M-Instruct.Q4_1.gguf --method memit --edits assets/facts/geo/edits.json.gz --limit 8 --batch 8 --templates 0 --steps 12 --cov-tokens 4096 --known $DIR/known2.json --out $DIR/ab-$v --json $DIR/ab-$v-$round.json > $DIR/ab-$v-$round.log 2>&1
  python3 -c "import json;a=json.load(open('$DIR/ab-$v-$round.json'))['arms'][0];print('$v $round', {k:a[k] for k in ['targets_seconds','metrics_seconds','forward_seconds','efficacy','paraphrase','neighborhood','targets_dispatches']})"
done; done

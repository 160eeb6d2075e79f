#!/bin/bash
# A/B of the metrics and keys: the grouped-targets binary (879f8e6) vs HEAD (keys up to the
# subject, scoring shared sequences), 8 geo requests in one batch.
cd "$(dirname "$0")/../../.."
# The binaries (revive: before; revive-new / revive-head: after), known2.json (the first 2
# facts of assets/facts/known.json) and the outputs live in DIR.
DIR=${DIR:-/tmp/ab}
for v in grouped head; do
  bin=$DIR/revive-new; [ $v = head ] && bin=$DIR/revive-head
  $bin bench edit -m ~/.cache/revive/SmolLM2-135M-Instruct.Q4_1.gguf --method memit --edits assets/facts/geo/edits.json.gz --limit 8 --batch 8 --templates 0 --steps 12 --cov-tokens 4096 --known $DIR/known2.json --out $DIR/ab2-$v --json $DIR/ab2-$v.json > $DIR/ab2-$v.log 2>&1
  python3 -c "import json;a=json.load(open('$DIR/ab2-$v.json'))['arms'][0];print('$v', {k:a[k] for k in ['targets_seconds','keys_seconds','metrics_seconds','forward_seconds','efficacy','paraphrase','neighborhood','targets_dispatches']})"
done

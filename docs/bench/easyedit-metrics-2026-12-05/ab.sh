#!/bin/bash
# A/B of a MEMIT batch's metrics: the session's start (85b72db, CounterFact scores only) against
# the EasyEdit metrics (teacher-forced top tokens from the same passes, locality of the
# neighbourhood prompts, known facts from GPU-side scores), 8 geo requests in one batch, run
# back to back. The binaries (revive-old, revive-new), known2.json (the first 2 facts of
# assets/facts/known.json) and the outputs live in DIR.
cd "$(dirname "$0")/../../.."
DIR=${DIR:-/tmp/ab}
for v in old new; do
  $DIR/revive-$v bench edit -m ~/.cache/revive/SmolLM2-135M-Instruct.Q4_1.gguf --method memit --edits assets/facts/geo/edits.json.gz --limit 8 --batch 8 --templates 0 --steps 12 --cov-tokens 4096 --known $DIR/known2.json --out $DIR/ab-$v --json $DIR/ab-$v.json > $DIR/ab-$v.log 2>&1
  python3 -c "import json;a=json.load(open('$DIR/ab-$v.json'))['arms'][0];print('$v', {k:a.get(k) for k in ['batch_seconds','targets_seconds','keys_seconds','metrics_seconds','forward_seconds','efficacy','paraphrase','neighborhood','rewrite_acc','rephrase_acc','locality']})"
done

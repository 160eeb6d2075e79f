#!/usr/bin/env bash
# How the batch methods' defaults on SmolLM2 are measured (issue 10): MEMIT's edited layer
# window and AlphaEdit's null-space threshold (relative to C0's largest eigenvalue), each run
# from the original weights on the same geography edits, reduced settings, with the known facts
# of KNOWN (efficacy, paraphrase, neighbourhood, known facts kept, ‖ΔW‖ per layer in the JSON).
#   bash benches/sweep.sh BIN MODEL OUT EDITS BATCH [KNOWN]
# On the 2-core machine (lavapipe): EDITS=8 BATCH=8 (AlphaEdit in two batches of EDITS/2, so
# that the second sees the first's keys); on a GPU machine: EDITS=200 BATCH=100.
set -u
bin=${1:?binary} model=${2:?model} out=${3:?out dir} edits=${4:?edits} batch=${5:?batch}
known=${6:-assets/facts/geo/known.json}
mkdir -p "$out"
common=(-m "$model" --edits assets/facts/geo/edits.json.gz --known "$known" --templates 0 --steps 12 --cov-tokens 4096 --limit "$edits")
for layers in 3,4,5,6,7 1,2,3,4,5 6,7,8,9,10; do
  name=memit-layers-${layers//,/-}
  echo "== $name $(date -u +%T)"
  "$bin" bench edit "${common[@]}" --method memit --layers "$layers" --batch "$batch" \
    --out "$out/runs-$name" --json "$out/$name.json" > "$out/$name.log" 2>&1
  tail -n 4 "$out/$name.log"
done
for threshold in 0.01 0.001 0.1; do
  name=alphaedit-threshold-$threshold
  echo "== $name $(date -u +%T)"
  python3 -c "import json, sys; h = json.load(open('assets/hparams/alphaedit/smollm2.json')); h['nullspace_threshold'] = float(sys.argv[1]); json.dump(h, open(sys.argv[2], 'w'))" \
    "$threshold" "$out/$name.hparams.json"
  "$bin" bench edit "${common[@]}" --method alphaedit --hparams "$out/$name.hparams.json" --batch $(( (edits + 1) / 2 )) \
    --out "$out/runs-$name" --json "$out/$name.json" > "$out/$name.log" 2>&1
  tail -n 4 "$out/$name.log"
done

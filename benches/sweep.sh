#!/usr/bin/env bash
# How the batch methods' defaults on SmolLM2 are measured (issue 10): MEMIT's edited layer
# window, AlphaEdit's null-space threshold (relative to C0's largest eigenvalue) and NSE's
# distance threshold alpha (a second pass for the requests still farther from their targets), each run
# from the original weights on the same geography edits, reduced settings, with the known facts
# of KNOWN (efficacy, paraphrase, neighbourhood, known facts kept, ‖ΔW‖ per layer in the JSON).
#   bash benches/sweep.sh BIN MODEL OUT EDITS BATCH [KNOWN]
# On the 2-core machine (lavapipe): EDITS=8 BATCH=8 (AlphaEdit in two batches of EDITS/2, so
# that the second sees the first's keys, and so NSE); on a GPU machine: EDITS=200 BATCH=100.
# SETS (environment) picks the sweeps: default "memit alphaedit nse".
set -u
sets=${SETS:-memit alphaedit nse}
bin=${1:?binary} model=${2:?model} out=${3:?out dir} edits=${4:?edits} batch=${5:?batch}
known=${6:-assets/facts/geo/known.json}
mkdir -p "$out"
common=(-m "$model" --edits assets/facts/geo/edits.json.gz --known "$known" --templates 0 --steps 12 --cov-tokens 4096 --limit "$edits")
with_value() { # hparams file $1 with field $2 set to $3, written to $4
  python3 -c "import json, sys; h = json.load(open(sys.argv[1])); h[sys.argv[2]] = float(sys.argv[3]); json.dump(h, open(sys.argv[4], 'w'))" "$@"
}
[[ " $sets " == *" memit "* ]] && for layers in 3,4,5,6,7 1,2,3,4,5 6,7,8,9,10; do
  name=memit-layers-${layers//,/-}
  echo "== $name $(date -u +%T)"
  "$bin" bench edit "${common[@]}" --method memit --layers "$layers" --batch "$batch" \
    --out "$out/runs-$name" --json "$out/$name.json" > "$out/$name.log" 2>&1
  tail -n 4 "$out/$name.log"
done
# One run per value of FIELD in METHOD's shipped file, in two batches of EDITS/2 (the second
# sees the first's keys): sweep_field METHOD LABEL FIELD VALUE…
sweep_field() {
  local method=$1 label=$2 field=$3
  shift 3
  for value in "$@"; do
    name=$method-$label-$value
    echo "== $name $(date -u +%T)"
    with_value "assets/hparams/$method/smollm2.json" "$field" "$value" "$out/$name.hparams.json"
    "$bin" bench edit "${common[@]}" --method "$method" --hparams "$out/$name.hparams.json" --batch $(( (edits + 1) / 2 )) \
      --out "$out/runs-$name" --json "$out/$name.json" > "$out/$name.log" 2>&1
    tail -n 4 "$out/$name.log"
  done
}
[[ " $sets " == *" alphaedit "* ]] && sweep_field alphaedit threshold nullspace_threshold 0.01 0.001 0.1
[[ " $sets " == *" nse "* ]] && sweep_field nse alpha alpha 20 5 60
exit 0

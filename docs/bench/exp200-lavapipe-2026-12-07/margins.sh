#!/usr/bin/env bash
# Each arm's model after its 200 edits, rebuilt from its journal, and the unedited model: which
# retention facts each answers and the unedited model's log p of every answer, joined by
# margins.py into margins.csv. EXP is the experiment's output directory (the four arms' journals).
set -euo pipefail
BIN=${BIN:-target/release/revive}; EXP=${EXP:?the experiment directory}; OUT=${OUT:-/tmp/margins}
FACTS=assets/facts/geo/known.json
mkdir -p "$OUT"
"$BIN" facts -m smollm2 --facts $FACTS --json > "$OUT/base.json"
for arm in memit-none memit-0.5 alphaedit-none alphaedit-0.5; do
  "$BIN" apply -m smollm2 --journal "$EXP/$arm" --out "$OUT/$arm" --save delta
  "$BIN" facts -m smollm2 --delta "$OUT/$arm/delta.safetensors" --facts $FACTS --json > "$OUT/$arm.json"
done
python3 "$(dirname "$0")/margins.py" "$OUT" > "$(dirname "$0")/margins.txt"

#!/usr/bin/env bash
# 2,000 geography edits in batches of 100 (the paper's batch), MEMIT and AlphaEdit with and
# without REVIVE τ = 0.5, reduced settings, on a machine without a GPU (lavapipe), a few hours
# at a time: each call runs the arms one after another until DEADLINE (epoch seconds), and the
# next call continues each arm from its journal and checkpoints. The REVIVE arms first: they
# are the aim (efficacy ≥ 90 %, paraphrase ≥ 80 %, perplexity within +10 %,
# retention ≥ 90 % at 2,000 edits).
# C0 from COV corpus tokens: 4,096 in the first run (/work/exp2000/out), 100,000 in the second
# (/work/exp2000-c0/out), after docs/bench/c0-probe-lavapipe/ showed the small C0 costing
# retention.
#   BIN=target/release/revive OUT=/work/exp2000/out DEADLINE=$(date -d 09:10 +%s) [COV=100000] [ARMS="memit/none"] bash run.sh
# ARMS picks the arms (default all four, in this order); a machine that lost OUT runs the rest.
set -u
BIN=${BIN:-target/release/revive}; OUT=${OUT:?the experiment directory}; DEADLINE=${DEADLINE:?epoch seconds}; COV=${COV:-4096}
for arm in ${ARMS:-alphaedit/0.5 memit/0.5 alphaedit/none memit/none}; do
  left=$(( (DEADLINE - $(date +%s)) / 60 ))
  [ $left -lt 5 ] && { echo "deadline: stop before $arm"; break; }
  echo "=== $arm, $left min left, $(date)"
  nice -n 10 "$BIN" experiment --methods memit,alphaedit --revive none,0.5 --limit 2000 --batch 100 --every 500 \
    --templates 0 --steps 12 --cov-tokens $COV --sample 100 --ppl-tokens 2048 --agreement-prompts 16 \
    --fluency-prompts 4 --fluency-tokens 32 --batch-metrics none --out "$OUT" --arm $arm --stop-after $left
  echo "=== $arm exit $?, $(date)"
done

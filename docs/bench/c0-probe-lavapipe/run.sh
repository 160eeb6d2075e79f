#!/usr/bin/env bash
# Is the 2,000-edit run's loss of retention a result of its reduced C0 (4,096 corpus tokens, a
# ~35 % Frobenius error; docs/covariance.md)? AlphaEdit + REVIVE τ = 0.5, the same first 500
# edits in batches of 100 and the same checkpoint settings as docs/bench/exp2000-lavapipe/run.sh,
# with C0 from COV tokens instead (default 16,384: ~13 % error). Compare its checkpoint at 500
# with that run's.
#   BIN=/work/exp2000/revive OUT=/work/c0-probe COV=16384 bash run.sh
set -u
BIN=${BIN:-target/release/revive}; OUT=${OUT:?the experiment directory}; COV=${COV:-16384}
nice -n 10 "$BIN" experiment --methods alphaedit --revive 0.5 --limit 500 --batch 100 --every 500 \
  --templates 0 --steps 12 --cov-tokens "$COV" --sample 100 --ppl-tokens 2048 --agreement-prompts 16 \
  --fluency-prompts 4 --fluency-tokens 32 --batch-metrics none --out "$OUT" --arm alphaedit/0.5

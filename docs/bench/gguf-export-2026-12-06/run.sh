#!/usr/bin/env bash
# The Darrieux edit (ROME, one request, reduced settings) as a session delta, exported over the
# shipped Q4_1 GGUF in four types, scored, and read back with llama.cpp's gguf package.
set -euo pipefail
R=./target/release/revive
$R edit -m smollm2 --method rome --edits assets/facts/edits.json --batch 1 --limit 1 --templates 0 --steps 12 --cov-tokens 4096 --save delta --out /tmp/rs
for t in f32 f16 q8_0 keep; do $R export -m smollm2 --delta /tmp/rs/delta.safetensors --out /tmp/darrieux-$t.gguf --edited-type $t; done
for t in f32 f16 q8_0 keep; do python3 benches/baselines/gguf_export_check.py ~/.cache/revive/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/darrieux-$t.gguf; done
for m in smollm2 /tmp/darrieux-{f32,f16,q8_0,keep}.gguf; do for c in " English" " French"; do $R score -m $m -p "The mother tongue of Danielle Darrieux is" -c "$c"; done; done

#!/bin/bash
# usage: hostcmp.sh rounds bin...
rounds=$1; shift
for r in $(seq $rounds); do for b in "$@"; do printf "%s " $(basename $b); REVIVE_FOLD=1 $b bench forward -m smollm2 --prefill 128 --decode 48 --together 0 --cpu-tokens 0 --reps 3 2>&1 | grep -E "^\| (prefill 128 tokens \| [0-9]|decode, per)" | awk -F'|' '{printf "%s wall %s cpu %s µs/d %s; ", $2, $3, $5, $6}'; echo; done; done

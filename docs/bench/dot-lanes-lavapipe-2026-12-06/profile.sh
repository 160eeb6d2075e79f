#!/usr/bin/env bash
# Where a decoded token's products spend their time, every dispatch waited for
# (REVIVE_PROFILE=1), the binary before the lanes dot kernel and the one with it, alternating.
set -u
out=$(cd "${1:-.}" && pwd)
before=${BEFORE:-/tmp/revive-new} after=${AFTER:-/tmp/revive-dotlanes}
for rep in 1 2; do
  for arm in before after; do
    bin=${!arm}
    REVIVE_TUNE=0 REVIVE_PROFILE=1 "$bin" bench forward --prefill 16 --decode 16 --together 0 --cpu-tokens 1 --reps 1 > "$out/profile-$arm-$rep.log" 2>&1
    echo "$arm $rep:"; sed -n '/16 decoded tokens/,$p' "$out/profile-$arm-$rep.log" | grep matmul
  done
done

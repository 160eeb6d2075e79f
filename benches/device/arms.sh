#!/usr/bin/env bash
# The arms of `revive experiment` (by default four: MEMIT and AlphaEdit, without REVIVE and with
# τ = 0.5) as parallel processes on one GPU, then the table and plots from their directories:
#   [ARMS="memit/none … nse/0.5"] bash benches/device/arms.sh BIN MODEL DIR MINUTES [experiment flags…]
# Each arm is bound by dispatches and host work rather than by the GPU's arithmetic, so four
# share one GPU well. Every arm stops cleanly after MINUTES (running the same command again
# continues it); each arm's log is DIR-<method>-<τ>.log.
set -u
bin=$1 model=$2 dir=$3 minutes=$4
shift 4
mkdir -p "$dir"
# The kernel choices first, once: four arms measuring at the same time on a fresh machine would
# each time the others' work and save different tables, and an arm continued later would load
# another table than it started with (its results would no longer be bit-identical).
"$bin" tune -m "$model" --rows 1 --rows 16 --rows 128 --rows 512 --rows 2048 > "$dir-tune.log" 2>&1
arms=${ARMS:-memit/none memit/0.5 alphaedit/none alphaedit/0.5}
# --methods and --revive name every arm's method and setting; --arm picks one of them.
methods=$(for a in $arms; do echo "${a%/*}"; done | awk '!seen[$0]++' | paste -sd,)
settings=$(for a in $arms; do echo "${a#*/}"; done | awk '!seen[$0]++' | paste -sd,)
for arm in $arms; do
  "$bin" experiment -m "$model" --methods "$methods" --revive "$settings" --arm "$arm" \
    --stop-after "$minutes" --out "$dir" "$@" > "$dir-${arm/\//-}.log" 2>&1 &
done
wait
tail -n 4 "$dir"-*.log
"$bin" experiment --merge "$dir" --out "$dir"

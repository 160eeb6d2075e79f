#!/usr/bin/env bash
# Prepare what a remote GPU host needs, from the project's root:
#   benches/device/prepare.sh [--model FILE] [EXTRA_FILE...]
# It fills .device/ (git-ignored): the Vulkan loader (x86-64 debs, unpacked there by env.sh),
# the release build of `revive` (stripped) plus any extra files, env.sh, and, with --model, the
# model split into equal parts of at most 48 MiB (one transfer carries 64 MiB at most). The host has
# no Rust toolchain and no network: everything comes from here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git rev-parse --show-toplevel); cd "$root"
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
model=""
if [ "${1:-}" = "--model" ]; then model=$2; shift 2; fi
mkdir -p .device/gl .device/bin
if ! ls .device/gl/libvulkan1_*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64-lists'
  mkdir -p /tmp/amd64-lists/partial
  apt-get $o update -qq
  (cd .device/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>/dev/null)
fi
cargo build --release --bins
rm -f .device/bin/*
for b in target/release/*; do
  if [ -f "$b" ] && [ -x "$b" ] && [[ "$(basename "$b")" != *.* ]]; then cp "$b" .device/bin/; fi
done
strip .device/bin/* 2>/dev/null || true
for f in "$@"; do cp -r "$f" .device/bin/; done
cp "$here/env.sh" .device/env.sh  # benches/device/env.sh: unpacks the loader, reassembles the model
rm -rf .device/part-*
parts=()
if [ -n "$model" ]; then
  size=$(stat -c %s "$model"); n=$(( (size + 48*1024*1024 - 1) / (48*1024*1024) ))
  split -n "$n" "$model" .device/model.
  sha256sum "$model" | cut -d' ' -f1 > .device/bin/model.sha256
  for p in .device/model.*; do
    name=$(basename "$p"); mkdir -p ".device/part-$name"; mv "$p" ".device/part-$name/$name"
    parts+=("$name")
  done
fi
echo "bin + loader: $(du -sh .device/bin .device/gl | awk '{print $1}' | paste -sd+)"
for name in "${parts[@]}"; do
  echo "stage (send .device/part-$name):  mkdir -p /root/revive-cache && cp .device/part-$name/* /root/revive-cache/"
done
echo "then (send .device/gl .device/bin .device/env.sh):  . .device/env.sh && .device/bin/revive ..."

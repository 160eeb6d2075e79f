#!/bin/sh
# Rebuilds wordnet.txt (and LICENSE) from Debian's wordnet-base package (WordNet 3.0).
# Usage: assets/corpus/make.sh [path/to/wordnet-base_*.deb]
# Without an argument the package is fetched with `apt-get download` (no root needed).
# Deterministic: the same package gives the same file byte for byte.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
    deb=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
else
    (cd "$work" && apt-get download wordnet-base >/dev/null)
    deb=$(ls "$work"/wordnet-base_*.deb)
fi
dpkg-deb -x "$deb" "$work/x"
wn="$work/x/usr/share/wordnet"
# One gloss per line: the text after "| " on each synset line of the data files (lines that
# start with two spaces are the licence header). POS order noun, verb, adj, adv; inside a file,
# synset offset order. Every 5th gloss is kept so the file stays near 2 MB (all 117k glosses
# are 9 MB); the Rust side shuffles sequences by seed, so the POS order does not bias a prefix.
for pos in noun verb adj adv; do
    grep -v '^  ' "$wn/data.$pos" | sed -n 's/^[^|]*| //p'
done | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | LC_ALL=C grep -v '^$' | awk 'NR % 5 == 1' > "$here/wordnet.txt.partial"
mv "$here/wordnet.txt.partial" "$here/wordnet.txt"
# The WordNet licence asks that its notice appear on all copies.
awk '/^License: WordNet3.0/{on=1; next} on && /^Files:/{exit} on' \
    "$work/x/usr/share/doc/wordnet-base/copyright" | sed 's/^ //; s/^\.$//' > "$here/LICENSE"
wc -l -c "$here/wordnet.txt"

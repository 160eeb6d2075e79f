#!/usr/bin/env python3
"""Builds the held-out prose for perplexity: the opening of Jane Austen's *Persuasion* (1817,
public domain), from Debian's r-cran-janeaustenr package (the R package janeaustenr 1.0.0, MIT,
which carries Project Gutenberg's texts of the six novels).

Usage: python3 make.py [r-cran-janeaustenr_*.deb]   (without an argument: apt-get download)
Writes persuasion.txt next to this file: one paragraph per line (the book's line breaks inside a
paragraph joined with spaces), from the first paragraph up to the last whole paragraph within
MAX_CHARS characters. Deterministic: the same package gives the same bytes.

The R data file is read directly (no R needed): data/Rdata.rdb is a sequence of zlib streams,
each the R serialization (format 3, XDR) of one character vector, a novel's lines.
"""
import glob
import os
import struct
import subprocess
import sys
import tempfile
import zlib

MAX_CHARS = 140_000
BOOK_FIRST_LINE = "PERSUASION"


def r_strings(blob):
    """The strings of a serialized R character vector (STRSXP of CHARSXPs, no attributes)."""
    if blob[:2] != b"X\n":
        sys.exit("not an XDR R serialization")
    pos = 2 + 12  # format version, writer version, minimal reader version
    (n_enc,) = struct.unpack(">i", blob[pos:pos + 4])
    pos += 4 + n_enc  # native encoding name (format 3)
    flags, length = struct.unpack(">ii", blob[pos:pos + 8])
    if flags & 0xFF != 16:
        sys.exit(f"expected a character vector, found R type {flags & 0xFF}")
    pos += 8
    out = []
    for _ in range(length):
        flags, n = struct.unpack(">ii", blob[pos:pos + 8])
        pos += 8
        if flags & 0xFF != 9:
            sys.exit(f"expected a string, found R type {flags & 0xFF}")
        if n < 0:
            out.append("")
            continue
        out.append(blob[pos:pos + n].decode("utf-8"))
        pos += n
    return out


def novels(rdb):
    pos, out = 0, []
    while pos < len(rdb):
        (size,) = struct.unpack(">I", rdb[pos:pos + 4])
        d = zlib.decompressobj()
        blob = d.decompress(rdb[pos + 4:])
        if len(blob) != size:
            sys.exit(f"object at byte {pos}: {len(blob)} bytes, header says {size}")
        out.append(r_strings(blob))
        pos = len(rdb) - len(d.unused_data)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            deb = os.path.abspath(sys.argv[1])
        else:
            subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=tmp, check=True)
            deb = glob.glob(os.path.join(tmp, "r-cran-janeaustenr_*.deb"))[0]
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        rdb = open(os.path.join(tmp, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"), "rb").read()
    book = next(lines for lines in novels(rdb) if lines and lines[0].strip().upper() == BOOK_FIRST_LINE)
    paragraphs, current = [], []
    for line in book:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    text, size = [], 0
    for p in paragraphs:
        if size + len(p) + 1 > MAX_CHARS:
            break
        text.append(p)
        size += len(p) + 1
    with open(os.path.join(here, "persuasion.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    print(f"{len(text)} paragraphs, {size} characters")


if __name__ == "__main__":
    main()

"""The reference for revive's GGUF dequantisers: blocks of every quantised type revive reads,
decoded by llama.cpp's own Python package (`gguf`, PyPI, MIT), written as the JSON that
`tests/gguf.rs` compares `revive::model::gguf::dequantize` with, bit for bit.

The blocks are random bytes, except that each f16 scale field holds a random finite value (a
random bit pattern would often be NaN or infinite, which says nothing about the layout), the
last block's a subnormal one (IQ1_M's, spread over four nibbles, too). The seed is fixed, so the file is the same on every run.

    pip install gguf==0.19.0 numpy
    python3 benches/baselines/gguf_quants.py tests/data/gguf-quants.json
"""
import json
import sys

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

BLOCKS = 4

# Byte offsets of each type's f16 scale fields (llama.cpp's block structs in ggml-common.h).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
    T.IQ2_XXS: [0],
    T.IQ2_XS: [0],
    T.IQ2_S: [0],
    T.IQ3_XXS: [0],
    T.IQ3_S: [0],
    T.IQ1_S: [0],
    # IQ1_M's f16 scale is spread over the top nibbles of its last four 16-bit words (below).
    T.IQ1_M: [],
    T.TQ1_0: [52],
    T.TQ2_0: [64],
    # MXFP4's scale is one e8m0 byte, NVFP4's four e4m3 bytes (set below).
    T.MXFP4: [],
    T.NVFP4: [],
}


def blocks_of(ty, rng):
    elems, size = GGML_QUANT_SIZES[ty]
    raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
    for at in F16_FIELDS[ty]:
        scales = rng.uniform(-0.05, 0.05, size=BLOCKS).astype(np.float16)
        # The last block's scales are subnormal f16 (below 6.1e-5): small-weight tensors have them.
        scales[-1] = np.float16(rng.uniform(-6e-5, 6e-5))
        raw[:, at : at + 2] = scales.view(np.uint8).reshape(BLOCKS, 2)
    if ty == T.MXFP4:
        # Scales 2^-9 and 2^0, and the two that ggml computes as subnormal bit patterns (e < 2);
        # a random byte past 140 or so would overflow f32 at the largest level.
        raw[:, 0] = [118, 127, 1, 0]
    if ty == T.NVFP4:
        # Random e4m3 scales, the subnormal ones (below 8) and the two that decode to zero (0,
        # 0x7f) among them; a set top bit is ignored.
        raw[:, 0:4] = [[0x38, 0x05, 0x7F, 0xB1], [0x41, 0x00, 0x7E, 0x08], [0x01, 0x2A, 0x66, 0x10], [0x07, 0x30, 0x3F, 0x57]]
    if ty == T.IQ1_M:
        d = rng.uniform(-0.05, 0.05, size=BLOCKS).astype(np.float16)
        d[-1] = np.float16(rng.uniform(-6e-5, 6e-5))
        bits = d.view(np.uint16)
        words = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    return raw


def main():
    rng = np.random.default_rng(20261206)
    out = {"generator": f"gguf 0.19.0 (llama.cpp's gguf-py), numpy {np.__version__}", "types": []}
    for ty, fields in F16_FIELDS.items():
        raw = blocks_of(ty, rng)
        values = gguf.quants.dequantize(raw.reshape(-1), ty).astype(np.float32).reshape(-1)
        assert np.all(np.isfinite(values)), ty.name
        out["types"].append(
            {
                "name": ty.name,
                "id": int(ty),
                "bytes": raw.reshape(-1).tobytes().hex(),
                # f32 bit patterns: the comparison is exact.
                "values": values.view(np.uint32).tobytes().hex(),
            }
        )
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

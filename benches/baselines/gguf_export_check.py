"""Reads a GGUF that `revive export --format gguf` wrote with llama.cpp's own reader (the `gguf`
package, PyPI, MIT) and holds it against its base: every metadata value the same, in the same order
and of the same types (plus `revive.edited_tensors`), every tensor not listed there byte for byte the base's, and the
edited ones decoded by llama.cpp's dequantisers, with how far each moved from the base.

    pip install gguf==0.19.0 numpy
    python3 benches/baselines/gguf_export_check.py BASE.gguf EXPORTED.gguf
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def fields(reader):
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = field.contents()
    return out


def main():
    base, exported = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    base_kv, kv = fields(base), fields(exported)
    edited = kv.pop("revive.edited_tensors", [])
    assert base_kv == kv, [k for k in set(base_kv) | set(kv) if base_kv.get(k) != kv.get(k)]
    # The same order and the same value types (an empty array's element type included).
    order = [k for k in exported.fields if k != "revive.edited_tensors"]
    assert order == list(base.fields), "metadata order differs"
    assert all(exported.fields[k].types == base.fields[k].types for k in base.fields), "a metadata type differs"
    base_tensors = {t.name: t for t in base.tensors}
    assert [t.name for t in exported.tensors] == [t.name for t in base.tensors], "tensor order or names differ"
    report = {"metadata_keys_equal": len(kv), "copied": 0, "edited": []}
    for t in exported.tensors:
        b = base_tensors[t.name]
        assert list(t.shape) == list(b.shape), t.name
        if t.name not in edited:
            assert t.tensor_type == b.tensor_type and bytes(t.data) == bytes(b.data), f"{t.name} differs from the base"
            report["copied"] += 1
            continue
        new = dequantize(t.data, t.tensor_type).astype(np.float64)
        old = dequantize(b.data, b.tensor_type).astype(np.float64)
        assert np.all(np.isfinite(new)), t.name
        report["edited"].append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "base_type": b.tensor_type.name,
                "norm": float(np.linalg.norm(new)),
                "change_norm": float(np.linalg.norm(new - old)),
            }
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

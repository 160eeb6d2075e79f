#!/usr/bin/env python3
"""A model with SmolLM2-135M's structure — 30 layers, grouped-query attention, its vocabulary and
tokenizer — but widths cut to 64 (hidden) and 128 (MLP), random weights. Its forward pass issues
the same dispatches as SmolLM2's with almost no arithmetic, so `revive bench forward -m DIR`
on it measures what the host spends per dispatch without the device's work mixed in (on a
software adapter the "device" is the host's own cores). Needs numpy and safetensors.

    revive export -m smollm2 --out /tmp/smollm2-hf            # for tokenizer.json and config.json
    python3 benches/baselines/thin_smollm2.py --from /tmp/smollm2-hf --out /tmp/thin
    revive bench forward -m /tmp/thin --prefill 16 --decode 64 --together 0 --cpu-tokens 1
"""
import argparse
import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 4, 2, 16


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", required=True, help="an exported SmolLM2 directory (config.json, tokenizer.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, out = pathlib.Path(a.source), pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_size=HIDDEN, intermediate_size=FFN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    r = np.random.default_rng(a.seed)

    def matrix(rows, cols, scale=0.05):
        return (r.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float32)

    ones = lambda n: np.ones(n, np.float32)
    tensors = {"model.embed_tokens.weight": matrix(config["vocab_size"], HIDDEN, 0.02), "model.norm.weight": ones(HIDDEN)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": ones(HIDDEN),
            p + "post_attention_layernorm.weight": ones(HIDDEN),
            p + "self_attn.q_proj.weight": matrix(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": matrix(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": matrix(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": matrix(HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": matrix(FFN, HIDDEN),
            p + "mlp.up_proj.weight": matrix(FFN, HIDDEN),
            p + "mlp.down_proj.weight": matrix(HIDDEN, FFN),
        })
    save_file(tensors, str(out / "model.safetensors"))
    print(out)


if __name__ == "__main__":
    main()

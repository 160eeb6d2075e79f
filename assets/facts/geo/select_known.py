#!/usr/bin/env python3
"""Selects the retention set: the candidates (candidates.json, from make.py) whose answer the
unedited SmolLM2-135M-Instruct gives as its greedy next token, as revive's `facts` command checks.

The model runs here in NumPy (a plain Llama forward in float32, one prompt at a time), because
revive on a software Vulkan driver needs ~4 s per prompt and this takes seconds; the selection
is then checked with revive itself (tests/smollm2.rs checks a spread of it, every relation
included, with revive's `check_facts`).

Usage:
  revive export -m smollm2 --out /tmp/smollm2-hf        # the f32 weights revive runs
  pip install numpy safetensors tokenizers
  python3 select_known.py /tmp/smollm2-hf [WANT]          # writes known.json next to this file

Candidates are checked in their order (largest cities first) until WANT (default 600) are known;
then every candidate of the control relations (capitals, element symbols, opposites).
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    # x: [heads, T, d], Hugging Face's rotate-half layout.
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


class Llama:
    def __init__(self, directory):
        self.c = json.load(open(os.path.join(directory, "config.json")))
        self.w = load_file(os.path.join(directory, "model.safetensors"))

    def last_logits(self, ids):
        c, w = self.c, self.w
        h, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        eps, theta = c["rms_norm_eps"], c["rope_theta"]
        x = w["model.embed_tokens.weight"][ids]
        t = len(ids)
        mask = np.triu(np.full((t, t), -np.inf), 1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(t, h, d).transpose(1, 0, 2)
            k = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(t, kv, d).transpose(1, 0, 2)
            v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(t, kv, d).transpose(1, 0, 2)
            q, k = rope(q, theta), rope(k, theta)
            k, v = np.repeat(k, h // kv, 0), np.repeat(v, h // kv, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(d) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            o = (s / s.sum(-1, keepdims=True)) @ v
            x = x + o.transpose(1, 0, 2).reshape(t, h * d) @ w[p + "self_attn.o_proj.weight"].T
            a = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            g = a @ w[p + "mlp.gate_proj.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * (a @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = rms_norm(x[-1], w["model.norm.weight"], eps)
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return head @ x


# Relations no edit record touches (make.py); all their candidates are checked.
CONTROLS = {"P36", "P246", "P461"}
ONE_TOKEN = {"P246", "P461"}


def main():
    directory = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    model = Llama(directory)
    candidates = json.load(open(os.path.join(here, "candidates.json")))
    want = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    known, checked, answered = [], 0, set()
    for i, f in enumerate(candidates):
        rel = f["relation_id"]
        # Cities until WANT are known; then every candidate of the controls (relations no
        # edit touches: capitals, element symbols, opposites) is checked.
        if rel not in CONTROLS and len(known) >= want:
            continue
        # An opposite has several candidates (WordNet's antonyms); the first the model gives is kept.
        if f["prompt"] in answered:
            continue
        ids = tok.encode(f["prompt"], add_special_tokens=False).ids
        answer = tok.encode(f["answer"], add_special_tokens=False).ids
        # The newer controls keep only one-token answers: a first token such as " R" (of " Rb")
        # or " un" (of " unclear") says little about whether the model knows the answer.
        if rel in ONE_TOKEN and len(answer) != 1:
            continue
        checked += 1
        if int(np.argmax(model.last_logits(ids))) == answer[0]:
            known.append({"prompt": f["prompt"], "answer": f["answer"], "relation_id": rel})
            answered.add(f["prompt"])
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(candidates)}: {len(known)} known", file=sys.stderr)
    with open(os.path.join(here, "known.json"), "w", encoding="utf-8") as out:
        json.dump(known, out, ensure_ascii=False, indent=0)
        out.write("\n")
    print(f"{len(known)} of the first {checked} candidates answered")


if __name__ == "__main__":
    main()

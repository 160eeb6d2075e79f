"""Builds tests/data/qwen2/: a tiny random Qwen2 (the Llama block with biases on the query, key
and value projections; 2 layers, grouped-query attention, RoPE base 1,000,000 given only inside
transformers 5's `rope_parameters`) saved by transformers, and transformers' own logits of one
24-token sequence: the independent reference the Qwen2 loader and forward are tested against
(tests/forward.rs). Needs torch and transformers; the fixture is committed, so tests do not.
    python3 tests/data/qwen2_fixture.py
"""
import json, os
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2")
os.makedirs(here, exist_ok=True)
config = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
torch.manual_seed(11)
model = Qwen2ForCausalLM(config).float().eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.normal_(0.0, 0.5 if name.endswith("bias") else 0.3)  # biases large enough to matter
model.save_pretrained(here, safe_serialization=True)
os.remove(os.path.join(here, "generation_config.json"))
ids = torch.tensor([[(5 * i + 2) % 32 for i in range(24)]])
with torch.no_grad():
    logits = model(ids).logits[0]
    # The same model with its biases zeroed: the test checks they are what it sees.
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.zero_()
    unbiased = model(ids).logits[0]
expected = {"ids": ids[0].tolist(),
            "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()],
            "logits_without_biases": [[float(f"{x:.7g}") for x in row] for row in unbiased.tolist()]}
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f)

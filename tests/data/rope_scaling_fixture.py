"""Builds tests/data/rope-scaling/: one tiny random Llama (2 layers, heads of 16, so 8 RoPE
frequencies) saved by transformers, the config of each RoPE scaling this program applies
(Llama 3.1's rule with frequencies in all three of its bands, linear, and none), and
transformers' own logits of one 40-token sequence under each: the independent reference the
scaled-RoPE loader and kernels are tested against (tests/safetensors.rs). Needs torch and
transformers (5.x writes `rope_parameters`, the form tested here; the test rewrites it in the
older top-level form too); the fixture is committed, so tests do not.
    python3 tests/data/rope_scaling_fixture.py
"""
import json, os
import torch
from transformers import LlamaConfig, LlamaForCausalLM

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rope-scaling")
os.makedirs(here, exist_ok=True)
base = dict(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-5,
            tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
# Wavelengths 2π·10000^(i/8): 6.3, 20 (kept: under 256/8), 63, 199 (blended), 628 … (divided).
scalings = {
    "llama3": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 8.0, "original_max_position_embeddings": 256},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "none": {"rope_type": "default", "rope_theta": 10000.0},
}
torch.manual_seed(7)
model = LlamaForCausalLM(LlamaConfig(**base, rope_parameters=scalings["none"])).float().eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.3)  # large enough that the rotation's angles move the logits
model.save_pretrained(here, safe_serialization=True)
os.replace(os.path.join(here, "config.json"), os.path.join(here, "config-none.json"))
state = model.state_dict()
ids = torch.tensor([[(7 * i + 3) % 32 for i in range(40)]])
expected = {"ids": ids[0].tolist(), "logits": {}}
for name, rope in scalings.items():
    m = LlamaForCausalLM(LlamaConfig(**base, rope_parameters=rope)).float().eval()
    m.load_state_dict(state)
    m.config.to_json_file(os.path.join(here, f"config-{name}.json"))
    with torch.no_grad():
        expected["logits"][name] = [[float(f"{x:.7g}") for x in row] for row in m(ids).logits[0].tolist()]
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f)

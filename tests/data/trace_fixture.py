"""Builds tests/data/trace/: a tiny random Llama (4 layers) saved by transformers, and causal
traces of one prompt computed the way ROME's code computes them (rome/experiments/causal_trace.py,
`trace_with_patch`): one batch, the clean run first and the corrupted runs after it, noise added
to the embedding output at the subject's tokens, and a restored state copied from the clean row
into the corrupted rows by forward hooks — the residual after a layer (`hidden`), or the MLP
outputs (`mlp`) or the attention outputs (`attn`) of the layers of a window around it; the score is the mean over the corrupted
rows of softmax(last logits)[target]. The noise is written out so that the Rust test corrupts
with the same values: the independent reference src/eval/trace.rs is tested against
(tests/trace.rs). Needs torch and transformers; the fixture is committed, so tests do not.
    python3 tests/data/trace_fixture.py
"""
import json, os
import torch
from transformers import LlamaConfig, LlamaForCausalLM

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace")
os.makedirs(here, exist_ok=True)
config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
torch.manual_seed(5)
model = LlamaForCausalLM(config).float().eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if not name.endswith("norm.weight"):
            p.normal_(0.0, 0.3)
model.save_pretrained(here, safe_serialization=True)
gen = os.path.join(here, "generation_config.json")
if os.path.exists(gen):
    os.remove(gen)

ids = [3, 17, 41, 8, 29, 55, 12, 60, 7]
subject = (2, 4)  # first and last token of the subject, inclusive
samples, window = 3, 2
layers = config.num_hidden_layers
g = torch.Generator().manual_seed(9)
noise = torch.randn(samples, subject[1] - subject[0] + 1, config.hidden_size, generator=g) * 0.8

with torch.no_grad():
    clean_logits = model(torch.tensor([ids])).logits[0, -1]
target = int(clean_logits.argmax())


def run(patch_layers, kind, token):
    """P(target), mean over the corrupted rows, with the states at `token` of `patch_layers`
    restored from the clean row (none: the corrupted runs)."""
    batch = torch.tensor([ids] * (1 + samples))
    hooks = []

    def embed_hook(module, inp, out):
        out = out.clone()
        out[1:, subject[0]:subject[1] + 1] += noise
        return out

    def restore_hook(module, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[1:, token] = h[0, token]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    hooks.append(model.model.embed_tokens.register_forward_hook(embed_hook))
    for l in patch_layers:
        layer = model.model.layers[l]
        module = {"hidden": layer, "mlp": layer.mlp, "attn": layer.self_attn}[kind]
        hooks.append(module.register_forward_hook(restore_hook))
    with torch.no_grad():
        logits = model(batch).logits
    for h in hooks:
        h.remove()
    return float(torch.softmax(logits[1:, -1], dim=1)[:, target].mean())


traces = {}
for kind in ("hidden", "mlp", "attn"):
    table = []
    for l in range(layers):
        patch = [l] if kind == "hidden" else list(range(max(0, l - window // 2), min(layers, l - (-window // 2))))
        table.append([run(patch, kind, t) for t in range(len(ids))])
    traces[kind] = table
expected = {"ids": ids, "subject": list(subject), "target": target, "samples": samples, "window": window,
            "noise": noise.tolist(), "clean": float(torch.softmax(clean_logits, 0)[target]), "corrupted": run([], "hidden", 0),
            "restored": traces}
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f)
print("target", target, "clean", expected["clean"], "corrupted", expected["corrupted"])

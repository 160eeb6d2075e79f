"""Compare revive's logits with Hugging Face transformers (PyTorch eager, f32) on the same
weights: the model exported by `revive export` (the GGUF dequantised to f32, Q/K rows put back
in rotate-half order) is loaded into LlamaForCausalLM, and the last-token logits of each prompt
are compared with those `revive logits` wrote.

    revive export -m smollm2 --out /tmp/smollm2-hf
    revive logits -m smollm2 --prompts assets/prompts/compare20.txt --out /tmp/revive-logits.json
    python3 benches/baselines/compare_transformers.py /tmp/smollm2-hf /tmp/revive-logits.json
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, logits_file = sys.argv[1], sys.argv[2]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).to(device).eval()
    doc = json.load(open(logits_file))
    agree, worst, worst_rel = 0, 0.0, 0.0
    for row in doc["rows"]:
        ids = torch.tensor([row["ids"]], device=device)
        with torch.no_grad():
            ref = model(ids).logits[0, -1].double().cpu()
        ours = torch.tensor(row["logits"], dtype=torch.float64)
        diff = (ours - ref).abs().max().item()
        worst = max(worst, diff)
        worst_rel = max(worst_rel, diff / ref.abs().max().item())
        same = int(ours.argmax()) == int(ref.argmax())
        agree += same
        print(f"{row['prompt']!r:55} top-1 {'same' if same else 'DIFFERENT'}  max|dlogit| {diff:.2e}")
    n = len(doc["rows"])
    print(f"revive ({doc['adapter']}) vs transformers {torch.__version__}/{device}: top-1 agreement {agree}/{n}, "
          f"max |dlogit| {worst:.3e} ({worst_rel:.2e} of the largest logit)")


if __name__ == "__main__":
    main()

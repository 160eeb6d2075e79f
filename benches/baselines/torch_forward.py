#!/usr/bin/env python3
"""The forward pass `revive bench forward` measures, in Hugging Face transformers (PyTorch
eager, float32, TF32 off), on the same weights and the same protocol: a single-sequence prefill
of each length (the median of --reps runs), then --decode steps
of one token each through the KV cache after a 16-token prompt, a 16-token prompt continued
greedily for --decode tokens with `generate` (revive's `greedy` row: the decode a user sees,
prefill included, every token chosen on the device), and --together prompts of 9, 10, …
tokens sampled together for --decode tokens each, top 5 at temperature 1 (revive's sampled
row, fluency's setting; left-padded, as transformers batches prompts of several lengths). Times are wall clock with the
device synchronised before and after each measured call, as a user of either program sees them.

    revive export -m smollm2 --out /tmp/smollm2-hf
    python3 benches/baselines/torch_forward.py --model /tmp/smollm2-hf --prefill 128 512 \
        --decode 32 --device cuda --json torch-forward.json

Token ids are random (seeded), as in revive's benchmark: the cost of a forward pass does not
depend on which tokens it reads. transformers computes the logits of every prompt position
(revive only the last); for SmolLM2 that is about 7 GFLOP at 128 tokens, a fraction of a millisecond
on a data-centre GPU — `logits_to_keep` would avoid it but is not in every transformers release.
"""
import argparse
import json
import statistics
import time

import torch
from common import add_device_and_json, sync
from transformers import AutoModelForCausalLM


def args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Hugging Face checkpoint directory (revive export)")
    p.add_argument("--prefill", type=int, nargs="+", default=[128, 512])
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--together", type=int, default=8, help="prompts sampled together (0: not measured)")
    add_device_and_json(p)
    return p.parse_args()


def timed(device, f):
    sync(device)
    t0 = time.perf_counter()
    out = f()
    sync(device)
    return time.perf_counter() - t0, out


def main():
    a = args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:  # transformers ≥ 4.56 names it dtype; earlier ones torch_dtype
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model = model.to(a.device).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, vocab, (1, n), generator=gen).to(a.device)

    with torch.no_grad():
        model(ids(8))  # warm-up: kernels loaded, allocator primed
        prefill = []
        for n in a.prefill:
            x = ids(n)
            times = [timed(a.device, lambda: model(x))[0] for _ in range(a.reps)]
            prefill.append({"tokens": n, "ms": 1e3 * statistics.median(times), "tokens_per_s": n / statistics.median(times)})

        out = model(ids(16), use_cache=True)
        past = out.past_key_values
        steps = ids(a.decode)
        per_token = []
        for i in range(a.decode):
            dt, out = timed(a.device, lambda: model(steps[:, i : i + 1], past_key_values=past, use_cache=True))
            past = out.past_key_values
            per_token.append(dt)

        # generate() as a user calls it; min_new_tokens keeps the end token from stopping it
        # early, so both programs produce --decode tokens. Kept apart: a transformers release
        # whose generate() refuses these arguments costs this row, not the others.
        greedy = None
        try:
            prompt = ids(16)
            mask = torch.ones_like(prompt)
            run = lambda n: model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            run(a.decode)
            t = statistics.median([timed(a.device, lambda: run(a.decode))[0] for _ in range(a.reps)])
            first = statistics.median([timed(a.device, lambda: run(1))[0] for _ in range(a.reps)])
            greedy = {
                "tokens": a.decode,
                "ms_per_step": 1e3 * t / a.decode,
                "tokens_per_s": a.decode / t,
                # revive's decode_ms_per_token of the same name: past the prefill and first token.
                "decode_ms_per_token": 1e3 * (t - first) / max(a.decode - 1, 1),
            }
        except Exception as e:  # noqa: BLE001 - reported, the other rows kept
            greedy = {"error": repr(e)}

        sampled = None
        if a.together > 0:
            try:
                n = a.together
                longest = 8 + n
                batch = torch.zeros((n, longest), dtype=torch.long, device=a.device)
                mask = torch.zeros_like(batch)
                for i in range(n):
                    batch[i, longest - 9 - i :] = ids(9 + i)[0]
                    mask[i, longest - 9 - i :] = 1
                torch.manual_seed(1000)
                run = lambda: model.generate(batch, attention_mask=mask, max_new_tokens=a.decode, min_new_tokens=a.decode, do_sample=True, top_k=5, temperature=1.0, pad_token_id=0)
                run()
                t = statistics.median([timed(a.device, run)[0] for _ in range(a.reps)])
                sampled = {"sequences": n, "tokens": a.decode, "tokens_per_s": n * a.decode / t, "ms_per_step": 1e3 * t / a.decode}
            except Exception as e:  # noqa: BLE001 - reported, the other rows kept
                sampled = {"error": repr(e)}

    report = {
        "framework": f"transformers (torch {torch.__version__}, eager attention, float32, TF32 off)",
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
        "prefill": prefill,
        "decode_tokens": a.decode,
        "decode_ms_per_token": 1e3 * sum(per_token) / len(per_token),
        "decode_ms_per_token_median": 1e3 * statistics.median(per_token),
        "decode_tokens_per_s": len(per_token) / sum(per_token),
        "greedy": greedy,
        "sampled": sampled,
    }
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

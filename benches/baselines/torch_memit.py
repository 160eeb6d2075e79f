#!/usr/bin/env python3
"""The same MEMIT batch step as `revive bench edit --method memit`, in PyTorch, timed by phase.

The baseline revive's batch time is read against on the same GPU: one batch of requests edited
with MEMIT (docs/architecture.md §3) — targets z* for all requests optimised together (Adam,
one batched forward/backward per step, each request its own δ, clamp and early stop), then for
each edited layer in ascending order the keys, the residual to go, and
ΔW = R Kᵀ (λ C0 + K Kᵀ)⁻¹ solved in float64 — with the hyper-parameters of
assets/hparams/memit/smollm2.json and the reduced-settings flags revive takes (only the "{}"
context). C0 comes from the first --cov-tokens tokens of assets/corpus/wordnet.txt (one pass
for all layers); its time is reported apart, as revive reports C0 apart.

    revive export -m smollm2 --out /tmp/smollm2-hf
    python3 benches/baselines/torch_memit.py --model /tmp/smollm2-hf --limit 100 --batch 100 \
        --device cuda --json torch-memit.json

Needs torch and transformers (eager, float32, TF32 off).
"""
import argparse
import gzip
import json
import time
from pathlib import Path

import torch
from common import add_device_and_json, sync
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a Hugging Face directory (revive export)")
    p.add_argument("--edits", default=str(ROOT / "assets/facts/edits.json"))
    p.add_argument("--hparams", default=str(ROOT / "assets/hparams/memit/smollm2.json"))
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--cov-tokens", type=int, default=4096)
    add_device_and_json(p)
    return p.parse_args()


def with_space(s):
    return s if s[:1].isspace() else " " + s


def subject_prompt(tok, prompt, subject):
    """Token ids of the filled prompt and the index of the subject's last token."""
    at = prompt.index("{}")
    prefix = prompt[:at] + subject
    ids = tok(prefix + prompt[at + 2:], add_special_tokens=False)["input_ids"]
    last = len(tok(prefix, add_special_tokens=False)["input_ids"]) - 1
    return ids, last


def pad(seqs, device):
    t = max(len(s) for s in seqs)
    return torch.tensor([s + [0] * (t - len(s)) for s in seqs], device=device)


def layer_output(out):
    return out[0] if isinstance(out, tuple) else out


def main():
    a = args()
    torch.backends.cuda.matmul.allow_tf32 = False
    hp = json.loads(Path(a.hparams).read_text())
    layers, lam = hp["layers"], hp["mom2_update_weight"]
    last = layers[-1]
    dev = a.device
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = model.model.layers
    raw = Path(a.edits).read_bytes()
    reqs = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)[: a.limit]
    record = {"device": str(torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"), "batches": []}

    # C0 of every edited layer from one pass over the corpus.
    t0 = time.perf_counter()
    text = (ROOT / "assets/corpus/wordnet.txt").read_text()
    ids = tok(text[: a.cov_tokens * 12], add_special_tokens=False)["input_ids"][: a.cov_tokens]
    sums = {l: torch.zeros(blocks[l].mlp.down_proj.in_features, blocks[l].mlp.down_proj.in_features, dtype=torch.float64, device=dev) for l in layers}
    def accumulate(l):
        def hook(m, inp, out):
            k = inp[0].reshape(-1, inp[0].shape[-1]).double()
            sums[l].add_(k.T @ k)  # returns None: a hook's return value would replace the output

        return hook

    hooks = [blocks[l].mlp.down_proj.register_forward_hook(accumulate(l)) for l in layers]
    with torch.no_grad():
        for s in range(0, len(ids), 512):
            model(torch.tensor([ids[s : s + 512]], device=dev))
    for h in hooks:
        h.remove()
    c0 = {l: sums[l] / len(ids) for l in layers}
    sync(dev)
    record["c0_seconds"] = time.perf_counter() - t0

    for b in range(0, len(reqs), a.batch):
        batch = reqs[b : b + a.batch]
        n = len(batch)
        sync(dev)
        t_start = time.perf_counter()
        # Targets: rewrite prompt + target[:-1] and the KL prompt per request.
        seqs, sites, nll_rows, kl_rows, targets = [], [], [], [], []
        plain = []
        for r, q in enumerate(batch):
            target = tok(with_space(q["target_new"]), add_special_tokens=False)["input_ids"]
            ids_p, last_p = subject_prompt(tok, q["prompt"], q["subject"])
            plain.append((ids_p, last_p))
            sites.append((len(seqs), last_p, r))
            nll_rows.append([(len(seqs), len(ids_p) - 1 + j, t) for j, t in enumerate(target)])
            seqs.append(ids_p + target[:-1])
            ids_k, last_k = subject_prompt(tok, "{} is a", q["subject"])
            sites.append((len(seqs), last_k, r))
            kl_rows.append((len(seqs), len(ids_k) - 1))
            seqs.append(ids_k)
            targets.append(target)
        x = pad(seqs, dev)
        d = model.config.hidden_size
        delta = torch.zeros(n, d, device=dev, requires_grad=True)
        h_cur = {}

        def add_delta(m, inp, out):
            o = layer_output(out)
            h_cur["h"] = o
            add = torch.zeros_like(o)
            for s, pos, r in sites:
                add[s, pos] = add[s, pos] + delta[r]
            o = o + add
            return (o,) + tuple(out[1:]) if isinstance(out, tuple) else o

        hook = blocks[last].register_forward_hook(add_delta)
        with torch.no_grad():
            logits0 = model(x).logits
        p_ref = [torch.log_softmax(logits0[s, pos], -1).exp() for s, pos in kl_rows]
        h = torch.stack([h_cur["h"][sites[2 * r][0], sites[2 * r][1]] for r in range(n)]).detach()
        h_norm = h.norm(dim=1)
        opt = torch.optim.Adam([delta], lr=hp["v_lr"])
        stopped = torch.zeros(n, dtype=torch.bool, device=dev)
        for step in range(a.steps):
            opt.zero_grad()
            logp = torch.log_softmax(model(x).logits, -1)
            loss_r = []
            for r in range(n):
                nll = -torch.stack([logp[s, pos, t] for s, pos, t in nll_rows[r]]).mean()
                s, pos = kl_rows[r]
                kl = (p_ref[r] * (p_ref[r].clamp_min(1e-30).log() - logp[s, pos])).sum()
                wd = hp["v_weight_decay"] * delta[r].norm() ** 2 / h_norm[r] ** 2
                loss_r.append((nll, nll + hp["kl_factor"] * kl + wd))
            nlls = torch.stack([l[0] for l in loss_r]).detach()
            stopped |= nlls < hp["nll_stop"]
            if bool(stopped.all()) or step + 1 == a.steps:
                break
            frozen = delta.detach().clone()
            torch.stack([l[1] for l in loss_r]).sum().backward()
            opt.step()
            with torch.no_grad():
                delta[stopped] = frozen[stopped]
                cap = hp["clamp_norm_factor"] * h_norm
                norms = delta.norm(dim=1)
                scale = torch.where(norms > cap, cap / norms, torch.ones_like(norms))
                delta.mul_(scale[:, None])
        hook.remove()
        zstar = (h + delta.detach()).double()
        sync(dev)
        t_targets = time.perf_counter() - t_start

        # The layer loop.
        px = pad([p for p, _ in plain], dev)
        t_keys = t_solve = 0.0
        for i, l in enumerate(layers):
            sync(dev)
            t = time.perf_counter()
            got = {}
            hk = blocks[l].mlp.down_proj.register_forward_hook(lambda m, inp, out: got.__setitem__("k", inp[0]))
            hz = blocks[last].register_forward_hook(lambda m, inp, out: got.__setitem__("z", layer_output(out)))
            with torch.no_grad():
                model(px)
            hk.remove()
            hz.remove()
            K = torch.stack([got["k"][r, pos] for r, (_, pos) in enumerate(plain)]).double().T
            z = torch.stack([got["z"][r, pos] for r, (_, pos) in enumerate(plain)]).double()
            sync(dev)
            t_keys += time.perf_counter() - t
            t = time.perf_counter()
            R = (zstar - z).T / (len(layers) - i)
            X = torch.linalg.solve(lam * c0[l] + K @ K.T, K)
            blocks[l].mlp.down_proj.weight.add_((R @ X.T).float())
            sync(dev)
            t_solve += time.perf_counter() - t
        total = time.perf_counter() - t_start

        # Efficacy right after: P(new) > P(true) by mean token NLL on the rewrite prompt.
        ok = 0
        with torch.no_grad():
            for q, (ids_p, _) in zip(batch, plain):
                nll = {}
                for key in ("target_new", "target_true"):
                    t = tok(with_space(q[key]), add_special_tokens=False)["input_ids"]
                    lp = torch.log_softmax(model(torch.tensor([ids_p + t], device=dev)).logits[0], -1)
                    nll[key] = -sum(lp[len(ids_p) - 1 + j, tt].item() for j, tt in enumerate(t)) / len(t)
                ok += nll["target_new"] < nll["target_true"]
        rec = {"batch": b // a.batch, "requests": n, "seconds": total, "targets": t_targets, "keys": t_keys, "solve": t_solve, "efficacy": ok / n}
        print(json.dumps(rec))
        record["batches"].append(rec)
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

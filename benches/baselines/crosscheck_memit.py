"""Cross-check revive's MEMIT against MEMIT's published code (kmeng01/memit, commit 80426fd):
the same requests, hyper-parameters, C0 and model, then each layer's update compared.

MEMIT's code runs from a copy of its repository with the changes it needs here, each listed in
PATCHES: the CPU instead of CUDA, transformers 5's decoder layers (they return a tensor, not a
tuple), Llama's config name for the width. Everything else — the targets' optimisation
(compute_z), the keys (compute_ks), the residual spread over the layers and the solve — is
MEMIT's own. Its C0 is revive's (`get_cov` returns the cached second moment of the same layer
and token count; MEMIT's own statistics need Wikipedia), and its context templates are "{}"
alone, as revive's `--templates 0`.

Differences that are revive's by design and must be set equal for the comparison: the
targets' weight decay (revive wd·‖δ‖²/‖h‖², MEMIT wd·‖δ‖/‖h‖²: run both with 0) and the early
stop (revive on the NLL, MEMIT on the whole loss: the script reports whether any request
stopped early in either).

    revive edit -m smollm2 --method memit --hparams HP.json --edits E.json --batch 4 \
        --templates 0 --steps 12 --cov-tokens 4096 --save delta --out S   # HP: v_weight_decay 0
    revive export -m smollm2 --out BEFORE
    python3 benches/baselines/crosscheck_memit.py --memit-repo MEMIT --model BEFORE \
        --delta S/delta.safetensors --edits E.json --hparams HP.json --steps 12 --cov-tokens 4096
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# (file, old, new, expected count): the only edits to MEMIT's code.
PATCHES = [
    ("memit/compute_z.py", "model.config.n_embd", "model.config.hidden_size", 1),
    # transformers 5's decoder layers return the hidden states, not a tuple holding them.
    ("memit/compute_z.py", "cur_out[0][", "cur_out[", 2),
    ("memit/compute_z.py", ".output[0][", ".output[", 1),
]
CPU_FILES = ["memit/compute_z.py", "memit/compute_ks.py", "memit/memit_main.py", "rome/repr_tools.py"]


def prepare(repo):
    work = Path(tempfile.mkdtemp(prefix="memit-"))
    for sub in ["memit", "rome", "util", "globals.yml"]:
        src = Path(repo) / sub
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / sub)
    for f, old, new, count in PATCHES:
        text = (work / f).read_text()
        if text.count(old) != count:
            sys.exit(f"{f}: {old!r} occurs {text.count(old)} times, not {count}: another version of MEMIT's code")
        (work / f).write_text(text.replace(old, new))
    for f in CPU_FILES:
        p = work / f
        p.write_text(p.read_text().replace('"cuda"', '"cpu"'))
    return work


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memit-repo", required=True, help="a checkout of kmeng01/memit")
    ap.add_argument("--model", required=True, help="the unedited model, exported by revive export")
    ap.add_argument("--delta", required=True, help="the session's delta file (--save delta)")
    ap.add_argument("--edits", required=True)
    ap.add_argument("--hparams", required=True, help="revive's MEMIT hyper-parameters of the session")
    ap.add_argument("--steps", type=int, help="the session's --steps")
    ap.add_argument("--cov-tokens", type=int, required=True, help="the session's --cov-tokens")
    ap.add_argument("--stats", default=os.path.expanduser("~/.cache/revive/stats"))
    ap.add_argument("--json")
    a = ap.parse_args()

    hp = json.load(open(a.hparams))
    edits = json.load(open(a.edits))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    n_layers = model.config.num_hidden_layers

    work = prepare(a.memit_repo)
    os.chdir(work)
    sys.path.insert(0, str(work))
    from memit import memit_main
    from memit.memit_hparams import MEMITHyperParams

    def c0(layer):
        files = glob.glob(os.path.join(a.stats, f"c0-*-layer{layer}-{a.cov_tokens}tok-*.safetensors"))
        if len(files) != 1:
            sys.exit(f"{a.stats}: {len(files)} C0 files for layer {layer} at {a.cov_tokens} tokens (want 1)")
        return load_file(files[0])["c0"]

    def get_cov(model, tok, layer_name, *args, **kwargs):
        return c0(int(layer_name.split(".")[2]))

    memit_main.get_cov = get_cov
    memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"]]
    hparams = MEMITHyperParams(
        layers=hp["layers"], layer_selection="all", fact_token="subject_last",
        v_num_grad_steps=a.steps or hp["v_steps"], v_lr=hp["v_lr"], v_loss_layer=n_layers - 1,
        v_weight_decay=hp["v_weight_decay"], clamp_norm_factor=hp["clamp_norm_factor"],
        kl_factor=hp["kl_factor"], mom2_adjustment=True, mom2_update_weight=hp["mom2_update_weight"],
        rewrite_module_tmp="model.layers.{}.mlp.down_proj", layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
        # SmolLM2 ties its head to the embedding, which named_parameters lists once.
        ln_f_module="model.norm", lm_head_module="lm_head" if not model.config.tie_word_embeddings else "model.embed_tokens",
        mom2_dataset="wikipedia", mom2_n_samples=a.cov_tokens, mom2_dtype="float32",
    )
    requests = [{"case_id": e.get("case_id", i), "prompt": e["prompt"], "subject": e["subject"],
                 "target_new": {"str": e["target_new"]}} for i, e in enumerate(edits)]
    deltas = memit_main.execute_memit(model, tok, requests, hparams)

    ours = load_file(a.delta)
    rows = []
    for layer in hp["layers"]:
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        adj_k, resid = deltas[name]
        theirs = memit_main.upd_matrix_match_shape(resid @ adj_k.T, model.get_parameter(name).shape).double()
        key = next((k for k in ours if k.endswith(f"layers.{layer}.w_down") or k == name), None)
        if key is None:
            sys.exit(f"{a.delta}: no matrix of layer {layer} among {sorted(ours)}")
        w_after = ours[key].double()
        if w_after.shape != theirs.shape:
            w_after = w_after.T
        mine = w_after - model.get_parameter(name).detach().double()
        rel = (mine - theirs).norm().item() / theirs.norm().item()
        cos = (mine * theirs).sum().item() / (mine.norm().item() * theirs.norm().item())
        rows.append({"layer": layer, "memit_norm": theirs.norm().item(), "revive_norm": mine.norm().item(), "rel_diff": rel, "cosine": cos})
        print(f"layer {layer}: ‖ΔW‖ MEMIT {theirs.norm().item():.4f}, revive {mine.norm().item():.4f}; "
              f"‖Δrevive − ΔMEMIT‖/‖ΔMEMIT‖ {rel:.2e}, cosine {cos:.6f}")
    if a.json:
        json.dump({"torch": torch.__version__, "hparams": {k: v for k, v in vars(hparams).items()}, "layers": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()

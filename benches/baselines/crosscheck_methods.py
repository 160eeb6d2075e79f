"""Cross-check revive's ROME, MEMIT and AlphaEdit against their published code (kmeng01/rome at
0874014, kmeng01/memit at 80426fd, jianghoucheng/AlphaEdit at f5248d3): the same requests,
hyper-parameters, C0 and model, then each layer's update compared.

The published code runs from a copy of its repository with the changes it needs here, each
listed in PATCHES: the CPU instead of CUDA, transformers 5's decoder layers (they return a
tensor, not a tuple), Llama's config name for the width. Everything else — the targets'
optimisation (compute_z), the keys (compute_ks), the residual spread over the layers, the
solve (MEMIT's λC0 + KKᵀ; AlphaEdit's null-space projection and ridge) — is the published
code's own. Its C0 is revive's (`get_cov` returns the cached second moment of the same layer
and token count; their statistics need Wikipedia), and its context templates are "{}" alone,
as revive's `--templates 0`. AlphaEdit's projector P is built as its `get_project` builds it
(C0's singular vectors below the threshold), with revive's threshold (relative to C0's largest
singular value) turned into the absolute one AlphaEdit's code compares with.

revive's default target loss differs from the published code's (the decay, the early stop and
the KL's direction, `docs/architecture.md` §3); for a like-for-like run give the session
`"target_loss": "published"`.

    revive edit -m smollm2 --method memit --hparams HP.json --edits E.json --batch 4 \
        --templates 0 --steps 12 --cov-tokens 4096 --save delta --out S   # HP: target_loss published
    revive export -m smollm2 --out BEFORE
    python3 benches/baselines/crosscheck_methods.py --method memit --repo MEMIT --model BEFORE \
        --delta S/delta.safetensors --edits E.json --hparams HP.json --batch 4 --steps 12 --cov-tokens 4096

Several batches (--batch) compare the sum of all of them: MEMIT's deltas written one batch after
another, AlphaEdit's cache_c of earlier batches' keys carried on, as their sequential runs do.
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

# Per method: the package, and (file, old, new, expected count): the only edits to its code.
PATCHES = {
    "memit": ("memit", [
        ("memit/compute_z.py", "model.config.n_embd", "model.config.hidden_size", 1),
        # transformers 5's decoder layers return the hidden states, not a tuple holding them.
        ("memit/compute_z.py", "cur_out[0][", "cur_out[", 2),
        ("memit/compute_z.py", ".output[0][", ".output[", 1),
    ]),
    "rome": ("rome", [
        ("rome/compute_v.py", "model.config.n_embd", "model.config.hidden_size", 1),
    ]),
    "alphaedit": ("AlphaEdit", [
        ("AlphaEdit/compute_z.py", "cur_out[0]", "cur_out", 4),
        ("AlphaEdit/compute_z.py", "format(loss_layer)].output[0]", "format(loss_layer)].output", 1),
    ]),
}
CPU_FILES = {
    "rome": ["rome/compute_v.py", "rome/compute_u.py", "rome/rome_main.py", "rome/repr_tools.py"],
    "memit": ["memit/compute_z.py", "memit/compute_ks.py", "memit/memit_main.py", "rome/repr_tools.py"],
    "alphaedit": ["AlphaEdit/compute_z.py", "AlphaEdit/compute_ks.py", "AlphaEdit/AlphaEdit_main.py", "rome/repr_tools.py"],
}


def prepare(method, repo):
    package, patches = PATCHES[method]
    work = Path(tempfile.mkdtemp(prefix=f"{method}-"))
    for sub in dict.fromkeys([package, "rome", "util", "globals.yml"]):
        src = Path(repo) / sub
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / sub)
    for f, old, new, count in patches:
        text = (work / f).read_text()
        if text.count(old) != count:
            sys.exit(f"{f}: {old!r} occurs {text.count(old)} times, not {count}: another version of the code")
        (work / f).write_text(text.replace(old, new))
    for f in CPU_FILES[method]:
        p = work / f
        p.write_text(p.read_text().replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()"))
    return work


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["rome", "memit", "alphaedit"], default="memit")
    ap.add_argument("--repo", required=True, help="a checkout of kmeng01/rome, kmeng01/memit or jianghoucheng/AlphaEdit")
    ap.add_argument("--model", required=True, help="the unedited model, exported by revive export")
    ap.add_argument("--delta", required=True, help="the session's delta file (--save delta), or ROME's edited model.safetensors")
    ap.add_argument("--edits", required=True)
    ap.add_argument("--hparams", required=True, help="revive's hyper-parameters of the session")
    ap.add_argument("--batch", type=int, help="the session's --batch (default: all edits in one)")
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

    work = prepare(a.method, a.repo)
    os.chdir(work)
    sys.path.insert(0, str(work))

    def c0(layer):
        files = glob.glob(os.path.join(a.stats, f"c0-*-layer{layer}-{a.cov_tokens}tok-*.safetensors"))
        if len(files) != 1:
            sys.exit(f"{a.stats}: {len(files)} C0 files for layer {layer} at {a.cov_tokens} tokens (want 1: "
                     "point --stats at a folder holding only the unedited model's, e.g. a copy of its files)")
        return load_file(files[0])["c0"]

    def get_cov(model, tok, layer_name, *args, **kwargs):
        return c0(int(layer_name.split(".")[2]))

    layers = hp["layers"] if "layers" in hp else [hp["layer"]]
    common = dict(
        layers=layers, layer_selection="all", fact_token="subject_last",
        v_num_grad_steps=a.steps or hp["v_steps"], v_lr=hp["v_lr"], v_loss_layer=n_layers - 1,
        v_weight_decay=hp["v_weight_decay"], clamp_norm_factor=hp["clamp_norm_factor"],
        kl_factor=hp["kl_factor"], mom2_adjustment=True, mom2_update_weight=hp.get("mom2_update_weight", 0.0),
        rewrite_module_tmp="model.layers.{}.mlp.down_proj", layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
        # SmolLM2 ties its head to the embedding, which named_parameters lists once.
        ln_f_module="model.norm", lm_head_module="lm_head" if not model.config.tie_word_embeddings else "model.embed_tokens",
        mom2_dataset="wikipedia", mom2_n_samples=a.cov_tokens, mom2_dtype="float32",
    )
    requests = [{"case_id": e.get("case_id", i), "prompt": e["prompt"], "subject": e["subject"],
                 "target_new": {"str": e["target_new"]}} for i, e in enumerate(edits)]
    size = a.batch or len(requests)
    batches = [requests[i : i + size] for i in range(0, len(requests), size)]
    names = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers]
    before = {n: model.get_parameter(n).detach().double().clone() for n in names}
    if a.method == "rome":
        from rome import compute_u, rome_main as main
        from rome.rome_hparams import ROMEHyperParams

        # get_inv_cov's own computation, on revive's C0 instead of its Wikipedia statistics.
        compute_u.get_inv_cov = lambda model, tok, layer_name, *args: torch.inverse(c0(int(layer_name.split(".")[2]))).float()
        main.CONTEXT_TEMPLATES_CACHE = ["{}"]
        # ROME's hyper-parameters have no layer selection and no λ.
        del common["layer_selection"], common["mom2_update_weight"]
        hparams = ROMEHyperParams(context_template_length_params=[], **common)
        for request in requests:
            # apply_rome_to_model's write, one edit after another.
            deltas = main.execute_rome(model, tok, request, hparams)
            with torch.no_grad():
                for n in names:
                    left, right = deltas[n]
                    model.get_parameter(n)[...] += main.upd_matrix_match_shape(left.unsqueeze(1) @ right.unsqueeze(0), before[n].shape)
    elif a.method == "memit":
        from memit import memit_main as main
        from memit.memit_hparams import MEMITHyperParams

        main.get_cov = get_cov
        main.CONTEXT_TEMPLATES_CACHE = [["{}"]]
        hparams = MEMITHyperParams(**common)
        for batch in batches:
            # apply_memit_to_model's write, batch after batch (sequential editing).
            deltas = main.execute_memit(model, tok, batch, hparams)
            with torch.no_grad():
                for n in names:
                    model.get_parameter(n)[...] += main.upd_matrix_match_shape(deltas[n][1] @ deltas[n][0].T, before[n].shape).float()
    else:
        from AlphaEdit import AlphaEdit_main as main
        from AlphaEdit.AlphaEdit_hparams import AlphaEditHyperParams

        main.get_cov = get_cov
        main.CONTEXT_TEMPLATES_CACHE = [["{}"]]
        # experiments/evaluate.py's get_project, with revive's relative threshold made absolute.
        projectors = []
        for layer in layers:
            U, S, _ = torch.linalg.svd(c0(layer), full_matrices=False)
            small = (S < hp["nullspace_threshold"] * S[0]).nonzero(as_tuple=True)[0]
            projectors.append(U[:, small] @ U[:, small].T)
        P = torch.stack(projectors)
        cache_c = torch.zeros_like(P)
        hparams = AlphaEditHyperParams(model_name="smollm2", nullspace_threshold=hp["nullspace_threshold"], L2=hp["l2"], **common)
        for batch in batches:
            # experiments/evaluate.py's loop: the edited model and cache_c carried on.
            model, cache_c = main.apply_AlphaEdit_to_model(model, tok, batch, hparams, cache_c=cache_c, P=P)
    theirs = {n: model.get_parameter(n).detach().double() - before[n] for n in names}

    ours = load_file(a.delta)
    rows = []
    for layer, name in zip(layers, names):
        key = next((k for k in ours if k.endswith(f"layers.{layer}.w_down") or k == name), None)
        if key is None:
            sys.exit(f"{a.delta}: no matrix of layer {layer} among {sorted(ours)}")
        w_after = ours[key].double()
        if w_after.shape != before[name].shape:
            w_after = w_after.T
        mine, ref = w_after - before[name], theirs[name]
        rel = (mine - ref).norm().item() / ref.norm().item()
        cos = (mine * ref).sum().item() / (mine.norm().item() * ref.norm().item())
        rows.append({"layer": layer, "reference_norm": ref.norm().item(), "revive_norm": mine.norm().item(), "rel_diff": rel, "cosine": cos})
        print(f"layer {layer}: ‖ΔW‖ {a.method}'s code {ref.norm().item():.4f}, revive {mine.norm().item():.4f}; "
              f"‖Δrevive − Δcode‖/‖Δcode‖ {rel:.2e}, cosine {cos:.6f}")
    if a.json:
        json.dump({"method": a.method, "torch": torch.__version__, "hparams": {k: v for k, v in vars(hparams).items()}, "layers": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()

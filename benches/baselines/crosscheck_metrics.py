"""Cross-check revive's editing scores against the code the field reports them with: ROME's
CounterFact evaluation (`test_batch_prediction`: each target's mean per-token NLL after a
prompt, which decides efficacy, paraphrase and neighbourhood) and EasyEdit's `token_em`
evaluation (`test_prediction_acc`: rewrite and rephrase accuracy, and the teacher-forced
predictions that locality compares), both copied unchanged into `reference/`, run with
transformers (PyTorch eager f32) on the models revive scored.

A session of one batch gives both sides: its journal holds the scores revive measured on the
model before the batch and after it.

    revive edit -m smollm2 --method memit --edits E.json --batch 15 --templates 0 --steps 12 \
        --cov-tokens 4096 --save delta --out S
    revive journal S --json > S.journal.json
    revive export -m smollm2 --out BEFORE
    revive export -m smollm2 --delta S/delta.safetensors --out AFTER
    python3 benches/baselines/crosscheck_metrics.py --edits E.json --journal S.journal.json \
        --before BEFORE --after AFTER --json OUT.json

Prints every difference; exits 1 if a score differs beyond the tolerances below.
"""
import argparse
import json
import sys
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference.easyedit_utils import test_prediction_acc
from reference.rome_counterfact import test_batch_prediction

# An NLL is a mean of f32 log-softmaxes: revive's GPU kernels against PyTorch's CPU ones.
NLL_TOL = 2e-3
# A decision whose two NLLs are closer than this may flip on rounding alone: counted, not failed.
TIE = 1e-3
# EasyEdit's evaluation hyper-parameters that test_prediction_acc reads (MEMIT's max_length).
EASYEDIT_HPARAMS = SimpleNamespace(max_length=40, use_chat_template=False)


def bare(target):
    """ROME and EasyEdit keep targets without their leading space and add one themselves."""
    return target[1:] if target.startswith(" ") else target


def load(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        # revive's export carries no special-token roles; padding is masked, and this token
        # occurs in no prompt, which EasyEdit's count of padding tokens relies on.
        tok.pad_token = tok.eos_token or "<|endoftext|>"
    return model, tok


def reference_scores(model, tok, req, locality_before=None):
    """One request's scores as ROME's and EasyEdit's code compute them."""
    new, true = bare(req["target_new"]), bare(req["target_true"])
    rewrite = req["prompt"].replace("{}", req["subject"])
    paraphrases = req.get("paraphrase_prompts", [])
    neighbours = req.get("neighborhood_prompts", [])
    nll = test_batch_prediction(model, tok, [rewrite] + paraphrases + neighbours, new, true)
    out = {
        "nll_new": nll[0]["target_new"],
        "nll_true": nll[0]["target_true"],
        "decisions": [x["target_new"] < x["target_true"] for x in nll],
        "margins": [abs(x["target_new"] - x["target_true"]) for x in nll],
        "paraphrase": float(np.mean([x["target_new"] < x["target_true"] for x in nll[1 : 1 + len(paraphrases)]])) if paraphrases else None,
        "neighborhood": float(np.mean([x["target_true"] < x["target_new"] for x in nll[1 + len(paraphrases) :]])) if neighbours else None,
        "rewrite_acc": float(test_prediction_acc(model, tok, EASYEDIT_HPARAMS, rewrite, new, "cpu")[0]),
        "rephrase_acc": float(np.mean(test_prediction_acc(model, tok, EASYEDIT_HPARAMS, paraphrases, [new] * len(paraphrases), "cpu"))) if paraphrases else None,
    }
    if neighbours:
        tops = test_prediction_acc(model, tok, EASYEDIT_HPARAMS, neighbours, [true] * len(neighbours), "cpu", locality=True)
        out["locality_top"] = [list(t) for t in tops]
        if locality_before is not None:
            # EasyEdit's editor: the mean of np.equal(pre, post) per locality prompt.
            out["locality"] = float(np.mean([np.mean(np.equal(a, b)) for a, b in zip(locality_before, out["locality_top"])]))
    return out


def compare(side, case, ours, ref, problems, ties):
    def note(field, a, b):
        problems.append(f"{side} case {case}: {field} revive {a} vs reference {b}")

    for field in ["nll_new", "nll_true"]:
        key = "new" if field == "nll_new" else "true_"
        if abs(ours[key]["nll"] - ref[field]) > NLL_TOL:
            note(field, ours[key]["nll"], ref[field])
    # Efficacy, paraphrase and neighbourhood: per prompt the same decision unless a near-tie.
    near = [m < TIE for m in ref["margins"]]
    ties.extend(f"{side} case {case} prompt {i}" for i, t in enumerate(near) if t)
    if ours["efficacy"] != ref["decisions"][0] and not near[0]:
        note("efficacy", ours["efficacy"], ref["decisions"][0])
    for field in ["paraphrase", "neighborhood", "rewrite_acc", "rephrase_acc", "locality"]:
        a, b = ours.get(field), ref.get(field)
        if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-9):
            if not any(near):
                note(field, a, b)
            elif field not in ("paraphrase", "neighborhood"):
                note(field, a, b)
    if "locality_top" in ref and ours.get("locality_top") != ref["locality_top"]:
        note("locality_top", ours.get("locality_top"), ref["locality_top"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", required=True)
    ap.add_argument("--journal", required=True, help="revive journal DIR --json, of a session of one batch")
    ap.add_argument("--before", required=True, help="the unedited model, exported by revive export")
    ap.add_argument("--after", required=True, help="the edited model, exported with --delta")
    ap.add_argument("--json")
    a = ap.parse_args()
    edits = json.load(open(a.edits))
    journal = json.load(open(a.journal))
    if len(journal) != 1:
        sys.exit(f"{a.journal}: {len(journal)} batches; the models before and after exist for a session of one batch")
    header, after = journal[0]["header"], journal[0]["after"]
    lo, hi = header["requests"]
    reqs = edits[lo:hi]
    problems, ties, rows = [], [], []
    before_tops = {}
    for side, path, ours_all in [("before", a.before, header["before"]), ("after", a.after, after)]:
        model, tok = load(path)
        for i, (req, ours) in enumerate(zip(reqs, ours_all["requests"])):
            ref = reference_scores(model, tok, req, before_tops.get(i) if side == "after" else None)
            if side == "before" and "locality_top" in ref:
                before_tops[i] = ref["locality_top"]
            compare(side, req.get("case_id", lo + i), ours, ref, problems, ties)
            rows.append({"side": side, "case_id": req.get("case_id", lo + i), "revive": ours, "reference": ref})
    prompts = sum(len(r["reference"]["decisions"]) for r in rows)
    worst = max(abs(r["revive"][k]["nll"] - r["reference"][f]) for r in rows for k, f in [("new", "nll_new"), ("true_", "nll_true")])
    print(f"{len(reqs)} requests, before and after the batch: {prompts} prompt decisions, "
          f"largest |NLL difference| {worst:.2e}, {len(ties)} near-ties (< {TIE}), {len(problems)} differences")
    for p in problems:
        print("  " + p)
    if a.json:
        json.dump({"torch": torch.__version__, "rows": rows, "problems": problems, "ties": ties, "max_nll_diff": worst}, open(a.json, "w"), indent=1)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

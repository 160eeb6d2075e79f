"""Joins the unedited model's confidence in each retention fact with whether each arm still
answers it after 200 edits: margins.csv (one row a fact) next to this script, and a summary on
standard output. Usage: margins.py DIR (what margins.sh wrote)."""
import csv, json, math, os, statistics, sys

ARMS = ["memit-none", "memit-0.5", "alphaedit-none", "alphaedit-0.5"]
CONTROLS = {"P36": "capitals", "P246": "element symbols", "P461": "opposites"}

src = sys.argv[1]
base = json.load(open(os.path.join(src, "base.json")))
after = {a: json.load(open(os.path.join(src, a + ".json"))) for a in ARMS}
assert all(len(v) == len(base) for v in after.values())
group = lambda f: "controls" if f["relation_id"] in CONTROLS else "cities"

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "margins.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["prompt", "answer", "relation", "group", "p_unedited"] + [f"kept_{a}" for a in ARMS])
    for i, b in enumerate(base):
        w.writerow([b["prompt"], b["answer"], b["relation_id"], group(b), f"{math.exp(b['logp']):.4f}"] + [int(after[a][i]["correct"]) for a in ARMS])

for g in ["cities", "controls"]:
    idx = [i for i, b in enumerate(base) if group(b) == g and b["correct"]]
    lp = sorted(base[i]["logp"] for i in idx)
    cuts = [lp[int(len(lp) * q)] for q in (0.25, 0.5, 0.75)]
    quart = lambda i: sum(base[i]["logp"] >= c for c in cuts)
    sizes = [sum(quart(i) == q for i in idx) for q in range(4)]
    print(f"{g}: {len(idx)} facts the unedited model answers; quartile cuts of its p(answer): " + ", ".join(f"{math.exp(c):.3f}" for c in cuts))
    for a in ARMS:
        lost = [i for i in idx if not after[a][i]["correct"]]
        kept = [i for i in idx if after[a][i]["correct"]]
        med = lambda s: f"{math.exp(statistics.median(base[i]['logp'] for i in s)):.3f}" if s else "-"
        per_q = [sum(quart(i) == q for i in lost) for q in range(4)]
        line = f"  {a:15} kept {len(kept)}/{len(idx)}; median unedited p of the lost {med(lost)}, of the kept {med(kept)}; lost by quartile (least to most confident) {per_q} of {sizes}"
        if g == "controls":
            line += "; lost " + ", ".join(f"{n} {sum(base[i]['relation_id'] == r for i in lost)}/{sum(base[i]['relation_id'] == r for i in idx)}" for r, n in CONTROLS.items())
        print(line)
    lost_sets = [{i for i in idx if not after[a][i]["correct"]} for a in ARMS]
    print(f"  lost in some arm {len(set.union(*lost_sets))}, in all four {len(set.intersection(*lost_sets))}")

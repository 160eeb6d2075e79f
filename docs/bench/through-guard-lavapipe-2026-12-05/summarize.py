"""Summary of the runs in this directory (run.sh, run-more.sh): per ROME arm, P(new) right after
each edit, what the filter kept, the key's reach, efficacy, paraphrase and known facts after all
edits; per MEMIT bench arm, its scores. Prints a Markdown table.
    python3 summarize.py DIR"""
import gzip
import json
import statistics as st
import sys
from pathlib import Path

d = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
print("| run | arm | P(new) after each edit: median / mean / min | filter kept (median) | key reach (median) | efficacy at end | paraphrase at end | known facts kept |")
print("|---|---|---|---:|---:|---:|---:|---:|")
def load(f):
    return json.load(gzip.open(f) if f.suffix == ".gz" else open(f))


for f in sorted(list(d.glob("rome*.json")) + list(d.glob("rome*.json.gz"))):
    for a in load(f)["arms"]:
        recs = a["records"]
        p = [r["after"]["new"]["p"] for r in recs]
        kept = [r["filter"]["kept"] for r in recs if r.get("filter")]
        reach = [r["rome"]["key_reach"] for r in recs if r["rome"].get("key_reach") is not None]
        med = lambda xs: f"{st.median(xs):.3f}" if xs else "–"
        print(f"| {f.name.split('.')[0]} | {a['arm']} | {st.median(p):.3f} / {st.mean(p):.3f} / {min(p):.3f} | {med(kept)} | {med(reach)} "
              f"| {a['efficacy_at_end']}/{a['edits']} | {100 * a['paraphrase_mean_at_end']:.0f} % | {a['known_after']}/{a['known_before']} |")
print()
print("| run | arm | efficacy | paraphrase | neighbourhood | rewrite acc. | rephrase acc. | locality | REVIVE kept (mean over layers) | known facts kept |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for f in sorted(d.glob("memit*.json")):
    for a in load(f)["arms"]:
        pct = lambda k: f"{100 * a[k]:.1f}" if a.get(k) is not None else "–"
        print(f"| {f.stem} | {a['arm']} | {pct('efficacy')} | {pct('paraphrase')} | {pct('neighborhood')} | {pct('rewrite_acc')} | {pct('rephrase_acc')} "
              f"| {pct('locality')} | {pct('revive_kept')} | {a['known_correct_at_end']}/{a['known_total']} |")

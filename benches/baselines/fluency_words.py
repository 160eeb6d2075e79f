"""The reference for revive's fluency: for each text, nltk's `word_tokenize` and ROME's
`compute_n_gram_entropy` (copied unchanged in `reference/rome_counterfact.py`), written as the
JSON that `tests/fluency.rs` compares revive's port with (`src/eval/word_tokenize.rs`).

nltk's `word_tokenize` first splits sentences with its trained English Punkt model, a download
(punkt_tab) that no package registry carries; this script gives nltk an untrained
`PunktSentenceTokenizer` instead and says so in the file. With the trained model, learned
abbreviations ("Mr.", "U.S.") do not end a sentence.

    python3 benches/baselines/fluency_words.py TEXTS.json OUT.json

TEXTS.json: a list of strings, e.g. SmolLM2's generations (top-5 sampling, 100 tokens, as
ROME's `generate_fast`) after CounterFact generation prompts.
"""
import json
import sys

import nltk
import nltk.tokenize
from nltk.tokenize.punkt import PunktSentenceTokenizer

from reference.rome_counterfact import compute_n_gram_entropy

_UNTRAINED = PunktSentenceTokenizer()
nltk.tokenize.sent_tokenize = lambda text, language="english": _UNTRAINED.tokenize(text)


def main():
    texts = json.load(open(sys.argv[1]))
    rows = [{"text": t, "words": nltk.word_tokenize(t), "entropy": float(compute_n_gram_entropy(t))} for t in texts]
    json.dump({"nltk": nltk.__version__, "punkt": "untrained PunktSentenceTokenizer()", "texts": rows},
              open(sys.argv[2], "w"), indent=1, ensure_ascii=False)
    print(f"{len(rows)} texts, {sum(len(r['words']) for r in rows)} words -> {sys.argv[2]}")


if __name__ == "__main__":
    main()

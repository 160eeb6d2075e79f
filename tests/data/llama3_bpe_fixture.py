"""Builds tests/data/llama3-bpe.json: a small byte-level BPE trained with Llama 3's
pre-tokenizer (the split regex llama.cpp calls `llama-bpe`: contractions in any case, digits in
groups of up to three, punctuation runs with their line breaks) on the shipped held-out prose, as
GGUF stores one (tokens in id order, merges), with the tokenizers library's own encodings of
awkward texts and its pre-tokenizer's pieces of each (where the split differs but no merge crosses the
boundary, the ids alone would not show it): the reference the GGUF `llama-bpe` tokenizer is
tested against (tests/gguf.rs).
Needs `pip install tokenizers`; the fixture is committed, so tests do not.
    python3 tests/data/llama3_bpe_fixture.py
"""
import json, os
import tokenizers
from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
here = os.path.dirname(os.path.abspath(__file__))
prose = open(os.path.join(here, "../../assets/corpus/heldout/persuasion.txt"), encoding="utf-8").read()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
tok.decoder = decoders.ByteLevel()
special = ["<|begin_of_text|>", "<|end_of_text|>"]
trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=special, show_progress=False)
# Lines where Llama 3's split differs from GPT-2's (contractions in capitals, digit groups, a tab
# that begins a word, punctuation runs), often enough to be merged.
drill = ["I'M SURE THEY'RE HERE, WE'LL SEE; YOU'VE SAID IT'S DONE\n", "O'DELL O'SULLIVAN O'MALLEY D'ARCY\n", "In 1814, 1815 and 12345678 or 3.14159 and 2024\n",
         "\tindented line\r\n", "Well!!! -- said he... (quietly)\n"] * 40
tok.train_from_iterator(prose.splitlines(keepends=True) + drill, trainer)
# As Llama 3's tokenizer.json: `ignore_merges` (a pre-token that is a piece is taken whole), and
# a piece the merges do not build, which only that finds.
spec = json.loads(tok.to_str())
spec["model"]["ignore_merges"] = True
spec["model"]["vocab"]["Ġunmergeable"] = len(spec["model"]["vocab"])
tok = Tokenizer.from_str(json.dumps(spec))
vocab = tok.get_vocab()
tokens = [None] * len(vocab)
for piece, i in vocab.items():
    tokens[i] = piece
merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
texts = [
    "Sir Walter Elliot, of Kellynch Hall",
    "I'M SURE she'll say THEY'RE right; it's Anne's",
    "O'DELL AND O'SULLIVAN SAW D'ARCY'S MA'AM",
    "In 1814, 12345678 cats and 3.14159",
    "line one\n\n\nline two\r\n\ttabbed  \n  indented",
    "  two leading spaces and  two  inside",
    "trailing spaces   ",
    "Well!!! -- said he... (quietly)\n",
    "Ünïcödé, naïve café — “quotes” ✓ 漢字 🙂",
    "ab123cd x1y22z333",
    "an unmergeable word",
    "",
    " ",
    "x",
]
fixture = {
    "generator": "tests/data/llama3_bpe_fixture.py, tokenizers " + tokenizers.__version__,
    "tokens": tokens,
    "merges": merges,
    "special": [vocab[s] for s in special],
    "encodings": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
                   "split": [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(t)]} for t in texts],
}
with open(os.path.join(here, "llama3-bpe.json"), "w", encoding="utf-8") as f:
    json.dump(fixture, f, ensure_ascii=False, indent=0)
    f.write("\n")
print(len(tokens), "tokens;", len(merges), "merges;", sum(len(e["ids"]) for e in fixture["encodings"]), "ids")

"""Builds tests/data/spm-bpe.json: a small SentencePiece BPE model (byte fallback, Llama's
normalisation settings: no whitespace folding, identity normaliser, a dummy prefix) trained on
the shipped held-out prose, as GGUF stores a SentencePiece vocabulary (pieces, scores, token
types), with sentencepiece's own encodings of awkward texts: the reference the GGUF
SentencePiece tokenizer is tested against (tests/gguf.rs). Needs `pip install sentencepiece`;
the fixture is committed, so tests do not.
    python3 tests/data/spm_fixture.py
"""
import json, os, tempfile
import sentencepiece as spm

here = os.path.dirname(os.path.abspath(__file__))
prose = open(os.path.join(here, "../../assets/corpus/heldout/persuasion.txt"), encoding="utf-8").read()
with tempfile.TemporaryDirectory() as d:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(prose.splitlines()), model_prefix=os.path.join(d, "m"), model_type="bpe",
        vocab_size=700, byte_fallback=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        add_dummy_prefix=True, split_digits=True, character_coverage=1.0, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "m.model"))

def kind(i):
    # GGUF / llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte.
    if sp.is_unknown(i): return 2
    if sp.is_control(i): return 3
    if sp.is_byte(i): return 6
    return 1

texts = [
    "Sir Walter Elliot, of Kellynch Hall",
    "She had been forced into prudence in her youth.",
    "  two leading spaces and  two  inside",
    "trailing space ",
    "In 1814, 17 cats",
    "line one\nline two\n\ttabbed",
    "Ünïcödé, naïve café — “quotes” ✓ 漢字 🙂",
    "Anne",
    "",
    " ",
    "x",
    "qzxjv Kellynchqzx",
]
fixture = {
    "generator": "tests/data/spm_fixture.py, sentencepiece " + spm.__version__,
    "pieces": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
    "scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
    "types": [kind(i) for i in range(sp.get_piece_size())],
    "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(),
    "encodings": [{"text": t, "ids": sp.encode(t)} for t in texts],
}
with open(os.path.join(here, "spm-bpe.json"), "w", encoding="utf-8") as f:
    json.dump(fixture, f, ensure_ascii=False, indent=0)
    f.write("\n")
print(len(fixture["pieces"]), "pieces;", sum(len(e["ids"]) for e in fixture["encodings"]), "ids")

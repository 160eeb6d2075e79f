"""Builds tests/data/qwen2-gguf/: a tiny random Qwen2 as a GGUF file laid out as llama.cpp's
converter lays out a Qwen2 or Qwen2.5 (`general.architecture = qwen2`, `qwen2.*` keys, q/k/v
biases, Q/K rows kept in Hugging Face's order since llama.cpp rotates a qwen2's halves, a
byte-level BPE vocabulary with `tokenizer.ggml.pre = qwen2` padded to the model's vocabulary with
unused [PAD…] pieces), with transformers' logits of the model and the tokenizers library's
encodings of awkward texts: the independent reference the qwen2 GGUF reader, its tokenizer and
its forward are tested against (tests/gguf.rs).

The names of keys and tensors are gguf-py's own (its writer's `add_*` calls and its table from
Hugging Face names, `get_tensor_name_map(MODEL_ARCH.QWEN2)`), not this repository's. The
vocabulary is trained here with Qwen2's split (digits one at a time; contractions in any case)
and no normaliser, as llama.cpp tokenizes (Qwen2's tokenizer.json adds NFC, which changes none of
these texts).
Needs `pip install torch transformers tokenizers gguf`; the fixture is committed, so tests do not.
    python3 tests/data/qwen2_gguf_fixture.py
"""
import json, os
import numpy as np
import torch
import tokenizers, transformers, gguf
from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "qwen2-gguf")
os.makedirs(out, exist_ok=True)

# The vocabulary: bytes, merges learnt from the held-out prose and lines where Qwen2's split
# differs from GPT-2's and Llama 3's, then Qwen's special tokens after them, as in its vocabulary.
prose = open(os.path.join(here, "../../assets/corpus/heldout/persuasion.txt"), encoding="utf-8").read()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
tok.decoder = decoders.ByteLevel()
drill = ["I'M SURE THEY'RE HERE, WE'LL SEE; YOU'VE SAID IT'S DONE\n", "In 1814, 1815 and 12345678 or 3.14159 and 2024\n",
         "\tindented line\r\n", "Well!!! -- said he... (quietly)\n"] * 40
trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(prose.splitlines(keepends=True) + drill, trainer)
special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok.add_special_tokens(special)
vocab = tok.get_vocab(with_added_tokens=True)
n_pieces = len(vocab)
vocab_size = n_pieces + 5  # Qwen's configs leave room past the tokenizer's last id
tokens, types = [], []
for i in range(vocab_size):
    piece = next((p for p, j in vocab.items() if j == i), None)
    # As llama.cpp's converter pads a vocabulary to the model's size.
    tokens.append(piece if piece is not None else f"[PAD{i}]")
    types.append(gguf.TokenType.UNUSED if piece is None else gguf.TokenType.CONTROL if piece in special else gguf.TokenType.NORMAL)
merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]

texts = [
    "Sir Walter Elliot, of Kellynch Hall",
    "I'M SURE she'll say THEY'RE right; it's Anne's",
    "In 1814, 12345678 cats and 3.14159",
    "line one\n\n\nline two\r\n\ttabbed  \n  indented",
    "  two leading spaces and  two  inside",
    "trailing spaces   ",
    "Well!!! -- said he... (quietly)\n",
    "Ünïcödé, naïve café — “quotes” ✓ 漢字 🙂",
    "ab123cd x1y22z333",
    "<|im_start|>user\nWhere is Kellynch?<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
]

# The model: Qwen2.5's shape of things in miniature (tied embeddings, grouped-query attention,
# RoPE base 1,000,000), every weight random and the biases large enough to matter.
config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                     bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=None)
torch.manual_seed(13)
model = Qwen2ForCausalLM(config).float().eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.normal_(0.0, 0.5 if name.endswith("bias") else 0.3)

w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), "qwen2")
w.add_name("qwen2-tiny-fixture")
w.add_context_length(config.max_position_embeddings)
w.add_embedding_length(config.hidden_size)
w.add_block_count(config.num_hidden_layers)
w.add_feed_forward_length(config.intermediate_size)
w.add_head_count(config.num_attention_heads)
w.add_head_count_kv(config.num_key_value_heads)
w.add_rope_freq_base(1000000.0)
w.add_layer_norm_rms_eps(config.rms_norm_eps)
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("qwen2")
w.add_token_list(tokens)
w.add_token_types(types)
w.add_token_merges(merges)
w.add_eos_token_id(vocab["<|im_end|>"])
w.add_pad_token_id(vocab["<|endoftext|>"])
w.add_bos_token_id(vocab["<|endoftext|>"])
w.add_add_bos_token(False)
names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
for hf_name, t in model.state_dict().items():
    if hf_name == "lm_head.weight":  # tied: the file has no output.weight
        continue
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    assert name is not None, hf_name
    w.add_tensor(name, t.numpy().astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

ids = tok.encode("<|im_start|>Sir Walter Elliot, of Kellynch Hall, in 1814's Somersetshire", add_special_tokens=False).ids
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
fixture = {
    "generator": f"tests/data/qwen2_gguf_fixture.py, tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, gguf-py",
    "encodings": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
                   "split": [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(t)]} for t in texts],
    "ids": ids,
    "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()],
}
with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
    json.dump(fixture, f, ensure_ascii=False)
    f.write("\n")
print(vocab_size, "tokens;", len(merges), "merges;", len(ids), "positions;", os.path.getsize(os.path.join(out, "model.gguf")), "bytes")

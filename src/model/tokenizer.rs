//! Tokenizer: a Hugging Face `tokenizers::Tokenizer`, built either from GGUF metadata or from a
//! `tokenizer.json`.
//!
//! From GGUF: byte-level BPE (`tokenizer.ggml.model = gpt2`), whose pre-tokenizer is chosen by
//! `tokenizer.ggml.pre` (SmolLM2's `smollm` splits every digit on its own before the GPT-2
//! byte-level split, as its tokenizer.json does; no space is prefixed; Llama 3's `llama-bpe`
//! splits by its own regex, [`LLAMA3_SPLIT`], Qwen2's `qwen2` by [`QWEN2_SPLIT`]), and SentencePiece BPE
//! (`llama`: Llama 2, TinyLlama, Mistral) from its pieces and scores, with byte fallback and
//! the dummy prefix before a sequence's text (not before a piece's).
//!
//! A start token (BOS) goes before every sequence where the model asks for one: GGUF's
//! `tokenizer.ggml.add_bos_token` (as llama.cpp reads it, but that a `true` without
//! `tokenizer.ggml.bos_token_id` is refused rather than given llama.cpp's fallback id), the
//! tokens a tokenizer.json post-processor puts before the text, or, for the tokenizer classes
//! whose post-processor transformers rebuilds from it (Llama, Code Llama, Gemma),
//! tokenizer_config.json's `add_bos_token`. SmolLM2 has none. [`Tok::encode`] is for pieces
//! (answers, targets, continuations), [`Tok::encode_prompt`] for the beginning of a sequence.

use super::gguf::{GgufMeta, Value};
use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

pub struct Tok {
    inner: Tokenizer,
    /// Kept: the tokenizers crate counts its vocabulary by building the whole map (49,152
    /// strings for SmolLM2), and decoding checks every id against it.
    vocab_size: usize,
    eos: Option<u32>,
    /// Named in errors.
    source: String,
    /// The tokenizer_config.json read with a Hugging Face tokenizer: a save keeps its other
    /// settings (chat template, …).
    hf_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// The model's embedding rows, when fewer than the tokens: an id past them is refused at
    /// encoding, naming the tokenizer, instead of failing inside a forward pass.
    rows: Option<usize>,
    /// Put before every sequence (a BOS token); empty when the model wants none.
    start: Vec<u32>,
    /// SentencePiece's dummy prefix: the tokenizer for the text that begins a sequence, which
    /// puts "▁" before it and before each stretch of text after a control token (so a first
    /// word is "▁word" as everywhere else), as llama.cpp and transformers' Llama tokenizer do;
    /// `inner` then has none, so a piece gets none (" Paris" is "▁Paris", not "▁▁Paris").
    prompt_inner: Option<Tokenizer>,
}

fn err(file: &str, detail: impl Into<String>) -> Error {
    Error::Model { file: file.into(), detail: detail.into() }
}

impl Tok {
    /// Builds the tokenizer stored in a GGUF file's metadata; `file` names it in errors.
    pub fn from_gguf(meta: &GgufMeta, file: &str) -> Result<Self> {
        let model = meta.str("tokenizer.ggml.model", file)?;
        if model != "gpt2" && model != "llama" {
            return Err(err(file, format!("tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE) are supported")));
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            meta.array(key, file)?
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_str().ok_or_else(|| err(file, format!("{key}[{i}] is not a string"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        // One integer a token: a short or mistyped list would quietly split control tokens
        // (<|im_end|>) into bytes, and generation would no longer stop at them.
        let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
            None => vec![],
            Some(_) => {
                let key = "tokenizer.ggml.token_type";
                let types = meta.array(key, file)?;
                if types.len() != tokens.len() {
                    return Err(err(file, format!("{key} has {} entries for {} tokens", types.len(), tokens.len())));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_u64().and_then(|t| i64::try_from(t).ok()).ok_or_else(|| err(file, format!("{key}[{i}] is {v:?}, not a token type"))))
                    .collect::<Result<_>>()?
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            match meta.get(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(err(file, format!("{key} is {v:?}, not a boolean"))),
            }
        };
        // llama.cpp's defaults: a start token for SentencePiece and for Llama 3's byte-level
        // BPE, none for the other byte-level BPEs.
        let spm = model == "llama";
        let llama3 = !spm && is_llama3_pre(meta, file)?;
        let add_bos = flag("tokenizer.ggml.add_bos_token", spm || llama3)?;
        let space_prefix = spm && flag("tokenizer.ggml.add_space_prefix", true)?;

        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if vocab.insert(t.to_string(), id as u32).is_some() {
                return Err(err(file, format!("tokenizer.ggml.tokens holds '{t}' twice")));
            }
        }
        let mut inner = if spm { sentencepiece_bpe(meta, file, &tokens, &types, vocab)? } else { byte_level_bpe(meta, file, vocab)? };
        let mut prompt_inner = space_prefix.then(|| with_dummy_prefix(&inner)).transpose().map_err(|e| err(file, e))?;

        // Control tokens (<|im_start|>, ...) must match whole in the text rather than be split
        // into bytes; they already have ids in the vocabulary, so adding them reuses those.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
            .map(|(s, &t)| AddedToken::from(s.to_string(), t == TOKEN_CONTROL))
            .collect();
        inner.add_tokens(&added);
        if let Some(p) = &mut prompt_inner {
            p.add_tokens(&added);
        }

        let token_id = |key: &str| -> Result<Option<u32>> {
            match meta.get(key) {
                None => Ok(None),
                Some(v) => Ok(Some(
                    v.as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .filter(|&v| (v as usize) < tokens.len())
                        .ok_or_else(|| err(file, format!("{key} is {v:?}, not a token id")))?,
                )),
            }
        };
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let start = match (add_bos, token_id("tokenizer.ggml.bos_token_id")?) {
            (false, _) => vec![],
            (true, Some(bos)) => vec![bos],
            (true, None) => return Err(err(file, "a start token is asked for (tokenizer.ggml.add_bos_token, or a SentencePiece vocabulary's default), but there is no tokenizer.ggml.bos_token_id")),
        };
        // The chat template, which a save writes into tokenizer_config.json (transformers'
        // apply_chat_template reads it there) and a new GGUF back.
        let hf_config = match meta.get("tokenizer.chat_template") {
            None => None,
            Some(Value::Str(t)) => Some(serde_json::Map::from_iter([("chat_template".to_string(), serde_json::Value::String(t.clone()))])),
            Some(v) => return Err(err(file, format!("tokenizer.chat_template is {v:?}, not a string"))),
        };
        Ok(Tok { vocab_size: inner.get_vocab_size(true), inner, eos, source: file.into(), hf_config, rows: None, start, prompt_inner })
    }

    /// Loads a Hugging Face `tokenizer.json`. The end-of-sequence token is the `eos_token` of a
    /// `tokenizer_config.json` beside it, else `config_eos` (config.json's `eos_token_id`).
    pub fn from_tokenizer_json(path: &Path, config_eos: Option<u32>) -> Result<Self> {
        let file = path.display().to_string();
        // tokenizers 0.22 panics (an `expect` in its decoder deserialiser) on some malformed
        // files instead of returning an error; the fuzz harness found it.
        let inner = std::panic::catch_unwind(|| Tokenizer::from_file(path))
            .map_err(|_| err(&file, "cannot load tokenizer: its 'decoder' (or another part) is malformed"))?
            .map_err(|e| err(&file, format!("cannot load tokenizer: {e}")))?;
        let (mut inner, mut prompt_inner) = split_dummy_prefix(inner).map_err(|e| err(&file, e))?;
        // A training setup's truncation or padding would cut or pad every text this program
        // encodes (and pad ids would read as start tokens); a save writes none.
        for t in std::iter::once(&mut inner).chain(prompt_inner.as_mut()) {
            t.with_truncation(None).map_err(|e| err(&file, format!("truncation: {e}")))?;
            t.with_padding(None);
        }
        let vocab_size = inner.get_vocab_size(true);
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let cfg_file = cfg_path.display().to_string();
        let mut hf_config = read_tokenizer_config(&cfg_path)?;
        // Newer checkpoints keep the chat template beside the config, in chat_template.jinja.
        let jinja = path.with_file_name("chat_template.jinja");
        if hf_config.as_ref().is_none_or(|c| !c.contains_key("chat_template")) && jinja.is_file() {
            let template = std::fs::read_to_string(&jinja).map_err(|e| err(&jinja.display().to_string(), format!("cannot read: {e}")))?;
            hf_config.get_or_insert_default().insert("chat_template".into(), serde_json::Value::String(template));
        }
        let (eos, start) = match &hf_config {
            Some(cfg) => (token_of_config(cfg, "eos_token", &cfg_file, &inner)?, start_of_tokenizer_config(cfg, &cfg_file, &inner)?),
            None => (None, None),
        };
        let eos = eos.or(config_eos.filter(|&id| (id as usize) < vocab_size));
        let start = match start {
            Some(start) => start,
            None => start_of_post_processor(&inner, &file)?,
        };
        Ok(Tok { vocab_size, inner, eos, source: file, hf_config, rows: None, start, prompt_inner })
    }

    /// Writes tokenizer.json with a post-processor that puts the start tokens first where the
    /// one it was read with does not (a GGUF's `add_bos_token`, a tokenizer_config.json's
    /// override): tools that read only tokenizer.json then agree.
    pub fn save_tokenizer_json(&self, path: &Path) -> Result<()> {
        let file = path.display().to_string();
        let mut inner = self.prompt_inner.as_ref().unwrap_or(&self.inner).clone();
        if start_of_post_processor(&inner, &self.source)? != self.start {
            let template = start_template(&inner, &self.start).map_err(|e| err(&file, format!("the start tokens' template: {e}")))?;
            inner.with_post_processor(Some(template));
        }
        inner.save(path, true).map_err(|e| err(&file, format!("cannot write the tokenizer: {e}")))
    }

    /// Writes the end-of-sequence and start tokens where [`Tok::from_tokenizer_json`] (and
    /// transformers) look for them: without the first a saved model's generations run past the
    /// end of a turn; without the second a model read from a GGUF file that asks for a start
    /// token would lose it, and one that asks for none would get `<s>` from transformers'
    /// Llama tokenizer, whose default is a start token. The tokenizer_config.json the tokenizer
    /// was read with is kept, but for these keys.
    pub fn save_tokenizer_config(&self, path: &Path) -> Result<()> {
        let mut cfg = self.hf_config.clone().unwrap_or_default();
        match self.eos.and_then(|id| self.inner.id_to_token(id)) {
            Some(eos) => cfg.insert("eos_token".into(), serde_json::Value::String(eos)),
            None => cfg.remove("eos_token"),
        };
        match self.start.as_slice() {
            [] => {
                cfg.insert("add_bos_token".into(), false.into());
            }
            [bos] => {
                let bos = self.inner.id_to_token(*bos).ok_or_else(|| err(&self.source, format!("the start token {bos} has no text")))?;
                cfg.insert("add_bos_token".into(), true.into());
                cfg.insert("bos_token".into(), bos.into());
            }
            // Only a tokenizer.json post-processor gives more than one; the saved tokenizer.json
            // holds them, and the config leaves it to it.
            _ => {
                cfg.remove("add_bos_token");
            }
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg)).expect("JSON of JSON values");
        crate::store::write_durable(path, text.as_bytes())
    }

    /// Refuses, at encoding, ids past the model's `rows` embedding rows (a tokenizer with tokens
    /// added after the model was trained, and the embedding not resized); a start token past
    /// them is refused now.
    pub fn limit_to_rows(&mut self, rows: usize) -> Result<()> {
        if let Some(&bad) = self.start.iter().find(|&&id| id as usize >= rows) {
            let piece = self.inner.id_to_token(bad).unwrap_or_default();
            return Err(err(&self.source, format!("the start token {bad} ({piece:?}) is past the model's {rows} embedding rows")));
        }
        self.rows = (rows < self.vocab_size).then_some(rows);
        Ok(())
    }

    /// A word-level tokenizer over `words` (id = position; anything else is id 0, which
    /// should be an unknown-word marker): whitespace splits words. For tiny test models, which
    /// have no tokenizer of their own, so that text-level APIs (requests, templates) run on them.
    pub fn word_level(words: &[&str]) -> Result<Self> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
        let vocab = words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
        let model = WordLevel::builder().vocab(vocab).unk_token(words.first().copied().unwrap_or("[UNK]").to_string()).build().map_err(|e| err("word-level tokenizer", e.to_string()))?;
        let mut inner = Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(WhitespaceSplit));
        Ok(Tok { vocab_size: inner.get_vocab_size(true), inner, eos: None, source: "word-level tokenizer".into(), hf_config: None, rows: None, start: vec![], prompt_inner: None })
    }

    /// The same tokenizer putting `start` before every sequence (a model trained with a BOS
    /// token); tests give tiny models one this way.
    pub fn with_start(mut self, start: Vec<u32>) -> Result<Self> {
        if let Some(&bad) = start.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(err(&self.source, format!("start token {bad} is outside the vocabulary of {}", self.vocab_size)));
        }
        self.start = start;
        Ok(self)
    }

    /// The tokens put before every sequence (a BOS token); empty when the model wants none.
    pub fn start(&self) -> &[u32] {
        &self.start
    }

    /// Token ids of `text` as the beginning of a sequence: the start tokens, then
    /// [`Tok::encode`]'s.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.begin(&self.encode_with(self.prompt_inner.as_ref().unwrap_or(&self.inner), text)?))
    }

    /// `ids` as the beginning of a sequence: the start tokens before them.
    pub fn begin(&self, ids: &[u32]) -> Vec<u32> {
        self.start.iter().chain(ids).copied().collect()
    }

    /// Token ids of `text` as a piece of a sequence (an answer, a target, a continuation): no
    /// start or other special tokens are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(&self.inner, text)
    }

    fn encode_with(&self, inner: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let enc = inner.encode(text, false).map_err(|e| err(&self.source, format!("cannot encode {text:?}: {e}")))?;
        if let (Some(rows), Some(&id)) = (self.rows, enc.get_ids().iter().max()) {
            if id as usize >= rows {
                let piece = self.inner.id_to_token(id).unwrap_or_default();
                return Err(err(&self.source, format!("{text:?} has token {id} ({piece:?}), past the model's {rows} embedding rows: the tokenizer has tokens the model was not trained with")));
            }
        }
        Ok(enc.get_ids().to_vec())
    }

    /// The text of a sequence's `ids` (start tokens left out), so that
    /// decode_prompt(encode_prompt(s)) == s: SentencePiece's dummy prefix is taken off.
    pub fn decode_prompt(&self, ids: &[u32]) -> Result<String> {
        let ids = ids.strip_prefix(self.start.as_slice()).unwrap_or(ids);
        self.decode_with(self.prompt_inner.as_ref().unwrap_or(&self.inner), ids)
    }

    /// The text of `ids`, special tokens included, so that decode(encode(s)) == s.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(&self.inner, ids)
    }

    fn decode_with(&self, inner: &Tokenizer, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(err(&self.source, format!("token id {bad} is outside the vocabulary of {}", self.vocab_size())));
        }
        inner.decode(ids, false).map_err(|e| err(&self.source, format!("cannot decode {ids:?}: {e}")))
    }

    /// The vocabulary entry of `id` in its byte-level form (" Paris" is "ĠParis"); use
    /// [`Tok::decode`] for text.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The underlying Hugging Face tokenizer, e.g. to save it as tokenizer.json.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// This tokenizer as GGUF metadata (`tokenizer.ggml.*`) for a model of `rows` embedding
    /// rows, as llama.cpp's converter writes a byte-level BPE: the pieces in id order (ids the
    /// tokenizer does not use as unused `[PAD{id}]` pieces, and such pieces unused), their
    /// types (added tokens control where special or [`looks_special`], else user-defined), the
    /// merges in rank order, the split's `tokenizer.ggml.pre` name, the start and end tokens,
    /// and the chat template. Refused, saying why: a split or normaliser llama.cpp would not
    /// apply as this tokenizer does, a SentencePiece vocabulary (its scores are in
    /// tokenizer.model, not tokenizer.json), pieces past the model's rows.
    pub fn gguf_metadata(&self, rows: usize) -> Result<Vec<(String, Value)>> {
        let refuse = |why: String| err(&self.source, format!("cannot be written as GGUF tokenizer metadata: {why}"));
        if self.prompt_inner.is_some() {
            return Err(refuse("a SentencePiece vocabulary, whose scores are in its tokenizer.model (llama.cpp's convert_hf_to_gguf.py reads them)".into()));
        }
        let spec: serde_json::Value = serde_json::from_str(&self.inner.to_string(false).map_err(|e| err(&self.source, e.to_string()))?).map_err(|e| err(&self.source, e.to_string()))?;
        let model = &spec["model"];
        if model["type"] != "BPE" || model["byte_fallback"] == true {
            return Err(refuse(format!("a {} model; only byte-level BPE is written", model["type"])));
        }
        // Qwen2's tokenizer.json normalises to NFC, which llama.cpp leaves out.
        if !(spec["normalizer"].is_null() || spec["normalizer"]["type"] == "NFC") {
            return Err(refuse(format!("its normaliser {} (llama.cpp applies none)", spec["normalizer"])));
        }
        let pre = gguf_pre_of(&spec["pre_tokenizer"]).ok_or_else(|| refuse(format!("its pre-tokenizer {} is none of the splits llama.cpp names (gpt-2, smollm, llama-bpe, qwen2)", spec["pre_tokenizer"])))?;
        // llama.cpp takes a pre-token that is a piece whole for Llama 3 only.
        if (model["ignore_merges"] == true) != LLAMA3_PRES.contains(&pre) {
            return Err(refuse(format!("ignore_merges is {} with the split '{pre}'", model["ignore_merges"])));
        }
        let vocab = self.inner.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if n > rows {
            return Err(refuse(format!("it has pieces up to id {}, past the model's {rows} embedding rows", n - 1)));
        }
        let mut pieces = vec![None; rows];
        for (piece, &id) in &vocab {
            pieces[id as usize] = Some(piece.as_str());
        }
        let special: std::collections::HashMap<u32, bool> = self.inner.get_added_tokens_decoder().iter().map(|(&id, t)| (id, t.special)).collect();
        const NORMAL: i32 = 1;
        const UNUSED: i32 = 5;
        let (tokens, types): (Vec<Value>, Vec<Value>) = pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| match piece {
                None => (Value::Str(format!("[PAD{id}]")), Value::I32(UNUSED)),
                Some(p) => {
                    let ty = match special.get(&(id as u32)) {
                        Some(true) => TOKEN_CONTROL as i32,
                        Some(false) if looks_special(p) => TOKEN_CONTROL as i32,
                        Some(false) => TOKEN_USER_DEFINED as i32,
                        // The converter's padding, read from a GGUF and saved: unused again.
                        None if *p == format!("[PAD{id}]") => UNUSED,
                        None => NORMAL,
                    };
                    (Value::Str(p.to_string()), Value::I32(ty))
                }
            })
            .unzip();
        let merges = model["merges"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| match m {
                        serde_json::Value::String(s) => Some(Value::Str(s.clone())),
                        serde_json::Value::Array(pair) => match pair.as_slice() {
                            [serde_json::Value::String(a), serde_json::Value::String(b)] => Some(Value::Str(format!("{a} {b}"))),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or(Some(vec![]))
            .ok_or_else(|| refuse("its merges are neither \"a b\" strings nor pairs".into()))?;
        // llama.cpp checks an array's element type even when it is empty, which an empty
        // array here cannot state.
        if merges.is_empty() {
            return Err(refuse("it has no merges".into()));
        }
        let mut kv = vec![
            ("tokenizer.ggml.model".to_string(), Value::Str("gpt2".into())),
            ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        ];
        match self.start.as_slice() {
            [] => kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false))),
            [bos] => {
                kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(*bos)));
                kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
            }
            more => return Err(refuse(format!("it puts {} tokens before a sequence; GGUF says one start token or none", more.len()))),
        }
        if let Some(eos) = self.eos {
            kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
        }
        if let Some(template) = self.hf_config.as_ref().and_then(|c| c.get("chat_template")).and_then(|t| t.as_str()) {
            kv.push(("tokenizer.chat_template".into(), Value::Str(template.into())));
        }
        Ok(kv)
    }
}

/// Added tokens a model marks as not special that llama.cpp's converter writes as control
/// tokens all the same (`does_token_look_special`: Qwen2.5's `<|fim_prefix|>`, DeepSeek's
/// `<｜…｜>`, Gemma's `<unused…>`), so that llama.cpp neither matches them in text nor prints them.
fn looks_special(piece: &str) -> bool {
    matches!(piece, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (piece.starts_with("<|") && piece.ends_with("|>"))
        || (piece.starts_with("<｜") && piece.ends_with("｜>"))
        || (piece.starts_with("<unused") && piece.ends_with('>'))
}

/// The `tokenizer.ggml.pre` name of a tokenizer.json pre-tokenizer, where llama.cpp has one
/// that splits the same way: GPT-2's byte-level regex, SmolLM2's digits apart before it, Llama
/// 3's and Qwen2's split regexes before a byte-level mapping.
fn gguf_pre_of(pre: &serde_json::Value) -> Option<&'static str> {
    let byte_level = |p: &serde_json::Value, regex: bool| p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"] == regex;
    if byte_level(pre, true) {
        // llama.cpp's name for GPT-2's split (it refuses "gpt2").
        return Some("gpt-2");
    }
    match pre["pretokenizers"].as_array()?.as_slice() {
        [digits, bl] if digits["type"] == "Digits" && digits["individual_digits"] == true && byte_level(bl, true) => Some("smollm"),
        [split, bl] if split["type"] == "Split" && split["behavior"] == "Isolated" && split["invert"] == false && byte_level(bl, false) => {
            match split["pattern"]["Regex"].as_str()? {
                LLAMA3_SPLIT => Some(LLAMA3_PRES[0]),
                QWEN2_SPLIT => Some(QWEN2_PRES[0]),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A `tokenizer_config.json` as a JSON object; None when there is none.
fn read_tokenizer_config(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(&file, format!("cannot read: {e}"))),
    };
    match serde_json::from_str(&text).map_err(|e| err(&file, format!("not valid JSON: {e}")))? {
        serde_json::Value::Object(m) => Ok(Some(m)),
        other => Err(err(&file, format!("expected a JSON object, found {other}"))),
    }
}

/// Llama 3's pre-tokenizer split (its tokenizer.json's, llama.cpp's `llama-bpe`): contractions in
/// any case, a letter run with one leading non-letter, digits in groups of up to three,
/// punctuation runs with the line breaks after them, line breaks, spaces.
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's (Qwen2.5's) split, llama.cpp's `qwen2`: Llama 3's with every digit on its own.
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The names llama.cpp gives Llama 3's pre-tokenizer.
const LLAMA3_PRES: [&str; 3] = ["llama-bpe", "llama3", "llama-v3"];
/// The names llama.cpp splits and decodes as Qwen2 (DeepSeek-R1's distillations into Qwen,
/// KORMo, F2LLM v2; those that share the split but clean spaces when decoding are left out).
const QWEN2_PRES: [&str; 4] = ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"];

/// `tokenizer.ggml.pre`, where the file names one.
fn gguf_pre<'m>(meta: &'m GgufMeta, file: &str) -> Result<Option<&'m str>> {
    meta.get("tokenizer.ggml.pre").map(|_| meta.str("tokenizer.ggml.pre", file)).transpose()
}

/// Whether `tokenizer.ggml.pre` names Llama 3's pre-tokenizer.
fn is_llama3_pre(meta: &GgufMeta, file: &str) -> Result<bool> {
    Ok(gguf_pre(meta, file)?.is_some_and(|p| LLAMA3_PRES.contains(&p)))
}

/// GPT-2's byte-level BPE from its merges, with the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(meta: &GgufMeta, file: &str, vocab: Vocab) -> Result<Tokenizer> {
    let merges = meta
        .array("tokenizer.ggml.merges", file)?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.as_str()
                .ok_or_else(|| err(file, format!("tokenizer.ggml.merges[{i}] is not a string")))?
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(file, format!("tokenizer.ggml.merges[{i}] is not two tokens separated by a space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre_name = gguf_pre(meta, file)?;
    let llama3 = pre_name.is_some_and(|p| LLAMA3_PRES.contains(&p));
    // Llama 3's vocabulary holds pieces its merges do not build: a pre-token that is a piece
    // is taken whole, as its tokenizer.json and llama.cpp do.
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build()
        .map_err(|e| err(file, format!("tokenizer.ggml.merges: {e}")))?;
    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match pre_name {
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level.into(),
        Some(p) if llama3 || QWEN2_PRES.contains(&p) => {
            let pattern = if llama3 { LLAMA3_SPLIT } else { QWEN2_SPLIT };
            let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false).map_err(|e| err(file, format!("the split pattern of '{p}': {e}")))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        Some(p) => return Err(err(file, format!("tokenizer.ggml.pre '{p}' is not supported (smollm, gpt2, llama-bpe, qwen2, default)"))),
    };
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// Bytes of the longest piece merges are made for: SentencePiece's own limit is 16 characters.
const MAX_MERGED_PIECE: usize = 256;

/// A SentencePiece BPE vocabulary (Llama 2, TinyLlama, Mistral) from its pieces and scores, as
/// transformers converts one: a merge for every split of a piece into two pieces, ranked by
/// the merged piece's score (ties by the halves' ids), bytes for what no piece holds, spaces
/// as "▁". The dummy prefix is [`Tok::encode_prompt`]'s, not the normaliser's, so that a
/// piece gets none.
fn sentencepiece_bpe(meta: &GgufMeta, file: &str, tokens: &[&str], types: &[i64], vocab: Vocab) -> Result<Tokenizer> {
    use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as Decoders};
    use tokenizers::normalizers::replace::Replace;
    let key = "tokenizer.ggml.scores";
    let scores = meta.array(key, file)?;
    if scores.len() != tokens.len() {
        return Err(err(file, format!("{key} has {} entries for {} tokens", scores.len(), tokens.len())));
    }
    let scores: Vec<f64> = scores.iter().enumerate().map(|(i, v)| v.as_f64().filter(|s| s.is_finite()).ok_or_else(|| err(file, format!("{key}[{i}] is {v:?}, not a score")))).collect::<Result<_>>()?;
    // Normal pieces only (type 1, or no types): control, unknown and byte pieces merge nothing.
    let normal = |id: usize| types.get(id).is_none_or(|&t| t == 1);
    let mut merges: Vec<(f64, String, String)> = vec![];
    // (A piece longer than any real one, from a damaged file, would cost its length squared.)
    for (id, piece) in tokens.iter().enumerate().filter(|&(id, p)| normal(id) && p.len() <= MAX_MERGED_PIECE) {
        let mut local: Vec<(u32, u32, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*vocab.get(l)?, *vocab.get(r)?, l, r))
            })
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(_, _, l, r)| (scores[id], l.to_string(), r.to_string())));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let unk = types.iter().position(|&t| t == 2).map(|i| tokens[i].to_string());
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges.into_iter().map(|(_, l, r)| (l, r)).collect()).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let bpe = bpe.build().map_err(|e| err(file, format!("SentencePiece vocabulary: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_normalizer(Some(Replace::new(" ", "▁").map_err(|e| err(file, e.to_string()))?));
    let spaces = Replace::new("▁", " ").map_err(|e| err(file, e.to_string()))?;
    inner.with_decoder(Some(Decoders::new(vec![spaces.into(), ByteFallback::new().into(), Fuse::new().into()])));
    Ok(inner)
}

/// `inner` with SentencePiece's dummy prefix, as transformers' Llama tokenizer.json has it: "▁"
/// put before each stretch of text (the normaliser runs on each stretch between added tokens),
/// and taken off the front again when a whole sequence is decoded.
fn with_dummy_prefix(inner: &Tokenizer) -> std::result::Result<Tokenizer, String> {
    use tokenizers::normalizers::{prepend::Prepend, Sequence as Normalizers, NormalizerWrapper};
    let mut json: serde_json::Value = serde_json::to_value(inner).map_err(|e| e.to_string())?;
    let replace = serde_json::to_value(inner.get_normalizer()).map_err(|e| e.to_string())?;
    let normalizer = Normalizers::new(vec![NormalizerWrapper::Prepend(Prepend::new("▁".into())), serde_json::from_value(replace).map_err(|e| e.to_string())?]);
    json["normalizer"] = serde_json::to_value(NormalizerWrapper::Sequence(normalizer)).map_err(|e| e.to_string())?;
    let mut decoders = json["decoder"]["decoders"].as_array().cloned().unwrap_or_default();
    decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    json["decoder"]["decoders"] = decoders.into();
    serde_json::from_value(json).map_err(|e| e.to_string())
}

/// A tokenizer.json in transformers' Llama layout (a normaliser Sequence that begins with
/// Prepend("▁"), a decoder Sequence that ends with Strip(" ", 1, 0)) parted into the tokenizer
/// for pieces (neither) and the one for the text that begins a sequence (as read); any other
/// tokenizer is both.
fn split_dummy_prefix(inner: Tokenizer) -> std::result::Result<(Tokenizer, Option<Tokenizer>), String> {
    let mut json: serde_json::Value = serde_json::to_value(&inner).map_err(|e| e.to_string())?;
    let prepends = |n: &serde_json::Value| n["type"] == "Prepend" && n["prepend"] == "▁";
    let norms = json["normalizer"]["normalizers"].as_array().cloned().unwrap_or_default();
    if json["normalizer"]["type"] != "Sequence" || !norms.first().is_some_and(prepends) {
        return Ok((inner, None));
    }
    json["normalizer"]["normalizers"] = norms[1..].to_vec().into();
    let mut decoders = json["decoder"]["decoders"].as_array().cloned().unwrap_or_default();
    if decoders.last().is_some_and(|d| d["type"] == "Strip" && d["content"] == " " && d["start"] == 1 && d["stop"] == 0) {
        decoders.pop();
        json["decoder"]["decoders"] = decoders.into();
    }
    let pieces: Tokenizer = serde_json::from_value(json).map_err(|e| format!("its normaliser without the dummy prefix: {e}"))?;
    Ok((pieces, Some(inner)))
}

/// The tokenizer classes whose post-processor transformers rebuilds from `add_bos_token`; the
/// others (GPT-2's, the generic fast tokenizer, Qwen's, …) leave it to tokenizer.json's.
const CLASSES_READING_ADD_BOS: [&str; 3] = ["LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer"];

/// The start tokens tokenizer_config.json's `add_bos_token` asks for; None when it does not say
/// or its tokenizer class does not read it. Without a `tokenizer_class` the key is taken as
/// meant (this program's saves write it, and no class).
fn start_of_tokenizer_config(cfg: &serde_json::Map<String, serde_json::Value>, file: &str, inner: &Tokenizer) -> Result<Option<Vec<u32>>> {
    if let Some(class) = cfg.get("tokenizer_class").and_then(|c| c.as_str()) {
        if !CLASSES_READING_ADD_BOS.contains(&class.trim_end_matches("Fast")) {
            return Ok(None);
        }
    }
    match cfg.get("add_bos_token") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(false)) => Ok(Some(vec![])),
        Some(serde_json::Value::Bool(true)) => match token_of_config(cfg, "bos_token", file, inner)? {
            Some(bos) => Ok(Some(vec![bos])),
            None => Err(err(file, "add_bos_token is true, but there is no bos_token")),
        },
        Some(other) => Err(err(file, format!("add_bos_token is {other}, not a boolean"))),
    }
}

/// The tokens tokenizer.json's post-processor puts before a sequence (a template such as
/// Llama 3's `<|begin_of_text|> $A`); those it puts after (an end token some templates add) are
/// left out: this program scores and continues sequences, it never ends one.
fn start_of_post_processor(inner: &Tokenizer, file: &str) -> Result<Vec<u32>> {
    use tokenizers::{Encoding, Token};
    // A marker no vocabulary holds, to see where the template puts the text. (`inner` has no
    // truncation or padding, which post_process would apply too.)
    const MARK: u32 = u32::MAX;
    let text = Encoding::from_tokens(vec![Token::new(MARK, String::new(), (0, 0))], 0);
    // As at loading: a malformed part may panic inside the tokenizers crate.
    let done = std::panic::catch_unwind(|| inner.post_process(text, None, true))
        .map_err(|_| err(file, "post_processor: malformed"))?
        .map_err(|e| err(file, format!("post_processor: {e}")))?;
    let at = done.get_ids().iter().position(|&id| id == MARK).ok_or_else(|| err(file, "post_processor drops the text it is given"))?;
    Ok(done.get_ids()[..at].to_vec())
}

/// A post-processor that puts `start` before a text (and before the first of a pair).
fn start_template(inner: &Tokenizer, start: &[u32]) -> std::result::Result<tokenizers::processors::template::TemplateProcessing, String> {
    use tokenizers::processors::template::TemplateProcessing;
    let names: Vec<String> = start.iter().map(|&id| inner.id_to_token(id).ok_or_else(|| format!("token {id} has no text"))).collect::<std::result::Result<_, _>>()?;
    let pieces = |tail: &[&str]| names.iter().map(String::as_str).chain(tail.iter().copied()).map(String::from).collect::<Vec<String>>();
    TemplateProcessing::builder()
        .try_single(pieces(&["$A"]))?
        .try_pair(pieces(&["$A", "$B:1"]))?
        .special_tokens(names.iter().zip(start).map(|(n, &id)| (n.clone(), id)).collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

/// The token a tokenizer_config.json names under `key` (a string or an added token's
/// `content`), as an id of `inner`; None when it names none.
fn token_of_config(cfg: &serde_json::Map<String, serde_json::Value>, key: &str, file: &str, inner: &Tokenizer) -> Result<Option<u32>> {
    let name = match cfg.get(key) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(other) => other["content"].as_str().ok_or_else(|| err(file, format!("{key} is {other}, neither a token nor an added token's record")))?,
    };
    inner.token_to_id(name).map(Some).ok_or_else(|| err(file, format!("{key} '{name}' is not a token of tokenizer.json")))
}

#[cfg(test)]
mod tests {
    use super::looks_special;

    /// The added tokens llama.cpp's converter writes as control tokens though not marked
    /// special, and ones it does not.
    #[test]
    fn tokens_that_look_special_are_control_tokens() {
        for p in ["<|fim_prefix|>", "<|file_sep|>", "<｜begin▁of▁sentence｜>", "<unused12>", "<pad>", "<mask>", "<2mass>", "[@BOS@]"] {
            assert!(looks_special(p), "{p}");
        }
        for p in ["<|fim", "fim|>", "<unused", "<pad", "hello", "<|>", "<s>"] {
            assert_eq!(looks_special(p), p == "<|>", "{p}");
        }
    }
}

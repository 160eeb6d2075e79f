//! C0 on disk: one safetensors file per (model, layer, token count, token stream) under
//! `cache_dir()/stats/`, its header holding the key and a checksum of the data. A file that is
//! unreadable, truncated, flipped, of the wrong shape or written for another key is reported
//! (log::warn, naming the file) and rebuilt, never trusted.
//!
//! The model hash covers what the keys of the layer depend on: the config, the embeddings and
//! every weight of layers 0..=layer except that layer's own down-projection (the keys are its
//! input). Not the model file: an edited model in memory has the same file but other keys in
//! the layers above an edit, and one file format or another (GGUF, safetensors) of the same
//! weights should share statistics. Leaving out the layer's own down-projection is deliberate:
//! ROME and MEMIT rewrite exactly that matrix, and its C0 does not change when they do.

use super::covariance::SecondMoment;
use crate::error::{Error, Result};
use crate::model::forward::GpuModel;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bumped when the file layout or the meaning of a field changes.
const FORMAT: &str = "revive-c0-v1";
const TENSOR: &str = "c0";

/// What a cached C0 must have been computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub model_hash: String,
    pub layer: usize,
    /// The token budget asked for.
    pub tokens: usize,
    /// SHA-256 of the token ids the budget covers (text, tokenizer, sequence length, shuffle).
    pub corpus_hash: String,
}

impl CacheKey {
    pub fn file_name(&self) -> String {
        let short = |h: &str| h.chars().take(16).collect::<String>();
        format!("c0-{}-layer{}-{}tok-{}.safetensors", short(&self.model_hash), self.layer, self.tokens, short(&self.corpus_hash))
    }
}

/// What happened to the cache on a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A valid file was there.
    Reused,
    /// No file was there; computed and written.
    Computed,
    /// A file was there but was not valid (the reason); recomputed and overwritten.
    Rebuilt(String),
}

pub fn stats_dir() -> PathBuf {
    crate::model::fetch::cache_dir().join("stats")
}

fn err(file: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: file.display().to_string(), detail: detail.into() }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// See the module comment for what it covers and why.
pub fn model_hash(model: &GpuModel, layer: usize) -> Result<String> {
    let c = &model.config;
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(c).map_err(|e| Error::Edit(format!("config to JSON: {e}")))?);
    let own_down = [format!("layers.{layer}.w_down"), format!("layers.{layer}.b_down")];
    let mut names: Vec<String> = c
        .tensor_names()
        .into_iter()
        .filter(|n| match n.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
            Some((i, _)) => i.parse::<usize>().is_ok_and(|i| i <= layer) && !own_down.contains(n),
            None => n == "embed" || n == "pos_embed",
        })
        .collect();
    names.sort();
    for name in names {
        let t = model.tensor(&name)?;
        h.update(name.as_bytes());
        h.update(format!("{:?}", t.shape()).as_bytes());
        // Host byte order, without a copy: the same bytes as little-endian on every platform
        // revive runs on, and a big-endian host would only miss the cache, never misread it.
        h.update(bytemuck::cast_slice::<f32, u8>(&model.gpu().download(t)?));
    }
    Ok(format!("{:x}", h.finalize()))
}

/// SHA-256 of the first `max_tokens` ids of the sequences, with the sequence boundaries.
pub fn tokens_hash(seqs: &[Vec<u32>], max_tokens: usize) -> String {
    let mut h = Sha256::new();
    let mut left = max_tokens;
    for s in seqs {
        let s = &s[..s.len().min(left)];
        if s.is_empty() {
            break;
        }
        left -= s.len();
        h.update((s.len() as u64).to_le_bytes());
        s.iter().for_each(|id| h.update(id.to_le_bytes()));
    }
    format!("{:x}", h.finalize())
}

/// Writes `m` with the key in the header, through a temporary file so that a crash or a
/// concurrent reader never sees half a file.
pub fn save(path: &Path, key: &CacheKey, m: &SecondMoment) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    }
    let bytes = f32_bytes(&m.c0);
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("model_hash", key.model_hash.clone()),
        ("layer", key.layer.to_string()),
        ("tokens", key.tokens.to_string()),
        ("tokens_seen", m.tokens.to_string()),
        ("corpus_hash", key.corpus_hash.clone()),
        ("data_sha256", sha256_hex(&bytes)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let view = TensorView::new(Dtype::F32, vec![m.dim, m.dim], &bytes).map_err(|e| err(path, format!("cannot build the tensor: {e}")))?;
    let tmp = path.with_extension(format!("partial.{}", std::process::id()));
    safetensors::serialize_to_file([(TENSOR, view)], Some(meta), &tmp).map_err(|e| err(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, format!("cannot move into place: {e}")))
}

/// Reads a cached C0 and checks everything against the key and the expected width; the error
/// says what did not match.
pub fn load(path: &Path, key: &CacheKey, dim: usize) -> Result<SecondMoment> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| err(path, format!("unreadable header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |name: &str| meta.get(name).map(String::as_str).ok_or_else(|| err(path, format!("header field '{name}' is missing")));
    let expect = |name: &str, want: &str| -> Result<()> {
        let got = field(name)?;
        if got != want {
            return Err(err(path, format!("header field '{name}' is '{got}', expected '{want}'")));
        }
        Ok(())
    };
    expect("format", FORMAT)?;
    expect("model_hash", &key.model_hash)?;
    expect("layer", &key.layer.to_string())?;
    expect("tokens", &key.tokens.to_string())?;
    expect("corpus_hash", &key.corpus_hash)?;
    let seen: usize = field("tokens_seen")?.parse().map_err(|_| err(path, "header field 'tokens_seen' is not a count"))?;
    if seen == 0 || seen > key.tokens {
        return Err(err(path, format!("header field 'tokens_seen' is {seen}, outside 1..={}", key.tokens)));
    }
    let t = st.tensor(TENSOR).map_err(|e| err(path, format!("tensor '{TENSOR}': {e}")))?;
    if t.dtype() != Dtype::F32 || t.shape() != [dim, dim] {
        return Err(err(path, format!("tensor '{TENSOR}' is {:?} {:?}, expected F32 [{dim}, {dim}]", t.dtype(), t.shape())));
    }
    expect("data_sha256", &sha256_hex(t.data()))?;
    let c0: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(i) = c0.iter().position(|v| !v.is_finite()) {
        return Err(err(path, format!("tensor '{TENSOR}' holds a non-finite value at element {i}")));
    }
    Ok(SecondMoment { layer: key.layer, tokens: seen, dim, c0 })
}

/// The cached C0 for `key` in `dir`, or `compute`'s, written for next time.
pub fn load_or_compute(dir: &Path, key: &CacheKey, dim: usize, compute: impl FnOnce() -> Result<SecondMoment>) -> Result<(SecondMoment, Outcome)> {
    let path = dir.join(key.file_name());
    let outcome = if path.exists() {
        match load(&path, key, dim) {
            Ok(m) => return Ok((m, Outcome::Reused)),
            Err(e) => {
                log::warn!("{}: cached covariance rejected ({e}); rebuilding it", path.display());
                Outcome::Rebuilt(e.to_string())
            }
        }
    } else {
        Outcome::Computed
    };
    let m = compute()?;
    if m.dim != dim || m.layer != key.layer {
        return Err(Error::Edit(format!("covariance computed for layer {} width {}, the cache key is layer {} width {dim}", m.layer, m.dim, key.layer)));
    }
    save(&path, key, &m)?;
    Ok((m, outcome))
}

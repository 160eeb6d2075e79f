//! C0 on disk: one safetensors file per (model, layer, token count, token stream) under
//! `cache_dir()/stats/`, its header holding the key and a checksum of the data. A file that is
//! unreadable, truncated, flipped, of the wrong shape or written for another key is reported
//! (log::warn, naming the file) and rebuilt, never trusted (crate::store).
//!
//! The model hash covers what the keys of the layer depend on: the config, the embeddings and
//! every weight of layers 0..=layer except that layer's own down-projection (the keys are its
//! input). Not the model file: an edited model in memory has the same file but other keys in
//! the layers above an edit, and one file format or another (GGUF, safetensors) of the same
//! weights should share statistics. Leaving out the layer's own down-projection is deliberate:
//! ROME and MEMIT rewrite exactly that matrix, and its C0 does not change when they do.

use super::moment::SecondMoment;
use crate::error::{Error, Result};
use crate::model::forward::GpuModel;
use crate::model::names::{down_bias_name, down_name};
use crate::store;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bumped when the file layout or the meaning of a field changes.
const FORMAT: &str = "revive-c0-v2";
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

pub use crate::store::Outcome;

pub fn stats_dir() -> PathBuf {
    crate::model::fetch::cache_dir().join("stats")
}

/// See the module comment for what it covers and why.
pub fn model_hash(model: &GpuModel, layer: usize) -> Result<String> {
    Ok(model_hashes(model, &[layer])?.remove(0))
}

/// `model_hash` of each of `layers`, each tensor read back and hashed once where the layers'
/// hashes share it as a prefix: the embeddings and the lower layers come first in every
/// layer's (sorted) list, and they are most of the bytes (MEMIT's five layers hashed one by one
/// read the 113 MB embedding five times).
pub fn model_hashes(model: &GpuModel, layers: &[usize]) -> Result<Vec<String>> {
    let c = &model.config;
    let config = serde_json::to_vec(c).map_err(|e| Error::Edit(format!("config to JSON: {e}")))?;
    let all = c.tensor_names();
    let names_of = |layer: usize| -> Vec<String> {
        let own_down = [down_name(layer), down_bias_name(layer)];
        let mut names: Vec<String> = all
            .iter()
            .filter(|n| match n.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
                Some((i, _)) => i.parse::<usize>().is_ok_and(|i| i <= layer) && !own_down.contains(n),
                None => n.as_str() == "embed" || n.as_str() == "pos_embed",
            })
            .cloned()
            .collect();
        names.sort();
        names
    };
    // The hasher's state after each name of the last list hashed: a list that starts with the
    // same names goes on from there.
    let mut last: Vec<String> = vec![];
    let mut states: Vec<Sha256> = vec![];
    let mut out = vec![String::new(); layers.len()];
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| layers[i]);
    for i in order {
        let names = names_of(layers[i]);
        let shared = names.iter().zip(&last).take_while(|(a, b)| a == b).count();
        states.truncate(shared);
        let mut h = states.last().cloned().unwrap_or_else(|| {
            let mut h = Sha256::new();
            h.update(&config);
            h
        });
        for name in &names[shared..] {
            let t = model.tensor(name)?;
            h.update(name.as_bytes());
            h.update(format!("{:?}", t.shape()).as_bytes());
            // Host byte order, without a copy: the same bytes as little-endian on every platform
            // revive runs on, and a big-endian host would only miss the cache, never misread it.
            h.update(bytemuck::cast_slice::<f32, u8>(&model.gpu().download(t)?));
            states.push(h.clone());
        }
        out[i] = format!("{:x}", h.finalize());
        last = names;
    }
    Ok(out)
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

fn fields(key: &CacheKey) -> Vec<(&'static str, String)> {
    vec![
        ("format", FORMAT.to_string()),
        ("model_hash", key.model_hash.clone()),
        ("layer", key.layer.to_string()),
        ("tokens", key.tokens.to_string()),
        ("corpus_hash", key.corpus_hash.clone()),
    ]
}

/// Writes `m` with the key in the header (crate::store: atomic, checksummed).
pub fn save(path: &Path, key: &CacheKey, m: &SecondMoment) -> Result<()> {
    let mut f = fields(key);
    f.push(("tokens_seen", m.tokens.to_string()));
    store::save(path, &f, &[(TENSOR, vec![m.dim, m.dim], &m.c0)])
}

/// Reads a cached C0 and checks everything against the key and the expected width; the error
/// says what did not match.
pub fn load(path: &Path, key: &CacheKey, dim: usize) -> Result<SecondMoment> {
    let st = store::load_cache(path, &fields(key))?;
    let seen: usize = st.number("tokens_seen")?;
    if seen == 0 || seen > key.tokens {
        return Err(Error::Model { file: path.display().to_string(), detail: format!("header field 'tokens_seen' is {seen}, outside 1..={}", key.tokens) });
    }
    Ok(SecondMoment { layer: key.layer, tokens: seen, dim, c0: st.tensor(TENSOR, &[dim, dim])? })
}

/// The cached C0 for `key` in `dir`, or `compute`'s, written for next time.
pub fn load_or_compute(dir: &Path, key: &CacheKey, dim: usize, compute: impl FnOnce() -> Result<SecondMoment>) -> Result<(SecondMoment, Outcome)> {
    let path = dir.join(key.file_name());
    store::load_or_compute(
        &path,
        "covariance",
        |p| load(p, key, dim),
        || {
            let m = compute()?;
            if m.dim != dim || m.layer != key.layer {
                return Err(Error::Edit(format!("covariance computed for layer {} width {}, the cache key is layer {} width {dim}", m.layer, m.dim, key.layer)));
            }
            Ok(m)
        },
        |p, m| save(p, key, m),
    )
}

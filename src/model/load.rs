//! One entry point for `-m MODEL`: weights and tokenizer from the cached SmolLM2, a .gguf file
//! or a Hugging Face directory; and saving an (edited) model with its tokenizer.

use super::fetch::{resolve, ModelSource};
use super::safetensors::{load_dir, save_dir, SaveDtype};
use super::{gguf, Tok, Weights};
use crate::error::Result;
use std::path::Path;

pub struct LoadedModel {
    pub weights: Weights,
    pub tok: Tok,
    /// The file or directory it came from.
    pub source: String,
    /// The GGUF file it came from, if it did: an export to GGUF writes over it.
    pub gguf: Option<std::path::PathBuf>,
}

pub fn load(spec: &str) -> Result<LoadedModel> {
    match resolve(spec)? {
        ModelSource::Gguf(path) => {
            let (weights, meta) = gguf::load_gguf(&path)?;
            let source = path.display().to_string();
            let mut tok = Tok::from_gguf(&meta, &source)?;
            check_vocabularies(&weights, &mut tok, &source)?;
            Ok(LoadedModel { weights, tok, source, gguf: Some(path) })
        }
        ModelSource::Safetensors(dir) => {
            let weights = load_dir(&dir)?;
            let mut tok = Tok::from_tokenizer_json(&dir.join("tokenizer.json"), weights.config.eos_token_id)?;
            check_vocabularies(&weights, &mut tok, &dir.join("tokenizer.json").display().to_string())?;
            Ok(LoadedModel { weights, tok, source: dir.display().to_string(), gguf: None })
        }
    }
}

/// A tokenizer with tokens the embedding has no row for (tokens added to a fine-tune's
/// tokenizer, the embedding not resized): it loads, as in transformers, and a text that encodes
/// to such a token is refused naming the tokenizer, instead of failing inside a forward pass.
fn check_vocabularies(weights: &Weights, tok: &mut Tok, source: &str) -> Result<()> {
    let rows = weights.config.vocab_size;
    if tok.vocab_size() > rows {
        log::warn!("{source}: the tokenizer has {} tokens but the model's embedding only {rows} rows; texts that use the others are refused", tok.vocab_size());
    }
    tok.limit_to_rows(rows)
}

/// Writes model.safetensors, config.json, tokenizer.json and tokenizer_config.json into `dir`.
pub fn save(weights: &Weights, tok: &Tok, dir: &Path, dtype: SaveDtype) -> Result<()> {
    save_dir(weights, dir, dtype, None)?;
    tok.save_tokenizer_json(&dir.join("tokenizer.json"))?;
    tok.save_tokenizer_config(&dir.join("tokenizer_config.json"))
}

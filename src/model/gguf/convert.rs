//! A GGUF written whole from a model that came from no GGUF (a Hugging Face checkpoint, edited
//! or not), laid out as llama.cpp's converter (`convert_hf_to_gguf.py`) lays one out, for
//! llama.cpp, Ollama or LM Studio. [`super::export::export_over`] keeps a GGUF base's own bytes;
//! this writes every tensor and the metadata from the model's config and tokenizer.
//!
//! Written: the Llama block as `llama` (Q/K rows permuted so that RoPE rotates adjacent pairs,
//! as the converter does), with q/k/v biases as `qwen2` (rows as Hugging Face stores them:
//! llama.cpp rotates a qwen2's halves); RoPE scaling as keys (linear) or as per-frequency
//! divisors (`rope_freqs.weight`, Llama 3.1's rule); a byte-level BPE tokenizer
//! ([`Tok::gguf_metadata`]). Matrices in the type asked for (f32, f16, q8_0, …; a row that is not
//! a whole number of its blocks stays f32), norms and biases in f32, as the converter keeps
//! them. Refused with the reason: GPT-2 (another GGUF architecture), a SentencePiece vocabulary,
//! non-finite values, a value the type cannot hold.

use super::quant::{dequantize, quantize, GgmlType};
use super::write::GgufWriter;
use super::{gguf_name, Value, ROPE_FREQS};
use crate::error::{Error, Result};
use crate::model::safetensors::permute_rope_rows;
use crate::model::{Arch, Config, RopeScaling, RopeStyle, Tok, Weights};
use std::path::Path;

/// What [`write_new`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub architecture: &'static str,
    /// GGUF names of the tensors written in f32 although another type was asked for (rows
    /// that are not a whole number of its blocks).
    pub kept_f32: Vec<String>,
    pub tensors: usize,
    pub bytes: usize,
}

fn refuse(out: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: out.display().to_string(), detail: detail.into() }
}

/// llama.cpp's `general.file_type` for a file whose matrices are `ty`.
fn file_type(ty: GgmlType) -> Option<u32> {
    match ty {
        GgmlType::F32 => Some(0),
        GgmlType::F16 => Some(1),
        GgmlType::Q8_0 => Some(7),
        GgmlType::BF16 => Some(32),
        _ => None,
    }
}

/// The architecture and its keys for the model `c` (`llama`, or `qwen2` where it has q/k/v
/// biases) as the converter writes them, RoPE scaling included: linear as keys, any other rule
/// as the divisors of its frequencies (given divisors as they are, so that tests can write
/// damaged ones). Returns the architecture.
pub fn model_keys(g: &mut GgufWriter, c: &Config) -> &'static str {
    let arch = if c.qkv_bias { "qwen2" } else { "llama" };
    let k = |key: &str| format!("{arch}.{key}");
    g.kv("general.architecture", Value::Str(arch.into()))
        .kv(&k("context_length"), Value::U32(c.max_seq_len as u32))
        .kv(&k("embedding_length"), Value::U32(c.hidden as u32))
        .kv(&k("block_count"), Value::U32(c.n_layers as u32))
        .kv(&k("feed_forward_length"), Value::U32(c.ffn_hidden as u32))
        .kv(&k("attention.head_count"), Value::U32(c.n_heads as u32))
        .kv(&k("attention.head_count_kv"), Value::U32(c.n_kv_heads as u32))
        .kv(&k("rope.freq_base"), Value::F32(c.rope_theta))
        .kv(&k("attention.layer_norm_rms_epsilon"), Value::F32(c.norm_eps));
    if c.head_dim * c.n_heads != c.hidden {
        g.kv(&k("attention.key_length"), Value::U32(c.head_dim as u32)).kv(&k("attention.value_length"), Value::U32(c.head_dim as u32));
    }
    match &c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            g.kv(&k("rope.scaling.type"), Value::Str("linear".into())).kv(&k("rope.scaling.factor"), Value::F32(*factor as f32));
        }
        other => {
            let divisors = match other {
                RopeScaling::Divisors(d) => d.clone(),
                _ => c.rope_divisors(),
            };
            g.tensor(ROPE_FREQS, &[divisors.len()], GgmlType::F32, divisors.iter().flat_map(|d| d.to_le_bytes()).collect());
        }
    }
    arch
}

/// What [`write_new`] refuses, checked before any work whose result it would write (an edit
/// saved with `--save gguf`), so that nothing is computed only to be refused at the end;
/// returns the tokenizer's metadata.
pub fn check_new(c: &Config, tok: &Tok, ty: GgmlType, out: &Path) -> Result<Vec<(String, Value)>> {
    if c.arch != Arch::Llama {
        return Err(refuse(out, "a GPT-2 model is another GGUF architecture, which this program does not write: save it as a Hugging Face directory (--save full) and convert that with llama.cpp's convert_hf_to_gguf.py"));
    }
    if file_type(ty).is_none() {
        return Err(refuse(out, format!("{ty:?}: a new GGUF is written in f32, f16, bf16 or q8_0 (llama.cpp's llama-quantize makes the K-quant mixes from it)")));
    }
    if c.qkv_bias && !matches!(c.rope_scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        return Err(refuse(out, format!("a qwen2 with RoPE scaling {:?}: llama.cpp reads per-frequency divisors for a llama only", c.rope_scaling)));
    }
    tok.gguf_metadata(c.vocab_size)
}

/// Writes `w` with its tokenizer `tok` to `out` as one GGUF named `name`, its matrices in
/// `ty`; `out` is written whole or not at all.
pub fn write_new(w: &Weights, tok: &Tok, ty: GgmlType, name: &str, out: &Path) -> Result<Written> {
    let c = &w.config;
    let tokenizer = check_new(c, tok, ty, out)?;
    let ftype = file_type(ty).expect("checked");
    // A model with q/k/v biases is a qwen2 to llama.cpp, whose rows it rotates by halves.
    let style = if c.qkv_bias { RopeStyle::Half } else { RopeStyle::Adjacent };
    let mut g = GgufWriter::default();
    let arch = model_keys(&mut g, c);
    g.kv("general.name", Value::Str(name.into()))
        .kv("general.file_type", Value::U32(ftype))
        .kv("general.quantization_version", Value::U32(2))
        .kv(&format!("{arch}.vocab_size"), Value::U32(c.vocab_size as u32))
        .kv(&format!("{arch}.rope.dimension_count"), Value::U32(c.head_dim as u32));
    for (key, v) in tokenizer {
        g.kv(&key, v);
    }
    // The config's start token where the tokenizer puts none before a sequence (the file then
    // says add_bos_token false), as the converter writes it.
    if let Some(bos) = c.bos_token_id.filter(|_| !g.kv.iter().any(|(k, _)| k == "tokenizer.ggml.bos_token_id")) {
        g.kv("tokenizer.ggml.bos_token_id", Value::U32(bos));
    }

    let mut kept_f32 = vec![];
    for (canonical, t) in &w.tensors {
        let gguf = gguf_name(canonical).ok_or_else(|| refuse(out, format!("{canonical} has no GGUF name in a {arch} model")))?;
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(refuse(out, format!("{canonical} has a non-finite value at {i} ({}): not written", t.data[i])));
        }
        let field = canonical.rsplit('.').next().unwrap_or_default();
        // Rows (and a bias's entries) as the file's RoPE pairs them.
        let data = if matches!(field, "wq" | "wk" | "bq" | "bk") && c.rope_style != style {
            permute_rope_rows(t, c.head_dim, style == RopeStyle::Half).data
        } else {
            t.data.clone()
        };
        let dims: Vec<usize> = t.shape.iter().rev().copied().collect();
        let (block, _) = ty.block();
        let this_ty = if dims.len() < 2 {
            GgmlType::F32
        } else if !dims[0].is_multiple_of(block) {
            kept_f32.push(gguf.clone());
            GgmlType::F32
        } else {
            ty
        };
        let encoded = quantize(this_ty, &data);
        // f16 overflows past 65504: a finite value that does not fit is refused, not written
        // as infinity.
        if this_ty != GgmlType::F32 {
            if let Some(i) = dequantize(this_ty, &encoded).iter().position(|v| !v.is_finite()) {
                return Err(refuse(out, format!("{canonical} does not fit {this_ty:?}: its value {} at {i} does not survive; choose f32", data[i])));
            }
        }
        g.tensor(&gguf, &dims, this_ty, encoded);
    }
    let bytes = crate::store::write_durable_with(out, |f| g.write_to(f, 3))?;
    Ok(Written { architecture: arch, kept_f32, tensors: g.tensors.len(), bytes: bytes as usize })
}

//! An edited model written back as a GGUF over the file it came from, for llama.cpp, Ollama or
//! LM Studio.
//!
//! Every tensor an edit left alone is copied from the base file byte for byte, in its own type:
//! re-encoding would add quantisation noise to weights nobody changed. An edited tensor (its
//! values differ from the base's decoding in any bit) is written in the type asked for: f32 by
//! default, which keeps the edit exactly; f16 or q8_0 to stay small; `keep` re-encodes it in the
//! base tensor's own type — with this program's simple encoders (`quant.rs`), so that what a
//! low-bit file does to an edit can be measured. The metadata (tokenizer, architecture,
//! alignment) is the base's, plus `revive.edited_tensors` naming what was rewritten.

use super::quant::{quantize, GgmlType};
use super::write::GgufWriter;
use super::{canonical_name, model_err, GgufFile, Value, ROPE_FREQS};
use crate::error::Result;
use crate::model::Weights;
use std::path::Path;

/// The type an edited tensor is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditedType {
    /// The base tensor's own type, re-encoded.
    Keep,
    As(GgmlType),
}

impl std::str::FromStr for EditedType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("keep") {
            return Ok(EditedType::Keep);
        }
        let writable = || GgmlType::ALL.into_iter().filter(|t| t.encodable());
        writable()
            .find(|t| format!("{t:?}").eq_ignore_ascii_case(s))
            .map(EditedType::As)
            .ok_or_else(|| format!("'{s}' is not a tensor type this program writes: keep, or one of {}", writable().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>().join(", ")))
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// GGUF names of the tensors rewritten, with the type each was written in.
    pub rewritten: Vec<(String, GgmlType)>,
    /// Tensors copied from the base unchanged.
    pub copied: usize,
    pub bytes: usize,
}

/// Writes `weights` (the model loaded from `base`, edited or not) to `out` as a GGUF: the
/// base's tensors where their values are unchanged, the rest in `edited`. Refuses weights that
/// are not the base's model (another tensor set or shape) and non-finite values, naming the
/// tensor; `out` is written whole or not at all.
pub fn export_over(base: &Path, weights: &Weights, edited: EditedType, out: &Path) -> Result<Exported> {
    let g = GgufFile::read(base)?;
    let file = g.file.as_str();
    let mut canonical = std::collections::HashSet::new();
    // The base's metadata entries copied as stored: their order, and types the parsed values
    // do not keep (an empty array's element type), stay the base's.
    let mut w = GgufWriter { alignment: Some(g.meta.alignment), ..Default::default() };
    w.raw_kv = g.raw_kv().filter(|(k, _)| *k != EDITED_KEY).map(|(_, bytes)| bytes.to_vec()).collect();
    let (mut rewritten, mut copied) = (vec![], 0);
    for t in &g.meta.tensors {
        // RoPE's frequency divisors are a setting no edit changes.
        if t.name == ROPE_FREQS {
            w.tensor(&t.name, &t.dims, t.ty, g.tensor_bytes(t).to_vec());
            copied += 1;
            continue;
        }
        let name = canonical_name(&t.name).ok_or_else(|| model_err(file, format!("tensor '{}' has no canonical name in a llama or qwen2 model", t.name)))?;
        let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
        let ours = weights.tensors.get(&name).ok_or_else(|| model_err(file, format!("tensor '{}' ({name}) is not in the model being exported: is this its base?", t.name)))?;
        if ours.shape != shape {
            return Err(model_err(file, format!("tensor '{}' ({name}) is {shape:?} here but {:?} in the model being exported: is this its base?", t.name, ours.shape)));
        }
        canonical.insert(name.clone());
        let base_values = g.dequantize(t);
        let unchanged = base_values.iter().zip(&ours.data).all(|(a, b)| a.to_bits() == b.to_bits());
        if unchanged {
            w.tensor(&t.name, &t.dims, t.ty, g.tensor_bytes(t).to_vec());
            copied += 1;
            continue;
        }
        if let Some(i) = ours.data.iter().position(|v| !v.is_finite()) {
            return Err(model_err(file, format!("the edited {name} has a non-finite value at {i} ({}): not exported", ours.data[i])));
        }
        let ty = match edited {
            EditedType::Keep => t.ty,
            EditedType::As(ty) => ty,
        };
        if !ty.encodable() {
            return Err(model_err(file, format!("the edited {name} is {ty:?} in the base, a lattice type this program reads but does not write (llama.cpp chooses its grid points with an importance matrix): choose --edited-type f32, f16 or q8_0")));
        }
        let (block, _) = ty.block();
        if t.dims[0] % block != 0 {
            return Err(model_err(file, format!("the edited {name} has rows of {} values, not a whole number of {ty:?} blocks of {block}: choose f32 or f16", t.dims[0])));
        }
        // NVFP4's scales top out: a larger value would be clamped, finite and wrong.
        if ty == GgmlType::NVFP4 {
            if let Some(i) = ours.data.iter().position(|v| v.abs() > super::iquant::NVFP4_LARGEST) {
                return Err(model_err(file, format!("the edited {name} does not fit NVFP4: its value {} at {i} is past the largest it holds, {}; choose f32", ours.data[i], super::iquant::NVFP4_LARGEST)));
            }
        }
        let encoded = quantize(ty, &ours.data);
        // A finite value may still not fit the type (f16 overflows past 65504).
        let back = super::quant::dequantize(ty, &encoded);
        if let Some(i) = back.iter().position(|v| !v.is_finite()) {
            return Err(model_err(file, format!("the edited {name} does not fit {ty:?}: its value {} at {i} becomes {}; choose f32", ours.data[i], back[i])));
        }
        // A coarse type (ternary, 2-bit) can round a small edit back to the base's codes.
        // (By value: a sign flipped with its scale turns a zero into −0.)
        if back.iter().zip(&base_values).all(|(a, b)| a == b) {
            return Err(model_err(file, format!("the edit of {name} does not survive {ty:?}: re-encoded, it decodes to the base's values exactly; choose a finer --edited-type (f32, f16 or q8_0)")));
        }
        w.tensor(&t.name, &t.dims, ty, encoded);
        rewritten.push((t.name.clone(), ty));
    }
    if let Some(extra) = weights.tensors.keys().find(|n| !canonical.contains(*n)) {
        return Err(model_err(file, format!("the model being exported has {extra}, which this base does not: is this its base?")));
    }
    if !rewritten.is_empty() {
        w.kv(EDITED_KEY, Value::Array(rewritten.iter().map(|(n, _)| Value::Str(n.clone())).collect()));
    }
    let bytes = crate::store::write_durable_with(out, |f| w.write_to(f, 3))?;
    Ok(Exported { rewritten, copied, bytes: bytes as usize })
}

/// The metadata key listing the tensors an export rewrote.
pub const EDITED_KEY: &str = "revive.edited_tensors";

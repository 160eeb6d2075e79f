//! GGUF reader (versions 2 and 3) and a loader for llama- and qwen2-architecture models.
//!
//! Weights are dequantised to f32 on the host at load time: knowledge edits rewrite matrices in
//! f32 anyway, the model is small (135M parameters, about 540 MB as f32), and the GPU kernels then
//! need only one element type.
//!
//! The file is untrusted input: every length, count and offset read from it is checked against the
//! bytes that remain, so a truncated or bit-flipped file gives an `Error::Model` naming the file
//! and the field, never a panic, a huge allocation or a hang.
//!
//! Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 key/value count,
//! the key/values, the tensor infos (name, u32 n_dims, u64 dims with ne[0] the fastest, u32 type,
//! u64 offset), padding to `general.alignment` (default 32), then the tensor data; each tensor's
//! offset is relative to the start of the data section.

use super::config::{Arch, Config, RopeScaling, RopeStyle};
use super::weights::{HostTensor, Weights};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub mod convert;
pub mod export;
mod iq_grids;
mod iquant;
pub mod quant;
pub mod write;

pub use quant::{dequantize, GgmlType};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays may nest; a bound keeps a corrupt file from recursing until the stack overflows.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value, one variant per GGUF value type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type number of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type holding a non-negative value (writers differ in which width they use).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne[0] (the fastest-varying, the input width of a matrix) first.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file (data section start + the stored offset).
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Everything in a GGUF file except the tensor data: what the tokenizer and reports need.
#[derive(Debug, Clone, Default)]
pub struct GgufMeta {
    pub version: u32,
    pub alignment: u64,
    pub kv: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufMeta {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A required non-negative integer that fits in usize.
    pub fn usize(&self, key: &str, file: &str) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| model_err(file, format!("metadata key '{key}' is missing")))?;
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| model_err(file, format!("metadata key '{key}' is {v:?}, expected a non-negative integer")))
    }

    /// A required number.
    pub fn f64(&self, key: &str, file: &str) -> Result<f64> {
        let v = self.get(key).ok_or_else(|| model_err(file, format!("metadata key '{key}' is missing")))?;
        v.as_f64().ok_or_else(|| model_err(file, format!("metadata key '{key}' is {v:?}, expected a number")))
    }

    /// A required string.
    pub fn str(&self, key: &str, file: &str) -> Result<&str> {
        let v = self.get(key).ok_or_else(|| model_err(file, format!("metadata key '{key}' is missing")))?;
        v.as_str().ok_or_else(|| model_err(file, format!("metadata key '{key}' has type {}, expected a string", v.type_id())))
    }

    /// A required array.
    pub fn array(&self, key: &str, file: &str) -> Result<&[Value]> {
        let v = self.get(key).ok_or_else(|| model_err(file, format!("metadata key '{key}' is missing")))?;
        v.as_array().ok_or_else(|| model_err(file, format!("metadata key '{key}' has type {}, expected an array", v.type_id())))
    }
}

/// A parsed GGUF file: its metadata and its bytes, from which tensors are dequantised on demand.
pub struct GgufFile {
    pub file: String,
    pub meta: GgufMeta,
    bytes: Vec<u8>,
    /// Each metadata entry's bytes in the file (key, type, value), in file order.
    kv_spans: Vec<(String, std::ops::Range<usize>)>,
}

fn model_err(file: &str, detail: impl Into<String>) -> Error {
    Error::Model { file: file.into(), detail: detail.into() }
}

/// Reads little-endian fields, each bounded by the bytes that remain.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(model_err(
                self.file,
                format!("truncated: {} at byte {} needs {n} bytes, {} remain", what(), self.pos, self.remaining()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes long: more than the remaining bytes can
    /// hold means the file is corrupt, and checking first keeps allocations bounded by the file.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| n.checked_mul(min_size).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            model_err(self.file, format!("{} at byte {at} is {n}, more than the {} remaining bytes can hold", what(), self.remaining()))
        })
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| model_err(self.file, format!("{} at byte {at} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<Value> {
        let what = || format!("value of '{key}'");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(model_err(self.file, format!("metadata key '{key}': bool byte is {b}, expected 0 or 1"))),
            },
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(model_err(self.file, format!("metadata key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(&|| format!("array element type of '{key}'"))?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(model_err(self.file, format!("metadata key '{key}': unknown array element type {t}"))),
                };
                let n = self.count(min_size, &|| format!("array length of '{key}'"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(model_err(self.file, format!("metadata key '{key}': unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn read(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| model_err(&file, format!("cannot read: {e}")))?;
        Self::parse(bytes, &file)
    }

    /// Parses the header, metadata and tensor infos of `bytes`; `file` names it in errors.
    pub fn parse(bytes: Vec<u8>, file: &str) -> Result<Self> {
        let mut r = Reader { buf: &bytes, pos: 0, file };
        let magic = r.array::<4>(&|| "magic".into())?;
        if &magic != MAGIC {
            return Err(model_err(file, format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = r.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 { " (a big-endian file?)" } else { "" };
            return Err(model_err(file, format!("GGUF version {version} is not supported, only 2 and 3{hint}")));
        }
        // Smallest tensor info: empty name (8) + n_dims (4) + type (4) + offset (8);
        // smallest key/value: empty key (8) + type (4) + one byte.
        let n_tensors = r.count(24, &|| "tensor count".into())?;
        let n_kv = r.count(13, &|| "metadata count".into())?;

        let mut kv = BTreeMap::new();
        let mut kv_spans = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let start = r.pos;
            let key = r.string(&|| format!("key of metadata entry {i}"))?;
            let ty = r.u32(&|| format!("type of metadata key '{key}'"))?;
            let value = r.value(ty, 0, &key)?;
            kv_spans.push((key.clone(), start..r.pos));
            if kv.insert(key.clone(), value).is_some() {
                return Err(model_err(file, format!("metadata key '{key}' appears twice")));
            }
        }

        let alignment = match kv.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                model_err(file, format!("metadata key 'general.alignment' is {v:?}, expected a power of two"))
            })?,
        };

        // Tensor infos first; offsets become absolute once the data section start is known.
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("name of tensor {i}"))?;
            let n_dims = r.u32(&|| format!("dimension count of tensor '{name}'"))?;
            if n_dims > MAX_DIMS {
                return Err(model_err(file, format!("tensor '{name}' has {n_dims} dimensions, at most {MAX_DIMS} allowed")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = r.u64(&|| format!("dimension {d} of tensor '{name}'"))?;
                dims.push(usize::try_from(v).map_err(|_| model_err(file, format!("tensor '{name}' dimension {d} is {v}"))));
            }
            let dims = dims.into_iter().collect::<Result<Vec<_>>>()?;
            let type_id = r.u32(&|| format!("type of tensor '{name}'"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| {
                let known = quant::type_name(type_id).map_or("an unknown type".to_string(), |n| format!("ggml's {n}"));
                model_err(
                    file,
                    format!("tensor '{name}' has type {type_id} ({known}), which this reader does not decode (it reads {})", quant::supported_list()),
                )
            })?;
            let offset = r.u64(&|| format!("data offset of tensor '{name}'"))?;
            raw.push((name, dims, ty, offset));
        }

        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::new();
        for (name, dims, ty, offset) in raw {
            if !names.insert(name.clone()) {
                return Err(model_err(file, format!("tensor '{name}' appears twice")));
            }
            let bad = |why: String| model_err(file, format!("tensor '{name}' ({ty:?}, dims {dims:?}): {why}"));
            let (block_elems, block_bytes) = ty.block();
            let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("element count overflows".into()))?;
            if dims.first().copied().unwrap_or(1) % block_elems != 0 {
                return Err(bad(format!("ne[0] is not a multiple of the block size {block_elems}")));
            }
            let n_bytes = (n / block_elems).checked_mul(block_bytes).ok_or_else(|| bad("byte size overflows".into()))?;
            if offset % alignment != 0 {
                return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let start = data_start.checked_add(offset).filter(|s| *s <= bytes.len() as u64);
            let end = start.and_then(|s| s.checked_add(n_bytes as u64)).filter(|e| *e <= bytes.len() as u64);
            let Some(start) = start.filter(|_| end.is_some()) else {
                return Err(bad(format!(
                    "data at offset {offset} + {n_bytes} bytes lies past the end of the file ({} bytes, data section at {data_start})",
                    bytes.len()
                )));
            };
            tensors.push(TensorInfo { name, dims, ty, offset: start as usize, n_bytes });
        }

        let meta = GgufMeta { version, alignment, kv, tensors };
        Ok(GgufFile { file: file.into(), meta, bytes, kv_spans })
    }

    /// The metadata entries as stored (key, type and value), in file order: copied into
    /// another file they keep what the parsed values do not (an empty array's element type).
    pub fn raw_kv(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.kv_spans.iter().map(|(k, span)| (k.as_str(), &self.bytes[span.clone()]))
    }

    /// One tensor's bytes as stored, in its own type.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[t.offset..t.offset + t.n_bytes]
    }

    /// Dequantises one tensor to f32, in file order (ne[0] fastest).
    pub fn dequantize(&self, t: &TensorInfo) -> Vec<f32> {
        dequantize(t.ty, self.tensor_bytes(t))
    }
}

/// GGUF names of the tensors outside the layers, with their canonical names.
const FIXED_NAMES: [(&str, &str); 3] = [("token_embd.weight", "embed"), ("output_norm.weight", "final_norm.weight"), ("output.weight", "lm_head")];

/// GGUF names of a layer's tensors after `blk.{i}.`, with their canonical names after
/// `layers.{i}.`. The biases are Qwen2's on the query, key and value projections, the only ones
/// this reader takes (llama.cpp also reads optional biases on a llama's projections and a
/// qwen2's `output.bias`, which no converter of these models writes: refused, named).
const LAYER_NAMES: [(&str, &str); 12] = [
    ("attn_norm.weight", "attn_norm.weight"),
    ("attn_q.weight", "wq"),
    ("attn_k.weight", "wk"),
    ("attn_v.weight", "wv"),
    ("attn_output.weight", "wo"),
    ("ffn_norm.weight", "mlp_norm.weight"),
    ("ffn_gate.weight", "w_gate"),
    ("ffn_up.weight", "w_up"),
    ("ffn_down.weight", "w_down"),
    ("attn_q.bias", "bq"),
    ("attn_k.bias", "bk"),
    ("attn_v.bias", "bv"),
];

/// The canonical name of a GGUF tensor of a llama or qwen2 model (see the table in `model`).
pub fn canonical_name(gguf: &str) -> Option<String> {
    if let Some((_, canonical)) = FIXED_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(canonical.to_string());
    }
    let (idx, field) = layer_field(gguf.strip_prefix("blk.")?)?;
    let (_, canonical) = LAYER_NAMES.iter().find(|(g, _)| *g == field)?;
    Some(format!("layers.{idx}.{canonical}"))
}

/// The GGUF name of a canonical tensor name of a llama or qwen2 model: [`canonical_name`]'s
/// inverse.
pub fn gguf_name(canonical: &str) -> Option<String> {
    if let Some((gguf, _)) = FIXED_NAMES.iter().find(|(_, c)| *c == canonical) {
        return Some(gguf.to_string());
    }
    let (idx, field) = layer_field(canonical.strip_prefix("layers.")?)?;
    let (gguf, _) = LAYER_NAMES.iter().find(|(_, c)| *c == field)?;
    Some(format!("blk.{idx}.{gguf}"))
}

/// `{i}.{field}` split into the layer and the field.
fn layer_field(rest: &str) -> Option<(usize, &str)> {
    let (idx, field) = rest.split_once('.')?;
    // Plain decimal as llama.cpp writes it: `parse` would also take "01" and "+1", and two
    // spellings of one layer would then fill one slot, the later silently winning (names are
    // otherwise unique: a name found twice is refused when the file is read).
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) || (idx.len() > 1 && idx.starts_with('0')) {
        return None;
    }
    Some((idx.parse().ok()?, field))
}

/// The configuration of a GGUF model from its `general.architecture`, that architecture's keys
/// (`llama.*`, `qwen2.*`) and the tokenizer's. Two architectures run here: `llama` (Llama,
/// SmolLM2, Mistral) and `qwen2` (Qwen2, Qwen2.5: the Llama block with biases on q/k/v).
pub fn gguf_config(meta: &GgufMeta, file: &str) -> Result<Config> {
    let arch = meta.str("general.architecture", file)?;
    let qwen2 = match arch {
        "llama" => false,
        "qwen2" => true,
        _ => return Err(model_err(file, format!("general.architecture is '{arch}'; only 'llama' and 'qwen2' GGUF models are supported"))),
    };
    let k = |key: &str| format!("{arch}.{key}");
    // An embedding model (Qwen2's GTE and the like): its output is a pooled vector, not logits.
    if meta.get(&k("pooling_type")).is_some() {
        return Err(model_err(file, format!("{} is set: an embedding model, whose output is a pooled vector rather than the next token's logits this program edits", k("pooling_type"))));
    }
    if qwen2 && meta.tensor(ROPE_FREQS).is_some() {
        return Err(model_err(file, format!("tensor '{ROPE_FREQS}' in a qwen2 model, where llama.cpp does not read it")));
    }
    let hidden = meta.usize(&k("embedding_length"), file)?;
    let n_layers = meta.usize(&k("block_count"), file)?;
    let n_heads = meta.usize(&k("attention.head_count"), file)?;
    let n_kv_heads = match meta.get(&k("attention.head_count_kv")) {
        Some(_) => meta.usize(&k("attention.head_count_kv"), file)?,
        None => n_heads,
    };
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || hidden % n_heads != 0 {
        return Err(model_err(
            file,
            format!("inconsistent heads: embedding_length {hidden}, head_count {n_heads}, head_count_kv {n_kv_heads}"),
        ));
    }
    // A corrupt block_count must not make us enumerate billions of tensor names.
    if n_layers.saturating_mul(9) > meta.tensors.len() {
        return Err(model_err(file, format!("{} is {n_layers} but the file holds only {} tensors", k("block_count"), meta.tensors.len())));
    }
    let head_dim = match meta.get(&k("attention.key_length")) {
        Some(_) => meta.usize(&k("attention.key_length"), file)?,
        None => hidden / n_heads,
    };
    // Partial rotary embeddings are not implemented: RoPE must cover the whole head.
    if meta.get(&k("rope.dimension_count")).is_some() {
        let rot = meta.usize(&k("rope.dimension_count"), file)?;
        if rot != head_dim {
            return Err(model_err(file, format!("{} is {rot}, but only RoPE over the whole head ({head_dim}) is supported", k("rope.dimension_count"))));
        }
    }
    // Scaled RoPE rotates positions differently even in short prompts: what this runtime does
    // not apply (YaRN, LongRoPE) is refused rather than run unscaled. Read as llama.cpp reads
    // it: the type defaults to linear; the factor is `rope.scaling.factor`, else the older
    // `rope.scale_linear`, and 0 (or none given) means 1; type none turns any factor off.
    // Per-frequency divisors (`rope_freqs.weight`) are tensor data, read with the weights.
    let kind = match meta.get(&k("rope.scaling.type")) {
        None => "linear",
        Some(_) => meta.str(&k("rope.scaling.type"), file)?,
    };
    let mut factor = (0.0, k("rope.scaling.factor"));
    for key in [k("rope.scaling.factor"), k("rope.scale_linear")] {
        if factor.0 == 0.0 && meta.get(&key).is_some() {
            factor = (meta.f64(&key, file)?, key);
        }
    }
    let (factor, factor_key) = factor;
    let rope_scaling = match kind {
        "none" => RopeScaling::None,
        "linear" if factor == 0.0 || factor == 1.0 => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        kind => return Err(model_err(file, format!("{} is '{kind}'; only unscaled, linear and per-frequency (rope_freqs) RoPE are supported", k("rope.scaling.type")))),
    };
    let vocab_size = match meta.get("tokenizer.ggml.tokens") {
        Some(_) => meta.array("tokenizer.ggml.tokens", file)?.len(),
        None => meta.usize(&k("vocab_size"), file)?,
    };
    if meta.get(&k("vocab_size")).is_some() && meta.usize(&k("vocab_size"), file)? != vocab_size {
        return Err(model_err(file, format!("{} disagrees with the {vocab_size} tokens of tokenizer.ggml.tokens", k("vocab_size"))));
    }
    let token_id = |key: &str| -> Result<Option<u32>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| model_err(file, format!("metadata key '{key}' is {v:?}, expected a token id"))),
        }
    };
    let config = Config {
        arch: Arch::Llama,
        vocab_size,
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_hidden: meta.usize(&k("feed_forward_length"), file)?,
        norm_eps: meta.f64(&k("attention.layer_norm_rms_epsilon"), file)? as f32,
        rope_theta: match meta.get(&k("rope.freq_base")) {
            Some(_) => meta.f64(&k("rope.freq_base"), file)? as f32,
            None => 10000.0,
        },
        // llama.cpp's converter permutes a llama's Q/K rows so that RoPE rotates adjacent
        // pairs; a qwen2's it keeps as Hugging Face stores them, and llama.cpp rotates halves
        // (its NEOX RoPE).
        rope_style: if qwen2 { RopeStyle::Half } else { RopeStyle::Adjacent },
        rope_scaling,
        qkv_bias: qwen2,
        max_seq_len: meta.usize(&k("context_length"), file)?,
        tied_embeddings: meta.tensor("output.weight").is_none(),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
    };
    let key = |field: &str| match field {
        "norm_eps" => k("attention.layer_norm_rms_epsilon"),
        "rope_theta" => k("rope.freq_base"),
        "rope_scaling" => factor_key.clone(),
        "max_seq_len" => k("context_length"),
        "ffn_hidden" => k("feed_forward_length"),
        "n_layers" => k("block_count"),
        "vocab_size" => "tokenizer.ggml.tokens".into(),
        "hidden" => k("embedding_length"),
        "bos_token_id" => "tokenizer.ggml.bos_token_id".into(),
        "eos_token_id" => "tokenizer.ggml.eos_token_id".into(),
        "head_dim" if meta.get(&k("attention.key_length")).is_some() => k("attention.key_length"),
        _ => format!("{} / {}", k("embedding_length"), k("attention.head_count")),
    };
    config.check().map_err(|(field, detail)| model_err(file, format!("metadata key '{}': {detail}", key(field))))?;
    Ok(config)
}

/// The tensor in which llama.cpp keeps RoPE's per-frequency divisors (Llama 3.1 and later): a
/// setting of the model, not a weight.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// `rope_freqs.weight` as the model's RoPE scaling: one divisor per frequency (times a linear
/// factor where the file gives both, as llama.cpp applies both), checked.
fn rope_divisors(g: &GgufFile, t: &TensorInfo, config: &Config) -> Result<RopeScaling> {
    let file = g.file.as_str();
    let half = config.head_dim / 2;
    if t.dims != [half] {
        return Err(model_err(file, format!("tensor '{ROPE_FREQS}' has dims {:?}; RoPE over heads of {} needs [{half}]", t.dims, config.head_dim)));
    }
    let linear = match config.rope_scaling {
        RopeScaling::Linear { factor } => factor,
        _ => 1.0,
    };
    let divisors = g.dequantize(t).into_iter().map(|d| (d as f64 * linear) as f32).collect();
    let scaled = Config { rope_scaling: RopeScaling::Divisors(divisors), ..config.clone() };
    scaled.check().map_err(|(_, detail)| model_err(file, format!("tensor '{ROPE_FREQS}': {detail}")))?;
    Ok(scaled.rope_scaling)
}

/// Loads a llama- or qwen2-architecture GGUF as canonical f32 weights, plus its metadata (for the
/// tokenizer). Every tensor is checked against the configuration before it is dequantised.
pub fn load_gguf(path: &Path) -> Result<(Weights, GgufMeta)> {
    let g = GgufFile::read(path)?;
    weights_from(g)
}

/// As [`load_gguf`], from bytes already in memory; `file` names them in errors.
pub fn load_gguf_bytes(bytes: Vec<u8>, file: &str) -> Result<(Weights, GgufMeta)> {
    weights_from(GgufFile::parse(bytes, file)?)
}

fn weights_from(g: GgufFile) -> Result<(Weights, GgufMeta)> {
    let file = g.file.as_str();
    let mut config = gguf_config(&g.meta, file)?;
    let mut tensors = BTreeMap::new();
    for t in &g.meta.tensors {
        if t.name == ROPE_FREQS {
            config.rope_scaling = rope_divisors(&g, t, &config)?;
            continue;
        }
        let name = canonical_name(&t.name).ok_or_else(|| {
            let why = if t.name.ends_with(".scale") || t.name.ends_with(".input_scale") {
                "a per-tensor scale of an FP4 checkpoint (converted from ModelOpt), which llama.cpp applies at inference and this reader does not"
            } else {
                "no canonical name in a llama or qwen2 model"
            };
            model_err(file, format!("tensor '{}': {why}", t.name))
        })?;
        // GGUF lists ne[0] (the input width) first; canonical matrices are [out, in].
        let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
        let want = config
            .expected_shape(&name)
            .ok_or_else(|| model_err(file, format!("tensor '{}' ({name}) is not part of this configuration", t.name)))?;
        if shape != want {
            return Err(model_err(
                file,
                format!("tensor '{}' ({name}) has shape {shape:?}, the config implies {want:?}", t.name),
            ));
        }
        tensors.insert(name, HostTensor::new(shape, g.dequantize(t)));
    }
    let weights = Weights { config, tensors };
    weights.validate(file)?;
    Ok((weights, g.meta))
}

//! Hugging Face checkpoints: a directory with config.json and *.safetensors, for the Llama
//! (`model.layers.N.self_attn.q_proj…`) and GPT-2 (`transformer.h.N.attn.c_attn…`, Conv1D
//! layout, i.e. [in, out]) families, in f32, f16 or bf16. The saver writes the same names plus
//! config.json, so an edited model loads in transformers.

use super::config::{Arch, Config, RopeScaling, RopeStyle};
use super::weights::{HostTensor, Weights};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn err(file: &Path, detail: impl Into<String>) -> Error {
    Error::Model { file: file.display().to_string(), detail: detail.into() }
}

impl HostTensor {
    pub fn transpose(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], data)
    }

    /// Columns [c0, c1) of a 2-D tensor (or elements [c0, c1) of a 1-D one).
    fn cols(&self, c0: usize, c1: usize) -> HostTensor {
        if self.shape.len() == 1 {
            return HostTensor::new(vec![c1 - c0], self.data[c0..c1].to_vec());
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let data = (0..r).flat_map(|i| self.data[i * c + c0..i * c + c1].iter().copied()).collect();
        HostTensor::new(vec![r, c1 - c0], data)
    }
}

/// Reorders the rows of a Q or K projection between RoPE layouts: GGUF rotates adjacent pairs
/// (row h·D + 2i + s), Hugging Face rotates halves (row h·D + s·D/2 + i). A bias (1-D) is one
/// column, its entries reordered as the weight's rows.
pub fn permute_rope_rows(w: &HostTensor, head_dim: usize, to_half: bool) -> HostTensor {
    let cols = w.shape.get(1).copied().unwrap_or(1);
    let mut out = vec![0.0; w.data.len()];
    let half = head_dim / 2;
    for h in 0..w.shape[0] / head_dim {
        for i in 0..half {
            for s in 0..2 {
                let adjacent = h * head_dim + 2 * i + s;
                let halves = h * head_dim + s * half + i;
                let (from, to) = if to_half { (adjacent, halves) } else { (halves, adjacent) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&w.data[from * cols..(from + 1) * cols]);
            }
        }
    }
    HostTensor::new(w.shape.clone(), out)
}

/// The first of `keys` present (null counts as absent), checked to be a whole number ≥ 0: a
/// value of the wrong type is an error that names the key, never a silent default.
fn opt_usize(cfg: &Value, file: &Path, keys: &[&str]) -> Result<Option<usize>> {
    let Some((key, v)) = keys.iter().find_map(|k| cfg.get(*k).filter(|v| !v.is_null()).map(|v| (k, v))) else { return Ok(None) };
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| err(file, format!("field '{key}' is {v}; expected a whole number ≥ 0")))
}

fn get_usize(cfg: &Value, file: &Path, keys: &[&str]) -> Result<usize> {
    opt_usize(cfg, file, keys)?.ok_or_else(|| err(file, format!("field '{}' is missing", keys[0])))
}

/// A finite number under `key`, or `default` when the key is absent or null.
fn get_f32(cfg: &Value, file: &Path, key: &str, default: f32) -> Result<f32> {
    match cfg.get(key).filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| err(file, format!("field '{key}' is {v}; expected a finite number"))),
    }
}

fn get_bool(cfg: &Value, file: &Path, key: &str, default: bool) -> Result<bool> {
    match cfg.get(key).filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| err(file, format!("field '{key}' is {v}; expected true or false"))),
    }
}

fn get_id(cfg: &Value, file: &Path, key: &str) -> Result<Option<u32>> {
    let bad = |v: &Value| err(file, format!("field '{key}' is {v}; expected a token id"));
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(v));
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a.first().map(id).transpose(),
        Some(v) => id(v).map(Some),
    }
}

/// Llama-family settings this runtime does not implement. Each would run without an error and
/// give wrong logits, so it is refused, naming the key.
fn refuse_unsupported_llama_settings(cfg: &Value, path: &Path, qwen2: bool) -> Result<()> {
    let present = |key: &str| cfg.get(key).filter(|v| !v.is_null());
    if let Some(v) = present("hidden_act") {
        if v.as_str() != Some("silu") {
            return Err(err(path, format!("hidden_act is {v}: the Llama MLP here is SwiGLU with SiLU")));
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if let Some(v) = present(key) {
            if v.as_bool() != Some(false) {
                return Err(err(path, format!("{key} is {v}: projections with biases are not supported")));
            }
        }
    }
    // Windowed attention is not run here: refused where a layer would attend through a window
    // shorter than the context, decided as transformers decides it. A window is on where
    // `use_sliding_window` says so (Qwen2's default: off; Mistral's configs have no such key);
    // Qwen2's window defaults to 4,096. Which layers use it: transformers 5's `layer_types`
    // where given, else Qwen2's layers from `max_window_layers` (28) on, else every layer.
    let use_window = match present("use_sliding_window") {
        None => !qwen2,
        Some(v) => v.as_bool().ok_or_else(|| err(path, format!("field 'use_sliding_window' is {v}; expected true or false")))?,
    };
    let window = match present("sliding_window").filter(|_| use_window) {
        Some(v) => Some(v.as_u64().ok_or_else(|| err(path, format!("sliding_window is {v}, expected a token count or null")))?),
        None => (use_window && qwen2).then_some(4096),
    };
    let windowed_layers = match present("layer_types") {
        Some(v) => {
            let kinds = v.as_array().map(|a| a.iter().map(Value::as_str).collect::<Vec<_>>()).unwrap_or_default();
            if kinds.is_empty() || kinds.iter().any(|k| !matches!(k, Some("full_attention" | "sliding_attention"))) {
                return Err(err(path, format!("field 'layer_types' is {v}: expected full_attention or sliding_attention per layer")));
            }
            kinds.contains(&Some("sliding_attention"))
        }
        None if qwen2 => {
            let layers = cfg.get("num_hidden_layers").and_then(Value::as_u64).unwrap_or(0);
            cfg.get("max_window_layers").and_then(Value::as_u64).unwrap_or(28) < layers
        }
        None => true,
    };
    if let Some(window) = window.filter(|_| windowed_layers) {
        let longest = cfg.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(u64::MAX);
        if window < longest {
            return Err(err(path, format!("sliding_window is {window} (under max_position_embeddings {longest}) and layers attend through it: windowed attention is not supported")));
        }
    }
    Ok(())
}

/// RoPE's base and scaling. transformers before 5 writes `rope_theta` and `rope_scaling` at the
/// top level; transformers 5 one `rope_parameters` object that holds both (`rope_type`
/// "default" for none). Either is read; a base given both ways and differing is refused, as is
/// a scaling this runtime does not apply (dynamic NTK and YaRN change with the sequence's length
/// or the attention's scale as well as the frequencies). Returns the keys they came from too.
fn rope_settings(cfg: &Value, path: &Path) -> Result<(f32, RopeScaling, [&'static str; 2])> {
    let present = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    // As transformers 5 reads them: a `rope_scaling`, where there is one, replaces
    // `rope_parameters` whole.
    let (source, scaling_key, nested_key) = match (present(cfg.get("rope_scaling")), present(cfg.get("rope_parameters"))) {
        (Some(s), _) => (Some(s), "rope_scaling", "rope_scaling.rope_theta"),
        (None, Some(p)) => (Some(p), "rope_parameters", "rope_parameters.rope_theta"),
        (None, None) => (None, "rope_scaling", "rope_theta"),
    };
    if let Some(p) = &source {
        if !p.is_object() {
            return Err(err(path, format!("field '{scaling_key}' is {p}; expected an object")));
        }
        if p.get("rope_type").is_none() && p.get("type").is_none() && p.as_object().is_some_and(|o| o.values().any(Value::is_object)) {
            return Err(err(path, format!("field '{scaling_key}' is {p}: RoPE settings per layer type are not supported")));
        }
    }
    let top = present(cfg.get("rope_theta"));
    let nested = source.as_ref().and_then(|p| present(p.get("rope_theta")));
    if let (Some(t), Some(n)) = (&top, &nested) {
        if t.as_f64() != n.as_f64() {
            return Err(err(path, format!("field '{nested_key}' is {n} but field 'rope_theta' is {t}: which RoPE base is meant?")));
        }
    }
    let (theta, theta_key) = match (top, nested) {
        (Some(v), _) => (Some(v), "rope_theta"),
        (None, Some(v)) => (Some(v), nested_key),
        (None, None) => (None, "rope_theta"),
    };
    let theta = match theta {
        None => 10000.0,
        Some(v) => v.as_f64().map(|x| x as f32).filter(|x| x.is_finite()).ok_or_else(|| err(path, format!("field '{theta_key}' is {v}; expected a finite number")))?,
    };
    let Some(scaling) = source else { return Ok((theta, RopeScaling::None, [theta_key, scaling_key])) };
    let bad = |detail: String| err(path, format!("field '{scaling_key}' is {scaling}: {detail}"));
    let kind = match scaling.get("rope_type").or_else(|| scaling.get("type")) {
        None => "default",
        Some(k) => k.as_str().ok_or_else(|| bad("its rope_type is not a string".into()))?,
    };
    let number = |key: &str| -> Result<f64> {
        let v = scaling.get(key).filter(|v| !v.is_null()).ok_or_else(|| bad(format!("it has no '{key}'")))?;
        v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("its '{key}' is {v}, not a finite number")))
    };
    let rope_scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: number("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        },
        other => return Err(bad(format!("RoPE scaling '{other}' is not supported (default, linear and llama3 are)"))),
    };
    Ok((theta, rope_scaling, [theta_key, scaling_key]))
}

/// Reads config.json into a `Config`.
pub fn parse_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| err(path, format!("not valid JSON: {e}")))?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch = match model_type {
        "llama" | "mistral" | "qwen2" => Arch::Llama,
        "gpt2" => Arch::Gpt2,
        other => return Err(err(path, format!("model_type '{other}' is not supported (llama, mistral, qwen2, gpt2)"))),
    };
    let mut rope_keys = ["rope_theta", "rope_scaling"];
    let mut rope = (10000.0, RopeScaling::None);
    if arch == Arch::Llama {
        refuse_unsupported_llama_settings(&cfg, path, model_type == "qwen2")?;
        let (theta, scaling, keys) = rope_settings(&cfg, path)?;
        (rope, rope_keys) = ((theta, scaling), keys);
    }
    let config = match arch {
        Arch::Llama => {
            let hidden = get_usize(&cfg, path, &["hidden_size"])?;
            let n_heads = get_usize(&cfg, path, &["num_attention_heads"])?;
            Config {
                arch,
                vocab_size: get_usize(&cfg, path, &["vocab_size"])?,
                hidden,
                n_layers: get_usize(&cfg, path, &["num_hidden_layers"])?,
                n_heads,
                n_kv_heads: opt_usize(&cfg, path, &["num_key_value_heads"])?.unwrap_or(n_heads),
                head_dim: opt_usize(&cfg, path, &["head_dim"])?.unwrap_or(hidden / n_heads.max(1)),
                ffn_hidden: get_usize(&cfg, path, &["intermediate_size"])?,
                norm_eps: get_f32(&cfg, path, "rms_norm_eps", 1e-6)?,
                rope_theta: rope.0,
                rope_style: RopeStyle::Half,
                rope_scaling: rope.1,
                qkv_bias: model_type == "qwen2",
                max_seq_len: opt_usize(&cfg, path, &["max_position_embeddings"])?.unwrap_or(2048),
                tied_embeddings: get_bool(&cfg, path, "tie_word_embeddings", false)?,
                bos_token_id: get_id(&cfg, path, "bos_token_id")?,
                eos_token_id: get_id(&cfg, path, "eos_token_id")?,
            }
        }
        Arch::Gpt2 => {
            let hidden = get_usize(&cfg, path, &["n_embd", "hidden_size"])?;
            let n_heads = get_usize(&cfg, path, &["n_head", "num_attention_heads"])?;
            Config {
                arch,
                vocab_size: get_usize(&cfg, path, &["vocab_size"])?,
                hidden,
                n_layers: get_usize(&cfg, path, &["n_layer", "num_hidden_layers"])?,
                n_heads,
                n_kv_heads: n_heads,
                head_dim: hidden / n_heads.max(1),
                ffn_hidden: opt_usize(&cfg, path, &["n_inner"])?.unwrap_or(4 * hidden),
                norm_eps: get_f32(&cfg, path, "layer_norm_epsilon", 1e-5)?,
                rope_theta: 0.0,
                rope_style: RopeStyle::Half,
                rope_scaling: RopeScaling::None,
                qkv_bias: false,
                max_seq_len: get_usize(&cfg, path, &["n_positions", "n_ctx"])?,
                tied_embeddings: get_bool(&cfg, path, "tie_word_embeddings", true)?,
                bos_token_id: get_id(&cfg, path, "bos_token_id")?,
                eos_token_id: get_id(&cfg, path, "eos_token_id")?,
            }
        }
    };
    // The key the file gave, of the aliases read.
    let given = |keys: &[&'static str]| keys.iter().copied().find(|k| cfg.get(*k).is_some()).unwrap_or(keys[0]);
    let hidden_key = if config.arch == Arch::Gpt2 { given(&["n_embd", "hidden_size"]) } else { "hidden_size" };
    if config.hidden == 0 {
        return Err(err(path, format!("field '{hidden_key}' is 0")));
    }
    if config.n_heads == 0 || config.n_kv_heads == 0 || config.n_heads % config.n_kv_heads != 0 {
        return Err(err(path, format!("inconsistent head counts: {} query heads, {} key/value heads", config.n_heads, config.n_kv_heads)));
    }
    let key = |field: &'static str| match (field, config.arch) {
        ("norm_eps", Arch::Gpt2) => "layer_norm_epsilon",
        ("norm_eps", _) => "rms_norm_eps",
        ("rope_theta", _) => rope_keys[0],
        ("rope_scaling", _) => rope_keys[1],
        ("max_seq_len", Arch::Gpt2) => "n_positions",
        ("max_seq_len", _) => "max_position_embeddings",
        ("vocab_size", _) => "vocab_size",
        ("n_layers", Arch::Gpt2) => given(&["n_layer", "num_hidden_layers"]),
        ("n_layers", _) => "num_hidden_layers",
        ("ffn_hidden", Arch::Gpt2) => "n_inner",
        ("ffn_hidden", _) => "intermediate_size",
        ("hidden", _) => hidden_key,
        ("head_dim", Arch::Llama) if cfg.get("head_dim").is_some_and(|v| !v.is_null()) => "head_dim",
        ("head_dim", Arch::Llama) => "hidden_size / num_attention_heads",
        ("head_dim", Arch::Gpt2) => if hidden_key == "n_embd" { "n_embd / n_head" } else { "hidden_size / n_head" },
        ("bos_token_id", _) => "bos_token_id",
        ("eos_token_id", _) => "eos_token_id",
        (other, _) => other,
    };
    config.check().map_err(|(field, detail)| err(path, format!("field '{}': {detail}", key(field))))?;
    Ok(config)
}

/// An f32 as the decimal it was written as (1e-5, not 9.999999747378752e-6).
fn short(x: f32) -> f64 {
    x.to_string().parse().expect("an f32 prints as a number")
}

pub fn config_json(c: &Config) -> Value {
    match c.arch {
        Arch::Llama => {
            let mut cfg = llama_config_json(c);
            if c.qkv_bias {
                // Qwen2's layout: biases on q/k/v only, which Llama's `attention_bias` (all
                // four projections) cannot say.
                cfg["architectures"] = json!(["Qwen2ForCausalLM"]);
                cfg["model_type"] = json!("qwen2");
                cfg.as_object_mut().expect("an object").remove("attention_bias");
                cfg.as_object_mut().expect("an object").remove("mlp_bias");
                cfg["use_sliding_window"] = json!(false);
                cfg["sliding_window"] = Value::Null;
                cfg["max_window_layers"] = json!(c.n_layers);
            }
            // The form both transformers 4 and 5 read (5 folds it into `rope_parameters`).
            let scaling = match &c.rope_scaling {
                RopeScaling::None | RopeScaling::Divisors(_) => None,
                RopeScaling::Linear { factor } => Some(json!({"rope_type": "linear", "factor": factor})),
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => Some(json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    // A whole number as transformers and llama.cpp's converter expect (8192, not 8192.0).
                    "original_max_position_embeddings": whole_or_not(*original_max_position_embeddings),
                })),
            };
            if let Some(scaling) = scaling {
                cfg["rope_scaling"] = scaling;
            }
            cfg
        }
        Arch::Gpt2 => gpt2_config_json(c),
    }
}

/// A number as an integer where it is one.
fn whole_or_not(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 { json!(x as i64) } else { json!(x) }
}

fn llama_config_json(c: &Config) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn_hidden,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "num_hidden_layers": c.n_layers,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": short(c.norm_eps),
        "rope_theta": short(c.rope_theta),
        "max_position_embeddings": c.max_seq_len,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tied_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    })
}

fn gpt2_config_json(c: &Config) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": c.hidden,
        "n_head": c.n_heads,
        "n_layer": c.n_layers,
        "n_inner": c.ffn_hidden,
        "n_positions": c.max_seq_len,
        "n_ctx": c.max_seq_len,
        "vocab_size": c.vocab_size,
        "layer_norm_epsilon": short(c.norm_eps),
        "activation_function": "gelu_new",
        "tie_word_embeddings": c.tied_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    })
}

fn to_f32(file: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(err(file, format!("tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"))),
    })
}

/// Shard files, and the index's tensor → file map where there is one.
type Shards = (Vec<PathBuf>, Option<HashMap<String, String>>);

/// The shard files of a checkpoint and, where `model.safetensors.index.json` exists, which file
/// each tensor must come from. Without an index every *.safetensors file is a shard; with one,
/// only the files it names (a stale extra file in the directory is not read).
fn shards(dir: &Path) -> Result<Shards> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| err(&index, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| err(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| err(&index, "field 'weight_map' is missing or not an object"))?;
        let mut weight_map = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| err(&index, format!("weight_map['{tensor}'] is {file}; expected a file name")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(err(&index, format!("weight_map['{tensor}'] names '{file}', not a file of this directory")));
            }
            weight_map.insert(tensor.clone(), file.to_string());
        }
        let mut files: Vec<PathBuf> = weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        if let Some(gone) = files.iter().find(|f| !f.is_file()) {
            return Err(err(&index, format!("weight_map names {}, which is not a file of this directory", gone.file_name().unwrap_or_default().to_string_lossy())));
        }
        if files.is_empty() {
            return Err(err(&index, "weight_map is empty"));
        }
        return Ok((files, Some(weight_map)));
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(dir, "no .safetensors file in this directory"));
    }
    Ok((files, None))
}

/// Every tensor of the checkpoint's shards, by its file name. A tensor in two shards, or in
/// another shard than the index says, is an error: one would silently override the other.
fn read_tensors(dir: &Path) -> Result<(HashMap<String, HostTensor>, Vec<PathBuf>)> {
    let (files, index) = shards(dir)?;
    let mut out = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let file = file.clone();
        let bytes = std::fs::read(&file).map_err(|e| err(&file, format!("cannot read: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(&file, format!("not a valid safetensors file: {e}")))?;
        let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (name, view) in st.tensors() {
            if let Some(first) = origin.get(&name) {
                return Err(err(&file, format!("tensor '{name}' is also in {}: which one is meant is unclear", first.display())));
            }
            if let Some(map) = &index {
                match map.get(&name) {
                    Some(f) if *f == file_name => {}
                    Some(f) => return Err(err(&file, format!("tensor '{name}' is here, but model.safetensors.index.json puts it in {f}"))),
                    None => return Err(err(&file, format!("tensor '{name}' is not listed in model.safetensors.index.json"))),
                }
            }
            let data = to_f32(&file, &name, view.dtype(), view.data())?;
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(err(&file, format!("tensor '{name}' holds a non-finite value at element {i}")));
            }
            out.insert(name.clone(), HostTensor::new(view.shape().to_vec(), data));
            origin.insert(name, file.clone());
        }
    }
    if let Some(map) = &index {
        if let Some((name, f)) = map.iter().find(|(name, _)| !out.contains_key(*name)) {
            return Err(err(&dir.join(f), format!("tensor '{name}', which model.safetensors.index.json puts here, is missing")));
        }
    }
    Ok((out, files))
}

/// Refuses tensors the configuration does not use: 30 layers of tensors under a config that
/// says 2 would otherwise load as a 2-layer model answering nonsense. Buffers some exporters
/// keep (RoPE frequencies, GPT-2's causal masks) and a tied head equal to the embedding are
/// not weights and are allowed.
fn check_unused(dir: &Path, config: &Config, left: HashMap<String, HostTensor>, embed: &HostTensor) -> Result<()> {
    let mut unused: Vec<String> = left
        .into_iter()
        .filter(|(name, t)| {
            let buffer = name.ends_with("rotary_emb.inv_freq") || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
            let tied_copy = config.tied_embeddings && name == "lm_head.weight" && t.shape == embed.shape && t.data == embed.data;
            !buffer && !tied_copy
        })
        .map(|(name, _)| name)
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let hint = if unused.iter().any(|n| n == "lm_head.weight") {
        "tie_word_embeddings is true, but lm_head.weight differs from the embedding".to_string()
    } else {
        format!("config.json says {} layers", config.n_layers)
    };
    Err(err(dir, format!("{} tensors are not used by the configuration ({hint}): {}{}", unused.len(), unused.iter().take(4).cloned().collect::<Vec<_>>().join(", "), if unused.len() > 4 { ", …" } else { "" })))
}

/// A Llama layer's tensors: (checkpoint name after `model.layers.N.`, canonical name after
/// `layers.N.`), shared by the loader and the saver.
const LLAMA_LAYER: [(&str, &str); 9] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "wq"),
    ("self_attn.k_proj.weight", "wk"),
    ("self_attn.v_proj.weight", "wv"),
    ("self_attn.o_proj.weight", "wo"),
    ("post_attention_layernorm.weight", "mlp_norm.weight"),
    ("mlp.gate_proj.weight", "w_gate"),
    ("mlp.up_proj.weight", "w_up"),
    ("mlp.down_proj.weight", "w_down"),
];

/// Qwen2's projection biases (checkpoint name after `model.layers.N.`, canonical name).
const QKV_BIAS: [(&str, &str); 3] = [("self_attn.q_proj.bias", "bq"), ("self_attn.k_proj.bias", "bk"), ("self_attn.v_proj.bias", "bv")];

/// A GPT-2 layer's tensors other than the fused Q/K/V (checkpoint name after `h.N.`, canonical
/// name, stored transposed as Conv1D [in, out]).
const GPT2_LAYER: [(&str, &str, bool); 10] = [
    ("attn.c_proj.weight", "wo", true),
    ("attn.c_proj.bias", "bo", false),
    ("mlp.c_fc.weight", "w_up", true),
    ("mlp.c_fc.bias", "b_up", false),
    ("mlp.c_proj.weight", "w_down", true),
    ("mlp.c_proj.bias", "b_down", false),
    ("ln_1.weight", "attn_norm.weight", false),
    ("ln_1.bias", "attn_norm.bias", false),
    ("ln_2.weight", "mlp_norm.weight", false),
    ("ln_2.bias", "mlp_norm.bias", false),
];

/// The checkpoint tensor a canonical one comes from and how it was read, for errors: a user
/// knows their file's names, not this program's.
fn checkpoint_name(arch: Arch, canon: &str) -> Option<(String, &'static str)> {
    // GPT-2 checkpoints name tensors with or without "transformer.".
    let gpt2 = |s: &str| format!("[transformer.]{s}");
    let fixed = match (arch, canon) {
        (Arch::Llama, "embed") => Some("model.embed_tokens.weight".to_string()),
        (Arch::Llama, "final_norm.weight") => Some("model.norm.weight".into()),
        (_, "lm_head") => Some("lm_head.weight".into()),
        (Arch::Gpt2, "embed") => Some(gpt2("wte.weight")),
        (Arch::Gpt2, "pos_embed") => Some(gpt2("wpe.weight")),
        (Arch::Gpt2, "final_norm.weight") => Some(gpt2("ln_f.weight")),
        (Arch::Gpt2, "final_norm.bias") => Some(gpt2("ln_f.bias")),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f, "read as"));
    }
    let (i, field) = canon.strip_prefix("layers.")?.split_once('.')?;
    match arch {
        Arch::Llama => LLAMA_LAYER.iter().chain(&QKV_BIAS).find(|(_, c)| *c == field).map(|(hf, _)| (format!("model.layers.{i}.{hf}"), "read as")),
        Arch::Gpt2 => match field {
            "wq" | "wk" | "wv" => Some((gpt2(&format!("h.{i}.attn.c_attn.weight")), "a third of it, transposed, read as")),
            "bq" | "bk" | "bv" => Some((gpt2(&format!("h.{i}.attn.c_attn.bias")), "a third of it read as")),
            _ => GPT2_LAYER.iter().find(|(_, c, _)| *c == field).map(|(hf, _, t)| (gpt2(&format!("h.{i}.{hf}")), if *t { "transposed, read as" } else { "read as" })),
        },
    }
}

/// Loads a Hugging Face checkpoint directory into canonical weights.
pub fn load_dir(dir: &Path) -> Result<Weights> {
    let config = parse_config(&dir.join("config.json"))?;
    let (mut hf, files) = read_tensors(dir)?;
    let shard_names = files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ");
    let cfg_path = dir.join("config.json");
    let mut take = |names: &[String]| -> Result<HostTensor> {
        names
            .iter()
            .find_map(|n| hf.remove(n))
            .ok_or_else(|| err(&cfg_path, format!("tensor '{}' is missing: config.json implies it, and it is in none of {shard_names}", names[0])))
    };
    let mut t = BTreeMap::new();
    match config.arch {
        Arch::Llama => {
            let n = |s: &str| vec![s.to_string()];
            t.insert("embed".into(), take(&n("model.embed_tokens.weight"))?);
            for i in 0..config.n_layers {
                let p = format!("model.layers.{i}.");
                for (hf_name, canon) in LLAMA_LAYER {
                    t.insert(format!("layers.{i}.{canon}"), take(&n(&format!("{p}{hf_name}")))?);
                }
                if config.qkv_bias {
                    for (hf_name, canon) in QKV_BIAS {
                        t.insert(format!("layers.{i}.{canon}"), take(&n(&format!("{p}{hf_name}")))?);
                    }
                }
            }
            t.insert("final_norm.weight".into(), take(&n("model.norm.weight"))?);
            if !config.tied_embeddings {
                t.insert("lm_head".into(), take(&n("lm_head.weight"))?);
            }
        }
        Arch::Gpt2 => {
            // Checkpoints name tensors with or without the "transformer." prefix.
            let n = |s: &str| vec![format!("transformer.{s}"), s.to_string()];
            let d = config.hidden;
            t.insert("embed".into(), take(&n("wte.weight"))?);
            t.insert("pos_embed".into(), take(&n("wpe.weight"))?);
            for i in 0..config.n_layers {
                let p = format!("h.{i}.");
                let layer = |s: &str| format!("layers.{i}.{s}");
                let c_attn_w = take(&n(&format!("{p}attn.c_attn.weight")))?;
                let c_attn_b = take(&n(&format!("{p}attn.c_attn.bias")))?;
                if c_attn_w.shape != [d, 3 * d] {
                    return Err(err(dir, format!("tensor '{p}attn.c_attn.weight' has shape {:?}, expected {:?}", c_attn_w.shape, [d, 3 * d])));
                }
                if c_attn_b.shape != [3 * d] {
                    return Err(err(dir, format!("tensor '{p}attn.c_attn.bias' has shape {:?}, expected {:?}", c_attn_b.shape, [3 * d])));
                }
                for (j, (w, b)) in [("wq", "bq"), ("wk", "bk"), ("wv", "bv")].into_iter().enumerate() {
                    t.insert(layer(w), c_attn_w.cols(j * d, (j + 1) * d).transpose());
                    t.insert(layer(b), c_attn_b.cols(j * d, (j + 1) * d));
                }
                let conv = |name: &str, hf: &mut dyn FnMut(&[String]) -> Result<HostTensor>| -> Result<HostTensor> {
                    let w = hf(&n(&format!("{p}{name}")))?;
                    if w.shape.len() != 2 {
                        return Err(err(dir, format!("tensor '{p}{name}' is not 2-D: {:?}", w.shape)));
                    }
                    Ok(w.transpose())
                };
                for (hf_name, canon, transposed) in GPT2_LAYER {
                    let x = if transposed { conv(hf_name, &mut take)? } else { take(&n(&format!("{p}{hf_name}")))? };
                    t.insert(layer(canon), x);
                }
            }
            t.insert("final_norm.weight".into(), take(&n("ln_f.weight"))?);
            t.insert("final_norm.bias".into(), take(&n("ln_f.bias"))?);
            if !config.tied_embeddings {
                t.insert("lm_head".into(), take(&["lm_head.weight".to_string()])?);
            }
        }
    }
    check_unused(dir, &config, hf, &t["embed"])?;
    let weights = Weights { config, tensors: t };
    // Shapes are what config.json implies: a disagreement names it, and the tensor as the
    // checkpoint calls it.
    let arch = weights.config.arch;
    weights.validate_named(&dir.join("config.json").display().to_string(), &|canon| match checkpoint_name(arch, canon) {
        Some((hf, how)) => format!("'{hf}' ({how} {canon})"),
        None => format!("'{canon}'"),
    })?;
    Ok(weights)
}

/// The element type written by the saver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    F16,
    BF16,
}

struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(t: &HostTensor, dtype: SaveDtype) -> Owned {
    let (dt, bytes) = match dtype {
        SaveDtype::F32 => (Dtype::F32, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        SaveDtype::F16 => (Dtype::F16, t.data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
        SaveDtype::BF16 => (Dtype::BF16, t.data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()),
    };
    Owned { dtype: dt, shape: t.shape.clone(), bytes }
}

/// The Hugging Face names and layouts of canonical weights. GGUF-ordered Q/K rows are put back
/// into rotate-half order, so the saved model runs in transformers.
pub fn to_hf(w: &Weights) -> Vec<(String, HostTensor)> {
    let c = &w.config;
    let t = |n: &str| w.tensors[n].clone();
    let mut out = vec![];
    match c.arch {
        Arch::Llama => {
            out.push(("model.embed_tokens.weight".into(), t("embed")));
            for i in 0..c.n_layers {
                let l = |s: &str| t(&format!("layers.{i}.{s}"));
                // Q and K rows (and their biases) in rotate-half order.
                let qk = |s: &str| if c.rope_style == RopeStyle::Adjacent { permute_rope_rows(&l(s), c.head_dim, true) } else { l(s) };
                let p = format!("model.layers.{i}.");
                for (hf_name, canon) in LLAMA_LAYER {
                    let x = if matches!(canon, "wq" | "wk") { qk(canon) } else { l(canon) };
                    out.push((format!("{p}{hf_name}"), x));
                }
                if c.qkv_bias {
                    for (hf_name, canon) in QKV_BIAS {
                        let x = if matches!(canon, "bq" | "bk") { qk(canon) } else { l(canon) };
                        out.push((format!("{p}{hf_name}"), x));
                    }
                }
            }
            out.push(("model.norm.weight".into(), t("final_norm.weight")));
            if !c.tied_embeddings {
                out.push(("lm_head.weight".into(), t("lm_head")));
            }
        }
        Arch::Gpt2 => {
            out.push(("transformer.wte.weight".into(), t("embed")));
            out.push(("transformer.wpe.weight".into(), t("pos_embed")));
            for i in 0..c.n_layers {
                let l = |s: &str| t(&format!("layers.{i}.{s}"));
                let p = format!("transformer.h.{i}.");
                // Conv1D stores [in, out]: the transposes of the canonical [out, in].
                let (q, k, v) = (l("wq").transpose(), l("wk").transpose(), l("wv").transpose());
                let d = c.hidden;
                let mut c_attn = vec![0.0; d * 3 * d];
                for r in 0..d {
                    for (j, m) in [&q, &k, &v].into_iter().enumerate() {
                        c_attn[r * 3 * d + j * d..r * 3 * d + (j + 1) * d].copy_from_slice(&m.data[r * d..(r + 1) * d]);
                    }
                }
                let bias: Vec<f32> = [l("bq"), l("bk"), l("bv")].into_iter().flat_map(|b| b.data).collect();
                out.push((format!("{p}attn.c_attn.weight"), HostTensor::new(vec![d, 3 * d], c_attn)));
                out.push((format!("{p}attn.c_attn.bias"), HostTensor::new(vec![3 * d], bias)));
                for (hf_name, canon, transposed) in GPT2_LAYER {
                    out.push((format!("{p}{hf_name}"), if transposed { l(canon).transpose() } else { l(canon) }));
                }
            }
            out.push(("transformer.ln_f.weight".into(), t("final_norm.weight")));
            out.push(("transformer.ln_f.bias".into(), t("final_norm.bias")));
            if !c.tied_embeddings {
                out.push(("lm_head.weight".into(), t("lm_head")));
            }
        }
    }
    out
}

/// Writes `dir/model.safetensors` and `dir/config.json` (plus `extra` metadata in the header).
/// Each goes to a temporary name, is flushed and renamed; the model first, so an interrupted save
/// never pairs a new config.json with an old model. A failed write removes its temporary file,
/// and temporaries an earlier interrupted save left are removed first.
pub fn save_dir(w: &Weights, dir: &Path, dtype: SaveDtype, extra: Option<HashMap<String, String>>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    let path = dir.join("model.safetensors");
    let cfg_path = dir.join("config.json");
    let tmp = dir.join("model.safetensors.partial");
    let cfg_tmp = dir.join("config.json.partial");
    for stale in [&tmp, &cfg_tmp] {
        let _ = std::fs::remove_file(stale);
    }
    let mut config = w.config.clone();
    config.rope_style = RopeStyle::Half;
    config.rope_scaling = config.rope_scaling_by_rule().ok_or_else(|| {
        err(&cfg_path, "the model's RoPE frequency divisors (a GGUF's rope_freqs) follow no rule a Hugging Face config can state (linear or Llama 3.1's): not saved in this format; a delta or a GGUF export keeps them".to_string())
    })?;
    let cfg_text = serde_json::to_string_pretty(&config_json(&config)).expect("JSON of plain values");
    let owned: Vec<(String, Owned)> = to_hf(w).into_iter().map(|(n, t)| (n, encode(&t, dtype))).collect();
    let mut meta = extra.unwrap_or_default();
    meta.insert("format".into(), "pt".into());
    let written = safetensors::serialize_to_file(owned.iter().map(|(n, o)| (n.as_str(), o)), Some(meta), &tmp)
        .map_err(|e| err(&tmp, format!("cannot write: {e}")))
        .and_then(|_| crate::store::sync_and_rename(&tmp, &path))
        .and_then(|_| std::fs::write(&cfg_tmp, cfg_text).map_err(|e| err(&cfg_tmp, format!("cannot write: {e}"))))
        .and_then(|_| crate::store::sync_and_rename(&cfg_tmp, &cfg_path));
    if written.is_err() {
        for t in [&tmp, &cfg_tmp] {
            let _ = std::fs::remove_file(t);
        }
    }
    written
}

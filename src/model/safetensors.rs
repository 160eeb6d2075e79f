//! Hugging Face checkpoints: a directory with config.json and *.safetensors, for the Llama
//! (`model.layers.N.self_attn.q_proj…`) and GPT-2 (`transformer.h.N.attn.c_attn…`, Conv1D
//! layout, i.e. [in, out]) families, in f32, f16 or bf16. The saver writes the same names plus
//! config.json, so an edited model loads in transformers.

use super::config::{Arch, Config, RopeStyle};
use super::weights::{HostTensor, Weights};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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
/// (row h·D + 2i + s), Hugging Face rotates halves (row h·D + s·D/2 + i).
pub fn permute_rope_rows(w: &HostTensor, head_dim: usize, to_half: bool) -> HostTensor {
    let cols = w.shape[1];
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

fn get_usize(cfg: &Value, file: &Path, keys: &[&str]) -> Result<usize> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_u64))
        .map(|v| v as usize)
        .ok_or_else(|| err(file, format!("field '{}' is missing or not a number", keys[0])))
}

fn get_f32(cfg: &Value, keys: &[&str], default: f32) -> f32 {
    keys.iter().find_map(|k| cfg.get(*k).and_then(Value::as_f64)).map(|v| v as f32).unwrap_or(default)
}

fn get_id(cfg: &Value, key: &str) -> Option<u32> {
    match cfg.get(key)? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

/// Reads config.json into a `Config`.
pub fn parse_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| err(path, format!("not valid JSON: {e}")))?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "gpt2" => Arch::Gpt2,
        other => return Err(err(path, format!("model_type '{other}' is not supported (llama, gpt2)"))),
    };
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
                n_kv_heads: get_usize(&cfg, path, &["num_key_value_heads"]).unwrap_or(n_heads),
                head_dim: get_usize(&cfg, path, &["head_dim"]).unwrap_or(hidden / n_heads.max(1)),
                ffn_hidden: get_usize(&cfg, path, &["intermediate_size"])?,
                norm_eps: get_f32(&cfg, &["rms_norm_eps"], 1e-6),
                rope_theta: get_f32(&cfg, &["rope_theta"], 10000.0),
                rope_style: RopeStyle::Half,
                max_seq_len: get_usize(&cfg, path, &["max_position_embeddings"]).unwrap_or(2048),
                tied_embeddings: cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
                bos_token_id: get_id(&cfg, "bos_token_id"),
                eos_token_id: get_id(&cfg, "eos_token_id"),
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
                ffn_hidden: get_usize(&cfg, path, &["n_inner"]).unwrap_or(4 * hidden),
                norm_eps: get_f32(&cfg, &["layer_norm_epsilon"], 1e-5),
                rope_theta: 0.0,
                rope_style: RopeStyle::Half,
                max_seq_len: get_usize(&cfg, path, &["n_positions", "n_ctx"])?,
                tied_embeddings: cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
                bos_token_id: get_id(&cfg, "bos_token_id"),
                eos_token_id: get_id(&cfg, "eos_token_id"),
            }
        }
    };
    if config.n_heads == 0 || config.n_kv_heads == 0 || config.n_heads % config.n_kv_heads != 0 || config.hidden == 0 {
        return Err(err(path, format!("inconsistent head counts: {} query heads, {} key/value heads", config.n_heads, config.n_kv_heads)));
    }
    Ok(config)
}

/// An f32 as the decimal it was written as (1e-5, not 9.999999747378752e-6).
fn short(x: f32) -> f64 {
    x.to_string().parse().expect("an f32 prints as a number")
}

pub fn config_json(c: &Config) -> Value {
    match c.arch {
        Arch::Llama => json!({
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
        }),
        Arch::Gpt2 => json!({
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
        }),
    }
}

fn to_f32(file: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(err(file, format!("tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"))),
    })
}

/// Every tensor of every *.safetensors file in `dir`, by its file name.
fn read_tensors(dir: &Path) -> Result<HashMap<String, HostTensor>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(dir, "no .safetensors file in this directory"));
    }
    let mut out = HashMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| err(&file, format!("cannot read: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(&file, format!("not a valid safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let data = to_f32(&file, &name, view.dtype(), view.data())?;
            out.insert(name, HostTensor::new(view.shape().to_vec(), data));
        }
    }
    Ok(out)
}

/// Loads a Hugging Face checkpoint directory into canonical weights.
pub fn load_dir(dir: &Path) -> Result<Weights> {
    let config = parse_config(&dir.join("config.json"))?;
    let mut hf = read_tensors(dir)?;
    let source = dir.display().to_string();
    let mut take = |names: &[String]| -> Result<HostTensor> {
        names
            .iter()
            .find_map(|n| hf.remove(n))
            .ok_or_else(|| err(dir, format!("tensor '{}' is missing", names[0])))
    };
    let mut t = BTreeMap::new();
    match config.arch {
        Arch::Llama => {
            let n = |s: &str| vec![s.to_string()];
            t.insert("embed".into(), take(&n("model.embed_tokens.weight"))?);
            for i in 0..config.n_layers {
                let p = format!("model.layers.{i}.");
                for (hf_name, canon) in [
                    ("input_layernorm.weight", "attn_norm.weight"),
                    ("self_attn.q_proj.weight", "wq"),
                    ("self_attn.k_proj.weight", "wk"),
                    ("self_attn.v_proj.weight", "wv"),
                    ("self_attn.o_proj.weight", "wo"),
                    ("post_attention_layernorm.weight", "mlp_norm.weight"),
                    ("mlp.gate_proj.weight", "w_gate"),
                    ("mlp.up_proj.weight", "w_up"),
                    ("mlp.down_proj.weight", "w_down"),
                ] {
                    t.insert(format!("layers.{i}.{canon}"), take(&n(&format!("{p}{hf_name}")))?);
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
                t.insert(layer("wo"), conv("attn.c_proj.weight", &mut take)?);
                t.insert(layer("bo"), take(&n(&format!("{p}attn.c_proj.bias")))?);
                t.insert(layer("w_up"), conv("mlp.c_fc.weight", &mut take)?);
                t.insert(layer("b_up"), take(&n(&format!("{p}mlp.c_fc.bias")))?);
                t.insert(layer("w_down"), conv("mlp.c_proj.weight", &mut take)?);
                t.insert(layer("b_down"), take(&n(&format!("{p}mlp.c_proj.bias")))?);
                t.insert(layer("attn_norm.weight"), take(&n(&format!("{p}ln_1.weight")))?);
                t.insert(layer("attn_norm.bias"), take(&n(&format!("{p}ln_1.bias")))?);
                t.insert(layer("mlp_norm.weight"), take(&n(&format!("{p}ln_2.weight")))?);
                t.insert(layer("mlp_norm.bias"), take(&n(&format!("{p}ln_2.bias")))?);
            }
            t.insert("final_norm.weight".into(), take(&n("ln_f.weight"))?);
            t.insert("final_norm.bias".into(), take(&n("ln_f.bias"))?);
            if !config.tied_embeddings {
                t.insert("lm_head".into(), take(&["lm_head.weight".to_string()])?);
            }
        }
    }
    let weights = Weights { config, tensors: t };
    weights.validate(&source)?;
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
                let qk = |s: &str| {
                    let x = l(s);
                    if c.rope_style == RopeStyle::Adjacent { permute_rope_rows(&x, c.head_dim, true) } else { x }
                };
                let p = format!("model.layers.{i}.");
                out.push((format!("{p}input_layernorm.weight"), l("attn_norm.weight")));
                out.push((format!("{p}self_attn.q_proj.weight"), qk("wq")));
                out.push((format!("{p}self_attn.k_proj.weight"), qk("wk")));
                out.push((format!("{p}self_attn.v_proj.weight"), l("wv")));
                out.push((format!("{p}self_attn.o_proj.weight"), l("wo")));
                out.push((format!("{p}post_attention_layernorm.weight"), l("mlp_norm.weight")));
                out.push((format!("{p}mlp.gate_proj.weight"), l("w_gate")));
                out.push((format!("{p}mlp.up_proj.weight"), l("w_up")));
                out.push((format!("{p}mlp.down_proj.weight"), l("w_down")));
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
                out.push((format!("{p}attn.c_proj.weight"), l("wo").transpose()));
                out.push((format!("{p}attn.c_proj.bias"), l("bo")));
                out.push((format!("{p}mlp.c_fc.weight"), l("w_up").transpose()));
                out.push((format!("{p}mlp.c_fc.bias"), l("b_up")));
                out.push((format!("{p}mlp.c_proj.weight"), l("w_down").transpose()));
                out.push((format!("{p}mlp.c_proj.bias"), l("b_down")));
                out.push((format!("{p}ln_1.weight"), l("attn_norm.weight")));
                out.push((format!("{p}ln_1.bias"), l("attn_norm.bias")));
                out.push((format!("{p}ln_2.weight"), l("mlp_norm.weight")));
                out.push((format!("{p}ln_2.bias"), l("mlp_norm.bias")));
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
pub fn save_dir(w: &Weights, dir: &Path, dtype: SaveDtype, extra: Option<HashMap<String, String>>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    let mut config = w.config.clone();
    config.rope_style = RopeStyle::Half;
    let cfg_path = dir.join("config.json");
    let cfg_text = serde_json::to_string_pretty(&config_json(&config)).expect("JSON of plain values");
    std::fs::write(&cfg_path, cfg_text).map_err(|e| err(&cfg_path, format!("cannot write: {e}")))?;
    let owned: Vec<(String, Owned)> = to_hf(w).into_iter().map(|(n, t)| (n, encode(&t, dtype))).collect();
    let mut meta = extra.unwrap_or_default();
    meta.insert("format".into(), "pt".into());
    let path = dir.join("model.safetensors");
    // Write to a temporary name first so a failure never leaves a half-written model behind.
    let tmp = dir.join("model.safetensors.partial");
    safetensors::serialize_to_file(owned.iter().map(|(n, o)| (n.as_str(), o)), Some(meta), &tmp)
        .map_err(|e| err(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, format!("cannot move into place: {e}")))?;
    Ok(())
}

//! Model hyper-parameters, the same struct for every family and file format.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// Llama family (SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, no biases.
    Llama,
    /// GPT-2 family: LayerNorm, learned positions, GELU MLP, biases everywhere.
    Gpt2,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeStyle {
    /// Rotate adjacent pairs (2i, 2i+1): GGUF's layout (llama.cpp permutes Q/K rows for it).
    Adjacent,
    /// Rotate halves (i, i + head_dim/2): Hugging Face's `rotate_half`.
    Half,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    /// Width of the residual stream, d.
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Width of the MLP hidden layer (the input of the down-projection).
    pub ffn_hidden: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Longest sequence the model was trained for.
    pub max_seq_len: usize,
    pub tied_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Config {
    /// Every numeric setting in range: an epsilon or RoPE base that is NaN, negative or zero
    /// loads fine and then yields NaN logits, so it is refused at load. On failure: the field
    /// (loaders name their own key for it) and what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(("norm_eps", format!("the norm epsilon is {}; expected a small positive number", self.norm_eps)));
        }
        if self.arch == Arch::Llama && !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(("rope_theta", format!("the RoPE base is {}; expected a finite number above 1", self.rope_theta)));
        }
        for (field, v) in [("hidden", self.hidden), ("vocab_size", self.vocab_size), ("n_layers", self.n_layers), ("ffn_hidden", self.ffn_hidden), ("head_dim", self.head_dim), ("max_seq_len", self.max_seq_len)] {
            if v == 0 {
                return Err((field, "is 0".into()));
            }
        }
        for (field, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= self.vocab_size) {
                return Err((field, format!("is {id}, outside the vocabulary of {}", self.vocab_size)));
            }
        }
        // A corrupt head width can wrap heads × width round to the real tensors' size.
        if self.n_heads.checked_mul(self.head_dim).is_none() || self.n_kv_heads.checked_mul(self.head_dim).is_none() {
            return Err(("head_dim", format!("is {}: times {} heads it overflows", self.head_dim, self.n_heads)));
        }
        if self.head_dim > crate::ops::attention::MAX_HEAD_DIM {
            return Err(("head_dim", format!("is {}, above the attention kernel's {}", self.head_dim, crate::ops::attention::MAX_HEAD_DIM)));
        }
        if self.arch == Arch::Llama && !self.head_dim.is_multiple_of(2) {
            return Err(("head_dim", format!("is {}; RoPE needs an even head width", self.head_dim)));
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// The shape every canonical tensor must have (see the table in `model`).
    pub fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        let (d, f, v) = (self.hidden, self.ffn_hidden, self.vocab_size);
        let (q, kv) = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim);
        let gpt2 = self.arch == Arch::Gpt2;
        let shape = match name {
            "embed" => vec![v, d],
            "pos_embed" if gpt2 => vec![self.max_seq_len, d],
            "lm_head" if !self.tied_embeddings => vec![v, d],
            "final_norm.weight" => vec![d],
            "final_norm.bias" if gpt2 => vec![d],
            _ => {
                let rest = name.strip_prefix("layers.")?;
                let (idx, field) = rest.split_once('.')?;
                if idx.parse::<usize>().ok()? >= self.n_layers {
                    return None;
                }
                match field {
                    "attn_norm.weight" | "mlp_norm.weight" => vec![d],
                    "attn_norm.bias" | "mlp_norm.bias" | "bo" | "b_down" if gpt2 => vec![d],
                    "wq" => vec![q, d],
                    "wk" | "wv" => vec![kv, d],
                    "bq" if gpt2 => vec![q],
                    "bk" | "bv" if gpt2 => vec![kv],
                    "wo" => vec![d, q],
                    "w_gate" if !gpt2 => vec![f, d],
                    "w_up" => vec![f, d],
                    "b_up" if gpt2 => vec![f],
                    "w_down" => vec![d, f],
                    _ => return None,
                }
            }
        };
        Some(shape)
    }

    /// Every canonical tensor name this configuration needs.
    pub fn tensor_names(&self) -> Vec<String> {
        let gpt2 = self.arch == Arch::Gpt2;
        let mut names = vec!["embed".to_string()];
        if gpt2 {
            names.push("pos_embed".into());
        }
        for i in 0..self.n_layers {
            let mut fields = vec!["attn_norm.weight", "wq", "wk", "wv", "wo", "mlp_norm.weight", "w_up", "w_down"];
            if gpt2 {
                fields.extend(["attn_norm.bias", "bq", "bk", "bv", "bo", "mlp_norm.bias", "b_up", "b_down"]);
            } else {
                fields.push("w_gate");
            }
            names.extend(fields.into_iter().map(|f| format!("layers.{i}.{f}")));
        }
        names.push("final_norm.weight".into());
        if gpt2 {
            names.push("final_norm.bias".into());
        }
        if !self.tied_embeddings {
            names.push("lm_head".into());
        }
        names
    }
}

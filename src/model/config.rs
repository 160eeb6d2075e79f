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

/// How a model stretches RoPE's frequencies past the context it was first trained on. Every
/// kind changes the rotation at every position, a short prompt's included, so a model that
/// asks for one and runs without it gives wrong logits from the first token on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    #[default]
    None,
    /// Every frequency divided by `factor` (positions interpolated): Hugging Face's "linear",
    /// GGUF's `rope.scaling.type = linear`.
    Linear { factor: f64 },
    /// Llama 3.1's rule (Hugging Face's "llama3"): frequencies whose wavelength is under
    /// original_max_position_embeddings / high_freq_factor are kept, those over
    /// … / low_freq_factor divided by `factor`, and those between blended smoothly.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// One divisor per frequency, as GGUF stores them (`rope_freqs.weight`, llama.cpp's
    /// freq_factors: its converter writes Llama 3.1's rule this way).
    Divisors(Vec<f32>),
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl RopeScaling {
    pub fn is_none(&self) -> bool {
        *self == RopeScaling::None
    }
}

/// RoPE as the kernels apply it: how a head's dimensions pair up, and each pair's frequency
/// (radians per position, in f64: the kernels round each once).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub inv_freq: Vec<f64>,
}

impl Rope {
    /// Unscaled RoPE over heads of `head_dim`: frequency i is theta^(−2i/head_dim).
    pub fn plain(theta: f64, head_dim: usize, style: RopeStyle) -> Rope {
        let inv_freq = (0..head_dim / 2).map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64)).collect();
        Rope { style, inv_freq }
    }
}

/// Llama 3.1's rule fitted to divisors d_i of base frequencies f_i, the largest divisor being
/// `factor`: a frequency between the kept (d = 1) and the divided (d = factor) is blended by
/// s = (C/λ − low)/(high − low), λ = 2π/f, which is linear in 1/λ; with high − low = 1 (only
/// the thresholds C/low and C/high matter) a line through those frequencies' s gives C and
/// low. Needs two blended frequencies; None otherwise. Returns the rounded parameters, then the
/// exact ones.
fn llama3_fit(base: &[f64], divisors: &[f32], factor: f64) -> Option<Vec<RopeScaling>> {
    let blended: Vec<(f64, f64)> = base
        .iter()
        .zip(divisors)
        .filter(|(_, &d)| (d as f64 - 1.0).abs() > 1e-6 && (d as f64 - factor).abs() > 1e-6 * factor)
        .map(|(&f, &d)| (f / (2.0 * std::f64::consts::PI), (1.0 / d as f64 - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    if blended.len() < 2 || factor <= 1.0 {
        return None;
    }
    let n = blended.len() as f64;
    let (mx, my) = (blended.iter().map(|p| p.0).sum::<f64>() / n, blended.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = blended.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let context = blended.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let low = context * mx - my;
    if !(context > 0.0 && low > 0.0) {
        return None;
    }
    // The same thresholds with low = 1, the form Llama 3.1's configs take (low 1, high 4, a
    // context of 8192): the fit's float noise rounded off where the caller's check still
    // passes, since llama.cpp's converter reads the context as a whole number.
    let (context, high) = (context / low, (low + 1.0) / low);
    let round = |x: f64, step: f64| (x / step).round() * step;
    Some(vec![
        RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: round(high, 1e-3), original_max_position_embeddings: context.round() },
        RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: high, original_max_position_embeddings: context },
    ])
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
    /// Left out of the serialised form when there is none, so that an unscaled model's
    /// config (which keys caches and sessions) reads as it always did.
    #[serde(default, skip_serializing_if = "RopeScaling::is_none")]
    pub rope_scaling: RopeScaling,
    /// Biases on the query, key and value projections (`layers.{i}.bq`, `.bk`, `.bv`) of a
    /// Llama-family model: Qwen2's. (GPT-2 has them always.) Left out of the serialised form
    /// when false, as `rope_scaling` is.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
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
        self.check_rope_scaling().map_err(|detail| ("rope_scaling", detail))?;
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

    fn check_rope_scaling(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| if v.is_finite() && v > 0.0 { Ok(()) } else { Err(format!("{name} is {v}; expected a finite number above 0")) };
        match &self.rope_scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("factor", *factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                positive("original_max_position_embeddings", *original_max_position_embeddings)?;
                // The blend divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    return Err(format!("high_freq_factor {high_freq_factor} is not above low_freq_factor {low_freq_factor}"));
                }
                Ok(())
            }
            RopeScaling::Divisors(d) => {
                if d.len() != self.head_dim / 2 {
                    return Err(format!("{} frequency divisors for heads of {} (expected {})", d.len(), self.head_dim, self.head_dim / 2));
                }
                match d.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
                    Some(i) => Err(format!("frequency divisor {i} is {}; expected a finite number above 0", d[i])),
                    None => Ok(()),
                }
            }
        }
    }

    /// RoPE of this model: its pairing and every pair's frequency, scaled as the model asks
    /// (the rules as transformers' `rope_utils` and llama.cpp apply them).
    pub fn rope(&self) -> Rope {
        let mut rope = Rope::plain(self.rope_theta as f64, self.head_dim, self.rope_style);
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope.inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Divisors(d) => rope.inv_freq.iter_mut().zip(d).for_each(|(f, &d)| *f /= d as f64),
            &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: context } => {
                let (low_wavelen, high_wavelen) = (context / low_freq_factor, context / high_freq_factor);
                for f in &mut rope.inv_freq {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        rope
    }

    /// This model's RoPE scaling in a form Hugging Face's config.json can say: a GGUF's
    /// per-frequency divisors as the rule they were made by (none, linear, or Llama 3.1's, its
    /// parameters fitted to the divisors and the fit checked to reproduce every frequency to
    /// 1e-6), None where no such rule gives them.
    pub fn rope_scaling_by_rule(&self) -> Option<RopeScaling> {
        let RopeScaling::Divisors(divisors) = &self.rope_scaling else { return Some(self.rope_scaling.clone()) };
        let factor = divisors.iter().fold(0.0f64, |m, &d| m.max(d as f64));
        let candidates = [RopeScaling::None, RopeScaling::Linear { factor }];
        let llama3 = llama3_fit(&Rope::plain(self.rope_theta as f64, self.head_dim, self.rope_style).inv_freq, divisors, factor);
        let wanted = self.rope().inv_freq;
        candidates.into_iter().chain(llama3.into_iter().flatten()).find(|rule| {
            let by_rule = Config { rope_scaling: rule.clone(), ..self.clone() }.rope().inv_freq;
            by_rule.iter().zip(&wanted).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs())
        })
    }

    /// The per-frequency divisors this model's RoPE scaling amounts to, as a GGUF stores them
    /// (`rope_freqs.weight`): each unscaled frequency over its scaled one.
    pub fn rope_divisors(&self) -> Vec<f32> {
        let plain = Rope::plain(self.rope_theta as f64, self.head_dim, self.rope_style).inv_freq;
        plain.iter().zip(self.rope().inv_freq).map(|(p, s)| (p / s) as f32).collect()
    }

    /// Whether this model's layers carry the bias `field` (bq, bk, bv, bo, b_up, b_down):
    /// GPT-2's carry all of them, Qwen2's those of q, k and v.
    pub fn has_bias(&self, field: &str) -> bool {
        self.arch == Arch::Gpt2 || (self.qkv_bias && matches!(field, "bq" | "bk" | "bv"))
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
                    "bq" if self.has_bias("bq") => vec![q],
                    "bk" | "bv" if self.has_bias(field) => vec![kv],
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
                if self.qkv_bias {
                    fields.extend(["bq", "bk", "bv"]);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The divisors llama.cpp's converter writes (in f32) for Llama 3.1 8B and Llama 3.2 1B
    /// fit back to the published rule exactly, the form their configs state.
    #[test]
    fn real_llama3_divisors_fit_back_to_their_rule() {
        for (factor, head_dim) in [(8.0, 128), (32.0, 64)] {
            let rule = RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 };
            let config = Config { head_dim, rope_theta: 500_000.0, rope_scaling: rule.clone(), ..Config::smollm2_135m() };
            let from_gguf = Config { rope_scaling: RopeScaling::Divisors(config.rope_divisors()), ..config.clone() };
            assert_eq!(from_gguf.rope_scaling_by_rule(), Some(rule), "factor {factor}, heads of {head_dim}");
        }
    }
}

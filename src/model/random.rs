//! Models with random weights and real shapes: tiny ones for tests, SmolLM2's shapes for speed
//! measurements where the model file is absent (speed does not depend on the values).

use super::config::{Arch, Config, RopeStyle};
use super::weights::{HostTensor, Weights};
use rand::Rng;

impl Config {
    pub fn smollm2_135m() -> Config {
        Config {
            arch: Arch::Llama,
            vocab_size: 49152,
            hidden: 576,
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            ffn_hidden: 1536,
            norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_style: RopeStyle::Adjacent,
            rope_scaling: Default::default(),
            qkv_bias: false,
            max_seq_len: 8192,
            tied_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// A Llama small enough for the f64 oracle, with grouped-query attention and odd widths.
    pub fn tiny_llama() -> Config {
        Config {
            arch: Arch::Llama,
            vocab_size: 97,
            hidden: 48,
            n_layers: 3,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 8,
            ffn_hidden: 75,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_style: RopeStyle::Half,
            rope_scaling: Default::default(),
            qkv_bias: false,
            max_seq_len: 64,
            tied_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    pub fn tiny_gpt2() -> Config {
        Config {
            arch: Arch::Gpt2,
            vocab_size: 101,
            hidden: 40,
            n_layers: 2,
            n_heads: 5,
            n_kv_heads: 5,
            head_dim: 8,
            ffn_hidden: 160,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            rope_style: RopeStyle::Half,
            rope_scaling: Default::default(),
            qkv_bias: false,
            max_seq_len: 32,
            tied_embeddings: true,
            bos_token_id: Some(100),
            eos_token_id: Some(100),
        }
    }
}

/// Random weights scaled like a trained model's: matrices uniform with variance 1/in, norm
/// gains near 1, small biases, so activations stay O(1) through the layers.
pub fn random_weights(config: &Config, seed: u64) -> Weights {
    let mut rng = crate::testing::rng(seed);
    let mut tensors = std::collections::BTreeMap::new();
    for name in config.tensor_names() {
        let shape = config.expected_shape(&name).expect("names come from the config");
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.random_range(-0.2f32..0.2)).collect()
        } else if shape.len() == 1 {
            (0..n).map(|_| rng.random_range(-0.1f32..0.1)).collect()
        } else {
            let bound = (3.0 / shape[1] as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        tensors.insert(name, HostTensor::new(shape, data));
    }
    Weights { config: config.clone(), tensors }
}

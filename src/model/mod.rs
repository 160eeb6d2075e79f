//! The language model: configuration, weights in one canonical naming whatever file they came
//! from (GGUF or Hugging Face safetensors), tokenizer, and the forward pass.
//!
//! Canonical tensor names and layouts (all f32, row-major; matrices are [out, in], so y = W x,
//! the layout of both Hugging Face `nn.Linear` and GGUF):
//!
//! | name | shape | family |
//! |---|---|---|
//! | `embed` | [vocab, d] | both |
//! | `pos_embed` | [n_ctx, d] | GPT-2 |
//! | `layers.{i}.attn_norm.weight`, `.bias` | [d] | bias: GPT-2 |
//! | `layers.{i}.wq`, `.wk`, `.wv` | [heads·head_dim, d] | both |
//! | `layers.{i}.bq`, `.bk`, `.bv` | [heads·head_dim] | GPT-2 |
//! | `layers.{i}.wo` | [d, n_heads·head_dim] | both |
//! | `layers.{i}.bo` | [d] | GPT-2 |
//! | `layers.{i}.mlp_norm.weight`, `.bias` | [d] | bias: GPT-2 |
//! | `layers.{i}.w_gate` | [ffn, d] | Llama |
//! | `layers.{i}.w_up` | [ffn, d] | both |
//! | `layers.{i}.b_up` | [ffn] | GPT-2 |
//! | `layers.{i}.w_down` | [d, ffn] | both: the matrix knowledge edits rewrite |
//! | `layers.{i}.b_down` | [d] | GPT-2 |
//! | `final_norm.weight`, `.bias` | [d] | bias: GPT-2 |
//! | `lm_head` | [vocab, d] | only when embeddings are not tied |

pub mod backward;
pub mod batch;
pub mod config;
pub mod fetch;
pub mod forward;
pub mod generate;
pub mod load;
pub mod gguf;
pub mod names;
pub mod probe;
pub mod random;
pub mod safetensors;
pub mod tokenizer;
pub mod tuning;
pub mod weights;

pub use config::{Arch, Config, Rope, RopeScaling, RopeStyle};
pub use gguf::{load_gguf, GgufMeta};
pub use tokenizer::Tok;
pub use weights::{HostTensor, Weights};

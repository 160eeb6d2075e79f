//! The CPU oracle: plain-loop f64 references of every GPU op, written for clarity, not speed.
//! GPU results are checked against these.

pub mod activation;
pub mod attention;
pub mod edit;
pub mod elementwise;
pub mod jacobi;
pub mod loss;
pub mod matmul;
pub mod model;
pub mod norm;
pub mod ortho;
pub mod reduce;
pub mod rope;

pub use activation::{add_bias, gelu, gelu_bwd, silu_mul, silu_mul_bwd};
pub use attention::{attention, attention_bwd};
pub use elementwise::{add, axpy, copy_strided, gather_rows, scale, scatter_add_rows, softmax_rows};
pub use loss::{log_softmax_bwd, log_softmax_rows, softmax_bwd};
pub use matmul::gemm;
pub use norm::{layer_norm, layer_norm_bwd, rms_norm, rms_norm_bwd};
pub use reduce::{reduce_all, reduce_rows};
pub use rope::{rope, rope_bwd};

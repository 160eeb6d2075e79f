//! Singular subspaces of a matrix and how other matrices sit in them: the top-k basis of an
//! original weight, the share of an update in its spans, and the overlap of two bases.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::reduce::{frobenius, reduce_all_value, ReduceOp};
use serde::{Deserialize, Serialize};

/// The top-k singular triplets of an original weight.
pub struct Basis {
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: Vec<f64>,
}

/// How much of an update lies in the protected subspaces.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Leak {
    /// ‖U_kᵀ ΔW‖_F / ‖ΔW‖_F.
    pub left: f64,
    /// ‖ΔW V_k‖_F / ‖ΔW‖_F.
    pub right: f64,
}

impl Leak {
    /// The shares of `x` (‖x‖_F = `norm`) in the column span of `u` and the row span of `vᵀ`:
    /// ‖uᵀx‖_F / norm and ‖x v‖_F / norm.
    pub fn of(gpu: &Gpu, u: &Tensor, v: &Tensor, x: &Tensor, norm: f64) -> Result<Leak> {
        let left = frobenius(gpu, &gemm(gpu, u, x, None, Gemm { trans_a: true, ..Gemm::default() })?)? / norm;
        let right = frobenius(gpu, &gemm(gpu, x, v, None, Gemm::default())?)? / norm;
        Ok(Leak { left, right })
    }
}

/// ‖Aᵀ B‖²_F / k for two n×k orthonormal bases.
pub fn subspace_similarity(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<f64> {
    let k = a.shape()[1];
    let p = gemm(gpu, a, b, None, Gemm { trans_a: true, ..Gemm::default() })?;
    Ok(reduce_all_value(gpu, &p, ReduceOp::SumSq)? as f64 / k as f64)
}

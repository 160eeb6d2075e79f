//! A proposed change of one weight matrix, ΔW, dense or as low-rank factors ΔW = L Rᵀ.
//!
//! MEMIT's and AlphaEdit's updates have rank at most the batch size and ROME's rank one, and the
//! REVIVE filter keeps that rank: (I − UUᵀ) L Rᵀ (I − VVᵀ) = [(I − UUᵀ)L] [(I − VVᵀ)R]ᵀ. So the
//! guard and the journal stay O((m + n)·r) for them; RECT and PRUNE produce dense updates.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::elementwise::axpy;
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::reduce::frobenius;

/// One stored part of an update: its name ("dense", "left", "right"), shape and values.
pub type HostPart = (&'static str, Vec<usize>, Vec<f32>);

#[derive(Clone)]
pub enum Delta {
    Dense(Tensor),
    /// ΔW = left · rightᵀ with left m×r and right n×r.
    LowRank { left: Tensor, right: Tensor },
}

/// One matrix's update, named as the model names its weights.
#[derive(Clone)]
pub struct Update {
    pub matrix: String,
    pub delta: Delta,
}

impl Delta {
    /// Checks the factors agree; the shape of ΔW.
    pub fn shape(&self) -> Result<[usize; 2]> {
        match self {
            Delta::Dense(t) => match *t.shape() {
                [m, n] => Ok([m, n]),
                _ => Err(Error::shape("update", format!("a dense ΔW of shape {:?}", t.shape()))),
            },
            Delta::LowRank { left, right } => match (left.shape(), right.shape()) {
                (&[m, r], &[n, r2]) if r == r2 && r > 0 => Ok([m, n]),
                (l, r) => Err(Error::shape("update", format!("low-rank factors {l:?} and {r:?} do not form L·Rᵀ"))),
            },
        }
    }

    pub fn rank(&self) -> Option<usize> {
        match self {
            Delta::Dense(_) => None,
            Delta::LowRank { left, .. } => Some(left.shape()[1]),
        }
    }

    /// ΔW as one m×n tensor.
    pub fn dense(&self, gpu: &Gpu) -> Result<Tensor> {
        self.shape()?;
        match self {
            Delta::Dense(t) => Ok(t.clone()),
            Delta::LowRank { left, right } => gemm(gpu, left, right, None, Gemm { trans_b: true, ..Gemm::default() }),
        }
    }

    /// ‖ΔW‖_F; for factors from the r×r Gram matrices, ‖L Rᵀ‖²_F = Σ (LᵀL) ∘ (RᵀR).
    pub fn norm(&self, gpu: &Gpu) -> Result<f64> {
        self.shape()?;
        match self {
            Delta::Dense(t) => frobenius(gpu, t),
            Delta::LowRank { left, right } => {
                let at = Gemm { trans_a: true, ..Gemm::default() };
                let gl = gpu.download(&gemm(gpu, left, left, None, at)?)?;
                let gr = gpu.download(&gemm(gpu, right, right, None, at)?)?;
                let sq: f64 = gl.iter().zip(&gr).map(|(&a, &b)| a as f64 * b as f64).sum();
                Ok(sq.max(0.0).sqrt())
            }
        }
    }

    /// W ← W + ΔW, in place.
    pub fn add_to(&self, gpu: &Gpu, w: &Tensor) -> Result<()> {
        let shape = self.shape()?;
        if w.shape() != shape {
            return Err(Error::shape("update", format!("ΔW is {shape:?}, the weight {:?}", w.shape())));
        }
        match self {
            Delta::Dense(t) => axpy(gpu, 1.0, t, w),
            Delta::LowRank { left, right } => gemm(gpu, left, right, Some(w), Gemm { trans_b: true, beta: 1.0, ..Gemm::default() }).map(|_| ()),
        }
    }

    /// The host values: ("dense", m×n) or ("left", m×r) and ("right", n×r).
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<HostPart>> {
        self.shape()?;
        Ok(match self {
            Delta::Dense(t) => vec![("dense", t.shape().to_vec(), gpu.download(t)?)],
            Delta::LowRank { left, right } => vec![
                ("left", left.shape().to_vec(), gpu.download(left)?),
                ("right", right.shape().to_vec(), gpu.download(right)?),
            ],
        })
    }
}

/// How large an update may be before it is refused as exploding: ‖ΔW‖_F ≤ ratio·‖W‖_F.
pub const DEFAULT_MAX_UPDATE_RATIO: f64 = 2.0;

/// Refuses an update that is not finite or larger than `max_ratio`·‖W‖_F, naming the matrix.
pub fn check_update(gpu: &Gpu, update: &Update, w: &Tensor, max_ratio: f64) -> Result<f64> {
    let shape = update.delta.shape()?;
    if w.shape() != shape {
        return Err(Error::shape("update", format!("ΔW of {} is {shape:?}, the weight {:?}", update.matrix, w.shape())));
    }
    let norm = update.delta.norm(gpu)?;
    if !norm.is_finite() {
        return Err(Error::Numeric(format!("the update of {} is not finite (‖ΔW‖ = {norm})", update.matrix)));
    }
    let w_norm = frobenius(gpu, w)?;
    if norm > max_ratio * w_norm {
        return Err(Error::Numeric(format!(
            "the update of {} explodes: ‖ΔW‖ = {norm:.4e} is more than {max_ratio} × ‖W‖ = {w_norm:.4e}",
            update.matrix
        )));
    }
    Ok(norm)
}

//! AlphaEdit (Fang et al. 2025): MEMIT's layer loop with the update projected into the null
//! space of the preserved knowledge, ΔW = R Yᵀ with
//!   Y = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K,
//! P = I − Q Qᵀ where Q holds C0's eigenvectors whose eigenvalue is at least `threshold`·λ_max
//! (relative, not AlphaEdit's absolute 2·10⁻²: see assets/hparams/alphaedit/smollm2.json), and
//! K_p K_pᵀ the running sum of the keys of this session's earlier batches (never global).
//!
//! C0's eigenvectors come from a full f64 eigendecomposition on the host, once per layer: the
//! threshold needs the whole spectrum to count the null space, and 1536² is seconds of work
//! against a session of minutes. The solve is a dense m×m LU in f64 (P breaks the symmetry).

use super::moment::SecondMoment;
use super::memit::Solver;
use crate::error::{Error, Result};
use faer::prelude::*;
use faer::{Mat, Side};
use serde::Serialize;

/// The protected directions of one layer.
pub struct NullSpace {
    /// C0's eigenvectors with eigenvalue ≥ threshold·λ_max: m×q.
    pub q: Mat<f64>,
    /// m − q: the dimension updates may use.
    pub null_dim: usize,
    pub lambda_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NullSpaceReport {
    pub layer: usize,
    pub dim: usize,
    pub null_dim: usize,
    pub lambda_max: f64,
    pub threshold: f64,
}

impl NullSpace {
    /// `threshold` is relative to C0's largest eigenvalue.
    pub fn of(c0: &SecondMoment, threshold: f64) -> Result<NullSpace> {
        let m = c0.dim;
        let a = c0.symmetric();
        let evd = a.self_adjoint_eigen(Side::Lower).map_err(|e| Error::Numeric(format!("AlphaEdit: eigendecomposition of C0 of layer {} failed ({e:?})", c0.layer)))?;
        let s = evd.S();
        let lambda_max = (0..m).map(|i| s[i]).fold(f64::MIN, f64::max);
        if !(lambda_max.is_finite() && lambda_max > 0.0) {
            return Err(Error::Numeric(format!("AlphaEdit: C0 of layer {} has largest eigenvalue {lambda_max}", c0.layer)));
        }
        let keep: Vec<usize> = (0..m).filter(|&i| s[i] >= threshold * lambda_max).collect();
        let u = evd.U();
        let q = Mat::<f64>::from_fn(m, keep.len(), |i, j| u[(i, keep[j])]);
        Ok(NullSpace { q, null_dim: m - keep.len(), lambda_max })
    }

    /// P X = X − Q (Qᵀ X).
    pub fn project(&self, x: &Mat<f64>) -> Mat<f64> {
        if self.q.ncols() == 0 {
            return x.clone();
        }
        let qtx = self.q.transpose() * x;
        x - &self.q * qtx
    }
}

pub struct AlphaEditSolver {
    pub spaces: Vec<NullSpace>,
    /// Σ over earlier batches of K Kᵀ, per layer (m×m).
    pub preserved: Vec<Mat<f64>>,
    pub alpha: f64,
}

impl AlphaEditSolver {
    pub fn new(spaces: Vec<NullSpace>, alpha: f64) -> Self {
        let preserved = spaces.iter().map(|s| Mat::<f64>::zeros(s.q.nrows(), s.q.nrows())).collect();
        AlphaEditSolver { spaces, preserved, alpha }
    }
}

impl Solver for AlphaEditSolver {
    fn solve(&mut self, i: usize, k: &Mat<f64>, _r: &Mat<f64>) -> Result<(Mat<f64>, serde_json::Value)> {
        let space = &self.spaces[i];
        let g = k * k.transpose() + &self.preserved[i];
        let mut a = space.project(&g);
        for j in 0..a.nrows() {
            a[(j, j)] += self.alpha;
        }
        let rhs = space.project(k);
        let y = a.partial_piv_lu().solve(&rhs);
        if (0..y.nrows()).any(|i| (0..y.ncols()).any(|j| !y[(i, j)].is_finite())) {
            return Err(Error::Numeric(format!("AlphaEdit: the solve of edited layer {i} is not finite")));
        }
        Ok((y, serde_json::json!({ "null_dim": space.null_dim })))
    }

    fn wants_final_keys(&self) -> bool {
        true
    }

    fn observe_keys(&mut self, keys: &[Mat<f64>]) -> Result<()> {
        add_outer_products(&mut self.preserved, keys, "AlphaEdit")
    }
}

/// `preserved[i] += keys[i] keys[i]ᵀ` for every edited layer: the running K_pK_pᵀ of a
/// session's earlier batches (AlphaEdit, NSE).
pub fn add_outer_products(preserved: &mut [Mat<f64>], keys: &[Mat<f64>], method: &'static str) -> Result<()> {
    if keys.len() != preserved.len() {
        return Err(Error::Edit(format!("{method}: keys of {} layers for {} edited layers", keys.len(), preserved.len())));
    }
    for (p, k) in preserved.iter_mut().zip(keys) {
        if k.nrows() != p.nrows() {
            return Err(Error::shape(method, format!("keys of width {}, C0 of {}", k.nrows(), p.nrows())));
        }
        *p += k * k.transpose();
    }
    Ok(())
}

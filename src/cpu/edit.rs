//! f64 references of the batch methods' layer loop (MEMIT and AlphaEdit) on the CPU model:
//! keys and residuals from the f64 forward, the normal equations formed densely and solved by
//! LU — none of the GPU path's shortcuts (Woodbury, projections applied as X − Q(QᵀX)).

use super::model::CpuModel;
use crate::model::probe::{Probes, Site};
use faer::prelude::*;
use faer::Mat;

/// One request for the reference: its context prompts (token ids, subject's last position);
/// the first is the plain prompt whose residual the target rewrites.
pub struct RefRequest {
    pub contexts: Vec<(Vec<u32>, usize)>,
}

/// How one layer's update is solved.
pub enum RefSolve<'a> {
    /// ΔW = R Kᵀ (λ C0 + K Kᵀ)⁻¹.
    Memit { c0: &'a [Mat<f64>], lambda: f64 },
    /// ΔW = R Kᵀ Pᵀ M⁻ᵀ, M = P (K Kᵀ + preserved) + α I, P dense (m×m) per layer.
    AlphaEdit { p: &'a [Mat<f64>], preserved: &'a [Mat<f64>], alpha: f64 },
}

fn keys_and_z(model: &CpuModel, reqs: &[RefRequest], layer: usize, last: usize) -> (Mat<f64>, Mat<f64>) {
    let (m, d) = (model.config.ffn_hidden, model.config.hidden);
    let mut k = Mat::<f64>::zeros(m, reqs.len());
    let mut z = Mat::<f64>::zeros(d, reqs.len());
    for (r, q) in reqs.iter().enumerate() {
        let seqs: Vec<Vec<u32>> = q.contexts.iter().map(|c| c.0.clone()).collect();
        let probes = Probes {
            down_in: q.contexts.iter().enumerate().map(|(s, c)| Site { layer, seq: s, pos: c.1 }).collect(),
            residual: vec![Site { layer: last, seq: 0, pos: q.contexts[0].1 }],
            add: vec![],
        };
        let (_, cap) = model.forward(&seqs, &probes);
        for key in &cap.down_in {
            for j in 0..m {
                k[(j, r)] += key[j] as f64 / q.contexts.len() as f64;
            }
        }
        for j in 0..d {
            z[(j, r)] = cap.residual[0][j] as f64;
        }
    }
    (k, z)
}

/// The updates (d×m, one per layer) the layer loop writes for targets `zstar` (d×n), applying
/// each to `model` before the next layer's keys are read.
pub fn layer_loop(model: &mut CpuModel, reqs: &[RefRequest], zstar: &Mat<f64>, layers: &[usize], solve: &RefSolve) -> Vec<Mat<f64>> {
    let last = *layers.last().expect("at least one layer");
    let mut out = vec![];
    for (i, &layer) in layers.iter().enumerate() {
        let (k, z) = keys_and_z(model, reqs, layer, last);
        let r = (zstar - &z) * Scale(1.0 / (layers.len() - i) as f64);
        let dw = match solve {
            RefSolve::Memit { c0, lambda } => {
                let a = &c0[i] * Scale(*lambda) + &k * k.transpose();
                // ΔW = R (A⁻¹ K)ᵀ, A symmetric.
                let x = a.partial_piv_lu().solve(&k);
                &r * x.transpose()
            }
            RefSolve::AlphaEdit { p, preserved, alpha } => {
                let m = k.nrows();
                let a = &p[i] * (&k * k.transpose() + &preserved[i]) + Mat::<f64>::identity(m, m) * Scale(*alpha);
                let y = a.partial_piv_lu().solve(&p[i] * &k);
                &r * y.transpose()
            }
        };
        let (d, m) = (dw.nrows(), dw.ncols());
        let flat: Vec<f64> = (0..d).flat_map(|a| (0..m).map(move |b| (a, b))).map(|(a, b)| dw[(a, b)]).collect();
        model.add_to(&format!("layers.{layer}.w_down"), &flat);
        out.push(dw);
    }
    out
}

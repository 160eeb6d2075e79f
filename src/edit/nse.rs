//! NSE, Neuron-level Sequential Editing (Jiang et al. 2024), on MEMIT's layer loop. Three
//! changes to MEMIT, each against the drift of a long edit sequence:
//! - **weights rewinding**: a request's target z* is optimised on the *original* weights (the
//!   edited matrices swapped back for the targets' forward and backward passes), so earlier
//!   edits do not pull later targets;
//! - **iterative passes**: the layer loop runs again for the requests whose residual stream is
//!   still farther than `alpha` from z* (and nearer than `upper_bound`), measured up to
//!   `max_iterations` times, the last time only to report;
//! - **neuron selection**: a layer updates only the neurons (components of its keys) that carry
//!   the batch: sorted by Σ_requests |k|, the largest ones whose running sum stays within
//!   `neuron_threshold` of the total; the rest of ΔW's columns stay zero.
//!
//! Its solve is MEMIT's with the earlier batches' keys kept (as NSE's reference keeps them, and
//! AlphaEdit does): X_S = (λ C0_SS + K_pK_pᵀ_SS + K_S K_Sᵀ)⁻¹ K_S on the selected neurons S, dense
//! in f64 (a principal block of C0 has no factorisation to reuse), ΔW = R Xᵀ.

use super::memit::Solver;
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::model::forward::GpuModel;
use faer::prelude::*;
use faer::{Mat, Side};

/// The neurons a layer updates: indices into the key's components, most active first.
/// Σ_requests |k_j| ranks them; NSE keeps the longest prefix whose running sum stays within
/// `threshold` of the total. Two departures, both at the edges: a threshold of 1 keeps all of
/// them, where NSE's float32 running sum would drop a few of the smallest by rounding; and when
/// even the most active neuron holds more than the threshold, it is kept alone (NSE's code
/// fails there with an index error).
pub fn select_neurons(k: &Mat<f64>, threshold: f64) -> Vec<usize> {
    let m = k.nrows();
    let mut order: Vec<usize> = (0..m).collect();
    if threshold >= 1.0 {
        return order;
    }
    let scores: Vec<f64> = (0..m).map(|j| (0..k.ncols()).map(|r| k[(j, r)].abs()).sum()).collect();
    // Ties keep index order, so the selection does not depend on the sort's stability.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let total: f64 = scores.iter().sum();
    let mut running = 0.0;
    let mut keep = 0;
    for &j in &order {
        running += scores[j];
        if running > threshold * total {
            break;
        }
        keep += 1;
    }
    order.truncate(keep.max(1));
    order
}

pub struct NseSolver {
    /// C0 of each edited layer, dense (m×m).
    pub c0: Vec<Mat<f64>>,
    /// Σ over this session's earlier batches of K Kᵀ, per layer (m×m).
    pub preserved: Vec<Mat<f64>>,
    pub lambda: f64,
    pub neuron_threshold: f64,
}

impl NseSolver {
    pub fn new(c0: Vec<Mat<f64>>, lambda: f64, neuron_threshold: f64) -> Self {
        let preserved = c0.iter().map(|c| Mat::<f64>::zeros(c.nrows(), c.nrows())).collect();
        NseSolver { c0, preserved, lambda, neuron_threshold }
    }
}

impl Solver for NseSolver {
    fn solve(&mut self, i: usize, k: &Mat<f64>, _r: &Mat<f64>) -> Result<(Mat<f64>, serde_json::Value)> {
        let (m, n) = (k.nrows(), k.ncols());
        if m != self.c0[i].nrows() {
            return Err(Error::shape("nse", format!("keys of width {m}, C0 of {}", self.c0[i].nrows())));
        }
        let sel = select_neurons(k, self.neuron_threshold);
        let s = sel.len();
        let ks = Mat::<f64>::from_fn(s, n, |a, r| k[(sel[a], r)]);
        let (c0, p) = (&self.c0[i], &self.preserved[i]);
        let a = Mat::<f64>::from_fn(s, s, |x, y| {
            let kk: f64 = (0..n).map(|r| ks[(x, r)] * ks[(y, r)]).sum();
            self.lambda * c0[(sel[x], sel[y])] + p[(sel[x], sel[y])] + kk
        });
        let llt = a.llt(Side::Lower).map_err(|e| Error::Numeric(format!("NSE: λC0 + K_pK_pᵀ + KKᵀ of edited layer {i} is not positive definite on its {s} selected neurons ({e:?})")))?;
        let xs = llt.solve(&ks);
        let mut x = Mat::<f64>::zeros(m, n);
        for (a, &j) in sel.iter().enumerate() {
            for r in 0..n {
                x[(j, r)] = xs[(a, r)];
            }
        }
        if (0..m).any(|j| (0..n).any(|r| !x[(j, r)].is_finite())) {
            return Err(Error::Numeric(format!("NSE: the solve of edited layer {i} is not finite")));
        }
        Ok((x, serde_json::json!({ "neurons": s })))
    }

    fn wants_final_keys(&self) -> bool {
        true
    }

    fn observe_keys(&mut self, keys: &[Mat<f64>]) -> Result<()> {
        super::alphaedit::add_outer_products(&mut self.preserved, keys, "NSE")
    }
}

/// The base values of the matrices a session edits, for computing targets on the original
/// weights (NSE's weights rewinding).
pub struct BaseWeights {
    copies: Vec<(String, Tensor)>,
}

impl BaseWeights {
    /// Copies `matrices` of `model` as they are now: call it on the base model.
    pub fn copy(model: &GpuModel, matrices: &[String]) -> Result<BaseWeights> {
        let gpu = model.gpu();
        let copies = matrices
            .iter()
            .map(|name| {
                let w = model.tensor(name)?;
                let c = gpu.empty(w.shape())?;
                gpu.copy_into(w, &c)?;
                Ok((name.clone(), c))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BaseWeights { copies })
    }

    /// Runs `f` with the base values in place of the current ones, and puts the current ones
    /// back afterwards, also when `f` fails.
    pub fn with_base<T>(&self, model: &GpuModel, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let gpu = model.gpu();
        let saved = self
            .copies
            .iter()
            .map(|(name, _)| {
                let w = model.tensor(name)?;
                let now = gpu.empty(w.shape())?;
                gpu.copy_into(w, &now)?;
                Ok((w, now))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self.copies.iter().zip(&saved).try_for_each(|((_, base), (w, _))| gpu.copy_into(base, w)).and_then(|()| f());
        for (w, now) in saved {
            gpu.copy_into(&now, w)?;
        }
        out
    }
}
